// Volumes and VM drive definitions against a real server process with a real SQLite file and
// real files in its data directory (no guest boots: the guest side is drives.test.ts).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { closeSync, existsSync, openSync, readFileSync, readSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { TestServer } from '../test/harness.js';
import { ensureDriveTestImages, ROOTFS_BYTES, rootfsPattern, sha256 } from '../test/drive-images.js';

let s: TestServer;
before(async () => { s = await TestServer.start({ env: { CAPSULE_IMAGES_DIR: ensureDriveTestImages(), CAPSULE_BUILD_IMAGE: '0' } }); });
after(async () => { await s.stop(); });

const MiB = 1024 * 1024;
const volFile = (id: string) => join(s.dataDir, 'volumes', `${id}.img`);

test('create, get (by id and by name), list, delete a volume: a sparse 0600 file under the data directory', async () => {
  const c = await s.api('POST', '/v1/volumes', { name: 'vol-a', sizeMiB: 64 });
  assert.equal(c.status, 201, JSON.stringify(c.body));
  assert.equal(c.body.name, 'vol-a');
  assert.equal(c.body.sizeMiB, 64);
  assert.deepEqual(c.body.attachments, []);
  const file = volFile(c.body.id);
  const st = statSync(file);
  assert.equal(st.size, 64 * MiB);
  assert.ok(st.blocks * 512 < MiB, 'sparse: no blocks allocated');
  assert.equal(st.mode & 0o777, 0o600);
  assert.equal(statSync(join(s.dataDir, 'volumes')).mode & 0o777, 0o700);

  assert.equal((await s.api('GET', `/v1/volumes/${c.body.id}`)).body.name, 'vol-a');
  assert.equal((await s.api('GET', '/v1/volumes/vol-a')).body.id, c.body.id);
  const list = await s.api('GET', '/v1/volumes');
  assert.ok(list.body.items.some((v: any) => v.id === c.body.id));
  assert.ok(!JSON.stringify(list.body).includes(s.dataDir), 'no host paths');

  assert.equal((await s.api('DELETE', '/v1/volumes/vol-a')).status, 204);
  assert.ok(!existsSync(file), 'the file is gone');
  assert.equal((await s.api('GET', `/v1/volumes/${c.body.id}`)).status, 404);
  assert.equal((await s.api('DELETE', `/v1/volumes/${c.body.id}`)).status, 404);
});

test('volume validation: name pattern and uniqueness, size range, no host path in any form', async () => {
  const bad = async (body: unknown, field: string | undefined, status = 400) => {
    const r = await s.api('POST', '/v1/volumes', body);
    assert.equal(r.status, status, JSON.stringify(body));
    assert.equal(r.body.error.code, status === 400 ? 'invalid_request' : 'conflict');
    if (field) assert.equal(r.body.error.field, field, JSON.stringify(r.body));
  };
  await bad({ name: 'x', sizeMiB: 0 }, 'sizeMiB');
  await bad({ name: 'x', sizeMiB: 1024 * 1024 + 1 }, 'sizeMiB');
  await bad({ name: 'x', sizeMiB: 1.5 }, 'sizeMiB');
  await bad({ name: 'x' }, 'sizeMiB');
  await bad({ name: '../etc', sizeMiB: 1 }, 'name');
  await bad({ name: '', sizeMiB: 1 }, 'name');
  await bad({ name: 'a'.repeat(64), sizeMiB: 1 }, 'name');
  await bad({ name: '6f1c2d3e-0000-4000-8000-0123456789ab', sizeMiB: 1 }, 'name');
  // Host paths are never accepted: unknown fields are refused, images are named.
  await bad({ name: 'x', sizeMiB: 1, path: '/etc/passwd' }, 'path');
  await bad({ name: 'x', sizeMiB: 1, file: '/etc/passwd' }, 'file');
  await bad({ name: 'x', fromImage: '/tmp/capsule-test-images/default/vmlinuz' }, 'fromImage');
  await bad({ name: 'x', fromImage: 'default' }, 'fromImage'); // no rootfs to copy
  assert.equal((await s.api('POST', '/v1/volumes', { name: 'dup', sizeMiB: 1 })).status, 201);
  await bad({ name: 'dup', sizeMiB: 1 }, 'name', 409);
  assert.equal((await s.api('DELETE', '/v1/volumes/dup')).status, 204);
  assert.equal((await s.api('GET', '/v1/volumes')).body.items.some((v: any) => v.name === 'x'), false, 'nothing was created');
});

