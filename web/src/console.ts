// The serial console: @xterm/xterm + fit addon over GET /v1/vms/:id/console (raw bytes both
// ways). Connects once the VM is `running` (the server has no console to attach while it is
// `starting`, and answers 409: the browser would log a failed handshake on every start), and
// reconnects while the VM stays attachable, e.g. after a restart. Keystrokes typed before the
// console is attached (right after Start) are kept, up to PENDING_INPUT_MAX bytes, and sent
// once it is; a boot that ends first (stopped, crashed) discards them.
import { Terminal, type ITheme } from '@xterm/xterm';
import { FitAddon } from '@xterm/addon-fit';
import type { Api } from './api.js';
import { bootEnded, consoleAttachable, consoleAvailable } from './actions.js';
import { closeQuietly, h } from './dom.js';

export type ConsoleStatus = 'idle' | 'waiting' | 'connecting' | 'connected' | 'disconnected';

/** Keystrokes kept while no console is attached (a few lines of typing; more is dropped). */
export const PENDING_INPUT_MAX = 4096;

const LIGHT: ITheme = {
  background: '#fbfbfd',
  foreground: '#1d2330',
  cursor: '#1d2330',
  cursorAccent: '#fbfbfd',
  selectionBackground: '#b7d3ff',
  black: '#1d2330',
  red: '#b42318',
  green: '#1a7f37',
  yellow: '#8a6100',
  blue: '#1f5fbf',
  magenta: '#8a3ea8',
  cyan: '#0b7285',
  white: '#d0d4dc',
  brightBlack: '#5b6473',
};
const DARK: ITheme = {
  background: '#0e1117',
  foreground: '#d7dce5',
  cursor: '#d7dce5',
  cursorAccent: '#0e1117',
  selectionBackground: '#2d4f7c',
  black: '#0e1117',
  red: '#ff7b72',
  green: '#7ee787',
  yellow: '#e3b341',
  blue: '#79c0ff',
  magenta: '#d2a8ff',
  cyan: '#76e3ea',
  white: '#d7dce5',
  brightBlack: '#8b949e',
};

export class ConsoleView {
  readonly el: HTMLElement;
  status: ConsoleStatus = 'idle';
  private readonly term: Terminal;
  private readonly fit = new FitAddon();
  private readonly statusEl: HTMLElement;
  private readonly screen: HTMLElement;
  private sock: WebSocket | null = null;
  private state = 'created';
  private retry: ReturnType<typeof setTimeout> | null = null;
  private attempt = 0;
  private destroyed = false;
  private readonly mq = window.matchMedia('(prefers-color-scheme: dark)');
  private readonly ro: ResizeObserver;
  private readonly reconnectBtn: HTMLButtonElement;
  /** Input typed while no console is attached, in order; sent when one is. */
  private pendingInput: Array<string | Uint8Array> = [];
  private pendingBytes = 0;

  constructor(
    private readonly api: Api,
    private readonly vmId: string,
  ) {
    this.statusEl = h('span', { class: 'console-status', role: 'status', 'aria-live': 'polite' });
    this.screen = h('div', { class: 'console-screen', 'data-testid': 'console' });
    const reconnect = h('button', { type: 'button', class: 'small', disabled: true }, 'Reconnect');
    this.reconnectBtn = reconnect;
    reconnect.addEventListener('click', () => {
      this.attempt = 0;
      this.close();
      this.connect();
    });
    const clearBtn = h('button', { type: 'button', class: 'small' }, 'Clear');
    clearBtn.addEventListener('click', () => this.term.clear());
    this.el = h(
      'section',
      { class: 'console card', 'aria-labelledby': 'console-h' },
      h('div', { class: 'section-head' }, h('h2', { id: 'console-h' }, 'Serial console'), this.statusEl, h('div', { class: 'spacer' }), clearBtn, reconnect),
      this.screen,
      h('p', { class: 'hint' }, 'Click the console (or Tab to it) and type; keystrokes go to the guest. Press Esc then Tab to leave.'),
    );
    this.term = new Terminal({
      convertEol: false,
      cursorBlink: true,
      fontFamily: 'ui-monospace, SFMono-Regular, Menlo, Consolas, "DejaVu Sans Mono", monospace',
      fontSize: 13,
      scrollback: 5000,
      theme: this.mq.matches ? DARK : LIGHT,
      screenReaderMode: false,
    });
    this.term.loadAddon(this.fit);
    this.term.onData((d) => this.send(d));
    this.term.onBinary((d) => this.send(Uint8Array.from(d, (c) => c.charCodeAt(0) & 0xff)));
    // Let keyboard users leave the terminal: Esc arms, the next Tab moves focus on.
    let escaped = false;
    this.term.attachCustomKeyEventHandler((e) => {
      if (e.type !== 'keydown') return true;
      if (e.key === 'Tab' && escaped) {
        escaped = false;
        return false;
      }
      escaped = e.key === 'Escape';
      return true;
    });
    this.mq.addEventListener('change', this.onScheme);
    this.ro = new ResizeObserver(() => this.doFit());
    window.addEventListener('resize', this.onResize);
    this.setStatus('idle');
  }

