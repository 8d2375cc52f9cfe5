// Request and response schemas: validation and the OpenAPI document come from the same source.
import { z } from '@hono/zod-openapi';
import { ON_TIMEOUT, ROOTFS_DEVICES, VM_STATES } from '../db/vms.js';
import { DRIVE_CACHES, DRIVE_STATES } from '../db/volumes.js';
import { TOKEN_SCOPES } from '../db/tokens.js';
import { VOLUME_MAX_MIB, VOLUME_MIN_MIB } from '../volumes/files.js';

/** Most drives one VM may have (its definition and hot-plugged together). */
export const MAX_DRIVES = 16;

const UUID_SHAPED = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

export const DriveSchema = z.object({
  id: z.string().openapi({ example: 'drive-0', description: 'the device id in the VMM (DEVICE_DELETED names it)' }),
  volume: z.string().uuid(),
  volumeName: z.string(),
  readOnly: z.boolean(),
  cache: z.enum(DRIVE_CACHES),
  iops: z.number().int().optional(),
  state: z.enum(DRIVE_STATES).openapi({ description: 'attached; attaching or detaching while a hot-plug is under way' }),
}).openapi('Drive');

/** A drive as a client asks for it: a volume by id or name, never a file (unknown fields are refused). */
export const DriveRequestSchema = z.object({
  volume: z.string().min(1).max(128).openapi({ description: 'volume id or name' }),
  readOnly: z.boolean().optional(),
  cache: z.enum(DRIVE_CACHES).optional().openapi({ description: 'none: O_DIRECT; writeback (default): host page cache; unsafe: guest flushes ignored' }),
  iops: z.number().int().min(1).max(1_000_000).optional().openapi({ description: 'total I/O operations per second' }),
}).strict().openapi('DriveRequest');

/** An OpenAPI response with a JSON body of `schema` (the route files' response tables). */
export const json = <T extends z.ZodType>(schema: T, description: string) => ({ description, content: { 'application/json': { schema } } });

export const ErrorSchema = z.object({
  error: z.object({
    code: z.string().openapi({ example: 'invalid_request' }),
    message: z.string(),
    field: z.string().optional(),
  }),
}).openapi('Error');

/** Most keys of a VM's metadata, and the longest key and value (bytes of UTF-8 are not counted: characters). */
export const METADATA_MAX_KEYS = 64;
export const METADATA_MAX_KEY = 128;
export const METADATA_MAX_VALUE = 1024;
/** The longest TTL: 30 days. */
export const MAX_TIMEOUT_SEC = 30 * 24 * 3600;

export const MetadataSchema = z.record(z.string(), z.string().max(METADATA_MAX_VALUE, `metadata values are at most ${METADATA_MAX_VALUE} characters`))
  .superRefine((m, ctx) => {
    const keys = Object.keys(m);
    if (keys.length > METADATA_MAX_KEYS) ctx.addIssue({ code: 'custom', message: `metadata has at most ${METADATA_MAX_KEYS} keys` });
    for (const k of keys) {
      if (k.length === 0 || k.length > METADATA_MAX_KEY) ctx.addIssue({ code: 'custom', path: [k], message: `metadata keys are 1-${METADATA_MAX_KEY} characters` });
    }
  })
  .openapi({ description: `the client's labels: strings to strings (at most ${METADATA_MAX_KEYS} keys); GET /v1/vms?metadata.KEY=VALUE filters by them`, example: { team: 'search', purpose: 'ci' } });

export const TimeoutSecSchema = z.number().int().min(1, `timeoutSec must be 1-${MAX_TIMEOUT_SEC} (30 days)`).max(MAX_TIMEOUT_SEC, `timeoutSec must be 1-${MAX_TIMEOUT_SEC} (30 days)`);

