// Snapshots of running VMs, pause-to-disk, and their deletion (docs/snapshots.md).
//
// Taking one, under the VM's lock: the guest is paused (if it ran), the hypervisor writes its
// state into a fresh directory (files the server opens and hands over), the VM's writable layer
// is copied as it stands (sparse; the paused guest writes nothing, and its unwritten page cache
// is part of the saved memory), the agent's secret is kept, the directory is renamed to its
// real name and the row inserted; then the guest runs on. Any failure removes the directory
// and resumes the guest: nothing half-written remains.
import { randomUUID } from 'node:crypto';
import { copyFileSync, existsSync, renameSync, rmSync, statfsSync, statSync } from 'node:fs';
import { join } from 'node:path';
import type { Logger } from 'pino';
import type { EventHub } from '../events/hub.js';
import type { Quotas } from '../tenants/quotas.js';
import { agentAnswer, noAnswer, type AgentClient } from '../agent/client.js';
import type { ImageStore } from '../db/images.js';
import type { Snapshot, SnapshotKind, SnapshotStore } from '../db/snapshots.js';
import type { Vm, VmStore } from '../db/vms.js';
import type { Supervisor } from '../supervisor/index.js';
import { snapshotTimeoutMs } from '../supervisor/components/snapshot.js';
import { ApiError } from '../supervisor/errors.js';
import type { LiveVmContext } from '../supervisor/components/types.js';
import { AGENT_TOKEN_FILE } from '../supervisor/components/agent.js';
import { copySparse, LAYER_FILE, MiB } from '../volumes/files.js';
import { listFiles, makePartialDir, snapshotDir, SNAPSHOT_AGENT_TOKEN_FILE, SNAPSHOT_LAYER_FILE } from './files.js';

export interface SnapshotServiceDeps {
  dataDir: string;
  /** Space the data directory keeps free (CAPSULE_MIN_FREE_MIB): a snapshot may not eat into it. */
  minFreeBytes: number;
  snapshots: SnapshotStore;
  vms: VmStore;
  images: ImageStore;
  supervisor: Supervisor;
  hub: EventHub;
  log: Logger;
  /** The tenants' quotas (snapshotMiB). */
  quotas?: Quotas | undefined;
  /** The guest agents' client: a restored guest's clock is set through it. */
  agent?: AgentClient | undefined;
}

/** How long a restored guest's agent has to answer before its clock is left as it is. */
const CLOCK_AGENT_WAIT_MS = 60_000;

export class SnapshotService {
  constructor(private readonly d: SnapshotServiceDeps) {}

  /** Snapshots a running or paused VM; it is left as it was (a running one is paused meanwhile). */
  create(vmId: string, name: string | undefined): Promise<Snapshot> {
    return this.take(vmId, name, (snapshot, vm) => {
      this.d.hub.publish(vm.id, 'SNAPSHOT_CREATED', { snapshot: snapshot.id, name: snapshot.name, sizeBytes: snapshot.sizeBytes });
    });
  }

  /**
   * A template's snapshot (docs/templates.md): `own` runs in the same turn as the row's insert,
   * so that the template holds it before any client could see it among its snapshots. No event.
   */
  createOwned(vmId: string, name: string, own: (snapshot: Snapshot) => void): Promise<Snapshot> {
    return this.take(vmId, name, own);
  }

  private take(vmId: string, name: string | undefined, taken: (snapshot: Snapshot, vm: Vm) => void): Promise<Snapshot> {
    return this.d.supervisor.withVm(vmId, async (vm, live) => {
      const ready = this.check(vm, live, 'snapshot');
      const snapshotName = name ?? `${vm.name}-${new Date().toISOString().replace(/[:.]/g, '-')}`;
      if (this.d.snapshots.nameTaken(vm.tenant, snapshotName)) throw new ApiError(409, 'conflict', `name: a snapshot named ${snapshotName} exists`, 'name');
      const id = randomUUID();
      const files = await this.write(id, vm, ready, { resume: vm.state === 'running' });
      const snapshot = this.insert(id, vm, snapshotName, files, 'user');
      taken(snapshot, vm);
      return snapshot;
    });
  }

