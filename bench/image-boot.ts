// Boot to the ready marker, default image vs sandbox image (rootfs + overlay layer), straight
// under QEMU/TCG (-M pc, 1 vCPU, no server): guest uptime at the marker and wall time, median
// of N boots each, alternating. `node dist/bench/image-boot.js [N]`.
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildImage } from '../server/images/registry.js';
import { createWritableLayer } from '../server/images/layer.js';
import { QemuGuest } from '../server/images/qemu-guest.js';
import { isMain, median, printJson, round } from './util.js';

const READY = /CAPSULE_READY cpus=\d+ uptime=([\d.]+)/;

async function bootOnce(dir: string, layer: string | undefined): Promise<{ uptimeS: number; wallMs: number }> {
  const meta = JSON.parse(readFileSync(join(dir, 'image.json'), 'utf8')) as { kernel: string; initrd?: string; rootfs?: string; cmdline: string };
  const disks = meta.rootfs ? [{ file: join(dir, meta.rootfs), readOnly: true }, ...(layer ? [{ file: layer }] : [])] : [];
  const t0 = performance.now();
  const g = new QemuGuest({ kernel: join(dir, meta.kernel), ...(meta.initrd ? { initrd: join(dir, meta.initrd) } : {}), cmdline: meta.cmdline, disks, memoryMiB: 512 });
  try {
    const line = await g.waitFor(READY, 180_000);
    const wallMs = performance.now() - t0;
    return { uptimeS: Number(READY.exec(line)![1]), wallMs };
  } finally {
    g.kill();
    await g.exited;
  }
}

export async function benchImageBoot(opts: { runs?: number; images?: string } = {}) {
  const runs = opts.runs ?? 3;
  const images = opts.images ?? process.env.CAPSULE_TEST_IMAGES ?? '/tmp/capsule-test-images';
  const def = buildImage(images, 'default', 'ignore');
  const sbx = buildImage(images, 'sandbox', 'ignore');
  const work = mkdtempSync(join(tmpdir(), 'capsule-bench-'));
  const r = { default: [] as Array<{ uptimeS: number; wallMs: number }>, sandbox: [] as Array<{ uptimeS: number; wallMs: number }> };
  try {
    for (let i = 0; i < runs; i++) {
      r.default.push(await bootOnce(def, undefined));
      const layer = join(work, `layer-${i}`);
      createWritableLayer(layer, 1024 ** 3);
      r.sandbox.push(await bootOnce(sbx, layer));
    }
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
  const sum = (xs: Array<{ uptimeS: number; wallMs: number }>) => ({
    readyUptimeS: { median: round(median(xs.map((x) => x.uptimeS))), all: xs.map((x) => x.uptimeS) },
    readyWallMs: { median: round(median(xs.map((x) => x.wallMs))), all: xs.map((x) => round(x.wallMs)) },
  });
  return { bench: 'image-boot', accel: 'tcg', machine: 'pc', runs, default: sum(r.default), sandbox: sum(r.sandbox) };
}

if (isMain(import.meta.url)) printJson(await benchImageBoot({ runs: Number(process.argv[2] ?? 3) }));
