// The snapshot state file without KVM: round trips, and a hostile reader: every truncation point,
// byte flips, absurd lengths, unknown kinds, version mismatch, missing or extra sections; the
// manifest's validation and checkCompatible().
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import type { VcpuState, VmState } from '../cpu/state.js';
import type { CpuidEntry } from '../kvm/kvm.js';
import { OFFSETOF, SIZEOF } from '../kvm/layout.js';
import {
  CHECKSUM_SIZE, decodeContainer, encodeContainer, FORMAT_VERSION, HEADER_SIZE, SECTION, SnapshotFormatError, TOC_ENTRY_SIZE,
} from './format.js';
import { checkCompatible, CompatibilityError, cpuVendor, makeManifest, ManifestError, parseManifest, type HostDescription } from './manifest.js';
import { decodeSnapshot, encodeSnapshot, readSnapshotFile, writeSnapshotFile, type SnapshotState } from './state.js';

const sz = (n: string): number => SIZEOF[n] as number;
const AMD: CpuidEntry = { function: 0, index: 0, flags: 0, eax: 0x10, ebx: 0x68747541, ecx: 0x444d4163, edx: 0x69746e65 };
const LEAF1: CpuidEntry = { function: 1, index: 0, flags: 0, eax: 0x800f12, ebx: 0, ecx: 0x80000000, edx: 0x178bfbff };

function rnd(size: number, seed: number): Buffer {
  const b = Buffer.alloc(size);
  for (let i = 0; i < size; i++) b[i] = (seed * 31 + i * 7) & 0xff;
  return b;
}

function vcpuState(id: number, seed: number, xsaveSize = 4096): VcpuState {
  const xcrs = rnd(sz('kvm_xcrs'), seed);
  xcrs.writeUInt32LE(1, OFFSETOF['kvm_xcrs.nr_xcrs'] as number);
  xcrs.writeUInt32LE(0, OFFSETOF['kvm_xcrs.flags'] as number);
  const debugregs = rnd(sz('kvm_debugregs'), seed + 1);
  debugregs.writeBigUInt64LE(0n, OFFSETOF['kvm_debugregs.flags'] as number);
  const events = rnd(sz('kvm_vcpu_events'), seed + 2);
  events.writeUInt32LE(0x5, OFFSETOF['kvm_vcpu_events.flags'] as number);
  return {
    id, mpState: seed % 5, regs: rnd(sz('kvm_regs'), seed + 3), sregs: rnd(sz('kvm_sregs'), seed + 4), xsave: rnd(xsaveSize, seed + 5),
    xcrs, debugregs, lapic: rnd(sz('kvm_lapic_state'), seed + 6), events,
    cpuid: [AMD, { ...LEAF1, ebx: id << 24 }],
    msrs: [[0x10, BigInt(seed) * 1000n], [0xc0000080, 0xd01n], [0x6e0, 0xffffffffffffffffn]],
  };
}

function vmState(): VmState {
  const chip = (id: number): Buffer => {
    const b = rnd(sz('kvm_irqchip'), 40 + id);
    b.writeUInt32LE(id, 0);
    return b;
  };
  return { picMaster: chip(0), picSlave: chip(1), ioapic: chip(2), pit2: rnd(sz('kvm_pit_state2'), 50), clock: rnd(sz('kvm_clock_data'), 51) };
}

const DEVICES = [{ id: 'serial0', kind: 'serial' }, { id: 'blk0', kind: 'virtio-blk-mmio' }];
const REGIONS = [{ gpa: 0, size: 0xd000_0000, file: 'mem0' }, { gpa: 0x1_0000_0000, size: 0x3000_0000, file: 'mem1' }];

