// GET /metrics: the Prometheus text format. On the main listener it needs an admin token; with
// CAPSULE_METRICS_ADDR it is served only on that separate listener, without a token (bind it to
// an address only the scraper reaches), and the main listener does not serve it.
import { Hono, type Context, type MiddlewareHandler } from 'hono';
import type { TokenRecord, TokenStore } from '../db/tokens.js';
import type { Metrics } from '../metrics/index.js';
import { rateLimit, requireToken, type ApiRateLimits, type AuthVariables } from '../auth/middleware.js';
import { errorResponse } from './errors.js';

/** Whether the token may read server-wide figures (every tenant's): an admin token only. */
export function isAdmin(token: TokenRecord | undefined): boolean {
  return token?.scope === 'admin';
}

const requireAdmin: MiddlewareHandler<{ Variables: AuthVariables }> = async (c, next) => {
  if (!isAdmin(c.get('token'))) return errorResponse(c, 403, 'forbidden', 'GET /metrics needs an admin token');
  return next();
};

const serveMetrics = (metrics: Metrics) => async (c: Context) =>
  c.body(await metrics.render(), 200, { 'content-type': metrics.contentType, 'cache-control': 'no-store' });

/** /metrics on the main listener: admin token, rate-limited like the API. */
export function metricsRoute(metrics: Metrics, tokens: TokenStore, limits: ApiRateLimits) {
  return new Hono<{ Variables: AuthVariables }>().get('/metrics', requireToken(tokens), rateLimit(limits), requireAdmin, serveMetrics(metrics));
}

/** The whole app of the separate metrics listener (CAPSULE_METRICS_ADDR): /metrics, nothing else. */
export function metricsListenerApp(metrics: Metrics) {
  const app = new Hono();
  app.get('/metrics', serveMetrics(metrics));
  app.notFound((c) => errorResponse(c, 404, 'not_found', 'this listener serves GET /metrics only'));
  return app;
}
