// VM definitions: the rows of `vms`, mapped to the API's VM shape.
import { randomUUID } from 'node:crypto';
import type { Db } from './index.js';
import { tryWrite, type StorageMonitor } from './storage.js';
import { publicDrive, type Drive, type DriveRow, type NewDrive, type VolumeStore } from './volumes.js';

export const VM_STATES = ['created', 'starting', 'running', 'paused', 'stopping', 'stopped', 'crashed'] as const;
export type VmState = (typeof VM_STATES)[number];
export type HypervisorName = 'qemu' | 'native';
/** How an image's rootfs reaches the guest: a virtio-blk disk, or persistent memory (DAX). */
export const ROOTFS_DEVICES = ['virtio-blk', 'pmem'] as const;
export type RootfsDevice = (typeof ROOTFS_DEVICES)[number];
/** What happens to a VM when its TTL runs out. */
export const ON_TIMEOUT = ['stop', 'delete'] as const;
export type OnTimeout = (typeof ON_TIMEOUT)[number];
/** A VM the server keeps for a template (docs/templates.md): its build VM, or a clone waiting in its pool. Hidden from lists. */
export type VmRole = 'template-build' | 'pool-warming' | 'pool';

export interface Vm {
  id: string;
  /** The owning tenant's id. */
  tenant: string;
  name: string;
  state: VmState;
  image: string;
  hypervisor: HypervisorName;
  vcpus: number;
  memoryMiB: number;
  cmdline?: string;
  /** A virtio-rng device fed from the host's /dev/urandom. */
  rng: boolean;
  /** A virtio-balloon device; deflateOnOom: the guest may take pages back from the balloon under memory pressure. */
  balloon: { enabled: boolean; deflateOnOom: boolean };
  /** For an image with a rootfs: a virtio-blk disk (vda) or pmem (/dev/pmem0, mounted with DAX). */
  rootfsDevice: RootfsDevice;
  /** The VM's NIC (docs/network.md): addresses are shown while the host gives VMs networks. */
  network: VmNetwork;
  /** The client's drives in guest order (after an image's rootfs and the VM's layer, when the image has a rootfs). */
  drives: Drive[];
  /** The client's labels (string map); lists filter by them. */
  metadata: Record<string, string>;
  /** The TTL, counted from each start (absent: none). */
  timeoutSec?: number;
  onTimeout: OnTimeout;
  /** When the current run ends (while the VM runs with a TTL). */
  expiresAt?: string;
  /** The snapshot its next start restores instead of booting (docs/snapshots.md). */
  restoreFrom?: string;
  /** The template it was made from (its id). */
  template?: string;
  /** Set while the server keeps the VM for a template (not in VM lists). */
  role?: VmRole;
  pid?: number;
  createdAt: string;
  updatedAt: string;
}

/** A VM's network as the API shows it. */
export interface VmNetwork {
  enabled: boolean;
  /** NAT to the host's uplink (switchable at run time). */
  egress: boolean;
  /** The guest's own address (the same in every VM: each has its own namespace). */
  guestAddress?: string;
  /** Where the host reaches the guest (unique per VM; DNAT to guestAddress). */
  hostAddress?: string;
  mac?: string;
}

/** Fills in the addresses of a VM's network from its pool slot (set by the network component). */
export type NetworkView = (id: string, slot: number | null, enabled: boolean, egress: boolean) => VmNetwork;

const plainNetwork: NetworkView = (_id, _slot, enabled, egress) => ({ enabled, egress });

interface VmRow {
  id: string;
  tenant_id: string;
  name: string;
  state: VmState;
  image: string;
  hypervisor: HypervisorName;
  vcpus: number;
  memory_mib: number;
  cmdline: string | null;
  pid: number | null;
  rng: number;
  balloon: number;
  balloon_deflate_on_oom: number;
  rootfs_device: RootfsDevice;
  network_enabled: number;
  network_egress: number;
  network_slot: number | null;
  metadata: string;
  timeout_sec: number | null;
  on_timeout: OnTimeout;
  expires_at: string | null;
  restore_snapshot: string | null;
  template_id: string | null;
  role: VmRole | null;
  created_at: string;
  updated_at: string;
}

