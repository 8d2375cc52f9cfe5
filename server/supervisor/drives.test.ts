// Drives, rng, balloon and hot-plug in real guests (QEMU; `-M pc` under TCG here), through the
// HTTP API of a real server (jailed where the host allows, as by default; one guest unjailed).
// The guest reads and writes its disks over the serial console; the host checks the files.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { closeSync, openSync, readFileSync, readSync, statSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { TestServer, EventCollector, ConsoleCollector, waitFor } from '../test/harness.js';
import { ensureDriveTestImages, ROOTFS_BYTES, rootfsPattern, sha256 } from '../test/drive-images.js';

const MiB = 1024 * 1024;
let s: TestServer;
let images: string;
before(async () => {
  images = ensureDriveTestImages();
  s = await TestServer.start({ env: { CAPSULE_IMAGES_DIR: images, CAPSULE_BUILD_IMAGE: '0', CAPSULE_DETACH_TIMEOUT: '3' } });
});
after(async () => { await s.stop(); });

let tagCounter = 0;
/** Runs `cmd` in the guest shell and returns its output (one line): tagged so the echo of the typed line does not match. */
async function guest(cons: ConsoleCollector, cmd: string, timeoutMs = 60_000): Promise<string> {
  const tag = `R${++tagCounter}`;
  cons.send(`X=$(${cmd} 2>&1); echo "<<${tag}"">$X<<"\n`);
  const re = new RegExp(`<<${tag}>([^]*?)<<`);
  await cons.waitFor(re, timeoutMs);
  return re.exec(cons.text)![1]!.trim();
}

function writeAt(path: string, offset: number, data: Buffer): void {
  const fd = openSync(path, 'r+');
  try { writeSync(fd, data, 0, data.length, offset); } finally { closeSync(fd); }
}

function readAt(path: string, offset: number, length: number): Buffer {
  const buf = Buffer.alloc(length);
  const fd = openSync(path, 'r');
  try { readSync(fd, buf, 0, length, offset); } finally { closeSync(fd); }
  return buf;
}

async function volume(server: TestServer, name: string, sizeMiB: number, content?: Buffer): Promise<{ id: string; file: string }> {
  const r = await server.api('POST', '/v1/volumes', { name, sizeMiB });
  assert.equal(r.status, 201, JSON.stringify(r.body));
  const file = join(server.dataDir, 'volumes', `${r.body.id}.img`);
  if (content) writeAt(file, 0, content);
  return { id: r.body.id, file };
}

/** The process lacks CAP_SYS_RESOURCE (a container's root): a running VMM's file size limit cannot be raised. */
function canRaiseRlimits(): boolean {
  const m = /CapEff:\s+([0-9a-f]+)/.exec(readFileSync('/proc/self/status', 'utf8'));
  return m ? (BigInt(`0x${m[1]}`) & (1n << 24n)) !== 0n : false;
}

