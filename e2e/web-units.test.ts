// Unit tests of the web UI's DOM-free modules (actions table, VM store, resumable event
// stream, API error parsing). web/src is browser code outside the root tsconfig, so it is
// bundled with esbuild for Node here and imported.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import type { AddressInfo } from 'node:net';
import { build } from 'esbuild';
import { WebSocketServer, WebSocket } from 'ws';

/* eslint-disable @typescript-eslint/no-explicit-any */
let mod: any;
let dir: string;

before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'capsule-web-units-'));
  const entry = `
    export * from './web/src/actions.ts';
    export * from './web/src/store.ts';
    export * from './web/src/events.ts';
    export { Api, ApiError, toApiError } from './web/src/api.ts';
    export { matchField } from './web/src/views/create.ts';
    export { fmtBytes, joinPath, parentPath } from './web/src/views/files.ts';
    export { describeExit } from './web/src/views/exec.ts';
  `;
  await build({
    stdin: { contents: entry, resolveDir: fileURLToPath(new URL('../../', import.meta.url)), loader: 'ts' },
    bundle: true,
    platform: 'neutral',
    format: 'esm',
    outfile: join(dir, 'web.mjs'),
    logLevel: 'error',
  });
  mod = await import(pathToFileURL(join(dir, 'web.mjs')).href);
});
after(() => rmSync(dir, { recursive: true, force: true }));

test('actions are allowed exactly in the contract states', () => {
  const table: Record<string, string[]> = {
    start: ['created', 'stopped', 'crashed'],
    stop: ['running', 'paused', 'starting'],
    forceStop: ['running', 'paused', 'starting', 'stopping'],
    pause: ['running'],
    resume: ['paused'],
    reboot: ['running'],
    delete: ['created', 'starting', 'running', 'paused', 'stopping', 'stopped', 'crashed'],
  };
  for (const [action, states] of Object.entries(table)) {
    for (const s of mod.STATES) assert.equal(mod.isAllowed(s, action), states.includes(s), `${action} from ${s}`);
  }
});

test('only a clean stop can be overtaken, by force stop or delete', () => {
  assert.equal(mod.canOvertake([], 'start'), true);
  assert.equal(mod.canOvertake(['stop'], 'forceStop'), true);
  assert.equal(mod.canOvertake(['stop'], 'delete'), true);
  assert.equal(mod.canOvertake(['stop'], 'pause'), false);
  assert.equal(mod.canOvertake(['stop', 'forceStop'], 'forceStop'), false);
  assert.equal(mod.canOvertake(['pause'], 'forceStop'), false);
});

test('matchField maps API field names to form fields', () => {
  assert.equal(mod.matchField('vcpus'), 'vcpus');
  assert.equal(mod.matchField('body.memoryMiB'), 'memoryMiB');
  assert.equal(mod.matchField('/memory_mib'), 'memoryMiB');
  assert.equal(mod.matchField('hypervisor'), 'hypervisor');
  assert.equal(mod.matchField('nope'), null);
  assert.equal(mod.matchField(undefined), null);
});

test('toApiError reads the error envelope and Retry-After', async () => {
  const e = await mod.toApiError(
    new Response(JSON.stringify({ error: { code: 'validation', message: 'vcpus must be 1-8', field: 'vcpus' } }), { status: 400 }),
  );
  assert.equal(e.status, 400);
  assert.equal(e.field, 'vcpus');
  assert.equal(e.message, 'vcpus must be 1-8');
  const r = await mod.toApiError(new Response('{"error":{"code":"rate_limited","message":"slow down"}}', { status: 429, headers: { 'retry-after': '3' } }));
  assert.equal(r.retryAfter, 3);
  assert.match(r.describe(), /Try again in 3 s/);
  const t = await mod.toApiError(new Response('<html>bad gateway</html>', { status: 502 }));
  assert.equal(t.message, '<html>bad gateway</html>');
});

test('Api sends the bearer token and JSON, and builds ws URLs with access_token', async () => {
  const calls: [string, RequestInit | undefined][] = [];
  const api = new mod.Api('http://h:1', 'tok', async (u: string, init?: RequestInit) => {
    calls.push([u, init]);
    return new Response(JSON.stringify({ id: 'a' }), { status: 200, headers: { 'content-type': 'application/json' } });
  });
  await api.action('a b', 'stop', true);
  assert.equal(calls[0]![0], 'http://h:1/v1/vms/a%20b/stop?force=true');
  assert.equal((calls[0]![1]!.headers as Record<string, string>)['Authorization'], 'Bearer tok');
  assert.equal(api.wsUrl('/v1/events', { since: 5 }), 'ws://h:1/v1/events?since=5&access_token=tok');
  let unauthorized = 0;
  const bad = new mod.Api('http://h:1', 'x', async () => new Response('{"error":{"code":"unauthorized","message":"no"}}', { status: 401 }));
  bad.onUnauthorized = () => unauthorized++;
  await assert.rejects(bad.listVms(), (e: any) => e.status === 401);
  assert.equal(unauthorized, 1);
  const down = new mod.Api('http://h:1', 'x', async () => {
    throw new TypeError('fetch failed');
  });
  await assert.rejects(down.health(), (e: any) => e.status === 0 && /Cannot reach/.test(e.describe()));
});