export const VmSchema = z.object({
  id: z.string().uuid(),
  tenant: z.string().openapi({ description: 'the owning tenant\'s id' }),
  name: z.string().openapi({ description: 'unique within its tenant' }),
  state: z.enum(VM_STATES),
  image: z.string(),
  hypervisor: z.enum(['qemu', 'native']),
  vcpus: z.number().int(),
  memoryMiB: z.number().int(),
  cmdline: z.string().optional(),
  rng: z.boolean(),
  balloon: z.object({ enabled: z.boolean(), deflateOnOom: z.boolean() }),
  rootfsDevice: z.enum(ROOTFS_DEVICES).openapi({ description: 'how an image\'s rootfs reaches the guest: virtio-blk (vda) or pmem (/dev/pmem0 with DAX; native: virtio-pmem, QEMU: an NVDIMM)' }),
  network: z.object({
    enabled: z.boolean().openapi({ description: 'the VM has a NIC (on by default)' }),
    egress: z.boolean().openapi({ description: 'NAT to the host\'s uplink (on by default; PATCH to switch at run time)' }),
    guestAddress: z.string().optional().openapi({ description: 'the guest\'s address: the same in every VM (each has its own network namespace)' }),
    hostAddress: z.string().optional().openapi({ description: 'where the host reaches the guest: unique per VM (DNAT to guestAddress)' }),
    mac: z.string().optional(),
  }).openapi({ description: 'docs/network.md; the addresses are shown where the host gives VMs networks' }),
  drives: z.array(DriveSchema).openapi({ description: 'in guest order: vda, vdb, ... (after vda = the image rootfs and vdb = the VM\'s layer, for an image with a rootfs)' }),
  metadata: z.record(z.string(), z.string()),
  timeoutSec: z.number().int().optional().openapi({ description: 'the VM\'s TTL, counted from each start (absent: none)' }),
  onTimeout: z.enum(ON_TIMEOUT).openapi({ description: 'at expiry the VM is stopped or deleted' }),
  expiresAt: z.string().optional().openapi({ description: 'when the current run ends (a running VM with a TTL)' }),
  restoreFrom: z.string().optional().openapi({ description: 'the snapshot its next start restores instead of booting (a VM made with fromSnapshot, until its first start succeeds)' }),
  template: z.string().optional().openapi({ description: 'the template it was made from (its id; docs/templates.md)' }),
  role: z.enum(['template-build', 'pool-warming', 'pool']).optional().openapi({ description: 'set while the server keeps the VM for a template (its build, or its pool): such VMs are not in lists' }),
  pid: z.number().int().optional(),
  createdAt: z.string(),
  updatedAt: z.string(),
}).openapi('VM');

export const CreateVmSchema = z.object({
  name: z.string().min(1).max(63).regex(/^[a-zA-Z0-9][a-zA-Z0-9_.-]*$/, 'name must start with a letter or digit and contain only letters, digits, ".", "_" and "-"'),
  image: z.string().min(1).max(128).default('default'),
  vcpus: z.number().int().min(1).max(254).default(1),
  memoryMiB: z.number().int().min(64).max(512 * 1024).default(256),
  hypervisor: z.enum(['qemu', 'native']).optional(),
  // The limit is the kernel's (COMMAND_LINE_SIZE), in bytes: 'é' is two of them.
  cmdline: z.string().refine((s) => Buffer.byteLength(s, 'utf8') <= 2048, 'cmdline must be at most 2048 bytes (UTF-8)')
    .refine((s) => !s.includes('\0') && !s.includes('\n'), 'cmdline must not contain NUL or newline').optional(),
  drives: z.array(DriveRequestSchema).max(MAX_DRIVES).default([]),
  rng: z.boolean().default(true),
  balloon: z.union([
    z.boolean(),
    z.object({ enabled: z.boolean().default(true), deflateOnOom: z.boolean().default(false) }).strict(),
  ]).default(false).openapi({ description: 'true, or {"deflateOnOom": true} to let the guest take memory back from the balloon when it runs out' }),
  rootfsDevice: z.enum(ROOTFS_DEVICES).default('virtio-blk').openapi({ description: 'for an image with a rootfs: virtio-blk (the rootfs is vda, the layer vdb) or pmem (the rootfs is mapped into guest memory as /dev/pmem0 and mounted with DAX: no page-cache copy; the layer is vda). Kata\'s block_device_driver.' }),
  network: z.object({
    enabled: z.boolean().default(true),
    egress: z.boolean().default(true),
  }).strict().default({ enabled: true, egress: true }).openapi({ description: 'a NIC in the VM\'s own network namespace (docs/network.md); egress: NAT to the host\'s uplink' }),
  metadata: MetadataSchema.default({}),
  timeoutSec: TimeoutSecSchema.optional().openapi({ description: `the VM's TTL in seconds (1-${MAX_TIMEOUT_SEC}), counted from each start; POST /v1/vms/{id}/timeout resets it` }),
  onTimeout: z.enum(ON_TIMEOUT).default('stop').openapi({ description: 'what happens at expiry: stop (the definition stays) or delete' }),
}).strict().openapi('CreateVm');