test('drives in a guest: content, writes, read-only; rng; balloon; hot-plug and unplug with DEVICE_DELETED; a detach that times out', async () => {
  const jailed = (await s.api('GET', '/v1/health')).body.jail.enabled as boolean;
  const dataContent = randomBytes(8 * MiB);
  const roContent = randomBytes(4 * MiB);
  const hotContent = randomBytes(4 * MiB);
  const data = await volume(s, 'g-data', 8, dataContent);
  const ro = await volume(s, 'g-ro', 4, roContent);
  const hot = await volume(s, 'g-hot', 4, hotContent);
  const c = await s.api('POST', '/v1/vms', {
    name: 'drives-1', memoryMiB: 256, balloon: true,
    drives: [{ volume: 'g-data', cache: 'none', iops: 5000 }, { volume: 'g-ro', readOnly: true, iops: 20 }],
  });
  assert.equal(c.status, 201, JSON.stringify(c.body));
  const id: string = c.body.id;
  const events = new EventCollector(s.ws(`/v1/vms/${id}/events`));
  await events.opened;
  const started = await s.api('POST', `/v1/vms/${id}/start`);
  assert.equal(started.status, 200, JSON.stringify(started.body));
  const cons = new ConsoleCollector(s.ws(`/v1/vms/${id}/console`));
  await cons.opened;
  await cons.waitFor('CAPSULE_READY');

  if (jailed) {
    // While the jailed VMM runs, its uid has an ACL entry on the files (the mask shows as group bits).
    assert.equal(statSync(data.file).mode & 0o070, 0o060, 'rw granted on the writable volume');
    assert.equal(statSync(ro.file).mode & 0o070, 0o040, 'r granted on the read-only volume');
  }

  // vda: the writable volume, as the host wrote it; vdb: read-only.
  assert.equal(await guest(cons, 'sha256sum /dev/vda | cut -d" " -f1'), sha256(dataContent));
  assert.equal(await guest(cons, 'sha256sum /dev/vdb | cut -d" " -f1'), sha256(roContent));
  assert.equal(await guest(cons, 'cat /sys/block/vda/ro'), '0');
  assert.equal(await guest(cons, 'cat /sys/block/vdb/ro'), '1');
  const roWrite = await guest(cons, 'dd if=/dev/zero of=/dev/vdb bs=512 count=1 conv=fsync; echo status=$?');
  assert.match(roWrite, /status=[1-9]/, roWrite);
  // iops: 120 direct 4 KiB reads from the drive limited to 20/s take at least (120 - one
  // second's burst) / 20 = 5 s, measured by the guest's clock (a lower bound: noise only adds).
  const span = (await guest(cons, 'a=$(cut -d" " -f1 /proc/uptime); dd if=/dev/vdb of=/dev/null bs=4k count=120 iflag=direct 2>/dev/null; b=$(cut -d" " -f1 /proc/uptime); echo "$a $b"')).split(' ').map(Number);
  const took = span[1]! - span[0]!;
  assert.ok(took >= 4, `120 reads at iops=20 took ${took.toFixed(2)} s: the limit does not hold`);
  const marker = `capsule-marker-${randomBytes(6).toString('hex')}`;
  assert.match(await guest(cons, `echo ${marker} | dd of=/dev/vda bs=512 seek=2048 conv=fsync; echo status=$?`), /status=0/);

  // rng: the guest's hw_random is virtio and gives bytes.
  assert.match(await guest(cons, 'cat /sys/class/misc/hw_random/rng_current'), /^virtio_rng/);
  assert.equal(await guest(cons, 'head -c 64 /dev/hwrng | wc -c'), '64');

  // balloon: a target below the guest's memory is reached.
  assert.equal((await s.api('GET', `/v1/vms/${id}/balloon`)).body.actualMiB, 256);
  const set = await s.api('PUT', `/v1/vms/${id}/balloon`, { targetMiB: 160 });
  assert.equal(set.status, 200, JSON.stringify(set.body));
  assert.equal(set.body.targetMiB, 160);
  await waitFor('the balloon to inflate', async () => (await s.api('GET', `/v1/vms/${id}/balloon`)).body.actualMiB === 160 || undefined, 30_000);
  assert.equal((await s.api('PUT', `/v1/vms/${id}/balloon`, { targetMiB: 512 })).status, 400, 'above the VM\'s memory');
  assert.equal((await s.api('PUT', `/v1/vms/${id}/balloon`, { targetMiB: 256 })).status, 200);

  // Hot-plug: the guest sees vdc appear with the volume's content.
  const att = await s.api('POST', `/v1/vms/${id}/drives`, { volume: 'g-hot', readOnly: true, iops: 2000 });
  assert.equal(att.status, 201, JSON.stringify(att.body));
  assert.deepEqual(att.body, { id: 'drive-2', volume: hot.id, volumeName: 'g-hot', readOnly: true, cache: 'writeback', iops: 2000, state: 'attached' });
  await events.waitFor('DRIVE_ATTACHED', (m) => m.data.drive.id === 'drive-2');
  assert.equal(await guest(cons, 'i=0; while [ ! -b /dev/vdc ] && [ $i -lt 200 ]; do sleep 0.1; i=$((i+1)); done; sha256sum /dev/vdc | cut -d" " -f1'), sha256(hotContent));
  assert.equal(await guest(cons, 'cat /sys/block/vdc/ro'), '1');
  // Attached to a running VM, it is part of the definition (kept across restarts).
  assert.deepEqual((await s.api('GET', `/v1/vms/${id}`)).body.drives.map((d: any) => d.id), ['drive-0', 'drive-1', 'drive-2']);
  // Writable elsewhere while this VM has it: refused.
  const other = await s.api('POST', '/v1/vms', { name: 'drives-other', drives: [{ volume: 'g-hot' }] });
  assert.equal(other.status, 409);
  assert.equal(other.body.error.code, 'volume_in_use');

  // Unplug: 204 once the guest released it; DEVICE_DELETED reaches the subscriber with the drive's id.
  const det = await s.api('DELETE', `/v1/vms/${id}/drives/drive-2`);
  assert.equal(det.status, 204, JSON.stringify(det.body));
  const deleted = await events.waitFor('DEVICE_DELETED', (m) => m.data.device === 'drive-2', 5000);
  assert.equal(deleted.vm, id);
  await events.waitFor('DRIVE_DETACHED', (m) => m.data.drive === 'drive-2', 5000);
  assert.deepEqual((await s.api('GET', `/v1/vms/${id}`)).body.drives.map((d: any) => d.id), ['drive-0', 'drive-1']);
  assert.equal(await guest(cons, 'i=0; while [ -e /sys/block/vdc ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done; ls /sys/block | tr "\\n" " "'), 'vda vdb');
  if (jailed) assert.equal(statSync(hot.file).mode & 0o777, 0o600, 'the grant is gone with the drive');
  assert.deepEqual((await s.api('GET', '/v1/volumes/g-hot')).body.attachments, []);

  // A guest that cannot answer (paused): 504, the drive stays listed as detaching, and goes
  // once the guest releases it after all.
  assert.equal((await s.api('POST', `/v1/vms/${id}/pause`)).status, 200);
  const slow = await s.api('DELETE', `/v1/vms/${id}/drives/drive-1`);
  assert.equal(slow.status, 504, JSON.stringify(slow.body));
  assert.equal(slow.body.error.code, 'detach_timeout');
  const detaching = (await s.api('GET', `/v1/vms/${id}`)).body.drives.find((d: any) => d.id === 'drive-1');
  assert.equal(detaching.state, 'detaching');
  assert.equal((await s.api('POST', `/v1/vms/${id}/resume`)).status, 200);
  await events.waitFor('DEVICE_DELETED', (m) => m.data.device === 'drive-1', 30_000);
  await waitFor('drive-1 gone', async () => (await s.api('GET', `/v1/vms/${id}`)).body.drives.length === 1 || undefined, 10_000);

  // A writable hot-plug larger than the jailed VMM's file size limit (the guest's 256 MiB + 64 MiB,
  // for its snapshots: docs/snapshots.md): the limit is raised where the server may
  // (CAP_SYS_RESOURCE), else the attach is refused with the reason.
  const big = await volume(s, 'g-big', 400);
  const bigAtt = await s.api('POST', `/v1/vms/${id}/drives`, { volume: 'g-big' });
  if (!jailed || canRaiseRlimits()) {
    assert.equal(bigAtt.status, 201, JSON.stringify(bigAtt.body));
    const bigMarker = `capsule-big-${randomBytes(4).toString('hex')}`;
    assert.match(await guest(cons, `i=0; while [ ! -b /dev/vdb ] && [ $i -lt 200 ]; do sleep 0.1; i=$((i+1)); done; echo ${bigMarker} | dd of=/dev/vdb bs=1M seek=350 conv=fsync; echo status=$?`), /status=0/);
    assert.equal(readAt(big.file, 350 * MiB, bigMarker.length).toString(), bigMarker);
  } else {
    assert.equal(bigAtt.status, 409, JSON.stringify(bigAtt.body));
    assert.equal(bigAtt.body.error.code, 'file_size_limit');
    assert.deepEqual((await s.api('GET', `/v1/vms/${id}`)).body.drives.map((d: any) => d.id), ['drive-0']);
  }

  // A clean stop: the guest's write is in the file; the grants are gone.
  const stopped = await s.api('POST', `/v1/vms/${id}/stop`);
  assert.equal(stopped.body.state, 'stopped');
  assert.equal(readAt(data.file, 2048 * 512, marker.length).toString(), marker);
  for (const f of [data.file, ro.file, big.file]) assert.equal(statSync(f).mode & 0o777, 0o600, `no ACL left on ${f}`);
  events.close();
  cons.close();
  assert.equal((await s.api('DELETE', `/v1/vms/${id}`)).status, 204);
});

