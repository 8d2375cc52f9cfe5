// Metadata, list filters and pages, and VM TTLs through the API of a real server, with real
// VMMs (QEMU; VMs without a network, which these tests do not need). Timing assertions are
// generous: they check that a deadline is acted on, not how promptly (the host is noisy).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { EventCollector, TestServer, sleep, waitFor } from '../test/harness.js';

let s: TestServer;

before(async () => {
  s = await TestServer.start({ env: { CAPSULE_NETWORK: 'off', CAPSULE_STOP_TIMEOUT: '5' } });
});

after(async () => {
  await s?.stop();
});

const create = async (body: Record<string, unknown>) => {
  const r = await s.api('POST', '/v1/vms', { memoryMiB: 128, hypervisor: 'qemu', ...body });
  assert.equal(r.status, 201, JSON.stringify(r.body));
  return r.body;
};

test('metadata: set on create, shown, replaced by PATCH; lists filter by it and by state; bad metadata is 400 naming the limit', async () => {
  const a = await create({ name: 'meta-a', metadata: { team: 'search', env: 'prod' } });
  const b = await create({ name: 'meta-b', metadata: { team: 'search', env: 'dev' } });
  const c = await create({ name: 'meta-c' });
  assert.deepEqual(a.metadata, { team: 'search', env: 'prod' });
  assert.deepEqual(c.metadata, {});
  const names = async (q: string) => ((await s.api('GET', `/v1/vms?${q}`)).body.items as any[]).map((v) => v.name).filter((n) => n.startsWith('meta-')).sort();
  assert.deepEqual(await names('metadata.team=search'), ['meta-a', 'meta-b']);
  assert.deepEqual(await names('metadata.team=search&metadata.env=dev'), ['meta-b']);
  assert.deepEqual(await names('metadata.team=nobody'), []);
  assert.deepEqual(await names('state=created&metadata.env=prod'), ['meta-a']);
  assert.deepEqual(await names('state=running'), []);
  // PATCH replaces the map (an event says so).
  const events = new EventCollector(s.ws(`/v1/vms/${c.id}/events`));
  await events.opened;
  const p = await s.api('PATCH', `/v1/vms/${c.id}`, { metadata: { team: 'search', env: 'prod' } });
  assert.equal(p.status, 200, JSON.stringify(p.body));
  assert.deepEqual(p.body.metadata, { team: 'search', env: 'prod' });
  await events.waitFor('VM_UPDATED', (m) => m.data.metadata?.env === 'prod');
  events.close();
  assert.deepEqual(await names('metadata.env=prod'), ['meta-a', 'meta-c']);
  // Bad input: 400, nothing written.
  const bad = async (body: unknown, re: RegExp, method = 'POST', path = '/v1/vms') => {
    const r = await s.api(method, path, body);
    assert.equal(r.status, 400, JSON.stringify(r.body));
    assert.match(r.body.error.message, re);
  };
  await bad({ name: 'meta-x', metadata: { n: 1 } }, /metadata/);
  await bad({ name: 'meta-x', metadata: Object.fromEntries(Array.from({ length: 65 }, (_, i) => [`k${i}`, 'v'])) }, /at most 64 keys/);
  await bad({ name: 'meta-x', metadata: { k: 'v'.repeat(1025) } }, /at most 1024 characters/);
  await bad({ name: 'meta-x', metadata: { '': 'v' } }, /metadata keys are 1-128 characters/);
  await bad({}, /network, metadata/, 'PATCH', `/v1/vms/${a.id}`);
  assert.equal((await s.api('GET', '/v1/vms/meta-x')).status, 404);
  const q = await s.api('GET', '/v1/vms?colour=red');
  assert.equal(q.status, 400);
  assert.match(q.body.error.message, /unknown query parameter colour/);
  assert.equal((await s.api('GET', '/v1/vms?state=sleeping')).status, 400);
  // Another tenant's filter finds nothing of ours.
  const t = await s.api('POST', '/v1/tenants', { name: 'meta-tenant' });
  const tok = await s.api('POST', '/v1/tokens', { tenant: t.body.id, name: 'w', scope: 'write' });
  const theirs = await s.api('GET', '/v1/vms?metadata.team=search', undefined, { authorization: `Bearer ${tok.body.token}` });
  assert.deepEqual(theirs.body.items, []);
  for (const v of [a, b, c]) assert.equal((await s.api('DELETE', `/v1/vms/${v.id}`)).status, 204);
});

