// capsule-vmm's seccomp filter on a real /dev/kvm: installed after init on every thread (vCPU
// workers included), the guest boots and is driven over console and QMP under it, resets end
// the VMM cleanly, a forbidden syscall kills it with SIGSYS, and in `-seccomp log` mode the
// kernel's audit records (dmesg, type=1326) show no syscall outside the list. Run by
// scripts/kvm-tests.sh (directly or in the nested lab).
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { copyFileSync, mkdtempSync, readFileSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { threadSeccompStatus } from '../seccomp/install.js';
import { syscallName } from '../seccomp/syscalls.js';
import { probeKvm } from '../lib/kvm-probe.js';
import { FORBIDDEN_SYSCALL_ENV } from './sandbox.js';
import { ConsoleClient, killAllVmms, QmpClient, startVmm, testImage, waitFor, waitForFile, type VmmProcess } from './testing/clients.js';

const BOOT_TIMEOUT = Number(process.env.CAPSULE_TEST_BOOT_TIMEOUT_MS ?? 180_000);
const READY = /CAPSULE_READY cpus=(\d+)/;
let img: Awaited<ReturnType<typeof testImage>>;
const work = mkdtempSync(join(tmpdir(), 'capsule-seccomp-test-'));

before(async () => {
  const p = probeKvm();
  assert.ok(p.available, `KVM is not usable here: ${p.reason}`);
  img = await testImage();
});
after(() => killAllVmms());

interface Vmm { vmm: VmmProcess; qmp: string; con: string; log: string }
function start(name: string, cpus: number, extra: string[] = [], env: NodeJS.ProcessEnv = {}, files: { kernel: string; initrd: string } = img): Vmm {
  const qmp = join(work, `${name}.qmp`);
  const con = join(work, `${name}.console`);
  const log = join(work, `${name}.log`);
  const vmm = startVmm(['-kernel', files.kernel, '-initrd', files.initrd, '-append', img.cmdline, '-smp', String(cpus), '-m', '256M',
    '-api-channel', `unix:${qmp}`, '-chardev', `id=console0,path=${con}`, '-D', log, ...extra], { CAPSULE_LOG_LEVEL: 'info', ...env });
  return { vmm, qmp, con, log };
}

/** The QMP socket listens just before the filter goes on: wait for the VMM's log line. */
async function waitInstalled(v: Vmm): Promise<void> {
  await waitFor(() => {
    try { return /seccomp filter installed/.test(readFileSync(v.log, 'utf8')) || undefined; } catch { return undefined; }
  }, 60_000, 'seccomp filter installed log line');
}

/** seccomp audit records (type=1326) of one process: syscall names with the thread names that made them. */
function auditRecords(pid: number): string[] {
  let text = '';
  try {
    text = execFileSync('dmesg', [], { encoding: 'utf8', maxBuffer: 64 << 20 });
  } catch (e) {
    return [`(dmesg failed: ${(e as Error).message})`];
  }
  const out = new Set<string>();
  for (const line of text.split('\n')) {
    if (!line.includes('type=1326') || !new RegExp(`\\bpid=${pid}\\b`).test(line)) continue;
    const nr = Number(/\bsyscall=(\d+)/.exec(line)?.[1]);
    const comm = /\bcomm="([^"]*)"/.exec(line)?.[1] ?? '?';
    out.add(`${syscallName(nr) ?? nr}(${nr}) by ${comm}`);
  }
  return [...out];
}

/** The VMM's exit, or a failure naming the log tail after `ms` (never an unbounded wait). */
async function exited(v: Vmm, ms = 60_000): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
  const t = new Promise<never>((_, rej) => setTimeout(() => {
    let tail = '';
    try { tail = readFileSync(v.log, 'utf8').slice(-1500); } catch { /* none */ }
    rej(new Error(`VMM ${v.vmm.child.pid} did not exit in ${ms} ms; stderr: ${v.vmm.stderr.slice(-500)}; log: ${tail}`));
  }, ms).unref());
  return Promise.race([v.vmm.exited, t]);
}

