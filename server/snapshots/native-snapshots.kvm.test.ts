// Native VMM snapshots through the API on a real /dev/kvm (the nested lab): the state file and
// one memory file per region written by a jailed, seccomp-filtered capsule-vmm through fds, and
// restored by a VMM started with -incoming defer that maps the memory copy-on-write.
//   - a counting guest goes on counting after a restore, no reboot, its files there;
//   - two clones run at once, each with its own memory; the snapshot's files do not change;
//   - a snapshot of a restored VM restores (its untouched pages live in the first snapshot's file);
//   - pause to disk ends the VMM and resume continues the guest;
//   - a corrupt state file is refused with the VMM's reason and nothing left running.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { closeSync, openSync, readdirSync, readFileSync, readSync, statSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { TestServer, ConsoleCollector, createVm, startVm, openConsole as openConsoleOf, consoleSh, consoleCounts, assertRestoredGoesOn } from '../test/harness.js';
import { probeKvm } from '../../lib/kvm-probe.js';
import { isAlive } from '../supervisor/process.js';

const BOOT_MS = 240_000;
let s: TestServer;
before(async () => {
  const kvm = probeKvm();
  assert.ok(kvm.available, `KVM is not usable here: ${kvm.reason}`);
  s = await TestServer.start({ env: { CAPSULE_STOP_TIMEOUT: '60' } });
});
after(async () => { await s?.stop(); });

const snapshotFiles = (id: string) => join(s.dataDir, 'snapshots', id);
const counts = consoleCounts;

function sha(path: string): string {
  const h = createHash('sha256');
  const fd = openSync(path, 'r');
  const b = Buffer.alloc(1 << 20);
  try {
    for (let n; (n = readSync(fd, b, 0, b.length, null)) > 0;) h.update(b.subarray(0, n));
  } finally {
    closeSync(fd);
  }
  return h.digest('hex');
}

const create = (body: Record<string, unknown>) => createVm(s, body);
const openConsole = (id: string) => openConsoleOf(s, id);
const sh = (c: ConsoleCollector, line: string) => consoleSh(c, line, 120_000);

/** The VMM's log, for failure messages. */
const vmmLog = (id: string): string => s.vmmLog(id).slice(-3000) || '(no VMM log)';

const start = (id: string) => startVm(s, id, () => `VMM log: ${vmmLog(id)}`);

async function snapshot(id: string, name: string): Promise<any> {
  const r = await s.api('POST', `/v1/vms/${id}/snapshot`, { name });
  assert.equal(r.status, 201, `${JSON.stringify(r.body)}\nVMM log: ${vmmLog(id)}`);
  return r.body;
}

let snap: any;
let atSnapshot = 0;
let memoryHash = '';

test('native: a counting guest is snapshotted and restored: the count goes on, no reboot, its files are there', async () => {
  const source = await create({ name: 'n-counter', memoryMiB: 256, hypervisor: 'native' });
  await start(source.id);
  const c = await openConsole(source.id);
  await c.waitFor(/CAPSULE_READY/, BOOT_MS);
  await sh(c, 'echo before-snapshot > /tmp/marker');
  const sourceUptime = Number((await sh(c, 'cut -d" " -f1 /proc/uptime')).trim());
  c.send('(i=0; while true; do i=$((i+1)); echo count-$i; sleep 0.3; done) &\n');
  await c.waitFor('count-3', 60_000);

  snap = await snapshot(source.id, 'n-counter-snap');
  assert.equal(snap.hypervisor, 'native');
  atSnapshot = Math.max(...counts(c.text));
  const files = readdirSync(snapshotFiles(snap.id)).sort();
  assert.ok(files.includes('state') && files.includes('memory-0'), `the native snapshot's files: ${files.join(', ')}`);
  // memory-0 has the region's size, but all-zero chunks are holes
  const mem = statSync(join(snapshotFiles(snap.id), 'memory-0'));
  assert.equal(mem.size, 256 * 1024 * 1024);
  assert.ok(mem.blocks * 512 < mem.size, `sparse memory file: ${mem.blocks * 512} of ${mem.size} bytes allocated`);
  memoryHash = sha(join(snapshotFiles(snap.id), 'memory-0'));
  // the source goes on (paused only for the copy)
  await c.waitFor(`count-${atSnapshot + 2}`, 60_000);

  const clone = await create({ name: 'n-clone', fromSnapshot: snap.id });
  assert.equal(clone.hypervisor, 'native');
  await start(clone.id);
  const cc = await openConsole(clone.id);
  await assertRestoredGoesOn(cc, atSnapshot, sourceUptime, 120_000);
  const log = s.vmmLog(clone.id);
  assert.match(log, /snapshot loaded \(memory mapped copy-on-write\)/);
  assert.match(log, /seccomp filter installed/, 'the restored VMM is filtered once loaded');
  c.close();
  cc.close();
  assert.equal((await s.api('DELETE', `/v1/vms/${source.id}?force=true`)).status, 204);
  assert.equal((await s.api('DELETE', `/v1/vms/${clone.id}?force=true`)).status, 204);
});

