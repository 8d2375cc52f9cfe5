// E2B's control plane (the SDK's E2B_API_URL): sandboxes as capsule VMs. Each route checks its
// input, then makes the same request capsule's own API would get (/v1/vms..., dispatched in
// process with the caller's token), so that authentication, scopes, tenants, quotas, admission,
// rate limits and the audit log are capsule's, once. Errors come back in E2B's shape
// {"code": status, "message"}.
//
//   POST   /v2/sandboxes, /sandboxes          create (a VM of the template's image), start, wait for its agent
//   GET    /v2/sandboxes, /sandboxes          list (running and paused), ?metadata=k%3Dv&state=&limit=
//   GET    /sandboxes/:id                     detail
//   DELETE /sandboxes/:id                     kill (delete the VM)
//   POST   /sandboxes/:id/timeout             {"timeout": seconds from now}
//   POST   /v2/sandboxes/:id/connect          (resumes a paused one) the sandbox's envd access again
//   POST   /sandboxes/:id/pause, /resume
import { randomBytes } from 'node:crypto';
import { Hono, type Context, type MiddlewareHandler } from 'hono';
import { z } from 'zod';
import type { Vm } from '../db/vms.js';
import { agentAnswer, noAnswer, type AgentAnswer, type AgentClient } from '../agent/client.js';
import type { TokenStore } from '../db/tokens.js';
import { capsuleTokenOf } from './keys.js';
import type { SandboxTokens } from './keys.js';
import { DEFAULT_TIMEOUT_SEC, MAX_TIMEOUT_SEC } from './lifetimes.js';
import type { E2bSandboxStore } from '../db/e2b-sandboxes.js';
import {
  ENVD_VERSION, SANDBOX_MEMORY_MIB, SANDBOX_VCPUS, e2bError, imageOfTemplate, isPaused, isSandboxState, matchesMetadata, metadataFilter, sandboxOf,
} from './mapping.js';

/** Sends a request to capsule's own API (in process): the app's `request`. */
export type CapsuleApi = (path: string, init: RequestInit) => Promise<Response>;

export interface RestDeps {
  api: CapsuleApi;
  agent: AgentClient;
  /** What a sandbox has beyond its VM (template id, envVars). */
  sandboxes: E2bSandboxStore;
  sandboxTokens: SandboxTokens;
  tokens: TokenStore;
  /** How long create waits for the guest's agent to answer (a TCG boot takes 20-60 s). */
  bootTimeoutMs: number;
}

type Env = { Variables: { capsuleToken: string } };

const StringMap = z.record(z.string().max(256), z.string().max(4096)).refine((m) => Object.keys(m).length <= 64, 'at most 64 entries');
const Timeout = z.number().int().min(0).max(MAX_TIMEOUT_SEC);
// Only what capsule does something with is read; the SDK's other fields (mcp, network, iam, autoPause...) pass unread.
const CreateSchema = z.object({
  templateID: z.string().min(1).max(128).regex(/^[a-zA-Z0-9][a-zA-Z0-9_.-]*$/, 'a template (image) name'),
  timeout: Timeout.optional(),
  metadata: StringMap.optional(),
  envVars: z.record(z.string().regex(/^[^=\0]+$/).max(256), z.string().max(128 * 1024)).optional(),
  allow_internet_access: z.boolean().optional(),
});
const TimeoutSchema = z.object({ timeout: Timeout });
const ConnectSchema = z.object({ timeout: Timeout.optional() });

/** 400 naming the field, in E2B's shape. */
/** A sandbox whose agent did not answer: 502 when it has no path to it at all (waiting would not help), else 504. */
function agentFailed(c: Context, a: Exclude<AgentAnswer, { ok: true }>, who: string, what: string): Response {
  const status = a.noPath ? 502 : 504;
  return c.json(e2bError(status, `${who}: ${noAnswer(a, what)}`), status);
}

function invalid(c: Context, error: z.ZodError): Response {
  const issue = error.issues[0];
  const field = issue?.path.join('.') ?? '';
  return c.json(e2bError(400, `${field ? `${field}: ` : ''}${issue?.message ?? 'invalid request'}`), 400);
}

