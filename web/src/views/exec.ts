// The exec box: one shell command at a time over the exec WebSocket (GET /v1/vms/:id/exec,
// docs/api.md). stdout and stderr stream into one output area (stderr marked), the exit code
// (or the signal) comes at the end; Stop sends SIGINT, then Kill sends SIGKILL; a line of input
// can be sent to the command's stdin while it runs.
import type { Api } from '../api.js';
import { closeQuietly, h, uid } from '../dom.js';

/** Characters kept in the output area; older output is dropped beyond this. */
export const EXEC_OUTPUT_MAX = 512 * 1024;

interface ExitInfo {
  exitCode: number | null;
  signal?: string;
  timedOut?: boolean;
  durationMs?: number;
}

export function describeExit(e: ExitInfo): string {
  const how = e.exitCode !== null && e.exitCode !== undefined ? `Exit code ${e.exitCode}` : `Ended by ${e.signal ?? 'a signal'}`;
  const timed = e.timedOut ? ' (timed out)' : '';
  const took = typeof e.durationMs === 'number' ? ` after ${(e.durationMs / 1000).toFixed(e.durationMs < 10_000 ? 2 : 1)} s` : '';
  return how + timed + took;
}

export class ExecPanel {
  readonly el: HTMLElement;
  private readonly cmdInput: HTMLInputElement;
  private readonly runBtn: HTMLButtonElement;
  private readonly stopBtn: HTMLButtonElement;
  private readonly stdinInput: HTMLInputElement;
  private readonly sendBtn: HTMLButtonElement;
  private readonly eofBtn: HTMLButtonElement;
  private readonly out: HTMLElement;
  private readonly statusEl: HTMLElement;
  private readonly errorEl: HTMLElement;
  private sock: WebSocket | null = null;
  private stopped = 0;
  private chars = 0;
  private decoders: [TextDecoder, TextDecoder] = [new TextDecoder(), new TextDecoder()];
  private history: string[] = [];
  private historyAt = 0;

  constructor(private readonly api: Api, private readonly vmId: string) {
    const cmdId = uid('exec-cmd');
    const stdinId = uid('exec-stdin');
    this.cmdInput = h('input', { id: cmdId, type: 'text', class: 'mono', autocomplete: 'off', spellcheck: 'false', placeholder: 'ls -la; python3 --version' });
    this.runBtn = h('button', { type: 'submit', class: 'primary' }, 'Run');
    this.stopBtn = h('button', { type: 'button', class: 'danger', disabled: true }, 'Stop');
    this.stdinInput = h('input', { id: stdinId, type: 'text', class: 'mono', autocomplete: 'off', spellcheck: 'false', disabled: true });
    this.sendBtn = h('button', { type: 'submit', class: 'small', disabled: true }, 'Send line');
    this.eofBtn = h('button', { type: 'button', class: 'small', disabled: true }, 'Close input');
    this.out = h('pre', { class: 'exec-out', role: 'log', tabindex: '0', 'aria-label': 'Command output' });
    this.statusEl = h('p', { class: 'exec-status hint', role: 'status', 'aria-live': 'polite' }, 'Runs as user in /home/user with /bin/bash -c.');
    this.errorEl = h('p', { class: 'form-error', role: 'alert', hidden: true });

    const form = h(
      'form',
      { class: 'inline-form', novalidate: true },
      h('div', { class: 'grow' }, h('label', { for: cmdId }, 'Command'), this.cmdInput),
      this.runBtn,
      this.stopBtn,
    );
    form.addEventListener('submit', (e) => {
      e.preventDefault();
      this.run();
    });
    this.cmdInput.addEventListener('keydown', (e) => this.onHistoryKey(e));
    this.stopBtn.addEventListener('click', () => this.stop());
    const stdinForm = h(
      'form',
      { class: 'inline-form', novalidate: true },
      h('div', { class: 'grow' }, h('label', { for: stdinId }, 'Input line'), this.stdinInput),
      this.sendBtn,
      this.eofBtn,
    );
    stdinForm.addEventListener('submit', (e) => {
      e.preventDefault();
      this.sendLine();
    });
    this.eofBtn.addEventListener('click', () => {
      this.control({ eof: true });
      this.stdinInput.disabled = this.sendBtn.disabled = this.eofBtn.disabled = true;
    });
    this.el = h(
      'section',
      { class: 'exec card', 'aria-labelledby': 'exec-h' },
      h('div', { class: 'section-head' }, h('h2', { id: 'exec-h' }, 'Exec')),
      form,
      this.errorEl,
      this.out,
      this.statusEl,
      stdinForm,
    );
    this.el.dataset['running'] = 'false';
  }

  focus(): void {
    this.cmdInput.focus();
  }

  private get running(): boolean {
    return this.sock !== null;
  }

  private setRunning(on: boolean): void {
    this.el.dataset['running'] = String(on);
    this.runBtn.disabled = on;
    this.stopBtn.disabled = !on;
    this.stdinInput.disabled = this.sendBtn.disabled = this.eofBtn.disabled = !on;
    if (!on) {
      this.stopBtn.textContent = 'Stop';
      this.stopBtn.classList.remove('armed');
    }
  }

  private showError(msg: string): void {
    this.errorEl.textContent = msg;
    this.errorEl.hidden = !msg;
  }

