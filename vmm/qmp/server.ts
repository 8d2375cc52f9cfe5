// QMP server on a Unix socket: greeting, capabilities negotiation, commands, events, a leaky
// bucket of 100 commands/s per connection. Errors are {"error":{"class","desc"}} and the
// connection stays usable. Several clients may be connected; events go to all negotiated ones.
// Connections are read with recvmsg() (scm-reader.ts) so that fds sent with SCM_RIGHTS reach the
// command they came with (`getfd`); Node only accepts and writes.
import { createServer, type Server, type Socket } from 'node:net';
import { unlinkSync } from 'node:fs';
import { StringDecoder } from 'node:string_decoder';
import { JsonSplitter } from './framing.js';
import { LeakyBucket } from '../../lib/leaky-bucket.js';
import { qmpTimestamp, type QmpErrorClass, type QmpEvent, type QmpGreeting, type QmpReply, type QmpVersion } from '../../lib/qmp-wire.js';
import { ScmReader } from './scm-reader.js';
import { closeFd } from '../kvm/sys.js';
import { logger } from '../log.js';

const log = logger('qmp');

export class QmpError extends Error {
  constructor(readonly cls: QmpErrorClass, desc: string) {
    super(desc);
  }
}

export interface QmpContext {
  /**
   * File descriptors received (SCM_RIGHTS) with this command's bytes. A handler that keeps one
   * removes it from the array (e.g. `shift()`); the server closes whatever is left afterwards.
   */
  fds: number[];
  conn: QmpConnection;
}
export type QmpHandler = (args: Record<string, unknown>, ctx: QmpContext) => unknown | Promise<unknown>;

/** The QEMU version capsule-vmm reports (greeting, query-version): clients check for QEMU features by it. */
export const QMP_VERSION = { major: 8, minor: 2, micro: 0 } as const;

export interface QmpServerOptions {
  path: string;
  version?: QmpVersion;
  rate?: number;
}

export class QmpConnection {
  negotiated = false;
  private readonly splitter = new JsonSplitter();
  private readonly bucket: LeakyBucket;
  private queue: Promise<void> = Promise.resolve();
  private readonly decoder = new StringDecoder('utf8');
  /** fds that came with bytes of a command not complete yet: they go to the next complete one */
  private carriedFds: number[] = [];

  constructor(readonly sock: Socket, private readonly server: QmpServer, rate: number) {
    this.bucket = new LeakyBucket(rate, rate);
  }

  send(obj: QmpGreeting | QmpReply | QmpEvent): void {
    if (!this.sock.writable) return;
    this.sock.write(JSON.stringify(obj) + '\r\n');
  }

  /** Bytes read from the socket, with the fds that came with them (owned by the connection now). */
  onBytes(bytes: Buffer, fds: number[] = []): void {
    this.onData(this.decoder.write(bytes), fds);
  }

  /**
   * A recvmsg() that returns fds ends with the sender's message that carried them, so they belong
   * to the last command completed by this chunk; when none completes, to the next one that does.
   */
  onData(chunk: string, fds: number[] = []): void {
    const frames = this.splitter.push(chunk);
    const okIdx = frames.map((f, i) => (f.ok ? i : -1)).filter((i) => i >= 0);
    const perFrame = new Map<number, number[]>();
    if (okIdx.length > 0) {
      const first = okIdx[0]!;
      const last = okIdx[okIdx.length - 1]!;
      perFrame.set(first, this.carriedFds.splice(0));
      perFrame.set(last, [...(perFrame.get(last) ?? []), ...fds]);
    } else {
      this.carriedFds.push(...fds);
    }
    frames.forEach((f, i) => {
      const mine = perFrame.get(i) ?? [];
      if (!f.ok) {
        this.send({ error: { class: 'GenericError', desc: f.error } });
        return;
      }
      // replies keep the order of the requests
      this.queue = this.queue.then(() => this.handle(f.text, mine));
    });
  }

  /** Wait for the queued commands (their replies are written) */
  drained(): Promise<void> {
    return this.queue;
  }

  /** The connection is gone: fds that never reached a command are closed. */
  dispose(): void {
    for (const fd of this.carriedFds.splice(0)) closeFd(fd);
  }

  private async handle(text: string, fds: number[]): Promise<void> {
    try {
      await this.dispatch(text, fds);
    } finally {
      for (const fd of fds.splice(0)) closeFd(fd);
    }
  }

