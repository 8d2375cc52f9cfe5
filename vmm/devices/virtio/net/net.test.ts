// virtio-net against the driver stand-in, with a datagram socketpair in place of the tap (one
// read = one frame, as a tap), a real Poller, and — where this host lets us (root, /dev/net/tun,
// `ip`) — a real tap in a private network namespace that answers ARP and ping.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { openSync, closeSync } from 'node:fs';
import { GuestAddress as GA } from '../../../memory/guest-memory.js';
import { Poller } from '../../../io/poller.js';
import { F_RING_EVENT_IDX, F_RING_INDIRECT_DESC, F_VERSION_1, INT_CONFIG_CHANGE, STATUS } from '../../../virtio/constants.js';
import { REG } from '../../../virtio/mmio.js';
import { TestDriver } from '../../../virtio/testing/driver.js';
import { MAX_FRAME, parseMac, RXQ, tapOffloadFor, TXQ, VirtioNet, type NetOptions } from './device.js';
import { NET_F, NET_HDR_SIZE, TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_TSO_ECN, VIRTIO_NET_S_LINK_UP } from './sys.js';
import { Tap } from './tap.js';
import { arpAndPing, canMakeTap, deleteNamespace, FakeBackend, nullPoller, PairPeer, tapInNamespace } from './testing.js';

const bit = (n: number): bigint => 1n << BigInt(n);
const MRG = bit(NET_F.MRG_RXBUF);

function until(cond: () => boolean, what: string, ms = 3000): Promise<void> {
  const end = Date.now() + ms;
  return new Promise((resolve, reject) => {
    const tick = (): void => {
      if (cond()) resolve();
      else if (Date.now() > end) reject(new Error(`timed out waiting for ${what}`));
      else setTimeout(tick, 2);
    };
    tick();
  });
}

/** A frame as the guest or the tap sees it: 12-byte header, then the bytes. */
function frame(payload: Uint8Array, hdr: Partial<{ flags: number; gso: number }> = {}): Buffer {
  const b = Buffer.alloc(NET_HDR_SIZE + payload.length);
  b[0] = hdr.flags ?? 0;
  b[1] = hdr.gso ?? 0;
  b.set(payload, NET_HDR_SIZE);
  return b;
}

function pattern(n: number, seed = 1): Buffer {
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = (i * 31 + seed) & 0xff;
  return b;
}

interface Rig { d: TestDriver; net: VirtioNet; peer: PairPeer; poller: Poller; close(): Promise<void> }

const open = new Set<Rig>();
test.afterEach(async () => {
  // a failed assertion must not leave a Poller (and the test process) running
  for (const r of open) await r.close();
});

function rig(opts: Partial<NetOptions> = {}, features?: bigint): Rig {
  const peer = PairPeer.create();
  const poller = new Poller();
  const net = new VirtioNet({ backend: peer.backend, poller, ...opts });
  const d = new TestDriver(net);
  const st = d.init(features ?? (F_VERSION_1 | F_RING_INDIRECT_DESC | net.features));
  assert.ok(st & STATUS.DRIVER_OK, `status 0x${st.toString(16)}`);
  const r: Rig = {
    d, net, peer, poller,
    async close() {
      if (!open.delete(r)) return;
      net.close();
      closeSync(peer.peerFd);
      await poller.close();
    },
  };
  open.add(r);
  return r;
}

/** Reads back a used rx buffer chain's bytes. */
function readBack(d: TestDriver, addrs: number[], lens: number[], used: number): Buffer {
  const out: Buffer[] = [];
  let left = used;
  for (let i = 0; i < addrs.length && left > 0; i++) {
    const n = Math.min(lens[i] as number, left);
    out.push(Buffer.from(d.mem.read(GA(addrs[i] as number), n)));
    left -= n;
  }
  return Buffer.concat(out);
}

