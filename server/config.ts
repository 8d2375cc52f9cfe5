// Server configuration from the environment, validated once at start.
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
  /** Outbound events per subscriber: leak rate per second and burst. */
  CAPSULE_EVENT_RATE: intFromEnv(1000, 1, 10_000_000),
  CAPSULE_EVENT_BURST: intFromEnv(1000, 1, 10_000_000),
  /** Events kept per VM for replay (?since=). */
  CAPSULE_EVENT_HISTORY: intFromEnv(1000, 10, 1_000_000),
  /** Seconds a clean stop waits for the guest before killing the VMM. */
  CAPSULE_STOP_TIMEOUT: z.coerce.number().min(0).max(3600).default(30),
  CAPSULE_DEFAULT_HYPERVISOR: z.enum(['qemu', 'native']).optional(),
  CAPSULE_QEMU: z.string().default('qemu-system-x86_64'),
  CAPSULE_MAX_BODY_BYTES: intFromEnv(64 * 1024, 128, 64 * 1024 * 1024),
});

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
  eventRate: { perSecond: number; burst: number };
  eventHistory: number;
  stopTimeoutMs: number;
  defaultHypervisor: 'qemu' | 'native' | undefined;
  qemuBinary: string;
  maxBodyBytes: number;
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
    eventRate: { perSecond: e.CAPSULE_EVENT_RATE, burst: e.CAPSULE_EVENT_BURST },
    eventHistory: e.CAPSULE_EVENT_HISTORY,
    stopTimeoutMs: e.CAPSULE_STOP_TIMEOUT * 1000,
    defaultHypervisor: e.CAPSULE_DEFAULT_HYPERVISOR,
    qemuBinary: e.CAPSULE_QEMU,
    maxBodyBytes: e.CAPSULE_MAX_BODY_BYTES,
  };
}
