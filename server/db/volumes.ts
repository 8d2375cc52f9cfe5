// Volumes (server-side disk files, volumes/<id>.img) and the VM drives that reference them.
// Clients name a volume by id or name; they never see or give a host path.
import { randomUUID } from 'node:crypto';
import type { Db } from './index.js';

export const DRIVE_CACHES = ['none', 'writeback', 'unsafe'] as const;
export type DriveCache = (typeof DRIVE_CACHES)[number];
export const DRIVE_STATES = ['attached', 'attaching', 'detaching'] as const;
export type DriveState = (typeof DRIVE_STATES)[number];

export interface Volume {
  id: string;
  /** The owning tenant's id. */
  tenant: string;
  name: string;
  sizeMiB: number;
  fromImage?: string;
  /** The VMs whose definitions reference it (running or not). */
  attachments: Array<{ vm: string; vmName: string; drive: string; readOnly: boolean; state: DriveState }>;
  createdAt: string;
  updatedAt: string;
}

export interface Drive {
  id: string;
  volume: string;
  volumeName: string;
  readOnly: boolean;
  cache: DriveCache;
  iops?: number;
  state: DriveState;
}

/** A drive row with what the server needs to attach it (the volume's size). */
export interface DriveRow extends Drive {
  vmId: string;
  position: number;
  sizeBytes: number;
}

interface VolumeRow { id: string; tenant_id: string; name: string; size_bytes: number; from_image: string | null; created_at: string; updated_at: string }
interface DriveDbRow {
  vm_id: string; id: string; position: number; volume_id: string; read_only: number; cache: DriveCache;
  iops: number | null; state: DriveState; volume_name: string; size_bytes: number; vm_name?: string;
}

const MiB = 1024 * 1024;

function driveFromRow(r: DriveDbRow): DriveRow {
  const d: DriveRow = {
    id: r.id, volume: r.volume_id, volumeName: r.volume_name, readOnly: r.read_only === 1, cache: r.cache, state: r.state,
    vmId: r.vm_id, position: r.position, sizeBytes: r.size_bytes,
  };
  if (r.iops !== null) d.iops = r.iops;
  return d;
}

/** What the API shows of a drive (no position or size). */
export function publicDrive(d: DriveRow): Drive {
  const { id, volume, volumeName, readOnly, cache, iops, state } = d;
  return iops === undefined ? { id, volume, volumeName, readOnly, cache, state } : { id, volume, volumeName, readOnly, cache, iops, state };
}

export interface NewDrive {
  volume: string;
  readOnly: boolean;
  cache: DriveCache;
  iops?: number | undefined;
}

const DRIVE_SELECT = `SELECT d.*, v.name AS volume_name, v.size_bytes AS size_bytes FROM vm_drives d JOIN volumes v ON v.id = d.volume_id`;

export class VolumeStore {
  /** Called after any change to drives (the VM store caches its list, which shows them). */
  onDrivesChanged: () => void = () => undefined;

  constructor(private readonly db: Db) {}

  /** Inserts the volume; `check` (the tenant's quota) runs first in the same transaction. */
  create(v: { tenant: string; name: string; sizeBytes: number; fromImage?: string | undefined; id?: string }, check?: () => void): Volume {
    const id = v.id ?? randomUUID();
    const now = new Date().toISOString();
    this.db.transaction(() => {
      check?.();
      this.db.prepare('INSERT INTO volumes (id, tenant_id, name, size_bytes, from_image, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)')
        .run(id, v.tenant, v.name, v.sizeBytes, v.fromImage ?? null, now, now);
    })();
    return this.get(id)!;
  }

  get(id: string): Volume | undefined {
    const r = this.db.prepare('SELECT * FROM volumes WHERE id = ?').get(id) as VolumeRow | undefined;
    return r && this.fromRow(r);
  }

  /** A tenant's volume by id, else by name (names are unique per tenant): another tenant's is not found. */
  resolve(tenant: string, ref: string): Volume | undefined {
    const byId = this.get(ref);
    if (byId) return byId.tenant === tenant ? byId : undefined;
    return this.getByName(tenant, ref);
  }

  getByName(tenant: string, name: string): Volume | undefined {
    const r = this.db.prepare('SELECT * FROM volumes WHERE tenant_id = ? AND name = ?').get(tenant, name) as VolumeRow | undefined;
    return r && this.fromRow(r);
  }

