// Leaky buckets: per token on API calls, per subscriber on outbound events.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { TestServer, EventCollector, sleep, waitFor } from '../test/harness.js';

const servers: TestServer[] = [];
after(async () => { for (const s of servers) await s.stop(); });

test('a burst over the API limit gets 429 with Retry-After', async () => {
  const s = await TestServer.start({ env: { CAPSULE_RATE_LIMIT: '5', CAPSULE_RATE_BURST: '10' } });
  servers.push(s);
  const results = await Promise.all(Array.from({ length: 30 }, () => s.api('GET', '/v1/vms')));
  const ok = results.filter((r) => r.status === 200).length;
  const limited = results.filter((r) => r.status === 429);
  assert.ok(ok >= 10 && ok <= 12, `about the burst passes (got ${ok})`);
  assert.equal(ok + limited.length, 30);
  const first = limited[0]!;
  assert.equal(first.body.error.code, 'rate_limited');
  assert.ok(Number(first.headers.get('retry-after')) >= 1);
  // Health is not rate limited (no token), and the bucket drains.
  assert.equal((await fetch(`${s.url}/v1/health`)).status, 200);
  await sleep(1100);
  assert.equal((await s.api('GET', '/v1/vms')).status, 200);
});

test('a slow subscriber gets EVENTS_DROPPED with the right count; replay recovers what was dropped', async () => {
  const s = await TestServer.start({ env: { CAPSULE_EVENT_RATE: '2', CAPSULE_EVENT_BURST: '5' } });
  servers.push(s);
  const sub = new EventCollector(s.ws('/v1/events'));
  await sub.opened;
  // 20 definitions -> 20 VM_CREATED events in a quick burst.
  for (let i = 0; i < 20; i++) assert.equal((await s.api('POST', '/v1/vms', { name: `burst-${i}` })).status, 201);

  const notice = await sub.waitFor('EVENTS_DROPPED', () => true, 10_000);
  const delivered = sub.messages.filter((m) => m.event === 'VM_CREATED').length;
  assert.equal(delivered, 5, 'the burst passes, the rest is dropped');
  assert.equal(notice.data.count, 20 - delivered);
  assert.equal(notice.data.toSeq - notice.data.fromSeq + 1, notice.data.count);
  // Replay from the stored history recovers what was dropped.
  const replay = new EventCollector(s.ws(`/v1/events?since=${notice.data.fromSeq - 1}`));
  await waitFor('replay', () => replay.messages.filter((m) => m.event === 'VM_CREATED').length >= notice.data.count || undefined, 10_000);
  sub.close();
  replay.close();
});
