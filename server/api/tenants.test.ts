// Tenants, tokens, scopes, ownership, quotas, revocation, the audit log: a real server process
// with a real SQLite file. Only the quota race test and the console revocation boot a guest.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import WebSocket from 'ws';
import { TestServer, sleep, waitFor } from '../test/harness.js';

let s: TestServer;
before(async () => { s = await TestServer.start({ env: { CAPSULE_RATE_LIMIT: '100000', CAPSULE_RATE_BURST: '100000' } }); });
after(async () => { await s.stop(); });

type Res = Awaited<ReturnType<TestServer['api']>>;
/** An API call with another token. */
const as = (token: string, method: string, path: string, body?: unknown): Promise<Res> =>
  s.api(method, path, body, { authorization: `Bearer ${token}` });

async function tenant(name: string, quotas?: Record<string, number | null>): Promise<{ id: string; name: string }> {
  const r = await s.api('POST', '/v1/tenants', quotas ? { name, quotas } : { name });
  assert.equal(r.status, 201, JSON.stringify(r.body));
  return r.body;
}

async function token(tenantRef: string, scope: 'admin' | 'write' | 'read', via = s.token, extra: Record<string, unknown> = {}): Promise<{ id: string; token: string }> {
  const r = await as(via, 'POST', '/v1/tokens', { tenant: tenantRef, name: `${scope}-${Math.random().toString(36).slice(2, 8)}`, scope, ...extra });
  assert.equal(r.status, 201, JSON.stringify(r.body));
  return r.body;
}

/** The status an upgrade gets (101 when it opened; the socket is closed again). */
function wsStatus(path: string, tok: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const ws = s.ws(path, tok);
    ws.once('open', () => { ws.close(); resolve(101); });
    ws.once('unexpected-response', (_req, res) => { resolve(res.statusCode ?? 0); res.resume(); });
    ws.once('error', (e) => { if (!/Unexpected server response/.test(e.message)) reject(e); });
  });
}

/** Resolves with the close code and reason of a socket. */
const closed = (ws: WebSocket) => new Promise<{ code: number; reason: string }>((r) => ws.once('close', (code, reason) => r({ code, reason: reason.toString() })));
const opened = (ws: WebSocket) => new Promise<void>((r, j) => { ws.once('open', () => r()); ws.once('error', j); });

test('tenants: create, list, get by id or name with usage, rename, quotas, conflicts; admin only', async () => {
  const t = await tenant('acme', { vms: 3, vcpus: null });
  assert.deepEqual(t, { ...t, name: 'acme', quotas: { vms: 3, vcpus: null, memoryMiB: null, volumeMiB: null, snapshotMiB: null } });
  assert.equal((await s.api('POST', '/v1/tenants', { name: 'acme' })).status, 409);
  assert.equal((await s.api('POST', '/v1/tenants', { name: 'bad name' })).body.error.field, 'name');
  assert.equal((await s.api('POST', '/v1/tenants', { name: 'x', quotas: { disks: 1 } })).status, 400);
  const list = (await s.api('GET', '/v1/tenants')).body.items.map((x: any) => x.name);
  assert.ok(list.includes('default') && list.includes('acme'));
  const byName = await s.api('GET', '/v1/tenants/acme');
  assert.equal(byName.body.id, t.id);
  assert.deepEqual(byName.body.usage, { vms: 0, vcpus: 0, memoryMiB: 0, volumeMiB: 0, snapshotMiB: 0 });
  const p = await s.api('PATCH', `/v1/tenants/${t.id}`, { name: 'acme2', quotas: { vms: null, memoryMiB: 512 } });
  assert.equal(p.status, 200);
  assert.deepEqual([p.body.name, p.body.quotas], ['acme2', { vms: null, vcpus: null, memoryMiB: 512, volumeMiB: null, snapshotMiB: null }]);
  assert.equal((await s.api('GET', '/v1/tenants/nope')).status, 404);
  const w = await token('acme2', 'write');
  for (const [m, path] of [['GET', '/v1/tenants'], ['POST', '/v1/tenants'], ['GET', `/v1/tenants/${t.id}`], ['DELETE', `/v1/tenants/${t.id}`], ['GET', '/v1/audit']] as const) {
    const r = await as(w.token, m, path, m === 'POST' ? { name: 'z' } : undefined);
    assert.equal(r.status, 403, `${m} ${path}`);
    assert.equal(r.body.error.code, 'forbidden');
    assert.match(r.body.error.message, new RegExp(`token scope 'write' cannot ${m} /v1/(tenants|audit).*admin only`));
  }
  // Empty but for tokens: deleted without force, its tokens with it.
  assert.equal((await s.api('DELETE', `/v1/tenants/${t.id}`)).status, 204);
  assert.equal((await as(w.token, 'GET', '/v1/vms')).status, 401);
});

