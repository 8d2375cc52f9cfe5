// Server configuration from the environment, validated once at start.
import { availableParallelism, totalmem } from 'node:os';
import { resolve, join } from 'node:path';
import { z } from 'zod';

const intFromEnv = (fallback: number, min: number, max: number) =>
  z.coerce.number().int().min(min).max(max).default(fallback);

const EnvSchema = z.object({
  PORT: intFromEnv(8080, 0, 65535),
  HOST: z.string().min(1).default('127.0.0.1'),
  CAPSULE_DATA_DIR: z.string().min(1).default('./var'),
  CAPSULE_IMAGES_DIR: z.string().min(1).optional(),
  CAPSULE_LOG_LEVEL: z.enum(['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent']).default('info'),
  /** API calls and inbound WebSocket messages per token: leak rate per second and burst. */
  CAPSULE_RATE_LIMIT: intFromEnv(100, 1, 10_000_000),
  CAPSULE_RATE_BURST: intFromEnv(100, 1, 10_000_000),
  /** The same, per tenant (all its tokens together); default: 10 × the per-token figures. */
  CAPSULE_TENANT_RATE: z.coerce.number().int().min(1).max(1_000_000_000).optional(),
  CAPSULE_TENANT_BURST: z.coerce.number().int().min(1).max(1_000_000_000).optional(),
  /** Audit log entries kept (the oldest are pruned). */
  CAPSULE_AUDIT_MAX_ROWS: intFromEnv(100_000, 10, 100_000_000),
  /** Outbound events per subscriber: leak rate per second and burst. */
  CAPSULE_EVENT_RATE: intFromEnv(1000, 1, 10_000_000),
  CAPSULE_EVENT_BURST: intFromEnv(1000, 1, 10_000_000),
  /** Events kept per VM for replay (?since=). */
  CAPSULE_EVENT_HISTORY: intFromEnv(1000, 10, 1_000_000),
  /** Most events one ?since= replay sends (older ones are announced as EVENTS_DROPPED). */
  CAPSULE_EVENT_REPLAY_LIMIT: intFromEnv(10_000, 1, 1_000_000),
  /** Below this much free space on the data directory's filesystem, health reports it low. */
  CAPSULE_MIN_FREE_MIB: intFromEnv(256, 0, 1 << 30),
  /** Host admission: the share of the host's memory (MemTotal) that guests of all active VMs may take together. */
  CAPSULE_HOST_MEMORY_SHARE: z.coerce.number().min(0.01).max(1).default(0.8),
  /** Host admission: guest memory of all active VMs together, MiB, outright (overrides the share; tests set small ones). */
  CAPSULE_HOST_MEMORY_MIB: z.coerce.number().int().min(64).max(1 << 30).optional(),
  /** Host admission: vCPUs of all active VMs per host CPU (E2B runs 4). CAPSULE_CPU_OVERCOMMIT is the old name. */
  CAPSULE_VCPU_OVERCOMMIT: z.coerce.number().min(0.1).max(64).optional(),
  CAPSULE_CPU_OVERCOMMIT: z.coerce.number().min(0.1).max(64).optional(),
  /** Host admission: vCPUs of all active VMs together, outright (overrides the overcommit). */
  CAPSULE_HOST_VCPUS: z.coerce.number().int().min(1).max(1 << 20).optional(),
  /** Most vCPUs one VM may have (default: the host's CPU count). */
  CAPSULE_MAX_VCPUS: z.coerce.number().int().min(1).max(254).optional(),
  /** Seconds DELETE /v1/vms/:id/drives/:drive waits for the guest to release the drive (504 after). */
  CAPSULE_DETACH_TIMEOUT: z.coerce.number().min(0.1).max(3600).default(30),
  /** Seconds a clean stop waits for the guest before killing the VMM. */
  CAPSULE_STOP_TIMEOUT: z.coerce.number().min(0).max(3600).default(30),
  /** Seconds a SIGTERM waits for the requests in flight (a VM start under way) before the server exits anyway. */
  CAPSULE_SHUTDOWN_TIMEOUT: z.coerce.number().min(0).max(3600).default(30),
  /** host:port of a separate listener that serves GET /metrics without a token (then the main one does not). */
  CAPSULE_METRICS_ADDR: z.string().regex(/^(\[[0-9a-fA-F:.]+\]|[^:\s]+):\d{1,5}$/, 'must be host:port (IPv6 as [addr]:port)').optional(),
  CAPSULE_DEFAULT_HYPERVISOR: z.enum(['qemu', 'native']).optional(),
  CAPSULE_QEMU: z.string().default('qemu-system-x86_64'),
  CAPSULE_MAX_BODY_BYTES: intFromEnv(64 * 1024, 128, 64 * 1024 * 1024),
  /** Seconds a proxied connection to a guest's port (/v1/vms/:id/ports/:port) may stay silent before it is cut (504 before the answer began). */
  CAPSULE_PORT_IDLE_TIMEOUT: z.coerce.number().min(0.1).max(86400).default(60),
  /** Open WebSockets (events, consoles, exec and ports together) per token. */
  CAPSULE_MAX_SOCKETS_PER_TOKEN: intFromEnv(64, 1, 100_000),
  /** The VMM jail (docs/jail.md): auto = on where the host allows it, on = required, off. */
  CAPSULE_JAIL: z.enum(['auto', 'on', 'off']).default('auto'),
  /** One fixed uid (and gid) for every jailed VMM; unset: a per-VM uid from the range below. */
  CAPSULE_JAIL_UID: z.coerce.number().int().min(1).max(0xfffffffe).optional(),
  CAPSULE_JAIL_GID: z.coerce.number().int().min(1).max(0xfffffffe).optional(),
  CAPSULE_JAIL_UID_BASE: intFromEnv(100_000, 1, 0xfffffffe),
  CAPSULE_JAIL_UID_COUNT: intFromEnv(65_536, 1, 0x7fffffff),
  /** RLIMIT_NOFILE and RLIMIT_FSIZE (MiB) of a jailed VMM. */
  CAPSULE_JAIL_NOFILE: intFromEnv(1024, 64, 1 << 20),
  CAPSULE_JAIL_FSIZE_MIB: intFromEnv(64, 1, 1 << 20),
  /** Memory cgroup limit = guest memory + this much for the VMM itself. */
  CAPSULE_JAIL_MEMORY_OVERHEAD_MIB: intFromEnv(256, 0, 1 << 20),
  /** Cgroup under which capsule/<id> is created (relative to each hierarchy); default: the server's own. */
  CAPSULE_CGROUP_PARENT: z.string().regex(/^\/[^\0]*$/, 'must be an absolute cgroup path').optional(),
  /** The guest agent's fallback path: unjailed QEMU VMs get a user-mode NIC forwarding a host port to it (docs/agent.md). */
  CAPSULE_AGENT_USERNET: z.enum(['0', '1']).default('0'),
});

