// Reads Unix stream sockets with recvmsg() so that SCM_RIGHTS file descriptors are not lost
// (Node's net.Socket reads with read(), and the kernel then drops the ancillary data).
//
// The sockets stay Node sockets (accepted with pauseOnConnect, written by Node) but Node never
// reads them. Readiness: one koffi `.async` poll() (a libuv threadpool thread) over every
// registered fd plus an eventfd that add()/remove()/close() write to, so the poll returns and is
// re-armed with the new set. When it returns, the main thread drains each readable fd with
// recvmsg(MSG_DONTWAIT | MSG_CMSG_CLOEXEC) and hands bytes + fds to the owner. No poll is in
// flight while nothing is registered, so an idle reader keeps neither a thread nor the event loop.
//
// Fd-reuse safety: a socket that Node destroyed (its fd closed) is dropped before any recvmsg, so
// a recycled fd number is never read; a stale number in a poll already in flight only causes a
// spurious wake-up.
import koffi from 'koffi';
import type { Socket } from 'node:net';
import { closeFd, mmap, munmap, MAP_ANONYMOUS, MAP_PRIVATE, PROT_READ, PROT_WRITE, EAGAIN, EINTR } from '../kvm/sys.js';
import { logger } from '../log.js';

const log = logger('qmp');
const libc = koffi.load('libc.so.6');
const pollRaw = libc.func('int poll(void *fds, unsigned long nfds, int timeout)') as unknown as
  ((fds: bigint, n: number, timeout: number) => number) & { async: (fds: bigint, n: number, timeout: number, cb: (err: unknown, res: number) => void) => void };
const recvmsgRaw = libc.func('long recvmsg(int fd, void *msg, int flags)') as (fd: number, msg: bigint, flags: number) => number | bigint;
const eventfdRaw = libc.func('int eventfd(unsigned int initval, int flags)') as (init: number, flags: number) => number;
const readRaw = libc.func('long read(int fd, void *buf, size_t len)') as (fd: number, buf: Buffer, len: number) => number | bigint;
const writeRaw = libc.func('long write(int fd, void *buf, size_t len)') as (fd: number, buf: Buffer, len: number) => number | bigint;

// x86_64 Linux ABI
const POLLIN = 0x1, POLLERR = 0x8, POLLHUP = 0x10, POLLNVAL = 0x20, POLLRDHUP = 0x2000;
const POLLFD_SIZE = 8; // struct pollfd { int fd; short events; short revents; }
const MSG_CTRUNC = 0x8, MSG_DONTWAIT = 0x40, MSG_CMSG_CLOEXEC = 0x40000000;
const SOL_SOCKET = 1, SCM_RIGHTS = 1;
const EFD_NONBLOCK = 0o4000, EFD_CLOEXEC = 0o2000000;
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

interface Entry { fd: number; sock: Socket; target: ScmReadTarget }

/** The connection's fd, or undefined when Node does not expose one. */
export function socketFd(sock: Socket): number | undefined {
  const fd = (sock as unknown as { _handle?: { fd?: number } | null })._handle?.fd;
  return typeof fd === 'number' && fd >= 0 ? fd : undefined;
}

export class ScmReader {
  private readonly entries = new Map<number, Entry>();
  private evfd = -1;
  private inFlight = false;
  private closed = false;
  private idle: (() => void) | null = null;
  // one mapping: msghdr | iovec | control | data; pollfds in their own (grown on demand)
  private readonly rxLen = 4096 + DATA_SIZE;
  private rx = 0n;
  private rxView: DataView | null = null;
  private pollMem = 0n;
  private pollCap = 0;
  private polled: Array<Entry | null> = [];

  add(sock: Socket, target: ScmReadTarget): boolean {
    const fd = socketFd(sock);
    if (fd === undefined || this.closed) return false;
    this.setup();
    this.entries.set(fd, { fd, sock, target });
    this.kick();
    return true;
  }

  remove(sock: Socket): void {
    for (const [fd, e] of this.entries) {
      if (e.sock === sock) {
        this.entries.delete(fd);
        this.kick();
      }
    }
  }

