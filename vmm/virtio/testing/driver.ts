// A driver-side stand-in for unit tests: plays the guest's virtio-mmio driver against a real
// MmioTransport over GuestMemory.fromBuffers (register writes, rings in "guest" memory).
import { GuestAddress as GA, GuestMemory } from '../../memory/guest-memory.js';
import { F_VERSION_1, STATUS, VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE } from '../constants.js';
import type { VirtioDevice } from '../device.js';
import { MmioTransport, REG } from '../mmio.js';

export interface RingLayout {
  desc: number;
  avail: number;
  used: number;
  size: number;
}

export interface OutBuffer {
  /** device-readable bytes */
  data?: Uint8Array;
  /** or a device-writable buffer of this length */
  writable?: number;
}

export interface UsedEntry {
  id: number;
  len: number;
}

/** Guest memory for tests: 4 MiB; rings at 1 MiB + 64 KiB per queue; data buffers from 2 MiB. */
export const TEST_MEM_SIZE = 4 << 20;
const RING_BASE = 1 << 20;
const RING_STRIDE = 64 << 10;
const DATA_BASE = 2 << 20;

export class TestDriver {
  readonly mem: GuestMemory;
  readonly transport: MmioTransport;
  /** interrupts raised (edges) */
  irqEdges = 0;
  readonly rings: RingLayout[] = [];
  private nextFree: number[] = [];
  private availIdx: number[] = [];
  private usedSeen: number[] = [];
  private dataAt = DATA_BASE;

  constructor(readonly device: VirtioDevice, mem?: GuestMemory) {
    this.mem = mem ?? GuestMemory.fromBuffers(TEST_MEM_SIZE);
    this.transport = new MmioTransport(device, this.mem, () => {
      this.irqEdges++;
    });
  }

  /** What a level-triggered view of the line would show: InterruptStatus is non-zero. */
  get irqLevel(): boolean {
    return Atomics.load(this.transport.interruptWord, 0) !== 0;
  }

  reg(offset: number): number {
    const b = new Uint8Array(4);
    this.transport.read(offset, b);
    return new DataView(b.buffer).getUint32(0, true);
  }

  setReg(offset: number, v: number): void {
    const b = new Uint8Array(4);
    new DataView(b.buffer).setUint32(0, v >>> 0, true);
    this.transport.write(offset, b);
  }

  config(offset: number, len: number): Uint8Array {
    const b = new Uint8Array(len);
    this.transport.read(REG.CONFIG + offset, b);
    return b;
  }

  deviceFeatures(): bigint {
    this.setReg(REG.DEVICE_FEATURES_SEL, 0);
    const lo = BigInt(this.reg(REG.DEVICE_FEATURES));
    this.setReg(REG.DEVICE_FEATURES_SEL, 1);
    return (BigInt(this.reg(REG.DEVICE_FEATURES)) << 32n) | lo;
  }

  /**
   * The Linux driver's sequence: reset, ACKNOWLEDGE, DRIVER, features, FEATURES_OK, queues,
   * DRIVER_OK. Returns the final status register.
   */
  init(features: bigint = F_VERSION_1, queueSizes?: number[]): number {
    this.setReg(REG.STATUS, 0);
    this.setReg(REG.STATUS, STATUS.ACKNOWLEDGE);
    this.setReg(REG.STATUS, STATUS.ACKNOWLEDGE | STATUS.DRIVER);
    this.setReg(REG.DRIVER_FEATURES_SEL, 0);
    this.setReg(REG.DRIVER_FEATURES, Number(features & 0xffff_ffffn));
    this.setReg(REG.DRIVER_FEATURES_SEL, 1);
    this.setReg(REG.DRIVER_FEATURES, Number(features >> 32n));
    this.setReg(REG.STATUS, STATUS.ACKNOWLEDGE | STATUS.DRIVER | STATUS.FEATURES_OK);
    if (!(this.reg(REG.STATUS) & STATUS.FEATURES_OK)) return this.reg(REG.STATUS);
    const n = this.device.queueSizes.length;
    for (let i = 0; i < n; i++) {
      this.setReg(REG.QUEUE_SEL, i);
      const max = this.reg(REG.QUEUE_NUM_MAX);
      const size = Math.min(queueSizes?.[i] ?? max, max);
      const base = RING_BASE + i * RING_STRIDE;
      const layout = { desc: base, avail: base + 16 * size, used: align(base + 16 * size + 6 + 2 * size, 4096), size };
      this.rings[i] = layout;
      this.nextFree[i] = 0;
      this.availIdx[i] = 0;
      this.usedSeen[i] = 0;
      this.setReg(REG.QUEUE_NUM, size);
      this.setReg(REG.QUEUE_DESC_LOW, layout.desc);
      this.setReg(REG.QUEUE_DESC_HIGH, 0);
      this.setReg(REG.QUEUE_DRIVER_LOW, layout.avail);
      this.setReg(REG.QUEUE_DRIVER_HIGH, 0);
      this.setReg(REG.QUEUE_DEVICE_LOW, layout.used);
      this.setReg(REG.QUEUE_DEVICE_HIGH, 0);
      this.setReg(REG.QUEUE_READY, 1);
    }
    this.setReg(REG.STATUS, STATUS.ACKNOWLEDGE | STATUS.DRIVER | STATUS.FEATURES_OK | STATUS.DRIVER_OK);
    return this.reg(REG.STATUS);
  }

