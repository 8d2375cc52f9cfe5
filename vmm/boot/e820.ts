// The guest's memory map (boot_params.e820_table).
import { BIOS_END, EBDA_START, ACPI_TABLES_ADDR } from './layout.js';
import type { MemoryRegion } from '../memory/guest-memory.js';

export const E820_RAM = 1;
export const E820_RESERVED = 2;
export const E820_ACPI = 3;

export interface E820Entry {
  addr: number;
  size: number;
  type: number;
}

/** RAM below the EBDA, the EBDA and BIOS area reserved, RAM from 1 MiB, the high region above 4 GiB. */
export function buildE820(regions: MemoryRegion[]): E820Entry[] {
  const low = regions[0];
  if (!low || low.guestBase !== 0 || low.size <= BIOS_END) throw new RangeError('guest RAM must extend past 1 MiB');
  const out: E820Entry[] = [
    { addr: 0, size: EBDA_START, type: E820_RAM },
    { addr: EBDA_START, size: 0xa0000 - EBDA_START, type: E820_RESERVED },
    { addr: ACPI_TABLES_ADDR, size: BIOS_END - ACPI_TABLES_ADDR, type: E820_RESERVED },
    { addr: BIOS_END, size: low.size - BIOS_END, type: E820_RAM },
  ];
  for (const r of regions.slice(1)) out.push({ addr: r.guestBase, size: r.size, type: E820_RAM });
  return out;
}
