// Regression tests for the security probe of issue 8 that need no guest: hostile request lines
// and upgrades, WebSocket frame limits, token placement, path decoding, byte limits, file modes.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { request } from 'node:http';
import { connect } from 'node:net';
import { mkdirSync, mkdtempSync, statSync, existsSync } from 'node:fs';
import { availableParallelism, tmpdir } from 'node:os';
import { join } from 'node:path';
import WebSocket from 'ws';
import { TestServer, sleep } from '../test/harness.js';

let s: TestServer;
let dataDir: string;
before(async () => {
  // Created 0755 beforehand, as build-image.sh used to: the server must tighten it.
  dataDir = join(mkdtempSync(join(tmpdir(), 'capsule-hard-')), 'data');
  mkdirSync(dataDir, { mode: 0o755 });
  s = await TestServer.start({ dataDir, env: { CAPSULE_RATE_LIMIT: '100000', CAPSULE_RATE_BURST: '100000' } });
});
after(async () => { await s.stop(); });

/** Sends raw bytes, returns everything the server answers until it closes (or 5 s). */
function raw(text: string, port = s.port): Promise<string> {
  return new Promise((resolve, reject) => {
    const sock = connect(port, '127.0.0.1', () => sock.write(text));
    let out = '';
    sock.on('data', (d) => { out += d.toString('latin1'); });
    sock.on('error', reject);
    sock.on('close', () => resolve(out));
    setTimeout(() => { sock.destroy(); resolve(out); }, 5000).unref();
  });
}

const healthy = async () => (await fetch(`${s.url}/v1/health`)).status === 200;

test('C1: an upgrade with an absolute-form target does not kill the server (400, connection closed)', async () => {
  for (const upgrade of ['x', 'websocket']) {
    const answer = await raw(`GET http://a:99999/ HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: ${upgrade}\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n`);
    assert.match(answer, /^HTTP\/1\.1 400 /, `Upgrade: ${upgrade}: ${answer}`);
    assert.ok(await healthy(), 'the server is still up');
  }
  // Other hostile targets on a real endpoint.
  for (const target of ['//evil/v1/events', '*', 'http://127.0.0.1/v1/events']) {
    const answer = await raw(`GET ${target} HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n`);
    assert.match(answer, /^HTTP\/1\.1 400 /, target);
  }
  assert.ok(await healthy());
  assert.doesNotMatch(s.output, /Invalid URL/);
});

test('C1: a non-WebSocket upgrade gets 400; an unauthenticated WebSocket upgrade 401 with a JSON body', async () => {
  const x = await raw(`GET /v1/events HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n`);
  assert.match(x, /^HTTP\/1\.1 400 /);
  const noToken = await raw(`GET /v1/events HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n`);
  assert.match(noToken, /^HTTP\/1\.1 401 /);
  assert.match(noToken, /"code":"unauthorized"/);
  // An upgrade to a route that is not a WebSocket endpoint: 400, not that route's answer.
  const notWs = await raw(`GET /v1/vms HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer ${s.token}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n`);
  assert.match(notWs, /^HTTP\/1\.1 400 /);
  assert.match(notWs, /not a WebSocket endpoint/);
  assert.ok(await healthy());
});

test('M4: a plain GET with Upgrade: websocket but no Connection: upgrade gets 400, never an empty 200', async () => {
  for (let i = 0; i < 200; i++) {
    const answer = await raw(`GET /v1/events HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nAuthorization: Bearer ${s.token}\r\nConnection: close\r\n\r\n`);
    assert.match(answer, /^HTTP\/1\.1 400 /, answer);
    assert.match(answer, /WebSocket/);
  }
});

test('L1: ?access_token= is refused on plain HTTP requests, even with an Upgrade header', async () => {
  const status = await new Promise<number>((resolve, reject) => {
    const body = JSON.stringify({ name: 'l1-probe' });
    const req = request(`${s.url}/v1/vms?access_token=${encodeURIComponent(s.token)}`, {
      method: 'POST', headers: { 'content-type': 'application/json', upgrade: 'websocket', 'content-length': Buffer.byteLength(body) },
    }, (res) => { res.resume(); resolve(res.statusCode ?? 0); });
    req.on('error', reject);
    req.end(body);
  });
  assert.equal(status, 401);
  assert.equal((await s.api('GET', '/v1/vms')).body.items.filter((v: any) => v.name === 'l1-probe').length, 0, 'nothing created');
  // On a real upgrade the query token still works (browsers cannot set headers).
  const ws = s.ws('/v1/events');
  await new Promise((res, rej) => { ws.once('open', res); ws.once('error', rej); });
  ws.close();
});

test('L3: malformed percent-encoding in a path gets 400 or 404, not 500', async () => {
  for (const path of ['/%', '/%E0%A4%A', '/x%zz', '/%00']) {
    const r = await fetch(s.url + path);
    assert.ok(r.status === 400 || r.status === 404, `${path}: ${r.status}`);
  }
  // A change (audited) to a malformed id: the audit log must not turn the route's 404 into a 500 (API fuzz drill).
  for (const path of ['/v1/vms/%zz/start', '/v1/vms/%zz', '/v1/volumes/%E0%A4%A', '/v1/tenants/%', '/v1/tokens/%zz']) {
    for (const method of ['POST', 'DELETE', 'PATCH']) {
      const r = await s.api(method, path, {});
      assert.ok(r.status >= 400 && r.status < 500, `${method} ${path}: ${r.status} ${JSON.stringify(r.body)}`);
    }
  }
  assert.ok(await healthy());
});

