// capsule-agent: runs inside a sandbox guest (Debian's Node 18), started by the image's init as
// root. It serves the host (the capsule server) on TCP port 49983: processes (start, stream,
// stdin, signals, list, reattach), files (read, write, stat, list, mkdir, move, remove) and
// health. Protocol: agent/protocol.ts; security and limits: docs/agent.md.
//
//   capsule-agent [--port 49983] [--host 0.0.0.0] (--token-file FILE | --token TOKEN)
//                 [--default-user user] [--allow-local] [--spawner PATH|none] [--receiver PATH|none]
//
// Node built-ins only (bundled by esbuild into one file, target node18).
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { createHash, timingSafeEqual } from 'node:crypto';
import * as fs from 'node:fs';
import { createServer as createHttpServer } from 'node:http';
import { createServer, Socket } from 'node:net';
import * as os from 'node:os';
import { basename, dirname, isAbsolute, join, resolve } from 'node:path';
import {
  AGENT_PORT, CH_STDERR, CH_STDIN, CH_STDOUT, FrameReader, KIND_DATA, KIND_JSON, MAGIC, PING_FRAME, PING_INTERVAL_MS, PROTOCOL_VERSION, SIGNALS,
  jsonFrame, writeDataFrames, type AgentErrorCode, type ExecRequest, type ExitInfo, type FileStat, type Frame, type ProcessInfo,
} from './protocol.js';
import { SpawnError, Spawner, type ExitHandler, type SpawnRequest, type SpawnedProcess } from './spawner.js';

export const AGENT_VERSION = '0.1.0';
/** Output kept per process while no client is attached (older bytes are dropped, and counted). */
const DETACHED_BUFFER_BYTES = 1024 * 1024;
/** Finished processes remembered (for a late attach) at most this many, this long. */
const MAX_FINISHED = 256;
const FINISHED_TTL_MS = 10 * 60_000;
/** Processes that may run at once. */
const MAX_PROCESSES = 1024;
/** Connections at once. */
const MAX_CONNECTIONS = 512;
/** After a process exits, its pipes get this long to close (a daemonized child may hold them). */
const PIPE_GRACE_MS = 1000;
/** A connection must present MAGIC and its request within this time. */
const HELLO_TIMEOUT_MS = 10_000;
const MAX_LIST_ENTRIES = 10_000;
/** The longest process timeout a request may ask for. */
const MAX_TIMEOUT_MS = 7 * 24 * 3600_000;
/** A process start waits at most this long for the FIFO pool's refill before it gets socket pairs. */
const FIFO_WAIT_MS = 2000;
/** An upload that stalls this long is abandoned (its temporary file removed). */
const UPLOAD_IDLE_MS = 120_000;
/** Uploads at least this large go through capsule-recv when the client offers them raw: below, a helper's start costs more than it saves. */
const RAW_MIN_BYTES = 1024 * 1024;

class AgentError extends Error {
  constructor(readonly code: AgentErrorCode, message: string) { super(message); }
}

interface Options {
  port: number;
  host: string;
  token: string;
  defaultUser: string | undefined;
  allowLocal: boolean;
  /** capsule-spawn's path, or 'none': Node's spawn for every process. */
  spawner: string;
  /** capsule-recv's path, or 'none': every upload comes in frames through the agent itself. */
  receiver: string;
}

function parseArgs(argv: string[]): Options {
  // capsule-spawn is installed beside the agent's bundle (agent/build.mjs).
  const here = dirname(process.argv[1] ?? '.');
  const o: Partial<Options> & { tokenFile?: string } = { port: AGENT_PORT, host: '0.0.0.0', allowLocal: false, spawner: join(here, 'capsule-spawn'), receiver: join(here, 'capsule-recv') };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const val = () => { const v = argv[++i]; if (v === undefined) throw new Error(`${a} needs a value`); return v; };
    if (a === '--port') o.port = Number(val());
    else if (a === '--host') o.host = val();
    else if (a === '--token') o.token = val();
    else if (a === '--token-file') o.tokenFile = val();
    else if (a === '--default-user') o.defaultUser = val();
    else if (a === '--allow-local') o.allowLocal = true;
    else if (a === '--spawner') o.spawner = val();
    else if (a === '--receiver') o.receiver = val();
    else throw new Error(`unknown argument ${a}`);
  }
  if (o.tokenFile) o.token = fs.readFileSync(o.tokenFile, 'utf8').trim();
  if (!o.token || o.token.length < 16) throw new Error('a token of at least 16 characters is required (--token-file or --token)');
  return o as Options;
}

// ---- users ----

interface User { name: string; uid: number; gid: number; home: string; shell: string }

/** /etc/passwd parsed, kept while the file's mtime and size stay (every exec looks a user up). */
let passwd: { key: string; users: Map<string, User> } | undefined;

function lookupUser(name: string): User | undefined {
  let key: string;
  try { const st = fs.statSync('/etc/passwd'); key = `${st.mtimeMs}:${st.size}:${st.ino}`; } catch { return undefined; }
  if (passwd?.key !== key) {
    let text: string;
    try { text = fs.readFileSync('/etc/passwd', 'utf8'); } catch { return undefined; }
    const users = new Map<string, User>();
    for (const line of text.split('\n')) {
      const f = line.split(':');
      if (f.length >= 7 && !users.has(f[0]!)) users.set(f[0]!, { name: f[0]!, uid: Number(f[2]), gid: Number(f[3]), home: f[5]!, shell: f[6]! });
    }
    passwd = { key, users };
  }
  const u = passwd.users.get(name);
  return u && { ...u };
}

// ---- processes ----

const PTY_HELPER = String.raw`
import os, sys, pty, select, signal, struct, fcntl, termios
cols, rows = int(sys.argv[1]), int(sys.argv[2])
argv = sys.argv[3:]
pid, fd = pty.fork()
if pid == 0:
    try:
        os.execvp(argv[0], argv)
    except OSError as e:
        sys.stderr.write("%s: %s\n" % (argv[0], e.strerror)); os._exit(127)
def size(c, r):
    try: fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", r, c, 0, 0))
    except OSError: pass
size(cols, rows)
for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2, signal.SIGCONT):
    signal.signal(s, lambda n, f: os.kill(pid, n))
fds = [0, fd, 3]
ctl = b""
while fd in fds:
    try: r, _, _ = select.select(fds, [], [])
    except InterruptedError: continue
    if fd in r:
        try: d = os.read(fd, 65536)
        except OSError: d = b""
        if not d: break
        os.write(1, d)
    if 0 in r:
        d = os.read(0, 65536)
        if d: os.write(fd, d)
        else: fds.remove(0)
    if 3 in r:
        d = os.read(3, 4096)
        if not d: fds.remove(3)
        ctl += d
        while b"\n" in ctl:
            line, ctl = ctl.split(b"\n", 1)
            p = line.split()
            if len(p) == 2: size(int(p[0]), int(p[1]))
_, st = os.waitpid(pid, 0)
if os.WIFSIGNALED(st):
    signal.signal(os.WTERMSIG(st), signal.SIG_DFL); os.kill(os.getpid(), os.WTERMSIG(st))
sys.exit(os.WEXITSTATUS(st) if os.WIFEXITED(st) else 1)
`;