  /** Copies bytes into "guest" data memory and returns their address. */
  place(data: Uint8Array | number): number {
    const len = typeof data === 'number' ? data : data.length;
    const at = this.dataAt;
    this.dataAt = align(this.dataAt + Math.max(len, 1), 16);
    if (this.dataAt > TEST_MEM_SIZE) throw new Error('test driver out of data memory');
    if (typeof data !== 'number') this.mem.write(GA(at), data);
    else this.mem.fill(GA(at), len, 0);
    return at;
  }

  resetData(): void {
    this.dataAt = DATA_BASE;
  }

  /** Writes a descriptor into queue q's table (or any table at `table`). */
  writeDesc(table: number, idx: number, addr: number, len: number, flags: number, next: number): void {
    const a = table + 16 * idx;
    this.mem.writeU64(GA(a), BigInt(addr));
    this.mem.writeU32(GA(a + 8), len);
    this.mem.writeU16(GA(a + 12), flags);
    this.mem.writeU16(GA(a + 14), next);
  }

  /** Builds a chain of buffers (direct, or one indirect table), publishes it and notifies. */
  submit(q: number, bufs: OutBuffer[], opts: { indirect?: boolean; notify?: boolean } = {}): { head: number; addrs: number[] } {
    const ring = this.rings[q] as RingLayout;
    const addrs = bufs.map((b) => this.place(b.data ?? (b.writable as number)));
    const flagsOf = (b: OutBuffer, last: boolean): number => (b.writable !== undefined ? VIRTQ_DESC_F_WRITE : 0) | (last ? 0 : VIRTQ_DESC_F_NEXT);
    const lenOf = (b: OutBuffer): number => b.data?.length ?? (b.writable as number);
    let head: number;
    if (opts.indirect) {
      const table = this.place(16 * bufs.length);
      bufs.forEach((b, i) => this.writeDesc(table, i, addrs[i] as number, lenOf(b), flagsOf(b, i === bufs.length - 1), i + 1));
      head = this.alloc(q, 1)[0] as number;
      this.writeDesc(ring.desc, head, table, 16 * bufs.length, VIRTQ_DESC_F_INDIRECT, 0);
    } else {
      const ids = this.alloc(q, bufs.length);
      bufs.forEach((b, i) => this.writeDesc(ring.desc, ids[i] as number, addrs[i] as number, lenOf(b), flagsOf(b, i === bufs.length - 1), ids[i + 1] ?? 0));
      head = ids[0] as number;
    }
    this.publish(q, head, opts.notify ?? true);
    return { head, addrs };
  }

  /** Puts `head` into the avail ring and (optionally) writes QueueNotify. */
  publish(q: number, head: number, notify = true): void {
    const ring = this.rings[q] as RingLayout;
    const idx = this.availIdx[q] as number;
    this.mem.writeU16(GA(ring.avail + 4 + 2 * (idx % ring.size)), head);
    this.availIdx[q] = (idx + 1) & 0xffff;
    this.mem.writeU16(GA(ring.avail + 2), this.availIdx[q] as number);
    if (notify) this.setReg(REG.QUEUE_NOTIFY, q);
  }

  /** Used entries added since the last call. */
  takeUsed(q: number): UsedEntry[] {
    const ring = this.rings[q] as RingLayout;
    const idx = this.mem.readU16(GA(ring.used + 2));
    const out: UsedEntry[] = [];
    // more than a ring's worth ahead: no device put that many; the ring itself was overwritten
    // (a hostile buffer over it, in the fuzzer). Read the last ring's worth, not up to 65535.
    if (((idx - (this.usedSeen[q] as number)) & 0xffff) > ring.size) this.usedSeen[q] = (idx - ring.size) & 0xffff;
    while (this.usedSeen[q] !== idx) {
      const slot = (this.usedSeen[q] as number) % ring.size;
      const e = ring.used + 4 + 8 * slot;
      out.push({ id: this.mem.readU32(GA(e)), len: this.mem.readU32(GA(e + 4)) });
      this.usedSeen[q] = ((this.usedSeen[q] as number) + 1) & 0xffff;
    }
    return out;
  }

  /** Acknowledges every pending interrupt, as the guest's handler does. */
  ack(): number {
    const s = this.reg(REG.INTERRUPT_STATUS);
    this.setReg(REG.INTERRUPT_ACK, s);
    return s;
  }

  /**
   * The same guest after a snapshot restore: a copy of its memory and of this driver's ring
   * bookkeeping, now driving `device` behind a fresh transport that restored `state`.
   */
  restoredCopy(device: VirtioDevice, state: Buffer): TestDriver {
    const mem = GuestMemory.fromBuffers(this.mem.totalSize);
    mem.write(GA(0), this.mem.read(GA(0), this.mem.totalSize));
    const d = new TestDriver(device, mem);
    d.rings.push(...this.rings);
    d.nextFree = [...this.nextFree];
    d.availIdx = [...this.availIdx];
    d.usedSeen = [...this.usedSeen];
    d.dataAt = this.dataAt;
    d.transport.restoreState(state);
    return d;
  }

  private alloc(q: number, n: number): number[] {
    const ring = this.rings[q] as RingLayout;
    const out: number[] = [];
    for (let i = 0; i < n; i++) {
      out.push(this.nextFree[q] as number);
      this.nextFree[q] = ((this.nextFree[q] as number) + 1) % ring.size;
    }
    return out;
  }
}

function align(n: number, a: number): number {
  return Math.ceil(n / a) * a;
}
