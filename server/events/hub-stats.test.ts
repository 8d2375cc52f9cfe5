// The hub's running totals (published, dropped) and its in-process observers, without a server.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openDb } from '../db/index.js';
import { EventStore } from '../db/events.js';
import { EventHub } from './hub.js';

function withHub(fn: (hub: EventHub) => Promise<void> | void, limits = {}) {
  return async () => {
    const dir = mkdtempSync(join(tmpdir(), 'capsule-hub-'));
    const db = openDb(join(dir, 'capsule.db'));
    try {
      await fn(new EventHub(new EventStore(db, 1000), { perSecond: 1000, burst: 1000 }, limits));
    } finally {
      db.close();
      rmSync(dir, { recursive: true, force: true });
    }
  };
}

test('published and slow-subscriber drops are counted; observers see every event, and one that throws costs nothing', withHub((hub) => {
  const seen: string[] = [];
  hub.observe(() => { throw new Error('a broken observer'); });
  hub.observe((ev) => seen.push(ev.event));
  const got: Buffer[] = [];
  const unsubscribeFast = hub.subscribe({ send: (m) => got.push(m), bufferedAmount: () => 0 });
  const unsubscribeSlow = hub.subscribe({ send: () => {}, bufferedAmount: () => 64 * 1024 * 1024 }); // never drains
  for (const e of ['A', 'B', 'C']) hub.publish('vm-1', e);
  assert.deepEqual(seen, ['A', 'B', 'C']);
  assert.equal(got.length, 3, 'the fast subscriber got everything');
  assert.deepEqual(hub.stats, { published: 3, droppedSlow: 3, droppedReplayLimit: 0 });
  unsubscribeFast();
  unsubscribeSlow();
}));

test('events a replay skips beyond its limit are counted as dropped', withHub(async (hub) => {
  for (let i = 0; i < 10; i++) hub.publish('vm-1', 'E');
  const got: Buffer[] = [];
  const unsubscribe = hub.subscribe({ send: (m) => got.push(m), bufferedAmount: () => 0 }, { since: 0 });
  await new Promise((r) => setTimeout(r, 50));
  assert.equal(hub.stats.droppedReplayLimit, 6);
  assert.equal(got.length, 5, 'one EVENTS_DROPPED notice, then the newest 4');
  unsubscribe();
}, { replayLimit: 4 }));