test('features, config space: MAC, link status, one queue pair', async () => {
  const r = rig({ mac: '52:54:00:ab:cd:ef' });
  const f = r.net.features;
  for (const n of [NET_F.MAC, NET_F.STATUS, NET_F.MRG_RXBUF, NET_F.CSUM, NET_F.GUEST_CSUM, NET_F.HOST_TSO4, NET_F.HOST_TSO6,
    NET_F.GUEST_TSO4, NET_F.GUEST_TSO6, NET_F.GUEST_ECN, NET_F.HOST_ECN]) assert.ok(f & bit(n), `feature ${n}`);
  for (const n of [NET_F.CTRL_VQ, NET_F.GUEST_UFO, NET_F.HOST_UFO, NET_F.MTU]) assert.equal(f & bit(n), 0n, `feature ${n}`);
  assert.deepEqual([...r.d.config(0, 6)], [0x52, 0x54, 0x00, 0xab, 0xcd, 0xef]);
  assert.equal(new DataView(r.d.config(6, 2).buffer).getUint16(0, true), VIRTIO_NET_S_LINK_UP);
  assert.equal(new DataView(r.d.config(8, 2).buffer).getUint16(0, true), 1);
  assert.equal(r.d.reg(REG.DEVICE_ID), 1);
  await r.close();
  const noMac = new VirtioNet({ backend: null, poller: nullPoller });
  assert.equal(noMac.features & bit(NET_F.MAC), 0n, 'no mac= -> the guest picks one');
  assert.deepEqual(parseMac('AA:bb:00:01:02:03'), Uint8Array.from([0xaa, 0xbb, 0, 1, 2, 3]));
  assert.throws(() => parseMac('aa:bb:cc'), /bad MAC/);
});

test('tap offloads follow what the driver accepted', () => {
  assert.equal(tapOffloadFor(0n), 0);
  assert.equal(tapOffloadFor(bit(NET_F.GUEST_TSO4)), 0, 'TSO without GUEST_CSUM means nothing');
  assert.equal(tapOffloadFor(bit(NET_F.GUEST_CSUM)), TUN_F_CSUM);
  assert.equal(tapOffloadFor(bit(NET_F.GUEST_CSUM) | bit(NET_F.GUEST_TSO4) | bit(NET_F.GUEST_TSO6) | bit(NET_F.GUEST_ECN)),
    TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN);
  const fake = new FakeBackend(() => 0);
  const net = new VirtioNet({ backend: fake, poller: nullPoller });
  const d = new TestDriver(net);
  d.init(F_VERSION_1 | bit(NET_F.GUEST_CSUM) | bit(NET_F.GUEST_TSO4));
  assert.equal(fake.offload, TUN_F_CSUM | TUN_F_TSO4);
  d.setReg(REG.STATUS, 0);
  assert.equal(fake.offload, 0, 'a driver reset takes the offloads back');
});

test('tx: one writev per chain, header and frame unchanged, across descriptors and indirect tables', async () => {
  const r = rig();
  const f1 = frame(pattern(60), { flags: 1 });
  r.d.submit(TXQ, [{ data: f1 }]);
  assert.deepEqual(r.peer.take(), f1);
  const f2 = frame(pattern(3000, 7), { flags: 1, gso: 1 });
  r.d.submit(TXQ, [{ data: f2.subarray(0, 12) }, { data: f2.subarray(12, 1000) }, { data: f2.subarray(1000) }]);
  assert.deepEqual(r.peer.take(), f2);
  r.d.submit(TXQ, [{ data: f2.subarray(0, 5) }, { data: f2.subarray(5) }], { indirect: true });
  assert.deepEqual(r.peer.take(), f2);
  const used = r.d.takeUsed(TXQ);
  assert.deepEqual(used.map((u) => u.len), [0, 0, 0]);
  assert.ok(r.d.irqLevel);
  assert.equal(r.net.metrics.txFrames, 3);
  assert.equal(r.net.metrics.txBytes, 60 + 3000 + 3000);
  await r.close();
});

