// Event streams over WebSocket: /v1/events (all VMs) and /v1/vms/:id/events.
// Subscribers send nothing: inbound messages are limited to EVENTS_MAX_MESSAGE bytes.
import type { Context } from 'hono';
import type { WebSocket } from 'ws';
import { errorResponse } from './errors.js';
import { notUpgradeError, upgradeWebSocket, type SocketLimiter } from './websocket.js';
import { newRouter, type AppDeps, type AppEnv } from './app.js';
import type { TokenRecord } from '../db/tokens.js';
import type { ApiRateLimits } from '../auth/middleware.js';
import { visibleTenant } from './ownership.js';

export const EVENTS_MAX_MESSAGE = 4 * 1024;

/** Open WebSockets are counted per token (and closed when it is revoked or expires). */
export const tokenKey = (c: Context) => (c.get('token') as TokenRecord).id;
export const socketLimit = (sockets: SocketLimiter) => ({ limiter: sockets, key: tokenKey, expiresAt: (c: Context) => (c.get('token') as TokenRecord).expiresAt });

/** Inbound messages count against the token's and the tenant's buckets like API calls do. */
export function inboundAllowed(c: Context<AppEnv>, limits: ApiRateLimits): boolean {
  return limits.take(c.get('token') as TokenRecord) === undefined;
}

/** WebSocket close code "policy violation" (RFC 6455): a client that floods a socket. */
export const CLOSE_FLOOD = 1008;
/** Refused messages in a row after which a socket is closed rather than told again. */
export const FLOOD_CLOSE_AFTER = 64;

/**
 * One socket's inbound gate: a message passes while the buckets allow. The first refused message
 * of a run gets one notice (`notify`); a client that keeps sending past FLOOD_CLOSE_AFTER refused
 * messages in a row is closed with 1008 and a reason, so that a flood costs the server neither a
 * reply per message nor the token's whole budget for good. A message that passes ends the run.
 */
export function inboundGate(c: Context<AppEnv>, limits: ApiRateLimits, notify: (ws: WebSocket) => void): (ws: WebSocket) => boolean {
  let refused = 0;
  return (ws) => {
    if (inboundAllowed(c, limits)) {
      refused = 0;
      return true;
    }
    refused++;
    if (refused === 1) notify(ws);
    if (refused === FLOOD_CLOSE_AFTER) ws.close(CLOSE_FLOOD, `too many messages: rate limited (${FLOOD_CLOSE_AFTER} refused in a row)`);
    return false;
  };
}

/** Close code for a binary message on a socket that takes text only (RFC 6455 "unsupported data"). */
export const CLOSE_UNSUPPORTED = 1003;

export function eventRoutes(deps: AppDeps, limits: ApiRateLimits, sockets: SocketLimiter) {
  const router = newRouter();
  const validate = (vmScoped: boolean) => async (c: Context<AppEnv>, next: () => Promise<void>) => {
    const notUpgrade = notUpgradeError(c);
    if (notUpgrade) return notUpgrade;
    const since = c.req.query('since');
    if (since !== undefined && !/^\d{1,15}$/.test(since)) return errorResponse(c, 400, 'invalid_request', 'since: must be a non-negative integer', 'since');
    if (vmScoped && !deps.vms.get(c.req.param('id') ?? '')) return errorResponse(c, 404, 'not_found', `no VM with id ${c.req.param('id')}`);
    return next();
  };
  const stream = upgradeWebSocket({ maxPayload: EVENTS_MAX_MESSAGE, limit: socketLimit(sockets) }, (c: Context<AppEnv>) => {
    const vm = c.req.param('id');
    // /v1/vms/:id/events: the VM's tenant was checked (ownership.ts); /v1/events: the caller's
    // tenant's events, or for an admin all (or ?tenant=).
    const tenant = vm === undefined ? visibleTenant(deps.tenants, c) : undefined;
    const sinceRaw = c.req.query('since');
    const gate = inboundGate(c, limits, (ws) => ws.send(JSON.stringify({ error: { code: 'rate_limited', message: 'too many messages' } })));
    let unsubscribe: (() => void) | undefined;
    return {
      onOpen: (ws: WebSocket) => {
        deps.metrics.socketOpened('events');
        unsubscribe = deps.hub.subscribe(
          { send: (m) => ws.send(m, { binary: false }), bufferedAmount: () => ws.bufferedAmount },
          { vm, tenant, since: sinceRaw === undefined ? undefined : Number(sinceRaw) },
        );
      },
      onMessage: (_data: Buffer, binary: boolean, ws: WebSocket) => {
        // Subscribers send nothing that matters; binary frames are not even text.
        if (binary) return ws.close(CLOSE_UNSUPPORTED, 'events sockets take no binary messages');
        gate(ws);
      },
      onClose: () => {
        deps.metrics.socketClosed('events');
        unsubscribe?.();
      },
    };
  });
  router.get('/events', validate(false), stream);
  router.get('/vms/:id/events', validate(true), stream);
  return router;
}