  private write(channel: 1 | 2, text: string): void {
    if (!text) return;
    const cls = channel === 2 ? 'stderr' : 'stdout';
    const last = this.out.lastElementChild as HTMLElement | null;
    const stick = this.out.scrollHeight - this.out.scrollTop - this.out.clientHeight < 24;
    if (last && last.dataset['stream'] === cls) last.append(text);
    else this.out.appendChild(h('span', { class: cls, 'data-stream': cls }, text));
    this.chars += text.length;
    while (this.chars > EXEC_OUTPUT_MAX && this.out.firstElementChild) {
      const first = this.out.firstElementChild;
      this.chars -= first.textContent?.length ?? 0;
      first.remove();
    }
    if (stick) this.out.scrollTop = this.out.scrollHeight;
  }

  private run(): void {
    const cmd = this.cmdInput.value.trim();
    if (this.running) return;
    if (!cmd) {
      this.showError('Type a command first.');
      this.cmdInput.focus();
      return;
    }
    this.showError('');
    if (this.history[this.history.length - 1] !== cmd) this.history.push(cmd);
    this.historyAt = this.history.length;
    this.out.replaceChildren();
    this.chars = 0;
    this.stopped = 0;
    this.decoders = [new TextDecoder(), new TextDecoder()];
    delete this.el.dataset['exitCode'];
    this.statusEl.textContent = 'Starting…';
    const ws = new WebSocket(this.api.wsUrl(`/v1/vms/${encodeURIComponent(this.vmId)}/exec`));
    ws.binaryType = 'arraybuffer';
    this.sock = ws;
    this.setRunning(true);
    let ended = false;
    ws.onopen = () => ws.send(JSON.stringify({ shell: cmd }));
    ws.onmessage = (m) => {
      if (this.sock !== ws) return;
      if (m.data instanceof ArrayBuffer) {
        const b = new Uint8Array(m.data);
        const ch = b[0] === 2 ? 2 : 1;
        this.write(ch, this.decoders[ch - 1]!.decode(b.subarray(1), { stream: true }));
        return;
      }
      let msg: Record<string, unknown>;
      try {
        msg = JSON.parse(String(m.data)) as Record<string, unknown>;
      } catch {
        return;
      }
      if (msg['started']) {
        const pid = (msg['started'] as { pid?: number }).pid;
        this.statusEl.textContent = `Running${pid ? ` (pid ${pid})` : ''}…`;
      } else if (msg['exit']) {
        ended = true;
        this.flush();
        const e = msg['exit'] as ExitInfo;
        this.el.dataset['exitCode'] = e.exitCode === null || e.exitCode === undefined ? (e.signal ?? 'signal') : String(e.exitCode);
        this.statusEl.textContent = describeExit(e);
      } else if (msg['error']) {
        ended = true;
        const e = msg['error'] as { code?: string; message?: string };
        this.statusEl.textContent = 'Failed.';
        this.showError(`${e.message ?? 'The command could not run'}${e.code ? ` (${e.code})` : ''}`);
      } else if (typeof msg['detached'] === 'string') {
        ended = true;
        this.statusEl.textContent = `Detached: ${msg['detached']}`;
      }
    };
    ws.onclose = (c) => {
      if (this.sock !== ws) return;
      this.sock = null;
      this.flush();
      this.setRunning(false);
      if (!ended) {
        this.statusEl.textContent = 'Ended without an exit status.';
        this.showError(`The connection closed${c.reason ? `: ${c.reason}` : ''}${c.code !== 1000 && c.code !== 1005 ? ` (${c.code})` : ''}. Is the VM running and its agent up?`);
      }
    };
  }

  private flush(): void {
    this.write(1, this.decoders[0].decode());
    this.write(2, this.decoders[1].decode());
  }

  private control(m: Record<string, unknown>): void {
    if (this.sock && this.sock.readyState === WebSocket.OPEN) this.sock.send(JSON.stringify(m));
  }

  /** The first Stop interrupts (SIGINT); the button then offers Kill (SIGKILL). */
  private stop(): void {
    if (!this.running) return;
    this.stopped += 1;
    const signal = this.stopped === 1 ? 'SIGINT' : 'SIGKILL';
    this.control({ signal });
    this.statusEl.textContent = `Sent ${signal}…`;
    if (this.stopped === 1) {
      this.stopBtn.textContent = 'Kill';
      this.stopBtn.classList.add('armed');
    }
  }

  private sendLine(): void {
    if (!this.running) return;
    const line = this.stdinInput.value;
    if (this.sock && this.sock.readyState === WebSocket.OPEN) this.sock.send(new TextEncoder().encode(line + '\n'));
    this.stdinInput.value = '';
  }

  private onHistoryKey(e: KeyboardEvent): void {
    if (e.key !== 'ArrowUp' && e.key !== 'ArrowDown') return;
    if (this.history.length === 0) return;
    e.preventDefault();
    this.historyAt = Math.max(0, Math.min(this.history.length, this.historyAt + (e.key === 'ArrowUp' ? -1 : 1)));
    this.cmdInput.value = this.history[this.historyAt] ?? '';
  }

  destroy(): void {
    const s = this.sock;
    this.sock = null;
    closeQuietly(s);
  }
}
