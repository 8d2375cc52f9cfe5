// virtio-balloon against the driver-side stand-in: target / actual, inflate releasing pages
// (zeroed test memory; a real mapping whose RSS drops), deflate, hostile frame numbers, stats,
// and the QMP commands over a real socket.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, mkdtempSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { GuestAddress as GA, GuestMemory } from '../../../memory/guest-memory.js';
import { F_VERSION_1, INT_CONFIG_CHANGE, INT_USED_RING, STATUS } from '../../../virtio/constants.js';
import { TestDriver } from '../../../virtio/testing/driver.js';
import { QmpServer } from '../../../qmp/server.js';
import { QmpClient } from '../../../testing/clients.js';
import { register as registerBalloon } from '../../../qmp/commands/balloon.js';
import { BALLOON_F, VirtioBalloon, type BalloonStats } from './device.js';

const MiB = 1 << 20;
const STATS_VQ = 1n << BigInt(BALLOON_F.STATS_VQ);
const OOM = 1n << BigInt(BALLOON_F.DEFLATE_ON_OOM);

function pfns(list: number[]): Uint8Array {
  const b = new Uint8Array(4 * list.length);
  const v = new DataView(b.buffer);
  list.forEach((p, i) => v.setUint32(4 * i, p >>> 0, true));
  return b;
}

function setup(memSize = 16 * MiB, deflateOnOom = false, mem?: GuestMemory): { d: TestDriver; b: VirtioBalloon } {
  const m = mem ?? GuestMemory.fromBuffers(memSize);
  const b = new VirtioBalloon(m, { deflateOnOom });
  const d = new TestDriver(b, m);
  return { d, b };
}

test('features, config: target in pages, actual from the driver, config interrupt', () => {
  const { d, b } = setup(16 * MiB, true);
  assert.equal(d.deviceFeatures() & (STATS_VQ | OOM), STATS_VQ | OOM);
  assert.equal(setup(16 * MiB, false).d.deviceFeatures() & OOM, 0n);
  b.setTarget(12 * MiB); // before the driver: no interrupt, the value waits in config
  assert.equal(d.init(F_VERSION_1 | STATS_VQ) & STATUS.DRIVER_OK, STATUS.DRIVER_OK);
  assert.equal(new DataView(d.config(0, 4).buffer).getUint32(0, true), 1024);
  b.setTarget(8 * MiB);
  assert.equal(new DataView(d.config(0, 4).buffer).getUint32(0, true), 2048);
  assert.equal(d.ack() & INT_CONFIG_CHANGE, INT_CONFIG_CHANGE);
  assert.equal(b.targetBytes, 8 * MiB);
  assert.throws(() => b.setTarget(0), /outside 1-16777216/);
  assert.throws(() => b.setTarget(16 * MiB + 1), /outside/);

  const changes: number[] = [];
  b.onActualChange = (a) => changes.push(a);
  assert.equal(b.actualBytes, 16 * MiB);
  const w = new Uint8Array(4);
  new DataView(w.buffer).setUint32(0, 256, true);
  d.transport.write(0x100 + 4, w); // the driver writes actual
  assert.equal(b.actualBytes, 15 * MiB);
  assert.equal(new DataView(d.config(4, 4).buffer).getUint32(0, true), 256);
  d.transport.write(0x100 + 0, w); // num_pages is not the driver's
  assert.equal(b.targetBytes, 8 * MiB);
  d.transport.write(0x100 + 4, w); // same value: no event
  assert.deepEqual(changes, [15 * MiB]);
  // driver reset: the balloon is empty again, the target stays
  d.setReg(0x70, 0);
  assert.equal(b.actualBytes, 16 * MiB);
  assert.deepEqual(changes, [15 * MiB, 16 * MiB]);
  assert.equal(b.targetBytes, 8 * MiB);
});

