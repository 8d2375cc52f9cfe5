// The server can die and come back without losing VMs; a VMM that dies is reported.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { TestServer, EventCollector, ConsoleCollector, waitFor } from '../test/harness.js';
import { isAlive } from './process.js';

const servers: TestServer[] = [];
after(async () => { for (const s of servers) await s.stop(); });

test('kill -9 of the server loses no running VM', async () => {
  const s = await TestServer.start();
  servers.push(s);
  const c = await s.api('POST', '/v1/vms', { name: 'survivor' });
  const id: string = c.body.id;
  const started = await s.api('POST', `/v1/vms/${id}/start`);
  assert.equal(started.body.state, 'running');
  const pid: number = started.body.pid;
  const cons = new ConsoleCollector(s.ws(`/v1/vms/${id}/console`));
  await cons.waitFor('CAPSULE_READY');
  cons.close();

  await s.kill9();
  assert.ok(isAlive(pid), 'the VMM outlives the server');
  await s.launch();

  const got = await s.api('GET', `/v1/vms/${id}`);
  assert.equal(got.body.state, 'running');
  assert.equal(got.body.pid, pid);
  // The reattached QMP and console connections work.
  const events = new EventCollector(s.ws(`/v1/vms/${id}/events`));
  await events.opened;
  const cons2 = new ConsoleCollector(s.ws(`/v1/vms/${id}/console`));
  await cons2.opened;
  cons2.send('echo back-$((6*7))\n');
  await cons2.waitFor('back-42');
  assert.equal((await s.api('POST', `/v1/vms/${id}/pause`)).body.state, 'paused');
  await events.waitFor('STOP');
  const stopped = await s.api('POST', `/v1/vms/${id}/stop`);
  assert.equal(stopped.body.state, 'stopped');
  await events.waitFor('SHUTDOWN');
  assert.ok(!isAlive(pid));
  events.close();
  cons2.close();
});

test('a VMM killed with -9 makes its VM crashed, with an event, and leaves nothing behind', async () => {
  const s = await TestServer.start();
  servers.push(s);
  const c = await s.api('POST', '/v1/vms', { name: 'victim' });
  const id: string = c.body.id;
  const all = new EventCollector(s.ws('/v1/events'));
  await all.opened;
  const started = await s.api('POST', `/v1/vms/${id}/start`);
  const pid: number = started.body.pid;
  process.kill(pid, 'SIGKILL');

  const crashed = await all.waitFor('CRASHED', (m) => m.vm === id, 20_000);
  assert.match(crashed.data.reason, /unexpectedly/);
  await all.waitFor('STATE_CHANGED', (m) => m.vm === id && m.data.state === 'crashed');
  const vm = await s.api('GET', `/v1/vms/${id}`);
  assert.equal(vm.body.state, 'crashed');
  assert.equal(vm.body.pid, undefined);
  const dir = join(s.dataDir, 'vms', id);
  assert.deepEqual(readdirSync(dir), ['vmm.log'], 'no pidfile or sockets left');
  // A crashed VM can be started again.
  const again = await s.api('POST', `/v1/vms/${id}/start`);
  assert.equal(again.body.state, 'running');
  await s.api('DELETE', `/v1/vms/${id}?force=true`);
  assert.ok(!existsSync(dir));
  all.close();
});

test('a VMM that died while the server was down is reported crashed at the next start', async () => {
  const s = await TestServer.start();
  servers.push(s);
  const c = await s.api('POST', '/v1/vms', { name: 'orphan' });
  const id: string = c.body.id;
  const pid: number = (await s.api('POST', `/v1/vms/${id}/start`)).body.pid;
  await s.kill9();
  process.kill(pid, 'SIGKILL');
  await waitFor('VMM exit', () => !isAlive(pid) || undefined, 10_000);
  await s.launch();
  assert.equal((await s.api('GET', `/v1/vms/${id}`)).body.state, 'crashed');
  const replay = new EventCollector(s.ws(`/v1/vms/${id}/events?since=0`));
  await replay.waitFor('CRASHED');
  replay.close();
  assert.deepEqual(readdirSync(join(s.dataDir, 'vms', id)), ['vmm.log']);
});
