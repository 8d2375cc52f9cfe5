// Settings: what one source (the command line or the JSON file) says, before defaults, path
// resolution and the checks that span groups. The two sources are merged field by field, the
// command line winning; device lists are merged by id.
import type { IncomingConfig, BalloonConfig, DriveConfig, NetConfig, PmemConfig, RngConfig, VsockConfig } from './types.js';

export interface Chardev { id: string; path: string }
export interface Virtconsole { id: string; chardev: string }
export interface Iothread { id: string }

export interface Settings {
  machineType?: 'microvm';
  dumpGuestCore?: boolean;
  memShare?: boolean;
  cpus?: number;
  memSize?: number;
  memPath?: string;
  kernel?: string;
  cmdline?: string;
  initrd?: string;
  serialStdio?: boolean;
  /** -serial chardev:ID */
  serialChardev?: string;
  chardevs?: Chardev[];
  apiChannel?: string;
  daemonize?: boolean;
  pidfile?: string;
  log?: { enabled: boolean; file?: string };
  disableSeccomp?: boolean;
  seccompMode?: 'kill' | 'log';
  drives?: DriveConfig[];
  nets?: NetConfig[];
  vsock?: VsockConfig;
  rng?: RngConfig;
  balloon?: BalloonConfig;
  pmems?: PmemConfig[];
  virtconsoles?: Virtconsole[];
  iothreads?: Iothread[];
  hotplugSlots?: number;
  incoming?: IncomingConfig;
}

/** Appends to a device list of one source (duplicates are left for the id checks to name). */
export function append<T>(list: T[] | undefined, item: T): T[] {
  return [...(list ?? []), item];
}

/**
 * A command-line entry replaces the file's entry with the same id in place (so the order, and the
 * guest's device names, stay those of the file); other command-line entries follow.
 */
export function mergeById<T extends { id: string }>(file: T[], cli: T[]): T[] {
  const used = new Set<number>();
  const merged = file.map((f) => {
    const i = cli.findIndex((c, j) => c.id === f.id && !used.has(j));
    if (i < 0) return f;
    used.add(i);
    return cli[i] as T;
  });
  return [...merged, ...cli.filter((_, j) => !used.has(j))];
}

export function mergeSettings(file: Settings, cli: Settings): Settings {
  const out: Record<string, unknown> = { ...file };
  for (const [k, v] of Object.entries(cli)) {
    const f = out[k];
    out[k] = Array.isArray(v) && Array.isArray(f) ? mergeById(f as Array<{ id: string }>, v as Array<{ id: string }>) : v;
  }
  return out as Settings;
}