/**
 * A VM made from a snapshot: image, CPUs, memory, hypervisor and devices are the snapshot's (its
 * saved state depends on them), so only what the guest does not see can be given.
 */
export const CreateVmFromSnapshotSchema = z.object({
  name: CreateVmSchema.shape.name,
  fromSnapshot: z.string().min(1).max(128).openapi({ description: 'a snapshot of the caller\'s tenant, by id or name: the first start restores it (docs/snapshots.md)' }),
  network: z.object({ egress: z.boolean().default(true) }).strict().optional().openapi({ description: 'egress of the VM\'s NIC, if the snapshot\'s VM had one' }),
  metadata: MetadataSchema.default({}),
  timeoutSec: CreateVmSchema.shape.timeoutSec,
  onTimeout: CreateVmSchema.shape.onTimeout,
}).strict().openapi('CreateVmFromSnapshot');

export const CreateVmFromTemplateSchema = z.object({
  name: CreateVmSchema.shape.name,
  template: z.string().min(1).max(128).openapi({ description: 'a ready template of the caller\'s tenant, by id or name: the VM is one of its pool, or a restore of its snapshot (docs/templates.md)' }),
  network: CreateVmFromSnapshotSchema.shape.network,
  metadata: MetadataSchema.default({}),
  timeoutSec: CreateVmSchema.shape.timeoutSec,
  onTimeout: CreateVmSchema.shape.onTimeout,
}).strict().openapi('CreateVmFromTemplate');

/** A template's commands: one shell line each, run by the guest agent (/bin/sh -c). */
const TemplateCommand = z.string().min(1).max(4096).refine((s) => !s.includes('\0'), 'a command must not contain NUL');
export const MAX_POOL_SIZE = 64;
const PoolSize = z.number().int().min(0).max(MAX_POOL_SIZE).openapi({ description: `clones kept running, ready to be claimed (0-${MAX_POOL_SIZE}); they count in the tenant's quotas` });

export const CreateTemplateSchema = z.object({
  name: CreateVmSchema.shape.name,
  image: CreateVmSchema.shape.image,
  vcpus: CreateVmSchema.shape.vcpus,
  memoryMiB: CreateVmSchema.shape.memoryMiB,
  hypervisor: CreateVmSchema.shape.hypervisor,
  startCmd: TemplateCommand.optional().openapi({ description: 'started in the background once the guest agent answers; it keeps running in every VM of the template' }),
  readyCmd: TemplateCommand.optional().openapi({ description: 'run until it exits 0 (each try at most 10 s); without it, the start command done or still running a second after its start (or, without either, the image\'s ready marker on the console) is ready' }),
  readyTimeoutSec: z.number().int().min(1).max(3600).default(300).openapi({ description: 'how long the build may take from boot to ready' }),
  pool: PoolSize.default(0),
}).strict().openapi('CreateTemplate');

export const UpdateTemplateSchema = z.object({ pool: PoolSize }).strict().openapi('UpdateTemplate');

