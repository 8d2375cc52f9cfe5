// The HTTP application: middleware, routes by resource, the OpenAPI document.
import { OpenAPIHono, type z } from '@hono/zod-openapi';
import type { Context, MiddlewareHandler } from 'hono';
import type { ZodError } from 'zod';
import type { Server } from 'node:http';
import { bodyLimit } from 'hono/body-limit';
import type { Logger } from 'pino';
import type { Config } from '../config.js';
import type { ImageStore } from '../db/images.js';
import type { TokenStore } from '../db/tokens.js';
import type { TenantStore } from '../db/tenants.js';
import type { AuditStore } from '../db/audit.js';
import type { Quotas } from '../tenants/quotas.js';
import type { VmStore } from '../db/vms.js';
import type { EventHub } from '../events/hub.js';
import type { Hypervisor } from '../hypervisors/types.js';
import type { HypervisorName } from '../db/vms.js';
import type { Supervisor } from '../supervisor/index.js';
import type { JailStatus } from '../jail/index.js';
import type { StorageMonitor } from '../db/storage.js';
import type { VolumeStore } from '../db/volumes.js';
import type { SnapshotStore } from '../db/snapshots.js';
import type { SnapshotService } from '../snapshots/service.js';
import type { DrivesComponent } from '../supervisor/components/drives.js';
import type { BalloonComponent } from '../supervisor/components/balloon.js';
import type { AgentClient } from '../agent/client.js';
import type { NetworkComponent } from '../supervisor/components/network.js';
import type { VmTimeouts } from '../lifetimes/timeouts.js';
import type { E2bSandboxStore } from '../db/e2b-sandboxes.js';
import { BucketMap } from '../util/leaky-bucket.js';
import { ApiRateLimits, authorize, requireToken, rateLimit, type AuthVariables } from '../auth/middleware.js';
import { attachWebSockets, CLOSE_TOKEN_REVOKED, SocketLimiter } from './websocket.js';
import { vmOwnership, volumeOwnership } from './ownership.js';
import { auditLog, auditRoutes } from './audit.js';
import { tenantRoutes } from './tenants.js';
import { tokenRoutes } from './tokens.js';
import { errorHandler, errorResponse, validationError } from './errors.js';
import { healthRoutes } from './health.js';
import { imageRoutes } from './images.js';
import { vmRoutes } from './vms.js';
import { volumeRoutes } from './volumes.js';
import { snapshotOwnership, snapshotRoutes } from './snapshots.js';
import { templateOwnership, templateRoutes } from './templates.js';
import type { TemplateStore } from '../db/templates.js';
import type { TemplateService } from '../templates/service.js';
import { driveRoutes } from './drives.js';
import { balloonRoutes } from './balloon.js';
import { execRoutes } from './exec.js';
import { FILE_UPLOAD_PATH, fileRoutes } from './files.js';
import { eventRoutes } from './events.js';
import { PORT_PROXY_PATH, portRoutes } from './ports.js';
import { consoleRoutes } from './console.js';
import { staticRoutes } from './static.js';
import type { Metrics } from '../metrics/index.js';
import type { Readiness } from '../health/readiness.js';
import { requestMetrics } from './request-metrics.js';
import { metricsRoute } from './metrics.js';
import { e2bApi } from '../e2b/index.js';

export interface AppDeps {
  config: Config;
  log: Logger;
  vms: VmStore;
  images: ImageStore;
  tokens: TokenStore;
  tenants: TenantStore;
  quotas: Quotas;
  audit: AuditStore;
  hub: EventHub;
  supervisor: Supervisor;
  volumes: VolumeStore;
  /** Snapshots (docs/snapshots.md): the rows, and taking and deleting them. */
  snapshots: SnapshotStore;
  snapshotService: SnapshotService;
  /** Templates and their pools (docs/templates.md). */
  templates: TemplateStore;
  templateService: TemplateService;
  /** The supervisor's drives and balloon components (hot-plug and the balloon at run time). */
  drives: DrivesComponent;
  balloon: BalloonComponent;
  /** The guest agents' client (exec and files). */
  agent: AgentClient;
  /** VM networks (docs/network.md): egress at run time, the guest's endpoint. Absent in unit tests. */
  network?: NetworkComponent;
  /** VM TTLs (POST /v1/vms/:id/timeout). */
  timeouts: VmTimeouts;
  /** The E2B-compatible API's records of sandboxes beyond their VMs. */
  e2bSandboxes: E2bSandboxStore;
  hypervisors: ReadonlyMap<HypervisorName, Hypervisor>;
  kvm: boolean;
  defaultHypervisor: HypervisorName;
  webDir: string;
  /** The VMM jail's state (probed once at start). */
  jail?: JailStatus;
  /** The data directory's health (free space, failed writes). */
  storage?: StorageMonitor;
  /** GET /v1/health/ready's checks. */
  readiness: Readiness;
  /** Prometheus metrics; `metricsOnMainListener` false when CAPSULE_METRICS_ADDR serves them instead. */
  metrics: Metrics;
  metricsOnMainListener: boolean;
}

export type AppEnv = { Variables: AuthVariables };
export type App = OpenAPIHono<AppEnv>;

/** Every route's answer to input its schema refuses: 400 naming the field (errors.ts). */
export const validationHook = (result: { success: true } | { success: false; error: ZodError }, c: Context) =>
  (result.success ? undefined : validationError(c, result.error));

export function newRouter(): App {
  return new OpenAPIHono<AppEnv>({ defaultHook: validationHook });
}

/**
 * A GET route's query validation, run only when the URL has a query at all: the schema's
 * answer to no query (every field optional) is known in advance, and the validator costs as
 * much as the rest of a cached list. With a query, the same zod validator and answers as any
 * route. The route is still registered in the OpenAPI document by the caller.
 */
