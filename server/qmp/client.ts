// QMP client: one Unix-socket connection to a VMM's control socket (QEMU or capsule-vmm).
// Newline-delimited JSON; commands carry an id so replies match even with events in between.
import { EventEmitter } from 'node:events';
import { createConnection, type Socket } from 'node:net';
import type { QmpCommand, QmpErrorBody, QmpEvent, QmpGreeting } from '../../lib/qmp-wire.js';
import { sendWithFds } from '../../lib/scm-rights.js';

export class QmpError extends Error {
  constructor(readonly qmpClass: string, desc: string) {
    super(`${qmpClass}: ${desc}`);
  }
}

/**
 * Longest QMP line accepted from a VMM. Replies and events are small; a VMM that sends more
 * without a newline is broken or hostile (a jailed VMM may be run by a compromised guest), and
 * buffering it would grow the server without bound: the connection is closed instead.
 */
export const MAX_QMP_LINE = 1024 * 1024;

interface Pending { resolve: (v: unknown) => void; reject: (e: Error) => void; timer: NodeJS.Timeout }

export type QmpOutcome = 'ok' | 'error' | 'timeout' | 'closed';
/** Told of every command's round trip (send to reply, error, timeout or close), for the metrics. */
export type QmpRoundTripObserver = (command: string, seconds: number, outcome: QmpOutcome) => void;

/** Events: 'event' (QmpEvent), 'close' (). */
export class QmpClient extends EventEmitter {
  /**
   * One process-wide observer of round-trip times. Static because clients are made deep in the
   * supervisor (launch, reattach) and the metrics are one per process; unset: nothing is timed.
   */
  static roundTripObserver: QmpRoundTripObserver | undefined;
  private buffer = '';
  private nextId = 1;
  private readonly pending = new Map<string, Pending>();
  private closed = false;
  greeting: QmpGreeting['QMP'] | undefined;

