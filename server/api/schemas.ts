// Request and response schemas: validation and the OpenAPI document come from the same source.
import { z } from '@hono/zod-openapi';
import { VM_STATES } from '../db/vms.js';

export const ErrorSchema = z.object({
  error: z.object({
    code: z.string().openapi({ example: 'invalid_request' }),
    message: z.string(),
    field: z.string().optional(),
  }),
}).openapi('Error');

export const VmSchema = z.object({
  id: z.string().uuid(),
  name: z.string(),
  state: z.enum(VM_STATES),
  image: z.string(),
  hypervisor: z.enum(['qemu', 'native']),
  vcpus: z.number().int(),
  memoryMiB: z.number().int(),
  cmdline: z.string().optional(),
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
}).strict().openapi('CreateVm');

export const ImageSchema = z.object({
  name: z.string(),
  description: z.string(),
  cmdline: z.string(),
  readyMarker: z.string().optional(),
  createdAt: z.string(),
  updatedAt: z.string(),
}).openapi('Image');

export const HealthSchema = z.object({
  status: z.literal('ok'),
  kvm: z.boolean(),
  hypervisors: z.array(z.enum(['qemu', 'native'])),
  defaultHypervisor: z.enum(['qemu', 'native']).optional(),
  details: z.record(z.string(), z.string()).optional(),
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

export const IdParams = z.object({ id: z.string().min(1).openapi({ param: { name: 'id', in: 'path' } }) });
export const ForceQuery = z.object({
  force: z.enum(['true', 'false', '1', '0']).optional().openapi({ param: { name: 'force', in: 'query' } }),
});
export const SinceQuery = z.object({
  since: z.string().regex(/^\d+$/, 'since must be a non-negative integer').optional(),
  access_token: z.string().optional(),
});
