// A split virtqueue seen from the device (virtio 1.2, 2.7): the driver's rings live in guest
// memory and everything in them is hostile. Every access goes through GuestMemory's bounds check;
// a chain that loops, leaves guest RAM, is longer than the queue or mixes directions is rejected
// (DescriptorChainError: the device completes it with an error and moves on), and an avail ring
// whose index jumps by more than the queue size breaks the queue (QueueBrokenError: the transport
// sets DEVICE_NEEDS_RESET, as the spec asks, instead of guessing).
import { GuestAddress, type GuestMemory } from '../memory/guest-memory.js';
import {
  VIRTQ_AVAIL_F_NO_INTERRUPT, VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE, VIRTQ_USED_F_NO_NOTIFY,
} from './constants.js';

const DESC_SIZE = 16;

/**
 * A full memory barrier. x86 keeps stores in order and loads in order, but a load may pass an
 * earlier store: publishing avail_event (or the used index) and then reading the driver's avail
 * index (or used_event) must not be reordered, or both sides miss each other's update and a
 * notification or interrupt is lost (the driver does the mirror image with virtio_mb()). V8
 * compiles an Atomics read-modify-write on shared memory to a locked instruction, a full fence.
 */
const FENCE = new Int32Array(new SharedArrayBuffer(4));
export function memoryFence(): void {
  Atomics.add(FENCE, 0, 0);
}
/** A chain may not carry more than this many bytes in total (len fields are u32; sums are not). */
const MAX_CHAIN_BYTES = 0xffff_ffff;

/** One guest buffer of a chain, already checked to lie inside guest RAM. */
export interface GuestBuffer {
  addr: GuestAddress;
  len: number;
}

/** A request popped from the avail ring: the device-readable buffers, then the device-writable ones. */
export interface DescriptorChain {
  head: number;
  readable: GuestBuffer[];
  writable: GuestBuffer[];
}

export class DescriptorChainError extends Error {
  constructor(readonly head: number, msg: string) {
    super(`descriptor chain ${head}: ${msg}`);
    this.name = 'DescriptorChainError';
  }
}

export class QueueBrokenError extends Error {
  constructor(msg: string) {
    super(msg);
    this.name = 'QueueBrokenError';
  }
}

/** What a snapshot keeps of a queue (the rings themselves are in guest memory). */
export interface QueueState {
  size: number;
  ready: boolean;
  desc: number;
  avail: number;
  used: number;
  nextAvail: number;
  nextUsed: number;
  eventIdx: boolean;
  indirect: boolean;
  signalledUsed: number | null;
}

/** Result of Queue.pop(): a valid chain, or a rejected one that still has to be returned. */
export type Popped = { chain: DescriptorChain; error?: undefined } | { chain?: undefined; error: DescriptorChainError };

export class Queue {
  /** set by the driver (QueueNum); at most maxSize, a power of two */
  size: number;
  ready = false;
  desc = 0;
  avail = 0;
  used = 0;
  /** negotiated features the ring layout depends on */
  eventIdx = false;
  indirect = false;
  private nextAvail = 0;
  private nextUsed = 0;
  /** used idx at the last interrupt we sent (EVENT_IDX), null: none yet */
  private signalledUsed: number | null = null;
  /** the avail index as pending() last read it (notifyBeyondAvail re-arms there) */
  private seenAvail = 0;
  /** chains rejected since activation (metrics) */
  rejected = 0;

  constructor(readonly maxSize: number) {
    if (!isPowerOfTwo(maxSize) || maxSize > 32768) throw new RangeError(`queue size ${maxSize} must be a power of two <= 32768`);
    this.size = maxSize;
  }

  /** Checks the driver's layout before the device may use the queue (on DRIVER_OK). */
  validate(mem: GuestMemory): string | null {
    if (!this.ready) return null;
    if (!isPowerOfTwo(this.size) || this.size > this.maxSize) return `queue size ${this.size} (must be a power of two <= ${this.maxSize})`;
    if (this.desc % 16 || this.avail % 2 || this.used % 4) return 'misaligned ring';
    const n = this.size;
    if (!mem.contains(this.desc, DESC_SIZE * n)) return `descriptor table 0x${this.desc.toString(16)} outside guest RAM`;
    if (!mem.contains(this.avail, 6 + 2 * n)) return `avail ring 0x${this.avail.toString(16)} outside guest RAM`;
    if (!mem.contains(this.used, 6 + 8 * n)) return `used ring 0x${this.used.toString(16)} outside guest RAM`;
    return null;
  }

  reset(): void {
    this.size = this.maxSize;
    this.ready = false;
    this.desc = this.avail = this.used = 0;
    this.nextAvail = this.nextUsed = this.seenAvail = 0;
    this.signalledUsed = null;
    this.eventIdx = this.indirect = false;
    this.rejected = 0;
  }

