// Pools (docs/templates.md): per ready template, `pool` clones of its snapshot kept restored,
// running and checked, so that POST /v1/vms {"template"} hands one out at once. Kata's VMCache
// keeps booted VMs for one QEMU configuration; here each template has its own pool of restores,
// which carry the template's started services and work with either backend.
//
// The pool's VMs are rows of `vms` (role 'pool-warming' while being restored, then 'pool'), so
// they survive a server restart like any VM: the supervisor reattaches them and the pool finds
// them again. One VM per template is warmed at a time (restores run beside clients' work on a
// small host); a refill that fails (quota, host full, a broken restore) waits longer each time.
import { randomBytes } from 'node:crypto';
import type { Template } from '../db/templates.js';
import type { Vm } from '../db/vms.js';
import { agentAnswer, noAnswer } from '../agent/client.js';
import { vmFromSnapshot } from '../snapshots/clone.js';
import type { TemplateDeps } from './service.js';

export interface PoolStatus {
  template: string;
  size: number;
  ready: number;
  warming: number;
  failed: number;
  reason?: string;
}

/** How often every pool is looked at (besides after each claim, build and warm). */
const TICK_MS = 5_000;
/** A pool VM's agent must answer this soon after its restore. */
const AGENT_MS = 60_000;
const BACKOFF_MIN_MS = 2_000;
const BACKOFF_MAX_MS = 60_000;

export class PoolManager {
  /** Templates with a VM being warmed now. */
  private readonly warming = new Set<string>();
  /** Refills that failed in a row, per template, with the last reason and when to try again. */
  private readonly failures = new Map<string, { count: number; reason: string; retryAt: number }>();
  /** Templates being deleted: not refilled. */
  private readonly draining = new Set<string>();
  /** Pool VMs being deleted (a tick while one goes must not delete it again). */
  private readonly discarding = new Set<string>();
  private timer: NodeJS.Timeout | undefined;

  constructor(private readonly d: TemplateDeps) {}

  start(): void {
    this.timer = setInterval(() => this.refillAll(), TICK_MS);
    this.timer.unref();
    this.refillAll();
  }

  close(): void {
    clearInterval(this.timer);
    this.timer = undefined;
  }

  refillAll(): void {
    for (const t of this.d.templates.list()) this.refill(t.id);
  }

  /** Brings the template's pool towards its size: drops dead and surplus VMs, warms one if short. */
  refill(templateId: string): void {
    const t = this.d.templates.get(templateId);
    if (!t || t.state !== 'ready' || this.draining.has(t.id) || this.timer === undefined) return;
    const ready = this.d.vms.kept(t.id, 'pool').filter((v) => !this.discarding.has(v.id));
    for (const vm of ready.filter((v) => v.state !== 'running' && v.state !== 'starting')) this.discard(vm, `it is ${vm.state}`);
    const live = ready.filter((v) => v.state === 'running');
    for (const vm of live.slice(t.pool)) this.discard(vm, 'the pool is smaller now');
    if (this.warming.has(t.id)) return;
    // A 'pool-warming' VM with no warm in flight was left by a server that stopped meanwhile.
    for (const vm of this.d.vms.kept(t.id, 'pool-warming')) this.discard(vm, 'its warm-up was interrupted');
    if (live.length >= t.pool) return;
    const failure = this.failures.get(t.id);
    if (failure && Date.now() < failure.retryAt) return;
    this.warming.add(t.id);
    void this.warm(t)
      .then(() => { this.failures.delete(t.id); })
      .catch((e: Error) => {
        const count = (this.failures.get(t.id)?.count ?? 0) + 1;
        const pause = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** (count - 1));
        this.failures.set(t.id, { count, reason: e.message, retryAt: Date.now() + pause });
        this.d.log.warn({ template: t.id, err: e.message, retryInMs: pause }, 'pool refill failed');
        this.d.hub.publish(t.id, 'POOL_REFILL_FAILED', { template: t.name, reason: e.message, failed: count }, t.tenant);
      })
      .finally(() => {
        this.warming.delete(t.id);
        this.refill(t.id);
      });
  }

  /** Restores one clone of the template's snapshot and, once it runs (and its agent answers, if the template uses it), puts it in the pool. */
  private async warm(t: Template): Promise<void> {
    const snapshot = this.d.snapshots.getAny(t.snapshot!);
    if (!snapshot) throw new Error('the template\'s snapshot is gone');
    const vm = await vmFromSnapshot(this.d, snapshot, {
      tenant: t.tenant, name: `_pool.${t.name}.${randomBytes(4).toString('hex')}`, template: t.id, role: 'pool-warming',
    });
    try {
      await this.d.supervisor.start(vm.id);
      if (t.startCmd !== undefined || t.readyCmd !== undefined) {
        const a = await agentAnswer(this.d.agent, vm.id, AGENT_MS);
        if (!a.ok) throw new Error(noAnswer(a, `a restored VM's guest agent did not answer within ${AGENT_MS / 1000} s`));
      }
      if (this.draining.has(t.id) || !this.d.templates.get(t.id)) throw new Error('the template was deleted');
      this.d.vms.setRole(vm.id, 'pool');
      this.d.hub.publish(t.id, 'POOL_VM_READY', { template: t.name, vm: vm.id }, t.tenant);
    } catch (e) {
      await this.d.supervisor.delete(vm.id, true).catch(() => undefined);
      throw e;
    }
  }

  private discard(vm: Vm, why: string): void {
    if (this.discarding.has(vm.id)) return;
    this.discarding.add(vm.id);
    // Out of the claimable role first: a claim must not get a VM that is being deleted.
    if (vm.role === 'pool') this.d.vms.setRole(vm.id, 'pool-warming');
    this.d.log.info({ vm: vm.id, template: vm.template, why }, 'pool VM dropped');
    void this.d.supervisor.delete(vm.id, true)
      .catch((e: Error) => this.d.log.error({ vm: vm.id, err: e.message }, 'could not delete a pool VM'))
      .finally(() => this.discarding.delete(vm.id));
  }

  status(t: Template): PoolStatus {
    const ready = this.d.vms.kept(t.id, 'pool').filter((v) => v.state === 'running' && !this.discarding.has(v.id)).length;
    const failure = this.failures.get(t.id);
    return {
      template: t.name, size: t.pool, ready, warming: this.warming.has(t.id) ? 1 : 0, failed: failure?.count ?? 0,
      ...(failure ? { reason: failure.reason } : {}),
    };
  }

  /** Stops refilling the template's pool and deletes its VMs (waiting for a warm in flight). */
  async drain(templateId: string): Promise<void> {
    this.draining.add(templateId);
    try {
      while (this.warming.has(templateId)) await new Promise((r) => setTimeout(r, 100));
      for (const role of ['pool', 'pool-warming', 'template-build'] as const) {
        for (const vm of this.d.vms.kept(templateId, role)) await this.d.supervisor.delete(vm.id, true).catch(() => undefined);
      }
    } finally {
      this.draining.delete(templateId);
      this.failures.delete(templateId);
    }
  }
}
