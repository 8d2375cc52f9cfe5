// Per-tenant quotas: VMs defined, vCPUs and guest memory of running VMs, volume MiB.
//
// Every check runs in the same synchronous step as the change it guards (inside the SQLite
// transaction that inserts the VM or volume; in the supervisor's start, right before the move to
// `starting`), so two concurrent requests cannot both take the last room: Node runs one of them
// to the end of that step before the other begins.
import type { Tenant, TenantStore, QuotaName } from '../db/tenants.js';
import type { Vm, VmState, VmStore } from '../db/vms.js';
import { ApiError } from '../supervisor/errors.js';

export type Usage = Record<QuotaName, number>;

/** States in which a VM holds its vCPUs and memory (as host admission counts them). */
const ACTIVE: readonly VmState[] = ['starting', 'running', 'paused', 'stopping'];

export class Quotas {
  constructor(private readonly d: { tenants: TenantStore; vms: VmStore }) {}

  usage(tenantId: string): Usage {
    const u: Usage = { vms: 0, vcpus: 0, memoryMiB: 0, volumeMiB: this.d.tenants.volumeMiB(tenantId), snapshotMiB: this.d.tenants.snapshotMiB(tenantId) };
    for (const vm of this.d.vms.list(tenantId)) {
      u.vms++;
      if (!ACTIVE.includes(vm.state)) continue;
      u.vcpus += vm.vcpus;
      u.memoryMiB += vm.memoryMiB;
    }
    return u;
  }

  /** Before a VM is defined. */
  checkNewVm(tenantId: string): void {
    const t = this.tenant(tenantId);
    if (t) exceeds(t, 'vms', this.usage(tenantId).vms, 1);
  }

  /** Before a VM starts: its vCPUs and memory beside the tenant's other active VMs. */
  checkStart(vm: Vm): void {
    const t = this.tenant(vm.tenant);
    if (!t || (t.quotas.vcpus === null && t.quotas.memoryMiB === null)) return;
    const u = this.usage(vm.tenant);
    // A VM being started is not active yet, but be exact if it is counted.
    const self = ACTIVE.includes(vm.state) ? vm : { vcpus: 0, memoryMiB: 0 };
    exceeds(t, 'vcpus', u.vcpus - self.vcpus, vm.vcpus);
    exceeds(t, 'memoryMiB', u.memoryMiB - self.memoryMiB, vm.memoryMiB);
  }

  /** Before a volume of `sizeMiB` is created. */
  checkVolume(tenantId: string, sizeMiB: number): void {
    const t = this.tenant(tenantId);
    if (t?.quotas.volumeMiB != null) exceeds(t, 'volumeMiB', this.d.tenants.volumeMiB(tenantId), sizeMiB);
  }

  /** Before a snapshot that may take up to `sizeMiB` is written. */
  checkSnapshot(tenantId: string, sizeMiB: number): void {
    const t = this.tenant(tenantId);
    if (t?.quotas.snapshotMiB != null) exceeds(t, 'snapshotMiB', this.d.tenants.snapshotMiB(tenantId), sizeMiB);
  }

  private tenant(id: string): Tenant | undefined {
    return this.d.tenants.get(id);
  }
}

/** 409 quota_exceeded naming the quota, its limit, the use and the request. */
function exceeds(t: Tenant, quota: QuotaName, inUse: number, requested: number): void {
  const limit = t.quotas[quota];
  if (limit === null || inUse + requested <= limit) return;
  throw new ApiError(409, 'quota_exceeded', `quota ${quota} exceeded: limit ${limit}, in use ${inUse}, requested ${requested} (tenant ${t.name})`,
    undefined, { details: { quota, limit, inUse, requested, tenant: t.id } });
}
