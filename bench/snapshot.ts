// Snapshot benchmarks (issue 12), one server, the default image, per guest size:
//   cold       POST /v1/vms + start -> `running`, and -> the guest answering on its console;
//   snapshot   POST /v1/vms/:id/snapshot of the running guest (written and resumed), its size;
//   restore    POST /v1/vms {fromSnapshot} + start -> `running`, and -> the guest answering;
//   suspend    pause {"persist":true} -> resume -> the guest answering (pause-to-disk round trip);
//   memory     PSS of `clones` VMs restored from one snapshot, together, against one booted VM;
//   pool       a template's build, POST /v1/vms {"template"} served from its pool (-> running,
//              -> answering), and with an empty pool (a restore of the template's snapshot).
// QEMU here restores by copy (its migration stream), so restore time and clone memory grow with
// the guest; the targets (CoW restore of 4 GiB within 2x of 256 MiB, clones <= 1.5x) are for the
// native VMM's MAP_PRIVATE restore: `npm run bench:snapshot` runs it on the native VMM in the lab
// (BENCH_HYPERVISOR=native); `node dist/bench/snapshot.js` on this host (QEMU). BENCH_SIZES=256,1024,4096.
import { readdirSync, readFileSync } from 'node:fs';
import { ConsoleCollector, TestServer } from '../server/test/harness.js';
import { isMain, median, printJson, round } from './util.js';

const SIZES = (process.env.BENCH_SIZES ?? '256,1024,4096').split(',').map(Number);
/** The backend every VM and template of the run uses (the server's default when unset). */
const HYPERVISOR = process.env.BENCH_HYPERVISOR as 'qemu' | 'native' | undefined;
const hv = HYPERVISOR ? { hypervisor: HYPERVISOR } : {};
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3);
const CLONES = Number(process.env.BENCH_CLONES ?? 4);
/** Claims served from the pool per size (the pool is this big): enough for a p90. */
const POOL_CLAIMS = Number(process.env.BENCH_POOL_CLAIMS ?? Math.max(ROUNDS, 10));
/** BENCH_POOL=0 leaves out the template/pool part (a lab run with a tight time budget). */
const WITH_POOL = process.env.BENCH_POOL !== '0';

/** The process and its descendants (a jailed VMM runs under unshare). */
function tree(pid: number): number[] {
  const children = new Map<number, number[]>();
  for (const p of readdirSync('/proc').filter((d) => /^\d+$/.test(d))) {
    try {
      const stat = readFileSync(`/proc/${p}/stat`, 'utf8');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      children.set(ppid, [...(children.get(ppid) ?? []), Number(p)]);
    } catch { /* gone */ }
  }
  const out = [pid];
  for (let i = 0; i < out.length; i++) out.push(...(children.get(out[i]!) ?? []));
  return out;
}

function pssMiB(pid: number): number {
  let kb = 0;
  for (const p of tree(pid)) {
    try {
      kb += Number(/^Pss:\s+(\d+)/m.exec(readFileSync(`/proc/${p}/smaps_rollup`, 'utf8'))?.[1] ?? 0);
    } catch { /* gone */ }
  }
  return kb / 1024;
}

/**
 * PSS of the guest's memory alone: the mapping of guest RAM in the VMM (a booted VM's anonymous
 * region of exactly the guest's size; a native clone's memory-N file mapped copy-on-write over it).
 * The rest of a VMM's PSS is the process itself (Node.js: tens of MiB each).
 */
function guestPssMiB(pid: number, memoryMiB: number): number {
  let kb = 0;
  for (const p of tree(pid)) {
    let text: string;
    try {
      text = readFileSync(`/proc/${p}/smaps`, 'utf8');
    } catch {
      continue;
    }
    for (const block of text.split(/\n(?=[0-9a-f]+-[0-9a-f]+ )/)) {
      const head = block.slice(0, block.indexOf('\n'));
      const size = Number(/^Size:\s+(\d+)/m.exec(block)?.[1] ?? 0);
      // an anonymous mapping at least the guest's size (the kernel merges it with neighbours of the same kind)
      const anonymous = !/ \//.test(head) && !/\[/.test(head);
      if (/memory-\d+( \(deleted\))?$/.test(head) || (anonymous && size >= memoryMiB * 1024)) kb += Number(/^Pss:\s+(\d+)/m.exec(block)?.[1] ?? 0);
    }
  }
  return kb / 1024;
}

