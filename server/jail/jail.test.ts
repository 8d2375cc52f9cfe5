// The jail on a real server (CAPSULE_JAIL=on) with real QEMU guests, checked from the host's
// /proc: the VMM's user, namespaces, root, rlimits and cgroups; and the whole lifecycle jailed
// (console, pause/resume, server kill -9 and reattach, clean stop, VMM kill -9), with nothing
// left behind: no process, no cgroup, no pidfile, sockets or root skeleton.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readdirSync, readFileSync, readlinkSync, rmSync, statfsSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import koffi from 'koffi';
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

  // Its root is the VM directory's root/, with only what it needs in it.
  assert.equal(readlinkSync(`/proc/${vmm}/root`), join(vmDir, 'root'));
  assert.equal(statSync(`/proc/${vmm}/root/.`).ino, statSync(join(vmDir, 'root')).ino);
  assert.ok(!existsSync(`/proc/${vmm}/root/vmm.log`) && !existsSync(`/proc/${vmm}/root/jail.sh`), 'the server\'s files are outside it');
  assert.ok(existsSync(`/proc/${vmm}/root/usr/bin/qemu-system-x86_64`));
  assert.ok(existsSync(`/proc/${vmm}/root/image/kernel`));
  assert.ok(!existsSync(`/proc/${vmm}/root/etc/passwd`), 'the host /etc is not there');
  assert.ok(!existsSync(`/proc/${vmm}/root${s.dataDir}`), 'nor the server data');
  // net/tun: the VM's NIC (a VM has a network by default where the host gives one, docs/network.md).
  const tun = health.network?.enabled ? ['net'] : [];
  assert.deepEqual(readdirSync(`/proc/${vmm}/root/dev`).sort(), [...tun, 'null', 'urandom'], 'no /dev/kvm under TCG, nothing else');
  if (tun.length) assert.deepEqual(readdirSync(`/proc/${vmm}/root/dev/net`), ['tun']);
  const mounts = parseMountInfo(readFileSync(`/proc/${vmm}/mountinfo`, 'utf8'));
  for (const p of ['/usr/lib', '/image/kernel', '/image/initrd', '/usr/bin/qemu-system-x86_64']) {
    const m = mounts.find((x) => x.mountPoint === p);
    assert.ok(m, `${p} is bound`);
  }
  const opts = readFileSync(`/proc/${vmm}/mountinfo`, 'utf8').split('\n').find((l) => l.split(' ')[4] === '/usr/lib')!.split(' ')[5]!;
  assert.ok(opts.split(',').includes('ro') && opts.includes('nosuid'), `/usr/lib is read-only, nosuid: ${opts}`);
  // The sockets are where the server expects them, made by the jail user.
  assert.equal(statSync(join(vmDir, 'root', 'qmp')).uid, uid);
  assert.ok(statSync(join(vmDir, 'root', 'console')).isSocket());

  // rlimits.
  const limits = readFileSync(`/proc/${vmm}/limits`, 'utf8');
  assert.match(limits, /Max open files\s+1024\s+1024\s+files/);
  // RLIMIT_FSIZE: the jail's 64 MiB, raised to the guest's memory + 64 MiB for a backend that
  // writes snapshots (the VMM writes its state into a file the server opened: docs/snapshots.md).
  const fsize = (256 + 64) << 20;
  assert.match(limits, new RegExp(`Max file size\\s+${fsize}\\s+${fsize}\\s+bytes`));

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
  const { mkdtempSync, rmSync, chmodSync, chownSync, writeFileSync } = await import('node:fs');
  const { spawnSync } = await import('node:child_process');
  const { tmpdir } = await import('node:os');
  const dir = mkdtempSync(join(tmpdir(), 'capsule-jail-native-'));
  try {
    const tools = Object.fromEntries(['sh', 'unshare', 'setpriv', 'prlimit', 'mount', 'chroot', 'mknod', 'mkdir', 'ln', 'chown', 'env'].map((n) => [n, which(n)!])) as any;
    const uid = 100_123;
    chownSync(dir, 0, uid);
    chmodSync(dir, 0o1770);
    const host = resolveHostPaths([process.execPath, tools.setpriv, ...new NativeHypervisor({ available: true, reason: '' }).jailFiles()]);
    const img = imageInRoot({ name: 'x', description: '', kernel: '/tmp/capsule-test-images/default/vmlinuz', cmdline: '', createdAt: '', updatedAt: '' });
    const code = `const k = (await import('node:module')).createRequire(${JSON.stringify(join(REPO_ROOT, 'package.json'))})('koffi'); const c = await import(${JSON.stringify(join(REPO_ROOT, 'dist/server/jail/command.js'))});
      console.log(JSON.stringify({ uid: process.getuid(), koffi: typeof k.load, builder: typeof c.buildJailCommand, kernel: (await import('node:fs')).statSync('/image/kernel').size > 0 }));`;
    const cmd = buildJailCommand({
      vmId: 'native-probe', root: dir, scriptPath: `${dir}.sh`, uid, gid: uid, nofile: 1024, fsizeBytes: 1 << 20,
      mounts: [...host.mounts, ...img.mounts], symlinks: host.symlinks, kvm: false, cgroupProcs: [],
      command: process.execPath, args: ['--input-type=module', '-e', code], env: {}, tools,
    });
    writeFileSync(`${dir}.sh`, cmd.script, { mode: 0o700 });
    const r = spawnSync(cmd.command, cmd.args, { env: cmd.env, encoding: 'utf8', cwd: dir, timeout: 30_000 });
    assert.equal(r.status, 0, r.stderr);
    assert.deepEqual(JSON.parse(r.stdout.trim().split('\n').at(-1)!), { uid, koffi: 'function', builder: 'function', kernel: true });
  } finally {
    rmSync(dir, { recursive: true, force: true });
    rmSync(`${dir}.sh`, { force: true });
  }
});

