// /v1/tenants (admin only: auth/middleware.ts authorize()): who owns VMs, volumes and tokens,
// and their quotas. GET /v1/tenants/:id shows use against quotas.
import { rmSync } from 'node:fs';
import { createRoute, z } from '@hono/zod-openapi';
import { ApiError } from '../supervisor/errors.js';
import { callerToken } from '../auth/middleware.js';
import type { Tenant } from '../db/tenants.js';
import { volumePath } from '../volumes/files.js';
import { CreateTenantSchema, ErrorSchema, ForceQuery, IdParams, json, TenantSchema, UpdateTenantSchema } from './schemas.js';
import { newRouter, type AppDeps } from './app.js';

const errors = {
  400: json(ErrorSchema, 'invalid request'),
  401: json(ErrorSchema, 'missing or invalid token'),
  403: json(ErrorSchema, 'not an admin token'),
  404: json(ErrorSchema, 'no such tenant'),
  409: json(ErrorSchema, 'name taken (conflict); tenant_not_empty'),
  429: json(ErrorSchema, 'rate limited'),
};
const body = <T extends z.ZodType>(schema: T) => ({ body: { required: true, content: { 'application/json': { schema } } } });

const list = createRoute({ method: 'get', path: '/tenants', tags: ['tenants'], summary: 'All tenants (admin)', responses: { 200: json(z.object({ items: z.array(TenantSchema) }), 'tenants'), ...errors } });
const create = createRoute({ method: 'post', path: '/tenants', tags: ['tenants'], summary: 'Create a tenant (admin)', request: body(CreateTenantSchema), responses: { 201: json(TenantSchema, 'created'), ...errors } });
const get = createRoute({ method: 'get', path: '/tenants/{id}', tags: ['tenants'], summary: 'A tenant (by id or name) with its use against quotas (admin)', request: { params: IdParams }, responses: { 200: json(TenantSchema, 'the tenant'), ...errors } });
const update = createRoute({ method: 'patch', path: '/tenants/{id}', tags: ['tenants'], summary: 'Rename a tenant or change its quotas (admin)', request: { params: IdParams, ...body(UpdateTenantSchema) }, responses: { 200: json(TenantSchema, 'the tenant'), ...errors } });
const del = createRoute({
  method: 'delete', path: '/tenants/{id}', tags: ['tenants'],
  summary: 'Delete a tenant and its tokens; one with VMs or volumes only with ?force=true, which deletes them too (VMs are stopped) (admin)',
  request: { params: IdParams, query: ForceQuery }, responses: { 204: { description: 'deleted' }, ...errors },
});

export function tenantRoutes(deps: AppDeps) {
  const mustGet = (ref: string): Tenant => {
    const t = deps.tenants.resolve(ref);
    if (!t) throw new ApiError(404, 'not_found', `no tenant with id or name ${JSON.stringify(ref)}`);
    return t;
  };
  const nameFree = (name: string, except?: string) => {
    const t = deps.tenants.getByName(name);
    if (t && t.id !== except) throw new ApiError(409, 'conflict', `name: a tenant named ${name} exists`, 'name');
  };
  const withUsage = (t: Tenant) => ({ ...t, usage: deps.quotas.usage(t.id) });
  return newRouter()
    .openapi(list, (c) => c.json({ items: deps.tenants.list().map(withUsage) }, 200))
    .openapi(create, (c) => {
      const b = c.req.valid('json');
      nameFree(b.name);
      return c.json(withUsage(deps.tenants.create(b.name, b.quotas)), 201);
    })
    .openapi(get, (c) => c.json(withUsage(mustGet(c.req.valid('param').id)), 200))
    .openapi(update, (c) => {
      const t = mustGet(c.req.valid('param').id);
      c.set('resourceTenant', t.id);
      const b = c.req.valid('json');
      if (b.name !== undefined) nameFree(b.name, t.id);
      return c.json(withUsage(deps.tenants.update(t.id, b)!), 200);
    })
    .openapi(del, async (c) => {
      const t = mustGet(c.req.valid('param').id);
      c.set('resourceTenant', t.id);
      if (t.id === callerToken(c).tenantId) throw new ApiError(409, 'conflict', `tenant ${t.name} is the tenant of the token making this request: use another tenant's admin token`);
      const force = ['true', '1'].includes(c.req.valid('query').force ?? '');
      const held = deps.tenants.holdings(t.id);
      if (!force && held.vms + held.volumes + held.snapshots + held.templates > 0) {
        throw new ApiError(409, 'tenant_not_empty', `tenant ${t.name} has ${held.vms} VM(s), ${held.volumes} volume(s), ${held.snapshots} snapshot(s) and ${held.templates} template(s): delete them first, or add ?force=true to delete them with the tenant`);
      }
      await deleteTenant(deps, t);
      return c.body(null, 204);
    });
}

/**
 * Tokens first (revoked at once, their sockets closed: nothing of the tenant can act while the
 * rest goes), then templates (their pools drained), VMs (stopped by kill), volumes (files too),
 * snapshots, the tenant.
 */
async function deleteTenant(deps: AppDeps, t: Tenant): Promise<void> {
  deps.tokens.revokeTenant(t.id);
  // Templates before VMs: their pools stop refilling. One being restored from is retried after the VMs.
  const templatesLeft = async (retry: boolean) => {
    for (const tpl of deps.templates.list(t.id)) await deps.templateService.delete(tpl).catch((e: Error) => { if (retry) throw e; });
  };
  await templatesLeft(false);
  for (const vm of deps.vms.list(t.id)) await deps.supervisor.delete(vm.id, true);
  await templatesLeft(true);
  for (const v of deps.volumes.list(t.id)) {
    deps.volumes.delete(v.id);
    rmSync(volumePath(deps.config.dataDir, v.id), { force: true });
  }
  // After the VMs: none is left to restore from them.
  for (const s of deps.snapshots.list(t.id)) deps.snapshotService.delete(s);
  deps.tenants.delete(t.id);
  deps.log.info({ tenant: t.id, name: t.name }, 'tenant deleted');
}
