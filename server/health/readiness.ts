// Readiness (GET /v1/health/ready): can this server do its job now? Unlike liveness (GET
// /v1/health: the process answers), each check here touches what a request would need:
//   - database: a real write in a transaction that is rolled back (the database opens a write
//     transaction: not read-only, not locked) and no write failing on the data directory;
//   - image: the default image is registered and its files are on disk;
//   - backend: at least one hypervisor can run VMs (native: /dev/kvm usable; QEMU: its binary).
// A load balancer or orchestrator routes to the server only while all pass. Messages name
// causes, never host paths: the endpoint is public.
import type { Db } from '../db/index.js';
import type { ImageStore } from '../db/images.js';
import type { StorageMonitor } from '../db/storage.js';
import type { HypervisorName } from '../db/vms.js';
import type { Hypervisor } from '../hypervisors/types.js';
import { existsSync } from 'node:fs';

export const DEFAULT_IMAGE = 'default';

export interface CheckResult {
  ok: boolean;
  message: string;
}

export type CheckName = 'database' | 'image' | 'backend';

export interface ReadinessReport {
  ready: boolean;
  checks: Record<CheckName, CheckResult>;
}

export interface ReadinessDeps {
  db: Db;
  images: ImageStore;
  hypervisors: ReadonlyMap<HypervisorName, Hypervisor>;
  storage?: StorageMonitor;
}

/** Thrown inside the probe transaction so that better-sqlite3 rolls it back. */
class RollBack extends Error {}

export class Readiness {
  private readonly probeWrite: () => void;

  constructor(private readonly d: ReadinessDeps) {
    // schema_migrations exists in every database (db/index.ts makes it before any migration),
    // and version -1 is never a migration's: the row cannot collide, and it never commits.
    const insert = d.db.prepare("INSERT INTO schema_migrations (version, name, applied_at) VALUES (-1, 'readiness probe', ?)");
    const tx = d.db.transaction(() => {
      insert.run(new Date().toISOString());
      throw new RollBack();
    });
    this.probeWrite = () => {
      try {
        tx.immediate();
      } catch (e) {
        if (!(e instanceof RollBack)) throw e;
      }
    };
  }

  check(): ReadinessReport {
    const checks = { database: this.database(), image: this.image(), backend: this.backend() };
    return { ready: Object.values(checks).every((c) => c.ok), checks };
  }

  private database(): CheckResult {
    try {
      this.probeWrite();
    } catch (e) {
      const code = (e as { code?: unknown }).code;
      return { ok: false, message: `the database refused a write (${typeof code === 'string' ? code : (e as Error).message})` };
    }
    const failing = this.d.storage?.status().lastError;
    if (failing) return { ok: false, message: `writes to the data directory fail (${failing.code} since ${failing.at})` };
    return { ok: true, message: 'writable' };
  }

  private image(): CheckResult {
    const image = this.d.images.get(DEFAULT_IMAGE);
    if (!image) return { ok: false, message: `no image named ${DEFAULT_IMAGE} is registered (CAPSULE_IMAGES_DIR)` };
    const files = [image.kernel, image.initrd, image.rootfs].filter((f): f is string => f !== undefined);
    const missing = files.filter((f) => !existsSync(f)).length;
    if (missing > 0) return { ok: false, message: `image ${DEFAULT_IMAGE}: ${missing} of its files ${missing === 1 ? 'is' : 'are'} missing on the host` };
    return { ok: true, message: `image ${DEFAULT_IMAGE} present` };
  }

  private backend(): CheckResult {
    const all = [...this.d.hypervisors.values()];
    const usable = all.filter((h) => h.availability().available).map((h) => h.name);
    if (usable.length === 0) {
      return { ok: false, message: `no backend can run VMs: ${all.map((h) => `${h.name}: ${h.availability().reason}`).join('; ')}` };
    }
    return { ok: true, message: `available: ${usable.join(', ')}` };
  }
}
