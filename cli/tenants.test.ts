// capsule tenant … and token … against the real tenants API (issue 10): an admin makes a
// tenant with quotas and tokens for it; the tenant's tokens see and do only what they may;
// revoking a token ends its event stream. No VM boots: quotas on VM count are checked at create.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { TestServer } from '../server/test/harness.js';
import { CliUser } from './test/run-cli.js';

let s: TestServer;
let admin: CliUser;
before(async () => {
  s = await TestServer.start({ env: { CAPSULE_BUILD_IMAGE: '0' } });
  admin = new CliUser();
  const login = await admin.login(s);
  assert.equal(login.code, 0, login.stderr);
  assert.match(login.stdout, /^logged in to http:\/\/127\.0\.0\.1:\d+ \(tenant default, scope admin, token admin\)/);
});
after(async () => {
  await s.stop();
  admin.cleanup();
});

/** A user whose token comes from the environment (as in CI), on the same server. */
const userWith = (token: string) => new CliUser({ CAPSULE_URL: s.url, CAPSULE_TOKEN: token });

test('tenant create/ls/show/update/rm and token create/ls/rm; quotas, scopes and ownership as the CLI sees them', async () => {
  const acme = await admin.json(['tenant', 'create', 'acme', '--vms', '1', '--memory', '1G', '--volume-size', 'unlimited']);
  assert.deepEqual(acme.quotas, { vms: 1, vcpus: null, memoryMiB: 1024, volumeMiB: null, snapshotMiB: null });
  const nothing = await admin.run(['tenant', 'update', 'acme']);
  assert.equal(nothing.code, 2);
  assert.match(nothing.stderr, /nothing to change/);
  assert.match((await admin.run(['tenant', 'ls'])).stdout, /^acme\s+0\/1\s+0\/unlimited\s+0 MiB\/1 GiB\s+0 MiB\/unlimited\s/m);

  const secret = await admin.run(['token', 'create', 'ci', '--tenant', 'acme', '--expires', '30d']);
  assert.equal(secret.code, 0, secret.stderr);
  // The secret alone on stdout (TOKEN=$(capsule token create …)); what it is on stderr.
  assert.match(secret.stdout, /^cap_[0-9a-f]{64}\n$/);
  assert.match(secret.stderr, /^token ci \(.*, write\) for tenant acme; the server will not show it again:$/m);
  const writeToken = secret.stdout.trim();
  for (const [args, message] of [[['token', 'create', 'x'], /required option '-t, --tenant <tenant>'/], [['token', 'create', 'x', '-t', 'acme', '--scope', 'root'], /must be one of admin, write, read/]] as const) {
    const usage = await admin.run([...args]);
    assert.equal(usage.code, 2);
    assert.match(usage.stderr, message);
  }
  const reader = await admin.json(['token', 'create', 'viewer', '--tenant', acme.id, '--scope', 'read']);
  assert.equal(reader.scope, 'read');

  const w = userWith(writeToken);
  const r = userWith(reader.token);
  try {
    assert.match((await w.run(['whoami'])).stdout, /^identity:\s+tenant acme, scope write, token ci, expires /m);
    // The quota: one VM, the second refused with the API's numbers.
    assert.equal((await w.run(['vm', 'create', 'web'])).code, 0);
    const over = await w.run(['vm', 'create', 'web2']);
    assert.equal(over.code, 1);
    assert.match(over.stderr, /^error: quota_exceeded: quota vms exceeded: limit 1, in use 1, requested 1 \(tenant acme\)$/m);
    assert.match((await admin.run(['tenant', 'show', 'acme'])).stdout, /^VMs:\s+1 of 1$/m);

    // A read token looks but cannot change anything (403 names the scope).
    assert.deepEqual((await r.json(['vm', 'ls'])).items.map((v: any) => v.name), ['web']);
    const denied = await r.run(['vm', 'rm', 'web']);
    assert.equal(denied.code, 1);
    assert.match(denied.stderr, /^error: forbidden: token scope 'read' cannot /m);

    // The admin's default tenant has a VM of the same name: the tenant sees only its own; the
    // admin sees both (TENANT column), narrows with --tenant, and must use an id for `web`.
    assert.equal((await admin.run(['vm', 'create', 'web'])).code, 0);
    const acmeWeb = await w.json(['vm', 'show', 'web']);
    assert.equal(acmeWeb.tenant, acme.id);
    const all = await admin.run(['vm', 'ls']);
    assert.match(all.stdout, /^web\s+created\s.*\sacme\s/m);
    assert.match(all.stdout, /^web\s+created\s.*\sdefault\s/m);
    assert.deepEqual((await admin.json(['vm', 'ls', '--tenant', 'acme'])).items.map((v: any) => v.tenant), [acme.id]);
    const ambiguous = await admin.run(['vm', 'show', 'web']);
    assert.equal(ambiguous.code, 1);
    assert.match(ambiguous.stderr, /^error: ambiguous: 2 VMs are named web: use the id/m);
    assert.equal((await admin.run(['vm', 'rm', 'web'])).code, 1, 'rm refuses an ambiguous name too');

    // Tokens: the tenant's write token lists its tenant's; revoking one closes its event stream (4001).
    const tokens = (await w.json(['token', 'ls'])).items.map((t: any) => t.name).sort();
    assert.deepEqual(tokens, ['ci', 'viewer']);
    const listed = await admin.run(['token', 'ls', '--tenant', 'acme']);
    assert.match(listed.stdout, /^NAME\s+SCOPE\s+TENANT\s+EXPIRES\s+ID/);
    assert.match(listed.stdout, /^viewer\s+read\s+acme\s+never\s/m);
    assert.doesNotMatch(listed.stdout + JSON.stringify(await admin.json(['token', 'ls'])), /cap_/, 'no secret in any list');
    // Replaying acme's events from 0 shows when the stream is up: web's VM_CREATED.
    const events = r.start(['--output', 'json', 'events', '--since', '0']);
    await events.waitForOutput((o) => o.includes('"VM_CREATED"'), 'the read token\'s stream');
    const seen = events.stdout.trim().split('\n').map((l) => JSON.parse(l));
    assert.deepEqual([...new Set(seen.map((e) => e.vm))], [acmeWeb.id], 'only its tenant\'s events (not the admin\'s web)');
    assert.equal((await w.run(['token', 'rm', 'viewer'])).code, 0);
    const ended = await events.exited;
    assert.equal(ended.code, 1);
    assert.match(ended.stderr, /^error: events_closed: the server closed the event stream: token revoked$/m);
    const gone = await r.run(['vm', 'ls']);
    assert.equal(gone.code, 1);
    assert.match(gone.stderr, /^error: unauthorized: /m);

    // A tenant with VMs goes only with --force (its tokens with it).
    assert.equal((await admin.json(['tenant', 'update', 'acme', '--name', 'acme-corp', '--vms', 'unlimited'])).quotas.vms, null);
    const busy = await admin.run(['tenant', 'rm', 'acme-corp']);
    assert.equal(busy.code, 1);
    assert.match(busy.stderr, /^error: tenant_not_empty: /m);
    assert.equal((await admin.run(['tenant', 'rm', '--force', 'acme-corp'])).code, 0);
    assert.equal((await w.run(['vm', 'ls'])).code, 1, 'its tokens went with it');
    assert.deepEqual((await admin.json(['tenant', 'ls'])).items.map((t: any) => t.name), ['default']);
  } finally {
    w.cleanup();
    r.cleanup();
  }
});