  private availIdx(mem: GuestMemory): number {
    return mem.readU16(GuestAddress(this.avail + 2));
  }

  /** Requests waiting in the avail ring. Throws QueueBrokenError if the driver's index is impossible. */
  pending(mem: GuestMemory): number {
    const avail = this.availIdx(mem);
    this.seenAvail = avail;
    const n = (avail - this.nextAvail) & 0xffff;
    if (n > this.size) throw new QueueBrokenError(`avail index moved by ${n} entries, more than the queue size ${this.size}`);
    return n;
  }

  /** The next request, or null when the avail ring is empty. */
  pop(mem: GuestMemory): Popped | null {
    if (this.pending(mem) === 0) return null;
    const slot = this.nextAvail % this.size;
    const head = mem.readU16(GuestAddress(this.avail + 4 + 2 * slot));
    this.nextAvail = (this.nextAvail + 1) & 0xffff;
    try {
      return { chain: this.parseChain(mem, head) };
    } catch (e) {
      if (!(e instanceof DescriptorChainError)) throw e;
      this.rejected++;
      return { error: e };
    }
  }

  /**
   * The next request for a device draining its queue. When the ring is empty it re-arms the
   * driver's notification (enableNotification) and looks once more, so a request the driver added
   * meanwhile, without notifying, is not left waiting. null: the queue is drained and armed.
   */
  popOrArm(mem: GuestMemory): Popped | null {
    for (;;) {
      const p = this.pop(mem);
      if (p) return p;
      if (!this.enableNotification(mem)) return null;
    }
  }

  /** Puts back the last popped request (a device that cannot take it yet, e.g. rate-limited). */
  undoPop(): void {
    this.nextAvail = (this.nextAvail - 1) & 0xffff;
  }

  private parseChain(mem: GuestMemory, head: number): DescriptorChain {
    if (head >= this.size) throw new DescriptorChainError(head, `head index ${head} >= queue size ${this.size}`);
    const chain: DescriptorChain = { head, readable: [], writable: [] };
    let total = 0;
    const add = (addr: number, len: number, writable: boolean): void => {
      if (!writable && chain.writable.length > 0) throw new DescriptorChainError(head, 'device-readable buffer after a device-writable one');
      total += len;
      if (total > MAX_CHAIN_BYTES) throw new DescriptorChainError(head, 'chain longer than 4 GiB');
      if (len === 0) return;
      if (!mem.contains(addr, len)) throw new DescriptorChainError(head, `buffer 0x${addr.toString(16)}+${len} outside guest RAM`);
      (writable ? chain.writable : chain.readable).push({ addr: GuestAddress(addr), len });
    };
    let idx = head;
    // Each descriptor of the table may appear once: a longer walk is a loop.
    for (let seen = 0; ; seen++) {
      if (seen >= this.size) throw new DescriptorChainError(head, `chain longer than the queue (${this.size}): a loop`);
      const d = readDesc(mem, this.desc, idx);
      if (d.flags & VIRTQ_DESC_F_INDIRECT) {
        if (!this.indirect) throw new DescriptorChainError(head, 'indirect descriptor without VIRTIO_F_INDIRECT_DESC');
        if (d.flags & VIRTQ_DESC_F_NEXT) throw new DescriptorChainError(head, 'indirect descriptor with NEXT set');
        this.walkIndirect(mem, head, d.addr, d.len, add);
        break;
      }
      add(d.addr, d.len, (d.flags & VIRTQ_DESC_F_WRITE) !== 0);
      if (!(d.flags & VIRTQ_DESC_F_NEXT)) break;
      if (d.next >= this.size) throw new DescriptorChainError(head, `next index ${d.next} >= queue size ${this.size}`);
      idx = d.next;
    }
    return chain;
  }

  private walkIndirect(mem: GuestMemory, head: number, table: number, len: number,
    add: (addr: number, len: number, writable: boolean) => void): void {
    if (len === 0 || len % DESC_SIZE) throw new DescriptorChainError(head, `indirect table length ${len} is not a multiple of 16`);
    const count = len / DESC_SIZE;
    // the spec bounds an indirect table by the queue size (2.7.5.3.1)
    if (count > this.size) throw new DescriptorChainError(head, `indirect table of ${count} descriptors exceeds the queue size ${this.size}`);
    if (!mem.contains(table, len)) throw new DescriptorChainError(head, `indirect table 0x${table.toString(16)}+${len} outside guest RAM`);
    let idx = 0;
    for (let seen = 0; ; seen++) {
      if (seen >= count) throw new DescriptorChainError(head, 'indirect chain loops');
      const d = readDesc(mem, table, idx);
      if (d.flags & VIRTQ_DESC_F_INDIRECT) throw new DescriptorChainError(head, 'nested indirect descriptor');
      add(d.addr, d.len, (d.flags & VIRTQ_DESC_F_WRITE) !== 0);
      if (!(d.flags & VIRTQ_DESC_F_NEXT)) return;
      if (d.next >= count) throw new DescriptorChainError(head, `indirect next index ${d.next} >= table size ${count}`);
      idx = d.next;
    }
  }

