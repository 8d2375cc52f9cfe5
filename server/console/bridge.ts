// Serial console bridge: the server is the one client of a VMM's console socket and fans
// the guest's output out to any number of viewers; viewers' keystrokes go to the guest.
// Recent output is kept so that a viewer who connects late still sees the boot.
//
// Memory is bounded both ways (docs/api.md, "Limits"):
//   - output: the guest's small serial chunks are batched into one frame per viewer every
//     BATCH_MS (or at BATCH_BYTES), and a viewer whose transport holds more than
//     VIEWER_MAX_BUFFERED bytes is disconnected with a reason; the others are unaffected;
//   - input: when the VMM's console socket holds INPUT_HIGH_WATER bytes (the guest does not
//     read), input() says so and the caller stops reading its viewer until 'drain'.
import { createConnection, type Socket } from 'node:net';

export interface ConsoleViewer {
  write(data: Buffer): void;
  /** Bytes queued in the viewer's transport (WebSocket bufferedAmount). */
  bufferedAmount(): number;
  /** The console went away (the VMM exited) or the viewer fell too far behind. */
  close(reason: ConsoleCloseReason): void;
}

export type ConsoleCloseReason = 'vm-stopped' | 'too-slow';

const HISTORY_BYTES = 64 * 1024;
export const BATCH_MS = 10;
export const BATCH_BYTES = 64 * 1024;
export const VIEWER_MAX_BUFFERED = 1024 * 1024;
export const INPUT_HIGH_WATER = 64 * 1024;

export class ConsoleBridge {
  private socket: Socket | undefined;
  private readonly viewers = new Set<ConsoleViewer>();
  private readonly drainWaiters = new Set<() => void>();
  private history: Buffer[] = [];
  private historyBytes = 0;
  private pending: Buffer[] = [];
  private pendingBytes = 0;
  private flushTimer: NodeJS.Timeout | undefined;
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
    this.socket.on('drain', () => this.wakeDrainWaiters());
    this.socket.on('error', () => { /* 'close' follows */ });
    this.socket.on('close', () => this.close());
  }

  get connected(): boolean {
    return this.socket !== undefined;
  }

  get viewerCount(): number {
    return this.viewers.size;
  }

  /** Adds a viewer and replays recent output to it. */
  attach(viewer: ConsoleViewer): () => void {
    if (this.historyBytes > 0) viewer.write(Buffer.concat(this.history));
    this.viewers.add(viewer);
    return () => this.viewers.delete(viewer);
  }

  /**
   * Sends keystrokes to the guest. Returns false when the console socket is backed up (the
   * guest is not reading): the caller should stop reading its viewer until onDrain() fires.
   * Input arriving while more than 4 × INPUT_HIGH_WATER is queued is dropped.
   */
  input(data: Buffer): boolean {
    const s = this.socket;
    if (!s || s.destroyed) return true;
    if (s.writableLength > 4 * INPUT_HIGH_WATER) return false;
    s.write(data);
    return s.writableLength < INPUT_HIGH_WATER;
  }

  /** Calls `fn` once when the console socket has drained (or closed). */
  onDrain(fn: () => void): void {
    if (!this.socket || this.closed || this.socket.writableLength === 0) return fn();
    this.drainWaiters.add(fn);
  }

  recentOutput(): string {
    return Buffer.concat(this.history).toString('utf8');
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.flush();
    this.socket?.destroy();
    this.socket = undefined;
    for (const v of this.viewers) v.close('vm-stopped');
    this.viewers.clear();
    this.wakeDrainWaiters();
  }

  private wakeDrainWaiters(): void {
    const waiters = [...this.drainWaiters];
    this.drainWaiters.clear();
    for (const w of waiters) w();
  }

  private onOutput(d: Buffer): void {
    this.history.push(d);
    this.historyBytes += d.length;
    while (this.historyBytes > HISTORY_BYTES && this.history.length > 1) {
      this.historyBytes -= this.history.shift()!.length;
    }
    if (this.viewers.size === 0) return;
    this.pending.push(d);
    this.pendingBytes += d.length;
    if (this.pendingBytes >= BATCH_BYTES) this.flush();
    else this.flushTimer ??= setTimeout(() => this.flush(), BATCH_MS);
  }

  /** One frame per viewer for everything that arrived since the last flush. */
  private flush(): void {
    clearTimeout(this.flushTimer);
    this.flushTimer = undefined;
    if (this.pendingBytes === 0) return;
    const frame = this.pending.length === 1 ? this.pending[0]! : Buffer.concat(this.pending);
    this.pending = [];
    this.pendingBytes = 0;
    for (const v of this.viewers) {
      if (v.bufferedAmount() > VIEWER_MAX_BUFFERED) {
        this.viewers.delete(v);
        v.close('too-slow');
        continue;
      }
      v.write(frame);
    }
  }
}