test('a volume from an image is a copy of its rootfs (grown to sizeMiB when asked)', async () => {
  const images = await s.api('GET', '/v1/images');
  assert.equal(images.body.items.find((i: any) => i.name === 'rootfs').rootfs, true);
  assert.equal(images.body.items.find((i: any) => i.name === 'default').rootfs, false);
  assert.ok(!JSON.stringify(images.body).includes('rootfs.img'), 'no file names');

  const c = await s.api('POST', '/v1/volumes', { name: 'copy', fromImage: 'rootfs' });
  assert.equal(c.status, 201, JSON.stringify(c.body));
  assert.equal(c.body.fromImage, 'rootfs');
  assert.equal(c.body.sizeMiB, ROOTFS_BYTES / MiB);
  assert.equal(sha256(readFileSync(volFile(c.body.id))), sha256(rootfsPattern()));
  assert.equal(statSync(volFile(c.body.id)).mode & 0o777, 0o600);

  const big = await s.api('POST', '/v1/volumes', { name: 'copy-big', fromImage: 'rootfs', sizeMiB: 32 });
  assert.equal(big.status, 201);
  assert.equal(statSync(volFile(big.body.id)).size, 32 * MiB);
  assert.equal(sha256(readFileSync(volFile(big.body.id)).subarray(0, ROOTFS_BYTES)), sha256(rootfsPattern()));
  const small = await s.api('POST', '/v1/volumes', { name: 'copy-small', fromImage: 'rootfs', sizeMiB: 1 });
  assert.equal(small.status, 400);
  assert.equal(small.body.error.field, 'sizeMiB');
  for (const v of ['copy', 'copy-big']) assert.equal((await s.api('DELETE', `/v1/volumes/${v}`)).status, 204);
});

test('VM drives: order and ids, defaults, name or id; validation names the field; volume_in_use; delete refused while attached', async () => {
  const a = (await s.api('POST', '/v1/volumes', { name: 'd-a', sizeMiB: 8 })).body;
  const b = (await s.api('POST', '/v1/volumes', { name: 'd-b', sizeMiB: 8 })).body;
  const vm1 = await s.api('POST', '/v1/vms', {
    name: 'drv-1', drives: [{ volume: 'd-a' }, { volume: b.id, readOnly: true, cache: 'none', iops: 500 }], balloon: { deflateOnOom: true },
  });
  assert.equal(vm1.status, 201, JSON.stringify(vm1.body));
  assert.equal(vm1.body.rng, true, 'rng is on by default');
  assert.deepEqual(vm1.body.balloon, { enabled: true, deflateOnOom: true });
  assert.deepEqual(vm1.body.drives, [
    { id: 'drive-0', volume: a.id, volumeName: 'd-a', readOnly: false, cache: 'writeback', state: 'attached' },
    { id: 'drive-1', volume: b.id, volumeName: 'd-b', readOnly: true, cache: 'none', iops: 500, state: 'attached' },
  ]);
  const plain = await s.api('POST', '/v1/vms', { name: 'drv-plain', rng: false });
  assert.equal(plain.body.rng, false);
  assert.deepEqual(plain.body.balloon, { enabled: false, deflateOnOom: false });
  assert.deepEqual(plain.body.drives, []);

  const create = (name: string, drives: unknown) => s.api('POST', '/v1/vms', { name, drives });
  let r = await create('drv-x', [{ volume: 'nope' }]); // unknown (or another tenant's): not found
  assert.equal(r.status, 404);
  assert.equal(r.body.error.field, 'drives.0.volume');
  r = await create('drv-x', [{ volume: 'd-b', readOnly: true }, { volume: 'd-a', file: '/etc/passwd' }]);
  assert.equal(r.status, 400);
  assert.equal(r.body.error.field, 'file');
  r = await create('drv-x', [{ volume: 'd-b', cache: 'directsync' }]);
  assert.equal(r.status, 400);
  assert.equal(r.body.error.field, 'drives.0.cache');
  r = await create('drv-x', [{ volume: 'd-a' }]); // writable on drv-1
  assert.equal(r.status, 409);
  assert.equal(r.body.error.code, 'volume_in_use');
  assert.equal(r.body.error.field, 'drives.0.volume');
  assert.match(r.body.error.message, /drv-1/);
  r = await create('drv-x', [{ volume: 'd-a', readOnly: true }]); // read-only beside a writer: no
  assert.equal(r.status, 409);
  r = await create('drv-x', [{ volume: 'd-b' }]); // writable while drv-1 has it read-only: no
  assert.equal(r.status, 409);
  const c = (await s.api('POST', '/v1/volumes', { name: 'd-c', sizeMiB: 8 })).body;
  r = await create('drv-x', [{ volume: 'd-c' }, { volume: 'd-c' }]); // the same volume twice, writable
  assert.equal(r.status, 409);
  assert.equal(r.body.error.field, 'drives.1.volume');
  r = await create('drv-x', Array.from({ length: 17 }, () => ({ volume: 'd-c', readOnly: true })));
  assert.equal(r.status, 400);
  assert.equal((await s.api('GET', '/v1/vms')).body.items.some((v: any) => v.name === 'drv-x'), false, 'no VM was created by a refused request');

  // Read-only sharing is allowed.
  const shared = await create('drv-2', [{ volume: 'd-b', readOnly: true }]);
  assert.equal(shared.status, 201);
  const vol = (await s.api('GET', '/v1/volumes/d-b')).body;
  assert.deepEqual(vol.attachments.map((x: any) => [x.vmName, x.drive, x.readOnly]).sort(), [['drv-1', 'drive-1', true], ['drv-2', 'drive-0', true]]);

  const del = await s.api('DELETE', '/v1/volumes/d-b');
  assert.equal(del.status, 409);
  assert.equal(del.body.error.code, 'volume_in_use');
  assert.ok(existsSync(volFile(b.id)));

  // Attach and detach on a VM that is not running change its definition.
  const att = await s.api('POST', `/v1/vms/${shared.body.id}/drives`, { volume: 'd-c', cache: 'unsafe' });
  assert.equal(att.status, 201, JSON.stringify(att.body));
  assert.deepEqual(att.body, { id: 'drive-1', volume: c.id, volumeName: 'd-c', readOnly: false, cache: 'unsafe', state: 'attached' });
  assert.equal((await s.api('POST', `/v1/vms/${shared.body.id}/drives`, { volume: 'd-c', readOnly: true })).status, 409);
  assert.equal((await s.api('POST', `/v1/vms/${shared.body.id}/drives`, { volume: 'd-a' })).body.error.code, 'volume_in_use');
  assert.equal((await s.api('POST', `/v1/vms/${shared.body.id}/drives`, { volume: 'd-c', path: '/dev/sda' })).body.error.field, 'path');
  assert.equal((await s.api('GET', `/v1/vms/${shared.body.id}/drives`)).body.items.length, 2);
  assert.equal((await s.api('DELETE', `/v1/vms/${shared.body.id}/drives/drive-7`)).status, 404);
  assert.equal((await s.api('DELETE', `/v1/vms/${shared.body.id}/drives/drive-0`)).status, 204);
  const after = (await s.api('GET', `/v1/vms/${shared.body.id}`)).body;
  assert.deepEqual(after.drives.map((d: any) => d.id), ['drive-1']);
  // The next id is above every id in use (ids are not reused while others remain).
  assert.equal((await s.api('POST', `/v1/vms/${shared.body.id}/drives`, { volume: 'd-b', readOnly: true })).body.id, 'drive-2');

  // The balloon answers 409 without a device, or without a running VMM.
  const nb = await s.api('GET', `/v1/vms/${plain.body.id}/balloon`);
  assert.equal(nb.status, 409);
  assert.equal(nb.body.error.code, 'no_balloon');
  const nr = await s.api('PUT', `/v1/vms/${vm1.body.id}/balloon`, { targetMiB: 128 });
  assert.equal(nr.status, 409);
  assert.equal(nr.body.error.code, 'not_running');
  assert.equal((await s.api('PUT', `/v1/vms/${vm1.body.id}/balloon`, { targetMiB: 0 })).status, 400);

  // Deleting the VMs frees the volumes.
  for (const id of [vm1.body.id, shared.body.id, plain.body.id]) assert.equal((await s.api('DELETE', `/v1/vms/${id}`)).status, 204);
  for (const v of ['d-a', 'd-b', 'd-c']) assert.equal((await s.api('DELETE', `/v1/volumes/${v}`)).status, 204, v);
});

