// The jail's command builder and host-path resolution: pure functions, checked on the real
// backends' foreground commands (QEMU and the native VMM) and, for quoting, through a real sh.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { lstatSync, readlinkSync } from 'node:fs';
import { buildJailCommand, imageInRoot, IN_ROOT_PATHS, jailIdentity, shellQuote, validateSpec, type JailSpec, type JailTools } from './command.js';
import { resolveHostPaths, which } from './host.js';
import { QemuHypervisor } from '../hypervisors/qemu.js';
import { NativeHypervisor, VMM_BIN } from '../hypervisors/native.js';
import { VMM_NODE_FLAGS } from '../../lib/vmm-node-flags.js';
import type { Vm } from '../db/vms.js';
import type { Image } from '../db/images.js';

const VM_ID = '6f1c2d3e-0000-4000-8000-0123456789ab';
const ROOT = `/srv/capsule/vms/${VM_ID}/root`;
const SCRIPT = `/srv/capsule/vms/${VM_ID}/jail.sh`;
const vm: Vm = {
  id: VM_ID, name: 'unit', state: 'stopped', image: 'default', hypervisor: 'qemu', vcpus: 2, memoryMiB: 512,
  createdAt: '', updatedAt: '',
} as Vm;
const image: Image = { name: 'default', description: '', kernel: '/images/default/vmlinuz', initrd: '/images/default/initramfs.cpio.gz', cmdline: 'console=ttyS0', createdAt: '', updatedAt: '' };
const tools: JailTools = {
  sh: '/bin/sh', unshare: '/usr/bin/unshare', setpriv: '/usr/bin/setpriv', prlimit: '/usr/bin/prlimit', mount: '/usr/bin/mount',
  chroot: '/usr/sbin/chroot', mknod: '/usr/bin/mknod', mkdir: '/usr/bin/mkdir', ln: '/usr/bin/ln', chown: '/usr/bin/chown', env: '/usr/bin/env',
};
const cfg = { uid: undefined, gid: undefined, uidBase: 100_000, uidCount: 65_536 };

const qemu = new QemuHypervisor('/usr/bin/qemu-system-x86_64', false);

function spec(over: Partial<JailSpec> = {}): JailSpec {
  const inRoot = imageInRoot(image);
  const fg = qemu.foregroundCommand(vm, inRoot.image, IN_ROOT_PATHS);
  const { uid, gid } = jailIdentity(VM_ID, cfg);
  return {
    vmId: VM_ID, root: ROOT, scriptPath: SCRIPT, uid, gid, nofile: 1024, fsizeBytes: 64 << 20,
    mounts: [
      { source: '/usr/lib', target: '/usr/lib', kind: 'dir' },
      { source: '/usr/bin/qemu-system-x86_64', target: '/usr/bin/qemu-system-x86_64', kind: 'file' },
      { source: '/usr/bin/setpriv', target: '/usr/bin/setpriv', kind: 'file' },
      ...inRoot.mounts,
    ],
    symlinks: [{ path: '/lib', target: 'usr/lib' }],
    kvm: false,
    cgroupProcs: [`/sys/fs/cgroup/cpu/capsule/${VM_ID}/cgroup.procs`, `/sys/fs/cgroup/memory/capsule/${VM_ID}/cgroup.procs`],
    command: fg.command, args: fg.args, env: {}, tools,
    ...over,
  };
}

/** The argv of the VMM line of the script (the one that starts with env -i), parsed by a real sh. */
function vmmArgv(script: string): string[] {
  const line = script.split('\n').find((l) => l.startsWith(`${tools.env} -i `))!;
  const out = execFileSync('/bin/sh', ['-c', `set -- ${line}; for a; do printf '%s\\0' "$a"; done`], { encoding: 'utf8' });
  return out.split('\0').slice(0, -1);
}

