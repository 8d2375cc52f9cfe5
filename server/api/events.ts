// Event streams over WebSocket: /v1/events (all VMs) and /v1/vms/:id/events.
import type { Context } from 'hono';
import type { UpgradeWebSocket, WSContext } from 'hono/ws';
import type { WebSocket } from 'ws';
import { errorResponse } from './errors.js';
import { newRouter, type AppDeps, type AppEnv } from './app.js';
import type { BucketMap } from '../util/leaky-bucket.js';
import type { TokenRecord } from '../db/tokens.js';

/** Inbound messages count against the token's bucket like API calls do. */
export function inboundAllowed(c: Context<AppEnv>, buckets: BucketMap): boolean {
  const token = c.get('token') as TokenRecord;
  return buckets.get(token.id).tryTake();
}

/** A plain GET on a WebSocket endpoint gets a clear 400 instead of an empty response. */
export function notUpgradeError(c: Context<AppEnv>): Response | undefined {
  if (c.req.header('upgrade')?.toLowerCase() === 'websocket') return undefined;
  return errorResponse(c, 400, 'invalid_request', 'this endpoint is a WebSocket: send an Upgrade request');
}

export function eventRoutes(deps: AppDeps, upgrade: UpgradeWebSocket, buckets: BucketMap) {
  const router = newRouter();
  const validate = (vmScoped: boolean) => async (c: Context<AppEnv>, next: () => Promise<void>) => {
    const notUpgrade = notUpgradeError(c);
    if (notUpgrade) return notUpgrade;
    const since = c.req.query('since');
    if (since !== undefined && !/^\d+$/.test(since)) return errorResponse(c, 400, 'invalid_request', 'since: must be a non-negative integer', 'since');
    if (vmScoped && !deps.vms.get(c.req.param('id') ?? '')) return errorResponse(c, 404, 'not_found', `no VM with id ${c.req.param('id')}`);
    return next();
  };
  const stream = (c: Context<AppEnv>) => {
    const vm = c.req.param('id');
    const sinceRaw = c.req.query('since');
    let unsubscribe: (() => void) | undefined;
    return {
      onOpen: (_: Event, ws: WSContext) => {
        const raw = ws.raw as WebSocket;
        unsubscribe = deps.hub.subscribe(
          { send: (m) => raw.send(m, { binary: false }), bufferedAmount: () => raw.bufferedAmount },
          { vm, since: sinceRaw === undefined ? undefined : Number(sinceRaw) },
        );
      },
      onMessage: (_: MessageEvent, ws: WSContext) => {
        if (!inboundAllowed(c, buckets)) ws.send(JSON.stringify({ error: { code: 'rate_limited', message: 'too many messages' } }));
      },
      onClose: () => unsubscribe?.(),
    };
  };
  router.get('/events', validate(false), upgrade(stream));
  router.get('/vms/:id/events', validate(true), upgrade(stream));
  return router;
}
