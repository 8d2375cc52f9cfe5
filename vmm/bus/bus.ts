// PIO and MMIO dispatch by address range (Firecracker's bus.rs shape). A device sees offsets
// relative to the base it was inserted at; accesses are byte arrays of 1, 2, 4 or 8 bytes.

export interface BusDevice {
  /** fill `data` with the value read at `offset` */
  read(offset: number, data: Uint8Array): void;
  write(offset: number, data: Uint8Array): void;
}

export class BusError extends Error {}

interface Range {
  base: number;
  len: number;
  dev: BusDevice;
  name: string;
}

export class Bus {
  private ranges: Range[] = [];

  constructor(readonly kind: 'pio' | 'mmio') {}

  insert(base: number, len: number, dev: BusDevice, name: string): void {
    if (len <= 0) throw new BusError(`zero-length ${this.kind} range for ${name}`);
    for (const r of this.ranges) {
      if (base < r.base + r.len && r.base < base + len) {
        throw new BusError(`${this.kind} range 0x${base.toString(16)}+${len} (${name}) overlaps ${r.name}`);
      }
    }
    this.ranges.push({ base, len, dev, name });
    this.ranges.sort((a, b) => a.base - b.base);
  }

  private find(addr: number, size: number): Range | undefined {
    let lo = 0;
    let hi = this.ranges.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      const r = this.ranges[mid] as Range;
      if (addr < r.base) hi = mid - 1;
      else if (addr >= r.base + r.len) lo = mid + 1;
      else return addr + size <= r.base + r.len ? r : undefined;
    }
    return undefined;
  }

  /** false: nothing there (the caller decides what an unclaimed access reads as) */
  read(addr: number, data: Uint8Array): boolean {
    const r = this.find(addr, data.length);
    if (!r) return false;
    r.dev.read(addr - r.base, data);
    return true;
  }

  write(addr: number, data: Uint8Array): boolean {
    const r = this.find(addr, data.length);
    if (!r) return false;
    r.dev.write(addr - r.base, data);
    return true;
  }

  /** name of the device at addr, for logs and tests */
  nameAt(addr: number): string | undefined {
    return this.find(addr, 1)?.name;
  }
}