test('uid/gid: per VM from the range, stable, never root; or the configured fixed pair', () => {
  const a = jailIdentity(VM_ID, cfg);
  assert.deepEqual(a, jailIdentity(VM_ID, cfg), 'the same VM gets the same uid every launch');
  assert.equal(a.uid, a.gid);
  assert.ok(a.uid >= 100_000 && a.uid < 165_536);
  const ids = new Set(Array.from({ length: 50 }, (_, i) => jailIdentity(`vm-${i}`, cfg).uid));
  assert.ok(ids.size > 45, 'different VMs get different uids (up to hash collisions)');
  assert.deepEqual(jailIdentity(VM_ID, { ...cfg, uid: 4242, gid: undefined }), { uid: 4242, gid: 4242 });
  assert.deepEqual(jailIdentity(VM_ID, { ...cfg, uid: 4242, gid: 777 }), { uid: 4242, gid: 777 });
});

test('the image is rewritten to /image/kernel and /image/initrd, bound read-only from the host', () => {
  const r = imageInRoot(image);
  assert.equal(r.image.kernel, '/image/kernel');
  assert.equal(r.image.initrd, '/image/initrd');
  assert.deepEqual(r.mounts, [
    { source: image.kernel, target: '/image/kernel', kind: 'file' },
    { source: image.initrd, target: '/image/initrd', kind: 'file' },
  ]);
  const noInitrd = imageInRoot({ ...image, initrd: undefined });
  assert.equal(noInitrd.image.initrd, undefined);
  assert.equal(noInitrd.mounts.length, 1);
});

test('QEMU under the jail: unshare, cgroups first, read-only binds, uid drop, rlimits, in-root paths', () => {
  const s = spec();
  const c = buildJailCommand(s);
  assert.equal(c.command, '/usr/bin/unshare');
  // Own mount, PID, network, IPC and UTS namespaces; the script from a file, not argv (ps shows argv).
  assert.deepEqual(c.args, ['--fork', '--pid', '--mount', '--net', '--ipc', '--uts', '--propagation', 'private', '--kill-child', '--', '/bin/sh', SCRIPT]);
  assert.ok(!c.args.some((a) => a.includes('\n') || a.includes('console=')), 'neither the script nor the kernel command line in argv');
  assert.ok(c.args.join(' ').includes(VM_ID), 'the command line names the VM (reattach checks it)');
  assert.deepEqual(c.env, { PATH: '/usr/sbin:/usr/bin:/sbin:/bin' }, 'nothing of the server environment');

  const lines = c.script.split('\n');
  const firstMount = lines.findIndex((l) => l.includes(' -o bind,'));
  for (const f of s.cgroupProcs) {
    const i = lines.findIndex((l) => l.startsWith(`echo $$ > ${f}`));
    assert.ok(i >= 0 && i < firstMount, `joins ${f} before building the root`);
  }
  // Every bind is read-only, nosuid, nodev, into the root.
  for (const m of s.mounts) {
    assert.ok(lines.some((l) => l.startsWith(`${tools.mount} -o bind,ro,nosuid,nodev ${m.source} "$R"${m.target} `)), `binds ${m.source}`);
  }
  assert.ok(lines.includes(`R=${ROOT}`));
  assert.ok(c.script.includes(`${tools.ln} -sfn usr/lib "$R"/lib`));
  assert.ok(c.script.includes('-t proc -o nosuid,nodev,noexec proc "$R/proc"'));
  assert.ok(c.script.includes('-t tmpfs -o nosuid,nodev,noexec,mode=1777,size=16m,nr_inodes=1024 capsule-tmp "$R/tmp"'));
  assert.ok(c.script.includes('size=64k,nr_inodes=16 capsule-dev "$R/dev"'));
  assert.ok(c.script.includes('"$R/dev/null" c 1 3') && c.script.includes('"$R/dev/urandom" c 1 9'));
  assert.ok(!c.script.includes('/dev/kvm'), 'no /dev/kvm for TCG');
  assert.equal(lines.at(-1), 'exit $?', 'sh waits for the VMM (it is not exec-ed) and passes on its status');

  const all = vmmArgv(c.script);
  assert.deepEqual(all.slice(0, 3), ['/usr/bin/env', '-i', 'PATH=/usr/sbin:/usr/bin:/sbin:/bin'], 'the VMM gets exactly PATH (sh would add PWD)');
  const argv = all.slice(3);
  assert.deepEqual(argv.slice(0, 12), [
    '/usr/bin/prlimit', '--nofile=1024:1024', `--fsize=${64 << 20}:${64 << 20}`, '--',
    '/usr/sbin/chroot', ROOT,
    '/usr/bin/setpriv', `--reuid=${s.uid}`, `--regid=${s.gid}`, '--clear-groups', '--no-new-privs', '--inh-caps=-all',
  ]);
  assert.deepEqual(argv.slice(12, 15), ['--bounding-set=-all', '--', '/usr/bin/qemu-system-x86_64']);
  const vmmArgs = argv.slice(15);
  assert.deepEqual(vmmArgs, [...s.args]);
  const joined = vmmArgs.join(' ');
  assert.ok(joined.includes('path=/console,server=on'));
  assert.ok(joined.includes('unix:/qmp,server=on'));
  assert.equal(vmmArgs[vmmArgs.indexOf('-readconfig') + 1], '/vmm.cfg', 'the kernel command line from the config file');
  assert.ok(!vmmArgs.includes('-append') && !joined.includes('console=ttyS0'), 'not in argv');
  assert.equal(vmmArgs[vmmArgs.indexOf('-kernel') + 1], '/image/kernel');
  assert.equal(vmmArgs[vmmArgs.indexOf('-initrd') + 1], '/image/initrd');
  assert.ok(!joined.includes('/srv/capsule') && !joined.includes('/images/default'), 'no host path reaches the VMM');
  for (const f of ['-daemonize', '-pidfile', '-D']) assert.ok(!vmmArgs.includes(f), `no ${f} in the foreground`);
  assert.ok(joined.includes(`capsule-${VM_ID}`), 'the VMM keeps the VM id in its name');
});

