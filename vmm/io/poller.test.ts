// The main-thread poller on the host (no KVM): eventfds, pipes, many fds, removal during dispatch,
// the idle state (libuv not watching), close, promises settled from callbacks, and the wake-up
// latency from a worker thread.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Worker } from 'node:worker_threads';
import koffi from 'koffi';
import { closeFd } from '../kvm/sys.js';
import { EPOLLHUP, EPOLLIN } from './epoll.js';
import { EventFd } from './eventfd.js';
import { mainPoller, Poller } from './poller.js';

const libc = koffi.load('libc.so.6');
const pipe2Raw = libc.func('int pipe2(void *fds, int flags)') as (fds: Buffer, flags: number) => number;
const writeRaw = libc.func('long write(int fd, void *buf, size_t len)') as (fd: number, buf: Buffer, len: number) => number | bigint;
const readRaw = libc.func('long read(int fd, void *buf, size_t len)') as (fd: number, buf: Buffer, len: number) => number | bigint;
const O_NONBLOCK = 0o4000, O_CLOEXEC = 0o2000000;

function pipe(): [number, number] {
  const b = Buffer.alloc(8);
  assert.equal(pipe2Raw(b, O_CLOEXEC | O_NONBLOCK), 0);
  return [b.readInt32LE(0), b.readInt32LE(4)];
}

const until = async (cond: () => boolean, ms = 5000): Promise<void> => {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error('timed out');
    await new Promise((r) => setTimeout(r, 2));
  }
};

test('an eventfd write wakes the callback on the main thread; the counter reads back', async () => {
  const p = new Poller();
  const e = EventFd.create();
  const got: Array<[number, bigint | null]> = [];
  p.add(e.fd, EPOLLIN, (ev) => got.push([ev, e.read()]));
  assert.equal(p.watching, true);
  e.write(3);
  await until(() => got.length === 1);
  assert.deepEqual(got[0], [EPOLLIN, 3n]);
  assert.equal(e.read(), null, 'drained');
  e.write();
  await until(() => got.length === 2);
  p.remove(e.fd);
  e.close();
  await p.close();
  assert.throws(() => p.add(0, EPOLLIN, () => {}), /closed/);
});

test('pipes: data, then EPOLLHUP when the writer closes', async () => {
  const p = new Poller();
  const [r, w] = pipe();
  const seen: string[] = [];
  let hup = false;
  p.add(r, EPOLLIN, (ev) => {
    const b = Buffer.alloc(64);
    const n = Number(readRaw(r, b, 64));
    if (n > 0) seen.push(b.subarray(0, n).toString());
    if (ev & EPOLLHUP && n <= 0) {
      hup = true;
      p.remove(r);
    }
  });
  writeRaw(w, Buffer.from('hello'), 5);
  await until(() => seen.length === 1);
  assert.deepEqual(seen, ['hello']);
  closeFd(w);
  await until(() => hup);
  assert.equal(p.size, 0);
  closeFd(r);
  await p.close();
});

test('many fds: 300 eventfds (several waits of 64 events) each called once', async () => {
  const p = new Poller();
  const fds = Array.from({ length: 300 }, () => EventFd.create());
  const calls = new Map<number, number>();
  for (const e of fds) p.add(e.fd, EPOLLIN, () => { e.read(); calls.set(e.fd, (calls.get(e.fd) ?? 0) + 1); });
  for (const e of fds) e.write();
  await until(() => calls.size === 300);
  await p.sync();
  assert.ok([...calls.values()].every((n) => n === 1));
  for (const e of fds) { p.remove(e.fd); e.close(); }
  await p.close();
});

test('a callback removing another fd ready in the same wait: that one is not called', async () => {
  const p = new Poller();
  const a = EventFd.create();
  const b = EventFd.create();
  const called: string[] = [];
  p.add(a.fd, EPOLLIN, () => { called.push('a'); a.read(); p.remove(b.fd); });
  p.add(b.fd, EPOLLIN, () => { called.push('b'); b.read(); p.remove(a.fd); });
  // both become ready before the main thread gets to dispatch
  a.write();
  b.write();
  await until(() => called.length > 0);
  await p.sync();
  assert.equal(called.length, 1, called.join());
  assert.equal(p.size, 1);
  a.close(); b.close();
  await p.close();
});

test('a throwing callback does not stop the others nor the poller', async () => {
  const p = new Poller();
  const a = EventFd.create();
  const b = EventFd.create();
  let bCalls = 0;
  p.add(a.fd, EPOLLIN, () => { a.read(); throw new Error('boom'); });
  p.add(b.fd, EPOLLIN, () => { b.read(); bCalls++; });
  a.write(); b.write();
  await until(() => bCalls === 1);
  b.write();
  await until(() => bCalls === 2);
  p.remove(a.fd); p.remove(b.fd);
  a.close(); b.close();
  await p.close();
});

test('idle: libuv stops watching once the last fd is removed; add watches again; remove(fd, cb) checks the owner', async () => {
  const p = new Poller();
  const e = EventFd.create();
  const cb = (): void => { e.read(); };
  p.add(e.fd, EPOLLIN, cb);
  assert.equal(p.watching, true);
  assert.equal(p.remove(e.fd, () => {}), false, 'another callback: not removed');
  assert.equal(p.remove(e.fd, cb), true);
  assert.equal(p.watching, false);
  assert.equal(p.remove(e.fd), false);
  let n = 0;
  p.add(e.fd, EPOLLIN, () => { e.read(); n++; });
  e.write();
  await until(() => n === 1);
  p.remove(e.fd);
  await p.sync();
  assert.equal(p.watching, false);
  e.close();
  await p.close();
});

