// -disable-seccomp, -seccomp kill|log; JSON "disable-seccomp", "seccomp".
import { choice, flag, KeyTable } from '../options.js';
import { settingsGroup } from '../group.js';

export const SECCOMP_KEYS = new KeyTable({
  disableSeccomp: flag({ cli: '-disable-seccomp', json: 'disable-seccomp' }),
  seccompMode: choice({ cli: '-seccomp', json: 'seccomp', values: ['kill', 'log'], expect: 'kill or log' }),
});

export const seccompGroup = settingsGroup({
  table: SECCOMP_KEYS,
  options: {
    disableSeccomp: 'do not install the seccomp filter after init',
    seccompMode: 'syscalls outside the filter\'s list kill the VMM (default) or are\nonly logged by the kernel (audit type=1326, for debugging)',
  },
});
