// The snapshot state file's container: a versioned, checksummed list of named binary sections.
//
//   offset  size        field
//   0       12          magic "CAPSULE-SNAP"
//   12      4  u32 LE   format version (FORMAT_VERSION)
//   16      4  u32 LE   section count
//   20      4  u32 LE   reserved, 0
//   24      8  u64 LE   total file length, trailer included
//   32      24 x count  section table: u32 kind, u32 index, u64 offset, u64 length
//   ...                 section data, in table order, back to back
//   end-32  32          SHA-256 of every byte before it
//
// The reader treats the file as hostile: it checks, in this order, the magic, the version (a
// different version may lay the rest out differently, so it is named before anything else is
// read), the length against the header (a short file is reported as truncated, naming the
// sections that are missing), the checksum over everything, and only then the section table:
// every kind known, every length within the kind's limit, sections contiguous and inside the
// file, no (kind, index) twice. No length read from the file is used before it has been compared
// with the file's real size, so an absurd one is refused without allocating anything (sections
// are views into the file's buffer).
import { createHash } from 'node:crypto';

export const MAGIC = Buffer.from('CAPSULE-SNAP', 'latin1');
export const FORMAT_VERSION = 1;
export const HEADER_SIZE = 32;
export const TOC_ENTRY_SIZE = 24;
export const CHECKSUM_SIZE = 32;
/** 256 vCPUs x 10 sections, the VM's 5, 256 devices, the manifest: well inside */
export const MAX_SECTIONS = 4096;
/** default bound on the whole file (guest memory lives in separate files) */
export const DEFAULT_MAX_FILE_SIZE = 512 * 1024 * 1024;

/** Section kinds. The numbers are the file format: never reuse one. */
export const SECTION = {
  MANIFEST: 0x01,
  VCPU_REGS: 0x10,
  VCPU_SREGS: 0x11,
  VCPU_XSAVE: 0x12,
  VCPU_XCRS: 0x13,
  VCPU_LAPIC: 0x14,
  VCPU_MSRS: 0x15,
  VCPU_EVENTS: 0x16,
  VCPU_MP_STATE: 0x17,
  VCPU_DEBUGREGS: 0x18,
  VCPU_CPUID: 0x19,
  VM_IRQCHIP: 0x20,
  VM_PIT2: 0x21,
  VM_CLOCK: 0x22,
  DEVICE: 0x30,
} as const;
export type SectionKind = (typeof SECTION)[keyof typeof SECTION];

interface KindRule {
  name: string;
  /** the sizes a section of this kind may have */
  min: number;
  max: number;
  /** length must be a multiple of this */
  unit: number;
  /** index must be below this */
  maxIndex: number;
}

const MAX_VCPUS = 256;
const MAX_DEVICES = 256;
const exactly = (name: string, n: number, maxIndex = MAX_VCPUS): KindRule => ({ name, min: n, max: n, unit: 1, maxIndex });

/** Per-kind limits: sizes are the KVM structs' (vmm/kvm/layout.ts, checked against C). */
export const KIND_RULES: ReadonlyMap<number, KindRule> = new Map<number, KindRule>([
  [SECTION.MANIFEST, { name: 'manifest', min: 2, max: 1024 * 1024, unit: 1, maxIndex: 1 }],
  [SECTION.VCPU_REGS, exactly('regs', 144)],
  [SECTION.VCPU_SREGS, exactly('sregs', 312)],
  // 4096 (kvm_xsave) up to 64 KiB (KVM_CAP_XSAVE2 with every dynamic feature), u32 words
  [SECTION.VCPU_XSAVE, { name: 'xsave', min: 4096, max: 64 * 1024, unit: 4, maxIndex: MAX_VCPUS }],
  [SECTION.VCPU_XCRS, exactly('xcrs', 392)],
  [SECTION.VCPU_LAPIC, exactly('lapic', 1024)],
  // kvm_msr_entry (16 bytes) each, at most 4096
  [SECTION.VCPU_MSRS, { name: 'msrs', min: 0, max: 4096 * 16, unit: 16, maxIndex: MAX_VCPUS }],
  [SECTION.VCPU_EVENTS, exactly('events', 64)],
  [SECTION.VCPU_MP_STATE, exactly('mp_state', 4)],
  [SECTION.VCPU_DEBUGREGS, exactly('debugregs', 128)],
  // kvm_cpuid_entry2 (40 bytes) each, 1 to 256
  [SECTION.VCPU_CPUID, { name: 'cpuid', min: 40, max: 256 * 40, unit: 40, maxIndex: MAX_VCPUS }],
  // index: KVM_IRQCHIP_PIC_MASTER, PIC_SLAVE, IOAPIC
  [SECTION.VM_IRQCHIP, exactly('irqchip', 520, 3)],
  [SECTION.VM_PIT2, exactly('pit2', 112, 1)],
  [SECTION.VM_CLOCK, exactly('clock', 48, 1)],
  [SECTION.DEVICE, { name: 'device', min: 0, max: 16 * 1024 * 1024, unit: 1, maxIndex: MAX_DEVICES }],
]);

