// Ownership: every VM and volume belongs to a tenant, and a token sees its own tenant's only
// (an admin token sees all). Another tenant's resource is answered exactly like one that does
// not exist — 404 with the same message — never 403: a status that differs would tell a
// tenant that the id or name is taken by someone else.
//
// One middleware per resource guards every route under /v1/<resource>/:id (and so any route
// added there later); lists and creates ask scopeOf() / visibleTenant().
import type { Context, MiddlewareHandler } from 'hono';
import { ApiError } from '../supervisor/errors.js';
import { callerToken, isAdmin, type AuthVariables } from '../auth/middleware.js';
import type { Volume, VolumeStore } from '../db/volumes.js';
import type { VmStore } from '../db/vms.js';
import type { TenantStore } from '../db/tenants.js';
import { errorResponse } from './errors.js';

type Env = { Variables: AuthVariables };

/** True when the caller may see a resource of `tenant`. */
export const maySee = (c: Context, tenant: string): boolean => isAdmin(c) || callerToken(c).tenantId === tenant;

/** Guards /v1/vms/:id and everything under it. */
export function vmOwnership(vms: VmStore): MiddlewareHandler<Env> {
  return async (c, next) => {
    const id = c.req.param('id') ?? '';
    const tenant = vms.tenantOf(id);
    if (tenant === undefined || !maySee(c, tenant)) return errorResponse(c, 404, 'not_found', `no VM with id ${id}`);
    c.set('resourceTenant', tenant);
    return next();
  };
}

/** Guards /v1/volumes/:id (id or name) and everything under it. */
export function volumeOwnership(volumes: VolumeStore): MiddlewareHandler<Env> {
  return async (c, next) => {
    const v = findVolume(volumes, c, c.req.param('id') ?? '');
    c.set('resourceTenant', v.tenant);
    return next();
  };
}

/**
 * A volume by id or name as the caller sees it: a tenant's token finds its own only; an admin
 * finds any by id, and by name in its own tenant first, else the one volume of that name.
 * Throws 404.
 */
export function findVolume(volumes: VolumeStore, c: Context, ref: string): Volume {
  const token = callerToken(c);
  let v = volumes.resolve(token.tenantId, ref);
  if (!v && token.scope === 'admin') {
    v = volumes.get(ref);
    if (!v) {
      const named = volumes.list().filter((x) => x.name === ref);
      if (named.length === 1) v = named[0];
    }
  }
  if (!v) throw new ApiError(404, 'not_found', `no volume with id or name ${JSON.stringify(ref)}`);
  return v;
}

/**
 * Whose resources a list shows: a tenant's token, its own tenant's; an admin, everyone's, or
 * one tenant's with ?tenant=ID-or-name (404 for an unknown tenant). undefined: all.
 */
export function visibleTenant(tenants: TenantStore, c: Context): string | undefined {
  const token = callerToken(c);
  if (token.scope !== 'admin') return token.tenantId;
  const ref = c.req.query('tenant');
  if (ref === undefined || ref === '') return undefined;
  const t = tenants.resolve(ref);
  if (!t) throw new ApiError(404, 'not_found', `no tenant with id or name ${JSON.stringify(ref)}`);
  return t.id;
}
