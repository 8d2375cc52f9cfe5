// /v1/snapshots and POST /v1/vms/:id/snapshot (docs/snapshots.md): saved VMs, server-side
// resources of a tenant. A client names a snapshot by id or name and never sees its files.
import { createRoute, z } from '@hono/zod-openapi';
import type { Context } from 'hono';
import { ApiError } from '../supervisor/errors.js';
import type { Snapshot, SnapshotStore } from '../db/snapshots.js';
import { CreateSnapshotSchema, ErrorSchema, IdParams, json, SnapshotSchema, TenantQuery } from './schemas.js';
import { lookupOwned, ownership, visibleTenant } from './ownership.js';
import { newRouter, type AppDeps } from './app.js';

const errors = {
  400: json(ErrorSchema, 'invalid request'),
  401: json(ErrorSchema, 'missing or invalid token'),
  403: json(ErrorSchema, 'token scope too small'),
  404: json(ErrorSchema, 'no such snapshot or VM (another tenant\'s is not found either)'),
  409: json(ErrorSchema, 'conflict (name taken), invalid_state, snapshot_unsupported, snapshot_in_use'),
  429: json(ErrorSchema, 'rate limited'),
};

const take = createRoute({
  method: 'post', path: '/vms/{id}/snapshot', tags: ['snapshots'],
  summary: 'Snapshot a running or paused VM: its memory, devices and disks as they are now (a running VM is paused for the copy and resumed). POST /v1/vms {"fromSnapshot"} restores it.',
  request: { params: IdParams, body: { required: false, content: { 'application/json': { schema: CreateSnapshotSchema } } } },
  responses: { 201: json(SnapshotSchema, 'written'), ...errors, 500: json(ErrorSchema, 'snapshot_failed: nothing was kept, the VM is as it was'), 507: json(ErrorSchema, 'the data directory has no room for it') },
});
const list = createRoute({ method: 'get', path: '/snapshots', tags: ['snapshots'], summary: 'The tenant\'s snapshots (an admin: all, or ?tenant=), oldest first', request: { query: TenantQuery }, responses: { 200: json(z.object({ items: z.array(SnapshotSchema) }), 'snapshots'), ...errors } });
const get = createRoute({ method: 'get', path: '/snapshots/{id}', tags: ['snapshots'], summary: 'A snapshot (by id or name)', request: { params: IdParams }, responses: { 200: json(SnapshotSchema, 'the snapshot'), ...errors } });
const del = createRoute({
  method: 'delete', path: '/snapshots/{id}', tags: ['snapshots'], summary: 'Delete a snapshot that no VM is still to restore from (VMs restored from it earlier run on)',
  request: { params: IdParams }, responses: { 204: { description: 'deleted' }, ...errors },
});

/** A snapshot by id or name as the caller sees it: a tenant's own; an admin's any by id. */
const lookupSnapshot = (snapshots: SnapshotStore, c: Context, ref: string): Snapshot | undefined => lookupOwned(snapshots, c, ref);

/** Guards /v1/snapshots/:id: another tenant's snapshot is not found. */
export const snapshotOwnership = (snapshots: SnapshotStore) =>
  ownership((c, ref) => lookupSnapshot(snapshots, c, ref)?.tenant, (ref) => `no snapshot with id or name ${JSON.stringify(ref)}`);

export function snapshotRoutes(deps: AppDeps) {
  const mustGet = (c: Context, ref: string): Snapshot => {
    const s = lookupSnapshot(deps.snapshots, c, ref);
    if (!s) throw new ApiError(404, 'not_found', `no snapshot with id or name ${JSON.stringify(ref)}`);
    return s;
  };
  return newRouter()
    .openapi(take, async (c) => {
      // Another tenant's or no VM: 404 from the ownership middleware (and withVm).
      const { id } = c.req.valid('param');
      const body = c.req.header('content-type')?.includes('json') ? c.req.valid('json') : {};
      return c.json(await deps.snapshotService.create(id, body?.name), 201);
    })
    .openapi(list, (c) => c.json({ items: deps.snapshots.list(visibleTenant(deps.tenants, c)) }, 200))
    .openapi(get, (c) => c.json(mustGet(c, c.req.valid('param').id), 200))
    .openapi(del, (c) => {
      deps.snapshotService.delete(mustGet(c, c.req.valid('param').id));
      return c.body(null, 204);
    });
}
