// The virtio-mmio transport and split queues against the driver-side stand-in.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { GuestAddress as GA } from '../memory/guest-memory.js';
import { F_RING_EVENT_IDX, F_RING_INDIRECT_DESC, F_VERSION_1, INT_CONFIG_CHANGE, INT_USED_RING, STATUS, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE } from './constants.js';
import type { ActivateContext, VirtioDevice } from './device.js';
import { REG } from './mmio.js';
import { ChainReader, ChainWriter, type DescriptorChain } from './queue.js';
import { TestDriver } from './testing/driver.js';

/** Echo device: copies each request's readable bytes into its writable buffers. */
class Echo implements VirtioDevice {
  readonly deviceType = 42;
  readonly queueSizes = [8, 16];
  readonly features = 1n << 3n;
  ctx: ActivateContext | null = null;
  chains: DescriptorChain[] = [];
  resets = 0;
  config = new Uint8Array([1, 2, 3, 4, 5, 6, 7, 8]);
  readConfig(o: number, d: Uint8Array): void {
    d.fill(0);
    d.set(this.config.subarray(o, o + d.length));
  }
  writeConfig(o: number, d: Uint8Array): void {
    this.config.set(d.subarray(0, Math.max(0, this.config.length - o)), o);
  }
  activate(ctx: ActivateContext): void {
    this.ctx = ctx;
  }
  notify(i: number): void {
    const ctx = this.ctx as ActivateContext;
    const q = ctx.queues[i];
    if (!q) return;
    for (let p = q.pop(ctx.mem); p; p = q.pop(ctx.mem)) {
      if (p.error) {
        q.addUsed(ctx.mem, p.error.head, 0);
        continue;
      }
      this.chains.push(p.chain);
      const r = new ChainReader(ctx.mem, p.chain.readable);
      const w = new ChainWriter(ctx.mem, p.chain.writable);
      const data = r.read(Math.min(r.total, w.total));
      w.write(data);
      q.addUsed(ctx.mem, p.chain.head, w.written);
    }
    ctx.interrupt.signalUsed(i);
  }
  reset(): void {
    this.ctx = null;
    this.resets++;
  }
}

test('identification registers and feature pages', () => {
  const d = new TestDriver(new Echo());
  assert.equal(d.reg(REG.MAGIC), 0x74726976);
  assert.equal(d.reg(REG.VERSION), 2);
  assert.equal(d.reg(REG.DEVICE_ID), 42);
  const f = d.deviceFeatures();
  assert.equal(f & F_VERSION_1, F_VERSION_1);
  assert.equal(f & F_RING_EVENT_IDX, F_RING_EVENT_IDX);
  assert.equal(f & (1n << 3n), 1n << 3n);
  d.setReg(REG.DEVICE_FEATURES_SEL, 7);
  assert.equal(d.reg(REG.DEVICE_FEATURES), 0);
  assert.deepEqual([...d.config(2, 4)], [3, 4, 5, 6]);
  // a 2-byte register read is refused, not misread
  const b = new Uint8Array(2);
  d.transport.read(REG.MAGIC, b);
  assert.deepEqual([...b], [0, 0]);
  assert.equal(d.transport.metrics.badAccesses, 1);
});

test('status machine: features must be a subset and include VERSION_1', () => {
  const d = new TestDriver(new Echo());
  const bad = d.init(F_VERSION_1 | (1n << 40n));
  assert.equal(bad & STATUS.FEATURES_OK, 0, 'unoffered feature refused');
  const legacy = d.init(0n);
  assert.equal(legacy & STATUS.FEATURES_OK, 0, 'a legacy driver is refused');
  const ok = d.init(F_VERSION_1 | F_RING_INDIRECT_DESC);
  assert.equal(ok & STATUS.DRIVER_OK, STATUS.DRIVER_OK);
  assert.equal(d.transport.isActive, true);
  // bits cannot be cleared without a reset
  d.setReg(REG.STATUS, STATUS.ACKNOWLEDGE);
  assert.equal(d.reg(REG.STATUS), ok);
  // queue layout is frozen once live
  d.setReg(REG.QUEUE_SEL, 0);
  d.setReg(REG.QUEUE_NUM, 2);
  assert.equal(d.transport.queues[0]?.size, 8);
  d.setReg(REG.STATUS, 0);
  assert.equal(d.reg(REG.STATUS), 0);
  assert.equal(d.transport.isActive, false);
  assert.equal((d.device as Echo).resets, 3);
});

