// The QMP command modules against a stand-in machine over a real socket: what each command
// asks of the machine and what it answers (the KVM tests cover them with a real guest).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { QmpServer } from '../server.js';
import { QmpClient, waitFor } from '../../testing/clients.js';
import { register as registerLifecycle, type LifecycleMachine } from './lifecycle.js';
import { register as registerFds } from './fds.js';
import { register as registerInfo } from './info.js';
import type { RunState, ShutdownInfo } from '../../machine.js';

class FakeMachine implements LifecycleMachine {
  state: RunState = 'running';
  readonly calls: string[] = [];
  async pause(): Promise<void> { this.calls.push('pause'); this.state = 'paused'; }
  async resume(): Promise<void> { this.calls.push('resume'); this.state = 'running'; }
  async reset(): Promise<void> { this.calls.push('reset'); }
  async shutdown(info: ShutdownInfo): Promise<void> { this.calls.push(`shutdown:${info.reason}`); }
  powerButton(): void { this.calls.push('powerButton'); }
  vcpuThreadIds(): number[] { return [101, 102]; }
}

test('lifecycle, fd and info commands', async () => {
  const path = join(mkdtempSync(join(tmpdir(), 'qmp-commands-')), 'qmp.sock');
  const qmp = new QmpServer({ path });
  const machine = new FakeMachine();
  registerLifecycle(qmp, { machine });
  registerFds(qmp, { fds: new Map() });
  registerInfo(qmp);
  await qmp.listen();
  const c = await QmpClient.connect(path);
  try {
    assert.deepEqual(await c.execute('query-status'), { running: true, singlestep: false, status: 'running' });
    await c.execute('stop');
    assert.deepEqual(await c.execute('query-status'), { running: false, singlestep: false, status: 'paused' });
    await c.execute('cont');
    await c.execute('system_reset');
    await c.execute('system_powerdown');
    await c.event('POWERDOWN');
    const cpus = await c.execute('query-cpus-fast') as Array<Record<string, unknown>>;
    assert.deepEqual(cpus.map((x) => [x['cpu-index'], x['thread-id'], x['qom-path']]), [[0, 101, '/machine/unattached/device[0]'], [1, 102, '/machine/unattached/device[1]']]);
    assert.deepEqual(await c.execute('query-version'), { qemu: { major: 8, minor: 2, micro: 0 }, package: 'capsule' });
    const names = (await c.execute('query-commands') as Array<{ name: string }>).map((x) => x.name);
    assert.deepEqual(names, ['qmp_capabilities', 'stop', 'cont', 'quit', 'query-status', 'query-cpus-fast', 'system_reset', 'system_powerdown',
      'getfd', 'closefd', 'query-version', 'query-commands']);
    assert.deepEqual((await c.call('closefd', { fdname: 'nope' })).error, { class: 'GenericError', desc: "File descriptor named 'nope' not found" });
    await c.execute('quit');
    await waitFor(() => machine.calls.includes('shutdown:host-qmp-quit') || undefined, 2000, 'quit → shutdown');
    assert.deepEqual(machine.calls, ['pause', 'resume', 'reset', 'powerButton', 'shutdown:host-qmp-quit']);
  } finally {
    c.close();
    await qmp.close();
  }
});
