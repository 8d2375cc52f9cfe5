// Where the serial console goes: clients of the -chardev Unix socket (all of them; any may type),
// stdio with -serial stdio, else the log file. Output is batched per event-loop turn.
//
// A virtio console (devices/virtio/console) uses the same hub with `flowControl`: output nobody
// is connected to is discarded (not logged), a client that does not read is not dropped but makes
// `writable` false until its socket drains (the device then leaves the guest's bytes in its queue,
// onDrain says when to go on), and pauseInput()/resumeInput() stop reading every client while the
// guest is not taking input (the clients' writes then wait in their socket buffers).
import { createServer, type Server, type Socket } from 'node:net';
import { unlinkSync } from 'node:fs';
import { logRaw, logger } from './log.js';

const log = logger('console');

export interface ConsoleHubOptions {
  /** virtio console semantics (see above) instead of the serial console's drop-the-slow-client */
  flowControl?: boolean;
  /** flowControl: `writable` is false while a client has more than this many bytes queued (64 KiB) */
  highWater?: number;
}

export class ConsoleHub {
  private clients = new Set<Socket>();
  private server: Server | null = null;
  private pending: Buffer[] = [];
  private scheduled = false;
  private stdio = false;
  private inputPaused = false;
  onInput: (b: Uint8Array) => void = () => {};
  /** flowControl: output may be written again (a client drained or left) */
  onDrain: () => void = () => {};

  constructor(private readonly socketPath?: string, private readonly useStdio = false, private readonly opts: ConsoleHubOptions = {}) {}

  get clientCount(): number {
    return this.clients.size;
  }

  /** Bytes waiting to go out: the batch plus the fullest client's queue. */
  get backlog(): number {
    let most = 0;
    for (const c of this.clients) most = Math.max(most, c.writableLength);
    return this.pending.reduce((n, b) => n + b.length, 0) + most;
  }

  /** flowControl: whether more output may be written now. */
  get writable(): boolean {
    return this.backlog < (this.opts.highWater ?? 64 * 1024);
  }

  /** Stop reading every client (and clients that connect meanwhile) until resumeInput(). */
  pauseInput(): void {
    this.inputPaused = true;
    for (const c of this.clients) c.pause();
  }

  resumeInput(): void {
    this.inputPaused = false;
    for (const c of this.clients) c.resume();
  }

  async listen(): Promise<void> {
    if (this.useStdio) {
      this.stdio = true;
      if (process.stdin.isTTY) process.stdin.setRawMode(true);
      process.stdin.on('data', (d: Buffer) => this.onInput(d));
      process.stdin.on('error', () => {});
    }
    if (!this.socketPath) return;
    try { unlinkSync(this.socketPath); } catch { /* not there */ }
    const srv = createServer((s) => {
      this.clients.add(s);
      log.info(`console client connected (${this.clients.size})`);
      s.on('data', (d: Buffer) => this.onInput(d));
      if (this.inputPaused) s.pause();
      if (this.opts.flowControl) s.on('drain', () => this.onDrain());
      const drop = (): void => {
        if (!this.clients.delete(s)) return;
        if (this.opts.flowControl) this.onDrain();
      };
      s.on('close', drop);
      s.on('error', drop);
    });
    this.server = srv;
    await new Promise<void>((resolve, reject) => {
      srv.once('error', reject);
      srv.listen(this.socketPath, () => {
        srv.off('error', reject);
        resolve();
      });
    });
  }

  write(bytes: Uint8Array): void {
    this.pending.push(Buffer.from(bytes));
    if (!this.scheduled) {
      this.scheduled = true;
      setImmediate(() => this.flush());
    }
  }

  flush(): void {
    this.scheduled = false;
    if (this.pending.length === 0) return;
    const b = Buffer.concat(this.pending);
    this.pending = [];
    let delivered = false;
    for (const c of this.clients) {
      if (c.writable) {
        // a client that does not read is dropped instead of buffering without bound (a virtio
        // console's device stops writing instead: flowControl)
        if (!this.opts.flowControl && c.writableLength > 1 << 20) {
          c.destroy();
          continue;
        }
        c.write(b);
        delivered = true;
      }
    }
    if (this.stdio) {
      process.stdout.write(b);
      delivered = true;
    }
    if (!delivered && !this.opts.flowControl) logRaw(b);
    // the batch may have been what held a virtio console back, and no 'drain' follows a write
    // that the socket took without queueing much
    if (this.opts.flowControl && this.writable) this.onDrain();
  }

  async close(): Promise<void> {
    this.flush();
    for (const c of this.clients) c.end();
    if (this.server) {
      const s = this.server;
      this.server = null;
      await new Promise<void>((r) => s.close(() => r()));
      for (const c of this.clients) c.destroy();
      if (this.socketPath) {
        try { unlinkSync(this.socketPath); } catch { /* gone */ }
      }
    }
    if (this.stdio && process.stdin.isTTY) process.stdin.setRawMode(false);
    // only a hub that used stdin touches it (a virtio console's hub never does)
    if (this.useStdio) process.stdin.pause();
  }
}
