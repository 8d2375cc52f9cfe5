// Turns the configuration's device sections into devices in the manager's slots, in a fixed
// order: drives (vda, vdb, … in command-line order), then the replaceable drive slots, then
// the rest (rng, then vsock). The order is the guest's enumeration order, so it must not depend on
// anything else.
import { BlkBackend, VirtioBlk } from './virtio/blk/device.js';
import { VirtioRng } from './virtio/rng/device.js';
import { VirtioVsock } from './virtio/vsock/device.js';
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
  vsock?: { id: string; guestCid: number; udsPath: string } | undefined;
}

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
  if (opts.vsock) devices.addVirtio(opts.vsock.id, new VirtioVsock({ guestCid: opts.vsock.guestCid, udsPath: opts.vsock.udsPath }));
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
