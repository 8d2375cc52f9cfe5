// virtio-blk against the driver stand-in, on real (sparse) files.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { fstatSync, mkdtempSync, readFileSync, rmSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { GuestAddress as GA } from '../../../memory/guest-memory.js';
import { F_VERSION_1, INT_CONFIG_CHANGE, STATUS } from '../../../virtio/constants.js';
import { REG } from '../../../virtio/mmio.js';
import { TestDriver, type OutBuffer } from '../../../virtio/testing/driver.js';
import { BLK_F, BlkBackend, VirtioBlk, type BlkBackendOptions } from './device.js';
import { BLK_STATUS, REQ } from './request.js';

const dir = mkdtempSync(join(tmpdir(), 'capsule-blk-'));
test.after(() => rmSync(dir, { recursive: true, force: true }));
let n = 0;

/**
 * A disk on a new file. 'async' tests of the threadpool itself turn off the queue-depth-1 shortcut
 * (inlineAloneBytes 0), or a request submitted alone would run on the spot.
 */
function disk(bytes: number, opts: Partial<BlkBackendOptions> = {}, fill?: (b: Buffer) => void, io: 'sync' | 'async' = 'sync', inlineAloneBytes = 0): { file: string; blk: VirtioBlk; d: TestDriver } {
  const file = join(dir, `d${n++}.img`);
  const b = Buffer.alloc(bytes);
  fill?.(b);
  writeFileSync(file, b);
  const blk = new VirtioBlk(new BlkBackend({ file, readOnly: false, direct: false, noFlush: false, ...opts }), { io, inlineAloneBytes });
  const d = new TestDriver(blk);
  d.init(F_VERSION_1 | blk.features);
  return { file, blk, d };
}

function header(type: number, sector: number): Uint8Array {
  const h = new Uint8Array(16);
  const v = new DataView(h.buffer);
  v.setUint32(0, type, true);
  v.setBigUint64(8, BigInt(sector), true);
  return h;
}

/** Submits a request; returns [status, used len, data buffer address]. */
function request(d: TestDriver, type: number, sector: number, opts: { out?: Uint8Array; inLen?: number; segments?: Uint8Array } = {}): { status: number; len: number; at: number } {
  const bufs: OutBuffer[] = [{ data: header(type, sector) }];
  if (opts.out) bufs.push({ data: opts.out });
  if (opts.segments) bufs.push({ data: opts.segments });
  if (opts.inLen) bufs.push({ writable: opts.inLen });
  bufs.push({ writable: 1 });
  const r = d.submit(0, bufs);
  const used = d.takeUsed(0);
  assert.equal(used.length, 1);
  const statusAt = r.addrs[r.addrs.length - 1] as number;
  return { status: d.mem.readU8(GA(statusAt)), len: (used[0] as { len: number }).len, at: r.addrs[1] as number };
}

test('config: capacity in sectors, read-only flag, features', () => {
  const { d, blk } = disk(1 << 20);
  assert.equal(new DataView(d.config(0, 8).buffer).getBigUint64(0, true), 2048n);
  assert.equal(blk.features & (1n << BigInt(BLK_F.RO)), 0n);
  const ro = disk(4096, { readOnly: true });
  assert.notEqual(ro.blk.features & (1n << BigInt(BLK_F.RO)), 0n);
  assert.equal(ro.blk.features & (1n << BigInt(BLK_F.DISCARD)), 0n);
});

test('read returns the file, write reaches the file, flush succeeds', () => {
  const { d, file } = disk(64 * 1024, {}, (b) => { for (let i = 0; i < b.length; i++) b[i] = (i * 7) & 0xff; });
  const r = request(d, REQ.IN, 2, { inLen: 4096 });
  assert.equal(r.status, BLK_STATUS.OK);
  assert.equal(r.len, 4097);
  const expect = readFileSync(file).subarray(1024, 1024 + 4096);
  assert.deepEqual(Buffer.from(d.mem.read(GA(r.at), 4096)), expect);
  const pattern = Buffer.alloc(1024, 0x5a);
  assert.equal(request(d, REQ.OUT, 10, { out: pattern }).status, BLK_STATUS.OK);
  assert.deepEqual(readFileSync(file).subarray(5120, 6144), pattern);
  assert.equal(request(d, REQ.FLUSH, 0).status, BLK_STATUS.OK);
});

