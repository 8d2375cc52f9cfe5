// QMP getfd / closefd (as QEMU): `getfd {"fdname"}` keeps the first fd that came with the command
// (SCM_RIGHTS) under that name, replacing (and closing) an older one; the server closes any other
// fds of the command. `closefd {"fdname"}` closes it. The caller owns `fds` (closes them on exit).
import { closeFd } from '../../kvm/sys.js';
import { QmpError, type QmpServer } from '../server.js';

export interface FdDeps {
  /** named fds, by fdname; devices look them up here */
  fds: Map<string, number>;
}

export function register(qmp: Pick<QmpServer, 'register'>, { fds }: FdDeps): void {
  qmp.register('getfd', (args, ctx) => {
    const name = args.fdname;
    if (typeof name !== 'string' || name === '') throw new QmpError('GenericError', "Parameter 'fdname' is missing");
    if (/^\d/.test(name)) throw new QmpError('GenericError', "Parameter 'fdname' must not begin with a digit");
    const fd = ctx.fds.shift();
    if (fd === undefined) throw new QmpError('GenericError', 'No file descriptor supplied via SCM_RIGHTS');
    const old = fds.get(name);
    if (old !== undefined) closeFd(old);
    fds.set(name, fd);
    return {};
  });
  qmp.register('closefd', (args) => {
    const name = String(args.fdname ?? '');
    const fd = fds.get(name);
    if (fd === undefined) throw new QmpError('GenericError', `File descriptor named '${name}' not found`);
    closeFd(fd);
    fds.delete(name);
    return {};
  });
}
