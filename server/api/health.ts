// Health: liveness (GET /v1/health: the process answers; cheap, no I/O beyond a statfs) and
// readiness (GET /v1/health/ready: database writable, default image present, a backend
// available; server/health/readiness.ts). Both are public.
import { createRoute } from '@hono/zod-openapi';
import { HealthSchema, ReadinessSchema } from './schemas.js';
import { newRouter, type AppDeps } from './app.js';

const health = createRoute({
  method: 'get', path: '/health', tags: ['health'], security: [],
  summary: 'Liveness, KVM availability, the usable hypervisors and the VMM jail',
  responses: { 200: { description: 'the server is up', content: { 'application/json': { schema: HealthSchema } } } },
});

const ready = createRoute({
  method: 'get', path: '/health/ready', tags: ['health'], security: [],
  summary: 'Readiness: the database takes writes, the default image is present, a backend can run VMs',
  responses: {
    200: { description: 'ready: every check passes', content: { 'application/json': { schema: ReadinessSchema } } },
    503: { description: 'not ready: the failing checks are named in error.message', content: { 'application/json': { schema: ReadinessSchema } } },
  },
});

export function healthRoutes(deps: AppDeps) {
  return newRouter()
    .openapi(health, (c) => {
      const usable = [...deps.hypervisors.values()].filter((h) => h.availability().available).map((h) => h.name);
      const details: Record<string, string> = {};
      for (const h of deps.hypervisors.values()) details[h.name] = h.availability().reason;
      const jail = deps.jail ?? { enabled: false, user: false, namespaces: false, cgroups: false, rlimits: false, reasons: { jail: 'not configured' } };
      const body = { status: 'ok' as const, kvm: deps.kvm, hypervisors: usable, defaultHypervisor: deps.defaultHypervisor, details, ...(deps.network ? { network: deps.network.status() } : {}), jail };
      return c.json(deps.storage ? { ...body, storage: deps.storage.status() } : body, 200);
    })
    .openapi(ready, (c) => {
      const report = deps.readiness.check();
      if (report.ready) return c.json({ status: 'ready' as const, checks: report.checks }, 200);
      const failing = Object.entries(report.checks).filter(([, r]) => !r.ok).map(([name, r]) => `${name}: ${r.message}`);
      return c.json({ status: 'not_ready' as const, checks: report.checks, error: { code: 'not_ready' as const, message: failing.join('; ') } }, 503);
    });
}
