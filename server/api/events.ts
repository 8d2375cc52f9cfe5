// Event streams over WebSocket: /v1/events (all VMs) and /v1/vms/:id/events.
// Subscribers send nothing: inbound messages are limited to EVENTS_MAX_MESSAGE bytes.
import type { Duplex } from 'node:stream';
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

/**
 * The socket writes of one event-loop turn go out together: the first event sent to a
 * subscriber in a turn corks its socket, and one setImmediate uncorks every socket corked in
 * that turn. The hub still offers each event to every subscriber at once, in order, with its
 * accounting (buckets, drops, bufferedAmount: corked bytes count) unchanged; but under load,
 * when a turn publishes several events, each subscriber gets them in one write (syscall)
 * instead of one write per event.
 */
export class TurnCorker {
  private corked = new Set<Duplex>();
  private scheduled = false;

  cork(socket: Duplex): void {
    if (this.corked.has(socket)) return;
    socket.cork();
    this.corked.add(socket);
    if (!this.scheduled) {
      this.scheduled = true;
      setImmediate(this.uncorkAll);
    }
  }

  private readonly uncorkAll = (): void => {
    this.scheduled = false;
    const sockets = this.corked;
    this.corked = new Set();
    for (const socket of sockets) socket.uncork();
  };
}

/** ws keeps the TCP socket in a field it does not document; without it, sends go through ws.send. */
const rawSocket = (ws: WebSocket): Duplex | undefined => (ws as unknown as { _socket?: Duplex })._socket;

/**
 * An unmasked, unfragmented text frame (RFC 6455 5.2), as a server sends it. A server's
 * frames are the same bytes for every client, so the hub's one encoded message becomes one
 * frame for all subscribers (remembered per message), written as is: ws.send would build a
 * header and issue two writes per subscriber.
 */
const frames = new WeakMap<Buffer, Buffer>();
export function textFrame(payload: Buffer): Buffer {
  let frame = frames.get(payload);
  if (frame) return frame;
  const n = payload.length;
  const headerLength = n < 126 ? 2 : n < 65536 ? 4 : 10;
  frame = Buffer.allocUnsafe(headerLength + n);
  frame[0] = 0x81; // FIN, opcode 1 (text)
  if (n < 126) frame[1] = n;
  else if (n < 65536) { frame[1] = 126; frame.writeUInt16BE(n, 2); }
  else { frame[1] = 127; frame.writeBigUInt64BE(BigInt(n), 2); }
  payload.copy(frame, headerLength);
  frames.set(payload, frame);
  return frame;
}

/**
 * Sends a hub message to one subscriber: the shared frame straight to its socket, corked
 * until the end of the turn. Safe beside ws's own sender: this server never compresses
 * (perMessageDeflate is off) nor sends Blobs, so ws writes its frames (pings, close)
 * synchronously and never holds a queue these writes could overtake; and only an OPEN
 * socket is written to. ws.bufferedAmount counts these bytes (it reads the socket's).
 */
function sendEvent(ws: WebSocket, message: Buffer, corker: TurnCorker): void {
  const socket = rawSocket(ws);
  if (!socket || ws.readyState !== ws.OPEN) return ws.send(message, { binary: false });
  corker.cork(socket);
  socket.write(textFrame(message));
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
    // Closing for a flood: what is still in flight is dropped unmetered, so that the frames a
    // client sent before it saw the close do not drain the token's budget for its next calls.
    if (refused >= FLOOD_CLOSE_AFTER) return false;
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
  const corker = new TurnCorker();
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
          {
            send: (m) => sendEvent(ws, m, corker),
            bufferedAmount: () => ws.bufferedAmount,
          },
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
