// End-to-end tests of capsule-vmm on a real /dev/kvm: boot the default image, QMP lifecycle,
// guest power-off, power button, daemonize/pidfile/log, bad kernels. Run by scripts/kvm-tests.sh
// (directly when KVM is usable, else inside the nested lab). They FAIL when KVM is unusable.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { probeKvm } from '../lib/kvm-probe.js';
import { ConsoleClient, killAllVmms, QmpClient, startVmm, testImage, waitFor, waitForFile } from './testing/clients.js';
import { mappings } from './testing/proc-mem.js';

const BOOT_TIMEOUT = Number(process.env.CAPSULE_TEST_BOOT_TIMEOUT_MS ?? 240_000);
const READY = /CAPSULE_READY cpus=(\d+) uptime=([\d.]+)/;
let img: Awaited<ReturnType<typeof testImage>>;
const work = mkdtempSync(join(tmpdir(), 'capsule-kvm-test-'));

before(async () => {
  const p = probeKvm();
  assert.ok(p.available, `KVM is not usable here: ${p.reason}`);
  img = await testImage();
});

// a failed test must not leave a VMM running (it would keep the test process alive)
const daemonPids: number[] = [];
after(() => {
  killAllVmms();
  for (const pid of daemonPids) {
    try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ }
  }
});

/** A process's VmFlags by mapping name (its first mapping of that name); a read-write one of >= 256 MiB as "guest RAM". */
function vmFlagsByName(pid: number): Map<string, string[]> {
  const out = new Map<string, string[]>();
  for (const m of mappings(pid)) {
    // guest RAM: read-write and at least 256 MiB (it may have merged with a neighbour of the same
    // flags; V8 and glibc reserve large ranges too, but without access)
    const name = m.perms === 'rw-p' && m.end - m.start >= 256n * 1024n * 1024n ? 'guest RAM' : m.name;
    if (!out.has(name)) out.set(name, m.vmFlags);
  }
  return out;
}

function baseArgs(name: string, cpus: number): { args: string[]; qmp: string; con: string } {
  const qmp = join(work, `${name}.qmp`);
  const con = join(work, `${name}.console`);
  return {
    qmp,
    con,
    args: ['-kernel', img.kernel, '-initrd', img.initrd, '-append', img.cmdline, '-smp', String(cpus), '-m', '256M',
      '-api-channel', `unix:${qmp}`, '-chardev', `id=console0,path=${con}`],
  };
}

