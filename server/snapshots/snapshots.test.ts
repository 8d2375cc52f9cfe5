// Snapshots through the API with real guests (QEMU; TCG on this host): a counting guest saved
// and restored goes on counting without a reboot; clones are independent and reseed their RNG;
// a snapshot of a restored VM restores; a damaged snapshot is refused with nothing left
// running; another tenant's snapshot is not found. The sandbox image's clones keep their agent
// and their own disks.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { closeSync, openSync, readdirSync, readFileSync, statSync, truncateSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { TestServer, ConsoleCollector, waitFor, sleep, TEST_IMAGES_DIR, createVm, startVm, openConsole as openConsoleOf, consoleSh, consoleCounts, assertRestoredGoesOn } from '../test/harness.js';
import { buildImage } from '../images/registry.js';
import { isAlive } from '../supervisor/process.js';

/** Clones run at once (SNAPSHOT_CLONES=10 for the ten; TCG guests on 2 cores are slow). */
const CLONES = Number(process.env.SNAPSHOT_CLONES ?? 4);
let s: TestServer;
before(async () => {
  buildImage(TEST_IMAGES_DIR, 'sandbox', 'ignore'); // cached
  // the host limit sized for the clones beside the source and a clone's clone (8 for the default 4)
  const vcpus = String(Math.max(8, CLONES + 4));
  s = await TestServer.start({ env: { CAPSULE_NETWORK: 'on', CAPSULE_NET_POOL: `10.${214 + (process.pid % 20)}.0.0/24`, CAPSULE_RATE_LIMIT: '1000', CAPSULE_RATE_BURST: '1000', CAPSULE_HOST_VCPUS: vcpus } });
});
after(async () => { await s.stop(); });

// sha256sum streams (a layer is a 2 GiB sparse file), asynchronously: a test blocked for seconds
// would miss the server closing its idle keep-alive connection, and reuse it.
const sha = async (path: string) => (await run('sha256sum', [path])).stdout.split(' ')[0]!;
const run = promisify(execFile);
const snapshotFiles = (id: string) => join(s.dataDir, 'snapshots', id);

const create = (body: Record<string, unknown>) => createVm(s, body);
const start = (id: string) => startVm(s, id);
const openConsole = (id: string) => openConsoleOf(s, id);
const sh = (c: ConsoleCollector, line: string) => consoleSh(c, line);

const counts = consoleCounts;

let source: any;
let snap: any;
let sourceUptime = 0;

