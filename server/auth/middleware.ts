// Bearer-token authentication and per-token rate limiting for /v1 routes.
import type { MiddlewareHandler } from 'hono';
import type { TokenRecord, TokenStore } from '../db/tokens.js';
import { errorResponse } from '../api/errors.js';
import { isUpgradeRequest } from '../api/websocket.js';
import type { BucketMap } from '../util/leaky-bucket.js';

export interface AuthVariables {
  token: TokenRecord;
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

export function requireToken(tokens: TokenStore): MiddlewareHandler<{ Variables: AuthVariables }> {
  return async (c, next) => {
    if (PUBLIC_PATHS.has(c.req.path)) return next();
    const token = presentedToken(c.req.header('authorization'), () => c.req.query('access_token'), isUpgradeRequest(c));
    const record = token === undefined ? undefined : tokens.verify(token);
    if (!record) {
      c.header('WWW-Authenticate', 'Bearer realm="capsule"');
      return errorResponse(c, 401, 'unauthorized', token === undefined ? 'missing bearer token' : 'invalid token');
    }
    c.set('token', record);
    return next();
  };
}

/** Leaky bucket per token: over the limit, 429 with Retry-After (seconds). */
export function rateLimit(buckets: BucketMap): MiddlewareHandler<{ Variables: AuthVariables }> {
  return async (c, next) => {
    const token = c.get('token') as TokenRecord | undefined;
    if (!token) return next();
    const bucket = buckets.get(token.id);
    if (!bucket.tryTake()) {
      c.header('Retry-After', String(Math.max(1, Math.ceil(bucket.msUntil() / 1000))));
      return errorResponse(c, 429, 'rate_limited', `too many requests: limit ${bucket.perSecond}/s, burst ${bucket.capacity}`);
    }
    return next();
  };
}
