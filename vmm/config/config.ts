// StratoVirt-style command line + -config FILE.json -> validated VmConfig.
// The command line overrides the JSON file. Errors name the option and its allowed values.
import { readFileSync } from 'node:fs';
import { isAbsolute, resolve } from 'node:path';
import { z } from 'zod';

export const MIN_MEM = 256 * 1024 * 1024;
export const MAX_MEM = 512 * 1024 * 1024 * 1024;
export const DEFAULT_MEM = MIN_MEM;
export const MIN_CPUS = 1;
export const MAX_CPUS = 254;
export const DEFAULT_CMDLINE = 'console=ttyS0 reboot=k panic=-1';

export class ConfigError extends Error {
  constructor(msg: string) {
    super(msg);
    this.name = 'ConfigError';
  }
}

export interface VmConfig {
  machine: { type: 'microvm'; dumpGuestCore: boolean; memShare: boolean };
  cpus: number;
  memSize: number;
  memPath?: string | undefined;
  kernel: string;
  cmdline: string;
  initrd?: string | undefined;
  serialStdio: boolean;
  /** serial console on a Unix socket the VMM listens on */
  console?: { id: string; path: string } | undefined;
  /** QMP socket path */
  apiChannel?: string | undefined;
  daemonize: boolean;
  pidfile?: string | undefined;
  /** -D: enabled (to stderr, or to file when set) */
  log: { enabled: boolean; file?: string | undefined };
  disableSeccomp: boolean;
  /** what the filter does with a syscall outside its list: kill the process (default) or only log it */
  seccompMode: 'kill' | 'log';
}

/** Partial config as read from either source, merged field by field. */
type Partial = {
  machineType?: string;
  dumpGuestCore?: boolean;
  memShare?: boolean;
  cpus?: number;
  memSize?: number;
  memPath?: string;
  kernel?: string;
  cmdline?: string;
  initrd?: string;
  serialStdio?: boolean;
  console?: { id: string; path: string };
  apiChannel?: string;
  daemonize?: boolean;
  pidfile?: string;
  log?: { enabled: boolean; file?: string };
  disableSeccomp?: boolean;
  seccompMode?: 'kill' | 'log';
};

// ---- value parsers -------------------------------------------------------------------------

export function parseMemSize(v: string, opt = '-m'): number {
  const m = /^(\d+)([MmGg]?)$/.exec(v.trim());
  if (!m) throw new ConfigError(`${opt}: invalid memory size '${v}' (a number of bytes, or N followed by M or G; range 256M-512G)`);
  const n = Number(m[1]);
  const unit = (m[2] ?? '').toUpperCase();
  const bytes = unit === 'G' ? n * 1024 ** 3 : unit === 'M' ? n * 1024 ** 2 : n;
  checkMem(bytes, opt);
  return bytes;
}

function checkMem(bytes: number, opt: string): void {
  if (!Number.isSafeInteger(bytes) || bytes < MIN_MEM || bytes > MAX_MEM) {
    throw new ConfigError(`${opt}: memory size ${bytes} bytes is out of range (256M-512G, i.e. ${MIN_MEM}-${MAX_MEM} bytes)`);
  }
  if (bytes % 4096 !== 0) throw new ConfigError(`${opt}: memory size ${bytes} must be a multiple of 4096 bytes (range 256M-512G)`);
}

function checkCpus(n: number, opt: string): number {
  if (!Number.isInteger(n) || n < MIN_CPUS || n > MAX_CPUS) {
    throw new ConfigError(`${opt}: cpus must be an integer in range ${MIN_CPUS}-${MAX_CPUS} (got ${n})`);
  }
  return n;
}

function onOff(v: string, opt: string, key: string): boolean {
  if (v === 'on' || v === 'true') return true;
  if (v === 'off' || v === 'false') return false;
  throw new ConfigError(`${opt}: ${key} must be 'on' or 'off' (got '${v}')`);
}