test('a counting guest is snapshotted while it runs and restored: the count goes on, no reboot, its files are there', async () => {
  source = await create({ name: 'counter', memoryMiB: 256 });
  await start(source.id);
  const c = await openConsole(source.id);
  await c.waitFor(/CAPSULE_READY/);
  await sh(c, 'echo before-snapshot > /tmp/marker');
  sourceUptime = Number((await sh(c, 'cut -d" " -f1 /proc/uptime')).trim());
  // A loop in the background: the console stays free for commands.
  c.send('(i=0; while true; do i=$((i+1)); echo count-$i; sleep 0.3; done) &\n');
  await c.waitFor('count-3');

  const r = await s.api('POST', `/v1/vms/${source.id}/snapshot`, { name: 'counter-snap' });
  assert.equal(r.status, 201, JSON.stringify(r.body));
  snap = r.body;
  assert.equal(snap.name, 'counter-snap');
  assert.equal(snap.sourceVm, source.id);
  assert.deepEqual([snap.hypervisor, snap.image, snap.vcpus, snap.memoryMiB], [source.hypervisor, 'default', 1, 256]);
  assert.ok(snap.sizeBytes > 0);
  const atSnapshot = Math.max(...counts(c.text));
  // The source runs on (it was paused for the copy only).
  assert.equal((await s.api('GET', `/v1/vms/${source.id}`)).body.state, 'running');
  await c.waitFor(`count-${atSnapshot + 2}`);
  // Listed, and found by id and by name; no host path anywhere.
  const list = await s.api('GET', '/v1/snapshots');
  assert.deepEqual(list.body.items.map((x: any) => x.id), [snap.id]);
  assert.equal((await s.api('GET', `/v1/snapshots/counter-snap`)).body.id, snap.id);
  assert.ok(!JSON.stringify(list.body).includes(s.dataDir));

  const clone = await create({ name: 'counter-clone', fromSnapshot: 'counter-snap', metadata: { role: 'clone' } });
  assert.equal(clone.restoreFrom, snap.id);
  assert.deepEqual([clone.image, clone.vcpus, clone.memoryMiB, clone.metadata.role], ['default', 1, 256, 'clone']);
  // A snapshot some VM is still to restore from stays.
  const busy = await s.api('DELETE', `/v1/snapshots/${snap.id}`);
  assert.equal(busy.status, 409);
  assert.equal(busy.body.error.code, 'snapshot_in_use');

  const started = await start(clone.id);
  const cc = await openConsole(clone.id);
  assert.equal(started.state, 'running');
  assert.equal(started.restoreFrom, undefined, 'only the first start restores');
  await assertRestoredGoesOn(cc, atSnapshot, sourceUptime, 30_000);
  // The two are separate machines now.
  await sh(cc, 'echo clone-only > /tmp/marker');
  assert.equal((await sh(c, 'cat /tmp/marker')).trim(), 'before-snapshot');
  c.close();
  cc.close();
  assert.equal((await s.api('DELETE', `/v1/vms/${source.id}?force=true`)).status, 204);
  // The snapshot outlives its VM.
  assert.equal((await s.api('GET', `/v1/snapshots/${snap.id}`)).status, 200);
  assert.equal((await s.api('DELETE', `/v1/vms/${clone.id}?force=true`)).status, 204);
});

test('clones of one snapshot run at once, each with its own memory and a reseeded RNG; a snapshot of a clone restores', async () => {
  const n = CLONES;
  const hashes = () => Promise.all(readdirSync(snapshotFiles(snap.id)).map(async (f) => [f, await sha(join(snapshotFiles(snap.id), f))]));
  const before = await hashes();
  const clones = [];
  for (let i = 0; i < n; i++) clones.push(await create({ name: `clone-${i}`, fromSnapshot: snap.id }));
  // Started one after another (the host has few CPUs), then all run together.
  for (const v of clones) await start(v.id);
  const cons = await Promise.all(clones.map((v) => openConsole(v.id)));
  // Read at once after the restore: with the same saved RNG state and no reseed, the clones
  // would print the same bytes.
  const random = await Promise.all(cons.map((c) => sh(c, 'head -c 16 /dev/urandom | od -An -tx1 | tr -d " \\n"')));
  assert.equal(new Set(random).size, n, `every clone's /dev/urandom differs: ${random.join(' ')}`);
  // Differing bytes alone prove little (interrupt timing reseeds a young guest too): each clone's
  // kernel says it reseeded because its VM generation ID changed (vmgenid, add_vmfork_randomness).
  const reseeded = await Promise.all(cons.map((c) => sh(c, 'dmesg | grep -c "crng reseeded due to virtual machine fork"')));
  assert.ok(reseeded.every((r) => Number(r.trim()) >= 1), `every clone reseeded its RNG on restore: ${reseeded.map((r) => r.trim()).join(',')}`);
  await Promise.all(cons.map((c, i) => sh(c, `echo clone-${i} > /tmp/marker`)));
  const markers = await Promise.all(cons.map((c) => sh(c, 'cat /tmp/marker')));
  assert.deepEqual(markers.map((m) => m.trim()), clones.map((_, i) => `clone-${i}`));
  // The snapshot's files did not change.
  assert.deepEqual(await hashes(), before);

  // The Cloud Hypervisor trap: a snapshot of a restored VM must hold all of its memory, not only
  // what it changed since its restore.
  const again = await s.api('POST', `/v1/vms/${clones[0].id}/snapshot`, { name: 'of-a-clone' });
  assert.equal(again.status, 201, JSON.stringify(again.body));
  const second = await create({ name: 'second-generation', fromSnapshot: 'of-a-clone' });
  await start(second.id);
  const c2 = await openConsole(second.id);
  assert.equal((await sh(c2, 'cat /tmp/marker')).trim(), 'clone-0');
  assert.match(await sh(c2, 'ls /bin | head -3; echo ok'), /ok/);
  await c2.waitFor(/count-\d+/, 30_000);
  for (const c of [...cons, c2]) c.close();
  for (const v of [...clones, second]) assert.equal((await s.api('DELETE', `/v1/vms/${v.id}?force=true`)).status, 204);
  assert.equal((await s.api('DELETE', '/v1/snapshots/of-a-clone')).status, 204);
});

