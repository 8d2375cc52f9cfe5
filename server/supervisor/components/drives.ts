// Drives: volumes (and an image's rootfs with the VM's own writable layer) as virtio-blk disks.
//
//   prepare   the disks in guest order (rootfs ro, layer rw, then the VM's drives), each file
//             checked; jailed: an ACL entry for the VMM's uid on each volume and layer file
//             (access.ts), RLIMIT_FSIZE at least the largest writable disk.
//   attach /  watch QMP for DEVICE_DELETED: a drive being detached is released (block node,
//   reattach  jail bind, ACL entry, definition row) when the guest lets it go.
//   cleanup   revoke the VMM's ACL entries; drives still attaching or detaching are done with
//             (the VMM that held them is gone).
//
// Hot-plug (attachDrive / beginDetach) runs under the supervisor's per-VM lock; waiting for the
// guest to release a drive does not (the API waits on the promise beginDetach returns).
import { existsSync, mkdirSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import type { Logger } from 'pino';
import type { EventHub } from '../../events/hub.js';
import type { Image, ImageStore } from '../../db/images.js';
import type { Vm } from '../../db/vms.js';
import { publicDrive, type Drive, type DriveCache, type DriveRow, type VolumeStore } from '../../db/volumes.js';
import type { DriveSpec } from '../../hypervisors/types.js';
import type { Jail } from '../../jail/index.js';
import { QmpError } from '../../qmp/client.js';
import type { QmpEvent } from '../../../lib/qmp-wire.js';
import { setFileAccess, type Grant } from '../../volumes/access.js';
import { createWritableLayer } from '../../images/layer.js';
import { LAYER_FILE, LAYER_SIZE_BYTES, MiB, volumePath } from '../../volumes/files.js';
import { ApiError } from '../errors.js';
import type { LaunchContext, LaunchPlan, LiveVmContext, VmComponent } from './types.js';

/** What a client asks for, the volume given by id or name. */
export interface DriveRequest {
  volume: string;
  readOnly?: boolean | undefined;
  cache?: DriveCache | undefined;
  iops?: number | undefined;
}

/** The kernel arguments that tell an image's initramfs where its root and overlay are. */
export const ROOTFS_KERNEL_ARGS = ['root=/dev/vda', 'capsule.overlay=/dev/vdb'];
/** The same with the rootfs as persistent memory: the layer is then the first disk. */
export const PMEM_ROOTFS_KERNEL_ARGS = ['root=/dev/pmem0', 'capsule.overlay=/dev/vda'];

/** Disks an image with a rootfs puts before the VM's drives: rootfs and layer, or the layer alone. */
function systemDisks(vm: Vm, image: Image | undefined): number {
  if (!image?.rootfs) return 0;
  return vm.rootfsDevice === 'pmem' ? 1 : 2;
}

export interface DrivesDeps {
  dataDir: string;
  volumes: VolumeStore;
  images: ImageStore;
  hub: EventHub;
  jail?: Jail | undefined;
  log: Logger;
}

interface Detaching {
  promise: Promise<void>;
  resolve: () => void;
}

export class DrivesComponent implements VmComponent {
  readonly name = 'drives';
  /** Per jailed VMM: its uid and the files it may open (by drive id: path, writable). */
  private readonly grants = new Map<string, { uid: number; files: Map<string, { path: string; write: boolean }> }>();
  private readonly live = new Map<string, LiveVmContext>();
  /** Per running VMM: the RLIMIT_FSIZE it runs under. */
  private readonly fileSizeLimits = new Map<string, number>();
  private readonly detaching = new Map<string, Detaching>();

  constructor(private readonly d: DrivesDeps) {}

  // ---- definitions ----

  /**
   * Resolves and checks the drives asked for (at VM creation, or one hot-plugged): each volume
   * must exist and belong to the VM's tenant (another tenant's is "not found", like an unknown
   * one: 404 naming the field); one volume may be attached writable to one VM only, and not read-only
   * elsewhere at the same time; read-only sharing is allowed. `field` names the request field
   * (drives.N.volume, or volume). Throws 404 / 409 volume_in_use.
   */
  resolve(tenant: string, vmId: string | undefined, requests: readonly DriveRequest[], field: (i: number) => string): Array<{ volume: string; readOnly: boolean; cache: DriveCache; iops?: number | undefined }> {
    const existing = vmId ? this.d.volumes.drives(vmId) : [];
    const resolved: Array<{ volume: string; name: string; readOnly: boolean; cache: DriveCache; iops?: number | undefined }> = [];
    requests.forEach((r, i) => {
      const vol = this.d.volumes.resolve(tenant, r.volume);
      if (!vol) throw new ApiError(404, 'not_found', `${field(i)}: no volume with id or name ${JSON.stringify(r.volume)}`, field(i));
      const readOnly = r.readOnly ?? false;
      const mine = [...existing.filter((d) => d.volume === vol.id), ...resolved.filter((d) => d.volume === vol.id)];
      if (mine.length > 0 && (!readOnly || mine.some((d) => !d.readOnly))) {
        throw new ApiError(409, 'volume_in_use', `${field(i)}: volume ${vol.name} is already a drive of this VM; a volume may appear twice only read-only`, field(i));
      }
      const others = vol.attachments.filter((a) => a.vm !== vmId);
      const blocking = readOnly ? others.filter((a) => !a.readOnly) : others;
      if (blocking.length > 0) {
        const a = blocking[0]!;
        throw new ApiError(409, 'volume_in_use',
          `${field(i)}: volume ${vol.name} is attached ${a.readOnly ? 'read-only' : 'writable'} to VM ${a.vmName} (${a.drive}); ${readOnly ? 'a writable volume is not shared' : 'a writable attachment needs the volume to itself'}`, field(i));
      }
      resolved.push({ volume: vol.id, name: vol.name, readOnly, cache: r.cache ?? 'writeback', iops: r.iops });
    });
    return resolved.map(({ name: _n, ...d }) => d);
  }

  /**
   * A new VM of an image with a rootfs gets its writable layer in vms/<id>/: a 2 GiB sparse file
   * formatted ext4 on the host (server/images/layer.ts: ~30 ms, ~2 MiB of disk; the guest would
   * otherwise format it on its first boot, slowly under TCG).
   */
  createLayer(image: Image, vmDir: string): void {
    if (!image.rootfs) return;
    mkdirSync(vmDir, { recursive: true, mode: 0o700 });
    createWritableLayer(join(vmDir, LAYER_FILE), LAYER_SIZE_BYTES);
  }

  // ---- the four steps ----

  prepare(ctx: LaunchContext, plan: LaunchPlan): void {
    const { vm, image, paths } = ctx;
    const disks: DriveSpec[] = [];
    const files = new Map<string, { path: string; write: boolean }>();
    let largestWritable = 0;
    if (image.rootfs) {
      if (!existsSync(image.rootfs)) throw new ApiError(409, 'image_missing', `image ${image.name}: its root filesystem is missing on the host`);
      const layer = join(paths.dir, LAYER_FILE);
      // A VM defined before its image got a rootfs (or whose layer was lost) gets a fresh one.
      if (!existsSync(layer)) createWritableLayer(layer, LAYER_SIZE_BYTES);
      const pmem = vm.rootfsDevice === 'pmem';
      if (pmem) plan.devices.pmem = [{ id: 'rootfs', path: image.rootfs, sizeBytes: statSync(image.rootfs).size }];
      else disks.push({ id: 'rootfs', path: image.rootfs, readOnly: true, cache: 'writeback', index: 0 });
      disks.push({ id: 'layer', path: layer, readOnly: false, cache: 'writeback', index: disks.length });
      files.set('layer', { path: layer, write: true });
      largestWritable = LAYER_SIZE_BYTES;
      // The image's command line names its disks (root=/dev/vda ...); with pmem they move, and
      // the later root= and capsule.overlay= win (the kernel's and the initramfs's parsing both).
      // A VM's own command line that names the overlay is the client's choice and stays.
      if (!vm.cmdline?.includes('capsule.overlay=') && (pmem || !image.cmdline.includes('capsule.overlay='))) {
        plan.devices.kernelArgs.push(...(pmem ? PMEM_ROOTFS_KERNEL_ARGS : ROOTFS_KERNEL_ARGS));
      }
    }
    const base = disks.length;
    for (const d of this.d.volumes.drives(vm.id)) {
      if (d.state !== 'attached') continue; // left over from a VMM that went away mid-way: cleanup drops them
      const path = volumePath(this.d.dataDir, d.volume);
      if (!existsSync(path)) throw new ApiError(409, 'volume_missing', `drive ${d.id}: the file of volume ${d.volumeName} is missing on the host`);
      disks.push(this.spec(d, path, base));
      files.set(d.id, { path, write: !d.readOnly });
      if (!d.readOnly) largestWritable = Math.max(largestWritable, d.sizeBytes);
    }
    plan.devices.drives.push(...disks);
    plan.minFileSizeBytes = Math.max(plan.minFileSizeBytes, largestWritable);
    if (ctx.jailUid !== undefined) {
      this.grants.set(vm.id, { uid: ctx.jailUid, files });
      for (const f of files.values()) this.sync(f.path);
    }
    this.fileSizeLimits.set(vm.id, this.d.jail?.fileSizeLimit(plan.minFileSizeBytes) ?? plan.minFileSizeBytes);
  }

  attach(live: LiveVmContext): void {
    this.live.set(live.id, live);
    live.qmp.on('event', (ev: QmpEvent) => {
      if (ev.event !== 'DEVICE_DELETED' || typeof ev.data.device !== 'string') return;
      const device = ev.data.device;
      const row = this.d.volumes.drive(live.id, device);
      if (row?.state === 'detaching') void this.finish(live, row);
    });
  }

  reattach(live: LiveVmContext): void {
    // Rebuild the grants and the file size limit the VMM was started with (or raised to).
    const files = new Map<string, { path: string; write: boolean }>();
    let largest = 0;
    const layer = join(live.paths.dir, LAYER_FILE);
    if (existsSync(layer)) {
      files.set('layer', { path: layer, write: true });
      largest = LAYER_SIZE_BYTES;
    }
    for (const d of this.d.volumes.drives(live.id)) {
      files.set(d.id, { path: volumePath(this.d.dataDir, d.volume), write: !d.readOnly });
      if (!d.readOnly) largest = Math.max(largest, d.sizeBytes);
    }
    if (live.jailUid !== undefined) {
      this.grants.set(live.id, { uid: live.jailUid, files });
      for (const f of files.values()) this.sync(f.path);
    }
    this.fileSizeLimits.set(live.id, this.d.jail?.fileSizeLimit(largest) ?? largest);
    this.attach(live);
  }

  cleanup(vmId: string): void {
    const held = this.grants.get(vmId);
    this.grants.delete(vmId);
    this.live.delete(vmId);
    this.fileSizeLimits.delete(vmId);
    // Paths this VM may hold grants on (also after a server restart, when `held` is unknown).
    const paths = new Set<string>(held ? [...held.files.values()].map((f) => f.path) : []);
    for (const d of this.d.volumes.drives(vmId)) {
      paths.add(volumePath(this.d.dataDir, d.volume));
      if (d.state !== 'attached') {
        // The VMM that was taking or releasing it is gone: the attach failed, the detach is done.
        this.d.volumes.removeDrive(vmId, d.id);
        if (d.state === 'detaching') this.d.hub.publish(vmId, 'DRIVE_DETACHED', { drive: d.id });
        this.resolveDetach(vmId, d.id);
      }
    }
    for (const p of paths) this.sync(p);
  }

  // ---- hot-plug ----

  /**
   * Adds a drive to a VM: to its definition when it is not running (it gets the drive at its
   * next start), hot-plugged when it runs (and kept in the definition: it is there again after
   * a restart). Throws 409 invalid_state while the VM is starting or stopping.
   */
  async attachDrive(vm: Vm, live: LiveVmContext | undefined, req: DriveRequest): Promise<Drive> {
    const [resolved] = this.resolve(vm.tenant, vm.id, [req], () => 'volume');
    if (!live) {
      if (!['created', 'stopped', 'crashed'].includes(vm.state)) throw stateError(vm, 'attach a drive to');
      const [row] = this.d.volumes.addDrives(vm.id, [resolved!]);
      this.d.hub.publish(vm.id, 'DRIVE_ATTACHED', { drive: publicDrive(row!) });
      return publicDrive(row!);
    }
    if (vm.state !== 'running' && vm.state !== 'paused') throw stateError(vm, 'attach a drive to');
    // Reserved before the first await: a concurrent request sees this attachment.
    const [row] = this.d.volumes.addDrives(vm.id, [resolved!], 'attaching');
    const hostPath = volumePath(this.d.dataDir, row!.volume);
    let bound = false;
    try {
      if (!existsSync(hostPath)) throw new ApiError(409, 'volume_missing', `volume ${row!.volumeName}: its file is missing on the host`);
      let path = hostPath;
      if (live.jailUid !== undefined && this.d.jail) {
        // QEMU opens the file by path: grant its uid access and bind it into the root. The native
        // VMM gets an fd the server opened, so neither is needed; the file size limit is (writes
        // through the fd still count against it).
        if (live.hypervisor.hotplugNeedsPath) {
          const g = this.grants.get(vm.id) ?? { uid: live.jailUid, files: new Map() };
          g.files.set(row!.id, { path: hostPath, write: !row!.readOnly });
          this.grants.set(vm.id, g);
          this.sync(hostPath);
          path = join('/', this.d.jail.bindDrive(live.pid, live.paths.root, row!.id, hostPath, row!.readOnly));
          bound = true;
        }
        const limit = this.fileSizeLimits.get(vm.id) ?? 0;
        if (!row!.readOnly && row!.sizeBytes > limit) {
          try {
            this.d.jail.raiseFileSizeLimit(live.pid, row!.sizeBytes);
          } catch (e) {
            this.d.log.warn({ vm: vm.id, err: (e as Error).message }, 'cannot raise the VMM\'s file size limit for a hot-plugged drive');
            throw new ApiError(409, 'file_size_limit',
              `volume ${row!.volumeName} (${row!.sizeBytes / MiB} MiB) is larger than the files this running VMM may write (${limit / MiB} MiB) and the server cannot raise its limit (no CAP_SYS_RESOURCE): attach it read-only, or attach it while the VM is stopped`);
          }
          this.fileSizeLimits.set(vm.id, row!.sizeBytes);
        }
      }
      const image = this.d.images.get(vm.image);
      await live.hypervisor.attachDrive(live.qmp, this.spec(row!, path, systemDisks(vm, image)));
      this.d.volumes.setDriveState(vm.id, row!.id, 'attached');
    } catch (e) {
      if (bound) this.d.jail?.unbindDrive(live.pid, live.paths.root, row!.id);
      this.grants.get(vm.id)?.files.delete(row!.id);
      this.sync(hostPath);
      this.d.volumes.removeDrive(vm.id, row!.id);
      if (e instanceof ApiError) throw e;
      // QEMU's message may name the host path (unjailed): the client gets the volume's name.
      const msg = (e as Error).message.split(hostPath).join(`volume ${row!.volumeName}`);
      this.d.log.error({ vm: vm.id, drive: row!.id, err: (e as Error).message }, 'drive hot-plug failed');
      throw new ApiError(e instanceof QmpError ? 409 : 500, 'attach_failed', `the VMM did not take the drive: ${msg}`);
    }
    const attached = publicDrive(this.d.volumes.drive(vm.id, row!.id)!);
    this.d.hub.publish(vm.id, 'DRIVE_ATTACHED', { drive: attached });
    return attached;
  }

  /**
   * Removes a drive: at once from a VM that is not running; from a running VM, asks the guest
   * to release it (device_del) and returns a promise that settles when it did (DEVICE_DELETED)
   * and the drive is gone. Meanwhile the drive is listed with state "detaching".
   */
  async beginDetach(vm: Vm, live: LiveVmContext | undefined, driveId: string): Promise<{ released: Promise<void> } | undefined> {
    const row = this.d.volumes.drive(vm.id, driveId);
    if (!row) throw new ApiError(404, 'not_found', `VM ${vm.name} has no drive ${driveId}`);
    if (!live) {
      if (!['created', 'stopped', 'crashed'].includes(vm.state)) throw stateError(vm, 'detach a drive from');
      this.d.volumes.removeDrive(vm.id, driveId);
      this.d.hub.publish(vm.id, 'DRIVE_DETACHED', { drive: driveId });
      return undefined;
    }
    if (vm.state !== 'running' && vm.state !== 'paused') throw stateError(vm, 'detach a drive from');
    if (row.state === 'attaching') throw new ApiError(409, 'invalid_state', `drive ${driveId} is still being attached`);
    const key = `${vm.id}/${driveId}`;
    let waiter = this.detaching.get(key);
    if (!waiter) {
      let resolve!: () => void;
      const promise = new Promise<void>((r) => { resolve = r; });
      waiter = { promise, resolve };
      this.detaching.set(key, waiter);
    }
    const first = row.state !== 'detaching';
    if (first) this.d.volumes.setDriveState(vm.id, driveId, 'detaching');
    try {
      await live.hypervisor.detachDrive(live.qmp, driveId);
    } catch (e) {
      if (e instanceof QmpError && e.qmpClass === 'DeviceNotFound') {
        // The VMM has no such device (a hot-plug the server did not see finish): nothing to wait for.
        await this.finish(live, { ...row, state: 'detaching' });
      } else if (first) {
        this.d.volumes.setDriveState(vm.id, driveId, 'attached');
        this.detaching.delete(key);
        throw new ApiError(409, 'detach_failed', `the VMM refused to release ${driveId}: ${(e as Error).message}`);
      }
      // A repeated request while the first device_del is pending: keep waiting for it.
    }
    // Wrapped: an async function returning the promise itself would wait for it (and hold the VM's lock).
    return { released: waiter.promise };
  }

  /** The guest released the drive: drop its block node, its bind, its grant and its row. */
  private async finish(live: LiveVmContext, row: DriveRow): Promise<void> {
    await live.hypervisor.releaseDrive(live.qmp, row.id).catch(() => undefined);
    if (live.jailUid !== undefined && live.hypervisor.hotplugNeedsPath) this.d.jail?.unbindDrive(live.pid, live.paths.root, row.id);
    this.grants.get(live.id)?.files.delete(row.id);
    this.sync(volumePath(this.d.dataDir, row.volume));
    if (this.d.volumes.removeDrive(live.id, row.id)) this.d.hub.publish(live.id, 'DRIVE_DETACHED', { drive: row.id });
    this.resolveDetach(live.id, row.id);
  }

  private resolveDetach(vmId: string, driveId: string): void {
    const key = `${vmId}/${driveId}`;
    this.detaching.get(key)?.resolve();
    this.detaching.delete(key);
  }

  private spec(d: DriveRow, path: string, base: number): DriveSpec {
    const n = Number(/^drive-(\d+)$/.exec(d.id)?.[1] ?? d.position);
    return { id: d.id, path, readOnly: d.readOnly, cache: d.cache, iops: d.iops, index: base + n };
  }

  /** Sets a file's ACL to exactly the grants of the running jailed VMMs that hold it. */
  private sync(path: string): void {
    const grants: Grant[] = [];
    for (const g of this.grants.values()) for (const f of g.files.values()) if (f.path === path) grants.push({ uid: g.uid, write: f.write });
    try {
      setFileAccess(path, grants);
    } catch (e) {
      if ((e as { code?: string }).code === 'ENOENT') return;
      // Without the grant a jailed VMM cannot open the file; the start or hot-plug then fails
      // and says so. Revoking that fails leaves an entry for a uid whose VMM is gone.
      this.d.log.error({ path, err: (e as Error).message }, 'setting a disk file\'s ACL failed');
      if (grants.length > 0) throw new ApiError(500, 'disk_access_failed', 'the server could not give the VMM access to a disk file (a POSIX ACL on the data directory\'s filesystem); see the server log');
    }
  }
}

function stateError(vm: Vm, what: string): ApiError {
  return new ApiError(409, 'invalid_state', `cannot ${what} VM ${vm.name} in state ${vm.state}`);
}

/** Removes a VM's layer (the VM directory goes with the VM; this is for a failed creation). */
export function removeLayer(vmDir: string): void {
  rmSync(join(vmDir, LAYER_FILE), { force: true });
}
