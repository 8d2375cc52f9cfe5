// The server's client of the guest agent (agent/, docs/agent.md). Everything the agent sends is
// treated as hostile: frames are bounded (a larger one closes the connection), every call has a
// deadline (connect, the answer, and on long streams the agent's heartbeat), and a broken or
// silent agent costs the caller an error (502 / 504), never a hang.
//
// How the server reaches a VM's agent is an AgentTransport: one connection per operation to
// guest TCP port 49983 (per-VM networking's helper; QEMU user networking's host forward as the
// fallback, agent/usernet.ts).
import type { Duplex } from 'node:stream';
import {
  CH_STDIN, FrameReader, KIND_DATA, KIND_JSON, MAGIC, MAX_FRAME, PING_INTERVAL_MS, PROTOCOL_VERSION, jsonFrame, writeDataFrames,
  type ExecRequest, type ExitInfo, type FileStat, type Frame, type ProcessInfo,
} from '../../agent/protocol.js';
import { ApiError, type ApiErrorStatus } from '../supervisor/errors.js';

export type { ExecRequest, ExitInfo, FileStat, ProcessInfo };

/** How the server reaches guest TCP port 49983 of a VM: a fresh connection per call. */
export interface AgentTransport {
  connect(vmId: string): Promise<Duplex>;
}

export interface AgentClientOptions {
  transport: AgentTransport;
  /** The VM's agent secret (passed to the guest at boot); undefined: the VM has none (not running). */
  token(vmId: string): string | undefined;
  connectTimeoutMs?: number;
  /** A short call (stat, list, health, ...) gets its answer within this (default 30 s). */
  callTimeoutMs?: number;
  /** A stream (exec, a transfer) fails after this long without a byte from the agent (it pings every 5 s; default 60 s). */
  idleTimeoutMs?: number;
  maxFrame?: number;
}

/** The agent answered with an error: its code becomes the HTTP status (see httpStatusOf). */
export class AgentCallError extends ApiError {
  constructor(readonly agentCode: string, message: string) {
    super(httpStatusOf(agentCode), agentCode === 'internal' ? 'agent_error' : agentCode, message);
  }
}

function httpStatusOf(code: string): ApiErrorStatus {
  switch (code) {
    case 'not_found': return 404;
    case 'permission_denied': return 403;
    case 'exists': case 'not_empty': return 409;
    case 'no_space': return 507;
    case 'too_large': return 413;
    case 'invalid_request': case 'not_a_directory': case 'is_a_directory': case 'not_regular': case 'spawn_failed': return 400;
    default: return 502;
  }
}

const unreachable = (why: string) => new ApiError(502, 'agent_unreachable', `the guest agent cannot be reached: ${why}`);

/**
 * The VM has no way to its agent at all (no network path, no fallback): waiting will not help,
 * unlike an agent that has not started yet. Still 502 agent_unreachable to API clients.
 */
export class NoAgentPathError extends ApiError {
  constructor(why: string) {
    super(502, 'agent_unreachable', `the guest agent cannot be reached: this VM has no network path to its agent: ${why}`);
  }
}
const timeout = (what: string) => new ApiError(504, 'agent_timeout', `the guest agent did not answer in time (${what})`);
const protocolError = (why: string) => new ApiError(502, 'agent_protocol_error', `the guest agent broke the protocol: ${why}`);

/**
 * One operation's connection: frames in, frames out, and the deadlines. Ends exactly once:
 * close() (the caller is done), or with an error (the agent's end, a bad frame, a timeout).
 */
export class AgentSession {
  private readonly reader: FrameReader;
  private idleTimer: NodeJS.Timeout | undefined;
  private deadlineTimer: NodeJS.Timeout | undefined;
  private ended = false;
  private frameHandler: (f: Frame) => void = () => undefined;
  private endHandler: (err: ApiError | undefined) => void = () => undefined;
  /** Writers waiting for 'drain': woken at the end too (a dead socket never drains). */
  private readonly drainWaiters = new Set<() => void>();
  private readonly endWatchers: Array<() => void> = [];