test('tokens: shown once as cap_ + hex, listed without secret or hash, scoped to the tenant; revoked at once; expiry', async () => {
  const a = await tenant('tok-a');
  const b = await tenant('tok-b');
  const wa = await token('tok-a', 'write');
  assert.match(wa.token, /^cap_[0-9a-f]{64}$/);
  // The write token manages its own tenant's tokens (by default its own tenant), never admin ones, never another tenant's.
  const ra = await as(wa.token, 'POST', '/v1/tokens', { name: 'ci-read', scope: 'read' });
  assert.equal(ra.status, 201);
  assert.equal(ra.body.tenant, a.id);
  assert.equal(ra.body.tenantName, 'tok-a');
  const adm = await as(wa.token, 'POST', '/v1/tokens', { name: 'x', scope: 'admin' });
  assert.equal(adm.status, 403);
  assert.match(adm.body.error.message, /token scope 'write' cannot create an admin token/);
  for (const ref of ['tok-b', b.id, 'no-such-tenant']) {
    const other = await as(wa.token, 'POST', '/v1/tokens', { tenant: ref, name: 'x', scope: 'read' });
    assert.equal(other.status, 404, ref);
    assert.equal(other.body.error.field, 'tenant');
  }
  const wb = await token('tok-b', 'write');
  const adminOfB = await token('tok-b', 'admin');
  const outranked = await as(wb.token, 'DELETE', `/v1/tokens/${adminOfB.id}`);
  assert.equal(outranked.status, 403);
  assert.match(outranked.body.error.message, /token scope 'write' cannot revoke an admin token/);
  // Lists: metadata only; a tenant sees its own.
  const mine = await as(wa.token, 'GET', '/v1/tokens');
  assert.deepEqual(mine.body.items.map((t: any) => t.id).sort(), [wa.id, ra.body.id].sort());
  const all = await s.api('GET', '/v1/tokens');
  const text = JSON.stringify(all.body);
  for (const secret of [wa.token, ra.body.token, wb.token, adminOfB.token, s.token]) assert.ok(!text.includes(secret) && !text.includes(secret.slice(4)), 'no secret listed');
  assert.ok(all.body.items.every((t: any) => t.token === undefined && t.hash === undefined));
  assert.deepEqual(Object.keys(all.body.items[0]).sort(), ['createdAt', 'id', 'name', 'scope', 'tenant', 'tenantName']);
  assert.deepEqual((await s.api('GET', '/v1/tokens?tenant=tok-b')).body.items.map((t: any) => t.id), [wb.id, adminOfB.id]);
  // Whoami.
  const me = await as(ra.body.token, 'GET', '/v1/whoami');
  assert.deepEqual([me.body.id, me.body.scope, me.body.tenant.name, me.body.tenant.usage.vms], [ra.body.id, 'read', 'tok-a', 0]);
  // Another tenant's token is not found; one's own tenant's is revoked at once.
  assert.equal((await as(wb.token, 'DELETE', `/v1/tokens/${ra.body.id}`)).status, 404);
  assert.equal((await as(ra.body.token, 'GET', '/v1/vms')).status, 200);
  assert.equal((await as(wa.token, 'DELETE', `/v1/tokens/${ra.body.id}`)).status, 204);
  const gone = await as(ra.body.token, 'GET', '/v1/vms');
  assert.equal(gone.status, 401);
  assert.equal(gone.body.error.message, 'invalid token');
  // Expiry: in the past is refused; a token past its expiry gets 401 "token expired".
  const past = await s.api('POST', '/v1/tokens', { tenant: 'tok-a', name: 'old', scope: 'read', expiresAt: '2020-01-01T00:00:00Z' });
  assert.equal(past.status, 400);
  assert.equal(past.body.error.field, 'expiresAt');
  // A write token that expires cannot make a token that outlives it.
  const mortal = await token('tok-a', 'write', s.token, { expiresAt: new Date(Date.now() + 3_600_000).toISOString() });
  const child = await as(mortal.token, 'POST', '/v1/tokens', { name: 'child', scope: 'read' });
  assert.equal(child.body.expiresAt, (await as(mortal.token, 'GET', '/v1/whoami')).body.expiresAt);
  const longer = await as(mortal.token, 'POST', '/v1/tokens', { name: 'child', scope: 'read', expiresAt: new Date(Date.now() + 7_200_000).toISOString() });
  assert.equal(longer.status, 400);
  assert.equal(longer.body.error.field, 'expiresAt');
  const soon = await token('tok-a', 'read', s.token, { expiresAt: new Date(Date.now() + 1500).toISOString() });
  assert.equal((await as(soon.token, 'GET', '/v1/vms')).status, 200);
  const ws = s.ws('/v1/events', soon.token);
  await opened(ws);
  const wsClosed = closed(ws);
  await sleep(1600);
  const expired = await as(soon.token, 'GET', '/v1/vms');
  assert.equal(expired.status, 401);
  assert.equal(expired.body.error.message, 'token expired');
  assert.deepEqual(await wsClosed, { code: 4001, reason: 'token expired' });
});

