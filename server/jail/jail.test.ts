// The jail on a real server (CAPSULE_JAIL=on) with real QEMU guests, checked from the host's
// /proc: the VMM's user, namespaces, root, rlimits and cgroups; and the whole lifecycle jailed
// (console, pause/resume, server kill -9 and reattach, clean stop, VMM kill -9), with nothing
// left behind: no process, no cgroup, no pidfile, sockets or root skeleton.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readdirSync, readFileSync, readlinkSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { TestServer, EventCollector, ConsoleCollector, waitFor, REPO_ROOT } from '../test/harness.js';
import { isAlive } from '../supervisor/process.js';
import { jailIdentity } from './command.js';
import { parseMountInfo, parseProcCgroup } from './cgroups.js';

const root = process.getuid?.() === 0;
let s: TestServer;
before(async () => { if (root) s = await TestServer.start({ env: { CAPSULE_JAIL: 'on' } }); });
after(async () => { await s?.stop(); });

function children(pid: number): number[] {
  try {
    return readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number);
  } catch {
    return [];
  }
}

/** The VMM's host pid: the leaf below the tracked pid (unshare -> sh, pid 1 of the jail -> VMM). */
function vmmPid(tracked: number): number {
  let pid = tracked;
  for (let kids = children(pid); kids.length > 0; kids = children(pid)) pid = kids[0]!;
  assert.notEqual(pid, tracked, 'the tracked pid has the VMM below it');
  return pid;
}

function statusField(pid: number, field: string): string[] {
  const line = readFileSync(`/proc/${pid}/status`, 'utf8').split('\n').find((l) => l.startsWith(`${field}:`));
  return (line ?? '').slice(field.length + 1).trim().split(/\s+/).filter(Boolean);
}

/** Host directories of the cgroups a process is in that are named capsule/<id>. */
function vmCgroupDirs(pid: number, id: string): string[] {
  const mounts = parseMountInfo(readFileSync('/proc/self/mountinfo', 'utf8'));
  return parseProcCgroup(readFileSync(`/proc/${pid}/cgroup`, 'utf8'))
    .filter((c) => c.path.endsWith(`/capsule/${id}`))
    .map((c) => {
      const m = c.controllers.length === 0
        ? mounts.find((x) => x.fsType === 'cgroup2')
        : mounts.find((x) => x.fsType === 'cgroup' && c.controllers.every((ctl) => x.superOptions.includes(ctl)));
      assert.ok(m, `a mount for ${c.controllers.join(',') || 'cgroup2'}`);
      return join(m.mountPoint, m.root === '/' ? c.path : c.path.slice(m.root.length));
    });
}

const jailCfg = { uid: undefined, gid: undefined, uidBase: 100_000, uidCount: 65_536 };

test('health reports the jail and each of its steps', { skip: !root && 'the jail needs root' }, async () => {
  const h = await fetch(`${s.url}/v1/health`).then((r) => r.json()) as any;
  assert.equal(h.status, 'ok');
  assert.equal(h.jail.enabled, true, JSON.stringify(h.jail));
  assert.equal(h.jail.user, true);
  assert.equal(h.jail.namespaces, true);
  assert.equal(h.jail.rlimits, true);
  assert.equal(typeof h.jail.cgroups, 'boolean');
  for (const k of ['jail', 'user', 'namespaces', 'rlimits', 'cgroups']) assert.equal(typeof h.jail.reasons[k], 'string', k);
  assert.ok(Array.isArray(h.hypervisors) && 'kvm' in h, 'the existing fields stay');
});