function fromRow(r: VmRow, drives: readonly DriveRow[], view: NetworkView = plainNetwork): Vm {
  const vm: Vm = {
    id: r.id, tenant: r.tenant_id, name: r.name, state: r.state, image: r.image, hypervisor: r.hypervisor,
    vcpus: r.vcpus, memoryMiB: r.memory_mib,
    rng: r.rng === 1, balloon: { enabled: r.balloon === 1, deflateOnOom: r.balloon_deflate_on_oom === 1 },
    rootfsDevice: r.rootfs_device,
    network: view(r.id, r.network_slot ?? null, (r.network_enabled ?? 1) === 1, (r.network_egress ?? 1) === 1),
    drives: drives.map(publicDrive),
    metadata: JSON.parse(r.metadata ?? '{}') as Record<string, string>,
    onTimeout: r.on_timeout ?? 'stop',
    createdAt: r.created_at, updatedAt: r.updated_at,
  };
  if (r.cmdline !== null) vm.cmdline = r.cmdline;
  if (r.timeout_sec !== null && r.timeout_sec !== undefined) vm.timeoutSec = r.timeout_sec;
  if (r.expires_at !== null && r.expires_at !== undefined) vm.expiresAt = r.expires_at;
  if (r.restore_snapshot !== null && r.restore_snapshot !== undefined) vm.restoreFrom = r.restore_snapshot;
  if (r.template_id !== null && r.template_id !== undefined) vm.template = r.template_id;
  if (r.role !== null && r.role !== undefined) vm.role = r.role;
  if (r.pid !== null) vm.pid = r.pid;
  return vm;
}

export interface NewVm {
  tenant: string;
  name: string;
  image: string;
  hypervisor: HypervisorName;
  vcpus: number;
  memoryMiB: number;
  cmdline?: string | undefined;
  rng?: boolean | undefined;
  balloon?: { enabled: boolean; deflateOnOom: boolean } | undefined;
  rootfsDevice?: RootfsDevice | undefined;
  /** Volume ids (already resolved and checked). */
  drives?: readonly NewDrive[] | undefined;
  network?: { enabled: boolean; egress: boolean } | undefined;
  metadata?: Record<string, string> | undefined;
  timeoutSec?: number | undefined;
  onTimeout?: OnTimeout | undefined;
  /** The snapshot the first start restores (the definition above is the snapshot's). */
  restoreSnapshot?: string | undefined;
  /** Made from this template (its id), and kept by the server as `role` when set. */
  template?: string | undefined;
  role?: VmRole | undefined;
}

/** What a client's claim of a pool VM gives it (its TTL is set after, from the claim on). */
export interface PoolClaim {
  name: string;
  metadata?: Record<string, string> | undefined;
  onTimeout?: OnTimeout | undefined;
}

/** Picks a free slot of the host-side address pool (set by the network component); undefined: none needed. */
export type SlotAllocator = (used: ReadonlySet<number>) => number;

export class VmStore {
  private readonly insertStmt;
  private readonly getStmt;
  private readonly getByNameStmt;
  private readonly listStmt;
  private readonly updateStateStmt;
  private readonly deleteStmt;
  private readonly tenantStmt;
  private readonly tenants = new Map<string, string>();
  private readonly slotsStmt;
  private readonly setSlotStmt;
  private readonly setEgressStmt;
  private readonly slotStmt;
  private readonly setMetadataStmt;
  private readonly setTimeoutStmt;
  private readonly setExpiryStmt;
  private readonly dueStmt;
  private readonly nextExpiryStmt;
  private readonly setRestoreStmt;
  private readonly claimStmt;
  /** The network component's: addresses from slots, and the slot allocator. */
  private view: NetworkView = plainNetwork;
  private allocator: SlotAllocator | undefined;
  /** The list as the API serves it, rebuilt after a write: listing is the hot read. */
  private listCache: { vms: Vm[]; json: string } | undefined;
  /** Per tenant: the part of the list the tenant sees, serialized (cleared with listCache). */
  private tenantJson = new Map<string, string>();
  /**
   * State changes the database refused (disk full): the VM really is in this state, so reads
   * show it, and every later write (and flushUnsaved(), on a timer) tries to save it again.
   */
  private readonly unsaved = new Map<string, { state: VmState; pid: number | null; now: string }>();

