// The capsule REST client: typed calls, uniform errors (ApiError), bearer auth.

export type VmState = 'created' | 'starting' | 'running' | 'paused' | 'stopping' | 'stopped' | 'crashed';

export interface Vm {
  id: string;
  /** The owning tenant's id (servers with tenants). */
  tenant?: string;
  name: string;
  state: VmState;
  image: string;
  hypervisor: string;
  vcpus: number;
  memoryMiB: number;
  pid?: number | null;
  rng?: boolean;
  balloon?: { enabled: boolean; deflateOnOom: boolean };
  /** The VM's NIC (servers with VM networks): the guest's address, where the host reaches it, NAT to the uplink. */
  network?: { enabled: boolean; egress: boolean; guestAddress?: string; hostAddress?: string; mac?: string };
  /** In guest order (vda, vdb, ... after an image's rootfs and layer). */
  drives?: Drive[];
  /** The client's labels (servers with metadata). */
  metadata?: Record<string, string>;
  /** The TTL from each start, what happens then, and when the current run ends. */
  timeoutSec?: number;
  onTimeout?: 'stop' | 'delete';
  expiresAt?: string;
  /** The snapshot its next start restores; the template it was made from; set while the server keeps it for a template (hidden). */
  restoreFrom?: string;
  template?: string;
  role?: 'template-build' | 'pool-warming' | 'pool';
  createdAt: string;
  updatedAt: string;
}

/** The steps of a template's build, in order (docs/templates.md). */
export const TEMPLATE_STEPS = ['booting', 'starting', 'waiting-ready', 'snapshotting'] as const;

export interface Template {
  id: string;
  name: string;
  image: string;
  vcpus: number;
  memoryMiB: number;
  startCmd?: string;
  readyCmd?: string;
  pool: number;
  state: 'building' | 'ready' | 'failed';
  step?: (typeof TEMPLATE_STEPS)[number];
  reason?: string;
  createdAt: string;
}

export interface CreateTemplate {
  name: string;
  image?: string;
  memoryMiB?: number;
  startCmd?: string;
  readyCmd?: string;
  pool?: number;
}

export interface Pool {
  template: string;
  size: number;
  ready: number;
  warming: number;
  failed: number;
  reason?: string;
}

export type DriveCache = 'none' | 'writeback' | 'unsafe';

export interface Drive {
  id: string;
  volume: string;
  volumeName: string;
  readOnly: boolean;
  cache: DriveCache;
  iops?: number;
  state: 'attached' | 'attaching' | 'detaching';
}

export interface DriveRequest {
  volume: string;
  readOnly?: boolean;
  cache?: DriveCache;
}

export interface Volume {
  id: string;
  name: string;
  sizeMiB: number;
  fromImage?: string;
  attachments: { vm: string; vmName: string; drive: string; readOnly: boolean; state: string }[];
  createdAt: string;
  updatedAt: string;
}

export type TokenScope = 'admin' | 'write' | 'read';

export interface Quotas {
  vms: number | null;
  vcpus: number | null;
  memoryMiB: number | null;
  volumeMiB: number | null;
  snapshotMiB?: number | null;
}

export interface Tenant {
  id: string;
  name: string;
  quotas: Quotas;
  usage?: Record<keyof Quotas, number>;
}

/** GET /v1/whoami: the signed-in token. */
export interface Whoami {
  id: string;
  name: string;
  scope: TokenScope;
  expiresAt?: string;
  tenant: Tenant;
}

export interface Token {
  id: string;
  name: string;
  tenant: string;
  tenantName: string;
  scope: TokenScope;
  expiresAt?: string;
  createdAt: string;
}

export interface CreateToken {
  tenant?: string;
  name: string;
  scope: TokenScope;
  expiresAt?: string;
}

export interface CreateVolume {
  name: string;
  sizeMiB?: number;
  fromImage?: string;
}

export interface Health {
  status: string;
  kvm: boolean;
  hypervisors: string[];
  defaultHypervisor?: string;
  /** Per backend: why it is (not) usable. */
  details?: Record<string, string>;
}

export interface Image {
  name: string;
  description?: string;
  /** The image has a root filesystem (volumes can be copied from it). */
  rootfs?: boolean;
}

export interface CreateVm {
  name: string;
  image: string;
  vcpus: number;
  memoryMiB: number;
  hypervisor?: string;
  cmdline?: string;
  drives?: DriveRequest[];
}

/** One entry of a guest directory listing (GET /v1/vms/:id/files?path=DIR). */
export interface FileEntry {
  name: string;
  path: string;
  type: 'file' | 'dir' | 'symlink' | 'other';
  size: number;
  mode?: number;
  mtime?: string;
  target?: string;
}

export interface DirListing {
  path: string;
  entries: FileEntry[];
  truncated?: boolean;
}

/** A listening guest port and its proxy path (GET /v1/vms/:id/ports). */
export interface GuestPort {
  port: number;
  path: string;
}