test('tx: chains shorter than the header or longer than 64 KiB are dropped, rejected chains completed', async () => {
  const r = rig();
  r.d.submit(TXQ, [{ data: new Uint8Array(11) }]);
  r.d.submit(TXQ, [{ data: new Uint8Array(MAX_FRAME + 1) }]);
  r.d.submit(TXQ, [{ writable: 100 }]); // nothing readable
  // a loop: descriptor 50 -> 50
  const ring = r.d.rings[TXQ]!;
  r.d.writeDesc(ring.desc, 50, 0x200000, 64, 1, 50);
  r.d.publish(TXQ, 50);
  assert.equal(r.peer.take(), null, 'nothing reached the tap');
  assert.equal(r.d.takeUsed(TXQ).length, 4);
  assert.equal(r.net.metrics.txDropped, 3);
  assert.equal(r.net.metrics.rejected, 1);
  // the largest legal frame goes through
  const big = frame(pattern(MAX_FRAME - NET_HDR_SIZE));
  r.d.resetData();
  r.d.submit(TXQ, [{ data: big }]);
  assert.equal(r.peer.take()?.length, MAX_FRAME);
  await r.close();
});

test('rx without MRG_RXBUF: one frame per chain, num_buffers = 1; a frame too big for its chain is dropped', async () => {
  const r = rig({}, F_VERSION_1 | (bit(NET_F.MAC) & 0n) | bit(NET_F.STATUS));
  const bufs = [0, 1, 2].map(() => r.d.submit(RXQ, [{ writable: 1526 }], { notify: false }));
  r.d.setReg(REG.QUEUE_NOTIFY, RXQ);
  const f1 = frame(pattern(1000, 3));
  const f2 = frame(pattern(2000, 4)); // does not fit 1526
  const f3 = frame(pattern(1514, 5));
  r.peer.give(f1);
  r.peer.give(f2);
  r.peer.give(f3);
  await until(() => r.net.metrics.rxFrames + r.net.metrics.rxDropped === 3, 'three frames');
  const used = r.d.takeUsed(RXQ);
  assert.deepEqual(used.map((u) => [u.id, u.len]), [[bufs[0]!.head, f1.length], [bufs[1]!.head, 0], [bufs[2]!.head, f3.length]]);
  const got1 = readBack(r.d, bufs[0]!.addrs, [1526], f1.length);
  assert.equal(got1.readUInt16LE(10), 1, 'num_buffers');
  assert.deepEqual(got1.subarray(NET_HDR_SIZE), f1.subarray(NET_HDR_SIZE));
  assert.deepEqual(readBack(r.d, bufs[2]!.addrs, [1526], f3.length).subarray(NET_HDR_SIZE), f3.subarray(NET_HDR_SIZE));
  assert.equal(r.net.metrics.rxDropped, 1);
  assert.ok(r.d.irqLevel);
  await r.close();
});

test('rx with MRG_RXBUF: a 64 KiB frame over many chains, num_buffers, published together', async () => {
  const r = rig();
  const chains = Array.from({ length: 50 }, () => r.d.submit(RXQ, [{ writable: 1536 }], { notify: false }));
  r.d.setReg(REG.QUEUE_NOTIFY, RXQ);
  const big = frame(pattern(65000, 9), { flags: 1, gso: 1 });
  const small = frame(pattern(100, 2));
  r.peer.give(big);
  r.peer.give(small);
  await until(() => r.net.metrics.rxFrames === 2, 'two frames');
  const used = r.d.takeUsed(RXQ);
  const need = Math.ceil(big.length / 1536);
  assert.equal(used.length, need + 1);
  assert.deepEqual(used.slice(0, need).map((u) => u.id), chains.slice(0, need).map((c) => c.head));
  assert.equal(used.slice(0, need).reduce((n, u) => n + u.len, 0), big.length);
  const got = Buffer.concat(used.slice(0, need).map((u, i) => readBack(r.d, chains[i]!.addrs, [1536], u.len)));
  assert.equal(got.readUInt16LE(10), need, 'num_buffers');
  assert.equal(got[0], 1, 'header flags pass through');
  assert.equal(got[1], 1, 'gso type passes through');
  assert.deepEqual(got.subarray(NET_HDR_SIZE), big.subarray(NET_HDR_SIZE));
  const s = readBack(r.d, chains[need]!.addrs, [1536], used[need]!.len);
  assert.equal(s.readUInt16LE(10), 1);
  assert.deepEqual(s.subarray(NET_HDR_SIZE), small.subarray(NET_HDR_SIZE));
  await r.close();
});