test('requests flow: direct and indirect chains, used ring, interrupt and ack', () => {
  const dev = new Echo();
  const d = new TestDriver(dev);
  d.init(F_VERSION_1 | F_RING_INDIRECT_DESC);
  const msg = new TextEncoder().encode('hello, virtio');
  const r1 = d.submit(0, [{ data: msg.subarray(0, 5) }, { data: msg.subarray(5) }, { writable: 64 }]);
  assert.deepEqual(d.takeUsed(0), [{ id: r1.head, len: msg.length }]);
  assert.equal(d.irqLevel, true);
  assert.equal(d.ack(), INT_USED_RING);
  assert.equal(d.irqLevel, false);
  assert.deepEqual(d.mem.read(GA(r1.addrs[2] as number), msg.length), msg);
  const r2 = d.submit(1, [{ data: msg }, { writable: 4 }, { writable: 100 }], { indirect: true });
  assert.deepEqual(d.takeUsed(1), [{ id: r2.head, len: msg.length }]);
  assert.deepEqual(d.mem.read(GA(r2.addrs[1] as number), 4), msg.subarray(0, 4));
  assert.deepEqual(d.mem.read(GA(r2.addrs[2] as number), msg.length - 4), msg.subarray(4));
});

test('indirect descriptors are refused unless negotiated', () => {
  const dev = new Echo();
  const d = new TestDriver(dev);
  d.init(F_VERSION_1);
  const r = d.submit(0, [{ data: new Uint8Array(4) }, { writable: 4 }], { indirect: true });
  assert.deepEqual(d.takeUsed(0), [{ id: r.head, len: 0 }]);
  assert.equal(d.transport.queues[0]?.rejected, 1);
  assert.equal(dev.chains.length, 0);
});

test('hostile chains are rejected one by one and the queue goes on', () => {
  const dev = new Echo();
  const d = new TestDriver(dev);
  d.init(F_VERSION_1 | F_RING_INDIRECT_DESC);
  const ring = d.rings[0]!;
  const buf = d.place(16);
  // a loop: 0 -> 1 -> 0
  d.writeDesc(ring.desc, 0, buf, 16, VIRTQ_DESC_F_NEXT, 1);
  d.writeDesc(ring.desc, 1, buf, 16, VIRTQ_DESC_F_NEXT, 0);
  d.publish(0, 0);
  // outside guest RAM
  d.writeDesc(ring.desc, 2, 0x7fff_0000, 16, 0, 0);
  d.publish(0, 2);
  // readable after writable
  d.writeDesc(ring.desc, 3, buf, 16, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 4);
  d.writeDesc(ring.desc, 4, buf, 16, 0, 0);
  d.publish(0, 3);
  // next index beyond the queue
  d.writeDesc(ring.desc, 5, buf, 16, VIRTQ_DESC_F_NEXT, 200);
  d.publish(0, 5);
  // head beyond the queue
  d.publish(0, 9);
  // lengths that overflow a u32 sum
  d.writeDesc(ring.desc, 6, buf, 0xffff_ffff, VIRTQ_DESC_F_NEXT, 7);
  d.writeDesc(ring.desc, 7, buf, 0xffff_ffff, 0, 0);
  d.publish(0, 6);
  // and a good one after all of that
  const good = d.submit(0, [{ data: new Uint8Array([9, 9]) }, { writable: 2 }]);
  const used = d.takeUsed(0);
  assert.equal(used.length, 7);
  assert.deepEqual(used.slice(0, 6).map((u) => u.len), [0, 0, 0, 0, 0, 0]);
  assert.deepEqual(used[6], { id: good.head, len: 2 });
  assert.equal(d.transport.queues[0]?.rejected, 6);
  assert.equal(d.reg(REG.STATUS) & STATUS.DEVICE_NEEDS_RESET, 0);
});

