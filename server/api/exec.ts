// Commands in a VM through its guest agent (docs/agent.md):
//   POST /v1/vms/:id/exec           run to the end: {exitCode, signal?, stdout, stderr, ...} (bounded)
//   GET  /v1/vms/:id/exec           WebSocket: stream a command (or reattach to one by pid)
//   GET  /v1/vms/:id/processes      what runs (and finished background processes not yet collected)
//   POST /v1/vms/:id/processes/:pid/signal
import type { Context } from 'hono';
import type { WebSocket } from 'ws';
import { createRoute, z } from '@hono/zod-openapi';
import { ApiError } from '../supervisor/errors.js';
import type { TokenRecord } from '../db/tokens.js';
import type { ApiRateLimits } from '../auth/middleware.js';
import type { ExecStream } from '../agent/client.js';
import { SIGNALS } from '../../agent/protocol.js';
import { errorResponse } from './errors.js';
import { inboundAllowed, socketLimit } from './events.js';
import { notUpgradeError, upgradeWebSocket, type SocketLimiter } from './websocket.js';
import { ErrorSchema, IdParams, json } from './schemas.js';
import { newRouter, type AppDeps, type AppEnv } from './app.js';

/** stdout and stderr kept per POST exec (each); beyond, the answer says truncated. */
export const EXEC_MAX_OUTPUT = 1024 * 1024;
/** A POST exec without timeoutMs is killed after this long. */
export const EXEC_DEFAULT_TIMEOUT_MS = 60_000;
export const EXEC_MAX_TIMEOUT_MS = 3600_000;
/** Largest inbound WebSocket message (stdin). */
export const EXEC_MAX_MESSAGE = 1024 * 1024;
/** A WebSocket whose client does not read: the agent is paused above this much queued output. */
const WS_HIGH_WATER = 1024 * 1024;

const UserSchema = z.string().regex(/^[a-z_][a-z0-9_-]{0,31}$/, 'a user name of the guest').openapi({ description: 'the guest user to run as: "user" (uid 1000, the default) or "root"' });

const commandFields = {
  cmd: z.array(z.string().max(128 * 1024)).min(1).max(4096).optional().openapi({ description: 'argv, run without a shell' }),
  shell: z.string().min(1).max(256 * 1024).optional().openapi({ description: 'a command line for /bin/bash -c' }),
  env: z.record(z.string().regex(/^[^=\0]+$/), z.string().max(128 * 1024)).optional(),
  cwd: z.string().min(1).max(4096).optional().openapi({ description: 'default: the user\'s home' }),
  user: UserSchema.optional(),
  timeoutMs: z.number().int().min(1).max(EXEC_MAX_TIMEOUT_MS).optional(),
};
const oneCommand = (b: { cmd?: unknown; shell?: unknown }) => (b.cmd === undefined) !== (b.shell === undefined);
const oneCommandMessage = { message: 'exactly one of cmd and shell' };

export const ExecRequestSchema = z.object({
  ...commandFields,
  stdin: z.string().max(1024 * 1024).optional().openapi({ description: 'written to the command\'s stdin, then closed (in `encoding`)' }),
  encoding: z.enum(['utf8', 'base64']).default('utf8').openapi({ description: 'of stdin here and of stdout/stderr in the answer (base64 keeps any bytes)' }),
  timeoutMs: z.number().int().min(1).max(EXEC_MAX_TIMEOUT_MS).optional().openapi({ description: `the command is killed after this long (default ${EXEC_DEFAULT_TIMEOUT_MS}); the answer then says timedOut` }),
}).strict().refine(oneCommand, oneCommandMessage).openapi('ExecRequest');

export const ExecResultSchema = z.object({
  pid: z.number().int(),
  exitCode: z.number().int().nullable().openapi({ description: 'null when a signal ended it' }),
  signal: z.string().optional(),
  timedOut: z.boolean(),
  stdout: z.string(),
  stderr: z.string(),
  encoding: z.enum(['utf8', 'base64']),
  stdoutTruncated: z.boolean(),
  stderrTruncated: z.boolean(),
  durationMs: z.number(),
}).openapi('ExecResult');

/** The WebSocket's first message. */
const WsStartSchema = z.union([
  z.object({
    ...commandFields,
    pty: z.object({ cols: z.number().int().min(1).max(1000), rows: z.number().int().min(1).max(1000) }).strict().optional(),
    background: z.boolean().optional(),
    tag: z.string().max(256).optional(),
  }).strict().refine(oneCommand, oneCommandMessage),
  z.object({ attach: z.number().int().min(1) }).strict(),
]);