/** The native VMM's own time to load a snapshot (its log: "snapshot loaded ... in N ms"); NaN for QEMU. */
function vmmLoadMs(s: TestServer, id: string): number {
  return Number(/snapshot loaded .* in (\d+) ms/.exec(s.vmmLog(id))?.[1] ?? NaN);
}

/** A VM's console, open; if it cannot be, why (the VM's state and its VMM log's end). */
async function consoleOf(s: TestServer, id: string): Promise<ConsoleCollector> {
  const c = new ConsoleCollector(s.ws(`/v1/vms/${id}/console`));
  try {
    await c.opened;
  } catch (e) {
    const vm = (await s.api('GET', `/v1/vms/${id}`)).body;
    throw new Error(`console of ${vm?.name} (${vm?.state}): ${(e as Error).message}\n${s.vmmLog(id).slice(-2000)}`);
  }
  return c;
}

async function answers(s: TestServer, id: string): Promise<void> {
  const c = await consoleOf(s, id);
  const tag = Math.random().toString(36).slice(2, 8);
  c.send(`echo ok-${tag}\n`);
  await c.waitFor(`ok-${tag}`, 120_000);
  c.close();
}

async function timed<T>(fn: () => Promise<T>): Promise<[T, number]> {
  const t0 = performance.now();
  const v = await fn();
  return [v, performance.now() - t0];
}

async function api(s: TestServer, method: string, path: string, body?: unknown): Promise<any> {
  return (await apiTimed(s, method, path, body)).body;
}

/** The call's body and the server's own time for it (its Server-Timing header), in ms. */
async function apiTimed(s: TestServer, method: string, path: string, body?: unknown): Promise<{ body: any; serverMs: number }> {
  const r = await s.api(method, path, body);
  if (r.status >= 300) throw new Error(`${method} ${path}: ${r.status} ${JSON.stringify(r.body)}`);
  const dur = /app;dur=([\d.]+)/.exec(r.headers.get('server-timing') ?? '');
  return { body: r.body, serverMs: dur ? Number(dur[1]) : NaN };
}

function percentile(xs: number[], p: number): number {
  const sorted = [...xs].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]!;
}

