// Puts a bootable Linux into guest memory: kernel at 1 MiB, initrd high, command line, boot_params,
// GDT/IDT, identity page tables, MP table and ACPI tables. Returns the 64-bit entry point.
import { randomBytes } from 'node:crypto';
import { closeSync, fstatSync, openSync, readSync } from 'node:fs';
import { GuestAddress as GA, type GuestMemory } from '../memory/guest-memory.js';
import { buildAcpiTables } from './acpi.js';
import { buildBootParams } from './boot-params.js';
import { BZIMAGE_HEAD_BYTES, KernelImageError, parseBzImageHeader, type BzImageHeader } from './bzimage.js';
import { buildE820 } from './e820.js';
import { gdtBytes, identityPageTables } from './gdt.js';
import {
  ACPI_TABLES_ADDR, VMGENID_ADDR, BOOT_GDT_ADDR, BOOT_IDT_ADDR, CMDLINE_ADDR, CMDLINE_MAX, KERNEL_64BIT_ENTRY_OFFSET,
  KERNEL_LOAD_ADDR, MPTABLE_ADDR, ZERO_PAGE_ADDR,
} from './layout.js';
import { buildMpTable } from './mptable.js';

/**
 * A kernel or initrd, read where it goes. The VMM's come from files and are read straight into
 * guest RAM (preads into the guest memory's view): a copy held in a Node buffer would stay in
 * the idle VMM's private memory for its whole life (~10 MiB for the default image's kernel and
 * initrd), since the machine needs them again for an in-place reset.
 */
export interface BootFile {
  readonly size: number;
  /** Fills `into` with the file's bytes from `offset` on. */
  readInto(into: Uint8Array, offset: number): void;
}

/** Bytes already in memory (tests). */
export function bytesBootFile(bytes: Uint8Array): BootFile {
  return { size: bytes.length, readInto: (into, offset) => into.set(bytes.subarray(offset, offset + into.length)) };
}

/**
 * A file by path, opened now and kept open (the fd pins it: replacing or deleting the path later
 * does not change what an in-place reset boots), read at each boot; errors name `what` and the
 * path. A file truncated in place since is refused when read.
 */
export function pathBootFile(path: string, what: string): BootFile & { close(): void } {
  const fail = (e: unknown): never => {
    throw new KernelImageError(`cannot read ${what} ${path}: ${(e as Error).message}`);
  };
  let fd = -1;
  let size = 0;
  try {
    fd = openSync(path, 'r');
    const st = fstatSync(fd);
    if (!st.isFile()) throw new Error('not a regular file');
    size = st.size;
  } catch (e) {
    if (fd >= 0) closeSync(fd);
    fail(e);
  }
  return {
    size,
    readInto(into, offset) {
      try {
        for (let done = 0; done < into.length;) {
          const n = readSync(fd, into, done, into.length - done, offset + done);
          if (n === 0) throw new Error(`the file has ${fstatSync(fd).size} bytes now (${size} when the VMM started)`);
          done += n;
        }
      } catch (e) {
        fail(e);
      }
    },
    close: () => closeSync(fd),
  };
}

/** The kernel's header (what loading and boot_params need), read from the file's first bytes. */
export function readKernelHeader(kernel: BootFile): BzImageHeader {
  const head = new Uint8Array(Math.min(BZIMAGE_HEAD_BYTES, kernel.size));
  kernel.readInto(head, 0);
  return parseBzImageHeader(head, kernel.size);
}

export interface BootSource {
  kernel: BootFile;
  initrd?: BootFile | undefined;
  cmdline: string;
  cpus: number;
  acpi?: boolean;
  /** AML Device objects for the DSDT (virtio-mmio slots), from the device manager */
  acpiDevices?: number[][] | undefined;
}

export interface LoadedKernel {
  entry: number;
  image: BzImageHeader;
  initrd?: { addr: number; size: number } | undefined;
  rsdpAddr?: number | undefined;
}

export function loadLinux(mem: GuestMemory, src: BootSource): LoadedKernel {
  const image = readKernelHeader(src.kernel);
  const lowEnd = mem.lowMemEnd;
  const kernelEnd = KERNEL_LOAD_ADDR + Math.max(image.payloadSize, image.initSize);
  if (kernelEnd > lowEnd) throw new KernelImageError(`kernel needs ${kernelEnd} bytes of low memory, guest has ${lowEnd}`);
  // through GuestMemory's bounds check: slice() refuses a range outside guest RAM
  src.kernel.readInto(mem.slice(GA(KERNEL_LOAD_ADDR), image.payloadSize), image.setupSize);

  const cmd = Buffer.from(src.cmdline + '\0', 'utf8');
  const cmdMax = Math.min(CMDLINE_MAX, image.cmdlineSize ? image.cmdlineSize + 1 : 256);
  if (cmd.length > cmdMax) throw new KernelImageError(`kernel command line too long (${cmd.length - 1} > ${cmdMax - 1} bytes)`);
  mem.fill(GA(CMDLINE_ADDR), CMDLINE_MAX);
  mem.write(GA(CMDLINE_ADDR), cmd);

  let initrd: { addr: number; size: number } | undefined;
  if (src.initrd && src.initrd.size > 0) {
    const top = Math.min(lowEnd, image.initrdAddrMax + 1);
    const addr = Math.floor((top - src.initrd.size) / 4096) * 4096;
    if (addr < kernelEnd) throw new KernelImageError(`initrd (${src.initrd.size} bytes) does not fit in guest memory`);
    src.initrd.readInto(mem.slice(GA(addr), src.initrd.size), 0);
    initrd = { addr, size: src.initrd.size };
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