test('limits and uid come from the spec', () => {
  const c = buildJailCommand(spec({ uid: 4242, gid: 777, nofile: 256, fsizeBytes: 1 << 20 }));
  const argv = vmmArgv(c.script);
  assert.ok(argv.includes('--nofile=256:256') && argv.includes(`--fsize=${1 << 20}:${1 << 20}`));
  assert.ok(argv.includes('--reuid=4242') && argv.includes('--regid=777'));
});

test('the native VMM: node with its flags and the repository bound in, in-root paths, its own /dev/kvm owned by the jail uid', () => {
  const native = new NativeHypervisor({ available: true, reason: 'unit' });
  const inRoot = imageInRoot(image);
  const fg = native.foregroundCommand({ ...vm, hypervisor: 'native' }, inRoot.image, IN_ROOT_PATHS);
  assert.equal(fg.command, process.execPath);
  // node's flags for the VMM come first (lib/vmm-node-flags.ts; none today), then the program
  assert.deepEqual(fg.args.slice(0, VMM_NODE_FLAGS.length), VMM_NODE_FLAGS);
  assert.equal(fg.args[VMM_NODE_FLAGS.length], VMM_BIN);
  assert.equal(fg.args[fg.args.indexOf('-kernel') + 1], '/image/kernel');
  assert.equal(fg.args[fg.args.indexOf('-initrd') + 1], '/image/initrd');
  assert.equal(fg.args[fg.args.indexOf('-chardev') + 1], 'id=console,path=/console');
  assert.equal(fg.args[fg.args.indexOf('-api-channel') + 1], 'unix:/qmp');
  assert.equal(fg.args[fg.args.indexOf('-config') + 1], '/vmm.cfg');
  assert.ok(!fg.args.includes('-append'), 'the kernel command line is in the -config file, not argv');
  assert.deepEqual(JSON.parse(fg.config!), { 'boot-source': { boot_args: 'console=ttyS0' } });
  assert.ok(fg.args.includes('-D') && fg.args[fg.args.indexOf('-D') + 1] !== '/vmm.log', 'a bare -D: log on stderr');
  assert.ok(!fg.args.includes('-daemonize') && !fg.args.includes('-pidfile'));
  assert.ok(native.usesKvm());
  const files = native.jailFiles();
  for (const p of ['/bin', '/dist', '/node_modules', '/package.json']) assert.ok(files.some((f) => f.endsWith(p)), `binds the repository's ${p}`);

  const s = spec({ command: fg.command, args: fg.args, env: { CAPSULE_LOG_LEVEL: 'info' }, kvm: true });
  const c = buildJailCommand(s);
  assert.ok(c.script.includes(`${tools.mknod} -m 0600 "$R/dev/kvm" c 10 232 && ${tools.chown} ${s.uid}:${s.gid} "$R/dev/kvm"`));
  assert.deepEqual(c.env, { PATH: '/usr/sbin:/usr/bin:/sbin:/bin' });
  const argv = vmmArgv(c.script);
  assert.deepEqual(argv.slice(0, 4), ['/usr/bin/env', '-i', 'PATH=/usr/sbin:/usr/bin:/sbin:/bin', 'CAPSULE_LOG_LEVEL=info'], 'the backend\'s variables reach the VMM through env -i');
  assert.deepEqual(argv.slice(18), [process.execPath, ...fg.args]);
});

