// Serial console bridge: the server is the one client of a VMM's console socket and fans
// the guest's output out to any number of viewers; viewers' keystrokes go to the guest.
// Recent output is kept so that a viewer who connects late still sees the boot.
import { createConnection, type Socket } from 'node:net';

export interface ConsoleViewer {
  write(data: Buffer): void;
  /** The console went away (the VMM exited). */
  close(): void;
}

const HISTORY_BYTES = 64 * 1024;

export class ConsoleBridge {
  private socket: Socket | undefined;
  private readonly viewers = new Set<ConsoleViewer>();
  private history: Buffer[] = [];
  private historyBytes = 0;
  private closed = false;

  constructor(private readonly path: string) {}

  /** Connects (retrying briefly: the VMM may still be creating the socket). */
  async connect(deadlineMs = 5000): Promise<void> {
    const end = Date.now() + deadlineMs;
    for (;;) {
      try {
        this.socket = await new Promise<Socket>((resolve, reject) => {
          const s = createConnection(this.path);
          s.once('connect', () => resolve(s));
          s.once('error', reject);
        });
        break;
      } catch (e) {
        if (Date.now() > end || this.closed) throw e;
        await new Promise((r) => setTimeout(r, 50));
      }
    }
    this.socket.on('data', (d: Buffer) => this.onOutput(d));
    this.socket.on('error', () => { /* 'close' follows */ });
    this.socket.on('close', () => this.close());
  }

  get connected(): boolean {
    return this.socket !== undefined;
  }

  /** Adds a viewer and replays recent output to it. */
  attach(viewer: ConsoleViewer): () => void {
    if (this.historyBytes > 0) viewer.write(Buffer.concat(this.history));
    this.viewers.add(viewer);
    return () => this.viewers.delete(viewer);
  }

  input(data: Buffer): void {
    this.socket?.write(data);
  }

  recentOutput(): string {
    return Buffer.concat(this.history).toString('utf8');
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.socket?.destroy();
    this.socket = undefined;
    for (const v of this.viewers) v.close();
    this.viewers.clear();
  }

  private onOutput(d: Buffer): void {
    this.history.push(d);
    this.historyBytes += d.length;
    while (this.historyBytes > HISTORY_BYTES && this.history.length > 1) {
      this.historyBytes -= this.history.shift()!.length;
    }
    for (const v of this.viewers) v.write(d);
  }
}