function snapshot(vcpus = 2, devices = DEVICES, deviceBytes?: Buffer[]): SnapshotState {
  const manifest = makeManifest({
    formatVersion: FORMAT_VERSION, vmmVersion: '0.1.0', cpuVendor: 'AuthenticAMD', cpuid: [AMD, LEAF1],
    memory: { shared: false, regions: REGIONS }, devices, machine: { vcpus, memoryBytes: 0x1_0000_0000, cmdline: 'console=ttyS0' },
    createdAt: '2026-12-02T04:00:00.000Z',
  });
  return {
    manifest,
    vcpus: Array.from({ length: vcpus }, (_, i) => vcpuState(i, i + 1)),
    vm: vmState(),
    devices: deviceBytes ?? devices.map((_, i) => rnd(10 + i * 100, 60 + i)),
  };
}

/** Recomputes the checksum after a deliberate edit, so the check after it is what is tested. */
function resign(b: Buffer): Buffer {
  createHash('sha256').update(b.subarray(0, b.length - CHECKSUM_SIZE)).digest().copy(b, b.length - CHECKSUM_SIZE);
  return b;
}

const formatError = (code: string, re?: RegExp) => (e: unknown): boolean => {
  assert.ok(e instanceof SnapshotFormatError, `not a SnapshotFormatError: ${String(e)}`);
  assert.equal(e.code, code, e.message);
  if (re) assert.match(e.message, re);
  return true;
};

test('round trip: what is written is what is read, for random states', () => {
  fc.assert(fc.property(
    fc.integer({ min: 1, max: 4 }), fc.integer({ min: 0, max: 3 }), fc.constantFrom(4096, 4352, 11008),
    fc.array(fc.uint8Array({ maxLength: 300 }), { minLength: 0, maxLength: 3 }),
    (nv, seed, xsave, devBytes) => {
      const devs = devBytes.map((_, i) => ({ id: `dev${i}`, kind: 'virtio-rng' }));
      const s = snapshot(nv, devs, devBytes.map((d) => Buffer.from(d)));
      s.vcpus = s.vcpus.map((v, i) => ({ ...vcpuState(i, i + seed, xsave), id: v.id }));
      const back = decodeSnapshot(encodeSnapshot(s));
      assert.deepEqual(back.manifest, s.manifest);
      assert.deepEqual(back.vm, s.vm);
      assert.deepEqual(back.devices, s.devices);
      assert.equal(back.vcpus.length, nv);
      back.vcpus.forEach((v, i) => assert.deepEqual(v, s.vcpus[i]));
    }), { numRuns: 40 });
});

test('every truncation point fails with a clear error (truncated, naming what is missing)', () => {
  const file = encodeSnapshot(snapshot(1, [DEVICES[0]!]));
  const count = file.readUInt32LE(16);
  const dataStart = HEADER_SIZE + count * TOC_ENTRY_SIZE;
  for (let len = 0; len < file.length; len++) {
    const short = file.subarray(0, len);
    if (len === 0) { assert.throws(() => decodeSnapshot(short), formatError('not-snapshot')); continue; }
    assert.throws(() => decodeSnapshot(short), formatError('truncated', /^snapshot truncated: /), `at ${len}`);
    if (len >= HEADER_SIZE && len < dataStart) assert.throws(() => decodeSnapshot(short), /missing: the section table from entry/);
    if (len >= dataStart && len < file.length - CHECKSUM_SIZE) assert.throws(() => decodeSnapshot(short), /missing: .*(section|the end of section) (manifest|vcpu0\.|vm\.|device0)/);
  }
  const at = file.length - CHECKSUM_SIZE - 5; // inside the last section, device0's 10 bytes
  assert.throws(() => decodeSnapshot(file.subarray(0, at)), /missing: the end of section device0 \(5 bytes\), the checksum$/);
  assert.throws(() => decodeSnapshot(file.subarray(0, HEADER_SIZE + TOC_ENTRY_SIZE + 3)), /of \d+ bytes; missing: the section table from entry 1 of \d+/);
});

