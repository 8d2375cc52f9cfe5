// eventfd(2) as a small typed handle (vmm-sys-util's EventFd): the counter that KVM_IOEVENTFD
// signals, KVM_IRQFD waits on, and pollers/iothreads wake up with.
//
// Always EFD_NONBLOCK | EFD_CLOEXEC: a read never blocks (the counter is read when a poller says
// the fd is readable), and the fd does not leak into the children the VMM never has anyway.
// An eventfd is only a number: it can be handed to a worker thread (postMessage the `fd`) and
// written there with EventFd.borrow(fd), which is how a device thread raises an irqfd.
import koffi from 'koffi';
import { closeFd, EAGAIN, EINTR, SysError } from '../kvm/sys.js';

const libc = koffi.load('libc.so.6');
const eventfdRaw = libc.func('int eventfd(unsigned int initval, int flags)') as (init: number, flags: number) => number;
const readRaw = libc.func('long read(int fd, void *buf, size_t len)') as (fd: number, buf: Buffer, len: number) => number | bigint;
const writeRaw = libc.func('long write(int fd, void *buf, size_t len)') as (fd: number, buf: Buffer, len: number) => number | bigint;

// <sys/eventfd.h> (x86_64), checked against C in vmm/kvm/layout.test.ts
export const EFD_NONBLOCK = 0o4000;
export const EFD_CLOEXEC = 0o2000000;

export class EventFd {
  // one 8-byte buffer per handle: write() and read() allocate nothing
  private readonly buf = Buffer.alloc(8);
  private open = true;

  private constructor(readonly fd: number, private readonly owned: boolean) {}

  /** A new eventfd with counter `initval`. */
  static create(initval = 0): EventFd {
    const fd = eventfdRaw(initval, EFD_NONBLOCK | EFD_CLOEXEC);
    if (fd < 0) throw new SysError('eventfd', koffi.errno());
    return new EventFd(fd, true);
  }

  /**
   * A handle on an eventfd owned elsewhere (e.g. created on the main thread, its number posted to
   * a worker). close() does not close the fd.
   */
  static borrow(fd: number): EventFd {
    if (!Number.isInteger(fd) || fd < 0) throw new RangeError(`eventfd ${fd}`);
    return new EventFd(fd, false);
  }

  /**
   * Add `n` (> 0) to the counter, waking whoever waits on it. A counter already at its maximum
   * (2^64 - 2) would make the write fail with EAGAIN; the fd is readable then, so the wake-up
   * this write was for is already pending and the error is ignored.
   */
  write(n: number | bigint = 1): void {
    this.buf.writeBigUInt64LE(BigInt(n));
    for (;;) {
      if (Number(writeRaw(this.fd, this.buf, 8)) === 8) return;
      const e = koffi.errno();
      if (e === EINTR) continue;
      if (e === EAGAIN) return;
      throw new SysError('eventfd write', e);
    }
  }

  /** The counter, reset to 0; null when it was 0 (nothing signalled since the last read). */
  read(): bigint | null {
    for (;;) {
      if (Number(readRaw(this.fd, this.buf, 8)) === 8) return this.buf.readBigUInt64LE(0);
      const e = koffi.errno();
      if (e === EINTR) continue;
      if (e === EAGAIN) return null;
      throw new SysError('eventfd read', e);
    }
  }

  /** Close the fd (owned handles only; idempotent). Unregister it from KVM and pollers first. */
  close(): void {
    if (!this.open) return;
    this.open = false;
    if (this.owned) closeFd(this.fd);
  }
}
