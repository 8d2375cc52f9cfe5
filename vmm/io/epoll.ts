// epoll(7) for the VMM's own waits: one epoll fd with its registrations, shared by the main-thread
// Poller (libuv watches the epoll fd; the Poller collects with a zero timeout) and the iothreads'
// IoLoop (waits synchronously in a worker thread).
//
// Why epoll and not poll(): the registered set lives in the kernel, so add/modify/remove take
// effect even for a wait already in flight on another thread (no wake-up and re-arm to publish
// a new pollfd array, as the poll() of the old QMP reader needed), and a wait costs O(ready fds),
// not O(registered fds). Syscalls: epoll_create1 (once per set), epoll_ctl, epoll_pwait (glibc's
// epoll_pwait with a NULL mask is the epoll_pwait syscall, which libuv already uses, so the
// seccomp policy needs no epoll_wait).
//
// Each registration carries a token (epoll_event.data) instead of the fd: an event from a wait
// that returned before remove() (or before the fd number was reused by a new registration) names
// a token that no longer exists and is dropped, never delivered to the wrong callback.
import koffi from 'koffi';
import { closeFd, EINTR, SysError } from '../kvm/sys.js';
import { OFFSETOF, SIZEOF } from '../kvm/layout.js';

const libc = koffi.load('libc.so.6');
const epollCreate1Raw = libc.func('int epoll_create1(int flags)') as (flags: number) => number;
const epollCtlRaw = libc.func('int epoll_ctl(int epfd, int op, int fd, void *event)') as (epfd: number, op: number, fd: number, ev: Buffer | null) => number;
type WaitFn = (epfd: number, events: Buffer, max: number, timeout: number, sigmask: null) => number;
/** epoll_pwait with a NULL sigmask */
const epollPwait = libc.func('int epoll_pwait(int epfd, void *events, int maxevents, int timeout, void *sigmask)') as unknown as WaitFn;

// <sys/epoll.h> (x86_64), checked against C in vmm/kvm/layout.test.ts
export const EPOLL_CLOEXEC = 0o2000000;
export const EPOLL_CTL_ADD = 1;
export const EPOLL_CTL_DEL = 2;
export const EPOLL_CTL_MOD = 3;
export const EPOLLIN = 0x001;
export const EPOLLPRI = 0x002;
export const EPOLLOUT = 0x004;
export const EPOLLERR = 0x008;
export const EPOLLHUP = 0x010;
export const EPOLLRDHUP = 0x2000;
/** edge-triggered: reported once per change; the callback must then drain the fd */
export const EPOLLET = 0x80000000;

const EVENT_SIZE = SIZEOF.epoll_event as number; // 12: packed on x86_64
const EV_EVENTS = OFFSETOF['epoll_event.events'] as number;
const EV_DATA = OFFSETOF['epoll_event.data'] as number;
const ENOENT = 2, EBADF = 9, EEXIST = 17;

/** Called with the ready events (EPOLLIN, EPOLLOUT, EPOLLHUP, ...). */
export type IoCallback = (events: number) => void;

interface Registration { fd: number; token: number; cb: IoCallback }

/** An epoll fd and its registrations; waits are done by the owner (Poller or IoLoop). */
export class EpollSet {
  readonly epfd: number;
  private readonly byFd = new Map<number, Registration>();
  private readonly byToken = new Map<number, Registration>();
  private nextToken = 1;
  private readonly ctlBuf = Buffer.alloc(EVENT_SIZE);
  /** results of the last wait, read by dispatch() (every wait is synchronous: a plain buffer) */
  readonly maxEvents: number;
  private readonly events: Buffer;
  private readonly eventsView: DataView;
  private closed = false;

  constructor(maxEvents = 64) {
    const fd = epollCreate1Raw(EPOLL_CLOEXEC);
    if (fd < 0) throw new SysError('epoll_create1', koffi.errno());
    this.epfd = fd;
    this.maxEvents = maxEvents;
    this.events = Buffer.alloc(maxEvents * EVENT_SIZE);
    this.eventsView = new DataView(this.events.buffer, this.events.byteOffset, this.events.length);
  }

  /** Registered fds. */
  get size(): number {
    return this.byFd.size;
  }

