// virtio-balloon (virtio 1.2, 5.5): the host sets a target (config num_pages, in 4 KiB pages the
// guest should hand over), the guest's driver allocates that many pages and sends their frame
// numbers on the inflate queue; the VMM gives the host memory behind them back
// (GuestMemory.discard: MADV_DONTNEED on a private mapping, MADV_REMOVE on a shared one), so its
// RSS drops. Deflating needs nothing from the host: the pages fault back in (zero-filled) when the
// guest touches them again. The driver reports how many pages it holds in config `actual`.
//
// Queues: 0 inflate, 1 deflate, 2 stats (with VIRTIO_BALLOON_F_STATS_VQ). Features offered:
// STATS_VQ, and DEFLATE_ON_OOM when -balloon deflate-on-oom=true (the guest may then take pages
// back from the balloon under memory pressure without asking). MUST_TELL_HOST is not offered:
// nothing here needs to hear about a page before the guest reuses it.
//
// Everything in a request is hostile: frame numbers outside guest RAM (or in the MMIO hole) are
// skipped and counted, a request carries at most MAX_PFNS_PER_REQUEST numbers (the rest are
// ignored), and a page already released is not released twice (a bitmap of guest RAM pages).
import { GuestAddress, type GuestMemory, type MemoryRegion } from '../../../memory/guest-memory.js';
import { DEVICE_ID } from '../../../virtio/constants.js';
import { readConfigBytes, type ActivateContext, type VirtioDevice } from '../../../virtio/device.js';
import { ChainReader, type GuestBuffer, type Queue } from '../../../virtio/queue.js';
import { logger } from '../../../log.js';
import * as z from 'zod';
import { decodeState, DeviceStateError, encodeState, u16, u32 } from '../../snapshot.js';

const log = logger('virtio-balloon');

export const BALLOON_F = { MUST_TELL_HOST: 0, STATS_VQ: 1, DEFLATE_ON_OOM: 2 } as const;
const bit = (n: number): bigint => 1n << BigInt(n);

/** The balloon's unit, whatever the guest's page size (VIRTIO_BALLOON_PFN_SHIFT). */
export const BALLOON_PAGE = 4096;
const INFLATE = 0;
const DEFLATE = 1;
const STATS = 2;
/** Linux sends at most 256 frame numbers per request; a hostile driver gets a bounded amount of work. */
export const MAX_PFNS_PER_REQUEST = 256 * 1024;
/** One stats entry: le16 tag, le64 value, packed. */
const STAT_ENTRY = 10;
const MAX_STAT_ENTRIES = 64;

/** Stats tags (spec 5.5.6.3; 10-15 are newer Linux tags) under QEMU's guest-stats names. */
export const STAT_NAMES: Readonly<Record<number, string>> = {
  0: 'stat-swap-in', 1: 'stat-swap-out', 2: 'stat-major-faults', 3: 'stat-minor-faults', 4: 'stat-free-memory',
  5: 'stat-total-memory', 6: 'stat-available-memory', 7: 'stat-disk-caches', 8: 'stat-htlb-pgalloc', 9: 'stat-htlb-pgfail',
  10: 'stat-oom-kills', 11: 'stat-alloc-stalls', 12: 'stat-async-scans', 13: 'stat-direct-scans',
  14: 'stat-async-reclaims', 15: 'stat-direct-reclaims',
};

export interface BalloonOptions {
  deflateOnOom: boolean;
}

export interface BalloonStats {
  /** when the guest posted them (ms since the epoch) */
  time: number;
  /** QEMU names (stat-free-memory, ...) → value; memory sizes are bytes, the rest counts */
  values: Record<string, number>;
}

export interface BalloonMetrics {
  inflateRequests: number;
  deflateRequests: number;
  /** pages released to the host (MADV_DONTNEED / MADV_REMOVE) */
  releasedPages: number;
  /** frame numbers outside guest RAM */
  invalidPfns: number;
  /** frame numbers past MAX_PFNS_PER_REQUEST in one request */
  ignoredPfns: number;
  /** madvise failures (e.g. hugetlbfs-backed memory) */
  discardErrors: number;
  rejected: number;
  statsUpdates: number;
}

