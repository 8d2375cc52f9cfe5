// /v1/tokens and /v1/whoami. An admin token manages every tenant's tokens; a write token its
// own tenant's (never an admin one); a read token may list its tenant's. The secret is in the
// create response only: lists show metadata, never the secret or its hash.
import { createRoute, z } from '@hono/zod-openapi';
import type { Context } from 'hono';
import { ApiError } from '../supervisor/errors.js';
import { callerToken, isAdmin } from '../auth/middleware.js';
import type { TokenRecord } from '../db/tokens.js';
import type { Tenant } from '../db/tenants.js';
import { CreatedTokenSchema, CreateTokenSchema, ErrorSchema, IdParams, json, TenantQuery, TokenSchema, WhoamiSchema } from './schemas.js';
import { visibleTenant } from './ownership.js';
import { newRouter, type AppDeps } from './app.js';

const errors = {
  400: json(ErrorSchema, 'invalid request'),
  401: json(ErrorSchema, 'missing or invalid token'),
  403: json(ErrorSchema, 'scope too small (a read token; a write token minting an admin token)'),
  404: json(ErrorSchema, 'no such token or tenant (another tenant\'s is not found either)'),
  429: json(ErrorSchema, 'rate limited'),
};

const list = createRoute({
  method: 'get', path: '/tokens', tags: ['tokens'], summary: 'Tokens (metadata): a tenant\'s own; an admin all, or ?tenant=',
  request: { query: TenantQuery }, responses: { 200: json(z.object({ items: z.array(TokenSchema) }), 'tokens'), ...errors },
});
const create = createRoute({
  method: 'post', path: '/tokens', tags: ['tokens'], summary: 'Create a token; the response is the only place its secret appears',
  request: { body: { required: true, content: { 'application/json': { schema: CreateTokenSchema } } } },
  responses: { 201: json(CreatedTokenSchema, 'created'), ...errors },
});
const del = createRoute({
  method: 'delete', path: '/tokens/{id}', tags: ['tokens'], summary: 'Revoke a token: at once, its open WebSockets closed (4001)',
  request: { params: IdParams }, responses: { 204: { description: 'revoked' }, ...errors },
});
const whoami = createRoute({
  method: 'get', path: '/whoami', tags: ['tokens'], summary: 'The calling token: name, scope, tenant (with quotas and use)',
  responses: { 200: json(WhoamiSchema, 'the token'), ...errors },
});

export function tokenRoutes(deps: AppDeps) {
  const show = ({ tenantId, ...rest }: TokenRecord) => ({ ...rest, tenant: tenantId, tenantName: deps.tenants.get(tenantId)?.name ?? '' });
  /** The tenant a new token is for: any for an admin; for others their own only (another is "not found"). */
  const targetTenant = (c: Context, ref: string | undefined): Tenant => {
    const caller = callerToken(c);
    const t = ref === undefined ? deps.tenants.get(caller.tenantId) : deps.tenants.resolve(ref);
    if (!t || (!isAdmin(c) && t.id !== caller.tenantId)) throw new ApiError(404, 'not_found', `no tenant with id or name ${JSON.stringify(ref)}`, 'tenant');
    return t;
  };
  return newRouter()
    .openapi(list, (c) => c.json({ items: deps.tokens.list(visibleTenant(deps.tenants, c)).map(show) }, 200))
    .openapi(create, (c) => {
      const b = c.req.valid('json');
      const tenant = targetTenant(c, b.tenant);
      const caller = callerToken(c);
      if (b.scope === 'admin' && caller.scope !== 'admin') {
        throw new ApiError(403, 'forbidden', `token scope '${caller.scope}' cannot create an admin token`, 'scope');
      }
      c.set('resourceTenant', tenant.id);
      const { token, record } = deps.tokens.create({ tenantId: tenant.id, name: b.name, scope: b.scope, expiresAt: expiryFor(caller, b.expiresAt) });
      return c.json({ ...show(record), token }, 201);
    })
    .openapi(del, (c) => {
      const { id } = c.req.valid('param');
      const t = deps.tokens.get(id);
      const caller = callerToken(c);
      if (!t || (!isAdmin(c) && t.tenantId !== caller.tenantId)) throw new ApiError(404, 'not_found', `no token with id ${id}`);
      c.set('resourceTenant', t.tenantId);
      // A tenant's admin token outranks its write tokens: they may not take it away.
      if (t.scope === 'admin' && caller.scope !== 'admin') throw new ApiError(403, 'forbidden', `token scope '${caller.scope}' cannot revoke an admin token`);
      deps.tokens.revoke(t.id);
      return c.body(null, 204);
    })
    .openapi(whoami, (c) => {
      const t = callerToken(c);
      const tenant = deps.tenants.get(t.tenantId)!;
      const { tenantId: _t, ...token } = t;
      return c.json({ ...token, tenant: { id: tenant.id, name: tenant.name, quotas: tenant.quotas, usage: deps.quotas.usage(tenant.id) } }, 200);
    });
}

/**
 * A new token's expiry: as asked; but a tenant's expiring token cannot make one that outlives
 * it (that would extend its own life), so its children expire with it at the latest.
 */
function expiryFor(caller: TokenRecord, asked: string | undefined): string | undefined {
  const iso = asked === undefined ? undefined : new Date(asked).toISOString();
  if (caller.scope === 'admin' || caller.expiresAt === undefined) return iso;
  if (iso === undefined) return caller.expiresAt;
  if (Date.parse(iso) > Date.parse(caller.expiresAt)) {
    throw new ApiError(400, 'invalid_request', `expiresAt: must not be later than this token's own expiry (${caller.expiresAt})`, 'expiresAt');
  }
  return iso;
}