export function queryWhenPresent<T extends z.ZodType>(schema: T): MiddlewareHandler<AppEnv> {
  const ofNoQuery = schema.parse({}); // throws at start-up for a schema that needs a query
  return async (c, next) => {
    let query: unknown = ofNoQuery;
    if (c.req.url.includes('?')) {
      // The query as Hono's validator('query') presents it: a repeated key becomes an array.
      const raw = Object.fromEntries(Object.entries(c.req.queries()).map(([k, v]) => [k, v.length === 1 ? v[0] : v]));
      const result = await schema.safeParseAsync(raw);
      if (!result.success) return validationHook(result, c);
      query = result.data;
    }
    c.req.addValidatedData('query', query as object);
    return next();
  };
}

export function createApp(deps: AppDeps) {
  const app = newRouter();
  const { rateLimit: perToken, tenantRateLimit: perTenant } = deps.config;
  const limits = new ApiRateLimits(new BucketMap(perToken.perSecond, perToken.burst), new BucketMap(perTenant.perSecond, perTenant.burst));
  const sockets = new SocketLimiter(deps.config.maxSocketsPerToken);
  // A revoked token (DELETE /v1/tokens/:id, its tenant deleted) loses its open WebSockets at once.
  deps.tokens.onRevoked = (id) => sockets.closeAll(id, CLOSE_TOKEN_REVOKED, 'token revoked');

  // First, so that it times everything after it, refusals included.
  app.use('*', requestMetrics(deps.metrics));
  app.onError(errorHandler(deps.log));
  app.notFound((c) => errorResponse(c, 404, 'not_found', `no route for ${c.req.method} ${c.req.path}`));
  // Order matters: who (token), how fast (rate), then everything after is audited, including
  // refusals by scope (authorize) and ownership.
  app.use('/v1/*', requireToken(deps.tokens), rateLimit(limits), auditLog(deps.audit), authorize());
  const limitBody = bodyLimit({
    maxSize: deps.config.maxBodyBytes,
    onError: (c) => errorResponse(c, 413, 'payload_too_large', `request body exceeds ${deps.config.maxBodyBytes} bytes`),
  });
  // GET and HEAD requests have no body (the Fetch Request never carries one); asking would
  // only make @hono/node-server build the full Request (AbortController included) on every read.
  // A file upload streams its body into the guest (bounded by the guest's disk), never held here;
  // so does a request to a guest's port (ports.ts): the guest decides how much it takes.
  const unlimited = (method: string, path: string): boolean =>
    method === 'GET' || method === 'HEAD' || (method === 'PUT' && FILE_UPLOAD_PATH.test(path)) || PORT_PROXY_PATH.test(path);
  app.use('/v1/*', (c, next) => (unlimited(c.req.method, c.req.path) ? next() : limitBody(c, next)));
  // Another tenant's VM or volume is not found, on every route under it (ownership.ts).
  app.use('/v1/vms/:id', vmOwnership(deps.vms));
  app.use('/v1/vms/:id/*', vmOwnership(deps.vms));
  app.use('/v1/volumes/:id', volumeOwnership(deps.volumes));
  app.use('/v1/volumes/:id/*', volumeOwnership(deps.volumes));
  app.use('/v1/snapshots/:id', snapshotOwnership(deps.snapshots));
  app.use('/v1/templates/:id', templateOwnership(deps.templates));

  app.route('/v1', healthRoutes(deps));
  app.route('/v1', imageRoutes(deps));
  app.route('/v1', vmRoutes(deps));
  app.route('/v1', driveRoutes(deps));
  app.route('/v1', balloonRoutes(deps));
  app.route('/v1', execRoutes(deps, limits, sockets));
  app.route('/v1', fileRoutes(deps));
  app.route('/v1', portRoutes(deps, sockets));
  app.route('/v1', volumeRoutes(deps));
  app.route('/v1', snapshotRoutes(deps));
  app.route('/v1', templateRoutes(deps));
  app.route('/v1', tenantRoutes(deps));
  app.route('/v1', tokenRoutes(deps));
  app.route('/v1', auditRoutes(deps));
  app.route('/v1', eventRoutes(deps, limits, sockets));
  app.route('/v1', consoleRoutes(deps, limits, sockets));
  app.doc('/v1/openapi.json', {
    openapi: '3.0.3',
    info: { title: 'capsule API', version: '0.1.0', description: 'microVMs as a service' },
    security: [{ bearer: [] }],
  });
  app.openAPIRegistry.registerComponent('securitySchemes', 'bearer', { type: 'http', scheme: 'bearer' });
  // E2B compatibility (docs/e2b.md): its REST calls become capsule API calls, made in process.
  // The envd side (/e2b/sandbox) streams uploads into the guest: no body limit there.
  const e2b = e2bApi(deps, (path, init) => Promise.resolve(app.request(path, init)), (tenant) => {
    const bucket = limits.perTenant.get(tenant);
    return bucket.tryTake() ? undefined : Math.max(1, Math.ceil(bucket.msUntil() / 1000));
  });
  app.use('/e2b/*', (c, next) => (c.req.path.startsWith('/e2b/sandbox/') || c.req.method === 'GET' ? next() : limitBody(c, next)));
  app.route('/e2b/sandbox', e2b.envd);
  app.route('/e2b', e2b.rest);
  if (deps.metricsOnMainListener) app.route('/', metricsRoute(deps.metrics, deps.tokens, limits));
  app.route('/', staticRoutes(deps.webDir));
  return {
    app,
    injectWebSocket: (server: Server) => attachWebSockets(server, app, deps.log),
    /** Closes every open WebSocket (graceful shutdown). */
    closeSockets: (code: number, reason: string) => sockets.closeEvery(code, reason),
  };
}