test('a jailed guest: user, namespaces, root, rlimits, cgroups; console, pause/resume, reattach, clean stop', { skip: !root && 'the jail needs root' }, async () => {
  const health = await fetch(`${s.url}/v1/health`).then((r) => r.json()) as any;
  const c = await s.api('POST', '/v1/vms', { name: 'jailed-1', vcpus: 1, memoryMiB: 256 });
  const id: string = c.body.id;
  const vmDir = join(s.dataDir, 'vms', id);
  const events = new EventCollector(s.ws(`/v1/vms/${id}/events`));
  await events.opened;
  const started = await s.api('POST', `/v1/vms/${id}/start`);
  assert.equal(started.status, 200, JSON.stringify(started.body));
  assert.equal(started.body.state, 'running');
  const pid: number = started.body.pid;
  assert.equal(readFileSync(join(vmDir, 'vmm.pid'), 'utf8').trim(), String(pid), 'the pidfile holds the tracked host pid');
  assert.ok(readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(id), 'the tracked process names the VM (reattach)');
  const vmm = vmmPid(pid);
  assert.match(readFileSync(`/proc/${vmm}/cmdline`, 'utf8'), /qemu-system/);

  // An unprivileged user of its own, no groups, no capabilities, no new privileges.
  const { uid, gid } = jailIdentity(id, jailCfg);
  assert.deepEqual(statusField(vmm, 'Uid'), [uid, uid, uid, uid].map(String));
  assert.deepEqual(statusField(vmm, 'Gid'), [gid, gid, gid, gid].map(String));
  assert.notEqual(uid, 0);
  assert.deepEqual(statusField(vmm, 'Groups'), []);
  assert.deepEqual(statusField(vmm, 'CapEff'), ['0000000000000000']);
  assert.deepEqual(statusField(vmm, 'CapBnd'), ['0000000000000000']);
  assert.deepEqual(statusField(vmm, 'NoNewPrivs'), ['1']);

  // Its own mount and PID namespaces.
  for (const ns of ['mnt', 'pid']) assert.notEqual(readlinkSync(`/proc/${vmm}/ns/${ns}`), readlinkSync(`/proc/self/ns/${ns}`), ns);
  const nspid = statusField(vmm, 'NSpid');
  assert.equal(nspid.length, 2, 'a pid in the host namespace and one in its own');
  assert.equal(nspid[0], String(vmm));

  // Its root is the VM directory, with only what it needs in it.
  assert.equal(readlinkSync(`/proc/${vmm}/root`), vmDir);
  assert.equal(statSync(`/proc/${vmm}/root/.`).ino, statSync(vmDir).ino);
  assert.ok(existsSync(`/proc/${vmm}/root/usr/bin/qemu-system-x86_64`));
  assert.ok(existsSync(`/proc/${vmm}/root/image/kernel`));
  assert.ok(!existsSync(`/proc/${vmm}/root/etc/passwd`), 'the host /etc is not there');
  assert.ok(!existsSync(`/proc/${vmm}/root${s.dataDir}`), 'nor the server data');
  assert.deepEqual(readdirSync(`/proc/${vmm}/root/dev`).sort(), ['null', 'urandom'], 'no /dev/kvm under TCG, nothing else');
  const mounts = parseMountInfo(readFileSync(`/proc/${vmm}/mountinfo`, 'utf8'));
  for (const p of ['/usr/lib', '/image/kernel', '/image/initrd', '/usr/bin/qemu-system-x86_64']) {
    const m = mounts.find((x) => x.mountPoint === p);
    assert.ok(m, `${p} is bound`);
  }
  const opts = readFileSync(`/proc/${vmm}/mountinfo`, 'utf8').split('\n').find((l) => l.split(' ')[4] === '/usr/lib')!.split(' ')[5]!;
  assert.ok(opts.split(',').includes('ro') && opts.includes('nosuid'), `/usr/lib is read-only, nosuid: ${opts}`);
  // The sockets are where the server expects them, made by the jail user.
  assert.equal(statSync(join(vmDir, 'qmp.sock')).uid, uid);
  assert.ok(statSync(join(vmDir, 'console.sock')).isSocket());

  // rlimits.
  const limits = readFileSync(`/proc/${vmm}/limits`, 'utf8');
  assert.match(limits, /Max open files\s+1024\s+1024\s+files/);
  assert.match(limits, new RegExp(`Max file size\\s+${64 << 20}\\s+${64 << 20}\\s+bytes`));

  // cgroups, where the host allows (else health says why).
  let cgDirs: string[] = [];
  if (health.jail.cgroups) {
    cgDirs = vmCgroupDirs(vmm, id);
    assert.ok(cgDirs.length >= 1, 'the VMM is in capsule/<id> cgroups');
    for (const d of cgDirs) assert.ok(existsSync(d), d);
    const cpu = cgDirs.find((d) => existsSync(join(d, 'cpu.max')) || existsSync(join(d, 'cpu.cfs_quota_us')));
    if (cpu) {
      const q = existsSync(join(cpu, 'cpu.max')) ? readFileSync(join(cpu, 'cpu.max'), 'utf8') : readFileSync(join(cpu, 'cpu.cfs_quota_us'), 'utf8');
      assert.match(q, /^100000\b/, 'one CPU for one vCPU');
    }
  } else {
    assert.ok(health.jail.reasons.cgroups.length > 0);
  }

  // The lifecycle, jailed.
  const cons = new ConsoleCollector(s.ws(`/v1/vms/${id}/console`));
  await cons.opened;
  await cons.waitFor(/CAPSULE_READY cpus=1/);
  cons.send('echo sum-$((40+2))\n');
  await cons.waitFor('sum-42');
  cons.close();
  assert.equal((await s.api('POST', `/v1/vms/${id}/pause`)).body.state, 'paused');
  await events.waitFor('STOP');
  assert.equal((await s.api('POST', `/v1/vms/${id}/resume`)).body.state, 'running');
  await events.waitFor('RESUME');
  events.close();

  // The server dies; the jailed VMM does not; the next server reattaches.
  await s.kill9();
  assert.ok(isAlive(pid) && isAlive(vmm), 'the jailed VMM outlives the server');
  await s.launch();
  const got = await s.api('GET', `/v1/vms/${id}`);
  assert.equal(got.body.state, 'running');
  assert.equal(got.body.pid, pid);
  const events2 = new EventCollector(s.ws(`/v1/vms/${id}/events`));
  await events2.opened;
  const cons2 = new ConsoleCollector(s.ws(`/v1/vms/${id}/console`));
  await cons2.opened;
  cons2.send('echo back-$((6*7))\n');
  await cons2.waitFor('back-42');
  cons2.close();

  // A clean stop: the guest powers off, and nothing is left.
  const stopped = await s.api('POST', `/v1/vms/${id}/stop`);
  assert.equal(stopped.body.state, 'stopped', JSON.stringify(stopped.body));
  const shutdown = await events2.waitFor('SHUTDOWN');
  assert.equal(shutdown.data.guest, true);
  events2.close();
  assert.ok(!isAlive(pid) && !isAlive(vmm), 'no process left');
  for (const d of cgDirs) assert.ok(!existsSync(d), `cgroup ${d} removed`);
  assert.deepEqual(readdirSync(vmDir), ['vmm.log'], 'only the log remains (no pidfile, sockets or root skeleton)');
  assert.equal((await s.api('DELETE', `/v1/vms/${id}`)).status, 204);
  assert.ok(!existsSync(vmDir));
});

