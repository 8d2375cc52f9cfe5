// virtio-balloon on real KVM with the default image (its initramfs loads virtio_balloon), seccomp
// on: the guest touches most of its free memory, QMP `balloon` asks for 256 MiB of a 512 MiB
// guest, query-balloon follows the driver to ~256 MiB, BALLOON_CHANGE arrives, and the VMM's
// RSS drops by at least 150 MiB (MADV_DONTNEED on the inflated pages); then the balloon deflates
// back to 512 MiB and the guest can use the memory again. Run by scripts/kvm-tests.sh.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { probeKvm } from '../../../lib/kvm-probe.js';
import { ConsoleClient, killAllVmms, QmpClient, startVmm, testImage, waitFor, waitForFile } from '../../testing/clients.js';

const BOOT_TIMEOUT = Number(process.env.CAPSULE_TEST_BOOT_TIMEOUT_MS ?? 240_000);
const MiB = 1 << 20;
const work = mkdtempSync(join(tmpdir(), 'capsule-balloon-test-'));
let img: Awaited<ReturnType<typeof testImage>>;

before(async () => {
  const p = probeKvm();
  assert.ok(p.available, `KVM is not usable here: ${p.reason}`);
  img = await testImage();
});
after(() => killAllVmms());

/** query-balloon's actual, at most twice a second (each query also asks the guest for stats). */
async function actualNow(q: QmpClient): Promise<number> {
  await new Promise((r) => setTimeout(r, 500));
  return ((await q.execute('query-balloon')) as { actual: number }).actual;
}

/** Resident memory of a process, in bytes. */
function rss(pid: number): number {
  const m = /^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  assert.ok(m, `no VmRSS for ${pid}`);
  return Number(m[1]) * 1024;
}

test('balloon: inflate to 256 MiB of 512 MiB gives the host back RSS, deflate returns it to the guest', { timeout: 900_000 }, async () => {
  const qmpPath = join(work, 'vm.qmp');
  const conPath = join(work, 'vm.console');
  const vmm = startVmm(['-kernel', img.kernel, '-initrd', img.initrd, '-append', img.cmdline, '-smp', '1', '-m', '512M',
    '-api-channel', `unix:${qmpPath}`, '-chardev', `id=console0,path=${conPath}`,
    '-balloon', 'deflate-on-oom=true'], { CAPSULE_LOG_LEVEL: 'info' });
  await waitForFile(qmpPath, 60_000);
  const con = await ConsoleClient.connect(conPath);
  const q = await QmpClient.connect(qmpPath);
  await con.waitFor(/CAPSULE_READY/, BOOT_TIMEOUT);
  await con.waitFor(/capsule# /, 60_000);
  const pid = vmm.child.pid as number;

  const bound = await con.run('ls /sys/bus/virtio/drivers/virtio_balloon/ | grep -c virtio');
  assert.equal(bound.out.trim(), '1', `virtio_balloon is not bound: ${bound.out}`);
  assert.deepEqual(await q.execute('query-balloon').then((r) => (r as { actual: number }).actual), 512 * MiB);

  // the guest touches most of its free memory (tmpfs), then frees it: host RSS it no longer uses
  const free = await con.run("awk '/MemFree/ {print int($2/1024)}' /proc/meminfo");
  const fillMiB = Math.min(400, Number(free.out.trim()) - 48);
  assert.ok(fillMiB >= 300, `guest has only ${free.out.trim()} MiB free`);
  const fill = await con.run(`dd if=/dev/zero of=/tmp/fill bs=1M count=${fillMiB} 2>&1; rm /tmp/fill; sync`, 180_000);
  assert.equal(fill.status, 0, fill.out);
  await new Promise((r) => setTimeout(r, 1000));
  const rssBefore = rss(pid);

  const t0 = Date.now();
  assert.deepEqual(await q.execute('balloon', { value: 256 * MiB }), {});
  const actual = await waitFor(async () => {
    const a = await actualNow(q);
    return Math.abs(a - 256 * MiB) <= 256 * MiB * 0.01 ? a : undefined;
  }, 300_000, 'query-balloon actual ≈ 256 MiB');
  const inflateMs = Date.now() - t0;
  const ev = await q.event('BALLOON_CHANGE', 5000);
  assert.equal(typeof (ev.data as { actual: number }).actual, 'number');
  await new Promise((r) => setTimeout(r, 1000));
  const rssAfter = rss(pid);
  const dropMiB = (rssBefore - rssAfter) / MiB;
  process.stderr.write(`balloon: actual ${actual / MiB} MiB after ${inflateMs} ms; VMM RSS ${Math.round(rssBefore / MiB)} → ` +
    `${Math.round(rssAfter / MiB)} MiB (−${dropMiB.toFixed(1)} MiB)\n`);
  assert.ok(dropMiB >= 150, `RSS dropped by only ${dropMiB.toFixed(1)} MiB`);

  // statistics the driver posted (QEMU's names)
  const qb = await q.execute('query-balloon') as { stats?: Record<string, number> };
  assert.ok((qb.stats?.['stat-total-memory'] ?? 0) > 0, JSON.stringify(qb));

  // deflate back to the full size; the guest can fill its memory again
  await q.execute('balloon', { value: 512 * MiB });
  await waitFor(async () => (await actualNow(q)) === 512 * MiB || undefined,
    300_000, 'query-balloon actual = 512 MiB');
  const refill = await con.run(`dd if=/dev/zero of=/tmp/fill bs=1M count=${fillMiB} 2>&1 | tail -1; rm /tmp/fill`, 180_000);
  assert.equal(refill.status, 0, refill.out);
  const rssRefilled = rss(pid);
  process.stderr.write(`balloon: after deflate and refill, VMM RSS ${Math.round(rssRefilled / MiB)} MiB\n`);

  // range errors name the range
  const bad = await q.call('balloon', { value: 1024 * MiB });
  assert.match(JSON.stringify(bad.error), /range 1-536870912/);

  con.type('poweroff\n');
  const exit = await vmm.exited;
  assert.equal(exit.code, 0, vmm.stderr);
  q.close();
  con.close();
});
