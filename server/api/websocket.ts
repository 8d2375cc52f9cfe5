// WebSocket upgrades for Hono routes, on the `ws` library.
//
// Why not @hono/node-ws: its `upgrade` listener is async and unguarded (`new URL()` on an
// absolute-form request line such as `GET http://a:99999/` throws, the rejection is unhandled
// and Node exits: one unauthenticated request killed the server), its WebSocketServer keeps ws's
// 100 MiB default maxPayload, and a plain GET carrying `Upgrade: websocket` without
// `Connection: upgrade` left a waiter behind that never resolved. Here:
//   - Node's 'upgrade' event is the only way in: the route sees a marker in its env, so a plain
//     HTTP request can never be taken for an upgrade (it gets 400), and only an upgrade request
//     may carry `?access_token=` (auth/middleware.ts asks isUpgradeRequest());
//   - the listener catches everything: a bad request line gets 400, an internal error 500, and
//     the connection is closed; nothing escapes as an unhandled rejection;
//   - each route names its own maxPayload (console input is keystrokes, events sockets take none).
import { STATUS_CODES, type IncomingMessage, type Server } from 'node:http';
import type { Duplex } from 'node:stream';
import type { Context, Handler } from 'hono';
import type { Logger } from 'pino';
import { WebSocketServer, type RawData, type WebSocket } from 'ws';
import { errorResponse } from './errors.js';

/** What a route does with an accepted socket. Exceptions thrown here are logged, not fatal. */
export interface SocketHandlers {
  onOpen(ws: WebSocket): void;
  onMessage?(data: Buffer, isBinary: boolean, ws: WebSocket): void;
  onClose?(code: number): void;
}

export interface UpgradeOptions {
  /** Largest inbound message in bytes; a larger one closes the socket with 1009. */
  maxPayload: number;
  /** Open sockets per key (the token): over it, the upgrade gets 429. */
  limit?: { limiter: SocketLimiter; key: (c: Context) => string; expiresAt?: (c: Context) => string | undefined };
}

/**
 * What the limiter can close: a ws WebSocket, or a raw spliced connection (the ports proxy,
 * ports.ts) behind a small adapter.
 */
export interface TrackedSocket {
  close(code?: number, reason?: string): void;
  terminate(): void;
  once(event: 'close', listener: () => void): unknown;
}

/** Close code for a socket whose token was revoked or expired (4000-4999: application codes). */
export const CLOSE_TOKEN_REVOKED = 4001;

/**
 * Counts open WebSockets per key (the token; one limiter shared by every WebSocket route) and
 * knows the open sockets, so that revoking a token closes them at once.
 */
export class SocketLimiter {
  private readonly open = new Map<string, number>();
  private readonly sockets = new Map<string, Set<TrackedSocket>>();

  constructor(readonly max: number) {}

  /** Takes a place for `key`; false when it already holds `max`. */
  acquire(key: string): boolean {
    const n = this.open.get(key) ?? 0;
    if (n >= this.max) return false;
    this.open.set(key, n + 1);
    return true;
  }

  release(key: string): void {
    const n = (this.open.get(key) ?? 1) - 1;
    if (n <= 0) this.open.delete(key);
    else this.open.set(key, n);
  }

  count(key: string): number {
    return this.open.get(key) ?? 0;
  }

  /** Remembers an accepted socket of `key` until it closes; one whose token expires is closed then. */
  track(key: string, ws: TrackedSocket, expiresAt?: string): void {
    let set = this.sockets.get(key);
    if (!set) this.sockets.set(key, (set = new Set()));
    set.add(ws);
    // (setTimeout takes at most 2^31-1 ms, ~24 days: a later expiry is checked again then.)
    let expiry: NodeJS.Timeout | undefined;
    const armExpiry = () => {
      const ms = Date.parse(expiresAt!) - Date.now();
      expiry = ms <= 0x7fffffff
        ? setTimeout(() => ws.close(CLOSE_TOKEN_REVOKED, 'token expired'), Math.max(0, ms))
        : setTimeout(armExpiry, 0x7fffffff);
      expiry.unref();
    };
    if (expiresAt !== undefined) armExpiry();
    ws.once('close', () => {
      clearTimeout(expiry);
      set.delete(ws);
      if (set.size === 0 && this.sockets.get(key) === set) this.sockets.delete(key);
    });
  }

  /** Closes every open socket of `key` (a revoked token) with `code` and `reason`; returns how many. */
  closeAll(key: string, code: number, reason: string): number {
    const set = this.sockets.get(key);
    if (!set) return 0;
    for (const ws of set) {
      ws.close(code, reason);
      // A peer that does not answer the close frame is cut off.
      setTimeout(() => ws.terminate(), 1000).unref();
    }
    return set.size;
  }

  /** Closes every open socket of every key (the server is shutting down). */
  closeEvery(code: number, reason: string): void {
    for (const key of [...this.sockets.keys()]) this.closeAll(key, code, reason);
  }
}

