// /v1/vms/:id/balloon: the guest's memory target (QMP balloon) and what it has (query-balloon).
import { createRoute } from '@hono/zod-openapi';
import { BalloonRequestSchema, BalloonSchema, ErrorSchema, IdParams, json } from './schemas.js';
import { newRouter, type AppDeps } from './app.js';

const errors = {
  400: json(ErrorSchema, 'invalid request'),
  401: json(ErrorSchema, 'missing or invalid token'),
  404: json(ErrorSchema, 'no such VM'),
  409: json(ErrorSchema, 'no_balloon (the VM has no balloon device) or not_running'),
  429: json(ErrorSchema, 'rate limited'),
};

const get = createRoute({
  method: 'get', path: '/vms/{id}/balloon', tags: ['balloon'], summary: 'The guest memory the balloon driver reports',
  request: { params: IdParams }, responses: { 200: json(BalloonSchema, 'balloon'), ...errors },
});
const put = createRoute({
  method: 'put', path: '/vms/{id}/balloon', tags: ['balloon'], summary: 'Set the guest memory target',
  request: { params: IdParams, body: { required: true, content: { 'application/json': { schema: BalloonRequestSchema } } } },
  responses: { 200: json(BalloonSchema, 'the target and the memory the guest has now'), ...errors },
});

export function balloonRoutes(deps: AppDeps) {
  return newRouter()
    .openapi(get, async (c) => c.json(await deps.supervisor.withVm(c.req.valid('param').id, (vm, live) => deps.balloon.query(vm, live)), 200))
    .openapi(put, async (c) => {
      const { targetMiB } = c.req.valid('json');
      return c.json(await deps.supervisor.withVm(c.req.valid('param').id, (vm, live) => deps.balloon.setTarget(vm, live, targetMiB)), 200);
    });
}
