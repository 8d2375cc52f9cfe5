// GET /v1/vms with 100 VMs defined: requests/s and latency percentiles under autocannon.
// Target: >= 10k req/s on 2 cores. The rate limit is raised so that it does not cap the run.
import { createRequire } from 'node:module';
import { TestServer } from '../server/test/harness.js';
import { isMain, printJson, round } from './util.js';

const require = createRequire(import.meta.url);
const autocannon = require('autocannon') as (opts: Record<string, unknown>) => Promise<any>;

export async function benchApiList(opts: { vms?: number; seconds?: number; connections?: number } = {}) {
  const vms = opts.vms ?? 100;
  const s = await TestServer.start({ env: { CAPSULE_RATE_LIMIT: '10000000', CAPSULE_RATE_BURST: '10000000', CAPSULE_LOG_LEVEL: 'warn' } });
  try {
    for (let i = 0; i < vms; i++) await s.api('POST', '/v1/vms', { name: `bench-${i}`, vcpus: 1 + (i % 4), memoryMiB: 256 });
    const listed = await s.api('GET', '/v1/vms');
    if (listed.body.items.length !== vms) throw new Error('setup failed');
    const headers = { authorization: `Bearer ${s.token}` };
    await autocannon({ url: `${s.url}/v1/vms`, connections: 10, duration: 2, headers }); // warm-up
    const r = await autocannon({ url: `${s.url}/v1/vms`, connections: opts.connections ?? 50, duration: opts.seconds ?? 10, headers });
    return {
      bench: 'api-list',
      vms,
      connections: opts.connections ?? 50,
      seconds: opts.seconds ?? 10,
      requestsPerSecond: round(r.requests.average, 0),
      latencyMs: { p50: r.latency.p50, p99: r.latency.p99, max: r.latency.max },
      responseBytes: Buffer.byteLength(JSON.stringify(listed.body)),
      non2xx: r.non2xx,
      errors: r.errors,
      target: { requestsPerSecond: 10_000 },
      meetsTarget: r.requests.average >= 10_000,
    };
  } finally {
    await s.stop();
  }
}

if (isMain(import.meta.url)) printJson(await benchApiList());