test('out of range, partial sectors and read-only writes are IOERR; unknown types UNSUPP', () => {
  const { d } = disk(8192);
  assert.equal(request(d, REQ.IN, 16, { inLen: 512 }).status, BLK_STATUS.IOERR);
  assert.equal(request(d, REQ.IN, 15, { inLen: 1024 }).status, BLK_STATUS.IOERR);
  assert.equal(request(d, REQ.IN, 0, { inLen: 100 }).status, BLK_STATUS.IOERR);
  assert.equal(request(d, REQ.IN, 2 ** 52, { inLen: 512 }).status, BLK_STATUS.IOERR);
  assert.equal(request(d, 99, 0).status, BLK_STATUS.UNSUPP);
  const ro = disk(8192, { readOnly: true });
  assert.equal(request(ro.d, REQ.OUT, 0, { out: new Uint8Array(512) }).status, BLK_STATUS.IOERR);
  assert.equal(ro.blk.metrics.writes, 0);
});

test('malformed requests: short header, no status byte, wrong directions', () => {
  const { d, blk } = disk(8192);
  // header of 8 bytes
  const r1 = d.submit(0, [{ data: new Uint8Array(8) }, { writable: 1 }]);
  const u1 = d.takeUsed(0);
  assert.deepEqual(u1, [{ id: r1.head, len: 1 }]);
  assert.equal(d.mem.readU8(GA(r1.addrs[1] as number)), BLK_STATUS.IOERR);
  // no writable buffer at all
  d.submit(0, [{ data: header(REQ.IN, 0) }]);
  assert.equal(d.takeUsed(0)[0]?.len, 0);
  // data to write placed in a writable buffer
  const r3 = d.submit(0, [{ data: header(REQ.OUT, 0) }, { writable: 512 }, { writable: 1 }]);
  d.takeUsed(0);
  assert.equal(d.mem.readU8(GA(r3.addrs[2] as number)), BLK_STATUS.IOERR);
  assert.equal(blk.metrics.rejected, 3);
});

test('get-id returns the serial', () => {
  const { d } = disk(4096, { serial: 'capsule-serial-1' });
  const r = request(d, REQ.GET_ID, 0, { inLen: 20 });
  assert.equal(r.status, BLK_STATUS.OK);
  assert.equal(Buffer.from(d.mem.read(GA(r.at), 16)).toString(), 'capsule-serial-1');
  assert.equal(d.mem.readU8(GA(r.at + 16)), 0);
});

test('discard punches holes in the sparse file; write-zeroes zeroes', () => {
  const size = 4 << 20;
  const { d, file } = disk(size, {}, (b) => b.fill(0xee));
  const before = statSync(file).blocks;
  const seg = new Uint8Array(16);
  const v = new DataView(seg.buffer);
  v.setBigUint64(0, 0n, true);
  v.setUint32(8, 4096, true); // 2 MiB
  assert.equal(request(d, REQ.DISCARD, 0, { segments: seg }).status, BLK_STATUS.OK);
  assert.ok(statSync(file).blocks < before, 'blocks released');
  assert.equal(readFileSync(file)[0], 0);
  v.setBigUint64(0, 4096n, true);
  v.setUint32(8, 8, true);
  assert.equal(request(d, REQ.WRITE_ZEROES, 0, { segments: seg }).status, BLK_STATUS.OK);
  const after = readFileSync(file);
  assert.equal(after[4096 * 512], 0);
  assert.equal(after[4096 * 512 + 8 * 512], 0xee);
  assert.equal(after.length, size);
  // beyond the end
  v.setBigUint64(0, 8192n, true);
  assert.equal(request(d, REQ.DISCARD, 0, { segments: seg }).status, BLK_STATUS.IOERR);
});