// ---- the probe's findings (M5, L5, L8, H1): each test checks the fix on real processes ----

/** The tracked pid and every process below it: unshare, sh (pid 1 of the jail), the VMM. */
function chain(tracked: number): number[] {
  const out = [tracked];
  for (let kids = children(tracked); kids.length > 0; kids = children(out.at(-1)!)) out.push(kids[0]!);
  return out;
}

/** Runs a TCP connect to 127.0.0.1:port with node, optionally inside another net namespace. */
function tcpConnect(port: number, netns?: string): { status: number | null; out: string } {
  const code = `require('node:net').connect(${port}, '127.0.0.1').on('connect', () => { console.log('connected'); process.exit(0); }).on('error', (e) => { console.log(e.code); process.exit(3); });`;
  const argv = netns ? ['nsenter', `--net=${netns}`, '--', process.execPath, '-e', code] : [process.execPath, '-e', code];
  const r = spawnSync(argv[0]!, argv.slice(1), { encoding: 'utf8', timeout: 10_000 });
  return { status: r.status, out: `${r.stdout}${r.stderr}`.trim() };
}

test('M5: the VMM has its own network, IPC and UTS namespaces; the API on 127.0.0.1 is unreachable from them; QMP and the console still work', { skip: !root && 'the jail needs root' }, async () => {
  // Without a network (docs/network.md): an empty namespace of its own. (With one, below.)
  const c = await s.api('POST', '/v1/vms', { name: 'jailed-netns', network: { enabled: false } });
  const id: string = c.body.id;
  const started = await s.api('POST', `/v1/vms/${id}/start`);
  assert.equal(started.body.state, 'running', JSON.stringify(started.body));
  const vmm = vmmPid(started.body.pid);
  const server = (s as unknown as { proc: { pid: number } }).proc.pid;
  for (const ns of ['net', 'ipc', 'uts']) {
    assert.notEqual(readlinkSync(`/proc/${vmm}/ns/${ns}`), readlinkSync(`/proc/${server}/ns/${ns}`), `${ns}: not the server's`);
    assert.notEqual(readlinkSync(`/proc/${vmm}/ns/${ns}`), readlinkSync(`/proc/self/ns/${ns}`), `${ns}: not the host's`);
  }
  // The control: from the host the API answers; from the VMM's network namespace it does not.
  assert.deepEqual(tcpConnect(s.port), { status: 0, out: 'connected' });
  const inside = tcpConnect(s.port, `/proc/${vmm}/ns/net`);
  assert.equal(inside.status, 3, `connect from the VMM's netns: ${inside.out}`);
  // Loopback is down (nothing is brought up in the namespace), so 127.0.0.1 is no route at all.
  assert.equal(inside.out, 'ENETUNREACH');
  // Its only interface is lo (/proc/net follows the reader's network namespace; /sys would not).
  const links = spawnSync('nsenter', [`--net=/proc/${vmm}/ns/net`, '--', 'cat', '/proc/net/dev'], { encoding: 'utf8' });
  assert.equal(links.status, 0, links.stderr);
  assert.deepEqual(links.stdout.split('\n').slice(2).filter(Boolean).map((l) => l.trim().split(':')[0]), ['lo']);
  // The Unix sockets by path cross the namespace: QMP (pause/resume) and the console.
  assert.equal((await s.api('POST', `/v1/vms/${id}/pause`)).body.state, 'paused');
  assert.equal((await s.api('POST', `/v1/vms/${id}/resume`)).body.state, 'running');
  const cons = new ConsoleCollector(s.ws(`/v1/vms/${id}/console`));
  await cons.opened;
  await cons.waitFor(/CAPSULE_READY/);
  cons.send('echo ns-$((20+3))\n');
  await cons.waitFor('ns-23');
  cons.close();
  assert.equal((await s.api('POST', `/v1/vms/${id}/stop?force=true`)).body.state, 'stopped');
  assert.equal((await s.api('DELETE', `/v1/vms/${id}`)).status, 204);

  // With a network (the default) the VMM runs in the VM's namespace: lo, the veth to the host and
  // the guest's tap, nothing else; the API on the namespace's 127.0.0.1 is not the server's.
  const n = await s.api('POST', '/v1/vms', { name: 'jailed-netns-net' });
  const nstarted = await s.api('POST', `/v1/vms/${n.body.id}/start`);
  assert.equal(nstarted.body.state, 'running', JSON.stringify(nstarted.body));
  const nvmm = vmmPid(nstarted.body.pid);
  if ((await s.api('GET', '/v1/health')).body.network?.enabled) {
    const named = spawnSync('ip', ['netns', 'identify', String(nvmm)], { encoding: 'utf8' }).stdout.trim();
    assert.match(named, new RegExp(`^capsule-[0-9a-f]{4}-${n.body.id}$`), 'the VMM is in the VM\'s named namespace');
    const nlinks = spawnSync('nsenter', [`--net=/proc/${nvmm}/ns/net`, '--', 'cat', '/proc/net/dev'], { encoding: 'utf8' });
    assert.deepEqual(nlinks.stdout.split('\n').slice(2).filter(Boolean).map((l) => l.trim().split(':')[0]).sort(), ['lo', 'tap0', 'veth0']);
    assert.deepEqual(tcpConnect(s.port, `/proc/${nvmm}/ns/net`), { status: 3, out: 'ECONNREFUSED' });
  }
  assert.equal((await s.api('DELETE', `/v1/vms/${n.body.id}?force=true`)).status, 204);
});

