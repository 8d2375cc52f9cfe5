// -machine [type=]microvm[,dump-guest-core=on|off][,mem-share=on|off]; JSON "machine-config".
import { choice, KeyTable, onOff } from '../options.js';
import { settingsGroup } from '../group.js';

export const MACHINE_KEYS = new KeyTable({
  machineType: choice({ cli: 'type', values: ['microvm'], anyCase: true, metavar: 'microvm', expect: 'microvm (the only machine type)' }),
  dumpGuestCore: onOff({ cli: 'dump-guest-core', json: 'dump_guest_core', jsonAliases: ['dump-guest-core'] }),
  memShare: onOff({ cli: 'mem-share', json: 'mem_share', jsonAliases: ['mem-share'] }),
}, 'machineType');

export const machineGroup = settingsGroup({
  table: MACHINE_KEYS,
  kv: { option: '-machine', help: 'mem-share=on maps guest RAM MAP_SHARED; dump-guest-core=off sets MADV_DONTDUMP' },
  section: 'machine-config',
});