const UPGRADE = Symbol('capsule.websocket-upgrade');

/**
 * A raw upgrade (ports.ts): instead of a ws WebSocket, the route takes the client's socket as
 * it is (the request already parsed, `head` the bytes read after it) and speaks to it itself.
 * `discard` is called instead when the socket is not handed over (the client went away).
 */
export interface RawUpgrade {
  splice(req: IncomingMessage, socket: Duplex, head: Buffer): void;
  discard(): void;
}

interface UpgradeSlot {
  accepted?: { handlers: SocketHandlers; maxPayload: number; release: () => void; raw?: undefined }
    | { raw: RawUpgrade; release: () => void };
}

type UpgradeEnv = { incoming: IncomingMessage; outgoing: undefined; [UPGRADE]: UpgradeSlot };

function slotOf(c: Context): UpgradeSlot | undefined {
  const env = c.env as Partial<UpgradeEnv> | undefined;
  return env?.[UPGRADE];
}

/** True only for a request that reached the server as a WebSocket upgrade (Node's 'upgrade' event). */
export function isUpgradeRequest(c: Context): boolean {
  return slotOf(c) !== undefined;
}

/** A plain request on a WebSocket endpoint gets a clear 400 instead of an empty answer. */
export function notUpgradeError(c: Context): Response | undefined {
  if (isUpgradeRequest(c)) return undefined;
  return errorResponse(c, 400, 'invalid_request', 'this endpoint is a WebSocket: send an Upgrade request');
}

/**
 * Accepts an upgrade as a raw connection (the ports proxy): `raw.splice` gets the client's
 * socket. Counts in the per-token socket limit like any WebSocket (the limiter may close it:
 * a revoked token's connections are cut). Returns the route's answer.
 */
export function acceptRawUpgrade(c: Context, limit: NonNullable<UpgradeOptions['limit']>, raw: RawUpgrade): Response {
  const slot = slotOf(c);
  if (!slot) { raw.discard(); return notUpgradeError(c)!; }
  const { limiter } = limit;
  const k = limit.key(c);
  if (!limiter.acquire(k)) {
    raw.discard();
    return errorResponse(c, 429, 'too_many_sockets', `too many open WebSockets for this token (at most ${limiter.max}): close one first`);
  }
  const expiresAt = limit.expiresAt?.(c);
  let released = false;
  const release = () => { if (!released) { released = true; limiter.release(k); } };
  slot.accepted = {
    release,
    raw: {
      discard: raw.discard,
      splice: (req, socket, head) => {
        const destroy = () => socket.destroy();
        limiter.track(k, { close: destroy, terminate: destroy, once: (_e, fn) => socket.once('close', fn) }, expiresAt);
        raw.splice(req, socket, head);
      },
    },
  };
  return c.body(null, 200);
}

/** The route's last handler: accepts the upgrade with `handlers` (earlier middleware has validated). */
export function upgradeWebSocket(opts: UpgradeOptions, create: (c: Context) => SocketHandlers): Handler {
  return (c) => {
    const slot = slotOf(c);
    if (!slot) return notUpgradeError(c)!;
    let release = () => {};
    let handlers = create(c);
    if (opts.limit) {
      const { limiter, key } = opts.limit;
      const k = key(c);
      const expiresAt = opts.limit.expiresAt?.(c);
      if (!limiter.acquire(k)) {
        return errorResponse(c, 429, 'too_many_sockets', `too many open WebSockets for this token (at most ${limiter.max}): close one first`);
      }
      let released = false;
      release = () => { if (!released) { released = true; limiter.release(k); } };
      const inner = handlers;
      handlers = { ...inner, onOpen: (ws) => { limiter.track(k, ws, expiresAt); inner.onOpen(ws); } };
    }
    slot.accepted = { handlers, maxPayload: opts.maxPayload, release };
    // Never sent: the listener below sees `accepted` and hands the socket to ws instead.
    return c.body(null, 200);
  };
}

interface FetchApp {
  request(input: string, init: RequestInit, env: unknown): Response | Promise<Response>;
}

