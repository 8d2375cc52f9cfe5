// QMP device hot-replace (the StratoVirt guidebook 3.4): microvm has no PCI hot-plug, so the VMM
// reserves empty virtio-blk slots at boot (-hotplug-slots) and fills or empties them here.
//   blockdev-add {node-name, file:{driver:"file", filename}, cache:{direct}, read-only}  opens the file
//     (under the seccomp filter the VMM cannot open files: pass the image with getfd first and give
//     filename "fd:NAME"; the path form works with -disable-seccomp)
//   device_add {id: node-name, driver:"virtio-blk-mmio", addr:"0xN"}                     puts it in slot N
//   device_del {id}   empties the slot: DEVICE_DELETED {device, path} is sent, then the reply
//   blockdev-del {node-name}  closes a file opened but never attached
// The guest notices through a config-change interrupt: its disk's capacity goes from 0 to the
// file's size (and back to 0 on removal).
// virtio-net slots (netdev_add, device_add driver "virtio-net-mmio") live in net-hotplug.ts.
import type { DeviceManager } from '../../devices/manager.js';
import { hotSlotId } from '../../devices/build.js';
import { BlkBackend, VirtioBlk } from '../../devices/virtio/blk/device.js';
import { QmpError, type QmpServer } from '../server.js';
import { NET_DRIVER, register as registerNet } from './net-hotplug.js';

export interface HotplugDeps {
  devices: DeviceManager;
  /** fds received with getfd, by name: an "fd:NAME" filename takes its fd from here */
  fds: Map<string, number>;
}

const err = (msg: string): QmpError => new QmpError('GenericError', msg);

function str(args: Record<string, unknown>, key: string): string {
  const v = args[key];
  if (typeof v !== 'string' || v === '') throw err(`Parameter '${key}' is missing`);
  return v;
}

function bool(v: unknown, key: string): boolean {
  if (v === undefined) return false;
  if (typeof v !== 'boolean') throw err(`Parameter '${key}' expects a boolean`);
  return v;
}

/** An optional positive integer budget (iops, bps), as -drive accepts them. */
function limit(v: unknown, key: string): number | undefined {
  if (v === undefined) return undefined;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 1 || v > 2 ** 40) throw err(`Parameter '${key}' must be an integer in 1-${2 ** 40}`);
  return v;
}

/** "0x1", "1" or 1 → slot number. */
function slotNumber(v: unknown, slots: number): number {
  const n = typeof v === 'number' ? v : typeof v === 'string' && /^(0x[0-9a-f]+|\d+)$/i.test(v) ? Number(v) : NaN;
  if (!Number.isInteger(n)) throw err(`Parameter 'addr' expects a slot number such as "0x0" (got ${JSON.stringify(v)})`);
  if (n < 0 || n >= slots) throw err(`addr ${String(v)} is out of range: this VM has ${slots} hot-replace slot(s), 0x0-0x${Math.max(0, slots - 1).toString(16)}`);
  return n;
}

export function register(qmp: QmpServer, deps: HotplugDeps): void {
  /** Files opened by blockdev-add, waiting for device_add. */
  const pending = new Map<string, BlkBackend>();
  /** Which device id sits in which slot. */
  const attached = new Map<string, { slot: number; blk: VirtioBlk; file: string }>();
  const hotSlots = (): number => deps.devices.slots.filter((s) => s.id.startsWith('hotplug-blk-')).length;
  const blkAt = (n: number): VirtioBlk => deps.devices.slot(hotSlotId(n))?.device as VirtioBlk;
  const net = registerNet(qmp, deps);

  qmp.register('blockdev-add', (args) => {
    const node = str(args, 'node-name');
    if (pending.has(node) || attached.has(node) || deps.devices.slot(node)) throw err(`node-name '${node}' is already in use`);
    const file = args.file as Record<string, unknown> | undefined;
    if (!file || typeof file !== 'object') throw err("Parameter 'file' is missing");
    if (file.driver !== undefined && file.driver !== 'file') throw err(`file.driver '${String(file.driver)}' is not supported (only 'file')`);
    const filename = str(file, 'filename');
    const cache = (args.cache ?? {}) as Record<string, unknown>;
    let fd: number | undefined;
    if (filename.startsWith('fd:')) {
      fd = deps.fds.get(filename.slice(3));
      if (fd === undefined) throw err(`File descriptor named '${filename.slice(3)}' not found (send it with getfd first)`);
    }
    let backend: BlkBackend;
    try {
      backend = new BlkBackend({
        file: filename,
        fd,
        readOnly: bool(args['read-only'], 'read-only'),
        direct: bool(cache.direct, 'cache.direct'),
        noFlush: bool(cache['no-flush'], 'cache.no-flush'),
        iops: limit(args.iops, 'iops'),
        bps: limit(args.bps, 'bps'),
      });
    } catch (e) {
      const denied = (e as NodeJS.ErrnoException).code === 'EPERM' ? ' (the seccomp filter forbids opening files: pass the file with getfd and use filename "fd:NAME")' : '';
      throw err(`Could not open '${filename}': ${(e as Error).message}${denied}`);
    }
    // the backend owns the fd now: getfd's name is released without closing it
    if (fd !== undefined) deps.fds.delete(filename.slice(3));
    pending.set(node, backend);
    return {};
  });

  qmp.register('blockdev-del', (args) => {
    const node = str(args, 'node-name');
    const b = pending.get(node);
    if (!b) throw err(attached.has(node) ? `Node '${node}' is in use by a device (device_del it first)` : `Failed to find node with node-name='${node}'`);
    b.close();
    pending.delete(node);
    return {};
  });

  qmp.register('device_add', (args) => {
    const id = str(args, 'id');
    const driver = str(args, 'driver');
    if (driver === NET_DRIVER) return net.deviceAdd(args, slotNumber);
    if (driver !== 'virtio-blk-mmio') throw err(`driver '${driver}' cannot be hot-replaced (supported: virtio-blk-mmio, ${NET_DRIVER})`);
    if (attached.has(id)) throw err(`Duplicate device ID '${id}'`);
    const backend = pending.get(id);
    if (!backend) throw err(`no block node '${id}': blockdev-add it first (node-name must equal the device id)`);
    const n = slotNumber(args.addr, hotSlots());
    if ([...attached.values()].some((a) => a.slot === n)) throw err(`addr 0x${n.toString(16)} is taken`);
    blkAt(n).attach(backend);
    pending.delete(id);
    attached.set(id, { slot: n, blk: blkAt(n), file: backend.opts.file });
    return {};
  });

  qmp.register('device_del', async (args) => {
    const id = str(args, 'id');
    if (net.has(id)) return net.deviceDel(id);
    const a = attached.get(id);
    if (!a) throw new QmpError('DeviceNotFound', `Device '${id}' not found`);
    const { drained } = a.blk.detachDrained();
    attached.delete(id);
    // the file is the caller's again once DEVICE_DELETED says so: no write of ours may follow
    // (only this file's requests: a new file in the slot does not hold the event back)
    await drained;
    qmp.event('DEVICE_DELETED', { device: id, path: a.file });
    return {};
  });

  // drive slots only (callers pick "the first free one" for a disk); net slots: x-query-net-metrics
  qmp.register('query-hotplug-slots', () => Array.from({ length: hotSlots() }, (_, n) => {
    const a = [...attached.entries()].find(([, v]) => v.slot === n);
    return { addr: `0x${n.toString(16)}`, driver: 'virtio-blk-mmio', ...(a ? { id: a[0], path: a[1].file } : {}) };
  }));
}

