// The REST contract against a real server process with a real SQLite file (no guest boots).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import Database from 'better-sqlite3';
import { join } from 'node:path';
import { TestServer } from '../test/harness.js';

let s: TestServer;
before(async () => { s = await TestServer.start(); });
after(async () => { await s.stop(); });

const vmRows = () => {
  const db = new Database(join(s.dataDir, 'capsule.db'), { readonly: true });
  try { return db.prepare('SELECT count(*) FROM vms').pluck().get() as number; } finally { db.close(); }
};

test('health needs no token and reports hypervisors', async () => {
  const res = await fetch(`${s.url}/v1/health`);
  assert.equal(res.status, 200);
  const body = await res.json() as { status: string; kvm: boolean; hypervisors: string[] };
  assert.equal(body.status, 'ok');
  assert.equal(typeof body.kvm, 'boolean');
  assert.ok(body.hypervisors.includes('qemu'));
});

test('every other /v1 route needs a valid token', async () => {
  for (const path of ['/v1/vms', '/v1/images', '/v1/openapi.json', '/v1/vms/x']) {
    const none = await fetch(s.url + path);
    assert.equal(none.status, 401, path);
    assert.equal(((await none.json()) as any).error.code, 'unauthorized');
    const wrong = await fetch(s.url + path, { headers: { authorization: 'Bearer cap_wrong' } });
    assert.equal(wrong.status, 401, path);
  }
  // The query-string token is for WebSocket upgrades only.
  const q = await fetch(`${s.url}/v1/vms?access_token=${s.token}`);
  assert.equal(q.status, 401);
});

test('the token is stored hashed, the admin token file is private', async () => {
  const { statSync, readFileSync } = await import('node:fs');
  assert.equal(statSync(join(s.dataDir, 'admin-token')).mode & 0o777, 0o600);
  const dbBytes = readFileSync(join(s.dataDir, 'capsule.db')).toString('latin1') + readFileSync(join(s.dataDir, 'capsule.db-wal')).toString('latin1');
  assert.ok(!dbBytes.includes(s.token), 'the clear token must not be in the database');
  assert.ok(!s.output.includes(s.token), 'the token must not be logged');
});

test('images are listed by name without host paths', async () => {
  const r = await s.api('GET', '/v1/images');
  assert.equal(r.status, 200);
  const def = r.body.items.find((i: any) => i.name === 'default');
  assert.ok(def);
  assert.equal(def.kernel, undefined);
  // the images' files are host paths: none reaches a client (a cmdline's root=/dev/vda is not one)
  const body = JSON.stringify(r.body);
  for (const hostPart of ['vmlinuz', '.cpio', 'rootfs.ext4', s.dataDir, process.env.CAPSULE_TEST_IMAGES ?? '/tmp/capsule-test-images']) {
    assert.ok(!body.includes(hostPart), `no host path (${hostPart})`);
  }
  for (const img of r.body.items) assert.ok(img.rootfs === true || img.rootfs === false, 'rootfs is only a flag');
});

test('create, get, list and delete a VM definition', async () => {
  const c = await s.api('POST', '/v1/vms', { name: 'def-1', image: 'default', vcpus: 2, memoryMiB: 128 });
  assert.equal(c.status, 201);
  assert.equal(c.body.state, 'created');
  assert.equal(c.body.hypervisor, 'qemu');
  assert.deepEqual([c.body.vcpus, c.body.memoryMiB, c.body.image], [2, 128, 'default']);
  const g = await s.api('GET', `/v1/vms/${c.body.id}`);
  assert.deepEqual(g.body, c.body);
  const l = await s.api('GET', '/v1/vms');
  assert.ok(l.body.items.some((v: any) => v.id === c.body.id));
  const d = await s.api('DELETE', `/v1/vms/${c.body.id}`);
  assert.equal(d.status, 204);
  assert.equal((await s.api('GET', `/v1/vms/${c.body.id}`)).status, 404);
});