  constructor(readonly sock: Duplex, private readonly idleMs: number, maxFrame: number) {
    this.reader = new FrameReader((f) => { if (!this.ended) this.frameHandler(f); }, (why) => this.fail(protocolError(why)), maxFrame);
    sock.on('data', (d: Buffer) => { this.touch(); this.reader.push(d); });
    sock.on('end', () => this.fail(protocolError('it closed the connection before the operation finished')));
    sock.on('close', () => this.fail(protocolError('the connection closed before the operation finished')));
    sock.on('error', (e: Error) => this.fail(unreachable(e.message)));
    this.touch();
  }

  onFrame(fn: (f: Frame) => void): void { this.frameHandler = fn; }
  /** Called once: undefined after close(), else the error that ended the session. */
  onEnd(fn: (err: ApiError | undefined) => void): void { this.endHandler = fn; }

  /** An overall deadline (short calls). */
  deadline(ms: number, what: string): void {
    clearTimeout(this.deadlineTimer);
    this.deadlineTimer = setTimeout(() => this.fail(timeout(what)), ms);
    this.deadlineTimer.unref();
  }

  get isEnded(): boolean { return this.ended; }

  sendJson(obj: unknown): boolean {
    if (this.ended) return true;
    return this.sock.write(jsonFrame(obj));
  }

  sendData(data: Buffer): boolean {
    if (this.ended) return true;
    return writeDataFrames(this.sock, CH_STDIN, data);
  }

  /** Bytes as they are, no frame: only where the agent said it takes them so (a raw upload). */
  sendRaw(data: Buffer): boolean {
    if (this.ended) return true;
    return this.sock.write(data);
  }

  onDrain(fn: () => void): void {
    if (this.ended) return fn();
    const wake = () => { this.sock.off('drain', wake); this.drainWaiters.delete(wake); fn(); };
    this.drainWaiters.add(wake);
    this.sock.once('drain', wake);
  }

  /** Called once when the session ends, however (besides onEnd's one handler). */
  whenEnded(fn: () => void): void {
    if (this.ended) fn();
    else this.endWatchers.push(fn);
  }

  pause(): void { this.sock.pause(); }
  resume(): void { this.sock.resume(); }

  close(): void {
    this.finish(undefined);
  }

  fail(err: ApiError): void {
    this.finish(err);
  }

  private finish(err: ApiError | undefined): void {
    if (this.ended) return;
    this.ended = true;
    clearTimeout(this.idleTimer);
    clearTimeout(this.deadlineTimer);
    this.sock.destroy();
    this.endHandler(err);
    for (const wake of [...this.drainWaiters]) wake();
    for (const fn of this.endWatchers.splice(0)) fn();
  }

  private touch(): void {
    clearTimeout(this.idleTimer);
    if (this.ended) return;
    this.idleTimer = setTimeout(() => this.fail(timeout(`nothing for ${this.idleMs} ms`)), this.idleMs);
    this.idleTimer.unref();
  }
}

export interface ExecHandlers {
  onStarted?(info: ProcessInfo): void;
  /** Output; return false to push back (call stream.resume() when ready for more). */
  onOutput(channel: 1 | 2, data: Buffer): boolean | void;
  /** Another client attached to the process: this one no longer follows it. */
  onDetached?(why: string): void;
}

/** A running exec or attach: stdin, signals, resize; `done` settles with the exit. */
export interface ExecStream {
  readonly started: Promise<ProcessInfo>;
  readonly done: Promise<ExitInfo | undefined>;
  /** false: the agent is not taking input this fast; wait for onDrain. */
  stdin(data: Buffer): boolean;
  onDrain(fn: () => void): void;
  eof(): void;
  signal(name: string): void;
  resize(cols: number, rows: number): void;
  pause(): void;
  resume(): void;
  /** Lets go of the process: a foreground one is killed, a background one keeps running. */
  close(): void;
}

