// The snapshot manifest: what a restore depends on (VMM and format version, the host CPU vendor
// and the CPUID the guest sees, the memory layout and its files, the devices, the machine
// config). It is the state file's first section, JSON. parseManifest() validates it as hostile
// input (every field typed and bounded, memory file names confined to the snapshot directory);
// checkCompatible() compares it with the host and VM a restore would use and lists every
// mismatch at once, before anything is created.
import { createHash } from 'node:crypto';
import type { CpuidEntry } from '../kvm/kvm.js';

export interface MemoryRegionRef {
  /** guest-physical address */
  gpa: number;
  size: number;
  /** the region's memory file, a plain name inside the snapshot directory */
  file: string;
}

export interface DeviceRef {
  /** stable id (the -device id=, or the VMM's own name for built-in devices) */
  id: string;
  /** device model, e.g. virtio-blk-pci, serial, ged */
  kind: string;
}

export interface MachineConfig {
  vcpus: number;
  memoryBytes: number;
  /** anything else the restore needs to rebuild the same machine (kernel cmdline, features...) */
  [k: string]: unknown;
}

export interface SnapshotManifest {
  formatVersion: number;
  vmmVersion: string;
  /** ISO 8601 */
  createdAt: string;
  /** CPUID leaf 0 vendor of the host that saved: GenuineIntel, AuthenticAMD, ... */
  cpuVendor: string;
  /**
   * the guest-visible CPUID of vCPU 0 as the VMM configured it (what it passed to KVM_SET_CPUID2),
   * with its hash (cpuidHash) for quick comparison. Not KVM_GET_CPUID2's copy: KVM updates bits of
   * that at run time (OSXSAVE from CR4, the XSAVE size from XCR0, the APIC bit), so it would not
   * match what a restoring host computes. The exact per-vCPU entries are in the vCPU sections.
   */
  cpuid: { sha256: string; entries: CpuidEntry[] };
  /** memory was MAP_SHARED (mem-share=on / a shared -mem-path): a restore must copy, not map CoW */
  memory: { shared: boolean; regions: MemoryRegionRef[] };
  devices: DeviceRef[];
  machine: MachineConfig;
}

export class ManifestError extends Error {
  constructor(msg: string) {
    super(msg);
    this.name = 'ManifestError';
  }
}

const MAX_REGIONS = 64;
const MAX_DEVICES = 256;
const MAX_VCPUS = 256;
const MAX_CPUID = 256;
const MAX_STRING = 256;

/** The CPU vendor string from CPUID leaf 0 (EBX, EDX, ECX), or '' when there is no leaf 0. */
export function cpuVendor(cpuid: ReadonlyArray<CpuidEntry>): string {
  const l0 = cpuid.find((e) => e.function === 0 && e.index === 0);
  if (!l0) return '';
  const b = Buffer.alloc(12);
  b.writeUInt32LE(l0.ebx >>> 0, 0);
  b.writeUInt32LE(l0.edx >>> 0, 4);
  b.writeUInt32LE(l0.ecx >>> 0, 8);
  return b.toString('latin1');
}

const key = (e: CpuidEntry): string => `0x${(e.function >>> 0).toString(16)}.${e.index >>> 0}`;
const sortCpuid = (c: ReadonlyArray<CpuidEntry>): CpuidEntry[] =>
  [...c].sort((a, b) => (a.function - b.function) || (a.index - b.index));

/** SHA-256 over the entries sorted by (function, index), each as 7 u32 LE: independent of KVM's order. */
export function cpuidHash(cpuid: ReadonlyArray<CpuidEntry>): string {
  const h = createHash('sha256');
  for (const e of sortCpuid(cpuid)) {
    const b = Buffer.alloc(28);
    [e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx].forEach((v, i) => b.writeUInt32LE(v >>> 0, i * 4));
    h.update(b);
  }
  return h.digest('hex');
}

