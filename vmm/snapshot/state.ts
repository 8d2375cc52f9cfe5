// The snapshot state file: manifest + every vCPU's VcpuState + the VM's VmState + each device's
// opaque state, in the container of format.ts. decodeSnapshot() refuses anything incomplete or
// inconsistent (a vCPU missing a section, a section for a vCPU or device the manifest does not
// have, a state KVM would refuse), naming it; guest memory lives in the memory files the manifest
// lists, not here.
import { closeSync, fstatSync, fsyncSync, openSync, readSync, renameSync, writeSync, constants as fsc } from 'node:fs';
import { validateVcpuState, validateVmState, type VcpuState, type VmState } from '../cpu/state.js';
import { decodeCpuid, encodeCpuid, type MsrEntry } from '../kvm/kvm.js';
import { decodeContainer, DEFAULT_MAX_FILE_SIZE, encodeContainer, FORMAT_VERSION, SECTION, sectionName, SnapshotFormatError, type DecodeOptions, type Section } from './format.js';
import { parseManifest, type SnapshotManifest } from './manifest.js';

export interface SnapshotState {
  manifest: SnapshotManifest;
  /** by vCPU id, 0..machine.vcpus-1 */
  vcpus: VcpuState[];
  vm: VmState;
  /** one per manifest.devices entry, same order: the device's own save() bytes */
  devices: Buffer[];
}

const VCPU_BUFFERS = [
  [SECTION.VCPU_REGS, 'regs'], [SECTION.VCPU_SREGS, 'sregs'], [SECTION.VCPU_XSAVE, 'xsave'], [SECTION.VCPU_XCRS, 'xcrs'],
  [SECTION.VCPU_LAPIC, 'lapic'], [SECTION.VCPU_EVENTS, 'events'], [SECTION.VCPU_DEBUGREGS, 'debugregs'],
] as const;

function encodeMsrEntries(msrs: ReadonlyArray<MsrEntry>): Buffer {
  const b = Buffer.alloc(16 * msrs.length);
  msrs.forEach(([i, v], n) => {
    b.writeUInt32LE(i >>> 0, n * 16);
    b.writeBigUInt64LE(BigInt.asUintN(64, v), n * 16 + 8);
  });
  return b;
}

/** Lays the state out: manifest, then each vCPU's sections, the VM's, the devices'. */
export function encodeSnapshot(s: SnapshotState): Buffer {
  if (s.manifest.formatVersion !== FORMAT_VERSION) throw new RangeError(`manifest says format ${s.manifest.formatVersion}, writing ${FORMAT_VERSION}`);
  if (s.vcpus.length !== s.manifest.machine.vcpus) throw new RangeError(`${s.vcpus.length} vCPU states for ${s.manifest.machine.vcpus} vCPUs`);
  if (s.devices.length !== s.manifest.devices.length) throw new RangeError(`${s.devices.length} device states for ${s.manifest.devices.length} devices`);
  const sections: Section[] = [{ kind: SECTION.MANIFEST, index: 0, data: Buffer.from(JSON.stringify(s.manifest)) }];
  s.vcpus.forEach((v, id) => {
    if (v.id !== id) throw new RangeError(`vCPU state ${id} is vcpu${v.id}`);
    validateVcpuState(v, v.xsave.length);
    for (const [kind, field] of VCPU_BUFFERS) sections.push({ kind, index: id, data: v[field] });
    const mp = Buffer.alloc(4);
    mp.writeUInt32LE(v.mpState >>> 0);
    sections.push({ kind: SECTION.VCPU_MP_STATE, index: id, data: mp });
    // entries only: the kvm_cpuid2 header (count, padding) is implied by the length
    sections.push({ kind: SECTION.VCPU_CPUID, index: id, data: encodeCpuid(v.cpuid).subarray(8) });
    sections.push({ kind: SECTION.VCPU_MSRS, index: id, data: encodeMsrEntries(v.msrs) });
  });
  validateVmState(s.vm);
  [s.vm.picMaster, s.vm.picSlave, s.vm.ioapic].forEach((data, index) => sections.push({ kind: SECTION.VM_IRQCHIP, index, data }));
  sections.push({ kind: SECTION.VM_PIT2, index: 0, data: s.vm.pit2 }, { kind: SECTION.VM_CLOCK, index: 0, data: s.vm.clock });
  s.devices.forEach((data, index) => sections.push({ kind: SECTION.DEVICE, index, data }));
  return encodeContainer(sections);
}

const malformed = (msg: string): never => {
  throw new SnapshotFormatError('malformed', msg);
};

