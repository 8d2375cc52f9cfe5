// The hypervisor abstraction (after Kata's hypervisor interface): a backend turns a VM
// definition into a daemonizing launch command; everything after the launch goes through
// QMP, which both backends speak, so the supervisor does not care which one runs a VM.
import type { Image } from '../db/images.js';
import type { Vm, HypervisorName } from '../db/vms.js';

/** Files of one VM, all under $CAPSULE_DATA_DIR/vms/<id>/. */
export interface VmPaths {
  dir: string;
  pidfile: string;
  log: string;
  qmpSocket: string;
  consoleSocket: string;
}

export interface LaunchCommand {
  command: string;
  args: string[];
  env?: NodeJS.ProcessEnv;
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
  /** Whether QMP system_reset ends the VMM process (the supervisor then relaunches it). */
  readonly resetExits: boolean;
  /** What this backend accepts beyond the API's own bounds. */
  readonly limits: { minMemoryMiB: number; maxVcpus: number };
}