  /** Returns a request to the driver with `len` bytes written into its writable buffers. */
  addUsed(mem: GuestMemory, head: number, len: number): void {
    const slot = this.nextUsed % this.size;
    const elem = GuestAddress(this.used + 4 + 8 * slot);
    mem.writeU32(elem, head);
    mem.writeU32(GuestAddress(elem + 4), len);
    this.nextUsed = (this.nextUsed + 1) & 0xffff;
    // x86 keeps stores in order: the element is visible before the index that publishes it
    mem.writeU16(GuestAddress(this.used + 2), this.nextUsed);
  }

  /**
   * Returns several requests with one index update: the driver sees all of them or none (a
   * virtio-net frame spread over mergeable rx buffers must not be seen in part).
   */
  addUsedMany(mem: GuestMemory, entries: ReadonlyArray<{ head: number; len: number }>): void {
    if (entries.length > this.size) throw new RangeError(`${entries.length} used entries for a queue of ${this.size}`);
    let idx = this.nextUsed;
    for (const e of entries) {
      const elem = GuestAddress(this.used + 4 + 8 * (idx % this.size));
      mem.writeU32(elem, e.head);
      mem.writeU32(GuestAddress(elem + 4), e.len);
      idx = (idx + 1) & 0xffff;
    }
    this.nextUsed = idx;
    mem.writeU16(GuestAddress(this.used + 2), this.nextUsed);
  }

  /**
   * Whether the driver wants an interrupt for what was added since the last one (EVENT_IDX:
   * used_event in the avail ring; otherwise the avail ring's NO_INTERRUPT flag).
   */
  needsInterrupt(mem: GuestMemory): boolean {
    memoryFence(); // the used index we published before the driver's flags / used_event we read
    if (!this.eventIdx) return (mem.readU16(GuestAddress(this.avail)) & VIRTQ_AVAIL_F_NO_INTERRUPT) === 0;
    const usedEvent = mem.readU16(GuestAddress(this.avail + 4 + 2 * this.size));
    const old = this.signalledUsed;
    this.signalledUsed = this.nextUsed;
    if (old === null) return true;
    // vring_need_event(): did new_idx pass used_event since old_idx?
    return ((this.nextUsed - usedEvent - 1) & 0xffff) < ((this.nextUsed - old) & 0xffff);
  }

  /**
   * Ask the driver to notify again once it adds past what we have consumed (EVENT_IDX:
   * avail_event), or clear/set NO_NOTIFY. Returns true if more requests arrived meanwhile, so a
   * device loops instead of missing a notification the driver decided not to send.
   */
  enableNotification(mem: GuestMemory): boolean {
    if (this.eventIdx) mem.writeU16(GuestAddress(this.used + 4 + 8 * this.size), this.nextAvail);
    else mem.writeU16(GuestAddress(this.used), 0);
    memoryFence(); // avail_event (or the flag) visible before we look at the avail index again
    return this.pending(mem) > 0;
  }

  /**
   * Ask for a notification once the driver makes more available than the device last saw (the
   * avail index pop()/pending() read), even if the device left some of it in the ring
   * (virtio-net: the rx buffers there cannot hold the frame that waits). Returns true if more
   * arrived meanwhile. enableNotification() would ask at nextAvail and report the buffers left
   * in the ring as new.
   */
  notifyBeyondAvail(mem: GuestMemory): boolean {
    // The index pop() last saw, not a fresh read: buffers added since then (the driver refilling
    // on its vCPU, having read the old avail_event) would be taken as seen, and the driver would
    // never notify for them. Past the seen index, they either notify or show up below.
    const avail = this.seenAvail;
    if (this.eventIdx) mem.writeU16(GuestAddress(this.used + 4 + 8 * this.size), avail);
    else mem.writeU16(GuestAddress(this.used), 0);
    memoryFence(); // avail_event (or the flag) visible before we look at the avail index again
    return this.availIdx(mem) !== avail;
  }

  /** Without EVENT_IDX: tell the driver not to notify while we drain (a hint it may ignore). */
  disableNotification(mem: GuestMemory): void {
    if (!this.eventIdx) mem.writeU16(GuestAddress(this.used), VIRTQ_USED_F_NO_NOTIFY);
  }