test('pause to disk ends the VMM and frees its memory; resume restores the guest where it was; deleting a suspended VM removes its state', async () => {
  const vm = await create({ name: 'sleeper', memoryMiB: 256 });
  const { pid } = await start(vm.id);
  const c = await openConsole(vm.id);
  await c.waitFor(/CAPSULE_READY/);
  await sh(c, 'echo kept-in-memory > /tmp/marker');
  c.send('(i=0; while true; do i=$((i+1)); echo count-$i; sleep 0.3; done) &\n');
  await c.waitFor('count-3');
  const listed = () => readdirSync(join(s.dataDir, 'snapshots')).filter((f) => !f.endsWith('.partial')).length;
  const before = listed();
  // The tenant's snapshot quota counts every snapshot it holds; one that would not fit is refused first.
  const tenant = (await s.api('GET', '/v1/tenants/default')).body;
  const held = tenant.usage.snapshotMiB;
  assert.equal(held, Math.round((await s.api('GET', '/v1/snapshots')).body.items.reduce((n: number, x: any) => n + Math.ceil(x.sizeBytes / 1048576), 0)));
  assert.equal((await s.api('PATCH', '/v1/tenants/default', { quotas: { snapshotMiB: held + 100 } })).status, 200);
  let r = await s.api('POST', `/v1/vms/${vm.id}/pause`, { persist: true });
  assert.deepEqual([r.status, r.body.error?.code], [409, 'quota_exceeded']);
  assert.match(r.body.error.message, new RegExp(`^quota snapshotMiB exceeded: limit ${held + 100}, in use ${held}, requested \\d+`));
  assert.equal((await s.api('GET', `/v1/vms/${vm.id}`)).body.state, 'running', 'the VM is as it was');
  assert.equal((await s.api('PATCH', '/v1/tenants/default', { quotas: { snapshotMiB: null } })).status, 200);
  r = await s.api('POST', `/v1/vms/${vm.id}/pause`, { persist: true });
  assert.equal(r.status, 200, JSON.stringify(r.body));
  assert.equal(r.body.state, 'stopped');
  assert.equal(r.body.pid, undefined);
  assert.ok(typeof r.body.restoreFrom === 'string');
  const at = Math.max(...counts(c.text));
  c.close();
  assert.ok(!isAlive(pid), 'the VMM is gone, and its memory with it');
  assert.equal(listed(), before + 1, 'its state is on disk');
  // Its state is the VM's own: not among the tenant's snapshots, not restorable by another VM.
  assert.ok(!(await s.api('GET', '/v1/snapshots')).body.items.some((x: any) => x.id === r.body.restoreFrom));
  assert.equal((await s.api('POST', '/v1/vms', { name: 'not-mine', fromSnapshot: r.body.restoreFrom })).status, 404);

  r = await s.api('POST', `/v1/vms/${vm.id}/resume`);
  assert.equal(r.status, 200, JSON.stringify(r.body));
  assert.equal(r.body.state, 'running');
  assert.equal(r.body.restoreFrom, undefined);
  const c2 = await openConsole(vm.id);
  await c2.waitFor(/count-\d+/, 30_000);
  assert.ok(counts(c2.text)[0]! >= at, 'the count goes on');
  assert.equal((await sh(c2, 'cat /tmp/marker')).trim(), 'kept-in-memory');
  assert.equal(listed(), before, 'a restored pause-to-disk state is deleted');

  r = await s.api('POST', `/v1/vms/${vm.id}/pause`, { persist: true });
  assert.equal(r.body.state, 'stopped');
  c2.close();
  assert.equal(listed(), before + 1);
  assert.equal((await s.api('DELETE', `/v1/vms/${vm.id}`)).status, 204);
  assert.equal(listed(), before, 'deleted with its VM');
});