export const TemplateSchema = z.object({
  id: z.string().uuid(),
  tenant: z.string().openapi({ description: 'the owning tenant\'s id' }),
  name: z.string(),
  image: z.string(),
  hypervisor: z.enum(['qemu', 'native']),
  vcpus: z.number().int(),
  memoryMiB: z.number().int(),
  startCmd: z.string().optional(),
  readyCmd: z.string().optional(),
  readyTimeoutSec: z.number().int(),
  pool: z.number().int(),
  state: z.enum(['building', 'ready', 'failed']),
  step: z.enum(['booting', 'starting', 'waiting-ready', 'snapshotting']).optional().openapi({ description: 'while building' }),
  reason: z.string().optional().openapi({ description: 'why the build failed' }),
  snapshot: z.string().optional().openapi({ description: 'the template\'s own snapshot (not among the tenant\'s snapshots)' }),
  createdAt: z.string(),
  updatedAt: z.string(),
}).openapi('Template');

export const PoolSchema = z.object({
  template: z.string().openapi({ description: 'the template\'s name' }),
  size: z.number().int().openapi({ description: 'the clones wanted' }),
  ready: z.number().int().openapi({ description: 'running, waiting to be claimed' }),
  warming: z.number().int().openapi({ description: 'being restored' }),
  failed: z.number().int().openapi({ description: 'refills that failed in a row (retried with a growing pause)' }),
  reason: z.string().optional().openapi({ description: 'why the last refill failed' }),
}).openapi('Pool');

export const SnapshotSchema = z.object({
  id: z.string().uuid(),
  tenant: z.string().openapi({ description: 'the owning tenant\'s id' }),
  name: z.string().openapi({ description: 'unique within its tenant' }),
  sourceVm: z.string().optional().openapi({ description: 'the VM it was taken of (it may be gone)' }),
  hypervisor: z.enum(['qemu', 'native']),
  image: z.string(),
  vcpus: z.number().int(),
  memoryMiB: z.number().int(),
  definition: z.object({
    cmdline: z.string().optional(),
    rng: z.boolean(),
    balloon: z.object({ enabled: z.boolean(), deflateOnOom: z.boolean() }),
    rootfsDevice: z.enum(ROOTFS_DEVICES),
    network: z.object({ enabled: z.boolean() }),
  }).openapi({ description: 'the settings a VM made from it gets' }),
  sizeBytes: z.number().int().openapi({ description: 'the space its files take on the host' }),
  createdAt: z.string(),
}).openapi('Snapshot');

export const CreateSnapshotSchema = z.object({
  name: CreateVmSchema.shape.name.optional().openapi({ description: 'unique within the tenant; default: <vm name>-<time>' }),
}).strict().openapi('CreateSnapshot');

export const UpdateVmSchema = z.object({
  network: z.object({ egress: z.boolean() }).strict().optional(),
  metadata: MetadataSchema.optional().openapi({ description: 'replaces the VM\'s metadata' }),
}).strict().refine((b) => b.network !== undefined || b.metadata !== undefined, 'give network, metadata, or both').openapi('UpdateVm');

export const SetTimeoutSchema = z.object({
  timeoutSec: TimeoutSecSchema.nullable().optional().openapi({ description: 'the new TTL (null: none); absent: the VM\'s own' }),
}).strict().openapi('SetTimeout');

export const VolumeSchema = z.object({
  id: z.string().uuid(),
  tenant: z.string().openapi({ description: 'the owning tenant\'s id' }),
  name: z.string().openapi({ description: 'unique within its tenant' }),
  sizeMiB: z.number().int(),
  fromImage: z.string().optional(),
  attachments: z.array(z.object({ vm: z.string(), vmName: z.string(), drive: z.string(), readOnly: z.boolean(), state: z.enum(DRIVE_STATES) })),
  createdAt: z.string(),
  updatedAt: z.string(),
}).openapi('Volume');