export class AgentClient {
  private readonly connectTimeoutMs: number;
  private readonly callTimeoutMs: number;
  readonly idleTimeoutMs: number;
  private readonly maxFrame: number;
  /** Open sessions by VM: ended at once when the VM's VMM goes (abortVm). */
  private readonly sessions = new Map<string, Set<AgentSession>>();

  constructor(private readonly o: AgentClientOptions) {
    this.connectTimeoutMs = o.connectTimeoutMs ?? 30_000;
    // Generous for a guest under TCG on a loaded host (seen: 20 s without a byte from a
    // 1-vCPU guest spawning 20 shells at host load 17); still a bound.
    this.callTimeoutMs = o.callTimeoutMs ?? 30_000;
    this.idleTimeoutMs = o.idleTimeoutMs ?? Math.max(12 * PING_INTERVAL_MS, 60_000);
    this.maxFrame = o.maxFrame ?? MAX_FRAME;
  }

  /** Opens a connection and sends the request (the token added). */
  async open(vmId: string, req: Record<string, unknown>): Promise<AgentSession> {
    const token = this.o.token(vmId);
    if (token === undefined) throw new ApiError(409, 'agent_unavailable', `VM ${vmId} has no guest agent to talk to (is it running?)`);
    let timer: NodeJS.Timeout | undefined;
    let timedOut = false;
    const connecting = this.o.transport.connect(vmId);
    const sock = await Promise.race([
      connecting,
      new Promise<never>((_res, rej) => { timer = setTimeout(() => { timedOut = true; rej(timeout('connect')); }, this.connectTimeoutMs); }),
    ]).catch((e: Error) => {
      // A connection that comes after the deadline is closed at once.
      if (timedOut) void connecting.then((s) => s.destroy(), () => undefined);
      throw e instanceof ApiError ? e : unreachable(e.message);
    }).finally(() => clearTimeout(timer));
    const s = new AgentSession(sock, this.idleTimeoutMs, this.maxFrame);
    this.track(vmId, s);
    sock.write(MAGIC);
    s.sendJson({ v: PROTOCOL_VERSION, token, ...req });
    return s;
  }

  /**
   * The VM's VMM is gone: every operation on it ends now with 502. (Its guest cannot answer,
   * and a connection to a vanished guest would otherwise wait for TCP to give up, many minutes.)
   */
  abortVm(vmId: string, why = 'the VM stopped'): void {
    for (const s of [...(this.sessions.get(vmId) ?? [])]) s.fail(unreachable(why));
  }

  /** Open operations on a VM (for tests and metrics). */
  openSessions(vmId: string): number {
    return this.sessions.get(vmId)?.size ?? 0;
  }

  private track(vmId: string, s: AgentSession): void {
    let set = this.sessions.get(vmId);
    if (!set) this.sessions.set(vmId, (set = new Set()));
    set.add(s);
    s.whenEnded(() => {
      set!.delete(s);
      if (set!.size === 0 && this.sessions.get(vmId) === set) this.sessions.delete(vmId);
    });
  }

  /** A short call: the `ok` answer, within the call deadline. */
  async call<T = Record<string, unknown>>(vmId: string, req: Record<string, unknown>, timeoutMs = this.callTimeoutMs): Promise<T> {
    const s = await this.open(vmId, req);
    s.deadline(timeoutMs, String(req.op));
    return new Promise<T>((resolve, reject) => {
      s.onEnd((err) => { if (err) reject(err); });
      s.onFrame((f) => {
        if (f.kind !== KIND_JSON) return;
        const m = f.msg;
        if (m.error) { s.close(); return reject(agentError(m.error)); }
        if ('ok' in m) { s.close(); return resolve(m.ok as T); }
        s.fail(protocolError('an unexpected message'));
      });
    });
  }

