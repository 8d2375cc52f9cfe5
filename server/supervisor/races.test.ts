// Issue 8, with real VMMs (QEMU): host-wide admission at start (M1; 503 host_full since issue 10), a forced stop racing a
// reboot (M2), and a pause racing a forced stop (L2). No guest needs to finish booting.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { TestServer, sleep, waitFor } from '../test/harness.js';
import { isAlive } from './process.js';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

let s: TestServer;
before(async () => {
  s = await TestServer.start({ env: { CAPSULE_HOST_MEMORY_MIB: '700', CAPSULE_CPU_OVERCOMMIT: '1', CAPSULE_STOP_TIMEOUT: '5' } });
});
after(async () => { await s.stop(); });

const create = async (name: string, body: Record<string, unknown> = {}) => {
  const r = await s.api('POST', '/v1/vms', { name, memoryMiB: 256, ...body });
  assert.equal(r.status, 201, JSON.stringify(r.body));
  return r.body.id as string;
};
const state = async (id: string) => (await s.api('GET', `/v1/vms/${id}`)).body.state as string;

test('M1: a start that does not fit beside the running VMs is refused with 503 host_full, Retry-After and the numbers', async () => {
  const a = await create('adm-a', { memoryMiB: 512 });
  const b = await create('adm-b', { memoryMiB: 256 });
  assert.equal((await s.api('POST', `/v1/vms/${a}/start`)).status, 200);
  const refused = await s.api('POST', `/v1/vms/${b}/start`);
  assert.equal(refused.status, 503);
  assert.equal(refused.body.error.code, 'host_full');
  assert.equal(refused.headers.get('retry-after'), '10');
  assert.deepEqual(refused.body.error.details, { resource: 'memoryMiB', requested: 256, inUse: 512, capacity: 700 });
  assert.match(refused.body.error.message, /256 MiB of guest memory requested, 512 of 700 in use \(CAPSULE_HOST_MEMORY_MIB\)/);
  assert.equal(await state(b), 'created', 'nothing was launched');
  // Stopping the first gives its room back: the refused start now goes through.
  assert.equal((await s.api('POST', `/v1/vms/${a}/stop?force=true`)).status, 200);
  assert.equal((await s.api('POST', `/v1/vms/${b}/start`)).status, 200);
  assert.equal((await s.api('POST', `/v1/vms/${b}/stop?force=true`)).status, 200);
  // Concurrent starts cannot both take the last room (5 racing for room for 1).
  const racers = await Promise.all([1, 2, 3, 4, 5].map((i) => create(`adm-race-${i}`, { memoryMiB: 400 })));
  const results = await Promise.all(racers.map((id) => s.api('POST', `/v1/vms/${id}/start`)));
  assert.deepEqual(results.map((r) => r.status).sort(), [200, 503, 503, 503, 503]);
  assert.deepEqual((await s.api('GET', '/v1/vms')).body.items.filter((v: { state: string }) => v.state !== 'created' && v.state !== 'stopped').length, 1);
  for (const id of racers) await s.api('POST', `/v1/vms/${id}/stop?force=true`);
  // vCPUs: overcommit 1 on this host allows its CPU count in all (the old variable name still counts).
  const host = (await import('node:os')).availableParallelism();
  const e = await create('adm-e', { vcpus: host });
  const f = await create('adm-f', { vcpus: 1 });
  assert.equal((await s.api('POST', `/v1/vms/${e}/start`)).status, 200);
  const cpu = await s.api('POST', `/v1/vms/${f}/start`);
  assert.equal(cpu.status, 503);
  assert.deepEqual(cpu.body.error.details, { resource: 'vcpus', requested: 1, inUse: host, capacity: host });
  assert.match(cpu.body.error.message, /1 vCPUs requested.*CAPSULE_CPU_OVERCOMMIT/);
  await s.api('POST', `/v1/vms/${e}/stop?force=true`);
  for (const id of [a, b, e, f, ...racers]) assert.equal((await s.api('DELETE', `/v1/vms/${id}?force=true`)).status, 204);
});