const VCPU_KINDS = new Set<number>([
  SECTION.VCPU_REGS, SECTION.VCPU_SREGS, SECTION.VCPU_XSAVE, SECTION.VCPU_XCRS, SECTION.VCPU_LAPIC, SECTION.VCPU_MSRS,
  SECTION.VCPU_EVENTS, SECTION.VCPU_MP_STATE, SECTION.VCPU_DEBUGREGS, SECTION.VCPU_CPUID,
]);
const IRQCHIP_NAMES = ['pic-master', 'pic-slave', 'ioapic'];

/** A section's name in messages: manifest, vcpu1.xsave, vm.irqchip(ioapic), device3, kind 0x99. */
export function sectionName(kind: number, index: number): string {
  const rule = KIND_RULES.get(kind);
  if (!rule) return `unknown section kind 0x${kind.toString(16)} (index ${index})`;
  if (VCPU_KINDS.has(kind)) return `vcpu${index}.${rule.name}`;
  if (kind === SECTION.VM_IRQCHIP) return `vm.irqchip(${IRQCHIP_NAMES[index] ?? index})`;
  if (kind === SECTION.VM_PIT2 || kind === SECTION.VM_CLOCK) return `vm.${rule.name}`;
  if (kind === SECTION.DEVICE) return `device${index}`;
  return rule.name;
}

export interface Section {
  kind: number;
  index: number;
  data: Buffer;
}

/** Any reason a state file is refused. `code` says which check failed. */
export class SnapshotFormatError extends Error {
  constructor(readonly code: 'not-snapshot' | 'version' | 'truncated' | 'too-large' | 'checksum' | 'malformed', msg: string) {
    super(msg);
    this.name = 'SnapshotFormatError';
  }
}

/** Lays sections out in the given order, with the header, table and checksum. */
export function encodeContainer(sections: ReadonlyArray<Section>, version = FORMAT_VERSION): Buffer {
  if (sections.length > MAX_SECTIONS) throw new RangeError(`${sections.length} sections, at most ${MAX_SECTIONS}`);
  const dataStart = HEADER_SIZE + TOC_ENTRY_SIZE * sections.length;
  const total = dataStart + sections.reduce((n, s) => n + s.data.length, 0) + CHECKSUM_SIZE;
  const b = Buffer.alloc(total);
  MAGIC.copy(b, 0);
  b.writeUInt32LE(version, 12);
  b.writeUInt32LE(sections.length, 16);
  b.writeBigUInt64LE(BigInt(total), 24);
  let off = dataStart;
  sections.forEach((s, i) => {
    const rule = KIND_RULES.get(s.kind);
    // the writer obeys the reader's rules: a file we write is a file we can read
    if (!rule) throw new RangeError(`unknown section kind 0x${s.kind.toString(16)}`);
    checkLength(rule, s.kind, s.index, s.data.length);
    const t = HEADER_SIZE + i * TOC_ENTRY_SIZE;
    b.writeUInt32LE(s.kind, t);
    b.writeUInt32LE(s.index, t + 4);
    b.writeBigUInt64LE(BigInt(off), t + 8);
    b.writeBigUInt64LE(BigInt(s.data.length), t + 16);
    s.data.copy(b, off);
    off += s.data.length;
  });
  createHash('sha256').update(b.subarray(0, total - CHECKSUM_SIZE)).digest().copy(b, total - CHECKSUM_SIZE);
  return b;
}

function checkLength(rule: KindRule, kind: number, index: number, len: number): void {
  const name = sectionName(kind, index);
  if (index >= rule.maxIndex) throw new SnapshotFormatError('malformed', `section ${name}: index ${index} out of range (below ${rule.maxIndex})`);
  if (len < rule.min || len > rule.max || len % rule.unit !== 0) {
    const want = rule.min === rule.max ? `${rule.min}` : `${rule.min} to ${rule.max}${rule.unit > 1 ? `, a multiple of ${rule.unit}` : ''}`;
    throw new SnapshotFormatError('malformed', `section ${name}: ${len} bytes, expected ${want}`);
  }
}

/** u64 from the file as a number, or Infinity when above 2^53 (then every bound check fails). */
function u64(b: Buffer, off: number): number {
  const v = b.readBigUInt64LE(off);
  return v > BigInt(Number.MAX_SAFE_INTEGER) ? Infinity : Number(v);
}

export interface DecodeOptions {
  maxFileSize?: number;
}