/** "a=1,b=2" or "value,b=2" with `first` naming the implicit key. */
function kv(v: string, opt: string, first: string | null, allowed: string[]): Map<string, string> {
  const out = new Map<string, string>();
  v.split(',').forEach((part, i) => {
    if (part === '') throw new ConfigError(`${opt}: empty item in '${v}'`);
    const eq = part.indexOf('=');
    let k: string;
    let val: string;
    if (eq < 0) {
      if (i !== 0 || first === null) throw new ConfigError(`${opt}: '${part}' is not key=value (allowed keys: ${allowed.join(', ')})`);
      k = first;
      val = part;
    } else {
      k = part.slice(0, eq);
      val = part.slice(eq + 1);
    }
    if (!allowed.includes(k)) throw new ConfigError(`${opt}: unknown key '${k}' (allowed keys: ${allowed.join(', ')})`);
    if (out.has(k)) throw new ConfigError(`${opt}: '${k}' given twice`);
    out.set(k, val);
  });
  return out;
}

function machineType(t: string, opt: string): string {
  const norm = t.toLowerCase();
  if (norm !== 'microvm') throw new ConfigError(`${opt}: machine type '${t}' is not supported (allowed: microvm)`);
  return 'microvm';
}

// ---- command line -------------------------------------------------------------------------

const FLAGS = new Set(['-daemonize', '-disable-seccomp']);
const WITH_VALUE = new Set([
  '-machine', '-smp', '-m', '-mem-path', '-kernel', '-append', '-initrd', '-serial', '-chardev', '-api-channel',
  '-pidfile', '-config', '-seccomp',
]);
export const OPTIONS = [...WITH_VALUE, ...FLAGS, '-D'].sort();

export interface ParsedArgs {
  cli: Partial;
  configFile?: string;
  help: boolean;
  version: boolean;
}

export function parseArgs(argv: string[]): ParsedArgs {
  const cli: Partial = {};
  let configFile: string | undefined;
  let help = false;
  let version = false;
  for (let i = 0; i < argv.length; i++) {
    const raw = argv[i] as string;
    const opt = raw.startsWith('--') ? raw.slice(1) : raw;
    if (opt === '-h' || opt === '-help') {
      help = true;
      continue;
    }
    if (opt === '-version' || opt === '-V') {
      version = true;
      continue;
    }
    if (opt === '-D') {
      const next = argv[i + 1];
      if (next !== undefined && !next.startsWith('-')) {
        cli.log = { enabled: true, file: next };
        i++;
      } else {
        cli.log = { enabled: true };
      }
      continue;
    }
    if (FLAGS.has(opt)) {
      if (opt === '-daemonize') cli.daemonize = true;
      else cli.disableSeccomp = true;
      continue;
    }
    if (!WITH_VALUE.has(opt)) {
      throw new ConfigError(`unknown option '${raw}' (known options: ${OPTIONS.join(' ')})`);
    }
    const v = argv[i + 1];
    if (v === undefined) throw new ConfigError(`${opt}: missing value`);
    i++;
    switch (opt) {
      case '-machine': {
        const m = kv(v, opt, 'type', ['type', 'dump-guest-core', 'mem-share']);
        if (m.has('type')) cli.machineType = machineType(m.get('type') as string, opt);
        if (m.has('dump-guest-core')) cli.dumpGuestCore = onOff(m.get('dump-guest-core') as string, opt, 'dump-guest-core');
        if (m.has('mem-share')) cli.memShare = onOff(m.get('mem-share') as string, opt, 'mem-share');
        break;
      }
      case '-smp': {
        const m = kv(v, opt, 'cpus', ['cpus']);
        const s = m.get('cpus') ?? '';
        if (!/^\d+$/.test(s)) throw new ConfigError(`-smp: cpus must be an integer in range ${MIN_CPUS}-${MAX_CPUS} (got '${s}')`);
        cli.cpus = checkCpus(Number(s), opt);
        break;
      }
      case '-m': {
        const m = kv(v, opt, 'size', ['size']);
        cli.memSize = parseMemSize(m.get('size') ?? '', opt);
        break;
      }
      case '-mem-path':
        if (!isAbsolute(v)) throw new ConfigError(`-mem-path: '${v}' must be an absolute path (a file or a directory)`);
        cli.memPath = v;
        break;
      case '-seccomp':
        if (v !== 'kill' && v !== 'log') throw new ConfigError(`-seccomp: expected kill or log (got '${v}')`);
        cli.seccompMode = v;
        break;
      case '-kernel':
        cli.kernel = v;
        break;
      case '-append':
        cli.cmdline = v;
        break;
      case '-initrd':
        cli.initrd = v;
        break;
      case '-serial':
        if (v !== 'stdio') throw new ConfigError(`-serial: only 'stdio' is supported (got '${v}')`);
        cli.serialStdio = true;
        break;
      case '-chardev': {
        const m = kv(v, opt, null, ['id', 'path']);
        const id = m.get('id');
        const path = m.get('path');
        if (!id || !path) throw new ConfigError(`-chardev: needs id=ID,path=SOCKET (got '${v}')`);
        cli.console = { id, path };
        break;
      }
      case '-api-channel':
        if (!v.startsWith('unix:') || v.length <= 5) throw new ConfigError(`-api-channel: expected unix:PATH (got '${v}')`);
        cli.apiChannel = v.slice(5);
        break;
      case '-pidfile':
        cli.pidfile = v;
        break;
      case '-config':
        configFile = v;
        break;
    }
  }
  return configFile === undefined ? { cli, help, version } : { cli, configFile, help, version };
}

