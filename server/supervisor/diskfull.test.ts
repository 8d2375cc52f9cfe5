// H1: the data directory on a small real filesystem (a tmpfs), filled up while a VM runs.
// Writes fail as clear 507s, events are still delivered live and counted, health says so,
// a restart while full reattaches the VM instead of killing it, and once there is room again
// the states kept in memory are saved.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, rmSync, rmdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { TestServer, EventCollector, waitFor } from '../test/harness.js';
import { isAlive } from './process.js';
import { writeFigures } from '../test/figures.js';

const root = process.getuid?.() === 0;
const mnt = mkdtempSync(join(tmpdir(), 'capsule-full-'));
let s: TestServer | undefined;

after(async () => {
  await s?.stop().catch(() => undefined);
  try { execFileSync('umount', ['-l', mnt]); } catch { /* not mounted */ }
  try { rmdirSync(mnt); } catch { /* left for tmp cleaners */ }
});

/** Fills the filesystem: dd stops at ENOSPC. */
function fill(path: string): void {
  try {
    execFileSync('dd', ['if=/dev/zero', `of=${path}`, 'bs=64k'], { stdio: 'ignore' });
  } catch { /* ENOSPC is the point */ }
}

const dbPath = () => join(mnt, 'data', 'capsule.db');

/** Moves the WAL's content into the database and empties it, so that the next write must grow it. */
function truncateWal(): void {
  const db = new Database(dbPath());
  try { db.pragma('wal_checkpoint(TRUNCATE)'); } finally { db.close(); }
}

test('H1: a full data directory gives 507s, keeps the VM running, and recovers', { skip: !root && 'needs root (mount)' }, async () => {
  execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=24m', 'capsule-test-full', mnt]);
  const dataDir = join(mnt, 'data');
  mkdirSync(dataDir);
  s = await TestServer.start({ dataDir, env: { CAPSULE_MIN_FREE_MIB: '4' } });
  const id = (await s.api('POST', '/v1/vms', { name: 'full-1', memoryMiB: 256 })).body.id as string;
  const started = await s.api('POST', `/v1/vms/${id}/start`);
  assert.equal(started.status, 200, JSON.stringify(started.body));
  const pid = started.body.pid as number;
  const events = new EventCollector(s.ws(`/v1/vms/${id}/events`));
  await events.opened;
  assert.equal((await (await fetch(`${s.url}/v1/health`)).json() as any).storage.ok, true);

  truncateWal();
  fill(join(mnt, 'fill'));

  // A definition cannot be saved: a clear 507, nothing half-done.
  const created = await s.api('POST', '/v1/vms', { name: 'full-2' });
  assert.equal(created.status, 507, JSON.stringify(created.body));
  assert.equal(created.body.error.code, 'insufficient_storage');
  assert.match(created.body.error.message, /full/);
  const server = s;
  await waitFor('the failure logged', () => /data directory write failed/.test(server.output) || undefined, 5000);

  // Pausing still works: the STOP event reaches the subscriber live though it cannot be stored.
  const paused = await s.api('POST', `/v1/vms/${id}/pause`);
  assert.equal(paused.status, 200, JSON.stringify(paused.body));
  assert.equal(paused.body.state, 'paused');
  await events.waitFor('STOP', () => true, 10_000);
  const health = await (await fetch(`${s.url}/v1/health`)).json() as any;
  assert.equal(health.storage.ok, false);
  assert.equal(health.storage.low, true);
  assert.ok(health.storage.eventsNotStored >= 1, JSON.stringify(health.storage));
  assert.ok(health.storage.statesNotSaved >= 1, JSON.stringify(health.storage));
  assert.match(health.storage.lastError.code, /SQLITE_FULL|SQLITE_IOERR/);
  assert.ok(isAlive(pid), 'the VMM runs');

  // A restart while full reattaches (the VMM is not killed) and reads the real run state.
  await s.kill9();
  await s.launch();
  const after = await s.api('GET', `/v1/vms/${id}`);
  assert.equal(after.body.state, 'paused', JSON.stringify(after.body));
  assert.ok(isAlive(pid), 'the VMM survived a restart on a full disk');
  assert.doesNotMatch(s.output, /alive but unreachable/);
  const resumed = await s.api('POST', `/v1/vms/${id}/resume`);
  assert.equal(resumed.status, 200, JSON.stringify(resumed.body));

  // Room again: the state kept in memory is saved within the retry period.
  rmSync(join(mnt, 'fill'));
  await waitFor('the state saved', () => {
    const db = new Database(dbPath(), { readonly: true });
    try { return (db.prepare('SELECT state FROM vms WHERE id = ?').pluck().get(id) === 'running') || undefined; } finally { db.close(); }
  }, 15_000);
  assert.equal((await s.api('POST', '/v1/vms', { name: 'full-3' })).status, 201);
  const url = s.url;
  await waitFor('health ok', async () => ((await (await fetch(`${url}/v1/health`)).json() as any).storage.ok) || undefined, 10_000);
  const stopped = await s.api('POST', `/v1/vms/${id}/stop?force=true`);
  assert.equal(stopped.body.state, 'stopped');
  events.close();
});

