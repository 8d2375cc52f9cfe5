// The hypervisor abstraction (after Kata's hypervisor interface): a backend turns a VM
// definition into a daemonizing launch command; everything after the launch goes through
// QMP, which both backends speak, so the supervisor does not care which one runs a VM.
import type { Image } from '../db/images.js';
import type { Vm, HypervisorName } from '../db/vms.js';

/**
 * Files of one VM, all under $CAPSULE_DATA_DIR/vms/<id>/: the server's (pidfile, log) in the
 * directory itself, what the VMM creates (sockets) or reads (config) in `root/`, which is the
 * jailed VMM's root (a size-limited tmpfs, server/jail).
 */
export interface VmPaths {
  dir: string;
  pidfile: string;
  log: string;
  root: string;
  qmpSocket: string;
  consoleSocket: string;
  config: string;
}

export interface LaunchCommand {
  command: string;
  args: string[];
  /** The VMM's environment besides PATH (nothing of the server's reaches it). */
  env?: NodeJS.ProcessEnv;
  /**
   * The content of the VMM's configuration file, if it takes one: written (root-only, or
   * readable by the jail's group) at the `config` path before the start, removed once the VMM
   * is ready. It carries the kernel command line, which argv would show to every local user.
   */
  config?: string;
}

/** Where a jailed VMM finds its sockets and config: paths inside its root. */
export interface ForegroundPaths {
  qmpSocket: string;
  consoleSocket: string;
  config: string;
}

export interface Availability {
  available: boolean;
  reason: string;
}

export interface Hypervisor {
  readonly name: HypervisorName;
  availability(): Availability;
  /**
   * The command that starts the VMM daemonized: it must return (exit 0) once the VMM's
   * QMP socket listens, leave the VMM's pid in paths.pidfile, log to paths.log, serve the
   * serial console on paths.consoleSocket (a listening Unix socket) and exit the VMM on
   * guest power-off.
   */
  launchCommand(vm: Vm, image: Image, paths: VmPaths): LaunchCommand;
  /**
   * The same VMM for the jail (server/jail): in the foreground (no daemonizing, no pidfile),
   * logging to stderr. `image` and `paths` hold the paths the VMM sees inside its root. The
   * command may be a bare name (looked up in PATH on the host, then bound into the root).
   */
  foregroundCommand(vm: Vm, image: Image, paths: ForegroundPaths): LaunchCommand;
  /** Host files and directories the VMM needs besides its command (libraries, firmware,
   *  scripts), bound read-only into the jail at the same paths; missing ones are skipped. */
  jailFiles(): string[];
  /** Whether the VMM opens /dev/kvm (the jail then gets its own node for it). */
  usesKvm(): boolean;
  /** Whether QMP system_reset ends the VMM process (the supervisor then relaunches it). */
  readonly resetExits: boolean;
  /** What this backend accepts beyond the API's own bounds. */
  readonly limits: { minMemoryMiB: number; maxVcpus: number };
}