/** Checks and decodes a state file's bytes; every failure is a SnapshotFormatError, ManifestError or VcpuStateError naming the problem. */
export function decodeSnapshot(file: Buffer, opts: DecodeOptions = {}): SnapshotState {
  const sections = decodeContainer(file, opts);
  const first = sections[0];
  if (!first || first.kind !== SECTION.MANIFEST) return malformed('the first section is not the manifest');
  const manifest = parseManifest(first.data);
  if (manifest.formatVersion !== FORMAT_VERSION) malformed(`manifest says format ${manifest.formatVersion}, the file is format ${FORMAT_VERSION}`);
  const byKey = new Map<string, Buffer>();
  for (const s of sections.slice(1)) {
    if (s.kind === SECTION.MANIFEST) malformed('a second manifest section');
    byKey.set(`${s.kind}/${s.index}`, s.data);
  }
  const take = (kind: number, index: number): Buffer => {
    const b = byKey.get(`${kind}/${index}`);
    if (!b) return malformed(`section ${sectionName(kind, index)} is missing`);
    byKey.delete(`${kind}/${index}`);
    return b;
  };
  const vcpus: VcpuState[] = [];
  for (let id = 0; id < manifest.machine.vcpus; id++) {
    const buf = Object.fromEntries(VCPU_BUFFERS.map(([kind, field]) => [field, take(kind, id)])) as Record<(typeof VCPU_BUFFERS)[number][1], Buffer>;
    const mpState = take(SECTION.VCPU_MP_STATE, id).readUInt32LE(0);
    const cpuidBytes = take(SECTION.VCPU_CPUID, id);
    const head = Buffer.alloc(8);
    head.writeUInt32LE(cpuidBytes.length / 40, 0);
    const cpuid = decodeCpuid(Buffer.concat([head, cpuidBytes]));
    const msrBytes = take(SECTION.VCPU_MSRS, id);
    const msrs: MsrEntry[] = [];
    for (let o = 0; o < msrBytes.length; o += 16) {
      if (msrBytes.readUInt32LE(o + 4) !== 0) malformed(`section ${sectionName(SECTION.VCPU_MSRS, id)}: reserved field of entry ${o / 16} is not 0`);
      msrs.push([msrBytes.readUInt32LE(o), msrBytes.readBigUInt64LE(o + 8)]);
    }
    const v: VcpuState = { id, mpState, cpuid, msrs, ...buf };
    validateVcpuState(v, v.xsave.length);
    vcpus.push(v);
  }
  const [picMaster, picSlave, ioapic] = [0, 1, 2].map((i) => take(SECTION.VM_IRQCHIP, i)) as [Buffer, Buffer, Buffer];
  const vm: VmState = { picMaster, picSlave, ioapic, pit2: take(SECTION.VM_PIT2, 0), clock: take(SECTION.VM_CLOCK, 0) };
  validateVmState(vm);
  const devices = manifest.devices.map((_, i) => take(SECTION.DEVICE, i));
  // a section the manifest has no place for: a vCPU or device beyond its counts
  const extra = [...byKey.keys()][0];
  if (extra !== undefined) {
    const [kind, index] = extra.split('/').map(Number) as [number, number];
    malformed(`section ${sectionName(kind, index)} does not belong to this machine (${manifest.machine.vcpus} vCPUs, ${manifest.devices.length} devices)`);
  }
  return { manifest, vcpus, vm, devices };
}

/**
 * Writes the state file whole or not at all: to PATH.tmp, fsync, then rename over PATH, so a
 * crash mid-write never leaves a truncated file under the real name.
 */
export function writeSnapshotFile(path: string, s: SnapshotState): void {
  const bytes = encodeSnapshot(s);
  const tmp = `${path}.tmp`;
  const fd = openSync(tmp, fsc.O_WRONLY | fsc.O_CREAT | fsc.O_TRUNC, 0o600);
  try {
    for (let off = 0; off < bytes.length;) off += writeSync(fd, bytes, off, bytes.length - off);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  renameSync(tmp, path);
}

/** Reads and decodes a state file; a file above maxFileSize is refused from its size alone, before reading. */
export function readSnapshotFile(path: string, opts: DecodeOptions = {}): SnapshotState {
  const max = opts.maxFileSize ?? DEFAULT_MAX_FILE_SIZE;
  const fd = openSync(path, fsc.O_RDONLY);
  try {
    const st = fstatSync(fd);
    if (!st.isFile()) throw new SnapshotFormatError('not-snapshot', `${path} is not a regular file`);
    if (st.size > max) throw new SnapshotFormatError('too-large', `${path}: ${st.size} bytes, above the limit of ${max}`);
    const b = Buffer.alloc(st.size);
    let off = 0;
    while (off < b.length) {
      const n = readSync(fd, b, off, b.length - off, off);
      if (n === 0) break; // shrank while reading: the decoder reports it as truncated
      off += n;
    }
    return decodeSnapshot(b.subarray(0, off), opts);
  } finally {
    closeSync(fd);
  }
}