export class VirtioBalloon implements VirtioDevice {
  readonly deviceType = DEVICE_ID.BALLOON;
  readonly queueSizes = [256, 256, 4];
  readonly features: bigint;
  readonly metrics: BalloonMetrics = {
    inflateRequests: 0, deflateRequests: 0, releasedPages: 0, invalidPfns: 0, ignoredPfns: 0, discardErrors: 0, rejected: 0, statsUpdates: 0,
  };
  /** target: pages the guest should have in the balloon */
  private numPages = 0;
  /** what the driver says it has (config `actual`) */
  private actualPages = 0;
  private ctx: ActivateContext | null = null;
  /** one bit per 4 KiB page of guest RAM: released to the host and not deflated since */
  private readonly inBalloon: Uint8Array;
  private inBalloonCount = 0;
  /** the stats buffer the driver left with us; returning it asks for fresh stats */
  private statsHead: number | null = null;
  private lastStats: BalloonStats | null = null;
  private discardWarned = false;
  /** called when the driver changes `actual` (QMP BALLOON_CHANGE) with the guest's memory in bytes */
  onActualChange: (actualBytes: number) => void = () => {};

  constructor(private readonly mem: GuestMemory, readonly opts: BalloonOptions) {
    this.features = bit(BALLOON_F.STATS_VQ) | (opts.deflateOnOom ? bit(BALLOON_F.DEFLATE_ON_OOM) : 0n);
    this.inBalloon = new Uint8Array(Math.ceil(this.ramPages / 8));
  }

  /** Guest RAM in balloon pages. */
  get ramPages(): number {
    return Math.floor(this.mem.totalSize / BALLOON_PAGE);
  }

  /** Guest RAM in bytes. */
  get memorySize(): number {
    return this.mem.totalSize;
  }

  /**
   * Sets the guest's target memory size in bytes (QMP balloon): the balloon should hold
   * memory - target. Raises a config-change interrupt when the driver is live.
   */
  setTarget(bytes: number): void {
    if (!Number.isSafeInteger(bytes) || bytes <= 0 || bytes > this.memorySize) {
      throw new RangeError(`balloon target ${bytes} is outside 1-${this.memorySize} bytes`);
    }
    const pages = Math.floor((this.memorySize - bytes) / BALLOON_PAGE);
    if (pages === this.numPages) return;
    this.numPages = pages;
    this.ctx?.interrupt.signalConfig();
  }

  /** The target in bytes (memory - balloon target). */
  get targetBytes(): number {
    return this.memorySize - this.numPages * BALLOON_PAGE;
  }

  /** The guest's memory as its driver reports it: memory - pages in the balloon (QMP query-balloon). */
  get actualBytes(): number {
    return Math.max(0, this.memorySize - this.actualPages * BALLOON_PAGE);
  }

  /** Pages the host released and the guest has not deflated. */
  get releasedBytes(): number {
    return this.inBalloonCount * BALLOON_PAGE;
  }

  get stats(): BalloonStats | null {
    return this.lastStats;
  }

  /**
   * Asks the driver for fresh statistics by giving back the buffer it left with us; they arrive
   * later (`stats`). False when no buffer is held (no stats queue, or a request is in flight).
   */
  requestStats(): boolean {
    const ctx = this.ctx;
    const q = ctx?.queues[STATS];
    if (!ctx || !q?.ready || this.statsHead === null) return false;
    q.addUsed(ctx.mem, this.statsHead, 0);
    this.statsHead = null;
    ctx.interrupt.signalUsed(STATS);
    return true;
  }

  private configSpace(): Uint8Array {
    const c = new Uint8Array(8);
    const v = new DataView(c.buffer);
    v.setUint32(0, this.numPages, true);
    v.setUint32(4, this.actualPages, true);
    return c;
  }

