// The main thread's poller for the fds Node does not watch itself: eventfds (ioeventfd queue
// notifications, irqfd resample), taps, and the QMP sockets read with recvmsg (qmp/scm-reader.ts).
//
// One epoll set (io/epoll.ts) whose own fd libuv watches on the main thread's event loop
// (io/uv-poll.ts): when any registered fd is ready, the epoll fd is readable, libuv's poll phase
// reports it, and the check phase of the same loop iteration collects the ready events with a
// non-blocking epoll_pwait and runs their callbacks. No thread but the main one is involved, so a
// wake-up costs one pass of the event loop (docs/vmm.md, "Notifications and interrupts"; before,
// the wait ran on libuv's threadpool and each wake-up was a hand-off to a pool thread and back).
//
// Registrations take effect at once (epoll keeps the set in the kernel) and remove() is final: an
// event is only collected right before its callback runs, so none is ever delivered for an fd
// removed earlier. Nothing registered: libuv stops watching, so an idle VMM's event loop may end.
// Callbacks are level-triggered by default: drain the fd (read the eventfd) in the callback or it
// fires again on the next loop iteration.
import { logger } from '../log.js';
import { EpollSet, type IoCallback } from './epoll.js';
import { UvPoll } from './uv-poll.js';

const log = logger('poller');
/** Collect-and-dispatch passes per wake-up: more than one only when a pass filled the event array. */
const MAX_PASSES = 8;

export class Poller {
  private readonly set = new EpollSet();
  private readonly watch: UvPoll;
  private closed = false;
  private closing: Promise<void> | null = null;
  private retry: NodeJS.Timeout | null = null;
  /** wake-ups so far (tests, debugging) */
  wakeups = 0;

  constructor() {
    // created at once, not on first add(): the VMM builds its pollers during init, where
    // uv_poll_init's ioctl and epoll_ctl calls are sure to be allowed
    try {
      this.watch = new UvPoll(this.set.epfd, (status) => this.ready(status));
    } catch (e) {
      this.set.close(); // off the main thread, or uv_poll_init failed: the epoll fd must not leak
      throw e;
    }
  }

  /** Registered fds. */
  get size(): number {
    return this.set.size;
  }

  /** True while libuv watches the set (something is registered); keeps the event loop alive. */
  get watching(): boolean {
    return this.watch.active;
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
    if (!this.retry) this.watch.start();
  }

  /** Change what `fd` is waited for (and its callback). */
  modify(fd: number, events: number, cb?: IoCallback): void {
    this.set.modify(fd, events, cb);
  }

  /**
   * Stop watching `fd` (before closing it). With `cb`, only if it is still registered with that
   * callback. No event is delivered for it afterwards. True if it was registered.
   */
  remove(fd: number, cb?: IoCallback): boolean {
    const removed = this.set.remove(fd, cb);
    if (removed && this.set.size === 0) this.watch.stop();
    return removed;
  }

  /**
   * Resolves after a pass that ran the callbacks of everything ready at the time of the call
   * (on the next turn of the event loop, never nested in a callback).
   */
  sync(): Promise<void> {
    return new Promise<void>((r) => setImmediate(() => { this.collect(); r(); }));
  }

  /**
   * Unregister everything and release the epoll fd; resolves once libuv let go of it (its close
   * callback, a later turn of the event loop: from an 'exit' handler it never resolves). add()
   * throws afterwards. May be called from a callback.
   */
  close(): Promise<void> {
    if (this.closing) return this.closing;
    this.closed = true;
    if (this.retry) clearTimeout(this.retry);
    this.retry = null;
    this.closing = this.watch.close().then(() => this.set.close());
    return this.closing;
  }

  get isClosed(): boolean {
    return this.closed;
  }

  private ready(status: number): void {
    if (status < 0) {
      // POLLERR on the epoll fd itself (not expected): libuv stopped the handle. Look again
      // shortly rather than spin; the timer keeps the loop alive meanwhile, as watching did.
      log.warn(`watching the epoll set failed: errno ${-status}`);
      this.watch.stop();
      this.retry = setTimeout(() => {
        this.retry = null;
        if (!this.closed && this.set.size > 0) this.watch.start();
      }, 10);
      return;
    }
    this.wakeups++;
    this.collect();
  }

  /** Collect what is ready now (epoll_pwait, timeout 0) and run its callbacks. */
  private collect(): void {
    for (let pass = 0; pass < MAX_PASSES && !this.closed && this.set.size > 0; pass++) {
      let n: number;
      try {
        n = this.set.waitSync(0);
      } catch (e) {
        log.warn(`epoll_pwait failed: ${String(e)}`);
        return;
      }
      // callbacks may add, remove, sync() or close()
      this.set.dispatch(n, (e, fd) => log.error(`callback for fd ${fd}: ${(e as Error)?.stack ?? String(e)}`));
      if (n < this.set.maxEvents) return;
    }
  }
}

let shared: Poller | null = null;

/**
 * The main thread's shared poller (one epoll set for all of the VMM's fds, watched by libuv).
 * Created on first use; build it during init (before the seccomp filter) by calling this once.
 */
export function mainPoller(): Poller {
  if (!shared || shared.isClosed) shared = new Poller();
  return shared;
}