// --- validation -------------------------------------------------------------------------------

type Obj = Record<string, unknown>;
const isObj = (v: unknown): v is Obj => typeof v === 'object' && v !== null && !Array.isArray(v);
const bad = (path: string, what: string): never => {
  throw new ManifestError(`manifest ${path}: ${what}`);
};

function obj(v: unknown, path: string, allowed?: readonly string[]): Obj {
  if (!isObj(v)) return bad(path, 'expected an object');
  if (allowed) for (const k of Object.keys(v)) if (!allowed.includes(k)) bad(`${path}.${k}`, 'unknown field');
  return v;
}
function str(v: unknown, path: string, max = MAX_STRING): string {
  if (typeof v !== 'string') return bad(path, 'expected a string');
  if (v.length === 0 || v.length > max) return bad(path, `length ${v.length}, expected 1 to ${max}`);
  return v;
}
function int(v: unknown, path: string, min: number, max: number): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min || v > max) return bad(path, `expected an integer from ${min} to ${max}, got ${JSON.stringify(v)}`);
  return v;
}
function arr(v: unknown, path: string, max: number): unknown[] {
  if (!Array.isArray(v)) return bad(path, 'expected an array');
  if (v.length > max) return bad(path, `${v.length} entries, at most ${max}`);
  return v;
}
const U32 = 0xffffffff;

/** A memory file name: one path component, no traversal, no NUL, no hidden-file tricks. */
function fileName(v: unknown, path: string): string {
  const s = str(v, path, 128);
  if (!/^[A-Za-z0-9][A-Za-z0-9._-]*$/.test(s)) bad(path, `${JSON.stringify(s)} is not a plain file name`);
  return s;
}

