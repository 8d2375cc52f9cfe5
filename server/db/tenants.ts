// Tenants: who owns VMs, volumes and tokens, and the quotas they run under.
import { randomUUID } from 'node:crypto';
import type { Db } from './index.js';

/** A quota of null is unlimited. */
export interface Quotas {
  vms: number | null;
  vcpus: number | null;
  memoryMiB: number | null;
  volumeMiB: number | null;
  /** The disk all the tenant's snapshots take (those it took, pause-to-disk states, templates'). */
  snapshotMiB: number | null;
}

export const QUOTA_NAMES = ['vms', 'vcpus', 'memoryMiB', 'volumeMiB', 'snapshotMiB'] as const;
export type QuotaName = (typeof QUOTA_NAMES)[number];

export interface Tenant {
  id: string;
  name: string;
  quotas: Quotas;
  createdAt: string;
  updatedAt: string;
}

/** The tenant migration 005 moved existing data into. */
export const DEFAULT_TENANT = 'default';

interface TenantRow {
  id: string; name: string;
  quota_vms: number | null; quota_vcpus: number | null; quota_memory_mib: number | null; quota_volume_mib: number | null; quota_snapshot_mib: number | null;
  created_at: string; updated_at: string;
}

const UNLIMITED: Quotas = { vms: null, vcpus: null, memoryMiB: null, volumeMiB: null, snapshotMiB: null };

const fromRow = (r: TenantRow): Tenant => ({
  id: r.id, name: r.name,
  quotas: { vms: r.quota_vms, vcpus: r.quota_vcpus, memoryMiB: r.quota_memory_mib, volumeMiB: r.quota_volume_mib, snapshotMiB: r.quota_snapshot_mib ?? null },
  createdAt: r.created_at, updatedAt: r.updated_at,
});

export class TenantStore {
  private readonly getStmt;
  private readonly byNameStmt;

  constructor(private readonly db: Db) {
    this.getStmt = db.prepare('SELECT * FROM tenants WHERE id = ?');
    this.byNameStmt = db.prepare('SELECT * FROM tenants WHERE name = ?');
  }

  create(name: string, quotas: Partial<Quotas> = {}): Tenant {
    const id = randomUUID();
    const now = new Date().toISOString();
    const q = { ...UNLIMITED, ...quotas };
    this.db.prepare(`INSERT INTO tenants (id, name, quota_vms, quota_vcpus, quota_memory_mib, quota_volume_mib, quota_snapshot_mib, created_at, updated_at)
      VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`).run(id, name, q.vms, q.vcpus, q.memoryMiB, q.volumeMiB, q.snapshotMiB, now, now);
    return this.get(id)!;
  }

  get(id: string): Tenant | undefined {
    const r = this.getStmt.get(id) as TenantRow | undefined;
    return r && fromRow(r);
  }

  getByName(name: string): Tenant | undefined {
    const r = this.byNameStmt.get(name) as TenantRow | undefined;
    return r && fromRow(r);
  }

  /** By id, else by name. */
  resolve(ref: string): Tenant | undefined {
    return this.get(ref) ?? this.getByName(ref);
  }

  list(): Tenant[] {
    return (this.db.prepare('SELECT * FROM tenants ORDER BY created_at, id').all() as TenantRow[]).map(fromRow);
  }

  /** Renames and/or changes quotas (a quota given as null becomes unlimited; absent ones stay). */
  update(id: string, change: { name?: string | undefined; quotas?: Partial<Quotas> | undefined }): Tenant | undefined {
    const t = this.get(id);
    if (!t) return undefined;
    const q = { ...t.quotas, ...change.quotas };
    this.db.prepare(`UPDATE tenants SET name = ?, quota_vms = ?, quota_vcpus = ?, quota_memory_mib = ?, quota_volume_mib = ?, quota_snapshot_mib = ?, updated_at = ? WHERE id = ?`)
      .run(change.name ?? t.name, q.vms, q.vcpus, q.memoryMiB, q.volumeMiB, q.snapshotMiB, new Date().toISOString(), id);
    return this.get(id);
  }

  delete(id: string): boolean {
    return this.db.prepare('DELETE FROM tenants WHERE id = ?').run(id).changes > 0;
  }

  /** Sum of the tenant's volume sizes in MiB (each rounded up, as the API shows them). */
  volumeMiB(id: string): number {
    return Number(this.db.prepare('SELECT coalesce(sum((size_bytes + 1048575) / 1048576), 0) FROM volumes WHERE tenant_id = ?').pluck().get(id));
  }

  /** The disk the tenant's snapshots take in MiB (every kind; each rounded up). */
  snapshotMiB(id: string): number {
    return Number(this.db.prepare('SELECT coalesce(sum((size_bytes + 1048575) / 1048576), 0) FROM snapshots WHERE tenant_id = ?').pluck().get(id));
  }

  /** What the tenant holds as its clients see it (VMs kept for templates and a template's or a pause's snapshot count with their owner). */
  holdings(id: string): { vms: number; volumes: number; snapshots: number; templates: number } {
    const count = (table: string, where = '') => Number(this.db.prepare(`SELECT count(*) FROM ${table} WHERE tenant_id = ?${where}`).pluck().get(id));
    return {
      vms: count('vms', ' AND role IS NULL'), volumes: count('volumes'),
      snapshots: count('snapshots', " AND kind = 'user' AND id NOT IN (SELECT snapshot_id FROM templates WHERE snapshot_id IS NOT NULL)"),
      templates: count('templates'),
    };
  }
}
