// Leaky bucket: `capacity` commands, draining at `ratePerSec`. take() is false when full.
export class LeakyBucket {
  private level = 0;
  private last: number;

  constructor(
    private readonly ratePerSec = 100,
    private readonly capacity = 100,
    private readonly now: () => number = () => performance.now(),
  ) {
    this.last = now();
  }

  take(): boolean {
    const t = this.now();
    this.level = Math.max(0, this.level - ((t - this.last) / 1000) * this.ratePerSec);
    this.last = t;
    if (this.level + 1 > this.capacity) return false;
    this.level += 1;
    return true;
  }
}