test('O_DIRECT reads and writes, through the bounce buffer when unaligned', (t) => {
  let r;
  try {
    r = disk(64 * 1024, { direct: true }, (b) => b.fill(0x11));
  } catch (e) {
    // tmpfs has no O_DIRECT
    t.skip(`O_DIRECT not supported here: ${(e as Error).message}`);
    return;
  }
  const { d, file } = r;
  const out = Buffer.alloc(1536, 0x77);
  assert.equal(request(d, REQ.OUT, 4, { out }).status, BLK_STATUS.OK);
  assert.deepEqual(readFileSync(file).subarray(2048, 2048 + 1536), out);
  const rd = request(d, REQ.IN, 4, { inLen: 1536 });
  assert.equal(rd.status, BLK_STATUS.OK);
  assert.deepEqual(Buffer.from(d.mem.read(GA(rd.at), 1536)), out);
});

test('iops limit: requests beyond the budget wait, then complete', async () => {
  // a clock the test moves, so that a loaded machine cannot change the arithmetic
  let t = 0;
  const file = join(dir, `d${n++}.img`);
  writeFileSync(file, Buffer.alloc(64 * 1024));
  const blk = new VirtioBlk(new BlkBackend({ file, readOnly: false, direct: false, noFlush: false, iops: 50 }), { now: () => t });
  const d = new TestDriver(blk);
  d.init(F_VERSION_1 | blk.features);
  for (let i = 0; i < 80; i++) d.submit(0, [{ data: header(REQ.IN, 0) }, { writable: 512 }, { writable: 1 }], { notify: i === 79 });
  assert.equal(d.takeUsed(0).length, 50, "one second's burst first");
  assert.ok(blk.metrics.throttled >= 1);
  t = 400; // 20 more operations' worth of budget
  await new Promise((r) => setTimeout(r, 1000)); // the device's retry timer (real time)
  assert.equal(d.takeUsed(0).length, 20, 'the budget refilled at 50/s');
});

test('hot-replace: an empty slot has capacity 0, attach and detach raise config changes', () => {
  const file = join(dir, 'hot.img');
  writeFileSync(file, Buffer.alloc(0));
  truncateSync(file, 1 << 20);
  const blk = new VirtioBlk(null, { replaceable: true });
  const d = new TestDriver(blk);
  d.init(F_VERSION_1 | blk.features);
  assert.equal(new DataView(d.config(0, 8).buffer).getBigUint64(0, true), 0n);
  assert.equal(request(d, REQ.IN, 0, { inLen: 512 }).status, BLK_STATUS.IOERR);
  d.ack();
  blk.attach(new BlkBackend({ file, readOnly: false, direct: false, noFlush: false }));
  assert.equal(d.ack() & INT_CONFIG_CHANGE, INT_CONFIG_CHANGE);
  assert.equal(new DataView(d.config(0, 8).buffer).getBigUint64(0, true), 2048n);
  assert.equal(request(d, REQ.OUT, 0, { out: Buffer.alloc(512, 1) }).status, BLK_STATUS.OK);
  assert.equal(blk.detach(), file);
  assert.equal(d.ack() & INT_CONFIG_CHANGE, INT_CONFIG_CHANGE);
  assert.equal(request(d, REQ.IN, 0, { inLen: 512 }).status, BLK_STATUS.IOERR);
  assert.equal(readFileSync(file)[0], 1);
});

// ---- the threadpool engine (io: 'async', the main thread's) ----

const settle = async (blk: VirtioBlk): Promise<void> => {
  await blk.quiesce();
  await new Promise((r) => setImmediate(r)); // the interrupt queued for the completions' turn
};
const statusOf = (d: TestDriver, r: { addrs: number[] }): number => d.mem.readU8(GA(r.addrs.at(-1) as number));