test('kill -9 of a jailed VMM: crashed, nothing left behind, startable again', { skip: !root && 'the jail needs root' }, async () => {
  const health = await fetch(`${s.url}/v1/health`).then((r) => r.json()) as any;
  const c = await s.api('POST', '/v1/vms', { name: 'jailed-victim' });
  const id: string = c.body.id;
  const vmDir = join(s.dataDir, 'vms', id);
  const all = new EventCollector(s.ws('/v1/events'));
  await all.opened;
  const started = await s.api('POST', `/v1/vms/${id}/start`);
  assert.equal(started.body.state, 'running', JSON.stringify(started.body));
  const pid: number = started.body.pid;
  const vmm = vmmPid(pid);
  const cgDirs = health.jail.cgroups ? vmCgroupDirs(vmm, id) : [];
  process.kill(vmm, 'SIGKILL');

  const crashed = await all.waitFor('CRASHED', (m) => m.vm === id, 20_000);
  assert.match(crashed.data.reason, /unexpectedly/);
  await all.waitFor('STATE_CHANGED', (m) => m.vm === id && m.data.state === 'crashed');
  assert.equal((await s.api('GET', `/v1/vms/${id}`)).body.state, 'crashed');
  await waitFor('the tracked process to go', () => !isAlive(pid) || undefined, 5000);
  for (const d of cgDirs) assert.ok(!existsSync(d), `cgroup ${d} removed`);
  assert.deepEqual(readdirSync(vmDir), ['vmm.log']);

  // Killing the tracked (host) pid kills the jailed VMM too.
  const again = await s.api('POST', `/v1/vms/${id}/start`);
  assert.equal(again.body.state, 'running');
  const vmm2 = vmmPid(again.body.pid);
  process.kill(again.body.pid, 'SIGKILL');
  await waitFor('the VMM to die with its tracked pid', () => !isAlive(vmm2) || undefined, 5000);
  await all.waitFor('STATE_CHANGED', (m) => m.vm === id && m.data.state === 'crashed' && m.seq > crashed.seq);
  assert.deepEqual(readdirSync(vmDir), ['vmm.log']);
  assert.equal((await s.api('DELETE', `/v1/vms/${id}`)).status, 204);
  all.close();
});

