// The one save/restore interface every device implements for snapshots (the device manager
// collects and applies them; vmm/snapshot/ stores the bytes as DEVICE sections). A device's state
// is JSON checked with a zod schema on the way back in: the bytes come from a file anyone could
// have edited, so a restore validates them like any hostile input and names what is wrong.
import * as z from 'zod';

export interface Snapshottable {
  /** The device model as the manifest names it (serial, virtio-blk, ...): a restore needs the same. */
  readonly snapshotKind: string;
  /** Why this device cannot be snapshotted right now, or null (e.g. its queues live on another thread). */
  snapshotBlocker?(): string | null;
  /** The device's state, called with the vCPUs parked and no device work pending. */
  saveState(): Buffer;
  /** Applies saveState()'s bytes to a freshly built device of the same kind; throws DeviceStateError. */
  restoreState(state: Buffer): void;
}

export class DeviceStateError extends Error {
  constructor(msg: string) {
    super(msg);
    this.name = 'DeviceStateError';
  }
}

export function isSnapshottable(d: unknown): d is Snapshottable {
  return typeof d === 'object' && d !== null && typeof (d as Snapshottable).saveState === 'function' && typeof (d as Snapshottable).restoreState === 'function';
}

/** Encodes a state object as the section's bytes. */
export function encodeState(state: unknown): Buffer {
  return Buffer.from(JSON.stringify(state));
}

/** Decodes and checks a state section; `what` names the device in errors. */
export function decodeState<S extends z.ZodType>(bytes: Buffer, schema: S, what: string): z.output<S> {
  let raw: unknown;
  try {
    raw = JSON.parse(bytes.toString('utf8'));
  } catch (e) {
    throw new DeviceStateError(`${what}: state is not JSON: ${(e as Error).message}`);
  }
  const r = schema.safeParse(raw);
  if (!r.success) {
    const first = r.error.issues[0];
    const at = first?.path.length ? first.path.join('.') : '(top)';
    throw new DeviceStateError(`${what}: state field ${at}: ${first?.message ?? 'invalid'}`);
  }
  return r.data;
}

/** Schema pieces shared by the devices' state schemas. */
export const u8 = z.number().int().min(0).max(0xff);
export const u16 = z.number().int().min(0).max(0xffff);
export const u32 = z.number().int().min(0).max(0xffff_ffff);
/** a guest-physical address (validated against guest RAM by the user) */
export const gpa = z.number().int().min(0).max(Number.MAX_SAFE_INTEGER);
/** a u64 as decimal text (feature words) */
export const u64Text = z.string().regex(/^\d{1,20}$/).transform((s) => BigInt(s)).refine((v) => v < 1n << 64n, 'above 2^64');
