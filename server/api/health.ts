import { createRoute } from '@hono/zod-openapi';
import { HealthSchema } from './schemas.js';
import { newRouter, type AppDeps } from './app.js';

const health = createRoute({
  method: 'get', path: '/health', tags: ['health'], security: [],
  summary: 'Liveness, KVM availability, the usable hypervisors and the VMM jail',
  responses: { 200: { description: 'the server is up', content: { 'application/json': { schema: HealthSchema } } } },
});

export function healthRoutes(deps: AppDeps) {
  return newRouter().openapi(health, (c) => {
    const usable = [...deps.hypervisors.values()].filter((h) => h.availability().available).map((h) => h.name);
    const details: Record<string, string> = {};
    for (const h of deps.hypervisors.values()) details[h.name] = h.availability().reason;
    const jail = deps.jail ?? { enabled: false, user: false, namespaces: false, cgroups: false, rlimits: false, reasons: { jail: 'not configured' } };
    const body = { status: 'ok' as const, kvm: deps.kvm, hypervisors: usable, defaultHypervisor: deps.defaultHypervisor, details, jail };
    return c.json(deps.storage ? { ...body, storage: deps.storage.status() } : body, 200);
  });
}
