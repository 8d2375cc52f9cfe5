// Test harness: a real capsule server process on a free port with a temp data directory,
// the default guest image (built once into a shared cache), and small API/WebSocket clients.
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import { appendFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, existsSync, readdirSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import assert from 'node:assert/strict';
import WebSocket from 'ws';
import { REPO_ROOT } from '../paths.js';
import { instanceTag } from '../network/host.js';
import { removeLeftovers } from './network.js';

export { REPO_ROOT };
export const TEST_IMAGES_DIR = process.env.CAPSULE_TEST_IMAGES ?? '/tmp/capsule-test-images';

/** Builds the default image into the shared test cache (the script skips up-to-date builds). */
export function ensureTestImage(): string {
  const dir = join(TEST_IMAGES_DIR, 'default');
  if (!existsSync(join(dir, 'image.json'))) {
    execFileSync('bash', [join(REPO_ROOT, 'scripts', 'build-image.sh'), dir], { stdio: 'ignore' });
  }
  return TEST_IMAGES_DIR;
}

export async function freePort(): Promise<number> {
  return new Promise((res, rej) => {
    const s = createServer();
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => res(port));
    });
    s.on('error', rej);
  });
}

export interface ServerOptions {
  env?: Record<string, string>;
  dataDir?: string;
  port?: number;
}

export class TestServer {
  private proc: ChildProcess | undefined;
  output = '';
  token = '';

  private constructor(readonly dataDir: string, readonly port: number, private readonly env: Record<string, string>) {}

  static async start(opts: ServerOptions = {}): Promise<TestServer> {
    const images = ensureTestImage();
    const dataDir = opts.dataDir ?? mkdtempSync(join(tmpdir(), 'capsule-test-'));
    const s = new TestServer(dataDir, opts.port ?? (await freePort()), { CAPSULE_IMAGES_DIR: images, CAPSULE_STOP_TIMEOUT: '20', ...opts.env });
    await s.launch();
    return s;
  }

  /** The server process's pid (for /proc checks). */
  get pid(): number {
    return this.proc?.pid ?? 0;
  }

  /** The server's resident memory in MiB (VmRSS). */
  rssMiB(): number {
    const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${this.pid}/status`, 'utf8'));
    return m ? Number(m[1]) / 1024 : 0;
  }

  /** A VM's VMM log ('' while there is none). */
  vmmLog(id: string): string {
    try {
      return readFileSync(join(this.dataDir, 'vms', id, 'vmm.log'), 'utf8');
    } catch {
      return '';
    }
  }

  get url(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  async launch(): Promise<void> {
    this.output = '';
    this.proc = spawn(process.execPath, [join(REPO_ROOT, 'dist', 'server', 'main.js')], {
      env: { ...process.env, PORT: String(this.port), HOST: '127.0.0.1', CAPSULE_DATA_DIR: this.dataDir, CAPSULE_LOG_LEVEL: 'info', ...this.env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    // CAPSULE_TEST_SERVER_LOG_DIR: each test server's output also goes to a file there, to follow
    // a run live (the nested lab's work folder is shared with the host).
    const logDir = process.env.CAPSULE_TEST_SERVER_LOG_DIR;
    let logFile = logDir ? join(logDir, `server-${this.port}.log`) : undefined;
    if (logDir) mkdirSync(logDir, { recursive: true });
    const keep = (d: Buffer): void => {
      this.output += d.toString();
      if (!logFile) return;
      try {
        appendFileSync(logFile, d);
      } catch (e) {
        // a debugging aid: a log folder that fails is said once and dropped, not a test failure
        console.error(`CAPSULE_TEST_SERVER_LOG_DIR: ${(e as Error).message}; no more server log there`);
        logFile = undefined;
      }
    };
    this.proc.stdout!.on('data', keep);
    this.proc.stderr!.on('data', keep);
    // The nested lab runs everything 10-15x slower (more on a loaded host): node alone takes seconds there.
    const end = Date.now() + (process.env.CAPSULE_IN_LAB ? 180_000 : 30_000);
    for (;;) {
      if (this.proc.exitCode !== null) throw new Error(`server exited: ${this.output}`);
      if (Date.now() > end) {
        // A server left running would keep the test process alive (its pipes) until some outer timeout.
        this.proc.kill('SIGKILL');
        throw new Error(`server did not start: ${this.output}`);
      }
      const up = await fetch(`${this.url}/v1/health`).then((r) => r.ok, () => false);
      if (up) break;
      await sleep(50);
    }
    this.token = readFileSync(join(this.dataDir, 'admin-token'), 'utf8').trim();
  }

  /** Sends `signal` to the server; resolves with its exit code once it has exited. */
  async signal(signal: NodeJS.Signals): Promise<number | null> {
    const p = this.proc;
    if (!p || p.exitCode !== null) return p?.exitCode ?? null;
    const exited = new Promise<number | null>((r) => p.once('exit', (code) => r(code)));
    p.kill(signal);
    return exited;
  }

  /** SIGKILL the server (VMMs survive: they are daemons). */
  async kill9(): Promise<void> {
    const p = this.proc;
    if (!p || p.exitCode !== null) return;
    const exited = new Promise((r) => p.once('exit', r));
    p.kill('SIGKILL');
    await exited;
  }

  async api(method: string, path: string, body?: unknown, headers: Record<string, string> = {}): Promise<{ status: number; body: any; headers: Headers }> {
    const init: RequestInit = { method, headers: { authorization: `Bearer ${this.token}`, ...headers } };
    if (body !== undefined) {
      init.body = typeof body === 'string' ? body : JSON.stringify(body);
      (init.headers as Record<string, string>)['content-type'] ??= 'application/json';
    }
    const res = await fetch(this.url + path, init);
    const text = await res.text();
    let parsed: unknown = text;
    try { parsed = text ? JSON.parse(text) : text; } catch { /* not JSON */ }
    return { status: res.status, body: parsed, headers: res.headers };
  }

  /**
   * Waits until a VM's guest agent answers. A VM that crashes or stops meanwhile ends the wait at
   * once, with the end of its VMM log (a seccomp kill, a triple fault), instead of at the timeout.
   */
  async waitForAgent(id: string, timeoutMs: number): Promise<void> {
    await waitFor('the guest agent', async () => {
      if ((await this.api('GET', `/v1/vms/${id}/agent`)).status === 200) return true;
      const vm = await this.api('GET', `/v1/vms/${id}`);
      if (vm.status === 200 && (vm.body.state === 'crashed' || vm.body.state === 'stopped')) {
        throw new Error(`the VM ${vm.body.state} before its guest agent answered; its VMM log ends:\n${this.vmmLog(id).slice(-3000)}`);
      }
      return undefined;
    }, timeoutMs);
  }

  ws(path: string, token = this.token): WebSocket {
    const sep = path.includes('?') ? '&' : '?';
    return new WebSocket(`ws://127.0.0.1:${this.port}${path}${sep}access_token=${encodeURIComponent(token)}`);
  }

