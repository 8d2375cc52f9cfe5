// SIGTERM drill (issue 10): the server stops accepting connections at once, finishes the request
// in flight (a VM start made slow by a VMM wrapper that waits 3 s before exec'ing QEMU), closes
// WebSockets with 1001, exits 0 and leaves the VMs running; the next start reattaches them.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { TestServer, waitFor } from '../test/harness.js';
import { writeFigures } from '../test/figures.js';
import { isAlive } from './process.js';

const dir = mkdtempSync(join(tmpdir(), 'capsule-slow-qemu-'));
let s: TestServer | undefined;
after(async () => {
  await s?.stop();
  rmSync(dir, { recursive: true, force: true });
});

test('SIGTERM: no new connections, the start in flight completes, sockets get 1001, VMs keep running and are reattached', { timeout: 180_000 }, async () => {
  const slowQemu = join(dir, 'qemu');
  // Unjailed: the jail would not see a wrapper under /tmp. The VMM itself is the real QEMU (exec).
  writeFileSync(slowQemu, '#!/bin/sh\n[ "$1" = --version ] || sleep 3\nexec qemu-system-x86_64 "$@"\n', { mode: 0o755 });
  s = await TestServer.start({ env: { CAPSULE_QEMU: slowQemu, CAPSULE_JAIL: 'off', CAPSULE_DEFAULT_HYPERVISOR: 'qemu', CAPSULE_SHUTDOWN_TIMEOUT: '30' } });
  const server = s;
  const create = async (name: string) => (await server.api('POST', '/v1/vms', { name, memoryMiB: 128 })).body.id as string;
  const running = await create('keeps-running');
  const a = await s.api('POST', `/v1/vms/${running}/start`);
  assert.equal(a.status, 200, JSON.stringify(a.body));
  const slow = await create('started-during-shutdown');

  const events = s.ws('/v1/events');
  await new Promise((res, rej) => { events.once('open', res); events.once('error', rej); });
  const eventsClosed = new Promise<{ code: number; reason: string }>((r) => events.once('close', (code, reason) => r({ code, reason: reason.toString() })));

  const inFlight = s.api('POST', `/v1/vms/${slow}/start`);
  await waitFor('the start under way', async () => (await server.api('GET', `/v1/vms/${slow}`)).body.state === 'starting' || undefined, 10_000);
  const t0 = Date.now();
  const exited = s.signal('SIGTERM');

  // New connections are refused while the start finishes.
  await waitFor('the listener closed', async () => fetch(`${server.url}/v1/health`).then(() => undefined, (e: Error & { cause?: { code?: string } }) => e.cause?.code === 'ECONNREFUSED' || undefined), 2000);
  const refusedAfterMs = Date.now() - t0;
  const answer = await inFlight;
  const answeredAfterMs = Date.now() - t0;
  assert.equal(answer.status, 200, `the request in flight was answered: ${JSON.stringify(answer.body)}`);
  assert.equal(answer.body.state, 'running');
  const closeFrame = await eventsClosed;
  assert.deepEqual(closeFrame, { code: 1001, reason: 'server shutting down' });
  const code = await exited;
  const exitedAfterMs = Date.now() - t0;
  assert.equal(code, 0);
  assert.match(s.output, /shutting down: no new connections/);
  assert.doesNotMatch(s.output, /CAPSULE_SHUTDOWN_TIMEOUT passed/);

  const pids = [a.body.pid as number, answer.body.pid as number];
  for (const pid of pids) assert.ok(isAlive(pid), `VMM ${pid} keeps running after the server exited`);

  // The next start reattaches both: same pids, QMP answers (pause/resume), states right.
  await s.launch();
  for (const [id, pid] of [[running, pids[0]], [slow, pids[1]]] as const) {
    const vm: { state: string; pid: number } = (await s.api('GET', `/v1/vms/${id}`)).body;
    assert.equal(vm.state, 'running');
    assert.equal(vm.pid, pid);
    assert.equal((await s.api('POST', `/v1/vms/${id}/pause`)).body.state, 'paused');
    assert.equal((await s.api('POST', `/v1/vms/${id}/resume`)).body.state, 'running');
  }
  for (const id of [running, slow]) assert.equal((await s.api('POST', `/v1/vms/${id}/stop?force=true`)).status, 200);
  for (const pid of pids) await waitFor('the VMM gone', () => !isAlive(pid) || undefined, 10_000);

  writeFigures('sigterm', {
    vmsRunningAtSignal: 2, requestInFlight: 'POST /v1/vms/:id/start (VMM launch delayed 3 s)', inFlightStatus: answer.status,
    newConnectionsRefusedAfterMs: refusedAfterMs, inFlightAnsweredAfterMs: answeredAfterMs, exitedAfterMs, exitCode: code,
    websocketClose: closeFrame, vmmsAliveAfterExit: pids.length, reattached: 2,
  });
});