test('native: two clones at once each have their own memory; the snapshot is unchanged; a snapshot of a clone restores', async () => {
  const ids: string[] = [];
  const cons: ConsoleCollector[] = [];
  // One after the other, each counting before the next starts (then both run at once): in the
  // nested lab a restored guest now and then triple-faults when another VMM starts within its
  // first seconds (memory copied instead of mapped too; never seen for a booted guest), which
  // this order keeps out of the test. docs/snapshots.md says what is known.
  for (const n of [1, 2]) {
    const v = await create({ name: `n-many-${n}`, fromSnapshot: snap.id });
    await start(v.id);
    ids.push(v.id);
    const c = await openConsole(v.id);
    cons.push(c);
    await c.waitFor(/count-\d+/, 60_000);
  }
  // Read at once after the restore: with the same saved RNG state and no reseed they would match.
  const random = await Promise.all(cons.map((c) => sh(c, 'head -c 16 /dev/urandom | od -An -tx1 | tr -d " \\n"')));
  assert.equal(new Set(random).size, 2, `each clone's /dev/urandom differs: ${random.join(' ')}`);
  // and each kernel says why: its VM generation ID changed (vmgenid, add_vmfork_randomness)
  const reseeded = await Promise.all(cons.map((c) => sh(c, 'dmesg | grep -c "crng reseeded due to virtual machine fork"')));
  assert.ok(reseeded.every((r) => Number(r.trim()) >= 1), `every clone reseeded its RNG: ${reseeded.map((r) => r.trim()).join(',')}`);
  await sh(cons[0]!, 'echo only-in-one > /tmp/marker');
  assert.equal((await sh(cons[1]!, 'cat /tmp/marker')).trim(), 'before-snapshot', 'a write in one clone is not in the other');
  assert.equal((await sh(cons[0]!, 'cat /tmp/marker')).trim(), 'only-in-one');
  assert.equal(sha(join(snapshotFiles(snap.id), 'memory-0')), memoryHash, "the snapshot's memory file is unchanged (MAP_PRIVATE)");

  // The Cloud Hypervisor trap: clone 1's untouched pages are still the first file's; a snapshot
  // of it must hold them too, or its restore reads zeroes.
  const second = await snapshot(ids[0]!, 'n-second');
  const v = await create({ name: 'n-second-clone', fromSnapshot: second.id });
  await start(v.id);
  const c = await openConsole(v.id);
  await c.waitFor(/count-\d+/, 60_000);
  assert.equal((await sh(c, 'cat /tmp/marker')).trim(), 'only-in-one');
  assert.match(await sh(c, 'ls /bin | wc -l'), /\d+/, 'the guest runs programs from pages the first restore never touched');
  c.close();
  for (const x of cons) x.close();
  for (const id of [...ids, v.id]) assert.equal((await s.api('DELETE', `/v1/vms/${id}?force=true`)).status, 204);
});

test('native: pause to disk ends the VMM; resume restores it and the guest continues', async () => {
  const v = await create({ name: 'n-suspend', fromSnapshot: snap.id });
  const first = await start(v.id);
  const c = await openConsole(v.id);
  await c.waitFor(/count-\d+/, 60_000);
  await sh(c, 'echo kept > /tmp/suspended');
  const p = await s.api('POST', `/v1/vms/${v.id}/pause`, { persist: true });
  assert.equal(p.status, 200, JSON.stringify(p.body));
  assert.equal(p.body.state, 'stopped');
  assert.ok(!isAlive(first.pid), 'the VMM is gone (its memory freed)');
  c.close();
  const r = await s.api('POST', `/v1/vms/${v.id}/resume`);
  assert.equal(r.status, 200, JSON.stringify(r.body));
  assert.equal(r.body.state, 'running');
  const c2 = await openConsole(v.id);
  assert.equal((await sh(c2, 'cat /tmp/suspended')).trim(), 'kept');
  await c2.waitFor(/count-\d+/, 60_000);
  c2.close();
  assert.equal((await s.api('DELETE', `/v1/vms/${v.id}?force=true`)).status, 204);
});

test('native: a corrupt state file is refused with the VMM\'s reason; nothing is left running', async () => {
  const path = join(snapshotFiles(snap.id), 'state');
  const original = readFileSync(path);
  const bad = Buffer.from(original);
  bad[bad.length - 100]! ^= 0xff; // same size: only the VMM's checksum finds it
  const fd = openSync(path, 'r+');
  writeSync(fd, bad, 0, bad.length, 0);
  closeSync(fd);
  try {
    const v = await create({ name: 'n-corrupt', fromSnapshot: snap.id });
    const r = await s.api('POST', `/v1/vms/${v.id}/start`);
    assert.ok(r.status >= 400, `refused: ${r.status} ${JSON.stringify(r.body)}`);
    assert.match(JSON.stringify(r.body), /checksum mismatch/);
    const after = (await s.api('GET', `/v1/vms/${v.id}`)).body;
    assert.notEqual(after.state, 'running');
    assert.equal(after.pid, undefined, 'no VMM left');
    assert.equal((await s.api('DELETE', `/v1/vms/${v.id}?force=true`)).status, 204);
  } finally {
    const w = openSync(path, 'r+');
    writeSync(w, original, 0, original.length, 0);
    closeSync(w);
  }
});