export type VmAction = 'start' | 'stop' | 'pause' | 'resume' | 'reboot';

export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly field?: string,
    readonly retryAfter?: number,
  ) {
    super(message);
    this.name = 'ApiError';
  }

  /** A sentence fit for a person. */
  describe(): string {
    if (this.status === 0) return `Cannot reach the server: ${this.message}`;
    if (this.status === 401) return 'The API token was not accepted (401). Sign in again with a valid token.';
    if (this.status === 429) {
      const wait = this.retryAfter !== undefined ? ` Try again in ${this.retryAfter} s.` : '';
      return `Too many requests (429): ${this.message}.${wait}`;
    }
    return `${this.message} (${this.status}${this.code ? ' ' + this.code : ''})`;
  }
}

type FetchLike = (input: string, init?: RequestInit) => Promise<Response>;

export class Api {
  /** Called whenever a request comes back 401, so the app can ask for a new token. */
  onUnauthorized: (() => void) | null = null;

  constructor(
    readonly base: string,
    readonly token: string,
    private readonly fetchImpl: FetchLike = (i, init) => fetch(i, init),
  ) {}

  async request<T>(method: string, path: string, body?: unknown, opts: { text?: boolean } = {}): Promise<T> {
    const headers: Record<string, string> = {};
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    const res = await this.raw(method, path, { headers, body: body === undefined ? undefined : JSON.stringify(body) });
    if (res.status === 204) return undefined as T;
    if (opts.text) return (await res.text()) as T;
    const ct = res.headers.get('content-type') ?? '';
    if (!ct.includes('json')) return (await res.text()) as T;
    return (await res.json()) as T;
  }

  /** A request with the token; any non-2xx answer throws an ApiError. The caller reads the body. */
  async raw(method: string, path: string, init: { headers?: Record<string, string>; body?: BodyInit | undefined } = {}): Promise<Response> {
    let res: Response;
    try {
      res = await this.fetchImpl(this.base + path, {
        method,
        headers: { ...init.headers, Authorization: `Bearer ${this.token}` },
        body: init.body,
      });
    } catch (e) {
      throw new ApiError(0, 'network', e instanceof Error ? e.message : String(e));
    }
    if (!res.ok) {
      const err = await toApiError(res);
      if (err.status === 401) this.onUnauthorized?.();
      throw err;
    }
    return res;
  }

  health(): Promise<Health> {
    return this.request('GET', '/v1/health');
  }
  async images(): Promise<Image[]> {
    return (await this.request<{ items: Image[] }>('GET', '/v1/images')).items;
  }
  async listVms(): Promise<Vm[]> {
    return (await this.request<{ items: Vm[] }>('GET', '/v1/vms')).items;
  }
  getVm(id: string): Promise<Vm> {
    return this.request('GET', `/v1/vms/${encodeURIComponent(id)}`);
  }
  createVm(spec: CreateVm): Promise<Vm> {
    return this.request('POST', '/v1/vms', spec);
  }
  action(id: string, action: VmAction, force = false): Promise<Vm> {
    const q = force ? '?force=true' : '';
    return this.request('POST', `/v1/vms/${encodeURIComponent(id)}/${action}${q}`);
  }
  deleteVm(id: string): Promise<void> {
    return this.request('DELETE', `/v1/vms/${encodeURIComponent(id)}`);
  }
  async listVolumes(): Promise<Volume[]> {
    return (await this.request<{ items: Volume[] }>('GET', '/v1/volumes')).items;
  }
  createVolume(spec: CreateVolume): Promise<Volume> {
    return this.request('POST', '/v1/volumes', spec);
  }
  deleteVolume(id: string): Promise<void> {
    return this.request('DELETE', `/v1/volumes/${encodeURIComponent(id)}`);
  }
  async listTemplates(): Promise<Template[]> {
    return (await this.request<{ items: Template[] }>('GET', '/v1/templates')).items;
  }
  async listPools(): Promise<Pool[]> {
    return (await this.request<{ items: Pool[] }>('GET', '/v1/pools')).items;
  }
  createTemplate(spec: CreateTemplate): Promise<Template> {
    return this.request('POST', '/v1/templates', spec);
  }
  deleteTemplate(id: string): Promise<void> {
    return this.request('DELETE', `/v1/templates/${encodeURIComponent(id)}`);
  }
  /** A running VM of the template (from its pool, or restored). */
  vmFromTemplate(name: string, template: string): Promise<Vm & { startedFrom: 'pool' | 'snapshot' }> {
    return this.request('POST', '/v1/vms', { name, template });
  }
  attachDrive(vmId: string, spec: DriveRequest): Promise<Drive> {
    return this.request('POST', `/v1/vms/${encodeURIComponent(vmId)}/drives`, spec);
  }
  detachDrive(vmId: string, driveId: string): Promise<void> {
    return this.request('DELETE', `/v1/vms/${encodeURIComponent(vmId)}/drives/${encodeURIComponent(driveId)}`);
  }
  whoami(): Promise<Whoami> {
    return this.request('GET', '/v1/whoami');
  }
  async listTenants(): Promise<Tenant[]> {
    return (await this.request<{ items: Tenant[] }>('GET', '/v1/tenants')).items;
  }
  async listTokens(): Promise<Token[]> {
    return (await this.request<{ items: Token[] }>('GET', '/v1/tokens')).items;
  }
  /** The answer carries the secret (`token`): the only time the server shows it. */
  createToken(spec: CreateToken): Promise<Token & { token: string }> {
    return this.request('POST', '/v1/tokens', spec);
  }
  revokeToken(id: string): Promise<void> {
    return this.request('DELETE', `/v1/tokens/${encodeURIComponent(id)}`);
  }
  log(id: string): Promise<string> {
    return this.request('GET', `/v1/vms/${encodeURIComponent(id)}/log`, undefined, { text: true });
  }

