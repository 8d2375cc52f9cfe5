// The audit log: one row per change made through the API (who, what, when, outcome), the
// newest `maxRows` kept.
import type { Db } from './index.js';
import { tryWrite, type StorageMonitor } from './storage.js';

export interface AuditEntry {
  id: number;
  at: string;
  token: string;
  /** The caller's tenant. */
  tenant: string;
  method: string;
  /** The route pattern, e.g. /v1/vms/:id/start. */
  route: string;
  path: string;
  resourceType?: string;
  resourceId?: string;
  /** The tenant the resource belongs to (differs from `tenant` when an admin acts on another tenant's). */
  resourceTenant?: string;
  status: number;
}

export type NewAuditEntry = Omit<AuditEntry, 'id' | 'at'>;

export interface AuditQuery {
  /** Entries by, or about resources of, this tenant. */
  tenant?: string | undefined;
  /** Entries about this VM. */
  vm?: string | undefined;
  since?: string | undefined;
  until?: string | undefined;
  limit: number;
}

interface AuditRow {
  id: number; at: string; token_id: string; tenant_id: string; method: string; route: string; path: string;
  resource_type: string | null; resource_id: string | null; resource_tenant_id: string | null; status: number;
}

const fromRow = (r: AuditRow): AuditEntry => {
  const e: AuditEntry = { id: r.id, at: r.at, token: r.token_id, tenant: r.tenant_id, method: r.method, route: r.route, path: r.path, status: r.status };
  if (r.resource_type !== null) e.resourceType = r.resource_type;
  if (r.resource_id !== null) e.resourceId = r.resource_id;
  if (r.resource_tenant_id !== null) e.resourceTenant = r.resource_tenant_id;
  return e;
};

export class AuditStore {
  private readonly insertStmt;
  private readonly pruneStmt;
  private insertsSincePrune = 0;

  constructor(private readonly db: Db, private readonly maxRows: number, private readonly storage?: StorageMonitor) {
    this.insertStmt = db.prepare(`INSERT INTO audit (at, token_id, tenant_id, method, route, path, resource_type, resource_id, resource_tenant_id, status)
      VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`);
    // Ids only grow, so "the newest maxRows" is an id range: no scan.
    this.pruneStmt = db.prepare('DELETE FROM audit WHERE id <= (SELECT max(id) FROM audit) - ?');
  }

  /** Records an entry; a full disk costs the entry (counted by the storage monitor), not the request. */
  record(e: NewAuditEntry): void {
    tryWrite(this.storage, 'audit entry', () => {
      this.insertStmt.run(new Date().toISOString(), e.token, e.tenant, e.method, e.route, e.path,
        e.resourceType ?? null, e.resourceId ?? null, e.resourceTenant ?? null, e.status);
    });
    if (++this.insertsSincePrune >= Math.min(100, Math.max(1, Math.floor(this.maxRows / 10)))) this.prune();
  }

  prune(): void {
    this.insertsSincePrune = 0;
    tryWrite(this.storage, 'audit prune', () => this.pruneStmt.run(this.maxRows));
  }

  /** Newest first. */
  query(q: AuditQuery): AuditEntry[] {
    const conds: string[] = [];
    const args: Array<string | number> = [];
    if (q.tenant !== undefined) { conds.push('(tenant_id = ? OR resource_tenant_id = ?)'); args.push(q.tenant, q.tenant); }
    if (q.vm !== undefined) { conds.push("resource_type = 'vm' AND resource_id = ?"); args.push(q.vm); }
    if (q.since !== undefined) { conds.push('at >= ?'); args.push(q.since); }
    if (q.until !== undefined) { conds.push('at < ?'); args.push(q.until); }
    const where = conds.length ? `WHERE ${conds.join(' AND ')}` : '';
    return (this.db.prepare(`SELECT * FROM audit ${where} ORDER BY id DESC LIMIT ?`).all(...args, q.limit) as AuditRow[]).map(fromRow);
  }
}