  constructor(private readonly db: Db, private readonly storage?: StorageMonitor, private readonly volumes?: VolumeStore) {
    if (storage) storage.statesNotSaved = () => this.unsaved.size;
    if (volumes) volumes.onDrivesChanged = () => this.invalidate();
    this.insertStmt = db.prepare(`INSERT INTO vms (id, tenant_id, name, state, image, hypervisor, vcpus, memory_mib, cmdline, pid, rng, balloon, balloon_deflate_on_oom, rootfs_device, network_enabled, network_egress, network_slot, metadata, timeout_sec, on_timeout, restore_snapshot, template_id, role, created_at, updated_at)
      VALUES (@id, @tenant, @name, 'created', @image, @hypervisor, @vcpus, @memoryMiB, @cmdline, NULL, @rng, @balloon, @deflateOnOom, @rootfsDevice, @netEnabled, @netEgress, @netSlot, @metadata, @timeoutSec, @onTimeout, @restoreSnapshot, @template, @role, @now, @now)`);
    this.claimStmt = db.prepare(`UPDATE vms SET role = NULL, name = @name, metadata = @metadata, on_timeout = @onTimeout, updated_at = @now
      WHERE id = (SELECT id FROM vms WHERE template_id = @template AND role = 'pool' AND state = 'running' ORDER BY created_at, id LIMIT 1) RETURNING id`).pluck();
    this.setRestoreStmt = db.prepare('UPDATE vms SET restore_snapshot = @snapshot WHERE id = @id');
    this.setMetadataStmt = db.prepare('UPDATE vms SET metadata = @metadata, updated_at = @now WHERE id = @id');
    this.setTimeoutStmt = db.prepare('UPDATE vms SET timeout_sec = @timeoutSec, expires_at = @expiresAt, updated_at = @now WHERE id = @id');
    this.setExpiryStmt = db.prepare('UPDATE vms SET expires_at = @expiresAt WHERE id = @id');
    this.dueStmt = db.prepare('SELECT id FROM vms WHERE expires_at IS NOT NULL AND expires_at <= ? ORDER BY expires_at').pluck();
    this.nextExpiryStmt = db.prepare('SELECT min(expires_at) FROM vms WHERE expires_at IS NOT NULL').pluck();
    this.slotsStmt = db.prepare('SELECT network_slot FROM vms WHERE network_slot IS NOT NULL').pluck();
    this.setSlotStmt = db.prepare('UPDATE vms SET network_slot = @slot WHERE id = @id');
    this.setEgressStmt = db.prepare('UPDATE vms SET network_egress = @egress, updated_at = @now WHERE id = @id');
    this.slotStmt = db.prepare('SELECT network_slot FROM vms WHERE id = ?').pluck();
    this.getStmt = db.prepare('SELECT * FROM vms WHERE id = ?');
    this.getByNameStmt = db.prepare('SELECT * FROM vms WHERE tenant_id = ? AND name = ?');
    this.listStmt = db.prepare('SELECT * FROM vms ORDER BY created_at, id');
    this.updateStateStmt = db.prepare('UPDATE vms SET state = @state, pid = @pid, updated_at = @now WHERE id = @id');
    this.deleteStmt = db.prepare('DELETE FROM vms WHERE id = ?');
    this.tenantStmt = db.prepare('SELECT tenant_id FROM vms WHERE id = ?').pluck();
  }

  /**
   * Inserts the VM and its drives in one transaction; `check` (the tenant's quota) runs first in
   * the same transaction, so nothing can be inserted between the check and this VM.
   */
  create(v: NewVm, check?: () => void): Vm {
    const id = randomUUID();
    this.invalidate();
    this.db.transaction(() => {
      check?.();
      this.insertStmt.run({
        tenant: v.tenant, name: v.name, image: v.image, hypervisor: v.hypervisor, vcpus: v.vcpus, memoryMiB: v.memoryMiB,
        cmdline: v.cmdline ?? null, id, now: new Date().toISOString(),
        rng: v.rng === false ? 0 : 1, balloon: v.balloon?.enabled ? 1 : 0, deflateOnOom: v.balloon?.enabled && v.balloon.deflateOnOom ? 1 : 0,
        rootfsDevice: v.rootfsDevice ?? 'virtio-blk',
        netEnabled: v.network?.enabled === false ? 0 : 1, netEgress: v.network?.egress === false ? 0 : 1,
        netSlot: v.network?.enabled !== false && this.allocator ? this.allocator(this.usedSlots()) : null,
        metadata: JSON.stringify(v.metadata ?? {}), timeoutSec: v.timeoutSec ?? null, onTimeout: v.onTimeout ?? 'stop',
        restoreSnapshot: v.restoreSnapshot ?? null, template: v.template ?? null, role: v.role ?? null,
      });
      if (v.drives && v.drives.length > 0) {
        if (!this.volumes) throw new Error('VmStore: drives need the volume store');
        this.volumes.addDrives(id, v.drives);
      }
    })();
    this.invalidate();
    return this.get(id)!;
  }