test('async: 32 writes at once: four at a time on the threadpool, the rest from the ring as they complete; all reach the file', async () => {
  const { d, blk, file } = disk(1 << 20, {}, undefined, 'async');
  const reqs = Array.from({ length: 32 }, (_, i) => d.submit(0, [{ data: header(REQ.OUT, i * 64) }, { data: Buffer.alloc(32 * 1024, i + 1) }, { writable: 1 }], { notify: i === 31 }));
  assert.equal(blk.pendingRequests(), 4, 'at most four on the threadpool; the rest wait in the ring');
  assert.equal(d.takeUsed(0).length, 0, 'nothing completes before the threadpool does');
  assert.match(blk.snapshotBlocker() ?? '', /4 request\(s\) in flight/);
  await blk.quiesce();
  // no turn of the event loop in between (as for migrate): the interrupt is already raised
  assert.ok(d.irqEdges >= 1, 'the last completion raised the interrupt before quiesce() resolved');
  const used = d.takeUsed(0);
  assert.equal(used.length, 32);
  assert.deepEqual(new Set(used.map((u) => u.id)), new Set(reqs.map((r) => r.head)));
  for (const r of reqs) assert.equal(statusOf(d, r), BLK_STATUS.OK);
  assert.ok(d.irqEdges >= 1 && d.irqEdges <= 32, `interrupts: ${d.irqEdges}`);
  const bytes = readFileSync(file);
  for (let i = 0; i < 32; i++) assert.ok(bytes.subarray(i * 32768, (i + 1) * 32768).every((x) => x === i + 1), `write ${i}`);
  assert.equal(blk.snapshotBlocker(), null);
  assert.equal(blk.metrics.writes, 32);
  assert.equal(blk.metrics.writeBytes, 32 * 32768);
});

test('async: reads return the file, a flush succeeds, read-only and out-of-range requests fail as in sync mode', async () => {
  const { d, blk, file } = disk(64 * 1024, {}, (b) => { for (let i = 0; i < b.length; i++) b[i] = (i * 13) & 0xff; }, 'async');
  const rd = d.submit(0, [{ data: header(REQ.IN, 3) }, { writable: 2048 }, { writable: 1 }]);
  const fl = d.submit(0, [{ data: header(REQ.FLUSH, 0) }, { writable: 1 }]);
  const bad = d.submit(0, [{ data: header(REQ.IN, 127) }, { writable: 1024 }, { writable: 1 }]);
  await settle(blk);
  const used = new Map(d.takeUsed(0).map((u) => [u.id, u.len]));
  assert.equal(used.get(rd.head), 2049);
  assert.equal(statusOf(d, rd), BLK_STATUS.OK);
  assert.deepEqual(Buffer.from(d.mem.read(GA(rd.addrs[1] as number), 2048)), readFileSync(file).subarray(1536, 3584));
  assert.equal(statusOf(d, fl), BLK_STATUS.OK);
  assert.equal(statusOf(d, bad), BLK_STATUS.IOERR);
  assert.equal(blk.metrics.flushes, 1);
  const ro = disk(8192, { readOnly: true }, undefined, 'async');
  const w = ro.d.submit(0, [{ data: header(REQ.OUT, 0) }, { data: new Uint8Array(512) }, { writable: 1 }]);
  await settle(ro.blk);
  assert.equal(statusOf(ro.d, w), BLK_STATUS.IOERR);
});

for (const io of ['sync', 'async'] as const) {
  test(`${io}: a read past the end of a file that shrank under the disk reads zeros, not what the buffer held`, async () => {
    const { d, blk, file } = disk(64 * 1024, {}, (b) => b.fill(7), io);
    truncateSync(file, 4096);
    const r = d.submit(0, [{ data: header(REQ.IN, 4) }, { writable: 4096 }, { writable: 1 }], { notify: false });
    d.mem.write(GA(r.addrs[1] as number), Buffer.alloc(4096, 0xee)); // what the page held before
    d.setReg(REG.QUEUE_NOTIFY, 0);
    await settle(blk);
    assert.equal(statusOf(d, r), BLK_STATUS.OK);
    const got = Buffer.from(d.mem.read(GA(r.addrs[1] as number), 4096));
    assert.ok(got.subarray(0, 2048).every((x) => x === 7), 'the part still in the file');
    assert.ok(got.subarray(2048).every((x) => x === 0), 'the part past its end');
  });
}

