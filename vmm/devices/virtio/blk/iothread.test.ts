// virtio-blk served on an iothread: the queue runs in the worker (woken by the queue's eventfd,
// as KVM's ioeventfd would), over the same guest RAM (a real mmap), with a real image file.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { threadId } from 'node:worker_threads';
import { EventFd } from '../../../io/eventfd.js';
import { IoThread } from '../../../io/iothread.js';
import { GuestAddress as GA, GuestMemory } from '../../../memory/guest-memory.js';
import { F_VERSION_1, F_RING_EVENT_IDX } from '../../../virtio/constants.js';
import { REG } from '../../../virtio/mmio.js';
import { TEST_MEM_SIZE, TestDriver } from '../../../virtio/testing/driver.js';
import { BlkBackend } from './device.js';
import { IoThreadBlk } from './iothread.js';
import { BLK_STATUS, REQ } from './request.js';

const dir = mkdtempSync(join(tmpdir(), 'capsule-blk-io-'));
test.after(() => rmSync(dir, { recursive: true, force: true }));

function header(type: number, sector: number): Uint8Array {
  const h = new Uint8Array(16);
  const v = new DataView(h.buffer);
  v.setUint32(0, type, true);
  v.setBigUint64(8, BigInt(sector), true);
  return h;
}

async function until<T>(fn: () => T | undefined, what: string, ms = 10_000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = fn();
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error(`timed out: ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

test('a disk on an iothread: reads and writes done in the worker, interrupts raised on the main thread', async () => {
  const file = join(dir, 'disk.img');
  const content = Buffer.alloc(64 * 1024);
  for (let i = 0; i < content.length; i++) content[i] = (i * 13) & 0xff;
  writeFileSync(file, content);
  const thread = await IoThread.start('io-test');
  const mem = GuestMemory.create({ size: TEST_MEM_SIZE });
  const notify = EventFd.create();
  const blk = new IoThreadBlk(new BlkBackend({ file, readOnly: false, direct: false, noFlush: false }), thread, 'disk0');
  const d = new TestDriver(blk, mem);
  d.transport.notifierFds = [notify.fd];
  try {
    await blk.start();
    d.init(F_VERSION_1 | F_RING_EVENT_IDX | blk.features);
    assert.ok(thread.tid > 0 && threadId === 0);
    // a read of sectors 4..11
    const r = d.submit(0, [{ data: header(REQ.IN, 4) }, { writable: 4096 }, { writable: 1 }]);
    const used = await until(() => { const u = d.takeUsed(0); return u.length ? u : undefined; }, 'read completion');
    assert.deepEqual(used, [{ id: r.head, len: 4097 }]);
    assert.equal(mem.readU8(GA(r.addrs[2] as number)), BLK_STATUS.OK);
    assert.deepEqual(Buffer.from(mem.read(GA(r.addrs[1] as number), 4096)), content.subarray(2048, 2048 + 4096));
    await until(() => (d.irqLevel ? true : undefined), 'interrupt raised on the main thread');
    d.ack();
    // a write reaches the file
    const w = d.submit(0, [{ data: header(REQ.OUT, 0) }, { data: Buffer.alloc(512, 0xab) }, { writable: 1 }]);
    await until(() => (d.takeUsed(0).length ? true : undefined), 'write completion');
    assert.equal(mem.readU8(GA(w.addrs[2] as number)), BLK_STATUS.OK);
    assert.equal(readFileSync(file)[0], 0xab);
    assert.equal(blk.metrics.reads, 0, 'the main thread\'s device did no I/O itself');
    // a driver reset stops the worker's service; the next activation serves again
    d.init(F_VERSION_1 | blk.features);
    d.submit(0, [{ data: header(REQ.IN, 0) }, { writable: 512 }, { writable: 1 }]);
    await until(() => (d.takeUsed(0).length ? true : undefined), 'completion after a reset');
  } finally {
    blk.close();
    await thread.stop();
    notify.close();
    mem.close();
  }
});

test('a disk on an iothread with an irqfd: the worker raises the interrupt itself; a reset waits for the worker', async () => {
  const file = join(dir, 'disk2.img');
  writeFileSync(file, Buffer.alloc(64 * 1024, 0x5a));
  const thread = await IoThread.start('io-test-2');
  const mem = GuestMemory.create({ size: TEST_MEM_SIZE });
  const notify = EventFd.create();
  const irq = EventFd.create();
  const blk = new IoThreadBlk(new BlkBackend({ file, readOnly: false, direct: false, noFlush: false }), thread, 'disk1');
  const d = new TestDriver(blk, mem);
  d.transport.notifierFds = [notify.fd];
  d.transport.irqFd = irq.fd;
  try {
    await blk.start();
    d.init(F_VERSION_1 | F_RING_EVENT_IDX | blk.features);
    const r = d.submit(0, [{ data: header(REQ.IN, 0) }, { writable: 512 }, { writable: 1 }], { notify: false });
    notify.write();
    await until(() => (d.takeUsed(0).length ? true : undefined), 'read completion');
    assert.equal(mem.readU8(GA(r.addrs[2] as number)), BLK_STATUS.OK);
    await until(() => (irq.read() !== null ? true : undefined), 'the worker wrote the irqfd');
    assert.ok(d.irqLevel, 'InterruptStatus set by the worker');
    assert.equal(d.irqEdges, 0, 'the main thread raised nothing');
    const t0 = Date.now();
    d.setReg(REG.STATUS, 0); // driver reset
    assert.ok(Date.now() - t0 < 2000, `the worker acknowledged the reset (took ${Date.now() - t0} ms)`);
  } finally {
    blk.close();
    await thread.stop();
    notify.close();
    irq.close();
    mem.close();
  }
});