  /** Call once the element is in the document. */
  mount(): void {
    this.term.open(this.screen);
    this.ro.observe(this.screen);
    this.doFit();
  }

  /** Tell the console the VM's state; it connects/reconnects as appropriate. */
  setVmState(state: string): void {
    const prev = this.state;
    this.state = state;
    this.reconnectBtn.disabled = !consoleAttachable(state);
    if (bootEnded(state)) this.dropPendingInput();
    // A fresh boot: the old socket (if any) belongs to the previous VMM process.
    const restarted = state === 'starting' && prev !== 'starting';
    if (restarted && this.sock) this.close();
    if (!consoleAttachable(state)) {
      if (this.retry) clearTimeout(this.retry);
      this.retry = null;
      if (!this.sock) this.setStatus(consoleAvailable(state) ? 'waiting' : 'idle');
      return;
    }
    if (!this.sock && !this.retry) {
      this.attempt = 0;
      this.connect();
    }
  }

  private readonly onResize = (): void => this.doFit();
  private readonly onScheme = (): void => {
    this.term.options.theme = this.mq.matches ? DARK : LIGHT;
  };

  private doFit(): void {
    if (this.destroyed || !this.screen.isConnected || this.screen.clientWidth === 0) return;
    try {
      this.fit.fit();
    } catch {
      /* not rendered yet */
    }
  }

  private setStatus(s: ConsoleStatus, detail = ''): void {
    this.status = s;
    this.el.dataset['status'] = s;
    const text: Record<ConsoleStatus, string> = {
      idle: 'not running',
      waiting: 'waiting for the VM to start…',
      connecting: 'connecting…',
      connected: 'connected',
      disconnected: 'disconnected',
    };
    this.statusEl.textContent = text[s] + (detail ? ` — ${detail}` : '');
    this.statusEl.className = `console-status ${s}`;
  }

  private connect(): void {
    if (this.destroyed) return;
    this.setStatus('connecting');
    const ws = new WebSocket(this.api.wsUrl(`/v1/vms/${encodeURIComponent(this.vmId)}/console`));
    ws.binaryType = 'arraybuffer';
    this.sock = ws;
    ws.onopen = () => {
      if (this.sock !== ws) return;
      this.attempt = 0;
      this.setStatus('connected');
      const nl = this.term.buffer.active.cursorX === 0 ? '' : '\r\n';
      this.term.write(`${nl}\x1b[2m[capsule: console connected]\x1b[0m\r\n`);
      for (const d of this.pendingInput) ws.send(d);
      this.dropPendingInput();
    };
    ws.onmessage = (m) => {
      if (this.sock !== ws) return;
      if (m.data instanceof ArrayBuffer) this.term.write(new Uint8Array(m.data));
      else if (typeof m.data === 'string') this.term.write(m.data);
    };
    ws.onclose = (c) => {
      if (this.sock !== ws) return;
      this.sock = null;
      const wasOpen = this.status === 'connected';
      if (wasOpen) this.term.write('\r\n\x1b[2m[capsule: console disconnected]\x1b[0m\r\n');
      if (this.destroyed) return;
      if (consoleAttachable(this.state)) {
        const delay = Math.min(5000, 500 * 2 ** this.attempt);
        this.attempt += 1;
        this.setStatus('disconnected', `retrying in ${Math.round(delay / 100) / 10} s${c.reason ? ` (${c.reason})` : ''}`);
        this.retry = setTimeout(() => {
          this.retry = null;
          if (consoleAttachable(this.state) && !this.sock) this.connect();
        }, delay);
      } else {
        this.setStatus(consoleAvailable(this.state) ? 'waiting' : 'idle');
      }
    };
  }

  private send(d: string | Uint8Array): void {
    if (this.sock && this.sock.readyState === WebSocket.OPEN) return this.sock.send(d);
    // Not attached yet (the VM is still starting, or the socket is opening): keep it.
    const bytes = typeof d === 'string' ? new TextEncoder().encode(d).length : d.length;
    if (this.pendingBytes + bytes > PENDING_INPUT_MAX) return;
    this.pendingInput.push(d);
    this.pendingBytes += bytes;
  }

  private dropPendingInput(): void {
    this.pendingInput = [];
    this.pendingBytes = 0;
  }

  private close(): void {
    const s = this.sock;
    this.sock = null;
    closeQuietly(s);
  }

  focus(): void {
    this.term.focus();
  }

  destroy(): void {
    this.destroyed = true;
    if (this.retry) clearTimeout(this.retry);
    this.close();
    this.ro.disconnect();
    window.removeEventListener('resize', this.onResize);
    this.mq.removeEventListener('change', this.onScheme);
    this.term.dispose();
  }
}
