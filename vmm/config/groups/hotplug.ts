// -hotplug-slots N: virtio-mmio slots left empty at boot for QMP hot-replace; JSON "hotplug-slots".
import { KeyTable, uint } from '../options.js';
import { settingsGroup } from '../group.js';

/** virtio-mmio devices on x86_64, hot-replace slots included (StratoVirt's limit) */
export const MAX_VIRTIO_DEVICES = 16;
export const DEFAULT_HOTPLUG_SLOTS = 4;

export const HOTPLUG_KEYS = new KeyTable({
  hotplugSlots: uint({ cli: '-hotplug-slots', json: 'hotplug-slots', min: 0, max: MAX_VIRTIO_DEVICES }),
});

export const hotplugGroup = settingsGroup({
  table: HOTPLUG_KEYS,
  options: { hotplugSlots: `empty virtio-mmio slots for QMP hot-replace, 0-${MAX_VIRTIO_DEVICES} (default ${DEFAULT_HOTPLUG_SLOTS}, fewer if the devices leave less room)` },
});
