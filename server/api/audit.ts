// The audit log: a middleware records every change (any method but GET/HEAD/OPTIONS, whatever
// its outcome, refusals included) after the route answered; GET /v1/audit (admin) reads it.
import { createRoute, z } from '@hono/zod-openapi';
import type { MiddlewareHandler } from 'hono';
import { routePath } from 'hono/route';
import { ApiError } from '../supervisor/errors.js';
import type { AuthVariables } from '../auth/middleware.js';
import type { AuditStore } from '../db/audit.js';
import { AuditEntrySchema, AuditQuerySchema, ErrorSchema } from './schemas.js';
import { newRouter, type AppDeps } from './app.js';

const READS = new Set(['GET', 'HEAD', 'OPTIONS']);
const RESOURCE_TYPES: Record<string, string> = { vms: 'vm', volumes: 'volume', tenants: 'tenant', tokens: 'token' };

/** The resource a path names: /v1/vms/ID/... -> vm ID; /v1/vms -> vm (a create: the id is in the answer). */
function resourceOf(path: string): { type?: string; id?: string } {
  const m = /^\/v1\/([a-z]+)(?:\/([^/]+))?/.exec(path);
  const type = m ? RESOURCE_TYPES[m[1]!] : undefined;
  if (!type) return {};
  return m![2] === undefined ? { type } : { type, id: decodeSegment(m![2]) };
}

/**
 * A path segment as the routes see it; one that is not valid percent-encoding ("%zz") is kept
 * as sent. (Found by the API fuzz drill: decodeURIComponent threw here, after the route had
 * answered 404, and turned the answer into a 500.)
 */
function decodeSegment(segment: string): string {
  try {
    return decodeURIComponent(segment);
  } catch {
    return segment;
  }
}

export function auditLog(audit: AuditStore): MiddlewareHandler<{ Variables: AuthVariables }> {
  return async (c, next) => {
    // Reads are not audited: they pass straight through (no await frame on the hot path).
    if (READS.has(c.req.method)) return next();
    await next();
    const token = c.get('token');
    if (!token) return;
    const res = resourceOf(c.req.path);
    let resourceTenant = c.get('resourceTenant');
    if (res.type && res.id === undefined && c.res.status === 201) {
      // A create: the new resource's id (and tenant) come from the answer.
      const created = await c.res.clone().json().catch(() => undefined) as { id?: string; tenant?: string } | undefined;
      res.id = created?.id;
      resourceTenant = res.type === 'tenant' ? created?.id : created?.tenant;
    }
    audit.record({
      token: token.id, tenant: token.tenantId, method: c.req.method, route: routePath(c, -1) || c.req.path, path: c.req.path,
      resourceType: res.type, resourceId: res.id, resourceTenant, status: c.res.status,
    });
  };
}

const list = createRoute({
  method: 'get', path: '/audit', tags: ['audit'], summary: 'Audit log, newest first (admin): ?tenant= (id or name), ?vm=, ?since=, ?until= (ISO 8601), ?limit= (≤ 1000)',
  request: { query: AuditQuerySchema },
  responses: {
    200: { description: 'entries', content: { 'application/json': { schema: z.object({ items: z.array(AuditEntrySchema) }) } } },
    400: { description: 'invalid query', content: { 'application/json': { schema: ErrorSchema } } },
    403: { description: 'not an admin token', content: { 'application/json': { schema: ErrorSchema } } },
  },
});

export function auditRoutes(deps: AppDeps) {
  return newRouter().openapi(list, (c) => {
    const q = c.req.valid('query');
    let tenant: string | undefined;
    if (q.tenant !== undefined) {
      // A deleted tenant's entries stay: an id that is no tenant any more still filters.
      tenant = deps.tenants.resolve(q.tenant)?.id ?? q.tenant;
    }
    const iso = (s: string | undefined) => (s === undefined ? undefined : new Date(s).toISOString());
    if (q.since && q.until && Date.parse(q.since) > Date.parse(q.until)) throw new ApiError(400, 'invalid_request', 'since: must not be after until', 'since');
    return c.json({ items: deps.audit.query({ tenant, vm: q.vm, since: iso(q.since), until: iso(q.until), limit: q.limit }) }, 200);
  });
}
