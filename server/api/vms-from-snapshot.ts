// POST /v1/vms {"name","fromSnapshot"}: a VM whose first start restores a snapshot
// (docs/snapshots.md). Its image, CPUs, memory, hypervisor and devices are the snapshot's (the
// saved state depends on them); it gets its own copy of the snapshot's writable layer, so what
// it writes is its own and the snapshot's files never change.
import type { Context } from 'hono';
import type { z } from '@hono/zod-openapi';
import { ApiError } from '../supervisor/errors.js';
import { callerToken } from '../auth/middleware.js';
import type { Vm } from '../db/vms.js';
import { vmFromSnapshot } from '../snapshots/clone.js';
import type { CreateVmFromSnapshotSchema } from './schemas.js';
import type { AppDeps } from './app.js';

export async function createFromSnapshot(deps: AppDeps, c: Context, body: z.infer<typeof CreateVmFromSnapshotSchema>): Promise<Vm> {
  // The caller's tenant's VM, from the caller's tenant's snapshot (an admin's too: a snapshot
  // holds a guest's memory, which must not move between tenants).
  const tenant = callerToken(c).tenantId;
  c.set('resourceTenant', tenant);
  const snapshot = deps.snapshots.resolve(tenant, body.fromSnapshot);
  if (!snapshot) throw new ApiError(404, 'not_found', `fromSnapshot: no snapshot with id or name ${JSON.stringify(body.fromSnapshot)}`, 'fromSnapshot');
  if (deps.vms.getByName(tenant, body.name)) throw new ApiError(409, 'conflict', `name: a VM named ${body.name} exists`, 'name');
  const vm = await vmFromSnapshot(deps, snapshot, { ...body, tenant });
  deps.hub.publish(vm.id, 'VM_CREATED', vm as unknown as Record<string, unknown>);
  return vm;
}
