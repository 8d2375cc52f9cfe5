// Push (the agent's callbacks) to pull (a Connect server stream): a queue of events that an
// async generator drains, with backpressure: above HIGH_WATER queued bytes the producer is told
// to pause (the agent then stops reading the process's pipes), and below a quarter of it, to go on.
const HIGH_WATER = 1024 * 1024;

export class EventQueue<T> {
  private readonly items: Array<{ item: T; size: number }> = [];
  private bytes = 0;
  private paused = false;
  private ended = false;
  private error: unknown;
  private wake: (() => void) | undefined;

  constructor(private readonly onPause: () => void, private readonly onResume: () => void) {}

  /** Queues an event of `size` bytes. */
  push(item: T, size = 0): void {
    if (this.ended) return;
    this.items.push({ item, size });
    this.bytes += size;
    if (!this.paused && this.bytes > HIGH_WATER) { this.paused = true; this.onPause(); }
    this.notify();
  }

  /** No more events: the generator ends after the queued ones (throwing `error`, if any). */
  end(error?: unknown): void {
    if (this.ended) return;
    this.ended = true;
    this.error = error;
    this.notify();
  }

  get isEmpty(): boolean { return this.items.length === 0; }

  async *drain(): AsyncGenerator<T> {
    for (;;) {
      const next = this.items.shift();
      if (next) {
        this.bytes -= next.size;
        if (this.paused && this.bytes < HIGH_WATER / 4) { this.paused = false; this.onResume(); }
        yield next.item;
        continue;
      }
      if (this.ended) {
        if (this.error !== undefined) throw this.error;
        return;
      }
      await new Promise<void>((res) => { this.wake = res; });
    }
  }

  private notify(): void {
    const w = this.wake;
    this.wake = undefined;
    w?.();
  }
}
