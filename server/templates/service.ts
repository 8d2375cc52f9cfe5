// Templates (docs/templates.md): a tenant's recipe for a ready guest, built once into a
// snapshot (build.ts), handed out as VMs from a pool of running clones (pool.ts) or, when the
// pool has none ready, by restoring the snapshot.
import type { SnapshotStore } from '../db/snapshots.js';
import type { NewTemplate, Template, TemplateStore } from '../db/templates.js';
import type { OnTimeout, Vm } from '../db/vms.js';
import type { EventHub } from '../events/hub.js';
import type { AgentClient } from '../agent/client.js';
import type { SnapshotService } from '../snapshots/service.js';
import { vmFromSnapshot, type CloneDeps } from '../snapshots/clone.js';
import type { DrivesComponent } from '../supervisor/components/drives.js';
import type { NetworkComponent } from '../supervisor/components/network.js';
import type { VmTimeouts } from '../lifetimes/timeouts.js';
import { ApiError } from '../supervisor/errors.js';
import { buildTemplate } from './build.js';
import { PoolManager, type PoolStatus } from './pool.js';

/** What a build and a pool use: what making a VM from a snapshot needs, and the rest. */
export interface TemplateDeps extends CloneDeps {
  templates: TemplateStore;
  snapshots: SnapshotStore;
  snapshotService: SnapshotService;
  drives: DrivesComponent;
  agent: AgentClient;
  hub: EventHub;
  timeouts: VmTimeouts;
  network?: NetworkComponent | undefined;
}

/** What a client asks of a VM made from a template. */
export interface TemplateVmRequest {
  tenant: string;
  name: string;
  template: string;
  network?: { egress: boolean } | undefined;
  metadata?: Record<string, string> | undefined;
  timeoutSec?: number | undefined;
  onTimeout?: OnTimeout | undefined;
}

export class TemplateService {
  readonly pools: PoolManager;
  /** Templates deleted while their build runs: the build stops at its next step. */
  private readonly deleted = new Set<string>();

  constructor(private readonly d: TemplateDeps) {
    this.pools = new PoolManager(d);
  }

  /**
   * After a server start: a build the last server did not finish is failed (its VM deleted);
   * the pools are looked at (their VMs were reattached by the supervisor) and refilled.
   */
  async recover(): Promise<void> {
    for (const t of this.d.templates.list()) {
      for (const vm of this.d.vms.kept(t.id, 'template-build')) await this.d.supervisor.delete(vm.id, true).catch(() => undefined);
      if (t.state === 'building') this.fail(t, 'the server restarted during the build: delete the template and create it again');
    }
    this.pools.start();
  }

  close(): void {
    this.pools.close();
  }

  /** Inserts the template (building) and builds it in the background; the answer comes at once. */
  create(t: NewTemplate): Template {
    const template = this.d.templates.insert(t, () => {
      if (this.d.templates.getByName(t.tenant, t.name)) throw new ApiError(409, 'conflict', `name: a template named ${t.name} exists`, 'name');
    });
    this.d.hub.publish(template.id, 'TEMPLATE_CREATED', { template: template.name, state: template.state }, template.tenant);
    void this.build(template);
    return template;
  }

  private async build(t: Template): Promise<void> {
    const t0 = Date.now();
    try {
      await buildTemplate(this.d, t, () => this.deleted.has(t.id) || !this.d.templates.get(t.id));
      this.d.hub.publish(t.id, 'TEMPLATE_READY', { template: t.name, ms: Date.now() - t0 }, t.tenant);
      this.pools.refill(t.id);
    } catch (e) {
      if (!this.deleted.has(t.id)) this.fail(t, (e as Error).message);
    }
  }

  private fail(t: Template, reason: string): void {
    this.d.log.warn({ template: t.id, reason }, 'template build failed');
    this.d.templates.setFailed(t.id, reason);
    this.d.hub.publish(t.id, 'TEMPLATE_FAILED', { template: t.name, reason }, t.tenant);
  }