test('inflate releases pages (zeroed), deflate takes them back, hostile frame numbers are skipped', () => {
  const { d, b } = setup(16 * MiB);
  d.init(F_VERSION_1);
  const page = (pfn: number): Uint8Array => d.mem.read(GA(pfn * 4096), 4096);
  for (const p of [2048, 2049, 2050, 3000]) d.mem.fill(GA(p * 4096), 4096, 0xaa);
  // 2048-2050 are a run (one release), 3000 alone, 2049 twice (counted once), then junk
  const bad = [16 * MiB / 4096, 0xffff_ffff, 0xd0000];
  d.submit(0, [{ data: pfns([2048, 2049, 2050, 3000, 2049, ...bad]) }]);
  assert.deepEqual(d.takeUsed(0).map((u) => u.len), [0]);
  assert.equal(d.ack() & INT_USED_RING, INT_USED_RING);
  for (const p of [2048, 2049, 2050, 3000]) assert.ok(page(p).every((x) => x === 0), `page ${p} released`);
  assert.equal(b.metrics.releasedPages, 4);
  assert.equal(b.metrics.invalidPfns, 3);
  assert.equal(b.releasedBytes, 4 * 4096);
  // a frame number split across two buffers
  const two = pfns([4000]);
  d.mem.fill(GA(4000 * 4096), 4096, 0x55);
  d.submit(0, [{ data: two.subarray(0, 3) }, { data: two.subarray(3) }]);
  assert.ok(page(4000).every((x) => x === 0));
  assert.equal(b.releasedBytes, 5 * 4096);
  // deflate: nothing to do on the host but the bookkeeping; the page may be released again later
  d.submit(1, [{ data: pfns([2049, 3000, 0xffff_ffff]) }]);
  assert.equal(d.takeUsed(1).length, 1);
  assert.equal(b.releasedBytes, 3 * 4096);
  assert.equal(b.metrics.deflateRequests, 1);
  d.mem.fill(GA(3000 * 4096), 4096, 0x11);
  d.submit(0, [{ data: pfns([3000]) }]);
  assert.ok(page(3000).every((x) => x === 0));
  assert.equal(b.metrics.releasedPages, 6);
  // a broken chain is answered and counted, the queue goes on
  const ring = d.rings[0] as { desc: number };
  d.writeDesc(ring.desc, 7, 0xffff_0000, 16, 0, 0);
  d.publish(0, 7);
  assert.equal(b.metrics.rejected, 1);
  assert.equal(d.takeUsed(0).length, 3);
});

test('stats: the driver’s buffer is parsed and held; requestStats gives it back', () => {
  const { d, b } = setup();
  d.init(F_VERSION_1 | STATS_VQ);
  assert.equal(b.stats, null);
  assert.equal(b.requestStats(), false);
  const entry = (tag: number, v: bigint): Uint8Array => {
    const e = new Uint8Array(10);
    const dv = new DataView(e.buffer);
    dv.setUint16(0, tag, true);
    dv.setBigUint64(2, v, true);
    return e;
  };
  const buf = new Uint8Array([...entry(4, 123n * 4096n), ...entry(5, 16n * 1048576n), ...entry(999, 1n), ...entry(0, 7n)]);
  d.submit(2, [{ data: buf }]);
  assert.deepEqual(d.takeUsed(2), [], 'held until the device wants fresh stats');
  assert.deepEqual((b.stats as BalloonStats | null)?.values, { 'stat-free-memory': 123 * 4096, 'stat-total-memory': 16 * MiB, 'stat-swap-in': 7 });
  d.ack();
  assert.equal(b.requestStats(), true);
  assert.equal(d.takeUsed(2).length, 1);
  assert.equal(d.ack() & INT_USED_RING, INT_USED_RING);
  assert.equal(b.requestStats(), false, 'nothing held until the driver posts again');
});

function rssKiB(field: string): number {
  const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(readFileSync('/proc/self/status', 'utf8'));
  return Number(m?.[1] ?? NaN);
}

