import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readdirSync, readFileSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildAcpiTables, buildDsdt, buildFadt, buildMadt } from './acpi.js';
import { pkgLength, eisaId } from './aml.js';
import { BP, buildBootParams } from './boot-params.js';
import { HDR, KernelImageError, parseBzImage, type BzImageHeader } from './bzimage.js';
import { byteSum } from './checksum.js';
import { filterCpuid } from './cpuid.js';
import { buildE820, E820_RAM, E820_RESERVED } from './e820.js';
import { BOOT_GDT, identityPageTables, segmentFromGdt } from './gdt.js';
import { ACPI_TABLES_ADDR, BIOS_END, MPTABLE_ADDR, PD_ADDR, PDPT_ADDR, PML4_ADDR } from './layout.js';
import { buildMpTable } from './mptable.js';
import { bytesBootFile, loadLinux, pathBootFile, readKernelHeader } from './loader.js';
import { GuestMemory, GuestAddress as GA, layoutRegions, MMIO_HOLE_START } from '../memory/guest-memory.js';

/** What readKernelHeader returns, from either parse (the header bytes as a plain Uint8Array). */
const headerOf = (h: BzImageHeader & { payload?: Uint8Array }): BzImageHeader => {
  const { payload: _payload, ...rest } = h;
  return { ...rest, header: Uint8Array.from(rest.header) };
};

/** A minimal synthetic bzImage: setup header + payload. */
function fakeBzImage(payload = 4096, opts: { version?: number; xload?: number; loadflags?: number } = {}): Uint8Array {
  const setupSects = 4;
  const f = new Uint8Array((setupSects + 1) * 512 + payload);
  const dv = new DataView(f.buffer);
  f[HDR.setupSects] = setupSects;
  dv.setUint32(HDR.syssize, payload / 16, true);
  dv.setUint16(HDR.bootFlag, 0xaa55, true);
  f[0x200] = 0xeb;
  f[0x201] = 0x6a; // header ends at 0x26c
  dv.setUint32(HDR.header, 0x53726448, true);
  dv.setUint16(HDR.version, opts.version ?? 0x020f, true);
  f[HDR.loadflags] = opts.loadflags ?? 1;
  dv.setUint32(HDR.initrdAddrMax, 0x7fffffff, true);
  f[HDR.relocatableKernel] = 1;
  dv.setUint16(HDR.xloadflags, opts.xload ?? 1, true);
  dv.setUint32(HDR.cmdlineSize, 2047, true);
  dv.setUint32(HDR.initSize, 0x100000, true);
  f.fill(0xcc, (setupSects + 1) * 512);
  return f;
}

test('bzImage header validation', () => {
  const img = parseBzImage(fakeBzImage());
  assert.equal(img.setupSize, 5 * 512);
  assert.equal(img.payload.length, 4096);
  assert.equal(img.relocatable, true);
  assert.equal(img.header.length, 0x26c - 0x1f1);
  assert.throws(() => parseBzImage(new Uint8Array(100)), KernelImageError);
  assert.throws(() => parseBzImage(new Uint8Array(100_000)), /boot flag/);
  assert.throws(() => parseBzImage(fakeBzImage(4096, { version: 0x0205 })), /too old/);
  assert.throws(() => parseBzImage(fakeBzImage(4096, { xload: 0 })), /64-bit/);
  assert.throws(() => parseBzImage(fakeBzImage(4096, { loadflags: 0 })), /loaded high/);
  assert.throws(() => parseBzImage(fakeBzImage().subarray(0, 3000)), /truncated/);
});

const bootKernel = ((): string | undefined => {
  try {
    const f = readdirSync('/boot').filter((n) => n.startsWith('vmlinuz-')).sort().pop();
    return f ? `/boot/${f}` : undefined;
  } catch {
    return undefined;
  }
})();

test('the distribution kernel in /boot parses', { skip: bootKernel ? false : 'no /boot/vmlinuz-*' }, () => {
  const img = parseBzImage(readFileSync(bootKernel as string));
  const file = pathBootFile(bootKernel as string, 'kernel');
  assert.deepEqual(headerOf(readKernelHeader(file)), headerOf(img));
  file.close();
  assert.ok(img.version >= 0x020c);
  assert.ok(img.relocatable);
  assert.ok(img.payload.length > 1 << 20);
});