test('L5: the kernel command line is in no argv (unshare, sh, the VMM) yet reaches the guest; the script is a root-only file', { skip: !root && 'the jail needs root' }, async () => {
  const secret = `capsule_secret=L5-${process.pid}-${Date.now()}`;
  const c = await s.api('POST', '/v1/vms', { name: 'jailed-secret', cmdline: `console=ttyS0 quiet panic=-1 reboot=k ${secret}` });
  const id: string = c.body.id;
  const vmDir = join(s.dataDir, 'vms', id);
  const started = await s.api('POST', `/v1/vms/${id}/start`);
  assert.equal(started.body.state, 'running', JSON.stringify(started.body));
  const procs = chain(started.body.pid);
  assert.equal(procs.length, 3, 'unshare, sh, the VMM');
  for (const p of procs) {
    const argv = readFileSync(`/proc/${p}/cmdline`, 'utf8');
    assert.ok(!argv.includes(secret), `pid ${p} shows the command line in ps: ${argv.replace(/\0/g, ' ').slice(0, 200)}`);
    assert.ok(!argv.includes('die()'), `pid ${p}: the script is not in argv`);
  }
  assert.match(readFileSync(`/proc/${procs[2]}/cmdline`, 'utf8'), /-readconfig\0\/vmm\.cfg\0/);
  // The guest got it all the same (QEMU read it from the config file, removed once ready).
  const cons = new ConsoleCollector(s.ws(`/v1/vms/${id}/console`));
  await cons.opened;
  await cons.waitFor(/CAPSULE_READY/);
  cons.send('cat /proc/cmdline\n');
  await cons.waitFor(secret);
  cons.close();
  assert.ok(!existsSync(join(vmDir, 'root', 'vmm.cfg')), 'the config file is gone once the VMM runs');
  // The script: a file only root can read, in a directory only root can enter.
  const script = statSync(join(vmDir, 'jail.sh'));
  assert.equal(script.uid, 0);
  assert.equal(script.mode & 0o077, 0, 'jail.sh is root-only');
  assert.equal(statSync(vmDir).mode & 0o777, 0o700);
  assert.equal(statSync(vmDir).uid, 0);
  assert.equal((await s.api('POST', `/v1/vms/${id}/stop?force=true`)).body.state, 'stopped');
  assert.equal((await s.api('DELETE', `/v1/vms/${id}`)).status, 204);
});