test('a read token cannot change anything: 403 naming the scope on every mutating route of the API', async () => {
  await tenant('ro');
  const r = await token('ro', 'read');
  const doc = (await s.api('GET', '/v1/openapi.json')).body;
  let checked = 0;
  for (const [path, ops] of Object.entries(doc.paths as Record<string, Record<string, unknown>>)) {
    for (const method of Object.keys(ops)) {
      if (method === 'get' || method === 'head' || method === 'options') continue; // reads (the ports proxy offers all three)
      const concrete = path.replace(/\{[^}]+\}/g, 'x');
      const res = await as(r.token, method.toUpperCase(), concrete, {});
      assert.equal(res.status, 403, `${method} ${path}`);
      assert.equal(res.body.error.code, 'forbidden');
      assert.ok(res.body.error.message.startsWith(`token scope 'read' cannot ${method.toUpperCase()} ${concrete}`), res.body.error.message);
      checked++;
    }
  }
  assert.ok(checked >= 15, `mutating routes found: ${checked}`);
  // Reading works.
  assert.equal((await as(r.token, 'GET', '/v1/vms')).status, 200);
  assert.equal((await as(r.token, 'GET', '/v1/volumes')).status, 200);
});

test('ownership: another tenant gets 404 — the same answer as for no such thing — on every VM and volume route, WebSockets included', async () => {
  await tenant('own-a');
  await tenant('own-b');
  const a = await token('own-a', 'write');
  const b = await token('own-b', 'write');
  const vol = (await as(a.token, 'POST', '/v1/volumes', { name: 'a-data', sizeMiB: 4 })).body;
  const vm = await as(a.token, 'POST', '/v1/vms', { name: 'a-vm', memoryMiB: 128, balloon: true, drives: [{ volume: 'a-data' }] });
  assert.equal(vm.status, 201);
  assert.equal(vm.body.tenant, (await as(a.token, 'GET', '/v1/whoami')).body.tenant.id);
  const bVol = (await as(b.token, 'POST', '/v1/volumes', { name: 'b-data', sizeMiB: 4 })).body;
  const bVm = (await as(b.token, 'POST', '/v1/vms', { name: 'a-vm', memoryMiB: 128 })).body; // names are per tenant
  assert.equal(bVm.name, 'a-vm');

  const doc = (await s.api('GET', '/v1/openapi.json')).body;
  const bodies: Record<string, unknown> = { '/v1/vms/{id}/drives': { volume: 'b-data' }, '/v1/vms/{id}/balloon': { targetMiB: 64 } };
  let checked = 0;
  for (const [path, ops] of Object.entries(doc.paths as Record<string, Record<string, unknown>>)) {
    const target = path.startsWith('/v1/vms/{id}') ? vm.body.id : path.startsWith('/v1/volumes/{id}') ? vol.id : undefined;
    if (!target) continue;
    for (const method of Object.keys(ops)) {
      const at = (id: string) => path.replace('{id}', id).replace('{driveId}', 'drive-0');
      const body = method === 'get' || method === 'head' || method === 'delete' ? undefined : bodies[path];
      const theirs = await as(b.token, method.toUpperCase(), at(target), body);
      const nothing = await as(b.token, method.toUpperCase(), at(path.startsWith('/v1/vms') ? '00000000-0000-4000-8000-000000000000' : 'no-such-volume'), body);
      assert.equal(theirs.status, 404, `${method} ${path}: ${JSON.stringify(theirs.body)}`);
      if (method === 'head') { assert.equal(nothing.status, 404); checked++; continue; } // no body to compare
      assert.equal(theirs.body.error.code, 'not_found');
      assert.equal(theirs.body.error.message.replace(target, 'ID'), nothing.body.error.message.replace(/00000000-0000-4000-8000-000000000000|no-such-volume/, 'ID'), `${method} ${path}: no hint`);
      checked++;
    }
  }
  assert.ok(checked >= 12, `routes checked: ${checked}`);
  // Volumes by name: b's own "a-data" does not exist; a's volume by id is not found.
  assert.equal((await as(b.token, 'GET', '/v1/volumes/a-data')).status, 404);
  // Routes outside the OpenAPI document: the log and the WebSockets.
  assert.equal((await as(b.token, 'GET', `/v1/vms/${vm.body.id}/log`)).status, 404);
  assert.equal(await wsStatus(`/v1/vms/${vm.body.id}/events`, b.token), 404);
  assert.equal(await wsStatus(`/v1/vms/${vm.body.id}/console`, b.token), 404);
  assert.equal(await wsStatus(`/v1/vms/${vm.body.id}/events`, a.token), 101);
  // Another tenant's volume cannot be attached or named in a definition: not found.
  const attach = await as(b.token, 'POST', `/v1/vms/${bVm.id}/drives`, { volume: vol.id });
  assert.equal(attach.status, 404);
  assert.equal(attach.body.error.field, 'volume');
  const define = await as(b.token, 'POST', '/v1/vms', { name: 'b-2', drives: [{ volume: vol.id }] });
  assert.equal(define.status, 404);
  assert.equal(define.body.error.field, 'drives.0.volume');
  // The admin sees and acts on everything.
  assert.equal((await s.api('GET', `/v1/vms/${vm.body.id}`)).status, 200);
  assert.equal((await s.api('GET', `/v1/volumes/${bVol.id}`)).status, 200);
  assert.equal((await s.api('GET', '/v1/volumes/b-data')).body.id, bVol.id, 'an admin finds a volume by a name only one tenant uses');
});