// one VMM at a time: the nested lab has 2 slow (TCG) CPUs
describe('capsule-vmm seccomp on KVM', { concurrency: false, timeout: 600_000 }, () => {
  test('kill mode: boots, console and QMP work, Seccomp: 2 on every thread, guest poweroff exits 0', async () => {
    const v = start('kill', 2);
    await waitForFile(v.qmp, 60_000);
    const pid = v.vmm.child.pid!;
    const cons = await ConsoleClient.connect(v.con);
    const q = await QmpClient.connect(v.qmp);
    await waitInstalled(v);
    const cpus = (await q.execute('query-cpus-fast')) as Array<{ 'thread-id': number }>;
    assert.equal(cpus.length, 2);
    const threads = threadSeccompStatus(pid);
    process.stdout.write(`# VMM threads under the filter: ${threads.map((t) => `${t.tid}:${t.name}:${t.seccomp}`).join(' ')}\n`);
    for (const t of threads) assert.equal(t.seccomp, 2, `thread ${t.tid} (${t.name}) Seccomp: ${t.seccomp}`);
    for (const c of cpus) assert.ok(threads.some((t) => t.tid === c['thread-id']), `vCPU thread ${c['thread-id']} listed`);
    assert.ok(threads.length >= 2 + 4, 'main, vCPU workers, libuv pool, V8 platform threads');
    await cons.waitFor(READY, BOOT_TIMEOUT);
    cons.type('echo SECCOMP_$((6*7))\n');
    await cons.waitFor(/SECCOMP_42/, 60_000);
    await q.execute('stop');
    await q.event('STOP');
    assert.equal(((await q.execute('query-status')) as { status: string }).status, 'paused');
    await q.execute('cont');
    await q.event('RESUME');
    assert.equal(((await q.execute('query-status')) as { status: string }).status, 'running');
    cons.type('echo AGAIN_$((40+2))\n');
    await cons.waitFor(/AGAIN_42/, 60_000);
    // threads created after install would lack the filter; there must be none
    for (const t of threadSeccompStatus(pid)) assert.equal(t.seccomp, 2, `thread ${t.tid} (${t.name})`);
    cons.type('poweroff\n');
    const sd = await q.event('SHUTDOWN', 60_000);
    assert.deepEqual(sd.data, { guest: true, reason: 'guest-shutdown' });
    const ex = await exited(v);
    assert.deepEqual(ex, { code: 0, signal: null }, v.vmm.stderr);
    assert.match(readFileSync(v.log, 'utf8'), /seccomp filter installed on all threads: \d+ syscalls/);
    q.close();
    cons.close();
  });

  test('log mode: a whole lifecycle (console, QMP, power button) leaves no seccomp audit record but the injected one', async () => {
    // The injected socket(2) proves that audit records of this process do reach dmesg here.
    const v = start('log', 2, ['-seccomp', 'log'], { [FORBIDDEN_SYSCALL_ENV]: '1000' });
    await waitForFile(v.qmp, 60_000);
    const pid = v.vmm.child.pid!;
    const cons = await ConsoleClient.connect(v.con);
    const q = await QmpClient.connect(v.qmp);
    await waitInstalled(v);
    await cons.waitFor(READY, BOOT_TIMEOUT);
    cons.type('echo LOG_$((6*7))\n');
    await cons.waitFor(/LOG_42/, 60_000);
    for (let i = 0; i < 3; i++) {
      await q.execute('stop');
      await q.event('STOP');
      await q.execute('query-status');
      await q.execute('cont');
      await q.event('RESUME');
    }
    await q.execute('query-cpus-fast');
    await q.execute('query-version');
    const q2 = await QmpClient.connect(v.qmp);
    await q2.execute('query-status');
    q2.close();
    let sd: Record<string, unknown> | undefined;
    for (let i = 0; i < 8 && !sd; i++) {
      await q.execute('system_powerdown');
      sd = await q.event('SHUTDOWN', 8_000).catch(() => undefined);
    }
    assert.ok(sd, 'guest powered off after the power button');
    const ex = await exited(v);
    assert.equal(ex.code, 0, v.vmm.stderr);
    await new Promise((r) => setTimeout(r, 500));
    const recs = auditRecords(pid);
    process.stdout.write(`# seccomp audit records of the log-mode VMM ${pid}: ${recs.join(', ') || 'none'}\n`);
    assert.ok(recs.some((r) => r.startsWith('socket(41)')), `the injected socket(2) is logged: ${recs.join(', ')}`);
    assert.deepEqual(recs.filter((r) => !r.startsWith('socket(41)')), [], 'syscalls outside the VMM policy');
    q.close();
    cons.close();
  });

  test('log mode: SIGTERM and QMP quit paths leave no audit record', async () => {
    const a = start('log-term', 1, ['-seccomp', 'log', '-pidfile', join(work, 'log-term.pid')]);
    const b = start('log-quit', 1, ['-seccomp', 'log']);
    await Promise.all([waitInstalled(a), waitInstalled(b)]);
    const cons = await ConsoleClient.connect(a.con);
    await cons.waitFor(READY, BOOT_TIMEOUT);
    a.vmm.child.kill('SIGTERM');
    const qb = await QmpClient.connect(b.qmp);
    await qb.execute('quit');
    const [ea, eb] = await Promise.all([exited(a), exited(b)]);
    assert.equal(ea.code, 0, a.vmm.stderr);
    assert.equal(eb.code, 0, b.vmm.stderr);
    await new Promise((r) => setTimeout(r, 500));
    const recs = [...auditRecords(a.vmm.child.pid!), ...auditRecords(b.vmm.child.pid!)];
    process.stdout.write(`# seccomp audit records (SIGTERM, quit): ${recs.join(', ') || 'none'}\n`);
    assert.deepEqual(recs, []);
    qb.close();
    cons.close();
  });

  test('kill mode: guest reboot and QMP system_reset end the VMM with SHUTDOWN <reset reason>, exit 0', async () => {
    const g = start('reboot', 1);
    const h = start('sysreset', 1);
    await Promise.all([waitInstalled(g), waitInstalled(h)]);
    const qh = await QmpClient.connect(h.qmp);
    const r = await qh.call('system_reset');
    const sdh = await qh.event('SHUTDOWN');
    assert.deepEqual(sdh.data, { guest: false, reason: 'host-qmp-system-reset' }, JSON.stringify(r));
    assert.deepEqual(await exited(h), { code: 0, signal: null }, h.vmm.stderr);
    const qg = await QmpClient.connect(g.qmp);
    const cons = await ConsoleClient.connect(g.con);
    await cons.waitFor(READY, BOOT_TIMEOUT);
    cons.type('reboot\n');
    const sdg = await qg.event('SHUTDOWN', 60_000);
    assert.deepEqual(sdg.data, { guest: true, reason: 'guest-reset' });
    assert.deepEqual(await exited(g), { code: 0, signal: null }, g.vmm.stderr);
    assert.ok(!qg.messages.some((m) => m.event === 'RESET'), 'no in-place reset under the filter');
    qg.close();
    qh.close();
    cons.close();
  });

  test('kill mode: a forbidden syscall after init (test-only injection) kills the VMM with SIGSYS', async () => {
    const v = start('inject', 1, [], { [FORBIDDEN_SYSCALL_ENV]: '2000' });
    await waitInstalled(v);
    const ex = await exited(v);
    assert.deepEqual(ex, { code: null, signal: 'SIGSYS' }, v.vmm.stderr);
  });

  test('-disable-seccomp: no filter; system_reset reboots in place from the boot files opened at start; one cut short ends the VMM (host-error)', async () => {
    // copies: this test replaces and truncates them
    const files = { kernel: join(work, 'vmlinuz'), initrd: join(work, 'initrd') };
    copyFileSync(img.kernel, files.kernel);
    copyFileSync(img.initrd, files.initrd);
    const v = start('nofilter', 1, ['-disable-seccomp'], {}, files);
    await waitForFile(v.qmp, 60_000);
    const q = await QmpClient.connect(v.qmp);
    for (const t of threadSeccompStatus(v.vmm.child.pid!)) assert.equal(t.seccomp, 0, `thread ${t.tid} (${t.name})`);
    const cons = await ConsoleClient.connect(v.con);
    await cons.waitFor(READY, BOOT_TIMEOUT);
    // The boot files are not kept in memory but read again at a reset, from the fds opened at
    // start: the initrd's path naming another file by then changes nothing.
    rmSync(files.initrd);
    writeFileSync(files.initrd, 'not an initrd');
    const before = cons.text.length;
    await q.execute('system_reset');
    await q.event('RESET', 60_000);
    await waitFor(() => READY.exec(cons.text.slice(before)) ?? undefined, BOOT_TIMEOUT, 'the guest booted again');
    // The kernel cut short in place: the rebuild fails, and the VMM ends instead of keeping a
    // half-built machine.
    truncateSync(files.kernel, 4096);
    void q.execute('system_reset').catch(() => undefined);
    const sd = await q.event('SHUTDOWN', 60_000);
    assert.deepEqual(sd.data, { guest: false, reason: 'host-error' });
    await exited(v);
    assert.match(readFileSync(v.log, 'utf8'), /reset failed: cannot read kernel .*vmlinuz: the file has 4096 bytes now/);
    cons.close();
    q.close();
  });
});