  health(vmId: string, timeoutMs?: number): Promise<Record<string, unknown>> {
    return this.call(vmId, { op: 'health' }, timeoutMs);
  }

  /** Whether the VM has an agent to talk to (its secret is known: it runs with one). */
  hasAgent(vmId: string): boolean {
    return this.o.token(vmId) !== undefined;
  }

  /** Sets the guest's wall clock; how far it moved. */
  setClock(vmId: string, epochMs: number): Promise<{ movedMs: number; time: string }> {
    return this.call(vmId, { op: 'set-clock', epochMs });
  }

  processes(vmId: string): Promise<{ processes: ProcessInfo[] }> {
    return this.call(vmId, { op: 'processes' });
  }

  /** Starts a process and follows it. */
  exec(vmId: string, req: Omit<ExecRequest, 'op'>, h: ExecHandlers): Promise<ExecStream> {
    return this.follow(vmId, { ...req, op: 'exec' }, h);
  }

  /** Follows a process started earlier (its kept output first, then live, then its exit). */
  attach(vmId: string, pid: number, h: ExecHandlers): Promise<ExecStream> {
    return this.follow(vmId, { op: 'attach', pid }, h);
  }

  private async follow(vmId: string, req: Record<string, unknown>, h: ExecHandlers): Promise<ExecStream> {
    const s = await this.open(vmId, req);
    let resolveStarted!: (p: ProcessInfo) => void;
    let rejectStarted!: (e: Error) => void;
    const started = new Promise<ProcessInfo>((res, rej) => { resolveStarted = res; rejectStarted = rej; });
    let resolveDone!: (e: ExitInfo | undefined) => void;
    let rejectDone!: (e: Error) => void;
    const done = new Promise<ExitInfo | undefined>((res, rej) => { resolveDone = res; rejectDone = rej; });
    started.catch(() => undefined);
    done.catch(() => undefined);
    let closedByUs = false;
    s.onEnd((err) => {
      const e = err ?? new ApiError(409, 'closed', 'the client let go of the process');
      rejectStarted(e);
      if (closedByUs && !err) resolveDone(undefined); else rejectDone(e);
    });
    s.onFrame((f) => {
      if (f.kind === KIND_DATA) {
        if (f.channel !== 1 && f.channel !== 2) return s.fail(protocolError(`output on channel ${f.channel}`));
        if (h.onOutput(f.channel, f.data) === false) s.pause();
        return;
      }
      if (f.kind !== KIND_JSON) return;
      const m = f.msg;
      if (m.started) { resolveStarted(m.started as ProcessInfo); h.onStarted?.(m.started as ProcessInfo); return; }
      if (m.exit) { resolveDone(m.exit as ExitInfo); closedByUs = true; s.close(); return; }
      if (m.error) { const e = agentError(m.error); rejectStarted(e); rejectDone(e); closedByUs = true; s.close(); return; }
      if (typeof m.detached === 'string') { h.onDetached?.(m.detached); closedByUs = true; s.close(); return; }
    });
    return {
      started, done,
      stdin: (d) => s.sendData(d),
      onDrain: (fn) => s.onDrain(fn),
      eof: () => { s.sendJson({ eof: true }); },
      signal: (name) => { s.sendJson({ signal: name }); },
      resize: (cols, rows) => { s.sendJson({ resize: { cols, rows } }); },
      pause: () => s.pause(),
      resume: () => s.resume(),
      close: () => { closedByUs = true; s.close(); },
    };
  }