test('lists and the event stream show one\'s own; the admin sees all and filters by tenant', async () => {
  const ta = await tenant('list-a');
  await tenant('list-b');
  const a = await token('list-a', 'write');
  const b = await token('list-b', 'read');
  const wb = await token('list-b', 'write');
  const evA = s.ws('/v1/events', a.token);
  const evB = s.ws('/v1/events', b.token);
  const evAdminA = s.ws('/v1/events?tenant=list-a', s.token);
  const got = new Map<WebSocket, any[]>();
  for (const ws of [evA, evB, evAdminA]) { got.set(ws, []); ws.on('message', (d) => got.get(ws)!.push(JSON.parse(d.toString()))); }
  await Promise.all([opened(evA), opened(evB), opened(evAdminA)]);
  const vmA = (await as(a.token, 'POST', '/v1/vms', { name: 'l-1', memoryMiB: 128 })).body;
  const vmB = (await as(wb.token, 'POST', '/v1/vms', { name: 'l-1', memoryMiB: 128 })).body;
  await as(a.token, 'POST', '/v1/volumes', { name: 'l-vol', sizeMiB: 1 });
  await waitFor('events', () => got.get(evB)!.length >= 1 && got.get(evA)!.length >= 1 && got.get(evAdminA)!.length >= 1);
  await sleep(200);
  const vmsOf = (ws: WebSocket) => [...new Set(got.get(ws)!.map((e) => e.vm))];
  assert.deepEqual(vmsOf(evA), [vmA.id]);
  assert.deepEqual(vmsOf(evB), [vmB.id]);
  assert.deepEqual(vmsOf(evAdminA), [vmA.id]);
  // Replay is filtered the same way.
  const replay = s.ws('/v1/events?since=0', b.token);
  const replayed: any[] = [];
  replay.on('message', (d) => replayed.push(JSON.parse(d.toString())));
  await opened(replay);
  await waitFor('replay', () => replayed.length >= 1);
  await sleep(200);
  assert.ok(replayed.every((e) => e.vm === vmB.id), 'replay: only the tenant\'s events');
  for (const ws of [evA, evB, evAdminA, replay]) ws.close();

  const names = (r: Res) => r.body.items.map((x: any) => x.id);
  assert.deepEqual(names(await as(a.token, 'GET', '/v1/vms')), [vmA.id]);
  assert.deepEqual(names(await as(b.token, 'GET', '/v1/vms')), [vmB.id]);
  assert.deepEqual(names(await as(b.token, 'GET', `/v1/vms?tenant=${ta.id}`)), [vmB.id], 'a tenant\'s ?tenant= is ignored');
  const all = names(await s.api('GET', '/v1/vms'));
  assert.ok(all.includes(vmA.id) && all.includes(vmB.id));
  assert.deepEqual(names(await s.api('GET', '/v1/vms?tenant=list-a')), [vmA.id]);
  assert.deepEqual(names(await s.api('GET', `/v1/vms?tenant=${ta.id}`)), [vmA.id]);
  assert.equal((await s.api('GET', '/v1/vms?tenant=nope')).status, 404);
  assert.deepEqual((await as(b.token, 'GET', '/v1/volumes')).body.items, []);
  assert.deepEqual((await s.api('GET', '/v1/volumes?tenant=list-a')).body.items.map((v: any) => v.name), ['l-vol']);
});