/** Parses and validates the manifest section. */
export function parseManifest(json: Buffer | string): SnapshotManifest {
  let raw: unknown;
  try {
    raw = JSON.parse(typeof json === 'string' ? json : json.toString('utf8'));
  } catch (e) {
    throw new ManifestError(`manifest is not JSON: ${(e as Error).message}`);
  }
  const m = obj(raw, '', ['formatVersion', 'vmmVersion', 'createdAt', 'cpuVendor', 'cpuid', 'memory', 'devices', 'machine']);
  const formatVersion = int(m.formatVersion, '.formatVersion', 1, U32);
  const vmmVersion = str(m.vmmVersion, '.vmmVersion', 64);
  const createdAt = str(m.createdAt, '.createdAt', 64);
  if (Number.isNaN(Date.parse(createdAt))) bad('.createdAt', 'not a date');
  const vendor = str(m.cpuVendor, '.cpuVendor', 12);
  const c = obj(m.cpuid, '.cpuid', ['sha256', 'entries']);
  const sha = str(c.sha256, '.cpuid.sha256', 64);
  const entries = arr(c.entries, '.cpuid.entries', MAX_CPUID).map((e, i): CpuidEntry => {
    const p = `.cpuid.entries[${i}]`;
    const o = obj(e, p, ['function', 'index', 'flags', 'eax', 'ebx', 'ecx', 'edx']);
    return {
      function: int(o.function, `${p}.function`, 0, U32), index: int(o.index, `${p}.index`, 0, U32),
      flags: int(o.flags, `${p}.flags`, 0, U32), eax: int(o.eax, `${p}.eax`, 0, U32), ebx: int(o.ebx, `${p}.ebx`, 0, U32),
      ecx: int(o.ecx, `${p}.ecx`, 0, U32), edx: int(o.edx, `${p}.edx`, 0, U32),
    };
  });
  if (entries.length === 0) bad('.cpuid.entries', 'empty');
  if (cpuidHash(entries) !== sha) bad('.cpuid.sha256', 'does not match the entries');
  const mem = obj(m.memory, '.memory', ['shared', 'regions']);
  if (typeof mem.shared !== 'boolean') bad('.memory.shared', 'expected a boolean');
  const regions = arr(mem.regions, '.memory.regions', MAX_REGIONS).map((r, i): MemoryRegionRef => {
    const p = `.memory.regions[${i}]`;
    const o = obj(r, p, ['gpa', 'size', 'file']);
    return { gpa: int(o.gpa, `${p}.gpa`, 0, Number.MAX_SAFE_INTEGER), size: int(o.size, `${p}.size`, 1, Number.MAX_SAFE_INTEGER), file: fileName(o.file, `${p}.file`) };
  });
  if (regions.length === 0) bad('.memory.regions', 'empty');
  const sorted = [...regions].sort((a, b) => a.gpa - b.gpa);
  sorted.forEach((r, i) => {
    const next = sorted[i + 1];
    if (next && r.gpa + r.size > next.gpa) bad('.memory.regions', `0x${r.gpa.toString(16)}+0x${r.size.toString(16)} overlaps 0x${next.gpa.toString(16)}`);
  });
  if (new Set(regions.map((r) => r.file)).size !== regions.length) bad('.memory.regions', 'two regions name the same file');
  const devices = arr(m.devices, '.devices', MAX_DEVICES).map((d, i): DeviceRef => {
    const p = `.devices[${i}]`;
    const o = obj(d, p, ['id', 'kind']);
    return { id: str(o.id, `${p}.id`, 128), kind: str(o.kind, `${p}.kind`, 64) };
  });
  if (new Set(devices.map((d) => d.id)).size !== devices.length) bad('.devices', 'duplicate device id');
  const mc = obj(m.machine, '.machine');
  const machine: MachineConfig = {
    ...mc,
    vcpus: int(mc.vcpus, '.machine.vcpus', 1, MAX_VCPUS),
    memoryBytes: int(mc.memoryBytes, '.machine.memoryBytes', 1, Number.MAX_SAFE_INTEGER),
  };
  const sum = regions.reduce((n, r) => n + r.size, 0);
  if (sum !== machine.memoryBytes) bad('.machine.memoryBytes', `${machine.memoryBytes}, but the regions hold ${sum}`);
  return { formatVersion, vmmVersion, createdAt, cpuVendor: vendor, cpuid: { sha256: sha, entries }, memory: { shared: mem.shared as boolean, regions }, devices, machine };
}

/** Builds a manifest (the hash from the entries) and checks it as the reader will. */
export function makeManifest(m: Omit<SnapshotManifest, 'cpuid' | 'createdAt'> & { cpuid: CpuidEntry[]; createdAt?: string }): SnapshotManifest {
  // registers built with JS bit operators (vmm/boot/cpuid.ts) can be negative int32s: store them as u32
  const u32 = (e: CpuidEntry): CpuidEntry => ({
    function: e.function >>> 0, index: e.index >>> 0, flags: e.flags >>> 0, eax: e.eax >>> 0, ebx: e.ebx >>> 0, ecx: e.ecx >>> 0, edx: e.edx >>> 0,
  });
  const entries = sortCpuid(m.cpuid.map(u32));
  const out: SnapshotManifest = { ...m, createdAt: m.createdAt ?? new Date().toISOString(), cpuid: { sha256: cpuidHash(entries), entries } };
  return parseManifest(JSON.stringify(out));
}

// --- compatibility ----------------------------------------------------------------------------

/** What a restore on this host would use. */
export interface HostDescription {
  vmmVersion: string;
  cpuVendor: string;
  /** the guest-visible CPUID vCPU 0 would get on this host with the snapshot's machine config */
  cpuid: ReadonlyArray<CpuidEntry>;
  memory: ReadonlyArray<{ gpa: number; size: number }>;
  devices: ReadonlyArray<DeviceRef>;
  vcpus: number;
}

export class CompatibilityError extends Error {
  constructor(readonly mismatches: string[]) {
    super(`snapshot cannot be restored here:\n- ${mismatches.join('\n- ')}`);
    this.name = 'CompatibilityError';
  }
}

