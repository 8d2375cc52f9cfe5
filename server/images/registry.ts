// Images live in $CAPSULE_IMAGES_DIR/<name>/ with an image.json; the server registers what
// it finds at start. The default image is built from Debian packages when it is missing.
import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { REPO_ROOT } from '../paths.js';
import { z } from 'zod';
import type { Logger } from 'pino';
import type { ImageStore } from '../db/images.js';

export const BUILD_IMAGE_SCRIPT = join(REPO_ROOT, 'scripts', 'build-image.sh');
/** The `sandbox` image: Debian on a read-only rootfs with a writable layer per VM (docs/images.md). */
export const BUILD_SANDBOX_SCRIPT = join(REPO_ROOT, 'scripts', 'build-sandbox-image.sh');

const ImageJson = z.object({
  name: z.string().min(1).max(128),
  description: z.string().default(''),
  kernel: z.string().min(1),
  initrd: z.string().min(1).optional(),
  /** An ext4 root filesystem (raw file): VMs get it read-only as vda, with a writable layer as vdb. */
  rootfs: z.string().min(1).optional(),
  cmdline: z.string().default('console=ttyS0'),
  readyMarker: z.string().optional(),
});

/** Builds the default image if its image.json is missing (the script itself caches). */
export function ensureDefaultImage(imagesDir: string, log: Logger): void {
  if (existsSync(join(imagesDir, 'default', 'image.json'))) return;
  log.info({ dir: join(imagesDir, 'default') }, 'building the default guest image');
  execFileSync('bash', [BUILD_IMAGE_SCRIPT, join(imagesDir, 'default')], { stdio: ['ignore', 'inherit', 'inherit'] });
}

/**
 * Builds (or finds up to date) an image by its builder script: `default` or `sandbox`. The
 * server itself builds only the default image at start; `npm start` (scripts/setup.sh) and the
 * test runner build both. The sandbox build needs root and the Debian mirror (~1-2 min once,
 * cached after).
 */
export function buildImage(imagesDir: string, name: 'default' | 'sandbox', stdio: 'inherit' | 'ignore' = 'inherit'): string {
  const dir = join(imagesDir, name);
  execFileSync('bash', [name === 'sandbox' ? BUILD_SANDBOX_SCRIPT : BUILD_IMAGE_SCRIPT, dir], { stdio: ['ignore', stdio, stdio] });
  return dir;
}

/** Registers every valid image directory; returns the names registered. */
export function registerImages(imagesDir: string, store: ImageStore, log: Logger): string[] {
  if (!existsSync(imagesDir)) return [];
  const names: string[] = [];
  for (const entry of readdirSync(imagesDir, { withFileTypes: true })) {
    if (!entry.isDirectory()) continue;
    const dir = join(imagesDir, entry.name);
    const file = join(dir, 'image.json');
    if (!existsSync(file)) continue;
    try {
      const meta = ImageJson.parse(JSON.parse(readFileSync(file, 'utf8')));
      const kernel = resolve(dir, meta.kernel);
      const initrd = meta.initrd === undefined ? undefined : resolve(dir, meta.initrd);
      const rootfs = meta.rootfs === undefined ? undefined : resolve(dir, meta.rootfs);
      for (const p of [kernel, initrd, rootfs]) if (p !== undefined && !existsSync(p)) throw new Error(`${p} is missing`);
      store.upsert({
        name: meta.name, description: meta.description, kernel, cmdline: meta.cmdline,
        ...(initrd ? { initrd } : {}), ...(rootfs ? { rootfs } : {}), ...(meta.readyMarker ? { readyMarker: meta.readyMarker } : {}),
      });
      names.push(meta.name);
    } catch (e) {
      log.warn({ file, err: (e as Error).message }, 'skipping invalid image');
    }
  }
  return names;
}