test('async: a driver reset while requests run leaves their completions out of the rings', async () => {
  const { d, blk } = disk(1 << 20, {}, undefined, 'async');
  for (let i = 0; i < 8; i++) d.submit(0, [{ data: header(REQ.OUT, i * 8) }, { data: Buffer.alloc(4096, 1) }, { writable: 1 }]);
  assert.equal(blk.pendingRequests(), 4);
  const usedIdxAt = (d.rings[0] as { used: number }).used + 2;
  d.setReg(REG.STATUS, 0);
  await settle(blk);
  assert.equal(d.mem.readU16(GA(usedIdxAt)), 0, 'no used entry was written after the reset');
  assert.equal(blk.pendingRequests(), 0);
});

test('async: a detached file stays open until its requests complete, then closes; they still complete', async () => {
  const { d, blk } = disk(1 << 20, {}, undefined, 'async');
  const fd = (blk as unknown as { backend: BlkBackend }).backend.fd;
  const reqs = Array.from({ length: 4 }, (_, i) => d.submit(0, [{ data: header(REQ.OUT, i * 8) }, { data: Buffer.alloc(4096, 2) }, { writable: 1 }]));
  const { drained } = blk.detachDrained();
  assert.ok(fstatSync(fd).isFile(), 'open while requests use it');
  await drained;
  assert.throws(() => fstatSync(fd), /EBADF/, 'closed once they completed');
  await settle(blk);
  assert.equal(d.takeUsed(0).length, 4);
  for (const r of reqs) assert.equal(statusOf(d, r), BLK_STATUS.OK);
});

test('async: a request larger than one threadpool call goes in steps and arrives whole', async () => {
  const { d, blk, file } = disk(4 << 20, {}, undefined, 'async');
  const big = Buffer.alloc(1536 * 1024);
  for (let i = 0; i < big.length; i += 512) big.fill((i / 512) & 0xff, i, i + 512);
  const w = d.submit(0, [{ data: header(REQ.OUT, 8) }, { data: big }, { writable: 1 }]);
  await settle(blk);
  assert.equal(statusOf(d, w), BLK_STATUS.OK);
  assert.ok(readFileSync(file).subarray(4096, 4096 + big.length).equals(big));
  d.resetData();
  const r = d.submit(0, [{ data: header(REQ.IN, 8) }, { writable: big.length }, { writable: 1 }]);
  await settle(blk);
  assert.equal(statusOf(d, r), BLK_STATUS.OK);
  assert.ok(Buffer.from(d.mem.read(GA(r.addrs[1] as number), big.length)).equals(big));
  assert.deepEqual([blk.metrics.writes, blk.metrics.reads, blk.metrics.ioErrors], [1, 1, 0]);
});

test('async: a small request alone in the ring runs on the spot (queue depth 1); one with others behind it, a large one and a flush go to the threadpool', async () => {
  const { d, blk, file } = disk(1 << 20, {}, (b) => b.fill(5), 'async', 64 * 1024);
  const alone = d.submit(0, [{ data: header(REQ.IN, 0) }, { writable: 4096 }, { writable: 1 }]);
  assert.equal(blk.pendingRequests(), 0);
  assert.deepEqual(d.takeUsed(0).map((u) => u.id), [alone.head], 'completed before notify() returned');
  assert.ok(Buffer.from(d.mem.read(GA(alone.addrs[1] as number), 4096)).every((x) => x === 5));
  const w = d.submit(0, [{ data: header(REQ.OUT, 8) }, { data: Buffer.alloc(4096, 9) }, { writable: 1 }]);
  assert.equal(statusOf(d, w), BLK_STATUS.OK, 'a small write alone too');
  assert.equal(d.takeUsed(0).length, 1);

  const two = [0, 1].map((i) => d.submit(0, [{ data: header(REQ.IN, 16 + i * 8) }, { writable: 4096 }, { writable: 1 }], { notify: i === 1 }));
  assert.equal(blk.pendingRequests(), 2, 'the first had one behind it, the second one in flight before it');
  const big = d.submit(0, [{ data: header(REQ.OUT, 64) }, { data: Buffer.alloc(128 * 1024, 3) }, { writable: 1 }], { notify: false });
  await settle(blk);
  assert.equal(d.takeUsed(0).length, 2);
  d.setReg(REG.QUEUE_NOTIFY, 0);
  assert.equal(blk.pendingRequests(), 1, 'larger than the shortcut: on the threadpool');
  await settle(blk);
  const fl = d.submit(0, [{ data: header(REQ.FLUSH, 0) }, { writable: 1 }]);
  assert.equal(blk.pendingRequests(), 1, 'a flush waits on the disk: on the threadpool');
  await settle(blk);
  assert.equal(d.takeUsed(0).length, 2);
  for (const r of [...two, big, fl]) assert.equal(statusOf(d, r), BLK_STATUS.OK);
  const bytes = readFileSync(file);
  assert.ok(bytes.subarray(4096, 8192).every((x) => x === 9));
  assert.ok(bytes.subarray(32768, 32768 + 128 * 1024).every((x) => x === 3));
  assert.deepEqual([blk.metrics.reads, blk.metrics.writes, blk.metrics.flushes], [3, 2, 1]);
});