  private constructor(private readonly socket: Socket) {
    super();
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => this.onData(chunk));
    socket.on('error', () => { /* 'close' follows */ });
    socket.on('close', () => this.onClose());
  }

  /** Connects, reads the greeting and negotiates capabilities. */
  static async connect(path: string, timeoutMs = 5000): Promise<QmpClient> {
    const socket = await new Promise<Socket>((resolve, reject) => {
      const s = createConnection(path);
      const t = setTimeout(() => { s.destroy(); reject(new Error(`QMP connect to ${path} timed out`)); }, timeoutMs);
      s.once('connect', () => { clearTimeout(t); resolve(s); });
      s.once('error', (e) => { clearTimeout(t); reject(e); });
    });
    const client = new QmpClient(socket);
    await client.waitGreeting(timeoutMs);
    await client.execute('qmp_capabilities');
    return client;
  }

  /** Retries connect() until the socket accepts or the deadline passes. */
  static async connectWithRetry(path: string, deadlineMs: number, isAlive: () => boolean = () => true): Promise<QmpClient> {
    const end = Date.now() + deadlineMs;
    let lastError: unknown;
    while (Date.now() < end) {
      try {
        return await QmpClient.connect(path, Math.max(500, end - Date.now()));
      } catch (e) {
        lastError = e;
        if (!isAlive()) break;
        await new Promise((r) => setTimeout(r, 50));
      }
    }
    throw new Error(`QMP socket ${path} did not answer: ${(lastError as Error | undefined)?.message ?? 'timeout'}`);
  }

  private waitGreeting(timeoutMs: number): Promise<void> {
    if (this.greeting) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error('no QMP greeting')), timeoutMs);
      this.once('greeting', () => { clearTimeout(t); resolve(); });
      this.once('close', () => { clearTimeout(t); reject(new Error('QMP socket closed before the greeting')); });
    });
  }

  execute<T = unknown>(command: string, args?: Record<string, unknown>, timeoutMs = 10_000): Promise<T> {
    return this.send<T>(command, args, timeoutMs, (line) => this.socket.write(line));
  }

  /**
   * Like execute(), with `fds` sent in the same sendmsg() as the command (SCM_RIGHTS), as QMP
   * `getfd` expects. Node's writes on the socket are drained first so the bytes stay in order.
   */
  async executeWithFds<T = unknown>(command: string, args: Record<string, unknown>, fds: number[], timeoutMs = 10_000): Promise<T> {
    if (this.socket.writableLength > 0) await new Promise((r) => this.socket.once('drain', r));
    const fd = (this.socket as unknown as { _handle?: { fd?: number } | null })._handle?.fd;
    if (typeof fd !== 'number' || fd < 0) throw new Error('QMP socket has no fd to send descriptors on');
    return this.send<T>(command, args, timeoutMs, (line) => sendWithFds(fd, Buffer.from(line), fds));
  }

  private send<T>(command: string, args: Record<string, unknown> | undefined, timeoutMs: number, write: (line: string) => void): Promise<T> {
    if (this.closed) return Promise.reject(new Error('QMP connection closed'));
    const id = String(this.nextId++);
    const msg: QmpCommand = args ? { execute: command, arguments: args, id } : { execute: command, id };
    const observe = QmpClient.roundTripObserver;
    const sent = observe ? process.hrtime.bigint() : 0n;
    const timed = (outcome: QmpOutcome) => observe?.(command, Number(process.hrtime.bigint() - sent) / 1e9, outcome);
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        timed('timeout');
        reject(new Error(`QMP ${command} timed out`));
      }, timeoutMs);
      this.pending.set(id, {
        resolve: (v) => { timed('ok'); (resolve as (v: unknown) => void)(v); },
        reject: (e) => { timed(e instanceof QmpError ? 'error' : 'closed'); reject(e); },
        timer,
      });
      try {
        write(JSON.stringify(msg) + '\n');
      } catch (e) {
        clearTimeout(timer);
        this.pending.delete(id);
        reject(e as Error);
      }
    });
  }

  get isClosed(): boolean { return this.closed; }

  close(): void {
    this.socket.destroy();
  }

  private onData(chunk: string): void {
    this.buffer += chunk;
    let nl: number;
    while ((nl = this.buffer.indexOf('\n')) >= 0) {
      const line = this.buffer.slice(0, nl).trim();
      this.buffer = this.buffer.slice(nl + 1);
      if (line) this.onMessage(line);
    }
    if (this.buffer.length > MAX_QMP_LINE) {
      this.buffer = '';
      this.emit('protocol-error', `a QMP line longer than ${MAX_QMP_LINE} bytes`);
      this.socket.destroy();
    }
  }

  private onMessage(line: string): void {
    let msg: Record<string, unknown>;
    try {
      msg = JSON.parse(line) as Record<string, unknown>;
    } catch {
      return; // a VMM that writes garbage does not take the server down
    }
    if ('QMP' in msg) {
      this.greeting = msg.QMP as QmpGreeting['QMP'];
      this.emit('greeting');
    } else if (typeof msg.event === 'string') {
      const ev: QmpEvent = { event: msg.event, data: (msg.data as Record<string, unknown> | undefined) ?? {} };
      if (msg.timestamp) ev.timestamp = msg.timestamp as QmpEvent['timestamp'] & object;
      this.emit('event', ev);
    } else if (msg.id !== undefined) {
      const p = this.pending.get(String(msg.id));
      if (!p) return;
      this.pending.delete(String(msg.id));
      clearTimeout(p.timer);
      if ('error' in msg) {
        // a VMM is not trusted to send well-formed errors
        const err = msg.error as Partial<QmpErrorBody> | null;
        p.reject(new QmpError(err?.class ?? 'GenericError', err?.desc ?? 'unknown error'));
      } else {
        p.resolve(msg.return);
      }
    }
  }

  private onClose(): void {
    if (this.closed) return;
    this.closed = true;
    for (const p of this.pending.values()) {
      clearTimeout(p.timer);
      p.reject(new Error('QMP connection closed'));
    }
    this.pending.clear();
    this.emit('close');
  }
}
