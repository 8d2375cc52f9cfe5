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
  createdAt: string;
  updatedAt: string;
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
    const headers: Record<string, string> = { Authorization: `Bearer ${this.token}` };
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    let res: Response;
    try {
      res = await this.fetchImpl(this.base + path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (e) {
      throw new ApiError(0, 'network', e instanceof Error ? e.message : String(e));
    }
    if (!res.ok) {
      const err = await toApiError(res);
      if (err.status === 401) this.onUnauthorized?.();
      throw err;
    }
    if (res.status === 204) return undefined as T;
    if (opts.text) return (await res.text()) as T;
    const ct = res.headers.get('content-type') ?? '';
    if (!ct.includes('json')) return (await res.text()) as T;
    return (await res.json()) as T;
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
