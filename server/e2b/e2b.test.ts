// E2B compatibility end to end: the real `e2b` SDK from npm, unmodified, configured only by
// its documented environment (E2B_API_URL, E2B_SANDBOX_URL, E2B_API_KEY), against a real
// capsule server and one real sandbox guest under QEMU/TCG (booted once, by Sandbox.create,
// and shared by the tests in order). Plus the key mapping and the refusals, which need no guest.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { Sandbox, CommandExitError, NotFoundError, AuthenticationError, type CommandResult } from 'e2b';
import { buildImage } from '../images/registry.js';
import { TEST_IMAGES_DIR, TestServer, waitFor } from '../test/harness.js';
import { isAlive } from '../supervisor/process.js';
import { capsuleTokenOf, e2bKeyOf, SandboxTokens } from './keys.js';
import { entryOf, guestUser, imageOfTemplate, matchesMetadata, metadataFilter, userOfAuthorization } from './mapping.js';
import { endEvent } from './envd/process.js';
import { message } from './envd/proto.js';
import { fromBinary } from '@bufbuild/protobuf';
import type { ApiError } from '../supervisor/errors.js';

let server: TestServer;
let sandbox: Sandbox | undefined;
/** Generous: the first create boots a guest under TCG on a shared host. */
const slow = { requestTimeoutMs: 300_000 };