  readConfig(offset: number, data: Uint8Array): void {
    readConfigBytes(this.configSpace(), offset, data);
  }

  /** Only `actual` (offset 4, le32) is the driver's to write. */
  writeConfig(offset: number, data: Uint8Array): void {
    if (offset < 4 || offset + data.length > 8) return;
    const c = this.configSpace();
    c.set(data, offset);
    const actual = new DataView(c.buffer).getUint32(4, true);
    this.setActual(Math.min(actual, this.ramPages));
  }

  private setActual(pages: number): void {
    if (pages === this.actualPages) return;
    this.actualPages = pages;
    this.onActualChange(this.actualBytes);
  }

  activate(ctx: ActivateContext): void {
    this.ctx = ctx;
    // the driver primes the stats queue with a buffer at probe time; it may already be there
    if (ctx.queues[STATS]?.ready) this.notify(STATS);
  }

  notify(index: number): void {
    const ctx = this.ctx;
    const q = ctx?.queues[index];
    if (!ctx || !q?.ready) return;
    if (index === STATS) {
      this.takeStats(ctx, q);
      return;
    }
    if (index !== INFLATE && index !== DEFLATE) return;
    let used = false;
    for (;;) {
      const p = q.popOrArm(ctx.mem);
      if (!p) break;
      used = true;
      if (p.error) {
        this.metrics.rejected++;
        q.addUsed(ctx.mem, p.error.head, 0);
        continue;
      }
      if (index === INFLATE) this.metrics.inflateRequests++;
      else this.metrics.deflateRequests++;
      this.handlePfns(ctx.mem, p.chain.readable, index === INFLATE);
      q.addUsed(ctx.mem, p.chain.head, 0);
    }
    if (used) ctx.interrupt.signalUsed(index);
  }

  /** Walks a request's frame numbers; inflate releases runs of consecutive pages in one call. */
  private handlePfns(mem: GuestMemory, bufs: GuestBuffer[], inflate: boolean): void {
    const r = new ChainReader(mem, bufs);
    let count = Math.floor(r.total / 4);
    if (count > MAX_PFNS_PER_REQUEST) {
      this.metrics.ignoredPfns += count - MAX_PFNS_PER_REQUEST;
      count = MAX_PFNS_PER_REQUEST;
    }
    let runStart = -1;
    let runLen = 0;
    const flush = (): void => {
      if (runLen > 0) this.release(GuestAddress(runStart * BALLOON_PAGE), runLen);
      runLen = 0;
    };
    // a PFN may straddle two buffers: read through a 4-byte carry
    const carry = new Uint8Array(4);
    let have = 0;
    let left = count * 4;
    for (const v of r.views(left)) {
      for (let i = 0; i < v.length && left > 0; i++, left--) {
        carry[have++] = v[i] as number;
        if (have < 4) continue;
        have = 0;
        const pfn = ((carry[0] as number) | ((carry[1] as number) << 8) | ((carry[2] as number) << 16) | ((carry[3] as number) << 24)) >>> 0;
        const idx = this.pageIndex(pfn);
        if (idx < 0) {
          this.metrics.invalidPfns++;
          continue;
        }
        const mask = 1 << (idx & 7);
        const was = ((this.inBalloon[idx >> 3] as number) & mask) !== 0;
        if (!inflate) {
          if (was) {
            this.inBalloon[idx >> 3] = (this.inBalloon[idx >> 3] as number) & ~mask;
            this.inBalloonCount--;
          }
          continue;
        }
        if (was) continue;
        this.inBalloon[idx >> 3] = (this.inBalloon[idx >> 3] as number) | mask;
        this.inBalloonCount++;
        if (runLen > 0 && pfn === runStart + runLen) {
          runLen++;
        } else {
          flush();
          runStart = pfn;
          runLen = 1;
        }
      }
    }
    flush();
  }