test('a start that fails gives its reservation back: refused before launch (a volume file gone) and failed launch', async () => {
  // Refused by a component before anything launches: the VM stays `created`.
  const vol = await s.api('POST', '/v1/volumes', { name: 'adm-vol', sizeMiB: 1 });
  assert.equal(vol.status, 201, JSON.stringify(vol.body));
  const big = await create('adm-missing', { memoryMiB: 512, drives: [{ volume: 'adm-vol' }] });
  rmSync(join(s.dataDir, 'volumes', `${vol.body.id}.img`));
  for (let i = 0; i < 2; i++) {
    const r = await s.api('POST', `/v1/vms/${big}/start`);
    assert.equal(r.status, 409, 'volume_missing both times, never host_full');
    assert.equal(r.body.error.code, 'volume_missing');
  }
  const other = await create('adm-other', { memoryMiB: 512 });
  assert.equal((await s.api('POST', `/v1/vms/${other}/start`)).status, 200, 'the room was given back');
  assert.equal((await s.api('DELETE', `/v1/vms/${other}?force=true`)).status, 204);
  assert.equal((await s.api('DELETE', `/v1/vms/${big}`)).status, 204);

  // A VMM that fails at launch: the VM ends `crashed` and its room is free.
  const dir = mkdtempSync(join(tmpdir(), 'capsule-fake-qemu-'));
  const fake = join(dir, 'qemu');
  writeFileSync(fake, '#!/bin/sh\n[ "$1" = --version ] && { echo "QEMU emulator version 0 (fake)"; exit 0; }\nexit 3\n', { mode: 0o755 });
  const t = await TestServer.start({ env: { CAPSULE_QEMU: fake, CAPSULE_KVM: '0', CAPSULE_JAIL: 'off', CAPSULE_HOST_MEMORY_MIB: '300' } });
  try {
    const id = (await t.api('POST', '/v1/vms', { name: 'fails', memoryMiB: 256 })).body.id as string;
    for (let i = 0; i < 2; i++) {
      const r = await t.api('POST', `/v1/vms/${id}/start`);
      assert.equal(r.status, 500, JSON.stringify(r.body));
      assert.equal(r.body.error.code, 'launch_failed', 'the second start is not host_full: the first gave its room back');
    }
  } finally {
    await t.stop();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('M2: a forced stop racing a reboot wins (3 of 3 trials)', async () => {
  const id = await create('race-reboot');
  for (let trial = 0; trial < 3; trial++) {
    const started = await s.api('POST', `/v1/vms/${id}/start`);
    assert.equal(started.status, 200, JSON.stringify(started.body));
    const reboot = s.api('POST', `/v1/vms/${id}/reboot`);
    await sleep(20 + trial * 40);
    const stop = await s.api('POST', `/v1/vms/${id}/stop?force=true`);
    assert.equal(stop.status, 200, JSON.stringify(stop.body));
    await reboot; // 200 or 409: either way it must not bring the VM back
    await sleep(1500);
    assert.equal(await state(id), 'stopped', `trial ${trial}: the forced stop wins`);
    const pid = started.body.pid as number;
    assert.ok(!isAlive(pid), 'the VMM is gone');
  }
  assert.equal((await s.api('DELETE', `/v1/vms/${id}`)).status, 204);
});

test('L2: a pause racing a forced stop answers 200 or 409, never 500', async () => {
  const id = await create('race-pause');
  for (let trial = 0; trial < 5; trial++) {
    assert.equal((await s.api('POST', `/v1/vms/${id}/start`)).status, 200);
    const [pause, stop] = await Promise.all([
      s.api('POST', `/v1/vms/${id}/pause`),
      sleep(trial * 3).then(() => s.api('POST', `/v1/vms/${id}/stop?force=true`)),
    ]);
    assert.equal(stop.status, 200);
    assert.ok(pause.status === 200 || pause.status === 409, `pause: ${pause.status} ${JSON.stringify(pause.body)}`);
    await waitFor('stopped', async () => (await state(id)) === 'stopped' || undefined, 10_000);
  }
  assert.doesNotMatch(s.output, /"msg":"unhandled error"/);
  assert.equal((await s.api('DELETE', `/v1/vms/${id}`)).status, 204);
});