  has(fd: number): boolean {
    return this.byFd.has(fd);
  }

  /**
   * Register `fd` for `events`. A fd number still registered here is only accepted when the
   * kernel no longer has it (the old file was closed without remove(), and the number reused):
   * the stale registration is replaced. Otherwise EEXIST.
   */
  add(fd: number, events: number, cb: IoCallback): void {
    if (this.closed) throw new Error('epoll set closed');
    const reg: Registration = { fd, token: this.nextToken++, cb };
    this.ctl(EPOLL_CTL_ADD, fd, events, reg.token);
    const stale = this.byFd.get(fd);
    if (stale) this.byToken.delete(stale.token);
    this.byFd.set(fd, reg);
    this.byToken.set(reg.token, reg);
  }

  /** Change the events of a registered fd, and its callback when given. */
  modify(fd: number, events: number, cb?: IoCallback): void {
    const reg = this.byFd.get(fd);
    if (!reg) throw new Error(`fd ${fd} is not registered`);
    this.ctl(EPOLL_CTL_MOD, fd, events, reg.token);
    if (cb) reg.cb = cb;
  }

  /**
   * Unregister `fd`; false if it was not. Remove before closing the fd: epoll drops a closed fd
   * by itself only once no other descriptor refers to the same file. A fd already closed (EBADF)
   * or no longer the registered file (ENOENT) is simply forgotten. With `cb`, only a registration
   * with that callback is removed (an owner that may be late cannot remove a newer one's).
   */
  remove(fd: number, cb?: IoCallback): boolean {
    const reg = this.byFd.get(fd);
    if (!reg || (cb !== undefined && reg.cb !== cb)) return false;
    this.byFd.delete(fd);
    this.byToken.delete(reg.token);
    if (!this.closed && epollCtlRaw(this.epfd, EPOLL_CTL_DEL, fd, null) < 0) {
      const e = koffi.errno();
      if (e !== ENOENT && e !== EBADF) throw new SysError('epoll_ctl(DEL)', e);
    }
    return true;
  }

  /** Wait synchronously (this thread blocks); returns the number of events, 0 on EINTR/timeout. */
  waitSync(timeoutMs: number): number {
    const n = epollPwait(this.epfd, this.events, this.maxEvents, timeoutMs, null);
    if (n < 0) {
      const e = koffi.errno();
      if (e === EINTR) return 0;
      throw new SysError('epoll_pwait', e);
    }
    return n;
  }

  /**
   * Call the callbacks of the `n` events the last wait returned, in order. A callback may add or
   * remove registrations (its own included): an event whose registration is gone by the time
   * its turn comes is dropped. A throwing callback is reported to `onError` and the rest still run.
   */
  dispatch(n: number, onError: (e: unknown, fd: number) => void): void {
    const v = this.eventsView;
    const count = Math.min(n, this.maxEvents);
    // copy first: a callback could start another wait into the same buffer
    const ready: Array<[number, number]> = [];
    for (let i = 0; i < count; i++) {
      const o = i * EVENT_SIZE;
      ready.push([Number(v.getBigUint64(o + EV_DATA, true)), v.getUint32(o + EV_EVENTS, true)]);
    }
    for (const [token, events] of ready) {
      const reg = this.byToken.get(token);
      if (!reg) continue;
      try {
        reg.cb(events);
      } catch (e) {
        onError(e, reg.fd);
      }
    }
  }

  /** Forget every registration and close the epoll fd; no wait may be in flight. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.byFd.clear();
    this.byToken.clear();
    closeFd(this.epfd);
  }

  private ctl(op: number, fd: number, events: number, token: number): void {
    this.ctlBuf.writeUInt32LE(events >>> 0, EV_EVENTS);
    this.ctlBuf.writeBigUInt64LE(BigInt(token), EV_DATA);
    if (epollCtlRaw(this.epfd, op, fd, this.ctlBuf) < 0) {
      const e = koffi.errno();
      throw new SysError(`epoll_ctl(${op === EPOLL_CTL_ADD ? 'ADD' : 'MOD'}, fd ${fd})${e === EEXIST ? ': already registered' : ''}`, e);
    }
  }
}