test('quotas: 409 quota_exceeded with the numbers; two concurrent starts cannot both pass; usage; revocation closes console and events sockets; force delete', async () => {
  const t = await tenant('quota', { vms: 2, vcpus: 1, memoryMiB: 1024, volumeMiB: 10 });
  const w = await token('quota', 'write');
  const v1 = (await as(w.token, 'POST', '/v1/vms', { name: 'q-1', vcpus: 1, memoryMiB: 128 })).body;
  const v2 = (await as(w.token, 'POST', '/v1/vms', { name: 'q-2', vcpus: 1, memoryMiB: 128 })).body;
  const third = await as(w.token, 'POST', '/v1/vms', { name: 'q-3' });
  assert.equal(third.status, 409);
  assert.deepEqual(third.body.error, {
    code: 'quota_exceeded', message: 'quota vms exceeded: limit 2, in use 2, requested 1 (tenant quota)',
    details: { quota: 'vms', limit: 2, inUse: 2, requested: 1, tenant: t.id },
  });
  assert.equal((await as(w.token, 'POST', '/v1/volumes', { name: 'q-v1', sizeMiB: 8 })).status, 201);
  const big = await as(w.token, 'POST', '/v1/volumes', { name: 'q-v2', sizeMiB: 4 });
  assert.equal(big.status, 409);
  assert.match(big.body.error.message, /^quota volumeMiB exceeded: limit 10, in use 8, requested 4/);

  // Both VMs fit the vCPU quota alone, not together: exactly one start wins.
  const [r1, r2] = await Promise.all([as(w.token, 'POST', `/v1/vms/${v1.id}/start`), as(w.token, 'POST', `/v1/vms/${v2.id}/start`)]);
  const statuses = [r1.status, r2.status].sort();
  assert.deepEqual(statuses, [200, 409], JSON.stringify([r1.body, r2.body]));
  const lost = r1.status === 409 ? r1 : r2;
  assert.equal(lost.body.error.code, 'quota_exceeded');
  assert.match(lost.body.error.message, /^quota vcpus exceeded: limit 1, in use 1, requested 1/);
  const running = r1.status === 200 ? v1 : v2;
  const usage = (await s.api('GET', `/v1/tenants/${t.id}`)).body.usage;
  assert.deepEqual(usage, { vms: 2, vcpus: 1, memoryMiB: 128, volumeMiB: 8, snapshotMiB: 0 });

  // Revoking the token closes its console and events sockets at once, with the reason.
  await waitFor('running', async () => (await s.api('GET', `/v1/vms/${running.id}`)).body.state === 'running' || undefined);
  // A read token watches the console but cannot type into it.
  const reader = await token('quota', 'read');
  const watcher = s.ws(`/v1/vms/${running.id}/console`, reader.token);
  let seen = '';
  watcher.on('message', (d: Buffer) => { seen += d.toString(); });
  await opened(watcher);
  watcher.send('poweroff\n');
  await waitFor('the read-only notice', () => seen.includes("token scope 'read': input ignored") || undefined, 10_000);
  watcher.close();
  const console = s.ws(`/v1/vms/${running.id}/console`, w.token);
  const events = s.ws('/v1/events', w.token);
  await Promise.all([opened(console), opened(events)]);
  const [cClosed, eClosed] = [closed(console), closed(events)];
  assert.equal((await s.api('DELETE', `/v1/tokens/${w.id}`)).status, 204);
  assert.deepEqual(await eClosed, { code: 4001, reason: 'token revoked' });
  assert.deepEqual(await cClosed, { code: 4001, reason: 'token revoked' });

  // A tenant with resources goes only with force, which stops and deletes them.
  const refused = await s.api('DELETE', '/v1/tenants/quota');
  assert.equal(refused.status, 409);
  assert.equal(refused.body.error.code, 'tenant_not_empty');
  const pid = (await s.api('GET', `/v1/vms/${running.id}`)).body.pid as number;
  assert.equal((await s.api('DELETE', '/v1/tenants/quota?force=true')).status, 204);
  for (const v of [v1, v2]) assert.equal((await s.api('GET', `/v1/vms/${v.id}`)).status, 404);
  assert.deepEqual((await s.api('GET', `/v1/volumes?tenant=${t.id}`)).status, 404, 'the tenant is gone');
  assert.ok(!(await s.api('GET', '/v1/volumes')).body.items.some((v: any) => v.name === 'q-v1'));
  assert.throws(() => process.kill(pid, 0), 'the VMM was stopped');
});