// One at a time: the lab has 2 vCPUs under TCG, and concurrent boots there starve each other.
describe('capsule-vmm on KVM', { concurrency: false }, () => {
  test('1 vCPU, daemonized: boots, stop/cont/query-status, guest poweroff from the console', async () => {
    const { args, qmp, con } = baseArgs('one', 1);
    const pidfile = join(work, 'one.pid');
    const log = join(work, 'one.log');
    const t0 = Date.now();
    const parent = startVmm([...args, '-daemonize', '-pidfile', pidfile, '-D', log], { CAPSULE_LOG_LEVEL: 'info' });
    const pr = await parent.exited;
    assert.equal(pr.code, 0, `daemonizing parent failed: ${parent.stderr}`);
    // the parent returned only after the daemon's QMP socket listens and its pidfile exists
    assert.ok(existsSync(qmp), 'QMP socket exists when the parent returns');
    const pid = Number(readFileSync(pidfile, 'utf8').trim());
    assert.ok(pid > 0 && pid !== parent.child.pid);
    daemonPids.push(pid);
    process.kill(pid, 0);
    const cons = await ConsoleClient.connect(con);
    const q = await QmpClient.connect(qmp);
    assert.deepEqual((q.greeting as { QMP: { capabilities: unknown[] } }).QMP.capabilities, []);
    assert.deepEqual(await q.execute('query-status'), { running: true, singlestep: false, status: 'running' });
    const m = await cons.waitFor(READY, BOOT_TIMEOUT);
    assert.equal(m[1], '1');
    process.stdout.write(`# boot to CAPSULE_READY (1 vCPU, daemonized): ${Date.now() - t0} ms\n`);
    // THP is off while the VMM starts, then lifted for the guest with the VMM's own mappings
    // marked nohugepage (docs/vmm.md, "Idle memory"): the daemon's heap (as it was then: brk
    // growth after it is a mapping of its own) and main stack carry `nh`, guest RAM does not,
    // and the flag is no longer set
    const flags = vmFlagsByName(pid);
    for (const name of ['[heap]', '[stack]']) assert.ok(flags.get(name)?.includes('nh'), `${name}: ${flags.get(name)?.join(' ')}`);
    const guestRam = flags.get('guest RAM');
    assert.ok(guestRam && !guestRam.includes('nh'), `guest RAM: ${guestRam?.join(' ')}`);
    assert.match(readFileSync(`/proc/${pid}/status`, 'utf8'), /^THP_enabled:\s*1$/m);

    const cpus = (await q.execute('query-cpus-fast')) as Array<Record<string, unknown>>;
    assert.equal(cpus.length, 1);
    assert.equal(cpus[0]?.['cpu-index'], 0);
    assert.ok(Number(cpus[0]?.['thread-id']) > 0);

    await q.execute('stop');
    const stop = await q.event('STOP');
    assert.ok(typeof (stop.timestamp as { seconds: number }).seconds === 'number');
    assert.deepEqual(await q.execute('query-status'), { running: false, singlestep: false, status: 'paused' });
    // a paused guest does not answer the console
    const before = cons.text.length;
    cons.type('echo PAUSED_$((6*7))\n');
    await new Promise((r) => setTimeout(r, 1500));
    assert.ok(!cons.text.slice(before).includes('PAUSED_42'), 'guest ran while paused');
    await q.execute('cont');
    await q.event('RESUME');
    assert.deepEqual(await q.execute('query-status'), { running: true, singlestep: false, status: 'running' });
    await cons.waitFor(/PAUSED_42/, 60_000);

    cons.type('poweroff\n');
    const sd = await q.event('SHUTDOWN', 60_000);
    assert.deepEqual(sd.data, { guest: true, reason: 'guest-shutdown' });
    await waitFor(() => {
      try {
        process.kill(pid, 0);
        return undefined;
      } catch {
        return true;
      }
    }, 10_000, 'daemon exit');
    // under the seccomp filter unlink(2) fails (EPERM): the pidfile and sockets are the parent's
    // to remove (the SIGTERM test checks the removal with -disable-seccomp)
    const logText = readFileSync(log, 'utf8');
    assert.match(logText, /seccomp filter installed on all threads/);
    assert.match(logText, /shutdown: guest-shutdown/);
    q.close();
    cons.close();
  });

  test('2 vCPUs: boots with cpus=2, power button (system_powerdown) ends it with exit 0', async () => {
    const { args, qmp, con } = baseArgs('two', 2);
    const t0 = Date.now();
    const vmm = startVmm(args);
    await waitForFile(qmp, 30_000);
    const cons = await ConsoleClient.connect(con);
    const q = await QmpClient.connect(qmp);
    const m = await cons.waitFor(READY, BOOT_TIMEOUT);
    process.stdout.write(`# boot to CAPSULE_READY (2 vCPUs): ${Date.now() - t0} ms\n`);
    assert.equal(m[1], '2', 'guest sees 2 CPUs');
    const cpus = (await q.execute('query-cpus-fast')) as unknown[];
    assert.equal(cpus.length, 2);
    // The guest init starts its power-button watcher (a background `head` on the evdev device)
    // just before printing the marker; a press before the device is open is lost, so press
    // again until the guest powers off, like a user would.
    let sd: Record<string, unknown> | undefined;
    for (let i = 0; i < 8 && !sd; i++) {
      await q.execute('system_powerdown');
      await q.event('POWERDOWN');
      sd = await q.event('SHUTDOWN', 8_000).catch(() => undefined);
    }
    assert.ok(sd, 'guest powered off after the power button');
    assert.deepEqual(sd.data, { guest: true, reason: 'guest-shutdown' });
    const ex = await vmm.exited;
    assert.equal(ex.code, 0, vmm.stderr);
    q.close();
    cons.close();
  });

  test('QMP quit: SHUTDOWN host-qmp-quit, exit 0; errors keep the connection usable', async () => {
    const { args, qmp } = baseArgs('quit', 1);
    const vmm = startVmm(args);
    await waitForFile(qmp, 30_000);
    const q = await QmpClient.connect(qmp, false);
    const early = await q.call('query-status');
    assert.equal((early.error as { class: string }).class, 'CommandNotFound');
    await q.execute('qmp_capabilities');
    q.sendRaw('{"execute": bad json}\n');
    const bad = await q.next((m) => 'error' in m && !('id' in m));
    assert.equal((bad.error as { class: string }).class, 'GenericError');
    const unk = await q.call('no-such-command');
    assert.equal((unk.error as { class: string }).class, 'CommandNotFound');
    const q2 = await QmpClient.connect(qmp);
    assert.equal(((await q2.execute('query-status')) as { status: string }).status, 'running');
    await q.execute('quit');
    const sd = await q.event('SHUTDOWN');
    assert.deepEqual(sd.data, { guest: false, reason: 'host-qmp-quit' });
    const sd2 = await q2.event('SHUTDOWN');
    assert.deepEqual(sd2.data, { guest: false, reason: 'host-qmp-quit' });
    const ex = await vmm.exited;
    assert.equal(ex.code, 0, vmm.stderr);
    q.close();
    q2.close();
  });

  test('SIGTERM: clean exit; without the seccomp filter, sockets and pidfile removed', async () => {
    const { args, qmp, con } = baseArgs('term', 1);
    const pidfile = join(work, 'term.pid');
    const vmm = startVmm([...args, '-pidfile', pidfile, '-disable-seccomp']);
    await waitForFile(pidfile, 30_000);
    vmm.child.kill('SIGTERM');
    const ex = await vmm.exited;
    assert.equal(ex.code, 0, vmm.stderr);
    assert.ok(!existsSync(pidfile) && !existsSync(qmp) && !existsSync(con));
  });

  test('a broken or truncated kernel is a clean error exit', async () => {
    const junk = join(work, 'junk');
    writeFileSync(junk, Buffer.alloc(100_000, 7));
    const trunc = join(work, 'trunc');
    writeFileSync(trunc, readFileSync(img.kernel).subarray(0, 200_000));
    for (const k of [junk, trunc, join(work, 'missing')]) {
      const qmp = join(work, 'bad.qmp');
      const vmm = startVmm(['-kernel', k, '-api-channel', `unix:${qmp}`]);
      const ex = await vmm.exited;
      assert.notEqual(ex.code, 0);
      assert.match(vmm.stderr, /capsule-vmm: error: /);
      assert.doesNotMatch(vmm.stderr, /at .*\.js/, 'no stack trace');
      assert.ok(!existsSync(qmp));
    }
  });
});
