// A real guest through the whole lifecycle: QEMU (KVM or TCG), the default image, QMP
// events over WebSockets, the serial console, and nothing left behind at the end.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { TestServer, EventCollector, ConsoleCollector, waitFor } from '../test/harness.js';
import { isAlive } from './process.js';

let s: TestServer;
before(async () => { s = await TestServer.start(); });
after(async () => { await s.stop(); });

test('create, start, console, pause, resume, stop, delete', async () => {
  const c = await s.api('POST', '/v1/vms', { name: 'life-1', vcpus: 1, memoryMiB: 256 });
  assert.equal(c.status, 201);
  const id: string = c.body.id;
  const events = new EventCollector(s.ws(`/v1/vms/${id}/events`));
  await events.opened;

  const started = await s.api('POST', `/v1/vms/${id}/start`);
  assert.equal(started.status, 200, JSON.stringify(started.body));
  assert.equal(started.body.state, 'running');
  const pid: number = started.body.pid;
  assert.ok(isAlive(pid), 'the VMM process runs');
  const vmDir = join(s.dataDir, 'vms', id);
  for (const f of ['vmm.pid', 'root/qmp', 'root/console', 'vmm.log']) assert.ok(existsSync(join(vmDir, f)), f);

  const cons = new ConsoleCollector(s.ws(`/v1/vms/${id}/console`));
  await cons.opened;
  await cons.waitFor(/CAPSULE_READY cpus=1/);
  // The console is interactive: the guest shell runs what we type.
  cons.send('echo sum-$((40+2))\n');
  await cons.waitFor('sum-42');

  const paused = await s.api('POST', `/v1/vms/${id}/pause`);
  assert.equal(paused.body.state, 'paused');
  await events.waitFor('STOP');
  assert.equal((await s.api('POST', `/v1/vms/${id}/pause`)).status, 409);

  const resumed = await s.api('POST', `/v1/vms/${id}/resume`);
  assert.equal(resumed.body.state, 'running');
  await events.waitFor('RESUME');

  const stopped = await s.api('POST', `/v1/vms/${id}/stop`);
  assert.equal(stopped.status, 200);
  assert.equal(stopped.body.state, 'stopped');
  assert.equal(stopped.body.pid, undefined);
  const shutdown = await events.waitFor('SHUTDOWN');
  assert.equal(shutdown.data.guest, true, 'a clean stop is a guest power-off');
  await events.waitFor('STATE_CHANGED', (m) => m.data.state === 'stopped');
  assert.ok(!isAlive(pid), 'the VMM exited');
  assert.deepEqual(readdirSync(vmDir).sort(), ['vmm.log'], 'only the log remains');

  const seqs = events.messages.map((m) => m.seq);
  assert.deepEqual(seqs, [...seqs].sort((a, b) => a - b), 'events arrive in seq order');
  assert.ok(events.messages.every((m) => m.vm === id && typeof m.timestamp === 'string'));

  const log = await s.api('GET', `/v1/vms/${id}/log`);
  assert.equal(log.status, 200);
  assert.equal(typeof log.body, 'string');

  assert.equal((await s.api('DELETE', `/v1/vms/${id}`)).status, 204);
  assert.ok(!existsSync(vmDir), 'the VM directory is gone');
  await events.waitFor('VM_DELETED');
  events.close();
  cons.close();
});

test('force stop kills at once; delete of a running VM stops it first; replay with ?since', async () => {
  const c = await s.api('POST', '/v1/vms', { name: 'life-2' });
  const id: string = c.body.id;
  const started = await s.api('POST', `/v1/vms/${id}/start`);
  assert.equal(started.body.state, 'running');
  const forced = await s.api('POST', `/v1/vms/${id}/stop?force=true`);
  assert.equal(forced.body.state, 'stopped');
  assert.ok(!isAlive(started.body.pid));

  // Events are stored: a late subscriber replays them from seq 0.
  const replay = new EventCollector(s.ws(`/v1/vms/${id}/events?since=0`));
  await replay.waitFor('STATE_CHANGED', (m) => m.data.state === 'stopped');
  const firstSeq = replay.messages[0]!.seq;
  const partial = new EventCollector(s.ws(`/v1/vms/${id}/events?since=${firstSeq}`));
  await partial.waitFor('STATE_CHANGED', (m) => m.data.state === 'stopped');
  assert.ok(partial.messages.every((m) => m.seq > firstSeq));
  replay.close();
  partial.close();

  const again = await s.api('POST', `/v1/vms/${id}/start`);
  assert.equal(again.body.state, 'running');
  assert.equal((await s.api('DELETE', `/v1/vms/${id}?force=true`)).status, 204);
  await waitFor('VMM exit', () => !isAlive(again.body.pid) || undefined, 10_000);
  assert.ok(!existsSync(join(s.dataDir, 'vms', id)));
});

test('reboot brings the guest up again', async () => {
  const c = await s.api('POST', '/v1/vms', { name: 'life-3' });
  const id: string = c.body.id;
  await s.api('POST', `/v1/vms/${id}/start`);
  const cons = new ConsoleCollector(s.ws(`/v1/vms/${id}/console`));
  await cons.waitFor('CAPSULE_READY');
  const r = await s.api('POST', `/v1/vms/${id}/reboot`);
  assert.equal(r.status, 200, JSON.stringify(r.body));
  assert.equal(r.body.state, 'running');
  const cons2 = new ConsoleCollector(s.ws(`/v1/vms/${id}/console`));
  await cons2.waitFor('CAPSULE_READY');
  cons.close();
  cons2.close();
  await s.api('DELETE', `/v1/vms/${id}?force=true`);
});

test('a forced stop does not wait behind a clean stop the guest ignores', async () => {
  const c = await s.api('POST', '/v1/vms', { name: 'life-4' });
  const id: string = c.body.id;
  const started = await s.api('POST', `/v1/vms/${id}/start`);
  // Paused before its init runs, the guest cannot see the power button: the clean stop waits.
  await s.api('POST', `/v1/vms/${id}/pause`);
  const clean = s.api('POST', `/v1/vms/${id}/stop`);
  await waitFor('stopping', async () => (await s.api('GET', `/v1/vms/${id}`)).body.state === 'stopping' || undefined, 10_000);
  const t0 = Date.now();
  const forced = await s.api('POST', `/v1/vms/${id}/stop?force=true`);
  assert.equal(forced.status, 200);
  assert.equal(forced.body.state, 'stopped');
  assert.ok(Date.now() - t0 < 10_000, 'the kill did not wait for the clean stop timeout');
  assert.ok(!isAlive(started.body.pid));
  assert.equal((await clean).body.state, 'stopped');
  await s.api('DELETE', `/v1/vms/${id}`);
});
