// The cgroup manager: parsing, and on this host (as root) a real per-VM cgroup with its
// limits, a real process in it, and its removal once the process is gone.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import { CgroupManager, cpuQuotaUs, parseMountInfo, parseProcCgroup } from './cgroups.js';

test('mountinfo and /proc/self/cgroup parsing', () => {
  const mi = parseMountInfo([
    '30 24 0:26 / /sys/fs/cgroup/unified rw,relatime shared:6 - cgroup2 cgroup2 rw',
    '31 24 0:27 / /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:7 - cgroup cgroup rw,cpu,cpuacct',
    '32 24 0:28 /lxc/c1 /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory',
    '40 1 8:1 / /mnt/with\\040space rw - ext4 /dev/sda1 rw',
  ].join('\n'));
  assert.equal(mi.length, 4);
  assert.deepEqual(mi[1], { root: '/', mountPoint: '/sys/fs/cgroup/cpu,cpuacct', fsType: 'cgroup', source: 'cgroup', superOptions: ['rw', 'cpu', 'cpuacct'] });
  assert.equal(mi[3]!.source, '/dev/sda1');
  assert.equal(mi[2]!.root, '/lxc/c1');
  assert.equal(mi[3]!.mountPoint, '/mnt/with space');
  const cg = parseProcCgroup('4:memory:/a/b\n1:cpu,cpuacct:/\n0::/user.slice/x.scope\n');
  assert.deepEqual(cg, [
    { controllers: ['memory'], path: '/a/b' },
    { controllers: ['cpu', 'cpuacct'], path: '/' },
    { controllers: [], path: '/user.slice/x.scope' },
  ]);
});

test('no usable hierarchy: unavailable, with the reasons', () => {
  const m = CgroupManager.detect(undefined, '22 1 0:20 / /proc rw - proc proc rw\n', '0::/\n');
  assert.equal(m.available, false);
  assert.match(m.reason, /cgroup v2: not mounted/);
  assert.match(m.reason, /cgroup v1: no cpu hierarchy/);
  assert.deepEqual(m.create('x', { vcpus: 1, memoryBytes: 1 << 30 }), []);
});

test('a real per-VM cgroup: limits, membership, removal', { skip: process.getuid?.() !== 0 && 'needs root' }, async (t) => {
  const m = CgroupManager.detect();
  if (!m.available) { t.skip(`no usable cgroups here: ${m.reason}`); return; }
  const id = `unit-${process.pid}-${Date.now()}`;
  const procs = m.create(id, { vcpus: 2, memoryBytes: 300 * 1024 * 1024 });
  try {
    assert.ok(procs.length >= 1);
    for (const d of m.dirs(id)) assert.ok(existsSync(d), d);
    const read = (f: string) => m.dirs(id).map((d) => join(d, f)).filter(existsSync).map((p) => readFileSync(p, 'utf8').trim());
    if (m.version === 'v2') {
      assert.deepEqual(read('cpu.max'), ['200000 100000']);
      assert.deepEqual(read('memory.max'), [String(300 * 1024 * 1024)]);
    } else {
      assert.deepEqual(read('cpu.cfs_quota_us'), ['200000']);
      assert.deepEqual(read('memory.limit_in_bytes'), [String(300 * 1024 * 1024)]);
    }
    const child = spawn('sleep', ['30'], { stdio: 'ignore' });
    for (const f of procs) writeFileSync(f, String(child.pid));
    const own = readFileSync(`/proc/${child.pid}/cgroup`, 'utf8');
    assert.equal(own.split('\n').filter((l) => l.endsWith(`/capsule/${id}`)).length, procs.length);
    await assert.rejects(m.remove(id, 200), /cannot remove cgroup/, 'a cgroup with a process stays');
    const exited = new Promise((r) => child.once('exit', r));
    child.kill('SIGKILL');
    await exited;
    await m.remove(id);
    assert.equal(m.exists(id), false);
  } finally {
    await m.remove(id).catch(() => undefined);
  }
});

test('the CPU quota is one CPU per vCPU, capped at the host\'s CPUs', () => {
  assert.equal(cpuQuotaUs(1, 8), 100_000);
  assert.equal(cpuQuotaUs(3, 8), 300_000);
  assert.equal(cpuQuotaUs(254, 8), 800_000, 'not 25.4 CPUs');
  assert.equal(cpuQuotaUs(254, 2), 200_000);
  assert.equal(cpuQuotaUs(0, 2), 100_000, 'at least one CPU');
  assert.equal(cpuQuotaUs(254), availableParallelism() * 100_000, 'the default is this host\'s CPU count');
});

test('a real cgroup for a 254-vCPU VM gets at most the host\'s CPUs', { skip: process.getuid?.() !== 0 && 'needs root' }, async (t) => {
  const m = CgroupManager.detect();
  if (!m.available) { t.skip(`no usable cgroups here: ${m.reason}`); return; }
  const id = `unit-cap-${process.pid}-${Date.now()}`;
  try {
    m.create(id, { vcpus: 254, memoryBytes: 300 * 1024 * 1024 });
    const want = String(Math.min(254, availableParallelism()) * 100_000);
    const read = (f: string) => m.dirs(id).map((d) => join(d, f)).filter(existsSync).map((p) => readFileSync(p, 'utf8').trim());
    if (m.version === 'v2') assert.deepEqual(read('cpu.max'), [`${want} 100000`]);
    else assert.deepEqual(read('cpu.cfs_quota_us'), [want]);
  } finally {
    await m.remove(id).catch(() => undefined);
  }
});
