// The server's native backend (bin/capsule-vmm) through the same lifecycle as the QEMU one,
// on a real /dev/kvm (directly, or in the nested lab via scripts/kvm-tests.sh).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { TestServer, EventCollector, ConsoleCollector } from '../test/harness.js';
import { probeKvm } from '../../lib/kvm-probe.js';
import { isAlive } from './process.js';

const BOOT_MS = 240_000; // nested KVM under TCG: a boot takes 10-40 s, a loaded machine more
let s: TestServer;
before(async () => {
  const kvm = probeKvm();
  assert.ok(kvm.available, `KVM is not usable here: ${kvm.reason}`);
  s = await TestServer.start({ env: { CAPSULE_STOP_TIMEOUT: '120' } });
});
after(async () => { await s?.stop(); });

test('health offers the native backend as the default', async () => {
  const h = (await s.api('GET', '/v1/health')).body;
  assert.equal(h.kvm, true);
  assert.ok(h.hypervisors.includes('native'), JSON.stringify(h));
  assert.equal(h.defaultHypervisor, 'native');
});

test('native: create, start, console, pause, resume, stop, delete', async () => {
  const c = await s.api('POST', '/v1/vms', { name: 'native-life', vcpus: 2, memoryMiB: 256 });
  assert.equal(c.status, 201);
  assert.equal(c.body.hypervisor, 'native');
  const id: string = c.body.id;
  const events = new EventCollector(s.ws(`/v1/vms/${id}/events`));
  await events.opened;

  const started = await s.api('POST', `/v1/vms/${id}/start`);
  assert.equal(started.status, 200, JSON.stringify(started.body) + (s.output.slice(-2000)));
  assert.equal(started.body.state, 'running');
  const pid: number = started.body.pid;
  assert.ok(isAlive(pid));
  // The tracked pid is the VMM's (or, jailed, its unshare's, whose argv names the VM's jail
  // script and nothing else: the VMM's command line is not in it). Reattach relies on the id.
  assert.ok(readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(id), 'the tracked process is this VM\'s');

  const cons = new ConsoleCollector(s.ws(`/v1/vms/${id}/console`));
  await cons.opened;
  await cons.waitFor(/CAPSULE_READY cpus=2/, BOOT_MS);
  cons.send('echo native-$((40+2))\n');
  await cons.waitFor('native-42', 60_000);

  assert.equal((await s.api('POST', `/v1/vms/${id}/pause`)).body.state, 'paused');
  await events.waitFor('STOP');
  assert.equal((await s.api('POST', `/v1/vms/${id}/resume`)).body.state, 'running');
  await events.waitFor('RESUME');

  const stopped = await s.api('POST', `/v1/vms/${id}/stop`);
  assert.equal(stopped.body.state, 'stopped', JSON.stringify(stopped.body));
  const shutdown = await events.waitFor('SHUTDOWN');
  assert.equal(shutdown.data.guest, true, 'the guest powered itself off (ACPI power button)');
  assert.ok(!isAlive(pid));
  const dir = join(s.dataDir, 'vms', id);
  assert.deepEqual(readdirSync(dir), ['vmm.log']);
  assert.equal((await s.api('DELETE', `/v1/vms/${id}`)).status, 204);
  assert.ok(!existsSync(dir));
  events.close();
  cons.close();
});

test('native: a killed VMM makes its VM crashed', async () => {
  const c = await s.api('POST', '/v1/vms', { name: 'native-crash' });
  const id: string = c.body.id;
  const all = new EventCollector(s.ws(`/v1/vms/${id}/events`));
  await all.opened;
  const started = await s.api('POST', `/v1/vms/${id}/start`);
  assert.equal(started.body.state, 'running');
  process.kill(started.body.pid, 'SIGKILL');
  await all.waitFor('CRASHED', () => true, 30_000);
  assert.equal((await s.api('GET', `/v1/vms/${id}`)).body.state, 'crashed');
  assert.deepEqual(readdirSync(join(s.dataDir, 'vms', id)), ['vmm.log']);
  all.close();
});

test('native: a VMM killed by its seccomp filter (test-only forbidden syscall) makes its VM crashed', async () => {
  // A second server whose environment carries the test-only variable; NativeHypervisor passes it
  // (and nothing else of the server's) to the VMMs it starts.
  const s2 = await TestServer.start({ env: { CAPSULE_VMM_TEST_FORBIDDEN_SYSCALL_AFTER_MS: '15000' } });
  try {
    const c = await s2.api('POST', '/v1/vms', { name: 'native-sigsys' });
    const id: string = c.body.id;
    const all = new EventCollector(s2.ws(`/v1/vms/${id}/events`));
    await all.opened;
    const started = await s2.api('POST', `/v1/vms/${id}/start`);
    assert.equal(started.body.state, 'running', JSON.stringify(started.body) + s2.output.slice(-2000));
    const crashed = await all.waitFor('CRASHED', () => true, 60_000);
    assert.equal(crashed.data.pid, started.body.pid);
    assert.equal((await s2.api('GET', `/v1/vms/${id}`)).body.state, 'crashed');
    assert.ok(!isAlive(started.body.pid));
    const log = readFileSync(join(s2.dataDir, 'vms', id, 'vmm.log'), 'utf8');
    assert.match(log, /seccomp filter installed on all threads/);
    assert.match(log, /test-only CAPSULE_VMM_TEST_FORBIDDEN_SYSCALL_AFTER_MS/);
    all.close();
  } finally {
    await s2.stop();
  }
});
