// /v1/vms: definitions (SQLite) and lifecycle actions (the supervisor).
import { rmSync } from 'node:fs';
import { createRoute, z } from '@hono/zod-openapi';
import { ApiError } from '../supervisor/errors.js';
import { checkVmShape } from './vm-shape.js';
import type { Vm } from '../db/vms.js';
import { callerToken } from '../auth/middleware.js';
import { CreateVmFromSnapshotSchema, CreateVmFromTemplateSchema, CreateVmSchema, ErrorSchema, ForceQuery, IdParams, json, ListVmsQuery, SetTimeoutSchema, UpdateVmSchema, VmSchema } from './schemas.js';
import { page } from './pages.js';
import { visibleTenant } from './ownership.js';
import { newRouter, queryWhenPresent, type AppDeps } from './app.js';
import { validationError } from './errors.js';
import { createFromSnapshot } from './vms-from-snapshot.js';

const errors = {
  400: json(ErrorSchema, 'invalid request'),
  401: json(ErrorSchema, 'missing or invalid token'),
  403: json(ErrorSchema, 'token scope too small'),
  404: json(ErrorSchema, 'no such VM (another tenant\'s is not found either)'),
  409: json(ErrorSchema, 'not allowed in the current state; quota_exceeded'),
  429: json(ErrorSchema, 'rate limited'),
};

const listVms = createRoute({
  method: 'get', path: '/vms', tags: ['vms'],
  summary: 'The tenant\'s VMs (an admin: all, or ?tenant=); filters ?state=, ?metadata.KEY=VALUE (all must match); pages with ?limit= and ?cursor=',
  request: { query: ListVmsQuery },
  responses: { 200: json(z.object({ items: z.array(VmSchema), nextCursor: z.string().optional().openapi({ description: 'with ?limit=: more follow; pass as ?cursor=' }) }), 'VMs, oldest first'), ...errors },
});
const getVm = createRoute({ method: 'get', path: '/vms/{id}', tags: ['vms'], request: { params: IdParams }, responses: { 200: json(VmSchema, 'the VM'), ...errors } });
const createVm = createRoute({
  method: 'post', path: '/vms', tags: ['vms'], summary: 'Define a VM (it starts in state created); with fromSnapshot, a VM whose first start restores that snapshot (docs/snapshots.md)',
  request: { body: { required: true, content: { 'application/json': { schema: CreateVmSchema } } } },
  responses: { 201: json(VmSchema, 'created'), ...errors, 413: json(ErrorSchema, 'body too large') },
});
const deleteVm = createRoute({
  method: 'delete', path: '/vms/{id}', tags: ['vms'], summary: 'Stop (if running) and delete a VM',
  request: { params: IdParams, query: ForceQuery }, responses: { 204: { description: 'deleted' }, ...errors },
});

const updateVm = createRoute({
  method: 'patch', path: '/vms/{id}', tags: ['vms'], summary: 'Change a VM at run time: {"network":{"egress":bool}} switches its NAT to the uplink (docs/network.md); {"metadata":{...}} replaces its metadata',
  request: { params: IdParams, body: { required: true, content: { 'application/json': { schema: UpdateVmSchema } } } },
  responses: { 200: json(VmSchema, 'the VM'), ...errors },
});

const setTimeoutRoute = createRoute({
  method: 'post', path: '/vms/{id}/timeout', tags: ['vms'],
  summary: 'Restart the VM\'s TTL from now ({} keeps its timeoutSec; {"timeoutSec": N} sets a new one; null removes it). A VM that is not running keeps it for its next start.',
  request: { params: IdParams, body: { required: true, content: { 'application/json': { schema: SetTimeoutSchema } } } },
  responses: { 200: json(VmSchema, 'the VM, with its new expiresAt'), ...errors },
});