export const CreateVolumeSchema = z.object({
  name: z.string().min(1).max(63).regex(/^[a-zA-Z0-9][a-zA-Z0-9_.-]*$/, 'name must start with a letter or digit and contain only letters, digits, ".", "_" and "-"')
    .refine((s) => !UUID_SHAPED.test(s), 'name must not look like a volume id (a UUID)'),
  sizeMiB: z.number().int().min(VOLUME_MIN_MIB).max(VOLUME_MAX_MIB).optional()
    .openapi({ description: `${VOLUME_MIN_MIB}–${VOLUME_MAX_MIB} MiB (a sparse file); with fromImage: grow the copy to this size` }),
  fromImage: z.string().min(1).max(128).optional().openapi({ description: 'the name of an image with a root filesystem: the volume is a copy of it' }),
}).strict().refine((v) => v.sizeMiB !== undefined || v.fromImage !== undefined, { message: 'give sizeMiB, fromImage, or both', path: ['sizeMiB'] })
  .openapi('CreateVolume');

export const BalloonSchema = z.object({
  actualMiB: z.number().int().openapi({ description: 'the guest\'s memory as the balloon driver reports it' }),
  targetMiB: z.number().int().optional(),
}).openapi('Balloon');

export const BalloonRequestSchema = z.object({
  targetMiB: z.number().int().min(1).openapi({ description: 'the guest memory size to balloon to (at most the VM\'s memoryMiB)' }),
}).strict().openapi('BalloonRequest');

export const ImageSchema = z.object({
  name: z.string(),
  description: z.string(),
  cmdline: z.string(),
  readyMarker: z.string().optional(),
  rootfs: z.boolean().openapi({ description: 'the image has a root filesystem (VMs get it read-only as vda with a writable layer as vdb; volumes can copy it)' }),
  createdAt: z.string(),
  updatedAt: z.string(),
}).openapi('Image');

export const HealthSchema = z.object({
  status: z.literal('ok'),
  kvm: z.boolean(),
  hypervisors: z.array(z.enum(['qemu', 'native'])),
  defaultHypervisor: z.enum(['qemu', 'native']).optional(),
  details: z.record(z.string(), z.string()).optional(),
  network: z.object({ enabled: z.boolean(), reason: z.string() }).optional().openapi({ description: 'whether VMs started now get their network (docs/network.md), or why not' }),
  jail: z.object({
    enabled: z.boolean().openapi({ description: 'VMMs started now run in the jail (docs/jail.md)' }),
    user: z.boolean().openapi({ description: 'jailed VMMs run as an unprivileged per-VM user, without capabilities' }),
    namespaces: z.boolean().openapi({ description: 'jailed VMMs run in their own mount and PID namespaces, chrooted into their VM directory' }),
    cgroups: z.boolean().openapi({ description: 'jailed VMMs run in their own cgroups with CPU and memory limits' }),
    rlimits: z.boolean().openapi({ description: 'jailed VMMs run under RLIMIT_NOFILE and RLIMIT_FSIZE' }),
    reasons: z.record(z.string(), z.string()).openapi({ description: 'per step (and "jail"): what is applied, or why it is not' }),
  }).openapi('JailStatus'),
  storage: z.object({
    ok: z.boolean().openapi({ description: 'writes succeed and free space is above the low mark' }),
    freeBytes: z.number(),
    totalBytes: z.number(),
    lowBytes: z.number().openapi({ description: 'CAPSULE_MIN_FREE_MIB' }),
    low: z.boolean(),
    lastError: z.object({ code: z.string(), message: z.string(), at: z.string() }).optional(),
    eventsNotStored: z.number().int().openapi({ description: 'events delivered live but not stored (not replayable) since the server started' }),
    statesNotSaved: z.number().int().openapi({ description: 'VM state changes held in memory until the disk has room' }),
  }).optional().openapi('StorageStatus'),
}).openapi('Health');