  /**
   * Reads a path: a directory's listing, or a file's stat and a stream of its bytes (`body`
   * pulls from the agent as the consumer reads; errors end it).
   */
  async read(vmId: string, path: string, user?: string): Promise<
    | { kind: 'dir'; dir: FileStat; entries: FileStat[]; truncated: boolean }
    | { kind: 'file'; file: FileStat; body: ReadableStream<Uint8Array>; session: AgentSession }> {
    const s = await this.open(vmId, { op: 'read', path, ...(user ? { user } : {}) });
    s.deadline(this.callTimeoutMs, 'read');
    return new Promise((resolve, reject) => {
      let controller: ReadableStreamDefaultController<Uint8Array> | undefined;
      let headerSeen = false;
      s.onEnd((err) => {
        if (!headerSeen) reject(err ?? protocolError('no answer'));
        else if (err && controller) { try { controller.error(err); } catch { /* closed */ } }
      });
      s.onFrame((f) => {
        if (f.kind === KIND_DATA) {
          if (!controller) return s.fail(protocolError('data before the header'));
          controller.enqueue(new Uint8Array(f.data.buffer, f.data.byteOffset, f.data.length));
          if ((controller.desiredSize ?? 1) <= 0) s.pause();
          return;
        }
        if (f.kind !== KIND_JSON) return;
        const m = f.msg;
        if (m.error) {
          const e = agentError(m.error);
          if (!headerSeen) { headerSeen = true; reject(e); } else controller?.error(e);
          return s.close();
        }
        if (!headerSeen && m.ok && typeof m.ok === 'object' && 'dir' in (m.ok as object)) {
          headerSeen = true;
          s.close();
          const ok = m.ok as { dir: FileStat; entries: FileStat[]; truncated: boolean };
          return resolve({ kind: 'dir', dir: ok.dir, entries: ok.entries, truncated: ok.truncated });
        }
        if (!headerSeen && m.file) {
          headerSeen = true;
          // A stream's deadline is the agent's heartbeat from now on.
          s.deadline(2 ** 31 - 1, 'read');
          const body = new ReadableStream<Uint8Array>({
            start: (c) => { controller = c; },
            pull: () => { s.resume(); },
            cancel: () => { s.close(); },
          }, { highWaterMark: 1024 * 1024, size: (chunk) => chunk.byteLength });
          return resolve({ kind: 'file', file: m.file as FileStat, body, session: s });
        }
        if (headerSeen && m.ok) { s.close(); try { controller?.close(); } catch { /* cancelled */ } return; }
        s.fail(protocolError('an unexpected message'));
      });
    });
  }

  /**
   * Writes a file from `source` (streamed, with backpressure both ways). With `size` (the
   * source's exact length, e.g. a Content-Length) the agent may take the bytes unframed
   * ({"ready":true,"raw":true}: its capsule-recv copies them straight into the file, several
   * times faster in a guest); else, or with an agent that does not offer it, data frames.
   * Either way {"eof":true} follows, sent only when the source ended with the bytes it said.
   */
  async write(vmId: string, path: string, source: AsyncIterable<Uint8Array>, opts: { user?: string | undefined; mode?: number | undefined; size?: number | undefined } = {}): Promise<{ path: string; size: number }> {
    const size = opts.size !== undefined && Number.isSafeInteger(opts.size) && opts.size >= 0 ? opts.size : undefined;
    const s = await this.open(vmId, {
      op: 'write', path, ...(opts.user ? { user: opts.user } : {}), ...(opts.mode !== undefined ? { mode: opts.mode } : {}), ...(size !== undefined ? { raw: true, size } : {}),
    });
    s.deadline(this.callTimeoutMs, 'write');
    let readyResolve!: (raw: boolean) => void;
    const ready = new Promise<boolean>((r) => { readyResolve = r; });
    const result = new Promise<{ path: string; size: number }>((resolve, reject) => {
      s.onEnd((err) => { if (err) reject(err); });
      s.onFrame((f) => {
        if (f.kind !== KIND_JSON) return;
        const m = f.msg;
        if (m.error) { s.close(); return reject(agentError(m.error)); }
        if (m.ready) { s.deadline(2 ** 31 - 1, 'write'); return readyResolve(m.raw === true && size !== undefined); }
        if (m.ok) { s.close(); return resolve(m.ok as { path: string; size: number }); }
        s.fail(protocolError('an unexpected message'));
      });
    });
    result.catch(() => undefined);
    const raw = await Promise.race([ready, result.then(() => false)]);
    let sent = 0;
    try {
      for await (const chunk of source) {
        if (s.isEnded) break;
        const buf = Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
        sent += buf.length;
        // Raw: the agent's helper copies exactly `size` bytes; more would be read as frames.
        if (raw && sent > size!) throw new Error(`the body is longer than its ${size} bytes`);
        if (!(raw ? s.sendRaw(buf) : s.sendData(buf))) await new Promise<void>((r) => s.onDrain(r));
      }
      if (raw && sent !== size && !s.isEnded) throw new Error(`the body ended after ${sent} of its ${size} bytes`);
    } catch (e) {
      s.close();
      throw new ApiError(400, 'upload_failed', `the upload broke off: ${(e as Error).message}`);
    }
    // The agent ended the operation meanwhile (a full disk, a stall, the VM gone): its reason.
    if (s.isEnded) return result;
    s.sendJson({ eof: true });
    // The agent writes what it got and renames it into place: the answer may take a while for a large file.
    return result;
  }

