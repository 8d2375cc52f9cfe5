// Snapshots (docs/snapshots.md): the rows of `snapshots`, mapped to the API's shape. The files
// live in snapshots/<id>/ under the data directory (server/snapshots/files.ts); clients see
// neither the directory nor the file names.
import type { Db } from './index.js';
import type { HypervisorName, RootfsDevice } from './vms.js';

/** What a VM made from the snapshot is: the source VM's settings that its saved state depends on. */
export interface SnapshotDefinition {
  cmdline?: string | undefined;
  rng: boolean;
  balloon: { enabled: boolean; deflateOnOom: boolean };
  rootfsDevice: RootfsDevice;
  network: { enabled: boolean };
}

/** One file of the snapshot's directory and the size it had when the snapshot was written. */
export interface SnapshotFile {
  name: string;
  sizeBytes: number;
}

/** user: taken by a client, listed; suspend: a VM's own pause-to-disk state, hidden, used once. */
export type SnapshotKind = 'user' | 'suspend';

export interface Snapshot {
  id: string;
  /** The owning tenant's id. */
  tenant: string;
  name: string;
  /** The VM it was taken of (it may have been deleted since). */
  sourceVm?: string;
  hypervisor: HypervisorName;
  image: string;
  vcpus: number;
  memoryMiB: number;
  definition: SnapshotDefinition;
  /** The files on disk, every one counted (memory, state, the writable layer's allocated size). */
  sizeBytes: number;
  createdAt: string;
}

interface SnapshotRow {
  id: string; tenant_id: string; name: string; source_vm: string | null; hypervisor: HypervisorName; image: string;
  vcpus: number; memory_mib: number; definition: string; files: string; size_bytes: number; kind: SnapshotKind; created_at: string;
}

function fromRow(r: SnapshotRow): Snapshot {
  const s: Snapshot = {
    id: r.id, tenant: r.tenant_id, name: r.name, hypervisor: r.hypervisor, image: r.image, vcpus: r.vcpus, memoryMiB: r.memory_mib,
    definition: JSON.parse(r.definition) as SnapshotDefinition, sizeBytes: r.size_bytes, createdAt: r.created_at,
  };
  if (r.source_vm !== null) s.sourceVm = r.source_vm;
  return s;
}

export interface NewSnapshot extends Omit<Snapshot, 'createdAt' | 'sourceVm'> {
  sourceVm: string;
  files: SnapshotFile[];
  kind: SnapshotKind;
}

/** Clients see their own snapshots only, never a VM's pause-to-disk state nor a template's snapshot (docs/templates.md). */
const OWN = 'id NOT IN (SELECT snapshot_id FROM templates WHERE snapshot_id IS NOT NULL)';
const USER = `kind = 'user' AND ${OWN}`;

export class SnapshotStore {
  constructor(private readonly db: Db) {}

  insert(s: NewSnapshot, check?: () => void): Snapshot {
    this.db.transaction(() => {
      check?.();
      this.db.prepare(`INSERT INTO snapshots (id, tenant_id, name, source_vm, hypervisor, image, vcpus, memory_mib, definition, files, size_bytes, kind, created_at)
        VALUES (@id, @tenant, @name, @sourceVm, @hypervisor, @image, @vcpus, @memoryMiB, @definition, @files, @sizeBytes, @kind, @now)`).run({
        ...s, definition: JSON.stringify(s.definition), files: JSON.stringify(s.files), now: new Date().toISOString(),
      });
    })();
    return this.getAny(s.id)!;
  }

  /** A client's snapshot by id. */
  get(id: string): Snapshot | undefined {
    const r = this.db.prepare(`SELECT * FROM snapshots WHERE id = ? AND ${USER}`).get(id) as SnapshotRow | undefined;
    return r && fromRow(r);
  }

  /** Any snapshot by id, a VM's pause-to-disk state too (the server's own use). */
  getAny(id: string): (Snapshot & { kind: SnapshotKind }) | undefined {
    const r = this.db.prepare('SELECT * FROM snapshots WHERE id = ?').get(id) as SnapshotRow | undefined;
    return r && { ...fromRow(r), kind: r.kind };
  }

  /** Names are unique per tenant, across both kinds. */
  getByName(tenant: string, name: string): Snapshot | undefined {
    const r = this.db.prepare(`SELECT * FROM snapshots WHERE tenant_id = ? AND name = ? AND ${USER}`).get(tenant, name) as SnapshotRow | undefined;
    return r && fromRow(r);
  }

  nameTaken(tenant: string, name: string): boolean {
    return this.db.prepare('SELECT 1 FROM snapshots WHERE tenant_id = ? AND name = ?').get(tenant, name) !== undefined;
  }

  /** A tenant's snapshot by id or name. */
  resolve(tenant: string, ref: string): Snapshot | undefined {
    const byId = this.get(ref);
    return byId?.tenant === tenant ? byId : this.getByName(tenant, ref);
  }

  tenantOf(id: string): string | undefined {
    return this.db.prepare(`SELECT tenant_id FROM snapshots WHERE id = ? AND ${USER}`).pluck().get(id) as string | undefined;
  }

  /** The files with the sizes they had when written. */
  files(id: string): SnapshotFile[] {
    const f = this.db.prepare('SELECT files FROM snapshots WHERE id = ?').pluck().get(id) as string | undefined;
    return f === undefined ? [] : (JSON.parse(f) as SnapshotFile[]);
  }

  /** Clients' snapshots, or `kind` ones. */
  list(tenant?: string, kind: SnapshotKind = 'user'): Snapshot[] {
    const rows = (tenant === undefined
      ? this.db.prepare(`SELECT * FROM snapshots WHERE kind = ? AND ${OWN} ORDER BY created_at, id`).all(kind)
      : this.db.prepare(`SELECT * FROM snapshots WHERE tenant_id = ? AND kind = ? AND ${OWN} ORDER BY created_at, id`).all(tenant, kind)) as SnapshotRow[];
    return rows.map(fromRow);
  }

  /** The VMs whose next start restores this snapshot (it cannot be deleted while there are any). */
  restoringVms(id: string): Array<{ id: string; name: string }> {
    return this.db.prepare('SELECT id, name FROM vms WHERE restore_snapshot = ? ORDER BY created_at').all(id) as Array<{ id: string; name: string }>;
  }

  delete(id: string): boolean {
    return this.db.prepare('DELETE FROM snapshots WHERE id = ?').run(id).changes > 0;
  }
}
