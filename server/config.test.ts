import { test } from 'node:test';
import assert from 'node:assert/strict';
import { loadConfig } from './config.js';

test('defaults and overrides', () => {
  const c = loadConfig({});
  assert.equal(c.port, 8080);
  assert.equal(c.host, '127.0.0.1');
  assert.ok(c.dbPath.endsWith('/var/capsule.db'));
  assert.deepEqual(c.rateLimit, { perSecond: 100, burst: 100 });
  const o = loadConfig({ PORT: '9000', CAPSULE_DATA_DIR: '/srv/capsule', CAPSULE_RATE_LIMIT: '7' });
  assert.equal(o.port, 9000);
  assert.equal(o.imagesDir, '/srv/capsule/images');
  assert.equal(o.rateLimit.perSecond, 7);
});

test('bad values are refused with the variable named', () => {
  assert.throws(() => loadConfig({ PORT: '70000' }), /PORT/);
  assert.throws(() => loadConfig({ CAPSULE_RATE_LIMIT: '0' }), /CAPSULE_RATE_LIMIT/);
  assert.throws(() => loadConfig({ CAPSULE_LOG_LEVEL: 'loud' }), /CAPSULE_LOG_LEVEL/);
});
