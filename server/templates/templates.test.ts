// Templates and pools through the API with real guests (QEMU; TCG on this host): a template's
// build boots the sandbox image, starts a web server in it, waits for its ready command and
// snapshots it (each step an event); its pool keeps clones running; a claim is served from the
// pool (the web server answers in it at once), the pool refills, a smaller pool falls back to a
// restore, a server restart keeps the pool's VMs; a failed build says why and leaves nothing;
// an image without the agent builds on its ready marker; another tenant sees none of it.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { TestServer, EventCollector, ConsoleCollector, waitFor, TEST_IMAGES_DIR } from '../test/harness.js';
import { buildImage } from '../images/registry.js';

let s: TestServer;
before(async () => {
  buildImage(TEST_IMAGES_DIR, 'sandbox', 'ignore'); // cached
  s = await TestServer.start({ env: { CAPSULE_NETWORK: 'on', CAPSULE_NET_POOL: `10.${234 + (process.pid % 20)}.0.0/24`, CAPSULE_RATE_LIMIT: '1000', CAPSULE_RATE_BURST: '1000' } });
});
after(async () => { await s.stop(); });

const exec = async (vm: string, shell: string): Promise<{ exitCode: number; stdout: string }> => {
  const r = await s.api('POST', `/v1/vms/${vm}/exec`, { shell });
  assert.equal(r.status, 200, JSON.stringify(r.body));
  return r.body;
};
const pool = async (name: string, api = s.api.bind(s)): Promise<any> => {
  const r = await api('GET', '/v1/pools');
  assert.equal(r.status, 200, JSON.stringify(r.body));
  return r.body.items.find((p: any) => p.template === name);
};
const poolReady = (name: string, n: number) => waitFor(`pool ${name} ready ${n}`, async () => ((await pool(name))?.ready === n ? true : undefined), 240_000);

/** The start command: a web server serving a page written at build time (its process lives in every clone). */
const WEB = {
  name: 'web', image: 'sandbox', memoryMiB: 256, pool: 2,
  startCmd: 'mkdir -p ~/site && echo built-$((6*7)) > ~/site/index.html && cd ~/site && exec python3 -m http.server 8000 --bind 127.0.0.1',
  readyCmd: 'curl -sf http://127.0.0.1:8000/index.html',
};

