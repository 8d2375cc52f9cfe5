// Snapshots (docs/snapshots.md): what a VM needs to be snapshotted, and a VM made from a
// snapshot restored instead of booted.
//
//   prepare   a VMM of a backend that writes snapshots may write a file as large as the guest's
//             memory (its RLIMIT_FSIZE in the jail: the state goes into a file the server
//             opened for it). The VM's next start restores a snapshot (vm.restoreFrom): the snapshot must exist
//             and its files be whole (sizes as written), else the start is refused (409) before
//             any VMM runs; the launch plan says so (plan.restore: the VMM starts waiting for
//             the state, and the agent component keeps the snapshot's agent secret).
//   attach    the VMM runs the restored guest: the VM's next start boots normally.
//   cleanup   nothing is held.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { SnapshotStore } from '../../db/snapshots.js';
import type { VmStore } from '../../db/vms.js';
import { damage, snapshotDir, SNAPSHOT_AGENT_TOKEN_FILE } from '../../snapshots/files.js';
import { ApiError } from '../errors.js';
import type { LaunchContext, LaunchPlan, LiveVmContext, VmComponent } from './types.js';
import type { Hypervisor } from '../../hypervisors/types.js';
import type { QmpClient } from '../../qmp/client.js';
import { LaunchError } from '../spawn.js';

/** What a QEMU snapshot holds besides guest memory (device state; a few MiB), with room to spare. */
const STATE_OVERHEAD_BYTES = 64 * 1024 * 1024;

/** Time allowed to load or write a snapshot: a minute, and half a minute per GiB of guest memory. */
export function snapshotTimeoutMs(memoryMiB: number): number {
  return 60_000 + Math.ceil(memoryMiB / 1024) * 30_000;
}

/** Loads a snapshot into a VMM started to wait for one, and lets the guest run on. */
export async function restoreSnapshot(hypervisor: Hypervisor, qmp: QmpClient, dir: string, memoryMiB: number): Promise<void> {
  try {
    await hypervisor.loadSnapshot(qmp, dir, snapshotTimeoutMs(memoryMiB));
    await qmp.execute('cont');
  } catch (e) {
    qmp.close();
    // The VMM's reason goes to the client: it names what is wrong with the state (a checksum, a
    // CPUID or device mismatch), never a host path (the files came as fds).
    const why = (e as Error).message.replace(/\s+/g, ' ').slice(0, 600);
    throw new LaunchError(`the snapshot could not be loaded (damaged, or it does not fit this VMM): ${why}`, (e as Error).message);
  }
}

export interface SnapshotComponentDeps {
  dataDir: string;
  snapshots: SnapshotStore;
  vms: VmStore;
}

export class SnapshotComponent implements VmComponent {
  readonly name = 'snapshot';
  /** VMs whose VMM is launched to restore, and the snapshot each restores (until it is up). */
  private readonly restoring = new Map<string, string>();
  /** Told when a VM was restored (a pause-to-disk state is deleted then: the snapshot service's). */
  onRestored: (vmId: string, snapshotId: string) => void = () => undefined;

  constructor(private readonly d: SnapshotComponentDeps) {}

  prepare(ctx: LaunchContext, plan: LaunchPlan): void {
    if (ctx.snapshots) plan.minFileSizeBytes = Math.max(plan.minFileSizeBytes, ctx.vm.memoryMiB * 1024 * 1024 + STATE_OVERHEAD_BYTES);
    const id = ctx.vm.restoreFrom;
    if (id === undefined) return;
    const snapshot = this.d.snapshots.getAny(id);
    if (!snapshot) throw new ApiError(409, 'snapshot_missing', `VM ${ctx.vm.name} restores snapshot ${id}, which no longer exists`);
    const dir = snapshotDir(this.d.dataDir, id);
    const why = damage(dir, this.d.snapshots.files(id));
    if (why !== undefined) throw new ApiError(409, 'snapshot_damaged', `snapshot ${snapshot.name} cannot be restored: ${why}`);
    if (snapshot.hypervisor !== ctx.vm.hypervisor) {
      throw new ApiError(409, 'snapshot_incompatible', `snapshot ${snapshot.name} was written by the ${snapshot.hypervisor} hypervisor; this VM uses ${ctx.vm.hypervisor}`);
    }
    let agentToken: string | undefined;
    try {
      agentToken = readFileSync(join(dir, SNAPSHOT_AGENT_TOKEN_FILE), 'utf8').trim();
    } catch { /* the source VM had no agent secret */ }
    plan.restore = { snapshot: id, dir, ...(agentToken ? { agentToken } : {}) };
    plan.devices.incoming = true;
    this.restoring.set(ctx.vm.id, id);
  }

  attach(live: LiveVmContext): void {
    const snapshot = this.restoring.get(live.id);
    if (snapshot === undefined) return;
    this.restoring.delete(live.id);
    this.d.vms.setRestoreSnapshot(live.id, null);
    this.onRestored(live.id, snapshot);
  }

  cleanup(vmId: string): void {
    this.restoring.delete(vmId);
  }
}
