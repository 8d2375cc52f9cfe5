// Checks that span the device groups, once both sources are merged: ids unique across devices,
// iothreads defined before use, and the virtio-mmio slot budget (devices + hot-replace slots).
import { ConfigError } from './options.js';
import { DEFAULT_HOTPLUG_SLOTS, MAX_VIRTIO_DEVICES } from './groups/hotplug.js';
import type { Settings } from './settings.js';

interface DeviceRef { id: string; label: string; iothread?: string | undefined }

/** Every virtio device of the settings, labelled as on the command line. */
function devices(s: Settings): DeviceRef[] {
  return [
    ...(s.drives ?? []).map((d) => ({ id: d.id, label: `-drive id=${d.id}`, iothread: d.iothread })),
    ...(s.nets ?? []).map((n) => ({ id: n.id, label: `-netdev id=${n.id}`, iothread: n.iothread })),
    ...(s.vsock ? [{ id: s.vsock.id, label: `-device vsock,id=${s.vsock.id}` }] : []),
    ...(s.pmems ?? []).map((p) => ({ id: p.id, label: `-device virtio-pmem,id=${p.id}` })),
    ...(s.virtconsoles ?? []).map((c) => ({ id: c.id, label: `-device virtconsole,id=${c.id}` })),
    // rng and balloon have no id: they still take a slot
    ...(s.rng ? [{ id: '', label: '-rng' }] : []),
    ...(s.balloon ? [{ id: '', label: '-balloon' }] : []),
  ];
}

function checkUnique(ids: Array<{ id: string; label: string }>, what: string): void {
  const seen = new Map<string, string>();
  for (const d of ids) {
    if (d.id === '') continue;
    const first = seen.get(d.id);
    if (first !== undefined) throw new ConfigError(`${d.label}: ${what} id '${d.id}' is already used by ${first} (ids must be unique)`);
    seen.set(d.id, d.label);
  }
}

/** Checks the devices and returns the number of hot-replace slots to reserve. */
export function checkDevices(s: Settings): number {
  const devs = devices(s);
  checkUnique(devs, 'device');
  const iothreads = (s.iothreads ?? []).map((t) => t.id);
  checkUnique(iothreads.map((id) => ({ id, label: `-iothread id=${id}` })), 'iothread');
  for (const d of devs) {
    if (d.iothread !== undefined && !iothreads.includes(d.iothread)) {
      throw new ConfigError(`${d.label}: iothread '${d.iothread}' is not defined (defined: ${iothreads.join(', ') || 'none'}; add -iothread id=${d.iothread})`);
    }
  }
  const room = MAX_VIRTIO_DEVICES - devs.length;
  if (room < 0) throw new ConfigError(`too many virtio devices: ${devs.length} configured, at most ${MAX_VIRTIO_DEVICES} (MAX_VIRTIO_DEVICES)`);
  if (s.hotplugSlots === undefined) return Math.min(DEFAULT_HOTPLUG_SLOTS, room);
  if (s.hotplugSlots > room) {
    throw new ConfigError(`-hotplug-slots: ${s.hotplugSlots} slots and ${devs.length} virtio device(s) exceed the limit of ${MAX_VIRTIO_DEVICES} ` +
      `(MAX_VIRTIO_DEVICES); at most ${room} slots are left`);
  }
  return s.hotplugSlots;
}
