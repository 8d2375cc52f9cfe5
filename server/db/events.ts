// Event history: every event gets a global sequence number and is kept (the newest
// `historyPerVm` per VM) so that subscribers can replay with ?since=SEQ. A deleted VM's events
// go with it (its VM_DELETED stays, among the newest `historyPerVm` deletions).
//
// Sequence numbers are handed out here, not by SQLite: an event that cannot be stored (disk
// full) still gets its number and is delivered live, so numbers stay increasing for clients
// that resume with ?since=; it is only missing from replays.
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

export class EventStore {
  private readonly insertStmt;
  private readonly sinceAllStmt;
  private readonly sinceVmStmt;
  private readonly pruneStmt;
  private readonly pruneDeletionsStmt;
  private readonly purgeVmStmt;
  private readonly nthNewestAllStmt;
  private readonly nthNewestVmStmt;
  private readonly countBetweenAllStmt;
  private readonly countBetweenVmStmt;
  private insertsSincePrune = 0;
  private seq: number;

  constructor(private readonly db: Db, private readonly historyPerVm: number, private readonly storage?: StorageMonitor) {
    this.insertStmt = db.prepare('INSERT INTO events (seq, vm_id, event, data, timestamp) VALUES (?, ?, ?, ?, ?)');
    this.sinceAllStmt = db.prepare('SELECT * FROM events WHERE seq > ? ORDER BY seq LIMIT ?');
    this.sinceVmStmt = db.prepare('SELECT * FROM events WHERE vm_id = ? AND seq > ? ORDER BY seq LIMIT ?');
    this.pruneStmt = db.prepare(`DELETE FROM events WHERE seq IN (
        SELECT seq FROM (SELECT seq, row_number() OVER (PARTITION BY vm_id ORDER BY seq DESC) AS rn FROM events) WHERE rn > ?)`);
    this.pruneDeletionsStmt = db.prepare(`DELETE FROM events WHERE event = 'VM_DELETED' AND seq NOT IN (
        SELECT seq FROM events WHERE event = 'VM_DELETED' ORDER BY seq DESC LIMIT ?)`);
    this.purgeVmStmt = db.prepare(`DELETE FROM events WHERE vm_id = ? AND event != 'VM_DELETED'`);
    this.nthNewestAllStmt = db.prepare('SELECT seq FROM events WHERE seq > ? ORDER BY seq DESC LIMIT 1 OFFSET ?').pluck();
    this.nthNewestVmStmt = db.prepare('SELECT seq FROM events WHERE vm_id = ? AND seq > ? ORDER BY seq DESC LIMIT 1 OFFSET ?').pluck();
    this.countBetweenAllStmt = db.prepare('SELECT count(*) FROM events WHERE seq > ? AND seq < ?').pluck();
    this.countBetweenVmStmt = db.prepare('SELECT count(*) FROM events WHERE vm_id = ? AND seq > ? AND seq < ?').pluck();
    // AUTOINCREMENT's high-water mark, so that numbers are never reused after deletions.
    const high = db.prepare(`SELECT max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'events'), 0), coalesce((SELECT max(seq) FROM events), 0))`).pluck().get();
    this.seq = Number(high ?? 0);
  }

  /** Stores the event; a storage failure is counted, not thrown (the event is still returned). */
  append(vm: string, event: string, data: Record<string, unknown>): CapsuleEvent {
    const timestamp = new Date().toISOString();
    const seq = ++this.seq;
    if (!tryWrite(this.storage, 'event', () => this.insertStmt.run(seq, vm, event, JSON.stringify(data), timestamp))) {
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
  replayStart(seq: number, vm: string | undefined, limit: number): { cursor: number; skipped: number; firstSkipped: number } {
    const nth = (vm === undefined ? this.nthNewestAllStmt.get(seq, limit - 1) : this.nthNewestVmStmt.get(vm, seq, limit - 1)) as number | undefined;
    if (nth === undefined) return { cursor: seq, skipped: 0, firstSkipped: 0 };
    const skipped = Number(vm === undefined ? this.countBetweenAllStmt.get(seq, nth) : this.countBetweenVmStmt.get(vm, seq, nth));
    return { cursor: nth - 1, skipped, firstSkipped: seq + 1 };
  }

  since(seq: number, vm?: string, limit = 100_000): CapsuleEvent[] {
    const rows = (vm === undefined ? this.sinceAllStmt.all(seq, limit) : this.sinceVmStmt.all(vm, seq, limit)) as EventRow[];
    return rows.map(fromRow);
  }
}
