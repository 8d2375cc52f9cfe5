// virtio-blk against the driver stand-in, on real (sparse) files.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { GuestAddress as GA } from '../../../memory/guest-memory.js';
import { F_VERSION_1, INT_CONFIG_CHANGE } from '../../../virtio/constants.js';
import { TestDriver, type OutBuffer } from '../../../virtio/testing/driver.js';
import { BLK_F, BlkBackend, VirtioBlk, type BlkBackendOptions } from './device.js';
import { BLK_STATUS, REQ } from './request.js';

const dir = mkdtempSync(join(tmpdir(), 'capsule-blk-'));
test.after(() => rmSync(dir, { recursive: true, force: true }));
let n = 0;

function disk(bytes: number, opts: Partial<BlkBackendOptions> = {}, fill?: (b: Buffer) => void): { file: string; blk: VirtioBlk; d: TestDriver } {
  const file = join(dir, `d${n++}.img`);
  const b = Buffer.alloc(bytes);
  fill?.(b);
  writeFileSync(file, b);
  const blk = new VirtioBlk(new BlkBackend({ file, readOnly: false, direct: false, noFlush: false, ...opts }));
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
  const blk = new VirtioBlk(new BlkBackend({ file, readOnly: false, direct: false, noFlush: false, iops: 50 }), false, () => t);
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
  const blk = new VirtioBlk(null, true);
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