const MAX_LISTED = 8;
/** addresses and sizes go above 32 bits: no `>>> 0` here */
const hex = (n: number): string => `0x${n.toString(16)}`;
/** CPUID registers may arrive as negative int32s (JS bit operators) */
const hex32 = (n: number): string => `0x${(n >>> 0).toString(16)}`;
function capped(lines: string[]): string[] {
  return lines.length > MAX_LISTED ? [...lines.slice(0, MAX_LISTED), `... and ${lines.length - MAX_LISTED} more`] : lines;
}

/** Every way the CPUID differs, by leaf and register (the guest would see features change under it). */
export function cpuidDifferences(saved: ReadonlyArray<CpuidEntry>, host: ReadonlyArray<CpuidEntry>): string[] {
  const a = new Map(saved.map((e) => [key(e), e]));
  const b = new Map(host.map((e) => [key(e), e]));
  const out: string[] = [];
  for (const [k, e] of a) {
    const h = b.get(k);
    if (!h) { out.push(`CPUID leaf ${k} is missing on this host`); continue; }
    for (const r of ['eax', 'ebx', 'ecx', 'edx', 'flags'] as const) {
      if ((e[r] >>> 0) !== (h[r] >>> 0)) out.push(`CPUID leaf ${k} ${r}: snapshot ${hex32(e[r])}, host ${hex32(h[r])}`);
    }
  }
  for (const k of b.keys()) if (!a.has(k)) out.push(`CPUID leaf ${k} exists on this host, not in the snapshot`);
  return out;
}

/**
 * Compares the manifest with the host and VM a restore would use. Returns null when they match,
 * else an error listing every mismatch (vendor, CPUID, memory layout, devices, vCPUs, VMM version).
 */
export function checkCompatible(m: SnapshotManifest, host: HostDescription): CompatibilityError | null {
  const out: string[] = [];
  if (m.vmmVersion !== host.vmmVersion) out.push(`VMM version: snapshot ${m.vmmVersion}, this VMM ${host.vmmVersion}`);
  if (m.cpuVendor !== host.cpuVendor) out.push(`CPU vendor: snapshot ${m.cpuVendor}, host ${host.cpuVendor}`);
  if (m.cpuid.sha256 !== cpuidHash(host.cpuid)) {
    const diffs = cpuidDifferences(m.cpuid.entries, host.cpuid);
    out.push(...capped(diffs.length ? diffs : ['CPUID differs']));
  }
  if (m.machine.vcpus !== host.vcpus) out.push(`vCPUs: snapshot ${m.machine.vcpus}, VM ${host.vcpus}`);
  const saved = m.memory.regions.map((r) => `${hex(r.gpa)}+${hex(r.size)}`).join(', ');
  const here = host.memory.map((r) => `${hex(r.gpa)}+${hex(r.size)}`).join(', ');
  if (saved !== here) out.push(`memory layout: snapshot [${saved}], VM [${here}]`);
  const devs: string[] = [];
  const hostDevs = new Map(host.devices.map((d) => [d.id, d.kind]));
  for (const d of m.devices) {
    const k = hostDevs.get(d.id);
    if (k === undefined) devs.push(`device ${d.id} (${d.kind}) is not in the VM`);
    else if (k !== d.kind) devs.push(`device ${d.id}: snapshot ${d.kind}, VM ${k}`);
  }
  const savedIds = new Set(m.devices.map((d) => d.id));
  for (const d of host.devices) if (!savedIds.has(d.id)) devs.push(`device ${d.id} (${d.kind}) is not in the snapshot`);
  // same devices in another order would get each other's state (sections are by position)
  if (devs.length === 0 && m.devices.some((d, i) => host.devices[i]?.id !== d.id)) devs.push('devices are in a different order');
  out.push(...capped(devs));
  return out.length ? new CompatibilityError(out) : null;
}