const CheckSchema = z.object({ ok: z.boolean(), message: z.string() });
export const ReadinessSchema = z.object({
  status: z.enum(['ready', 'not_ready']),
  checks: z.object({
    database: CheckSchema.openapi({ description: 'a write in a rolled-back transaction succeeds, and no write to the data directory fails' }),
    image: CheckSchema.openapi({ description: 'the default image is registered and its files are present' }),
    backend: CheckSchema.openapi({ description: 'at least one hypervisor can run VMs (native: /dev/kvm usable; QEMU: its binary runs)' }),
  }),
  error: z.object({ code: z.literal('not_ready'), message: z.string() }).optional().openapi({ description: 'with 503: the failing checks' }),
}).openapi('Readiness');

export const IdParams = z.object({ id: z.string().min(1).openapi({ param: { name: 'id', in: 'path' } }) });
export const DriveParams = z.object({
  id: z.string().min(1).openapi({ param: { name: 'id', in: 'path' } }),
  driveId: z.string().min(1).openapi({ param: { name: 'driveId', in: 'path' } }),
});
export const ForceQuery = z.object({
  force: z.enum(['true', 'false', '1', '0']).optional().openapi({ param: { name: 'force', in: 'query' } }),
});
export const SinceQuery = z.object({
  since: z.string().regex(/^\d+$/, 'since must be a non-negative integer').optional(),
  access_token: z.string().optional(),
});

// ---- tenants, tokens, audit ----

const NAME_RULE = 'name must start with a letter or digit and contain only letters, digits, ".", "_" and "-"';
const quota = (what: string) => z.number().int().min(0).max(1_000_000_000).nullable().openapi({ description: `${what}; null: unlimited` });

export const QuotasSchema = z.object({
  vms: quota('VMs defined'),
  vcpus: quota('vCPUs of running VMs (starting, running, paused, stopping)'),
  memoryMiB: quota('guest memory of running VMs, MiB'),
  volumeMiB: quota('the sizes of all volumes together, MiB'),
  snapshotMiB: quota('the disk all snapshots take together (taken, paused to disk, templates\'), MiB'),
}).openapi('Quotas');

/** Absent quotas stay as they are (PATCH) or unlimited (POST); null makes one unlimited. */
export const QuotasRequestSchema = z.object({
  vms: quota('VMs defined').optional(),
  vcpus: quota('vCPUs of running VMs').optional(),
  memoryMiB: quota('guest memory of running VMs, MiB').optional(),
  volumeMiB: quota('volume sizes together, MiB').optional(),
  snapshotMiB: quota('snapshots\' disk together, MiB').optional(),
}).strict().openapi('QuotasRequest');

export const UsageSchema = z.object({
  vms: z.number().int(), vcpus: z.number().int(), memoryMiB: z.number().int(), volumeMiB: z.number().int(), snapshotMiB: z.number().int(),
}).openapi('Usage');

const TenantName = z.string().min(1).max(63).regex(/^[a-zA-Z0-9][a-zA-Z0-9_.-]*$/, NAME_RULE)
  .refine((s) => !UUID_SHAPED.test(s), 'name must not look like a tenant id (a UUID)');

export const TenantSchema = z.object({
  id: z.string().uuid(),
  name: z.string(),
  quotas: QuotasSchema,
  usage: UsageSchema.optional().openapi({ description: 'what the tenant uses now, against quotas (GET /v1/tenants/:id)' }),
  createdAt: z.string(),
  updatedAt: z.string(),
}).openapi('Tenant');

export const CreateTenantSchema = z.object({ name: TenantName, quotas: QuotasRequestSchema.optional() }).strict().openapi('CreateTenant');
export const UpdateTenantSchema = z.object({ name: TenantName.optional(), quotas: QuotasRequestSchema.optional() }).strict().openapi('UpdateTenant');

export const TokenSchema = z.object({
  id: z.string().uuid(),
  name: z.string(),
  tenant: z.string().openapi({ description: 'the tenant\'s id' }),
  tenantName: z.string(),
  scope: z.enum(TOKEN_SCOPES),
  expiresAt: z.string().optional(),
  createdAt: z.string(),
}).openapi('Token');

