// virtio-blk (virtio 1.2, 5.2) on a raw image file: read, write, flush, get-id, discard and
// write-zeroes (holes in a sparse file), read-only drives, O_DIRECT, ignored flushes and an
// iops/bytes budget. A slot without a file (hot-replace) is a disk of capacity 0; attaching a
// file later changes the capacity and raises a config-change interrupt, which Linux's driver
// answers by resizing the disk ("detected capacity change").
//
// Two ways to run the I/O (BlkDeviceOptions.io). 'async' (-drive aio=threads, the default on
// the main thread): reads, writes and flushes go to libuv's threadpool, several at once, and
// complete in any order (virtio-blk allows it), as QEMU's thread pool does — except a small read
// or write that is the only request in sight, which runs on the spot: at queue depth 1 the two
// threadpool hops cost more than the page-cache copy they would move off the main thread.
// 'sync' (aio=inline, and an iothread's engine: it blocks in epoll and has no event loop to
// complete on): one request at a time, on the calling thread. Requests in flight hold their
// image's fd open (a detach closes it when they finish: a reused fd number would take their
// bytes), a driver's reset leaves their completions out of the new rings, and quiesce() lets a
// snapshot, a machine reset or a detach wait for them.
import { closeSync, constants as fsc, fstatSync, fdatasync, fdatasyncSync, openSync, readv, readvSync, writev, writevSync } from 'node:fs';
import { logger } from '../../../log.js';
import { GuestAddress, type GuestMemory } from '../../../memory/guest-memory.js';
import { DEVICE_ID } from '../../../virtio/constants.js';
import { readConfigBytes, type ActivateContext, type VirtioDevice } from '../../../virtio/device.js';
import { QueueBrokenError, type GuestBuffer, type Queue } from '../../../virtio/queue.js';
import { RateLimiter, RetryTimer } from '../rate-limiter.js';
import { fallocate, FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE, AlignedBuffer } from './io.js';
import { BLK_STATUS, BlkRequestError, ID_BYTES, parseRequest, REQ, SECTOR_SIZE, WRITE_ZEROES_FLAG_UNMAP, type BlkRequest } from './request.js';

const log = logger('virtio-blk');

export const BLK_F = { SIZE_MAX: 1, SEG_MAX: 2, RO: 5, BLK_SIZE: 6, FLUSH: 9, DISCARD: 13, WRITE_ZEROES: 14 } as const;
const bit = (n: number): bigint => 1n << BigInt(n);

const QUEUE_SIZE = 256;
/** Segments per request we accept (config seg_max): the queue size less header and status. */
const SEG_MAX = QUEUE_SIZE - 2;
const MAX_DISCARD_SEGMENTS = 32;
/** discard / write-zeroes requests at most this many sectors each (config limits) */
const MAX_ZERO_SECTORS = 0x3fffff;
/**
 * Requests of one drive on the threadpool at once; the rest wait in the ring until one
 * completes. libuv's pool (4 threads) is one FIFO shared by every drive on the main thread: each
 * drive's share must stay small, or one busy disk makes the others' requests wait behind it.
 */
const MAX_IN_FLIGHT = 4;
/** Bytes per threadpool call: a large request goes in steps, so no call holds a pool thread long. */
const MAX_POOL_CALL_BYTES = 1 << 20;
/** 'async': a read or write up to this size, alone in the ring with nothing in flight, runs on the spot. */
const INLINE_ALONE_BYTES = 64 * 1024;

export interface BlkBackendOptions {
  /** the image's path (also what DEVICE_DELETED reports) */
  file: string;
  /** an already open fd for it (QMP getfd), used instead of opening `file`; owned from then on */
  fd?: number | undefined;
  readOnly: boolean;
  /** O_DIRECT (Kata's block_device_cache_direct) */
  direct: boolean;
  /** flush requests succeed without fdatasync (Kata's block_device_cache_noflush) */
  noFlush: boolean;
  serial?: string | undefined;
  iops?: number | undefined;
  bps?: number | undefined;
}

export interface BlkMetrics {
  reads: number;
  writes: number;
  flushes: number;
  discards: number;
  readBytes: number;
  writeBytes: number;
  ioErrors: number;
  unsupported: number;
  rejected: number;
  throttled: number;
}