  /** The guest agent's health (VMs whose image runs capsule-agent); throws when there is none. */
  agentHealth(id: string): Promise<Record<string, unknown>> {
    return this.request('GET', `/v1/vms/${encodeURIComponent(id)}/agent`);
  }
  /** Listening guest ports; null when the server has no such route (404 from an older server). */
  async ports(id: string): Promise<GuestPort[] | null> {
    let r: unknown;
    try {
      r = await this.request('GET', `/v1/vms/${encodeURIComponent(id)}/ports`);
    } catch (e) {
      if (e instanceof ApiError && e.status === 404) return null;
      throw e;
    }
    const list = Array.isArray(r) ? r : ((r as { ports?: unknown; items?: unknown } | null)?.ports ?? (r as { items?: unknown } | null)?.items);
    if (!Array.isArray(list)) return [];
    return list.filter((p): p is GuestPort => !!p && typeof p === 'object' && typeof (p as GuestPort).port === 'number');
  }
  private filesPath(id: string, path: string, sub = ''): string {
    return `/v1/vms/${encodeURIComponent(id)}/files${sub}${path ? `?path=${encodeURIComponent(path)}` : ''}`;
  }
  /** A guest directory's listing (a file's path answers with its bytes: then this throws). */
  async listDir(id: string, path: string): Promise<DirListing> {
    const res = await this.raw('GET', this.filesPath(id, path));
    if (!(res.headers.get('content-type') ?? '').includes('json')) {
      void res.body?.cancel();
      throw new ApiError(400, 'not_a_directory', `${path} is a file, not a directory`);
    }
    return (await res.json()) as DirListing;
  }
  /** A guest file's bytes. */
  async download(id: string, path: string): Promise<Blob> {
    return (await this.raw('GET', this.filesPath(id, path))).blob();
  }
  /** Uploads `data` as the guest file `path` (the browser streams the Blob from disk). */
  async upload(id: string, path: string, data: Blob): Promise<{ path: string; size: number }> {
    const res = await this.raw('PUT', this.filesPath(id, path), { headers: { 'Content-Type': 'application/octet-stream' }, body: data });
    return (await res.json()) as { path: string; size: number };
  }
  deletePath(id: string, path: string): Promise<void> {
    return this.request('DELETE', this.filesPath(id, path));
  }
  mkdir(id: string, path: string): Promise<{ path: string; created: boolean }> {
    return this.request('POST', this.filesPath(id, '', '/mkdir'), { path });
  }

  /** ws(s):// URL for a WebSocket route, authenticated with ?access_token=. */
  wsUrl(path: string, params: Record<string, string | number | undefined> = {}): string {
    const u = new URL(this.base + path, globalThis.location?.href ?? 'http://localhost/');
    u.protocol = u.protocol === 'https:' ? 'wss:' : 'ws:';
    for (const [k, v] of Object.entries(params)) if (v !== undefined) u.searchParams.set(k, String(v));
    u.searchParams.set('access_token', this.token);
    return u.toString();
  }
}

export async function toApiError(res: Response): Promise<ApiError> {
  const text = await res.text().catch(() => '');
  const ra = res.headers.get('retry-after');
  const retryAfter = ra !== null && ra !== '' && !Number.isNaN(Number(ra)) ? Number(ra) : undefined;
  let code = '';
  let message = text.trim() || res.statusText || `HTTP ${res.status}`;
  let field: string | undefined;
  try {
    const j = JSON.parse(text) as { error?: { code?: string; message?: string; field?: string } };
    if (j && typeof j.error === 'object' && j.error) {
      code = j.error.code ?? '';
      message = j.error.message ?? message;
      field = j.error.field ?? undefined;
    }
  } catch {
    /* not JSON: keep the text */
  }
  if (message.length > 300) message = message.slice(0, 300) + '…';
  return new ApiError(res.status, code, message, field, retryAfter);
}
