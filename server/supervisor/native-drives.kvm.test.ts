// Drives through the API on the native backend (capsule-vmm on real KVM, jailed with its seccomp
// filter as by default): the guest reads a volume the host wrote and writes back, a read-only
// volume refuses writes, rng works, a volume hot-plugged into a running VM is usable (passed to
// the jailed VMM as an fd, docs/vmm.md "Hot-replace") and its unplug brings DEVICE_DELETED to a
// WebSocket subscriber. Run by scripts/kvm-tests.sh.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { closeSync, openSync, readSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { TestServer, EventCollector, ConsoleCollector } from '../test/harness.js';
import { ensureDriveTestImages, rootfsPattern } from '../test/drive-images.js';
import { probeKvm } from '../../lib/kvm-probe.js';

const MiB = 1024 * 1024;
const BOOT_MS = 240_000;
let s: TestServer;
before(async () => {
  const kvm = probeKvm();
  assert.ok(kvm.available, `KVM is not usable here: ${kvm.reason}`);
  // the drive tests' images: default, and `rootfs` (a known byte pattern as its root filesystem)
  s = await TestServer.start({ env: { CAPSULE_STOP_TIMEOUT: '120', CAPSULE_IMAGES_DIR: ensureDriveTestImages(), CAPSULE_BUILD_IMAGE: '0' } });
});
after(async () => { await s?.stop(); });

const sha256 = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');
let tags = 0;
async function guest(cons: ConsoleCollector, cmd: string, timeoutMs = 90_000): Promise<string> {
  const tag = `N${++tags}`;
  cons.send(`X=$(${cmd} 2>&1); echo "<<${tag}"">$X<<"\n`);
  const re = new RegExp(`<<${tag}>([^]*?)<<`);
  await cons.waitFor(re, timeoutMs);
  return re.exec(cons.text)![1]!.trim();
}

async function volume(name: string, sizeMiB: number, content: Buffer): Promise<{ id: string; file: string }> {
  const r = await s.api('POST', '/v1/volumes', { name, sizeMiB });
  assert.equal(r.status, 201, JSON.stringify(r.body));
  const file = join(s.dataDir, 'volumes', `${r.body.id}.img`);
  const fd = openSync(file, 'r+');
  try { writeSync(fd, content, 0, content.length, 0); } finally { closeSync(fd); }
  return { id: r.body.id, file };
}