type Chunk = { ch: number; data: Buffer };

/** The agent's ends of a process's stdio. */
interface ProcIo {
  stdin: NodeJS.WritableStream & { destroyed: boolean; writableEnded: boolean; on(e: 'error', f: () => void): unknown; once(e: 'drain', f: () => void): unknown } | null;
  stdout: NodeJS.ReadableStream | null;
  stderr: NodeJS.ReadableStream | null;
}

/**
 * Children get real pipes (FIFOs) for stdio where possible: libuv's 'pipe' stdio are Unix socket
 * pairs, and on a socket `echo x > /dev/stderr` fails (ENXIO: /proc/self/fd/2 cannot be opened)
 * and bash takes stdin for an rshd connection and reads ~/.bashrc. FIFOs are made ahead of time
 * (48 at a time, by capsule-spawn or `mkfifo`) in a private directory and unlinked once opened;
 * when the pool is empty a process gets socket pairs.
 */
class FifoPool {
  private ready: string[] = [];
  private filling = false;
  /** Called when a refill ends (done or failed). */
  private waiters: Array<() => void> = [];
  private broken = false;
  private seq = 0;
  private readonly dir: string | undefined;

  constructor(private readonly spawner: () => Spawner | undefined) {
    try {
      this.dir = fs.mkdtempSync(join(os.tmpdir(), 'capsule-agent-'));
      fs.chmodSync(this.dir, 0o700);
      this.refill();
    } catch {
      this.broken = true;
    }
  }

  /**
   * Waits (at most `ms`) for a refill in flight when fewer than 3 FIFOs are ready: a burst of
   * processes would otherwise empty the pool and the next ones get socket pairs, where
   * `echo > /dev/stderr` fails (ENXIO). A pool that cannot fill does not make anyone wait.
   */
  async settle(ms: number): Promise<void> {
    if (this.ready.length >= 3 || this.broken || !this.dir) return;
    this.refill();
    if (!this.filling) return;
    await new Promise<void>((resolve) => {
      const timer = setTimeout(done, ms);
      function done() { clearTimeout(timer); resolve(); }
      this.waiters.push(done);
    });
  }

  /**
   * n FIFOs (for stdout, stderr and, when wanted, stdin), owned by the child's user (a process
   * reopens its stdio through /proc/self/fd: `echo > /dev/stderr`), or undefined when none are ready.
   */
  private take(owner: { uid: number; gid: number }, n = 3): string[] | undefined {
    if (this.ready.length < n) { this.refill(); return undefined; }
    const names = this.ready.splice(0, n);
    if (this.ready.length < 24) this.refill();
    try {
      if (owner.uid !== process.getuid!() || owner.gid !== process.getgid!()) for (const n of names) fs.chownSync(n, owner.uid, owner.gid);
    } catch {
      for (const n of names) fs.rmSync(n, { force: true });
      return undefined;
    }
    return names;
  }

  /**
   * The agent's ends of FIFOs for a child that opens the other ends by path (capsule-spawn):
   * stdout and stderr, and stdin when wanted (else the child's stdin path is /dev/null).
   * `release` after the child has started (or failed) lets the child have stdin and unlinks them.
   */
  openForChild(owner: { uid: number; gid: number }, withStdin: boolean): { paths: [string, string, string]; io: ProcIo; release: () => void } | undefined {
    const names = this.take(owner, withStdin ? 3 : 2);
    if (!names) return undefined;
    const { O_RDONLY, O_WRONLY, O_RDWR, O_NONBLOCK } = fs.constants;
    const fds: number[] = [];
    const open = (p: string, flags: number) => { const fd = fs.openSync(p, flags); fds.push(fd); return fd; };
    const unlinkAll = () => { for (const n of names) { try { fs.unlinkSync(n); } catch { /* gone */ } } };
    try {
      const [pout, perr, pin] = names;
      // The read-write placeholder lets the agent open its non-blocking write end of stdin
      // (ENXIO without a reader); it is closed once the child has its read end, so that the
      // child is the only reader.
      const placeholder = pin === undefined ? undefined : open(pin, O_RDWR);
      const inW = pin === undefined ? undefined : open(pin, O_WRONLY | O_NONBLOCK);
      const outR = open(pout!, O_RDONLY | O_NONBLOCK);
      const errR = open(perr!, O_RDONLY | O_NONBLOCK);
      const io: ProcIo = {
        stdin: inW === undefined ? null : new Socket({ fd: inW, readable: false, writable: true }) as unknown as ProcIo['stdin'],
        stdout: new Socket({ fd: outR, readable: true, writable: false }),
        stderr: new Socket({ fd: errR, readable: true, writable: false }),
      };
      for (const x of [io.stdin, io.stdout, io.stderr]) x?.on('error', () => { /* the process went */ });
      return {
        paths: [pin ?? '/dev/null', pout!, perr!], io,
        release: () => {
          if (placeholder !== undefined) { try { fs.closeSync(placeholder); } catch { /* closed */ } }
          // The names are not needed any more; unlinking can wait until the answer is out.
          setImmediate(unlinkAll);
        },
      };
    } catch {
      for (const fd of fds) { try { fs.closeSync(fd); } catch { /* closed */ } }
      unlinkAll();
      return undefined;
    }
  }

  /**
   * For Node's spawn: the same FIFOs with the child's ends opened here too (its stdio fds; the
   * caller closes them once the child has its copies), and the agent's streams.
   */
  open(owner: { uid: number; gid: number }): { childFds: number[]; io: ProcIo; close: () => void } | undefined {
    const f = this.openForChild(owner, true);
    if (!f) return undefined;
    const { O_RDONLY, O_WRONLY } = fs.constants;
    const childFds: number[] = [];
    try {
      // stdin's read end blocks (a plain read end); the placeholder is its writer until release.
      f.paths.forEach((p, i) => childFds.push(fs.openSync(p, i === 0 ? O_RDONLY : O_WRONLY)));
    } catch {
      for (const fd of childFds) { try { fs.closeSync(fd); } catch { /* closed */ } }
      for (const x of [f.io.stdin, f.io.stdout, f.io.stderr]) (x as unknown as Socket | null)?.destroy();
      f.release();
      return undefined;
    }
    f.release();
    return {
      childFds, io: f.io,
      close: () => { for (const fd of childFds) { try { fs.closeSync(fd); } catch { /* closed */ } } },
    };
  }