  /** Kills the server and every VMM it left, removes the data directory. */
  async stop(): Promise<void> {
    await this.kill9();
    const vmsDir = join(this.dataDir, 'vms');
    if (existsSync(vmsDir)) {
      for (const id of readdirSync(vmsDir)) {
        try {
          const pid = Number(readFileSync(join(vmsDir, id, 'vmm.pid'), 'utf8'));
          if (pid > 1) process.kill(pid, 'SIGKILL');
        } catch { /* no VMM */ }
      }
    }
    // The VMs' networks (docs/network.md): a server that starts again on this data directory
    // would reconcile them away; this one never will.
    if (process.getuid?.() === 0) removeLeftovers(instanceTag(this.dataDir));
    unmountBelow(this.dataDir);
    rmSync(this.dataDir, { recursive: true, force: true });
  }
}

/**
 * Unmounts what is mounted below `dir` (a jailed VMM's root tmpfs, vms/<id>/root, which the
 * server unmounts when it sees the VMM go: not when the server was killed first), retrying
 * while the VMMs just killed release it.
 */
export function unmountBelow(dir: string): void {
  const prefix = `${dir}/`;
  for (let i = 0; i < 100; i++) {
    const mounts = readFileSync('/proc/self/mountinfo', 'utf8').split('\n').map((l) => l.split(' ')[4] ?? '').filter((m) => m.startsWith(prefix));
    if (mounts.length === 0) return;
    for (const m of mounts.reverse()) {
      try { execFileSync('umount', [m], { stdio: 'ignore' }); } catch { /* busy: retried */ }
    }
    execFileSync('sleep', ['0.05']);
  }
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export async function waitFor<T>(what: string, fn: () => T | undefined | Promise<T | undefined>, timeoutMs = 60_000): Promise<T> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v !== undefined && v !== false) return v as T;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(50);
  }
}

/** Collects the JSON messages of an events WebSocket. */
export class EventCollector {
  readonly messages: Array<{ seq: number; vm: string; event: string; data: any; timestamp: string }> = [];
  readonly opened: Promise<void>;