test('the Files and Exec helpers: paths, sizes, exit lines; the file calls and ports through Api', async () => {
  assert.equal(mod.joinPath('/home/user', 'a.txt'), '/home/user/a.txt');
  assert.equal(mod.joinPath('/', 'etc'), '/etc');
  assert.equal(mod.joinPath('/tmp/', '/abs'), '/abs');
  assert.equal(mod.parentPath('/home/user'), '/home');
  assert.equal(mod.parentPath('/home'), '/');
  assert.equal(mod.parentPath('/'), '/');
  assert.deepEqual([0, 1023, 1024, 3022, 5 * 1024 * 1024, 300 * 1024 * 1024 * 1024].map(mod.fmtBytes), ['0 B', '1023 B', '1.0 KiB', '3.0 KiB', '5.0 MiB', '300 GiB']);
  assert.equal(mod.describeExit({ exitCode: 4, timedOut: false, durationMs: 330 }), 'Exit code 4 after 0.33 s');
  assert.equal(mod.describeExit({ exitCode: null, signal: 'SIGKILL', timedOut: true }), 'Ended by SIGKILL (timed out)');

  const calls: [string, RequestInit | undefined][] = [];
  let answer: () => Response = () => new Response('{}', { status: 200, headers: { 'content-type': 'application/json' } });
  const api = new mod.Api('', 'tok', async (u: string, init?: RequestInit) => {
    calls.push([u, init]);
    return answer();
  });
  answer = () => new Response('{"error":{"code":"not_found","message":"no route"}}', { status: 404 });
  assert.equal(await api.ports('v'), null, 'a server without the ports route: null (the card hides)');
  answer = () => new Response(JSON.stringify({ ports: [{ port: 8000, path: '/v1/vms/v/ports/8000/' }] }), { status: 200, headers: { 'content-type': 'application/json' } });
  assert.deepEqual(await api.ports('v'), [{ port: 8000, path: '/v1/vms/v/ports/8000/' }]);
  answer = () => new Response(JSON.stringify([{ port: 22, path: '/p/' }, { bogus: true }]), { status: 200, headers: { 'content-type': 'application/json' } });
  assert.deepEqual(await api.ports('v'), [{ port: 22, path: '/p/' }]);
  answer = () => new Response('{"path":"/home/user/a b","size":3}', { status: 200, headers: { 'content-type': 'application/json' } });
  calls.length = 0;
  await api.upload('v', '/home/user/a b', new Blob(['abc']));
  assert.equal(calls[0]![0], '/v1/vms/v/files?path=%2Fhome%2Fuser%2Fa%20b');
  assert.equal(calls[0]![1]!.method, 'PUT');
  assert.equal((calls[0]![1]!.headers as Record<string, string>)['Authorization'], 'Bearer tok');
  answer = () => new Response('bytes', { status: 200, headers: { 'content-type': 'application/octet-stream' } });
  await assert.rejects(api.listDir('v', '/etc/passwd'), (e: any) => e.status === 400 && /not a directory/.test(e.message));
  assert.equal(await (await api.download('v', '/etc/passwd')).text(), 'bytes');
  answer = () => new Response('{"path":"/x","created":true}', { status: 200, headers: { 'content-type': 'application/json' } });
  await api.mkdir('v', '/x');
  assert.equal(calls.at(-1)![0], '/v1/vms/v/files/mkdir');
  assert.equal(calls.at(-1)![1]!.body, '{"path":"/x"}');
});

const vm = (id: string, state: string, updatedAt: string) => ({
  id, name: id, state, image: 'default', hypervisor: 'qemu', vcpus: 1, memoryMiB: 256, createdAt: '2025-01-01T00:00:00.000Z', updatedAt,
});