test('a byte flipped anywhere after the header fails the checksum; in the header, another clear error', () => {
  const file = encodeSnapshot(snapshot());
  fc.assert(fc.property(fc.integer({ min: 0, max: file.length - 1 }), fc.integer({ min: 1, max: 255 }), (pos, x) => {
    const b = Buffer.from(file);
    b[pos]! ^= x;
    if (pos >= HEADER_SIZE) assert.throws(() => decodeSnapshot(b), formatError('checksum', /checksum mismatch/));
    else assert.throws(() => decodeSnapshot(b), (e) => e instanceof SnapshotFormatError);
  }), { numRuns: 300 });
});

test('absurd lengths and counts are refused from the header/table, without allocating them', () => {
  const file = encodeSnapshot(snapshot(1, []));
  const before = process.memoryUsage().arrayBuffers;
  // a section claiming 2^60 bytes, checksum made valid: refused as running past the file
  const huge = Buffer.from(file);
  huge.writeBigUInt64LE(1n << 60n, HEADER_SIZE + 16);
  assert.throws(() => decodeSnapshot(resign(huge)), formatError('malformed', /section manifest: \d+ bytes run past the end of the file/));
  // total length 2^62 in the header: too large, before reading further
  const total = Buffer.from(file);
  total.writeBigUInt64LE(1n << 62n, 24);
  assert.throws(() => decodeSnapshot(total), formatError('too-large'));
  // a section count of 2^32-1
  const count = Buffer.from(file);
  count.writeUInt32LE(0xffffffff, 16);
  assert.throws(() => decodeSnapshot(count), formatError('malformed', /4294967295 sections, at most 4096/));
  // a per-kind limit: a regs section of 145 bytes, everything else consistent
  const fat = encodeContainer([
    { kind: SECTION.MANIFEST, index: 0, data: Buffer.from('{}') },
  ]);
  fat.writeUInt32LE(SECTION.VCPU_REGS, HEADER_SIZE);
  assert.throws(() => decodeContainer(resign(fat)), formatError('malformed', /vcpu0\.regs: 2 bytes, expected 144/));
  assert.throws(() => encodeContainer([{ kind: SECTION.VCPU_REGS, index: 0, data: Buffer.alloc(145) }]), /expected 144/);
  // nothing near those sizes was allocated
  assert.ok(process.memoryUsage().arrayBuffers - before < 64 * 1024 * 1024);
});

test('version mismatch names both versions; unknown kinds, duplicates, gaps and reserved bits are refused', () => {
  const file = encodeSnapshot(snapshot(1, []));
  const v2 = Buffer.from(file);
  v2.writeUInt32LE(2, 12);
  assert.throws(() => decodeSnapshot(v2), formatError('version', /format version 2, this VMM reads version 1/));
  const unknown = Buffer.from(file);
  unknown.writeUInt32LE(0x99, HEADER_SIZE + TOC_ENTRY_SIZE); // the second section's kind
  assert.throws(() => decodeSnapshot(resign(unknown)), formatError('malformed', /section 1: unknown kind 0x99/));
  const dup = Buffer.from(file);
  dup.writeUInt32LE(SECTION.VCPU_REGS, HEADER_SIZE + 2 * TOC_ENTRY_SIZE); // sregs (312 bytes) renamed regs: wrong size first
  assert.throws(() => decodeSnapshot(resign(dup)), /vcpu0\.regs: 312 bytes, expected 144/);
  const gap = Buffer.from(file);
  gap.writeBigUInt64LE(gap.readBigUInt64LE(HEADER_SIZE + TOC_ENTRY_SIZE + 8) + 1n, HEADER_SIZE + TOC_ENTRY_SIZE + 8);
  assert.throws(() => decodeSnapshot(resign(gap)), /sections are back to back/);
  const reserved = Buffer.from(file);
  reserved.writeUInt32LE(1, 20);
  assert.throws(() => decodeSnapshot(resign(reserved)), /reserved field is not 0/);
  const trailing = Buffer.concat([file, Buffer.alloc(1)]);
  assert.throws(() => decodeSnapshot(trailing), /1 bytes after its end/);
  assert.throws(() => decodeSnapshot(Buffer.from('hello world, not a snapshot at all')), formatError('not-snapshot'));
});

