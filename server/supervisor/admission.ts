// Host-wide admission control: a VM that cannot fit is refused before anything is launched,
// with a 4xx that names the limit, instead of failing inside QEMU (ENOMEM), the kernel (a
// cgroup OOM kill) or by starving the VMs already running.
//
// Two checks:
//   - at definition: one VM's vCPUs against maxVcpus (default: the host's CPUs) and its
//     memory against the whole host budget (a VM that could never start is refused at once);
//   - at start: the guest memory and vCPUs of every active VM (starting, running, paused,
//     stopping) plus this one against the host budget (CAPSULE_HOST_MEMORY_MIB, CAPSULE_CPU_OVERCOMMIT).
// The start check and the move to `starting` happen in one synchronous step of the supervisor,
// so two concurrent starts cannot both take the last room.
import type { AdmissionConfig } from '../config.js';
import type { Vm, VmState } from '../db/vms.js';
import { ApiError } from './errors.js';

const ACTIVE: readonly VmState[] = ['starting', 'running', 'paused', 'stopping'];

export function checkDefinition(vm: { vcpus: number; memoryMiB: number }, cfg: AdmissionConfig): void {
  if (vm.vcpus > cfg.maxVcpus) {
    throw new ApiError(400, 'invalid_request', `vcpus: at most ${cfg.maxVcpus} per VM on this host (CAPSULE_MAX_VCPUS)`, 'vcpus');
  }
  if (vm.memoryMiB > cfg.hostMemoryMiB) {
    throw new ApiError(400, 'invalid_request', `memoryMiB: at most ${cfg.hostMemoryMiB} MiB on this host (CAPSULE_HOST_MEMORY_MIB)`, 'memoryMiB');
  }
}

/** Throws 409 insufficient_capacity when `vm` does not fit beside the active VMs in `all`. */
export function checkStart(vm: Vm, all: readonly Vm[], cfg: AdmissionConfig): void {
  checkDefinition(vm, cfg);
  let memory = 0;
  let vcpus = 0;
  for (const other of all) {
    if (other.id === vm.id || !ACTIVE.includes(other.state)) continue;
    memory += other.memoryMiB;
    vcpus += other.vcpus;
  }
  if (memory + vm.memoryMiB > cfg.hostMemoryMiB) {
    throw new ApiError(409, 'insufficient_capacity',
      `not enough host memory: ${vm.memoryMiB} MiB asked, ${Math.max(0, cfg.hostMemoryMiB - memory)} MiB of ${cfg.hostMemoryMiB} MiB free (CAPSULE_HOST_MEMORY_MIB); stop another VM first`);
  }
  if (vcpus + vm.vcpus > cfg.hostVcpus) {
    throw new ApiError(409, 'insufficient_capacity',
      `not enough host CPUs: ${vm.vcpus} vCPUs asked, ${Math.max(0, cfg.hostVcpus - vcpus)} of ${cfg.hostVcpus} free (host CPUs × CAPSULE_CPU_OVERCOMMIT); stop another VM first`);
  }
}
