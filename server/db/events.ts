// Event history: every event gets a global sequence number and is kept (the newest
// `historyPerVm` per VM) so that subscribers can replay with ?since=SEQ. A deleted VM's events
// go with it (its VM_DELETED stays, among the newest `historyPerVm` deletions).
//
// Sequence numbers are handed out here, not by SQLite: an event that cannot be stored (disk
// full) still gets its number and is delivered live, so numbers stay increasing for clients
// that resume with ?since=; it is only missing from replays.
import type { Statement } from 'better-sqlite3';
import type { Db } from './index.js';
import { tryWrite, type StorageMonitor } from './storage.js';

export interface CapsuleEvent {
  seq: number;
  vm: string;
  event: string;
  data: Record<string, unknown>;
  timestamp: string;
}

interface EventRow { seq: number; vm_id: string; event: string; data: string; timestamp: string }
const fromRow = (r: EventRow): CapsuleEvent => ({ seq: r.seq, vm: r.vm_id, event: r.event, data: JSON.parse(r.data) as Record<string, unknown>, timestamp: r.timestamp });

/** Which events a reader sees: one VM's, one tenant's, or (neither) all. */
export interface EventFilter {
  vm?: string | undefined;
  tenant?: string | undefined;
}

export class EventStore {
  private readonly insertStmt;
  private readonly pruneStmt;
  private readonly pruneDeletionsStmt;
  private readonly purgeVmStmt;
  /** Per filter shape (all, vm, tenant, vm+tenant): the replay queries. */
  private readonly filtered = new Map<string, { since: Statement; nthNewest: Statement; countBetween: Statement }>();
  private insertsSincePrune = 0;
  private seq: number;

  constructor(private readonly db: Db, private readonly historyPerVm: number, private readonly storage?: StorageMonitor) {
    this.insertStmt = db.prepare('INSERT INTO events (seq, vm_id, tenant_id, event, data, timestamp) VALUES (?, ?, ?, ?, ?, ?)');
    this.pruneStmt = db.prepare(`DELETE FROM events WHERE seq IN (
        SELECT seq FROM (SELECT seq, row_number() OVER (PARTITION BY vm_id ORDER BY seq DESC) AS rn FROM events) WHERE rn > ?)`);
    this.pruneDeletionsStmt = db.prepare(`DELETE FROM events WHERE event = 'VM_DELETED' AND seq NOT IN (
        SELECT seq FROM events WHERE event = 'VM_DELETED' ORDER BY seq DESC LIMIT ?)`);
    this.purgeVmStmt = db.prepare(`DELETE FROM events WHERE vm_id = ? AND event != 'VM_DELETED'`);
    // AUTOINCREMENT's high-water mark, so that numbers are never reused after deletions.
    const high = db.prepare(`SELECT max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'events'), 0), coalesce((SELECT max(seq) FROM events), 0))`).pluck().get();
    this.seq = Number(high ?? 0);
  }

  /** The replay statements for a filter; their leading parameters are the filter's values (vm, tenant). */
  private queries(f: EventFilter): { since: Statement; nthNewest: Statement; countBetween: Statement; args: string[] } {
    const conds: string[] = [];
    const args: string[] = [];
    if (f.vm !== undefined) { conds.push('vm_id = ?'); args.push(f.vm); }
    if (f.tenant !== undefined) { conds.push('tenant_id = ?'); args.push(f.tenant); }
    const key = conds.join(' AND ');
    let q = this.filtered.get(key);
    if (!q) {
      const where = conds.map((c) => `${c} AND `).join('');
      q = {
        since: this.db.prepare(`SELECT * FROM events WHERE ${where}seq > ? ORDER BY seq LIMIT ?`),
        nthNewest: this.db.prepare(`SELECT seq FROM events WHERE ${where}seq > ? ORDER BY seq DESC LIMIT 1 OFFSET ?`).pluck(),
        countBetween: this.db.prepare(`SELECT count(*) FROM events WHERE ${where}seq > ? AND seq < ?`).pluck(),
      };
      this.filtered.set(key, q);
    }
    return { ...q, args };
  }

  /** Stores the event; a storage failure is counted, not thrown (the event is still returned). */
  append(vm: string, event: string, data: Record<string, unknown>, tenant: string | null = null): CapsuleEvent {
    const timestamp = new Date().toISOString();
    const seq = ++this.seq;
    if (!tryWrite(this.storage, 'event', () => this.insertStmt.run(seq, vm, tenant, event, JSON.stringify(data), timestamp))) {
      if (this.storage) this.storage.eventsNotStored++;
      return { seq, vm, event, data, timestamp };
    }
    // Pruning is a full scan: do it now and then, not on every insert.
    if (++this.insertsSincePrune >= Math.max(50, this.historyPerVm / 10)) this.prune();
    return { seq, vm, event, data, timestamp };
  }

  prune(): void {
    this.insertsSincePrune = 0;
    tryWrite(this.storage, 'event prune', () => {
      this.pruneStmt.run(this.historyPerVm);
      this.pruneDeletionsStmt.run(this.historyPerVm);
    });
  }

  /** Removes a deleted VM's events but its VM_DELETED. */
  purgeVm(vm: string): void {
    tryWrite(this.storage, 'event purge', () => this.purgeVmStmt.run(vm));
  }

  /**
   * Where a replay after `seq` starts when at most `limit` events may be replayed: the cursor
   * to read from, and how many older events that skips (0 when everything fits).
   */
  replayStart(seq: number, filter: EventFilter | string | undefined, limit: number): { cursor: number; skipped: number; firstSkipped: number } {
    const q = this.queries(asFilter(filter));
    const nth = q.nthNewest.get(...q.args, seq, limit - 1) as number | undefined;
    if (nth === undefined) return { cursor: seq, skipped: 0, firstSkipped: 0 };
    const skipped = Number(q.countBetween.get(...q.args, seq, nth));
    return { cursor: nth - 1, skipped, firstSkipped: seq + 1 };
  }

  /** Stored events after `seq`; `filter` is a VM id or an EventFilter. */
  since(seq: number, filter?: EventFilter | string, limit = 100_000): CapsuleEvent[] {
    const q = this.queries(asFilter(filter));
    return (q.since.all(...q.args, seq, limit) as EventRow[]).map(fromRow);
  }
}

const asFilter = (f: EventFilter | string | undefined): EventFilter => (typeof f === 'string' ? { vm: f } : f ?? {});
