// virtio-net hot-replace over QMP against real devices in a DeviceManager (no guest): netdev_add
// with a getfd'd fd, device_add into the net slot (link up), device_del (DEVICE_DELETED before the
// reply, link down), and the refusals. A real tap fd where this host allows one (root,
// /dev/net/tun); a socketpair otherwise, which is refused as "not a tap".
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { spawnSync } from 'node:child_process';
import { QmpServer } from '../server.js';
import { QmpClient } from '../../testing/clients.js';
import { GuestMemory } from '../../memory/guest-memory.js';
import { DeviceManager } from '../../devices/manager.js';
import { buildDevices, hotNetSlotId } from '../../devices/build.js';
import { VirtioNet } from '../../devices/virtio/net/device.js';
import { Tap } from '../../devices/virtio/net/tap.js';
import { datagramPair } from '../../devices/virtio/net/testing.js';
import { closeFd } from '../../kvm/sys.js';
import { register as registerHotplug } from './hotplug.js';

const canTap = process.getuid?.() === 0 && existsSync('/dev/net/tun') && spawnSync('ip', ['-V']).status === 0;

test('net hot-replace: netdev_add fd, device_add virtio-net-mmio, device_del -> DEVICE_DELETED {device, path: id}', async () => {
  const path = join(mkdtempSync(join(tmpdir(), 'qmp-net-')), 'qmp.sock');
  const qmp = new QmpServer({ path });
  const devices = new DeviceManager(GuestMemory.fromBuffers(4 << 20), () => () => {});
  buildDevices(devices, { drives: [], hotplugSlots: 2 });
  assert.deepEqual(devices.slots.map((s) => s.id), ['hotplug-blk-0', 'hotplug-blk-1', 'hotplug-net-0']);
  const fds = new Map<string, number>();
  registerHotplug(qmp, { devices, fds });
  await qmp.listen();
  const c = await QmpClient.connect(path);
  const net = devices.slot(hotNetSlotId(0))?.device as VirtioNet;
  let ns: string | null = null;
  try {
    assert.equal(net.linkUp, false);
    const slots = await c.execute('query-hotplug-slots') as Array<Record<string, string>>;
    assert.deepEqual(slots.map((s) => `${s.driver}@${s.addr}`), ['virtio-blk-mmio@0x0', 'virtio-blk-mmio@0x1'], 'drive slots only');
    const nets = async (): Promise<Array<Record<string, unknown>>> => await c.execute('x-query-net-metrics') as Array<Record<string, unknown>>;
    assert.deepEqual((await nets()).map((n) => [n.id, n.tap, n.link]), [['hotplug-net-0', null, false]]);

    const desc = async (cmd: string, args: Record<string, unknown>): Promise<string> => String(((await c.call(cmd, args)).error as { desc?: string } | undefined)?.desc);
    assert.match(await desc('netdev_add', { id: 'n0' }), /exactly one of 'ifname' and 'fd'/);
    assert.match(await desc('netdev_add', { id: 'n0', ifname: 'a/b' }), /ifname/);
    assert.match(await desc('netdev_add', { id: 'n0', fd: 'nope' }), /'nope' not found.*getfd/);
    const [a, b] = datagramPair();
    fds.set('sock', a);
    assert.match(await desc('netdev_add', { id: 'n0', fd: 'sock' }), /not a tap fd/);
    assert.equal(fds.get('sock'), a, 'a refused fd stays with its getfd name');
    closeFd(a);
    closeFd(b);
    fds.delete('sock');
    assert.match(await desc('device_add', { id: 'n0', driver: 'virtio-net-mmio', addr: '0x0' }), /netdev_add it first/);
    assert.match(await desc('device_add', { id: 'n0', driver: 'e1000', addr: '0x0' }), /cannot be hot-replaced.*virtio-net-mmio/);

    if (!canTap) return;
    // a tap opened elsewhere (here: by this process) and handed over like a getfd'd fd
    ns = `capsule-qn-${process.pid}`;
    spawnSync('ip', ['netns', 'add', ns]);
    const name = `cqn${process.pid % 100000}`;
    const tap = Tap.open(name);
    spawnSync('ip', ['link', 'set', name, 'netns', ns]);
    fds.set('tapfd', tap.fd);
    await c.execute('netdev_add', { id: 'n0', fd: 'tapfd' });
    assert.equal(fds.has('tapfd'), false, 'the device owns the fd now');
    assert.match(await desc('netdev_add', { id: 'n0', fd: 'tapfd' }), /Duplicate ID/);
    assert.match(await desc('device_add', { id: 'n0', driver: 'virtio-net-mmio', addr: '0x1' }), /out of range/);
    await c.execute('device_add', { id: 'n0', driver: 'virtio-net-mmio', addr: '0x0' });
    assert.equal(net.linkUp, true);
    assert.equal(net.backendName, 'fd:tapfd');
    const after = (await nets())[0] as Record<string, unknown>;
    assert.deepEqual([after.id, after.device, after.tap, after.link], ['hotplug-net-0', 'n0', 'fd:tapfd', true]);
    // the stall diagnostics: no frame waiting, no queue view while no driver has activated the NIC
    assert.deepEqual([after.pendingBytes, after.queues, after.interruptStatus], [0, [], 0]);
    assert.match(await desc('netdev_del', { id: 'n0' }), /in use by a device/);
    // the event comes before the reply
    const seen: string[] = [];
    const ev = c.event('DEVICE_DELETED').then((e) => { seen.push('event'); return e; });
    const reply = c.call('device_del', { id: 'n0' }).then((r) => { seen.push('reply'); return r; });
    assert.deepEqual((await reply).return, {});
    assert.deepEqual((await ev).data, { device: 'n0', path: 'n0' });
    assert.deepEqual(seen, ['event', 'reply']);
    assert.equal(net.linkUp, false);
    assert.match(await desc('device_del', { id: 'n0' }), /not found/);
  } finally {
    c.close();
    await qmp.close();
    devices.close();
    if (ns) spawnSync('ip', ['netns', 'del', ns]);
  }
});