test('an image with a rootfs: vda is its rootfs (read-only), vdb the VM\'s layer (writable, kept), drives follow', async () => {
  await volume(s, 'r-data', 4);
  const c = await s.api('POST', '/v1/vms', { name: 'rootfs-1', image: 'rootfs', drives: [{ volume: 'r-data' }] });
  assert.equal(c.status, 201, JSON.stringify(c.body));
  const id: string = c.body.id;
  assert.equal((await s.api('POST', `/v1/vms/${id}/start`)).status, 200);
  const cons = new ConsoleCollector(s.ws(`/v1/vms/${id}/console`));
  await cons.waitFor('CAPSULE_READY');
  const cmdline = await guest(cons, 'cat /proc/cmdline');
  assert.match(cmdline, /root=\/dev\/vda capsule\.overlay=\/dev\/vdb/);
  assert.equal(await guest(cons, 'sha256sum /dev/vda | cut -d" " -f1'), sha256(rootfsPattern()));
  assert.equal(await guest(cons, 'cat /sys/block/vda/ro /sys/block/vdb/ro /sys/block/vdc/ro | tr "\\n" " "'), '1 0 0');
  assert.equal(await guest(cons, 'cat /sys/block/vdb/size'), String(2048 * MiB / 512));
  assert.equal(await guest(cons, `cat /sys/block/vdc/size`), String(4 * MiB / 512));
  const marker = `layer-${randomBytes(6).toString('hex')}`;
  assert.match(await guest(cons, `echo ${marker} | dd of=/dev/vdb bs=512 seek=100 conv=fsync; echo status=$?`), /status=0/);
  assert.match(await guest(cons, 'dd if=/dev/zero of=/dev/vda bs=512 count=1 conv=fsync; echo status=$?'), /status=[1-9]/);

  // After a server restart (the VMM keeps running), hot-plug and unplug still work: the
  // component rebuilt its grants and its DEVICE_DELETED watch at reattach.
  cons.close();
  await s.kill9();
  await s.launch();
  assert.equal((await s.api('GET', `/v1/vms/${id}`)).body.state, 'running');
  const cons2 = new ConsoleCollector(s.ws(`/v1/vms/${id}/console`));
  await cons2.opened;
  const extraContent = randomBytes(MiB);
  await volume(s, 'r-extra', 1, extraContent);
  const att = await s.api('POST', `/v1/vms/${id}/drives`, { volume: 'r-extra', readOnly: true });
  assert.equal(att.status, 201, JSON.stringify(att.body));
  assert.equal(await guest(cons2, 'i=0; while [ ! -b /dev/vdd ] && [ $i -lt 200 ]; do sleep 0.1; i=$((i+1)); done; sha256sum /dev/vdd | cut -d" " -f1'), sha256(extraContent));
  assert.equal((await s.api('DELETE', `/v1/vms/${id}/drives/${att.body.id}`)).status, 204);
  assert.equal((await s.api('GET', `/v1/vms/${id}`)).body.drives.length, 1);
  assert.equal((await s.api('POST', `/v1/vms/${id}/stop`)).body.state, 'stopped');
  const layer = join(s.dataDir, 'vms', id, 'layer.img');
  assert.equal(readAt(layer, 100 * 512, marker.length).toString(), marker, 'the layer kept the write (and outlives the VMM)');
  assert.equal(statSync(layer).mode & 0o777, 0o600);
  assert.equal(sha256(readFileSync(join(images, 'rootfs', 'rootfs.img'))), sha256(rootfsPattern()), 'the image is untouched');
  assert.equal(ROOTFS_BYTES, 4 * MiB);
  cons2.close();
  assert.equal((await s.api('DELETE', `/v1/vms/${id}`)).status, 204);
});