  /** What the ring itself says now (debugging a stalled queue): both indices and both event words. */
  ringView(mem: GuestMemory): { availIdx: number; usedIdx: number; usedEvent: number; availEvent: number } {
    return {
      availIdx: mem.readU16(GuestAddress(this.avail + 2)), usedIdx: mem.readU16(GuestAddress(this.used + 2)),
      usedEvent: mem.readU16(GuestAddress(this.avail + 4 + 2 * this.size)), availEvent: mem.readU16(GuestAddress(this.used + 4 + 8 * this.size)),
    };
  }

  state(): QueueState {
    return {
      size: this.size, ready: this.ready, desc: this.desc, avail: this.avail, used: this.used,
      nextAvail: this.nextAvail, nextUsed: this.nextUsed, eventIdx: this.eventIdx, indirect: this.indirect,
      signalledUsed: this.signalledUsed,
    };
  }

  restore(s: QueueState): void {
    Object.assign(this, {
      size: s.size, ready: s.ready, desc: s.desc, avail: s.avail, used: s.used, eventIdx: s.eventIdx, indirect: s.indirect,
    });
    this.nextAvail = this.seenAvail = s.nextAvail;
    this.nextUsed = s.nextUsed;
    this.signalledUsed = s.signalledUsed;
  }
}

interface Desc { addr: number; len: number; flags: number; next: number }

function readDesc(mem: GuestMemory, table: number, idx: number): Desc {
  const a = GuestAddress(table + DESC_SIZE * idx);
  const addr = mem.readU64(a);
  // addresses beyond 2^53 cannot be guest RAM; Number() keeps them out of range for contains()
  return {
    addr: addr > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(addr),
    len: mem.readU32(GuestAddress(a + 8)),
    flags: mem.readU16(GuestAddress(a + 12)),
    next: mem.readU16(GuestAddress(a + 14)),
  };
}

function isPowerOfTwo(n: number): boolean {
  return Number.isInteger(n) && n > 0 && (n & (n - 1)) === 0;
}

/**
 * Reads a request's device-readable bytes in order, across buffers (Firecracker's Reader).
 * Views are zero-copy windows onto guest memory.
 */
export class ChainReader {
  private i = 0;
  private off = 0;
  readonly total: number;
  constructor(private readonly mem: GuestMemory, private readonly bufs: GuestBuffer[]) {
    this.total = bufs.reduce((n, b) => n + b.len, 0);
  }

  get remaining(): number {
    let n = 0;
    for (let j = this.i; j < this.bufs.length; j++) n += (this.bufs[j] as GuestBuffer).len;
    return n - this.off;
  }

  /** Copies exactly `n` bytes out, or throws RangeError if the chain holds fewer. */
  read(n: number): Uint8Array {
    if (n > this.remaining) throw new RangeError(`request needs ${n} readable bytes, has ${this.remaining}`);
    const out = new Uint8Array(n);
    let at = 0;
    for (const v of this.views(n)) {
      out.set(v, at);
      at += v.length;
    }
    return out;
  }

  /** Zero-copy windows over the next `n` bytes (or fewer if the chain ends). */
  views(n: number): Uint8Array[] {
    const out: Uint8Array[] = [];
    while (n > 0 && this.i < this.bufs.length) {
      const b = this.bufs[this.i] as GuestBuffer;
      const take = Math.min(n, b.len - this.off);
      out.push(this.mem.slice(GuestAddress(b.addr + this.off), take));
      n -= take;
      this.off += take;
      if (this.off === b.len) {
        this.i++;
        this.off = 0;
      }
    }
    return out;
  }
}

/** Writes into a request's device-writable buffers in order (Firecracker's Writer). */
export class ChainWriter {
  private i = 0;
  private off = 0;
  written = 0;
  readonly total: number;
  constructor(private readonly mem: GuestMemory, private readonly bufs: GuestBuffer[]) {
    this.total = bufs.reduce((n, b) => n + b.len, 0);
  }

  get remaining(): number {
    return this.total - this.written;
  }

  /** Writes all of `data`, or throws RangeError (nothing written) if it does not fit. */
  write(data: Uint8Array): void {
    if (data.length > this.remaining) throw new RangeError(`reply of ${data.length} bytes does not fit in ${this.remaining}`);
    let at = 0;
    for (const v of this.views(data.length)) {
      v.set(data.subarray(at, at + v.length));
      at += v.length;
    }
  }

  /** Zero-copy windows over the next `n` writable bytes (or fewer if the chain ends). */
  views(n: number): Uint8Array[] {
    const out: Uint8Array[] = [];
    while (n > 0 && this.i < this.bufs.length) {
      const b = this.bufs[this.i] as GuestBuffer;
      const take = Math.min(n, b.len - this.off);
      out.push(this.mem.slice(GuestAddress(b.addr + this.off), take));
      n -= take;
      this.off += take;
      this.written += take;
      if (this.off === b.len) {
        this.i++;
        this.off = 0;
      }
    }
    return out;
  }
}
