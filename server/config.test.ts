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

test('jail settings: defaults, a fixed uid, refusals', () => {
  const d = loadConfig({}).jail;
  assert.deepEqual(d, { mode: 'auto', uid: undefined, gid: undefined, uidBase: 100_000, uidCount: 65_536, nofile: 1024, fsizeBytes: 64 << 20, memoryOverheadMiB: 256, cgroupParent: undefined });
  const f = loadConfig({ CAPSULE_JAIL: 'on', CAPSULE_JAIL_UID: '4242', CAPSULE_JAIL_FSIZE_MIB: '8', CAPSULE_CGROUP_PARENT: '/capsule.slice' }).jail;
  assert.equal(f.mode, 'on');
  assert.equal(f.uid, 4242);
  assert.equal(f.gid, 4242, 'the gid defaults to the uid');
  assert.equal(f.fsizeBytes, 8 << 20);
  assert.equal(f.cgroupParent, '/capsule.slice');
  assert.throws(() => loadConfig({ CAPSULE_JAIL: 'maybe' }), /CAPSULE_JAIL/);
  assert.throws(() => loadConfig({ CAPSULE_JAIL_UID: '0' }), /CAPSULE_JAIL_UID/);
  assert.throws(() => loadConfig({ CAPSULE_CGROUP_PARENT: 'relative' }), /CAPSULE_CGROUP_PARENT/);
});

test('host admission: a share of host memory and an overcommit of CPUs by default, explicit sizes win', async () => {
  const { availableParallelism, totalmem } = await import('node:os');
  const cpus = availableParallelism();
  const totalMiB = Math.floor(totalmem() / (1024 * 1024));
  const d = loadConfig({}).admission;
  assert.equal(d.hostMemoryMiB, Math.floor(totalMiB * 0.8));
  assert.equal(d.hostVcpus, cpus * 4);
  assert.match(d.memorySource, /CAPSULE_HOST_MEMORY_SHARE/);
  const share = loadConfig({ CAPSULE_HOST_MEMORY_SHARE: '0.5', CAPSULE_VCPU_OVERCOMMIT: '2' }).admission;
  assert.equal(share.hostMemoryMiB, Math.floor(totalMiB * 0.5));
  assert.equal(share.hostVcpus, cpus * 2);
  assert.equal(loadConfig({ CAPSULE_CPU_OVERCOMMIT: '3' }).admission.hostVcpus, cpus * 3, 'the old name still counts');
  const fixed = loadConfig({ CAPSULE_HOST_MEMORY_MIB: '700', CAPSULE_HOST_VCPUS: '3', CAPSULE_VCPU_OVERCOMMIT: '8' }).admission;
  assert.deepEqual([fixed.hostMemoryMiB, fixed.hostVcpus, fixed.memorySource, fixed.vcpuSource], [700, 3, 'CAPSULE_HOST_MEMORY_MIB', 'CAPSULE_HOST_VCPUS']);
  assert.throws(() => loadConfig({ CAPSULE_HOST_MEMORY_SHARE: '1.5' }), /CAPSULE_HOST_MEMORY_SHARE/);
});

test('CAPSULE_METRICS_ADDR is host:port', () => {
  assert.equal(loadConfig({}).metricsAddr, undefined);
  assert.deepEqual(loadConfig({ CAPSULE_METRICS_ADDR: '127.0.0.1:9100' }).metricsAddr, { host: '127.0.0.1', port: 9100 });
  assert.deepEqual(loadConfig({ CAPSULE_METRICS_ADDR: '[::1]:9100' }).metricsAddr, { host: '::1', port: 9100 });
  assert.throws(() => loadConfig({ CAPSULE_METRICS_ADDR: '9100' }), /CAPSULE_METRICS_ADDR/);
  assert.throws(() => loadConfig({ CAPSULE_METRICS_ADDR: 'localhost:99999' }), /CAPSULE_METRICS_ADDR/);
});
