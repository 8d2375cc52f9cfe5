// The host side of virtio-net: a tap interface (or, in tests, anything that moves datagrams).
//
// A tap is opened IFF_TAP | IFF_NO_PI | IFF_VNET_HDR with a 12-byte vnet header
// (TUNSETVNETHDRSZ): exactly the virtio_net_hdr_v1 the guest's driver puts in front of every
// frame, so frames pass between the guest's buffers and the tap without rewriting, offload
// metadata (partial checksums, TSO) included. What the tap may hand us (and so the guest) is
// set with TUNSETOFFLOAD from the offloads the guest accepted.
//
// Two ways to get one:
//   Tap.open(name)   /dev/net/tun + TUNSETIFF by name, at init (under the seccomp filter openat
//                    is refused: a tap for QMP netdev_add comes as an fd)
//   Tap.fromFd(fd)   an fd opened elsewhere (QMP getfd, or inherited: -netdev fd=N); TUNGETIFF
//                    checks it is a tap with IFF_NO_PI and IFF_VNET_HDR (those flags can only be
//                    chosen by whoever called TUNSETIFF: QEMU's vnet_hdr=on)
// Either way the fd is made non-blocking: reads happen when the Poller says it is readable and
// stop at EAGAIN; writes never wait (a full tap queue drops, as a real NIC does).
import { constants as fsc, openSync, closeSync, writevSync } from 'node:fs';
import koffi from 'koffi';
import { EAGAIN, EINTR, errnoName, ioctlInt, ioctlPtr, SysError } from '../../../kvm/sys.js';
import {
  IFF_NO_PI, IFF_TAP, IFF_VNET_HDR, IFNAMSIZ, NET_HDR_SIZE, NET_OFFSETOF, NET_SIZEOF,
  TUNGETIFF, TUNSETIFF, TUNSETOFFLOAD, TUNSETVNETHDRSZ,
} from './sys.js';

const libc = koffi.load('libc.so.6');
const readRaw = libc.func('long read(int fd, void *buf, size_t len)') as (fd: number, buf: Uint8Array, len: number) => number | bigint;
const fcntlRaw = libc.func('int fcntl(int fd, int cmd, long arg)') as (fd: number, cmd: number, arg: number) => number;
const F_GETFL = 3;
const F_SETFL = 4;
const TYPE_MASK = 0x000f;

/** Where virtio-net's frames go and come from. Each frame starts with the 12-byte virtio-net header. */
export interface NetBackend {
  /** the fd to poll for readability */
  readonly fd: number;
  /** for logs and errors: the tap's name, or how the fd was given */
  readonly name: string;
  /** Reads one frame into `buf`. Returns its length, 0 when none is waiting (EAGAIN). Throws SysError. */
  recv(buf: Uint8Array): number;
  /** Writes one frame given as consecutive pieces. Returns the bytes written. Throws on failure. */
  send(pieces: Uint8Array[]): number;
  /** TUN_F_* offloads the reader (the guest) accepts; a stand-in ignores it. */
  setOffload(flags: number): void;
  close(): void;
}

/** Sets O_NONBLOCK on `fd`. */
export function setNonBlocking(fd: number): void {
  const fl = fcntlRaw(fd, F_GETFL, 0);
  if (fl < 0) throw new SysError('fcntl(F_GETFL)', koffi.errno());
  if (fl & fsc.O_NONBLOCK) return;
  if (fcntlRaw(fd, F_SETFL, fl | fsc.O_NONBLOCK) < 0) throw new SysError('fcntl(F_SETFL)', koffi.errno());
}

/** One datagram-like fd (a tap, or a SOCK_DGRAM socket in tests): read() is one frame, writev() one frame. */
export class FdBackend implements NetBackend {
  private open = true;
  constructor(readonly fd: number, readonly name: string) {}

  recv(buf: Uint8Array): number {
    for (;;) {
      const n = Number(readRaw(this.fd, buf, buf.length));
      if (n >= 0) return n;
      const e = koffi.errno();
      if (e === EINTR) continue;
      if (e === EAGAIN) return 0;
      throw new SysError(`read ${this.name}`, e);
    }
  }

  send(pieces: Uint8Array[]): number {
    // writev(2) straight from the guest's buffers; a chain holds at most a queue's worth of them,
    // well under IOV_MAX (1024)
    return writevSync(this.fd, pieces);
  }

  setOffload(_flags: number): void {}

  close(): void {
    if (!this.open) return;
    this.open = false;
    closeSync(this.fd);
  }
}

export class Tap extends FdBackend {
  private offload = -1;

  private constructor(fd: number, name: string, readonly ifname: string) {
    super(fd, name);
  }

