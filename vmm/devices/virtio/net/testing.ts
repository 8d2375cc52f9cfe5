// Tap stand-ins for host tests (creating a real tap needs root and a network namespace):
//   datagramPair()  a Unix SOCK_DGRAM socketpair: one read is one frame, one writev one frame,
//                   exactly a tap's semantics; the device gets one end, the test the other
//   FakeBackend     no fd at all: frames from a generator (the fuzzer)
//   nullPoller      a Poller that watches nothing (with FakeBackend: rx only runs on notify)
import koffi from 'koffi';
import { closeFd, SysError } from '../../../kvm/sys.js';
import type { Poller } from '../../../io/poller.js';
import { FdBackend, type NetBackend } from './tap.js';

const libc = koffi.load('libc.so.6');
const socketpairRaw = libc.func('int socketpair(int domain, int type, int protocol, _Out_ int *sv)') as (d: number, t: number, p: number, sv: number[]) => number;
const readRaw = libc.func('long read(int fd, void *buf, size_t len)') as (fd: number, buf: Uint8Array, len: number) => number | bigint;
const writeRaw = libc.func('long write(int fd, void *buf, size_t len)') as (fd: number, buf: Uint8Array, len: number) => number | bigint;
const setsockoptRaw = libc.func('int setsockopt(int fd, int level, int name, int *val, unsigned int len)') as (fd: number, l: number, n: number, v: number[], len: number) => number;
const AF_UNIX = 1;
const SOCK_DGRAM = 2;
const SOCK_NONBLOCK = 0o4000;
const SOCK_CLOEXEC = 0o2000000;
const SOL_SOCKET = 1;
const SO_SNDBUF = 7;
const SO_RCVBUF = 8;

/** A connected pair of non-blocking datagram sockets with room for 64 KiB frames. */
export function datagramPair(): [number, number] {
  const sv = [0, 0];
  if (socketpairRaw(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) < 0) throw new SysError('socketpair', koffi.errno());
  for (const fd of sv) {
    setsockoptRaw(fd, SOL_SOCKET, SO_SNDBUF, [4 << 20], 4);
    setsockoptRaw(fd, SOL_SOCKET, SO_RCVBUF, [4 << 20], 4);
  }
  return [sv[0] as number, sv[1] as number];
}

/** The device's end of a datagram pair, and the test's. */
export class PairPeer {
  readonly backend: FdBackend;
  private readonly buf = Buffer.alloc(70000);
  constructor(readonly peerFd: number, deviceFd: number) {
    this.backend = new FdBackend(deviceFd, 'pair');
  }
  static create(): PairPeer {
    const [a, b] = datagramPair();
    return new PairPeer(b, a);
  }
  /** What the device wrote, one frame, or null. */
  take(): Buffer | null {
    const n = Number(readRaw(this.peerFd, this.buf, this.buf.length));
    return n < 0 ? null : Buffer.from(this.buf.subarray(0, n));
  }
  /** A frame for the device to read. */
  give(frame: Uint8Array): void {
    if (Number(writeRaw(this.peerFd, frame, frame.length)) !== frame.length) throw new SysError('write', koffi.errno());
  }
  close(): void {
    this.backend.close();
    closeFd(this.peerFd);
  }
}

/** Frames from a function; no fd (never polled). */
export class FakeBackend implements NetBackend {
  readonly fd = -1;
  readonly name = 'fake';
  sent = 0;
  offload = 0;
  constructor(private readonly next: (buf: Uint8Array) => number) {}
  recv(buf: Uint8Array): number {
    return this.next(buf);
  }
  send(pieces: Uint8Array[]): number {
    this.sent++;
    return pieces.reduce((n, p) => n + p.length, 0);
  }
  setOffload(flags: number): void {
    this.offload = flags;
  }
  close(): void {}
}

export const nullPoller = { add(): void {}, remove(): boolean { return true; }, modify(): void {} } as unknown as Poller;
