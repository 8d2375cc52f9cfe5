// Event fan-out: every event is stored (for ?since= replay) and offered to each matching
// subscriber through that subscriber's own leaky bucket. A subscriber that cannot keep up
// loses events, never slows anyone else, and is told how many it lost (EVENTS_DROPPED).
//
// Replay (?since=) goes through the same bucket and the same cap on queued bytes: it reads
// the store a page at a time, one page per turn of the event loop, and waits (for tokens, for
// the socket to drain) instead of queueing. At most `replayLimit` events are replayed; older
// ones are announced with EVENTS_DROPPED. A replaying subscriber is not offered live events:
// they are in the store, and the replay reaches them; once a page comes back empty the
// subscriber turns live in the same synchronous step, so nothing falls in between.
import type { CapsuleEvent, EventStore } from '../db/events.js';
import { LeakyBucket } from '../../lib/leaky-bucket.js';

export interface SubscriberSink {
  /** A UTF-8 JSON text message; the same Buffer goes to every subscriber of an event. */
  send(message: Buffer): void;
  /** Bytes queued in the transport; past `maxBuffered` the subscriber counts as slow. */
  bufferedAmount(): number;
}

export interface SubscribeOptions {
  vm?: string | undefined;
  /** Only this tenant's events (a tenant's token never sees another's). */
  tenant?: string | undefined;
  since?: number | undefined;
}

export interface HubLimits {
  /** Bytes queued in a subscriber's socket beyond which it gets nothing more until it drains. */
  maxBuffered: number;
  /** Most events one ?since= replay sends. */
  replayLimit: number;
  /** Events read from the store per replay step. */
  replayPage: number;
}

/** Running totals since the server started (read by the metrics at scrape time). */
export interface HubStats {
  /** Events published (stored or not). */
  published: number;
  /** Events a slow subscriber did not get live (each counted once per subscriber that lost it). */
  droppedSlow: number;
  /** Events a ?since= replay skipped because they were beyond the replay limit. */
  droppedReplayLimit: number;
}

/** Sees every published event, synchronously, after it is stored (metrics derive VM lifecycle counts from it). */
export type PublishObserver = (event: CapsuleEvent) => void;

export const DEFAULT_HUB_LIMITS: HubLimits = { maxBuffered: 1024 * 1024, replayLimit: 10_000, replayPage: 200 };

class Subscriber {
  dropped = 0;
  firstDroppedSeq = 0;
  lastDroppedSeq = 0;
  flushTimer: NodeJS.Timeout | undefined;
  /** While replaying: the seq of the last event sent (the next page reads after it). */
  replayCursor: number | undefined;
  /** Cancels the pending replay step (a timer or an immediate), if any. */
  cancelStep: (() => void) | undefined;

  constructor(readonly sink: SubscriberSink, readonly vm: string | undefined, readonly tenant: string | undefined, readonly bucket: LeakyBucket) {}
}

export class EventHub {
  private readonly subscribers = new Set<Subscriber>();
  private readonly limits: HubLimits;
  private readonly observers: PublishObserver[] = [];
  readonly stats: HubStats = { published: 0, droppedSlow: 0, droppedReplayLimit: 0 };

  constructor(
    private readonly store: EventStore,
    private readonly rate: { perSecond: number; burst: number },
    limits: Partial<HubLimits> = {},
    /** The tenant a VM belongs to (stored with each event, for tenant-scoped subscribers). */
    private readonly tenantOf: (vm: string) => string | undefined = () => undefined,
  ) {
    this.limits = { ...DEFAULT_HUB_LIMITS, ...limits };
  }

  get subscriberCount(): number {
    return this.subscribers.size;
  }

