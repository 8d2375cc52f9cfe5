// A guest's TCP ports through the API (docs/api.md, "Ports"):
//   ANY /v1/vms/:id/ports/:port[/*]   HTTP to the guest's port: the rest of the path and the query
//                                     go to the guest, bodies streamed both ways
//   GET /v1/vms/:id/ports/:port[/*]   with Upgrade: websocket: the connection is spliced to the
//                                     guest's port (the guest answers the upgrade itself)
//   GET /v1/vms/:id/ports             the guest's listening TCP ports
// The server reaches the guest through the VM's host-side address (docs/network.md). The guest is
// hostile: its answers are parsed by Node's HTTP parser (strict, headers bounded), a silent guest
// is cut after CAPSULE_PORT_IDLE_TIMEOUT, and the caller's capsule token never reaches it.
import { request as httpRequest, type IncomingMessage, type ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import type { Context } from 'hono';
import { createRoute, z } from '@hono/zod-openapi';
import { ApiError } from '../supervisor/errors.js';
import type { TokenRecord } from '../db/tokens.js';
import { AGENT_PORT, GUEST_ADDRESS } from '../network/host.js';
import { acceptRawUpgrade, isUpgradeRequest, type SocketLimiter } from './websocket.js';
import { socketLimit } from './events.js';
import { agentErrors, requireRunning } from './exec.js';
import { ErrorSchema, IdParams, json } from './schemas.js';
import { newRouter, type AppDeps, type AppEnv } from './app.js';

/** Proxied requests stream their bodies: app.ts exempts these paths from the body limit. */
export const PORT_PROXY_PATH = /^\/v1\/vms\/[^/]+\/ports\/[^/]+(\/|$)/;
/** The capsule part of a proxied request target (raw, as sent): what follows goes to the guest. */
const PROXY_PREFIX = /^\/v1\/vms\/[^/?]+\/ports\/[^/?]+/;

export const PORT_CONNECT_TIMEOUT_MS = 10_000;
/** Largest response head a guest may send (Node's parser refuses more: 502). */
export const PORT_MAX_HEADER_BYTES = 32 * 1024;
/** Methods proxied (registered per method so that metrics and audit name the route). */
const PROXY_METHODS = ['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS'];
/** Hop-by-hop headers (RFC 9110 7.6.1): they describe one connection, not the message. */
const HOP_BY_HOP = ['connection', 'keep-alive', 'proxy-connection', 'proxy-authorization', 'te', 'trailer', 'upgrade'];
/** /proc/net/tcp{,6} read for GET /ports, at most this much each (~150 bytes a socket). */
const MAX_PROC_NET_BYTES = 4 * 1024 * 1024;

// ---- the target ----

/** The port in the path, 1-65535, else 400. */
export function parsePort(raw: string | undefined): number {
  const n = raw !== undefined && /^\d{1,5}$/.test(raw) ? Number(raw) : NaN;
  if (!(n >= 1 && n <= 65535)) throw new ApiError(400, 'invalid_request', `port: must be a TCP port number, 1-65535 (got ${JSON.stringify(raw ?? '')})`, 'port');
  return n;
}

/** The VM must be running with its network up: the proxy reaches the guest only through it. */
function requireNetwork(deps: AppDeps, id: string): void {
  requireRunning(deps, id);
  const vm = deps.vms.get(id)!;
  const why = !vm.network.enabled
    ? `VM ${vm.name} was created without a network ("network": {"enabled": false}): its ports cannot be reached`
    : !deps.network?.available
      ? `VMs get no network on this server (${deps.network?.reason ?? 'no network component'}): guest ports cannot be reached`
      : !deps.network.endpoint(id)
        ? `VM ${vm.name}'s network is not up`
        : undefined;
  if (why) throw new ApiError(409, 'no_network', why);
}

/** A connection to the guest's port, or 502 port_unreachable that names the port. */
async function connectPort(deps: AppDeps, id: string, port: number): Promise<Socket> {
  try {
    return await deps.network!.connectGuest(id, port, PORT_CONNECT_TIMEOUT_MS);
  } catch (e) {
    if (e instanceof ApiError) throw e;
    const code = (e as NodeJS.ErrnoException).code;
    const why = code === 'ECONNREFUSED' ? 'connection refused: nothing listens there'
      : code === undefined ? (e as Error).message : `${code}`;
    throw new ApiError(502, 'port_unreachable', `cannot connect to port ${port} of the guest (${why})`);
  }
}

/**
 * The request target for the guest: what follows /v1/vms/:id/ports/:port in the raw target
 * ("/" when nothing does), the query kept as sent except `access_token` (a capsule token).
 */
export function guestTarget(rawUrl: string): string {
  const rest = rawUrl.replace(PROXY_PREFIX, '');
  const q = rest.indexOf('?');
  let path = q < 0 ? rest : rest.slice(0, q);
  if (!path.startsWith('/')) path = `/${path}`;
  if (q < 0) return path;
  const query = rest.slice(q + 1).split('&').filter((p) => !isAccessToken(p)).join('&');
  return query ? `${path}?${query}` : path;
}

function isAccessToken(param: string): boolean {
  const name = param.split('=', 1)[0]!;
  try {
    return decodeURIComponent(name.replace(/\+/g, ' ')) === 'access_token';
  } catch {
    return false;
  }
}

/**
 * The headers the guest gets, as raw [name, value, ...] pairs in the client's order and case:
 * without Authorization (the capsule token), without hop-by-hop headers unless `upgrade` (a
 * WebSocket handshake needs Connection and Upgrade), with X-Forwarded-For/Proto/Host added.
 */
export function forwardedHeaders(req: IncomingMessage, upgrade: boolean): string[] {
  const drop = new Set(['authorization', 'x-forwarded-for']);
  if (!upgrade) {
    for (const h of HOP_BY_HOP) drop.add(h);
    for (const h of String(req.headers.connection ?? '').split(',')) if (h.trim()) drop.add(h.trim().toLowerCase());
    drop.delete('transfer-encoding'); // kept: Node re-frames the (decoded) body as it says
  }
  const out: string[] = [];
  const raw = req.rawHeaders;
  for (let i = 0; i < raw.length; i += 2) if (!drop.has(raw[i]!.toLowerCase())) out.push(raw[i]!, raw[i + 1]!);
  const prior = req.headers['x-forwarded-for'];
  const client = req.socket.remoteAddress ?? 'unknown';
  out.push('X-Forwarded-For', prior ? `${prior}, ${client}` : client);
  // A proxy in front of capsule may have said these already: kept then.
  if (req.headers['x-forwarded-proto'] === undefined) out.push('X-Forwarded-Proto', (req.socket as { encrypted?: boolean }).encrypted ? 'https' : 'http');
  if (req.headers['x-forwarded-host'] === undefined && req.headers.host !== undefined) out.push('X-Forwarded-Host', req.headers.host);
  return out;
}

/** The guest's response headers for the client: hop-by-hop ones and the framing are Node's to set. */
function answerHeaders(res: IncomingMessage): string[] {
  const drop = new Set([...HOP_BY_HOP, 'transfer-encoding']);
  for (const h of String(res.headers.connection ?? '').split(',')) if (h.trim()) drop.add(h.trim().toLowerCase());
  const out: string[] = [];
  const raw = res.rawHeaders;
  for (let i = 0; i < raw.length; i += 2) if (!drop.has(raw[i]!.toLowerCase())) out.push(raw[i]!, raw[i + 1]!);
  return out;
}

// ---- HTTP ----

/** What went wrong talking HTTP to the guest, before any of the answer reached the client. */
function guestHttpError(e: NodeJS.ErrnoException, port: number, idleMs: number): ApiError {
  if (e.code === 'PORT_IDLE') return new ApiError(504, 'port_timeout', `port ${port} of the guest sent nothing for ${idleMs / 1000} s`);
  if (e.code?.startsWith('HPE_')) return new ApiError(502, 'port_protocol_error', `port ${port} of the guest sent an invalid HTTP response (${e.code}: ${e.message})`);
  return new ApiError(502, 'port_protocol_error', `port ${port} of the guest closed the connection without an HTTP response (${e.code ?? e.message})`);
}

/**
 * Sends the client's request to the guest over `sock` and its answer back, both streamed (pipe:
 * backpressure both ways, nothing held whole). Resolves with the guest's status once the client's
 * response is over (sent or cut); rejects with an ApiError while nothing has been sent yet.
 */
function proxyHttp(sock: Socket, incoming: IncomingMessage, outgoing: ServerResponse, port: number, idleMs: number): Promise<number> {
  return new Promise((resolve, reject) => {
    let status = 0;
    const req = httpRequest({
      method: incoming.method, path: guestTarget(incoming.url ?? '/'), headers: forwardedHeaders(incoming, false), setHost: false,
      createConnection: () => sock, maxHeaderSize: PORT_MAX_HEADER_BYTES,
    });
    // Idle, not total: a long download that keeps moving is fine, a guest that stalls is not.
    req.setTimeout(idleMs, () => req.destroy(Object.assign(new Error('idle'), { code: 'PORT_IDLE' })));
    const fail = (e: NodeJS.ErrnoException) => {
      incoming.unpipe(req);
      if (!outgoing.headersSent) return reject(guestHttpError(e, port, idleMs));
      // Part of the answer is out: the only honest signal left is to cut the client off.
      outgoing.destroy();
    };
    req.on('error', fail);
    // A 101 to a request without Upgrade (those are stripped) is a broken guest.
    req.on('upgrade', (_res, s: Duplex) => { s.destroy(); fail(Object.assign(new Error('unexpected 101'), { code: 'HPE_UNEXPECTED_UPGRADE' })); });
    req.on('response', (res) => {
      status = res.statusCode ?? 502;
      try {
        outgoing.writeHead(status, res.statusMessage, answerHeaders(res));
      } catch (e) {
        // A status or header Node will not send (it checked less when parsing).
        res.destroy();
        req.destroy();
        return reject(new ApiError(502, 'port_protocol_error', `port ${port} of the guest sent a response that cannot be passed on (${(e as Error).message})`));
      }
      res.on('error', () => outgoing.destroy());
      res.on('aborted', () => outgoing.destroy());
      res.pipe(outgoing);
    });
    // The client went away (or the answer is complete): the guest's connection goes too.
    outgoing.on('close', () => {
      if (!outgoing.writableFinished) req.destroy();
      resolve(status);
    });
    incoming.on('error', () => req.destroy());
    incoming.pipe(req);
  });
}

/** The handler for every proxied method. */
function proxyRoute(deps: AppDeps, sockets: SocketLimiter) {
  return async (c: Context<AppEnv>) => {
    const id = c.req.param('id')!;
    const port = parsePort(c.req.param('port'));
    if (isUpgradeRequest(c)) return upgrade(deps, sockets, c, id, port);
    requireNetwork(deps, id);
    const env = c.env as { incoming?: IncomingMessage; outgoing?: ServerResponse } | undefined;
    // (app.request() in unit tests has no Node request: a 500, logged.)
    if (!env?.incoming || !env.outgoing) throw new Error('the ports proxy needs the Node HTTP server');
    const sock = await connectPort(deps, id, port);
    const status = await proxyHttp(sock, env.incoming, env.outgoing, port, deps.config.portIdleTimeoutMs);
    // Already sent on the Node response: @hono/node-server leaves it alone; metrics and the
    // audit log see the guest's status (a status outside Fetch's 200-599 as 502).
    const shown = status >= 200 && status <= 599 ? status : 502;
    return c.body(null, shown as 200, { 'x-hono-already-sent': '1' });
  };
}

// ---- WebSocket ----

/**
 * An upgrade: connects to the guest's port first (so that failures get the usual JSON errors),
 * then hands the client's socket over: the upgrade request (without the capsule token) goes to
 * the guest, and from then on bytes flow both ways untouched, the guest's 101 first.
 */
async function upgrade(deps: AppDeps, sockets: SocketLimiter, c: Context<AppEnv>, id: string, port: number): Promise<Response> {
  // A spliced connection carries anything into the guest: like typing on the console, not for a read token.
  const token = c.get('token') as TokenRecord;
  if (token.scope === 'read') throw new ApiError(403, 'forbidden', `token scope 'read' cannot open a WebSocket to a guest's port (it writes to the guest)`);
  requireNetwork(deps, id);
  const guest = await connectPort(deps, id, port);
  return acceptRawUpgrade(c, socketLimit(sockets), {
    discard: () => guest.destroy(),
    splice: (req, client, head) => {
      deps.metrics.socketOpened('ports');
      client.once('close', () => deps.metrics.socketClosed('ports'));
      splice(req, client, head, guest, port, deps.config.portIdleTimeoutMs);
    },
  });
}

function splice(req: IncomingMessage, client: Duplex, head: Buffer, guest: Socket, port: number, idleMs: number): void {
  const h = forwardedHeaders(req, true);
  const lines = [`${req.method} ${guestTarget(req.url ?? '/')} HTTP/1.1`];
  for (let i = 0; i < h.length; i += 2) lines.push(`${h[i]}: ${h[i + 1]}`);
  const cut = () => { client.destroy(); guest.destroy(); };
  client.on('error', cut);
  guest.on('error', cut);
  client.on('close', cut);
  guest.on('close', cut);
  // Until the guest answers the handshake, silence is a failure; after, a quiet WebSocket is normal.
  guest.setTimeout(idleMs, () => {
    if (!client.destroyed) client.end(`HTTP/1.1 504 Gateway Timeout\r\nConnection: close\r\nContent-Type: application/json\r\n\r\n${JSON.stringify({ error: { code: 'port_timeout', message: `port ${port} of the guest did not answer the upgrade in ${idleMs / 1000} s` } })}`);
    guest.destroy();
  });
  guest.once('data', () => guest.setTimeout(0));
  guest.write(`${lines.join('\r\n')}\r\n\r\n`);
  if (head.length > 0) guest.write(head);
  client.pipe(guest);
  guest.pipe(client);
}

// ---- GET /ports ----

export interface ListeningPort {
  port: number;
  /** The addresses it listens on, as the guest's kernel says. */
  addresses: string[];
  /** False when it listens only where the host cannot reach (loopback): the proxy gets 502 there. */
  reachable: boolean;
  /** The proxy's path for it. */
  path: string;
}

/** An address of /proc/net/tcp{,6} ("0100007F" / 32 hex digits, each 32-bit word in host order, x86: little-endian). */
export function procAddress(hex: string): string {
  const words = hex.match(/.{8}/g) ?? [];
  const bytes = words.flatMap((w) => [6, 4, 2, 0].map((i) => parseInt(w.slice(i, i + 2), 16)));
  if (bytes.length === 4) return bytes.join('.');
  // IPv4-mapped (a dual-stack socket bound to an IPv4 address): written the usual way.
  if (bytes.slice(0, 10).every((b) => b === 0) && bytes[10] === 0xff && bytes[11] === 0xff) return `::ffff:${bytes.slice(12).join('.')}`;
  const groups = [];
  for (let i = 0; i < 16; i += 2) groups.push(((bytes[i]! << 8) | bytes[i + 1]!).toString(16));
  // The URL parser writes IPv6 in its canonical short form.
  return new URL(`http://[${groups.join(':')}]`).hostname.slice(1, -1);
}

/** Listening sockets (state 0A) of /proc/net/tcp{,6} texts: port -> addresses. */
export function parseProcNetTcp(texts: string[]): Map<number, Set<string>> {
  const ports = new Map<number, Set<string>>();
  for (const text of texts) {
    for (const line of text.split('\n').slice(1)) {
      const f = line.trim().split(/\s+/);
      if (f.length < 4 || f[3] !== '0A') continue;
      const [addr, portHex] = f[1]!.split(':');
      const port = parseInt(portHex ?? '', 16);
      if (!addr || !(port >= 1 && port <= 65535)) continue;
      let set = ports.get(port);
      if (!set) ports.set(port, (set = new Set()));
      set.add(procAddress(addr));
    }
  }
  return ports;
}

const REACHABLE = new Set(['0.0.0.0', '::', GUEST_ADDRESS, `::ffff:${GUEST_ADDRESS}`]);

async function readProcFile(deps: AppDeps, id: string, path: string): Promise<string> {
  let r;
  try {
    r = await deps.agent.read(id, path);
  } catch (e) {
    // No IPv6 in the guest's kernel: no tcp6 file.
    if (e instanceof ApiError && e.status === 404) return '';
    throw e;
  }
  if (r.kind !== 'file') return '';
  const parts: Buffer[] = [];
  let size = 0;
  const reader = r.body.getReader();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    parts.push(Buffer.from(value));
    size += value.length;
    if (size >= MAX_PROC_NET_BYTES) { await reader.cancel(); break; }
  }
  return Buffer.concat(parts).toString('latin1');
}

