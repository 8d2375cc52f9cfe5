// POST /v1/vms {"name","fromSnapshot"}: a VM whose first start restores a snapshot
// (docs/snapshots.md). Its image, CPUs, memory, hypervisor and devices are the snapshot's (the
// saved state depends on them); it gets its own copy of the snapshot's writable layer, so what
// it writes is its own and the snapshot's files never change.
import { join } from 'node:path';
import { mkdirSync, rmSync, statSync } from 'node:fs';
import type { Context } from 'hono';
import type { z } from '@hono/zod-openapi';
import { ApiError } from '../supervisor/errors.js';
import { checkDefinition } from '../supervisor/admission.js';
import { callerToken } from '../auth/middleware.js';
import type { Vm } from '../db/vms.js';
import { snapshotDir, SNAPSHOT_LAYER_FILE } from '../snapshots/files.js';
import { copySparse, LAYER_FILE } from '../volumes/files.js';
import type { CreateVmFromSnapshotSchema } from './schemas.js';
import type { AppDeps } from './app.js';

export async function createFromSnapshot(deps: AppDeps, c: Context, body: z.infer<typeof CreateVmFromSnapshotSchema>): Promise<Vm> {
  // The caller's tenant's VM, from the caller's tenant's snapshot (an admin's too: a snapshot
  // holds a guest's memory, which must not move between tenants).
  const tenant = callerToken(c).tenantId;
  c.set('resourceTenant', tenant);
  const snapshot = deps.snapshots.resolve(tenant, body.fromSnapshot);
  if (!snapshot) throw new ApiError(404, 'not_found', `fromSnapshot: no snapshot with id or name ${JSON.stringify(body.fromSnapshot)}`, 'fromSnapshot');
  if (!deps.images.get(snapshot.image)) throw new ApiError(409, 'image_missing', `snapshot ${snapshot.name}: its image ${snapshot.image} is no longer registered`);
  const backend = deps.hypervisors.get(snapshot.hypervisor);
  if (!backend?.availability().available) {
    throw new ApiError(409, 'hypervisor_unavailable', `snapshot ${snapshot.name} needs the ${snapshot.hypervisor} hypervisor, which is not available on this host`);
  }
  checkDefinition(snapshot, deps.config.admission);
  if (deps.vms.getByName(tenant, body.name)) throw new ApiError(409, 'conflict', `name: a VM named ${body.name} exists`, 'name');
  const def = snapshot.definition;
  const vm = deps.vms.create({
    tenant, name: body.name, image: snapshot.image, hypervisor: snapshot.hypervisor, vcpus: snapshot.vcpus, memoryMiB: snapshot.memoryMiB,
    cmdline: def.cmdline, rng: def.rng, balloon: def.balloon, rootfsDevice: def.rootfsDevice,
    network: { enabled: def.network.enabled, egress: body.network?.egress ?? true },
    metadata: body.metadata, timeoutSec: body.timeoutSec, onTimeout: body.onTimeout, restoreSnapshot: snapshot.id,
  }, () => deps.quotas.checkNewVm(tenant));
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
  const created = deps.vms.get(vm.id)!;
  deps.hub.publish(vm.id, 'VM_CREATED', created as unknown as Record<string, unknown>);
  return created;
}