export const CreatedTokenSchema = TokenSchema.extend({
  token: z.string().openapi({ description: 'the secret: cap_ and 64 hex digits. Shown in this response only', example: `cap_${'0'.repeat(64)}` }),
}).openapi('CreatedToken');

export const CreateTokenSchema = z.object({
  tenant: z.string().min(1).max(128).optional().openapi({ description: 'tenant id or name (default: the caller\'s)' }),
  name: z.string().min(1).max(128),
  scope: z.enum(TOKEN_SCOPES).openapi({ description: 'read: look only; write: everything in the tenant; admin: everything, all tenants' }),
  expiresAt: z.iso.datetime({ offset: true }).refine((s) => Date.parse(s) > Date.now(), 'expiresAt must be in the future').optional(),
}).strict().openapi('CreateToken');

export const WhoamiSchema = z.object({
  id: z.string(),
  name: z.string(),
  scope: z.enum(TOKEN_SCOPES),
  expiresAt: z.string().optional(),
  createdAt: z.string(),
  tenant: z.object({ id: z.string(), name: z.string(), quotas: QuotasSchema, usage: UsageSchema }),
}).openapi('Whoami');

export const AuditEntrySchema = z.object({
  id: z.number().int(),
  at: z.string(),
  token: z.string().openapi({ description: 'the token id' }),
  tenant: z.string().openapi({ description: 'the caller\'s tenant id' }),
  method: z.string(),
  route: z.string().openapi({ example: '/v1/vms/:id/start' }),
  path: z.string(),
  resourceType: z.string().optional(),
  resourceId: z.string().optional(),
  resourceTenant: z.string().optional(),
  status: z.number().int(),
}).openapi('AuditEntry');

export const AuditQuerySchema = z.object({
  tenant: z.string().optional().openapi({ param: { name: 'tenant', in: 'query' }, description: 'tenant id or name: entries by it or about its resources' }),
  vm: z.string().optional().openapi({ param: { name: 'vm', in: 'query' } }),
  since: z.iso.datetime({ offset: true }).optional().openapi({ param: { name: 'since', in: 'query' } }),
  until: z.iso.datetime({ offset: true }).optional().openapi({ param: { name: 'until', in: 'query' } }),
  limit: z.coerce.number().int().min(1).max(1000).default(100).openapi({ param: { name: 'limit', in: 'query' } }),
});

export const TenantQuery = z.object({
  tenant: z.string().optional().openapi({ param: { name: 'tenant', in: 'query' }, description: 'admin: only this tenant\'s (id or name)' }),
});

/**
 * GET /v1/vms: filters (all must match) and pages. Besides these, any number of
 * `metadata.KEY=VALUE`. Without `limit` the whole list comes at once (as before pages existed).
 */
export const ListVmsQuery = TenantQuery.extend({
  state: z.enum(VM_STATES).optional().openapi({ param: { name: 'state', in: 'query' } }),
  limit: z.coerce.number().int().min(1, 'limit must be 1-1000').max(1000, 'limit must be 1-1000').optional()
    .openapi({ param: { name: 'limit', in: 'query' }, description: 'at most this many (1-1000); the answer has nextCursor when more follow' }),
  cursor: z.string().max(512).optional().openapi({ param: { name: 'cursor', in: 'query' }, description: 'nextCursor of the previous page' }),
}).catchall(z.string()).superRefine((q, ctx) => {
  for (const key of Object.keys(q)) {
    if (['tenant', 'state', 'limit', 'cursor'].includes(key)) continue;
    if (!/^metadata\.[^.].*$/.test(key)) ctx.addIssue({ code: 'custom', path: [key], message: `unknown query parameter ${key} (tenant, state, limit, cursor, metadata.KEY)` });
    else if (typeof q[key] !== 'string') ctx.addIssue({ code: 'custom', path: [key], message: `${key} is given more than once` });
  }
});