  private refill(): void {
    if (this.filling || this.broken || !this.dir) return;
    this.filling = true;
    const names = Array.from({ length: 48 }, () => join(this.dir!, `p${this.seq++}`));
    const done = (err: unknown) => {
      this.filling = false;
      if (err) this.broken = true;
      else this.ready.push(...names);
      const waiters = this.waiters;
      this.waiters = [];
      for (const w of waiters) w();
    };
    const spawner = this.spawner();
    if (spawner) spawner.mkfifo(names).then(() => done(undefined), done);
    else execFile('mkfifo', ['-m', '0600', ...names], done);
  }
}


class Proc {
  readonly startedAt = new Date();
  private readonly t0 = Date.now();
  exit: ExitInfo | undefined;
  attached: Conn | undefined;
  private buffer: Chunk[] = [];
  private bufBytes = 0;
  droppedBytes = 0;
  private timedOut = false;
  private timer: NodeJS.Timeout | undefined;
  private exitStatus: { code: number | null; signal: NodeJS.Signals | null } | undefined;
  private openPipes = 2;
  finishedAt = 0;

  constructor(readonly pid: number, onExit: (fn: ExitHandler) => void, private readonly io: ProcIo, readonly req: ExecRequest, readonly argv: string[], readonly user: User,
    private readonly ctl: NodeJS.WritableStream | undefined, private readonly onDone: (p: Proc) => void) {
    const pipe = (stream: NodeJS.ReadableStream | null, ch: number) => {
      if (!stream) { this.openPipes--; return; }
      stream.on('data', (d: Buffer) => this.output(ch, d));
      stream.on('end', () => this.pipeClosed());
      stream.on('error', () => this.pipeClosed());
    };
    pipe(io.stdout, CH_STDOUT);
    pipe(io.stderr, CH_STDERR);
    io.stdin?.on('error', () => { /* the process closed its stdin */ });
    onExit((code, signal) => {
      this.exitStatus = { code, signal };
      if (this.timer) clearTimeout(this.timer);
      if (this.openPipes === 0) this.finish();
      // A daemonized child may keep the pipes: report the exit anyway, and keep reading them.
      else setTimeout(() => this.finish(), PIPE_GRACE_MS).unref();
    });
    if (req.timeoutMs !== undefined) {
      this.timer = setTimeout(() => { this.timedOut = true; this.kill('SIGKILL'); }, req.timeoutMs);
    }
  }

  get running(): boolean { return this.exit === undefined; }

  info(): ProcessInfo {
    return {
      pid: this.pid, cmd: this.argv, user: this.user.name, ...(this.req.tag !== undefined ? { tag: this.req.tag } : {}), pty: !!this.req.pty,
      background: !!this.req.background, startedAt: this.startedAt.toISOString(), running: this.running, attached: !!this.attached,
      ...(this.exit ? { exit: this.exit } : {}), droppedBytes: this.droppedBytes,
    };
  }

  /** The whole process group (it leads one): a shell's children go too. */
  kill(signal: NodeJS.Signals): void {
    if (this.exitStatus) return;
    try { process.kill(-this.pid, signal); } catch { try { process.kill(this.pid, signal); } catch { /* gone */ } }
  }

  stdin(data: Buffer): boolean {
    const s = this.io.stdin;
    if (!s || s.destroyed || s.writableEnded) return true;
    return s.write(data);
  }

  endStdin(): void {
    const s = this.io.stdin;
    if (s && !s.destroyed && !s.writableEnded) s.end();
  }

  onStdinDrain(fn: () => void): void {
    const s = this.io.stdin;
    if (!s || s.destroyed) fn(); else s.once('drain', fn);
  }

  resize(cols: number, rows: number): void {
    this.ctl?.write(`${cols} ${rows}\n`);
  }

  /** A client takes the output: first what was kept, then live, then the exit. */
  attach(conn: Conn): void {
    if (this.attached && this.attached !== conn) this.attached.detached('another client attached to this process');
    this.attached = conn;
    const kept = this.buffer;
    this.buffer = [];
    this.bufBytes = 0;
    for (const c of kept) this.deliver(c.ch, c.data);
    if (this.exit) this.deliverExit();
  }

  detach(conn: Conn): void {
    if (this.attached !== conn) return;
    this.attached = undefined;
    this.resumePipes();
    if (!this.req.background && this.running) this.kill('SIGKILL');
  }

  private output(ch: number, data: Buffer): void {
    if (this.exit && !this.attached) return; // reported already; a daemonized child's output is discarded
    if (this.attached) return this.deliver(ch, data);
    if (this.exit) return;
    this.buffer.push({ ch, data });
    this.bufBytes += data.length;
    while (this.bufBytes > DETACHED_BUFFER_BYTES && this.buffer.length > 0) {
      const first = this.buffer[0]!;
      const over = this.bufBytes - DETACHED_BUFFER_BYTES;
      if (first.data.length <= over) {
        this.buffer.shift();
        this.bufBytes -= first.data.length;
        this.droppedBytes += first.data.length;
      } else {
        first.data = first.data.subarray(over);
        this.bufBytes -= over;
        this.droppedBytes += over;
      }
    }
  }

  private deliver(ch: number, data: Buffer): void {
    const conn = this.attached!;
    if (!conn.sendData(ch, data)) {
      // The client reads slower than the process writes: stop reading its pipes until it drains
      // (the process then blocks on a full pipe, as it would on a slow terminal).
      this.io.stdout?.pause();
      this.io.stderr?.pause();
      conn.onDrain(() => this.resumePipes());
    }
  }

  private resumePipes(): void {
    this.io.stdout?.resume();
    this.io.stderr?.resume();
  }

  private pipeClosed(): void {
    this.openPipes--;
    if (this.openPipes === 0 && this.exitStatus) this.finish();
  }

  private finish(): void {
    if (this.exit) return;
    const st = this.exitStatus!;
    this.exit = {
      exitCode: st.code, ...(st.signal ? { signal: st.signal } : {}), timedOut: this.timedOut, durationMs: Date.now() - this.t0,
    };
    this.finishedAt = Date.now();
    this.ctl?.end();
    // Pipes a daemonized child still holds are read and discarded from now on.
    this.resumePipes();
    if (this.attached) this.deliverExit();
    this.onDone(this);
  }

  private deliverExit(): void {
    const conn = this.attached!;
    this.attached = undefined;
    conn.finish({ exit: this.exit });
  }
}

class Processes {
  private readonly procs = new Map<number, Proc>();

  private readonly fifos: FifoPool;

  /** spawner: capsule-spawn, when it runs (else every process is started with Node's spawn). */
  constructor(private readonly defaultUser: () => User, private readonly spawner: Spawner | undefined) {
    this.fifos = new FifoPool(() => (spawner?.alive ? spawner : undefined));
  }

  /** How processes are started now: capsule-spawn, or Node's spawn (no helper, or it went). */
  get starter(): 'capsule-spawn' | 'node' {
    return this.spawner?.alive ? 'capsule-spawn' : 'node';
  }

  get(pid: number): Proc {
    const p = this.procs.get(pid);
    if (!p) throw new AgentError('not_found', `no process ${pid}`);
    return p;
  }

  list(): ProcessInfo[] {
    this.prune();
    return [...this.procs.values()].map((p) => p.info());
  }

