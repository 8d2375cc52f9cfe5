// A device's I/O budget (Firecracker's RateLimiter shape): an operations bucket and a bytes
// bucket, either optional. A request that does not fit is put back on its queue and retried
// when the budget allows, so a limited guest waits instead of failing.
import { LeakyBucket } from '../../../lib/leaky-bucket.js';

export interface RateLimit {
  /** operations per second (iops) */
  ops?: number | undefined;
  /** bytes per second */
  bytes?: number | undefined;
}

export class RateLimiter {
  private readonly ops: LeakyBucket | null;
  private readonly bytes: LeakyBucket | null;
  /** requests that had to wait (metrics) */
  throttled = 0;

  constructor(limit: RateLimit, now?: () => number) {
    // a one-second burst: the guest may use a second's budget at once, then the steady rate
    this.ops = limit.ops ? new LeakyBucket(limit.ops, limit.ops, now) : null;
    this.bytes = limit.bytes ? new LeakyBucket(limit.bytes, limit.bytes, now) : null;
  }

  get limited(): boolean {
    return this.ops !== null || this.bytes !== null;
  }

  /**
   * Takes one operation of `n` bytes if both buckets allow it; otherwise returns the milliseconds
   * to wait. A request bigger than a whole second's byte budget is charged the full budget, so it
   * waits for an empty bucket instead of never fitting.
   */
  take(n: number): number {
    const b = this.bytes ? Math.min(n, this.bytes.capacity) : 0;
    const wait = Math.max(this.ops?.msUntil(1) ?? 0, this.bytes?.msUntil(b) ?? 0);
    if (wait > 0) {
      this.throttled++;
      return wait;
    }
    this.ops?.tryTake(1);
    this.bytes?.tryTake(b);
    return 0;
  }
}

/** A device's one pending retry after its budget ran out: at most one timer at a time. */
export class RetryTimer {
  private timer: NodeJS.Timeout | null = null;
  constructor(private readonly run: () => void) {}

  schedule(ms: number): void {
    if (this.timer) return;
    this.timer = setTimeout(() => {
      this.timer = null;
      this.run();
    }, ms);
    this.timer.unref?.();
  }

  cancel(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
  }
}