  /**
   * Stores (or, on a full disk, counts) the event, then offers it to live subscribers. Never
   * throws for storage. `tenant`: the VM's tenant, looked up unless given (a deleted VM's
   * VM_DELETED names it, the VM being gone).
   */
  publish(vm: string, event: string, data: Record<string, unknown> = {}, tenant = this.tenantOf(vm)): CapsuleEvent {
    const ev = this.store.append(vm, event, data, tenant ?? null);
    this.stats.published++;
    for (const observe of this.observers) {
      try {
        observe(ev);
      } catch {
        /* an observer (the metrics) must never cost an event its delivery */
      }
    }
    if (this.subscribers.size === 0) return ev;
    // Encode once, not once per subscriber: with 1,000 subscribers this is the hot loop.
    const message = Buffer.from(JSON.stringify(ev));
    for (const sub of this.subscribers) {
      if (sub.replayCursor !== undefined) continue;
      if ((sub.vm === undefined || sub.vm === vm) && (sub.tenant === undefined || sub.tenant === tenant)) this.offer(sub, ev, message);
    }
    return ev;
  }

  /** Adds an in-process observer of every published event (not a subscriber: no bucket, no drops). */
  observe(fn: PublishObserver): void {
    this.observers.push(fn);
  }

  /** A deleted VM's history goes with it (its VM_DELETED event stays). */
  forgetVm(vm: string): void {
    this.store.purgeVm(vm);
  }

  /** Registers a sink; with `since`, replays stored events after it first (paced, see above). */
  subscribe(sink: SubscriberSink, opts: SubscribeOptions = {}): () => void {
    const sub = new Subscriber(sink, opts.vm, opts.tenant, new LeakyBucket(this.rate.perSecond, this.rate.burst));
    this.subscribers.add(sub);
    if (opts.since !== undefined) this.startReplay(sub, opts.since);
    return () => {
      clearTimeout(sub.flushTimer);
      sub.cancelStep?.();
      this.subscribers.delete(sub);
    };
  }

  private startReplay(sub: Subscriber, since: number): void {
    const start = this.store.replayStart(since, { vm: sub.vm, tenant: sub.tenant }, this.limits.replayLimit);
    sub.replayCursor = start.cursor;
    if (start.skipped > 0) {
      // Older than the replay limit: announced as dropped, like events a slow subscriber lost.
      sub.dropped = start.skipped;
      this.stats.droppedReplayLimit += start.skipped;
      sub.firstDroppedSeq = start.firstSkipped;
      sub.lastDroppedSeq = start.cursor;
    }
    this.replayStep(sub);
  }

  /** Sends at most one page, then yields to the event loop (or waits for tokens or drain). */
  private replayStep(sub: Subscriber): void {
    sub.cancelStep = undefined;
    if (!this.subscribers.has(sub) || sub.replayCursor === undefined) return;
    if (!this.hasRoom(sub)) return this.waitThenReplay(sub);
    if (sub.dropped > 0) {
      if (!sub.bucket.tryTake()) return this.waitThenReplay(sub);
      this.sendDropNotice(sub);
    }
    const page = this.store.since(sub.replayCursor, { vm: sub.vm, tenant: sub.tenant }, this.limits.replayPage);
    if (page.length === 0) {
      sub.replayCursor = undefined; // caught up: live from here on
      return;
    }
    for (const ev of page) {
      if (!this.hasRoom(sub) || !sub.bucket.tryTake()) return this.waitThenReplay(sub);
      sub.sink.send(Buffer.from(JSON.stringify(ev)));
      sub.replayCursor = ev.seq;
    }
    const next = setImmediate(() => this.replayStep(sub));
    sub.cancelStep = () => clearImmediate(next);
  }

  private waitThenReplay(sub: Subscriber): void {
    const wait = this.hasRoom(sub) ? Math.max(sub.bucket.msUntil(), 5) : 20;
    const timer = setTimeout(() => this.replayStep(sub), wait);
    timer.unref();
    sub.cancelStep = () => clearTimeout(timer);
  }

  private hasRoom(sub: Subscriber): boolean {
    return sub.sink.bufferedAmount() <= this.limits.maxBuffered;
  }

  private offer(sub: Subscriber, ev: CapsuleEvent, message: Buffer): void {
    if (this.hasRoom(sub) && sub.bucket.tryTake()) {
      if (sub.dropped > 0) this.sendDropNotice(sub);
      sub.sink.send(message);
      return;
    }
    if (sub.dropped === 0) sub.firstDroppedSeq = ev.seq;
    sub.dropped++;
    this.stats.droppedSlow++;
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
      if (this.hasRoom(sub) && sub.bucket.tryTake()) this.sendDropNotice(sub);
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
