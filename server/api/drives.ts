// /v1/vms/:id/drives: attach a volume to a VM (its definition; hot-plugged when it runs) and
// detach one (hot-unplugged when it runs: the guest releases it, DEVICE_DELETED, then it is gone).
import { createRoute, z } from '@hono/zod-openapi';
import { ApiError } from '../supervisor/errors.js';
import { DriveParams, DriveRequestSchema, DriveSchema, ErrorSchema, IdParams, json, MAX_DRIVES } from './schemas.js';
import { newRouter, type AppDeps } from './app.js';

const errors = {
  400: json(ErrorSchema, 'invalid request'),
  401: json(ErrorSchema, 'missing or invalid token'),
  404: json(ErrorSchema, 'no such VM or drive'),
  409: json(ErrorSchema, 'volume_in_use, invalid_state, hotplug_unsupported, attach_failed, detach_failed'),
  429: json(ErrorSchema, 'rate limited'),
};

const listDrives = createRoute({
  method: 'get', path: '/vms/{id}/drives', tags: ['drives'], summary: 'The VM\'s drives in guest order',
  request: { params: IdParams }, responses: { 200: json(z.object({ items: z.array(DriveSchema) }), 'drives'), ...errors },
});
const attach = createRoute({
  method: 'post', path: '/vms/{id}/drives', tags: ['drives'],
  summary: 'Attach a volume: to the definition of a stopped VM, hot-plugged into a running one (and kept in its definition)',
  request: { params: IdParams, body: { required: true, content: { 'application/json': { schema: DriveRequestSchema } } } },
  responses: { 201: json(DriveSchema, 'the drive'), ...errors },
});
const detach = createRoute({
  method: 'delete', path: '/vms/{id}/drives/{driveId}', tags: ['drives'],
  summary: 'Detach a drive; on a running VM, after the guest released it (DEVICE_DELETED)',
  request: { params: DriveParams },
  responses: { 204: { description: 'detached' }, ...errors, 504: json(ErrorSchema, 'the guest did not release the drive in time (it stays listed as detaching)') },
});

export function driveRoutes(deps: AppDeps) {
  return newRouter()
    .openapi(listDrives, (c) => {
      const { id } = c.req.valid('param');
      const vm = deps.vms.get(id);
      if (!vm) throw new ApiError(404, 'not_found', `no VM with id ${id}`);
      return c.json({ items: vm.drives }, 200);
    })
    .openapi(attach, async (c) => {
      const { id } = c.req.valid('param');
      const body = c.req.valid('json');
      const drive = await deps.supervisor.withVm(id, (vm, live) => {
        if (vm.drives.length >= MAX_DRIVES) throw new ApiError(409, 'too_many_drives', `VM ${vm.name} has ${vm.drives.length} drives, the most a VM may have`);
        return deps.drives.attachDrive(vm, live, body);
      });
      return c.json(drive, 201);
    })
    .openapi(detach, async (c) => {
      const { id, driveId } = c.req.valid('param');
      const pending = await deps.supervisor.withVm(id, (vm, live) => deps.drives.beginDetach(vm, live, driveId));
      if (pending) {
        const { released } = pending;
        let timer: NodeJS.Timeout | undefined;
        const inTime = await Promise.race([
          released.then(() => true),
          new Promise<boolean>((r) => { timer = setTimeout(() => r(false), deps.config.detachTimeoutMs); }),
        ]);
        clearTimeout(timer);
        if (!inTime) {
          throw new ApiError(504, 'detach_timeout',
            `the guest did not release ${driveId} within ${deps.config.detachTimeoutMs / 1000} s; it stays listed as detaching and goes when the guest releases it (DEVICE_DELETED) or the VM stops`);
        }
      }
      return c.body(null, 204);
    });
}