/** An images directory with one image whose kernel QEMU refuses (it exits 1 at once). */
function brokenImages(): string {
  const dir = mkdtempSync(join(tmpdir(), 'capsule-broken-images-'));
  mkdirSync(join(dir, 'broken'));
  writeFileSync(join(dir, 'broken', 'vmlinuz'), Buffer.alloc(4096, 0x5a));
  writeFileSync(join(dir, 'broken', 'image.json'), JSON.stringify({ name: 'broken', description: 'not a kernel', kernel: 'vmlinuz', cmdline: 'console=ttyS0' }));
  return dir;
}

for (const mode of ['on', 'off'] as const) {
  test(`L5: a failed launch (CAPSULE_JAIL=${mode}) tells the client the cause, without host paths, uids or the command line; the detail is logged`, { skip: mode === 'on' && !root && 'the jail needs root' }, async () => {
    const images = brokenImages();
    const t = await TestServer.start({ env: { CAPSULE_JAIL: mode, CAPSULE_IMAGES_DIR: images, CAPSULE_BUILD_IMAGE: '0' } });
    try {
      const c = await t.api('POST', '/v1/vms', { name: 'broken', image: 'broken', cmdline: 'console=ttyS0 capsule_secret=L5-error' });
      assert.equal(c.status, 201, JSON.stringify(c.body));
      const id: string = c.body.id;
      const all = new EventCollector(t.ws(`/v1/vms/${id}/events`));
      await all.opened;
      const r = await t.api('POST', `/v1/vms/${id}/start`);
      assert.equal(r.status, 500, JSON.stringify(r.body));
      assert.equal(r.body.error.code, 'launch_failed');
      const msg: string = r.body.error.message;
      assert.equal(msg, `VMM launch failed: the VMM exited during start (status 1); see GET /v1/vms/${id}/log`);
      const crashed = await all.waitFor('CRASHED');
      all.close();
      for (const text of [msg, JSON.stringify(crashed.data)]) {
        for (const leak of [t.dataDir, images, '/tmp', 'uid', 'qemu-system', 'capsule_secret', 'vmm.log']) assert.ok(!text.includes(leak), `${leak} in ${text}`);
      }
      // The operator's detail: the server log and the VM's log (what GET /log returns).
      assert.match(t.output, /VMM launch failed/);
      const log = await t.api('GET', `/v1/vms/${id}/log`);
      assert.match(typeof log.body === 'string' ? log.body : JSON.stringify(log.body), /launch failed: the VMM exited during start \(status 1\): .*(invalid kernel header|exited with 1)/);
      assert.equal((await t.api('GET', `/v1/vms/${id}`)).body.state, 'crashed');
      if (mode === 'on') assert.deepEqual(readdirSync(join(t.dataDir, 'vms', id)), ['vmm.log'], 'the failed jail left nothing (no root mounted)');
    } finally {
      await t.stop();
      rmSync(images, { recursive: true, force: true });
    }
  });
}

