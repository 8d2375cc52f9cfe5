// Guest images for the drive tests, derived from the default test image without touching it
// (scripts/build-image.sh belongs to the images work):
//   default  the default kernel and initramfs, plus virtio_pci when the initramfs lacks it:
//            QEMU runs `-M pc` under TCG, where drives, rng and balloon are virtio-*-pci
//            devices. The extra modules ride in a second cpio archive appended to the initramfs
//            (the kernel unpacks them in order, a later /lib/modules/load-order replacing the
//            first), so the image's /init loads them after the rest.
//   rootfs   the same, with a `rootfs` file (a known byte pattern, not a filesystem: the busybox
//            init ignores root=): VMs of it get that file read-only as vda and a layer as vdb.
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, renameSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ensureTestImage } from './harness.js';

export const ROOTFS_BYTES = 4 * 1024 * 1024;

/** A deterministic pattern: block i (512 bytes) starts with "capsule-rootfs-block-i" and is filled with i's low byte. */
export function rootfsPattern(): Buffer {
  const buf = Buffer.alloc(ROOTFS_BYTES);
  for (let i = 0; i < ROOTFS_BYTES / 512; i++) {
    buf.fill(i & 0xff, i * 512, (i + 1) * 512);
    buf.write(`capsule-rootfs-block-${i}`, i * 512);
  }
  return buf;
}

export const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');

const BUILD_PCI = `
set -euo pipefail
SRC=$1 OUT=$2 KVER=$3
W=$(mktemp -d); trap 'rm -rf "$W"' EXIT
mkdir -p "$W/lib/modules"
cd "$W"
gzip -dc "$SRC" | cpio -i --quiet --to-stdout lib/modules/load-order > lib/modules/load-order
for m in virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci; do
  f=$(modinfo -k "$KVER" -n "$m")
  case "$f" in
    *.ko.xz) xz -dc "$f" > "lib/modules/$m.ko" ;;
    *.ko.zst) zstd -dcq "$f" > "lib/modules/$m.ko" ;;
    *) cp "$f" "lib/modules/$m.ko" ;;
  esac
  echo "$m" >> lib/modules/load-order
done
cp "$SRC" "$OUT.tmp"
# The next archive starts 4-byte aligned (the kernel skips zero padding between archives).
pad=$(( (4 - $(stat -c %s "$OUT.tmp") % 4) % 4 )); head -c "$pad" /dev/zero >> "$OUT.tmp"
find lib | cpio -o -H newc --quiet | gzip -6 >> "$OUT.tmp"
mv "$OUT.tmp" "$OUT"
`;

function initramfsHas(path: string, module: string): boolean {
  const list = execFileSync('sh', ['-c', 'gzip -dc "$1" | cpio -t --quiet', 'sh', path], { encoding: 'utf8', maxBuffer: 64 << 20 });
  return list.split('\n').some((l) => l === `lib/modules/${module}.ko`);
}

/** Builds (once, cached next to the default test image) the images above; returns their images directory. */
export function ensureDriveTestImages(): string {
  const base = join(ensureTestImage(), 'default');
  const meta = JSON.parse(readFileSync(join(base, 'image.json'), 'utf8')) as { kernel: string; initrd: string; cmdline: string; readyMarker: string };
  const kernel = join(base, meta.kernel);
  const initrd = join(base, meta.initrd);
  const dir = `${ensureTestImage()}-drives`;
  const stamp = join(dir, 'built-from');
  const source = `${initrd} ${statSync(initrd).mtimeMs} v1`;
  if (existsSync(stamp) && readFileSync(stamp, 'utf8') === source) return dir;
  mkdirSync(join(dir, 'default'), { recursive: true });
  mkdirSync(join(dir, 'rootfs'), { recursive: true });
  let guestInitrd = initrd;
  if (!initramfsHas(initrd, 'virtio_pci')) {
    // build-image.sh names the kernel in the description ("Debian kernel KVER ..."); else the newest, as it picks.
    const kver = /kernel (\S+)/.exec(readFileSync(join(base, 'image.json'), 'utf8'))?.[1] ?? execFileSync('sh', ['-c', 'ls -1 /boot/vmlinuz-* | sed "s|.*/vmlinuz-||" | sort -V | tail -1'], { encoding: 'utf8' }).trim();
    guestInitrd = join(dir, 'initramfs-pci.cpio.gz');
    execFileSync('bash', ['-c', BUILD_PCI, 'build', initrd, guestInitrd, kver], { stdio: ['ignore', 'ignore', 'inherit'] });
  }
  const image = (name: string, extra: Record<string, string>) => JSON.stringify({
    name, description: `drive tests: ${name}`, kernel, initrd: guestInitrd, cmdline: meta.cmdline, readyMarker: meta.readyMarker, ...extra,
  }, null, 2);
  writeFileSync(join(dir, 'default', 'image.json'), image('default', {}));
  writeFileSync(join(dir, 'rootfs', 'rootfs.img.tmp'), rootfsPattern(), { mode: 0o644 });
  renameSync(join(dir, 'rootfs', 'rootfs.img.tmp'), join(dir, 'rootfs', 'rootfs.img'));
  writeFileSync(join(dir, 'rootfs', 'image.json'), image('rootfs', { rootfs: 'rootfs.img' }));
  writeFileSync(stamp, source);
  return dir;
}