  async start(req: ExecRequest): Promise<Proc> {
    this.prune();
    if ([...this.procs.values()].filter((p) => p.running).length >= MAX_PROCESSES) throw new AgentError('too_large', `at most ${MAX_PROCESSES} processes at once`);
    const user = resolveUser(req.user, this.defaultUser);
    let argv: string[];
    if (Array.isArray(req.cmd) && req.cmd.length > 0 && req.cmd.every((a) => typeof a === 'string')) argv = req.cmd;
    else if (typeof req.shell === 'string' && req.cmd === undefined) argv = [fs.existsSync('/bin/bash') ? '/bin/bash' : '/bin/sh', '-c', req.shell];
    else throw new AgentError('invalid_request', 'exactly one of cmd (a non-empty array of strings) and shell (a string)');
    if (req.timeoutMs !== undefined && !(Number.isInteger(req.timeoutMs) && req.timeoutMs > 0 && req.timeoutMs <= MAX_TIMEOUT_MS)) {
      throw new AgentError('invalid_request', 'timeoutMs: a positive integer');
    }
    const env: Record<string, string> = {
      PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin', HOME: user.home, USER: user.name, LOGNAME: user.name,
      SHELL: user.shell || '/bin/sh', LANG: 'C.UTF-8', TERM: req.pty ? 'xterm-256color' : 'dumb',
    };
    if (req.env !== undefined) {
      if (typeof req.env !== 'object' || req.env === null) throw new AgentError('invalid_request', 'env: an object of strings');
      for (const [k, v] of Object.entries(req.env)) {
        if (typeof v !== 'string' || k === '' || k.includes('=') || k.includes('\0') || v.includes('\0')) throw new AgentError('invalid_request', `env: bad variable ${JSON.stringify(k)}`);
        env[k] = v;
      }
    }
    // Without a cwd: the user's home, or / where it has none (nobody's /nonexistent).
    const cwd = req.cwd === undefined ? (fs.existsSync(user.home) ? user.home : '/') : resolvePath(req.cwd, user);
    let st: fs.Stats;
    try { st = fs.statSync(cwd); } catch { throw new AgentError('not_found', `cwd: no directory ${cwd}`); }
    if (!st.isDirectory()) throw new AgentError('not_a_directory', `cwd: ${cwd} is not a directory`);
    const asOther = user.uid !== process.getuid!();
    if (asOther && process.getuid!() !== 0) throw new AgentError('permission_denied', `the agent does not run as root: it cannot run processes as ${user.name}`);
    const owner = asOther ? { uid: user.uid, gid: user.gid } : { uid: process.getuid!(), gid: process.getgid!() };
    await this.fifos.settle(FIFO_WAIT_MS);
    // A process given no stdin reads /dev/null (as `docker exec` without -i).
    const helped = !req.pty && this.spawner?.alive ? this.fifos.openForChild(owner, wantsStdin(req)) : undefined;
    const p = helped
      ? await this.startWithHelper(helped, { argv, env, cwd, ...owner }, req, user)
      : this.startWithNode(argv, env, cwd, owner, req, user);
    this.procs.set(p.pid, p);
    if (req.stdin !== undefined) {
      if (typeof req.stdin !== 'string') throw new AgentError('invalid_request', 'stdin: base64');
      p.stdin(Buffer.from(req.stdin, 'base64'));
    }
    if (!req.stdinOpen) p.endStdin();
    return p;
  }

  /** Through capsule-spawn (vfork): the child opens the FIFOs whose other ends the agent holds. */
  private async startWithHelper(f: NonNullable<ReturnType<FifoPool['openForChild']>>, r: Omit<SpawnRequest, 'stdio'>, req: ExecRequest, user: User): Promise<Proc> {
    let sp: SpawnedProcess;
    try {
      sp = await this.spawner!.spawn({ ...r, stdio: f.paths });
    } catch (e) {
      for (const x of [f.io.stdin, f.io.stdout, f.io.stderr]) (x as unknown as Socket | null)?.destroy();
      if (e instanceof SpawnError) throw new AgentError('spawn_failed', `cannot run ${r.argv[0]}: ${e.errno} (${e.step})`);
      // The helper went away meanwhile: Node's spawn from now on.
      return this.startWithNode(r.argv, r.env, r.cwd, { uid: r.uid, gid: r.gid }, req, user);
    } finally {
      f.release();
    }
    return new Proc(sp.pid, (fn) => sp.onExit(fn), f.io, req, r.argv, user, undefined, () => this.prune());
  }

  /** Node's spawn (libuv: fork of the agent): for pseudo-terminals, and where the helper is missing. */
  private startWithNode(argv: string[], env: Record<string, string>, cwd: string, owner: { uid: number; gid: number }, req: ExecRequest, user: User): Proc {
    const ids = owner.uid !== process.getuid!() || owner.gid !== process.getgid!() ? owner : {};
    let child: ChildProcess;
    let ctl: NodeJS.WritableStream | undefined;
    const fifo = this.fifos.open(owner);
    const stdio: Array<'pipe' | 'ignore' | number> = fifo ? [...fifo.childFds] : ['pipe', 'pipe', 'pipe'];
    if (!req.pty && !wantsStdin(req)) stdio[0] = 'ignore'; // /dev/null, as through capsule-spawn
    try {
      if (req.pty) {
        const cols = clampInt(req.pty.cols, 1, 1000, 80);
        const rows = clampInt(req.pty.rows, 1, 1000, 24);
        child = spawn('python3', ['-c', PTY_HELPER, String(cols), String(rows), ...argv], { cwd, env, ...ids, detached: true, stdio: [...stdio, 'pipe'] });
        ctl = child.stdio[3] as NodeJS.WritableStream;
        (ctl as unknown as { on(e: string, f: () => void): void }).on('error', () => { /* the helper is gone */ });
      } else {
        child = spawn(argv[0]!, argv.slice(1), { cwd, env, ...ids, detached: true, stdio });
      }
    } finally {
      // The child has its own copies now.
      fifo?.close();
    }
    const io: ProcIo = fifo ? fifo.io : { stdin: child.stdin as ProcIo['stdin'], stdout: child.stdout, stderr: child.stderr };
    if (child.pid === undefined) {
      // spawn reports ENOENT / EACCES asynchronously, with no pid.
      const err = new AgentError('spawn_failed', `cannot run ${argv[0]}`);
      child.on('error', () => { /* reported here instead */ });
      if (fifo) for (const s of [fifo.io.stdin, fifo.io.stdout, fifo.io.stderr]) (s as unknown as Socket).destroy();
      throw err;
    }
    child.on('error', () => { /* exit follows */ });
    return new Proc(child.pid, (fn) => child.on('exit', fn), io, req, argv, user, ctl, () => this.prune());
  }

