// H4/L7: ?since= replay is paged, paced by the subscriber's bucket and byte cap, limited, and
// a deleted VM's events go with it. A real server on a real SQLite file holding 100k events.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { connect, type Socket } from 'node:net';
import { randomBytes } from 'node:crypto';
import { openDb } from '../db/index.js';
import { TestServer, EventCollector, sleep, waitFor } from '../test/harness.js';

const servers: TestServer[] = [];
after(async () => { for (const s of servers) await s.stop(); });

const EVENTS = 100_000;

/** A data directory whose database already holds `n` events of one VM. */
function dataDirWithEvents(n: number): string {
  const dir = mkdtempSync(join(tmpdir(), 'capsule-replay-'));
  const db = openDb(join(dir, 'capsule.db'));
  const insert = db.prepare('INSERT INTO events (vm_id, event, data, timestamp) VALUES (?, ?, ?, ?)');
  const payload = JSON.stringify({ pad: 'x'.repeat(200) });
  db.transaction(() => { for (let i = 0; i < n; i++) insert.run('old-vm', 'NOISE', payload, new Date().toISOString()); })();
  db.close();
  return dir;
}

/**
 * A WebSocket client that never reads a byte, from the first one on: a raw TCP connection that
 * sends the upgrade request and nothing else (no 'data' listener: the stream stays paused), so
 * whatever the server sends piles up in the kernel's buffers and then in the server.
 */
function neverReadingSubscriber(s: TestServer, path: string): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const sock = connect(s.port, '127.0.0.1', () => {
      sock.write(`GET ${path}&access_token=${encodeURIComponent(s.token)} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n`
        + `Sec-WebSocket-Key: ${randomBytes(16).toString('base64')}\r\nSec-WebSocket-Version: 13\r\n\r\n`);
      resolve(sock);
    });
    sock.on('error', reject);
  });
}

test('H4: 20 paused ?since=0 sockets over 100k events: memory stays bounded, health answers', async () => {
  const s = await TestServer.start({ dataDir: dataDirWithEvents(EVENTS), env: { CAPSULE_EVENT_HISTORY: String(EVENTS) } });
  servers.push(s);
  const rss0 = s.rssMiB();
  const sockets = await Promise.all(Array.from({ length: 20 }, () => neverReadingSubscriber(s, '/v1/events?since=0')));
  // Long enough for an unpaced replay to have queued everything (that took the server to 1.4 GiB).
  for (let i = 0; i < 15; i++) {
    assert.equal((await fetch(`${s.url}/v1/health`)).status, 200);
    await sleep(200);
  }
  const grown = s.rssMiB() - rss0;
  assert.ok(grown < 200, `server RSS grew ${grown.toFixed(0)} MiB with 20 paused replays`);
  for (const sock of sockets) sock.destroy();
});

test('H4: replay is limited (older events announced as EVENTS_DROPPED) and paced by the bucket', async () => {
  const s = await TestServer.start({
    dataDir: dataDirWithEvents(300),
    env: { CAPSULE_EVENT_REPLAY_LIMIT: '100', CAPSULE_EVENT_RATE: '20', CAPSULE_EVENT_BURST: '20', CAPSULE_EVENT_HISTORY: '1000' },
  });
  servers.push(s);
  const c = new EventCollector(s.ws('/v1/events?since=0'));
  await c.opened;
  const t0 = Date.now();
  const first = await waitFor('the first message', () => c.messages[0], 5000);
  assert.equal(first.event, 'EVENTS_DROPPED', 'the events beyond the replay limit are announced first');
  assert.equal(first.data.count, 200);
  assert.equal(first.data.fromSeq, 1);
  assert.equal(first.data.toSeq, 200);
  // Burst 20 at once (one of them the notice), then 20/s: 100 replayed events take about 4 s more.
  await sleep(300);
  const early = c.messages.filter((m) => m.event === 'NOISE').length;
  assert.ok(early <= 40, `the bucket paces the replay (${early} events in the first 300 ms)`);
  await waitFor('the whole replay', () => c.messages.filter((m) => m.event === 'NOISE').length >= 100 || undefined, 10_000);
  const replayed = c.messages.filter((m) => m.event === 'NOISE');
  assert.equal(replayed.length, 100);
  assert.deepEqual(replayed.map((m) => m.seq), Array.from({ length: 100 }, (_, i) => 201 + i), 'the newest 100, in order');
  assert.ok(Date.now() - t0 >= 3000, 'paced, not all at once');
  // Then it is live: a new event arrives once, after the replay (once the bucket has refilled:
  // right after the replay it is empty, and an event then would be dropped and announced).
  await sleep(1000);
  const created = await s.api('POST', '/v1/vms', { name: 'after-replay' });
  await c.waitFor('VM_CREATED', () => true, 5000);
  assert.equal(c.messages.filter((m) => m.event === 'VM_CREATED' && m.vm === created.body.id).length, 1);
  c.close();
});

test('L7: a deleted VM\'s events are purged, its VM_DELETED stays', async () => {
  const s = await TestServer.start();
  servers.push(s);
  const vm = (await s.api('POST', '/v1/vms', { name: 'purge-me' })).body;
  assert.equal((await s.api('DELETE', `/v1/vms/${vm.id}`)).status, 204);
  const db = new Database(join(s.dataDir, 'capsule.db'), { readonly: true });
  try {
    const rows = db.prepare('SELECT event FROM events WHERE vm_id = ?').pluck().all(vm.id);
    assert.deepEqual(rows, ['VM_DELETED']);
  } finally {
    db.close();
  }
  // A subscriber replaying from 0 learns of the deletion and nothing else of that VM.
  const c = new EventCollector(s.ws('/v1/events?since=0'));
  await c.opened;
  await c.waitFor('VM_DELETED', (m) => m.vm === vm.id, 5000);
  await sleep(200);
  assert.deepEqual(c.messages.filter((m) => m.vm === vm.id).map((m) => m.event), ['VM_DELETED']);
  c.close();
});
