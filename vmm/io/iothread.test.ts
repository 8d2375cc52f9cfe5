// Iothreads on the host (no KVM): a worker blocked in epoll_pwait wakes on an eventfd written by the
// main thread, handler modules load (and fail to load) as documented, a throwing callback is
// counted without ending the loop, stop() ends the thread cleanly; wake-up latency main -> iothread.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { EventFd } from './eventfd.js';
import { Worker } from 'node:worker_threads';
import { IoLoop, IoThread, IoThreadLease, leaseHeld } from './iothread.js';
import { EPOLLIN } from './epoll.js';

const HANDLER = new URL('../testing/io-handler.js', import.meta.url);

const until = async (cond: () => boolean, ms = 5000): Promise<void> => {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error('timed out');
    await new Promise((r) => setTimeout(r, 2));
  }
};

test('an iothread wakes on an eventfd written by the main thread, and stops cleanly', async () => {
  const t = await IoThread.start('test0');
  assert.ok(t.tid > 0 && t.tid !== process.pid, `tid ${t.tid}`);
  const e = EventFd.create();
  const msgs: Array<Record<string, unknown>> = [];
  t.on('message', (m: Record<string, unknown>) => msgs.push(m));
  assert.deepEqual(await t.load(HANDLER, { kind: 'echo', fd: e.fd }), { registered: e.fd, thread: 'test0' });
  e.write(2);
  await until(() => msgs.length === 1);
  assert.deepEqual(msgs[0], { fd: e.fd, count: '2' });
  e.write();
  await until(() => msgs.length === 2);
  // a second handler in the same thread
  const f = EventFd.create();
  await t.load(HANDLER, { kind: 'echo', fd: f.fd });
  f.write(5);
  await until(() => msgs.some((m) => m.fd === f.fd));
  await t.stop();
  assert.ok(msgs.some((m) => m.stopped === e.fd), 'onStop ran');
  assert.equal(t.errors, 0);
  await assert.rejects(t.load(HANDLER, { kind: 'echo', fd: e.fd }), /stopped/);
  e.close();
  f.close();
});

test('load failures reject; a throwing callback is counted and the loop goes on', async () => {
  const t = await IoThread.start('test1');
  await assert.rejects(t.load(new URL('./eventfd.js', import.meta.url), {}), /does not export setup/);
  await assert.rejects(t.load('/nonexistent/module.js', {}), /Cannot find module|ERR_MODULE_NOT_FOUND/);
  const bad = EventFd.create();
  const good = EventFd.create();
  await t.load(HANDLER, { kind: 'throw', fd: bad.fd });
  const msgs: unknown[] = [];
  t.on('message', (m) => msgs.push(m));
  await t.load(HANDLER, { kind: 'echo', fd: good.fd });
  bad.write();
  await until(() => t.errors === 1);
  good.write();
  await until(() => msgs.length === 1);
  await t.stop();
  bad.close();
  good.close();
});

test('IoLoop on this thread: run() until stop(), and a timeout', () => {
  const loop = new IoLoop();
  const e = EventFd.create();
  let n = 0;
  loop.add(e.fd, EPOLLIN, () => { e.read(); if (++n === 1) loop.stop(); });
  e.write();
  assert.equal(loop.run(), true);
  assert.equal(n, 1);
  assert.equal(loop.run(10), false, 'nothing ready: timed out');
  loop.remove(e.fd);
  loop.close();
  e.close();
});

test('wake-up latency: eventfd write on the main thread -> iothread callback, 10k wakes', async (t) => {
  const N = 10_000;
  const io = await IoThread.start('lat');
  const e = EventFd.create();
  const stamp = new BigInt64Array(new SharedArrayBuffer(8));
  const ctrl = new Int32Array(new SharedArrayBuffer(4));
  await io.load(HANDLER, { kind: 'stamp', fd: e.fd, stamp, ctrl });
  const lat = new Float64Array(N);
  const nap = new Int32Array(new SharedArrayBuffer(4));
  for (let i = 0; i < N; i++) {
    Atomics.wait(nap, 0, 0, 0.1); // the iothread is back in epoll_pwait
    const t0 = process.hrtime.bigint();
    e.write();
    while (Atomics.load(ctrl, 0) === i) Atomics.wait(ctrl, 0, i, 1000);
    lat[i] = Number(Atomics.load(stamp, 0) - t0) / 1000;
  }
  const sorted = Array.from(lat).sort((x, y) => x - y);
  const q = (f: number): number => sorted[Math.min(N - 1, Math.floor(f * N))] as number;
  t.diagnostic(`iothread wake-up latency over ${N}: median ${q(0.5).toFixed(1)} us, p99 ${q(0.99).toFixed(1)} us, max ${q(1).toFixed(1)} us`);
  assert.ok(q(0.5) < 5000);
  await io.stop();
  e.close();
});

/** A thread that acknowledges stop requests as `plan` says: [seq, delayMs] in order. */
function acknowledger(words: Int32Array, plan: Array<[number, number]>): Worker {
  const code = `
    const { workerData } = require('node:worker_threads');
    const { words, plan } = workerData;
    const sleep = (ms) => Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
    for (const [seq, ms] of plan) { sleep(ms); Atomics.store(words, 0, seq); Atomics.notify(words, 0); }`;
  return new Worker(code, { eval: true, workerData: { words, plan } });
}

test('IoThreadLease: a revoked generation is no longer held; a late acknowledgement does not end a later wait', async () => {
  const lease = new IoThreadLease();
  const gen = lease.grant();
  assert.ok(leaseHeld(lease.words, gen));
  // nothing to wait for when the request cannot be posted (the iothread has stopped)
  assert.equal(lease.revoke(() => false), true);
  assert.ok(!leaseHeld(lease.words, gen), 'revoke moves the generation on at once');
  // request 2 is never acknowledged in time
  assert.equal(lease.revoke(() => true, 100), false);
  // request 3: the iothread acknowledges 2 late (after 50 ms), then 3 (after 300 ms more)
  const w = acknowledger(lease.words, [[2, 50], [3, 300]]);
  try {
    const ok = lease.revoke((seq) => {
      assert.equal(seq, 3);
      return true;
    }, 5000);
    assert.equal(ok, true);
    assert.equal(Atomics.load(lease.words, 0), 3, 'the wait ended at the acknowledgement of its own request, not at the late one');
  } finally {
    await w.terminate();
  }
});