  /** Drops finished processes nobody is attached to: after FINISHED_TTL_MS, and beyond MAX_FINISHED. */
  private prune(): void {
    const now = Date.now();
    const finished = [...this.procs.values()].filter((p) => !p.running && !p.attached).sort((a, b) => a.finishedAt - b.finishedAt);
    finished.forEach((p, i) => {
      if (now - p.finishedAt > FINISHED_TTL_MS || finished.length - i > MAX_FINISHED) this.procs.delete(p.pid);
    });
  }

  forget(p: Proc): void {
    if (!p.running) this.procs.delete(p.pid);
  }
}

/** Whether a process gets a stdin pipe (else /dev/null). */
function wantsStdin(req: ExecRequest): boolean {
  return !!req.stdinOpen || req.stdin !== undefined;
}

function clampInt(v: unknown, min: number, max: number, dflt: number): number {
  return typeof v === 'number' && Number.isInteger(v) ? Math.min(max, Math.max(min, v)) : dflt;
}

function resolveUser(name: unknown, dflt: () => User): User {
  if (name === undefined) return dflt();
  if (typeof name !== 'string') throw new AgentError('invalid_request', 'user: a user name');
  const u = lookupUser(name);
  if (!u) throw new AgentError('invalid_request', `user: no user ${JSON.stringify(name)} in this guest`);
  return u;
}

function resolvePath(p: unknown, user: User): string {
  if (typeof p !== 'string' || p === '' || p.includes('\0')) throw new AgentError('invalid_request', 'path: a non-empty string');
  return isAbsolute(p) ? resolve(p) : resolve(user.home, p);
}

// ---- files ----

function fsError(e: unknown, path: string): AgentError {
  const code = (e as NodeJS.ErrnoException).code;
  const map: Record<string, AgentErrorCode> = {
    ENOENT: 'not_found', EACCES: 'permission_denied', EPERM: 'permission_denied', EEXIST: 'exists', ENOTDIR: 'not_a_directory',
    EISDIR: 'is_a_directory', ENOTEMPTY: 'not_empty', ENOSPC: 'no_space', EDQUOT: 'no_space', EROFS: 'permission_denied',
  };
  const mapped = code ? map[code] : undefined;
  const what: Record<AgentErrorCode, string> = {
    not_found: 'no such file or directory', permission_denied: 'permission denied', exists: 'already exists', not_a_directory: 'not a directory',
    is_a_directory: 'is a directory', not_empty: 'directory not empty', no_space: 'no space left on the guest\'s disk', unauthorized: '',
    invalid_request: '', not_regular: '', too_large: '', spawn_failed: '', internal: '',
  };
  if (mapped) return new AgentError(mapped, `${path}: ${what[mapped]}`);
  return new AgentError('internal', `${path}: ${(e as Error).message}`);
}

function statOf(path: string, st: fs.Stats, name = basename(path)): FileStat {
  const type = st.isFile() ? 'file' : st.isDirectory() ? 'dir' : st.isSymbolicLink() ? 'symlink' : 'other';
  const out: FileStat = { name, path, type, size: st.size, mode: st.mode & 0o7777, uid: st.uid, gid: st.gid, mtime: st.mtime.toISOString() };
  if (type === 'symlink') { try { out.target = fs.readlinkSync(path); } catch { /* raced */ } }
  return out;
}

function listDir(path: string): { entries: FileStat[]; truncated: boolean } {
  let names: string[];
  try { names = fs.readdirSync(path); } catch (e) { throw fsError(e, path); }
  names.sort();
  const truncated = names.length > MAX_LIST_ENTRIES;
  const entries: FileStat[] = [];
  for (const n of names.slice(0, MAX_LIST_ENTRIES)) {
    const p = join(path, n);
    try { entries.push(statOf(p, fs.lstatSync(p), n)); } catch { /* removed meanwhile */ }
  }
  return { entries, truncated };
}

/** mkdir -p, the new directories given to `user`. Returns whether `path` was made. */
function mkdirs(path: string, user: User): boolean {
  let first: string | undefined;
  try { first = fs.mkdirSync(path, { recursive: true, mode: 0o755 }); } catch (e) { throw fsError(e, path); }
  if (first === undefined) {
    if (!fs.statSync(path).isDirectory()) throw new AgentError('not_a_directory', `${path}: not a directory`);
    return false;
  }
  // Every directory from `first` down to `path` is new.
  for (let d = path; ; d = dirname(d)) {
    try { fs.chownSync(d, user.uid, user.gid); } catch { /* not root: they are ours */ }
    if (d === first || d === dirname(d)) break;
  }
  return true;
}

// ---- connections ----

let liveConnections = 0;

class Conn {
  private readonly reader: FrameReader;
  private closed = false;
  private handler: ((f: Frame) => void) | undefined;
  private pinger: NodeJS.Timeout | undefined;
  private onCloseFns: Array<() => void> = [];

  constructor(private readonly sock: Socket, private readonly agent: Agent) {
    this.reader = new FrameReader((f) => this.onFrame(f), (why) => this.fail('invalid_request', `protocol error: ${why}`));
    sock.on('data', (d: Buffer) => this.reader.push(d));
    sock.on('close', () => this.onClosed());
    sock.on('error', () => { /* close follows */ });
  }

  start(rest: Buffer): void {
    if (rest.length > 0) this.reader.push(rest);
  }

  sendJson(obj: unknown): boolean {
    if (this.closed) return true;
    return this.sock.write(jsonFrame(obj));
  }

  sendData(ch: number, data: Buffer): boolean {
    if (this.closed) return true;
    return writeDataFrames(this.sock, ch, data);
  }

  onDrain(fn: () => void): void {
    if (this.closed) return fn();
    this.sock.once('drain', fn);
  }

  /** The operation's last message; the connection ends after it. */
  finish(obj: unknown): void {
    this.sendJson(obj);
    this.end();
  }

  fail(code: AgentErrorCode, message: string): void {
    this.finish({ error: { code, message } });
  }

  /** Another client took the process this connection followed. */
  detached(why: string): void {
    this.finish({ detached: why });
  }

  end(): void {
    if (this.closed) return;
    this.closed = true;
    if (this.pinger) clearInterval(this.pinger);
    this.sock.end();
    // A peer that does not read its last frames does not hold the socket.
    setTimeout(() => this.sock.destroy(), 10_000).unref();
    this.runCloseFns();
  }

  pauseInput(): void { this.sock.pause(); }
  resumeInput(): void { this.sock.resume(); }

  private keepAlive(): void {
    this.pinger = setInterval(() => { if (!this.closed) this.sock.write(PING_FRAME); }, PING_INTERVAL_MS);
    this.pinger.unref();
  }

  private onClosed(): void {
    if (this.pinger) clearInterval(this.pinger);
    liveConnections--;
    this.closed = true;
    this.runCloseFns();
  }

  private runCloseFns(): void {
    const fns = this.onCloseFns;
    this.onCloseFns = [];
    for (const f of fns) f();
  }

