// Per-key leaky buckets for the API server (one per API token).
import { LeakyBucket } from '../../lib/leaky-bucket.js';

/** One bucket per key (API token), created on first use; idle buckets are swept. */
export class BucketMap {
  private readonly buckets = new Map<string, { bucket: LeakyBucket; used: number }>();
  private lastSweep = Date.now();

  constructor(private readonly perSecond: number, private readonly capacity: number) {}

  get(key: string): LeakyBucket {
    const now = Date.now();
    if (now - this.lastSweep > 60_000) this.sweep(now);
    let entry = this.buckets.get(key);
    if (!entry) {
      entry = { bucket: new LeakyBucket(this.perSecond, this.capacity), used: now };
      this.buckets.set(key, entry);
    }
    entry.used = now;
    return entry.bucket;
  }

  private sweep(now: number): void {
    this.lastSweep = now;
    for (const [k, e] of this.buckets) if (now - e.used > 60_000) this.buckets.delete(k);
  }
}