test('unsafe plans are refused', () => {
  assert.throws(() => validateSpec(spec({ uid: 0 })), /root/);
  assert.throws(() => validateSpec(spec({ gid: 0 })), /root/);
  assert.throws(() => validateSpec(spec({ root: '/' })), /root cannot be \//);
  assert.throws(() => validateSpec(spec({ root: 'var/vms/x' })), /absolute/);
  assert.throws(() => validateSpec(spec({ root: '/srv/../etc' })), /normalized/);
  assert.throws(() => validateSpec(spec({ mounts: [{ source: '/etc', target: '/', kind: 'dir' }] })), /over the root/);
  assert.throws(() => validateSpec(spec({ command: 'qemu-system-x86_64' })), /absolute/);
  assert.throws(() => validateSpec(spec({ scriptPath: `${ROOT}/jail.sh` })), /not be inside/);
  assert.throws(() => validateSpec(spec({ env: { 'A=B': 'x' } })), /variable name/);
});

test('shell quoting survives a real sh', () => {
  for (const s of ["plain", "with space", "it's", "$(id) `id` $HOME \\ \" ;|&<>*?", "a\nb", "console=ttyS0 quiet panic=-1"]) {
    assert.equal(execFileSync('/bin/sh', ['-c', `printf '%s' ${shellQuote(s)}`], { encoding: 'utf8' }), s);
  }
});

test('host paths: links recreated in the root, real directories bound once', () => {
  const r = resolveHostPaths(['/lib', '/usr/lib', '/usr/lib/x86_64-linux-gnu', '/does/not/exist']);
  assert.ok(r.mounts.some((m) => m.target === '/usr/lib' && m.kind === 'dir'));
  assert.ok(!r.mounts.some((m) => m.target.startsWith('/usr/lib/')), 'nothing nested in a bound directory');
  assert.ok(!r.mounts.some((m) => m.target.includes('/does/')), 'missing paths are skipped');
  if (lstatSync('/lib').isSymbolicLink()) {
    assert.deepEqual(r.symlinks.find((l) => l.path === '/lib'), { path: '/lib', target: readlinkSync('/lib') });
  }
  const sh = which('sh');
  assert.ok(sh && sh.startsWith('/'));
  assert.equal(which('no-such-tool-capsule'), undefined);
  assert.throws(() => resolveHostPaths(['/']), /host root/);
});

test('QEMU\'s kernel command line: a -readconfig file where its format can hold it, else -append', async () => {
  const { qemuConfigFile, QEMU_CONFIG_MAX_CMDLINE } = await import('../hypervisors/qemu.js');
  assert.equal(qemuConfigFile('console=ttyS0 a=1,b=2 c=\'x y\''), '[machine]\nappend = "console=ttyS0 a=1,b=2 c=\'x y\'"\n');
  assert.equal(qemuConfigFile('say="hi"'), undefined, 'no escapes for a double quote');
  assert.equal(qemuConfigFile(''), undefined);
  assert.equal(qemuConfigFile('x'.repeat(QEMU_CONFIG_MAX_CMDLINE + 1)), undefined, 'QEMU reads 1023-byte lines');
  const paths = { qmpSocket: '/q', consoleSocket: '/c', config: '/vmm.cfg' };
  const quoted = qemu.launchCommand({ ...vm, cmdline: 'say="hi"' }, image, { ...paths, dir: '/d', pidfile: '/d/p', log: '/d/l', root: '/d/root' });
  assert.equal(quoted.args[quoted.args.indexOf('-append') + 1], 'say="hi"');
  assert.equal(quoted.config, undefined);
  const plain = qemu.launchCommand({ ...vm, cmdline: 'secret=1' }, image, { ...paths, dir: '/d', pidfile: '/d/p', log: '/d/l', root: '/d/root' });
  assert.ok(!plain.args.includes('secret=1') && plain.args.includes('-readconfig'));
  assert.match(plain.config!, /append = "secret=1"/);
});

test('drives in the jail: each file bound at /drives/<id>, read-only for a read-only drive, writable otherwise', async () => {
  const { devicesInRoot, driveInRoot } = await import('./command.js');
  const devices = {
    drives: [
      { id: 'rootfs', path: '/images/sandbox/rootfs.ext4', readOnly: true, cache: 'writeback' as const, index: 0 },
      { id: 'drive-0', path: '/srv/capsule/volumes/a.img', readOnly: false, cache: 'none' as const, iops: 100, index: 2 },
    ],
    rng: true, kernelArgs: [],
  };
  const r = devicesInRoot(devices, (p) => `/real${p}`);
  assert.deepEqual(r.devices.drives.map((d) => d.path), ['/drives/rootfs', '/drives/drive-0']);
  assert.deepEqual(r.mounts, [
    { source: '/real/images/sandbox/rootfs.ext4', target: '/drives/rootfs', kind: 'file', readOnly: true },
    { source: '/real/srv/capsule/volumes/a.img', target: '/drives/drive-0', kind: 'file', readOnly: false },
  ]);
  assert.throws(() => driveInRoot('../etc'), /bad drive id/);
  assert.throws(() => driveInRoot('a/b'), /bad drive id/);

  const fg = qemu.foregroundCommand(vm, imageInRoot(image).image, IN_ROOT_PATHS, r.devices);
  const c = buildJailCommand(spec({ mounts: [...spec().mounts, ...r.mounts], args: fg.args }));
  const lines = c.script.split('\n');
  assert.ok(lines.some((l) => l.startsWith(`${tools.mount} -o bind,ro,nosuid,nodev /real/images/sandbox/rootfs.ext4 "$R"/drives/rootfs `)));
  assert.ok(lines.some((l) => l.startsWith(`${tools.mount} -o bind,nosuid,nodev /real/srv/capsule/volumes/a.img "$R"/drives/drive-0 `)), 'the writable drive is a writable bind');
  assert.ok(lines.some((l) => l.startsWith(': > "$R"/drives/drive-0 ')), 'the bind target is created first');
  const argv = vmmArgv(c.script);
  assert.ok(argv.includes('if=none,id=drive-0,file=/drives/drive-0,format=raw,readonly=off,cache.direct=on,cache.no-flush=off,throttling.iops-total=100'));
  assert.ok(!argv.slice(argv.indexOf('/usr/bin/qemu-system-x86_64')).join(' ').includes('/srv/capsule'), 'no host path reaches the VMM');
});