  private onFrame(f: Frame): void {
    if (this.handler) return this.handler(f);
    // The first frame: the request, with the token.
    if (f.kind !== KIND_JSON) return this.fail('invalid_request', 'the first frame must be the request');
    this.sock.setTimeout(0);
    const req = f.msg;
    if (!this.agent.checkToken(req.token)) return this.fail('unauthorized', 'bad token');
    if (req.v !== PROTOCOL_VERSION) return this.fail('invalid_request', `protocol version ${String(req.v)} (this agent speaks ${PROTOCOL_VERSION})`);
    this.handler = () => this.fail('invalid_request', `unexpected frame for ${String(req.op)}`);
    try {
      this.dispatch(req);
    } catch (e) {
      this.failWith(e);
    }
  }

  private failWith(e: unknown): void {
    if (e instanceof AgentError) this.fail(e.code, e.message);
    else this.fail('internal', (e as Error).message);
  }

  private dispatch(req: Record<string, unknown>): void {
    const a = this.agent;
    switch (req.op) {
      case 'health': return this.finish({ ok: a.health() });
      case 'processes': return this.finish({ ok: { processes: a.procs.list() } });
      case 'signal': {
        const p = a.procs.get(Number(req.pid));
        p.kill(signalName(req.signal));
        return this.finish({ ok: { pid: p.pid } });
      }
      case 'exec': {
        // An early byte before the (slow in a busy guest) spawn: the client knows the request
        // arrived (its transport may be waiting for that: server/agent/transports.ts).
        this.sendJson({ accepted: true });
        // Frames that come while the process starts (stdin, eof, a signal) wait for it.
        const early: Frame[] = [];
        this.handler = (f) => { early.push(f); };
        a.procs.start(req as unknown as ExecRequest).then((p) => {
          if (this.closed) { if (!p.req.background) p.kill('SIGKILL'); return; }
          this.follow(p);
          for (const f of early) this.handler!(f);
        }, (e: unknown) => this.failWith(e));
        return;
      }
      case 'attach': {
        const p = a.procs.get(Number(req.pid));
        if (!p.running && !p.attached) {
          // Finished: what it left, then its exit; forgotten afterwards.
          this.sendJson({ started: p.info() });
          this.onCloseFns.push(() => a.procs.forget(p));
        }
        this.follow(p, true);
        return;
      }
      case 'stat': {
        const user = resolveUser(req.user, a.defaultUser);
        const path = resolvePath(req.path, user);
        try { return this.finish({ ok: statOf(path, fs.lstatSync(path)) }); } catch (e) { throw fsError(e, path); }
      }
      case 'list': {
        const user = resolveUser(req.user, a.defaultUser);
        return this.finish({ ok: listDir(resolvePath(req.path, user)) });
      }
      case 'mkdir': {
        const user = resolveUser(req.user, a.defaultUser);
        const path = resolvePath(req.path, user);
        return this.finish({ ok: { path, created: mkdirs(path, user) } });
      }
      case 'move': {
        const user = resolveUser(req.user, a.defaultUser);
        const from = resolvePath(req.from, user);
        const to = resolvePath(req.to, user);
        try { fs.renameSync(from, to); } catch (e) { throw fsError(e, (e as NodeJS.ErrnoException).code === 'ENOENT' ? from : to); }
        return this.finish({ ok: { from, to } });
      }
      case 'remove': {
        const user = resolveUser(req.user, a.defaultUser);
        const path = resolvePath(req.path, user);
        try { fs.lstatSync(path); } catch (e) { throw fsError(e, path); }
        if (path === '/') throw new AgentError('invalid_request', 'not removing /');
        try { fs.rmSync(path, { recursive: req.recursive !== false, force: false }); } catch (e) { throw fsError(e, path); }
        return this.finish({ ok: { path } });
      }
      case 'read': return this.read(req);
      case 'write': return this.write(req);
      case 'set-clock': {
        this.setClock(req.epochMs);
        return;
      }
      default: throw new AgentError('invalid_request', `unknown op ${JSON.stringify(req.op)}`);
    }
  }

  /**
   * Sets the guest's wall clock (after a restore from a snapshot, the guest's clock is the
   * snapshot's: minutes or days behind). `date` does it (CAP_SYS_TIME: the agent is root); the
   * answer says how far the clock moved.
   */
  private setClock(epochMs: unknown): void {
    // 2000-01-01 .. 2200-01-01: anything else is not a time the host meant.
    if (typeof epochMs !== 'number' || !Number.isFinite(epochMs) || epochMs < 946_684_800_000 || epochMs > 7_258_118_400_000) {
      throw new AgentError('invalid_request', 'epochMs: a time in milliseconds since 1970, between 2000 and 2200');
    }
    const before = Date.now();
    execFile('date', ['-u', '-s', `@${(epochMs / 1000).toFixed(3)}`], { timeout: 5000 }, (err, _out, stderr) => {
      if (err) return this.fail('internal', `date -s: ${(stderr || err.message).trim()}`);
      this.finish({ ok: { movedMs: epochMs - before, time: new Date().toISOString() } });
    });
  }

  /** Streams a process: stdin and control messages in, output and the exit out. */
  private follow(p: Proc, attach = false): void {
    this.keepAlive();
    if (!attach || p.running) this.sendJson({ started: p.info() });
    this.onCloseFns.push(() => p.detach(this));
    this.handler = (f) => {
      if (f.kind === KIND_DATA) {
        if (f.channel !== CH_STDIN) return this.fail('invalid_request', 'data frames from the client are stdin (channel 0)');
        if (!p.stdin(f.data)) { this.pauseInput(); p.onStdinDrain(() => this.resumeInput()); }
      } else if (f.kind === KIND_JSON) {
        const m = f.msg;
        if (m.eof === true) p.endStdin();
        else if (typeof m.signal === 'string') { try { p.kill(signalName(m.signal)); } catch (e) { this.sendJson({ warning: (e as Error).message }); } }
        else if (m.resize && typeof m.resize === 'object') {
          const r = m.resize as { cols?: unknown; rows?: unknown };
          p.resize(clampInt(r.cols, 1, 1000, 80), clampInt(r.rows, 1, 1000, 24));
        }
      }
    };
    p.attach(this);
  }

  private read(req: Record<string, unknown>): void {
    const user = resolveUser(req.user, this.agent.defaultUser);
    const path = resolvePath(req.path, user);
    let st: fs.Stats;
    try { st = fs.statSync(path); } catch (e) { throw fsError(e, path); }
    if (st.isDirectory()) return this.finish({ ok: { dir: statOf(path, st), ...listDir(path) } });
    if (!st.isFile()) throw new AgentError('not_regular', `${path}: not a regular file`);
    let fd: number;
    try { fd = fs.openSync(path, 'r'); } catch (e) { throw fsError(e, path); }
    this.keepAlive();
    this.sendJson({ file: statOf(path, st) });
    const stream = fs.createReadStream('', { fd, highWaterMark: 256 * 1024 });
    stream.on('data', (d: Buffer | string) => {
      if (!this.sendData(CH_STDOUT, d as Buffer)) { stream.pause(); this.onDrain(() => stream.resume()); }
    });
    stream.on('end', () => this.finish({ ok: { size: stream.bytesRead } }));
    stream.on('error', (e) => this.fail(fsError(e, path).code, fsError(e, path).message));
    this.onCloseFns.push(() => stream.destroy());
    this.handler = () => { /* nothing expected */ };
  }