/** Serves WebSocket upgrades of `server` through `app`'s routes. */
export function attachWebSockets(server: Server, app: FetchApp, log: Logger): void {
  const servers = new Map<number, WebSocketServer>();
  const wssFor = (maxPayload: number) => {
    let wss = servers.get(maxPayload);
    if (!wss) {
      wss = new WebSocketServer({ noServer: true, maxPayload, perMessageDeflate: false });
      servers.set(maxPayload, wss);
    }
    return wss;
  };

  server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => {
    socket.on('error', () => { /* the peer went away; nothing to do */ });
    handleUpgrade(req, socket, head).catch((e: Error) => {
      log.error({ err: e.message, stack: e.stack }, 'WebSocket upgrade failed');
      reject(socket, 500, { error: { code: 'internal', message: 'internal server error' } });
    });
  });

  async function handleUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): Promise<void> {
    if (req.headers.upgrade?.toLowerCase() !== 'websocket') {
      return reject(socket, 400, { error: { code: 'invalid_request', message: 'only WebSocket upgrades are served' } });
    }
    const url = originFormUrl(req.url);
    if (!url) return reject(socket, 400, { error: { code: 'invalid_request', message: 'invalid request target' } });
    const headers = new Headers();
    for (const [k, v] of Object.entries(req.headers)) {
      if (v === undefined) continue;
      for (const one of Array.isArray(v) ? v : [v]) headers.append(k, one);
    }
    const slot: UpgradeSlot = {};
    const env: UpgradeEnv = { incoming: req, outgoing: undefined, [UPGRADE]: slot };
    const res = await app.request(url, { method: req.method ?? 'GET', headers }, env);
    const accepted = slot.accepted;
    // The place a route took is given back when the socket closes, whether or not it opened.
    if (accepted) socket.once('close', accepted.release);
    if (accepted && (res.status !== 200 || socket.destroyed)) {
      accepted.release();
      accepted.raw?.discard();
    }
    if (!accepted && res.ok) {
      // A route that is not a WebSocket endpoint answered: its body is not for an upgrade request.
      return reject(socket, 400, { error: { code: 'invalid_request', message: `${url.slice('http://localhost'.length)} is not a WebSocket endpoint` } });
    }
    if (!accepted || res.status !== 200) return reject(socket, res.status, await res.text(), res.headers);
    if (socket.destroyed) return;
    if (accepted.raw) return accepted.raw.splice(req, socket, head);
    wssFor(accepted.maxPayload).handleUpgrade(req, socket, head, (ws) => open(ws, accepted.handlers, accepted.maxPayload));
  }

  function open(ws: WebSocket, h: SocketHandlers, maxPayload: number): void {
    withCloseReasons(ws, maxPayload);
    const guard = (what: string, fn: () => void) => {
      try {
        fn();
      } catch (e) {
        log.error({ err: (e as Error).message, stack: (e as Error).stack }, `WebSocket ${what} handler failed`);
        ws.terminate();
      }
    };
    ws.on('error', (e) => log.debug({ err: e.message }, 'WebSocket error'));
    ws.on('message', (data: RawData, isBinary: boolean) => guard('message', () => h.onMessage?.(toBuffer(data), isBinary, ws)));
    ws.on('close', (code: number) => guard('close', () => h.onClose?.(code)));
    guard('open', () => h.onOpen(ws));
  }
}

/**
 * ws closes a socket that breaks the protocol (a message over maxPayload: 1009; a bad frame: 1002;
 * invalid UTF-8 in a text message: 1007) with the code alone. A client deserves the reason in
 * words: give those closes one (ws calls the instance's close(), so an own property wraps it).
 */
function withCloseReasons(ws: WebSocket, maxPayload: number): void {
  const reasons: Record<number, string> = {
    1002: 'protocol error',
    1007: 'invalid UTF-8 in a text message',
    1009: `message too big: at most ${maxPayload} bytes`,
  };
  const close = ws.close.bind(ws);
  ws.close = (code?: number, reason?: string | Buffer) => close(code, reason ?? (code === undefined ? undefined : reasons[code]));
}

/** The request target as an absolute URL on localhost, or undefined unless it is origin-form ("/path?query"). */
function originFormUrl(target: string | undefined): string | undefined {
  if (!target || !target.startsWith('/') || target.startsWith('//')) return undefined;
  try {
    return new URL(target, 'http://localhost').href;
  } catch {
    return undefined;
  }
}

function toBuffer(data: RawData): Buffer {
  if (Buffer.isBuffer(data)) return data;
  if (Array.isArray(data)) return Buffer.concat(data);
  return Buffer.from(data);
}

const PASSED_HEADERS = ['content-type', 'www-authenticate', 'retry-after'];

/** Answers an upgrade request with a plain HTTP response and closes the connection. */
function reject(socket: Duplex, status: number, body: string | object, headers?: Headers): void {
  if (socket.destroyed) return;
  const text = typeof body === 'string' ? body : JSON.stringify(body);
  const lines = [`HTTP/1.1 ${status} ${STATUS_CODES[status] ?? ''}`, 'Connection: close', `Content-Length: ${Buffer.byteLength(text)}`];
  if (typeof body !== 'string') lines.push('Content-Type: application/json');
  for (const name of PASSED_HEADERS) {
    const v = headers?.get(name);
    if (v) lines.push(`${name}: ${v.replace(/[\r\n]/g, ' ')}`);
  }
  socket.end(`${lines.join('\r\n')}\r\n\r\n${text}`);
  // A peer that never reads must not hold the socket open.
  setTimeout(() => socket.destroy(), 5000).unref();
}
