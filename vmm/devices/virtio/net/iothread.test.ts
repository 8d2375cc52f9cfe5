// virtio-net served on an iothread: both queues run in the worker over the same guest RAM (a real
// mmap), woken by the queues' eventfds (as KVM's ioeventfds would be) and by the "tap" (a datagram
// socketpair); the worker raises interrupts itself through the slot's status word and irqfd (an
// eventfd here: no VM), so the main thread's transport never triggers one.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { closeSync } from 'node:fs';
import { EventFd } from '../../../io/eventfd.js';
import { IoThread } from '../../../io/iothread.js';
import { GuestAddress as GA, GuestMemory } from '../../../memory/guest-memory.js';
import { F_RING_EVENT_IDX, F_VERSION_1, INT_USED_RING, STATUS } from '../../../virtio/constants.js';
import { REG } from '../../../virtio/mmio.js';
import { TEST_MEM_SIZE, TestDriver } from '../../../virtio/testing/driver.js';
import { RXQ, TXQ } from './device.js';
import { IoThreadNet } from './iothread.js';
import { NET_F, NET_HDR_SIZE } from './sys.js';
import { buildDevices } from '../../build.js';
import { DeviceManager } from '../../manager.js';
import { canMakeTap, PairPeer } from './testing.js';

const MRG = 1n << BigInt(NET_F.MRG_RXBUF);

