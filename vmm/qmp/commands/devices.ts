// QMP query-virtio (capsule's own): every virtio-mmio slot with its place in the guest (window,
// GSI), the driver's status, and the transport's and device's counters; and the machine's
// userspace exit count, so that "exits per I/O request" can be measured from outside.
import type { DeviceManager } from '../../devices/manager.js';
import type { QmpServer } from '../server.js';

export interface DeviceQueryDeps {
  devices: DeviceManager;
  /** IO/MMIO exits the main thread has served */
  exits: () => number;
}

export function register(qmp: Pick<QmpServer, 'register'>, deps: DeviceQueryDeps): void {
  qmp.register('query-virtio', () => ({
    exits: deps.exits(),
    devices: deps.devices.slots.map((s) => ({
      id: s.id,
      type: s.device.deviceType,
      addr: `0x${s.base.toString(16)}`,
      gsi: s.gsi,
      active: s.transport.isActive,
      transport: { ...s.transport.metrics },
      metrics: { ...((s.device as { metrics?: object }).metrics ?? {}) },
    })),
  }));
}
