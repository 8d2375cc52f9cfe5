// Times every request into capsule_http_request_duration_seconds, labelled by the route
// pattern Hono matched ("/v1/vms/:id"), never the raw URL: one series per route, however many
// VMs or junk paths clients send.
import type { Context, MiddlewareHandler } from 'hono';
import { matchedRoutes } from 'hono/route';
import type { Metrics } from '../metrics/index.js';

/** Label for requests no route (other than catch-all middleware) matched. */
export const UNMATCHED_ROUTE = 'unmatched';

/**
 * The pattern of the first route with a method handler that matched: the one that answers
 * (middleware is registered for ALL methods). A request refused by middleware (401, 429)
 * still gets the pattern of the route it was for.
 */
export function routePattern(c: Context): string {
  return matchedRoutes(c).find((r) => r.method !== 'ALL')?.path ?? UNMATCHED_ROUTE;
}

/**
 * `Server-Timing: app;dur=<ms>`: the server's own time for the request (HTTP and the network not
 * included), which clients and benchmarks read instead of guessing it from a round trip. A
 * response whose headers are immutable (a guest's answer relayed as it came) goes without.
 */
function serverTiming(c: Context, seconds: number): void {
  try {
    c.res.headers.set('server-timing', `app;dur=${(seconds * 1000).toFixed(2)}`);
  } catch {
    // immutable headers: nothing to add
  }
}

export function requestMetrics(metrics: Metrics): MiddlewareHandler {
  return async (c, next) => {
    const start = process.hrtime.bigint();
    try {
      await next();
    } finally {
      const seconds = Number(process.hrtime.bigint() - start) / 1e9;
      metrics.observeRequest(c.req.method, routePattern(c), c.res.status, seconds);
      serverTiming(c, seconds);
    }
  };
}