test('pages: ?limit= gives nextCursor; following it visits every VM once, in creation order, also while VMs come and go', async () => {
  const made = [];
  for (let i = 0; i < 7; i++) made.push(await create({ name: `page-${i}`, metadata: { set: 'pages' } }));
  const seen: string[] = [];
  let cursor: string | undefined;
  let pages = 0;
  do {
    const r = await s.api('GET', `/v1/vms?metadata.set=pages&limit=3${cursor ? `&cursor=${cursor}` : ''}`);
    assert.equal(r.status, 200, JSON.stringify(r.body));
    assert.ok(r.body.items.length <= 3);
    seen.push(...r.body.items.map((v: any) => v.name));
    cursor = r.body.nextCursor;
    if (pages++ === 0) {
      // Deleting an item already seen and adding one after the page do not shift the walk.
      assert.equal((await s.api('DELETE', `/v1/vms/${made[0].id}`)).status, 204);
      made.push(await create({ name: 'page-7', metadata: { set: 'pages' } }));
    }
  } while (cursor);
  assert.deepEqual(seen, ['page-0', 'page-1', 'page-2', 'page-3', 'page-4', 'page-5', 'page-6', 'page-7']);
  assert.equal(pages, 3);
  const last = await s.api('GET', '/v1/vms?metadata.set=pages&limit=7');
  assert.equal(last.body.items.length, 7);
  assert.equal(last.body.nextCursor, undefined, 'no cursor when nothing follows');
  for (const [q, re] of [['limit=0', /limit must be 1-1000/], ['limit=1001', /limit must be 1-1000/], ['limit=2&cursor=nonsense', /cursor/]] as const) {
    const r = await s.api('GET', `/v1/vms?${q}`);
    assert.equal(r.status, 400, q);
    assert.match(r.body.error.message, re);
  }
  for (const v of made.slice(1)) assert.equal((await s.api('DELETE', `/v1/vms/${v.id}`)).status, 204);
});

test('TTL: bad values are 400 naming the range; onTimeout delete deletes the VM on time with VM_TIMEOUT', async () => {
  for (const timeoutSec of [0, -1, 2.5, 30 * 24 * 3600 + 1]) {
    const r = await s.api('POST', '/v1/vms', { name: 'ttl-bad', timeoutSec });
    assert.equal(r.status, 400, String(timeoutSec));
    assert.match(r.body.error.message, /timeoutSec|integer/);
  }
  assert.equal((await s.api('POST', '/v1/vms', { name: 'ttl-bad', onTimeout: 'explode' })).status, 400);

  const vm = await create({ name: 'ttl-delete', timeoutSec: 3, onTimeout: 'delete' });
  assert.equal(vm.timeoutSec, 3);
  assert.equal(vm.onTimeout, 'delete');
  assert.equal(vm.expiresAt, undefined, 'the clock starts with the VM');
  const events = new EventCollector(s.ws(`/v1/vms/${vm.id}/events`));
  await events.opened;
  const t0 = Date.now();
  const started = await s.api('POST', `/v1/vms/${vm.id}/start`);
  assert.equal(started.status, 200, JSON.stringify(started.body));
  const running = (await s.api('GET', `/v1/vms/${vm.id}`)).body;
  const left = Date.parse(running.expiresAt) - Date.now();
  assert.ok(left > 0 && left <= 3000, `expiresAt ${running.expiresAt} is within the TTL of now`);
  const timedOut = await events.waitFor('VM_TIMEOUT', () => true, 30_000);
  assert.equal(timedOut.data.action, 'delete');
  assert.ok(Date.now() - t0 >= 2900, 'not before its time');
  await events.waitFor('VM_DELETED', () => true, 30_000);
  assert.equal((await s.api('GET', `/v1/vms/${vm.id}`)).status, 404);
  events.close();
});

