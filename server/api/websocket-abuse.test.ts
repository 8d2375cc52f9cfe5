// WebSocket drill (issue 10): floods, oversized, binary and malformed frames on the events and
// console sockets are closed with a code and a reason in words; other clients (another tenant's
// token on the same streams, a viewer of the same console) see nothing of it; the server's fds
// come back to where they were. One QEMU VM runs for the console part.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import WebSocket from 'ws';
import { TestServer, ConsoleCollector, EventCollector, waitFor, sleep } from '../test/harness.js';
import { writeFigures } from '../test/figures.js';
import { fdCount } from '../test/proc.js';

let s: TestServer;
let flooder: string;
let vm: string;
const figures: Record<string, unknown> = {};
before(async () => {
  s = await TestServer.start();
  assert.equal((await s.api('POST', '/v1/tenants', { name: 'flood' })).status, 201);
  flooder = (await s.api('POST', '/v1/tokens', { tenant: 'flood', name: 'flooder', scope: 'write' })).body.token;
  const created = await s.api('POST', '/v1/vms', { name: 'flooded', memoryMiB: 256 }, { authorization: `Bearer ${flooder}` });
  assert.equal(created.status, 201, JSON.stringify(created.body));
  vm = created.body.id;
});
after(async () => {
  writeFigures('websocket-abuse', figures);
  await s.stop();
});

const opened = (ws: WebSocket) => new Promise<void>((r, j) => { ws.once('open', () => r()); ws.once('error', j); });
const closed = (ws: WebSocket) => new Promise<{ code: number; reason: string }>((r) => {
  ws.on('error', () => { /* the close tells */ });
  ws.once('close', (code, reason) => r({ code, reason: reason.toString() }));
});

/**
 * Opens a socket as the flooder. Right after a flood the token's own bucket may still be full
 * (429 rate_limited is the right answer to its next upgrade): wait as Retry-After says, 1 s.
 */
async function openAsFlooder(path: string): Promise<WebSocket> {
  for (let attempt = 0; ; attempt++) {
    const ws = s.ws(path, flooder);
    try {
      await opened(ws);
      return ws;
    } catch (e) {
      if (attempt >= 5 || !/429/.test(String(e))) throw e;
      await sleep(1000);
    }
  }
}

/** Opens a socket as the flooder, sends `frames` as fast as the client can, resolves the close and what came back. */
async function abuse(path: string, frames: Array<{ data: Buffer | string; binary: boolean }>): Promise<{ code: number; reason: string; replies: number; ms: number }> {
  const ws = await openAsFlooder(path);
  let replies = 0;
  ws.on('message', () => { replies++; });
  const done = closed(ws);
  const t0 = Date.now();
  for (const f of frames) {
    if (ws.readyState !== WebSocket.OPEN) break;
    ws.send(f.data, { binary: f.binary });
  }
  const c = await Promise.race([done, sleep(15_000).then(() => ({ code: 0, reason: 'not closed within 15 s' }))]);
  ws.terminate();
  return { ...c, replies, ms: Date.now() - t0 };
}

const many = (n: number, data: string) => Array.from({ length: n }, () => ({ data, binary: false }));

test('events sockets: a flood (1008), a binary frame (1003), an oversized frame (1009), invalid UTF-8 (1007): each closed with a reason; another tenant\'s stream is unaffected', async () => {
  const fds0 = fdCount(s.pid);
  const observer = new EventCollector(s.ws('/v1/events'));
  await observer.opened;

  const flood = await abuse('/v1/events', many(5000, 'x'));
  assert.equal(flood.code, 1008);
  assert.match(flood.reason, /^too many messages: rate limited/);
  // One notice per run of refusals (a refill may let one message through and start a new run), never one per message.
  assert.ok(flood.replies <= 3, `a notice per run, not per message: ${flood.replies}`);

  const binary = await abuse('/v1/events', [{ data: Buffer.from([1, 2, 3]), binary: true }]);
  assert.deepEqual([binary.code, binary.reason], [1003, 'events sockets take no binary messages']);
  const big = await abuse('/v1/events', [{ data: 'y'.repeat(8 * 1024 * 1024), binary: false }]);
  assert.deepEqual([big.code, big.reason], [1009, 'message too big: at most 4096 bytes']);
  const badText = await abuse('/v1/events', [{ data: Buffer.from([0x68, 0xff, 0xfe, 0x69]), binary: false }]);
  assert.deepEqual([badText.code, badText.reason], [1007, 'invalid UTF-8 in a text message']);

  // The observer's stream goes on: it sees a change made after all that.
  const probe = await s.api('POST', '/v1/vms', { name: 'after-flood' });
  assert.equal(probe.status, 201);
  await observer.waitFor('VM_CREATED', (m) => m.vm === probe.body.id, 10_000);
  assert.equal(observer.socket.readyState, WebSocket.OPEN);
  observer.close();
  await waitFor('sockets released', () => fdCount(s.pid) <= fds0 + 2 || undefined, 10_000);
  figures.events = { flood: { sent: 5000, closedWith: [flood.code, flood.reason], replies: flood.replies, ms: flood.ms }, binary: [binary.code, binary.reason], oversized: [big.code, big.reason], invalidUtf8: [badText.code, badText.reason], fdsBefore: fds0, fdsAfter: fdCount(s.pid) };
});

test('console sockets: a flood of keystrokes (1008) and an oversized paste (1009) are closed with a reason; another viewer keeps its console', { timeout: 300_000 }, async () => {
  const started = await s.api('POST', `/v1/vms/${vm}/start`, undefined, { authorization: `Bearer ${flooder}` });
  assert.equal(started.status, 200, JSON.stringify(started.body));
  const viewer = new ConsoleCollector(s.ws(`/v1/vms/${vm}/console`));
  await viewer.opened;
  await viewer.waitFor('CAPSULE_READY', 240_000);
  const fds0 = fdCount(s.pid);
  const rss0 = s.rssMiB();

  const big = await abuse(`/v1/vms/${vm}/console`, [{ data: Buffer.alloc(1024 * 1024, 0x61), binary: true }]);
  assert.deepEqual([big.code, big.reason], [1009, `message too big: at most ${64 * 1024} bytes`]);
  // Keystrokes the guest ignores ("\0"), sent far faster than the token's 100/s.
  const flood = await abuse(`/v1/vms/${vm}/console`, Array.from({ length: 5000 }, () => ({ data: Buffer.from([0]), binary: true })));
  assert.equal(flood.code, 1008);
  assert.match(flood.reason, /^too many messages: rate limited/);

  // The other viewer types and reads as before.
  viewer.send('echo still-$((6*7))-here\n');
  await viewer.waitFor('still-42-here', 60_000);
  assert.equal(viewer.socket.readyState, WebSocket.OPEN);
  viewer.close();
  await waitFor('sockets released', () => fdCount(s.pid) <= fds0 + 2 || undefined, 10_000);
  assert.ok(s.rssMiB() - rss0 < 100, `RSS grew from ${rss0} to ${s.rssMiB()} MiB`);
  figures.console = { oversized: [big.code, big.reason], flood: { sent: 5000, closedWith: [flood.code, flood.reason], ms: flood.ms }, otherViewerUnaffected: true, fdsBefore: fds0, fdsAfter: fdCount(s.pid), rssBeforeMiB: Math.round(rss0), rssAfterMiB: Math.round(s.rssMiB()) };
  assert.equal((await s.api('POST', `/v1/vms/${vm}/stop?force=true`)).status, 200);
});