test('rx: out of buffers the tap leaves the Poller and the frame waits; an rx notification resumes', async () => {
  const r = rig(undefined, F_VERSION_1 | F_RING_EVENT_IDX | MRG);
  r.d.submit(RXQ, [{ writable: 2048 }]);
  const f1 = frame(pattern(1000, 1));
  const f2 = frame(pattern(3000, 2));
  const f3 = frame(pattern(10, 3));
  r.peer.give(f1);
  r.peer.give(f2);
  r.peer.give(f3);
  await until(() => r.net.metrics.rxStalls === 1, 'a stall');
  assert.equal(r.net.metrics.rxFrames, 1);
  assert.equal(r.net.isPolling, false, 'tap not polled while the guest has no buffers');
  // avail_event asks for a notification at the next buffer
  const ring = r.d.rings[RXQ]!;
  assert.equal(r.d.mem.readU16(GA(ring.used + 4 + 8 * ring.size)), 1);
  assert.equal(r.d.takeUsed(RXQ).length, 1);
  // one 2048 chain is not enough for f2 (3012 bytes): still waiting, nothing used
  r.d.submit(RXQ, [{ writable: 2048 }]);
  assert.equal(r.d.takeUsed(RXQ).length, 0);
  assert.equal(r.net.isPolling, false);
  // the buffer stays in the ring; the driver is asked to notify beyond it, not at it (no spin)
  assert.equal(r.d.mem.readU16(GA(ring.used + 4 + 8 * ring.size)), 2);
  assert.equal(r.net.metrics.rxStalls, 2, 'one stall per notification');
  r.d.submit(RXQ, [{ writable: 2048 }], { notify: false });
  r.d.submit(RXQ, [{ writable: 2048 }]);
  await until(() => r.net.metrics.rxFrames === 3, 'f2 and f3');
  assert.equal(r.net.metrics.rxStalls, 2);
  const used = r.d.takeUsed(RXQ);
  assert.deepEqual(used.map((u) => u.len), [2048, f2.length - 2048, f3.length]);
  assert.equal(r.net.isPolling, true);
  await r.close();
});

/** vring_need_event(): a driver with EVENT_IDX notifies only when its adds crossed avail_event. */
function addRxHonouringEventIdx(d: TestDriver, n: number, size = 2048): void {
  const ring = d.rings[RXQ]!;
  const old = d.mem.readU16(GA(ring.avail + 2));
  for (let i = 0; i < n; i++) d.submit(RXQ, [{ writable: size }], { notify: false });
  const now = d.mem.readU16(GA(ring.avail + 2));
  const event = d.mem.readU16(GA(ring.used + 4 + 8 * ring.size));
  if (((now - event - 1) & 0xffff) < ((now - old) & 0xffff)) d.setReg(REG.QUEUE_NOTIFY, RXQ);
}

/**
 * Runs `hook` right after the device writes the rx queue's avail_event (a driver racing it on
 * another vCPU): the next time only, or with `every`, each time.
 */
function onAvailEventWrite(d: TestDriver, hook: () => void, every = false): void {
  const ring = d.rings[RXQ]!;
  const at = ring.used + 4 + 8 * ring.size;
  const mem = d.mem;
  const write = mem.writeU16.bind(mem);
  let armed = true;
  mem.writeU16 = (addr, v) => {
    write(addr, v);
    if (armed && Number(addr) === at) {
      armed = every;
      hook();
    }
  };
}

/**
 * Plays a Linux driver until `frames` frames have arrived: takes what was used, refills 8 buffers
 * when fewer than 4 are posted, and notifies only when vring_need_event says so.
 */
function refillUntilDelivered(r: Rig, frames: number, what: string, ms: number): Promise<void> {
  const ring = r.d.rings[RXQ]!;
  return until(() => {
    r.d.takeUsed(RXQ);
    const posted = (r.d.mem.readU16(GA(ring.avail + 2)) - r.d.mem.readU16(GA(ring.used + 2))) & 0xffff;
    if (posted < 4) addRxHonouringEventIdx(r.d, 8);
    return r.net.metrics.rxFrames === frames;
  }, what, ms);
}