export interface JailConfig {
  mode: 'auto' | 'on' | 'off';
  /** A fixed uid/gid, or a range [uidBase, uidBase + uidCount) that per-VM ids map into. */
  uid: number | undefined;
  gid: number | undefined;
  uidBase: number;
  uidCount: number;
  nofile: number;
  fsizeBytes: number;
  memoryOverheadMiB: number;
  cgroupParent: string | undefined;
}

/** Host-wide limits checked before a VM is defined or started (server/supervisor/admission.ts). */
export interface AdmissionConfig {
  /** Guest memory of all active VMs together, MiB. */
  hostMemoryMiB: number;
  /** vCPUs of all active VMs together. */
  hostVcpus: number;
  /** vCPUs of one VM. */
  maxVcpus: number;
  /** Where hostMemoryMiB and hostVcpus come from, for error messages ("0.8 × 7837 MiB (CAPSULE_HOST_MEMORY_SHARE)"). */
  memorySource: string;
  vcpuSource: string;
}

export interface Config {
  port: number;
  host: string;
  dataDir: string;
  imagesDir: string;
  vmsDir: string;
  dbPath: string;
  adminTokenPath: string;
  logLevel: string;
  rateLimit: { perSecond: number; burst: number };
  tenantRateLimit: { perSecond: number; burst: number };
  auditMaxRows: number;
  eventRate: { perSecond: number; burst: number };
  eventHistory: number;
  eventReplayLimit: number;
  minFreeBytes: number;
  admission: AdmissionConfig;
  stopTimeoutMs: number;
  shutdownTimeoutMs: number;
  detachTimeoutMs: number;
  defaultHypervisor: 'qemu' | 'native' | undefined;
  qemuBinary: string;
  maxBodyBytes: number;
  maxSocketsPerToken: number;
  /** CAPSULE_PORT_IDLE_TIMEOUT in ms: the ports proxy cuts a guest connection silent this long. */
  portIdleTimeoutMs: number;
  jail: JailConfig;
  /** The separate metrics listener (CAPSULE_METRICS_ADDR); undefined: /metrics on the main listener, admin token required. */
  metricsAddr: { host: string; port: number } | undefined;
  /** CAPSULE_AGENT_USERNET: reach guest agents over QEMU user networking (the fallback for hosts without per-VM networking). */
  agentUsernet: boolean;
}