export async function listeningPorts(deps: AppDeps, id: string): Promise<ListeningPort[]> {
  const texts = await Promise.all(['/proc/net/tcp', '/proc/net/tcp6'].map((p) => readProcFile(deps, id, p)));
  const found = parseProcNetTcp(texts);
  found.delete(AGENT_PORT); // capsule's own agent, not the guest's service
  return [...found.entries()].sort(([a], [b]) => a - b).map(([port, set]) => {
    const addresses = [...set].sort();
    return { port, addresses, reachable: addresses.some((a) => REACHABLE.has(a)), path: `/v1/vms/${id}/ports/${port}/` };
  });
}

// ---- routes ----

const PortSchema = z.object({
  port: z.number().int(), addresses: z.array(z.string()), reachable: z.boolean().openapi({ description: 'false: it listens on loopback only, the proxy cannot reach it' }),
  path: z.string().openapi({ description: 'the proxy path for it' }),
}).openapi('ListeningPort');
const PortParams = IdParams.extend({ port: z.string().openapi({ param: { name: 'port', in: 'path' }, description: '1-65535' }) });

const listRoute = createRoute({
  method: 'get', path: '/vms/{id}/ports', tags: ['ports'], summary: 'The guest\'s listening TCP ports (read from its /proc/net/tcp and tcp6 through the agent)',
  request: { params: IdParams }, responses: { 200: json(z.object({ ports: z.array(PortSchema) }), 'ports'), ...agentErrors },
});

