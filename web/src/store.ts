// The VM list, kept current from the global events stream; views subscribe to it.
import type { Drive, Vm, VmState } from './api.js';
import type { CapsuleEvent } from './events.js';

export type StoreListener = (vms: ReadonlyMap<string, Vm>, changedId: string | null) => void;

export class VmStore {
  readonly vms = new Map<string, Vm>();
  /** Ids deleted while a snapshot was in flight (so a stale snapshot cannot resurrect them). */
  private readonly deleted = new Set<string>();
  private readonly listeners = new Set<StoreListener>();
  /** Ids upserted while a snapshot was in flight (so a stale snapshot cannot drop them). */
  private touched: Set<string> | null = null;
  loaded = false;

  subscribe(fn: StoreListener): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  private emit(id: string | null): void {
    for (const fn of this.listeners) fn(this.vms, id);
  }

  /** Call just before requesting GET /v1/vms; then pass its result to setSnapshot. */
  beginSnapshot(): void {
    this.touched = new Set();
  }

  /** Replace the list with a fresh GET /v1/vms, keeping any local copy that is newer. */
  setSnapshot(items: Vm[]): void {
    const seen = new Set<string>();
    for (const vm of items) {
      seen.add(vm.id);
      if (this.deleted.has(vm.id)) continue;
      const cur = this.vms.get(vm.id);
      if (!cur || !isNewer(cur, vm)) this.vms.set(vm.id, vm);
    }
    for (const id of [...this.vms.keys()]) if (!seen.has(id) && !this.touched?.has(id)) this.vms.delete(id);
    this.deleted.clear();
    this.touched = null;
    this.loaded = true;
    this.emit(null);
  }

  /** Insert or update one VM (an API response is authoritative at its updatedAt). */
  upsert(vm: Vm): void {
    // A VM the server keeps for a template (its build, its pool) is not the user's until claimed.
    if (vm.role) return;
    const cur = this.vms.get(vm.id);
    if (cur && isNewer(cur, vm)) return;
    if (this.deleted.has(vm.id)) return;
    this.touched?.add(vm.id);
    this.vms.set(vm.id, vm);
    this.emit(vm.id);
  }

  remove(id: string): void {
    this.deleted.add(id);
    if (this.vms.delete(id)) this.emit(id);
  }

  /**
   * Apply one event. Returns the id of a VM the store does not know and should fetch
   * (e.g. its VM_CREATED was missed), or null.
   */
  apply(ev: CapsuleEvent): string | null {
    const id = ev.vm;
    if (!id) return null;
    const data = (ev.data ?? {}) as Record<string, unknown>;
    switch (ev.event) {
      case 'VM_CREATED': {
        const vm = (isVm(data['vm']) ? data['vm'] : isVm(data) ? data : null) as Vm | null;
        if (vm) this.upsert(vm);
        else if (!this.vms.has(id)) return id;
        return null;
      }
      case 'VM_DELETED':
        this.remove(id);
        return null;
      case 'STATE_CHANGED': {
        const state = data['state'];
        if (typeof state !== 'string') return null;
        const cur = this.vms.get(id);
        if (!cur) return this.deleted.has(id) ? null : id;
        // An event older than what we hold (e.g. replayed after a fresher snapshot) is stale.
        if (typeof ev.timestamp === 'string' && ev.timestamp < cur.updatedAt) return null;
        const updatedAt = ev.timestamp && ev.timestamp > cur.updatedAt ? ev.timestamp : cur.updatedAt;
        const next: Vm = { ...cur, state: state as VmState, updatedAt };
        if (typeof data['pid'] === 'number') next.pid = data['pid'];
        this.vms.set(id, next);
        this.emit(id);
        return null;
      }
      case 'DRIVE_ATTACHED':
      case 'DRIVE_DETACHED': {
        const cur = this.vms.get(id);
        if (!cur) return this.deleted.has(id) ? null : id;
        const drives = (cur.drives ?? []).slice();
        if (ev.event === 'DRIVE_ATTACHED') {
          const d = data['drive'] as Drive | undefined;
          if (!d || typeof d.id !== 'string') return null;
          const i = drives.findIndex((x) => x.id === d.id);
          if (i >= 0) drives[i] = d;
          else drives.push(d);
        } else {
          const gone = drives.findIndex((x) => x.id === data['drive']);
          if (gone < 0) return null;
          drives.splice(gone, 1);
        }
        this.vms.set(id, { ...cur, drives });
        this.emit(id);
        return null;
      }
      default:
        return null;
    }
  }

  sorted(): Vm[] {
    return [...this.vms.values()].sort((a, b) =>
      a.createdAt === b.createdAt ? a.name.localeCompare(b.name) : a.createdAt < b.createdAt ? 1 : -1,
    );
  }
}

function isVm(x: unknown): x is Vm {
  return !!x && typeof x === 'object' && typeof (x as Vm).id === 'string' && typeof (x as Vm).state === 'string';
}

/** True when `a` was updated strictly after `b` (ISO timestamps compare as strings). */
function isNewer(a: Vm, b: Vm): boolean {
  return typeof a.updatedAt === 'string' && typeof b.updatedAt === 'string' && a.updatedAt > b.updatedAt;
}