async function parse<T>(c: Context, schema: z.ZodType<T>): Promise<{ ok: true; data: T } | { ok: false; res: Response }> {
  let body: unknown;
  try { body = await c.req.json(); } catch { return { ok: false, res: c.json(e2bError(400, 'the body must be JSON'), 400) }; }
  const r = schema.safeParse(body);
  return r.success ? { ok: true, data: r.data } : { ok: false, res: invalid(c, r.error) };
}

/** The answer of a capsule API call: its JSON, or the error it gave, to pass on in E2B's shape. */
class Upstream {
  constructor(readonly status: number, readonly body: any, private readonly retryAfter: string | null = null) {}
  get ok(): boolean { return this.status >= 200 && this.status < 300; }
  /** E2B's error for this answer (a rate limit's Retry-After kept: the SDK waits by it). */
  error(c: Context): Response {
    const message = this.body?.error?.message ?? `capsule answered ${this.status}`;
    if (this.retryAfter !== null) c.header('Retry-After', this.retryAfter);
    return c.json(e2bError(this.status, message), this.status as 400);
  }
}

export function e2bRestRoutes(d: RestDeps) {
  const r = new Hono<Env>();

  // The API key: E2B's X-API-Key, an e2b_<hex> standing for the capsule token cap_<hex>.
  // (On these paths only: the sandbox URL, /e2b/sandbox, is envd's and has its own credentials.)
  const apiKey: MiddlewareHandler<Env> = async (c, next) => {
    const key = c.req.header('x-api-key');
    const token = key === undefined ? undefined : capsuleTokenOf(key);
    if (!token) {
      const why = key === undefined ? 'missing X-API-Key header' : 'invalid API key: expected e2b_ followed by the hex digits of a capsule token (cap_<hex>)';
      return c.json(e2bError(401, why), 401);
    }
    c.set('capsuleToken', token);
    return next();
  };
  for (const path of ['/sandboxes', '/sandboxes/*', '/v2/sandboxes', '/v2/sandboxes/*']) r.use(path, apiKey);

  const call = async (c: Context<Env>, method: string, path: string, body?: unknown): Promise<Upstream> => {
    const init: RequestInit = { method, headers: { authorization: `Bearer ${c.get('capsuleToken')}`, ...(body !== undefined ? { 'content-type': 'application/json' } : {}) } };
    if (body !== undefined) init.body = JSON.stringify(body);
    const res = await d.api(path, init);
    const text = await res.text();
    let parsed: unknown = text;
    try { parsed = text ? JSON.parse(text) : undefined; } catch { /* not JSON */ }
    return new Upstream(res.status, parsed, res.headers.get('retry-after'));
  };

  /** The caller's VM as a sandbox, or the E2B 404 (another tenant's VM is capsule's 404 too). */
  const sandboxVm = async (c: Context<Env>, id: string): Promise<Vm | Response> => {
    if (!/^[0-9a-zA-Z-]{1,64}$/.test(id)) return c.json(e2bError(404, `sandbox ${id.slice(0, 64)} not found`), 404);
    const got = await call(c, 'GET', `/v1/vms/${id}`);
    if (got.status === 404) return c.json(e2bError(404, `sandbox ${id} not found`), 404);
    if (!got.ok) return got.error(c);
    const vm = got.body as Vm;
    if (!isSandboxState(vm)) return c.json(e2bError(404, `sandbox ${id} not found (its VM is ${vm.state})`), 404);
    return vm;
  };

  /**
   * Routes that change a sandbox without a capsule write call behind them (its timeout), or hand
   * out its access token (which runs commands): a `read` token may not, as it may not exec.
   */
  const writeScope = (c: Context<Env>): Response | undefined => {
    const scope = d.tokens.verify(c.get('capsuleToken'))?.scope;
    return scope === 'read' ? c.json(e2bError(403, `token scope 'read' cannot ${c.req.method} ${c.req.path.replace(/^\/e2b/, '')}`), 403) : undefined;
  };

  const access = (vm: Vm) => ({
    sandboxID: vm.id,
    templateID: d.sandboxes.get(vm.id)?.templateId ?? vm.image,
    clientID: 'capsule',
    envdVersion: ENVD_VERSION,
    envdAccessToken: d.sandboxTokens.tokenFor(vm.id),
    domain: null,
  });

  const create = async (c: Context<Env>) => {
    const p = await parse(c, CreateSchema);
    if (!p.ok) return p.res;
    const body = p.data;
    // A capsule template of that name (docs/templates.md): a running VM from its pool, or
    // restored from its snapshot, with its start command already running; no boot.
    const template = await call(c, 'GET', `/v1/templates/${encodeURIComponent(body.templateID)}`);
    if (template.ok) return createFromTemplate(c, body);
    const made = await call(c, 'POST', '/v1/vms', {
      name: `e2b-${randomBytes(6).toString('hex')}`,
      image: imageOfTemplate(body.templateID),
      memoryMiB: SANDBOX_MEMORY_MIB,
      vcpus: SANDBOX_VCPUS,
      network: { enabled: true, egress: body.allow_internet_access ?? true },
      metadata: body.metadata ?? {},
      // E2B kills a sandbox whose time is up: the VM's TTL, with delete.
      timeoutSec: body.timeout ?? DEFAULT_TIMEOUT_SEC,
      onTimeout: 'delete',
    });
    if (!made.ok) {
      // capsule names the field: an unknown image is E2B's unknown template.
      if (made.status === 400 && made.body?.error?.field === 'image') return c.json(e2bError(404, `template ${body.templateID} not found: no capsule image named ${imageOfTemplate(body.templateID)}`), 404);
      return made.error(c);
    }
    const vm = made.body as Vm;
    d.sandboxes.put(vm.id, { templateId: body.templateID, envVars: body.envVars ?? {} });
    // From here on a failure must not leave the VM behind.
    const fail = async (res: Response) => { await call(c, 'DELETE', `/v1/vms/${vm.id}?force=true`).catch(() => undefined); return res; };
    const started = await call(c, 'POST', `/v1/vms/${vm.id}/start`);
    if (!started.ok) return fail(started.error(c));
    // E2B's create returns a sandbox that takes commands: wait for the agent to answer.
    const a = await agentAnswer(d.agent, vm.id, d.bootTimeoutMs);
    if (!a.ok) return fail(agentFailed(c, a, `sandbox ${vm.id}`, `the guest agent did not answer within ${Math.round(d.bootTimeoutMs / 1000)} s of the start`));
    return c.json({ ...access(vm), alias: body.templateID }, 201);
  };

  const createFromTemplate = async (c: Context<Env>, body: z.infer<typeof CreateSchema>) => {
    const made = await call(c, 'POST', '/v1/vms', {
      name: `e2b-${randomBytes(6).toString('hex')}`, template: body.templateID,
      network: { egress: body.allow_internet_access ?? true }, metadata: body.metadata ?? {},
      timeoutSec: body.timeout ?? DEFAULT_TIMEOUT_SEC, onTimeout: 'delete',
    });
    if (!made.ok) return made.error(c);
    const vm = made.body as Vm;
    d.sandboxes.put(vm.id, { templateId: body.templateID, envVars: body.envVars ?? {} });
    // A pool VM's agent was checked when it was warmed; a fresh restore's answers within moments.
    const a = await agentAnswer(d.agent, vm.id, d.bootTimeoutMs);
    if (!a.ok) {
      await call(c, 'DELETE', `/v1/vms/${vm.id}?force=true`).catch(() => undefined);
      return agentFailed(c, a, `sandbox ${vm.id}`, `the guest agent did not answer within ${Math.round(d.bootTimeoutMs / 1000)} s of the restore`);
    }
    return c.json({ ...access(vm), alias: body.templateID }, 201);
  };

  const list = async (c: Context<Env>) => {
    const got = await call(c, 'GET', '/v1/vms');
    if (!got.ok) return got.error(c);
    const filter = metadataFilter(c.req.query('metadata'));
    // state: E2B sends it as a comma-separated list (or repeated).
    const states = new Set(c.req.queries('state')?.flatMap((s) => s.split(',')).filter(Boolean) ?? ['running', 'paused']);
    const limit = Math.min(Math.max(Number(c.req.query('limit') ?? 1000) || 1000, 1), 1000);
    const items = (got.body.items as Vm[])
      .filter(isSandboxState)
      .map((vm) => sandboxOf(vm, d.sandboxes.get(vm.id)))
      .filter((s) => states.has(s.state as string) && matchesMetadata(s.metadata as Record<string, string>, filter))
      .slice(0, limit);
    return c.json(items, 200);
  };

  r.post('/v2/sandboxes', create);
  r.post('/sandboxes', create);
  r.get('/v2/sandboxes', list);
  r.get('/sandboxes', list);

  r.get('/sandboxes/:id', async (c) => {
    const vm = await sandboxVm(c, c.req.param('id'));
    if (vm instanceof Response) return vm;
    return c.json(sandboxOf(vm, d.sandboxes.get(vm.id)), 200);
  });

  r.delete('/sandboxes/:id', async (c) => {
    const id = c.req.param('id');
    const vm = await sandboxVm(c, id);
    if (vm instanceof Response) return vm;
    const gone = await call(c, 'DELETE', `/v1/vms/${vm.id}?force=true`);
    if (!gone.ok) return gone.status === 404 ? c.json(e2bError(404, `sandbox ${id} not found`), 404) : gone.error(c);
    return c.body(null, 204);
  });

  r.post('/sandboxes/:id/timeout', async (c) => {
    const p = await parse(c, TimeoutSchema);
    if (!p.ok) return p.res;
    const vm = await sandboxVm(c, c.req.param('id'));
    if (vm instanceof Response) return vm;
    const refused = writeScope(c);
    if (refused) return refused;
    const set = await setTimeoutOf(c, vm, p.data.timeout);
    return set ?? c.body(null, 204);
  });

  /**
   * The sandbox now ends `seconds` from now: the VM's TTL. One made through capsule's own API
   * (no onTimeout: delete) keeps its own onTimeout.
   */
  const setTimeoutOf = async (c: Context<Env>, vm: Vm, seconds: number): Promise<Response | undefined> => {
    const set = await call(c, 'POST', `/v1/vms/${vm.id}/timeout`, { timeoutSec: seconds });
    return set.ok ? undefined : set.error(c);
  };

  const resume = async (c: Context<Env>, vm: Vm): Promise<Response | undefined> => {
    if (!isPaused(vm)) return undefined;
    const resumed = await call(c, 'POST', `/v1/vms/${vm.id}/resume`);
    if (!resumed.ok) return resumed.error(c);
    // Restored from disk: its agent runs on, but give its network a moment to answer.
    if (vm.state === 'stopped') {
      const a = await agentAnswer(d.agent, vm.id, d.bootTimeoutMs);
      if (!a.ok) return agentFailed(c, a, `sandbox ${vm.id}`, 'the guest agent did not answer after the resume');
    }
    return undefined;
  };

  r.post('/v2/sandboxes/:id/connect', async (c) => {
    const p = await parse(c, ConnectSchema);
    if (!p.ok) return p.res;
    const vm = await sandboxVm(c, c.req.param('id'));
    if (vm instanceof Response) return vm;
    const refused = writeScope(c);
    if (refused) return refused;
    const wasPaused = isPaused(vm);
    const failed = await resume(c, vm);
    if (failed) return failed;
    if (p.data.timeout !== undefined) {
      const set = await setTimeoutOf(c, vm, p.data.timeout);
      if (set) return set;
    }
    return c.json(access(vm), wasPaused ? 201 : 200);
  });

  r.post('/sandboxes/:id/resume', async (c) => {
    const vm = await sandboxVm(c, c.req.param('id'));
    if (vm instanceof Response) return vm;
    const refused = writeScope(c);
    if (refused) return refused;
    if (!isPaused(vm)) return c.json(e2bError(409, `sandbox ${vm.id} is not paused`), 409);
    const failed = await resume(c, vm);
    return failed ?? c.json(access(vm), 201);
  });

  r.post('/sandboxes/:id/pause', async (c) => {
    const vm = await sandboxVm(c, c.req.param('id'));
    if (vm instanceof Response) return vm;
    if (isPaused(vm)) return c.json(e2bError(409, `sandbox ${vm.id} is already paused`), 409);
    // As E2B's: to disk, freeing the VM's memory; in memory where the backend writes no snapshots.
    let paused = await call(c, 'POST', `/v1/vms/${vm.id}/pause`, { persist: true });
    if (!paused.ok && paused.status === 409 && paused.body?.error?.code === 'snapshot_unsupported') {
      paused = await call(c, 'POST', `/v1/vms/${vm.id}/pause`);
    }
    return paused.ok ? c.body(null, 204) : paused.error(c);
  });

  r.all('*', (c) => c.json(e2bError(404, `capsule does not serve E2B's ${c.req.method} ${c.req.path.replace(/^\/e2b/, '')} (docs/e2b.md lists what it does)`), 404));
  return r;
}
