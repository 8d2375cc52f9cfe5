// The VMM's sandbox step without KVM: the policy's KVM ioctl numbers are the ones the VMM issues,
// and the install + test-only injection behave as documented in a child Node process.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import * as io from './kvm/ioctls.js';
import { VMM_IOCTLS } from '../seccomp/policies/vmm.js';
import { FORBIDDEN_SYSCALL_ENV } from './sandbox.js';
import { NET_IOCTLS } from './devices/virtio/net/sys.js';

const sandbox = fileURLToPath(new URL('./sandbox.js', import.meta.url));

test('the policy allows exactly the KVM requests the VMM uses after init, with the VMM\'s numbers', () => {
  const kvm = Object.keys(VMM_IOCTLS).filter((k) => k.startsWith('KVM_'));
  assert.deepEqual(kvm.sort(), ['KVM_GET_MP_STATE', 'KVM_GET_REGS', 'KVM_GET_SREGS', 'KVM_IOEVENTFD', 'KVM_IRQFD', 'KVM_IRQ_LINE', 'KVM_RUN',
    // snapshot (vmm/cpu/state.ts saveVcpuState/saveVmState, and KVMCLOCK_CTRL at pause): reads only
    'KVM_GET_CLOCK', 'KVM_GET_CPUID2', 'KVM_GET_DEBUGREGS', 'KVM_GET_IRQCHIP', 'KVM_GET_LAPIC', 'KVM_GET_MSRS', 'KVM_GET_PIT2',
    'KVM_GET_VCPU_EVENTS', 'KVM_GET_XCRS', 'KVM_GET_XSAVE', 'KVM_GET_XSAVE2', 'KVM_KVMCLOCK_CTRL'].sort());
  assert.ok(!kvm.some((k) => k.startsWith('KVM_SET_')), 'restoring state is init-only');
  for (const k of kvm) assert.equal(VMM_IOCTLS[k], (io as unknown as Record<string, number>)[k], k);
});

test('the tap and vhost requests allowed after init are virtio-net\'s numbers, and only the post-init ones', () => {
  const net = Object.keys(VMM_IOCTLS).filter((k) => k.startsWith('TUN') || k.startsWith('VHOST_'));
  for (const k of net) assert.equal(VMM_IOCTLS[k], NET_IOCTLS[k], k);
  for (const initOnly of ['TUNSETIFF', 'VHOST_SET_OWNER', 'VHOST_SET_MEM_TABLE', 'VHOST_GET_FEATURES']) assert.ok(!net.includes(initOnly), initOnly);
  assert.equal(net.length, 11);
});

function child(mode: 'kill' | 'log', injectMs?: number) {
  const code = `import { prepare, install, scheduleForbiddenSyscall } from ${JSON.stringify(sandbox)};
await prepare();
const info = install(${JSON.stringify(mode)});
console.log(JSON.stringify(info));
scheduleForbiddenSyscall(${injectMs ?? 0}, (r) => console.log('returned ' + r));
setTimeout(() => {}, 1500);`;
  const env = { ...process.env };
  if (injectMs !== undefined) env[FORBIDDEN_SYSCALL_ENV] = String(injectMs);
  else delete env[FORBIDDEN_SYSCALL_ENV];
  return spawnSync(process.execPath, ['--input-type=module', '-e', code], { env, encoding: 'utf8', timeout: 20_000 });
}

test('install(kill) then the test-only injection: killed by SIGSYS', () => {
  const r = child('kill', 100);
  assert.equal(r.signal, 'SIGSYS', r.stderr);
  const info = JSON.parse(r.stdout.split('\n')[0] as string) as { syscalls: number; mode: string };
  assert.equal(info.mode, 'kill');
  assert.ok(info.syscalls <= 56, `${info.syscalls} syscalls`);
});

test('install(log) then the injection: the call goes through, the process exits 0', () => {
  const r = child('log', 100);
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /returned \d+/);
});

test('install(kill) without the injection: an idle Node process lives and exits 0', () => {
  const r = child('kill');
  assert.equal(r.status, 0, r.stderr);
});
