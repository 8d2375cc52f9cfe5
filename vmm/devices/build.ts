// Turns the configuration's device sections into devices in the manager's slots, in a fixed
// order: drives (vda, vdb, … in command-line order), then the replaceable drive slots, then
// the rest: rng, vsock, balloon, virtio consoles (hvc0, … in command-line order), pmem devices (pmem0,
// … in command-line order), NICs; the replaceable net slot comes last of all. The order is the
// guest's enumeration order, so it must not depend on anything else.
import { BlkBackend, VirtioBlk } from './virtio/blk/device.js';
import { VirtioRng } from './virtio/rng/device.js';
import { VirtioVsock } from './virtio/vsock/device.js';
import { VirtioBalloon } from './virtio/balloon/device.js';
import { VirtioConsole } from './virtio/console/device.js';
import { VirtioPmem } from './virtio/pmem/device.js';
import { VirtioNet } from './virtio/net/device.js';
import { openNetBackend } from './virtio/net/tap.js';
import { VhostNet } from './virtio/net/vhost.js';
import type { NetConfig } from '../config/types.js';
import type { GuestMemory } from '../memory/guest-memory.js';
import { DeviceError, MAX_VIRTIO_SLOTS, type DeviceManager } from './manager.js';
import type { IoThread } from '../io/iothread.js';
import { IoThreadBlk } from './virtio/blk/iothread.js';
import { IoThreadNet } from './virtio/net/iothread.js';

export interface DriveOptions {
  id: string;
  file: string;
  serial?: string | undefined;
  readOnly: boolean;
  direct: boolean;
  noFlush: boolean;
  iops?: number | undefined;
  bps?: number | undefined;
  /** serve this disk's queue on that iothread */
  iothread?: string | undefined;
  /** 'threads' (the default without iothread): several requests at once on libuv's threadpool; 'inline': one at a time */
  aio?: 'inline' | 'threads' | undefined;
}

export interface DeviceOptions {
  drives: DriveOptions[];
  /** the VMM's iothreads by id (-iothread), started during init */
  iothreads?: ReadonlyMap<string, IoThread> | undefined;
  /** empty virtio-blk slots for QMP hot-replace */
  hotplugSlots: number;
  rng?: { file: string; bytesPerSec?: number | undefined } | undefined;
  balloon?: { deflateOnOom: boolean } | undefined;
  /** virtio consoles (hvc0, …): each on a Unix socket the VMM listens on (DeviceManager.start()) */
  consoles?: Array<{ id: string; path: string }> | undefined;
  /** read-only images mapped above RAM (/dev/pmem0, …) */
  pmems?: Array<{ id: string; file: string }> | undefined;
  /** -netdev: virtio-net on taps (guest memory is needed for vhost=on) */
  nets?: NetConfig[] | undefined;
  memory?: GuestMemory | undefined;
  vsock?: { id: string; guestCid: number; udsPath: string } | undefined;
}

/** The balloon's slot id (QMP balloon finds the device by it). */
export const BALLOON_ID = 'balloon0';

/** Replaceable drive slots are named so QMP can find them by position (device_add addr). */
export const hotSlotId = (n: number): string => `hotplug-blk-${n}`;
/** The replaceable net slot(s): `device_add {driver: "virtio-net-mmio", addr: "0xN"}` fills hotplug-net-N. */
export const hotNetSlotId = (n: number): string => `hotplug-net-${n}`;
/** Net slots reserved when -hotplug-slots > 0 (StratoVirt keeps 2; one covers replacing a NIC), if a slot is left. */
export const HOT_NET_SLOTS = 1;