const ProcessSchema = z.object({
  pid: z.number().int(), cmd: z.array(z.string()), user: z.string(), tag: z.string().optional(), pty: z.boolean(), background: z.boolean(),
  startedAt: z.string(), running: z.boolean(), attached: z.boolean(), droppedBytes: z.number().int(),
  exit: z.object({ exitCode: z.number().int().nullable(), signal: z.string().optional(), timedOut: z.boolean(), durationMs: z.number() }).optional(),
}).openapi('Process');

export const agentErrors = {
  400: json(ErrorSchema, 'invalid request (or the agent refused it: bad cwd, user, ...)'),
  401: json(ErrorSchema, 'missing or invalid token'),
  403: json(ErrorSchema, 'token scope too small'),
  404: json(ErrorSchema, 'no such VM (another tenant\'s is not found either), or no such path / process in the guest'),
  409: json(ErrorSchema, 'not_running (the VM), agent_unavailable'),
  429: json(ErrorSchema, 'rate limited'),
  502: json(ErrorSchema, 'agent_unreachable, agent_protocol_error: the guest agent cannot be reached or misbehaved'),
  504: json(ErrorSchema, 'agent_timeout: the guest agent did not answer in time'),
};

const execRoute = createRoute({
  method: 'post', path: '/vms/{id}/exec', tags: ['exec'], summary: 'Run a command in the VM to its end (the guest agent)',
  description: `stdout and stderr are kept up to ${EXEC_MAX_OUTPUT} bytes each (then *Truncated). For streaming, stdin and signals use the WebSocket on the same path.`,
  request: { params: IdParams, body: { required: true, content: { 'application/json': { schema: ExecRequestSchema } } } },
  responses: { 200: json(ExecResultSchema, 'the command ended (any exit code)'), ...agentErrors },
});
const processesRoute = createRoute({
  method: 'get', path: '/vms/{id}/processes', tags: ['exec'], summary: 'Processes the guest agent started (running, and finished background ones not yet collected)',
  request: { params: IdParams }, responses: { 200: json(z.object({ processes: z.array(ProcessSchema) }), 'processes'), ...agentErrors },
});
const agentHealthRoute = createRoute({
  method: 'get', path: '/vms/{id}/agent', tags: ['exec'], summary: 'The guest agent\'s health: its version, the guest\'s clock, uptime, memory and load',
  request: { params: IdParams }, responses: { 200: json(z.record(z.string(), z.unknown()).openapi('AgentHealth'), 'health'), ...agentErrors },
});
const signalRoute = createRoute({
  method: 'post', path: '/vms/{id}/processes/{pid}/signal', tags: ['exec'], summary: 'Send a signal to a process (and its process group)',
  request: {
    params: z.object({ id: z.string(), pid: z.coerce.number().int().min(1) }),
    body: { required: true, content: { 'application/json': { schema: z.object({ signal: z.enum(SIGNALS) }).strict() } } },
  },
  responses: { 200: json(z.object({ pid: z.number().int() }), 'sent'), ...agentErrors },
});

/** The VM must be running for its agent to answer. */
export function requireRunning(deps: AppDeps, id: string): void {
  const vm = deps.vms.get(id);
  if (!vm) throw new ApiError(404, 'not_found', `no VM with id ${id}`);
  if (vm.state !== 'running') throw new ApiError(409, 'not_running', `VM ${vm.name} is not running (state ${vm.state})`);
}

/** Collects a stream up to `max` bytes. */
class Capped {
  private parts: Buffer[] = [];
  size = 0;
  truncated = false;
  constructor(private readonly max: number) {}
  push(d: Buffer): void {
    const room = this.max - this.size;
    if (d.length > room) this.truncated = true;
    if (room <= 0) return;
    const piece = d.length > room ? d.subarray(0, room) : d;
    this.parts.push(piece);
    this.size += piece.length;
  }
  text(encoding: 'utf8' | 'base64'): string { return Buffer.concat(this.parts).toString(encoding); }
}