/** dup(2) without O_CLOEXEC: an fd that any child inherits, as one inherited from a careless parent. */
function leakyFd(path: string): number {
  const libc = koffi.load('libc.so.6');
  const dup = libc.func('int dup(int)') as (fd: number) => number;
  const fd = openSync(path, 'r');
  const leaked = dup(fd);
  closeSync(fd);
  assert.ok(leaked > 2);
  return leaked;
}

function fdTargets(pid: number): Map<number, string> {
  return new Map(readdirSync(`/proc/${pid}/fd`).map((f) => [Number(f), readlinkSync(`/proc/${pid}/fd/${f}`)]));
}

function environKeys(pid: number): string[] {
  return readFileSync(`/proc/${pid}/environ`, 'utf8').split('\0').filter(Boolean).map((e) => e.slice(0, e.indexOf('='))).sort();
}

for (const mode of ['on', 'off'] as const) {
  test(`L8: a VMM (CAPSULE_JAIL=${mode}) inherits only stdin, stdout and stderr, and an environment of PATH alone`, { skip: !root && 'needs root (the jail; /proc of the VMM)' }, async () => {
    const marker = join(mkdtempSync(join(tmpdir(), 'capsule-leak-')), 'inherited-by-the-server');
    writeFileSync(marker, 'x');
    const leaked = leakyFd(marker);
    let t: TestServer | undefined;
    try {
      t = await TestServer.start({ env: { CAPSULE_JAIL: mode, CAPSULE_SERVER_ONLY_VAR: 'server-secret' } });
      const server = (t as unknown as { proc: { pid: number } }).proc.pid;
      // The control: the server did inherit the fd (so a careless spawn would pass it on).
      assert.ok([...fdTargets(server).values()].includes(marker), 'the server holds the inherited fd');
      const c = await t.api('POST', '/v1/vms', { name: 'fds' });
      const id: string = c.body.id;
      const started = await t.api('POST', `/v1/vms/${id}/start`);
      assert.equal(started.body.state, 'running', JSON.stringify(started.body));
      const procs = mode === 'on' ? chain(started.body.pid) : [started.body.pid as number];
      const vmDir = join(t.dataDir, 'vms', id);
      for (const [i, p] of procs.entries()) {
        const fds = fdTargets(p);
        const isVmm = i === procs.length - 1;
        for (const [fd, target] of fds) {
          assert.notEqual(target, marker, `pid ${p} fd ${fd}: the server's inherited fd`);
          assert.ok(!target.includes('capsule.db'), `pid ${p} fd ${fd}: ${target}`);
          if (target.startsWith('/')) {
            // Paths it may hold: its log (stdout/stderr), sh's own script, unjailed QEMU's own pidfile lock,
            // and the VMM the rng device's source (/dev/urandom; jailed: the jail's own node).
            const allowed = [join(vmDir, 'vmm.log'), join(vmDir, 'jail.sh'), join(vmDir, 'vmm.pid'), '/dev/null',
              // ... and its NIC's tap (docs/network.md).
              ...(isVmm ? ['/dev/urandom', join(vmDir, 'root', 'dev', 'urandom'), '/dev/net/tun', join(vmDir, 'root', 'dev', 'net', 'tun')] : [])];
            assert.ok(allowed.includes(target), `pid ${p} fd ${fd} -> ${target}`);
          }
        }
        if (!isVmm) {
          // unshare and sh open nothing themselves but sh's script (close-on-exec).
          const extra = [...fds].filter(([fd, tg]) => fd > 2 && tg !== join(vmDir, 'jail.sh'));
          assert.deepEqual(extra, [], `pid ${p} has only 0, 1, 2`);
        }
        // stdin /dev/null, stdout and stderr the log (a daemonized QEMU points its stdout at /dev/null itself).
        assert.equal(fds.get(0), '/dev/null');
        for (const f of [1, 2]) assert.ok([join(vmDir, 'vmm.log'), '/dev/null'].includes(fds.get(f)!), `pid ${p} fd ${f} -> ${fds.get(f)}`);
        assert.equal(fds.get(2), join(vmDir, 'vmm.log'));
        assert.deepEqual(environKeys(p), ['PATH'], `pid ${p}: environment`);
      }
      assert.equal((await t.api('POST', `/v1/vms/${id}/stop?force=true`)).body.state, 'stopped');
    } finally {
      closeSync(leaked);
      await t?.stop();
      rmSync(dirname(marker), { recursive: true, force: true });
    }
  });
}