export function buildDevices(devices: DeviceManager, opts: DeviceOptions): void {
  for (const d of opts.drives) {
    let backend: BlkBackend;
    try {
      backend = new BlkBackend(d);
    } catch (e) {
      throw new DeviceError(`-drive id=${d.id}: cannot open ${d.file}: ${(e as Error).message}`);
    }
    if (d.iothread) {
      const thread = opts.iothreads?.get(d.iothread);
      if (!thread) throw new DeviceError(`-drive id=${d.id}: no iothread '${d.iothread}'`);
      // the iothread blocks in epoll between requests, so a budget's retry timer could not run there
      if (d.iops !== undefined || d.bps !== undefined) throw new DeviceError(`-drive id=${d.id}: iops/bps cannot be combined with iothread= yet`);
      // the iothread blocks in epoll: no event loop there for threadpool completions
      if (d.aio === 'threads') throw new DeviceError(`-drive id=${d.id}: aio=threads cannot be combined with iothread= (an iothread serves one request at a time)`);
      devices.addVirtio(d.id, new IoThreadBlk(backend, thread, d.id));
    } else {
      devices.addVirtio(d.id, new VirtioBlk(backend, { io: d.aio === 'inline' ? 'sync' : 'async' }));
    }
  }
  for (let i = 0; i < opts.hotplugSlots; i++) devices.addVirtio(hotSlotId(i), new VirtioBlk(null, { replaceable: true, io: 'async' }));
  if (opts.rng) {
    try {
      devices.addVirtio('rng0', new VirtioRng(opts.rng));
    } catch (e) {
      throw new DeviceError(`-rng: cannot open ${opts.rng.file}: ${(e as Error).message}`);
    }
  }
  if (opts.vsock) devices.addVirtio(opts.vsock.id, new VirtioVsock({ guestCid: opts.vsock.guestCid, udsPath: opts.vsock.udsPath }));
  if (opts.balloon) devices.addVirtio(BALLOON_ID, new VirtioBalloon(devices.memory, opts.balloon));
  for (const c of opts.consoles ?? []) devices.addVirtio(c.id, new VirtioConsole(c.path));
  for (const p of opts.pmems ?? []) {
    let pmem: VirtioPmem;
    try {
      pmem = new VirtioPmem(p);
    } catch (e) {
      throw new DeviceError(`-device virtio-pmem,id=${p.id}: cannot map ${p.file}: ${(e as Error).message}`);
    }
    try {
      pmem.guestBase = devices.addDeviceMemory(p.id, pmem.size, pmem.hostAddr, pmem.readOnly).guestBase;
      devices.addVirtio(p.id, pmem);
    } catch (e) {
      pmem.close();
      throw e;
    }
  }
  for (const n of opts.nets ?? []) devices.addVirtio(n.id, buildNet(n, opts.memory, opts.iothreads));
  // last: the replaceable net slot takes what the configured devices leave of the 16 slots
  for (let i = 0; opts.hotplugSlots > 0 && i < HOT_NET_SLOTS && devices.slots.length < MAX_VIRTIO_SLOTS; i++) {
    devices.addVirtio(hotNetSlotId(i), new VirtioNet({ backend: null }));
  }
}

function buildNet(n: NetConfig, memory: GuestMemory | undefined, iothreads: ReadonlyMap<string, IoThread> | undefined): VirtioNet {
  const where = `-netdev id=${n.id}`;
  let thread: IoThread | undefined;
  if (n.iothread !== undefined) {
    thread = iothreads?.get(n.iothread);
    if (!thread) throw new DeviceError(`${where}: no iothread '${n.iothread}'`);
    // vhost-net moves the frames in the kernel: there is nothing left for an iothread to do
    if (n.vhost) throw new DeviceError(`${where}: vhost=on and iothread= exclude each other (with vhost the kernel moves the frames)`);
  }
  let backend;
  try {
    backend = openNetBackend(n);
  } catch (e) {
    throw new DeviceError(`${where}: ${(e as Error).message}`);
  }
  let vhost: VhostNet | null = null;
  if (n.vhost) {
    try {
      if (!memory) throw new Error('no guest memory');
      vhost = VhostNet.open(memory);
    } catch (e) {
      backend.close();
      throw new DeviceError(`${where},vhost=on: cannot set up vhost-net: ${(e as Error).message} (is the vhost_net module loaded?)`);
    }
  }
  if (thread) return new IoThreadNet(backend, thread, n.id, n.mac);
  return new VirtioNet({ backend, mac: n.mac, vhost });
}

/** Host-side listeners devices need (vsock's Unix socket): bound at init, before the seccomp filter. */
export async function startDevices(devices: DeviceManager): Promise<void> {
  for (const s of devices.slots) {
    if (!(s.device instanceof VirtioVsock)) continue;
    try {
      await s.device.listen();
    } catch (e) {
      throw new DeviceError(`-device vsock,id=${s.id}: cannot listen on ${s.device.opts.udsPath}: ${(e as Error).message}`);
    }
  }
}
