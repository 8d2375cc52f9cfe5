// StratoVirt-style command line + -config FILE.json -> validated VmConfig.
// The command line overrides the JSON file (device lists: entry by entry, by id). Every option
// group (groups/*.ts) declares its command-line options and JSON keys once; the parser, the JSON
// schema and USAGE are assembled from GROUPS. Errors name the option and its allowed values.
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { ConfigError } from './options.js';
import { CONFIG_OPTION, parseArgs } from './cli.js';
import { parseJsonConfig } from './json.js';
import { mergeSettings, type Settings } from './settings.js';
import { checkDevices } from './devices.js';
import type { Group, OptionSpec } from './group.js';
import type { VmConfig } from './types.js';
import { machineGroup } from './groups/machine.js';
import { cpuGroup } from './groups/cpu.js';
import { DEFAULT_MEM, memoryGroups } from './groups/memory.js';
import { bootGroup, DEFAULT_CMDLINE } from './groups/boot.js';
import { serialGroup } from './groups/serial.js';
import { assignChardevs, chardevGroup } from './groups/chardev.js';
import { consoleGroup } from './groups/console.js';
import { qmpGroup } from './groups/qmp.js';
import { daemonGroup } from './groups/daemon.js';
import { logGroup } from './groups/log.js';
import { seccompGroup } from './groups/seccomp.js';
import { incomingGroup } from './groups/incoming.js';
import { iothreadGroup } from './groups/iothread.js';
import { driveGroup } from './groups/drive.js';
import { netdevGroup } from './groups/netdev.js';
import { vsockGroup } from './groups/vsock.js';
import { pmemGroup } from './groups/pmem.js';
import { rngGroup } from './groups/rng.js';
import { balloonGroup } from './groups/balloon.js';
import { hotplugGroup } from './groups/hotplug.js';

export { ConfigError } from './options.js';
export type * from './types.js';
export { DEFAULT_CMDLINE } from './groups/boot.js';
export { MIN_MEM, MAX_MEM, DEFAULT_MEM, parseMemSize } from './groups/memory.js';
export { MIN_CPUS, MAX_CPUS } from './groups/cpu.js';
export { MAX_VIRTIO_DEVICES } from './groups/hotplug.js';

/** Every option group, in usage order. */
export const GROUPS: readonly Group[] = [
  machineGroup, cpuGroup, ...memoryGroups, bootGroup, serialGroup, chardevGroup, consoleGroup, qmpGroup, daemonGroup,
  logGroup, seccompGroup, iothreadGroup, driveGroup, netdevGroup, vsockGroup, pmemGroup, rngGroup, balloonGroup, hotplugGroup, incomingGroup,
];

type ReadFile = (p: string) => string;

export function buildConfig(argv: string[], readFile: ReadFile = (p) => readFileSync(p, 'utf8')): VmConfig {
  const parsed = parseArgs(argv, GROUPS);
  const file = parsed.configFile === undefined ? {} : readConfigFile(parsed.configFile, readFile);
  return toVmConfig(mergeSettings(file, parsed.cli));
}

function readConfigFile(path: string, readFile: ReadFile): Settings {
  let text: string;
  try {
    text = readFile(path);
  } catch (e) {
    throw new ConfigError(`-config: cannot read ${path}: ${(e as Error).message}`);
  }
  return parseJsonConfig(text, path, GROUPS);
}

/** Defaults, absolute paths, and the checks that span groups. */
function toVmConfig(m: Settings): VmConfig {
  if (!m.kernel) throw new ConfigError('-kernel: a kernel image is required (-kernel /path/to/vmlinuz or boot-source.kernel_image_path)');
  const daemonize = m.daemonize ?? false;
  if (daemonize && m.serialStdio) throw new ConfigError('-serial stdio cannot be used with -daemonize');
  if (daemonize && m.log?.enabled && !m.log.file) throw new ConfigError('-D without a log file cannot be used with -daemonize (give -D FILE)');
  // A restored guest waits paused for QMP `cont` (and `-incoming defer` for migrate-incoming):
  // with no QMP socket nothing could ever run it.
  if (m.incoming && !m.apiChannel) throw new ConfigError('-incoming needs -api-channel unix:PATH: a restored VM stays paused until QMP sends cont');
  const { serial, consoles } = assignChardevs(m);
  const hotplugSlots = checkDevices(m);
  const abs = (p: string | undefined): string | undefined => (p === undefined ? undefined : resolve(p));
  return {
    machine: { type: 'microvm', dumpGuestCore: m.dumpGuestCore ?? true, memShare: m.memShare ?? false },
    cpus: m.cpus ?? 1,
    memSize: m.memSize ?? DEFAULT_MEM,
    memPath: m.memPath,
    kernel: resolve(m.kernel),
    cmdline: m.cmdline ?? DEFAULT_CMDLINE,
    initrd: abs(m.initrd),
    serialStdio: m.serialStdio ?? false,
    console: serial ? { id: serial.id, path: resolve(serial.path) } : undefined,
    apiChannel: abs(m.apiChannel),
    daemonize,
    pidfile: abs(m.pidfile),
    log: m.log ? { enabled: m.log.enabled, file: abs(m.log.file) } : { enabled: false },
    disableSeccomp: m.disableSeccomp ?? false,
    seccompMode: m.seccompMode ?? 'kill',
    drives: (m.drives ?? []).map((d) => ({ ...d, file: resolve(d.file) })),
    nets: m.nets ?? [],
    vsock: m.vsock ? { ...m.vsock, udsPath: resolve(m.vsock.udsPath) } : undefined,
    rng: m.rng ? { ...m.rng, file: resolve(m.rng.file) } : undefined,
    balloon: m.balloon,
    pmems: (m.pmems ?? []).map((p) => ({ ...p, file: resolve(p.file) })),
    consoles: consoles.map((c) => ({ ...c, path: resolve(c.path) })),
    iothreads: (m.iothreads ?? []).map((t) => t.id),
    hotplugSlots,
    incoming: m.incoming?.mode === 'file' ? { mode: 'file', dir: resolve(m.incoming.dir) } : m.incoming,
  };
}

// ---- usage -------------------------------------------------------------------------------------

const HELP_COLUMN = 30;

function usageLines(o: OptionSpec): string {
  const head = `  ${o.driver === undefined ? o.name : `${o.name} ${o.driver},`}${o.driver === undefined && o.syntax ? ' ' : ''}${o.syntax}`;
  const [first = '', ...more] = o.help.split('\n');
  const indent = ' '.repeat(HELP_COLUMN);
  const lines = head.length < HELP_COLUMN - 1 ? [head.padEnd(HELP_COLUMN) + first] : [head, indent + first];
  return [...lines, ...more.map((l) => indent + l)].join('\n');
}

export const USAGE = `usage: capsule-vmm -kernel VMLINUZ [options]\n${[...GROUPS.flatMap((g) => g.options), CONFIG_OPTION].map(usageLines).join('\n')}\n`;
