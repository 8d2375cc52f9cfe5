// Per-VM components: each thing a VM has besides CPUs and memory (drives, the rng, the balloon)
// is a component with the same four steps, which the supervisor runs in order around the
// VMM's life. The supervisor orchestrates; what a device needs lives in its component.
//
//   prepare   before the launch: checks, files, grants; adds to the launch plan (devices,
//             kernel arguments). Throws an ApiError to refuse the start (nothing launched).
//   attach    the VMM is up (QMP answers): watch its events, keep what the runtime needs.
//   reattach  the server found the VMM running at its own start: rebuild that state.
//   cleanup   the VMM is gone (exited, killed, failed to start): undo prepare and attach.
//             Idempotent; also runs for a VMM that died while the server was down.
import type { Image } from '../../db/images.js';
import type { Vm } from '../../db/vms.js';
import type { Hypervisor, VmDevices, VmPaths } from '../../hypervisors/types.js';
import type { QmpClient } from '../../qmp/client.js';

export interface LaunchContext {
  vm: Vm;
  image: Image;
  paths: VmPaths;
  /** The uid the VMM will run as when jailed; undefined: not jailed (it runs as the server). */
  jailUid: number | undefined;
  /** The VM's backend writes snapshots (Hypervisor.snapshotSupport). */
  snapshots: boolean;
}

export interface LaunchPlan {
  /** Drive paths are host paths here; the jail maps them into the VMM's root. */
  devices: VmDevices;
  /** The largest file the VMM must be able to write (a writable drive): RLIMIT_FSIZE is at least this. */
  minFileSizeBytes: number;
  /** The network namespace the VMM runs in (/run/netns/NAME; the network component's), if any. */
  netns?: string | undefined;
  /**
   * The VM restores a snapshot instead of booting (the restore component's): the supervisor
   * loads `dir` into the VMM once QMP answers, then resumes it.
   */
  restore?: { snapshot: string; dir: string; agentToken?: string } | undefined;
}

/** A running VMM as components see it. */
export interface LiveVmContext {
  id: string;
  /** The tracked pid (jailed: unshare's, in the jail's mount namespace). */
  pid: number;
  qmp: QmpClient;
  hypervisor: Hypervisor;
  paths: VmPaths;
  jailUid: number | undefined;
}

export interface VmComponent {
  readonly name: string;
  prepare(ctx: LaunchContext, plan: LaunchPlan): void;
  attach?(live: LiveVmContext): void;
  reattach?(live: LiveVmContext): void;
  cleanup(vmId: string): void;
  /**
   * After the server's start has reattached every running VMM (reattach) and cleaned up after
   * every dead one (cleanup): remove what is left on the host of VMs that no longer run (a
   * server killed before its cleanup). `live`: the ids of the VMs whose VMM runs.
   */
  reconcile?(live: ReadonlySet<string>): void;
}

export function emptyPlan(): LaunchPlan {
  return { devices: { drives: [], rng: false, kernelArgs: [] }, minFileSizeBytes: 0 };
}