test('native: drives through the API, read-only, rng, hot-plug and DEVICE_DELETED', async () => {
  const data = randomBytes(4 * MiB);
  const ro = randomBytes(1 * MiB);
  const hot = randomBytes(2 * MiB);
  const vData = await volume('n-data', 4, data);
  await volume('n-ro', 1, ro);
  await volume('n-hot', 2, hot);
  const c = await s.api('POST', '/v1/vms', { name: 'native-drives', memoryMiB: 256, drives: [{ volume: 'n-data' }, { volume: 'n-ro', readOnly: true, iops: 20 }] });
  assert.equal(c.status, 201, JSON.stringify(c.body));
  assert.equal(c.body.hypervisor, 'native');
  const id: string = c.body.id;
  const events = new EventCollector(s.ws(`/v1/vms/${id}/events`));
  await events.opened;
  const started = await s.api('POST', `/v1/vms/${id}/start`);
  assert.equal(started.status, 200, JSON.stringify(started.body) + s.output.slice(-2000));
  const cons = new ConsoleCollector(s.ws(`/v1/vms/${id}/console`));
  await cons.opened;
  await cons.waitFor('CAPSULE_READY', BOOT_MS);

  assert.equal(await guest(cons, 'sha256sum /dev/vda | cut -d" " -f1'), sha256(data));
  assert.equal(await guest(cons, 'sha256sum /dev/vdb | cut -d" " -f1'), sha256(ro));
  assert.equal(await guest(cons, 'cat /sys/block/vdb/ro'), '1');
  assert.match(await guest(cons, 'dd if=/dev/zero of=/dev/vdb bs=512 count=1 conv=fsync; echo status=$?'), /status=[1-9]/);
  // iops: 120 direct 4 KiB reads from the drive limited to 20/s take at least (120 - one
  // second's burst) / 20 = 5 s, measured by the guest's clock (a lower bound: noise only adds).
  const span = (await guest(cons, 'a=$(cut -d" " -f1 /proc/uptime); dd if=/dev/vdb of=/dev/null bs=4k count=120 iflag=direct 2>/dev/null; b=$(cut -d" " -f1 /proc/uptime); echo "$a $b"')).split(' ').map(Number);
  const took = span[1]! - span[0]!;
  assert.ok(took >= 4, `120 reads at iops=20 took ${took.toFixed(2)} s: the limit does not hold`);
  const marker = `native-marker-${randomBytes(6).toString('hex')}`;
  assert.match(await guest(cons, `echo ${marker} | dd of=/dev/vda bs=512 seek=2048 conv=fsync; echo status=$?`), /status=0/);
  assert.match(await guest(cons, 'cat /sys/class/misc/hw_random/rng_current'), /^virtio_rng/);

  // hot-plug: the first replaceable slot is vdc (after the two boot drives); its capacity goes 0 -> 2 MiB
  const att = await s.api('POST', `/v1/vms/${id}/drives`, { volume: 'n-hot' });
  assert.equal(att.status, 201, JSON.stringify(att.body) + s.output.slice(-2000));
  const hotId: string = att.body.id;
  assert.equal(await guest(cons, 'i=0; while [ "$(cat /sys/block/vdc/size)" = 0 ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done; sha256sum /dev/vdc | cut -d" " -f1'), sha256(hot));
  const det = await s.api('DELETE', `/v1/vms/${id}/drives/${hotId}`);
  assert.equal(det.status, 204, JSON.stringify(det.body));
  const deleted = await events.waitFor('DEVICE_DELETED', (m) => m.data.device === hotId, 30_000);
  assert.equal(deleted.vm, id);
  assert.equal(await guest(cons, 'cat /sys/block/vdc/size'), '0');

  const stopped = await s.api('POST', `/v1/vms/${id}/stop`);
  assert.equal(stopped.body.state, 'stopped', JSON.stringify(stopped.body));
  const back = Buffer.alloc(marker.length);
  const fd = openSync(vData.file, 'r');
  try { readSync(fd, back, 0, back.length, 2048 * 512); } finally { closeSync(fd); }
  assert.equal(back.toString(), marker, 'the guest\'s write reached the volume');
  events.close();
  cons.close();
});

test('native: rootfsDevice pmem maps the image\'s rootfs as virtio-pmem (/dev/pmem0) in the jailed VMM; the layer is vda', async () => {
  const c = await s.api('POST', '/v1/vms', { name: 'native-pmem', image: 'rootfs', memoryMiB: 256, rootfsDevice: 'pmem' });
  assert.equal(c.status, 201, JSON.stringify(c.body));
  const id: string = c.body.id;
  const started = await s.api('POST', `/v1/vms/${id}/start`);
  assert.equal(started.status, 200, JSON.stringify(started.body) + s.output.slice(-2000));
  const cons = new ConsoleCollector(s.ws(`/v1/vms/${id}/console`));
  await cons.opened;
  await cons.waitFor('CAPSULE_READY', BOOT_MS);
  assert.match(await guest(cons, 'cat /proc/cmdline'), /root=\/dev\/pmem0 capsule\.overlay=\/dev\/vda$/);
  assert.equal(await guest(cons, 'i=0; while [ ! -b /dev/pmem0 ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done; sha256sum /dev/pmem0 | cut -d" " -f1'), sha256(rootfsPattern()));
  assert.equal(await guest(cons, 'cat /sys/block/vda/size'), String(2048 * MiB / 512), 'vda is the 2 GiB layer');
  const stopped = await s.api('POST', `/v1/vms/${id}/stop`);
  assert.equal(stopped.body.state, 'stopped', JSON.stringify(stopped.body));
  cons.close();
});