/** Waits (polling) until `fn` returns a value. */
async function until<T>(what: string, fn: () => Promise<T | undefined>, ms = 300_000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error(`timed out: ${what}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

/**
 * A template of the default image with a pool of POOL_CLAIMS clones: POST /v1/vms {"template"}
 * served from the pool (the server's own time from its Server-Timing header, and the call's round
 * trip), then, with the pool emptied, ROUNDS calls restoring the template's snapshot.
 */
async function benchPool(s: TestServer, memoryMiB: number) {
  const name = `tpl-${memoryMiB}`;
  const t0 = performance.now();
  await api(s, 'POST', '/v1/templates', { name, memoryMiB, pool: POOL_CLAIMS, ...hv });
  await until('template ready', async () => ((await api(s, 'GET', `/v1/templates/${name}`)).state === 'ready' ? true : undefined));
  const buildMs = performance.now() - t0;
  const ready = () => until('pool filled', async () => ((await api(s, 'GET', '/v1/pools')).items.find((p: any) => p.template === name)?.ready === POOL_CLAIMS ? true : undefined));
  await ready();
  const claimMs: number[] = [];
  const claimServerMs: number[] = [];
  const claimAnswerMs: number[] = [];
  const fallbackMs: number[] = [];
  const made: string[] = [];
  for (let i = 0; i < POOL_CLAIMS; i++) {
    const [{ body: vm, serverMs }, ms] = await timed(() => apiTimed(s, 'POST', '/v1/vms', { name: `claim-${memoryMiB}-${i}`, template: name }));
    if (vm.startedFrom !== 'pool') throw new Error(`claim ${i} was not served from the pool`);
    const [, answer] = await timed(() => answers(s, vm.id));
    claimMs.push(ms);
    claimServerMs.push(serverMs);
    claimAnswerMs.push(ms + answer);
    made.push(vm.id);
  }
  await api(s, 'PATCH', `/v1/templates/${name}`, { pool: 0 });
  for (let i = 0; i < ROUNDS; i++) {
    const [vm, ms] = await timed(() => api(s, 'POST', '/v1/vms', { name: `fallback-${memoryMiB}-${i}`, template: name }));
    if (vm.startedFrom !== 'snapshot') throw new Error(`fallback ${i} came from the pool`);
    fallbackMs.push(ms);
    made.push(vm.id);
  }
  for (const id of made) await api(s, 'DELETE', `/v1/vms/${id}?force=true`);
  await api(s, 'DELETE', `/v1/templates/${name}`);
  return {
    templateBuildMs: round(buildMs), poolClaims: POOL_CLAIMS,
    poolClaimServerMsP50: round(median(claimServerMs)), poolClaimServerMsP90: round(percentile(claimServerMs, 90)),
    poolClaimToRunningMs: round(median(claimMs)), poolClaimToAnswerMs: round(median(claimAnswerMs)),
    templateRestoreToRunningMs: round(median(fallbackMs)),
  };
}

export async function benchSnapshot() {
  // Host limits sized for the pool, the claims taken from it and the clones beside them.
  const vms = 2 * POOL_CLAIMS + Math.max(ROUNDS, CLONES) + 2;
  const s = await TestServer.start({ env: { CAPSULE_RATE_LIMIT: '1000', CAPSULE_RATE_BURST: '1000', CAPSULE_HOST_VCPUS: String(vms), CAPSULE_HOST_MEMORY_MIB: String(vms * Math.max(...SIZES) + 1024) } });
  const sizes = [];
  const hypervisor: string = HYPERVISOR ?? (await api(s, 'GET', '/v1/health')).defaultHypervisor;
  try {
    for (const memoryMiB of SIZES) {
      const r = { memoryMiB, coldRunningMs: [] as number[], coldAnswerMs: [] as number[], snapshotMs: [] as number[], snapshotBytes: 0, restoreRunningMs: [] as number[], restoreAnswerMs: [] as number[], suspendResumeMs: [] as number[], onePssMiB: 0, clonesPssMiB: 0, oneGuestPssMiB: 0, clonesGuestPssMiB: 0, restoreLoadMs: [] as number[] };
      let snapshot = '';
      for (let i = 0; i < ROUNDS; i++) {
        const [vm, running] = await timed(async () => {
          const v = await api(s, 'POST', '/v1/vms', { name: `cold-${memoryMiB}-${i}`, memoryMiB, network: { enabled: false }, ...hv });
          return api(s, 'POST', `/v1/vms/${v.id}/start`);
        });
        const t0 = performance.now();
        const c = await consoleOf(s, vm.id);
        await c.waitFor(/CAPSULE_READY/);
        c.close();
        r.coldRunningMs.push(running);
        r.coldAnswerMs.push(running + performance.now() - t0);
        if (i === 0) {
          r.onePssMiB = round(pssMiB(vm.pid));
          r.oneGuestPssMiB = round(guestPssMiB(vm.pid, memoryMiB));
        }
        const [snap, ms] = await timed(() => api(s, 'POST', `/v1/vms/${vm.id}/snapshot`, { name: `snap-${memoryMiB}-${i}` }));
        r.snapshotMs.push(ms);
        r.snapshotBytes = snap.sizeBytes;
        snapshot = snap.id;
        const [, sr] = await timed(async () => {
          await api(s, 'POST', `/v1/vms/${vm.id}/pause`, { persist: true });
          await api(s, 'POST', `/v1/vms/${vm.id}/resume`);
          await answers(s, vm.id);
        });
        r.suspendResumeMs.push(sr);
        await api(s, 'DELETE', `/v1/vms/${vm.id}?force=true`);
      }
      for (let i = 0; i < ROUNDS; i++) {
        const [vm, running] = await timed(async () => {
          const v = await api(s, 'POST', '/v1/vms', { name: `restore-${memoryMiB}-${i}`, fromSnapshot: snapshot });
          return api(s, 'POST', `/v1/vms/${v.id}/start`);
        });
        const [, answer] = await timed(() => answers(s, vm.id));
        r.restoreRunningMs.push(running);
        r.restoreLoadMs.push(vmmLoadMs(s, vm.id));
        r.restoreAnswerMs.push(running + answer);
        await api(s, 'DELETE', `/v1/vms/${vm.id}?force=true`);
      }
      const clones = [];
      for (let i = 0; i < CLONES; i++) {
        const v = await api(s, 'POST', '/v1/vms', { name: `clone-${memoryMiB}-${i}`, fromSnapshot: snapshot });
        clones.push(await api(s, 'POST', `/v1/vms/${v.id}/start`));
      }
      for (const v of clones) await answers(s, v.id);
      r.clonesPssMiB = round(clones.reduce((n, v) => n + pssMiB(v.pid), 0));
      r.clonesGuestPssMiB = round(clones.reduce((n, v) => n + guestPssMiB(v.pid, memoryMiB), 0));
      for (const v of clones) await api(s, 'DELETE', `/v1/vms/${v.id}?force=true`);
      for (const x of (await api(s, 'GET', '/v1/snapshots')).items) await api(s, 'DELETE', `/v1/snapshots/${x.id}`);
      const pool: Partial<Awaited<ReturnType<typeof benchPool>>> = WITH_POOL ? await benchPool(s, memoryMiB) : {};
      sizes.push({
        memoryMiB,
        coldToRunningMs: round(median(r.coldRunningMs)), coldToAnswerMs: round(median(r.coldAnswerMs)),
        snapshotWriteMs: round(median(r.snapshotMs)), snapshotMiB: round(r.snapshotBytes / 1048576), snapshotMsPerGiB: round(median(r.snapshotMs) / (memoryMiB / 1024)),
        restoreToRunningMs: round(median(r.restoreRunningMs)), restoreLoadInVmmMs: r.restoreLoadMs.length ? round(median(r.restoreLoadMs)) : null, restoreToAnswerMs: round(median(r.restoreAnswerMs)),
        pauseToDiskRoundTripMs: round(median(r.suspendResumeMs)),
        onePssMiB: r.onePssMiB, clones: CLONES, clonesPssMiB: r.clonesPssMiB, clonesVsOne: round(r.clonesPssMiB / r.onePssMiB, 2),
        oneGuestPssMiB: r.oneGuestPssMiB, clonesGuestPssMiB: r.clonesGuestPssMiB, clonesGuestVsOne: round(r.clonesGuestPssMiB / r.oneGuestPssMiB, 2),
        ...pool,
      });
      // each size as soon as it is done: a run cut short by a time budget still reports something
      process.stderr.write(`bench-snapshot size: ${JSON.stringify(sizes[sizes.length - 1])}\n`);
    }
  } finally {
    await s.stop();
  }
  const first = sizes[0]!;
  const last = sizes[sizes.length - 1]!;
  return {
    bench: 'snapshot', hypervisor, date: new Date().toISOString(), rounds: ROUNDS, sizes,
    ratios: {
      [`restoreToRunning ${last.memoryMiB} MiB vs ${first.memoryMiB} MiB (target <= 2 with CoW restore)`]: round(last.restoreToRunningMs / first.restoreToRunningMs, 2),
      ...(first.restoreLoadInVmmMs ? { [`snapshot load inside the VMM, ${last.memoryMiB} MiB vs ${first.memoryMiB} MiB`]: round((last.restoreLoadInVmmMs ?? NaN) / first.restoreLoadInVmmMs, 2) } : {}),
      [`restoreToAnswer vs coldToAnswer at ${first.memoryMiB} MiB`]: round(first.restoreToAnswerMs / first.coldToAnswerMs, 3),
      [`${CLONES} clones' PSS vs one VM at ${first.memoryMiB} MiB (target <= 1.5 for ten clones with CoW restore)`]: first.clonesVsOne,
      [`${CLONES} clones' guest-memory PSS vs one VM's at ${first.memoryMiB} MiB`]: first.clonesGuestVsOne,
      ...(first.poolClaimToRunningMs !== undefined ? {
        [`pool claim, server-side p50 ms at ${first.memoryMiB} MiB (target <= 10)`]: first.poolClaimServerMsP50,
        [`pool claim -> running, ms at ${first.memoryMiB} MiB, call round trip`]: first.poolClaimToRunningMs,
        [`pool claim -> running vs cold start -> running at ${first.memoryMiB} MiB`]: round(first.poolClaimToRunningMs / first.coldToRunningMs, 3),
      } : {}),
    },
  };
}

if (isMain(import.meta.url)) printJson(await benchSnapshot());
