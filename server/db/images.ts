// Guest images registered server-side. Clients name an image; they never give a host path.
import type { Db } from './index.js';

export interface Image {
  name: string;
  description: string;
  kernel: string;
  initrd?: string;
  /**
   * An ext4 root filesystem (raw file). A VM of this image gets it read-only as its first disk
   * (vda) and a writable layer of its own as the second (vdb); the image's initramfs mounts
   * the overlay. Volumes can be made from it (fromImage).
   */
  rootfs?: string;
  cmdline: string;
  readyMarker?: string;
  createdAt: string;
  updatedAt: string;
}

interface ImageRow {
  name: string; description: string; kernel: string; initrd: string | null; rootfs: string | null; cmdline: string;
  ready_marker: string | null; created_at: string; updated_at: string;
}

function fromRow(r: ImageRow): Image {
  const img: Image = { name: r.name, description: r.description, kernel: r.kernel, cmdline: r.cmdline, createdAt: r.created_at, updatedAt: r.updated_at };
  if (r.initrd !== null) img.initrd = r.initrd;
  if (r.rootfs !== null) img.rootfs = r.rootfs;
  if (r.ready_marker !== null) img.readyMarker = r.ready_marker;
  return img;
}

export class ImageStore {
  constructor(private readonly db: Db) {}

  upsert(img: Omit<Image, 'createdAt' | 'updatedAt'>): Image {
    const now = new Date().toISOString();
    this.db.prepare(`INSERT INTO images (name, description, kernel, initrd, rootfs, cmdline, ready_marker, created_at, updated_at)
        VALUES (@name, @description, @kernel, @initrd, @rootfs, @cmdline, @readyMarker, @now, @now)
        ON CONFLICT(name) DO UPDATE SET description = excluded.description, kernel = excluded.kernel, initrd = excluded.initrd,
          rootfs = excluded.rootfs, cmdline = excluded.cmdline, ready_marker = excluded.ready_marker, updated_at = excluded.updated_at`)
      .run({ name: img.name, description: img.description, kernel: img.kernel, cmdline: img.cmdline, initrd: img.initrd ?? null, rootfs: img.rootfs ?? null, readyMarker: img.readyMarker ?? null, now });
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
