// QMP lifecycle commands: stop, cont, quit, query-status, query-cpus-fast, system_reset,
// system_powerdown. The STOP/RESUME/RESET/SHUTDOWN events come from the machine's own events
// (main.ts), so a guest-initiated change reports the same way as a QMP one.
import type { QmpServer } from '../server.js';
import type { RunState, ShutdownInfo } from '../../machine.js';

/** What these commands need of the machine. */
export interface LifecycleMachine {
  readonly state: RunState;
  pause(): Promise<void>;
  resume(): Promise<void>;
  reset(): Promise<void>;
  shutdown(info: ShutdownInfo): Promise<void>;
  powerButton(): void;
  /** the vCPU threads' tids, by vCPU index */
  vcpuThreadIds(): number[];
}

export function register(qmp: Pick<QmpServer, 'register' | 'event'>, { machine }: { machine: LifecycleMachine }): void {
  qmp.register('stop', async () => { await machine.pause(); return {}; });
  qmp.register('cont', async () => { await machine.resume(); return {}; });
  qmp.register('quit', () => {
    // reply first: the SHUTDOWN event and the exit follow
    setImmediate(() => void machine.shutdown({ guest: false, reason: 'host-qmp-quit' }));
    return {};
  });
  qmp.register('query-status', () => ({
    running: machine.state === 'running',
    singlestep: false,
    status: machine.state,
  }));
  qmp.register('query-cpus-fast', () => machine.vcpuThreadIds().map((tid, i) => ({
    'cpu-index': i,
    'qom-path': `/machine/unattached/device[${i}]`,
    'thread-id': tid,
    target: 'x86_64',
    props: { 'core-id': i, 'thread-id': 0, 'socket-id': 0 },
  })));
  qmp.register('system_reset', async () => { await machine.reset(); return {}; });
  qmp.register('system_powerdown', () => {
    qmp.event('POWERDOWN');
    machine.powerButton();
    return {};
  });
}
