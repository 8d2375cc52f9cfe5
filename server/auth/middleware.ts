// Bearer-token authentication, scopes, and rate limiting (per token and per tenant) for /v1 routes.
import type { IncomingMessage } from 'node:http';
import type { Context, MiddlewareHandler } from 'hono';
import { isExpired, type TokenRecord, type TokenScope, type TokenStore } from '../db/tokens.js';
import { errorResponse } from '../api/errors.js';
import { isUpgradeRequest } from '../api/websocket.js';
import type { BucketMap } from '../util/leaky-bucket.js';
import type { LeakyBucket } from '../../lib/leaky-bucket.js';

export interface AuthVariables {
  token: TokenRecord;
  /** The tenant of the resource the request addresses (set by the ownership checks; for the audit log). */
  resourceTenant?: string;
}

/** Routes reachable without a token. */
const PUBLIC_PATHS = new Set(['/v1/health', '/v1/health/ready']);

function presentedToken(authorization: string | undefined, queryToken: () => string | undefined, isUpgrade: boolean): string | undefined {
  const m = authorization ? /^Bearer\s+(\S+)\s*$/i.exec(authorization) : null;
  if (m) return m[1];
  // Browsers cannot set headers on WebSockets, so the upgrade request may carry the token in
  // the query. Plain HTTP requests may not (URLs end up in logs and histories), and only a
  // request that reached Node as a real upgrade counts as one: an `Upgrade` header is not enough.
  if (isUpgrade) return queryToken();
  return undefined;
}

/**
 * A request header exactly as c.req.header() gives it (repeats joined with ", ", outer HTTP
 * whitespace trimmed), read from Node's message when there is one: on @hono/node-server the
 * first c.req.header() call builds a Fetch Headers object of every header, which costs more
 * than the whole token check on the hot path (GET /v1/vms).
 */
export function requestHeader(c: Context, lowerCaseName: string): string | undefined {
  const raw = (c.env as { incoming?: IncomingMessage } | undefined)?.incoming?.rawHeaders;
  if (!raw) return c.req.header(lowerCaseName);
  let value: string | undefined;
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i]!;
    if (name.length !== lowerCaseName.length || name.toLowerCase() !== lowerCaseName) continue;
    const v = raw[i + 1]!.replace(/^[\t\n\r ]+|[\t\n\r ]+$/g, '');
    value = value === undefined ? v : `${value}, ${v}`;
  }
  return value;
}

export function requireToken(tokens: TokenStore): MiddlewareHandler<{ Variables: AuthVariables }> {
  return async (c, next) => {
    if (PUBLIC_PATHS.has(c.req.path)) return next();
    const token = presentedToken(requestHeader(c, 'authorization'), () => c.req.query('access_token'), isUpgradeRequest(c));
    const record = token === undefined ? undefined : tokens.verify(token);
    if (!record || isExpired(record)) {
      c.header('WWW-Authenticate', 'Bearer realm="capsule"');
      const why = token === undefined ? 'missing bearer token' : record ? 'token expired' : 'invalid token';
      return errorResponse(c, 401, 'unauthorized', why);
    }
    c.set('token', record);
    return next();
  };
}

/** The caller's token (every /v1 route but health has one). */
export const callerToken = (c: Context): TokenRecord => c.get('token') as TokenRecord;
export const isAdmin = (c: Context): boolean => callerToken(c).scope === 'admin';

/** Routes only an admin token may use, any method. */
const ADMIN_ONLY = /^\/v1\/(tenants|audit)(\/|$)/;
const READ_METHODS = new Set(['GET', 'HEAD', 'OPTIONS']);

/**
 * Scopes, for every route in one place (a new route cannot escape): `read` may only read,
 * `write` may change anything of its tenant, `admin` anything at all plus tenants and the audit
 * log. Which tenant a resource belongs to is api/ownership.ts's part.
 */
export function authorize(): MiddlewareHandler<{ Variables: AuthVariables }> {
  return async (c, next) => {
    const token = c.get('token') as TokenRecord | undefined;
    if (!token) return next();
    const { method, path } = c.req;
    if (ADMIN_ONLY.test(path) && token.scope !== 'admin') return forbidden(c, token.scope, method, path, ' (admin only)');
    if (token.scope === 'read' && !READ_METHODS.has(method)) return forbidden(c, token.scope, method, path, '');
    return next();
  };
}

function forbidden(c: Context, scope: TokenScope, method: string, path: string, why: string): Response {
  return errorResponse(c, 403, 'forbidden', `token scope '${scope}' cannot ${method} ${path}${why}`);
}

/** API calls (and inbound WebSocket messages) are metered per token and per tenant. */
export class ApiRateLimits {
  constructor(readonly perToken: BucketMap, readonly perTenant: BucketMap) {}

  /** Takes one unit from both buckets, or from neither; the one that refused, if any (the tenant's is asked first). */
  take(token: TokenRecord): { bucket: LeakyBucket; what: 'token' | 'tenant' } | undefined {
    const tenant = this.perTenant.get(token.tenantId);
    const own = this.perToken.get(token.id);
    // Both are asked before either is charged: a call one token is refused costs its tenant nothing.
    if (tenant.msUntil() > 0) return { bucket: tenant, what: 'tenant' };
    if (!own.tryTake()) return { bucket: own, what: 'token' };
    tenant.tryTake();
    return undefined;
  }
}

/** Leaky buckets per token and per tenant: over either, 429 with Retry-After (seconds). */
export function rateLimit(limits: ApiRateLimits): MiddlewareHandler<{ Variables: AuthVariables }> {
  return async (c, next) => {
    const token = c.get('token') as TokenRecord | undefined;
    if (!token) return next();
    const refused = limits.take(token);
    if (refused) {
      const { bucket, what } = refused;
      c.header('Retry-After', String(Math.max(1, Math.ceil(bucket.msUntil() / 1000))));
      return errorResponse(c, 429, 'rate_limited', `too many requests for this ${what}: limit ${bucket.perSecond}/s, burst ${bucket.capacity}`);
    }
    return next();
  };
}
