// capsule-vmm entry point: parse the configuration, daemonize if asked, build the VM, serve QMP,
// and exit cleanly (pidfile and sockets removed) on guest power-off, QMP quit or SIGTERM.
import { spawn } from 'node:child_process';
import { closeSync, openSync, unlinkSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { buildConfig, ConfigError, USAGE, type VmConfig } from './config/config.js';
import { KernelImageError } from './boot/bzimage.js';
import { pathBootFile, readKernelHeader, type BootFile } from './boot/loader.js';
import { ConsoleHub } from './console.js';
import { configureLog, logger, parseLevel } from './log.js';
import { Machine, type ShutdownInfo } from './machine.js';
import { BALLOON_ID, buildDevices, startDevices } from './devices/build.js';
import { IoThread } from './io/iothread.js';
import type { VirtioBalloon } from './devices/virtio/balloon/device.js';
import { register as registerBalloonCommands } from './qmp/commands/balloon.js';
import { register as registerHotplugCommands } from './qmp/commands/hotplug.js';
import { register as registerDeviceQueries } from './qmp/commands/devices.js';
import { GuestMemory } from './memory/guest-memory.js';
import { QmpServer } from './qmp/server.js';
import { register as registerLifecycleCommands } from './qmp/commands/lifecycle.js';
import { register as registerFdCommands } from './qmp/commands/fds.js';
import { register as registerInfoCommands } from './qmp/commands/info.js';
import { filesFor, register as registerSnapshotCommands } from './qmp/commands/snapshot.js';
import { loadSnapshot, snapshotLayout, STATE_FILE } from './snapshot/snapshot.js';
import { closeFd } from './kvm/sys.js';
import { allowHugePagesForGuestOnly, startWithoutHugePages } from './memory/huge-pages.js';
import { FORBIDDEN_SYSCALL_ENV, install as installSeccomp, prepare as prepareSeccomp, scheduleForbiddenSyscall } from './sandbox.js';

const DAEMON_ENV = 'CAPSULE_VMM_DAEMON_CHILD';
const log = logger('main');

function fail(msg: string, code = 1): never {
  process.stderr.write(`capsule-vmm: error: ${msg}\n`);
  process.exit(code);
}

interface BootFiles {
  kernel: BootFile;
  initrd?: BootFile | undefined;
}

/** Check the kernel (its header parses) and the initrd (it opens) before anything is started; they are read at boot. */
function readBootFiles(cfg: VmConfig): BootFiles {
  const kernel = pathBootFile(cfg.kernel, 'kernel');
  readKernelHeader(kernel);
  const initrd = cfg.initrd ? pathBootFile(cfg.initrd, 'initrd') : undefined;
  return { kernel, initrd };
}

/** Parent side of -daemonize: start a detached copy, return once it reports ready. */
async function daemonize(argv: string[], cfg: VmConfig): Promise<never> {
  const logFd = cfg.log.file ? openSync(cfg.log.file, 'a', 0o640) : 'ignore';
  const child = spawn(process.execPath, [...process.execArgv, fileURLToPath(import.meta.url), ...argv], {
    detached: true,
    stdio: ['ignore', logFd, logFd, 'pipe'],
    env: { ...process.env, [DAEMON_ENV]: '1' },
  });
  if (typeof logFd === 'number') closeSync(logFd);
  const pipe = child.stdio[3] as NodeJS.ReadableStream;
  let msg = '';
  pipe.setEncoding('utf8');
  const result = await new Promise<string>((resolve) => {
    pipe.on('data', (d: string) => {
      msg += d;
      if (msg.includes('\n')) resolve(msg.trim());
    });
    child.once('exit', (code, sig) => resolve(msg.trim() || `daemon exited early (${sig ?? `status ${code}`})`));
    child.once('error', (e) => resolve(`cannot start daemon: ${e.message}`));
  });
  if (result === 'ready') {
    child.unref();
    (pipe as unknown as { destroy(): void }).destroy();
    process.exit(0);
  }
  fail(result.replace(/^error: /, ''));
}

/**
 * Machine's onVcpuThreads: at the first build, every thread of the VMM exists and no guest code has
 * run; huge pages for guest RAM as the host's mode says, none for the rest. Once only: a guest
 * reset's rebuild runs under the seccomp filter, which does not let /proc/self/maps be opened.
 */
function guestOnlyHugePages(memory: GuestMemory): () => void {
  let done = false;
  return () => {
    if (done) return;
    done = true;
    const marked = allowHugePagesForGuestOnly([{ start: memory.hostAddr, end: memory.hostAddr + BigInt(memory.totalSize) }]);
    if (typeof marked === 'number') log.debug(`THP: ${marked} own mappings kept off huge pages; guest RAM follows the host's mode`);
    else log.warn(`THP: own mappings not marked (${marked}); guest RAM follows the host's mode`);
  };
}

async function run(): Promise<void> {
  // first thing, before a daemon is spawned: no THP for the VMM's own memory (memory/huge-pages.ts)
  const thpNotOff = startWithoutHugePages();
  const argv = process.argv.slice(2);
  let cfg: VmConfig;
  try {
    if (argv.includes('-h') || argv.includes('-help') || argv.includes('--help')) {
      process.stdout.write(USAGE);
      process.exit(0);
    }
    cfg = buildConfig(argv);
  } catch (e) {
    if (e instanceof ConfigError) fail(e.message, 2);
    throw e;
  }
  const isDaemonChild = process.env[DAEMON_ENV] === '1';
  const ready = (m: string): void => {
    if (!isDaemonChild) return;
    try {
      writeFileSync(3 as unknown as string, m + '\n');
      closeFd(3);
    } catch { /* parent gone */ }
  };
  const die: (m: string, code?: number) => never = (m, code = 1) => {
    ready(`error: ${m}`);
    fail(m, code);
  };

  let files: BootFiles;
  try {
    files = readBootFiles(cfg);
  } catch (e) {
    if (e instanceof KernelImageError) die(e.message);
    throw e;
  }
  if (cfg.daemonize && !isDaemonChild) await daemonize(argv, cfg);

  configureLog({ level: parseLevel(process.env.CAPSULE_LOG_LEVEL), file: cfg.log.file ?? null, stderr: cfg.log.enabled && !cfg.log.file });
  log.info(`starting: ${cfg.cpus} vCPU(s), ${cfg.memSize} bytes, kernel ${cfg.kernel}`);
  if (thpNotOff) log.warn(`transparent huge pages stay on for the VMM's own memory: ${thpNotOff}`);

  const cleanups: Array<() => void | Promise<void>> = [];
  const cleanup = async (): Promise<void> => {
    for (const c of cleanups.reverse()) {
      try { await c(); } catch { /* keep going */ }
    }
  };

  let memory: GuestMemory;
  try {
    memory = GuestMemory.create({ size: cfg.memSize, memPath: cfg.memPath, shared: cfg.machine.memShare, dontDump: !cfg.machine.dumpGuestCore });
  } catch (e) {
    die(`cannot allocate guest memory: ${(e as Error).message}`);
  }
  const iothreads = new Map<string, IoThread>();
  cleanups.push(async () => { for (const t of iothreads.values()) await t.stop(); });
  const consoleHub = new ConsoleHub(cfg.console?.path, cfg.serialStdio);
  let machine: Machine;
  try {
    await consoleHub.listen();
    cleanups.push(() => consoleHub.close());
    machine = new Machine({
      cpus: cfg.cpus,
      memory,
      boot: { kernel: files.kernel, initrd: files.initrd, cmdline: cfg.cmdline, cpus: cfg.cpus },
      consoleOut: (b) => consoleHub.write(b),
      onVcpuThreads: guestOnlyHugePages(memory),
    });
    consoleHub.onInput = (b) => machine.serial.enqueueInput(b);
    // iothreads before the devices that use them, and before the seccomp filter (no new threads after it)
    for (const id of cfg.iothreads) iothreads.set(id, await IoThread.start(id));
    buildDevices(machine.devices, { iothreads, drives: cfg.drives, hotplugSlots: cfg.hotplugSlots, rng: cfg.rng, balloon: cfg.balloon, consoles: cfg.consoles,
      pmems: cfg.pmems, nets: cfg.nets, memory, vsock: cfg.vsock });
    await startDevices(machine.devices);
    // device sockets (virtio consoles) listen before the VM runs and before the seccomp filter
    const devices = machine.devices;
    await devices.start().catch((e: unknown) => {
      devices.close();
      throw e;
    });
  } catch (e) {
    await cleanup();
    die((e as Error).message);
  }

  const qmp = cfg.apiChannel ? new QmpServer({ path: cfg.apiChannel }) : null;
  const fds = new Map<string, number>();
  let exiting = false;
  const exit = async (info: ShutdownInfo): Promise<void> => {
    if (exiting) return;
    exiting = true;
    log.info(`shutdown: ${info.reason}`);
    qmp?.event('SHUTDOWN', { guest: info.guest, reason: info.reason });
    await new Promise((r) => setTimeout(r, 20));
    await cleanup();
    for (const fd of fds.values()) closeFd(fd);
    memory.close();
    // a reset under the seccomp filter ends the VMM (Machine.resetExits); the parent relaunches it
    const ok = ['guest-shutdown', 'host-qmp-quit', 'host-signal', 'guest-reset', 'host-qmp-system-reset'].includes(info.reason);
    process.exit(ok ? 0 : 1);
  };

  machine.on('stop', () => qmp?.event('STOP'));
  machine.on('resume', () => qmp?.event('RESUME'));
  machine.on('guest-reset', (info: ShutdownInfo) => qmp?.event('SHUTDOWN', { guest: info.guest, reason: info.reason }));
  machine.on('reset', () => qmp?.event('RESET', { guest: true, reason: 'guest-reset' }));
  machine.on('shutdown', (info: ShutdownInfo) => void exit(info));

  if (qmp) {
    registerLifecycleCommands(qmp, { machine });
    registerFdCommands(qmp, { fds });
    registerHotplugCommands(qmp, { devices: machine.devices, fds });
    registerDeviceQueries(qmp, { devices: machine.devices, exits: () => machine.exits });
    registerInfoCommands(qmp);
    registerBalloonCommands(qmp, { balloon: machine.devices.slot(BALLOON_ID)?.device as VirtioBalloon | undefined });
    registerSnapshotCommands(qmp, {
      machine, memory, fds, vcpus: cfg.cpus, incoming: cfg.incoming?.mode === 'defer',
      beforeRun: () => confine(),
      onLoaded: (r) => log.info(`snapshot loaded (memory ${r.memory === 'cow' ? 'mapped copy-on-write' : 'copied'}) in ${r.ms.toFixed(0)} ms: paused`),
      onLoadFailed: (reason) => {
        log.error(`snapshot load failed: ${reason}`);
        // nothing half-started: the VMM ends once the error reply is out
        setTimeout(() => void machine.shutdown({ guest: false, reason: 'host-error' }), 50);
      },
    });
  }

  // before anything is visible (sockets, pidfile): a SIGTERM sent as soon as the pidfile exists
  // must take the clean path, not the default action
  for (const sig of ['SIGTERM', 'SIGINT', 'SIGHUP'] as const) {
    process.on(sig, () => void machine.shutdown({ guest: false, reason: 'host-signal' }));
  }
  try {
    if (!cfg.incoming) {
      await machine.start();
    } else if (cfg.incoming.mode === 'file') {
      const l = snapshotLayout(memory);
      const files = filesFor(`file:${cfg.incoming.dir}`, [STATE_FILE, ...l.memory.map((r) => r.file)], new Map(), false);
      try {
        const r = await loadSnapshot(machine, memory, files.fds, cfg.cpus);
        log.info(`snapshot ${cfg.incoming.dir} loaded (memory ${r.memory === 'cow' ? 'mapped copy-on-write' : 'copied'}) in ${r.ms.toFixed(0)} ms: paused`);
      } finally {
        files.close();
      }
    }
    if (machine.state === 'shutdown') return; // a signal arrived while starting; exit() runs
    if (qmp) {
      await qmp.listen();
      cleanups.push(() => qmp.close());
    }
    if (cfg.pidfile) {
      writeFileSync(cfg.pidfile, `${process.pid}\n`);
      const pf = cfg.pidfile;
      cleanups.push(() => { try { unlinkSync(pf); } catch { /* gone */ } });
    }
  } catch (e) {
    log.error(`start failed: ${(e as Error).stack ?? e}`);
    await machine.shutdown({ guest: false, reason: 'host-error' }).catch(() => {});
    await cleanup();
    die(`cannot start the VM: ${(e as Error).message}`);
  }
  const dumpSecs = Number(process.env.CAPSULE_DEBUG_DUMP_SECS ?? 0);
  if (dumpSecs > 0) {
    setInterval(() => void machine.dumpState().then((m) => process.stderr.write(`capsule-vmm: debug: ${m}\n`)), dumpSecs * 1000).unref();
  }
  if (isDaemonChild) {
    // stdio of a daemon points at the log file or /dev/null already; keep it that way
    process.stdin.destroy();
  }
  // Init is done: confine the process (every thread, vCPU workers included) before telling the
  // parent it is ready, so that "ready" means "filtered". See docs/seccomp.md. A VMM waiting for
  // a snapshot (-incoming defer) is confined once it is loaded: building the machine then needs
  // KVM_CREATE_VM, vCPU threads and the KVM SETs the filter forbids; no guest has run before.
  async function confine(): Promise<void> {
    if (!cfg.disableSeccomp && (machine.state as string) !== 'shutdown') {
      try {
        await prepareSeccomp();
        const sb = installSeccomp(cfg.seccompMode);
        machine.resetExits = true;
        const msg = `seccomp filter installed on all threads: ${sb.syscalls} syscalls, ${sb.instructions} BPF instructions, ` +
          (sb.mode === 'kill' ? 'anything else kills the VMM' : 'LOG mode: anything else is only logged by the kernel (audit type=1326)');
        if (sb.mode === 'kill') log.info(msg);
        else log.warn(msg);
      } catch (e) {
        log.error(`seccomp: ${(e as Error).message}`);
        // not awaited: after a restore this runs inside the machine's lifecycle queue, which a
        // shutdown would wait behind; the process ends here either way
        void machine.shutdown({ guest: false, reason: 'host-error' }).catch(() => {});
        await cleanup();
        die(`cannot install the seccomp filter: ${(e as Error).message}`);
      }
      const injectMs = Number(process.env[FORBIDDEN_SYSCALL_ENV] ?? '');
      if (injectMs >= 0 && process.env[FORBIDDEN_SYSCALL_ENV]) {
        log.warn(`test-only ${FORBIDDEN_SYSCALL_ENV}: calling socket(2) in ${injectMs} ms`);
        scheduleForbiddenSyscall(injectMs, (r) => log.warn(`test-only: socket(2) returned ${r} and the VMM lives (filter not in kill mode)`));
      }
    } else if (cfg.disableSeccomp) {
      log.info('seccomp filter disabled (-disable-seccomp)');
    }
  }
  if (cfg.incoming?.mode === 'defer') log.info('waiting for a snapshot (QMP migrate-incoming)');
  else await confine();
  ready('ready');
  log.info('running');
}


run().catch((e) => {
  process.stderr.write(`capsule-vmm: fatal: ${(e as Error).stack ?? e}\n`);
  process.exit(1);
});
