// /v1/templates and /v1/pools (docs/templates.md): a tenant's templates, built into snapshots
// in the background, and the pools of running clones kept for them. POST /v1/vms {"template"}
// (vms.ts) hands out their VMs.
import { createRoute, z } from '@hono/zod-openapi';
import type { Context } from 'hono';
import { ApiError } from '../supervisor/errors.js';
import { callerToken } from '../auth/middleware.js';
import type { Template, TemplateStore } from '../db/templates.js';
import type { HypervisorName } from '../db/vms.js';
import { CreateTemplateSchema, ErrorSchema, IdParams, json, PoolSchema, TemplateSchema, TenantQuery, UpdateTemplateSchema } from './schemas.js';
import { lookupOwned, ownership, visibleTenant } from './ownership.js';
import { checkVmShape } from './vm-shape.js';
import { newRouter, type AppDeps } from './app.js';

const errors = {
  400: json(ErrorSchema, 'invalid request'),
  401: json(ErrorSchema, 'missing or invalid token'),
  403: json(ErrorSchema, 'token scope too small'),
  404: json(ErrorSchema, 'no such template (another tenant\'s is not found either)'),
  409: json(ErrorSchema, 'conflict (name taken), template_in_use'),
  429: json(ErrorSchema, 'rate limited'),
};

const create = createRoute({
  method: 'post', path: '/templates', tags: ['templates'],
  summary: 'Define a template and build it in the background: boot, start command, ready command, snapshot (TEMPLATE_PROGRESS events; state building → ready or failed). With pool N, N clones are kept running for POST /v1/vms {"template"}.',
  request: { body: { required: true, content: { 'application/json': { schema: CreateTemplateSchema } } } },
  responses: { 202: json(TemplateSchema, 'accepted: building'), ...errors },
});
const list = createRoute({ method: 'get', path: '/templates', tags: ['templates'], summary: 'The tenant\'s templates (an admin: all, or ?tenant=), oldest first', request: { query: TenantQuery }, responses: { 200: json(z.object({ items: z.array(TemplateSchema) }), 'templates'), ...errors } });
const get = createRoute({ method: 'get', path: '/templates/{id}', tags: ['templates'], summary: 'A template (by id or name)', request: { params: IdParams }, responses: { 200: json(TemplateSchema, 'the template'), ...errors } });
const update = createRoute({
  method: 'patch', path: '/templates/{id}', tags: ['templates'], summary: 'Resize the template\'s pool: more clones are warmed, surplus ones deleted',
  request: { params: IdParams, body: { required: true, content: { 'application/json': { schema: UpdateTemplateSchema } } } },
  responses: { 200: json(TemplateSchema, 'the template'), ...errors },
});
const del = createRoute({
  method: 'delete', path: '/templates/{id}', tags: ['templates'], summary: 'Delete a template: its build stops, its pool\'s VMs are deleted, its snapshot too (VMs made from it run on)',
  request: { params: IdParams }, responses: { 204: { description: 'deleted' }, ...errors },
});
const pools = createRoute({
  method: 'get', path: '/pools', tags: ['templates'], summary: 'The pools of the tenant\'s templates (an admin: all, or ?tenant=)',
  request: { query: TenantQuery }, responses: { 200: json(z.object({ items: z.array(PoolSchema) }), 'one per template (size 0: no pool)'), ...errors },
});

/** The server's default hypervisor if it writes snapshots, else one available that does (else the default: refused after). */
function snapshotBackend(deps: AppDeps): HypervisorName {
  const can = (name: HypervisorName) => {
    const b = deps.hypervisors.get(name);
    return b !== undefined && b.availability().available && b.snapshotSupport().available;
  };
  if (can(deps.defaultHypervisor)) return deps.defaultHypervisor;
  return [...deps.hypervisors.keys()].find(can) ?? deps.defaultHypervisor;
}

const notFound = (ref: string) => `no template with id or name ${JSON.stringify(ref)}`;

/** Guards /v1/templates/:id: another tenant's template is not found. */
export const templateOwnership = (templates: TemplateStore) =>
  ownership((c, ref) => lookupOwned(templates, c, ref)?.tenant, notFound);

export function templateRoutes(deps: AppDeps) {
  const mustGet = (c: Context, ref: string): Template => {
    const t = lookupOwned(deps.templates, c, ref);
    if (!t) throw new ApiError(404, 'not_found', notFound(ref));
    return t;
  };
  return newRouter()
    .openapi(create, (c) => {
      const body = c.req.valid('json');
      const hypervisor = checkVmShape(deps, { ...body, hypervisor: body.hypervisor ?? snapshotBackend(deps) });
      const support = deps.hypervisors.get(hypervisor)!.snapshotSupport();
      if (!support.available) {
        throw new ApiError(400, 'invalid_request', `hypervisor: a template is a snapshot, and the ${hypervisor} hypervisor cannot write one (${support.reason})`, 'hypervisor');
      }
      // The caller's tenant's template (its VMs and snapshot are the tenant's).
      const tenant = callerToken(c).tenantId;
      c.set('resourceTenant', tenant);
      return c.json(deps.templateService.create({ ...body, tenant, hypervisor }), 202);
    })
    .openapi(list, (c) => c.json({ items: deps.templates.list(visibleTenant(deps.tenants, c)) }, 200))
    .openapi(get, (c) => c.json(mustGet(c, c.req.valid('param').id), 200))
    .openapi(update, (c) => c.json(deps.templateService.setPool(mustGet(c, c.req.valid('param').id), c.req.valid('json').pool), 200))
    .openapi(del, async (c) => {
      await deps.templateService.delete(mustGet(c, c.req.valid('param').id));
      return c.body(null, 204);
    })
    .openapi(pools, (c) => c.json({ items: deps.templates.list(visibleTenant(deps.tenants, c)).map((t) => deps.templateService.poolStatus(t)) }, 200));
}