/** An open image file and its options. */
export class BlkBackend {
  readonly fd: number;
  readonly sectors: bigint;
  /** requests on the threadpool that use `fd` */
  private inFlight = 0;
  private closeAsked = false;
  private closed = false;
  private idleWaiters: Array<() => void> = [];
  constructor(readonly opts: BlkBackendOptions) {
    let flags = opts.readOnly ? fsc.O_RDONLY : fsc.O_RDWR;
    if (opts.direct) flags |= fsc.O_DIRECT;
    this.fd = opts.fd ?? openSync(opts.file, flags);
    try {
      const st = fstatSync(this.fd);
      if (!st.isFile() && !st.isBlockDevice()) throw new Error(`${opts.file} is not a regular file or block device`);
      this.sectors = BigInt(Math.floor(st.size / SECTOR_SIZE));
    } catch (e) {
      closeSync(this.fd);
      throw e;
    }
  }
  /** Closes the file now, or when the last request in flight on it completes. */
  close(): void {
    this.closeAsked = true;
    if (this.inFlight > 0 || this.closed) return;
    this.closed = true;
    try {
      closeSync(this.fd);
    } catch (e) {
      // the fd is gone either way (close(2) releases it even on EIO); the last completion must go on
      log.warn(`${this.opts.file}: close: ${(e as Error).message}`);
    }
  }

  begin(): void {
    this.inFlight++;
  }

  end(): void {
    this.inFlight--;
    if (this.inFlight > 0) return;
    if (this.closeAsked) this.close();
    for (const w of this.idleWaiters.splice(0)) w();
  }

  /** Resolves once no request uses the file (a detached file: its last writes landed, fd closed). */
  idle(): Promise<void> {
    if (this.inFlight === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }
}

export interface BlkDeviceOptions {
  /** a hot-replace slot: read-only is decided per attached file, so writes are offered */
  replaceable?: boolean;
  /** 'async' (threadpool, several requests at once) or 'sync' (one at a time; this class's default — the CLI's is 'async'): see the top */
  io?: 'sync' | 'async';
  /** 'async': the largest request that runs on the spot when alone (INLINE_ALONE_BYTES; 0: never) */
  inlineAloneBytes?: number;
  /** the rate limiter's clock (tests pass their own) */
  now?: () => number;
}

/** Moves a buffer cursor past `n` bytes done: the index of the first unfinished buffer (trimmed in place). */
function advance(views: Uint8Array[], i: number, n: number): number {
  let left = n;
  while (i < views.length && left >= (views[i] as Uint8Array).length) {
    left -= (views[i] as Uint8Array).length;
    i++;
  }
  if (left > 0 && i < views.length) views[i] = (views[i] as Uint8Array).subarray(left);
  return i;
}

/** The buffers from `i` on, cut to at most `max` bytes (the first one too, if it alone is larger). */
function window(views: Uint8Array[], i: number, max: number): Uint8Array[] {
  const out: Uint8Array[] = [];
  let bytes = 0;
  for (let j = i; j < views.length && bytes < max; j++) {
    const v = views[j] as Uint8Array;
    const take = Math.min(v.length, max - bytes);
    out.push(take === v.length ? v : v.subarray(0, take));
    bytes += take;
  }
  return out;
}

/** After a short read (the file shrank under us): what was not read reads as zeros, as a hole would. */
function zeroPast(views: Uint8Array[], done: number): void {
  let from = done;
  for (const v of views) {
    if (from <= 0) v.fill(0);
    else if (from < v.length) v.fill(0, from);
    from -= v.length;
  }
}

export class VirtioBlk implements VirtioDevice {
  readonly deviceType = DEVICE_ID.BLOCK;
  readonly queueSizes = [QUEUE_SIZE];
  readonly metrics: BlkMetrics = {
    reads: 0, writes: 0, flushes: 0, discards: 0, readBytes: 0, writeBytes: 0, ioErrors: 0, unsupported: 0, rejected: 0, throttled: 0,
  };
  private ctx: ActivateContext | null = null;
  private limiter: RateLimiter;
  private readonly retry = new RetryTimer(() => this.resume());
  private bounce: AlignedBuffer | null = null;
  private readonly replaceable: boolean;
  private readonly io: 'sync' | 'async';
  private readonly inlineAloneBytes: number;
  private readonly now: (() => number) | undefined;
  /** requests on the threadpool ('async') */
  private inFlight = 0;
  /** bumped by reset(): a completion of an older generation leaves the (new) rings alone */
  private generation = 0;
  private signalQueued = false;
  private idleWaiters: Array<() => void> = [];
  /** notify() stopped at MAX_IN_FLIGHT with requests left in the ring */
  private capped = false;

