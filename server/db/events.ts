// Event history: every event gets a global sequence number and is kept (the newest
// `historyPerVm` per VM) so that subscribers can replay with ?since=SEQ.
import type { Db } from './index.js';

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
  private insertsSincePrune = 0;

  constructor(private readonly db: Db, private readonly historyPerVm: number) {
    this.insertStmt = db.prepare('INSERT INTO events (vm_id, event, data, timestamp) VALUES (?, ?, ?, ?)');
    this.sinceAllStmt = db.prepare('SELECT * FROM events WHERE seq > ? ORDER BY seq LIMIT ?');
    this.sinceVmStmt = db.prepare('SELECT * FROM events WHERE vm_id = ? AND seq > ? ORDER BY seq LIMIT ?');
    this.pruneStmt = db.prepare(`DELETE FROM events WHERE seq IN (
        SELECT seq FROM (SELECT seq, row_number() OVER (PARTITION BY vm_id ORDER BY seq DESC) AS rn FROM events) WHERE rn > ?)`);
  }

  append(vm: string, event: string, data: Record<string, unknown>): CapsuleEvent {
    const timestamp = new Date().toISOString();
    const seq = Number(this.insertStmt.run(vm, event, JSON.stringify(data), timestamp).lastInsertRowid);
    // Pruning is a full scan: do it now and then, not on every insert.
    if (++this.insertsSincePrune >= Math.max(50, this.historyPerVm / 10)) this.prune();
    return { seq, vm, event, data, timestamp };
  }

  prune(): void {
    this.insertsSincePrune = 0;
    this.pruneStmt.run(this.historyPerVm);
  }

  since(seq: number, vm?: string, limit = 100_000): CapsuleEvent[] {
    const rows = (vm === undefined ? this.sinceAllStmt.all(seq, limit) : this.sinceVmStmt.all(vm, seq, limit)) as EventRow[];
    return rows.map(fromRow);
  }
}
