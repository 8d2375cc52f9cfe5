// virtio-rng (virtio 1.2, 5.4): one queue of device-writable buffers the device fills with
// bytes from a host entropy source (-rng random_file=PATH[,bytes_per_sec=N]).
import { closeSync, openSync, readSync } from 'node:fs';
import { DEVICE_ID } from '../../../virtio/constants.js';
import type { ActivateContext, VirtioDevice } from '../../../virtio/device.js';
import { ChainWriter } from '../../../virtio/queue.js';
import { RateLimiter, RetryTimer } from '../rate-limiter.js';

export interface RngOptions {
  /** host file to read (normally /dev/urandom) */
  file: string;
  bytesPerSec?: number | undefined;
}

export interface RngMetrics {
  requests: number;
  bytes: number;
  rejected: number;
  readErrors: number;
}

/** At most this many bytes per request: a guest asking for 4 GiB gets a bounded answer. */
const MAX_REQUEST = 64 * 1024;
const QUEUE_SIZE = 256;

export class VirtioRng implements VirtioDevice {
  readonly deviceType = DEVICE_ID.RNG;
  readonly queueSizes = [QUEUE_SIZE];
  readonly features = 0n;
  readonly metrics: RngMetrics = { requests: 0, bytes: 0, rejected: 0, readErrors: 0 };
  private fd: number;
  private ctx: ActivateContext | null = null;
  private readonly limiter: RateLimiter;
  private readonly retry = new RetryTimer(() => this.notify());

  constructor(readonly opts: RngOptions, now?: () => number) {
    this.fd = openSync(opts.file, 'r');
    this.limiter = new RateLimiter({ bytes: opts.bytesPerSec }, now);
  }

  readConfig(_offset: number, data: Uint8Array): void {
    data.fill(0); // no configuration space
  }
  writeConfig(): void {}

  activate(ctx: ActivateContext): void {
    this.ctx = ctx;
  }

  notify(): void {
    const ctx = this.ctx;
    if (!ctx) return;
    const q = ctx.queues[0];
    if (!q) return;
    let used = false;
    for (;;) {
      const p = q.popOrArm(ctx.mem);
      if (!p) break;
      if (p.error) {
        this.metrics.rejected++;
        q.addUsed(ctx.mem, p.error.head, 0);
        used = true;
        continue;
      }
      const w = new ChainWriter(ctx.mem, p.chain.writable);
      const want = Math.min(w.total, MAX_REQUEST);
      const wait = this.limiter.take(want);
      if (wait > 0) {
        q.undoPop();
        this.retry.schedule(wait);
        break;
      }
      q.addUsed(ctx.mem, p.chain.head, this.fill(w, want));
      used = true;
    }
    if (used) ctx.interrupt.signalUsed(0);
  }

  /** Reads entropy straight into the guest's buffers; returns the bytes written. */
  private fill(w: ChainWriter, want: number): number {
    this.metrics.requests++;
    let n = 0;
    try {
      for (const v of w.views(want)) {
        let off = 0;
        while (off < v.length) {
          const r = readSync(this.fd, v, off, v.length - off, null);
          if (r <= 0) break;
          off += r;
        }
        n += off;
        if (off < v.length) break;
      }
    } catch {
      this.metrics.readErrors++;
    }
    this.metrics.bytes += n;
    return n;
  }

  reset(): void {
    this.ctx = null;
    this.retry.cancel();
  }

  close(): void {
    this.reset();
    if (this.fd >= 0) closeSync(this.fd);
    this.fd = -1;
  }
}