test('VmStore applies events and merges snapshots by updatedAt', () => {
  const s = new mod.VmStore();
  const seen: (string | null)[] = [];
  s.subscribe((_: unknown, id: string | null) => seen.push(id));
  s.setSnapshot([vm('a', 'created', '2025-01-01T00:00:01.000Z')]);
  assert.equal(s.apply({ seq: 1, vm: 'a', event: 'STATE_CHANGED', data: { state: 'starting', previous: 'created' }, timestamp: '2025-01-01T00:00:02.000Z' }), null);
  assert.equal(s.vms.get('a').state, 'starting');
  // an older event (replayed) does not roll the state back
  s.apply({ seq: 0, vm: 'a', event: 'STATE_CHANGED', data: { state: 'created' }, timestamp: '2025-01-01T00:00:01.500Z' });
  assert.equal(s.vms.get('a').state, 'starting');
  // a stale snapshot does not either; a newer one wins
  s.setSnapshot([vm('a', 'created', '2025-01-01T00:00:01.000Z')]);
  assert.equal(s.vms.get('a').state, 'starting');
  s.setSnapshot([vm('a', 'running', '2025-01-01T00:00:03.000Z')]);
  assert.equal(s.vms.get('a').state, 'running');
  // VM_CREATED carries the VM; an unknown VM's STATE_CHANGED asks to be fetched
  s.apply({ seq: 2, vm: 'b', event: 'VM_CREATED', data: vm('b', 'created', '2025-01-01T00:00:04.000Z'), timestamp: '2025-01-01T00:00:04.000Z' });
  assert.ok(s.vms.has('b'));
  assert.equal(s.apply({ seq: 3, vm: 'c', event: 'STATE_CHANGED', data: { state: 'running' }, timestamp: 'x' }), 'c');
  s.apply({ seq: 4, vm: 'b', event: 'VM_DELETED', data: {}, timestamp: '2025-01-01T00:00:05.000Z' });
  assert.ok(!s.vms.has('b'));
  // QMP events do not touch the list
  assert.equal(s.apply({ seq: 5, vm: 'a', event: 'STOP', data: {}, timestamp: 'x' }), null);
  assert.deepEqual(s.sorted().map((v: any) => v.id), ['a']);
  // a VM created while a snapshot was in flight survives that (older) snapshot
  s.beginSnapshot();
  s.upsert(vm('d', 'created', '2025-01-01T00:00:06.000Z'));
  s.setSnapshot([vm('a', 'running', '2025-01-01T00:00:03.000Z')]);
  assert.ok(s.vms.has('d'));
  // ...but the next snapshot without it removes it
  s.beginSnapshot();
  s.setSnapshot([vm('a', 'running', '2025-01-01T00:00:03.000Z')]);
  assert.ok(!s.vms.has('d'));
  assert.ok(seen.length >= 5);
});

test('EventStream resumes with ?since=<last seq> after a drop and skips duplicates', async () => {
  const wss = new WebSocketServer({ port: 0, host: '127.0.0.1' });
  await new Promise((r) => wss.once('listening', r));
  const port = (wss.address() as AddressInfo).port;
  const urls: string[] = [];
  const sockets: WebSocket[] = [];
  wss.on('connection', (ws, req) => {
    urls.push(req.url!);
    sockets.push(ws);
    const since = new URL(req.url!, 'http://x').searchParams.get('since');
    if (since === null) {
      ws.send(JSON.stringify({ seq: 10, vm: 'a', event: 'STOP', data: {}, timestamp: 't' }));
      ws.send(JSON.stringify({ seq: 11, vm: 'a', event: 'RESUME', data: {}, timestamp: 't' }));
      setTimeout(() => ws.terminate(), 50);
    } else {
      // replay overlaps what the client already has: 11 again, then 12
      ws.send(JSON.stringify({ seq: 11, vm: 'a', event: 'RESUME', data: {}, timestamp: 't' }));
      ws.send(JSON.stringify({ seq: 12, vm: 'a', event: 'SHUTDOWN', data: {}, timestamp: 't' }));
    }
  });
  const got: number[] = [];
  const statuses: string[] = [];
  let resumed = 0;
  const es = new mod.EventStream({
    url: (since?: number) => `ws://127.0.0.1:${port}/v1/events` + (since === undefined ? '' : `?since=${since}`),
    onEvent: (ev: any) => got.push(ev.seq),
    onStatus: (s: string) => statuses.push(s),
    onResumed: () => resumed++,
    ws: (u: string) => new WebSocket(u),
    minDelayMs: 20,
  });
  es.start();
  const deadline = Date.now() + 5000;
  while (got.length < 3 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  es.stop();
  for (const s of sockets) s.terminate();
  wss.close();
  assert.deepEqual(got, [10, 11, 12]);
  assert.deepEqual(urls, ['/v1/events', '/v1/events?since=11']);
  assert.equal(resumed, 1);
  assert.ok(statuses.includes('reconnecting'));
  assert.equal(statuses.at(-1), 'closed');
});