  constructor(private backend: BlkBackend | null, opts: BlkDeviceOptions = {}) {
    this.replaceable = opts.replaceable ?? false;
    this.io = opts.io ?? 'sync';
    this.inlineAloneBytes = opts.inlineAloneBytes ?? INLINE_ALONE_BYTES;
    this.now = opts.now;
    this.limiter = new RateLimiter({ ops: backend?.opts.iops, bytes: backend?.opts.bps }, opts.now);
  }

  get file(): string | undefined {
    return this.backend?.opts.file;
  }

  /** Read-only is a property of the slot once the driver has seen it; replaceable slots offer writes. */
  get features(): bigint {
    let f = bit(BLK_F.SEG_MAX) | bit(BLK_F.BLK_SIZE) | bit(BLK_F.FLUSH);
    if (this.backend?.opts.readOnly && !this.replaceable) f |= bit(BLK_F.RO);
    else f |= bit(BLK_F.DISCARD) | bit(BLK_F.WRITE_ZEROES);
    return f;
  }

  private configSpace(): Uint8Array {
    const c = new Uint8Array(60);
    const v = new DataView(c.buffer);
    v.setBigUint64(0, this.backend?.sectors ?? 0n, true); // capacity
    v.setUint32(12, SEG_MAX, true);
    v.setUint32(20, SECTOR_SIZE, true); // blk_size
    v.setUint16(34, 1, true); // num_queues
    v.setUint32(36, MAX_ZERO_SECTORS, true); // max_discard_sectors
    v.setUint32(40, MAX_DISCARD_SEGMENTS, true);
    v.setUint32(44, 1, true); // discard_sector_alignment
    v.setUint32(48, MAX_ZERO_SECTORS, true); // max_write_zeroes_sectors
    v.setUint32(52, MAX_DISCARD_SEGMENTS, true);
    c[56] = 1; // write_zeroes_may_unmap
    return c;
  }

  readConfig(offset: number, data: Uint8Array): void {
    readConfigBytes(this.configSpace(), offset, data);
  }
  writeConfig(): void {} // writeback toggling (CONFIG_WCE) is not offered

  activate(ctx: ActivateContext): void {
    this.ctx = ctx;
  }

  /** Hot-replace: give the slot a file (QMP device_add). */
  attach(backend: BlkBackend): void {
    if (this.backend) throw new Error('drive slot already has a file');
    this.backend = backend;
    this.limiter = new RateLimiter({ ops: backend.opts.iops, bytes: backend.opts.bps }, this.now);
    this.ctx?.interrupt.signalConfig();
  }

  /** Hot-replace: take the file away (QMP device_del); returns its path. */
  detach(): string | undefined {
    return this.detachDrained().file;
  }

  /** detach(), and when the file's requests in flight are done (its writes landed, the fd closed). */
  detachDrained(): { file: string | undefined; drained: Promise<void> } {
    const b = this.backend;
    this.backend = null;
    b?.close();
    this.ctx?.interrupt.signalConfig();
    return { file: b?.opts.file, drained: b ? b.idle() : Promise.resolve() };
  }