test('audit: every change with who, what and outcome; filters; admin only', async () => {
  const t = await tenant('aud');
  const w = await token('aud', 'write');
  const r = await token('aud', 'read');
  const vm = (await as(w.token, 'POST', '/v1/vms', { name: 'au-1', memoryMiB: 128 })).body;
  await as(w.token, 'POST', `/v1/vms/${vm.id}/pause`); // 409: not running
  await as(r.token, 'DELETE', `/v1/vms/${vm.id}`); // 403
  await as(w.token, 'GET', `/v1/vms/${vm.id}`); // a read: not audited
  const entries = (await s.api('GET', '/v1/audit?tenant=aud')).body.items;
  const mine = entries.filter((e: any) => e.token === w.id || e.token === r.id).map((e: any) => [e.method, e.route, e.resourceType, e.resourceId, e.status, e.tenant]);
  assert.deepEqual(mine, [
    ['DELETE', '/v1/vms/:id', 'vm', vm.id, 403, t.id],
    ['POST', '/v1/vms/:id/pause', 'vm', vm.id, 409, t.id],
    ['POST', '/v1/vms', 'vm', vm.id, 201, t.id],
  ]);
  // The admin's token creations for the tenant are the tenant's entries too (resourceTenant).
  assert.ok(entries.some((e: any) => e.route === '/v1/tokens' && e.resourceId === w.id && e.resourceTenant === t.id));
  const byVm = (await s.api('GET', `/v1/audit?vm=${vm.id}`)).body.items;
  assert.equal(byVm.length, 3);
  const since = new Date(Date.now() + 60_000).toISOString();
  assert.deepEqual((await s.api('GET', `/v1/audit?since=${since}`)).body.items, []);
  assert.equal((await s.api('GET', '/v1/audit?limit=2')).body.items.length, 2);
  assert.equal((await s.api('GET', '/v1/audit?since=yesterday')).status, 400);
  assert.equal((await as(w.token, 'GET', '/v1/audit')).status, 403);
});