test('an avail index that jumps past the queue size breaks the device, not the VMM', () => {
  const d = new TestDriver(new Echo());
  d.init(F_VERSION_1);
  const ring = d.rings[0]!;
  d.mem.writeU16(GA(ring.avail + 2), 500);
  d.setReg(REG.QUEUE_NOTIFY, 0);
  assert.equal(d.reg(REG.STATUS) & STATUS.DEVICE_NEEDS_RESET, STATUS.DEVICE_NEEDS_RESET);
  assert.equal(d.reg(REG.INTERRUPT_STATUS) & INT_CONFIG_CHANGE, INT_CONFIG_CHANGE);
  // further notifications are ignored until the driver resets
  d.setReg(REG.QUEUE_NOTIFY, 0);
  assert.equal(d.init(F_VERSION_1) & STATUS.DRIVER_OK, STATUS.DRIVER_OK);
});

test('rings outside guest memory or misaligned fail activation', () => {
  const d = new TestDriver(new Echo());
  d.setReg(REG.STATUS, STATUS.ACKNOWLEDGE | STATUS.DRIVER);
  d.setReg(REG.DRIVER_FEATURES_SEL, 1);
  d.setReg(REG.DRIVER_FEATURES, 1);
  d.setReg(REG.STATUS, STATUS.ACKNOWLEDGE | STATUS.DRIVER | STATUS.FEATURES_OK);
  d.setReg(REG.QUEUE_SEL, 0);
  d.setReg(REG.QUEUE_DESC_LOW, 0xffff_f000);
  d.setReg(REG.QUEUE_DESC_HIGH, 0xffff);
  d.setReg(REG.QUEUE_READY, 1);
  d.setReg(REG.STATUS, STATUS.ACKNOWLEDGE | STATUS.DRIVER | STATUS.FEATURES_OK | STATUS.DRIVER_OK);
  assert.equal(d.transport.isActive, false);
  assert.equal(d.reg(REG.STATUS) & STATUS.DEVICE_NEEDS_RESET, STATUS.DEVICE_NEEDS_RESET);
});

test('EVENT_IDX: interrupts only when the driver asked, avail_event published', () => {
  const dev = new Echo();
  const d = new TestDriver(dev);
  d.init(F_VERSION_1 | F_RING_EVENT_IDX);
  const ring = d.rings[0]!;
  const usedEventAt = GA(ring.avail + 4 + 2 * ring.size);
  d.submit(0, [{ data: new Uint8Array(1) }, { writable: 1 }]);
  assert.equal(d.irqEdges, 1, 'first completion always interrupts');
  d.ack();
  // the driver says: interrupt me after used idx passes 5
  d.mem.writeU16(usedEventAt, 5);
  for (let i = 0; i < 4; i++) d.submit(0, [{ data: new Uint8Array(1) }, { writable: 1 }]);
  assert.equal(d.irqEdges, 1, 'no interrupt before used_event');
  d.submit(0, [{ data: new Uint8Array(1) }, { writable: 1 }]);
  assert.equal(d.irqEdges, 2, 'interrupt once used idx passes used_event');
  assert.equal(d.takeUsed(0).length, 6);
});

test('config space writes need DRIVER, config changes bump the generation', () => {
  const dev = new Echo();
  const d = new TestDriver(dev);
  d.transport.write(REG.CONFIG, new Uint8Array([0xaa]));
  assert.equal(dev.config[0], 1);
  d.init(F_VERSION_1);
  d.transport.write(REG.CONFIG, new Uint8Array([0xaa]));
  assert.equal(dev.config[0], 0xaa);
  const g = d.reg(REG.CONFIG_GENERATION);
  d.transport.signalConfig();
  assert.equal(d.reg(REG.CONFIG_GENERATION), g + 1);
  assert.equal(d.ack(), INT_CONFIG_CHANGE);
});