  notify(): void {
    const ctx = this.ctx;
    const q = ctx?.queues[0];
    if (!ctx || !q) return;
    let used = false;
    this.capped = false;
    for (;;) {
      if (this.io === 'async' && this.inFlight >= MAX_IN_FLIGHT) {
        // the rest stay in the ring (not re-armed): a completion comes back for them
        this.capped = true;
        break;
      }
      const p = q.popOrArm(ctx.mem);
      if (!p) break;
      if (p.error) {
        this.metrics.rejected++;
        q.addUsed(ctx.mem, p.error.head, 0);
        used = true;
        continue;
      }
      let req: BlkRequest;
      try {
        req = parseRequest(ctx.mem, p.chain, MAX_DISCARD_SEGMENTS);
      } catch (e) {
        if (!(e instanceof BlkRequestError)) throw e;
        this.metrics.rejected++;
        if (e.status) ctx.mem.writeU8(e.status.addr, BLK_STATUS.IOERR);
        q.addUsed(ctx.mem, p.chain.head, e.status ? 1 : 0);
        used = true;
        continue;
      }
      if ((req.type === REQ.IN || req.type === REQ.OUT) && this.limiter.limited) {
        const wait = this.limiter.take(req.dataLen);
        if (wait > 0) {
          this.metrics.throttled++;
          q.undoPop();
          this.retry.schedule(wait);
          break;
        }
      }
      if (this.io === 'async' && !this.runsAlone(req, q, ctx.mem) && this.startAsync(req, p.chain.head)) continue;
      const { status, written } = this.execute(req);
      ctx.mem.writeU8(req.status.addr, status);
      q.addUsed(ctx.mem, p.chain.head, written + 1);
      used = true;
    }
    if (used) ctx.interrupt.signalUsed(0);
  }

  /**
   * notify() from a completion or the retry timer, outside the transport's guard: a ring the
   * driver broke meanwhile fails the device here instead of throwing out of a callback.
   */
  private resume(): void {
    try {
      this.notify();
    } catch (e) {
      if (!(e instanceof QueueBrokenError)) throw e;
      this.ctx?.interrupt.fail(`queue 0: ${e.message}`);
    }
  }

  /**
   * Queue depth 1: a small read or write with nothing in flight and nothing behind it in the ring
   * runs here (as 'sync' would), saving the hop to the threadpool and back. A flush and any
   * O_DIRECT request still go to the pool: they always wait on the disk. (A read that misses the
   * page cache waits here too: the price of the shortcut.)
   */
  private runsAlone(req: BlkRequest, q: Queue, mem: GuestMemory): boolean {
    return this.inFlight === 0 && (req.type === REQ.IN || req.type === REQ.OUT) && req.dataLen <= this.inlineAloneBytes
      && !this.backend?.opts.direct // O_DIRECT always waits on the disk
      && q.pending(mem) === 0; // last: the ring is read only when the rest allows the shortcut
  }

  /**
   * Hands a read, write or flush to the threadpool; false when the request is served here instead
   * (other types, anything execute() refuses, and O_DIRECT through the bounce buffer).
   */
  private startAsync(req: BlkRequest, head: number): boolean {
    const b = this.backend;
    if (!b) return false;
    if (req.type === REQ.FLUSH) {
      if (b.opts.noFlush || b.opts.readOnly) return false;
      this.metrics.flushes++;
      this.track(b, head, req, (finish) => fdatasync(b.fd, (err) => finish(err ? this.ioError() : BLK_STATUS.OK, 0)));
      return true;
    }
    if (req.type !== REQ.IN && req.type !== REQ.OUT) return false;
    if ((req.type === REQ.OUT && b.opts.readOnly) || !this.inRange(b, req.sector, req.dataLen)) return false;
    const views = this.views(req.data);
    if (b.opts.direct && this.needsBounce(views)) return false;
    const pos = Number(req.sector) * SECTOR_SIZE;
    const read = req.type === REQ.IN;
    const generation = this.generation;
    // counted as execute() counts them: a failed call is an ioError, a short write only IOERR
    this.track(b, head, req, (finish) => this.transferAsync(b, views, pos, read, (err, n) => {
      if (err) return finish(this.ioError(), 0);
      if (read) {
        this.metrics.reads++;
        this.metrics.readBytes += n;
        // after a driver reset these pages are not ours to write any more
        if (generation === this.generation) zeroPast(views, n);
        finish(BLK_STATUS.OK, req.dataLen);
      } else {
        this.metrics.writes++;
        this.metrics.writeBytes += n;
        finish(n === req.dataLen ? BLK_STATUS.OK : BLK_STATUS.IOERR, 0);
      }
    }));
    return true;
  }

  private ioError(): number {
    this.metrics.ioErrors++;
    return BLK_STATUS.IOERR;
  }

