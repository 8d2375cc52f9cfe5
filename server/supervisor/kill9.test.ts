// kill -9 drill (issue 10): 20 VMs (QEMU, jailed where the host allows), the server SIGKILLed
// while starts, stops and deletes are under way, in rounds; after each restart every VM must be
// consistent with reality: a VM the API calls running or paused has a live VMM with its id that
// answers QMP (pause/resume); any other VM, and any deleted one, has no VMM process, no pidfile,
// no sockets, no jail mount and no cgroup left. Guests are paused once started: 20 TCG guests
// booting on a small host would starve everything else, and the drill is about the server.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import Database from 'better-sqlite3';
import { join } from 'node:path';
import { TestServer, sleep, waitFor } from '../test/harness.js';
import { writeFigures } from '../test/figures.js';
import { cgroupsLeft, jailCgroupParents, pidsWithCmdline } from '../test/proc.js';

const VMS = 20;
const ROUNDS = Number(process.env.KILL9_ROUNDS ?? 3);
let s: TestServer | undefined;
after(async () => { await s?.stop(); });

type Vm = { id: string; name: string; state: string; pid?: number };

test(`kill -9 of the server amid starts, stops and deletes across ${VMS} VMs: after restart every VM is consistent, nothing is orphaned`, { timeout: 30 * 60_000 }, async () => {
  s = await TestServer.start({ env: { CAPSULE_RATE_LIMIT: '100000', CAPSULE_RATE_BURST: '100000', CAPSULE_STOP_TIMEOUT: '3', CAPSULE_VCPU_OVERCOMMIT: '16' } });
  const server = s;
  const cgroupParents = jailCgroupParents(await (await fetch(`${s.url}/v1/health`)).json() as never);
  const everIds = new Set<string>();
  const create = async (name: string) => {
    const r = await server.api('POST', '/v1/vms', { name, memoryMiB: 128 });
    assert.equal(r.status, 201, JSON.stringify(r.body));
    everIds.add(r.body.id);
    return r.body.id as string;
  };
  /** Starts and pauses (a paused TCG guest costs no CPU); tolerates the server going away. */
  const startPaused = async (id: string) => {
    const r = await server.api('POST', `/v1/vms/${id}/start`).catch((e: Error) => ({ status: 0, body: e.message }));
    if (r.status === 200) await server.api('POST', `/v1/vms/${id}/pause`).catch(() => undefined);
    return r.status;
  };
  const list = async (): Promise<Vm[]> => (await server.api('GET', '/v1/vms')).body.items;

  for (let i = 0; i < VMS; i++) await create(`k9-${i}`);
  const rounds: Array<Record<string, unknown>> = [];
  let killedWhileInFlight = 0;

  for (let round = 0; round < ROUNDS; round++) {
    const vms = await list();
    const active = vms.filter((v) => v.state === 'running' || v.state === 'paused');
    const idle = vms.filter((v) => v.state !== 'running' && v.state !== 'paused');
    // Top up to 20 VMs (deletes of earlier rounds), and have about half running before the chaos.
    for (let i = vms.length; i < VMS; i++) idle.push({ id: await create(`k9-r${round}-${i}`), name: '', state: 'created' });
    const want = Math.max(0, 8 - active.length);
    const toRun = idle.splice(0, want);
    for (let i = 0; i < toRun.length; i += 4) await Promise.all(toRun.slice(i, i + 4).map((v) => startPaused(v.id)));
    const running = (await list()).filter((v) => v.state === 'running' || v.state === 'paused');
    assert.ok(running.length >= 6, `round ${round}: ${running.length} VMs running before the kill`);
    const stillIdle = (await list()).filter((v) => v.state !== 'running' && v.state !== 'paused');

    // The chaos: starts of idle VMs, clean and forced stops and deletes of running ones, deletes of idle ones...
    const ops: Array<Promise<unknown>> = [];
    const plan: Record<string, number> = { starts: 0, stops: 0, forcedStops: 0, deletesRunning: 0, deletesIdle: 0 };
    const call = (method: string, path: string) => server.api(method, path).catch(() => undefined);
    for (const v of running.slice(0, 2)) { ops.push(call('POST', `/v1/vms/${v.id}/stop`)); plan.stops!++; }
    for (const v of running.slice(2, 4)) { ops.push(call('POST', `/v1/vms/${v.id}/stop?force=true`)); plan.forcedStops!++; }
    for (const v of running.slice(4, 6)) { ops.push(call('DELETE', `/v1/vms/${v.id}?force=true`)); plan.deletesRunning!++; }
    for (const v of stillIdle.slice(6, 8)) { ops.push(call('DELETE', `/v1/vms/${v.id}`)); plan.deletesIdle!++; }
    // Starts last: a start's jail setup keeps the server busy, and the stops should be under way by then.
    await sleep(100);
    for (const v of stillIdle.slice(0, 6)) { ops.push(startPaused(v.id)); plan.starts!++; }
    // ...and the kill lands while they are under way (starts take about a second here).
    const delayMs = 150 + round * 250;
    await sleep(delayMs);
    const atKill = await list().catch(() => [] as Vm[]);
    const statesAtKill: Record<string, number> = {};
    for (const v of atKill) statesAtKill[v.state] = (statesAtKill[v.state] ?? 0) + 1;
    const inFlight = atKill.filter((v) => v.state === 'starting' || v.state === 'stopping').length;
    killedWhileInFlight += inFlight;
    await s.kill9();
    const answers = (await Promise.all(ops)).map((r) => (typeof r === 'number' ? r : (r as { status?: number } | undefined)?.status ?? 0));

    await s.launch();
    const t0 = Date.now();
    const settled = await waitFor('no VM left starting or stopping', async () => {
      const l = await list();
      return l.every((v) => v.state !== 'starting' && v.state !== 'stopping') ? l : undefined;
    }, 60_000).catch(async (e: Error) => {
      throw new Error(`${e.message}: ${JSON.stringify((await list()).filter((v) => v.state === 'starting' || v.state === 'stopping'))}\n${server.output.split('\n').filter((l) => /reattach|VMM|warn|error/i.test(l)).slice(-20).join('\n')}`);
    });
    const problems = consistency(s.dataDir, settled, everIds, cgroupParents);
    // The reattached VMMs answer QMP.
    for (const v of settled.filter((x) => x.state === 'paused' || x.state === 'running')) {
      const p = await s.api('POST', `/v1/vms/${v.id}/${v.state === 'paused' ? 'resume' : 'pause'}`);
      if (p.status !== 200) problems.push(`${v.id}: ${v.state} but QMP did not answer: ${JSON.stringify(p.body)}`);
      else await s.api('POST', `/v1/vms/${v.id}/pause`);
    }
    const states: Record<string, number> = {};
    for (const v of settled) states[v.state] = (states[v.state] ?? 0) + 1;
    rounds.push({ round, killAfterMs: delayMs, operations: plan, vmsStartingOrStoppingAtKill: inFlight, statesAtKill, answersBeforeKill: answers.filter((x) => x !== 0).length, cutOffByKill: answers.filter((x) => x === 0).length, statesAfterRestart: states, settleMs: Date.now() - t0, problems });
    assert.deepEqual(problems, [], `round ${round}: ${problems.join('\n')}`);
  }

  // Everything away: nothing remains of any VM ever made.
  for (const v of await list()) assert.equal((await s.api('DELETE', `/v1/vms/${v.id}?force=true`)).status, 204);
  const finalProblems = consistency(s.dataDir, [], everIds, cgroupParents);
  writeFigures('kill9', { vms: VMS, rounds: rounds.length, vmsEverCreated: everIds.size, vmsStartingOrStoppingAtKills: killedWhileInFlight, perRound: rounds, leftoversAtEnd: finalProblems });
  assert.deepEqual(finalProblems, []);
  assert.ok(killedWhileInFlight > 0, 'at least one kill landed mid-operation');
});