test('rx: buffers added while the device re-arms at the end of a batch are not lost (EVENT_IDX)', async () => {
  const r = rig(undefined, F_VERSION_1 | F_RING_EVENT_IDX | MRG);
  // a stall: no rx buffers, one frame waits, the tap leaves the Poller
  r.peer.give(frame(pattern(1000, 0)));
  await until(() => r.net.metrics.rxStalls === 1, 'a stall');
  for (let i = 1; i <= 70; i++) r.peer.give(frame(pattern(1000, i)));
  // The driver posts one buffer fewer than a batch. The device fills them all, runs out on the
  // batch's last frame, and asks to hear beyond avail; the driver adds one more right then,
  // without notifying (it read avail_event before the device wrote it).
  onAvailEventWrite(r.d, () => r.d.submit(RXQ, [{ writable: 2048 }], { notify: false }));
  addRxHonouringEventIdx(r.d, 63);
  // from here on the driver refills as Linux does: it notifies only when avail_event says so
  await refillUntilDelivered(r, 71, 'all 71 frames delivered', 5000);
  assert.equal(r.net.metrics.rxDropped, 0);
  await r.close();
});

test('rx: buffers added between the device finding the ring empty and re-arming are not lost (EVENT_IDX)', async () => {
  const r = rig(undefined, F_VERSION_1 | F_RING_EVENT_IDX | MRG);
  const ring = r.d.rings[RXQ]!;
  const mem = r.d.mem;
  const read = mem.readU16.bind(mem);
  let armed = false;
  // A driver on another vCPU: right after the device reads avail = 2 (its two buffers used, the
  // ring empty), eight more buffers arrive. That driver read avail_event (never written: 0)
  // before the device re-armed, so vring_need_event says not to notify, and it does not.
  mem.readU16 = (addr) => {
    const v = read(addr);
    if (armed && Number(addr) === ring.avail + 2 && v === 2 && read(GA(ring.used + 2)) === 2) {
      armed = false;
      for (let i = 0; i < 8; i++) r.d.submit(RXQ, [{ writable: 2048 }], { notify: false });
    }
    return v;
  };
  r.d.submit(RXQ, [{ writable: 2048 }], { notify: false });
  r.d.submit(RXQ, [{ writable: 2048 }]);
  armed = true;
  for (let i = 0; i < 3; i++) r.peer.give(frame(pattern(1000, i)));
  await until(() => !armed, 'the device reading avail = 2 with both buffers used');
  await refillUntilDelivered(r, 3, 'the third frame delivered into the buffers added meanwhile', 3000);
  await r.close();
});

test('rx: an avail index that moves back and forth while the device re-arms breaks the queue, no spin', async () => {
  const r = rig(undefined, F_VERSION_1 | F_RING_EVENT_IDX | MRG);
  const ring = r.d.rings[RXQ]!;
  // one buffer, too small for the frame; then, every time the device writes avail_event, a
  // hostile driver moves avail (1 -> 0 -> 1 ...): the device sees "more arrived" each time
  r.d.submit(RXQ, [{ writable: 2048 }], { notify: false });
  let flip = 1;
  onAvailEventWrite(r.d, () => r.d.mem.writeU16(GA(ring.avail + 2), (flip ^= 1)), true);
  r.peer.give(frame(pattern(3000)));
  await until(() => (r.d.reg(REG.STATUS) & STATUS.DEVICE_NEEDS_RESET) !== 0, 'DEVICE_NEEDS_RESET');
  assert.equal(r.net.isPolling, false);
  await r.close();
});