  /** Runs `op` with the request counted in flight; its completion goes to the used ring of its generation. */
  private track(b: BlkBackend, head: number, req: BlkRequest, op: (finish: (status: number, written: number) => void) => void): void {
    const generation = this.generation;
    this.inFlight++;
    b.begin();
    let finished = false;
    const finish = (status: number, written: number): void => {
      if (finished) return;
      finished = true;
      this.inFlight--;
      b.end();
      const ctx = this.ctx;
      const q = ctx?.queues[0];
      const current = ctx !== null && q !== undefined && generation === this.generation;
      if (current) {
        ctx.mem.writeU8(req.status.addr, status);
        q.addUsed(ctx.mem, head, written + 1);
      }
      // the requests left in the ring at the cap — also when this one belonged to the driver
      // before a reset, and the new driver's requests wait behind it
      if (this.capped) this.resume();
      if (this.inFlight > 0) {
        // more on their way: one interrupt for this turn's completions
        if (current) this.queueSignal();
        return;
      }
      // the last one: the interrupt now, before a waiter (migrate) reads the rings
      if (current || this.signalQueued) this.signalNow();
      for (const w of this.idleWaiters.splice(0)) w();
    };
    try {
      op(finish);
    } catch {
      finish(this.ioError(), 0); // node:fs refused the call itself
    }
  }

  /** One interrupt for the completions of one turn of the event loop, not one each. */
  private queueSignal(): void {
    if (this.signalQueued) return;
    this.signalQueued = true;
    setImmediate(() => {
      if (this.signalQueued) this.signalNow();
    });
  }

  /** The interrupt now (a queued one is then moot: the driver sees every entry so far). */
  private signalNow(): void {
    this.signalQueued = false;
    this.ctx?.interrupt.signalUsed(0);
  }

  /** preadv/pwritev on the threadpool, continuing after short transfers; `n`: the bytes done. */
  private transferAsync(b: BlkBackend, views: Uint8Array[], pos: number, read: boolean, done: (err: Error | null, n: number) => void): void {
    const rest = views.slice();
    let total = 0;
    let i = 0;
    const step = (): void => {
      const bufs = window(rest, i, MAX_POOL_CALL_BYTES);
      const cb = (err: NodeJS.ErrnoException | null, n: number): void => {
        if (err) return done(err, total);
        total += n;
        i = advance(rest, i, n);
        if (n <= 0 || i >= rest.length) return done(null, total);
        step();
      };
      if (read) readv(b.fd, bufs, pos + total, cb);
      else writev(b.fd, bufs, pos + total, cb);
    };
    step();
  }