for (const shared of [false, true]) {
  test(`a real ${shared ? 'shared (MADV_REMOVE)' : 'private (MADV_DONTNEED)'} mapping: inflating 48 MiB lowers RSS by about that much`, () => {
    const mem = GuestMemory.create({ size: 64 * MiB, shared });
    try {
      const { d, b } = setup(0, false, mem);
      d.init(F_VERSION_1);
      mem.fill(GA(8 * MiB), 56 * MiB, 0x5a);
      const field = shared ? 'RssShmem' : 'RssAnon';
      const before = rssKiB(field);
      // 48 MiB from 8 MiB, as Linux sends them: 256 frame numbers per request, in any order
      for (let start = 2048; start < 2048 + 12288; start += 256) {
        const list = Array.from({ length: 256 }, (_, i) => start + 255 - i);
        d.submit(0, [{ data: pfns(list) }]);
        d.takeUsed(0);
        d.resetData();
      }
      const after = rssKiB(field);
      assert.equal(b.metrics.releasedPages, 12288);
      assert.equal(b.metrics.discardErrors, 0);
      assert.ok(before - after >= 40 * 1024, `${field} ${before} kB → ${after} kB`);
      assert.equal(mem.readU8(GA(8 * MiB)), 0, 'a released page reads back as zero');
      assert.equal(mem.readU8(GA(60 * MiB)), 0x5a, 'pages outside the balloon keep their content');
    } finally {
      mem.close();
    }
  });
}

test('QMP balloon / query-balloon / BALLOON_CHANGE (throttled)', async () => {
  const path = join(mkdtempSync(join(tmpdir(), 'qmp-balloon-')), 'qmp.sock');
  const qmp = new QmpServer({ path });
  const { d, b } = setup(16 * MiB);
  registerBalloon(qmp, { balloon: b, eventIntervalMs: 200 });
  await qmp.listen();
  const c = await QmpClient.connect(path);
  const none = new QmpServer({ path: path + '2' });
  registerBalloon(none, { balloon: undefined });
  await none.listen();
  const c2 = await QmpClient.connect(path + '2');
  try {
    assert.deepEqual(await c.execute('query-balloon'), { actual: 16 * MiB, target: 16 * MiB });
    for (const [v, re] of [[0, /range 1-16777216/], [16 * MiB + 1, /range 1-16777216/], ['1G', /integer/], [undefined, /integer/]] as const) {
      const r = await c.call('balloon', v === undefined ? {} : { value: v });
      assert.match(JSON.stringify(r.error), re);
    }
    d.init(F_VERSION_1 | STATS_VQ);
    d.ack();
    assert.deepEqual(await c.execute('balloon', { value: 8 * MiB }), {});
    assert.equal(d.ack() & INT_CONFIG_CHANGE, INT_CONFIG_CHANGE);
    // the driver reports progress in steps: the first change goes out, the rest are coalesced
    const w = new Uint8Array(4);
    for (const pages of [256, 512, 1024, 2048]) {
      new DataView(w.buffer).setUint32(0, pages, true);
      d.transport.write(0x104, w);
    }
    assert.deepEqual((await c.event('BALLOON_CHANGE')).data, { actual: 15 * MiB });
    assert.deepEqual((await c.event('BALLOON_CHANGE', 2000)).data, { actual: 8 * MiB });
    assert.deepEqual(await c.execute('query-balloon'), { actual: 8 * MiB, target: 8 * MiB });
    // stats appear once the driver posted them
    const e = new Uint8Array(10);
    new DataView(e.buffer).setUint16(0, 4, true);
    new DataView(e.buffer).setBigUint64(2, 4096n, true);
    d.submit(2, [{ data: e }]);
    const q = await c.execute('query-balloon') as Record<string, unknown>;
    assert.deepEqual(q.stats, { 'stat-free-memory': 4096 });
    assert.equal(typeof q['stats-last-update'], 'number');
    assert.equal(d.takeUsed(2).length, 1, 'query-balloon asked for fresh stats');
    assert.deepEqual((await c2.call('query-balloon')).error, { class: 'DeviceNotActive', desc: 'No balloon device has been activated' });
    assert.deepEqual((await c2.call('balloon', { value: 1 })).error, { class: 'DeviceNotActive', desc: 'No balloon device has been activated' });
  } finally {
    c.close();
    c2.close();
    await qmp.close();
    await none.close();
  }
});