const ACTIONS = ['start', 'stop', 'pause', 'resume', 'reboot'] as const;
const actionRoute = (action: (typeof ACTIONS)[number]) => createRoute({
  method: 'post', path: `/vms/{id}/${action}`, tags: ['vms'],
  summary: action === 'stop' ? 'Clean guest power-off with a timeout, then kill; ?force=true kills at once' : `${action} the VM`,
  request: { params: IdParams, ...(action === 'stop' ? { query: ForceQuery } : {}) },
  responses: { 200: json(VmSchema, 'the VM after the action'), ...errors },
});

const PauseSchema = z.object({
  persist: z.boolean().default(false).openapi({ description: 'pause to disk: the VM\'s state is written, its VMM ended and its memory freed; it is then stopped with restoreFrom set, and resume (or start) restores it (docs/snapshots.md)' }),
}).strict().openapi('Pause');
const pauseRoute = createRoute({
  method: 'post', path: '/vms/{id}/pause', tags: ['vms'], summary: 'pause the VM (QMP stop); {"persist":true}: pause to disk',
  request: { params: IdParams, body: { required: false, content: { 'application/json': { schema: PauseSchema } } } },
  responses: { 200: json(VmSchema, 'the VM after the action'), ...errors, 507: json(ErrorSchema, 'no room on disk for its state') },
});

const isForce = (v: string | undefined) => v === 'true' || v === '1';