  /**
   * Resolves when no request is in flight: before a snapshot reads the rings, before a machine
   * reset rebuilds them, and before a detached file is reported gone.
   */
  quiesce(): Promise<void> {
    if (this.inFlight === 0) {
      if (this.signalQueued) this.signalNow();
      return Promise.resolve();
    }
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  /** Requests accepted and not yet completed (on the threadpool). */
  pendingRequests(): number {
    return this.inFlight;
  }

  /** A snapshot taken now would save rings whose requests are still running. */
  snapshotBlocker(): string | null {
    return this.inFlight > 0 ? `${this.inFlight} request(s) in flight (quiesce first)` : null;
  }

  private needsBounce(views: Uint8Array[]): boolean {
    return views.some((v) => (v.byteOffset % SECTOR_SIZE) !== 0 || v.length % SECTOR_SIZE !== 0);
  }

  private execute(req: BlkRequest): { status: number; written: number } {
    const b = this.backend;
    if (!b) return { status: BLK_STATUS.IOERR, written: 0 };
    try {
      switch (req.type) {
        case REQ.IN: return this.read(b, req);
        case REQ.OUT: return { status: this.write(b, req), written: 0 };
        case REQ.FLUSH:
          this.metrics.flushes++;
          if (!b.opts.noFlush && !b.opts.readOnly) fdatasyncSync(b.fd);
          return { status: BLK_STATUS.OK, written: 0 };
        case REQ.GET_ID: return this.getId(b, req);
        case REQ.DISCARD:
        case REQ.WRITE_ZEROES:
          return { status: this.zero(b, req), written: 0 };
        default:
          this.metrics.unsupported++;
          return { status: BLK_STATUS.UNSUPP, written: 0 };
      }
    } catch {
      this.metrics.ioErrors++;
      return { status: BLK_STATUS.IOERR, written: 0 };
    }
  }

  /** Is [sector, sector + bytes) inside the disk, in whole sectors? */
  private inRange(b: BlkBackend, sector: bigint, bytes: number): boolean {
    return bytes % SECTOR_SIZE === 0 && sector + BigInt(bytes / SECTOR_SIZE) <= b.sectors;
  }

  private views(bufs: GuestBuffer[]): Uint8Array[] {
    const mem = (this.ctx as ActivateContext).mem;
    return bufs.map((g) => mem.slice(GuestAddress(g.addr), g.len));
  }

  private read(b: BlkBackend, req: BlkRequest): { status: number; written: number } {
    if (!this.inRange(b, req.sector, req.dataLen)) return { status: BLK_STATUS.IOERR, written: 0 };
    const pos = Number(req.sector) * SECTOR_SIZE;
    const n = this.transfer(b, this.views(req.data), pos, 'read');
    this.metrics.reads++;
    this.metrics.readBytes += n;
    // a short read (the file shrank under us) leaves zeros, as a hole would
    return { status: BLK_STATUS.OK, written: req.dataLen };
  }

  private write(b: BlkBackend, req: BlkRequest): number {
    if (b.opts.readOnly) return BLK_STATUS.IOERR;
    if (!this.inRange(b, req.sector, req.dataLen)) return BLK_STATUS.IOERR;
    const n = this.transfer(b, this.views(req.data), Number(req.sector) * SECTOR_SIZE, 'write');
    this.metrics.writes++;
    this.metrics.writeBytes += n;
    return n === req.dataLen ? BLK_STATUS.OK : BLK_STATUS.IOERR;
  }

  /**
   * preadv/pwritev straight into guest memory. O_DIRECT needs sector-aligned memory: guest
   * buffers usually are (page cache pages); when one is not, the request goes through an aligned
   * bounce buffer instead of failing.
   */
  private transfer(b: BlkBackend, views: Uint8Array[], pos: number, dir: 'read' | 'write'): number {
    if (b.opts.direct && this.needsBounce(views)) {
      this.bounce ??= new AlignedBuffer(1 << 20);
      return this.bounce.transfer(b.fd, views, pos, dir);
    }
    let done = 0;
    // a cursor over a copy: a short read zero-fills the untouched views past `done`
    const rest = views.slice();
    for (let i = 0; i < rest.length;) {
      // readv/writev take at most IOV_MAX (1024) buffers; ours are at most SEG_MAX
      const n = dir === 'read' ? readvSync(b.fd, rest.slice(i), pos + done) : writevSync(b.fd, rest.slice(i), pos + done);
      if (n <= 0) break;
      done += n;
      // skip the buffers this call completed; a partial one continues from where it stopped
      i = advance(rest, i, n);
    }
    if (dir === 'read') zeroPast(views, done);
    return done;
  }

  private getId(b: BlkBackend, req: BlkRequest): { status: number; written: number } {
    const id = new Uint8Array(ID_BYTES);
    id.set(new TextEncoder().encode(b.opts.serial ?? '').subarray(0, ID_BYTES));
    let at = 0;
    for (const v of this.views(req.data)) {
      const take = Math.min(v.length, ID_BYTES - at);
      v.set(id.subarray(at, at + take));
      at += take;
    }
    return { status: BLK_STATUS.OK, written: at };
  }

  private zero(b: BlkBackend, req: BlkRequest): number {
    if (b.opts.readOnly) return BLK_STATUS.IOERR;
    this.metrics.discards++;
    for (const s of req.segments) {
      if (s.sectors > MAX_ZERO_SECTORS || s.sector + BigInt(s.sectors) > b.sectors) return BLK_STATUS.IOERR;
      if (req.type === REQ.DISCARD && s.flags !== 0) return BLK_STATUS.UNSUPP;
      const off = Number(s.sector) * SECTOR_SIZE;
      const len = s.sectors * SECTOR_SIZE;
      if (len === 0) continue;
      const punch = req.type === REQ.DISCARD || (s.flags & WRITE_ZEROES_FLAG_UNMAP) !== 0;
      if (punch) fallocate(b.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off, len);
      else fallocate(b.fd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, off, len);
    }
    return BLK_STATUS.OK;
  }

  reset(): void {
    this.ctx = null;
    this.generation++;
    this.retry.cancel();
  }

  close(): void {
    this.reset();
    this.backend?.close();
    this.backend = null;
    this.bounce?.free();
    this.bounce = null;
  }
}
