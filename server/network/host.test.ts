// The network's pure parts: the pool, slots, names, MACs, the kernel argument, and the nftables
// rule sets (checked by `nft -c`, which parses and validates against the kernel without applying).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { egressRules, guestKernelArg, instanceTag, namespaceTable, parsePool, poolSlots, rootTable, slotAddresses, vmMac, vmNames, type VmNet } from './host.js';
import { buildJailCommand } from '../jail/command.js';

test('pool, slots and addresses', () => {
  const pool = parsePool('10.200.0.0/16');
  assert.equal(poolSlots(pool), 16384);
  assert.deepEqual(slotAddresses(pool, 0), { network: '10.200.0.0/30', gateway: '10.200.0.1', hostAddress: '10.200.0.2' });
  assert.deepEqual(slotAddresses(pool, 16383), { network: '10.200.255.252/30', gateway: '10.200.255.253', hostAddress: '10.200.255.254' });
  assert.deepEqual(parsePool('10.9.8.7/24'), parsePool('10.9.8.0/24'), 'host bits are dropped');
  assert.throws(() => parsePool('10.200.0.0'), /CAPSULE_NET_POOL/);
  assert.throws(() => parsePool('10.200.0.0/30'), /prefix/);
});

test('names: an instance tag, the VM id, 15 bytes for the veth; stable MACs', () => {
  const id = '45366ac0-1533-4200-ab52-85e33350c25d';
  const tag = instanceTag('/nonexistent/data');
  assert.match(tag, /^[0-9a-f]{4}$/);
  assert.notEqual(instanceTag('/nonexistent/other'), tag);
  const n = vmNames(tag, id);
  assert.equal(n.hostVeth, `cap${tag}45366ac0`);
  assert.ok(n.hostVeth.length <= 15);
  assert.equal(n.netns, `capsule-${tag}-${id}`);
  assert.equal(vmMac(id), vmMac(id));
  assert.match(vmMac(id), /^02:ca(:[0-9a-f]{2}){4}$/);
  assert.equal(guestKernelArg('1.1.1.1'), 'capsule.ip=169.254.0.21/30,169.254.0.22,1.1.1.1');
});

const v: VmNet = {
  vmId: '45366ac0-1533-4200-ab52-85e33350c25d', names: vmNames('abcd', '45366ac0-1533-4200-ab52-85e33350c25d'),
  gateway: '10.200.0.1', hostAddress: '10.200.0.2', mac: '02:ca:00:00:00:01', egress: true, owner: { uid: 100001, gid: 100001 },
};

test('rule sets: what they say', () => {
  const root = rootTable(v);
  assert.match(root, /iifname "capabcd45366ac0" fib daddr type \{ local, broadcast, multicast \} drop/);
  assert.match(root, /iifname "capabcd45366ac0" oifname "cap\*" drop/);
  assert.match(root, /ip saddr 10\.200\.0\.2 oifname != "capabcd45366ac0" masquerade/);
  assert.match(root, /chain egress \{\n\s+accept/);
  assert.match(rootTable({ ...v, egress: false }), /chain egress \{\n\s+drop/);
  assert.match(namespaceTable(v), /ip daddr 10\.200\.0\.2 dnat to 169\.254\.0\.21/);
  assert.match(egressRules(v, false), /flush chain inet capsule-abcd-45366ac0-1533-4200-ab52-85e33350c25d egress\nadd rule .* egress drop/);
});

test('rule sets: nft accepts them (nft -c)', { skip: process.getuid?.() !== 0 || spawnSync('nft', ['--version']).status !== 0 ? 'needs root and nft' : false }, () => {
  for (const rules of [rootTable(v), rootTable({ ...v, egress: false }), namespaceTable(v)]) {
    const r = spawnSync('nft', ['-c', '-f', '-'], { input: rules, encoding: 'utf8' });
    assert.equal(r.status, 0, `${r.stderr}\n${rules}`);
  }
});

test('the jail in a VM\'s network namespace: nsenter --net execs unshare without --net; /dev/net/tun for the VMM', () => {
  const tools = { sh: '/bin/sh', unshare: '/usr/bin/unshare', setpriv: '/usr/bin/setpriv', prlimit: '/usr/bin/prlimit', mount: '/bin/mount', chroot: '/usr/sbin/chroot', mknod: '/bin/mknod', mkdir: '/bin/mkdir', ln: '/bin/ln', chown: '/bin/chown', env: '/usr/bin/env' };
  const spec = { vmId: 'vm1', root: '/data/vms/vm1/root', scriptPath: '/data/vms/vm1/jail.sh', uid: 100001, gid: 100001, nofile: 1024, fsizeBytes: 1 << 26, mounts: [], symlinks: [], kvm: false, cgroupProcs: [], command: '/usr/bin/qemu', args: [], env: {}, tools };
  const plain = buildJailCommand(spec);
  assert.equal(plain.command, '/usr/bin/unshare');
  assert.ok(plain.args.includes('--net'));
  assert.doesNotMatch(plain.script, /dev\/net\/tun/);
  const net = buildJailCommand({ ...spec, netns: { path: '/run/netns/capsule-abcd-vm1', nsenter: '/usr/bin/nsenter' } });
  assert.equal(net.command, '/usr/bin/nsenter');
  assert.deepEqual(net.args.slice(0, 3), ['--net=/run/netns/capsule-abcd-vm1', '--', '/usr/bin/unshare']);
  assert.ok(!net.args.includes('--net'), 'no new network namespace');
  assert.match(net.script, /mknod -m 0600 "\$R\/dev\/net\/tun" c 10 200 && \/bin\/chown 100001:100001 "\$R\/dev\/net\/tun"/);
});
