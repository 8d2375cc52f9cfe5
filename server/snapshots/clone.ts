// A VM made from a snapshot (docs/snapshots.md): its image, CPUs, memory, hypervisor and devices
// are the snapshot's (the saved state depends on them); it gets its own copy of the snapshot's
// writable layer, so what it writes is its own and the snapshot's files never change. Used by
// POST /v1/vms {"fromSnapshot"} and by templates (their pools and restores).
import { join } from 'node:path';
import { mkdirSync, rmSync, statSync } from 'node:fs';
import type { Logger } from 'pino';
import type { Config } from '../config.js';
import type { ImageStore } from '../db/images.js';
import type { Snapshot } from '../db/snapshots.js';
import type { HypervisorName, Vm, VmStore } from '../db/vms.js';
import type { Hypervisor } from '../hypervisors/types.js';
import type { Quotas } from '../tenants/quotas.js';
import type { Supervisor } from '../supervisor/index.js';
import { checkDefinition } from '../supervisor/admission.js';
import { ApiError } from '../supervisor/errors.js';
import { copySparse, LAYER_FILE } from '../volumes/files.js';
import { snapshotDir, SNAPSHOT_LAYER_FILE } from './files.js';

export interface CloneDeps {
  config: Config;
  log: Logger;
  vms: VmStore;
  images: ImageStore;
  quotas: Quotas;
  supervisor: Supervisor;
  hypervisors: ReadonlyMap<HypervisorName, Hypervisor>;
}

/** What a VM made from a snapshot takes from its maker (the rest is the snapshot's). */
export interface FromSnapshotOptions {
  tenant: string;
  name: string;
  network?: { egress: boolean } | undefined;
  metadata?: Record<string, string> | undefined;
  timeoutSec?: number | undefined;
  onTimeout?: Vm['onTimeout'] | undefined;
  /** A VM of a template (docs/templates.md), kept by the server as `role` when set. */
  template?: string | undefined;
  role?: Vm['role'] | undefined;
}

/**
 * Defines a VM whose first start restores `snapshot` (a snapshot of `o.tenant`), with its own
 * copy of the snapshot's writable layer. Publishes nothing; nothing is left if it fails.
 */
export async function vmFromSnapshot(deps: CloneDeps, snapshot: Snapshot, o: FromSnapshotOptions): Promise<Vm> {
  if (!deps.images.get(snapshot.image)) throw new ApiError(409, 'image_missing', `snapshot ${snapshot.name}: its image ${snapshot.image} is no longer registered`);
  const backend = deps.hypervisors.get(snapshot.hypervisor);
  if (!backend?.availability().available) {
    throw new ApiError(409, 'hypervisor_unavailable', `snapshot ${snapshot.name} needs the ${snapshot.hypervisor} hypervisor, which is not available on this host`);
  }
  checkDefinition(snapshot, deps.config.admission);
  const def = snapshot.definition;
  const vm = deps.vms.create({
    tenant: o.tenant, name: o.name, image: snapshot.image, hypervisor: snapshot.hypervisor, vcpus: snapshot.vcpus, memoryMiB: snapshot.memoryMiB,
    cmdline: def.cmdline, rng: def.rng, balloon: def.balloon, rootfsDevice: def.rootfsDevice,
    network: { enabled: def.network.enabled, egress: o.network?.egress ?? true },
    metadata: o.metadata, timeoutSec: o.timeoutSec, onTimeout: o.onTimeout, restoreSnapshot: snapshot.id, template: o.template, role: o.role,
  }, () => {
    // The name may have been taken while a copy for another VM was being made.
    if (deps.vms.getByName(o.tenant, o.name)) throw new ApiError(409, 'conflict', `name: a VM named ${o.name} exists`, 'name');
    deps.quotas.checkNewVm(o.tenant);
  });
  // The row first: from now on the snapshot cannot be deleted under the copy (snapshot_in_use).
  const source = join(snapshotDir(deps.config.dataDir, snapshot.id), SNAPSHOT_LAYER_FILE);
  const vmDir = deps.supervisor.paths(vm.id).dir;
  try {
    const size = statSync(source, { throwIfNoEntry: false })?.size;
    if (size !== undefined) {
      mkdirSync(vmDir, { recursive: true, mode: 0o700 });
      await copySparse(source, join(vmDir, LAYER_FILE), size);
    }
  } catch (e) {
    deps.vms.delete(vm.id);
    rmSync(vmDir, { recursive: true, force: true });
    deps.log.error({ snapshot: snapshot.id, err: (e as Error).message }, 'copying a snapshot\'s layer failed');
    throw new ApiError(500, 'copy_failed', `the VM's copy of snapshot ${snapshot.name}'s disk could not be made (details in the server log)`);
  }
  return deps.vms.get(vm.id)!;
}
