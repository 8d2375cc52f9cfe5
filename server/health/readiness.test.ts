// Liveness and readiness: GET /v1/health keeps its shape; GET /v1/health/ready is 200 when the
// server can do its job and 503 naming each failing check when it cannot.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import Database from 'better-sqlite3';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { TestServer } from '../test/harness.js';
import { openDb } from '../db/index.js';
import { ImageStore } from '../db/images.js';
import { Readiness } from './readiness.js';
import type { Hypervisor } from '../hypervisors/types.js';
import type { HypervisorName } from '../db/vms.js';

test('a working server is live and ready, without a token', async () => {
  const s = await TestServer.start();
  try {
    const live = await fetch(`${s.url}/v1/health`);
    assert.equal(live.status, 200);
    const body = await live.json() as Record<string, unknown>;
    assert.equal(body.status, 'ok');
    for (const key of ['kvm', 'hypervisors', 'details', 'jail', 'storage']) assert.ok(key in body, key);
    const ready = await fetch(`${s.url}/v1/health/ready`);
    assert.equal(ready.status, 200);
    const r = await ready.json() as { status: string; checks: Record<string, { ok: boolean; message: string }> };
    assert.equal(r.status, 'ready');
    assert.deepEqual(Object.keys(r.checks).sort(), ['backend', 'database', 'image']);
    assert.ok(Object.values(r.checks).every((c) => c.ok));
    // The probe's write was rolled back.
    const db = new Database(join(s.dataDir, 'capsule.db'), { readonly: true });
    try { assert.equal(db.prepare('SELECT count(*) FROM schema_migrations WHERE version < 0').pluck().get(), 0); } finally { db.close(); }
  } finally {
    await s.stop();
  }
});

test('no default image and no backend: 503 naming both checks, still live', async () => {
  const images = mkdtempSync(join(tmpdir(), 'capsule-no-images-'));
  const s = await TestServer.start({ env: { CAPSULE_IMAGES_DIR: images, CAPSULE_BUILD_IMAGE: '0', CAPSULE_QEMU: '/nonexistent/qemu', CAPSULE_KVM: '0' } });
  try {
    assert.equal((await fetch(`${s.url}/v1/health`)).status, 200, 'liveness does not depend on readiness');
    const ready = await fetch(`${s.url}/v1/health/ready`);
    assert.equal(ready.status, 503);
    const r = await ready.json() as { status: string; checks: Record<string, { ok: boolean; message: string }>; error: { code: string; message: string } };
    assert.equal(r.status, 'not_ready');
    assert.equal(r.error.code, 'not_ready');
    assert.equal(r.checks.database!.ok, true);
    assert.equal(r.checks.image!.ok, false);
    assert.match(r.checks.image!.message, /no image named default/);
    assert.equal(r.checks.backend!.ok, false);
    assert.match(r.error.message, /image: no image named default.*backend: no backend can run VMs/);
    assert.doesNotMatch(JSON.stringify(r), new RegExp(images), 'no host path in a public answer');
  } finally {
    await s.stop();
    rmSync(images, { recursive: true, force: true });
  }
});

test('a database that refuses writes fails the database check (in-process)', () => {
  const dir = mkdtempSync(join(tmpdir(), 'capsule-ro-db-'));
  try {
    openDb(join(dir, 'capsule.db')).close();
    const db = new Database(join(dir, 'capsule.db'), { readonly: true });
    const qemu = { name: 'qemu', availability: () => ({ available: true, reason: 'test' }) } as unknown as Hypervisor;
    const report = new Readiness({ db, images: new ImageStore(db), hypervisors: new Map<HypervisorName, Hypervisor>([['qemu', qemu]]) }).check();
    db.close();
    assert.equal(report.ready, false);
    assert.equal(report.checks.database.ok, false);
    assert.match(report.checks.database.message, /refused a write \(SQLITE_READONLY\)/);
    assert.equal(report.checks.backend.ok, true);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
