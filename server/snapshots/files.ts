// A snapshot's directory on the host: snapshots/<id>/ under the data directory, root's alone
// (0700; files 0600). It holds what the hypervisor wrote (saveSnapshot), the VM's writable layer
// as it was (layer.img, sparse) and the guest agent's secret (agent.token: the restored guest's
// agent holds the same one). Written under <id>.partial and renamed when complete, so a
// directory under its real name is always whole; the sizes recorded then are checked before
// every restore.
import { existsSync, mkdirSync, readdirSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import type { SnapshotFile } from '../db/snapshots.js';

export const SNAPSHOT_LAYER_FILE = 'layer.img';
export const SNAPSHOT_AGENT_TOKEN_FILE = 'agent.token';

export function snapshotsDir(dataDir: string): string {
  return join(dataDir, 'snapshots');
}

export function snapshotDir(dataDir: string, id: string): string {
  return join(snapshotsDir(dataDir), id);
}

/** The directory a snapshot is written into before it is complete. */
export function partialDir(dataDir: string, id: string): string {
  return `${snapshotDir(dataDir, id)}.partial`;
}

export function makePartialDir(dataDir: string, id: string): string {
  mkdirSync(snapshotsDir(dataDir), { recursive: true, mode: 0o700 });
  const dir = partialDir(dataDir, id);
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { mode: 0o700 });
  return dir;
}

/** The files in `dir` with their sizes, and the space they take (allocated blocks: layers are sparse). */
export function listFiles(dir: string): { files: SnapshotFile[]; allocatedBytes: number } {
  let allocatedBytes = 0;
  const files = readdirSync(dir).sort().map((name) => {
    const st = statSync(join(dir, name));
    allocatedBytes += st.blocks * 512;
    return { name, sizeBytes: st.size };
  });
  return { files, allocatedBytes };
}

/**
 * Why the snapshot's files cannot be restored (one missing, or not the size it was written
 * with: truncated or replaced), or undefined when they are whole. Checked before a VMM starts.
 */
export function damage(dir: string, files: readonly SnapshotFile[]): string | undefined {
  if (!existsSync(dir)) return 'its files are gone from the host';
  for (const f of files) {
    let size: number;
    try {
      size = statSync(join(dir, f.name)).size;
    } catch {
      return `its file ${f.name} is missing`;
    }
    if (size !== f.sizeBytes) return `its file ${f.name} is ${size} bytes, ${f.sizeBytes} when it was written (truncated or replaced)`;
  }
  return undefined;
}

/** Removes leftovers of snapshots whose writing was interrupted (a server killed meanwhile). */
export function removePartials(dataDir: string): string[] {
  const dir = snapshotsDir(dataDir);
  if (!existsSync(dir)) return [];
  const partial = readdirSync(dir).filter((n) => n.endsWith('.partial'));
  for (const n of partial) rmSync(join(dir, n), { recursive: true, force: true });
  return partial;
}