test('invalid bodies get 400 naming the problem, and change nothing', async () => {
  const before = vmRows();
  const cases: Array<[unknown, string, RegExp]> = [
    [{ name: 'x', vcpus: -1 }, 'vcpus', /vcpus/],
    [{ name: 'x', vcpus: 1.5 }, 'vcpus', /vcpus/],
    [{ name: 'x', memoryMiB: 0 }, 'memoryMiB', /memoryMiB/],
    [{ name: 'x', image: 'nope' }, 'image', /image.*nope/],
    [{ name: 'x', colour: 'red' }, 'colour', /unknown field.*colour/],
    [{ name: '' }, 'name', /name/],
    [{ name: 'bad name!' }, 'name', /name/],
    [{ name: 'x', hypervisor: 'xen' }, 'hypervisor', /hypervisor/],
    [{ vcpus: 1 }, 'name', /name/],
  ];
  for (const [body, field, msg] of cases) {
    const r = await s.api('POST', '/v1/vms', body);
    assert.equal(r.status, 400, JSON.stringify(body));
    assert.equal(r.body.error.code, 'invalid_request');
    assert.equal(r.body.error.field, field, JSON.stringify(body));
    assert.match(r.body.error.message, msg);
  }
  const malformed = await s.api('POST', '/v1/vms', '{"name": ');
  assert.equal(malformed.status, 400);
  assert.match(malformed.body.error.message, /JSON/i);
  const notObject = await s.api('POST', '/v1/vms', '[1,2]');
  assert.equal(notObject.status, 400);
  assert.equal(vmRows(), before, 'no row was written');
});

test('the native backend is offered only where it can run', async () => {
  const health = (await s.api('GET', '/v1/health')).body;
  const r = await s.api('POST', '/v1/vms', { name: 'native-1', hypervisor: 'native', memoryMiB: 256 });
  if (health.hypervisors.includes('native')) {
    assert.equal(r.status, 201);
    assert.equal(health.defaultHypervisor, 'native');
    const small = await s.api('POST', '/v1/vms', { name: 'native-2', hypervisor: 'native', memoryMiB: 128 });
    assert.equal(small.status, 400);
    assert.equal(small.body.error.field, 'memoryMiB');
  } else {
    assert.equal(r.status, 400);
    assert.equal(r.body.error.field, 'hypervisor');
    assert.match(r.body.error.message, /native is not available/);
    assert.equal(health.defaultHypervisor, 'qemu');
    assert.match(health.details.native, /KVM|missing/);
  }
});

test('oversized bodies get 413', async () => {
  const r = await s.api('POST', '/v1/vms', { name: 'big', cmdline: 'x'.repeat(100_000) });
  assert.equal(r.status, 413);
  assert.equal(r.body.error.code, 'payload_too_large');
});

test('unknown VMs get 404 on every route', async () => {
  const id = '00000000-0000-0000-0000-000000000000';
  for (const [m, p] of [['GET', ''], ['DELETE', ''], ['POST', '/start'], ['POST', '/stop'], ['POST', '/pause'], ['POST', '/resume'], ['POST', '/reboot'], ['GET', '/log']] as const) {
    const r = await s.api(m, `/v1/vms/${id}${p}`);
    assert.equal(r.status, 404, `${m} ${p}`);
    assert.equal(r.body.error.code, 'not_found');
  }
  assert.equal((await s.api('GET', '/v1/nothing-here')).status, 404);
});

test('actions not allowed in the current state get 409', async () => {
  const c = await s.api('POST', '/v1/vms', { name: 'idle-1' });
  for (const action of ['pause', 'resume', 'stop', 'reboot']) {
    const r = await s.api('POST', `/v1/vms/${c.body.id}/${action}`);
    assert.equal(r.status, 409, action);
    assert.equal(r.body.error.code, 'invalid_state');
    assert.match(r.body.error.message, /created/);
  }
  const dup = await s.api('POST', '/v1/vms', { name: 'idle-1' });
  assert.equal(dup.status, 409);
  assert.equal((await s.api('GET', `/v1/vms/${c.body.id}`)).body.state, 'created');
});

test('the OpenAPI document describes the API', async () => {
  const r = await s.api('GET', '/v1/openapi.json');
  assert.equal(r.status, 200);
  assert.equal(r.body.openapi, '3.0.3');
  for (const p of ['/v1/vms', '/v1/vms/{id}', '/v1/vms/{id}/start', '/v1/images', '/v1/health']) assert.ok(r.body.paths[p], p);
  assert.ok(r.body.components.schemas.VM);
});

test('migrations are recorded once', () => {
  const db = new Database(join(s.dataDir, 'capsule.db'), { readonly: true });
  try {
    const rows = db.prepare('SELECT version FROM schema_migrations').pluck().all();
    assert.deepEqual(rows, [1, 2, 4, 5, 6, 7, 8, 9, 10, 11]);
    assert.equal(db.pragma('journal_mode', { simple: true }), 'wal');
  } finally { db.close(); }
});