test('per-tenant rate limit: a tenant\'s tokens share one bucket (429), other tenants are unaffected; the audit log is pruned to its size', async () => {
  const rs = await TestServer.start({ env: { CAPSULE_RATE_LIMIT: '1000', CAPSULE_RATE_BURST: '1000', CAPSULE_TENANT_RATE: '1', CAPSULE_TENANT_BURST: '12', CAPSULE_AUDIT_MAX_ROWS: '10' } });
  try {
    const call = (tok: string, method: string, path: string, body?: unknown) => rs.api(method, path, body, { authorization: `Bearer ${tok}` });
    for (const name of ['rate-a', 'rate-b']) assert.equal((await rs.api('POST', '/v1/tenants', { name })).status, 201);
    const mk = async (tenantName: string) => (await rs.api('POST', '/v1/tokens', { tenant: tenantName, name: 'x', scope: 'write' })).body.token as string;
    const [a1, a2, b1] = [await mk('rate-a'), await mk('rate-a'), await mk('rate-b')];
    // 12 changes from two tokens of one tenant pass (each token's own bucket is far from full), then the tenant's bucket is full...
    const answers: Res[] = [];
    for (let i = 0; i < 20; i++) answers.push(await call(i % 2 ? a1 : a2, 'POST', '/v1/volumes', { name: `v${i}`, sizeMiB: 1 }));
    assert.deepEqual(answers.slice(0, 12).map((r) => r.status), Array(12).fill(201));
    const limited = answers.find((r) => r.status === 429);
    assert.ok(limited, 'the tenant was limited');
    assert.match(limited.body.error.message, /too many requests for this tenant: limit 1\/s, burst 12/);
    assert.ok(Number(limited.headers.get('retry-after')) >= 1);
    // ...another tenant is unaffected.
    assert.equal((await call(b1, 'GET', '/v1/vms')).status, 200);
    await sleep(1100);
    const audit = (await rs.api('GET', '/v1/audit?limit=1000')).body.items;
    assert.ok(audit.length <= 10, `pruned to 10: ${audit.length}`);
    assert.equal(audit[0].route, '/v1/volumes', 'the newest are kept');
  } finally {
    await rs.stop();
  }
});
