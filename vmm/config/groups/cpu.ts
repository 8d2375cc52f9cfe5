// -smp [cpus=]N; JSON machine-config.vcpu_count.
import { KeyTable, uint } from '../options.js';
import { settingsGroup } from '../group.js';

export const MIN_CPUS = 1;
export const MAX_CPUS = 254;

export const CPU_KEYS = new KeyTable({
  cpus: uint({ cli: 'cpus', json: 'vcpu_count', min: MIN_CPUS, max: MAX_CPUS }),
}, 'cpus');

export const cpuGroup = settingsGroup({
  table: CPU_KEYS,
  kv: { option: '-smp', help: `vCPUs, ${MIN_CPUS}-${MAX_CPUS} (default 1)` },
  section: 'machine-config',
});
