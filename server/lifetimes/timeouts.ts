// VM TTLs (docs/api.md, "Lifetimes"): a VM created with `timeoutSec` runs at most that long
// from each start; then it is stopped or deleted, as its `onTimeout` says, after a VM_TIMEOUT
// event. The deadline of the current run is in the database (vms.expires_at), so a restarted
// server acts on deadlines that passed while it was down. One timer, armed for the earliest
// deadline, serves every VM.
//
// The clock starts when the VM reaches `running` from `starting` (a STATE_CHANGED event the
// supervisor publishes; a reboot does not restart it) and stops when the VM stops or crashes.
// POST /v1/vms/:id/timeout restarts it (reset()).
import type { Logger } from 'pino';
import type { CapsuleEvent } from '../db/events.js';
import type { Vm, VmStore } from '../db/vms.js';
import type { EventHub } from '../events/hub.js';
import { ApiError } from '../supervisor/errors.js';

/** What the timeouts need of the supervisor. */
export interface TimeoutActions {
  stop(id: string, force: boolean): Promise<unknown>;
  delete(id: string, force: boolean): Promise<void>;
}

export interface VmTimeoutsDeps {
  vms: VmStore;
  hub: EventHub;
  actions: TimeoutActions;
  log: Logger;
  now?: () => number;
}

/** setTimeout's longest delay (about 24.8 days); a later deadline re-arms on waking. */
const MAX_DELAY_MS = 2 ** 31 - 1;
const RUNS = new Set(['starting', 'running', 'paused']);

export class VmTimeouts {
  private timer: NodeJS.Timeout | undefined;
  private armedFor: number | undefined;
  /** VMs whose expiry is being acted on (a stop can take a while; not twice). */
  private readonly expiring = new Set<string>();
  private closed = false;
  private readonly now: () => number;

  constructor(private readonly d: VmTimeoutsDeps) {
    this.now = d.now ?? Date.now;
    d.hub.observe((ev) => this.onEvent(ev));
  }

  /** At server start (after reattach): deadlines that passed meanwhile are acted on now. */
  start(): void {
    this.schedule();
  }

  close(): void {
    this.closed = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
  }

  /**
   * POST /v1/vms/:id/timeout: `timeoutSec` a number sets the TTL, null removes it, undefined
   * keeps the VM's own. A VM that runs gets a new deadline, now + TTL; one that does not keeps
   * the TTL for its next start.
   */
  reset(vm: Vm, timeoutSec: number | null | undefined): Vm {
    const ttl = timeoutSec === undefined ? vm.timeoutSec ?? null : timeoutSec;
    if (timeoutSec === undefined && ttl === null) {
      throw new ApiError(409, 'no_timeout', `VM ${vm.name} has no TTL to reset: give {"timeoutSec": N}`, 'timeoutSec');
    }
    const expiresAt = ttl !== null && RUNS.has(vm.state) ? new Date(this.now() + ttl * 1000).toISOString() : null;
    const updated = this.d.vms.setTimeout(vm.id, ttl, expiresAt)!;
    this.d.hub.publish(vm.id, 'VM_TIMEOUT_SET', { timeoutSec: ttl, expiresAt });
    this.schedule();
    return updated;
  }

  private onEvent(ev: CapsuleEvent): void {
    if (ev.event !== 'STATE_CHANGED' || !ev.vm) return;
    const { state, previous } = ev.data as { state?: string; previous?: string };
    if (state === 'running' && previous === 'starting') {
      const vm = this.d.vms.get(ev.vm);
      if (!vm?.timeoutSec || vm.expiresAt) return;
      this.d.vms.setExpiry(vm.id, new Date(this.now() + vm.timeoutSec * 1000).toISOString());
      this.schedule();
    } else if (state === 'stopped' || state === 'crashed') {
      if (this.d.vms.get(ev.vm)?.expiresAt) this.d.vms.setExpiry(ev.vm, null);
    }
  }

  /** Arms the one timer for the earliest deadline. */
  private schedule(): void {
    if (this.closed) return;
    const next = this.d.vms.nextExpiry();
    if (next === undefined) {
      if (this.timer) clearTimeout(this.timer);
      this.timer = undefined;
      this.armedFor = undefined;
      return;
    }
    const at = Date.parse(next);
    if (this.timer && this.armedFor === at) return;
    if (this.timer) clearTimeout(this.timer);
    this.armedFor = at;
    this.timer = setTimeout(() => this.fire(), Math.min(Math.max(0, at - this.now()), MAX_DELAY_MS));
    this.timer.unref();
  }

  private fire(): void {
    this.timer = undefined;
    this.armedFor = undefined;
    for (const id of this.d.vms.expiredBy(new Date(this.now()).toISOString())) {
      if (this.expiring.has(id)) continue;
      const vm = this.d.vms.get(id);
      if (!vm) continue;
      this.expiring.add(id);
      void this.expire(vm).finally(() => this.expiring.delete(id));
    }
    this.schedule();
  }

  private async expire(vm: Vm): Promise<void> {
    // The deadline is spent whatever happens next: a stop that fails must not fire again and again.
    this.d.vms.setExpiry(vm.id, null);
    this.d.hub.publish(vm.id, 'VM_TIMEOUT', { action: vm.onTimeout, timeoutSec: vm.timeoutSec, expiresAt: vm.expiresAt });
    this.d.log.info({ vm: vm.id, action: vm.onTimeout, timeoutSec: vm.timeoutSec }, 'VM TTL expired');
    try {
      if (vm.onTimeout === 'delete') await this.d.actions.delete(vm.id, true);
      else if (RUNS.has(this.d.vms.get(vm.id)?.state ?? 'stopped')) await this.d.actions.stop(vm.id, false);
    } catch (e) {
      this.d.log.warn({ vm: vm.id, err: (e as Error).message }, 'acting on an expired TTL failed');
    }
  }
}