  private write(req: Record<string, unknown>): void {
    const user = resolveUser(req.user, this.agent.defaultUser);
    const path = resolvePath(req.path, user);
    const mode = typeof req.mode === 'number' ? req.mode & 0o7777 : 0o644;
    try { if (fs.statSync(path).isDirectory()) throw new AgentError('is_a_directory', `${path}: is a directory`); } catch (e) {
      if (e instanceof AgentError) throw e;
    }
    mkdirs(dirname(path), user);
    // Written beside the target and renamed over it at the end: a reader never sees half a file,
    // and a transfer that breaks off leaves the old file.
    const tmp = join(dirname(path), `.${basename(path)}.capsule-${process.pid}-${Math.random().toString(36).slice(2, 10)}`);
    let fd: number;
    try { fd = fs.openSync(tmp, 'wx', mode); } catch (e) { throw fsError(e, path); }
    let done = false;
    const abort = () => { if (!done) { done = true; fs.rmSync(tmp, { force: true }); } };
    const commit = (size: number) => {
      if (done) return;
      try {
        fs.chmodSync(tmp, mode);
        try { fs.chownSync(tmp, user.uid, user.gid); } catch { /* not root */ }
        fs.renameSync(tmp, path);
      } catch (e) {
        abort();
        const err = fsError(e, path);
        return this.fail(err.code, err.message);
      }
      done = true;
      this.finish({ ok: { path, size } });
    };
    this.onCloseFns.push(abort);
    this.keepAlive();
    const size = rawSize(req);
    if (size !== undefined && this.receiveRaw(fd, size, path, abort, commit)) return;
    this.receiveFrames(fd, path, abort, commit);
  }