export function vmRoutes(deps: AppDeps) {
  const mustGet = (id: string): Vm => {
    const vm = deps.vms.get(id);
    if (!vm) throw new ApiError(404, 'not_found', `no VM with id ${id}`);
    return vm;
  };
  const r = newRouter();
  // The hot read: the whole list is served pre-serialized per tenant (VmStore.listJson), and the
  // query is validated only when there is one (queryWhenPresent). Filters and pages work on the
  // cached list.
  r.openAPIRegistry.registerPath(listVms);
  r.get('/vms', queryWhenPresent(ListVmsQuery), (c) => {
    const tenant = visibleTenant(deps.tenants, c);
    const q = c.req.valid('query' as never) as z.infer<typeof ListVmsQuery>;
    const wanted = Object.entries(q).filter(([k]) => k.startsWith('metadata.')).map(([k, v]) => [k.slice('metadata.'.length), v as string] as const);
    if (q.state === undefined && q.limit === undefined && wanted.length === 0) {
      return c.body(deps.vms.listJson(tenant), 200, { 'content-type': 'application/json' });
    }
    const items = deps.vms.listShown(tenant).filter((vm) => (q.state === undefined || vm.state === q.state) && wanted.every(([k, v]) => vm.metadata[k] === v));
    return c.json(q.limit === undefined ? { items } : page(items, q.limit, q.cursor), 200);
  });
  // A body with fromSnapshot is the other shape of POST /v1/vms (CreateVmFromSnapshot), handled
  // before CreateVm's validator: one schema per shape keeps each one's 400s naming their field.
  r.openAPIRegistry.register('CreateVmFromSnapshot', CreateVmFromSnapshotSchema);
  r.openAPIRegistry.register('CreateVmFromTemplate', CreateVmFromTemplateSchema);
  r.post('/vms', async (c, next) => {
    const raw: unknown = await c.req.json().catch(() => undefined);
    if (typeof raw !== 'object' || raw === null) return next();
    if ('fromSnapshot' in raw) {
      const parsed = CreateVmFromSnapshotSchema.safeParse(raw);
      if (!parsed.success) return validationError(c, parsed.error);
      return c.json(await createFromSnapshot(deps, c, parsed.data), 201);
    }
    if ('template' in raw) {
      // A running VM of the template: from its pool, else restored now (startedFrom says which).
      const parsed = CreateVmFromTemplateSchema.safeParse(raw);
      if (!parsed.success) return validationError(c, parsed.error);
      const tenant = callerToken(c).tenantId;
      c.set('resourceTenant', tenant);
      const { vm, from } = await deps.templateService.launch({ ...parsed.data, tenant });
      return c.json({ ...vm, startedFrom: from }, 201, { 'capsule-started-from': from });
    }
    return next();
  });
  r.openapi(getVm, (c) => c.json(mustGet(c.req.valid('param').id), 200))
    .openapi(createVm, (c) => {
      const body = c.req.valid('json');
      const hypervisor = checkVmShape(deps, body);
      const image = deps.images.get(body.image)!;
      if (body.rootfsDevice === 'pmem' && !image.rootfs) {
        throw new ApiError(400, 'invalid_request', `rootfsDevice: image ${image.name} has no root filesystem to map as pmem`, 'rootfsDevice');
      }
      // The VM is the caller's tenant's: its name is unique there, its drives are its volumes.
      const tenant = callerToken(c).tenantId;
      c.set('resourceTenant', tenant);
      if (deps.vms.getByName(tenant, body.name)) throw new ApiError(409, 'conflict', `name: a VM named ${body.name} exists`, 'name');
      // Checked and inserted in one synchronous step: no other request can take a volume (or
      // the tenant's last VM of quota) between.
      const drives = deps.drives.resolve(tenant, undefined, body.drives, (i) => `drives.${i}.volume`);
      const balloon = typeof body.balloon === 'boolean' ? { enabled: body.balloon, deflateOnOom: false } : body.balloon;
      let vm = deps.vms.create({ ...body, tenant, hypervisor, drives, balloon }, () => deps.quotas.checkNewVm(tenant));
      try {
        deps.drives.createLayer(image, deps.supervisor.paths(vm.id).dir);
      } catch (e) {
        deps.vms.delete(vm.id);
        rmSync(deps.supervisor.paths(vm.id).dir, { recursive: true, force: true });
        throw e;
      }
      vm = deps.vms.get(vm.id)!;
      deps.hub.publish(vm.id, 'VM_CREATED', vm as unknown as Record<string, unknown>);
      return c.json(vm, 201);
    })
    .openapi(updateVm, async (c) => {
      const { id } = c.req.valid('param');
      const body = c.req.valid('json');
      mustGet(id);
      const vm = await deps.supervisor.withVm(id, async (v) => {
        if (body.network) {
          if (!deps.network) throw new ApiError(409, 'no_network', 'this server gives VMs no network');
          v = deps.network.setEgress(v, body.network.egress);
        }
        if (body.metadata) v = deps.vms.setMetadata(id, body.metadata)!;
        return v;
      });
      deps.hub.publish(id, 'VM_UPDATED', { ...(body.network ? { network: vm.network } : {}), ...(body.metadata ? { metadata: vm.metadata } : {}) });
      return c.json(vm, 200);
    })
    .openapi(deleteVm, async (c) => {
      const { id } = c.req.valid('param');
      mustGet(id);
      await deps.supervisor.delete(id, isForce(c.req.valid('query').force));
      return c.body(null, 204);
    });
  r.openapi(setTimeoutRoute, async (c) => {
    const { id } = c.req.valid('param');
    const { timeoutSec } = c.req.valid('json');
    mustGet(id);
    return c.json(await deps.supervisor.withVm(id, async (vm) => deps.timeouts.reset(vm, timeoutSec)), 200);
  });
  r.openapi(actionRoute('start'), async (c) => c.json(await deps.supervisor.start(c.req.valid('param').id), 200));
  r.openapi(actionRoute('stop'), async (c) => {
    const force = isForce(new URL(c.req.url).searchParams.get('force') ?? undefined);
    return c.json(await deps.supervisor.stop(c.req.valid('param').id, force), 200);
  });
  r.openapi(pauseRoute, async (c) => {
    const { id } = c.req.valid('param');
    const persist = c.req.header('content-type')?.includes('json') ? c.req.valid('json').persist : false;
    return c.json(persist ? await deps.snapshotService.suspend(id) : await deps.supervisor.pause(id), 200);
  });
  r.openapi(actionRoute('resume'), async (c) => c.json(await deps.supervisor.resume(c.req.valid('param').id), 200));
  r.openapi(actionRoute('reboot'), async (c) => c.json(await deps.supervisor.reboot(c.req.valid('param').id), 200));
  r.get('/vms/:id/log', (c) => {
    const { id } = c.req.param();
    mustGet(id);
    return c.text(deps.supervisor.readLog(id) ?? '', 200);
  });
  return r;
}