test('a damaged snapshot is refused with a clear error and nothing left running', async () => {
  const dir = snapshotFiles(snap.id);
  const file = join(dir, 'vmstate');
  const size = statSync(file).size;
  // Truncated: refused before any VMM starts.
  const a = await create({ name: 'from-truncated', fromSnapshot: snap.id });
  truncateSync(file, size - 4096);
  let r = await s.api('POST', `/v1/vms/${a.id}/start`);
  assert.equal(r.status, 409);
  assert.equal(r.body.error.code, 'snapshot_damaged');
  assert.match(r.body.error.message, /vmstate is \d+ bytes, \d+ when it was written/);
  assert.equal((await s.api('GET', `/v1/vms/${a.id}`)).body.state, 'created');
  // Same size, garbage inside: QEMU refuses the stream; the VM is crashed, its VMM gone.
  truncateSync(file, size);
  const fd = openSync(file, 'r+');
  writeSync(fd, Buffer.alloc(4096, 0xa5), 0, 4096, 0);
  closeSync(fd);
  r = await s.api('POST', `/v1/vms/${a.id}/start`);
  assert.equal(r.status, 500, JSON.stringify(r.body));
  assert.match(r.body.error.message, /the snapshot could not be loaded/);
  const vm = (await s.api('GET', `/v1/vms/${a.id}`)).body;
  assert.equal(vm.state, 'crashed');
  assert.equal(vm.pid, undefined);
  const pids = readdirSync('/proc').filter((p) => /^\d+$/.test(p)).map(Number).filter((p) => {
    try { return readFileSync(`/proc/${p}/cmdline`, 'utf8').includes(a.id) && isAlive(p); } catch { return false; }
  });
  assert.deepEqual(pids, [], 'no process of the VM is left');
  // Still to restore: the snapshot stays in use.
  assert.equal((await s.api('GET', `/v1/vms/${a.id}`)).body.restoreFrom, snap.id);
  assert.equal((await s.api('DELETE', `/v1/vms/${a.id}`)).status, 204);
});

test('snapshots are the tenant\'s: another tenant neither sees nor restores them; bad requests are refused', async () => {
  const t = await s.api('POST', '/v1/tenants', { name: 'other' });
  assert.equal(t.status, 201, JSON.stringify(t.body));
  const tok = await s.api('POST', '/v1/tokens', { name: 'other', tenant: t.body.id, scope: 'write' });
  assert.equal(tok.status, 201, JSON.stringify(tok.body));
  const as = { authorization: `Bearer ${tok.body.token}` };
  assert.deepEqual((await s.api('GET', '/v1/snapshots', undefined, as)).body.items, []);
  for (const ref of [snap.id, snap.name]) {
    assert.equal((await s.api('GET', `/v1/snapshots/${ref}`, undefined, as)).status, 404);
    assert.equal((await s.api('DELETE', `/v1/snapshots/${ref}`, undefined, as)).status, 404);
    const r = await s.api('POST', '/v1/vms', { name: 'thief', fromSnapshot: ref }, as);
    assert.equal(r.status, 404);
    assert.equal(r.body.error.field, 'fromSnapshot');
  }
  // The snapshot decides image, size and devices: they cannot be given.
  const mixed = await s.api('POST', '/v1/vms', { name: 'mixed', fromSnapshot: snap.id, memoryMiB: 512 });
  assert.equal(mixed.status, 400);
  // Only a running or paused VM can be snapshotted.
  const idle = await create({ name: 'idle' });
  const r = await s.api('POST', `/v1/vms/${idle.id}/snapshot`);
  assert.equal(r.status, 409);
  assert.equal(r.body.error.code, 'invalid_state');
  assert.equal((await s.api('DELETE', `/v1/vms/${idle.id}`)).status, 204);
});

