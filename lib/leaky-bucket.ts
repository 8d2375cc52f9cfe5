// A leaky bucket as a meter: each unit of work adds 1; the bucket drains at `perSecond`;
// work that would overflow `capacity` is refused. The VMM meters each QMP connection with it
// (vmm/qmp/server.ts); the API server meters API calls per token (server/util/leaky-bucket.ts),
// events per subscriber (server/events/hub.ts) and each VMM's QMP events (server/qmp/event-rate.ts).
export class LeakyBucket {
  private level = 0;
  private last: number;

  constructor(readonly perSecond: number, readonly capacity: number, private readonly now: () => number = () => performance.now()) {
    this.last = now();
  }

  private leak(): void {
    const t = this.now();
    this.level = Math.max(0, this.level - ((t - this.last) / 1000) * this.perSecond);
    this.last = t;
  }

  /** Adds `units` if they fit; returns whether they did. */
  tryTake(units = 1): boolean {
    this.leak();
    if (this.level + units > this.capacity + 1e-9) return false;
    this.level += units;
    return true;
  }

  /** Milliseconds until `units` would fit (0 if they fit now). */
  msUntil(units = 1): number {
    this.leak();
    const excess = this.level + units - this.capacity;
    return excess <= 0 ? 0 : Math.ceil((excess / this.perSecond) * 1000);
  }
}
