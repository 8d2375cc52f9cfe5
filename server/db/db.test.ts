import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync, cpSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openDb, migrate, MIGRATIONS_DIR } from './index.js';
import { EventStore } from './events.js';
import { TokenStore, hashToken } from './tokens.js';

const tmp = () => mkdtempSync(join(tmpdir(), 'capsule-db-'));

test('migrations apply in order, once, in a transaction', () => {
  const dir = tmp();
  try {
    const migrations = join(dir, 'migrations');
    cpSync(MIGRATIONS_DIR, migrations, { recursive: true });
    const db = openDb(join(dir, 'a.db'), migrations);
    assert.deepEqual(migrate(db, migrations), [], 'nothing twice');
    writeFileSync(join(migrations, '900_broken.sql'), 'CREATE TABLE t2 (x); THIS IS NOT SQL;');
    assert.throws(() => migrate(db, migrations));
    assert.equal(db.prepare("SELECT count(*) FROM sqlite_master WHERE name = 't2'").pluck().get(), 0, 'rolled back');
    writeFileSync(join(migrations, '900_broken.sql'), 'CREATE TABLE t2 (x);');
    assert.deepEqual(migrate(db, migrations), [900]);
    db.close();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('events get increasing seqs, replay after a seq, and prune per VM', () => {
  const dir = tmp();
  try {
    const db = openDb(join(dir, 'a.db'));
    const store = new EventStore(db, 10);
    for (let i = 0; i < 30; i++) store.append(i % 2 ? 'a' : 'b', 'E', { i });
    const all = store.since(0);
    assert.deepEqual(all.map((e) => e.seq), [...all.map((e) => e.seq)].sort((x, y) => x - y));
    assert.equal(store.since(0, 'a').length, 15);
    store.prune();
    assert.equal(store.since(0, 'a').length, 10);
    assert.equal(store.since(0, 'b').length, 10);
    assert.deepEqual(store.since(25).map((e) => e.data.i), [25, 26, 27, 28, 29]);
    db.close();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('tokens verify by hash only', () => {
  const dir = tmp();
  try {
    const db = openDb(join(dir, 'a.db'));
    const tokens = new TokenStore(db);
    const { token, record } = tokens.create('ci');
    assert.equal(tokens.verify(token)?.id, record.id);
    assert.equal(tokens.verify(token + 'x'), undefined);
    const stored = db.prepare('SELECT hash FROM tokens').pluck().get();
    assert.equal(stored, hashToken(token));
    assert.notEqual(stored, token);
    db.close();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