test('a VM of an image with a rootfs gets its own sparse 2 GiB ext4 layer, deleted with it', async () => {
  const c = await s.api('POST', '/v1/vms', { name: 'layered', image: 'rootfs' });
  assert.equal(c.status, 201, JSON.stringify(c.body));
  const layer = join(s.dataDir, 'vms', c.body.id, 'layer.img');
  const st = statSync(layer);
  assert.equal(st.size, 2048 * MiB);
  assert.ok(st.blocks * 512 < 8 * MiB, `sparse (${st.blocks * 512} bytes used)`);
  // formatted on the host: the ext4 superblock's magic at 1024 + 56
  const sb = Buffer.alloc(2);
  const fd = openSync(layer, 'r');
  try { readSync(fd, sb, 0, 2, 1024 + 56); } finally { closeSync(fd); }
  assert.equal(sb.readUInt16LE(0), 0xef53, 'an ext4 filesystem');
  assert.equal(st.mode & 0o777, 0o600);
  assert.deepEqual(c.body.drives, [], 'the system disks are not client drives');
  assert.equal((await s.api('DELETE', `/v1/vms/${c.body.id}`)).status, 204);
  assert.ok(!existsSync(layer));
});

test('the OpenAPI document has the new routes', async () => {
  const doc = (await s.api('GET', '/v1/openapi.json')).body;
  for (const p of ['/v1/volumes', '/v1/volumes/{id}', '/v1/vms/{id}/drives', '/v1/vms/{id}/drives/{driveId}', '/v1/vms/{id}/balloon']) {
    assert.ok(doc.paths[p], p);
  }
});
