// GDT and 64-bit identity page tables for the 64-bit boot protocol entry.
import { IDENTITY_MAP_GIB, PD_ADDR, PDPT_ADDR, PML4_ADDR } from './layout.js';

/** An x86 segment descriptor from flags (access byte + flags nibble), base and 20-bit limit. */
export function gdtEntry(flags: number, base: number, limit: number): bigint {
  const b = BigInt(base >>> 0);
  const l = BigInt(limit >>> 0);
  const f = BigInt(flags & 0xf0ff);
  return ((b & 0xff000000n) << 32n) | (f << 40n) | ((l & 0xf0000n) << 32n) | ((b & 0x00ffffffn) << 16n) | (l & 0xffffn);
}

export interface Segment {
  base: bigint;
  limit: number;
  selector: number;
  type: number;
  present: number;
  dpl: number;
  db: number;
  s: number;
  l: number;
  g: number;
  avl: number;
  unusable: number;
}

/** The kvm_segment KVM wants for descriptor `entry` at GDT index `index`. */
export function segmentFromGdt(entry: bigint, index: number): Segment {
  const base = ((entry >> 16n) & 0xffffffn) | (((entry >> 56n) & 0xffn) << 24n);
  let limit = Number((entry & 0xffffn) | (((entry >> 48n) & 0xfn) << 16n));
  const access = Number((entry >> 40n) & 0xffn);
  const flags = Number((entry >> 52n) & 0xfn);
  const g = (flags >> 3) & 1;
  if (g) limit = ((limit << 12) | 0xfff) >>> 0;
  const present = (access >> 7) & 1;
  return {
    base, limit, selector: index * 8, type: access & 0xf, present, dpl: (access >> 5) & 3, db: (flags >> 2) & 1,
    s: (access >> 4) & 1, l: (flags >> 1) & 1, g, avl: flags & 1, unusable: present ? 0 : 1,
  };
}

export const GDT_CODE = 1;
export const GDT_DATA = 2;
export const GDT_TSS = 3;
/** null, 64-bit code, data, TSS (as Firecracker and the boot protocol's 64-bit entry expect). */
export const BOOT_GDT: bigint[] = [
  0n,
  gdtEntry(0xa09b, 0, 0xfffff),
  gdtEntry(0xc093, 0, 0xfffff),
  gdtEntry(0x808b, 0, 0xfffff),
];

export function gdtBytes(): Uint8Array {
  const b = new Uint8Array(BOOT_GDT.length * 8);
  const dv = new DataView(b.buffer);
  BOOT_GDT.forEach((e, i) => dv.setBigUint64(i * 8, e, true));
  return b;
}

/**
 * Identity page tables: PML4[0] -> PDPT, PDPT[0..n) -> PD pages, each PD maps 1 GiB with 2 MiB pages.
 * Returned as [guest address, bytes] pairs.
 */
export function identityPageTables(): Array<[number, Uint8Array]> {
  const pml4 = new Uint8Array(4096);
  const pdpt = new Uint8Array(4096);
  new DataView(pml4.buffer).setBigUint64(0, BigInt(PDPT_ADDR) | 0x3n, true);
  const out: Array<[number, Uint8Array]> = [[PML4_ADDR, pml4], [PDPT_ADDR, pdpt]];
  for (let g = 0; g < IDENTITY_MAP_GIB; g++) {
    const pdAddr = PD_ADDR + g * 4096;
    new DataView(pdpt.buffer).setBigUint64(g * 8, BigInt(pdAddr) | 0x3n, true);
    const pd = new Uint8Array(4096);
    const dv = new DataView(pd.buffer);
    for (let i = 0; i < 512; i++) {
      const phys = (BigInt(g) << 30n) | (BigInt(i) << 21n);
      dv.setBigUint64(i * 8, phys | 0x83n, true); // present | rw | page size (2 MiB)
    }
    out.push([pdAddr, pd]);
  }
  return out;
}
