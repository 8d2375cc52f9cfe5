// The hypervisor abstraction (after Kata's hypervisor interface): a backend turns a VM
// definition into a daemonizing launch command; everything after the launch goes through
// QMP, which both backends speak, so the supervisor does not care which one runs a VM.
import type { Image } from '../db/images.js';
import type { Vm, HypervisorName } from '../db/vms.js';
import type { DriveCache } from '../db/volumes.js';

/** One disk as the VMM gets it, in guest order: boot-time drives and hot-plugged ones. */
export interface DriveSpec {
  /** The device id in the VMM (QMP device_del, DEVICE_DELETED): drive-N, or rootfs / layer. */
  id: string;
  /** The file as the VMM opens it: a host path, or a path inside a jailed VMM's root. */
  path: string;
  readOnly: boolean;
  /** none: O_DIRECT (no host page cache); writeback: host page cache, flushes honoured; unsafe: flushes ignored. */
  cache: DriveCache;
  /** Total I/O operations per second, if limited. */
  iops?: number | undefined;
  /** The guest-order index of the drive (0 = vda), used as the slot of a hot-plugged MMIO device. */
  index: number;
}

/**
 * A read-only image mapped into guest memory as persistent memory (/dev/pmem0, ...): native
 * virtio-pmem, QEMU an NVDIMM. The guest mounts it with DAX, so its pages are the host's page
 * cache of the file, shared by every VM of the image.
 */
export interface PmemSpec {
  /** The device id in the VMM. */
  id: string;
  /** The file as the VMM opens it (host path, or inside a jailed VMM's root). */
  path: string;
  /** The file's size in bytes (QEMU's NVDIMM needs it for the memory layout). */
  sizeBytes: number;
}

/** What a VM gets besides CPUs, memory and its kernel: built by the supervisor's components. */
export interface VmDevices {
  drives: DriveSpec[];
  /** Persistent-memory devices, in guest order (/dev/pmem0, ...). */
  pmem?: PmemSpec[] | undefined;
  rng: boolean;
  balloon?: { deflateOnOom: boolean } | undefined;
  /** A virtio-net NIC on a tap the server made in the VM's network namespace (the VMM runs there and opens it by name). */
  net?: { tap: string; mac: string } | undefined;
  /** Appended to the kernel command line (an image with a rootfs: root= and capsule.overlay=). */
  kernelArgs: string[];
  /**
   * QEMU only: a user-mode NIC (slirp, restrict=on: no egress) with TCP forwards from the host's
   * 127.0.0.1: the guest agent's fallback path where there is no per-VM network
   * (CAPSULE_AGENT_USERNET, supervisor/components/agent.ts).
   */
  userNet?: { hostForwards: Array<{ hostPort: number; guestPort: number }> } | undefined;
  /**
   * The VMM starts without booting and waits for a snapshot's state (Hypervisor.loadSnapshot;
   * QEMU's -incoming defer): a restore (docs/snapshots.md).
   */
  incoming?: boolean | undefined;
}

export const NO_DEVICES: VmDevices = { drives: [], rng: false, kernelArgs: [] };

/** The kernel command line a VM boots with. */
export function effectiveCmdline(vm: Vm, image: Image, devices: VmDevices): string {
  const base = vm.cmdline ?? image.cmdline;
  return devices.kernelArgs.length === 0 ? base : [base, ...devices.kernelArgs].filter((s) => s !== '').join(' ');
}

/** The part of a QMP client the backends use for hot-plug. */
export interface QmpCommands {
  execute<T = unknown>(command: string, args?: Record<string, unknown>, timeoutMs?: number): Promise<T>;
  /** execute() with file descriptors attached (SCM_RIGHTS), for QMP getfd */
  executeWithFds<T = unknown>(command: string, args: Record<string, unknown>, fds: number[], timeoutMs?: number): Promise<T>;
}

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
  launchCommand(vm: Vm, image: Image, paths: VmPaths, devices?: VmDevices): LaunchCommand;
  /**
   * The same VMM for the jail (server/jail): in the foreground (no daemonizing, no pidfile),
   * logging to stderr. `image` and `paths` hold the paths the VMM sees inside its root. The
   * command may be a bare name (looked up in PATH on the host, then bound into the root).
   */
  foregroundCommand(vm: Vm, image: Image, paths: ForegroundPaths, devices?: VmDevices): LaunchCommand;
  /**
   * Hot-plugs a disk into the running VMM (QMP): the file is already where `drive.path` says.
   * Throws an ApiError (409 hotplug_unsupported) where the machine cannot take one.
   */
  attachDrive(qmp: QmpCommands, drive: DriveSpec): Promise<void>;
  /** Asks the guest to release a disk (QMP device_del); done when DEVICE_DELETED names it. */
  detachDrive(qmp: QmpCommands, id: string): Promise<void>;
  /** After DEVICE_DELETED: drops what attachDrive added besides the device (its block node). */
  releaseDrive(qmp: QmpCommands, id: string): Promise<void>;
  /** Host files and directories the VMM needs besides its command (libraries, firmware,
   *  scripts), bound read-only into the jail at the same paths; missing ones are skipped. */
  jailFiles(): string[];
  /** Whether the VMM opens /dev/kvm (the jail then gets its own node for it). */
  usesKvm(): boolean;
  /**
   * Whether a hot-plugged drive's file must be visible inside the jailed VMM's root (QEMU opens
   * it by path). The native VMM gets an fd the server opened (QMP getfd), so nothing is bound.
   */
  readonly hotplugNeedsPath: boolean;
  /** Whether QMP system_reset ends the VMM process (the supervisor then relaunches it). */
  readonly resetExits: boolean;
  /** Whether this backend can write and load snapshots, and why not. */
  snapshotSupport(): Availability;
  /**
   * Writes the paused VM's saved state (devices, CPUs and memory) into the directory `dir`
   * (empty, the server's): the files are opened by the server and passed to the VMM, which
   * opens nothing itself (a jailed or seccomp-filtered VMM could not). Returns the names written.
   */
  saveSnapshot(qmp: QmpCommands, dir: string, timeoutMs: number): Promise<string[]>;
  /**
   * Loads the state saveSnapshot wrote into a VMM launched with devices.incoming; afterwards the
   * VM is paused where the snapshot was taken (the caller resumes it). Throws on a state the
   * VMM refuses, naming why.
   */
  loadSnapshot(qmp: QmpCommands, dir: string, timeoutMs: number): Promise<void>;
  /** What this backend accepts beyond the API's own bounds. */
  readonly limits: { minMemoryMiB: number; maxVcpus: number };
}