// ---- JSON file ----------------------------------------------------------------------------

const jsonSchema = z.object({
  'machine-config': z.object({
    type: z.string().optional(),
    dump_guest_core: z.boolean().optional(),
    'dump-guest-core': z.boolean().optional(),
    mem_share: z.boolean().optional(),
    'mem-share': z.boolean().optional(),
    vcpu_count: z.number().optional(),
    mem_size: z.number().optional(),
    mem_path: z.string().optional(),
  }).strict().optional(),
  'boot-source': z.object({
    kernel_image_path: z.string().optional(),
    boot_args: z.string().optional(),
    initrd_fs_path: z.string().optional(),
  }).strict().optional(),
  serial: z.object({ stdio: z.boolean() }).strict().optional(),
  chardev: z.object({ id: z.string(), path: z.string() }).strict().optional(),
  console: z.array(z.object({ console_id: z.string(), socket_path: z.string() }).strict()).max(1).optional(),
  'api-channel': z.string().optional(),
  daemonize: z.boolean().optional(),
  pidfile: z.string().optional(),
  log: z.object({ enabled: z.boolean(), file: z.string().optional() }).strict().optional(),
  'disable-seccomp': z.boolean().optional(),
  seccomp: z.enum(['kill', 'log']).optional(),
}).strict();

export function parseJsonConfig(text: string, file = 'config'): Partial {
  let data: unknown;
  try {
    data = JSON.parse(text);
  } catch (e) {
    throw new ConfigError(`-config ${file}: invalid JSON: ${(e as Error).message}`);
  }
  const r = jsonSchema.safeParse(data);
  if (!r.success) {
    const iss = r.error.issues[0];
    const where = iss ? iss.path.join('.') || '(top level)' : '?';
    throw new ConfigError(`-config ${file}: ${where}: ${iss?.message ?? 'invalid'}`);
  }
  const j = r.data;
  const p: Partial = {};
  const mc = j['machine-config'];
  if (mc) {
    if (mc.type !== undefined) p.machineType = machineType(mc.type, `-config ${file}: machine-config.type`);
    const dgc = mc.dump_guest_core ?? mc['dump-guest-core'];
    if (dgc !== undefined) p.dumpGuestCore = dgc;
    const ms = mc.mem_share ?? mc['mem-share'];
    if (ms !== undefined) p.memShare = ms;
    if (mc.vcpu_count !== undefined) p.cpus = checkCpus(mc.vcpu_count, `-config ${file}: machine-config.vcpu_count`);
    if (mc.mem_size !== undefined) {
      checkMem(mc.mem_size, `-config ${file}: machine-config.mem_size`);
      p.memSize = mc.mem_size;
    }
    if (mc.mem_path !== undefined) {
      if (!isAbsolute(mc.mem_path)) throw new ConfigError(`-config ${file}: machine-config.mem_path must be an absolute path`);
      p.memPath = mc.mem_path;
    }
  }
  const bs = j['boot-source'];
  if (bs) {
    if (bs.kernel_image_path !== undefined) p.kernel = bs.kernel_image_path;
    if (bs.boot_args !== undefined) p.cmdline = bs.boot_args;
    if (bs.initrd_fs_path !== undefined) p.initrd = bs.initrd_fs_path;
  }
  if (j.serial) p.serialStdio = j.serial.stdio;
  if (j.chardev) p.console = j.chardev;
  const c0 = j.console?.[0];
  if (c0) p.console = { id: c0.console_id, path: c0.socket_path };
  if (j['api-channel'] !== undefined) {
    const a = j['api-channel'];
    if (!a.startsWith('unix:') || a.length <= 5) throw new ConfigError(`-config ${file}: api-channel: expected unix:PATH`);
    p.apiChannel = a.slice(5);
  }
  if (j.daemonize !== undefined) p.daemonize = j.daemonize;
  if (j.pidfile !== undefined) p.pidfile = j.pidfile;
  if (j.log) p.log = j.log.file === undefined ? { enabled: j.log.enabled } : { enabled: j.log.enabled, file: j.log.file };
  if (j['disable-seccomp'] !== undefined) p.disableSeccomp = j['disable-seccomp'];
  if (j.seccomp !== undefined) p.seccompMode = j.seccomp;
  return p;
}

