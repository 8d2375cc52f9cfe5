// Turns the configuration's device sections into devices in the manager's slots, in a fixed
// order: drives (vda, vdb, … in command-line order), then the replaceable drive slots, then
// the rest: rng, balloon, virtio consoles (hvc0, … in command-line order), pmem devices (pmem0,
// … in command-line order). The order is the guest's enumeration order, so it must not depend
// on anything else.
import { BlkBackend, VirtioBlk } from './virtio/blk/device.js';
import { VirtioRng } from './virtio/rng/device.js';
import { VirtioBalloon } from './virtio/balloon/device.js';
import { VirtioConsole } from './virtio/console/device.js';
import { VirtioPmem } from './virtio/pmem/device.js';
import { DeviceError, type DeviceManager } from './manager.js';

export interface DriveOptions {
  id: string;
  file: string;
  serial?: string | undefined;
  readOnly: boolean;
  direct: boolean;
  noFlush: boolean;
  iops?: number | undefined;
  bps?: number | undefined;
}

export interface DeviceOptions {
  drives: DriveOptions[];
  /** empty virtio-blk slots for QMP hot-replace */
  hotplugSlots: number;
  rng?: { file: string; bytesPerSec?: number | undefined } | undefined;
  balloon?: { deflateOnOom: boolean } | undefined;
  /** virtio consoles (hvc0, …): each on a Unix socket the VMM listens on (DeviceManager.start()) */
  consoles?: Array<{ id: string; path: string }> | undefined;
  /** read-only images mapped above RAM (/dev/pmem0, …) */
  pmems?: Array<{ id: string; file: string }> | undefined;
}

/** The balloon's slot id (QMP balloon finds the device by it). */
export const BALLOON_ID = 'balloon0';

/** Replaceable drive slots are named so QMP can find them by position (device_add addr). */
export const hotSlotId = (n: number): string => `hotplug-blk-${n}`;

export function buildDevices(devices: DeviceManager, opts: DeviceOptions): void {
  for (const d of opts.drives) {
    let backend: BlkBackend;
    try {
      backend = new BlkBackend(d);
    } catch (e) {
      throw new DeviceError(`-drive id=${d.id}: cannot open ${d.file}: ${(e as Error).message}`);
    }
    devices.addVirtio(d.id, new VirtioBlk(backend));
  }
  for (let i = 0; i < opts.hotplugSlots; i++) devices.addVirtio(hotSlotId(i), new VirtioBlk(null, true));
  if (opts.rng) {
    try {
      devices.addVirtio('rng0', new VirtioRng(opts.rng));
    } catch (e) {
      throw new DeviceError(`-rng: cannot open ${opts.rng.file}: ${(e as Error).message}`);
    }
  }
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
}