  /**
   * Pause to disk: the VM's state is written (a hidden snapshot of its own), its VMM ended and
   * its memory freed; the VM is `stopped` with `restoreFrom` naming that state, and its resume
   * (or start) restores it, after which the state is deleted.
   */
  async suspend(vmId: string): Promise<Vm> {
    await this.d.supervisor.withVm(vmId, async (vm, live) => {
      const ready = this.check(vm, live, 'pause to disk');
      const id = randomUUID();
      const files = await this.write(id, vm, ready, { resume: false });
      this.insert(id, vm, `suspended-${vm.id}-${Date.now()}`, files, 'suspend');
      this.d.vms.setRestoreSnapshot(vm.id, id);
      this.d.hub.publish(vm.id, 'SUSPENDED', { sizeBytes: files.allocatedBytes });
      // A forced stop does not queue behind this lock: the VMM is ended now, the guest paused.
      await this.d.supervisor.stop(vm.id, true);
    });
    return this.d.vms.get(vmId)!;
  }

  /**
   * After a restore: the guest's clock is the snapshot's (behind by however long the snapshot
   * waited), so its agent, where it has one, sets it to the host's; a VM's pause-to-disk state
   * has served its one use.
   */
  restored(vmId: string, snapshotId: string): void {
    if (this.d.snapshots.getAny(snapshotId)?.kind === 'suspend') this.remove(snapshotId);
    if (this.d.agent?.hasAgent(vmId)) void this.correctClock(vmId, this.d.agent);
  }

  private async correctClock(vmId: string, agent: AgentClient): Promise<void> {
    try {
      const a = await agentAnswer(agent, vmId, CLOCK_AGENT_WAIT_MS);
      if (!a.ok) throw new Error(noAnswer(a, `the agent did not answer within ${CLOCK_AGENT_WAIT_MS / 1000} s`));
      const { movedMs } = await agent.setClock(vmId, Date.now());
      this.d.log.info({ vm: vmId, movedMs }, 'guest clock corrected after a restore');
    } catch (e) {
      this.d.log.warn({ vm: vmId, err: (e as Error).message }, 'could not correct the guest clock after a restore');
    }
  }

  /** A VM is deleted: its pause-to-disk state goes with it. */
  vmDeleted(vm: Vm): void {
    if (vm.restoreFrom !== undefined && this.d.snapshots.getAny(vm.restoreFrom)?.kind === 'suspend') this.remove(vm.restoreFrom);
  }

  /** What taking a snapshot of the VM needs: a running VMM of a backend that writes them, no volumes, room on disk. */
  private check(vm: Vm, live: LiveVmContext | undefined, what: string): LiveVmContext {
    if (!live || (vm.state !== 'running' && vm.state !== 'paused')) {
      throw new ApiError(409, 'invalid_state', `cannot ${what} VM ${vm.name} in state ${vm.state} (allowed from: running, paused)`);
    }
    const support = live.hypervisor.snapshotSupport();
    if (!support.available) throw new ApiError(409, 'snapshot_unsupported', `cannot ${what} VM ${vm.name}: ${support.reason}`);
    if (vm.drives.length > 0) {
      throw new ApiError(409, 'snapshot_unsupported', `cannot ${what} VM ${vm.name}: it has volumes attached (${vm.drives.map((d) => d.volumeName).join(', ')}); a snapshot holds the VM's own disks only: detach them first`);
    }
    const needMiB = this.checkSpace(vm);
    this.d.quotas?.checkSnapshot(vm.tenant, needMiB);
    return live;
  }

  private insert(id: string, vm: Vm, name: string, files: ReturnType<typeof listFiles>, kind: SnapshotKind): Snapshot {
    try {
      return this.d.snapshots.insert({
        id, tenant: vm.tenant, name, sourceVm: vm.id, hypervisor: vm.hypervisor, image: vm.image, vcpus: vm.vcpus, memoryMiB: vm.memoryMiB,
        definition: { ...(vm.cmdline !== undefined ? { cmdline: vm.cmdline } : {}), rng: vm.rng, balloon: vm.balloon, rootfsDevice: vm.rootfsDevice, network: { enabled: vm.network.enabled } },
        files: files.files, sizeBytes: files.allocatedBytes, kind,
      }, () => {
        // The name may have been taken by a snapshot of another VM while this one was written.
        if (this.d.snapshots.nameTaken(vm.tenant, name)) throw new ApiError(409, 'conflict', `name: a snapshot named ${name} exists`, 'name');
      });
    } catch (e) {
      rmSync(snapshotDir(this.d.dataDir, id), { recursive: true, force: true });
      throw e;
    }
  }