// ---- merge + final validation --------------------------------------------------------------

export function buildConfig(argv: string[], readFile: (p: string) => string = (p) => readFileSync(p, 'utf8')): VmConfig {
  const parsed = parseArgs(argv);
  let fileCfg: Partial = {};
  if (parsed.configFile !== undefined) {
    let text: string;
    try {
      text = readFile(parsed.configFile);
    } catch (e) {
      throw new ConfigError(`-config: cannot read ${parsed.configFile}: ${(e as Error).message}`);
    }
    fileCfg = parseJsonConfig(text, parsed.configFile);
  }
  const m: Partial = { ...fileCfg, ...parsed.cli };
  if (!m.kernel) throw new ConfigError('-kernel: a kernel image is required (-kernel /path/to/vmlinuz or boot-source.kernel_image_path)');
  const daemonize = m.daemonize ?? false;
  if (daemonize && m.serialStdio) throw new ConfigError('-serial stdio cannot be used with -daemonize');
  if (daemonize && m.log?.enabled && !m.log.file) throw new ConfigError('-D without a log file cannot be used with -daemonize (give -D FILE)');
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
    console: m.console ? { id: m.console.id, path: resolve(m.console.path) } : undefined,
    apiChannel: abs(m.apiChannel),
    daemonize,
    pidfile: abs(m.pidfile),
    log: m.log ? { enabled: m.log.enabled, file: abs(m.log.file) } : { enabled: false },
    disableSeccomp: m.disableSeccomp ?? false,
    seccompMode: m.seccompMode ?? 'kill',
  };
}

export const USAGE = `usage: capsule-vmm -kernel VMLINUZ [options]
  -machine [type=]microvm[,dump-guest-core=on|off][,mem-share=on|off]
  -smp [cpus=]N               vCPUs, 1-254 (default 1)
  -m [size=]N[M|G]            memory, 256M-512G (default 256M; a plain number is bytes)
  -mem-path FILE|DIR          back guest memory with a file (absolute path)
  -kernel FILE                bzImage (required)
  -append CMDLINE             kernel command line (default "${DEFAULT_CMDLINE}")
  -initrd FILE                initial ramdisk
  -serial stdio               serial console on stdin/stdout
  -chardev id=ID,path=SOCKET  serial console on a Unix socket the VMM listens on
  -api-channel unix:PATH      QMP socket
  -daemonize                  run in the background once QMP listens
  -pidfile FILE               write the VMM's pid (removed on exit)
  -D [LOGFILE]                log to LOGFILE (or stderr); level from CAPSULE_LOG_LEVEL
  -disable-seccomp            do not install the seccomp filter after init
  -seccomp kill|log           syscalls outside the filter's list kill the VMM (default) or are
                              only logged by the kernel (audit type=1326, for debugging)
  -config FILE.json           StratoVirt-style JSON; the command line overrides it
`;
