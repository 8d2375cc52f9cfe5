// Host-wide admission control: the server never starts more VMs than the host holds. A VM
// that cannot fit is refused before anything is launched, instead of failing inside the VMM
// (ENOMEM), the kernel (a cgroup OOM kill) or by starving the VMs already running.
//
// Two checks:
//   - at definition (checkDefinition): one VM's vCPUs against maxVcpus (default: the host's
//     CPUs) and its memory against the whole capacity: a VM that could never start is a 400;
//   - at start (HostAdmission.reserve): the guest memory and vCPUs this VM asks for are
//     reserved against the host's capacity, or the start is refused with 503 host_full (with
//     Retry-After: capacity comes back when another VM stops).
//
// Why a ledger of reservations and not a sum over VM states at each start: a reservation is
// taken in one synchronous step (two concurrent starts cannot both take the last room), it
// lasts exactly as long as the VM may hold host memory (from the start request until the VMM
// is gone: stopped, crashed, deleted, or the start failed), a guest reboot keeps it, and the
// metrics can read use and capacity without scanning the store. At server start the ledger is
// rebuilt from the VMs that are still active after reattach (rebuild()).
import type { AdmissionConfig } from '../config.js';
import type { Vm, VmState } from '../db/vms.js';
import { ApiError } from './errors.js';

/** States in which a VM holds (or is about to hold) host memory and CPUs. */
export const ACTIVE_STATES: readonly VmState[] = ['starting', 'running', 'paused', 'stopping'];

/**
 * What a client is told to wait before retrying a host_full start. Room comes back only when
 * some VM stops, which the server cannot predict: a short, fixed hint keeps polling clients
 * from hammering the API without making them wait long once room is there.
 */
export const HOST_FULL_RETRY_AFTER_S = 10;

export interface HostUsage {
  memoryMiB: number;
  vcpus: number;
  vms: number;
}

export function checkDefinition(vm: { vcpus: number; memoryMiB: number }, cfg: AdmissionConfig): void {
  if (vm.vcpus > cfg.maxVcpus) {
    throw new ApiError(400, 'invalid_request', `vcpus: at most ${cfg.maxVcpus} per VM on this host (CAPSULE_MAX_VCPUS)`, 'vcpus');
  }
  if (vm.memoryMiB > cfg.hostMemoryMiB) {
    throw new ApiError(400, 'invalid_request', `memoryMiB: at most ${cfg.hostMemoryMiB} MiB on this host (${cfg.memorySource})`, 'memoryMiB');
  }
}

export class HostAdmission {
  /** VM id -> what it reserved (the VM's size when its start was admitted). */
  private readonly reserved = new Map<string, { memoryMiB: number; vcpus: number }>();
  private memoryMiB = 0;
  private vcpus = 0;

  constructor(readonly capacity: AdmissionConfig) {}

  /**
   * Reserves the VM's guest memory and vCPUs, or throws 503 host_full naming what is short,
   * with the numbers (requested, in use, capacity) in `details`. A VM that already holds a
   * reservation keeps it (idempotent). Synchronous: no other start runs between check and take.
   */
  reserve(vm: Pick<Vm, 'id' | 'memoryMiB' | 'vcpus'>): void {
    if (this.reserved.has(vm.id)) return;
    checkDefinition(vm, this.capacity);
    const cap = this.capacity;
    const short = this.memoryMiB + vm.memoryMiB > cap.hostMemoryMiB
      ? { resource: 'memoryMiB', requested: vm.memoryMiB, inUse: this.memoryMiB, capacity: cap.hostMemoryMiB, source: cap.memorySource, unit: 'MiB of guest memory' }
      : this.vcpus + vm.vcpus > cap.hostVcpus
        ? { resource: 'vcpus', requested: vm.vcpus, inUse: this.vcpus, capacity: cap.hostVcpus, source: cap.vcpuSource, unit: 'vCPUs' }
        : undefined;
    if (short) {
      const { source, unit, ...numbers } = short;
      throw new ApiError(503, 'host_full',
        `the host is full: ${short.requested} ${unit} requested, ${short.inUse} of ${short.capacity} in use (${source}); retry once another VM stops`,
        undefined, { details: numbers, retryAfterSeconds: HOST_FULL_RETRY_AFTER_S });
    }
    this.reserved.set(vm.id, { memoryMiB: vm.memoryMiB, vcpus: vm.vcpus });
    this.memoryMiB += vm.memoryMiB;
    this.vcpus += vm.vcpus;
  }

  /** Gives the VM's reservation back (its VMM is gone or never came). Idempotent. */
  release(id: string): void {
    const r = this.reserved.get(id);
    if (!r) return;
    this.reserved.delete(id);
    this.memoryMiB -= r.memoryMiB;
    this.vcpus -= r.vcpus;
  }

  /**
   * Rebuilds the ledger from the VMs that are active now (server start, after reattach). VMs
   * that run are counted even beyond the capacity (a lowered limit, a smaller host): they are
   * not stopped, new starts just wait until use is below it again.
   */
  rebuild(vms: readonly Vm[]): void {
    this.reserved.clear();
    this.memoryMiB = 0;
    this.vcpus = 0;
    for (const vm of vms) {
      if (!ACTIVE_STATES.includes(vm.state)) continue;
      this.reserved.set(vm.id, { memoryMiB: vm.memoryMiB, vcpus: vm.vcpus });
      this.memoryMiB += vm.memoryMiB;
      this.vcpus += vm.vcpus;
    }
  }

  usage(): HostUsage {
    return { memoryMiB: this.memoryMiB, vcpus: this.vcpus, vms: this.reserved.size };
  }

  holds(id: string): boolean {
    return this.reserved.has(id);
  }
}
