// QMP hot-replace of virtio-net (the StratoVirt guidebook 3.4.2): the VMM reserves an empty net
// slot at boot (link down, build.ts hotplug-net-N) and puts a tap into it or takes it away.
//   netdev_add {id, ifname: TAP}   opens the tap by name. Under the seccomp filter opening
//                                  /dev/net/tun is refused (openat EPERM): send the tap's fd with
//                                  getfd and give {id, fd: NAME} instead; the fd must be a tap
//                                  opened IFF_TAP|IFF_NO_PI|IFF_VNET_HDR (QEMU's vnet_hdr=on)
//   device_add {id, driver: "virtio-net-mmio", addr: "0xN"}   puts it in net slot N: link up and
//                                  a config-change interrupt (the guest's ethX gets its carrier)
//   device_del {id}                link down, the tap is closed; DEVICE_DELETED {device: id,
//                                  path: id} is sent, then the reply
//   netdev_del {id}                closes a tap opened but never attached
//   x-query-net-metrics            every virtio-net device (the net slots included: hotplug-net-N,
//                                  with the device id and tap in it), its link and counters
// device_add/device_del are registered by hotplug.ts, which hands net requests to this module.
import type { DeviceManager } from '../../devices/manager.js';
import { hotNetSlotId } from '../../devices/build.js';
import { VirtioNet } from '../../devices/virtio/net/device.js';
import { IoThreadNet } from '../../devices/virtio/net/iothread.js';
import { Tap } from '../../devices/virtio/net/tap.js';
import { QmpError, type QmpServer } from '../server.js';

export interface NetHotplugDeps {
  devices: DeviceManager;
  fds: Map<string, number>;
}

export const NET_DRIVER = 'virtio-net-mmio';

const err = (msg: string): QmpError => new QmpError('GenericError', msg);

function str(args: Record<string, unknown>, key: string): string {
  const v = args[key];
  if (typeof v !== 'string' || v === '') throw err(`Parameter '${key}' is missing`);
  return v;
}

export interface NetHotplug {
  /** device_add with driver virtio-net-mmio */
  deviceAdd(args: Record<string, unknown>, slotNumber: (v: unknown, slots: number) => number): Record<string, never>;
  /** true if `id` is an attached net device */
  has(id: string): boolean;
  /** device_del of an attached net device: the event, then the reply */
  deviceDel(id: string): Record<string, never>;
}

export function register(qmp: QmpServer, deps: NetHotplugDeps): NetHotplug {
  /** taps opened by netdev_add, waiting for device_add */
  const pending = new Map<string, Tap>();
  const attached = new Map<string, { slot: number; net: VirtioNet; tap: string }>();
  const netSlots = (): number => deps.devices.slots.filter((s) => s.id.startsWith('hotplug-net-')).length;
  const netAt = (n: number): VirtioNet => deps.devices.slot(hotNetSlotId(n))?.device as VirtioNet;

  qmp.register('netdev_add', (args) => {
    const id = str(args, 'id');
    if (pending.has(id) || attached.has(id) || deps.devices.slot(id)) throw err(`Duplicate ID '${id}' for netdev`);
    const ifname = args.ifname;
    const fdName = args.fd;
    if ((ifname === undefined) === (fdName === undefined)) throw err("netdev_add needs exactly one of 'ifname' and 'fd'");
    let tap: Tap;
    if (fdName !== undefined) {
      if (typeof fdName !== 'string' || fdName === '') throw err("Parameter 'fd' expects the name of an fd sent with getfd");
      const fd = deps.fds.get(fdName);
      if (fd === undefined) throw err(`File descriptor named '${fdName}' not found (send it with getfd first)`);
      try {
        tap = Tap.fromFd(fd, `fd:${fdName}`);
      } catch (e) {
        throw err(`Cannot use fd '${fdName}': ${(e as Error).message}`);
      }
      // the tap owns the fd now: the getfd name is released without closing it
      deps.fds.delete(fdName);
    } else {
      if (typeof ifname !== 'string' || !/^[^/:\s]{1,15}$/.test(ifname)) throw err("Parameter 'ifname' expects a tap name of 1-15 characters");
      try {
        tap = Tap.open(ifname);
      } catch (e) {
        const denied = (e as NodeJS.ErrnoException).code === 'EPERM'
          ? ' (the seccomp filter forbids opening /dev/net/tun: open the tap elsewhere, send it with getfd and use netdev_add {"fd": NAME})' : '';
        throw err(`Could not open tap '${ifname}': ${(e as Error).message}${denied}`);
      }
    }
    pending.set(id, tap);
    return {};
  });

  qmp.register('netdev_del', (args) => {
    const id = str(args, 'id');
    const tap = pending.get(id);
    if (!tap) throw err(attached.has(id) ? `netdev '${id}' is in use by a device (device_del it first)` : `netdev '${id}' not found`);
    tap.close();
    pending.delete(id);
    return {};
  });

  qmp.register('x-query-net-metrics', async () => await Promise.all(deps.devices.slots.filter((s) => s.device instanceof VirtioNet).map(async (s) => {
    const net = s.device as VirtioNet;
    const t = s.transport.metrics;
    const hot = [...attached.entries()].find(([, a]) => a.net === net);
    return {
      id: s.id, ...(hot ? { device: hot[0] } : {}), tap: net.backendName ?? null, link: net.linkUp, polling: net.isPolling,
      ...net.metrics, interrupts: t.interrupts, notifications: t.notifications, interruptStatus: Atomics.load(s.transport.interruptWord, 0),
      // on an iothread the main thread's transport counts neither; the worker's view of its queues instead
      ...(net instanceof IoThreadNet
        ? { iothread: await net.inspect().catch((e: Error) => e.message) }
        : { pendingBytes: net.pendingBytes, queues: s.transport.isActive ? s.transport.queueViews() : [] }),
    };
  })));

  return {
    deviceAdd(args, slotNumber) {
      const id = str(args, 'id');
      if (attached.has(id)) throw err(`Duplicate device ID '${id}'`);
      const tap = pending.get(id);
      if (!tap) throw err(`no netdev '${id}': netdev_add it first (its id must equal the device id)`);
      const slots = netSlots();
      if (slots === 0) throw err('this VM has no replaceable net slot (-hotplug-slots 0, or all 16 virtio slots in use)');
      const n = slotNumber(args.addr, slots);
      if ([...attached.values()].some((a) => a.slot === n)) throw err(`addr 0x${n.toString(16)} is taken`);
      try {
        netAt(n).attach(tap);
      } catch (e) {
        throw err(`Cannot attach '${id}': ${(e as Error).message}`);
      }
      pending.delete(id);
      attached.set(id, { slot: n, net: netAt(n), tap: tap.name });
      return {};
    },
    has: (id) => attached.has(id),
    deviceDel(id) {
      const a = attached.get(id);
      if (!a) throw new QmpError('DeviceNotFound', `Device '${id}' not found`);
      a.net.detach();
      attached.delete(id);
      // the guidebook's net event names the device as its path
      qmp.event('DEVICE_DELETED', { device: id, path: id });
      return {};
    },
  };
}