  private remove(id: string): void {
    this.d.snapshots.delete(id);
    rmSync(snapshotDir(this.d.dataDir, id), { recursive: true, force: true });
  }

  /** Deletes a snapshot no VM is still to restore from (a template's too: the template service's call). */
  delete(snapshot: Snapshot): void {
    const users = this.d.snapshots.restoringVms(snapshot.id);
    if (users.length > 0) {
      throw new ApiError(409, 'snapshot_in_use', `snapshot ${snapshot.name} is still to be restored by VM(s) ${users.map((u) => u.name).join(', ')}: start or delete them first`);
    }
    // The row first: a restore that starts now finds no snapshot rather than half its files.
    // (A VM restored earlier keeps what it mapped: the files' data lives until it lets go.)
    this.remove(snapshot.id);
  }

  /** 507 unless the data directory can take the guest's memory and the layer and keep its reserve; what the snapshot may take, MiB. */
  private checkSpace(vm: Vm): number {
    const layer = join(this.d.supervisor.paths(vm.id).dir, LAYER_FILE);
    const need = vm.memoryMiB * MiB + (existsSync(layer) ? statSync(layer).blocks * 512 : 0) + this.d.minFreeBytes;
    const st = statfsSync(this.d.dataDir);
    const free = st.bavail * st.bsize;
    if (free < need) {
      throw new ApiError(507, 'insufficient_storage', `the snapshot needs up to ${Math.ceil((need - this.d.minFreeBytes) / MiB)} MiB and the data directory has ${Math.floor(free / MiB)} MiB free (keeping ${Math.round(this.d.minFreeBytes / MiB)} MiB in reserve)`);
    }
    return Math.ceil((need - this.d.minFreeBytes) / MiB);
  }

  /** Writes the snapshot's directory; the guest is paused meanwhile, and resumed after if `resume` (or if writing failed and it ran). */
  private async write(id: string, vm: Vm, live: LiveVmContext, opts: { resume: boolean }): Promise<ReturnType<typeof listFiles>> {
    const dir = makePartialDir(this.d.dataDir, id);
    const wasRunning = vm.state === 'running';
    let written = false;
    const t0 = Date.now();
    try {
      if (wasRunning) await live.qmp.execute('stop');
      await live.hypervisor.saveSnapshot(live.qmp, dir, snapshotTimeoutMs(vm.memoryMiB));
      const layer = join(live.paths.dir, LAYER_FILE);
      if (existsSync(layer)) await copySparse(layer, join(dir, SNAPSHOT_LAYER_FILE), statSync(layer).size);
      const token = join(live.paths.dir, AGENT_TOKEN_FILE);
      if (existsSync(token)) copyFileSync(token, join(dir, SNAPSHOT_AGENT_TOKEN_FILE));
      const files = listFiles(dir);
      renameSync(dir, snapshotDir(this.d.dataDir, id));
      written = true;
      this.d.log.info({ vm: vm.id, snapshot: id, ms: Date.now() - t0, bytes: files.allocatedBytes }, 'snapshot written');
      return files;
    } catch (e) {
      rmSync(dir, { recursive: true, force: true });
      // The detail (host paths, the VMM's words) is the operator's: the server log.
      this.d.log.error({ vm: vm.id, snapshot: id, err: (e as Error).message }, 'snapshot failed');
      throw new ApiError(500, 'snapshot_failed', `the snapshot of VM ${vm.name} could not be written; the VM is as it was (details in the server log)`);
    } finally {
      if (wasRunning && (opts.resume || !written)) await live.qmp.execute('cont').catch((e: Error) => this.d.log.error({ vm: vm.id, err: e.message }, 'could not resume the VM after its snapshot'));
    }
  }
}
