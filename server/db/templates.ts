// Templates (docs/templates.md): the rows of `templates`, mapped to the API's shape. A template
// owns its snapshot (snapshot_id) and the VMs kept for it (vms.role, server/db/vms.ts).
import { randomUUID } from 'node:crypto';
import type { Db } from './index.js';
import type { HypervisorName } from './vms.js';

export type TemplateState = 'building' | 'ready' | 'failed';
/** Where a build is: the steps in order (TEMPLATE_PROGRESS events name them). */
export const TEMPLATE_STEPS = ['booting', 'starting', 'waiting-ready', 'snapshotting'] as const;
export type TemplateStep = (typeof TEMPLATE_STEPS)[number];

export interface Template {
  id: string;
  /** The owning tenant's id. */
  tenant: string;
  name: string;
  image: string;
  hypervisor: HypervisorName;
  vcpus: number;
  memoryMiB: number;
  startCmd?: string;
  readyCmd?: string;
  readyTimeoutSec: number;
  /** Clones kept running, ready to be claimed. */
  pool: number;
  state: TemplateState;
  /** While building: the current step. */
  step?: TemplateStep;
  /** Why the build failed. */
  reason?: string;
  /** The template's snapshot (once ready); not one of the tenant's listed snapshots. */
  snapshot?: string;
  createdAt: string;
  updatedAt: string;
}

interface TemplateRow {
  id: string; tenant_id: string; name: string; image: string; hypervisor: HypervisorName; vcpus: number; memory_mib: number;
  start_cmd: string | null; ready_cmd: string | null; ready_timeout_sec: number; pool_size: number; state: TemplateState;
  step: TemplateStep | null; reason: string | null; snapshot_id: string | null; created_at: string; updated_at: string;
}

function fromRow(r: TemplateRow): Template {
  const t: Template = {
    id: r.id, tenant: r.tenant_id, name: r.name, image: r.image, hypervisor: r.hypervisor, vcpus: r.vcpus, memoryMiB: r.memory_mib,
    readyTimeoutSec: r.ready_timeout_sec, pool: r.pool_size, state: r.state, createdAt: r.created_at, updatedAt: r.updated_at,
  };
  if (r.start_cmd !== null) t.startCmd = r.start_cmd;
  if (r.ready_cmd !== null) t.readyCmd = r.ready_cmd;
  if (r.step !== null) t.step = r.step;
  if (r.reason !== null) t.reason = r.reason;
  if (r.snapshot_id !== null) t.snapshot = r.snapshot_id;
  return t;
}

export type NewTemplate = Pick<Template, 'tenant' | 'name' | 'image' | 'hypervisor' | 'vcpus' | 'memoryMiB' | 'readyTimeoutSec' | 'pool'> & {
  startCmd?: string | undefined;
  readyCmd?: string | undefined;
};

export class TemplateStore {
  constructor(private readonly db: Db) {}

  /** Inserts a template in state building; `check` (the name still free) runs in the same transaction. */
  insert(t: NewTemplate, check?: () => void): Template {
    const id = randomUUID();
    const now = new Date().toISOString();
    this.db.transaction(() => {
      check?.();
      this.db.prepare(`INSERT INTO templates (id, tenant_id, name, image, hypervisor, vcpus, memory_mib, start_cmd, ready_cmd, ready_timeout_sec, pool_size, state, step, created_at, updated_at)
        VALUES (@id, @tenant, @name, @image, @hypervisor, @vcpus, @memoryMiB, @startCmd, @readyCmd, @readyTimeoutSec, @pool, 'building', 'booting', @now, @now)`).run({
        ...t, id, now, startCmd: t.startCmd ?? null, readyCmd: t.readyCmd ?? null,
      });
    })();
    return this.get(id)!;
  }

  get(id: string): Template | undefined {
    const r = this.db.prepare('SELECT * FROM templates WHERE id = ?').get(id) as TemplateRow | undefined;
    return r && fromRow(r);
  }

  getByName(tenant: string, name: string): Template | undefined {
    const r = this.db.prepare('SELECT * FROM templates WHERE tenant_id = ? AND name = ?').get(tenant, name) as TemplateRow | undefined;
    return r && fromRow(r);
  }

  /** A tenant's template by id or name. */
  resolve(tenant: string, ref: string): Template | undefined {
    const byId = this.get(ref);
    return byId?.tenant === tenant ? byId : this.getByName(tenant, ref);
  }

  tenantOf(id: string): string | undefined {
    return this.db.prepare('SELECT tenant_id FROM templates WHERE id = ?').pluck().get(id) as string | undefined;
  }

  /** Every template, or a tenant's, oldest first. */
  list(tenant?: string): Template[] {
    const rows = (tenant === undefined
      ? this.db.prepare('SELECT * FROM templates ORDER BY created_at, id').all()
      : this.db.prepare('SELECT * FROM templates WHERE tenant_id = ? ORDER BY created_at, id').all(tenant)) as TemplateRow[];
    return rows.map(fromRow);
  }

  setStep(id: string, step: TemplateStep): void {
    this.db.prepare('UPDATE templates SET step = ?, updated_at = ? WHERE id = ?').run(step, new Date().toISOString(), id);
  }

  /** The build succeeded: the template owns `snapshot` from now on. */
  setReady(id: string, snapshot: string): void {
    this.db.prepare("UPDATE templates SET state = 'ready', step = NULL, reason = NULL, snapshot_id = ?, updated_at = ? WHERE id = ?").run(snapshot, new Date().toISOString(), id);
  }

  setFailed(id: string, reason: string): void {
    this.db.prepare("UPDATE templates SET state = 'failed', step = NULL, reason = ?, updated_at = ? WHERE id = ?").run(reason, new Date().toISOString(), id);
  }

  setPool(id: string, pool: number): void {
    this.db.prepare('UPDATE templates SET pool_size = ?, updated_at = ? WHERE id = ?').run(pool, new Date().toISOString(), id);
  }

  delete(id: string): boolean {
    return this.db.prepare('DELETE FROM templates WHERE id = ?').run(id).changes > 0;
  }
}