  constructor(readonly socket: WebSocket) {
    socket.on('message', (d) => this.messages.push(JSON.parse(d.toString())));
    this.opened = new Promise((res, rej) => { socket.once('open', () => res()); socket.once('error', rej); });
  }

  waitFor(event: string, pred: (m: any) => boolean = () => true, timeoutMs = 60_000) {
    return waitFor(`event ${event}`, () => this.messages.find((m) => m.event === event && pred(m)), timeoutMs);
  }

  close(): void {
    this.socket.close();
  }
}

/** Collects a console WebSocket's output as text. */
export class ConsoleCollector {
  text = '';
  readonly opened: Promise<void>;

  constructor(readonly socket: WebSocket) {
    socket.on('message', (d: Buffer) => { this.text += d.toString('utf8'); });
    this.opened = new Promise((res, rej) => { socket.once('open', () => res()); socket.once('error', rej); });
  }

  async waitFor(needle: string | RegExp, timeoutMs = 180_000): Promise<true> {
    try {
      return await waitFor(`console output ${needle}`, () => (typeof needle === 'string' ? this.text.includes(needle) : needle.test(this.text)) || undefined, timeoutMs);
    } catch (e) {
      // what the guest did print says why (a panic, a reboot, a prompt that never came)
      throw new Error(`${(e as Error).message}; the console's last output:\n${this.text.slice(-1500)}`);
    }
  }

  send(s: string): void {
    this.socket.send(s);
  }

  close(): void {
    this.socket.close();
  }
}

/** POST /v1/vms: the created VM (201 asserted, the body in the message otherwise). */
export async function createVm(s: TestServer, body: Record<string, unknown>): Promise<any> {
  const r = await s.api('POST', '/v1/vms', body);
  if (r.status !== 201) throw new Error(`create: ${r.status} ${JSON.stringify(r.body)}`);
  return r.body;
}

/** POST /v1/vms/:id/start: the started VM; `why` adds to the failure message (a VMM log). */
export async function startVm(s: TestServer, id: string, why: () => string = () => ''): Promise<any> {
  const r = await s.api('POST', `/v1/vms/${id}/start`);
  if (r.status !== 200) throw new Error(`start: ${r.status} ${JSON.stringify(r.body)} ${why()}`);
  return r.body;
}

/** A VM's console WebSocket, open. */
export async function openConsole(s: TestServer, id: string): Promise<ConsoleCollector> {
  const c = new ConsoleCollector(s.ws(`/v1/vms/${id}/console`));
  await c.opened;
  return c;
}

/**
 * Runs a shell line on a console and returns what it printed between two markers, without the
 * `count-N` lines of a counting loop the tests run in the background.
 */
export async function consoleSh(c: ConsoleCollector, line: string, timeoutMs = 60_000): Promise<string> {
  const tag = Math.random().toString(36).slice(2, 8);
  c.send(`echo B${tag}; ${line}; echo E${tag}\n`);
  const re = new RegExp(`\\nB${tag}\\r?\\n([\\s\\S]*?)E${tag}`);
  await c.waitFor(re, timeoutMs);
  return re.exec(c.text)![1]!.replace(/\r/g, '').split('\n').filter((l) => !/^count-\d+$/.test(l)).join('\n');
}

/** The `count-N` lines a background counting loop printed on a console, in order. */
export const consoleCounts = (text: string): number[] => [...text.matchAll(/count-(\d+)/g)].map((m) => Number(m[1]));

/**
 * A clone restored from a snapshot of a counting guest: the count goes on from where the
 * snapshot was taken (the last line printed before it may come again: the serial port's buffer
 * is part of the saved state), not from 1; no boot; the file written before the snapshot is
 * there (/tmp/marker: before-snapshot); uptime goes on from the source's.
 */
export async function assertRestoredGoesOn(c: ConsoleCollector, atSnapshot: number, sourceUptime: number, timeoutMs: number): Promise<void> {
  await c.waitFor(/count-\d+/, timeoutMs);
  const after = consoleCounts(c.text);
  assert.ok(after[0]! >= atSnapshot && after[0]! <= atSnapshot + 30, `the count goes on from ${atSnapshot}: ${after.slice(0, 3).join(',')}`);
  assert.ok(!/CAPSULE_READY|Linux version/.test(c.text), 'no boot');
  const shMs = Math.max(timeoutMs, 60_000);
  assert.equal((await consoleSh(c, 'cat /tmp/marker', shMs)).trim(), 'before-snapshot');
  const uptime = Number((await consoleSh(c, 'cut -d" " -f1 /proc/uptime', shMs)).trim());
  assert.ok(uptime >= sourceUptime, `uptime ${uptime} s goes on from ${sourceUptime} s`);
}
