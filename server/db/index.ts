// SQLite: open in WAL mode and apply the numbered migrations in migrations/ in order.
import Database from 'better-sqlite3';
import { chmodSync, closeSync, existsSync, openSync, readdirSync, readFileSync, mkdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { REPO_ROOT } from '../paths.js';

export type Db = Database.Database;

/** migrations/ at the repository root, found from dist/server/db or server/db. */
export const MIGRATIONS_DIR = join(REPO_ROOT, 'migrations');

export function openDb(path: string, migrationsDir = MIGRATIONS_DIR): Db {
  mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
  // Created 0600 before SQLite opens it: SQLite gives the -wal and -shm files the database
  // file's mode. An older database made with the default umask is tightened too.
  closeSync(openSync(path, 'a', 0o600));
  for (const f of [path, `${path}-wal`, `${path}-shm`]) if (existsSync(f)) chmodSync(f, 0o600);
  const db = new Database(path);
  db.pragma('journal_mode = WAL');
  db.pragma('synchronous = NORMAL');
  db.pragma('foreign_keys = ON');
  db.pragma('busy_timeout = 5000');
  migrate(db, migrationsDir);
  return db;
}

/** Applies each not-yet-applied NNN_name.sql in one transaction; returns the versions applied. */
export function migrate(db: Db, migrationsDir: string): number[] {
  db.exec('CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)');
  const applied = new Set(db.prepare('SELECT version FROM schema_migrations').pluck().all() as number[]);
  const files = readdirSync(migrationsDir)
    .map((name) => ({ name, m: /^(\d+)_.*\.sql$/.exec(name) }))
    .filter((f): f is { name: string; m: RegExpExecArray } => f.m !== null)
    .map((f) => ({ name: f.name, version: Number(f.m[1]) }))
    .sort((a, b) => a.version - b.version);
  const pending = files.filter((f) => !applied.has(f.version));
  if (pending.length === 0) return [];
  const record = db.prepare('INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)');
  // Foreign keys off while migrating, as SQLite's procedure for rebuilding a table says
  // (https://sqlite.org/lang_altertable.html#otheralter): with them on, dropping the old table
  // would cascade into the tables that reference it. They are checked before the commit.
  // (The pragma is a no-op inside a transaction, so it is set around it.)
  const foreignKeys = db.pragma('foreign_keys', { simple: true }) as number;
  db.pragma('foreign_keys = OFF');
  try {
    db.transaction(() => {
      for (const f of pending) {
        db.exec(readFileSync(join(migrationsDir, f.name), 'utf8'));
        record.run(f.version, f.name, new Date().toISOString());
      }
      const broken = db.pragma('foreign_key_check') as unknown[];
      if (broken.length > 0) throw new Error(`migrations left ${broken.length} broken foreign key reference(s): ${JSON.stringify(broken[0])}`);
    })();
  } finally {
    db.pragma(`foreign_keys = ${foreignKeys ? 'ON' : 'OFF'}`);
  }
  return pending.map((f) => f.version);
}
