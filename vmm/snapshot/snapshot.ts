// A snapshot of a whole machine, as files: `state` (manifest, vCPUs, VM, devices; state.ts) and
// one memory file per guest-memory region (memory-0, memory-1). The VMM opens none of them: the
// caller passes fds (QMP getfd, or -incoming file:DIR opening them before the seccomp filter), so
// a jailed, filtered VMM can write and load snapshots.
//
// Save: the machine must be paused; the device and vCPU state is read first (a device that cannot
// be saved refuses before any byte is written), then memory, then the state file last, so a state
// file that exists names memory files that are whole.
// Load: the state file is decoded and checked (format, checksum, every section), its manifest
// compared with this VMM (version, CPU vendor and CPUID, memory layout, devices, vCPUs), each
// memory file's size with its region, and only then is memory mapped and the machine built.
import { fstatSync, fsyncSync, readSync, writeSync } from 'node:fs';
import type { Machine } from '../machine.js';
import type { GuestMemory } from '../memory/guest-memory.js';
import { DEFAULT_MAX_FILE_SIZE, FORMAT_VERSION, SnapshotFormatError } from './format.js';
import { checkCompatible, cpuVendor, makeManifest, type MemoryRegionRef, type SnapshotManifest } from './manifest.js';
import { decodeSnapshot, encodeSnapshot } from './state.js';

/** The VMM version a snapshot records; a restore needs the same (device state layouts may change). */
export const VMM_SNAPSHOT_VERSION = 'capsule-vmm/1';
export const STATE_FILE = 'state';
export const memoryFileName = (i: number): string => `memory-${i}`;

/** The files a snapshot of this machine consists of, and the memory regions they hold. */
export function snapshotLayout(memory: GuestMemory): { state: string; memory: MemoryRegionRef[] } {
  return { state: STATE_FILE, memory: memory.regions.map((r, i) => ({ gpa: r.guestBase, size: r.size, file: memoryFileName(i) })) };
}

/** fds of a snapshot's files, by file name (state, memory-0, ...). */
export type SnapshotFds = ReadonlyMap<string, number>;

export interface SaveResult {
  files: string[];
  /** bytes of memory written (all-zero chunks are holes) */
  memoryWritten: number;
  ms: number;
}

export class SnapshotError extends Error {
  constructor(msg: string) {
    super(msg);
    this.name = 'SnapshotError';
  }
}

function fdFor(fds: SnapshotFds, name: string, what: string): number {
  const fd = fds.get(name);
  if (fd === undefined) throw new SnapshotError(`${what}: no file descriptor for '${name}' (pass one per file: ${[...fds.keys()].join(', ') || 'none given'})`);
  return fd;
}

/** Writes a paused machine's snapshot into the files behind `fds`. */
export function saveSnapshot(machine: Machine, memory: GuestMemory, fds: SnapshotFds): SaveResult {
  const t0 = performance.now();
  const layout = snapshotLayout(memory);
  const stateFd = fdFor(fds, layout.state, 'snapshot');
  const memFds = layout.memory.map((r) => fdFor(fds, r.file, 'snapshot'));
  // holes are skipped, not written: a file that already holds bytes would keep them there
  for (const [name, fd] of [[layout.state, stateFd], ...layout.memory.map((r, i) => [r.file, memFds[i]])] as Array<[string, number]>) {
    const size = fstatSync(fd).size;
    if (size !== 0) throw new SnapshotError(`snapshot: the file for '${name}' is not empty (${size} bytes): pass new, empty files`);
  }
  const state = machine.captureState();
  const cpuid = machine.configuredCpuid();
  const manifest: SnapshotManifest = makeManifest({
    formatVersion: FORMAT_VERSION, vmmVersion: VMM_SNAPSHOT_VERSION, cpuVendor: cpuVendor(cpuid), cpuid,
    memory: { shared: memory.shared, regions: layout.memory },
    devices: machine.devices.snapshotDevices(),
    machine: { vcpus: state.vcpus.length, memoryBytes: memory.totalSize },
  });
  let memoryWritten = 0;
  memFds.forEach((fd, i) => {
    memoryWritten += memory.saveRegion(i, fd).written;
    fsyncSync(fd);
  });
  const bytes = encodeSnapshot({ manifest, vcpus: state.vcpus, vm: state.vm, devices: state.devices });
  for (let off = 0; off < bytes.length;) off += writeSync(stateFd, bytes, off, bytes.length - off, off);
  fsyncSync(stateFd);
  return { files: [layout.state, ...layout.memory.map((r) => r.file)], memoryWritten, ms: performance.now() - t0 };
}

function readStateFile(fd: number): Buffer {
  const size = fstatSync(fd).size;
  if (size > DEFAULT_MAX_FILE_SIZE) throw new SnapshotFormatError('too-large', `state file: ${size} bytes, above the limit of ${DEFAULT_MAX_FILE_SIZE}`);
  const b = Buffer.alloc(size);
  let off = 0;
  while (off < size) {
    const n = readSync(fd, b, off, size - off, off);
    if (n === 0) break;
    off += n;
  }
  return b.subarray(0, off);
}

export interface LoadResult {
  /** how memory was loaded: mapped copy-on-write, or copied (shared memory) */
  memory: 'cow' | 'copy';
  manifest: SnapshotManifest;
  ms: number;
}

/**
 * Restores a snapshot into a machine that has not started (its devices built from the same
 * configuration): checks everything first, then loads memory and builds the machine, which ends
 * paused. Throws SnapshotFormatError, ManifestError, CompatibilityError or SnapshotError naming
 * what is wrong; on a throw before the build nothing of the snapshot was applied.
 */
export async function loadSnapshot(machine: Machine, memory: GuestMemory, fds: SnapshotFds, vcpus: number, beforeRun?: () => Promise<void>): Promise<LoadResult> {
  const t0 = performance.now();
  const snap = decodeSnapshot(readStateFile(fdFor(fds, STATE_FILE, 'restore')));
  const cpuid = machine.configuredCpuid();
  const layout = snapshotLayout(memory);
  const mismatch = checkCompatible(snap.manifest, {
    vmmVersion: VMM_SNAPSHOT_VERSION, cpuVendor: cpuVendor(cpuid), cpuid, vcpus,
    memory: layout.memory.map(({ gpa, size }) => ({ gpa, size })), devices: machine.devices.snapshotDevices(),
  });
  if (mismatch) throw mismatch;
  const memFds = snap.manifest.memory.regions.map((r, i) => {
    if (r.file !== memoryFileName(i)) throw new SnapshotError(`restore: region ${i}'s memory file is named '${r.file}', expected '${memoryFileName(i)}'`);
    const fd = fdFor(fds, r.file, 'restore');
    const size = fstatSync(fd).size;
    if (size !== r.size) throw new SnapshotError(`restore: memory file ${r.file} is ${size} bytes, the snapshot's region ${r.size} (truncated or replaced)`);
    return fd;
  });
  let mode: 'cow' | 'copy' = 'cow';
  memFds.forEach((fd, i) => {
    if (memory.loadRegion(i, fd).mode === 'copy') mode = 'copy';
  });
  await machine.restore({ vcpus: snap.vcpus, vm: snap.vm, devices: snap.devices }, beforeRun);
  return { memory: mode, manifest: snap.manifest, ms: performance.now() - t0 };
}