const proxyErrors = {
  400: json(ErrorSchema, 'port outside 1-65535'),
  401: json(ErrorSchema, 'missing or invalid token'),
  403: json(ErrorSchema, 'token scope too small (read: GET, HEAD and OPTIONS only, no WebSocket)'),
  404: json(ErrorSchema, 'no such VM (another tenant\'s is not found either)'),
  409: json(ErrorSchema, 'not_running (the VM), no_network (the VM has no network: its ports cannot be reached)'),
  429: json(ErrorSchema, 'rate limited, or too many open WebSockets for the token'),
  502: json(ErrorSchema, 'port_unreachable (nothing listens, or the connect timed out after 10 s), port_protocol_error (the guest\'s answer was not HTTP)'),
  504: json(ErrorSchema, 'port_timeout: the guest was silent for CAPSULE_PORT_IDLE_TIMEOUT'),
};

export function portRoutes(deps: AppDeps, sockets: SocketLimiter) {
  const router = newRouter().openapi(listRoute, async (c) => {
    const { id } = c.req.valid('param');
    requireRunning(deps, id);
    return c.json({ ports: await listeningPorts(deps, id) }, 200);
  });
  const handler = proxyRoute(deps, sockets);
  router.on(PROXY_METHODS, ['/vms/:id/ports/:port', '/vms/:id/ports/:port/*'], handler);
  // The proxy in the OpenAPI document (it takes any path and body, so no schema of its own).
  for (const path of ['/vms/{id}/ports/{port}', '/vms/{id}/ports/{port}/{path}']) {
    for (const method of ['get', 'head', 'post', 'put', 'patch', 'delete', 'options'] as const) {
      const params = path.endsWith('{path}') ? PortParams.extend({ path: z.string().openapi({ param: { name: 'path', in: 'path' }, description: 'the rest of the path, any number of segments' }) }) : PortParams;
      router.openAPIRegistry.registerPath({
        method, path, tags: ['ports'],
        summary: method === 'get' ? 'HTTP to a port of the guest; with Upgrade: websocket, a WebSocket to it' : 'HTTP to a port of the guest',
        description: 'The rest of the path and the query go to the guest (without access_token), the body is streamed; Authorization is not passed on; X-Forwarded-For/Proto/Host are added. The guest\'s answer comes back as it is.',
        request: { params },
        responses: { 200: { description: 'the guest\'s answer (any status)' }, ...proxyErrors },
      });
    }
  }
  return router;
}