  /** Opens (or creates, as root) the tap `ifname` in the VMM's network namespace. */
  static open(ifname: string): Tap {
    if (!/^[^/:\s]{1,15}$/.test(ifname)) throw new Error(`bad tap name '${ifname}'`);
    const fd = openSync('/dev/net/tun', fsc.O_RDWR | fsc.O_NONBLOCK);
    try {
      const ifr = Buffer.alloc(NET_SIZEOF.ifreq as number);
      ifr.write(ifname, NET_OFFSETOF['ifreq.ifr_name'] as number, IFNAMSIZ - 1, 'utf8');
      ifr.writeUInt16LE(IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, NET_OFFSETOF['ifreq.ifr_flags'] as number);
      if (ioctlPtr(fd, TUNSETIFF, ifr) < 0) throw new SysError(`TUNSETIFF ${ifname}`, koffi.errno());
      const tap = new Tap(fd, ifname, readName(ifr));
      tap.configure();
      return tap;
    } catch (e) {
      closeSync(fd);
      throw e;
    }
  }

  /**
   * Takes an open tap fd (owned from then on, closed by close()). `label` names it in errors
   * (e.g. "fd:NAME"). Throws when it is not a tap opened with IFF_NO_PI | IFF_VNET_HDR; the fd is
   * then not closed (the caller still owns it).
   */
  static fromFd(fd: number, label: string): Tap {
    const ifr = Buffer.alloc(NET_SIZEOF.ifreq as number);
    if (ioctlPtr(fd, TUNGETIFF, ifr) < 0) {
      throw new Error(`${label} is not a tap fd (TUNGETIFF: ${errnoName(koffi.errno())})`);
    }
    const flags = ifr.readUInt16LE(NET_OFFSETOF['ifreq.ifr_flags'] as number);
    if ((flags & TYPE_MASK) !== IFF_TAP) throw new Error(`${label} is a tun (layer 3) device, not a tap`);
    if (!(flags & IFF_NO_PI) || !(flags & IFF_VNET_HDR)) {
      throw new Error(`${label}: the tap must be opened with IFF_TAP|IFF_NO_PI|IFF_VNET_HDR (flags 0x${flags.toString(16)})`);
    }
    setNonBlocking(fd);
    const tap = new Tap(fd, label, readName(ifr));
    tap.configure();
    return tap;
  }

  private configure(): void {
    const sz = Buffer.alloc(4);
    sz.writeInt32LE(NET_HDR_SIZE);
    if (ioctlPtr(this.fd, TUNSETVNETHDRSZ, sz) < 0) throw new SysError(`TUNSETVNETHDRSZ ${this.name}`, koffi.errno());
    this.setOffload(0);
  }

  /** TUNSETOFFLOAD (an integer argument, not a pointer); skipped when unchanged. */
  override setOffload(flags: number): void {
    if (flags === this.offload) return;
    if (ioctlInt(this.fd, TUNSETOFFLOAD, flags) < 0) throw new SysError(`TUNSETOFFLOAD 0x${flags.toString(16)} ${this.name}`, koffi.errno());
    this.offload = flags;
  }

  get offloadFlags(): number {
    return this.offload;
  }
}

function readName(ifr: Buffer): string {
  const raw = ifr.subarray(0, IFNAMSIZ);
  const end = raw.indexOf(0);
  return raw.subarray(0, end < 0 ? IFNAMSIZ : end).toString('utf8');
}

/**
 * The tap of a -netdev at init: `netdev=NAME` opens (or creates) that tap; `fd=N` takes the
 * inherited fd N (QEMU's fd=). Named fds (QMP getfd) only exist later: they go with netdev_add.
 */
export function openNetBackend(n: { ifname?: string | undefined; fd?: string | undefined }): Tap {
  if (n.ifname !== undefined) {
    try {
      return Tap.open(n.ifname);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      const errno = (e as SysError).errno;
      const hint = code === 'ENOENT' ? ' (no /dev/net/tun: load the tun module)'
        : errno === 1 ? ' (creating a tap needs CAP_NET_ADMIN; or create it for this user: ip tuntap add NAME mode tap user UID)'
        : errno === 16 ? ' (another process has it open)' : '';
      throw new Error(`cannot open tap '${n.ifname}': ${(e as Error).message}${hint}`);
    }
  }
  const fd = n.fd ?? '';
  if (!/^\d+$/.test(fd)) {
    throw new Error(`fd=${fd}: at start only an inherited fd number works (fd=N); fds sent with QMP getfd are used by netdev_add`);
  }
  return Tap.fromFd(Number(fd), `fd=${fd}`);
}