  setPool(t: Template, pool: number): Template {
    this.d.templates.setPool(t.id, pool);
    this.pools.refill(t.id);
    return this.d.templates.get(t.id)!;
  }

  poolStatus(t: Template): PoolStatus {
    return this.pools.status(t);
  }

  /** Deletes the template: its build stops, its pool is drained, its snapshot deleted. VMs claimed from it run on. */
  async delete(t: Template): Promise<void> {
    this.deleted.add(t.id);
    const began = Date.now();
    try {
      await this.pools.drain(t.id);
      this.d.log.info({ template: t.id, drainMs: Date.now() - began }, 'template pool drained');
      const snapshot = t.snapshot === undefined ? undefined : this.d.snapshots.getAny(t.snapshot);
      const restoring = snapshot ? this.d.snapshots.restoringVms(snapshot.id) : [];
      if (restoring.length > 0) {
        throw new ApiError(409, 'template_in_use', `template ${t.name}: VM(s) ${restoring.map((v) => v.name).join(', ')} are still being restored from it: try again when they run`);
      }
      // The row and the snapshot in one turn: the snapshot is never seen without its template.
      this.d.templates.delete(t.id);
      if (snapshot) this.d.snapshotService.delete(snapshot);
      this.d.hub.publish(t.id, 'TEMPLATE_DELETED', { template: t.name }, t.tenant);
    } finally {
      this.deleted.delete(t.id);
    }
  }

  /**
   * POST /v1/vms {"template"}: a running VM of the template, claimed from its pool when one is
   * ready, else restored from its snapshot now. `from` says which.
   */
  async launch(req: TemplateVmRequest): Promise<{ vm: Vm; from: 'pool' | 'snapshot' }> {
    const t = this.d.templates.resolve(req.tenant, req.template);
    if (!t) throw new ApiError(404, 'not_found', `template: no template with id or name ${JSON.stringify(req.template)}`, 'template');
    if (t.state !== 'ready') {
      throw new ApiError(409, 'template_not_ready', t.state === 'building' ? `template ${t.name} is still building (step: ${t.step ?? 'booting'})` : `template ${t.name} failed to build: ${t.reason ?? 'unknown'}`);
    }
    const nameFree = () => {
      if (this.d.vms.getByName(req.tenant, req.name)) throw new ApiError(409, 'conflict', `name: a VM named ${req.name} exists`, 'name');
    };
    nameFree();
    let vm = this.d.vms.claimPooled(t.id, { name: req.name, metadata: req.metadata, onTimeout: req.onTimeout }, nameFree);
    const from = vm ? 'pool' : 'snapshot';
    if (vm) {
      // After the answer is on its way: the refill starts a restore (database rows, the clone's
      // disk layer), which the claim's caller should not wait for.
      setImmediate(() => {
        try {
          this.pools.refill(t.id);
        } catch (e) {
          this.d.log.warn({ template: t.id, err: (e as Error).message }, 'pool refill after a claim failed');
        }
      });
    } else {
      const snapshot = this.d.snapshots.getAny(t.snapshot!);
      if (!snapshot) throw new ApiError(409, 'template_not_ready', `template ${t.name} has lost its snapshot: delete it and create it again`);
      vm = await vmFromSnapshot(this.d, snapshot, { tenant: req.tenant, name: req.name, metadata: req.metadata, onTimeout: req.onTimeout, template: t.id, network: req.network });
      try {
        vm = await this.d.supervisor.start(vm.id);
      } catch (e) {
        // Nothing half-made: a VM that could not be restored is not left behind.
        await this.d.supervisor.delete(vm.id, true).catch(() => undefined);
        throw e;
      }
    }
    if (from === 'pool' && req.network?.egress === false && this.d.network) vm = this.d.network.setEgress(vm, false);
    if (req.timeoutSec !== undefined) vm = this.d.timeouts.reset(vm, req.timeoutSec);
    this.d.hub.publish(vm.id, 'VM_CREATED', { ...vm, startedFrom: from } as unknown as Record<string, unknown>);
    return { vm, from };
  }
}