/** What contradicts the API's view: VMMs, pidfiles, sockets, mounts and cgroups that should not be there, or missing ones. */
function consistency(dataDir: string, vms: Vm[], everIds: Set<string>, cgroupParents: string[]): string[] {
  const problems: string[] = [];
  const byId = new Map(vms.map((v) => [v.id, v]));
  const mounts = readFileSync('/proc/self/mountinfo', 'utf8');
  for (const id of everIds) {
    const vm = byId.get(id);
    const dir = join(dataDir, 'vms', id);
    const procs = pidsWithCmdline(id);
    const live = vm && (vm.state === 'running' || vm.state === 'paused');
    if (live) {
      if (!vm.pid || !procs.includes(vm.pid)) problems.push(`${id}: ${vm.state} but its VMM ${vm.pid} is not running`);
      if (procs.length > 1 && !procs.every((p) => p === vm.pid || isDescendant(p, vm.pid!))) problems.push(`${id}: more than one VMM: ${procs}`);
      continue;
    }
    const what = vm ? vm.state : 'deleted';
    if (procs.length) problems.push(`${id} (${what}): orphan VMM process ${procs}`);
    for (const f of ['vmm.pid', 'root/qmp', 'root/console']) if (existsSync(join(dir, f))) problems.push(`${id} (${what}): ${f} left`);
    if (mounts.includes(`${dir}/`)) problems.push(`${id} (${what}): jail mount left`);
    for (const c of cgroupsLeft(cgroupParents, [id])) problems.push(`${id} (${what}): cgroup ${c} left`);
    if (!vm && existsSync(dir)) problems.push(`${id} (deleted): directory left: ${readdirSync(dir)}`);
  }
  return problems;
}

/** True when `pid` descends from `ancestor` (a jailed VMM runs below the unshare process the server tracks). */
function isDescendant(pid: number, ancestor: number): boolean {
  for (let p = pid, i = 0; p > 1 && i < 10; i++) {
    try {
      const s = readFileSync(`/proc/${p}/stat`, 'utf8');
      p = Number(s.slice(s.lastIndexOf(')') + 2).split(' ')[1]);
      if (p === ancestor) return true;
    } catch {
      return false;
    }
  }
  return false;
}

test('a VMM whose pidfile was never written (the server died in the middle of its launch) is found and ended at restart, leaving nothing', { timeout: 120_000 }, async () => {
  const t = await TestServer.start();
  try {
    const id = (await t.api('POST', '/v1/vms', { name: 'no-pidfile', memoryMiB: 128 })).body.id as string;
    const started = await t.api('POST', `/v1/vms/${id}/start`);
    assert.equal(started.status, 200, JSON.stringify(started.body));
    await t.kill9();
    // The window between the spawn and the pidfile: the server died there, with the VM `starting`.
    rmSync(join(t.dataDir, 'vms', id, 'vmm.pid'));
    const db = new Database(join(t.dataDir, 'capsule.db'));
    db.prepare("UPDATE vms SET state = 'starting', pid = NULL WHERE id = ?").run(id);
    db.close();
    assert.ok(pidsWithCmdline(id).length > 0, 'the VMM runs, unrecorded');
    await t.launch();
    const vm = (await t.api('GET', `/v1/vms/${id}`)).body;
    assert.equal(vm.state, 'crashed');
    assert.deepEqual(consistency(t.dataDir, [vm], new Set([id]), jailCgroupParents(await (await fetch(`${t.url}/v1/health`)).json() as never)), []);
    assert.match(t.output, /VMM without a pidfile/);
  } finally {
    await t.stop();
  }
});