  private release(addr: GuestAddress, pages: number): void {
    try {
      this.mem.discard(addr, pages * BALLOON_PAGE);
      this.metrics.releasedPages += pages;
    } catch (e) {
      this.metrics.discardErrors++;
      if (!this.discardWarned) {
        this.discardWarned = true;
        log.warn(`cannot release guest pages to the host (logged once): ${(e as Error).message}`);
      }
    }
  }

  /** Index of a frame's page in the RAM bitmap (low RAM, then RAM above 4 GiB), or -1 outside RAM. */
  private pageIndex(pfn: number): number {
    const addr = pfn * BALLOON_PAGE;
    let before = 0;
    for (const r of this.mem.regions as MemoryRegion[]) {
      if (addr >= r.guestBase && addr + BALLOON_PAGE <= r.guestBase + r.size) return before + (addr - r.guestBase) / BALLOON_PAGE;
      before += Math.floor(r.size / BALLOON_PAGE);
    }
    return -1;
  }

  /** The driver (re)posted its stats buffer: read it and keep the buffer until we want more. */
  private takeStats(ctx: ActivateContext, q: Queue): void {
    for (;;) {
      const p = q.popOrArm(ctx.mem);
      if (!p) break;
      if (p.error) {
        this.metrics.rejected++;
        q.addUsed(ctx.mem, p.error.head, 0);
        ctx.interrupt.signalUsed(STATS);
        continue;
      }
      // one buffer is held at a time; an older one goes back (the driver only ever has one)
      if (this.statsHead !== null) {
        q.addUsed(ctx.mem, this.statsHead, 0);
        ctx.interrupt.signalUsed(STATS);
      }
      this.statsHead = p.chain.head;
      const r = new ChainReader(ctx.mem, p.chain.readable);
      const n = Math.min(Math.floor(r.total / STAT_ENTRY), MAX_STAT_ENTRIES);
      const bytes = r.read(n * STAT_ENTRY);
      const dv = new DataView(bytes.buffer);
      const values: Record<string, number> = {};
      for (let i = 0; i < n; i++) {
        const name = STAT_NAMES[dv.getUint16(i * STAT_ENTRY, true)];
        if (name) values[name] = Number(dv.getBigUint64(i * STAT_ENTRY + 2, true));
      }
      this.lastStats = { time: Date.now(), values };
      this.metrics.statsUpdates++;
    }
  }

  /** The target, the driver's `actual`, the stats buffer we hold and which pages were given back. */
  saveState(): Buffer {
    return encodeState({
      numPages: this.numPages, actualPages: this.actualPages, statsHead: this.statsHead,
      inBalloon: Buffer.from(this.inBalloon).toString('base64'),
    });
  }

  restoreState(bytes: Buffer): void {
    const s = decodeState(bytes, z.strictObject({ numPages: u32, actualPages: u32, statsHead: u16.nullable(), inBalloon: z.base64() }), 'balloon');
    const bits = Buffer.from(s.inBalloon, 'base64');
    if (bits.length !== this.inBalloon.length) throw new DeviceStateError(`balloon: page bitmap of ${bits.length} bytes, expected ${this.inBalloon.length}`);
    if (s.numPages > this.ramPages || s.actualPages > this.ramPages) throw new DeviceStateError(`balloon: more pages than guest RAM has (${this.ramPages})`);
    this.numPages = s.numPages;
    this.actualPages = s.actualPages;
    this.statsHead = s.statsHead;
    this.inBalloon.set(bits);
    this.inBalloonCount = bits.reduce((n, b) => n + popcount(b), 0);
  }

  /**
   * Driver reset: the pages in the balloon are the guest's again (they fault back in), `actual`
   * drops to 0. The target stays, so the next driver inflates to it again (as QEMU does).
   */
  reset(): void {
    this.ctx = null;
    this.statsHead = null;
    this.inBalloon.fill(0);
    this.inBalloonCount = 0;
    this.setActual(0);
  }
}

function popcount(b: number): number {
  let n = 0;
  for (let v = b; v; v &= v - 1) n++;
  return n;
}