test('a removed fd gets no event, even when it was ready before remove()', async () => {
  const p = new Poller();
  const e = EventFd.create();
  let calls = 0;
  p.add(e.fd, EPOLLIN, () => { calls++; e.read(); });
  e.write(); // ready now; libuv may already have seen it
  p.remove(e.fd);
  await p.sync();
  await new Promise((r) => setTimeout(r, 20));
  assert.equal(calls, 0);
  e.close();
  await p.close();
});

test('promises and nextTicks from a callback settle at once (callbacks run inside a Node callback scope)', async () => {
  const p = new Poller();
  const e = EventFd.create();
  const order: string[] = [];
  let settled: () => void = () => {};
  const done = new Promise<void>((r) => { settled = r; });
  p.add(e.fd, EPOLLIN, () => {
    e.read();
    order.push('callback');
    process.nextTick(() => order.push('tick'));
    void Promise.resolve().then(() => { order.push('microtask'); settled(); });
  });
  // a timer far in the future is the only other thing in the loop: nothing else would drain them
  const guard = setTimeout(() => {}, 60_000);
  e.write();
  await done;
  clearTimeout(guard);
  assert.deepEqual(order, ['callback', 'tick', 'microtask']);
  p.remove(e.fd);
  e.close();
  await p.close();
});

test('close while watching resolves; close from a callback works', async () => {
  const p = new Poller();
  const e = EventFd.create();
  p.add(e.fd, EPOLLIN, () => {});
  await p.close();
  assert.equal(p.watching, false);
  e.close();

  const q = new Poller();
  const f = EventFd.create();
  let closing: Promise<void> | null = null;
  q.add(f.fd, EPOLLIN, () => { f.read(); closing = q.close(); });
  f.write();
  await until(() => closing !== null);
  await closing;
  assert.equal(q.isClosed, true);
  f.close();
});

test('modify applies at once', async () => {
  const p = new Poller();
  const [r, w] = pipe();
  let outs = 0;
  let ins = 0;
  p.add(w, 0, () => { outs++; p.modify(w, 0); });
  p.add(r, EPOLLIN, () => { ins++; readRaw(r, Buffer.alloc(8), 8); });
  await new Promise((res) => setTimeout(res, 30));
  assert.equal(outs, 0);
  p.modify(w, 0x004 /* EPOLLOUT */); // a pipe with room is writable: ready at once
  await until(() => outs === 1);
  p.remove(w); p.remove(r);
  closeFd(r); closeFd(w);
  await p.close();
  assert.equal(ins, 0);
});

test('a Poller off the main thread is refused (libuv\'s default loop is the main thread\'s)', async () => {
  const url = new URL('./poller.js', import.meta.url).href;
  const w = new Worker(`
    const { parentPort } = require('node:worker_threads');
    import(${JSON.stringify(url)}).then(({ Poller }) => {
      try { new Poller(); parentPort.postMessage('made'); } catch (e) { parentPort.postMessage(String(e.message)); }
    });`, { eval: true });
  const msg = await new Promise<string>((res, rej) => { w.once('message', res); w.once('error', rej); });
  await w.terminate();
  assert.match(msg, /main thread only/);
});

test('mainPoller() is one shared instance, replaced after close', async () => {
  const a = mainPoller();
  assert.equal(mainPoller(), a);
  await a.close();
  const b = mainPoller();
  assert.notEqual(b, a);
  await b.close();
});

test('wake-up latency: eventfd write in a worker -> callback on the main thread, 10k wakes', async (t) => {
  const N = 10_000;
  const p = new Poller();
  const e = EventFd.create();
  const ctrl = new Int32Array(new SharedArrayBuffer(8));
  const stamp = new BigInt64Array(new SharedArrayBuffer(8));
  const lat = new Float64Array(N);
  let k = 0;
  p.add(e.fd, EPOLLIN, () => {
    const now = process.hrtime.bigint();
    e.read();
    if (k < N) lat[k] = Number(now - Atomics.load(stamp, 0)) / 1000;
    k++;
    Atomics.store(ctrl, 0, k);
    Atomics.notify(ctrl, 0);
  });
  const url = new URL('./eventfd.js', import.meta.url).href;
  const w = new Worker(`
    const { workerData } = require('node:worker_threads');
    (async () => {
      const { EventFd } = await import(${JSON.stringify(url)});
      const e = EventFd.borrow(workerData.fd);
      const ctrl = new Int32Array(workerData.ctrl);
      const stamp = new BigInt64Array(workerData.stamp);
      const nap = new Int32Array(new SharedArrayBuffer(4));
      for (let i = 0; i < workerData.n; i++) {
        Atomics.wait(nap, 0, 0, 0.1); // let the main thread block in libuv's epoll again
        Atomics.store(stamp, 0, process.hrtime.bigint());
        e.write();
        while (Atomics.load(ctrl, 0) === i) Atomics.wait(ctrl, 0, i, 1000);
      }
    })();`, { eval: true, workerData: { fd: e.fd, ctrl: ctrl.buffer, stamp: stamp.buffer, n: N } });
  await new Promise<void>((res, rej) => { w.on('exit', () => res()); w.on('error', rej); });
  assert.equal(k, N);
  const sorted = Array.from(lat).sort((x, y) => x - y);
  const q = (f: number): number => sorted[Math.min(N - 1, Math.floor(f * N))] as number;
  t.diagnostic(`poller wake-up latency over ${N}: median ${q(0.5).toFixed(1)} us, p99 ${q(0.99).toFixed(1)} us, max ${q(1).toFixed(1)} us`);
  assert.ok(q(0.5) < 5000, `median ${q(0.5)} us`);
  p.remove(e.fd);
  e.close();
  await p.close();
});
