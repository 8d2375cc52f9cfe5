// Test helpers: a QMP client, a console-socket reader and a capsule-vmm launcher.
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { VMM_NODE_FLAGS } from '../../lib/vmm-node-flags.js';

export const REPO_ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
export const VMM_BIN = join(REPO_ROOT, 'bin', 'capsule-vmm');

export async function waitFor<T>(fn: () => T | undefined | Promise<T | undefined>, timeoutMs: number, what: string): Promise<T> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v !== undefined && v !== false) return v as T;
    if (Date.now() > end) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/**
 * Connects to a Unix socket a VMM serves. ECONNREFUSED is retried for `refusedForMs`: the socket's
 * file appears at bind(), and a VMM descheduled before its listen() (a busy lab: three guests on
 * two vCPUs) refuses the connection that a waitForFile let through.
 */
export async function connectUnix(path: string, refusedForMs = 3000): Promise<Socket> {
  const end = Date.now() + refusedForMs;
  for (;;) {
    try {
      return await new Promise<Socket>((resolve, reject) => {
        const s = connect(path);
        s.once('connect', () => resolve(s));
        s.once('error', reject);
      });
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ECONNREFUSED' || Date.now() >= end) throw e;
      await new Promise((r) => setTimeout(r, 25));
    }
  }
}

/** Calls `fn` with each newline-terminated JSON object `sock` receives (QMP's framing). */
export function onJsonLines(sock: Socket, fn: (m: Record<string, unknown>) => void): void {
  let buf = '';
  sock.setEncoding('utf8');
  sock.on('data', (d: string) => {
    buf += d;
    let i: number;
    while ((i = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, i).trim();
      buf = buf.slice(i + 1);
      if (line) fn(JSON.parse(line) as Record<string, unknown>);
    }
  });
}

export class QmpClient {
  readonly messages: Array<Record<string, unknown>> = [];
  private waiters: Array<() => void> = [];
  greeting: Record<string, unknown> | undefined;

  private constructor(readonly sock: Socket) {
    onJsonLines(sock, (m) => {
      if (!this.greeting && 'QMP' in m) this.greeting = m;
      else this.messages.push(m);
      for (const w of this.waiters.splice(0)) w();
    });
  }

  static async connect(path: string, negotiate = true): Promise<QmpClient> {
    const c = new QmpClient(await connectUnix(path));
    await waitFor(() => c.greeting, 5000, 'QMP greeting');
    if (negotiate) await c.execute('qmp_capabilities');
    return c;
  }

  sendRaw(text: string): void {
    this.sock.write(text);
  }

  /** next message matching pred (consumed) */
  async next(pred: (m: Record<string, unknown>) => boolean, timeoutMs = 10000, what = 'QMP message'): Promise<Record<string, unknown>> {
    const end = Date.now() + timeoutMs;
    for (;;) {
      const i = this.messages.findIndex(pred);
      if (i >= 0) return this.messages.splice(i, 1)[0] as Record<string, unknown>;
      const left = end - Date.now();
      if (left <= 0) throw new Error(`timed out waiting for ${what}; have ${JSON.stringify(this.messages)}`);
      await new Promise<void>((r) => {
        const t = setTimeout(r, left);
        this.waiters.push(() => {
          clearTimeout(t);
          r();
        });
      });
    }
  }

  private seq = 0;
  /** execute and return the whole reply ({return} or {error}) */
  async call(cmd: string, args?: Record<string, unknown>, timeoutMs = 10000): Promise<Record<string, unknown>> {
    const id = `t${++this.seq}`;
    this.sock.write(JSON.stringify(args ? { execute: cmd, arguments: args, id } : { execute: cmd, id }) + '\n');
    return this.next((m) => m.id === id, timeoutMs, `reply to ${cmd}`);
  }

  async execute(cmd: string, args?: Record<string, unknown>, timeoutMs?: number): Promise<unknown> {
    const r = await this.call(cmd, args, timeoutMs);
    if ('error' in r) throw new Error(`${cmd}: ${JSON.stringify(r.error)}`);
    return r.return;
  }

  event(name: string, timeoutMs = 10000): Promise<Record<string, unknown>> {
    return this.next((m) => m.event === name, timeoutMs, `event ${name}`);
  }

