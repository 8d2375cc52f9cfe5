// The API's shapes as the CLI reads them (docs/api.md). Only what the CLI prints is typed;
// json output passes the server's objects through whole, fields the CLI does not know included.

export interface Drive {
  id: string;
  volume: string;
  volumeName: string;
  readOnly: boolean;
  cache: string;
  iops?: number;
  state: string;
}

export interface Vm {
  id: string;
  name: string;
  state: string;
  image: string;
  hypervisor: string;
  vcpus: number;
  memoryMiB: number;
  cmdline?: string;
  rng: boolean;
  balloon: { enabled: boolean; deflateOnOom: boolean };
  drives: Drive[];
  pid?: number;
  /** How an image's rootfs reaches the guest: virtio-blk or pmem. */
  rootfsDevice?: string;
  /** The owning tenant's id (servers with tenants). */
  tenant?: string;
  metadata?: Record<string, string>;
  timeoutSec?: number;
  onTimeout?: string;
  expiresAt?: string;
  createdAt: string;
  updatedAt: string;
}

export interface Volume {
  id: string;
  name: string;
  sizeMiB: number;
  fromImage?: string;
  attachments: Array<{ vm: string; vmName: string; drive: string; readOnly: boolean; state: string }>;
  tenant?: string;
  createdAt: string;
  updatedAt: string;
}

export interface Image {
  name: string;
  description: string;
  cmdline: string;
  readyMarker?: string;
  rootfs: boolean;
  createdAt: string;
  updatedAt: string;
}

export interface Quotas {
  vms?: number | null;
  vcpus?: number | null;
  memoryMiB?: number | null;
  volumeMiB?: number | null;
  snapshotMiB?: number | null;
}

export interface Tenant {
  id: string;
  name: string;
  quotas?: Quotas;
  /** What the tenant uses now, against its quotas (GET /v1/tenants/:id). */
  usage?: Quotas;
  createdAt?: string;
  updatedAt?: string;
}

export interface Token {
  id: string;
  name?: string;
  tenant?: string;
  tenantName?: string;
  scope?: string;
  expiresAt?: string | null;
  lastUsedAt?: string | null;
  createdAt?: string;
  /** Only in the answer to POST /v1/tokens: the secret, shown once. */
  token?: string;
}

export interface VmEvent {
  seq: number;
  vm: string;
  event: string;
  data: Record<string, unknown>;
  timestamp: string;
}

export interface List<T> {
  items: T[];
}

export interface Template {
  id: string;
  tenant?: string;
  name: string;
  image: string;
  hypervisor: string;
  vcpus: number;
  memoryMiB: number;
  startCmd?: string;
  readyCmd?: string;
  readyTimeoutSec: number;
  pool: number;
  state: 'building' | 'ready' | 'failed';
  step?: string;
  reason?: string;
  snapshot?: string;
  createdAt: string;
  updatedAt: string;
}

export interface Pool {
  template: string;
  size: number;
  ready: number;
  warming: number;
  failed: number;
  reason?: string;
}
