// Puts a bootable Linux into guest memory: kernel at 1 MiB, initrd high, command line, boot_params,
// GDT/IDT, identity page tables, MP table and ACPI tables. Returns the 64-bit entry point.
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { GuestAddress as GA, type GuestMemory } from '../memory/guest-memory.js';
import { buildAcpiTables } from './acpi.js';
import { buildBootParams } from './boot-params.js';
import { KernelImageError, parseBzImage, type BzImage } from './bzimage.js';
import { buildE820 } from './e820.js';
import { gdtBytes, identityPageTables } from './gdt.js';
import {
  ACPI_TABLES_ADDR, BIOS_END, VMGENID_ADDR, BOOT_GDT_ADDR, BOOT_IDT_ADDR, CMDLINE_ADDR, CMDLINE_MAX, KERNEL_64BIT_ENTRY_OFFSET,
  KERNEL_LOAD_ADDR, MPTABLE_ADDR, ZERO_PAGE_ADDR,
} from './layout.js';
import { buildMpTable } from './mptable.js';

export interface BootSource {
  kernel: Uint8Array;
  initrd?: Uint8Array | undefined;
  cmdline: string;
  cpus: number;
  acpi?: boolean;
  /** AML Device objects for the DSDT (virtio-mmio slots), from the device manager */
  acpiDevices?: number[][] | undefined;
}

export interface LoadedKernel {
  entry: number;
  image: BzImage;
  initrd?: { addr: number; size: number } | undefined;
  rsdpAddr?: number | undefined;
}

export function readBootFile(path: string, what: string): Uint8Array {
  try {
    return readFileSync(path);
  } catch (e) {
    throw new KernelImageError(`cannot read ${what} ${path}: ${(e as Error).message}`);
  }
}

export function loadLinux(mem: GuestMemory, src: BootSource): LoadedKernel {
  const image = parseBzImage(src.kernel);
  const lowEnd = mem.lowMemEnd;
  const kernelEnd = KERNEL_LOAD_ADDR + Math.max(image.payload.length, image.initSize);
  if (kernelEnd > lowEnd) throw new KernelImageError(`kernel needs ${kernelEnd} bytes of low memory, guest has ${lowEnd}`);
  mem.write(GA(KERNEL_LOAD_ADDR), image.payload);

  const cmd = Buffer.from(src.cmdline + '\0', 'utf8');
  const cmdMax = Math.min(CMDLINE_MAX, image.cmdlineSize ? image.cmdlineSize + 1 : 256);
  if (cmd.length > cmdMax) throw new KernelImageError(`kernel command line too long (${cmd.length - 1} > ${cmdMax - 1} bytes)`);
  mem.fill(GA(CMDLINE_ADDR), CMDLINE_MAX);
  mem.write(GA(CMDLINE_ADDR), cmd);

  let initrd: { addr: number; size: number } | undefined;
  if (src.initrd && src.initrd.length > 0) {
    const top = Math.min(lowEnd, image.initrdAddrMax + 1);
    const addr = Math.floor((top - src.initrd.length) / 4096) * 4096;
    if (addr < kernelEnd) throw new KernelImageError(`initrd (${src.initrd.length} bytes) does not fit in guest memory`);
    mem.write(GA(addr), src.initrd);
    initrd = { addr, size: src.initrd.length };
  }

  mem.write(GA(BOOT_GDT_ADDR), gdtBytes());
  mem.fill(GA(BOOT_IDT_ADDR), 8);
  for (const [a, b] of identityPageTables()) mem.write(GA(a), b);
  mem.write(GA(MPTABLE_ADDR), buildMpTable(MPTABLE_ADDR, src.cpus));

  let rsdpAddr: number | undefined;
  if (src.acpi !== false) {
    const acpi = buildAcpiTables(ACPI_TABLES_ADDR, src.cpus, VMGENID_ADDR, src.acpiDevices);
    for (const [a, b] of acpi.blobs) mem.write(GA(a), b);
    mem.write(GA(VMGENID_ADDR), randomBytes(16));
    rsdpAddr = acpi.rsdpAddr;
  }

  const bp = buildBootParams({ image, cmdlineAddr: CMDLINE_ADDR, initrd, e820: buildE820(mem.regions), rsdpAddr });
  mem.write(GA(ZERO_PAGE_ADDR), bp);
  return { entry: KERNEL_LOAD_ADDR + KERNEL_64BIT_ENTRY_OFFSET, image, initrd, rsdpAddr };
}