test('CAPSULE_JAIL=on where the jail cannot work: health says why, start is refused naming the step', async () => {
  // No util-linux in PATH: the jail's tools cannot be found.
  const t = await TestServer.start({ env: { CAPSULE_JAIL: 'on', PATH: '/nonexistent', CAPSULE_QEMU: '/usr/bin/qemu-system-x86_64', CAPSULE_BUILD_IMAGE: '0' } });
  try {
    const h = await fetch(`${t.url}/v1/health`).then((r) => r.json()) as any;
    assert.deepEqual([h.jail.enabled, h.jail.user, h.jail.namespaces, h.jail.cgroups, h.jail.rlimits], [false, false, false, false, false]);
    assert.match(h.jail.reasons.jail, /cannot be applied/);
    assert.match(h.jail.reasons.rlimits, /prlimit/);
    const c = await t.api('POST', '/v1/vms', { name: 'refused' });
    const r = await t.api('POST', `/v1/vms/${c.body.id}/start`);
    assert.equal(r.status, 409, JSON.stringify(r.body));
    assert.equal(r.body.error.code, 'jail_unavailable');
    assert.match(r.body.error.message, /CAPSULE_JAIL=on/);
    assert.match(r.body.error.message, root ? /missing tools/ : /root/);
    assert.equal((await t.api('GET', `/v1/vms/${c.body.id}`)).body.state, 'created');
  } finally {
    await t.stop();
  }
});

test('the native VMM\'s runtime starts in the jail: node, the repository and a native module, as the jail user', { skip: !root && 'the jail needs root' }, async () => {
  // No KVM here, so not the VMM itself: node in the same jail (same binds as NativeHypervisor), loading
  // what bin/capsule-vmm loads (dist/ modules, koffi's native addon from node_modules).
  const { buildJailCommand, imageInRoot } = await import('./command.js');
  const { resolveHostPaths, which } = await import('./host.js');
  const { NativeHypervisor } = await import('../hypervisors/native.js');
  const { mkdtempSync, rmSync, chmodSync, chownSync } = await import('node:fs');
  const { spawnSync } = await import('node:child_process');
  const { tmpdir } = await import('node:os');
  const dir = mkdtempSync(join(tmpdir(), 'capsule-jail-native-'));
  try {
    const tools = Object.fromEntries(['sh', 'unshare', 'setpriv', 'prlimit', 'mount', 'chroot', 'mknod', 'mkdir', 'ln', 'chown'].map((n) => [n, which(n)!])) as any;
    const uid = 100_123;
    chownSync(dir, 0, uid);
    chmodSync(dir, 0o1770);
    const host = resolveHostPaths([process.execPath, tools.setpriv, ...new NativeHypervisor({ available: true, reason: '' }).jailFiles()]);
    const img = imageInRoot({ name: 'x', description: '', kernel: '/tmp/capsule-test-images/default/vmlinuz', cmdline: '', createdAt: '', updatedAt: '' });
    const code = `const k = (await import('node:module')).createRequire(${JSON.stringify(join(REPO_ROOT, 'package.json'))})('koffi'); const c = await import(${JSON.stringify(join(REPO_ROOT, 'dist/server/jail/command.js'))});
      console.log(JSON.stringify({ uid: process.getuid(), koffi: typeof k.load, builder: typeof c.buildJailCommand, kernel: (await import('node:fs')).statSync('/image/kernel').size > 0 }));`;
    const cmd = buildJailCommand({
      vmId: 'native-probe', root: dir, uid, gid: uid, nofile: 1024, fsizeBytes: 1 << 20,
      mounts: [...host.mounts, ...img.mounts], symlinks: host.symlinks, kvm: false, cgroupProcs: [],
      command: process.execPath, args: ['--input-type=module', '-e', code], env: {}, tools,
    });
    const r = spawnSync(cmd.command, cmd.args, { env: cmd.env, encoding: 'utf8', cwd: dir, timeout: 30_000 });
    assert.equal(r.status, 0, r.stderr);
    assert.deepEqual(JSON.parse(r.stdout.trim().split('\n').at(-1)!), { uid, koffi: 'function', builder: 'function', kernel: true });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