test('sandbox image: a clone keeps its agent and gets its own disk; the snapshot\'s layer never changes', async () => {
  const vm = await create({ name: 'sbx', image: 'sandbox', memoryMiB: 512 });
  await start(vm.id);
  await s.waitForAgent(vm.id, 180_000);
  let r = await s.api('POST', `/v1/vms/${vm.id}/exec`, { shell: 'echo from-template > /root/file && sync', user: 'root' });
  assert.equal(r.body.exitCode, 0, JSON.stringify(r.body));
  const sn = await s.api('POST', `/v1/vms/${vm.id}/snapshot`, { name: 'sbx-snap' });
  assert.equal(sn.status, 201, JSON.stringify(sn.body));
  const layer = join(snapshotFiles(sn.body.id), 'layer.img');
  const layerSum = await sha(layer);
  assert.equal((await s.api('DELETE', `/v1/vms/${vm.id}?force=true`)).status, 204);

  // The restored guests' clocks start where the snapshot's stood: let it fall 15 s behind.
  const taken = Date.now();
  const [a, b] = [await create({ name: 'sbx-a', fromSnapshot: 'sbx-snap' }), await create({ name: 'sbx-b', fromSnapshot: 'sbx-snap' })];
  await sleep(Math.max(0, 15_000 - (Date.now() - taken)));
  for (const v of [a, b]) await start(v.id);
  // The server sets each restored guest's clock through its agent.
  for (const v of [a, b]) {
    const skew = await waitFor('the restored guest\'s clock corrected', async () => {
      const h = await s.api('GET', `/v1/vms/${v.id}/agent`);
      const d = h.status === 200 ? Math.abs(Date.parse(h.body.time) - Date.now()) : Infinity;
      return d < 3000 ? d : undefined;
    }, 60_000);
    assert.ok(skew < 3000);
  }
  for (const v of [a, b]) {
    // The agent answers at once: it was running in the snapshot, with the secret it keeps.
    r = await s.api('POST', `/v1/vms/${v.id}/exec`, { shell: 'cat /root/file', user: 'root' });
    assert.equal(r.status, 200, JSON.stringify(r.body));
    assert.equal(r.body.stdout, 'from-template\n');
  }
  r = await s.api('POST', `/v1/vms/${a.id}/exec`, { shell: 'echo only-a > /root/file && sync && cat /root/file', user: 'root' });
  assert.equal(r.body.stdout, 'only-a\n');
  // Through the guest's page cache and down to the disk: b neither sees a's write...
  r = await s.api('POST', `/v1/vms/${b.id}/exec`, { shell: 'echo 3 > /proc/sys/vm/drop_caches; cat /root/file', user: 'root' });
  assert.equal(r.body.stdout, 'from-template\n');
  // ...nor does the snapshot's layer change.
  assert.equal(await sha(layer), layerSum);
  for (const v of [a, b]) assert.equal((await s.api('DELETE', `/v1/vms/${v.id}?force=true`)).status, 204);
  assert.equal((await s.api('DELETE', '/v1/snapshots/sbx-snap')).status, 204);
  assert.equal((await s.api('GET', '/v1/snapshots/sbx-snap')).status, 404);
  assert.deepEqual(readdirSync(join(s.dataDir, 'snapshots')).filter((f) => f.startsWith(sn.body.id)), [], 'its files are gone');
});
