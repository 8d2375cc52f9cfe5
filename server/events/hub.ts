// Event fan-out: every event is stored (for ?since= replay) and offered to each matching
// subscriber through that subscriber's own leaky bucket. A subscriber that cannot keep up
// loses events, never slows anyone else, and is told how many it lost (EVENTS_DROPPED).
import type { CapsuleEvent, EventStore } from '../db/events.js';
import { LeakyBucket } from '../util/leaky-bucket.js';

export interface SubscriberSink {
  /** A UTF-8 JSON text message; the same Buffer goes to every subscriber of an event. */
  send(message: Buffer): void;
  /** Bytes queued in the transport; past `maxBuffered` the subscriber counts as slow. */
  bufferedAmount(): number;
}

export interface SubscribeOptions {
  vm?: string | undefined;
  since?: number | undefined;
}

class Subscriber {
  dropped = 0;
  firstDroppedSeq = 0;
  lastDroppedSeq = 0;
  flushTimer: NodeJS.Timeout | undefined;

  constructor(readonly sink: SubscriberSink, readonly vm: string | undefined, readonly bucket: LeakyBucket) {}
}

export class EventHub {
  private readonly subscribers = new Set<Subscriber>();

  constructor(
    private readonly store: EventStore,
    private readonly rate: { perSecond: number; burst: number },
    private readonly maxBuffered = 4 * 1024 * 1024,
  ) {}

  get subscriberCount(): number {
    return this.subscribers.size;
  }

  publish(vm: string, event: string, data: Record<string, unknown> = {}): CapsuleEvent {
    const ev = this.store.append(vm, event, data);
    if (this.subscribers.size === 0) return ev;
    // Encode once, not once per subscriber: with 1,000 subscribers this is the hot loop.
    const message = Buffer.from(JSON.stringify(ev));
    for (const sub of this.subscribers) {
      if (sub.vm === undefined || sub.vm === vm) this.offer(sub, ev, message);
    }
    return ev;
  }

  /** Registers a sink; replays stored events after `since` first (synchronously: no gap). */
  subscribe(sink: SubscriberSink, opts: SubscribeOptions = {}): () => void {
    if (opts.since !== undefined) {
      for (const ev of this.store.since(opts.since, opts.vm)) sink.send(Buffer.from(JSON.stringify(ev)));
    }
    const sub = new Subscriber(sink, opts.vm, new LeakyBucket(this.rate.perSecond, this.rate.burst));
    this.subscribers.add(sub);
    return () => {
      clearTimeout(sub.flushTimer);
      this.subscribers.delete(sub);
    };
  }

  private offer(sub: Subscriber, ev: CapsuleEvent, message: Buffer): void {
    const slow = sub.sink.bufferedAmount() > this.maxBuffered;
    if (!slow && sub.bucket.tryTake()) {
      if (sub.dropped > 0) this.sendDropNotice(sub);
      sub.sink.send(message);
      return;
    }
    if (sub.dropped === 0) sub.firstDroppedSeq = ev.seq;
    sub.dropped++;
    sub.lastDroppedSeq = ev.seq;
    this.scheduleFlush(sub);
  }

  /** If no further event arrives, the notice still goes out once the bucket has room. */
  private scheduleFlush(sub: Subscriber): void {
    if (sub.flushTimer) return;
    const wait = Math.max(sub.bucket.msUntil(), 10);
    sub.flushTimer = setTimeout(() => {
      sub.flushTimer = undefined;
      if (sub.dropped === 0 || !this.subscribers.has(sub)) return;
      if (sub.sink.bufferedAmount() <= this.maxBuffered && sub.bucket.tryTake()) this.sendDropNotice(sub);
      else this.scheduleFlush(sub);
    }, wait);
    sub.flushTimer.unref();
  }

  private sendDropNotice(sub: Subscriber): void {
    sub.sink.send(Buffer.from(JSON.stringify({
      seq: sub.lastDroppedSeq,
      vm: sub.vm ?? null,
      event: 'EVENTS_DROPPED',
      data: { count: sub.dropped, fromSeq: sub.firstDroppedSeq, toSeq: sub.lastDroppedSeq },
      timestamp: new Date().toISOString(),
    })));
    sub.dropped = 0;
    clearTimeout(sub.flushTimer);
    sub.flushTimer = undefined;
  }
}