test('boot files by path: header from the first bytes, read straight into guest RAM, errors name the file', () => {
  const dir = mkdtempSync(join(tmpdir(), 'capsule-boot-'));
  try {
    const bytes = fakeBzImage(64 << 10);
    for (let i = 0x1000; i < bytes.length; i++) bytes[i] = (i * 7) & 0xff;
    const kernelPath = join(dir, 'vmlinuz');
    writeFileSync(kernelPath, bytes);
    const initrdBytes = randomBytes(100_003);
    const initrdPath = join(dir, 'initrd');
    writeFileSync(initrdPath, initrdBytes);
    const kernel = pathBootFile(kernelPath, 'kernel');
    assert.equal(kernel.size, bytes.length);
    assert.deepEqual(headerOf(readKernelHeader(kernel)), headerOf(parseBzImage(bytes)));
    const mem = GuestMemory.fromBuffers(64 << 20);
    const initrdFile = pathBootFile(initrdPath, 'initrd');
    const l = loadLinux(mem, { kernel, initrd: initrdFile, cmdline: '', cpus: 1 });
    initrdFile.close();
    const payload = parseBzImage(bytes).payload;
    assert.deepEqual(Buffer.from(mem.read(GA(0x100000), payload.length)), Buffer.from(payload));
    assert.deepEqual(Buffer.from(mem.read(GA(l.initrd!.addr), initrdBytes.length)), initrdBytes);
    // the open file is what boots: replacing the path later changes nothing
    rmSync(kernelPath);
    writeFileSync(kernelPath, 'not a kernel any more');
    mem.fill(GA(0x100000), payload.length);
    loadLinux(mem, { kernel, cmdline: '', cpus: 1 });
    assert.deepEqual(Buffer.from(mem.read(GA(0x100000), payload.length)), Buffer.from(payload));
    // errors: a missing file or a directory at once; a file truncated in place by boot time; not a bzImage
    assert.throws(() => pathBootFile(join(dir, 'nope'), 'initrd'), /cannot read initrd .*nope: ENOENT/);
    assert.throws(() => pathBootFile(dir, 'initrd'), /cannot read initrd .*: not a regular file/);
    writeFileSync(kernelPath, bytes);
    const shrunk = pathBootFile(kernelPath, 'kernel');
    truncateSync(kernelPath, 40_000);
    assert.throws(() => loadLinux(mem, { kernel: shrunk, cmdline: '', cpus: 1 }), /cannot read kernel .*vmlinuz: the file has 40000 bytes now \(\d+ when the VMM started\)/);
    const notKernel = pathBootFile(initrdPath, 'kernel');
    assert.throws(() => readKernelHeader(notKernel), /not a bzImage/);
    for (const f of [kernel, shrunk, notKernel]) f.close();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('e820 has the low RAM, reserved EBDA/BIOS area, RAM from 1 MiB, and the hole', () => {
  const e = buildE820(layoutRegions(256 << 20));
  assert.deepEqual(e.map((x) => [x.addr, x.type]), [[0, E820_RAM], [0x9fc00, E820_RESERVED], [0xe0000, E820_RESERVED], [0x100000, E820_RAM]]);
  assert.equal(e[3]?.size, (256 << 20) - 0x100000);
  const big = buildE820(layoutRegions(6 * 1024 ** 3));
  assert.equal(big[3]?.addr! + big[3]?.size!, MMIO_HOLE_START);
  assert.equal(big[4]?.addr, 0x1_0000_0000);
  assert.equal(big[4]?.size, 6 * 1024 ** 3 - MMIO_HOLE_START);
});

test('boot_params layout', () => {
  const image = parseBzImage(fakeBzImage());
  const bp = buildBootParams({ image, cmdlineAddr: 0x20000, initrd: { addr: 0x8000000, size: 1234 }, e820: buildE820(layoutRegions(256 << 20)), rsdpAddr: 0xe0000 });
  const dv = new DataView(bp.buffer);
  assert.equal(bp.length, 4096);
  assert.equal(dv.getUint16(0x1fe, true), 0xaa55);
  assert.equal(dv.getUint32(0x202, true), 0x53726448);
  assert.equal(bp[HDR.typeOfLoader], 0xff);
  assert.equal(bp[HDR.loadflags]! & 0x81, 0x81);
  assert.equal(dv.getUint32(HDR.cmdLinePtr, true), 0x20000);
  assert.equal(dv.getUint32(HDR.ramdiskImage, true), 0x8000000);
  assert.equal(dv.getUint32(HDR.ramdiskSize, true), 1234);
  assert.equal(dv.getBigUint64(BP.acpiRsdpAddr, true), 0xe0000n);
  assert.equal(bp[BP.e820Entries], 4);
  assert.equal(dv.getBigUint64(BP.e820Table + 3 * 20, true), 0x100000n);
  assert.equal(dv.getUint32(BP.e820Table + 3 * 20 + 16, true), E820_RAM);
});

test('GDT segments and identity page tables', () => {
  const code = segmentFromGdt(BOOT_GDT[1] as bigint, 1);
  assert.deepEqual([code.selector, code.l, code.db, code.present, code.type, code.s, code.g], [8, 1, 0, 1, 0xb, 1, 1]);
  assert.equal(code.limit, 0xffffffff);
  const data = segmentFromGdt(BOOT_GDT[2] as bigint, 2);
  assert.deepEqual([data.selector, data.l, data.db, data.type], [16, 0, 1, 3]);
  const tss = segmentFromGdt(BOOT_GDT[3] as bigint, 3);
  assert.deepEqual([tss.s, tss.type], [0, 0xb]);
  const pt = new Map(identityPageTables());
  const u64 = (a: number, i: number): bigint => new DataView((pt.get(a) as Uint8Array).buffer).getBigUint64(i * 8, true);
  assert.equal(u64(PML4_ADDR, 0), BigInt(PDPT_ADDR) | 3n);
  assert.equal(u64(PDPT_ADDR, 1), BigInt(PD_ADDR + 4096) | 3n);
  assert.equal(u64(PD_ADDR, 0), 0x83n);
  assert.equal(u64(PD_ADDR, 511), (511n << 21n) | 0x83n);
  assert.equal(u64(PD_ADDR + 3 * 4096, 511), (3n << 30n) | (511n << 21n) | 0x83n);
});

test('MP table checksums and contents', () => {
  for (const cpus of [1, 2, 254]) {
    const t = buildMpTable(MPTABLE_ADDR, cpus);
    assert.equal(byteSum(t.subarray(0, 16)), 0, 'floating pointer checksum');
    const len = new DataView(t.buffer).getUint16(16 + 4, true);
    assert.equal(byteSum(t.subarray(16, 16 + len)), 0, 'table checksum');
    assert.equal(new DataView(t.buffer).getUint16(16 + 34, true), cpus + 1 + 1 + 16 + 2);
    assert.equal(String.fromCharCode(...t.subarray(16, 20)), 'PCMP');
    assert.equal(t[16 + 44 + 3], 3, 'CPU 0 is enabled and the BSP');
  }
  assert.throws(() => buildMpTable(MPTABLE_ADDR, 0), RangeError);
});

test('ACPI tables: checksums, HW-reduced FADT, MADT per CPU, DSDT content', () => {
  const t = buildAcpiTables(ACPI_TABLES_ADDR, 2, BIOS_END);
  const [rsdp] = t.blobs;
  assert.equal(byteSum(rsdp![1].subarray(0, 20)), 0);
  assert.equal(byteSum(rsdp![1]), 0);
  for (const [, b] of t.blobs.slice(1)) assert.equal(byteSum(b), 0, String.fromCharCode(...b.subarray(0, 4)));
  const fadt = buildFadt(0x1234);
  assert.equal(fadt.length, 276);
  assert.ok(new DataView(fadt.buffer).getUint32(112, true) & (1 << 20), 'HW_REDUCED_ACPI');
  assert.equal(new DataView(fadt.buffer).getBigUint64(244 + 4, true), 0x600n, 'sleep control register');
  const madt = buildMadt(3);
  assert.equal(madt.length, 44 + 3 * 8 + 12 + 6);
  assert.equal(madt[44 + 8 + 3], 1, 'second CPU has APIC id 1');
  const dsdt = Buffer.from(buildDsdt());
  for (const s of ['_S5_', 'COM1', 'PWRB', 'GED0', 'ACPI0013', '_EVT']) assert.ok(dsdt.includes(s), s);
  assert.deepEqual(pkgLength(10), [11]);
  assert.deepEqual(pkgLength(100), [0x40 | (102 & 0xf), 102 >> 4]);
  assert.equal(eisaId('PNP0C0C'), 0x0c0cd041);
});

test('CPUID filtering: APIC ids, hypervisor bit, topology', () => {
  const supported = [
    { function: 0, index: 0, flags: 0, eax: 0xd, ebx: 0, ecx: 0, edx: 0 },
    { function: 1, index: 0, flags: 0, eax: 0x800f12, ebx: 0x00000800, ecx: (1 << 26) | (1 << 28), edx: 0 },
    { function: 0xb, index: 0, flags: 1, eax: 0, ebx: 0, ecx: 0, edx: 0 },
    { function: 0xb, index: 1, flags: 1, eax: 0, ebx: 0, ecx: 0, edx: 0 },
    { function: 0xd, index: 0, flags: 1, eax: 0x7, ebx: 0x240, ecx: 0x340, edx: 0 },
    { function: 0xd, index: 1, flags: 1, eax: 0xf, ebx: 0, ecx: 0, edx: 0 },
    { function: 0xd, index: 2, flags: 1, eax: 0x100, ebx: 0x240, ecx: 0, edx: 0 },
  ];
  const c1 = filterCpuid(supported, 1, 2);
  const l1 = c1.find((e) => e.function === 1)!;
  assert.equal(l1.ebx >>> 24, 1, 'APIC id');
  assert.equal((l1.ebx >> 16) & 0xff, 2, 'logical CPUs');
  assert.ok(l1.ecx & (1 << 31), 'hypervisor');
  assert.ok(l1.edx & (1 << 28), 'HTT with 2 CPUs');
  assert.deepEqual(c1.filter((e) => e.function === 0xb).map((e) => e.edx), [1, 1]);
  assert.equal(c1.find((e) => e.function === 0xb && e.index === 1)!.ebx, 2);
  // AVX present: YMM kept, size 832
  assert.equal(c1.find((e) => e.function === 0xd && e.index === 0)!.ecx, 0x340);
  assert.equal(c1.find((e) => e.function === 0xd && e.index === 1)!.eax & 8, 0, 'no XSAVES');
  // no AVX bit: YMM must not be advertised (the lab's TCG EPYC case)
  const noAvx = supported.map((e) => (e.function === 1 ? { ...e, ecx: 1 << 26 } : e));
  const c2 = filterCpuid(noAvx, 0, 1);
  const x0 = c2.find((e) => e.function === 0xd && e.index === 0)!;
  assert.deepEqual([x0.eax, x0.ecx], [3, 576]);
  assert.ok(!c2.some((e) => e.function === 0xd && e.index === 2));
  assert.equal(c2.find((e) => e.function === 1)!.edx & (1 << 28), 0, 'no HTT with 1 CPU');
});

test('loadLinux places kernel, cmdline, initrd and tables', () => {
  const mem = GuestMemory.fromBuffers(256 << 20);
  const kernel = bytesBootFile(fakeBzImage(8192));
  const initrd = bytesBootFile(new Uint8Array(10000).fill(0x5a));
  const l = loadLinux(mem, { kernel, initrd, cmdline: 'console=ttyS0', cpus: 2 });
  assert.equal(l.entry, 0x100200);
  assert.equal(mem.readU8(GA(0x100000)), 0xcc);
  assert.equal(Buffer.from(mem.read(GA(0x20000), 14)).toString(), 'console=ttyS0\0');
  assert.ok(l.initrd && l.initrd.addr % 4096 === 0 && l.initrd.addr + l.initrd.size <= 256 << 20);
  assert.equal(mem.readU8(GA(l.initrd!.addr)), 0x5a);
  assert.equal(Buffer.from(mem.read(GA(ACPI_TABLES_ADDR), 8)).toString(), 'RSD PTR ');
  assert.equal(Buffer.from(mem.read(GA(MPTABLE_ADDR), 4)).toString(), '_MP_');
  assert.throws(() => loadLinux(mem, { kernel, cmdline: 'x'.repeat(5000), cpus: 1 }), /command line too long/);
  assert.throws(() => loadLinux(mem, { kernel, initrd: { size: 300 << 20, readInto: () => assert.fail('read') }, cmdline: '', cpus: 1 }), /does not fit/);
});
