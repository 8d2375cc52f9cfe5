// -daemonize, -pidfile FILE; JSON "daemonize", "pidfile".
import { flag, KeyTable, path } from '../options.js';
import { settingsGroup } from '../group.js';

export const DAEMON_KEYS = new KeyTable({
  daemonize: flag({ cli: '-daemonize', json: 'daemonize' }),
  pidfile: path({ cli: '-pidfile', json: 'pidfile', metavar: 'FILE' }),
});

export const daemonGroup = settingsGroup({
  table: DAEMON_KEYS,
  options: { daemonize: 'run in the background once QMP listens', pidfile: "write the VMM's pid (removed on exit)" },
});
