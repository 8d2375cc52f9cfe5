// Parsers for option values; a bad value is a usage error (exit 2) through commander.
import { InvalidArgumentError } from 'commander';

export function positiveInt(value: string): number {
  if (!/^\d+$/.test(value) || Number(value) < 1 || !Number.isSafeInteger(Number(value))) throw new InvalidArgumentError('must be a positive integer');
  return Number(value);
}

export function nonNegativeInt(value: string): number {
  if (!/^\d+$/.test(value) || !Number.isSafeInteger(Number(value))) throw new InvalidArgumentError('must be a non-negative integer');
  return Number(value);
}

/** A size in MiB: `512`, `512M`, `512MiB`, `2G`, `2GiB`, `1T`. A bare number is MiB, as in the API. */
export function sizeMiB(value: string): number {
  const m = /^(\d+)\s*(m|mi|mib|mb|g|gi|gib|gb|t|ti|tib|tb)?$/i.exec(value.trim());
  if (!m) throw new InvalidArgumentError('must be a size in MiB, or with a unit: 512M, 2G, 1T');
  const n = Number(m[1]);
  const unit = (m[2] ?? 'm')[0]!.toLowerCase();
  const result = unit === 'g' ? n * 1024 : unit === 't' ? n * 1024 * 1024 : n;
  if (result < 1) throw new InvalidArgumentError('must be at least 1 MiB');
  return result;
}

export function oneOf<T extends string>(...allowed: T[]) {
  return (value: string): T => {
    if (!(allowed as string[]).includes(value)) throw new InvalidArgumentError(`must be one of ${allowed.join(', ')}`);
    return value as T;
  };
}

/** Collects a repeatable option's values. */
export function collect<T>(parse: (v: string) => T) {
  return (value: string, previous: T[] = []): T[] => [...previous, parse(value)];
}

/** `KEY=VALUE` (the value may contain `=`). */
export function keyValue(value: string): [string, string] {
  const i = value.indexOf('=');
  if (i < 1) throw new InvalidArgumentError('must be KEY=VALUE');
  return [value.slice(0, i), value.slice(i + 1)];
}

/** A duration in seconds: `90`, `90s`, `15m`, `2h`, `1d`. */
export function durationSec(value: string): number {
  const m = /^(\d+)\s*(s|m|h|d)?$/i.exec(value.trim());
  if (!m || Number(m[1]) < 1) throw new InvalidArgumentError('must be a duration: 90 (seconds), 90s, 15m, 2h, 1d');
  return Number(m[1]) * { s: 1, m: 60, h: 3600, d: 86400 }[(m[2] ?? 's').toLowerCase() as 's' | 'm' | 'h' | 'd'];
}

export interface DriveSpec {
  volume: string;
  readOnly?: boolean;
  cache?: 'none' | 'writeback' | 'unsafe';
  iops?: number;
}

/** `VOLUME[,ro][,cache=none|writeback|unsafe][,iops=N]` (a volume name or id). */
export function driveSpec(value: string): DriveSpec {
  const [volume, ...flags] = value.split(',');
  if (!volume) throw new InvalidArgumentError('must start with a volume name or id: VOLUME[,ro][,cache=MODE][,iops=N]');
  const spec: DriveSpec = { volume };
  for (const flag of flags) {
    const [k, v] = flag.split('=', 2);
    if (k === 'ro' && v === undefined) spec.readOnly = true;
    else if (k === 'rw' && v === undefined) spec.readOnly = false;
    else if (k === 'cache' && (v === 'none' || v === 'writeback' || v === 'unsafe')) spec.cache = v;
    else if (k === 'iops' && v !== undefined) spec.iops = positiveInt(v);
    else throw new InvalidArgumentError(`unknown drive flag ${JSON.stringify(flag)}: use ro, rw, cache=none|writeback|unsafe, iops=N`);
  }
  return spec;
}

/** An expiry: an ISO date-time, or a duration from now (`30d`, `12h`, `90m`). */
export function expiry(value: string, now = Date.now()): string {
  const m = /^(\d+)\s*([smhdw])$/.exec(value.trim());
  if (m) {
    const unit = { s: 1, m: 60, h: 3600, d: 86400, w: 604800 }[m[2] as 's' | 'm' | 'h' | 'd' | 'w'];
    return new Date(now + Number(m[1]) * unit * 1000).toISOString();
  }
  const t = Date.parse(value);
  if (Number.isNaN(t)) throw new InvalidArgumentError('must be a date-time (2027-01-31T00:00:00Z) or a duration (30d, 12h)');
  return new Date(t).toISOString();
}