  /** Every volume, or a tenant's. */
  list(tenant?: string): Volume[] {
    const rows = tenant === undefined
      ? this.db.prepare('SELECT * FROM volumes ORDER BY created_at, id').all()
      : this.db.prepare('SELECT * FROM volumes WHERE tenant_id = ? ORDER BY created_at, id').all(tenant);
    return (rows as VolumeRow[]).map((r) => this.fromRow(r));
  }

  sizeBytes(id: string): number | undefined {
    return this.db.prepare('SELECT size_bytes FROM volumes WHERE id = ?').pluck().get(id) as number | undefined;
  }

  delete(id: string): boolean {
    return this.db.prepare('DELETE FROM volumes WHERE id = ?').run(id).changes > 0;
  }

  // ---- drives ----

  drives(vmId: string): DriveRow[] {
    return (this.db.prepare(`${DRIVE_SELECT} WHERE d.vm_id = ? ORDER BY d.position`).all(vmId) as DriveDbRow[]).map(driveFromRow);
  }

  drive(vmId: string, driveId: string): DriveRow | undefined {
    const r = this.db.prepare(`${DRIVE_SELECT} WHERE d.vm_id = ? AND d.id = ?`).get(vmId, driveId) as DriveDbRow | undefined;
    return r && driveFromRow(r);
  }

  /** Every drive of every VM, grouped by VM (for the VM list). */
  allDrives(): Map<string, DriveRow[]> {
    const out = new Map<string, DriveRow[]>();
    for (const r of this.db.prepare(`${DRIVE_SELECT} ORDER BY d.vm_id, d.position`).all() as DriveDbRow[]) {
      const d = driveFromRow(r);
      const list = out.get(d.vmId);
      if (list) list.push(d);
      else out.set(d.vmId, [d]);
    }
    return out;
  }

  /** Attachments of a volume, with the VM's name. */
  attachmentsOf(volumeId: string): Array<DriveRow & { vmName: string }> {
    return (this.db.prepare(`SELECT d.*, v.name AS volume_name, v.size_bytes AS size_bytes, m.name AS vm_name
        FROM vm_drives d JOIN volumes v ON v.id = d.volume_id JOIN vms m ON m.id = d.vm_id WHERE d.volume_id = ? ORDER BY m.name, d.id`)
      .all(volumeId) as DriveDbRow[]).map((r) => ({ ...driveFromRow(r), vmName: r.vm_name! }));
  }

  /**
   * Adds drives at the end of a VM's list, with the next free ids (drive-N, N above every id
   * in use). Runs in one transaction; returns the rows.
   */
  addDrives(vmId: string, drives: readonly NewDrive[], state: DriveState = 'attached'): DriveRow[] {
    const ids: string[] = [];
    this.db.transaction(() => {
      const existing = this.drives(vmId);
      let next = Math.max(-1, ...existing.map((d) => Number(/^drive-(\d+)$/.exec(d.id)?.[1] ?? -1))) + 1;
      let position = Math.max(-1, ...existing.map((d) => d.position)) + 1;
      const insert = this.db.prepare(`INSERT INTO vm_drives (vm_id, id, position, volume_id, read_only, cache, iops, state, created_at)
        VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`);
      const now = new Date().toISOString();
      for (const d of drives) {
        const id = `drive-${next++}`;
        insert.run(vmId, id, position++, d.volume, d.readOnly ? 1 : 0, d.cache, d.iops ?? null, state, now);
        ids.push(id);
      }
    })();
    this.onDrivesChanged();
    return ids.map((id) => this.drive(vmId, id)!);
  }

  setDriveState(vmId: string, driveId: string, state: DriveState): void {
    this.db.prepare('UPDATE vm_drives SET state = ? WHERE vm_id = ? AND id = ?').run(state, vmId, driveId);
    this.onDrivesChanged();
  }

  removeDrive(vmId: string, driveId: string): boolean {
    const gone = this.db.prepare('DELETE FROM vm_drives WHERE vm_id = ? AND id = ?').run(vmId, driveId).changes > 0;
    if (gone) this.onDrivesChanged();
    return gone;
  }

  private fromRow(r: VolumeRow): Volume {
    const v: Volume = {
      id: r.id, tenant: r.tenant_id, name: r.name, sizeMiB: Math.ceil(r.size_bytes / MiB),
      attachments: this.attachmentsOf(r.id).map((d) => ({ vm: d.vmId, vmName: d.vmName, drive: d.id, readOnly: d.readOnly, state: d.state })),
      createdAt: r.created_at, updatedAt: r.updated_at,
    };
    if (r.from_image !== null) v.fromImage = r.from_image;
    return v;
  }
}
