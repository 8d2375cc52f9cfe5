// Cold start through the API: POST start -> running, and -> the ready marker on the console.
// Median of N runs per backend, in one server.
import { TestServer, ConsoleCollector } from '../server/test/harness.js';
import { isMain, median, printJson, round } from './util.js';

export async function benchColdStart(opts: { runs?: number; hypervisor?: 'qemu' | 'native' } = {}) {
  const runs = opts.runs ?? 5;
  const hypervisor = opts.hypervisor ?? 'qemu';
  const s = await TestServer.start({ env: { CAPSULE_LOG_LEVEL: 'warn' } });
  try {
    const health = await s.api('GET', '/v1/health');
    const toRunning: number[] = [];
    const toReady: number[] = [];
    for (let i = 0; i < runs; i++) {
      const c = await s.api('POST', '/v1/vms', { name: `cold-${i}`, hypervisor });
      const id = c.body.id as string;
      const t0 = performance.now();
      const started = await s.api('POST', `/v1/vms/${id}/start`);
      if (started.body.state !== 'running') throw new Error(`start failed: ${JSON.stringify(started.body)}`);
      toRunning.push(performance.now() - t0);
      const cons = new ConsoleCollector(s.ws(`/v1/vms/${id}/console`));
      await cons.waitFor('CAPSULE_READY', 180_000);
      toReady.push(performance.now() - t0);
      cons.close();
      await s.api('DELETE', `/v1/vms/${id}?force=true`);
    }
    return {
      bench: 'cold-start',
      hypervisor,
      accel: health.body.kvm ? 'kvm' : 'tcg',
      runs,
      toRunningMs: { median: round(median(toRunning)), all: toRunning.map((x) => round(x)) },
      toReadyMs: { median: round(median(toReady)), all: toReady.map((x) => round(x)) },
    };
  } finally {
    await s.stop();
  }
}

if (isMain(import.meta.url)) printJson(await benchColdStart());