test('sections: a missing one, one for a vCPU or device the manifest lacks, and KVM-invalid state are named', () => {
  const s = snapshot(2);
  const sections = decodeContainer(encodeSnapshot(s));
  const without = sections.filter((x) => !(x.kind === SECTION.VCPU_XSAVE && x.index === 1));
  assert.throws(() => decodeSnapshot(encodeContainer(without)), /section vcpu1\.xsave is missing/);
  const extra = [...sections, { kind: SECTION.VCPU_REGS, index: 2, data: Buffer.alloc(144) }];
  assert.throws(() => decodeSnapshot(encodeContainer(extra)), /section vcpu2\.regs does not belong to this machine \(2 vCPUs, 2 devices\)/);
  const dev = [...sections, { kind: SECTION.DEVICE, index: 5, data: Buffer.alloc(1) }];
  assert.throws(() => decodeSnapshot(encodeContainer(dev)), /section device5 does not belong/);
  const noDev = sections.filter((x) => !(x.kind === SECTION.DEVICE && x.index === 1));
  assert.throws(() => decodeSnapshot(encodeContainer(noDev)), /section device1 is missing/);
  const badMp = sections.map((x) => (x.kind === SECTION.VCPU_MP_STATE && x.index === 0 ? { ...x, data: Buffer.from([9, 0, 0, 0]) } : x));
  assert.throws(() => decodeSnapshot(encodeContainer(badMp)), /vcpu0: unknown mp_state 9/);
  const swapped = sections.map((x) => (x.kind === SECTION.VM_IRQCHIP && x.index === 0 ? { ...x, data: s.vm.ioapic } : x));
  assert.throws(() => decodeSnapshot(encodeContainer(swapped)), /PIC master state names chip 2/);
  const reordered = [sections[1]!, sections[0]!, ...sections.slice(2)];
  assert.throws(() => decodeSnapshot(encodeContainer(reordered)), /first section is not the manifest/);
});

test('manifest: validated as hostile input', () => {
  const good = JSON.parse(JSON.stringify(snapshot().manifest)) as Record<string, unknown>;
  const bad = (edit: (m: any) => void, re: RegExp): void => {
    const m = JSON.parse(JSON.stringify(good));
    edit(m);
    assert.throws(() => parseManifest(JSON.stringify(m)), (e: Error) => e instanceof ManifestError && re.test(e.message), re.source);
  };
  assert.deepEqual(parseManifest(JSON.stringify(good)), good);
  bad((m) => { m.memory.regions[0].file = '../../etc/passwd'; }, /regions\[0\]\.file: .* is not a plain file name/);
  bad((m) => { m.memory.regions[1].file = '.hidden'; }, /not a plain file name/);
  bad((m) => { m.memory.regions[1].file = 'mem0'; }, /two regions name the same file/);
  bad((m) => { m.memory.regions[1].gpa = 0x1000; }, /overlaps/);
  bad((m) => { m.machine.memoryBytes = 1; }, /but the regions hold/);
  bad((m) => { m.cpuid.entries[1].edx ^= 1; }, /sha256: does not match the entries/);
  bad((m) => { m.cpuid.entries[0].eax = -1; }, /eax: expected an integer from 0 to 4294967295/);
  bad((m) => { m.machine.vcpus = 100000; }, /vcpus: expected an integer from 1 to 256/);
  bad((m) => { m.devices.push({ id: 'serial0', kind: 'x' }); }, /duplicate device id/);
  bad((m) => { m.extra = 1; }, /\.extra: unknown field/);
  bad((m) => { m.memory.regions = Array.from({ length: 65 }, (_, i) => ({ gpa: i, size: 1, file: `m${i}` })); }, /65 entries, at most 64/);
  assert.throws(() => parseManifest('{"formatVersion":'), /manifest is not JSON/);
  // through the file: a bad manifest inside a valid container is still refused
  const sections = decodeContainer(encodeSnapshot(snapshot()));
  const m = JSON.parse(sections[0]!.data.toString());
  m.memory.regions[0].file = '/abs';
  sections[0] = { ...sections[0]!, data: Buffer.from(JSON.stringify(m)) };
  assert.throws(() => decodeSnapshot(encodeContainer(sections)), ManifestError);
});