test('rootfsDevice pmem: the rootfs is an NVDIMM (QEMU) read as /dev/pmem0, the layer becomes vda, drives follow; refused for an image without a rootfs', async () => {
  const bad = await s.api('POST', '/v1/vms', { name: 'pmem-bad', image: 'default', rootfsDevice: 'pmem' });
  assert.equal(bad.status, 400, JSON.stringify(bad.body));
  assert.match(bad.body.error.message, /rootfsDevice: image default has no root filesystem/);
  await volume(s, 'p-data', 2);
  const c = await s.api('POST', '/v1/vms', { name: 'pmem-1', image: 'rootfs', rootfsDevice: 'pmem', drives: [{ volume: 'p-data' }] });
  assert.equal(c.status, 201, JSON.stringify(c.body));
  assert.equal(c.body.rootfsDevice, 'pmem');
  const id: string = c.body.id;
  const start = await s.api('POST', `/v1/vms/${id}/start`);
  assert.equal(start.status, 200, JSON.stringify(start.body));
  const cons = new ConsoleCollector(s.ws(`/v1/vms/${id}/console`));
  await cons.waitFor('CAPSULE_READY');
  // the image's own root=/dev/vda is overridden by the later arguments
  assert.match(await guest(cons, 'cat /proc/cmdline'), /root=\/dev\/pmem0 capsule\.overlay=\/dev\/vda$/);
  assert.equal(await guest(cons, 'i=0; while [ ! -b /dev/pmem0 ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done; sha256sum /dev/pmem0 | cut -d" " -f1'), sha256(rootfsPattern()));
  assert.equal(await guest(cons, 'cat /sys/block/vda/size /sys/block/vdb/size | tr "\\n" " "'), `${2048 * MiB / 512} ${2 * MiB / 512}`);
  assert.equal(await guest(cons, 'ls /sys/bus/nd/devices | grep -c ^region'), '1', 'one NVDIMM region');
  // unarmed: the guest may write to its mapping at most; the file never changes (share=off)
  await guest(cons, 'dd if=/dev/zero of=/dev/pmem0 bs=4096 count=1 conv=fsync; echo done');
  assert.equal((await s.api('POST', `/v1/vms/${id}/stop`)).body.state, 'stopped');
  assert.equal(sha256(readFileSync(join(images, 'rootfs', 'rootfs.img'))), sha256(rootfsPattern()), 'the image is untouched');
  cons.close();
  assert.equal((await s.api('DELETE', `/v1/vms/${id}`)).status, 204);
});

