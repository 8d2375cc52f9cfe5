import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, mkdirSync, rmSync, writeFileSync, cpSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openDb, migrate, MIGRATIONS_DIR } from './index.js';
import { EventStore } from './events.js';
import { TokenStore, hashToken } from './tokens.js';
import { DEFAULT_TENANT, TenantStore } from './tenants.js';

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

test('tokens verify by hash only; new ones are cap_ + 64 hex digits; old-format ones still verify', () => {
  const dir = tmp();
  try {
    const db = openDb(join(dir, 'a.db'));
    const tenant = new TenantStore(db).getByName(DEFAULT_TENANT)!;
    const tokens = new TokenStore(db);
    const { token, record } = tokens.create({ tenantId: tenant.id, name: 'ci', scope: 'write' });
    assert.match(token, /^cap_[0-9a-f]{64}$/);
    assert.equal(tokens.verify(token)?.id, record.id);
    assert.equal(tokens.verify(token)?.scope, 'write');
    assert.equal(tokens.verify(token + 'x'), undefined);
    const stored = db.prepare('SELECT hash FROM tokens WHERE id = ?').pluck().get(record.id);
    assert.equal(stored, hashToken(token));
    assert.notEqual(stored, token);
    // A token of the old format (cap_ + base64url), as an older server made it.
    const old = 'cap_' + Buffer.alloc(32, 7).toString('base64url');
    db.prepare('INSERT INTO tokens (id, tenant_id, name, hash, scope, created_at) VALUES (?, ?, ?, ?, ?, ?)').run('old-1', tenant.id, 'old', hashToken(old), 'admin', new Date().toISOString());
    assert.equal(tokens.verify(old)?.id, 'old-1');
    // Revoking forgets the cached verification at once.
    assert.equal(tokens.revoke(record.id), true);
    assert.equal(tokens.verify(token), undefined);
    db.close();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('migrations 004+005 carry a 001+002 database over: a default tenant owns everything, the tokens become admin tokens', () => {
  const dir = tmp();
  try {
    const migrations = join(dir, 'migrations');
    mkdirSync(migrations);
    for (const f of ['001_init.sql', '002_volumes.sql']) cpSync(join(MIGRATIONS_DIR, f), join(migrations, f));
    const path = join(dir, 'old.db');
    let db = openDb(path, migrations);
    const now = '2026-11-01T00:00:00.000Z';
    db.prepare("INSERT INTO images (name, kernel, created_at, updated_at) VALUES ('default', '/k', ?, ?)").run(now, now);
    const vm = db.prepare(`INSERT INTO vms (id, name, state, image, hypervisor, vcpus, memory_mib, created_at, updated_at, balloon)
      VALUES (?, ?, ?, 'default', 'qemu', ?, ?, ?, ?, ?)`);
    vm.run('vm-a', 'alpha', 'stopped', 2, 256, now, now, 1);
    vm.run('vm-b', 'beta', 'running', 1, 128, now, now, 0);
    db.prepare('INSERT INTO volumes (id, name, size_bytes, created_at, updated_at) VALUES (?, ?, ?, ?, ?)').run('vol-1', 'data', 8 << 20, now, now);
    db.prepare("INSERT INTO vm_drives (vm_id, id, position, volume_id, read_only, created_at) VALUES ('vm-a', 'drive-0', 0, 'vol-1', 1, ?)").run(now);
    db.prepare("INSERT INTO tokens (id, name, hash, created_at) VALUES ('tok-admin', 'admin', ?, ?)").run(hashToken('cap_old-admin'), now);
    db.prepare("INSERT INTO events (vm_id, event, data, timestamp) VALUES ('vm-a', 'VM_CREATED', '{}', ?), ('vm-gone', 'VM_DELETED', '{}', ?)").run(now, now);
    db.close();

    cpSync(MIGRATIONS_DIR, migrations, { recursive: true }); // everything after 002: 004 (rootfs_device), 005 (tenants), 006 (network), 007 (metadata, lifetimes)
    db = openDb(path, migrations);
    const tenants = new TenantStore(db);
    const def = tenants.getByName(DEFAULT_TENANT)!;
    assert.match(def.id, /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
    assert.deepEqual(def.quotas, { vms: null, vcpus: null, memoryMiB: null, volumeMiB: null, snapshotMiB: null });
    // Every row kept, now the default tenant's; the drive (which references both rebuilt tables) survived.
    const rows = db.prepare('SELECT id, tenant_id, name, state, vcpus, memory_mib, balloon, rootfs_device FROM vms ORDER BY id').all();
    assert.deepEqual(rows, [
      { id: 'vm-a', tenant_id: def.id, name: 'alpha', state: 'stopped', vcpus: 2, memory_mib: 256, balloon: 1, rootfs_device: 'virtio-blk' },
      { id: 'vm-b', tenant_id: def.id, name: 'beta', state: 'running', vcpus: 1, memory_mib: 128, balloon: 0, rootfs_device: 'virtio-blk' },
    ]);
    assert.deepEqual(db.prepare('SELECT tenant_id, name, size_bytes FROM volumes').get(), { tenant_id: def.id, name: 'data', size_bytes: 8 << 20 });
    assert.deepEqual(db.prepare('SELECT vm_id, volume_id, read_only FROM vm_drives').all(), [{ vm_id: 'vm-a', volume_id: 'vol-1', read_only: 1 }]);
    const tokens = new TokenStore(db);
    assert.deepEqual(tokens.verify('cap_old-admin'), { id: 'tok-admin', tenantId: def.id, name: 'admin', scope: 'admin', createdAt: now });
    assert.deepEqual(db.prepare('SELECT vm_id, tenant_id FROM events ORDER BY seq').all(), [{ vm_id: 'vm-a', tenant_id: def.id }, { vm_id: 'vm-gone', tenant_id: def.id }]);
    // Names are unique per tenant now, and the foreign keys are on and hold.
    const other = tenants.create('other');
    const insert = db.prepare(`INSERT INTO vms (id, tenant_id, name, state, image, hypervisor, vcpus, memory_mib, created_at, updated_at)
      VALUES (?, ?, 'alpha', 'created', 'default', 'qemu', 1, 64, ?, ?)`);
    insert.run('vm-c', other.id, now, now);
    assert.throws(() => insert.run('vm-d', def.id, now, now), /UNIQUE/);
    assert.equal(db.pragma('foreign_keys', { simple: true }), 1);
    assert.throws(() => insert.run('vm-e', 'no-such-tenant', now, now), /FOREIGN KEY/);
    db.prepare("DELETE FROM vms WHERE id = 'vm-a'").run();
    assert.equal(db.prepare('SELECT count(*) FROM vm_drives').pluck().get(), 0, 'drives still cascade with their VM');
    // 006: VMs made before networks get one (egress on) at their next start; no address yet.
    assert.deepEqual(db.prepare("SELECT network_enabled, network_egress, network_slot FROM vms WHERE id = 'vm-b'").get(), { network_enabled: 1, network_egress: 1, network_slot: null });
    // 007: no metadata, no TTL; the metadata column holds only JSON objects.
    assert.deepEqual(db.prepare("SELECT metadata, timeout_sec, on_timeout, expires_at FROM vms WHERE id = 'vm-b'").get(), { metadata: '{}', timeout_sec: null, on_timeout: 'stop', expires_at: null });
    assert.throws(() => db.prepare("UPDATE vms SET metadata = '[1]' WHERE id = 'vm-b'").run(), /CHECK/);
    assert.deepEqual(db.prepare('SELECT version FROM schema_migrations').pluck().all(), [1, 2, 4, 5, 6, 7, 8, 9, 10, 11]);
    db.close();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('migration 005 on a database that already has 004 keeps each VM\'s rootfs device', () => {
  const dir = tmp();
  try {
    const migrations = join(dir, 'migrations');
    mkdirSync(migrations);
    for (const f of ['001_init.sql', '002_volumes.sql', '004_rootfs_device.sql']) cpSync(join(MIGRATIONS_DIR, f), join(migrations, f));
    const path = join(dir, 'old.db');
    let db = openDb(path, migrations);
    const now = '2026-11-01T00:00:00.000Z';
    db.prepare("INSERT INTO images (name, kernel, created_at, updated_at) VALUES ('sandbox', '/k', ?, ?)").run(now, now);
    db.prepare(`INSERT INTO vms (id, name, state, image, hypervisor, vcpus, memory_mib, created_at, updated_at, rootfs_device)
      VALUES ('vm-p', 'p', 'created', 'sandbox', 'native', 1, 256, ?, ?, 'pmem')`).run(now, now);
    db.close();
    cpSync(join(MIGRATIONS_DIR, '005_tenants.sql'), join(migrations, '005_tenants.sql'));
    db = openDb(path, migrations);
    assert.deepEqual(db.prepare('SELECT name, rootfs_device FROM vms').get(), { name: 'p', rootfs_device: 'pmem' });
    db.close();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