async function until(cond: () => boolean, what: string, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out: ${what}`);
    await new Promise((r) => setTimeout(r, 2));
  }
}

function frame(n: number, seed: number): Buffer {
  const b = Buffer.alloc(NET_HDR_SIZE + n);
  for (let i = 0; i < n; i++) b[NET_HDR_SIZE + i] = (i * 7 + seed) & 0xff;
  return b;
}

interface Rig { d: TestDriver; net: IoThreadNet; peer: PairPeer; irq: EventFd; kicks: EventFd[]; close(): Promise<void> }

async function rig(features = F_VERSION_1 | F_RING_EVENT_IDX | MRG): Promise<Rig> {
  const thread = await IoThread.start('net-test');
  const mem = GuestMemory.create({ size: TEST_MEM_SIZE });
  const peer = PairPeer.create();
  const kicks = [EventFd.create(), EventFd.create()];
  const irq = EventFd.create();
  const net = new IoThreadNet(peer.backend, thread, 'net0', '52:54:00:00:00:01');
  const d = new TestDriver(net, mem);
  d.transport.notifierFds = kicks.map((k) => k.fd);
  d.transport.irqFd = irq.fd;
  await net.start();
  const st = d.init(features & (net.features | F_VERSION_1 | F_RING_EVENT_IDX));
  assert.ok(st & STATUS.DRIVER_OK, `status 0x${st.toString(16)}`);
  return {
    d, net, peer, irq, kicks,
    async close() {
      net.close();
      closeSync(peer.peerFd);
      await thread.stop();
      for (const k of kicks) k.close();
      irq.close();
      mem.close();
    },
  };
}

test('a NIC on an iothread: tx and rx in the worker, its interrupts through the irqfd, counters shared', async () => {
  const r = await rig();
  try {
    // tx woken by the queue's ioeventfd (no MMIO write): one writev per chain
    const out = frame(1000, 3);
    r.d.submit(TXQ, [{ data: out.subarray(0, NET_HDR_SIZE) }, { data: out.subarray(NET_HDR_SIZE) }], { notify: false });
    r.kicks[TXQ]!.write();
    let got: Buffer | null = null;
    await until(() => (got ??= r.peer.take()) !== null, 'the tx frame at the tap');
    assert.deepEqual(got, out);
    await until(() => r.d.takeUsed(TXQ).length === 1, 'the tx chain completed');
    await until(() => r.irq.read() !== null, 'the worker wrote the irqfd');
    assert.ok(Atomics.load(r.d.transport.interruptWord, 0) & INT_USED_RING, 'InterruptStatus says used ring');
    assert.equal(r.d.irqEdges, 0, 'the main thread raised no interrupt itself');
    r.d.ack();
    // rx: buffers posted with a QueueNotify write (the MMIO path: passed on to the ioeventfd)
    const buf = r.d.submit(RXQ, [{ writable: 2048 }]);
    const inFrame = frame(1500, 9);
    r.peer.give(inFrame);
    await until(() => r.net.metrics.rxFrames === 1, 'rxFrames (a counter the worker writes) seen on the main thread');
    const used = r.d.takeUsed(RXQ);
    assert.deepEqual(used.map((u) => u.id), [buf.head]);
    assert.equal(used[0]!.len, inFrame.length);
    const back = Buffer.from(r.d.mem.read(GA(buf.addrs[0]!), inFrame.length));
    assert.equal(back.readUInt16LE(10), 1, 'num_buffers');
    assert.deepEqual(back.subarray(NET_HDR_SIZE), inFrame.subarray(NET_HDR_SIZE));
    await until(() => r.irq.read() !== null, 'an rx interrupt');
    // the iothread's own view of its queues (QMP x-query-net-metrics shows it)
    const view = await r.net.inspect() as { serving: boolean; pendingBytes: number; queues: Array<{ nextUsed: number; usedIdx: number; availIdx: number }> };
    assert.equal(view.serving, true);
    assert.equal(view.pendingBytes, 0);
    assert.deepEqual([view.queues[RXQ]!.nextUsed, view.queues[RXQ]!.usedIdx, view.queues[RXQ]!.availIdx], [1, 1, 1]);
    assert.deepEqual([view.queues[TXQ]!.nextUsed, view.queues[TXQ]!.usedIdx], [1, 1]);
    assert.equal(r.net.metrics.txFrames, 1);
    assert.equal(r.net.metrics.txBytes, 1000);
    assert.equal(r.net.metrics.rxBytes, 1500);
    assert.equal(r.d.irqEdges, 0);
  } finally {
    await r.close();
  }
});

test('iothread NIC: a full tx ring in one go (the batch limit yields through the tx eventfd), then more', async () => {
  const r = await rig();
  try {
    const n = r.d.rings[TXQ]!.size;
    for (let i = 0; i < n; i++) r.d.submit(TXQ, [{ data: frame(64, i) }], { notify: false });
    r.kicks[TXQ]!.write();
    let seen = 0;
    await until(() => {
      while (r.peer.take()) seen++;
      return seen === n;
    }, `${n} frames at the tap`);
    await until(() => r.net.metrics.txFrames === n, 'txFrames');
    assert.equal(r.d.takeUsed(TXQ).length, n);
    // the first pass stops at the batch limit before it looks at an empty ring; only the pass the
    // yield brings back finds it empty and asks for the next notification (avail_event = 256)
    const ring = r.d.rings[TXQ]!;
    await until(() => r.d.mem.readU16(GA(ring.used + 4 + 8 * ring.size)) === n, 'avail_event set by the pass after the yield');
    r.d.resetData();
    for (let i = 0; i < 10; i++) r.d.submit(TXQ, [{ data: frame(64, i) }], { notify: i === 9 });
    await until(() => {
      while (r.peer.take()) seen++;
      return seen === n + 10;
    }, 'ten more after the ring wrapped');
  } finally {
    await r.close();
  }
});

test('iothread NIC: a driver reset waits for the worker to let go of the rings; re-activation serves again', async () => {
  const r = await rig();
  try {
    for (let i = 0; i < 4; i++) r.d.submit(RXQ, [{ writable: 2048 }]);
    r.peer.give(frame(100, 1));
    await until(() => r.net.metrics.rxFrames === 1, 'a frame before the reset');
    const ring = r.d.rings[RXQ]!;
    const usedIdx = (): number => r.d.mem.readU16(GA(ring.used + 2));
    assert.equal(usedIdx(), 1);
    const t0 = Date.now();
    r.d.setReg(REG.STATUS, 0);
    // the handshake, not the 2 s bound, ended the wait
    assert.ok(Date.now() - t0 < 2000, `reset took ${Date.now() - t0} ms`);
    // no longer served, though three buffers are still in the old ring: the frame stays at the tap
    r.peer.give(frame(200, 2));
    await new Promise((res) => setTimeout(res, 200));
    assert.equal(usedIdx(), 1, 'the worker wrote nothing into the old rings after the reset');
    assert.equal(r.net.metrics.rxFrames, 1);
    // a new driver, new rings: the waiting frame arrives
    r.d.resetData();
    r.d.init(F_VERSION_1 | F_RING_EVENT_IDX | MRG);
    r.d.submit(RXQ, [{ writable: 2048 }]);
    await until(() => r.net.metrics.rxFrames === 2, 'the frame after re-activation');
    assert.equal(r.d.takeUsed(RXQ)[0]!.len, NET_HDR_SIZE + 200);
  } finally {
    await r.close();
  }
});

test('iothread NIC: a broken ring sets DEVICE_NEEDS_RESET on the main thread; no hot-replace, no snapshot', async () => {
  const r = await rig();
  try {
    assert.throws(() => r.net.detach(), /iothread cannot be hot-replaced/);
    assert.match(r.net.snapshotBlocker() ?? '', /iothread/);
    const ring = r.d.rings[TXQ]!;
    r.d.mem.writeU16(GA(ring.avail + 2), 5000); // an avail index no driver can have
    r.kicks[TXQ]!.write();
    await until(() => (r.d.reg(REG.STATUS) & STATUS.DEVICE_NEEDS_RESET) !== 0, 'DEVICE_NEEDS_RESET');
  } finally {
    await r.close();
  }
});

test('-netdev iothread=: an undefined iothread and vhost=on with iothread= are refused before the tap is opened', () => {
  const devices = new DeviceManager(GuestMemory.fromBuffers(4 << 20), () => () => {});
  const iothreads = new Map([['io0', {} as IoThread]]);
  assert.throws(() => buildDevices(devices, { drives: [], hotplugSlots: 0, iothreads, nets: [{ id: 'n0', fd: '9999', iothread: 'io9', vhost: false }] }),
    /-netdev id=n0: no iothread 'io9'/);
  assert.throws(() => buildDevices(devices, { drives: [], hotplugSlots: 0, iothreads, nets: [{ id: 'n0', fd: '9999', iothread: 'io0', vhost: true }] }),
    /-netdev id=n0: vhost=on and iothread= exclude each other/);
  assert.equal(devices.slots.length, 0);
});

test('-netdev iothread=: a real tap becomes an IoThreadNet (its notifiers are not the main Poller\'s)', { skip: !canMakeTap() && 'needs root, /dev/net/tun and ip' }, async () => {
  const thread = await IoThread.start('net-build');
  const devices = new DeviceManager(GuestMemory.fromBuffers(4 << 20), () => () => {});
  const tap = `cio${process.pid % 100000}`;
  try {
    buildDevices(devices, { drives: [], hotplugSlots: 0, iothreads: new Map([['io0', thread]]), nets: [{ id: 'n0', ifname: tap, iothread: 'io0', vhost: false }] });
    const net = devices.slot('n0')?.device;
    assert.ok(net instanceof IoThreadNet);
    assert.equal(net.ownsNotifiers, true);
    assert.equal(net.backendName, tap);
  } finally {
    devices.close();
    await thread.stop();
  }
});