test('unjailed: the VMM opens the volume files directly; boot drive and hot-plug', async () => {
  const u = await TestServer.start({ env: { CAPSULE_IMAGES_DIR: images, CAPSULE_BUILD_IMAGE: '0', CAPSULE_JAIL: 'off' } });
  try {
    const content = randomBytes(2 * MiB);
    await volume(u, 'u-a', 2, content);
    const b = await volume(u, 'u-b', 100);
    const c = await u.api('POST', '/v1/vms', { name: 'unjailed', drives: [{ volume: 'u-a', readOnly: true }], rng: false });
    const id: string = c.body.id;
    assert.equal((await u.api('POST', `/v1/vms/${id}/start`)).status, 200);
    const cons = new ConsoleCollector(u.ws(`/v1/vms/${id}/console`));
    await cons.waitFor('CAPSULE_READY');
    assert.equal(await guest(cons, 'sha256sum /dev/vda | cut -d" " -f1'), sha256(content));
    assert.equal(await guest(cons, 'cat /sys/class/misc/hw_random/rng_current'), 'none', 'rng: false');
    const att = await u.api('POST', `/v1/vms/${id}/drives`, { volume: 'u-b', cache: 'unsafe' });
    assert.equal(att.status, 201, JSON.stringify(att.body));
    const marker = `unjailed-${randomBytes(4).toString('hex')}`;
    assert.match(await guest(cons, `i=0; while [ ! -b /dev/vdb ] && [ $i -lt 200 ]; do sleep 0.1; i=$((i+1)); done; echo ${marker} | dd of=/dev/vdb bs=1M seek=90 conv=fsync; echo status=$?`), /status=0/);
    assert.equal(readAt(b.file, 90 * MiB, marker.length).toString(), marker);
    assert.equal((await u.api('DELETE', `/v1/vms/${id}/drives/${att.body.id}`)).status, 204);
    assert.equal((await u.api('POST', `/v1/vms/${id}/stop?force=true`)).body.state, 'stopped');
    cons.close();
  } finally {
    await u.stop();
  }
});
