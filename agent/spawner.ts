// The agent's side of capsule-spawn (agent/capsule-spawn.c): a small static helper that starts
// processes with vfork() instead of libuv's fork() of the whole agent (tens of MiB of page
// tables to copy: the largest part of an exec's cost in a guest; docs/agent.md, "Spawning").
//
// One helper per agent, kept; requests and replies are described in capsule-spawn.c. The helper
// is trusted as the agent is (it is ours, started by the agent as root), but what it says is
// still checked: a malformed line ends it, and the agent goes on with Node's own spawn.
import { spawn, type ChildProcess } from 'node:child_process';
import { constants as osConstants } from 'node:os';
import { readFileSync } from 'node:fs';

export interface SpawnRequest {
  argv: string[];
  env: Record<string, string>;
  cwd: string;
  uid: number;
  gid: number;
  /** FIFO paths the child opens as its stdin, stdout and stderr. */
  stdio: [string, string, string];
}

export type ExitHandler = (code: number | null, signal: NodeJS.Signals | null) => void;

/** A process the helper started: its pid, and its end (reported once). */
export interface SpawnedProcess {
  readonly pid: number;
  onExit(fn: ExitHandler): void;
}

/** Why a spawn failed: the errno's name and the step (exec, cwd, setuid, ...). */
export class SpawnError extends Error {
  constructor(readonly errno: string, readonly step: string) {
    super(`${step}: ${errno}`);
  }
}

const SIGNAL_NAMES = new Map<number, NodeJS.Signals>(Object.entries(osConstants.signals).map(([k, v]) => [v, k as NodeJS.Signals]));
const ERRNO_NAMES = new Map<number, string>(Object.entries(osConstants.errno).map(([k, v]) => [v, k]));
/** After the helper is lost, processes it started are watched this often until they are gone. */
const ORPHAN_POLL_MS = 200;

/** A request waiting for its reply: a spawn gets its process (made when the reply is read). */
interface Pending { resolve(v: Spawned | undefined): void; reject(e: Error): void }

class Spawned implements SpawnedProcess {
  private handlers: ExitHandler[] = [];
  private ended: [number | null, NodeJS.Signals | null] | undefined;
  constructor(readonly pid: number) {}
  onExit(fn: ExitHandler): void {
    if (this.ended) fn(...this.ended);
    else this.handlers.push(fn);
  }
  end(code: number | null, signal: NodeJS.Signals | null): void {
    if (this.ended) return;
    this.ended = [code, signal];
    for (const fn of this.handlers.splice(0)) fn(code, signal);
  }
}

export class Spawner {
  private child: ChildProcess | undefined;
  private seq = 0;
  private readonly pending = new Map<string, Pending>();
  private readonly running = new Map<number, Spawned>();
  /** The start of a reply line not complete yet. */
  private buffered = '';

  private constructor(private readonly path: string) {}

  /** The helper at `path` started, or undefined when it cannot run (the agent then spawns itself). */
  static start(path: string): Spawner | undefined {
    const s = new Spawner(path);
    return s.launch() ? s : undefined;
  }

  /** False once the helper is gone: callers use Node's spawn from then on. */
  get alive(): boolean {
    return this.child !== undefined;
  }

  /** Makes FIFOs (mode 0600) at `paths`. */
  mkfifo(paths: string[]): Promise<void> {
    return this.request(['mkfifo', ...paths]).then(() => undefined);
  }

  async spawn(r: SpawnRequest): Promise<SpawnedProcess> {
    const env = Object.entries(r.env).map(([k, v]) => `${k}=${v}`);
    const p = await this.request(['spawn', String(r.uid), String(r.gid), r.cwd, ...r.stdio, String(r.argv.length), ...r.argv, String(env.length), ...env]);
    if (!p) throw new Error('the spawn helper answered a spawn without a pid');
    return p;
  }

  /** Lets the helper go (it exits at the end of its input); processes it started run on. */
  close(): void {
    this.child?.stdin?.end();
  }