test('async: a ring the driver breaks while requests are in flight fails the device when they complete, without throwing', async () => {
  const { d, blk } = disk(1 << 20, {}, undefined, 'async');
  for (let i = 0; i < 8; i++) d.submit(0, [{ data: header(REQ.OUT, i * 8) }, { data: Buffer.alloc(4096, 1) }, { writable: 1 }], { notify: i === 7 });
  assert.equal(blk.pendingRequests(), 4, 'four wait in the ring');
  const ring = d.rings[0] as { avail: number };
  d.mem.writeU16(GA(ring.avail + 2), (d.mem.readU16(GA(ring.avail + 2)) + 1000) & 0xffff); // an impossible avail index
  await settle(blk);
  assert.equal(d.reg(REG.STATUS) & STATUS.DEVICE_NEEDS_RESET, STATUS.DEVICE_NEEDS_RESET);
  assert.equal(blk.pendingRequests(), 0);
});

test('async: requests a new driver queued behind the cap start once the old driver\'s requests (before its reset) complete', async () => {
  const { d, blk, file } = disk(1 << 20, {}, undefined, 'async');
  for (let i = 0; i < 4; i++) d.submit(0, [{ data: header(REQ.OUT, i * 8) }, { data: Buffer.alloc(4096, 1) }, { writable: 1 }], { notify: i === 3 });
  assert.equal(blk.pendingRequests(), 4);
  d.init(F_VERSION_1 | blk.features); // a reset (Status = 0), then a new driver
  const reqs = Array.from({ length: 8 }, (_, i) => d.submit(0, [{ data: header(REQ.OUT, 64 + i * 8) }, { data: Buffer.alloc(4096, 2) }, { writable: 1 }], { notify: i === 7 }));
  assert.equal(blk.pendingRequests(), 4, 'the old requests still hold the cap: the new ones wait in the ring');
  await settle(blk);
  assert.equal(d.takeUsed(0).length, 8, 'all of the new driver\'s requests completed');
  for (const r of reqs) assert.equal(statusOf(d, r), BLK_STATUS.OK);
  assert.ok(readFileSync(file).subarray(64 * 512, 128 * 512).every((x) => x === 2));
});

test('async: an O_DIRECT request alone still goes to the threadpool (it waits on the disk)', async (t) => {
  let r;
  try {
    r = disk(64 * 1024, { direct: true }, (b) => b.fill(0x11), 'async', 64 * 1024);
  } catch (e) {
    t.skip(`O_DIRECT not supported here: ${(e as Error).message}`); // tmpfs
    return;
  }
  const { d, blk } = r;
  d.resetData();
  d.place(512 - 16); // the 16-byte header just below a sector boundary: the data buffer on it (no bounce buffer)
  const rd = d.submit(0, [{ data: header(REQ.IN, 0) }, { writable: 4096 }, { writable: 1 }]);
  assert.equal((rd.addrs[1] as number) % 512, 0);
  assert.equal(blk.pendingRequests(), 1);
  await settle(blk);
  // completed; its status is not asked: this test memory is an ArrayBuffer whose own start need
  // not be sector-aligned (the VMM's guest RAM is mmap'd, page-aligned), so O_DIRECT may refuse it
  assert.deepEqual(d.takeUsed(0).map((u) => u.id), [rd.head]);
});