test('rx: hostile chains (readable only, too short for the header, rejected) are completed with 0', async () => {
  const r = rig();
  r.d.submit(RXQ, [{ data: new Uint8Array(100) }], { notify: false }); // no writable buffer
  r.d.submit(RXQ, [{ writable: 4 }], { notify: false }); // no room for the header
  const ring = r.d.rings[RXQ]!;
  r.d.writeDesc(ring.desc, 200, 0xffff_0000, 64, 2, 0); // outside guest RAM
  r.d.publish(RXQ, 200, false);
  const good = r.d.submit(RXQ, [{ writable: 1536 }]);
  r.peer.give(frame(pattern(500)));
  await until(() => r.net.metrics.rxFrames === 1, 'a frame');
  const used = r.d.takeUsed(RXQ);
  assert.equal(used.length, 4);
  assert.deepEqual(used.filter((u) => u.len !== 0).map((u) => u.id), [good.head]);
  assert.equal(r.net.metrics.rejected, 3);
  await r.close();
});

test('rx: an avail index that jumps past the queue size breaks the device (needs reset), no crash', async () => {
  const r = rig();
  const ring = r.d.rings[RXQ]!;
  r.d.mem.writeU16(GA(ring.avail + 2), 5000);
  r.peer.give(frame(pattern(64)));
  await until(() => (r.d.reg(REG.STATUS) & STATUS.DEVICE_NEEDS_RESET) !== 0, 'DEVICE_NEEDS_RESET');
  assert.equal(r.net.isPolling, false);
  await r.close();
});

test('hot-replace slot: link down without a tap, attach -> link up + config interrupt, detach -> down', async () => {
  const poller = new Poller();
  const net = new VirtioNet({ backend: null, poller });
  const d = new TestDriver(net);
  d.init(F_VERSION_1 | net.features);
  assert.equal(new DataView(d.config(6, 2).buffer).getUint16(0, true), 0);
  d.submit(TXQ, [{ data: frame(pattern(60)) }]);
  assert.equal(d.takeUsed(TXQ).length, 1, 'tx without a tap completes (dropped)');
  assert.equal(net.metrics.txDropped, 1);
  d.ack();
  const peer = PairPeer.create();
  net.attach(peer.backend);
  assert.equal(new DataView(d.config(6, 2).buffer).getUint16(0, true), VIRTIO_NET_S_LINK_UP);
  assert.equal(d.ack() & INT_CONFIG_CHANGE, INT_CONFIG_CHANGE);
  assert.throws(() => net.attach(peer.backend), /already/);
  d.submit(RXQ, [{ writable: 1536 }]);
  peer.give(frame(pattern(80)));
  await until(() => net.metrics.rxFrames === 1, 'rx after attach');
  assert.equal(net.detach(), 'pair');
  assert.equal(new DataView(d.config(6, 2).buffer).getUint16(0, true), 0);
  assert.equal(net.isPolling, false);
  closeSync(peer.peerFd);
  net.close();
  await poller.close();
});

// ---- a real tap ------------------------------------------------------------------------------

test('a real tap in a private netns: Tap.open, TUNSETOFFLOAD, ARP and ping answered by the host stack', { skip: !canMakeTap() && 'needs root, /dev/net/tun and ip' }, async () => {
  const ns = `capsule-nt-${process.pid}`;
  const poller = new Poller();
  let net: VirtioNet | null = null;
  try {
    const name = `cnt${process.pid % 100000}`;
    const tap = tapInNamespace(ns, name, '10.0.2.1/24');
    assert.equal(tap.ifname, name);
    net = new VirtioNet({ backend: tap, poller, mac: '52:54:00:12:34:56' });
    const d = new TestDriver(net);
    d.init(F_VERSION_1 | net.features);
    assert.equal(tap.offloadFlags, TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN);
    const me = Buffer.from([0x52, 0x54, 0, 0x12, 0x34, 0x56]);
    const { arpReply, echoReply } = await arpAndPing(d, me, Buffer.from([10, 0, 2, 2]), Buffer.from([10, 0, 2, 1]));
    assert.deepEqual(arpReply.subarray(0, 6), me);
    assert.equal(echoReply.subarray(42).toString(), 'capsule-ping');
    assert.equal(net.metrics.txErrors, 0);
    // an fd that is not a tap is refused with a reason
    const nul = openSync('/dev/null', 'r');
    assert.throws(() => Tap.fromFd(nul, 'fd:x'), /not a tap fd/);
    closeSync(nul);
  } finally {
    net?.close();
    await poller.close();
    deleteNamespace(ns);
  }
});