  private async dispatch(text: string, fds: number[]): Promise<void> {
    let msg: unknown;
    try {
      msg = JSON.parse(text);
    } catch (e) {
      this.send({ error: { class: 'GenericError', desc: `JSON parse error: ${(e as Error).message}` } });
      return;
    }
    if (typeof msg !== 'object' || msg === null || Array.isArray(msg)) {
      this.send({ error: { class: 'GenericError', desc: 'QMP input must be a JSON object' } });
      return;
    }
    const m = msg as Record<string, unknown>;
    const id = m.id;
    const reply = (r: QmpReply): void => this.send(id === undefined ? r : { ...r, id });
    if (!this.bucket.tryTake()) {
      reply({ error: { class: 'GenericError', desc: 'QMP rate limit exceeded (100 commands/s): command dropped' } });
      return;
    }
    const cmd = m.execute ?? m['exec-oob'];
    if (typeof cmd !== 'string') {
      reply({ error: { class: 'GenericError', desc: "QMP input lacks member 'execute'" } });
      return;
    }
    const args = m.arguments ?? {};
    if (typeof args !== 'object' || args === null || Array.isArray(args)) {
      reply({ error: { class: 'GenericError', desc: "QMP input member 'arguments' must be an object" } });
      return;
    }
    if (!this.negotiated) {
      if (cmd !== 'qmp_capabilities') {
        reply({ error: { class: 'CommandNotFound', desc: "Expecting capabilities negotiation with 'qmp_capabilities'" } });
        return;
      }
      this.negotiated = true;
      reply({ return: {} });
      return;
    }
    if (cmd === 'qmp_capabilities') {
      reply({ error: { class: 'CommandNotFound', desc: 'Capabilities negotiation is already complete, command ignored' } });
      return;
    }
    const h = this.server.handlers.get(cmd);
    if (!h) {
      reply({ error: { class: 'CommandNotFound', desc: `The command ${cmd} has not been found` } });
      return;
    }
    try {
      const r = await h(args as Record<string, unknown>, { fds, conn: this });
      reply({ return: r ?? {} });
    } catch (e) {
      if (e instanceof QmpError) reply({ error: { class: e.cls, desc: e.message } });
      else {
        log.warn(`command ${cmd} failed: ${(e as Error).stack ?? e}`);
        reply({ error: { class: 'GenericError', desc: (e as Error).message } });
      }
    }
  }
}

export class QmpServer {
  readonly handlers = new Map<string, QmpHandler>();
  private server: Server | null = null;
  private readonly reader = new ScmReader();
  readonly conns = new Set<QmpConnection>();

  constructor(private readonly opts: QmpServerOptions) {}

  register(name: string, h: QmpHandler): void {
    this.handlers.set(name, h);
  }

  greeting(): QmpGreeting {
    const v = this.opts.version ?? QMP_VERSION;
    return { QMP: { version: { qemu: v, package: 'capsule' }, capabilities: [] } };
  }

  async listen(): Promise<void> {
    try { unlinkSync(this.opts.path); } catch { /* not there */ }
    // never read by Node: the reader uses recvmsg() on the fd
    const srv = createServer({ pauseOnConnect: true }, (sock) => this.accept(sock));
    this.server = srv;
    await new Promise<void>((resolve, reject) => {
      srv.once('error', reject);
      srv.listen(this.opts.path, () => {
        srv.off('error', reject);
        resolve();
      });
    });
  }

  private accept(sock: Socket): void {
    const c = new QmpConnection(sock, this, this.opts.rate ?? 100);
    this.conns.add(c);
    c.send(this.greeting());
    const registered = this.reader.add(sock, {
      onData: (bytes, fds) => c.onBytes(bytes, fds),
      // end of input: answer what was sent, then close (as Node did before with allowHalfOpen off)
      onEof: () => void c.drained().then(() => { if (!sock.destroyed) sock.end(() => sock.destroy()); }),
    });
    if (!registered) {
      // no fd to read with recvmsg(): plain Node reads, without SCM_RIGHTS
      log.warn('QMP connection without a usable fd: getfd will not receive fds on it');
      sock.on('data', (d: Buffer) => c.onBytes(d));
      sock.resume();
    }
    let dropped = false;
    const drop = (): void => {
      if (dropped) return;
      dropped = true;
      this.reader.remove(sock);
      this.conns.delete(c);
      c.dispose();
    };
    sock.on('close', drop);
    sock.on('error', drop);
  }

  /** Send an event to every negotiated client. */
  event(name: string, data: Record<string, unknown> = {}): void {
    const ev: QmpEvent = { event: name, data, timestamp: qmpTimestamp() };
    for (const c of this.conns) if (c.negotiated) c.send(ev);
  }

  /** Wait until queued writes left (best effort), then close everything. */
  async close(): Promise<void> {
    const srv = this.server;
    this.server = null;
    for (const c of this.conns) c.sock.end();
    if (srv) await new Promise<void>((r) => srv.close(() => r()));
    for (const c of this.conns) this.reader.remove(c.sock);
    for (const c of this.conns) c.sock.destroy();
    await this.reader.close();
    try { unlinkSync(this.opts.path); } catch { /* gone */ }
  }
}