async function waitUntil(fn: () => boolean, what: string, ms = 30_000): Promise<void> {
  const end = Date.now() + ms;
  while (!fn()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

before(async () => {
  buildImage(TEST_IMAGES_DIR, 'sandbox', 'ignore'); // cached
  server = await TestServer.start({ env: { CAPSULE_NETWORK: 'on', CAPSULE_NET_POOL: `10.${214 + (process.pid % 20)}.0.0/24`, CAPSULE_RATE_LIMIT: '1000', CAPSULE_RATE_BURST: '1000' } });
  // The SDK's documented settings, as a user would set them.
  process.env.E2B_API_URL = `${server.url}/e2b`;
  process.env.E2B_SANDBOX_URL = `${server.url}/e2b/sandbox`;
  process.env.E2B_API_KEY = e2bKeyOf(server.token);
});

after(async () => {
  await sandbox?.kill().catch(() => undefined);
  await server?.stop();
});

test('keys: a capsule token cap_<hex> is the E2B key e2b_<hex>, and back; nothing else maps', () => {
  const hex = 'ab'.repeat(32);
  assert.equal(e2bKeyOf(`cap_${hex}`), `e2b_${hex}`);
  assert.equal(capsuleTokenOf(`e2b_${hex}`), `cap_${hex}`);
  assert.equal(capsuleTokenOf(` e2b_${hex}\n`), `cap_${hex}`);
  for (const bad of [`cap_${hex}`, `e2b_${hex.toUpperCase()}`, 'e2b_', 'e2b_xyz', `e2b_${hex}g`, '', `E2B_${hex}`]) assert.equal(capsuleTokenOf(bad), undefined, bad);
  assert.equal(e2bKeyOf('cap_AbC-_base64url'), undefined, 'older base64url tokens have no E2B form');
  const t = new SandboxTokens(Buffer.alloc(32, 7));
  assert.ok(t.verify('vm-1', t.tokenFor('vm-1')));
  assert.ok(!t.verify('vm-2', t.tokenFor('vm-1')), 'a sandbox token opens its sandbox only');
  assert.ok(!t.verify('vm-1', undefined));
  assert.ok(!t.verify('vm-1', 'zz'));
});

test('mapping: envd users, exits as envd ends them, metadata filters, file entries', () => {
  const basic = (s: string) => `Basic ${Buffer.from(s).toString('base64')}`;
  assert.equal(userOfAuthorization(undefined), 'user', 'commands run as user unless the SDK asks');
  assert.equal(userOfAuthorization(basic('root:')), 'root');
  assert.throws(() => userOfAuthorization(basic('../etc:')), (e: ApiError) => e.status === 400);
  assert.throws(() => userOfAuthorization('Bearer x'), (e: ApiError) => e.status === 400);
  assert.throws(() => guestUser('Robert; rm'), (e: ApiError) => e.status === 400);
  assert.deepEqual(endEvent({ exitCode: 3, timedOut: false, durationMs: 1 }), { case: 'end', value: { exitCode: 3, exited: true, status: 'exit status 3' } });
  assert.deepEqual(endEvent({ exitCode: null, signal: 'SIGKILL', timedOut: false, durationMs: 1 }), { case: 'end', value: { exitCode: -1, exited: false, status: 'signal: killed' } });
  // The SDK's list filter: each key and value encoded, then joined as a query string.
  const q = new URLSearchParams({ [encodeURIComponent('a b')]: encodeURIComponent('x&y=z') }).toString();
  assert.deepEqual(metadataFilter(q), { 'a b': 'x&y=z' });
  assert.deepEqual(metadataFilter('k=%25E0%25A4%25A'), { k: '%E0%A4%A' }, 'a malformed escape is kept, not a 500');
  assert.ok(matchesMetadata({ a: '1', b: '2' }, { a: '1' }) && !matchesMetadata({ a: '1' }, { a: '2' }));
  assert.equal(imageOfTemplate('base'), 'sandbox');
  assert.equal(imageOfTemplate('default'), 'default');
  const e = entryOf({ name: 'f', path: '/home/user/f', type: 'file', size: 5, mode: 0o100640, uid: 1000, gid: 0, mtime: '2026-01-01T00:00:00.000Z' });
  assert.equal(e.permissions, '-rw-r-----');
  assert.equal(e.mode, 0o640);
  assert.equal(e.owner, 'user');
  assert.equal(e.group, 'root');
  assert.equal(e.size, 5n);
});

test('refusals: a wrong or missing key is 401 in E2B\'s shape; bad input is 400; an unknown template 404', async () => {
  const api = (path: string, init: RequestInit = {}) => fetch(`${server.url}/e2b${path}`, init).then(async (r) => ({ status: r.status, body: await r.json() as any }));
  let r = await api('/v2/sandboxes', { headers: { 'x-api-key': `e2b_${'0'.repeat(64)}` } });
  assert.equal(r.status, 401);
  assert.equal(r.body.code, 401);
  assert.match(r.body.message, /invalid token/);
  r = await api('/v2/sandboxes');
  assert.deepEqual(r.body, { code: 401, message: 'missing X-API-Key header' });
  r = await api('/v2/sandboxes', { headers: { 'x-api-key': server.token } });
  assert.equal(r.status, 401, 'the capsule form is not an E2B key');
  assert.match(r.body.message, /e2b_/);
  // The SDK turns it into its AuthenticationError.
  await assert.rejects(Sandbox.list({ apiKey: `e2b_${'1'.repeat(64)}` }).nextItems(), AuthenticationError);

  const key = { 'x-api-key': e2bKeyOf(server.token)!, 'content-type': 'application/json' };
  r = await api('/v2/sandboxes', { method: 'POST', headers: key, body: JSON.stringify({ templateID: 5 }) });
  assert.equal(r.status, 400);
  assert.match(r.body.message, /^templateID: /);
  r = await api('/v2/sandboxes', { method: 'POST', headers: key, body: JSON.stringify({ templateID: 'base', timeout: -1 }) });
  assert.equal(r.status, 400);
  assert.match(r.body.message, /^timeout: /);
  r = await api('/v2/sandboxes', { method: 'POST', headers: key, body: 'not json' });
  assert.equal(r.status, 400);
  r = await api('/v2/sandboxes', { method: 'POST', headers: key, body: JSON.stringify({ templateID: 'no-such-image' }) });
  assert.equal(r.status, 404);
  assert.match(r.body.message, /template no-such-image not found/);
  assert.equal((await server.api('GET', '/v1/vms')).body.items.length, 0, 'a refused create leaves no VM');
  r = await api('/sandboxes/not-a-sandbox', { headers: key });
  assert.equal(r.status, 404);
  assert.equal(r.body.code, 404);
  r = await api('/templates', { headers: key });
  assert.equal(r.status, 404, 'what capsule does not serve says so');

  // The sandbox URL wants a sandbox's access token.
  const envd = await fetch(`${server.url}/e2b/sandbox/process.Process/List`, { method: 'POST', headers: { 'content-type': 'application/json', 'e2b-sandbox-id': 'x', 'x-access-token': '0'.repeat(64) }, body: '{}' });
  assert.equal(envd.status, 401);
  assert.equal((await envd.json() as any).code, 'unauthenticated');
});

test('rate limits: E2B calls count against the token and tenant as capsule calls do (429, RateLimitError)', async () => {
  const limited = await TestServer.start({ env: { CAPSULE_NETWORK: 'off', CAPSULE_RATE_LIMIT: '1', CAPSULE_RATE_BURST: '4', CAPSULE_TENANT_RATE: '1', CAPSULE_TENANT_BURST: '4' } });
  const apiUrl = process.env.E2B_API_URL;
  try {
    const vm = await limited.api('POST', '/v1/vms', { name: 'idle', image: 'sandbox' });
    assert.equal(vm.status, 201, JSON.stringify(vm.body));
    // envd: metered per tenant (it has no capsule token), before it says the never-started sandbox is not running.
    const access = SandboxTokens.fromDataDir(limited.dataDir).tokenFor(vm.body.id);
    const health = () => fetch(`${limited.url}/e2b/sandbox/health`, { headers: { 'e2b-sandbox-id': vm.body.id, 'x-access-token': access } });
    const statuses: number[] = [];
    let refused: Response | undefined;
    for (let i = 0; i < 20 && !refused; i++) {
      const r = await health();
      statuses.push(r.status);
      if (r.status === 429) refused = r;
    }
    assert.equal(statuses[0], 502, 'not running');
    assert.ok(refused, `429 once the tenant's burst is spent: ${statuses.join(' ')}`);
    assert.ok(Number(refused.headers.get('retry-after')) >= 1);
    // REST: the capsule call behind it is refused; the SDK (no retries) says RateLimitError.
    process.env.E2B_API_URL = `${limited.url}/e2b`;
    const key = e2bKeyOf(limited.token)!;
    let listed: unknown;
    for (let i = 0; i < 20 && !(listed instanceof Error); i++) listed = await Sandbox.list({ apiKey: key, retries: 0 }).nextItems().catch((e: Error) => e);
    assert.equal((listed as Error).name, 'RateLimitError', String(listed));
  } finally {
    process.env.E2B_API_URL = apiUrl;
    await limited.stop();
  }
});

test('Sandbox.create from a template, with metadata and a timeout: ready when it returns', async () => {
  const t0 = Date.now();
  sandbox = await Sandbox.create('base', { metadata: { purpose: 'e2b-test', run: '1' }, timeoutMs: 600_000, envs: { SANDBOX_WIDE: 'everywhere' }, ...slow });
  console.log(`Sandbox.create (boot under TCG included): ${Date.now() - t0} ms, id ${sandbox.sandboxId}`);
  const vm = await server.api('GET', `/v1/vms/${sandbox.sandboxId}`);
  assert.equal(vm.status, 200, 'the sandbox is a capsule VM');
  assert.equal(vm.body.image, 'sandbox', 'template "base" is the sandbox image');
  assert.equal(vm.body.state, 'running');
  assert.equal(await sandbox.isRunning(), true);
  const info = await sandbox.getInfo();
  assert.equal(info.templateId, 'base');
  assert.deepEqual(info.metadata, { purpose: 'e2b-test', run: '1' });
  assert.ok(Math.abs(info.endAt.getTime() - (Date.now() + 600_000)) < 120_000, `endAt ${info.endAt.toISOString()}`);
});

test('commands.run: exit codes, stdout and stderr apart, CommandExitError, user, envs, cwd', async () => {
  assert.ok(sandbox, 'created by the test before');
  const ok = await sandbox.commands.run('echo hi; echo err >&2');
  assert.equal(ok.exitCode, 0);
  assert.equal(ok.stdout, 'hi\n');
  assert.equal(ok.stderr, 'err\n');
  const failed = await sandbox.commands.run('echo hi; echo err >&2; exit 3').then(() => undefined, (e: unknown) => e);
  assert.ok(failed instanceof CommandExitError, `a non-zero exit throws CommandExitError: ${failed}`);
  assert.equal(failed.exitCode, 3);
  assert.equal(failed.stdout, 'hi\n');
  assert.equal(failed.stderr, 'err\n');
  assert.equal((await sandbox.commands.run('id -un; pwd')).stdout, 'user\n/home/user\n', 'commands run as user, in its home');
  assert.equal((await sandbox.commands.run('id -un', { user: 'root' })).stdout, 'root\n');
  const env = await sandbox.commands.run('echo "$GREETING $SANDBOX_WIDE"; pwd', { envs: { GREETING: 'hello' }, cwd: '/tmp' });
  assert.equal(env.stdout, 'hello everywhere\n/tmp\n', 'the command\'s envs and the sandbox\'s');
  const killed = await sandbox.commands.run('kill -9 $$').then(() => undefined, (e: unknown) => e);
  assert.ok(killed instanceof CommandExitError);
  assert.equal(killed.exitCode, -1, 'a signal is envd\'s exit code -1');
});

test('commands: output streams as it comes (onStdout/onStderr); background, list, stdin, kill', async () => {
  assert.ok(sandbox);
  const seen: Array<{ at: number; text: string }> = [];
  const errs: string[] = [];
  const t0 = Date.now();
  const r: CommandResult = await sandbox.commands.run('for i in 1 2 3; do echo line$i; sleep 1; done; echo oops >&2', {
    onStdout: (d) => { seen.push({ at: Date.now() - t0, text: d }); },
    onStderr: (d) => { errs.push(d); },
  });
  assert.equal(r.stdout, 'line1\nline2\nline3\n');
  assert.equal(seen.map((s) => s.text).join(''), r.stdout);
  assert.ok(seen.length >= 3, `one callback per line as it came: ${JSON.stringify(seen)}`);
  assert.ok(seen[2]!.at - seen[0]!.at >= 1500, `streamed, not delivered at the end: ${JSON.stringify(seen)}`);
  assert.deepEqual(errs, ['oops\n']);

  // A background command: listed while it runs, killed by pid.
  const bg = await sandbox.commands.run('sleep 300', { background: true });
  assert.ok(bg.pid > 0);
  assert.ok((await sandbox.commands.list()).some((p) => p.pid === bg.pid), 'listed');
  // The same service in binary protobuf (other Connect clients), and JSON with a field from a newer SDK.
  const envd = (body: string | Uint8Array, type: string) => fetch(`${server.url}/e2b/sandbox/process.Process/List`, {
    method: 'POST', body, headers: { 'content-type': type, 'e2b-sandbox-id': sandbox!.sandboxId, 'x-access-token': SandboxTokens.fromDataDir(server.dataDir).tokenFor(sandbox!.sandboxId) },
  });
  const bin = await envd(new Uint8Array(0), 'application/proto');
  assert.equal(bin.status, 200);
  const listed = fromBinary(message('process.ListResponse'), new Uint8Array(await bin.arrayBuffer())) as unknown as { processes: Array<{ pid: number }> };
  assert.ok(listed.processes.some((p) => p.pid === bg.pid), 'binary');
  const json = await envd(JSON.stringify({ someFutureField: true }), 'application/json');
  assert.equal(json.status, 200, await json.clone().text());
  assert.ok(((await json.json()) as { processes: Array<{ pid: number }> }).processes.some((p) => p.pid === bg.pid), 'json');
  assert.equal(await bg.kill(), true);
  const ended = await bg.wait().then(() => undefined, (e: unknown) => e);
  assert.ok(ended instanceof CommandExitError, 'killed');
  assert.equal(await sandbox.commands.kill(999_999), false, 'no such process');

  // Stdin, sent while it runs, then closed.
  const cat = await sandbox.commands.run('cat; echo done', { background: true, stdin: true });
  await cat.sendStdin('typed in\n');
  await cat.closeStdin();
  const out = await cat.wait();
  assert.equal(out.stdout, 'typed in\ndone\n');

  // A command's timeoutMs bounds the call, not the process: it times out, the process goes on.
  const tagged = `t${Date.now()}`;
  await assert.rejects(sandbox.commands.run(`sleep 300 # ${tagged}`, { timeoutMs: 1500 }), (e: Error) => /timeout/i.test(e.name) || /deadline/i.test(e.message));
  const left = (await sandbox.commands.list()).find((p) => p.args.join(' ').includes(tagged));
  assert.ok(left, 'still running after its call timed out');
  assert.equal(await sandbox.commands.kill(left.pid), true);

  // Disconnect: the command keeps running; Connect follows it again.
  const slowCmd = await sandbox.commands.run('sleep 2; echo still here', { background: true });
  await slowCmd.disconnect();
  const again = await sandbox.commands.connect(slowCmd.pid);
  assert.equal((await again.wait()).stdout, 'still here\n');
});

test('files.write / files.read: text and binary round trips; list, stat, mkdir, rename, remove, missing paths', async () => {
  assert.ok(sandbox);
  const w = await sandbox.files.write('/home/user/hello.txt', 'hello from e2b\n');
  assert.equal(w.path, '/home/user/hello.txt');
  assert.equal(await sandbox.files.read('/home/user/hello.txt'), 'hello from e2b\n');
  assert.equal((await sandbox.commands.run('cat hello.txt; stat -c %U hello.txt')).stdout, 'hello from e2b\nuser\n', 'the guest sees it, owned by user');

  const bytes = new Uint8Array(256 * 64);
  for (let i = 0; i < bytes.length; i++) bytes[i] = (i * 7 + (i >> 8)) & 0xff;
  await sandbox.files.write('bin/data.bin', bytes.buffer as ArrayBuffer);
  const back = await sandbox.files.read('bin/data.bin', { format: 'bytes' });
  assert.deepEqual(Buffer.from(back), Buffer.from(bytes), 'binary intact');
  assert.equal((await sandbox.commands.run('sha256sum < bin/data.bin')).stdout.split(' ')[0], (await import('node:crypto')).createHash('sha256').update(bytes).digest('hex'));
  // A streamed upload (the SDK sends application/octet-stream).
  const streamed = new Blob([bytes]).stream();
  await sandbox.files.write('/tmp/streamed.bin', streamed);
  assert.deepEqual(Buffer.from(await sandbox.files.read('/tmp/streamed.bin', { format: 'bytes' })), Buffer.from(bytes));
  // Several files in one multipart request.
  await sandbox.files.write([{ path: '/tmp/m/a.txt', data: 'A' }, { path: '/tmp/m/b.txt', data: 'B' }]);
  assert.equal((await sandbox.commands.run('cat /tmp/m/a.txt /tmp/m/b.txt')).stdout, 'AB');

  const names = (await sandbox.files.list('/home/user')).map((e) => e.name);
  assert.ok(names.includes('hello.txt') && names.includes('bin'), JSON.stringify(names));
  const info = await sandbox.files.getInfo('/home/user/hello.txt');
  assert.equal(info.type, 'file');
  assert.equal(info.size, 15);
  assert.equal(info.owner, 'user');
  assert.equal(await sandbox.files.exists('/home/user/hello.txt'), true);
  assert.equal(await sandbox.files.exists('/home/user/nope'), false);
  assert.equal(await sandbox.files.makeDir('/home/user/made/deep'), true);
  assert.equal(await sandbox.files.makeDir('/home/user/made/deep'), false, 'already there');
  const moved = await sandbox.files.rename('/home/user/hello.txt', '/home/user/made/hello.txt');
  assert.equal(moved.path, '/home/user/made/hello.txt');
  await sandbox.files.remove('/home/user/made');
  assert.equal(await sandbox.files.exists('/home/user/made'), false);
  await assert.rejects(sandbox.files.read('/home/user/missing.txt'), NotFoundError);
  // The user names the owner of what is written (the agent writes as root: docs/e2b.md).
  await sandbox.files.write('/tmp/by-root.txt', 'x', { user: 'root' });
  assert.equal((await sandbox.commands.run('stat -c %U /tmp/by-root.txt /tmp/streamed.bin')).stdout, 'root\nuser\n');
});

test('Sandbox.list shows it with its metadata (and filters by it); setTimeout moves its end; another tenant sees nothing', async () => {
  assert.ok(sandbox);
  const all = await Sandbox.list().nextItems();
  const mine = all.find((s) => s.sandboxId === sandbox!.sandboxId);
  assert.ok(mine, JSON.stringify(all));
  assert.deepEqual(mine.metadata, { purpose: 'e2b-test', run: '1' });
  assert.equal(mine.state, 'running');
  assert.equal(mine.templateId, 'base');
  assert.equal((await Sandbox.list({ query: { metadata: { purpose: 'e2b-test' } } }).nextItems()).length, 1);
  assert.equal((await Sandbox.list({ query: { metadata: { purpose: 'other' } } }).nextItems()).length, 0);

  await sandbox.setTimeout(900_000);
  const end = (await sandbox.getInfo()).endAt.getTime();
  assert.ok(Math.abs(end - (Date.now() + 900_000)) < 30_000, `endAt moved to about 900 s from now: ${new Date(end).toISOString()}`);
  // It is the VM's TTL (with delete), in the database: a restarted server keeps metadata, end and envs.
  const asVm = (await server.api('GET', `/v1/vms/${sandbox.sandboxId}`)).body;
  assert.deepEqual([asVm.metadata, asVm.onTimeout, asVm.expiresAt], [{ purpose: 'e2b-test', run: '1' }, 'delete', new Date(end).toISOString()]);
  await server.kill9();
  await server.launch();
  const after = await Sandbox.getInfo(sandbox.sandboxId);
  assert.deepEqual([after.metadata, after.endAt.getTime(), after.templateId], [{ purpose: 'e2b-test', run: '1' }, end, 'base']);
  assert.equal((await sandbox.commands.run('echo "$SANDBOX_WIDE"')).stdout, 'everywhere\n', 'the sandbox\'s envs too');

  // Another tenant: the sandbox is not found, cannot be killed or extended, and is not listed.
  assert.equal((await server.api('POST', '/v1/tenants', { name: 'other' })).status, 201);
  const tok = await server.api('POST', '/v1/tokens', { tenant: 'other', name: 'e2b', scope: 'write' });
  assert.equal(tok.status, 201, JSON.stringify(tok.body));
  const other = { apiKey: e2bKeyOf(tok.body.token)! };
  await assert.rejects(Sandbox.getInfo(sandbox.sandboxId, other), NotFoundError);
  assert.equal(await Sandbox.kill(sandbox.sandboxId, other), false);
  await assert.rejects(Sandbox.setTimeout(sandbox.sandboxId, 1000, other), NotFoundError);
  assert.equal((await Sandbox.list(other).nextItems()).length, 0);
  assert.equal(await sandbox.isRunning(), true, 'still there');

  // A read token of the same tenant looks, but may not change the sandbox or get its access (which runs commands).
  const ro = await server.api('POST', '/v1/tokens', { name: 'e2b-read', scope: 'read' });
  assert.equal(ro.status, 201, JSON.stringify(ro.body));
  const read = { apiKey: e2bKeyOf(ro.body.token)! };
  assert.ok((await Sandbox.list(read).nextItems()).some((s) => s.sandboxId === sandbox!.sandboxId));
  await assert.rejects(Sandbox.setTimeout(sandbox.sandboxId, 1000, read), /403/);
  await assert.rejects(Sandbox.connect(sandbox.sandboxId, read), /403/);
  await assert.rejects(Sandbox.kill(sandbox.sandboxId, read), /403/);
  await assert.rejects(Sandbox.create('base', read), /403/);
});

test('pty: a terminal of the asked size that takes input and follows a resize', async () => {
  assert.ok(sandbox);
  let screen = '';
  const term = await sandbox.pty.create({ cols: 90, rows: 20, onData: (d) => { screen += Buffer.from(d).toString('utf8'); } });
  await sandbox.pty.sendInput(term.pid, new TextEncoder().encode('stty size\n'));
  await waitUntil(() => screen.includes('20 90'), 'the first size');
  await sandbox.pty.resize(term.pid, { cols: 100, rows: 30 });
  await sandbox.pty.sendInput(term.pid, new TextEncoder().encode('stty size; exit 0\n'));
  await term.wait();
  assert.match(screen, /30 100/);
});

test('pause (to disk: the VMM ends, its memory is freed), then connect resumes it: its processes carry on', async () => {
  assert.ok(sandbox);
  const { pid } = (await server.api('GET', `/v1/vms/${sandbox.sandboxId}`)).body;
  await sandbox.commands.run('i=0; while true; do i=$((i+1)); echo $i > /tmp/ticks; sleep 0.2; done', { background: true });
  await waitFor('the loop to tick', async () => Number((await sandbox!.commands.run('cat /tmp/ticks || echo 0')).stdout) > 0 || undefined);
  assert.equal(await sandbox.pause(), true);
  assert.equal((await sandbox.getInfo()).state, 'paused');
  const vm = (await server.api('GET', `/v1/vms/${sandbox.sandboxId}`)).body;
  assert.equal(vm.state, 'stopped');
  assert.equal(typeof vm.restoreFrom, 'string');
  assert.ok(!isAlive(pid), 'the VMM is gone');
  assert.equal(await sandbox.isRunning(), false, 'envd does not answer while paused');
  assert.equal(await Sandbox.pause(sandbox.sandboxId), false, 'already paused');
  await Sandbox.connect(sandbox.sandboxId);
  assert.equal((await sandbox.getInfo()).state, 'running');
  assert.equal((await sandbox.commands.run('echo awake')).stdout, 'awake\n');
  const ticks = async () => Number((await sandbox!.commands.run('cat /tmp/ticks')).stdout);
  const first = await ticks();
  await waitFor('the loop started before the pause to go on', async () => (await ticks()) > first || undefined, 30_000);
});

test('Sandbox.connect gives access again; kill() deletes the VM and the sandbox is gone', async () => {
  assert.ok(sandbox);
  const same = await Sandbox.connect(sandbox.sandboxId);
  assert.equal((await same.commands.run('echo again')).stdout, 'again\n');
  await sandbox.kill();
  assert.equal((await server.api('GET', `/v1/vms/${sandbox.sandboxId}`)).status, 404, 'the VM is deleted');
  assert.equal((await Sandbox.list().nextItems()).some((s) => s.sandboxId === sandbox!.sandboxId), false);
  await assert.rejects(Sandbox.getInfo(sandbox.sandboxId), NotFoundError);
  assert.equal(await Sandbox.kill(sandbox.sandboxId), false);
  assert.equal(await sandbox.isRunning(), false);
  await assert.rejects(sandbox.commands.run('true'));
  sandbox = undefined;
});

test('Sandbox.create of a capsule template: a pool VM, its start command\'s work already done, no boot', { timeout: 600_000 }, async () => {
  const t = await server.api('POST', '/v1/templates', {
    name: 'e2b-warm', image: 'sandbox', memoryMiB: 512, pool: 1,
    startCmd: 'echo warmed-$((6*7)) > ~/warm.txt; exec python3 -m http.server 8000 --bind 127.0.0.1',
    readyCmd: 'curl -sf http://127.0.0.1:8000/warm.txt',
  });
  assert.equal(t.status, 202, JSON.stringify(t.body));
  await waitFor('the template and its pool', async () => {
    const p = (await server.api('GET', '/v1/pools')).body.items.find((x: any) => x.template === 'e2b-warm');
    const tpl = (await server.api('GET', '/v1/templates/e2b-warm')).body;
    assert.notEqual(tpl.state, 'failed', tpl.reason);
    return p?.ready === 1 || undefined;
  }, 300_000);
  const t0 = Date.now();
  const sbx = await Sandbox.create('e2b-warm', { timeoutMs: 120_000, envs: { GREETING: 'hi' }, ...slow });
  console.log(`Sandbox.create from a pool: ${Date.now() - t0} ms`);
  try {
    const vm = (await server.api('GET', `/v1/vms/${sbx.sandboxId}`)).body;
    assert.equal(vm.state, 'running');
    assert.equal(typeof vm.template, 'string');
    assert.equal((await sbx.getInfo()).templateId, 'e2b-warm');
    assert.equal((await sbx.commands.run('cat ~/warm.txt')).stdout, 'warmed-42\n');
    // The start command's server carries on in the sandbox; the sandbox's envs apply.
    assert.equal((await sbx.commands.run('curl -sf http://127.0.0.1:8000/warm.txt')).stdout, 'warmed-42\n');
    assert.equal((await sbx.commands.run('echo $GREETING')).stdout, 'hi\n');
  } finally {
    await sbx.kill();
  }
  assert.equal((await server.api('DELETE', '/v1/templates/e2b-warm')).status, 204);
});
