// The data directory's health: which write failures mean "the disk", how much room is left,
// and what could not be saved. A full disk must never take the server down or cost a running
// VM its VMM: stores catch these errors, keep what they could not write in memory (VM states)
// or deliver it unsaved (events), and report here; GET /v1/health shows it.
import { statfsSync } from 'node:fs';
import type { Logger } from 'pino';

const DISK_ERRNOS = new Set(['ENOSPC', 'EDQUOT', 'EIO', 'EROFS']);

/** SQLite and filesystem errors that come from the storage, not from a bug or bad input. */
export function isStorageError(e: unknown): e is Error & { code: string } {
  const code = (e as { code?: unknown } | null)?.code;
  if (typeof code !== 'string') return false;
  return code === 'SQLITE_FULL' || code.startsWith('SQLITE_IOERR') || code === 'SQLITE_READONLY' || code === 'SQLITE_CANTOPEN' || DISK_ERRNOS.has(code);
}

/** True when the storage error means "no space" (HTTP 507) rather than "broken" (503). */
export function isNoSpace(e: { code: string }): boolean {
  return e.code === 'SQLITE_FULL' || e.code === 'ENOSPC' || e.code === 'EDQUOT';
}

/**
 * Runs one write against the data directory. A storage error is recorded on `storage` (as
 * `what`) and answered with false instead of thrown; success is recorded too. Any other error
 * is a bug, and is thrown.
 */
export function tryWrite(storage: StorageMonitor | undefined, what: string, write: () => void): boolean {
  try {
    write();
  } catch (e) {
    if (!isStorageError(e)) throw e;
    storage?.failed(e, what);
    return false;
  }
  storage?.succeeded();
  return true;
}

export interface StorageStatus {
  /** No write has failed since the last one that succeeded, and there is room above the low mark. */
  ok: boolean;
  freeBytes: number;
  totalBytes: number;
  /** Below this much free space the data directory counts as low. */
  lowBytes: number;
  low: boolean;
  /** The last write failure, if writes still fail. */
  lastError?: { code: string; message: string; at: string };
  /** Events delivered live but not stored since the server started (not replayable). */
  eventsNotStored: number;
  /** VM state changes kept in memory only, waiting for room to be saved. */
  statesNotSaved: number;
}

export class StorageMonitor {
  private lastError: StorageStatus['lastError'];
  private lastLogged = 0;
  eventsNotStored = 0;
  /** Set by the VM store: how many state changes wait in memory. */
  statesNotSaved: () => number = () => 0;

  constructor(private readonly dataDir: string, private readonly lowBytes: number, private readonly log?: Logger) {}

  /** A write failed with a storage error: remember it and log it (at most every 10 s). */
  failed(e: Error & { code: string }, what: string): void {
    this.lastError = { code: e.code, message: e.message, at: new Date().toISOString() };
    const now = Date.now();
    if (now - this.lastLogged > 10_000) {
      this.lastLogged = now;
      this.log?.error({ code: e.code, err: e.message, what, dataDir: this.dataDir }, 'data directory write failed');
    }
  }

  /** A write went through: the storage works again. */
  succeeded(): void {
    if (this.lastError) this.log?.info({ dataDir: this.dataDir }, 'data directory writable again');
    this.lastError = undefined;
  }

  status(): StorageStatus {
    let freeBytes = 0;
    let totalBytes = 0;
    try {
      const st = statfsSync(this.dataDir);
      freeBytes = Number(st.bavail) * Number(st.bsize);
      totalBytes = Number(st.blocks) * Number(st.bsize);
    } catch {
      /* reported as 0 free: low */
    }
    const low = freeBytes < this.lowBytes;
    const status: StorageStatus = {
      ok: !low && this.lastError === undefined,
      freeBytes, totalBytes, lowBytes: this.lowBytes, low,
      eventsNotStored: this.eventsNotStored,
      statesNotSaved: this.statesNotSaved(),
    };
    if (this.lastError) status.lastError = this.lastError;
    return status;
  }
}
