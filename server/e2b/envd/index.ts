// The envd-compatible API (the SDK's E2B_SANDBOX_URL): one base URL for every sandbox, as E2B's
// own `sandbox.<domain>` proxy does, the sandbox named by the E2b-Sandbox-Id header and opened by
// its X-Access-Token (keys.ts). Served here on the server, translated to the sandbox's guest
// agent: the Connect services (process.Process, filesystem.Filesystem; Connect protocol, JSON
// or binary) and the HTTP routes /files and /health.
import { Hono, type Context } from 'hono';
import { Code, createConnectRouter, createContextValues } from '@connectrpc/connect';
import { universalServerRequestFromFetch, universalServerResponseToFetch, type UniversalHandler } from '@connectrpc/connect/protocol';
import type { AgentClient } from '../../agent/client.js';
import type { VmStore } from '../../db/vms.js';
import type { SandboxTokens } from '../keys.js';
import type { E2bSandboxStore } from '../../db/e2b-sandboxes.js';
import { e2bError } from '../mapping.js';
import { SANDBOX } from './context.js';
import { FilesystemService, ProcessService } from './proto.js';
import { processService } from './process.js';
import { filesystemService } from './filesystem.js';
import { filesError, getFile, health, postFiles } from './files.js';

export interface EnvdDeps {
  agent: AgentClient;
  vms: VmStore;
  sandboxTokens: SandboxTokens;
  sandboxes: E2bSandboxStore;
  /** The tenant's API rate limit (capsule's, shared with its /v1 calls): undefined, or the seconds to wait. */
  rateLimit(tenant: string): number | undefined;
}

type Env = { Variables: { vmId: string } };

/** A Connect call's path: /<package>.<Service>/<Method>. */
const CONNECT_PATH = /^\/[a-z]+\.[A-Za-z]+\/[A-Za-z]+$/;

/** A refusal in the shape its caller reads: Connect's error JSON on RPC paths, envd's elsewhere. */
function refuse(c: Context, status: 401 | 404 | 429 | 502, code: Code, message: string, rpcPath: string): Response {
  if (CONNECT_PATH.test(rpcPath)) return c.json({ code: Code[code].replace(/[A-Z]/g, (m, i: number) => (i ? '_' : '') + m.toLowerCase()), message }, status);
  return c.json(e2bError(status, message), status);
}

export function envdRoutes(d: EnvdDeps) {
  // Fields a newer SDK adds are skipped, as protobuf's binary encoding does anyway.
  const router = createConnectRouter({ connect: true, grpc: false, grpcWeb: false, jsonOptions: { ignoreUnknownFields: true } })
    .service(ProcessService, processService(d.agent) as never)
    .service(FilesystemService, filesystemService(d.agent) as never);
  const handlers = new Map<string, UniversalHandler>(router.handlers.map((h) => [h.requestPath, h]));

  const r = new Hono<Env>();
  // Who: the sandbox's access token; which: E2b-Sandbox-Id; and it must be running.
  r.use('*', async (c, next) => {
    const rpcPath = c.req.path.replace(/^.*?\/sandbox(?=\/)/, '');
    const id = c.req.header('e2b-sandbox-id') ?? '';
    if (!d.sandboxTokens.verify(id, c.req.header('x-access-token'))) {
      return refuse(c, 401, Code.Unauthenticated, id ? `invalid access token for sandbox ${id.slice(0, 64)}` : 'missing E2b-Sandbox-Id header', rpcPath);
    }
    const vm = d.vms.get(id);
    // E2B's proxy answers 502 for a sandbox that is gone: the SDK reads it as "the sandbox was killed or timed out".
    if (!vm) return refuse(c, 502, Code.Unavailable, `sandbox ${id} is not running (it is gone)`, rpcPath);
    // Calls count against the sandbox's tenant, as its /v1 calls do (envd has no capsule token to meter).
    const wait = d.rateLimit(vm.tenant);
    if (wait !== undefined) {
      c.header('Retry-After', String(wait));
      return refuse(c, 429, Code.ResourceExhausted, `too many requests for this sandbox's tenant: retry in ${wait} s`, rpcPath);
    }
    if (vm.state !== 'running') return refuse(c, 502, Code.Unavailable, `sandbox ${id} is not running (its VM is ${vm.state})`, rpcPath);
    c.set('vmId', id);
    return next();
  });

  r.get('/health', (c) => health(c, d.agent));
  r.get('/files', (c) => getFile(c, d.agent).catch((e) => filesError(c, e)));
  r.post('/files', (c) => postFiles(c, d.agent).catch((e) => filesError(c, e)));

  r.post('/:service/:method', async (c) => {
    const path = `/${c.req.param('service')}/${c.req.param('method')}`;
    const handler = handlers.get(path);
    if (!handler) return c.json({ code: 'unimplemented', message: `capsule does not serve ${path}` }, 404);
    const req = universalServerRequestFromFetch(c.req.raw, {});
    const vmId = c.get('vmId');
    req.contextValues = createContextValues().set(SANDBOX, { vmId, envVars: d.sandboxes.get(vmId)?.envVars ?? {} });
    return universalServerResponseToFetch(await handler(req));
  });

  r.all('*', (c) => c.json(e2bError(404, `envd on capsule has no ${c.req.method} ${c.req.path.replace(/^.*?\/sandbox(?=\/)/, '')}`), 404));
  return r;
}