function host(): HostDescription {
  return {
    vmmVersion: '0.1.0', cpuVendor: 'AuthenticAMD', cpuid: [LEAF1, AMD], vcpus: 2,
    memory: REGIONS.map(({ gpa, size }) => ({ gpa, size })), devices: DEVICES,
  };
}

test('checkCompatible: null when everything matches; otherwise every mismatch listed', () => {
  const m = snapshot().manifest;
  assert.equal(cpuVendor([AMD]), 'AuthenticAMD');
  assert.equal(checkCompatible(m, host()), null, 'CPUID order does not matter');
  // int32 registers (JS bit operators) are the same CPUID as their u32 value
  const signed = makeManifest({ ...m, cpuid: [AMD, { ...LEAF1, ecx: LEAF1.ecx | 0 }] });
  assert.equal(signed.cpuid.entries[1]!.ecx, 0x80000000);
  assert.equal(checkCompatible(signed, { ...host(), cpuid: [AMD, { ...LEAF1, ecx: LEAF1.ecx | 0 }] }), null);
  const h: HostDescription = {
    ...host(), vmmVersion: '0.2.0', cpuVendor: 'GenuineIntel', vcpus: 4,
    cpuid: [AMD, { ...LEAF1, ecx: 0 }, { function: 7, index: 0, flags: 1, eax: 0, ebx: 1, ecx: 0, edx: 0 }],
    memory: [{ gpa: 0, size: 0x1000_0000 }],
    devices: [{ id: 'serial0', kind: 'pl011' }, { id: 'net0', kind: 'virtio-net' }],
  };
  const e = checkCompatible(m, h);
  assert.ok(e instanceof CompatibilityError);
  const want = [
    'VMM version: snapshot 0.1.0, this VMM 0.2.0',
    'CPU vendor: snapshot AuthenticAMD, host GenuineIntel',
    'CPUID leaf 0x1.0 ecx: snapshot 0x80000000, host 0x0',
    'CPUID leaf 0x7.0 exists on this host, not in the snapshot',
    'vCPUs: snapshot 2, VM 4',
    'memory layout: snapshot [0x0+0xd0000000, 0x100000000+0x30000000], VM [0x0+0x10000000]',
    'device serial0: snapshot serial, VM pl011',
    'device blk0 (virtio-blk-mmio) is not in the VM',
    'device net0 (virtio-net) is not in the snapshot',
  ];
  assert.deepEqual(e.mismatches, want);
  for (const line of want) assert.ok(e.message.includes(line));
  const reordered = checkCompatible(m, { ...host(), devices: [...DEVICES].reverse() });
  assert.deepEqual(reordered?.mismatches, ['devices are in a different order']);
});

test('state file on disk: atomic write, read back; a file above the limit refused from its size', () => {
  const dir = mkdtempSync(join(tmpdir(), 'snap-'));
  try {
    const path = join(dir, 'state');
    const s = snapshot();
    writeSnapshotFile(path, s);
    assert.deepEqual(readSnapshotFile(path).manifest, s.manifest);
    assert.throws(() => readSnapshotFile(path, { maxFileSize: 1000 }), formatError('too-large'));
    truncateSync(path, 5000);
    assert.throws(() => readSnapshotFile(path), formatError('truncated', /5000 of \d+ bytes; missing: the end of section vcpu0\.xsave \(\d+ bytes\), section vcpu0\.xcrs, .*, \d+ more sections, the checksum$/));
    writeFileSync(path, Buffer.alloc(0));
    assert.throws(() => readSnapshotFile(path), formatError('not-snapshot'));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
