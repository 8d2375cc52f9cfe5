// Reads Unix stream sockets with recvmsg() so that SCM_RIGHTS file descriptors are not lost
// (Node's net.Socket reads with read(), and the kernel then drops the ancillary data).
//
// The sockets stay Node sockets (accepted with pauseOnConnect, written by Node) but Node never
// reads them. Readiness comes from the main thread's shared Poller (io/poller.ts: an epoll set
// that libuv watches on the main loop while some fd is registered); its callback drains the fd
// with recvmsg(MSG_DONTWAIT | MSG_CMSG_CLOEXEC) on the main thread and hands bytes + fds to the
// owner. With no connection registered libuv does not watch the set, so an idle reader does not
// keep the event loop alive.
//
// Fd-reuse safety: a socket that Node destroyed (its fd closed) is dropped before any recvmsg, so
// a recycled fd number is never read; the poller's registrations are tokens, so an event returned
// for a removed registration is never delivered (and epoll forgets a closed fd by itself).
import koffi from 'koffi';
import type { Socket } from 'node:net';
import { mmap, munmap, MAP_ANONYMOUS, MAP_PRIVATE, PROT_READ, PROT_WRITE, EAGAIN, EINTR } from '../kvm/sys.js';
import { EPOLLERR, EPOLLHUP, EPOLLIN, EPOLLRDHUP, type IoCallback } from '../io/epoll.js';
import { mainPoller, type Poller } from '../io/poller.js';
import { logger } from '../log.js';

const log = logger('qmp');
const libc = koffi.load('libc.so.6');
const recvmsgRaw = libc.func('long recvmsg(int fd, void *msg, int flags)') as (fd: number, msg: bigint, flags: number) => number | bigint;

// x86_64 Linux ABI
const MSG_CTRUNC = 0x8, MSG_DONTWAIT = 0x40, MSG_CMSG_CLOEXEC = 0x40000000;
const SOL_SOCKET = 1, SCM_RIGHTS = 1;
// struct msghdr: name@0 namelen@8 iov@16 iovlen@24 control@32 controllen@40 flags@48, size 56
// struct iovec: base@0 len@8, size 16; struct cmsghdr: len@0 (size_t) level@8 type@12, data@16
const MSGHDR_SIZE = 56, IOVEC_SIZE = 16, CMSGHDR_SIZE = 16;
const cmsgAlign = (n: number): number => (n + 7) & ~7;

/** At most this many fds per recvmsg (QEMU's TCP_MAX_FDS); the kernel closes any beyond. */
export const MAX_FDS_PER_MESSAGE = 16;
const CONTROL_SIZE = CMSGHDR_SIZE + cmsgAlign(4 * MAX_FDS_PER_MESSAGE);
const DATA_SIZE = 64 * 1024;
/** recvmsg calls per fd per wake-up: a flooding client cannot starve the event loop. */
const MAX_READS_PER_WAKE = 16;

export interface ScmReadTarget {
  /** bytes read, with the fds that came with them (now owned by the callee) */
  onData(bytes: Buffer, fds: number[]): void;
  /** end of stream or a read error: the fd has been unregistered */
  onEof(): void;
}

interface Entry { fd: number; sock: Socket; target: ScmReadTarget; cb: IoCallback }

/** The connection's fd, or undefined when Node does not expose one. */
export function socketFd(sock: Socket): number | undefined {
  const fd = (sock as unknown as { _handle?: { fd?: number } | null })._handle?.fd;
  return typeof fd === 'number' && fd >= 0 ? fd : undefined;
}

export class ScmReader {
  private readonly entries = new Map<number, Entry>();
  private closed = false;
  // one mapping: msghdr | iovec | control | data (made on the first add)
  private readonly rxLen = 4096 + DATA_SIZE;
  private rx = 0n;
  private rxView: DataView | null = null;

  /** `poller`: the main thread's shared one (as it is when the reader is made) unless one is given. */
  constructor(private readonly poller: Poller = mainPoller()) {}

  add(sock: Socket, target: ScmReadTarget): boolean {
    const fd = socketFd(sock);
    if (fd === undefined || this.closed) return false;
    this.setup();
    // an entry with this fd number belongs to a socket Node already closed (its 'close' handler
    // has not run yet): drop it without telling its owner, which learns it from Node
    const stale = this.entries.get(fd);
    if (stale) this.unregister(stale);
    const e: Entry = { fd, sock, target, cb: (events) => this.ready(e, events) };
    try {
      this.poller.add(fd, EPOLLIN | EPOLLRDHUP, e.cb);
    } catch (err) {
      log.warn(`QMP reader: cannot watch fd ${fd}: ${(err as Error).message}`);
      return false;
    }
    this.entries.set(fd, e);
    return true;
  }