/** Checks and splits a state file (see the header for the order of the checks). */
export function decodeContainer(file: Buffer, opts: DecodeOptions = {}): Section[] {
  const maxFileSize = opts.maxFileSize ?? DEFAULT_MAX_FILE_SIZE;
  const magicPart = file.subarray(0, MAGIC.length);
  if (!MAGIC.subarray(0, magicPart.length).equals(magicPart) || file.length === 0) {
    throw new SnapshotFormatError('not-snapshot', 'not a capsule snapshot state file (no CAPSULE-SNAP magic)');
  }
  if (file.length < HEADER_SIZE) {
    throw new SnapshotFormatError('truncated', `snapshot truncated: ${file.length} bytes, the ${HEADER_SIZE}-byte header is incomplete`);
  }
  const version = file.readUInt32LE(12);
  if (version !== FORMAT_VERSION) {
    throw new SnapshotFormatError('version', `snapshot format version ${version}, this VMM reads version ${FORMAT_VERSION}`);
  }
  const count = file.readUInt32LE(16);
  const total = u64(file, 24);
  if (count > MAX_SECTIONS) throw new SnapshotFormatError('malformed', `snapshot header: ${count} sections, at most ${MAX_SECTIONS}`);
  if (total > maxFileSize) throw new SnapshotFormatError('too-large', `snapshot header: ${total} bytes, above the limit of ${maxFileSize}`);
  if (file.length < total) throw new SnapshotFormatError('truncated', truncationMessage(file, count, total));
  if (file.length > total) throw new SnapshotFormatError('malformed', `snapshot has ${file.length - total} bytes after its end (header says ${total})`);
  if (total < HEADER_SIZE + CHECKSUM_SIZE) throw new SnapshotFormatError('malformed', `snapshot header: length ${total} is below the minimum`);
  const body = file.subarray(0, total - CHECKSUM_SIZE);
  const sum = createHash('sha256').update(body).digest();
  if (!sum.equals(file.subarray(total - CHECKSUM_SIZE, total))) {
    throw new SnapshotFormatError('checksum', 'snapshot checksum mismatch: the state file is corrupt');
  }
  // the bytes are the writer's; the rest checks the writer followed the rules
  if (file.readUInt32LE(20) !== 0) throw new SnapshotFormatError('malformed', 'snapshot header: reserved field is not 0');
  const dataStart = HEADER_SIZE + count * TOC_ENTRY_SIZE;
  if (dataStart > body.length) throw new SnapshotFormatError('malformed', `snapshot section table (${count} entries) runs past the data`);
  const seen = new Set<string>();
  const out: Section[] = [];
  let expect = dataStart;
  for (let i = 0; i < count; i++) {
    const t = HEADER_SIZE + i * TOC_ENTRY_SIZE;
    const kind = file.readUInt32LE(t);
    const index = file.readUInt32LE(t + 4);
    const off = u64(file, t + 8);
    const len = u64(file, t + 16);
    const rule = KIND_RULES.get(kind);
    if (!rule) throw new SnapshotFormatError('malformed', `section ${i}: unknown kind 0x${kind.toString(16)}`);
    const name = sectionName(kind, index);
    if (off !== expect) throw new SnapshotFormatError('malformed', `section ${name} at offset ${off}, expected ${expect} (sections are back to back)`);
    if (len > body.length - off) throw new SnapshotFormatError('malformed', `section ${name}: ${file.readBigUInt64LE(t + 16)} bytes run past the end of the file`);
    checkLength(rule, kind, index, len);
    const key = `${kind}/${index}`;
    if (seen.has(key)) throw new SnapshotFormatError('malformed', `section ${name} appears twice`);
    seen.add(key);
    out.push({ kind, index, data: file.subarray(off, off + len) });
    expect = off + len;
  }
  if (expect !== body.length) throw new SnapshotFormatError('malformed', `${body.length - expect} bytes between the last section and the checksum`);
  return out;
}

/** "truncated: X of Y bytes; missing: ..." naming what the short file lacks, from its (unverified) table. */
function truncationMessage(file: Buffer, count: number, total: number): string {
  const head = `snapshot truncated: ${file.length} of ${total} bytes`;
  const tocEnd = HEADER_SIZE + count * TOC_ENTRY_SIZE;
  if (file.length < tocEnd) {
    const whole = Math.floor((file.length - HEADER_SIZE) / TOC_ENTRY_SIZE);
    return `${head}; missing: the section table from entry ${whole} of ${count}, all section data and the checksum`;
  }
  const missing: string[] = [];
  for (let i = 0; i < count; i++) {
    const t = HEADER_SIZE + i * TOC_ENTRY_SIZE;
    const name = sectionName(file.readUInt32LE(t), file.readUInt32LE(t + 4));
    const off = u64(file, t + 8);
    const end = off + u64(file, t + 16);
    if (end <= file.length) continue;
    missing.push(off < file.length ? `the end of section ${name} (${end - file.length} bytes)` : `section ${name}`);
  }
  const shown = missing.slice(0, 6);
  if (missing.length > shown.length) shown.push(`${missing.length - shown.length} more sections`);
  shown.push('the checksum');
  return `${head}; missing: ${shown.join(', ')}`;
}
