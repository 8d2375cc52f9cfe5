// GET /v1/vms with 100 VMs defined, against a bare Hono app (bench/bare-hono.ts) serving a body
// of the same size, pre-serialized, with the same load generator (autocannon) in the same run.
// Both servers are separate processes; the rounds alternate (capsule, bare, capsule, bare...)
// so that noise from other work on the host falls on both sides alike. The figure that counts
// is the ratio capsule/bare (median over rounds; cpuRatio: the same from requests per server
// CPU second, steadier on a shared host). Target: >= 0.7 with tenancy checks on (the
// request carries a tenant's write token: token verification, per-token and per-tenant rate
// limits, the scope check and the tenant-filtered list all run). The rate limit is raised so
// that it does not cap the run.
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort, REPO_ROOT, TestServer } from '../server/test/harness.js';
import { isMain, median, printJson, round } from './util.js';

const require = createRequire(import.meta.url);
const autocannon = require('autocannon') as (opts: Record<string, unknown>) => Promise<any>;

/** User + system CPU seconds of a process so far (/proc/PID/stat, clock ticks of 1/100 s). */
function cpuSeconds(pid: number): number {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').replace(/^.*\) /, '').split(' ');
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

async function startBare(body: string): Promise<{ url: string; pid: number; stop: () => void }> {
  const dir = mkdtempSync(join(tmpdir(), 'capsule-bare-'));
  writeFileSync(join(dir, 'body.json'), body);
  const port = await freePort();
  const proc = spawn(process.execPath, [join(REPO_ROOT, 'dist', 'bench', 'bare-hono.js'), String(port), join(dir, 'body.json')], { stdio: ['ignore', 'pipe', 'inherit'] });
  await new Promise<void>((res, rej) => {
    proc.stdout!.on('data', (d: Buffer) => { if (d.toString().includes('listening')) res(); });
    proc.once('exit', (code) => rej(new Error(`bare-hono exited ${code}`)));
  });
  return { url: `http://127.0.0.1:${port}`, pid: proc.pid!, stop: () => { proc.kill(); rmSync(dir, { recursive: true, force: true }); } };
}

/**
 * requestsPerCpuSecond: requests answered per second of the server's CPU time. The ratio of
 * requests/s says how the two servers fared under the same load generator; on a host shared
 * with other work it swings with whoever else runs, while CPU per request hardly does.
 */
interface Round { requestsPerSecond: number; requestsPerCpuSecond: number; p50: number; p99: number; non2xx: number; errors: number }

async function load(url: string, headers: Record<string, string>, connections: number, seconds: number, pid: number): Promise<Round> {
  const cpu0 = cpuSeconds(pid);
  const r = await autocannon({ url, connections, duration: seconds, headers });
  const cpu = cpuSeconds(pid) - cpu0;
  return {
    requestsPerSecond: round(r.requests.average, 0), requestsPerCpuSecond: cpu > 0 ? round(r.requests.total / cpu, 0) : NaN,
    p50: r.latency.p50, p99: r.latency.p99, non2xx: r.non2xx, errors: r.errors,
  };
}

interface Target { name: string; server: TestServer; url: string; headers: Record<string, string>; pid: number }

/** A capsule server (this tree's, or `harness` from another build) with `vms` VMs of a tenant whose write token lists them. */
async function startCapsule(name: string, Harness: typeof TestServer, vms: number): Promise<Target & { body: string }> {
  const server = await Harness.start({ env: { CAPSULE_RATE_LIMIT: '10000000', CAPSULE_RATE_BURST: '10000000', CAPSULE_LOG_LEVEL: 'warn' } });
  try {
    // A tenant's write token: the request takes every tenancy check (an admin sees all).
    const tenant = await server.api('POST', '/v1/tenants', { name: 'bench' });
    const minted = await server.api('POST', '/v1/tokens', { tenant: tenant.body.id, name: 'bench', scope: 'write' });
    if (minted.status !== 201) throw new Error(`token: ${JSON.stringify(minted.body)}`);
    const headers = { authorization: `Bearer ${minted.body.token}` };
    for (let i = 0; i < vms; i++) {
      const c = await server.api('POST', '/v1/vms', { name: `bench-${i}`, vcpus: 1 + (i % 2), memoryMiB: 256 }, headers);
      if (c.status !== 201) throw new Error(`create: ${JSON.stringify(c.body)}`);
    }
    const body = await (await fetch(`${server.url}/v1/vms`, { headers })).text();
    if ((JSON.parse(body) as { items: unknown[] }).items.length !== vms) throw new Error('setup failed');
    return { name, server, url: `${server.url}/v1/vms`, headers, body, pid: server.pid };
  } catch (e) {
    await server.stop();
    throw e;
  }
}

/**
 * `compareWith`: the root of another built capsule tree (say, main before a change): its server
 * is measured in the same rounds, so before and after are compared under the same noise.
 */
export async function benchApiList(opts: { vms?: number; seconds?: number; connections?: number; rounds?: number; compareWith?: string } = {}) {
  const vms = opts.vms ?? 100;
  const seconds = opts.seconds ?? 3;
  const connections = opts.connections ?? 50;
  const rounds = opts.rounds ?? 7;
  const capsules: Target[] = [];
  let bare: { url: string; pid: number; stop: () => void } | undefined;
  try {
    const self = await startCapsule('capsule', TestServer, vms);
    capsules.push(self);
    if (opts.compareWith) {
      const other = await import(join(opts.compareWith, 'dist', 'server', 'test', 'harness.js')) as { TestServer: typeof TestServer };
      capsules.push(await startCapsule(`capsule@${opts.compareWith}`, other.TestServer, vms));
    }
    bare = await startBare(self.body);
    const bareTarget = { url: `${bare.url}/v1/vms`, headers: self.headers, pid: bare.pid };
    // Warm-up (JIT) on every server.
    for (const t of [...capsules, bareTarget]) await load(t.url, t.headers, 10, 2, t.pid);
    const results = new Map<string, Round[]>(capsules.map((t) => [t.name, []]));
    const baseline: Round[] = [];
    for (let i = 0; i < rounds; i++) {
      for (const t of capsules) results.get(t.name)!.push(await load(t.url, t.headers, connections, seconds, t.pid));
      baseline.push(await load(bareTarget.url, bareTarget.headers, connections, seconds, bareTarget.pid));
    }
    const summary = (name: string) => {
      const rs = results.get(name)!;
      const ratios = rs.map((r, i) => round(r.requestsPerSecond / baseline[i]!.requestsPerSecond, 3));
      const cpuRatios = rs.map((r, i) => round(r.requestsPerCpuSecond / baseline[i]!.requestsPerCpuSecond, 3));
      // Other work on the host only ever slows a round down: the best rounds of each side are
      // the least disturbed, and their ratio is the other estimate given.
      const best = (xs: number[]) => Math.max(...xs.filter((x) => Number.isFinite(x)));
      return {
        rounds: rs, ratios, ratio: median(ratios), cpuRatios, cpuRatio: median(cpuRatios),
        bestRatio: round(best(rs.map((r) => r.requestsPerSecond)) / best(baseline.map((r) => r.requestsPerSecond)), 3),
        bestCpuRatio: round(best(rs.map((r) => r.requestsPerCpuSecond)) / best(baseline.map((r) => r.requestsPerCpuSecond)), 3),
      };
    };
    const mine = summary('capsule');
    return {
      bench: 'api-list',
      vms,
      caller: 'tenant write token',
      connections,
      secondsPerRound: seconds,
      rounds,
      responseBytes: Buffer.byteLength(self.body),
      bareHono: baseline,
      capsule: mine,
      ...(opts.compareWith ? { compared: { tree: opts.compareWith, ...summary(`capsule@${opts.compareWith}`) } } : {}),
      ratio: mine.ratio,
      cpuRatio: mine.cpuRatio,
      target: { ratio: 0.7 },
      meetsTarget: mine.ratio >= 0.7,
    };
  } finally {
    bare?.stop();
    for (const t of capsules) await t.server.stop();
  }
}

// node dist/bench/api-list.js [--compare-with DIR] [--rounds N] [--seconds S]
if (isMain(import.meta.url)) {
  const arg = (name: string) => { const i = process.argv.indexOf(name); return i > 0 ? process.argv[i + 1] : undefined; };
  printJson(await benchApiList({
    compareWith: arg('--compare-with'),
    rounds: arg('--rounds') ? Number(arg('--rounds')) : undefined,
    seconds: arg('--seconds') ? Number(arg('--seconds')) : undefined,
  }));
}