  close(): void {
    this.sock.destroy();
  }
}

export class ConsoleClient {
  text = '';
  private constructor(readonly sock: Socket) {
    sock.setEncoding('utf8');
    sock.on('data', (d: string) => (this.text += d));
    sock.on('error', () => {});
  }
  static async connect(path: string): Promise<ConsoleClient> {
    return new ConsoleClient(await connectUnix(path));
  }
  async waitFor(re: RegExp, timeoutMs: number): Promise<RegExpExecArray> {
    return waitFor(() => re.exec(this.text) ?? undefined, timeoutMs, `console output ${re}`);
  }
  type(s: string): void {
    this.sock.write(s);
  }
  private runs = 0;
  /**
   * Runs a shell command on the guest's console and returns its output and exit status. The
   * command prints begin and end markers, each typed as two quoted halves, so that the terminal's
   * echo of the (possibly wrapped) command line matches neither.
   */
  async run(cmd: string, timeoutMs = 60_000): Promise<{ out: string; status: number }> {
    const tag = `${++this.runs}x${Math.random().toString(36).slice(2, 8)}`;
    const start = this.text.length;
    this.type(`echo "BE""GIN${tag}"; ${cmd}; echo "EN""D${tag}=$?"\n`);
    const re = new RegExp(`BEGIN${tag}\\r?\\n([\\s\\S]*?)END${tag}=(\\d+)`);
    const m = await waitFor(() => re.exec(this.text.slice(start)) ?? undefined, timeoutMs, `end of '${cmd}'`);
    return { out: (m[1] ?? '').replace(/\r/g, ''), status: Number(m[2]) };
  }

  close(): void {
    this.sock.destroy();
  }
}

export interface VmmProcess {
  child: ChildProcess;
  stdout: string;
  stderr: string;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

const live = new Set<ChildProcess>();
/** SIGKILL every VMM started by startVmm that is still running (test cleanup). */
export function killAllVmms(): void {
  for (const c of live) c.kill('SIGKILL');
  live.clear();
}

/**
 * Runs capsule-vmm with node's flags as the server gives them. `prefix`: a command that execs
 * the VMM (e.g. `ip netns exec NS` to start it in a network namespace); `entry`: bin/capsule-vmm,
 * the bundle, unless a bench compares another build; `nodeFlags`: a bench's variant (MEMORY_FLAGS).
 */
export function startVmm(args: string[], env: NodeJS.ProcessEnv = {}, prefix: string[] = [], entry = VMM_BIN, nodeFlags: readonly string[] = VMM_NODE_FLAGS): VmmProcess {
  const argv = [...prefix, process.execPath, ...nodeFlags, entry, ...args];
  const child = spawn(argv[0] as string, argv.slice(1), { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  live.add(child);
  child.once('exit', () => live.delete(child));
  const p: VmmProcess = {
    child,
    stdout: '',
    stderr: '',
    exited: new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal }))),
  };
  child.stdout?.setEncoding('utf8').on('data', (d: string) => (p.stdout += d));
  child.stderr?.setEncoding('utf8').on('data', (d: string) => (p.stderr += d));
  return p;
}

export async function waitForFile(path: string, timeoutMs: number): Promise<void> {
  await waitFor(() => existsSync(path) || undefined, timeoutMs, `file ${path}`);
}

/** The guest image used by KVM tests: $CAPSULE_TEST_IMAGE or one built by scripts/build-image.sh. */
export async function testImage(): Promise<{ kernel: string; initrd: string; cmdline: string }> {
  let dir = process.env.CAPSULE_TEST_IMAGE;
  if (!dir) {
    dir = join(process.env.TMPDIR ?? '/tmp', 'capsule-test-image');
    const b = spawn('bash', [join(REPO_ROOT, 'scripts', 'build-image.sh'), dir], { stdio: 'inherit' });
    const code = await new Promise<number | null>((r) => b.once('exit', r));
    if (code !== 0) throw new Error(`build-image.sh failed (${code})`);
  }
  return {
    kernel: join(dir, 'vmlinuz'),
    initrd: join(dir, 'initramfs.cpio.gz'),
    cmdline: 'console=ttyS0 quiet panic=-1 reboot=k',
  };
}