test('a template builds step by step into a snapshot of its own; its pool fills; a claim comes from the pool with the start command running; the pool refills', { timeout: 600_000 }, async () => {
  const events = new EventCollector(s.ws('/v1/events'));
  await events.opened;
  const created = await s.api('POST', '/v1/templates', WEB);
  assert.equal(created.status, 202, JSON.stringify(created.body));
  assert.equal(created.body.state, 'building');
  const id = created.body.id;
  // A claim before it is ready is refused, saying why.
  const early = await s.api('POST', '/v1/vms', { name: 'too-early', template: 'web' });
  assert.deepEqual([early.status, early.body.error.code], [409, 'template_not_ready']);
  assert.match(early.body.error.message, /still building \(step: /);

  await events.waitFor('TEMPLATE_READY', (m) => m.vm === id, 300_000);
  const steps = events.messages.filter((m) => m.event === 'TEMPLATE_PROGRESS' && m.vm === id).map((m) => m.data.step);
  assert.deepEqual(steps, ['booting', 'starting', 'waiting-ready', 'snapshotting']);
  const t = (await s.api('GET', '/v1/templates/web')).body;
  assert.equal(t.state, 'ready');
  assert.equal(t.step, undefined);
  assert.ok(t.snapshot);
  // The template's snapshot is the template's: not among the tenant's snapshots, not deletable on its own.
  assert.equal((await s.api('GET', '/v1/snapshots')).body.items.some((x: any) => x.id === t.snapshot), false);
  assert.equal((await s.api('DELETE', `/v1/snapshots/${t.snapshot}`)).status, 404);
  // The build VM is gone; the pool's VMs are not in the VM list.
  await poolReady('web', 2);
  assert.deepEqual((await s.api('GET', '/v1/vms')).body.items.filter((v: any) => v.template === id), []);

  // Two claims at once: two different pool VMs, running, the web server up in each without a boot.
  const claim = (name: string) => s.api('POST', '/v1/vms', { name, template: 'web', metadata: { who: name }, timeoutSec: 3600 });
  const [a, b] = await Promise.all([claim('claim-a'), claim('claim-b')]);
  for (const r of [a, b]) {
    assert.equal(r.status, 201, JSON.stringify(r.body));
    assert.equal(r.body.startedFrom, 'pool');
    assert.equal(r.headers.get('capsule-started-from'), 'pool');
    assert.equal(r.body.state, 'running');
    assert.equal(r.body.role, undefined);
    assert.equal(r.body.template, id);
    assert.ok(r.body.expiresAt, 'the TTL counts from the claim');
  }
  assert.notEqual(a.body.id, b.body.id);
  assert.equal((await exec(a.body.id, 'curl -sf http://127.0.0.1:8000/index.html')).stdout, 'built-42\n');
  // Each clone's disk is its own.
  await exec(a.body.id, 'echo only-a > ~/site/mine');
  assert.equal((await exec(b.body.id, 'cat ~/site/mine 2>/dev/null || echo absent')).stdout, 'absent\n');
  const listed = (await s.api('GET', '/v1/vms')).body.items.map((v: any) => v.name).sort();
  assert.deepEqual(listed.filter((n: string) => n.startsWith('claim-')), ['claim-a', 'claim-b']);
  assert.ok(events.messages.some((m) => m.event === 'VM_CREATED' && m.vm === a.body.id && m.data.startedFrom === 'pool'));

  // The pool refills in the background.
  await poolReady('web', 2);
  const p = await pool('web');
  assert.deepEqual([p.size, p.warming, p.failed], [2, 0, 0]);
  events.close();
});

test('a smaller pool drops its surplus; an empty pool falls back to a restore, and says so', { timeout: 300_000 }, async () => {
  const kept = (await s.api('PATCH', '/v1/templates/web', { pool: 0 }));
  assert.equal(kept.status, 200, JSON.stringify(kept.body));
  await poolReady('web', 0);
  const r = await s.api('POST', '/v1/vms', { name: 'restored', template: 'web' });
  assert.equal(r.status, 201, JSON.stringify(r.body));
  assert.equal(r.body.startedFrom, 'snapshot');
  assert.equal(r.body.state, 'running');
  assert.equal(r.body.restoreFrom, undefined);
  // The agent answers (after a restore it may take a moment) and the start command's server runs.
  const page = await waitFor('the restored VM answers', async () => {
    const e = await s.api('POST', `/v1/vms/${r.body.id}/exec`, { shell: 'curl -sf http://127.0.0.1:8000/index.html' });
    return e.status === 200 && e.body.exitCode === 0 ? e.body.stdout : undefined;
  }, 60_000);
  assert.equal(page, 'built-42\n');
  const dup = await s.api('POST', '/v1/vms', { name: 'restored', template: 'web' });
  assert.deepEqual([dup.status, dup.body.error.code], [409, 'conflict']);
  assert.equal((await s.api('PATCH', '/v1/templates/web', { pool: 1 })).status, 200);
  await poolReady('web', 1);
});

test('a server restart keeps the pool\'s VMs and serves a claim from them', { timeout: 300_000 }, async () => {
  const before = (await pool('web')).ready;
  assert.equal(before, 1);
  await s.kill9();
  await s.launch();
  // Reattached, not rebuilt: the pool is ready again without a new warm-up.
  const p = await pool('web');
  assert.equal(p.ready, 1, JSON.stringify(p));
  const r = await s.api('POST', '/v1/vms', { name: 'after-restart', template: 'web' });
  assert.equal(r.status, 201, JSON.stringify(r.body));
  assert.equal(r.body.startedFrom, 'pool');
  assert.equal((await exec(r.body.id, 'cat ~/site/index.html')).stdout, 'built-42\n');
});

test('templates: validation names the field; names are unique; another tenant sees none of it', async () => {
  for (const [body, field] of [
    [{ ...WEB, name: 'x', image: 'no-such-image' }, 'image'],
    [{ ...WEB, name: 'x', pool: 65 }, 'pool'],
    // Native: unavailable here (no KVM).
    [{ ...WEB, name: 'x', hypervisor: 'native' }, 'hypervisor'],
    [{ ...WEB, name: '_x' }, 'name'],
    [{ ...WEB, name: 'x', startCmd: '' }, 'startCmd'],
    [{ ...WEB, name: 'x', extra: 1 }, ''],
  ] as const) {
    const r = await s.api('POST', '/v1/templates', body);
    assert.equal(r.status, 400, JSON.stringify(r.body));
    assert.match(r.body.error.message, new RegExp(field), JSON.stringify(r.body));
  }
  const dup = await s.api('POST', '/v1/templates', WEB);
  assert.deepEqual([dup.status, dup.body.error.code], [409, 'conflict']);
  assert.equal((await s.api('POST', '/v1/vms', { name: 'x', template: 'no-such' })).status, 404);

  assert.equal((await s.api('POST', '/v1/tenants', { name: 'other' })).status, 201);
  const other = (await s.api('POST', '/v1/tokens', { tenant: 'other', name: 'o', scope: 'write' })).body.token;
  const as = (method: string, path: string, body?: unknown) => s.api(method, path, body, { authorization: `Bearer ${other}` });
  const t = (await s.api('GET', '/v1/templates/web')).body;
  for (const ref of ['web', t.id]) {
    assert.equal((await as('GET', `/v1/templates/${ref}`)).status, 404);
    assert.equal((await as('DELETE', `/v1/templates/${ref}`)).status, 404);
    assert.equal((await as('PATCH', `/v1/templates/${ref}`, { pool: 5 })).status, 404);
    assert.equal((await as('POST', '/v1/vms', { name: 'steal', template: ref })).status, 404);
  }
  assert.deepEqual((await as('GET', '/v1/templates')).body.items, []);
  assert.deepEqual((await as('GET', '/v1/pools')).body.items, []);
});

test('a build whose ready command never succeeds fails with the reason, leaving no VM and no snapshot', { timeout: 300_000 }, async () => {
  const snapshotsBefore = (await s.api('GET', '/v1/snapshots')).body.items.length;
  const vmDirsBefore = readdirSync(join(s.dataDir, 'vms')).length;
  const r = await s.api('POST', '/v1/templates', { name: 'never', image: 'sandbox', memoryMiB: 256, readyCmd: 'echo not yet; exit 7', readyTimeoutSec: 60, pool: 1 });
  assert.equal(r.status, 202, JSON.stringify(r.body));
  // Beside it, one whose start command fails: the build ends at once, quoting it.
  const broken = await s.api('POST', '/v1/templates', { name: 'broken', image: 'sandbox', memoryMiB: 256, startCmd: 'echo cannot start >&2; exit 3', readyCmd: 'sleep 1; false' });
  assert.equal(broken.status, 202, JSON.stringify(broken.body));
  const failedBuild = (name: string) => waitFor(`the build of ${name} fails`, async () => {
    const t = (await s.api('GET', `/v1/templates/${name}`)).body;
    return t.state === 'failed' ? t : undefined;
  }, 240_000);
  const [failed, brokenFailed] = [await failedBuild('never'), await failedBuild('broken')];
  assert.match(failed.reason, /ready command did not succeed .*exit code 7: not yet/);
  assert.match(brokenFailed.reason, /^the start command ended with exit code 3: cannot start/);
  assert.equal((await s.api('DELETE', '/v1/templates/broken')).status, 204);
  const claim = await s.api('POST', '/v1/vms', { name: 'n', template: 'never' });
  assert.deepEqual([claim.status, claim.body.error.code], [409, 'template_not_ready']);
  assert.match(claim.body.error.message, /failed to build: the ready command/);
  // Its build VM is deleted (its directory too): the VMs left are the ones there before.
  await waitFor('its build VM deleted', () => (readdirSync(join(s.dataDir, 'vms')).length === vmDirsBefore ? true : undefined), 60_000);
  assert.equal((await pool('never'))?.ready, 0);
  assert.equal((await s.api('GET', '/v1/snapshots')).body.items.length, snapshotsBefore);
  assert.equal((await s.api('DELETE', '/v1/templates/never')).status, 204);
});

test('an image without the agent builds on its console ready marker; a VM of it restores and answers on the console', { timeout: 300_000 }, async () => {
  const r = await s.api('POST', '/v1/templates', { name: 'plain', image: 'default', memoryMiB: 256 });
  assert.equal(r.status, 202, JSON.stringify(r.body));
  await waitFor('plain ready', async () => {
    const t = (await s.api('GET', '/v1/templates/plain')).body;
    assert.notEqual(t.state, 'failed', t.reason);
    return t.state === 'ready' ? true : undefined;
  }, 240_000);
  const vm = await s.api('POST', '/v1/vms', { name: 'plain-1', template: 'plain' });
  assert.equal(vm.status, 201, JSON.stringify(vm.body));
  assert.equal(vm.body.startedFrom, 'snapshot');
  const c = new ConsoleCollector(s.ws(`/v1/vms/${vm.body.id}/console`));
  await c.opened;
  c.send('echo restored-$((7*6))\n');
  await c.waitFor('restored-42', 60_000);
  c.close();
});

test('deleting a template drains its pool and deletes its snapshot; VMs claimed from it run on', { timeout: 300_000 }, async () => {
  const t = (await s.api('GET', '/v1/templates/web')).body;
  await poolReady('web', 1);
  const del = await s.api('DELETE', '/v1/templates/web');
  assert.equal(del.status, 204, JSON.stringify(del.body));
  assert.equal((await s.api('GET', '/v1/templates/web')).status, 404);
  assert.equal(await pool('web'), undefined);
  assert.equal(existsSync(join(s.dataDir, 'snapshots', t.snapshot)), false);
  const mine = (await s.api('GET', '/v1/vms')).body.items.find((v: any) => v.name === 'after-restart');
  assert.ok(mine);
  assert.equal(mine.state, 'running');
  assert.equal((await exec(mine.id, 'cat ~/site/index.html')).stdout, 'built-42\n');
});