export function execRoutes(deps: AppDeps, limits: ApiRateLimits, sockets: SocketLimiter) {
  const r = newRouter()
    .openapi(execRoute, async (c) => {
      const { id } = c.req.valid('param');
      const body = c.req.valid('json');
      requireRunning(deps, id);
      const out = new Capped(EXEC_MAX_OUTPUT);
      const err = new Capped(EXEC_MAX_OUTPUT);
      const timeoutMs = body.timeoutMs ?? EXEC_DEFAULT_TIMEOUT_MS;
      const stream = await deps.agent.exec(id, {
        ...(body.cmd ? { cmd: body.cmd } : { shell: body.shell! }),
        ...(body.env ? { env: body.env } : {}), ...(body.cwd ? { cwd: body.cwd } : {}), ...(body.user ? { user: body.user } : {}),
        ...(body.stdin !== undefined ? { stdin: Buffer.from(body.stdin, body.encoding).toString('base64') } : {}),
        timeoutMs,
      }, { onOutput: (ch, d) => { (ch === 1 ? out : err).push(d); } });
      // The client went away: let go of the process (the agent kills it).
      const onAbort = () => stream.close();
      c.req.raw.signal?.addEventListener('abort', onAbort, { once: true });
      try {
        const info = await stream.started;
        const exit = await stream.done;
        if (!exit) throw new ApiError(409, 'closed', 'the request was abandoned');
        return c.json({
          pid: info.pid, exitCode: exit.exitCode, ...(exit.signal ? { signal: exit.signal } : {}), timedOut: exit.timedOut,
          stdout: out.text(body.encoding), stderr: err.text(body.encoding), encoding: body.encoding,
          stdoutTruncated: out.truncated, stderrTruncated: err.truncated, durationMs: exit.durationMs,
        }, 200);
      } finally {
        c.req.raw.signal?.removeEventListener('abort', onAbort);
        stream.close();
      }
    })
    .openapi(processesRoute, async (c) => {
      const { id } = c.req.valid('param');
      requireRunning(deps, id);
      return c.json(await deps.agent.processes(id), 200);
    })
    .openapi(agentHealthRoute, async (c) => {
      const { id } = c.req.valid('param');
      requireRunning(deps, id);
      return c.json(await deps.agent.health(id, 5000), 200);
    })
    .openapi(signalRoute, async (c) => {
      const { id, pid } = c.req.valid('param');
      requireRunning(deps, id);
      return c.json(await deps.agent.signal(id, pid, c.req.valid('json').signal), 200);
    });

  // The WebSocket (GET with Upgrade): not in the OpenAPI document (docs/agent.md describes it).
  r.get('/vms/:id/exec', async (c, next) => {
    const notUpgrade = notUpgradeError(c);
    if (notUpgrade) return notUpgrade;
    // Running commands changes the VM: a read token may not, though the upgrade is a GET.
    if ((c.get('token') as TokenRecord).scope === 'read') return errorResponse(c, 403, 'forbidden', 'token scope \'read\' cannot run commands');
    try {
      requireRunning(deps, c.req.param('id') ?? '');
    } catch (e) {
      const a = e as ApiError;
      return errorResponse(c, a.status as 404 | 409, a.code, a.message);
    }
    return next();
  }, upgradeWebSocket({ maxPayload: EXEC_MAX_MESSAGE, limit: socketLimit(sockets) }, (c: Context<AppEnv>) => execSocket(c, deps, limits)));
  return r;
}

/**
 * One command on a WebSocket. Client -> server: the start message (JSON: a command, or
 * {"attach": pid}), then binary frames = stdin bytes, and JSON {"eof":true}, {"signal":"SIGINT"},
 * {"resize":{"cols","rows"}}. Server -> client: JSON {"started":{...}}, binary frames whose first
 * byte is the channel (1 stdout, 2 stderr) followed by the bytes, and at the end JSON
 * {"exit":{exitCode, signal?, timedOut, durationMs}} (or {"error":{code,message}}), then close 1000.
 * Closing the socket kills a foreground command; a background one keeps running (reattach by pid).
 */
