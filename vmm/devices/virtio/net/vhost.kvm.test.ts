// vhost-net without a guest: the driver stand-in's rings live in real mmap'ed "guest" memory
// (GuestMemory.create), VhostNet hands them to the kernel with a real tap in a private network
// namespace, and the kernel moves an ARP request and a ping out and the replies back into the rx
// ring; the call eventfd comes back through the Poller as a used-ring interrupt. A driver reset
// stops the rings, a second activation restarts them. Needs root and /dev/vhost-net (the nested
// lab has both: scripts/kvm-tests.sh runs it there; no KVM is involved).
import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { GuestAddress as GA, GuestMemory } from '../../../memory/guest-memory.js';
import { waitFor } from '../../../testing/clients.js';
import { Poller } from '../../../io/poller.js';
import { F_RING_EVENT_IDX, F_RING_INDIRECT_DESC, F_VERSION_1, STATUS } from '../../../virtio/constants.js';
import { REG } from '../../../virtio/mmio.js';
import { TEST_MEM_SIZE, TestDriver } from '../../../virtio/testing/driver.js';
import { VirtioNet } from './device.js';
import { NET_F } from './sys.js';
import { arpAndPing, canMakeTap, deleteNamespace, tapInNamespace } from './testing.js';
import { VhostNet, VHOST_NET_PATH } from './vhost.js';

/** where TestDriver puts its rings: 1 MiB, 64 KiB per queue */
const RING_AREA = 1 << 20;
const RING_AREA_SIZE = 2 * (64 << 10);

before(() => {
  if (!existsSync('/dev/net/tun')) spawnSync('modprobe', ['tun']);
  if (!existsSync(VHOST_NET_PATH)) spawnSync('modprobe', ['vhost_net']);
});

// Opt-in, like net.kvm.test's vhost part: in the nested lab the ring set-up works but the
// kernel's call eventfd is not reliably seen within the test's time (one run failed twice in a
// full `npm test`), and vhost-net with a real guest panics the lab's L1 kernel.
const usable = (): string | false => (process.env.CAPSULE_TEST_VHOST !== '1' ? 'set CAPSULE_TEST_VHOST=1 to run the vhost-net test'
  : !canMakeTap() ? 'needs root, /dev/net/tun and ip' : !existsSync(VHOST_NET_PATH) ? `no ${VHOST_NET_PATH}` : false);

test('vhost-net moves ARP and ping between the rings and a tap; reset stops it, a new activation restarts it', async (t) => {
  const why = usable();
  if (why) {
    t.skip(why);
    return;
  }
  const ns = `capsule-vh-${process.pid}`;
  const mem = GuestMemory.create({ size: TEST_MEM_SIZE });
  const poller = new Poller();
  let net: VirtioNet | null = null;
  try {
    const tap = tapInNamespace(ns, `cvh${process.pid % 100000}`, '10.0.2.1/24');
    const vhost = VhostNet.open(mem, { poller });
    assert.ok(vhost.kernelFeatures & (1n << 32n), 'vhost-net offers VIRTIO_F_VERSION_1');
    net = new VirtioNet({ backend: tap, vhost, poller, mac: '52:54:00:12:34:57' });
    const d = new TestDriver(net, mem);
    const me = Buffer.from([0x52, 0x54, 0, 0x12, 0x34, 0x57]);
    for (const [round, features] of [[1, F_VERSION_1 | F_RING_EVENT_IDX | F_RING_INDIRECT_DESC], [2, F_VERSION_1]] as const) {
      // a driver's rings are fresh zeroed memory (Linux allocates them at probe); vhost takes its
      // used index from the ring, so a stand-in reusing the old rings must clear them
      d.mem.fill(GA(RING_AREA), RING_AREA_SIZE, 0);
      const st = d.init(features | net.features);
      assert.ok(st & STATUS.DRIVER_OK, `round ${round}: status 0x${st.toString(16)}`);
      assert.equal(st & STATUS.DEVICE_NEEDS_RESET, 0, `round ${round}: activation failed`);
      assert.ok(vhost.isRunning, `round ${round}: vhost started`);
      const before = vhost.calledBack;
      const { arpReply, echoReply } = await arpAndPing(d, me, Buffer.from([10, 0, 2, 2]), Buffer.from([10, 0, 2, 1]));
      assert.deepEqual(arpReply.subarray(0, 6), me);
      assert.equal(echoReply.subarray(42).toString(), 'capsule-ping');
      // the used ring is filled before the call eventfd's wake-up reaches the main thread
      await waitFor(() => vhost.calledBack > before || undefined, 5000, `round ${round}: the kernel's call eventfd`);
      assert.ok(d.irqEdges > 0 || d.irqLevel, `round ${round}: interrupts reached the driver`);
      assert.equal(net.metrics.txFrames, 0, 'the VMM itself moved no frame');
      console.log(`vhost round ${round} (features 0x${(features | net.features).toString(16)}): ARP + ping answered, ${vhost.calledBack} call(s)`);
      d.setReg(REG.STATUS, 0);
      assert.equal(vhost.isRunning, false, `round ${round}: a driver reset stops the rings`);
      d.resetData();
    }
    assert.ok(net.features & (1n << BigInt(NET_F.MRG_RXBUF)), 'mergeable rx buffers offered with vhost');
  } finally {
    net?.close();
    await poller.close();
    deleteNamespace(ns);
    mem.close();
  }
});
