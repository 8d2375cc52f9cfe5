// QMP server on a Unix socket: greeting, capabilities negotiation, commands, events, a leaky
// bucket of 100 commands/s per connection. Errors are {"error":{"class","desc"}} and the
// connection stays usable. Several clients may be connected; events go to all negotiated ones.
import { createServer, type Server, type Socket } from 'node:net';
import { unlinkSync } from 'node:fs';
import { JsonSplitter } from './framing.js';
import { LeakyBucket } from './leaky-bucket.js';
import { logger } from '../log.js';

const log = logger('qmp');

export class QmpError extends Error {
  constructor(readonly cls: string, desc: string) {
    super(desc);
  }
}

export interface QmpContext {
  /** file descriptors received with this command (SCM_RIGHTS), when the transport supports it */
  fds: number[];
  conn: QmpConnection;
}
export type QmpHandler = (args: Record<string, unknown>, ctx: QmpContext) => unknown | Promise<unknown>;

export interface QmpServerOptions {
  path: string;
  version?: { major: number; minor: number; micro: number };
  rate?: number;
}

export function timestamp(now = Date.now()): { seconds: number; microseconds: number } {
  const us = Math.floor(now * 1000);
  return { seconds: Math.floor(us / 1e6), microseconds: us % 1e6 };
}

export class QmpConnection {
  negotiated = false;
  private readonly splitter = new JsonSplitter();
  private readonly bucket: LeakyBucket;
  private queue: Promise<void> = Promise.resolve();

  constructor(readonly sock: Socket, private readonly server: QmpServer, rate: number) {
    this.bucket = new LeakyBucket(rate, rate);
  }

  send(obj: unknown): void {
    if (!this.sock.writable) return;
    this.sock.write(JSON.stringify(obj) + '\r\n');
  }

  onData(chunk: string): void {
    for (const f of this.splitter.push(chunk)) {
      if (!f.ok) {
        this.send({ error: { class: 'GenericError', desc: f.error } });
        continue;
      }
      // replies keep the order of the requests
      this.queue = this.queue.then(() => this.handle(f.text));
    }
  }

  private async handle(text: string): Promise<void> {
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
    const reply = (r: Record<string, unknown>): void => this.send(id === undefined ? r : { ...r, id });
    if (!this.bucket.take()) {
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
      const r = await h(args as Record<string, unknown>, { fds: this.takeFds(), conn: this });
      reply({ return: r ?? {} });
    } catch (e) {
      if (e instanceof QmpError) reply({ error: { class: e.cls, desc: e.message } });
      else {
        log.warn(`command ${cmd} failed: ${(e as Error).stack ?? e}`);
        reply({ error: { class: 'GenericError', desc: (e as Error).message } });
      }
    }
  }

  /** fds that arrived on this connection (filled by an SCM_RIGHTS-capable transport) */
  pendingFds: number[] = [];
  private takeFds(): number[] {
    return this.pendingFds.splice(0);
  }
}

export class QmpServer {
  readonly handlers = new Map<string, QmpHandler>();
  private server: Server | null = null;
  readonly conns = new Set<QmpConnection>();

  constructor(private readonly opts: QmpServerOptions) {}

  register(name: string, h: QmpHandler): void {
    this.handlers.set(name, h);
  }

  greeting(): unknown {
    const v = this.opts.version ?? { major: 8, minor: 2, micro: 0 };
    return { QMP: { version: { qemu: v, package: 'capsule' }, capabilities: [] } };
  }

  async listen(): Promise<void> {
    try { unlinkSync(this.opts.path); } catch { /* not there */ }
    const srv = createServer((sock) => this.accept(sock));
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
    sock.setEncoding('utf8');
    c.send(this.greeting());
    sock.on('data', (d: string) => c.onData(d));
    const drop = (): void => {
      this.conns.delete(c);
    };
    sock.on('close', drop);
    sock.on('error', drop);
  }

  /** Send an event to every negotiated client. */
  event(name: string, data: Record<string, unknown> = {}): void {
    const ev = { event: name, data, timestamp: timestamp() };
    for (const c of this.conns) if (c.negotiated) c.send(ev);
  }

  /** Wait until queued writes left (best effort), then close everything. */
  async close(): Promise<void> {
    const srv = this.server;
    this.server = null;
    for (const c of this.conns) c.sock.end();
    if (srv) await new Promise<void>((r) => srv.close(() => r()));
    for (const c of this.conns) c.sock.destroy();
    try { unlinkSync(this.opts.path); } catch { /* gone */ }
  }
}
