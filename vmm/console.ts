// Where the serial console goes: clients of the -chardev Unix socket (all of them; any may type),
// stdio with -serial stdio, else the log file. Output is batched per event-loop turn.
import { createServer, type Server, type Socket } from 'node:net';
import { unlinkSync } from 'node:fs';
import { logRaw, logger } from './log.js';

const log = logger('console');

export class ConsoleHub {
  private clients = new Set<Socket>();
  private server: Server | null = null;
  private pending: Buffer[] = [];
  private scheduled = false;
  private stdio = false;
  onInput: (b: Uint8Array) => void = () => {};

  constructor(private readonly socketPath?: string, private readonly useStdio = false) {}

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
      const drop = (): void => {
        this.clients.delete(s);
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
        // a client that does not read is dropped instead of buffering without bound
        if (c.writableLength > 1 << 20) {
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
    if (!delivered) logRaw(b);
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
    process.stdin.pause();
  }
}
