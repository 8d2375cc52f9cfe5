// How E2B's nouns map onto capsule's: a sandbox is a VM, a template an image, envd's users
// and file entries the agent's. Pure functions, used by the REST and envd layers alike.
import { timestampFromDate } from '@bufbuild/protobuf/wkt';
import { Code, ConnectError } from '@connectrpc/connect';
import type { Vm } from '../db/vms.js';
import type { FileStat } from '../agent/client.js';
import { ApiError } from '../supervisor/errors.js';
import type { E2bSandbox } from '../db/e2b-sandboxes.js';
import { NO_END } from './lifetimes.js';
import { FileType } from './envd/proto.js';

/**
 * The envd version capsule answers as: the SDK turns features on by it. 0.5.7: the default user
 * is the server's (no Basic header when the caller names none), stdin can be closed, uploads
 * may be application/octet-stream. Below 0.6.2, so the SDK refuses file metadata itself.
 */
export const ENVD_VERSION = '0.5.7';
/** E2B's default template; capsule's image with the agent in it. */
export const DEFAULT_TEMPLATE = 'base';
export const SANDBOX_IMAGE = 'sandbox';
/** Commands and files are the guest's `user` unless the caller asks for another (as on E2B). */
export const DEFAULT_USER = 'user';
/** A sandbox's VM: E2B's base size is 2 vCPUs and 512 MB; one vCPU here (cheaper under TCG, enough for most agents' commands). */
export const SANDBOX_MEMORY_MIB = 512;
export const SANDBOX_VCPUS = 1;

export const imageOfTemplate = (templateId: string): string => (templateId === DEFAULT_TEMPLATE ? SANDBOX_IMAGE : templateId);

const USER_NAME = /^[a-z_][a-z0-9_-]{0,31}$/;

/** A guest user name as E2B passes it (envd's `username` query, or HTTP Basic "name:"); 400 for anything else. */
export function guestUser(name: string | undefined): string {
  if (name === undefined || name === '') return DEFAULT_USER;
  if (!USER_NAME.test(name)) throw new ApiError(400, 'invalid_request', `username: not a user name: ${JSON.stringify(name.slice(0, 40))}`);
  return name;
}

/** The user of a Connect call: envd takes it from `Authorization: Basic base64(user:)`. */
export function userOfAuthorization(header: string | null | undefined): string {
  if (!header) return DEFAULT_USER;
  const m = /^Basic\s+([A-Za-z0-9+/=]+)$/i.exec(header.trim());
  if (!m) throw new ApiError(400, 'invalid_request', 'Authorization: envd takes "Basic base64(user:)" to name the user');
  return guestUser(Buffer.from(m[1]!, 'base64').toString('utf8').split(':')[0]);
}

/** A VM as E2B's ListedSandbox / SandboxDetail. */
export function sandboxOf(vm: Vm, r: E2bSandbox | undefined): Record<string, unknown> {
  return {
    sandboxID: vm.id,
    templateID: r?.templateId ?? vm.image,
    alias: r?.templateId ?? vm.image,
    clientID: 'capsule',
    startedAt: vm.createdAt,
    // The VM's deadline; a VM made through capsule's own API without a TTL has no end.
    endAt: vm.expiresAt ?? NO_END,
    cpuCount: vm.vcpus,
    memoryMB: vm.memoryMiB,
    diskSizeMB: 0,
    envdVersion: ENVD_VERSION,
    metadata: vm.metadata ?? {},
    state: isPaused(vm) ? 'paused' : 'running',
  };
}

/** Paused in memory, or paused to disk (stopped, with its state to restore: docs/snapshots.md). */
export const isPaused = (vm: Vm): boolean => vm.state === 'paused' || (vm.state === 'stopped' && vm.restoreFrom !== undefined);

/** The VMs E2B can call sandboxes: running or paused ones. */
export const isSandboxState = (vm: Vm): boolean => vm.state === 'running' || isPaused(vm);

/** E2B's `metadata` list filter: a URL-encoded query string (`k=v&k2=v2`), every pair must match. */
export function metadataFilter(raw: string | undefined): Record<string, string> {
  if (!raw) return {};
  const out: Record<string, string> = {};
  for (const [k, v] of new URLSearchParams(raw)) out[decodeOnce(k)] = decodeOnce(v);
  return out;
}

/** The SDK encodes each key and value before it builds the query string; a stray `%` stays as it is. */
function decodeOnce(s: string): string {
  try { return decodeURIComponent(s); } catch { return s; }
}

export const matchesMetadata = (metadata: Record<string, string>, filter: Record<string, string>): boolean =>
  Object.entries(filter).every(([k, v]) => metadata[k] === v);

// --- files ---------------------------------------------------------------------------------------

const NAMES: Record<number, string> = { 0: 'root', 1000: 'user' };
const ownerName = (id: number): string => NAMES[id] ?? String(id);

/** `-rw-r--r--` as Go's FileMode.String() writes it (envd's `permissions`). */
function permissions(st: FileStat): string {
  const kind = st.type === 'dir' ? 'd' : st.type === 'symlink' ? 'L' : st.type === 'other' ? '?' : '-';
  const bits = 'rwxrwxrwx';
  let s = '';
  for (let i = 0; i < 9; i++) s += st.mode & (1 << (8 - i)) ? bits[i] : '-';
  return kind + s;
}

/** The agent's stat as envd's EntryInfo (a message init). */
export function entryOf(st: FileStat): Record<string, unknown> {
  return {
    name: st.name,
    type: st.type === 'dir' ? FileType.DIRECTORY : st.type === 'symlink' ? FileType.SYMLINK : st.type === 'file' ? FileType.FILE : FileType.UNSPECIFIED,
    path: st.path,
    size: BigInt(st.size),
    mode: st.mode & 0o7777,
    permissions: permissions(st),
    owner: ownerName(st.uid),
    group: ownerName(st.gid),
    modifiedTime: timestampFromDate(new Date(st.mtime)),
    ...(st.target !== undefined ? { symlinkTarget: st.target } : {}),
  };
}

/** envd's /files answer for a written file. */
export const writtenEntry = (path: string): { name: string; type: 'file'; path: string } => ({ name: path.split('/').pop() ?? path, type: 'file', path });

// --- errors --------------------------------------------------------------------------------------

/** An error as E2B's API sends it: {"code": <HTTP status>, "message"}. */
export const e2bError = (status: number, message: string) => ({ code: status, message });

const CONNECT_CODES: Record<number, Code> = {
  400: Code.InvalidArgument, 401: Code.Unauthenticated, 403: Code.PermissionDenied, 404: Code.NotFound,
  409: Code.FailedPrecondition, 413: Code.ResourceExhausted, 429: Code.ResourceExhausted, 502: Code.Unavailable,
  503: Code.Unavailable, 504: Code.DeadlineExceeded, 507: Code.ResourceExhausted,
};

/** Any failure of a capsule call as a Connect error (envd's services). */
export function connectErrorOf(e: unknown): ConnectError {
  if (e instanceof ConnectError) return e;
  if (e instanceof ApiError) {
    // The agent's "exists" is envd's AlreadyExists (MakeDir's "it was there").
    const code = e.code === 'exists' ? Code.AlreadyExists : CONNECT_CODES[e.status] ?? Code.Internal;
    return new ConnectError(e.message, code);
  }
  return new ConnectError((e as Error)?.message ?? 'internal error', Code.Internal);
}