  get(id: string): Vm | undefined {
    const r = this.getStmt.get(id) as VmRow | undefined;
    return r && fromRow(this.overlay(r), this.volumes?.drives(id) ?? [], this.view);
  }

  /** The network component: how addresses are shown, and how a slot is picked. */
  setNetwork(view: NetworkView, allocator: SlotAllocator): void {
    this.view = view;
    this.allocator = allocator;
    this.invalidate();
  }

  private usedSlots(): Set<number> {
    return new Set(this.slotsStmt.all() as number[]);
  }

  /** The VM's pool slot, allocated now if it has none (a VM defined before networks). Throws when the pool is full. */
  networkSlot(id: string): number {
    const cur = this.slotStmt.get(id) as number | null | undefined;
    if (cur !== null && cur !== undefined) return cur;
    return this.reassignNetworkSlot(id);
  }

  /** A new slot for the VM (it has none, or its old one turned out to be taken on the host meanwhile). Throws when the pool is full. */
  reassignNetworkSlot(id: string): number {
    if (!this.allocator) throw new Error('no address pool');
    const alloc = this.allocator;
    const slot = this.db.transaction(() => {
      const s = alloc(this.usedSlots());
      this.setSlotStmt.run({ id, slot: s });
      return s;
    })();
    this.invalidate();
    return slot;
  }

  setEgress(id: string, egress: boolean): Vm | undefined {
    this.invalidate();
    this.setEgressStmt.run({ id, egress: egress ? 1 : 0, now: new Date().toISOString() });
    return this.get(id);
  }

  /** Replaces the VM's metadata. */
  setMetadata(id: string, metadata: Record<string, string>): Vm | undefined {
    this.invalidate();
    this.setMetadataStmt.run({ id, metadata: JSON.stringify(metadata), now: new Date().toISOString() });
    return this.get(id);
  }

  /** Sets the TTL (null: none) and the current run's deadline (null: none). */
  setTimeout(id: string, timeoutSec: number | null, expiresAt: string | null): Vm | undefined {
    this.invalidate();
    this.setTimeoutStmt.run({ id, timeoutSec, expiresAt, now: new Date().toISOString() });
    return this.get(id);
  }

  /** Sets or clears the snapshot the VM's next start restores (not a change of the definition: updatedAt stays). */
  setRestoreSnapshot(id: string, snapshot: string | null): void {
    this.invalidate();
    this.setRestoreStmt.run({ id, snapshot });
  }

  /**
   * Hands the oldest running pool VM of the template to a client (its role cleared, its name
   * and labels the client's), in one statement: two claims never get the same VM. `check` (the
   * name still free) runs in the same transaction. Undefined when the pool has none ready.
   */
  claimPooled(templateId: string, claim: PoolClaim, check?: () => void): Vm | undefined {
    this.invalidate();
    const id = this.db.transaction(() => {
      check?.();
      return this.claimStmt.get({
        template: templateId, name: claim.name, metadata: JSON.stringify(claim.metadata ?? {}),
        onTimeout: claim.onTimeout ?? 'stop', now: new Date().toISOString(),
      }) as string | undefined;
    })();
    this.invalidate();
    return id === undefined ? undefined : this.get(id);
  }

  /** A VM kept for a template changes role (a warmed pool VM becomes claimable). */
  setRole(id: string, role: VmRole): void {
    this.invalidate();
    this.db.prepare('UPDATE vms SET role = ? WHERE id = ? AND role IS NOT NULL').run(role, id);
  }

