// Guest images registered server-side. Clients name an image; they never give a host path.
import type { Db } from './index.js';

export interface Image {
  name: string;
  description: string;
  kernel: string;
  initrd?: string;
  cmdline: string;
  readyMarker?: string;
  createdAt: string;
  updatedAt: string;
}

interface ImageRow {
  name: string; description: string; kernel: string; initrd: string | null; cmdline: string;
  ready_marker: string | null; created_at: string; updated_at: string;
}

function fromRow(r: ImageRow): Image {
  const img: Image = { name: r.name, description: r.description, kernel: r.kernel, cmdline: r.cmdline, createdAt: r.created_at, updatedAt: r.updated_at };
  if (r.initrd !== null) img.initrd = r.initrd;
  if (r.ready_marker !== null) img.readyMarker = r.ready_marker;
  return img;
}

export class ImageStore {
  constructor(private readonly db: Db) {}

  upsert(img: Omit<Image, 'createdAt' | 'updatedAt'>): Image {
    const now = new Date().toISOString();
    this.db.prepare(`INSERT INTO images (name, description, kernel, initrd, cmdline, ready_marker, created_at, updated_at)
        VALUES (@name, @description, @kernel, @initrd, @cmdline, @readyMarker, @now, @now)
        ON CONFLICT(name) DO UPDATE SET description = excluded.description, kernel = excluded.kernel, initrd = excluded.initrd,
          cmdline = excluded.cmdline, ready_marker = excluded.ready_marker, updated_at = excluded.updated_at`)
      .run({ ...img, initrd: img.initrd ?? null, readyMarker: img.readyMarker ?? null, now });
    return this.get(img.name)!;
  }

  get(name: string): Image | undefined {
    const r = this.db.prepare('SELECT * FROM images WHERE name = ?').get(name) as ImageRow | undefined;
    return r && fromRow(r);
  }

  list(): Image[] {
    return (this.db.prepare('SELECT * FROM images ORDER BY name').all() as ImageRow[]).map(fromRow);
  }
}
