// Lifecycle soak drill (issue 10): create → start → stop → delete cycles back to back (LIFECYCLES:
// 50 in `npm test`, to keep it within its time; scripts/robustness.sh runs 200) with
// real VMMs (QEMU, jailed where the host allows; the start returns once QMP answers, the guest is
// not waited for). The server's fds and RSS are flat (before/after reported), it leaves no zombie
// children, and nothing of the VMs stays behind (directories, mounts, VMM processes).
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { TestServer, waitFor } from '../test/harness.js';
import { writeFigures } from '../test/figures.js';
import { cgroupsLeft, fdCount, jailCgroupParents, pidsWithCmdline, rssMiB, zombieChildren } from '../test/proc.js';

const CYCLES = Number(process.env.LIFECYCLES ?? 50);
const WARMUP = 5;
let s: TestServer | undefined;
after(async () => { await s?.stop(); });

test(`${CYCLES} VM lifecycles back to back: fds and RSS flat, no zombies, nothing left behind`, { timeout: 60 * 60_000 }, async () => {
  s = await TestServer.start({ env: { CAPSULE_RATE_LIMIT: '100000', CAPSULE_RATE_BURST: '100000' } });
  const server = s;
  const ids: string[] = [];
  const cgroupParents = jailCgroupParents(await (await fetch(`${s.url}/v1/health`)).json() as never);
  const cycle = async (i: number) => {
    const c = await server.api('POST', '/v1/vms', { name: `cycle-${i}`, memoryMiB: 128 });
    assert.equal(c.status, 201, JSON.stringify(c.body));
    const id = c.body.id as string;
    ids.push(id);
    const started = await server.api('POST', `/v1/vms/${id}/start`);
    assert.equal(started.status, 200, `cycle ${i}: ${JSON.stringify(started.body)}`);
    const stopped = await server.api('POST', `/v1/vms/${id}/stop?force=true`);
    assert.equal(stopped.status, 200, `cycle ${i}: ${JSON.stringify(stopped.body)}`);
    assert.equal(stopped.body.state, 'stopped');
    const deleted = await server.api('DELETE', `/v1/vms/${id}`);
    assert.equal(deleted.status, 204, `cycle ${i}: ${JSON.stringify(deleted.body)}`);
    return started.body.pid as number;
  };
  // Lazy initialization (first jail, first QMP connection, JIT) is not a leak: measure after it.
  for (let i = 0; i < WARMUP; i++) await cycle(-1 - i);
  const settle = async () => {
    global.gc?.();
    await new Promise((r) => setTimeout(r, 1000));
  };
  await settle();
  const fds0 = fdCount(s.pid);
  const rss0 = rssMiB(s.pid);
  const t0 = Date.now();
  const durations: number[] = [];
  const zombiesSeen = new Set<number>();
  for (let i = 0; i < CYCLES; i++) {
    const c0 = Date.now();
    await cycle(i);
    durations.push(Date.now() - c0);
    for (const z of zombieChildren(s.pid)) zombiesSeen.add(z);
  }
  const totalS = (Date.now() - t0) / 1000;
  await settle();
  // A VMM's end is learned from QMP closing; give the last one's exit a moment to be reaped.
  await waitFor('no zombie children', () => zombieChildren(server.pid).length === 0 || undefined, 10_000).catch(() => undefined);
  const fds1 = fdCount(s.pid);
  const rss1 = rssMiB(s.pid);
  const zombies = zombieChildren(s.pid);
  const leftDirs = existsSync(join(s.dataDir, 'vms')) ? readdirSync(join(s.dataDir, 'vms')) : [];
  const leftMounts = readFileSync('/proc/self/mountinfo', 'utf8').split('\n').filter((l) => l.includes(`${s!.dataDir}/`)).length;
  const leftVmms = pidsWithCmdline(join(s.dataDir, 'vms'));
  const leftCgroups = cgroupsLeft(cgroupParents, ids);
  durations.sort((x, y) => x - y);
  writeFigures('lifecycles', {
    cycles: CYCLES, warmup: WARMUP, totalS, msPerCycle: { p50: durations[Math.floor(CYCLES / 2)], p99: durations[Math.floor(CYCLES * 0.99)], max: durations[CYCLES - 1] },
    fds: { before: fds0, after: fds1 }, rssMiB: { before: Math.round(rss0), after: Math.round(rss1), growth: Math.round(rss1 - rss0) },
    zombiesSeenDuring: zombiesSeen.size, zombiesAfter: zombies.length, leftVmDirs: leftDirs.length, leftMounts, leftVmmProcesses: leftVmms.length, cgroupParents, leftCgroups: leftCgroups.length,
  });
  assert.ok(Math.abs(fds1 - fds0) <= 3, `server fds: ${fds0} before, ${fds1} after ${CYCLES} cycles`);
  assert.ok(rss1 - rss0 < 64, `server RSS: ${rss0.toFixed(0)} MiB before, ${rss1.toFixed(0)} MiB after`);
  assert.deepEqual(zombies, [], 'no zombie children');
  assert.deepEqual(leftDirs, [], 'no VM directories left');
  assert.equal(leftMounts, 0, 'no jail mounts left');
  assert.deepEqual(leftVmms, [], 'no VMM processes left');
  assert.deepEqual(leftCgroups, [], 'no cgroups left');
});