test('H1: the VMM\'s root is a small tmpfs: the jail uid cannot write past its size or inode cap; reattach keeps it; stop unmounts it', { skip: !root && 'the jail needs root' }, async () => {
  const c = await s.api('POST', '/v1/vms', { name: 'jailed-quota' });
  const id: string = c.body.id;
  const vmDir = join(s.dataDir, 'vms', id);
  const started = await s.api('POST', `/v1/vms/${id}/start`);
  assert.equal(started.body.state, 'running', JSON.stringify(started.body));
  const vmm = vmmPid(started.body.pid);
  const rootDir = readlinkSync(`/proc/${vmm}/root`);
  const { uid, gid } = jailIdentity(id, jailCfg);

  /** A shell as the VMM's uid/gid (no groups, no capabilities), working in its root. */
  const asJail = (script: string) => spawnSync('setpriv', [`--reuid=${uid}`, `--regid=${gid}`, '--clear-groups', '--inh-caps=-all', '--bounding-set=-all', '--', 'sh', '-c', script], { cwd: rootDir, encoding: 'utf8', timeout: 30_000 });
  const dataBefore = statfsSync(s.dataDir);
  const big = asJail('head -c 16777216 /dev/zero > big');
  assert.notEqual(big.status, 0, 'writing 16 MiB fails');
  assert.match(big.stderr, /No space left on device/);
  assert.ok(statSync(join(rootDir, 'big')).size <= 4 << 20, 'the file stops at the cap');
  assert.ok(!existsSync(join(vmDir, 'big')), 'nothing landed in the VM directory on the data filesystem');
  // `true`, not `:`: a failed redirection on a special builtin would end sh with status 2.
  const many = asJail('i=0; while [ $i -lt 400 ]; do true > f$i || exit 7; i=$((i+1)); done');
  assert.equal(many.status, 7, 'file 400 cannot be created');
  assert.match(many.stderr, /No space left on device/);
  // How: a tmpfs of 4 MiB and 256 inodes on the VMM's root, mounted on the host.
  const m = parseMountInfo(readFileSync('/proc/self/mountinfo', 'utf8')).filter((x) => x.mountPoint === rootDir);
  assert.equal(m.length, 1, `one mount at the VMM's root ${rootDir}`);
  assert.equal(m[0]!.fsType, 'tmpfs');
  assert.ok(m[0]!.superOptions.includes('size=4096k') && m[0]!.superOptions.includes('nr_inodes=256'), m[0]!.superOptions.join(','));
  const statRoot = statfsSync(rootDir);
  assert.equal(statRoot.blocks * statRoot.bsize, 4 << 20, 'the root filesystem is the 4 MiB tmpfs');
  if (statfsSync(s.dataDir).type !== statRoot.type || dataBefore.blocks !== statRoot.blocks) {
    assert.ok(statfsSync(s.dataDir).bfree >= dataBefore.bfree - 256, 'the data filesystem did not fill');
  }
  // The server (root) still reaches the sockets; a restart reattaches through the mount.
  assert.equal((await s.api('POST', `/v1/vms/${id}/pause`)).body.state, 'paused');
  await s.kill9();
  await s.launch();
  assert.equal((await s.api('GET', `/v1/vms/${id}`)).body.state, 'paused', 'reattached');
  assert.equal((await s.api('POST', `/v1/vms/${id}/resume`)).body.state, 'running');
  assert.equal((await s.api('POST', `/v1/vms/${id}/stop?force=true`)).body.state, 'stopped');
  await waitFor('the root to be unmounted', () => !readFileSync('/proc/self/mountinfo', 'utf8').includes(vmDir) || undefined, 10_000);
  assert.deepEqual(readdirSync(vmDir), ['vmm.log'], 'only the log remains');
  assert.equal((await s.api('DELETE', `/v1/vms/${id}`)).status, 204);
});