  /** The VMs the server keeps for a template in `role`, oldest first (from the cached list: the pools look every few seconds). */
  kept(templateId: string, role: VmRole): Vm[] {
    return this.list().filter((vm) => vm.template === templateId && vm.role === role);
  }

  /** Sets or clears the current run's deadline (not a change of the definition: updatedAt stays). */
  setExpiry(id: string, expiresAt: string | null): void {
    this.invalidate();
    this.setExpiryStmt.run({ id, expiresAt });
  }

  /** VMs whose deadline is at or before `now` (ISO), earliest first. */
  expiredBy(now: string): string[] {
    return this.dueStmt.all(now) as string[];
  }

  /** The earliest deadline of any VM (ISO), or undefined. */
  nextExpiry(): string | undefined {
    return (this.nextExpiryStmt.get() as string | null) ?? undefined;
  }

  /** The VM's tenant (it never changes): asked for every event published, so remembered. */
  tenantOf(id: string): string | undefined {
    let t = this.tenants.get(id);
    if (t === undefined) {
      t = this.tenantStmt.get(id) as string | undefined;
      if (t !== undefined) this.tenants.set(id, t);
    }
    return t;
  }

  /** Names are unique per tenant. */
  getByName(tenant: string, name: string): Vm | undefined {
    const r = this.getByNameStmt.get(tenant, name) as VmRow | undefined;
    return r && fromRow(r, this.volumes?.drives(r.id) ?? [], this.view);
  }

  /** Every VM, or a tenant's (those the server keeps for templates too: they count in quotas). */
  list(tenant?: string): Vm[] {
    const all = this.cachedList().vms;
    return tenant === undefined ? all : all.filter((vm) => vm.tenant === tenant);
  }

  /** The VMs clients see: without those the server keeps for templates. */
  listShown(tenant?: string): Vm[] {
    return this.list(tenant).filter((vm) => vm.role === undefined);
  }

  /** `{"items":[...]}` of listShown(tenant), serialized once per change (and tenant). */
  listJson(tenant?: string): string {
    if (tenant === undefined) return this.cachedList().json;
    let json = this.tenantJson.get(tenant);
    if (json === undefined) {
      json = JSON.stringify({ items: this.listShown(tenant) });
      if (this.tenantJson.size >= 1024) this.tenantJson.clear();
      this.tenantJson.set(tenant, json);
    }
    return json;
  }

  private invalidate(): void {
    this.listCache = undefined;
    this.tenantJson.clear();
  }

  private cachedList(): { vms: Vm[]; json: string } {
    if (!this.listCache) {
      const drives = this.volumes?.allDrives() ?? new Map<string, DriveRow[]>();
      const vms = (this.listStmt.all() as VmRow[]).map((r) => fromRow(this.overlay(r), drives.get(r.id) ?? [], this.view));
      this.listCache = { vms, json: JSON.stringify({ items: vms.filter((vm) => vm.role === undefined) }) };
    }
    return this.listCache;
  }

  /**
   * Sets state and pid (undefined clears it); returns the updated VM. Never throws for a full
   * or failing disk: the VM's state is a fact about a running process, so it is kept in memory
   * until it can be saved (the supervisor must not treat a refused write as a VMM failure).
   */
  setState(id: string, state: VmState, pid?: number): Vm | undefined {
    this.invalidate();
    this.unsaved.set(id, { state, pid: pid ?? null, now: new Date().toISOString() });
    this.flushUnsaved();
    return this.get(id);
  }

  /** Tries to save the state changes kept in memory; true when none is left. */
  flushUnsaved(): boolean {
    for (const [id, u] of this.unsaved) {
      if (!tryWrite(this.storage, 'vm state', () => this.updateStateStmt.run({ id, state: u.state, pid: u.pid, now: u.now }))) return false;
      this.unsaved.delete(id);
    }
    return true;
  }

  delete(id: string): boolean {
    this.invalidate();
    const deleted = this.deleteStmt.run(id).changes > 0;
    this.unsaved.delete(id);
    this.tenants.delete(id);
    return deleted;
  }

  private overlay(r: VmRow): VmRow {
    const u = this.unsaved.get(r.id);
    return u ? { ...r, state: u.state, pid: u.pid, updated_at: u.now } : r;
  }
}
