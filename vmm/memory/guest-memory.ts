// Guest RAM: one host mapping split into KVM memory regions around the 32-bit MMIO hole, and ONE
// bounds-checked accessor through which every guest-physical read and write goes.
import { closeSync, fstatSync, ftruncateSync, mkdtempSync, openSync, readSync, statSync, unlinkSync, rmdirSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import {
  MADV_DONTDUMP, MADV_DONTNEED, MADV_REMOVE, madvise, MAP_ANONYMOUS, MAP_NORESERVE, MAP_PRIVATE, MAP_SHARED, mmap, mmapFixed, munmap, PROT_READ, PROT_WRITE, view,
} from '../kvm/sys.js';

/** A guest-physical address. Branded so host offsets and plain numbers cannot be passed by mistake. */
export type GuestAddress = number & { readonly __brand: 'GuestAddress' };
export const GuestAddress = (n: number): GuestAddress => {
  if (!Number.isSafeInteger(n) || n < 0) throw new RangeError(`bad guest address ${n}`);
  return n as GuestAddress;
};

/** Unit of a snapshot's memory file writes (and of its holes). */
const SAVE_CHUNK = 64 * 1024;

/** Start of the 32-bit MMIO hole (IOAPIC, LAPIC, future virtio-mmio live above it). */
export const MMIO_HOLE_START = 0xd000_0000;
export const FOUR_GIB = 0x1_0000_0000;

export interface MemoryRegion {
  slot: number;
  guestBase: number;
  size: number;
  /** offset inside the host mapping */
  hostOffset: number;
}

export class GuestMemoryError extends RangeError {
  constructor(msg: string) {
    super(msg);
    this.name = 'GuestMemoryError';
  }
}

/** Guest-physical layout of `size` bytes of RAM: below the hole, then from 4 GiB. */
export function layoutRegions(size: number): MemoryRegion[] {
  const low = Math.min(size, MMIO_HOLE_START);
  const regions: MemoryRegion[] = [{ slot: 0, guestBase: 0, size: low, hostOffset: 0 }];
  if (size > low) regions.push({ slot: 1, guestBase: FOUR_GIB, size: size - low, hostOffset: low });
  return regions;
}

export interface GuestMemoryOptions {
  size: number;
  /** file or directory backing the memory (-mem-path) */
  memPath?: string | undefined;
  /** MAP_SHARED instead of MAP_PRIVATE (mem-share=on) */
  shared?: boolean | undefined;
  /** keep guest memory out of core dumps (dump-guest-core=off) */
  dontDump?: boolean | undefined;
}

/**
 * Accessor over a set of regions. Backed either by a real mmap (GuestMemory.create) or by plain
 * ArrayBuffers (GuestMemory.fromBuffers, for unit tests).
 */
export class GuestMemory {
  private readonly views: Uint8Array[];
  private readonly dvs: DataView[];
  /** how discard() gives pages back: madvise advice on the host mapping, or null (test buffers: zero-fill) */
  private discardAdvice: number | null = null;
  /** MAP_SHARED (mem-share=on): a snapshot restore must copy into it, not map a file over it */
  shared = false;
  private dontDump = false;

  private constructor(
    readonly regions: MemoryRegion[],
    buffers: ArrayBuffer[],
    readonly hostAddr: bigint,
    readonly totalSize: number,
  ) {
    this.views = buffers.map((b) => new Uint8Array(b));
    this.dvs = buffers.map((b) => new DataView(b));
  }

  static create(opts: GuestMemoryOptions): GuestMemory {
    const size = opts.size;
    if (!Number.isSafeInteger(size) || size <= 0 || size % 4096 !== 0) throw new GuestMemoryError(`bad memory size ${size}`);
    let fd = -1;
    let flags = (opts.shared ? MAP_SHARED : MAP_PRIVATE) | MAP_NORESERVE;
    let cleanup: (() => void) | undefined;
    if (opts.memPath) {
      let path = opts.memPath;
      const st = statSync(path, { throwIfNoEntry: false });
      if (st?.isDirectory()) {
        // unnamed backing file inside the directory (e.g. hugetlbfs mount), removed right away
        const dir = mkdtempSync(join(path, 'capsule-mem-'));
        path = join(dir, 'ram');
        fd = openSync(path, 'w+', 0o600);
        unlinkSync(path);
        rmdirSync(dir);
      } else {
        fd = openSync(path, st ? 'r+' : 'w+', 0o600);
      }
      if (!st || st.isFile()) {
        const cur = st?.isFile() ? st.size : 0;
        if (cur < size) ftruncateSync(fd, size);
      }
      cleanup = () => closeSync(fd);
    } else {
      flags |= MAP_ANONYMOUS;
    }
    let addr: bigint;
    try {
      addr = mmap(size, PROT_READ | PROT_WRITE, flags, fd, 0);
    } finally {
      cleanup?.();
    }
    if (opts.dontDump) {
      try { madvise(addr, size, MADV_DONTDUMP); } catch { /* best effort */ }
    }
    const regions = layoutRegions(size);
    const buffers = regions.map((r) => view(addr + BigInt(r.hostOffset), r.size));
    const mem = new GuestMemory(regions, buffers, addr, size);
    // private mappings (anonymous or a -mem-path file): DONTNEED drops the pages (anonymous ones
    // are freed, private copies of file pages too; the next touch faults in zeroes or the file's
    // page). Shared mappings (mem-share=on: shmem, or a file): DONTNEED would only unmap them
    // from this process while the page cache / shmem keeps them, so REMOVE punches a hole in the
    // backing instead (hugetlbfs refuses ranges smaller than a huge page: EINVAL, see discard()).
    mem.discardAdvice = opts.shared ? MADV_REMOVE : MADV_DONTNEED;
    mem.shared = opts.shared ?? false;
    mem.dontDump = opts.dontDump ?? false;
    return mem;
  }

  /**
   * The same guest RAM seen from another thread of this process (an iothread): views over the
   * mapping `create()` made, which this object does not own (close() leaves it alone).
   */
  static attach(hostAddr: bigint, size: number): GuestMemory {
    const regions = layoutRegions(size);
    const buffers = regions.map((r) => view(hostAddr + BigInt(r.hostOffset), r.size));
    const m = new GuestMemory(regions, buffers, hostAddr, size);
    m.borrowed = true;
    return m;
  }
  private borrowed = false;

  /** Test helper: regions over ordinary ArrayBuffers, same layout rules. */
  static fromBuffers(size: number): GuestMemory {
    const regions = layoutRegions(size);
    return new GuestMemory(regions, regions.map((r) => new ArrayBuffer(r.size)), 0n, size);
  }

  /** Host address of a region (for KVM_SET_USER_MEMORY_REGION). */
  regionHostAddr(r: MemoryRegion): bigint {
    return this.hostAddr + BigInt(r.hostOffset);
  }

  /** Highest guest address + 1 below the MMIO hole. */
  get lowMemEnd(): number {
    return (this.regions[0] as MemoryRegion).size;
  }

  /**
   * The one bounds check: finds the region holding [addr, addr+len) entirely, or throws.
   * Accesses never straddle regions (the hole sits between them).
   */
  private locate(addr: GuestAddress, len: number): [number, number] {
    if (!Number.isSafeInteger(addr) || addr < 0 || !Number.isSafeInteger(len) || len < 0) {
      throw new GuestMemoryError(`bad guest access ${addr}+${len}`);
    }
    for (let i = 0; i < this.regions.length; i++) {
      const r = this.regions[i] as MemoryRegion;
      if (addr >= r.guestBase && addr + len <= r.guestBase + r.size) return [i, addr - r.guestBase];
    }
    throw new GuestMemoryError(`guest access 0x${addr.toString(16)}+${len} outside guest RAM`);
  }

  /** Is [addr, addr+len) entirely inside guest RAM? */
  contains(addr: number, len: number): boolean {
    try {
      this.locate(addr as GuestAddress, len);
      return true;
    } catch {
      return false;
    }
  }

  /** A zero-copy window onto guest memory, bounds-checked. */
  slice(addr: GuestAddress, len: number): Uint8Array {
    const [i, off] = this.locate(addr, len);
    return (this.views[i] as Uint8Array).subarray(off, off + len);
  }
  read(addr: GuestAddress, len: number): Uint8Array {
    return Uint8Array.from(this.slice(addr, len));
  }
  write(addr: GuestAddress, data: Uint8Array): void {
    this.slice(addr, data.length).set(data);
  }
  fill(addr: GuestAddress, len: number, value = 0): void {
    this.slice(addr, len).fill(value);
  }
  private dv(addr: GuestAddress, len: number): [DataView, number] {
    const [i, off] = this.locate(addr, len);
    return [this.dvs[i] as DataView, off];
  }
  readU8(a: GuestAddress): number { const [d, o] = this.dv(a, 1); return d.getUint8(o); }
  readU16(a: GuestAddress): number { const [d, o] = this.dv(a, 2); return d.getUint16(o, true); }
  readU32(a: GuestAddress): number { const [d, o] = this.dv(a, 4); return d.getUint32(o, true); }
  readU64(a: GuestAddress): bigint { const [d, o] = this.dv(a, 8); return d.getBigUint64(o, true); }
  writeU8(a: GuestAddress, v: number): void { const [d, o] = this.dv(a, 1); d.setUint8(o, v); }
  writeU16(a: GuestAddress, v: number): void { const [d, o] = this.dv(a, 2); d.setUint16(o, v, true); }
  writeU32(a: GuestAddress, v: number): void { const [d, o] = this.dv(a, 4); d.setUint32(o, v >>> 0, true); }
  writeU64(a: GuestAddress, v: bigint): void { const [d, o] = this.dv(a, 8); d.setBigUint64(o, v, true); }

  /**
   * Gives the host memory behind [addr, addr+len) back (virtio-balloon inflation): bounds-checked
   * like every access, page-aligned, inside one region. The guest reads zeroes (or the backing
   * file's content) there afterwards. Throws GuestMemoryError for a bad range, SysError if
   * madvise refuses (e.g. EINVAL for 4 KiB ranges of hugetlbfs memory).
   */
  discard(addr: GuestAddress, len: number): void {
    if (addr % 4096 || len % 4096) throw new GuestMemoryError(`discard 0x${addr.toString(16)}+${len} is not page-aligned`);
    const [i, off] = this.locate(addr, len);
    if (this.discardAdvice === null) {
      (this.views[i] as Uint8Array).fill(0, off, off + len);
      return;
    }
    const r = this.regions[i] as MemoryRegion;
    madvise(this.hostAddr + BigInt(r.hostOffset + off), len, this.discardAdvice);
  }

  // ---- snapshots: one file per region -------------------------------------------------------

  /**
   * Writes region `i` whole into `fd` (a snapshot's memory file), reading every page through the
   * mapping: a VM that was itself restored copy-on-write has most pages still in the old file, and
   * they must be written too (the trap that made Cloud Hypervisor drop its CoW restore). All-zero
   * chunks are skipped (holes: the file is sparse), the last one always written so the size is right.
   */
  saveRegion(i: number, fd: number): { written: number } {
    const v = this.regionView(i);
    const zero = Buffer.alloc(SAVE_CHUNK);
    let written = 0;
    for (let off = 0; off < v.length; off += SAVE_CHUNK) {
      const len = Math.min(SAVE_CHUNK, v.length - off);
      const chunk = Buffer.from(v.buffer, v.byteOffset + off, len);
      const last = off + len >= v.length;
      if (!last && chunk.equals(zero.subarray(0, len))) continue;
      for (let done = 0; done < len;) done += writeSync(fd, chunk, done, len - done, off + done);
      written += len;
    }
    return { written };
  }

  /**
   * Makes region `i` the content of `fd` (a snapshot's memory file, exactly the region's size):
   * mapped MAP_PRIVATE over the region's place (copy-on-write: pages load from the file when the
   * guest touches them, the file never changes), so the cost does not grow with the guest's size.
   * Shared memory (mem-share=on) cannot be replaced by a private mapping: it is copied instead.
   */
  loadRegion(i: number, fd: number): { mode: 'cow' | 'copy' } {
    const r = this.regions[i];
    if (!r) throw new GuestMemoryError(`no memory region ${i}`);
    const size = fstatSync(fd).size;
    if (size !== r.size) throw new GuestMemoryError(`memory file of region ${i} is ${size} bytes, the region ${r.size}`);
    if (this.shared || this.hostAddr === 0n) {
      const v = this.regionView(i);
      for (let off = 0; off < v.length;) {
        const n = readSync(fd, v, off, Math.min(SAVE_CHUNK * 16, v.length - off), off);
        if (n === 0) throw new GuestMemoryError(`memory file of region ${i} ended at ${off} of ${v.length} bytes`);
        off += n;
      }
      return { mode: 'copy' };
    }
    const addr = this.regionHostAddr(r);
    mmapFixed(addr, r.size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_NORESERVE, fd, 0);
    if (this.dontDump) {
      try { madvise(addr, r.size, MADV_DONTDUMP); } catch { /* best effort */ }
    }
    return { mode: 'cow' };
  }

  private regionView(i: number): Uint8Array {
    const v = this.views[i];
    if (!v) throw new GuestMemoryError(`no memory region ${i}`);
    return v;
  }

  /** Drop the mapping. The views become unusable. */
  close(): void {
    if (this.hostAddr !== 0n && !this.borrowed) munmap(this.hostAddr, this.totalSize);
  }
}
