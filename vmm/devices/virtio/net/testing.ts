// Tap stand-ins for host tests (creating a real tap needs root and a network namespace):
//   datagramPair()  a Unix SOCK_DGRAM socketpair: one read is one frame, one writev one frame,
//                   exactly a tap's semantics; the device gets one end, the test the other
//   FakeBackend     no fd at all: frames from a generator (the fuzzer)
//   nullPoller      a Poller that watches nothing (with FakeBackend: rx only runs on notify)
//   tapInNamespace / arpAndPing   a real tap in a private netns, and a guest's ARP + ping on it
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import koffi from 'koffi';
import { closeFd, SysError } from '../../../kvm/sys.js';
import type { Poller } from '../../../io/poller.js';
import { GuestAddress as GA } from '../../../memory/guest-memory.js';
import { REG } from '../../../virtio/mmio.js';
import type { TestDriver } from '../../../virtio/testing/driver.js';
import { FdBackend, Tap, type NetBackend } from './tap.js';

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

// ---- a real tap, and a guest's first words on it (tests that may use root) -----------------

const ipRun = (...args: string[]): { ok: boolean; out: string } => {
  const r = spawnSync('ip', args, { encoding: 'utf8' });
  return { ok: r.status === 0, out: `${r.stdout}${r.stderr}` };
};

/** Root, /dev/net/tun and iproute2: a real tap can be made. */
export const canMakeTap = (): boolean => process.getuid?.() === 0 && existsSync('/dev/net/tun') && ipRun('-V').ok;

/**
 * A fresh network namespace `ns` holding tap `name` with `addr` (e.g. 10.0.2.1/24), up. The tap is
 * opened in our namespace and moved at once: its fd keeps working. Remove with `ip netns del`.
 */
export function tapInNamespace(ns: string, name: string, addr: string): Tap {
  const add = ipRun('netns', 'add', ns);
  if (!add.ok) throw new Error(`ip netns add ${ns}: ${add.out}`);
  const tap = Tap.open(name);
  for (const c of [['link', 'set', name, 'netns', ns], ['-n', ns, 'addr', 'add', addr, 'dev', name], ['-n', ns, 'link', 'set', name, 'up']]) {
    const r = ipRun(...c);
    if (!r.ok) {
      tap.close();
      throw new Error(`ip ${c.join(' ')}: ${r.out}`);
    }
  }
  return tap;
}

export function deleteNamespace(ns: string): void {
  ipRun('netns', 'del', ns);
}

function inetCsum(b: Uint8Array): number {
  let s = 0;
  for (let i = 0; i + 1 < b.length; i += 2) s += ((b[i] as number) << 8) | (b[i + 1] as number);
  if (b.length % 2) s += (b[b.length - 1] as number) << 8;
  while (s >> 16) s = (s & 0xffff) + (s >> 16);
  return ~s & 0xffff;
}

async function until(cond: () => boolean, what: string, ms: number): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 2));
  }
}

/**
 * Plays a guest on a live virtio-net device (driver initialised, queues 0/1): posts 16 rx buffers,
 * sends an ARP request for `hostIp` and an ICMP echo to it, and returns the frames answered
 * (Ethernet onwards). `me` is the guest's MAC, addresses are 4 bytes.
 */
export async function arpAndPing(d: TestDriver, me: Uint8Array, myIp: Uint8Array, hostIp: Uint8Array, timeoutMs = 5000): Promise<{ arpReply: Buffer; echoReply: Buffer }> {
  const HDR = 12;
  const frame = (payload: Uint8Array): Buffer => Buffer.concat([Buffer.alloc(HDR), payload]);
  for (let i = 0; i < 16; i++) d.submit(0, [{ writable: 2048 }], { notify: false });
  d.setReg(REG.QUEUE_NOTIFY, 0);
  const rx = async (pred: (f: Buffer) => boolean, what: string): Promise<Buffer> => {
    let hit: Buffer | null = null;
    await until(() => {
      for (const u of d.takeUsed(0)) {
        // read back through the descriptor table: each buffer is one descriptor
        const ring = d.rings[0] as { desc: number };
        const addr = Number(d.mem.readU64(GA(ring.desc + 16 * u.id)));
        const f = Buffer.from(d.mem.read(GA(addr), u.len)).subarray(HDR);
        if (!hit && pred(f)) hit = f;
      }
      return hit !== null;
    }, what, timeoutMs);
    return hit as unknown as Buffer;
  };
  // ARP who-has hostIp tell myIp
  const arp = Buffer.concat([Buffer.alloc(6, 0xff), me, Buffer.from([0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1]), me, myIp, Buffer.alloc(6), hostIp]);
  d.submit(1, [{ data: frame(arp) }]);
  const arpReply = await rx((f) => f.readUInt16BE(12) === 0x0806 && f.readUInt16BE(20) === 2, 'an ARP reply');
  const hostMac = arpReply.subarray(22, 28);
  const icmp = Buffer.from([8, 0, 0, 0, 0x12, 0x34, 0, 1, ...Buffer.from('capsule-ping')]);
  icmp.writeUInt16BE(inetCsum(icmp), 2);
  const iph = Buffer.from([0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 1, 0, 0, ...myIp, ...hostIp]);
  iph.writeUInt16BE(20 + icmp.length, 2);
  iph.writeUInt16BE(inetCsum(iph), 10);
  d.submit(1, [{ data: frame(Buffer.concat([hostMac, me, Buffer.from([0x08, 0x00]), iph, icmp])) }]);
  const echoReply = await rx((f) => f.readUInt16BE(12) === 0x0800 && f[23] === 1 && f[34] === 0, 'an echo reply');
  return { arpReply, echoReply };
}