  stat(vmId: string, path: string, user?: string): Promise<FileStat> {
    return this.call(vmId, { op: 'stat', path, ...(user ? { user } : {}) });
  }

  mkdir(vmId: string, path: string, user?: string): Promise<{ path: string; created: boolean }> {
    return this.call(vmId, { op: 'mkdir', path, ...(user ? { user } : {}) });
  }

  move(vmId: string, from: string, to: string, user?: string): Promise<{ from: string; to: string }> {
    return this.call(vmId, { op: 'move', from, to, ...(user ? { user } : {}) });
  }

  remove(vmId: string, path: string, user?: string): Promise<{ path: string }> {
    return this.call(vmId, { op: 'remove', path, ...(user ? { user } : {}) });
  }

  signal(vmId: string, pid: number, signal: string): Promise<{ pid: number }> {
    return this.call(vmId, { op: 'signal', pid, signal });
  }
}

function agentError(e: unknown): AgentCallError {
  const o = (e && typeof e === 'object' ? e : {}) as { code?: unknown; message?: unknown };
  const code = typeof o.code === 'string' && /^[a-z_]{1,40}$/.test(o.code) ? o.code : 'internal';
  const message = typeof o.message === 'string' ? o.message.slice(0, 1000) : 'the agent failed';
  return new AgentCallError(code, message);
}

export type AgentAnswer = { ok: true } | { ok: false; noPath: boolean; lastError: string | undefined };

/**
 * Polls the agent's health until it answers (the guest boots and starts it), or the time is up;
 * stops at once when the VM has no path to its agent (NoAgentPathError), which no wait mends.
 */
export async function agentAnswer(agent: AgentClient, vmId: string, timeoutMs: number): Promise<AgentAnswer> {
  const end = Date.now() + timeoutMs;
  let lastError: string | undefined;
  while (Date.now() < end) {
    try {
      await agent.health(vmId, Math.min(5000, Math.max(1, end - Date.now())));
      return { ok: true };
    } catch (e) {
      if (e instanceof NoAgentPathError) return { ok: false, noPath: true, lastError: e.message };
      lastError = (e as Error).message;
      await new Promise((res) => setTimeout(res, 250));
    }
  }
  return { ok: false, noPath: false, lastError };
}

/** Why an agentAnswer() failed, for a message: `what` (e.g. "the guest agent did not answer within 60 s") unless there is no path at all. */
export function noAnswer(a: Exclude<AgentAnswer, { ok: true }>, what: string): string {
  if (a.noPath) return a.lastError!;
  return a.lastError ? `${what} (last: ${a.lastError})` : what;
}