/** Opens a WebSocket and sends one binary frame of `size` bytes; resolves the close code. */
async function sendFrame(path: string, size: number): Promise<number> {
  const ws = s.ws(path);
  await new Promise((res, rej) => { ws.once('open', res); ws.once('error', rej); });
  const closed = new Promise<number>((res) => ws.once('close', (code) => res(code)));
  ws.on('error', () => { /* the close code tells */ });
  ws.send(Buffer.alloc(size, 0x61));
  return closed;
}

test('M3/H2: an events socket refuses a frame over 4 KiB with 1009 (message too big); the server does not grow', async () => {
  const rss0 = s.rssMiB();
  for (let i = 0; i < 3; i++) assert.equal(await sendFrame('/v1/events', 8 * 1024 * 1024), 1009);
  assert.ok(s.rssMiB() - rss0 < 100, `RSS grew from ${rss0} to ${s.rssMiB()} MiB`);
  // A small message is fine (and ignored).
  const ws = s.ws('/v1/events');
  await new Promise((res, rej) => { ws.once('open', res); ws.once('error', rej); });
  ws.send('hello');
  await sleep(200);
  assert.equal(ws.readyState, WebSocket.OPEN);
  ws.close();
});

test('L6: the cmdline limit counts bytes, not characters', async () => {
  const tooLong = await s.api('POST', '/v1/vms', { name: 'l6-a', cmdline: 'é'.repeat(2048) });
  assert.equal(tooLong.status, 400);
  assert.equal(tooLong.body.error.field, 'cmdline');
  assert.match(tooLong.body.error.message, /2048 bytes/);
  const fits = await s.api('POST', '/v1/vms', { name: 'l6-b', cmdline: 'é'.repeat(1024) });
  assert.equal(fits.status, 201);
});

test('M1: a VM larger than the host is refused at definition, naming the limit', async () => {
  const cpus = await s.api('POST', '/v1/vms', { name: 'm1-cpus', vcpus: 254 });
  assert.equal(cpus.status, 400);
  assert.equal(cpus.body.error.field, 'vcpus');
  assert.match(cpus.body.error.message, new RegExp(`at most ${availableParallelism()} .*CAPSULE_MAX_VCPUS`));
  const mem = await s.api('POST', '/v1/vms', { name: 'm1-mem', memoryMiB: 512 * 1024 });
  assert.equal(mem.status, 400);
  assert.equal(mem.body.error.field, 'memoryMiB');
  assert.match(mem.body.error.message, /CAPSULE_HOST_MEMORY_MIB/);
});

test('L4: the data directory is 0700 and the database files 0600', async () => {
  await s.api('POST', '/v1/vms', { name: 'l4-write' }); // makes sure the WAL exists
  assert.equal(statSync(dataDir).mode & 0o777, 0o700);
  for (const f of ['capsule.db', 'capsule.db-wal', 'capsule.db-shm']) {
    const p = join(dataDir, f);
    if (existsSync(p)) assert.equal(statSync(p).mode & 0o777, 0o600, f);
  }
  assert.equal(statSync(join(dataDir, 'capsule.db')).mode & 0o777, 0o600);
});

test('open WebSockets per token are capped (429 too_many_sockets); closing one frees a place', async () => {
  const t = await TestServer.start({ env: { CAPSULE_MAX_SOCKETS_PER_TOKEN: '3' } });
  try {
    const opened = await Promise.all([0, 1, 2].map(async () => {
      const ws = t.ws('/v1/events');
      await new Promise((res, rej) => { ws.once('open', res); ws.once('error', rej); });
      return ws;
    }));
    const status = await new Promise<number>((resolve) => {
      const ws = t.ws('/v1/events');
      ws.once('unexpected-response', (_req, res) => resolve(res.statusCode ?? 0));
      ws.once('open', () => resolve(101));
      ws.once('error', () => { /* unexpected-response tells */ });
    });
    assert.equal(status, 429);
    opened[0]!.close();
    await new Promise((r) => opened[0]!.once('close', r));
    await sleep(100);
    const again = t.ws('/v1/events');
    await new Promise((res, rej) => { again.once('open', res); again.once('error', rej); });
    for (const ws of [...opened, again]) ws.close();
    // Failed handshakes give their place back too.
    for (let i = 0; i < 10; i++) await raw(`GET /v1/events HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer ${t.token}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n`, t.port);
    await sleep(200);
    const last = await Promise.all([0, 1, 2].map(async () => {
      const ws = t.ws('/v1/events');
      await new Promise((res, rej) => { ws.once('open', res); ws.once('error', rej); });
      return ws;
    }));
    for (const ws of last) ws.close();
  } finally {
    await t.stop();
  }
});

test('GET /v1/vms/:id/log returns the last 1 MiB of a large log, saying what it left out', async () => {
  const id = (await s.api('POST', '/v1/vms', { name: 'big-log' })).body.id as string;
  const dir = join(dataDir, 'vms', id);
  mkdirSync(dir, { recursive: true });
  const { writeFileSync } = await import('node:fs');
  writeFileSync(join(dir, 'vmm.log'), 'x'.repeat(3 * 1024 * 1024) + 'THE-END\n');
  const r = await s.api('GET', `/v1/vms/${id}/log`);
  assert.equal(r.status, 200);
  assert.match(r.body, /^\[capsule: the first 2097160 bytes of the log are not shown\]\n/);
  assert.ok(r.body.endsWith('THE-END\n'));
  assert.ok(r.body.length < 1024 * 1024 + 100, `${r.body.length} bytes`);
});
