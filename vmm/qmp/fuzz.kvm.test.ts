// QMP fuzz drill (issue 10) against capsule-vmm with a booted guest, on a real /dev/kvm (the
// nested lab: scripts/kvm-tests.sh). Hostile QMP clients send random JSON values, truncated JSON,
// 1 MiB lines, deep nesting (the cases: vmm/testing/qmp-fuzz.ts), unknown commands, known commands with random arguments, and
// SCM_RIGHTS messages carrying junk fds (one, and many at once) with junk, invalid or unrelated
// commands. Every complete input gets an error reply {"error":{"class","desc"}} (or a return);
// afterwards the VMM answers query-status on a fresh connection, the guest still runs commands on
// its console, and the VMM holds no more fds than before.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { probeKvm } from '../../lib/kvm-probe.js';
import { ConsoleClient, killAllVmms, QmpClient, startVmm, testImage, waitForFile, type VmmProcess } from '../testing/clients.js';
import { fuzzQmp, SPARED } from '../testing/qmp-fuzz.js';

const SEED = Number(process.env.FUZZ_SEED ?? 20261201);
const BOOT_TIMEOUT = Number(process.env.CAPSULE_TEST_BOOT_TIMEOUT_MS ?? 240_000);
const work = mkdtempSync(join(tmpdir(), 'capsule-qmp-fuzz-'));
const qmpPath = join(work, 'qmp.sock');
const conPath = join(work, 'console.sock');
let vmm: VmmProcess;
let cons: ConsoleClient;

before(async () => {
  const p = probeKvm();
  assert.ok(p.available, `KVM is not usable here: ${p.reason}`);
  const img = await testImage();
  vmm = startVmm(['-kernel', img.kernel, '-initrd', img.initrd, '-append', img.cmdline, '-smp', '1', '-m', '256M',
    '-api-channel', `unix:${qmpPath}`, '-chardev', `id=console0,path=${conPath}`]);
  // The lab is slow to start a VMM under load: wait long, and say why when it never comes.
  await waitForFile(qmpPath, 120_000).catch((e: Error) => { throw new Error(`${e.message}; VMM exit ${vmm.child.exitCode}; stderr: ${vmm.stderr.slice(-2000)}`); });
  await waitForFile(conPath, 30_000);
  cons = await ConsoleClient.connect(conPath);
  await cons.waitFor(/CAPSULE_READY/, BOOT_TIMEOUT);
});
after(() => {
  cons?.close();
  killAllVmms();
});

const fdsOf = (pid: number) => readdirSync(`/proc/${pid}/fd`).length;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

test('QMP fuzz: hostile input gets error replies, the VMM and its guest keep running, no fd growth', { timeout: 20 * 60_000 }, async () => {
  const pid = vmm.child.pid!;
  const control = await QmpClient.connect(qmpPath);
  const commands = ((await control.execute('query-commands')) as Array<{ name: string }>).map((c) => c.name).filter((n) => !SPARED.has(n));
  await sleep(200);
  const fds0 = fdsOf(pid);
  const figures: Record<string, unknown> = { seed: SEED, ...(await fuzzQmp(qmpPath, commands, SEED)) };
  // After all that: the VMM answers, the guest runs, no fds grew.
  const fresh = await QmpClient.connect(qmpPath);
  assert.deepEqual(await fresh.execute('query-status'), { running: true, singlestep: false, status: 'running' });
  fresh.close();
  const echo = await cons.run('echo still-$((6*7))');
  assert.match(echo.out, /still-42/);
  control.close();
  await sleep(500);
  const fds1 = fdsOf(pid);
  Object.assign(figures, { vmmFds: { before: fds0, after: fds1 }, vmmAlive: true, guestRuns: true });
  const out = process.env.ROBUSTNESS_OUT;
  // (The lab mounts the host read-only: the printed line below is what bench/robustness.ts takes from the lab's output.)
  if (out) try { writeFileSync(join(out, 'qmp-fuzz.json'), JSON.stringify({ drill: 'qmp-fuzz', at: new Date().toISOString(), ...figures }, null, 2) + '\n'); } catch { /* read-only here */ }
  process.stdout.write(`# QMP fuzz figures: ${JSON.stringify(figures)}\n`);
  assert.ok(fds1 <= fds0, `VMM fds: ${fds0} before, ${fds1} after`);
  assert.equal(vmm.child.exitCode, null, 'the VMM runs');
});