  /** Unregister everything; resolves once no poll is in flight (the event loop is free to exit). */
  close(): Promise<void> {
    this.closed = true;
    this.entries.clear();
    const done = new Promise<void>((r) => { this.idle = r; });
    this.kick();
    if (!this.inFlight) this.release();
    return done;
  }

  private setup(): void {
    if (this.evfd >= 0) return;
    const e = eventfdRaw(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (e < 0) throw new Error(`eventfd failed: errno ${koffi.errno()}`);
    this.evfd = e;
    this.rx = mmap(this.rxLen, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
    this.rxView = new DataView(koffi.view(this.rx, this.rxLen));
  }

  private release(): void {
    if (this.evfd >= 0) closeFd(this.evfd);
    this.evfd = -1;
    if (this.rx) munmap(this.rx, this.rxLen);
    this.rx = 0n;
    this.rxView = null;
    if (this.pollMem) munmap(this.pollMem, this.pollCap * POLLFD_SIZE);
    this.pollMem = 0n;
    this.pollCap = 0;
    const idle = this.idle;
    this.idle = null;
    idle?.();
  }

  /** Start a poll, or make the one in flight return so the next sees the new fd set. */
  private kick(): void {
    if (this.inFlight) {
      const one = Buffer.alloc(8);
      one.writeBigUInt64LE(1n);
      writeRaw(this.evfd, one, 8); // EAGAIN only when the counter is already huge: it is readable then
    } else if (!this.closed && this.entries.size > 0) {
      this.arm();
    }
  }

  private arm(): void {
    const n = this.entries.size + 1;
    if (n > this.pollCap) {
      if (this.pollMem) munmap(this.pollMem, this.pollCap * POLLFD_SIZE);
      this.pollCap = Math.max(64, n * 2);
      this.pollMem = mmap(this.pollCap * POLLFD_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
    }
    const v = new DataView(koffi.view(this.pollMem, n * POLLFD_SIZE));
    this.polled = [null, ...this.entries.values()];
    this.polled.forEach((e, i) => {
      v.setInt32(i * POLLFD_SIZE, e ? e.fd : this.evfd, true);
      v.setInt16(i * POLLFD_SIZE + 4, e ? POLLIN | POLLRDHUP : POLLIN, true);
      v.setInt16(i * POLLFD_SIZE + 6, 0, true);
    });
    this.inFlight = true;
    pollRaw.async(this.pollMem, n, -1, (err, res) => {
      this.inFlight = false;
      try {
        this.polledReturned(err, res, v);
      } catch (e) {
        log.error(`QMP reader: ${(e as Error).stack ?? e}`);
      }
      if (this.closed) this.release();
      else if (this.entries.size > 0) {
        // a failing poll (it should not: EINTR at most) must not spin
        if (err || res < 0) setTimeout(() => { if (!this.inFlight) this.kick(); }, 10).unref();
        else this.arm();
      }
    });
  }

  private polledReturned(err: unknown, res: number, v: DataView): void {
    if (err || res < 0) {
      log.warn(`QMP reader: poll failed: ${err ?? 'error'}`);
      return;
    }
    if (res === 0) return;
    const polled = this.polled;
    for (let i = 0; i < polled.length; i++) {
      const revents = v.getInt16(i * POLLFD_SIZE + 6, true);
      if (revents === 0) continue;
      const e = polled[i];
      if (!e) {
        const b = Buffer.alloc(8);
        readRaw(this.evfd, b, 8);
        continue;
      }
      // only fds still registered to the same, undestroyed socket are read
      if (this.entries.get(e.fd) !== e) continue;
      if (e.sock.destroyed || socketFd(e.sock) !== e.fd || (revents & POLLNVAL) !== 0) {
        this.entries.delete(e.fd);
        e.target.onEof();
        continue;
      }
      if (revents & (POLLIN | POLLHUP | POLLERR | POLLRDHUP)) this.drain(e);
    }
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
        this.entries.delete(e.fd);
        e.target.onEof();
        return;
      }
      const fds = this.takeFds(v, control);
      if (n === 0 && fds.length === 0) {
        this.entries.delete(e.fd);
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
