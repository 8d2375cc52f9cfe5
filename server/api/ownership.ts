// Ownership: every VM and volume belongs to a tenant, and a token sees its own tenant's only
// (an admin token sees all). Another tenant's resource is answered exactly like one that does
// not exist — 404 with the same message — never 403: a status that differs would tell a
// tenant that the id or name is taken by someone else.
//
// One middleware per resource guards every route under /v1/<resource>/:id (and so any route
// added there later); lists ask visibleTenant(), creates take the caller's tenant.
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

/**
 * Guards /v1/<resource>/:id and everything under it. `tenantOf` gives the tenant of the
 * resource the caller names (undefined: none); another tenant's gets the same 404 as none.
 * A new resource (snapshots, templates, pools) is one more line in app.ts.
 */
export function ownership(tenantOf: (c: Context, ref: string) => string | undefined, notFound: (ref: string) => string): MiddlewareHandler<Env> {
  return async (c, next) => {
    const ref = c.req.param('id') ?? '';
    const tenant = tenantOf(c, ref);
    if (tenant === undefined || !maySee(c, tenant)) return errorResponse(c, 404, 'not_found', notFound(ref));
    c.set('resourceTenant', tenant);
    return next();
  };
}

/** A store of a tenant's resources named by id or name (snapshots, templates). */
export interface NamedResources<T> {
  resolve(tenant: string, ref: string): T | undefined;
  get(id: string): T | undefined;
}

/** A resource by id or name as the caller sees it: a tenant's own; an admin's any by id. */
export function lookupOwned<T>(store: NamedResources<T>, c: Context, ref: string): T | undefined {
  const token = callerToken(c);
  const own = store.resolve(token.tenantId, ref);
  if (own || token.scope !== 'admin') return own;
  return store.get(ref);
}

export const vmOwnership = (vms: VmStore) => ownership((_c, id) => vms.tenantOf(id), (id) => `no VM with id ${id}`);

export const volumeOwnership = (volumes: VolumeStore) =>
  ownership((c, ref) => lookupVolume(volumes, c, ref)?.tenant, (ref) => `no volume with id or name ${JSON.stringify(ref)}`);

/**
 * A volume by id or name as the caller sees it: a tenant's token finds its own only; an admin
 * finds any by id, and by name in its own tenant first, else the one volume of that name.
 * Throws 404.
 */
export function findVolume(volumes: VolumeStore, c: Context, ref: string): Volume {
  const v = lookupVolume(volumes, c, ref);
  if (!v) throw new ApiError(404, 'not_found', `no volume with id or name ${JSON.stringify(ref)}`);
  return v;
}

function lookupVolume(volumes: VolumeStore, c: Context, ref: string): Volume | undefined {
  const token = callerToken(c);
  const own = volumes.resolve(token.tenantId, ref);
  if (own || token.scope !== 'admin') return own;
  const byId = volumes.get(ref);
  if (byId) return byId;
  const named = volumes.list().filter((x) => x.name === ref);
  return named.length === 1 ? named[0] : undefined;
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