// Issue 10's drill: every kind of API write on a full data directory, counted. Each answer is a
// success or a clear 507/503 (never a 500), the SQLite file passes `PRAGMA integrity_check` while
// full, after a restart while full and after recovery, a refused volume leaves no file, and once
// there is room every kind of write works again.
const mnt2 = mkdtempSync(join(tmpdir(), 'capsule-full2-'));
let s2: TestServer | undefined;
after(async () => {
  await s2?.stop().catch(() => undefined);
  try { execFileSync('umount', ['-l', mnt2]); } catch { /* not mounted */ }
  try { rmdirSync(mnt2); } catch { /* left for tmp cleaners */ }
});

test('full data directory drill: every write kind answers 2xx or 507/503, never 500; integrity_check ok throughout; recovery', { skip: !root && 'needs root (mount)' }, async () => {
  execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=24m', 'capsule-test-full2', mnt2]);
  const dataDir = join(mnt2, 'data');
  mkdirSync(dataDir);
  s2 = await TestServer.start({ dataDir, env: { CAPSULE_MIN_FREE_MIB: '4', CAPSULE_RATE_LIMIT: '100000', CAPSULE_RATE_BURST: '100000' } });
  const srv = s2;
  const db = join(dataDir, 'capsule.db');
  const integrity = () => {
    const d = new Database(db, { readonly: true });
    try { return d.pragma('integrity_check', { simple: true }); } finally { d.close(); }
  };
  const vm = (await srv.api('POST', '/v1/vms', { name: 'keep' })).body.id as string;
  const tenant = (await srv.api('POST', '/v1/tenants', { name: 'full-t' })).body.id as string;
  const writes: Array<[string, string, unknown?]> = [
    ['POST', '/v1/vms', { name: 'n-vm' }],
    ['POST', '/v1/volumes', { name: 'n-vol', sizeMiB: 1 }],
    ['POST', '/v1/tenants', { name: 'n-tenant' }],
    ['POST', '/v1/tokens', { name: 'n-token', scope: 'read' }],
    ['PATCH', `/v1/tenants/${tenant}`, { quotas: { vms: 5 } }],
    ['DELETE', `/v1/vms/${vm}`],
  ];
  const answers: Record<string, number[]> = {};
  const sendAll = async (phase: string) => {
    for (const [method, path, body] of writes) {
      const key = `${method} ${path.replace(/[0-9a-f-]{36}/, ':id')}`;
      const r = await srv.api(method, path, body);
      (answers[`${phase}: ${key}`] ??= []).push(r.status);
      assert.ok(r.status < 300 || r.status === 507 || r.status === 503 || r.status === 409, `${phase} ${key}: ${r.status} ${JSON.stringify(r.body)}`);
      if (r.status === 507) assert.equal(r.body.error.code, 'insufficient_storage');
      if (r.status === 503) assert.equal(r.body.error.code, 'storage_unavailable');
    }
  };

  truncateWalOf(db);
  fill(join(mnt2, 'fill'));
  await sendAll('full');
  const refused = Object.values(answers).flat().filter((x) => x === 507 || x === 503).length;
  assert.ok(refused >= 3, `writes refused while full: ${JSON.stringify(answers)}`);
  assert.equal(integrity(), 'ok', 'while full');
  // A volume the database refused leaves no file behind.
  const files = () => readdirSync(join(dataDir, 'volumes')).filter((f) => f.endsWith('.img')).length;
  const rows = () => (srv.api('GET', '/v1/volumes').then((r) => r.body.items.length as number));
  assert.equal(files(), await rows(), 'volume files match volume rows while full');

  await srv.kill9();
  await srv.launch();
  assert.equal(integrity(), 'ok', 'after a restart while full');
  assert.equal((await fetch(`${srv.url}/v1/health`)).status, 200);

  rmSync(join(mnt2, 'fill'));
  await waitFor('health ok', async () => ((await (await fetch(`${srv.url}/v1/health`)).json() as any).storage.ok) || undefined, 15_000);
  writes[0]![2] = { name: 'n-vm-2' };
  await sendAll('recovered');
  for (const [k, v] of Object.entries(answers)) if (k.startsWith('recovered')) assert.ok(v.every((x) => x < 300), `${k}: ${v}`);
  assert.equal(integrity(), 'ok', 'after recovery');
  assert.equal(files(), await rows(), 'volume files match volume rows after recovery');
  writeFigures('disk-full', { tmpfsMiB: 24, answers, refusedWhileFull: refused, fiveHundreds: 0, integrityCheck: { whileFull: 'ok', afterRestartWhileFull: 'ok', afterRecovery: 'ok' }, recovered: true });
});

function truncateWalOf(path: string): void {
  const d = new Database(path);
  try { d.pragma('wal_checkpoint(TRUNCATE)'); } finally { d.close(); }
}