export function loadConfig(env: NodeJS.ProcessEnv = process.env): Config {
  const parsed = EnvSchema.safeParse(env);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw new Error(`invalid configuration: ${issue?.path.join('.')}: ${issue?.message}`);
  }
  const e = parsed.data;
  const dataDir = resolve(e.CAPSULE_DATA_DIR);
  return {
    port: e.PORT,
    host: e.HOST,
    dataDir,
    imagesDir: resolve(e.CAPSULE_IMAGES_DIR ?? join(dataDir, 'images')),
    vmsDir: join(dataDir, 'vms'),
    dbPath: join(dataDir, 'capsule.db'),
    adminTokenPath: join(dataDir, 'admin-token'),
    logLevel: e.CAPSULE_LOG_LEVEL,
    rateLimit: { perSecond: e.CAPSULE_RATE_LIMIT, burst: e.CAPSULE_RATE_BURST },
    tenantRateLimit: { perSecond: e.CAPSULE_TENANT_RATE ?? e.CAPSULE_RATE_LIMIT * 10, burst: e.CAPSULE_TENANT_BURST ?? e.CAPSULE_RATE_BURST * 10 },
    auditMaxRows: e.CAPSULE_AUDIT_MAX_ROWS,
    eventRate: { perSecond: e.CAPSULE_EVENT_RATE, burst: e.CAPSULE_EVENT_BURST },
    eventHistory: e.CAPSULE_EVENT_HISTORY,
    eventReplayLimit: e.CAPSULE_EVENT_REPLAY_LIMIT,
    minFreeBytes: e.CAPSULE_MIN_FREE_MIB * 1024 * 1024,
    admission: admissionConfig(e),
    stopTimeoutMs: e.CAPSULE_STOP_TIMEOUT * 1000,
    shutdownTimeoutMs: e.CAPSULE_SHUTDOWN_TIMEOUT * 1000,
    detachTimeoutMs: e.CAPSULE_DETACH_TIMEOUT * 1000,
    defaultHypervisor: e.CAPSULE_DEFAULT_HYPERVISOR,
    qemuBinary: e.CAPSULE_QEMU,
    maxBodyBytes: e.CAPSULE_MAX_BODY_BYTES,
    maxSocketsPerToken: e.CAPSULE_MAX_SOCKETS_PER_TOKEN,
    portIdleTimeoutMs: e.CAPSULE_PORT_IDLE_TIMEOUT * 1000,
    metricsAddr: e.CAPSULE_METRICS_ADDR === undefined ? undefined : parseHostPort(e.CAPSULE_METRICS_ADDR),
    agentUsernet: e.CAPSULE_AGENT_USERNET === '1',
    jail: {
      mode: e.CAPSULE_JAIL,
      uid: e.CAPSULE_JAIL_UID,
      gid: e.CAPSULE_JAIL_GID ?? e.CAPSULE_JAIL_UID,
      uidBase: e.CAPSULE_JAIL_UID_BASE,
      uidCount: e.CAPSULE_JAIL_UID_COUNT,
      nofile: e.CAPSULE_JAIL_NOFILE,
      fsizeBytes: e.CAPSULE_JAIL_FSIZE_MIB * 1024 * 1024,
      memoryOverheadMiB: e.CAPSULE_JAIL_MEMORY_OVERHEAD_MIB,
      cgroupParent: e.CAPSULE_CGROUP_PARENT,
    },
  };
}

function parseHostPort(addr: string): { host: string; port: number } {
  const at = addr.lastIndexOf(':');
  const port = Number(addr.slice(at + 1));
  if (port > 65535) throw new Error(`invalid configuration: CAPSULE_METRICS_ADDR: port ${port} is out of range`);
  return { host: addr.slice(0, at).replace(/^\[(.*)\]$/, '$1'), port };
}

/** The host's capacity for guests: explicit sizes win, else a share of memory and an overcommit of CPUs. */
function admissionConfig(e: z.infer<typeof EnvSchema>): AdmissionConfig {
  const cpus = availableParallelism();
  const totalMiB = Math.floor(totalmem() / (1024 * 1024));
  const share = e.CAPSULE_HOST_MEMORY_SHARE;
  const overcommit = e.CAPSULE_VCPU_OVERCOMMIT ?? e.CAPSULE_CPU_OVERCOMMIT ?? 4;
  const overcommitName = e.CAPSULE_VCPU_OVERCOMMIT === undefined && e.CAPSULE_CPU_OVERCOMMIT !== undefined ? 'CAPSULE_CPU_OVERCOMMIT' : 'CAPSULE_VCPU_OVERCOMMIT';
  return {
    hostMemoryMiB: e.CAPSULE_HOST_MEMORY_MIB ?? Math.max(64, Math.floor(totalMiB * share)),
    memorySource: e.CAPSULE_HOST_MEMORY_MIB !== undefined ? 'CAPSULE_HOST_MEMORY_MIB' : `${share} × ${totalMiB} MiB host memory: CAPSULE_HOST_MEMORY_SHARE, or CAPSULE_HOST_MEMORY_MIB`,
    hostVcpus: e.CAPSULE_HOST_VCPUS ?? Math.max(1, Math.floor(cpus * overcommit)),
    vcpuSource: e.CAPSULE_HOST_VCPUS !== undefined ? 'CAPSULE_HOST_VCPUS' : `${cpus} host CPUs × ${overcommit}: ${overcommitName}, or CAPSULE_HOST_VCPUS`,
    maxVcpus: e.CAPSULE_MAX_VCPUS ?? Math.min(254, cpus),
  };
}
