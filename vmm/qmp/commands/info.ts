// QMP query-version and query-commands (as QEMU). query-commands lists what is registered when
// it is asked, so it stays right whatever registers later.
import { QMP_VERSION, type QmpServer } from '../server.js';

export function register(qmp: Pick<QmpServer, 'register' | 'handlers'>): void {
  qmp.register('query-version', () => ({ qemu: QMP_VERSION, package: 'capsule' }));
  qmp.register('query-commands', () => ['qmp_capabilities', ...qmp.handlers.keys()].map((name) => ({ name })));
}