function execSocket(c: Context<AppEnv>, deps: AppDeps, limits: ApiRateLimits) {
  const id = c.req.param('id')!;
  let stream: ExecStream | undefined;
  let starting = false;
  let closed = false;
  const pending: Array<(s: ExecStream) => void> = [];
  const fail = (ws: WebSocket, e: unknown) => {
    const a = e instanceof ApiError ? e : new ApiError(500, 'internal', (e as Error).message);
    if (ws.readyState === ws.OPEN) {
      ws.send(JSON.stringify({ error: { code: a.code, message: a.message } }));
      ws.close(1000, a.code.slice(0, 100));
    }
  };
  const control = (ws: WebSocket, s: ExecStream, m: Record<string, unknown>) => {
    if (m.eof === true) s.eof();
    else if (typeof m.signal === 'string') {
      if ((SIGNALS as readonly string[]).includes(m.signal)) s.signal(m.signal);
      else ws.send(JSON.stringify({ warning: `signal: one of ${SIGNALS.join(', ')}` }));
    } else if (typeof m.stdin === 'string') s.stdin(Buffer.from(m.stdin, 'utf8'));
    else if (m.resize && typeof m.resize === 'object') {
      const { cols, rows } = m.resize as { cols?: unknown; rows?: unknown };
      if (typeof cols === 'number' && typeof rows === 'number') s.resize(cols, rows);
    }
  };
  return {
    onOpen: () => { deps.metrics.socketOpened('exec'); },
    onMessage: (data: Buffer, binary: boolean, ws: WebSocket) => {
      if (!inboundAllowed(c, limits)) {
        // Rate limited: stop reading this client for a moment rather than drop its stdin.
        ws.pause();
        setTimeout(() => ws.resume(), 100).unref();
      }
      if (!stream && !starting) {
        starting = true;
        let parsed: z.infer<typeof WsStartSchema>;
        try {
          const r = WsStartSchema.safeParse(JSON.parse(data.toString('utf8')));
          if (!r.success) throw new ApiError(400, 'invalid_request', `start message: ${r.error.issues[0]?.path.join('.') || ''} ${r.error.issues[0]?.message ?? ''}`.trim());
          parsed = r.data;
        } catch (e) {
          return fail(ws, e instanceof ApiError ? e : new ApiError(400, 'invalid_request', 'the first message must be a JSON start request'));
        }
        let paused = false;
        const handlers = {
          onStarted: (info: unknown) => { ws.send(JSON.stringify({ started: info })); },
          onOutput: (ch: 1 | 2, d: Buffer): boolean => {
            ws.send(Buffer.concat([Buffer.from([ch]), d]), { binary: true });
            if (ws.bufferedAmount > WS_HIGH_WATER && !paused) {
              // The client reads slowly: hold the agent (and so the process) until it catches up.
              paused = true;
              const check = () => {
                if (closed) return;
                if (ws.bufferedAmount <= WS_HIGH_WATER / 4) { paused = false; stream?.resume(); } else setTimeout(check, 20);
              };
              setTimeout(check, 20);
              return false;
            }
            return true;
          },
          onDetached: (why: string) => { ws.send(JSON.stringify({ detached: why })); ws.close(1000, 'detached'); },
        };
        const p = 'attach' in parsed
          ? deps.agent.attach(id, parsed.attach, handlers)
          : deps.agent.exec(id, {
            ...(parsed.cmd ? { cmd: parsed.cmd } : { shell: parsed.shell! }),
            ...(parsed.env ? { env: parsed.env } : {}), ...(parsed.cwd ? { cwd: parsed.cwd } : {}), ...(parsed.user ? { user: parsed.user } : {}),
            ...(parsed.timeoutMs ? { timeoutMs: parsed.timeoutMs } : {}), ...(parsed.pty ? { pty: parsed.pty } : {}),
            ...(parsed.background ? { background: true } : {}), ...(parsed.tag !== undefined ? { tag: parsed.tag } : {}), stdinOpen: true,
          }, handlers);
        p.then((s) => {
          stream = s;
          if (closed) return s.close();
          for (const f of pending.splice(0)) f(s);
          s.done.then((exit) => {
            if (exit && ws.readyState === ws.OPEN) { ws.send(JSON.stringify({ exit })); ws.close(1000, 'exit'); }
          }, (e) => fail(ws, e));
        }, (e) => fail(ws, e));
        return;
      }
      const apply = (s: ExecStream) => {
        if (binary) {
          if (!s.stdin(data)) { ws.pause(); s.onDrain(() => ws.resume()); }
          return;
        }
        let m: unknown;
        try { m = JSON.parse(data.toString('utf8')); } catch { return ws.send(JSON.stringify({ warning: 'text messages are JSON control messages; stdin goes in binary messages' })); }
        if (m && typeof m === 'object') control(ws, s, m as Record<string, unknown>);
      };
      if (stream) apply(stream); else pending.push(apply);
    },
    onClose: () => {
      closed = true;
      deps.metrics.socketClosed('exec');
      stream?.close();
    },
  };
}
