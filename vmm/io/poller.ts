// The main thread's poller for the fds Node does not watch itself: eventfds (ioeventfd queue
// notifications, irqfd resample), taps, and the QMP sockets read with recvmsg (qmp/scm-reader.ts).
//
// One epoll set (io/epoll.ts). While at least one fd is registered, one epoll_pwait is in flight on
// a libuv threadpool thread (koffi `.async`); when it returns, the callbacks run on the main thread
// and the wait is re-armed. Registrations made meanwhile need no wake-up: epoll applies them to
// the wait in flight. A wake eventfd ends that wait only when it must stop: the last fd was
// removed (no wait is in flight while nothing is registered, so an idle VMM keeps no pool thread
// and the event loop may end), sync(), close().
//
// Cost: the wait holds one of libuv's 4 pool threads for as long as anything is registered, and
// each re-armed wait joins the pool's one FIFO behind whatever fs work is queued (virtio-blk
// keeps its share small for this reason: blk/device.ts MAX_IN_FLIGHT); a wake-up is a pool
// hand-off: eventfd write -> callback measured on the dev host (vmm/io/poller.test.ts, 10k wakes
// from a worker thread): see docs/vmm.md, "Notifications and interrupts". Callbacks are
// level-triggered by default: drain the fd (read the eventfd) in the callback or it fires again
// at once.
import { logger } from '../log.js';
import { EpollSet, type IoCallback } from './epoll.js';
import { EventFd } from './eventfd.js';

const log = logger('poller');

export class Poller {
  private readonly set: EpollSet;
  private readonly wake: EventFd;
  private inFlight = false;
  private closed = false;
  private retry: NodeJS.Timeout | null = null;
  /** sync() callers waiting for the wait in flight to return */
  private syncs: Array<() => void> = [];
  private closing: Promise<void> | null = null;
  private closed_: (() => void) | null = null;
  private dispatching = false;
  private released = false;
  /** wake-ups so far (tests, debugging) */
  wakeups = 0;

  constructor() {
    // created at once, not on first add(): the VMM builds its pollers during init, and
    // epoll_create1 after the seccomp filter would be one more syscall to allow
    this.wake = EventFd.create();
    this.set = new EpollSet();
    this.set.addWake(this.wake.fd);
  }

  /** Registered fds. */
  get size(): number {
    return this.set.size;
  }

  /** True while an epoll_pwait is in flight on the threadpool. */
  get waiting(): boolean {
    return this.inFlight;
  }

  has(fd: number): boolean {
    return this.set.has(fd);
  }

  /**
   * Call `cb(events)` on the main thread whenever `fd` is ready for `events` (EPOLLIN, EPOLLOUT,
   * ... from io/epoll.ts; EPOLLERR and EPOLLHUP are always reported). Throws if `fd` is already
   * registered (see EpollSet.add for a closed-and-reused fd number).
   */
  add(fd: number, events: number, cb: IoCallback): void {
    if (this.closed) throw new Error('poller closed');
    this.set.add(fd, events, cb);
    this.arm();
  }

  /** Change what `fd` is waited for (and its callback); applies to the wait in flight. */
  modify(fd: number, events: number, cb?: IoCallback): void {
    this.set.modify(fd, events, cb);
  }

  /**
   * Stop watching `fd` (before closing it). With `cb`, only if it is still registered with that
   * callback. An event already returned for it is not delivered. True if it was registered.
   */
  remove(fd: number, cb?: IoCallback): boolean {
    const removed = this.set.remove(fd, cb);
    if (removed && this.set.size === 0 && this.inFlight) this.wake.write();
    return removed;
  }

  /**
   * Resolves once a wait in flight now has returned (it is woken for this) and its callbacks ran;
   * at once when none is. After it, no event from before the call is pending delivery.
   */
  sync(): Promise<void> {
    if (!this.inFlight) return Promise.resolve();
    const p = new Promise<void>((r) => this.syncs.push(r));
    this.wake.write();
    return p;
  }

  /**
   * Unregister everything and release the epoll fd and wake eventfd; resolves once no wait is in
   * flight. add() throws afterwards. May be called from a callback.
   */
  close(): Promise<void> {
    if (this.closing) return this.closing;
    this.closed = true;
    if (this.retry) clearTimeout(this.retry);
    this.retry = null;
    this.closing = new Promise<void>((r) => { this.closed_ = r; });
    if (this.inFlight) this.wake.write();
    else if (!this.dispatching) this.release();
    return this.closing;
  }

  get isClosed(): boolean {
    return this.closed;
  }

  private release(): void {
    if (this.released) return;
    this.released = true;
    this.set.close();
    this.wake.close();
    const syncs = this.syncs;
    this.syncs = [];
    for (const r of syncs) r();
    this.closed_?.();
    this.closed_ = null;
  }

  private arm(): void {
    if (this.inFlight || this.closed || this.retry || this.set.size === 0) return;
    this.inFlight = true;
    this.set.waitAsync(-1, (err, n) => this.returned(err, n));
  }

  private returned(err: unknown, n: number): void {
    this.inFlight = false;
    this.wakeups++;
    const syncs = this.syncs;
    this.syncs = [];
    if (err || n < 0) {
      // EINTR at most (glibc's epoll_pwait does not restart); a persistent failure must not spin
      if (!this.closed) {
        log.warn(`epoll_pwait failed: ${err ? String(err) : 'error'}`);
        this.retry = setTimeout(() => { this.retry = null; this.arm(); }, 10);
        this.retry.unref();
      }
    } else if (n > 0) {
      let woken = false;
      this.dispatching = true;
      try {
        // callbacks may add, remove, sync() or close(): close() waits for the end of this loop
        woken = this.set.dispatch(n, (e, fd) => log.error(`callback for fd ${fd}: ${(e as Error)?.stack ?? String(e)}`));
      } finally {
        this.dispatching = false;
      }
      if (woken) this.wake.read();
    }
    for (const r of syncs) r();
    if (this.closed) this.release();
    else this.arm();
  }
}

let shared: Poller | null = null;

/**
 * The main thread's shared poller (one threadpool thread for all of the VMM's fds). Created on
 * first use; build it during init (before the seccomp filter) by calling this once.
 */
export function mainPoller(): Poller {
  if (!shared || shared.isClosed) shared = new Poller();
  return shared;
}
