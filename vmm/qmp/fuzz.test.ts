// The QMP fuzz cases (vmm/testing/qmp-fuzz.ts) against an in-process QMP server with the fd
// commands capsule-vmm registers: the CPU-only twin of fuzz.kvm.test.ts, run by `npm test`.
// Every complete input gets a reply, the server still answers, and no fd is left open.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { QmpServer } from './server.js';
import { register as registerFdCommands } from './commands/fds.js';
import { register as registerInfo } from './commands/info.js';
import { mainPoller } from '../io/poller.js';
import { QmpClient } from '../testing/clients.js';
import { fuzzQmp, SPARED } from '../testing/qmp-fuzz.js';

const fdCount = (): number => readdirSync('/proc/self/fd').length;

test('QMP fuzz (in-process server): error replies for hostile input, the server answers after, no fd leak', { timeout: 10 * 60_000 }, async () => {
  mainPoller(); // the shared poller's epoll fd and wake eventfd live as long as the process
  const path = join(mkdtempSync(join(tmpdir(), 'qmp-fuzz-')), 'qmp.sock');
  const srv = new QmpServer({ path });
  const fds = new Map<string, number>();
  registerFdCommands(srv, { fds });
  registerInfo(srv);
  srv.register('query-status', () => ({ running: true, singlestep: false, status: 'running' }));
  await srv.listen();
  const control = await QmpClient.connect(path);
  try {
  const commands = ((await control.execute('query-commands')) as Array<{ name: string }>).map((c) => c.name).filter((n) => !SPARED.has(n));
  const before = fdCount();
  const figures = await fuzzQmp(path, commands, Number(process.env.FUZZ_SEED ?? 20261201));
  assert.ok(figures.inputs >= 700 && figures.errorReplies >= 500, JSON.stringify(figures));
  assert.deepEqual(await control.execute('query-status'), { running: true, singlestep: false, status: 'running' });
  // getfd may have kept fds under fuzzed names: those are the server's, by design; nothing else stays.
  await new Promise((r) => setTimeout(r, 500));
  const after = fdCount();
  const out = process.env.ROBUSTNESS_OUT; // (bench/robustness.ts merges the drills' figures)
  if (out) {
    mkdirSync(out, { recursive: true });
    writeFileSync(join(out, 'qmp-fuzz-inprocess.json'), JSON.stringify({ drill: 'qmp-fuzz-inprocess', at: new Date().toISOString(), ...figures, fds: { before, after, heldByGetfd: fds.size } }, null, 2) + '\n');
  }
  assert.equal(after, before + fds.size, `fds: ${before} before, ${after} after, ${fds.size} held by getfd`);
  } finally {
    control.close();
    await srv.close();
  }
});
