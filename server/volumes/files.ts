// Volume and layer files on the host: sparse raw files, root's alone (0600), under the data
// directory (volumes/<id>.img, vms/<id>/layer.img). A jailed VMM reaches one only through a
// bind into its root and an ACL entry for its uid (access.ts); nothing else of it.
import { execFile } from 'node:child_process';
import { chmodSync, closeSync, ftruncateSync, mkdirSync, openSync, renameSync, rmSync, statSync, truncateSync } from 'node:fs';
import { join } from 'node:path';
import { which } from '../jail/host.js';

export const MiB = 1024 * 1024;

/** Sizes a client may ask for (docs/api.md): 1 MiB to 1 TiB. */
export const VOLUME_MIN_MIB = 1;
export const VOLUME_MAX_MIB = 1024 * 1024;

/** The writable layer of a VM whose image has a rootfs: sparse, 2 GiB. */
export const LAYER_FILE = 'layer.img';
export const LAYER_SIZE_BYTES = 2048 * MiB;

export function volumesDir(dataDir: string): string {
  return join(dataDir, 'volumes');
}

export function volumePath(dataDir: string, id: string): string {
  return join(volumesDir(dataDir), `${id}.img`);
}

export function ensureVolumesDir(dataDir: string): void {
  mkdirSync(volumesDir(dataDir), { recursive: true, mode: 0o700 });
  chmodSync(volumesDir(dataDir), 0o700);
}

/** A new sparse file of `bytes` (fails if it exists). */
export function createSparse(path: string, bytes: number): void {
  const fd = openSync(path, 'wx', 0o600);
  try {
    ftruncateSync(fd, bytes);
  } catch (e) {
    closeSync(fd);
    rmSync(path, { force: true });
    throw e;
  }
  closeSync(fd);
}

/**
 * A copy of `source` at `path`, holes kept (cp --sparse=always, a reflink where the filesystem
 * has them), then grown to `bytes` (a MiB multiple at least the source's size). Asynchronous:
 * a root filesystem is hundreds of MiB and the server must keep answering meanwhile. Written to
 * a temporary name first: a half copy never appears as the volume.
 */
export async function copySparse(source: string, path: string, bytes: number): Promise<void> {
  const tmp = `${path}.partial`;
  rmSync(tmp, { force: true });
  const cp = which('cp') ?? '/bin/cp';
  try {
    await new Promise<void>((resolve, reject) => {
      execFile(cp, ['--sparse=always', '--reflink=auto', '--', source, tmp], { timeout: 30 * 60_000 }, (err, _out, stderr) => {
        if (err) reject(new Error(`copy failed: ${stderr.toString().trim() || err.message}`));
        else resolve();
      });
    });
    chmodSync(tmp, 0o600);
    if (statSync(tmp).size < bytes) truncateSync(tmp, bytes);
    renameSync(tmp, path);
  } catch (e) {
    rmSync(tmp, { force: true });
    throw e;
  }
}

/** The size a copy of `source` gets: its size rounded up to a MiB. */
export function roundedSize(source: string): number {
  return Math.ceil(statSync(source).size / MiB) * MiB;
}