  /**
   * A large upload of a known size: the connection is handed to capsule-recv, which copies its
   * next `size` bytes (sent unframed after {"ready":true,"raw":true}) into the file; then the
   * client's {"eof":true} frame commits it. False when it cannot be (no helper, bytes already
   * read past the request): the caller uses frames. A helper that cannot be started (no
   * processes or descriptors left) falls back to frames too, before anything was announced.
   */
  private receiveRaw(fd: number, size: number, path: string, abort: () => void, commit: (size: number) => void): boolean {
    const receiver = this.agent.receiver;
    const handle = (this.sock as unknown as { _handle?: { readStop?: () => number; readStart?: () => number; reading?: boolean; fd?: number } })._handle;
    const sockFd = handle?.fd;
    if (!receiver || size < RAW_MIN_BYTES || this.reader.buffered > 0 || this.sock.readableLength > 0 || typeof handle?.readStop !== 'function' || typeof handle.readStart !== 'function' || typeof sockFd !== 'number' || sockFd < 0) return false;
    // Node must not read the connection while the helper does: its next bytes are the file's.
    // The handle stops reading, and is marked as reading so that the stream's own read-ahead
    // (Readable's maybeReadMore, a tick later) does not start it again; the helper gets the
    // descriptor itself (a stream in `stdio` would be wrapped in a second socket, closed at exit).
    this.sock.pause();
    handle.readStop();
    handle.reading = true;
    // Back to Node: the handle reads again itself (the stream may be waiting for a read it
    // asked for while marked, so resume() alone would not start one).
    const giveBack = () => {
      handle.readStart!();
      this.sock.resume();
    };
    let child: ChildProcess;
    try {
      child = spawn(receiver, [String(size), String(UPLOAD_IDLE_MS / 1000)], { stdio: [sockFd, fd, 'pipe'] });
    } catch {
      giveBack();
      return false;
    }
    let spawned = false;
    let stderr = '';
    let eofTimer: NodeJS.Timeout | undefined;
    child.on('error', (e) => {
      if (!spawned) {
        // Nothing was announced yet: the upload comes in frames after all.
        giveBack();
        return this.receiveFrames(fd, path, abort, commit);
      }
      abort();
      this.fail('internal', `${path}: capsule-recv: ${e.message}`);
    });
    child.on('spawn', () => {
      spawned = true;
      fs.closeSync(fd);
      this.onCloseFns.push(() => { clearTimeout(eofTimer); if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL'); });
      this.handler = () => { /* nothing comes in frames now */ };
      this.sendJson({ ready: true, raw: true });
    });
    child.stderr?.on('data', (d: Buffer) => { if (stderr.length < 1000) stderr += d.toString(); });
    child.on('close', (code, signal) => {
      if (!spawned) return;
      // The connection is the agent's again: the client's {"eof":true} (it sent no more than it
      // said) commits the file, and the answer goes out; a client that never sends it is given
      // up on like a stalled upload.
      this.handler = (f) => {
        clearTimeout(eofTimer);
        if (f.kind === KIND_JSON && f.msg.eof === true) return commit(size);
        abort();
        this.fail('invalid_request', `${path}: more than the ${size} bytes the upload announced`);
      };
      giveBack();
      if (code === 0) {
        eofTimer = setTimeout(() => { abort(); this.fail('invalid_request', `${path}: no end of the upload within ${UPLOAD_IDLE_MS / 1000} s of its last byte`); }, UPLOAD_IDLE_MS);
        return;
      }
      abort();
      const err = receiveError(stderr, code, signal, path);
      this.fail(err.code, err.message);
    });
    return true;
  }

  /** The upload in data frames, through Node, then {"eof":true}. */
  private receiveFrames(fd: number, path: string, abort: () => void, commit: (size: number) => void): void {
    // A deep buffer: the socket is paused only when the disk falls this far behind.
    const out = fs.createWriteStream('', { fd, autoClose: true, highWaterMark: 4 * 1024 * 1024 });
    let size = 0;
    let failed = false;
    // An upload that stalls this long is abandoned (the temporary file goes). Its own timer, reset
    // by what comes in: the socket's idle timeout would be reset by the agent's own pings.
    const stall = setTimeout(() => this.sock.destroy(), UPLOAD_IDLE_MS);
    this.onCloseFns.push(() => { clearTimeout(stall); out.destroy(); });
    out.on('error', (e) => { failed = true; const err = fsError(e, path); abort(); this.fail(err.code, err.message); });
    this.sendJson({ ready: true });
    this.handler = (f) => {
      if (failed) return;
      stall.refresh();
      if (f.kind === KIND_DATA) {
        size += f.data.length;
        if (!out.write(f.data)) { this.pauseInput(); out.once('drain', () => this.resumeInput()); }
      } else if (f.kind === KIND_JSON && f.msg.eof === true) {
        clearTimeout(stall);
        out.end(() => { if (!failed) commit(size); });
      }
    };
  }
}

/** The exact size of a write that asks to be sent raw, if it does (and says one that can be). */
function rawSize(req: Record<string, unknown>): number | undefined {
  return req.raw === true && Number.isSafeInteger(req.size) && (req.size as number) >= 0 ? (req.size as number) : undefined;
}

function executable(path: string | undefined): string | undefined {
  if (!path || path === 'none') return undefined;
  try {
    fs.accessSync(path, fs.constants.X_OK);
    return path;
  } catch {
    return undefined;
  }
}

/** capsule-recv's "<step>: <errno|eof> <bytes>" line as the agent's error. */
function receiveError(stderr: string, code: number | null, signal: NodeJS.Signals | null, path: string): AgentError {
  const m = /^(read|write): (\w+) (\d+)/.exec(stderr);
  if (m?.[1] === 'write') return fsError(Object.assign(new Error(`write: ${m[2]}`), { code: m[2] }), path);
  if (m?.[2] === 'ETIMEDOUT') return new AgentError('invalid_request', `${path}: the upload stalled after ${m[3]} bytes`);
  if (m) return new AgentError('invalid_request', `${path}: the upload ended after ${m[3]} bytes (${m[2]})`);
  return new AgentError('internal', `${path}: capsule-recv ${signal ? `was killed by ${signal}` : `exited with ${String(code)}`}${stderr.trim() ? `: ${stderr.trim().slice(0, 200)}` : ''}`);
}

function signalName(s: unknown): NodeJS.Signals {
  if (typeof s === 'string' && (SIGNALS as readonly string[]).includes(s)) return s as NodeJS.Signals;
  throw new AgentError('invalid_request', `signal: one of ${SIGNALS.join(', ')}`);
}

// ---- the agent ----

function meminfo(): Record<string, number> {
  const out: Record<string, number> = {};
  try {
    for (const line of fs.readFileSync('/proc/meminfo', 'utf8').split('\n')) {
      const m = /^(\w+):\s+(\d+) kB/.exec(line);
      if (m) out[m[1]!] = Number(m[2]) * 1024;
    }
  } catch { /* not Linux */ }
  return out;
}

export class Agent {
  readonly procs: Processes;
  private readonly tokenHash: Buffer;
  readonly defaultUser: () => User;
  private readonly started = Date.now();

  constructor(private readonly o: Options) {
    this.tokenHash = createHash('sha256').update(o.token).digest();
    this.defaultUser = () => {
      const u = (o.defaultUser && lookupUser(o.defaultUser)) || lookupUser(os.userInfo().username);
      if (u) return u;
      const me = os.userInfo();
      return { name: me.username, uid: me.uid, gid: me.gid, home: me.homedir, shell: me.shell ?? '/bin/sh' };
    };
    this.procs = new Processes(this.defaultUser, o.spawner === 'none' ? undefined : Spawner.start(o.spawner));
    this.receiver = executable(o.receiver);
  }

  /** capsule-recv's path when it is there: large uploads go through it (Conn.write). */
  readonly receiver: string | undefined;

  checkToken(t: unknown): boolean {
    if (typeof t !== 'string') return false;
    return timingSafeEqual(createHash('sha256').update(t).digest(), this.tokenHash);
  }

  health(): Record<string, unknown> {
    const m = meminfo();
    return {
      version: AGENT_VERSION, protocol: PROTOCOL_VERSION, time: new Date().toISOString(), uptimeSec: os.uptime(), agentUptimeSec: (Date.now() - this.started) / 1000,
      memory: { totalBytes: m.MemTotal ?? os.totalmem(), freeBytes: m.MemFree ?? os.freemem(), availableBytes: m.MemAvailable ?? os.freemem() },
      loadavg: os.loadavg(), cpus: os.cpus().length, hostname: os.hostname(), processes: this.procs.list().filter((p) => p.running).length, spawner: this.procs.starter,
      receiver: this.receiver ? 'capsule-recv' : 'none',
    };
  }

  /** True for a peer inside this guest (loopback or one of its own addresses). */
  private isLocalPeer(addr: string | undefined): boolean {
    if (!addr) return true;
    const a = addr.replace(/^::ffff:/, '');
    if (a === '::1' || a.startsWith('127.')) return true;
    for (const list of Object.values(os.networkInterfaces())) for (const i of list ?? []) if (i.address === a) return true;
    return false;
  }

  listen(): Promise<number> {
    // Anything that is not our protocol: HTTP (for now only /health; envd's API later).
    const http = createHttpServer((req, res) => {
      if (req.url === '/health') { res.writeHead(204); res.end(); return; }
      res.writeHead(404, { 'content-type': 'text/plain' });
      res.end('capsule-agent: not found\n');
    });
    http.headersTimeout = HELLO_TIMEOUT_MS;
    const server = createServer((sock) => {
      if (liveConnections >= MAX_CONNECTIONS || (!this.o.allowLocal && this.isLocalPeer(sock.remoteAddress))) { sock.destroy(); return; }
      liveConnections++;
      let counted = true;
      sock.setNoDelay(true);
      // A server that vanished without a FIN is noticed (its foreground processes then go).
      sock.setKeepAlive(true, 30_000);
      sock.setTimeout(HELLO_TIMEOUT_MS, () => sock.destroy());
      let head = Buffer.alloc(0);
      const onData = (d: Buffer) => {
        head = Buffer.concat([head, d]);
        const n = Math.min(head.length, MAGIC.length);
        if (!head.subarray(0, n).equals(MAGIC.subarray(0, n))) {
          // HTTP: hand the socket and what it sent to the HTTP server.
          sock.removeListener('data', onData);
          sock.pause();
          sock.unshift(head);
          if (counted) { liveConnections--; counted = false; }
          http.emit('connection', sock);
          sock.resume();
          return;
        }
        if (head.length < MAGIC.length) return;
        sock.removeListener('data', onData);
        counted = false; // the Conn counts it down
        new Conn(sock, this).start(head.subarray(MAGIC.length));
      };
      sock.on('data', onData);
      sock.on('error', () => { /* peer gone */ });
      sock.on('close', () => { if (counted) { liveConnections--; counted = false; } });
    });
    return new Promise((res, rej) => {
      server.once('error', rej);
      server.listen(this.o.port, this.o.host, () => res((server.address() as { port: number }).port));
    });
  }
}

async function main(): Promise<void> {
  const opts = parseArgs(process.argv.slice(2));
  // A client that goes away mid-write must not kill the agent.
  process.on('SIGPIPE', () => { /* ignored */ });
  process.on('uncaughtException', (e) => { process.stderr.write(`capsule-agent: ${e.stack ?? e.message}\n`); });
  const agent = new Agent(opts);
  const port = await agent.listen();
  process.stdout.write(`capsule-agent ${AGENT_VERSION} listening on ${opts.host}:${port}\n`);
}

main().catch((e: Error) => {
  process.stderr.write(`capsule-agent: ${e.message}\n`);
  process.exit(1);
});
