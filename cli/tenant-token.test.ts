// capsule tenant … and capsule token … against a stand-in for the tenants API of issue 10
// (routes and shapes as the issue describes them), recording what the CLI sends. The same
// commands against the real server belong in a test next to the tenants routes: with
// CliUser (./test/run-cli.ts) that is `await user.login(server); await user.json(['tenant', ...])`.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type IncomingMessage, type Server } from 'node:http';
import { CliUser } from './test/run-cli.js';

const ADMIN = 'cap_admin';
interface Tenant { id: string; name: string; quotas: Record<string, number | null>; createdAt: string; updatedAt: string }
interface Token { id: string; tenantId: string; name: string; scope: string; expiresAt?: string; createdAt: string }
const tenants: Tenant[] = [];
const tokens: Token[] = [];
const requests: Array<{ method: string; path: string; body: any }> = [];
let server: Server;
let url = '';
let user: CliUser;
let next = 1;
const now = '2026-12-01T00:00:00.000Z';
const uuid = () => `00000000-0000-4000-8000-${String(next++).padStart(12, '0')}`;

async function readBody(req: IncomingMessage): Promise<any> {
  let text = '';
  for await (const chunk of req) text += chunk;
  return text ? JSON.parse(text) : undefined;
}

before(async () => {
  tenants.push({ id: uuid(), name: 'default', quotas: { vms: null, vcpus: null, memoryMiB: null, volumeMiB: null }, createdAt: now, updatedAt: now });
  server = createServer(async (req, res) => {
    const u = new URL(req.url!, 'http://x');
    const body = await readBody(req);
    requests.push({ method: req.method!, path: u.pathname + u.search, body });
    const send = (status: number, value?: unknown) => {
      res.writeHead(status, { 'content-type': 'application/json' });
      res.end(value === undefined ? undefined : JSON.stringify(value));
    };
    const fail = (status: number, code: string, message: string) => send(status, { error: { code, message } });
    if (req.headers.authorization !== `Bearer ${ADMIN}`) return fail(401, 'unauthorized', 'invalid token');
    const [, , resource, id] = u.pathname.split('/');
    const tenant = tenants.find((t) => t.id === id);
    if (resource === 'whoami') return send(200, { id: 't0', name: 'admin', scope: 'admin', createdAt: now, tenant: { id: tenants[0]!.id, name: 'default', quotas: tenants[0]!.quotas, usage: { vms: 0, vcpus: 0, memoryMiB: 0, volumeMiB: 0 } } });
    if (resource === 'tenants' && !id && req.method === 'GET') return send(200, { items: tenants.map((t) => ({ ...t, usage: { vms: 1, vcpus: 2, memoryMiB: 512, volumeMiB: 0 } })) });
    if (resource === 'tenants' && !id && req.method === 'POST') {
      const t = { id: uuid(), name: body.name, quotas: { vms: null, vcpus: null, memoryMiB: null, volumeMiB: null, ...body.quotas }, createdAt: now, updatedAt: now };
      tenants.push(t);
      return send(201, t);
    }
    if (resource === 'tenants' && tenant && req.method === 'GET') return send(200, { ...tenant, usage: { vms: 1, vcpus: 2, memoryMiB: 512, volumeMiB: 0 } });
    if (resource === 'tenants' && tenant && req.method === 'PATCH') {
      Object.assign(tenant, body.name ? { name: body.name } : {}, { quotas: { ...tenant.quotas, ...body.quotas } });
      return send(200, tenant);
    }
    if (resource === 'tenants' && tenant && req.method === 'DELETE') {
      if (tokens.some((t) => t.tenantId === tenant.id) && u.searchParams.get('force') !== 'true') return fail(409, 'tenant_not_empty', `tenant ${tenant.name} has 1 VM(s) and 0 volume(s): delete them first, or add ?force=true to delete them with the tenant`);
      tenants.splice(tenants.indexOf(tenant), 1);
      return send(204);
    }
    const show = ({ tenantId, ...rest }: Token) => ({ ...rest, tenant: tenantId, tenantName: tenants.find((t) => t.id === tenantId)?.name ?? '' });
    if (resource === 'tokens' && !id && req.method === 'GET') {
      const only = u.searchParams.get('tenant');
      return send(200, { items: tokens.filter((t) => !only || t.tenantId === only || show(t).tenantName === only).map(show) });
    }
    if (resource === 'tokens' && !id && req.method === 'POST') {
      const owner = tenants.find((t) => t.id === body.tenant || t.name === body.tenant);
      if (!owner) return fail(400, 'invalid_request', `tenant: no tenant ${body.tenant}`);
      const t: Token = { id: uuid(), tenantId: owner.id, name: body.name, scope: body.scope, ...(body.expiresAt ? { expiresAt: body.expiresAt } : {}), createdAt: now };
      tokens.push(t);
      return send(201, { ...show(t), token: `cap_${'ab'.repeat(32)}` });
    }
    const token = tokens.find((t) => t.id === id);
    if (resource === 'tokens' && token && req.method === 'DELETE') {
      tokens.splice(tokens.indexOf(token), 1);
      return send(204);
    }
    return fail(404, 'not_found', `no route for ${req.method} ${u.pathname}`);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  url = `http://127.0.0.1:${(server.address() as { port: number }).port}`;
  user = new CliUser({ CAPSULE_URL: url, CAPSULE_TOKEN: ADMIN });
});
after(() => {
  server.close();
  user.cleanup();
});

const lastRequest = () => requests[requests.length - 1]!;

test('tenant create, ls, show (use against quota), update, rm: the bodies the API takes', async () => {
  const created = await user.json(['tenant', 'create', 'acme', '--vms', '10', '--vcpus', '16', '--memory', '32G', '--volume-size', 'unlimited']);
  assert.deepEqual(lastRequest(), { method: 'POST', path: '/v1/tenants', body: { name: 'acme', quotas: { vms: 10, vcpus: 16, memoryMiB: 32768, volumeMiB: null } } });
  assert.equal(created.name, 'acme');

  const table = await user.run(['tenant', 'ls']);
  assert.equal(table.code, 0, table.stderr);
  assert.match(table.stdout, /^NAME\s+VMS\s+VCPUS\s+MEMORY\s+VOLUME SIZE\s+ID/);
  assert.match(table.stdout, new RegExp(`^acme\\s+1/10\\s+2/16\\s+512 MiB/32 GiB\\s+0 MiB/unlimited\\s+${created.id}`, 'm'));

  const shown = await user.run(['tenant', 'show', 'acme']);
  assert.equal(lastRequest().path, `/v1/tenants/${created.id}`, 'a name is resolved to the id');
  assert.match(shown.stdout, /^VMs:\s+1 of 10$/m);
  assert.match(shown.stdout, /^running memory:\s+512 MiB of 32 GiB$/m);

  const updated = await user.json(['tenant', 'update', 'acme', '--name', 'acme-corp', '--vms', 'unlimited']);
  assert.deepEqual(lastRequest(), { method: 'PATCH', path: `/v1/tenants/${created.id}`, body: { name: 'acme-corp', quotas: { vms: null } } });
  assert.equal(updated.name, 'acme-corp');
  const nothing = await user.run(['tenant', 'update', 'acme-corp']);
  assert.equal(nothing.code, 2);
  assert.match(nothing.stderr, /nothing to change/);
});

test('token create (secret once, on stdout alone), ls, rm; tenant rm needs --force while it has tokens', async () => {
  const create = await user.run(['token', 'create', 'ci', '--tenant', 'acme-corp', '--scope', 'read', '--expires', '2027-01-31T00:00:00Z']);
  assert.equal(create.code, 0, create.stderr);
  assert.deepEqual(lastRequest().body, { tenant: 'acme-corp', name: 'ci', scope: 'read', expiresAt: '2027-01-31T00:00:00.000Z' });
  assert.equal(create.stdout, `cap_${'ab'.repeat(32)}\n`, 'TOKEN=$(capsule token create …) gets the secret alone');
  assert.match(create.stderr, /will not show it again/);
  const json = await user.json(['token', 'create', 'deploy', '--tenant', 'acme-corp']);
  assert.equal(lastRequest().body.scope, 'write', 'write is the default scope');
  assert.match(json.token, /^cap_/);

  const list = await user.run(['token', 'ls']);
  assert.match(list.stdout, /^ci\s+read\s+acme-corp\s+2027-01-31 00:00:00\s/m);
  const narrowed = await user.json(['token', 'ls', '--tenant', 'default']);
  assert.equal(lastRequest().path, '/v1/tokens?tenant=default');
  assert.deepEqual(narrowed.items, []);
  assert.doesNotMatch(list.stdout, /cap_/, 'no secret in the list');

  const refused = await user.run(['tenant', 'rm', 'acme-corp']);
  assert.equal(refused.code, 1);
  assert.match(refused.stderr, /^error: tenant_not_empty: tenant acme-corp has /);
  assert.equal((await user.run(['token', 'rm', 'ci'])).code, 0);
  assert.equal(lastRequest().method, 'DELETE');
  assert.equal((await user.run(['tenant', 'rm', '--force', 'acme-corp'])).code, 0);
  assert.match(lastRequest().path, /^\/v1\/tenants\/[0-9a-f-]+\?force=true$/);

  const missing = await user.run(['token', 'create', 'x']);
  assert.equal(missing.code, 2, 'the tenant is required');
  const scope = await user.run(['token', 'create', 'x', '--tenant', 'default', '--scope', 'root']);
  assert.equal(scope.code, 2);
});

test('whoami and login show the tenant and scope from GET /v1/whoami', async () => {
  const who = await user.run(['whoami']);
  assert.match(who.stdout, /^identity:\s+tenant default, scope admin, token admin$/m);
  assert.equal((await user.json(['whoami'])).whoami.tenant.name, 'default');
  const u = new CliUser();
  try {
    const login = await u.run(['login', '--url', url, '--token', ADMIN]);
    assert.equal(login.code, 0, login.stderr);
    assert.match(login.stdout, /logged in to .* \(tenant default, scope admin, token admin\)/);
  } finally {
    u.cleanup();
  }
});
