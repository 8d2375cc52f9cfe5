// Shared application context: API client, VM store, the global event stream, in-flight
// actions and notifications. Views receive it and subscribe to what they need.
import { Api, ApiError, type Tenant, type Vm, type Whoami } from './api.js';
import { actionDef, canOvertake, type ActionId } from './actions.js';
import { EventStream, type CapsuleEvent, type StreamStatus } from './events.js';
import { VmStore } from './store.js';
import { h } from './dom.js';

export interface View {
  el: HTMLElement;
  /** Element to focus when the view is shown (its heading). */
  focus?: HTMLElement;
  destroy(): void;
}

type Listener = () => void;

export class App {
  readonly store = new VmStore();
  /** Actions in flight per VM id. */
  readonly inflight = new Map<string, ActionId[]>();
  /** Last action error per VM, shown next to its buttons until the next action. */
  readonly actionErrors = new Map<string, string>();
  streamStatus: StreamStatus = 'closed';
  /** The signed-in token (null until known, or from a server without /v1/whoami). */
  me: Whoami | null = null;
  /** Admins: the tenants, for the VM list's filter and the token form. */
  tenants: Tenant[] = [];
  /** Admins: the VM list shows this tenant's VMs only ('' = all). */
  tenantFilter = '';
  private stream: EventStream | null = null;
  private readonly listeners = new Set<Listener>();
  private readonly eventListeners = new Set<(ev: CapsuleEvent) => void>();

  constructor(
    readonly api: Api,
    private readonly notifyEl: HTMLElement,
    readonly signOut: (reason?: string) => void,
  ) {}

  /** Subscribe to UI-level changes (in-flight actions, stream status). */
  onChange(fn: Listener): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }
  onEvent(fn: (ev: CapsuleEvent) => void): () => void {
    this.eventListeners.add(fn);
    return () => this.eventListeners.delete(fn);
  }
  changed(): void {
    for (const fn of this.listeners) fn();
  }

  async start(): Promise<void> {
    this.stream = new EventStream({
      url: (since) => this.api.wsUrl('/v1/events', { since }),
      onEvent: (ev) => this.handleEvent(ev),
      onStatus: (s) => {
        this.streamStatus = s;
        this.changed();
      },
      // After a drop, resume covers what the server still held; resync the list once in
      // case it no longer held everything (not polling: once per reconnect).
      onResumed: () => void this.refresh(),
    });
    // Listen first, then load the list: events that arrive before the snapshot are queued
    // and applied on top of it (stale ones are ignored by timestamp).
    this.stream.start();
    void this.loadIdentity();
    await this.refresh();
    document.addEventListener('visibilitychange', this.onVisible);
  }

  stop(): void {
    this.stream?.stop();
    this.stream = null;
    document.removeEventListener('visibilitychange', this.onVisible);
  }

  private readonly onVisible = (): void => {
    if (document.visibilityState === 'visible') this.stream?.kick();
  };

  /** Who is signed in; for admins the tenant list too. Older servers have neither: no harm. */
  async loadIdentity(): Promise<void> {
    try {
      this.me = await this.api.whoami();
      if (this.me.scope === 'admin') this.tenants = await this.api.listTenants();
    } catch {
      /* not fatal: the header just shows no tenant */
    }
    this.changed();
  }

  /** Why the last list load failed (shown with a Retry button), or null. */
  loadError: string | null = null;

  async refresh(): Promise<void> {
    try {
      this.store.beginSnapshot();
      this.store.setSnapshot(await this.api.listVms());
      this.loadError = null;
      const q = this.queued;
      this.queued = [];
      for (const ev of q) this.handleEvent(ev);
    } catch (e) {
      this.loadError = e instanceof ApiError ? e.describe() : String(e);
      this.reportError('Could not load the VM list', e);
    } finally {
      this.changed();
    }
  }

  private queued: CapsuleEvent[] = [];

  private handleEvent(ev: CapsuleEvent): void {
    if (!this.store.loaded) {
      // The snapshot will cover anything older; keep a bounded backlog.
      if (this.queued.length < 1000) this.queued.push(ev);
      return;
    }
    const unknownId = this.store.apply(ev);
    if (unknownId) {
      this.api.getVm(unknownId).then(
        (vm) => this.store.upsert(vm),
        () => undefined,
      );
    }
    if (ev.event === 'EVENTS_DROPPED') {
      const n = (ev.data as { count?: number } | null)?.count;
      this.notify(`The server dropped ${n ?? 'some'} events (rate limit); the list was reloaded.`, 'warn');
      void this.refresh();
    }
    for (const fn of this.eventListeners) fn(ev);
  }

  async runAction(vm: Vm, id: ActionId): Promise<boolean> {
    const busy = this.inflight.get(vm.id) ?? [];
    if (!canOvertake(busy, id)) return false;
    this.inflight.set(vm.id, [...busy, id]);
    this.actionErrors.delete(vm.id);
    this.changed();
    try {
      switch (id) {
        case 'delete':
          await this.api.deleteVm(vm.id);
          this.store.remove(vm.id);
          break;
        case 'forceStop':
          this.store.upsert(await this.api.action(vm.id, 'stop', true));
          break;
        default:
          this.store.upsert(await this.api.action(vm.id, id));
      }
      return true;
    } catch (e) {
      const msg = e instanceof ApiError ? e.describe() : String(e);
      this.actionErrors.set(vm.id, `${actionDef(id).label} failed: ${msg}`);
      this.reportError(`${actionDef(id).label} “${vm.name}” failed`, e);
      return false;
    } finally {
      const left = (this.inflight.get(vm.id) ?? []).filter((a) => a !== id);
      if (left.length) this.inflight.set(vm.id, left);
      else this.inflight.delete(vm.id);
      this.changed();
    }
  }

  reportError(what: string, e: unknown): void {
    if (e instanceof ApiError && e.status === 401) {
      this.signOut('Your token was rejected by the server (401). Please sign in again.');
      return;
    }
    const msg = e instanceof ApiError ? e.describe() : e instanceof Error ? e.message : String(e);
    this.notify(`${what}: ${msg}`, 'error');
  }

  notify(text: string, kind: 'info' | 'warn' | 'error' = 'info'): void {
    const close = h('button', { type: 'button', class: 'ghost small', 'aria-label': 'Dismiss' }, '×');
    const item = h('div', { class: `toast ${kind}`, role: kind === 'error' ? 'alert' : 'status' }, h('span', null, text), close);
    close.addEventListener('click', () => item.remove());
    this.notifyEl.appendChild(item);
    while (this.notifyEl.children.length > 4) this.notifyEl.firstElementChild?.remove();
    if (kind !== 'error') setTimeout(() => item.remove(), 8000);
  }
}
