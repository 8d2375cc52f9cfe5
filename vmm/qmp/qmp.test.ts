import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { JsonSplitter } from './framing.js';
import { LeakyBucket } from '../../lib/leaky-bucket.js';
import { QmpError, QmpServer } from './server.js';
import { QmpClient } from '../testing/clients.js';

test('framing: objects split across chunks, strings with braces, junk', () => {
  const s = new JsonSplitter(100);
  assert.deepEqual(s.push('{"a":"}{"'), []);
  assert.deepEqual(s.push(',"b":1}{"c"'), [{ ok: true, text: '{"a":"}{","b":1}' }]);
  assert.deepEqual(s.push(':2}\n'), [{ ok: true, text: '{"c":2}' }]);
  const junk = s.push('xyz\n');
  assert.equal(junk.length, 1);
  assert.equal(junk[0]?.ok, false);
  const big = s.push('{"x":"' + 'a'.repeat(200) + '"}{"ok":1}');
  assert.equal(big[0]?.ok, false);
  assert.deepEqual(big[1], { ok: true, text: '{"ok":1}' });
});

test('leaky bucket: 100 then refuse, drains over time', () => {
  let t = 0;
  const b = new LeakyBucket(100, 100, () => t);
  for (let i = 0; i < 100; i++) assert.equal(b.tryTake(), true);
  assert.equal(b.tryTake(), false);
  t += 50; // 5 drain
  for (let i = 0; i < 5; i++) assert.equal(b.tryTake(), true);
  assert.equal(b.tryTake(), false);
});

test('QMP server over a real Unix socket', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'qmp-test-'));
  const path = join(dir, 'qmp.sock');
  const srv = new QmpServer({ path });
  srv.register('query-status', () => ({ running: true, singlestep: false, status: 'running' }));
  srv.register('fail', () => { throw new QmpError('DeviceNotFound', 'nope'); });
  await srv.listen();
  const a = await QmpClient.connect(path, false);
  assert.deepEqual(a.greeting, { QMP: { version: { qemu: { major: 8, minor: 2, micro: 0 }, package: 'capsule' }, capabilities: [] } });
  const early = await a.call('query-status');
  assert.deepEqual(early.error, { class: 'CommandNotFound', desc: "Expecting capabilities negotiation with 'qmp_capabilities'" });
  await a.execute('qmp_capabilities');
  assert.equal(((await a.call('qmp_capabilities')).error as { class: string }).class, 'CommandNotFound');
  assert.deepEqual(await a.execute('query-status'), { running: true, singlestep: false, status: 'running' });
  a.sendRaw('{"execute":');
  a.sendRaw('"query-status","id":"split"}');
  assert.ok('return' in (await a.next((m) => m.id === 'split')));
  a.sendRaw('{bad json}\n');
  assert.equal(((await a.next((m) => 'error' in m && !('id' in m))).error as { class: string }).class, 'GenericError');
  a.sendRaw('[1,2]\n');
  assert.equal(((await a.next((m) => 'error' in m && !('id' in m))).error as { class: string }).class, 'GenericError');
  assert.deepEqual((await a.call('fail')).error, { class: 'DeviceNotFound', desc: 'nope' });
  assert.equal(((await a.call('nope')).error as { desc: string }).desc, 'The command nope has not been found');
  // events go to every negotiated client, with timestamps
  const b = await QmpClient.connect(path);
  const c = await QmpClient.connect(path, false);
  srv.event('STOP');
  const ea = await a.event('STOP');
  await b.event('STOP');
  const ts = ea.timestamp as { seconds: number; microseconds: number };
  assert.ok(ts.seconds > 1.7e9 && ts.microseconds >= 0 && ts.microseconds < 1e6);
  await new Promise((r) => setTimeout(r, 50));
  assert.equal(c.messages.length, 0, 'no events before negotiation');
  // rate limit: a burst of 150 gets GenericError replies beyond ~100, then recovers
  let burst = '';
  for (let i = 0; i < 150; i++) burst += JSON.stringify({ execute: 'query-status', id: `r${i}` }) + '\n';
  b.sendRaw(burst);
  const replies = await Promise.all(Array.from({ length: 150 }, (_, i) => b.next((m) => m.id === `r${i}`)));
  const limited = replies.filter((r) => 'error' in r);
  assert.ok(limited.length >= 45 && limited.length <= 52, `limited ${limited.length}`);
  assert.equal((limited[0]?.error as { class: string }).class, 'GenericError');
  await new Promise((r) => setTimeout(r, 200));
  assert.ok('return' in (await b.call('query-status')), 'usable again');
  // the other connection has its own bucket
  assert.ok('return' in (await a.call('query-status')));
  a.close();
  b.close();
  c.close();
  await srv.close();
  assert.ok(!existsSync(path));
});

test('framing: a JSON string outside an object is one junk error; braces in it do not swallow the next command', () => {
  const s = new JsonSplitter(100);
  const frames = s.push('"{@-"\n{"execute":"query-status"}\n');
  assert.deepEqual(frames.map((f) => f.ok), [false, true]);
  assert.equal(frames[1]?.ok && frames[1].text, '{"execute":"query-status"}');
  const escaped = s.push('"a\\"{b" {"x":1}');
  assert.deepEqual(escaped.map((f) => f.ok), [false, true]);
});