test('TTL: POST /timeout restarts the clock or sets a new TTL; onTimeout stop stops the VM and keeps it; null removes the TTL', async () => {
  const vm = await create({ name: 'ttl-stop', timeoutSec: 4 });
  assert.equal(vm.onTimeout, 'stop');
  assert.equal((await s.api('POST', `/v1/vms/${vm.id}/start`)).status, 200);
  const first = Date.parse((await s.api('GET', `/v1/vms/${vm.id}`)).body.expiresAt);
  await sleep(1500);
  const reset = await s.api('POST', `/v1/vms/${vm.id}/timeout`, {});
  assert.equal(reset.status, 200, JSON.stringify(reset.body));
  assert.ok(Date.parse(reset.body.expiresAt) >= first + 1000, 'the clock restarted from now');
  const longer = await s.api('POST', `/v1/vms/${vm.id}/timeout`, { timeoutSec: 60 });
  assert.equal(longer.body.timeoutSec, 60);
  await sleep(4500); // past both earlier deadlines
  assert.equal((await s.api('GET', `/v1/vms/${vm.id}`)).body.state, 'running', 'the old deadlines are gone');
  const events = new EventCollector(s.ws(`/v1/vms/${vm.id}/events`));
  await events.opened;
  assert.equal((await s.api('POST', `/v1/vms/${vm.id}/timeout`, { timeoutSec: 1 })).status, 200);
  assert.equal((await events.waitFor('VM_TIMEOUT', () => true, 30_000)).data.action, 'stop');
  const stopped = await waitFor('the VM stopped', async () => {
    const v = (await s.api('GET', `/v1/vms/${vm.id}`)).body;
    return v.state === 'stopped' ? v : undefined;
  }, 60_000);
  assert.equal(stopped.expiresAt, undefined);
  assert.equal(stopped.timeoutSec, 1, 'the TTL stays for the next start');
  events.close();
  // Not running: the TTL is kept for the next start, no deadline now; null removes it; {} then has nothing to reset.
  const kept = await s.api('POST', `/v1/vms/${vm.id}/timeout`, { timeoutSec: 90 });
  assert.deepEqual([kept.body.timeoutSec, kept.body.expiresAt], [90, undefined]);
  const none = await s.api('POST', `/v1/vms/${vm.id}/timeout`, { timeoutSec: null });
  assert.equal(none.body.timeoutSec, undefined);
  const nothing = await s.api('POST', `/v1/vms/${vm.id}/timeout`, {});
  assert.equal(nothing.status, 409);
  assert.equal(nothing.body.error.code, 'no_timeout');
  assert.equal((await s.api('POST', `/v1/vms/${vm.id}/timeout`, { timeoutSec: 0 })).status, 400);
  assert.equal((await s.api('DELETE', `/v1/vms/${vm.id}`)).status, 204);
});

test('TTL: a deadline that passes while the server is down is acted on when it comes back', async () => {
  const vm = await create({ name: 'ttl-restart', timeoutSec: 3 });
  assert.equal((await s.api('POST', `/v1/vms/${vm.id}/start`)).status, 200);
  await s.kill9(); // the VMM keeps running
  await sleep(4000);
  await s.launch();
  const v = await waitFor('the VM stopped after the restart', async () => {
    const r = (await s.api('GET', `/v1/vms/${vm.id}`)).body;
    return r.state === 'stopped' ? r : undefined;
  }, 60_000);
  assert.equal(v.expiresAt, undefined);
  const history = new EventCollector(s.ws(`/v1/vms/${vm.id}/events?since=0`));
  await history.opened;
  assert.equal((await history.waitFor('VM_TIMEOUT', () => true, 10_000)).data.action, 'stop', 'its VM_TIMEOUT event is in the history');
  history.close();
  assert.equal((await s.api('DELETE', `/v1/vms/${vm.id}`)).status, 204);
});