  private launch(): boolean {
    let child: ChildProcess;
    try {
      child = spawn(this.path, [], { stdio: ['pipe', 'pipe', 'inherit'] });
    } catch {
      return false;
    }
    if (child.pid === undefined) { child.on('error', () => undefined); return false; }
    this.child = child;
    child.on('error', () => this.lost());
    child.on('exit', () => this.lost());
    child.stdin!.on('error', () => this.lost());
    child.stdout!.setEncoding('latin1');
    child.stdout!.on('data', (d: string) => this.onData(d));
    return true;
  }

  private request(fields: string[]): Promise<Spawned | undefined> {
    const child = this.child;
    if (!child) return Promise.reject(new Error('the spawn helper is gone'));
    if (fields.some((f) => f.includes('\0'))) return Promise.reject(new SpawnError('EINVAL', 'request'));
    const id = String(++this.seq);
    fields.splice(1, 0, id);
    const body = Buffer.from(fields.join('\0') + '\0', 'utf8');
    const head = Buffer.alloc(4);
    head.writeUInt32LE(body.length, 0);
    return new Promise<Spawned | undefined>((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      child.stdin!.write(Buffer.concat([head, body]));
    });
  }

  private onData(d: string): void {
    this.buffered += d;
    let nl: number;
    while ((nl = this.buffered.indexOf('\n')) >= 0) {
      const line = this.buffered.slice(0, nl);
      this.buffered = this.buffered.slice(nl + 1);
      if (!this.onLine(line)) { this.child?.kill('SIGKILL'); this.lost(); return; }
    }
    if (this.buffered.length > 4096) { this.child?.kill('SIGKILL'); this.lost(); }
  }

  /** One reply; false when it makes no sense. */
  private onLine(line: string): boolean {
    const f = line.split(' ');
    const num = (s: string | undefined) => (s !== undefined && /^-?\d{1,10}$/.test(s) ? Number(s) : NaN);
    if (f[0] === 'S' && f.length === 3) {
      const pid = num(f[2]);
      const p = this.pending.get(f[1]!);
      if (!p || Number.isNaN(pid)) return false;
      this.pending.delete(f[1]!);
      // The process is tracked from here, not when the caller resumes: its exit may be in the
      // same read as its start.
      let proc: Spawned | undefined;
      if (pid > 0) this.running.set(pid, (proc = new Spawned(pid)));
      p.resolve(proc);
      return true;
    }
    if (f[0] === 'F' && f.length === 4) {
      const p = this.pending.get(f[1]!);
      const errno = num(f[2]);
      if (!p || Number.isNaN(errno)) return false;
      this.pending.delete(f[1]!);
      p.reject(new SpawnError(ERRNO_NAMES.get(errno) ?? `errno ${errno}`, f[3]!));
      return true;
    }
    if (f[0] === 'X' && f.length === 4) {
      const pid = num(f[1]);
      const code = num(f[2]);
      const sig = num(f[3]);
      if (Number.isNaN(pid) || Number.isNaN(code) || Number.isNaN(sig)) return false;
      const p = this.running.get(pid);
      this.running.delete(pid);
      p?.end(code >= 0 ? code : null, code >= 0 ? null : (SIGNAL_NAMES.get(sig) ?? 'SIGKILL'));
      return true;
    }
    return false;
  }

  /**
   * The helper is gone. Waiting requests fail; processes it started are reparented to init, so
   * their exit status is lost: each is watched until it is gone and reported with no code.
   */
  private lost(): void {
    if (!this.child) return;
    this.child = undefined;
    for (const p of this.pending.values()) p.reject(new Error('the spawn helper is gone'));
    this.pending.clear();
    const orphans = [...this.running.values()];
    this.running.clear();
    if (orphans.length === 0) return;
    const timer = setInterval(() => {
      for (let i = orphans.length - 1; i >= 0; i--) {
        if (isGone(orphans[i]!.pid)) orphans.splice(i, 1)[0]!.end(null, null);
      }
      if (orphans.length === 0) clearInterval(timer);
    }, ORPHAN_POLL_MS);
    timer.unref();
  }
}

/**
 * Whether a process has ended. A zombie has: an orphan's new parent (init, or a container's
 * first process) may be slow to reap it, or never do so, and `kill(pid, 0)` succeeds on a zombie.
 */
function isGone(pid: number): boolean {
  try { process.kill(pid, 0); } catch { return true; }
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'latin1');
    const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
    return state === 'Z' || state === 'X';
  } catch {
    return true;
  }
}