  remove(sock: Socket): void {
    for (const e of [...this.entries.values()]) if (e.sock === sock) this.unregister(e);
  }

  /**
   * Unregister everything; resolves after one more pass of the poller (with no other poller user,
   * libuv then watches nothing of it: the event loop is free to exit).
   */
  async close(): Promise<void> {
    this.closed = true;
    for (const e of [...this.entries.values()]) this.unregister(e);
    await this.poller.sync();
    this.release();
  }

  private unregister(e: Entry): void {
    if (this.entries.get(e.fd) !== e) return;
    this.entries.delete(e.fd);
    this.poller.remove(e.fd, e.cb);
  }

  private setup(): void {
    if (this.rx) return;
    this.rx = mmap(this.rxLen, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
    this.rxView = new DataView(koffi.view(this.rx, this.rxLen));
  }

  private release(): void {
    if (this.rx) munmap(this.rx, this.rxLen);
    this.rx = 0n;
    this.rxView = null;
  }

  /** The poller's callback: runs on the main thread. */
  private ready(e: Entry, events: number): void {
    // only fds still registered to the same, undestroyed socket are read
    if (this.entries.get(e.fd) !== e) return;
    if (e.sock.destroyed || socketFd(e.sock) !== e.fd) {
      this.unregister(e);
      e.target.onEof();
      return;
    }
    if (events & (EPOLLIN | EPOLLHUP | EPOLLERR | EPOLLRDHUP)) this.drain(e);
  }

  private drain(e: Entry): void {
    const v = this.rxView!;
    const base = this.rx;
    const iov = base + BigInt(MSGHDR_SIZE);
    const control = iov + BigInt(IOVEC_SIZE);
    const dataOff = 4096;
    for (let i = 0; i < MAX_READS_PER_WAKE; i++) {
      if (this.entries.get(e.fd) !== e || e.sock.destroyed) return;
      // msghdr and iovec are rewritten each time: the kernel updates controllen and flags
      v.setBigUint64(0, 0n, true); // msg_name
      v.setUint32(8, 0, true);
      v.setBigUint64(16, iov, true);
      v.setBigUint64(24, 1n, true);
      v.setBigUint64(32, control, true);
      v.setBigUint64(40, BigInt(CONTROL_SIZE), true);
      v.setInt32(48, 0, true);
      v.setBigUint64(MSGHDR_SIZE, base + BigInt(dataOff), true);
      v.setBigUint64(MSGHDR_SIZE + 8, BigInt(DATA_SIZE), true);
      const n = Number(recvmsgRaw(e.fd, base, MSG_DONTWAIT | MSG_CMSG_CLOEXEC));
      if (n < 0) {
        const errno = koffi.errno();
        if (errno === EINTR) continue;
        if (errno === EAGAIN) return;
        log.debug(`QMP reader: recvmsg on fd ${e.fd}: errno ${errno}`);
        this.unregister(e);
        e.target.onEof();
        return;
      }
      const fds = this.takeFds(v, control);
      if (n === 0 && fds.length === 0) {
        this.unregister(e);
        e.target.onEof();
        return;
      }
      const bytes = Buffer.from(new Uint8Array(v.buffer, dataOff, n)); // a copy: the buffer is reused
      e.target.onData(bytes, fds);
      if (n < DATA_SIZE) return; // drained (a short read); the next poll says if more came
    }
  }

  /** The fds of every SCM_RIGHTS control message (CMSG_FIRSTHDR / CMSG_NXTHDR). */
  private takeFds(v: DataView, control: bigint): number[] {
    const fds: number[] = [];
    const controllen = Number(v.getBigUint64(40, true));
    const flags = v.getInt32(48, true);
    if (flags & MSG_CTRUNC) log.warn(`QMP reader: more than ${MAX_FDS_PER_MESSAGE} fds in one message; the kernel closed the rest`);
    const cbase = Number(control - this.rx);
    let off = 0;
    while (off + CMSGHDR_SIZE <= controllen) {
      const len = Number(v.getBigUint64(cbase + off, true));
      if (len < CMSGHDR_SIZE || off + len > controllen) break;
      const level = v.getInt32(cbase + off + 8, true);
      const type = v.getInt32(cbase + off + 12, true);
      if (level === SOL_SOCKET && type === SCM_RIGHTS) {
        for (let p = CMSGHDR_SIZE; p + 4 <= len; p += 4) fds.push(v.getInt32(cbase + off + p, true));
      }
      off += cmsgAlign(len);
    }
    return fds;
  }
}
