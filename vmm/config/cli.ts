// argv → Settings, dispatching each option to the group that declares it. -h/-help, -version
// and -config are handled here; `--opt` is read as `-opt`.
import { ConfigError } from './options.js';
import type { Group, OptionSpec } from './group.js';
import type { Settings } from './settings.js';

export interface ParsedArgs {
  cli: Settings;
  configFile?: string;
  help: boolean;
  version: boolean;
}

export const CONFIG_OPTION: OptionSpec = { name: '-config', syntax: 'FILE.json', help: 'StratoVirt-style JSON; the command line overrides it', takes: 'value' };

type Owner = [OptionSpec, Group];

/** The shared option of every device group that declares a `driver`. */
const DEVICE_OPTION: OptionSpec = { name: '-device', syntax: 'DRIVER,...', help: '', takes: 'value' };

export function parseArgs(argv: string[], groups: readonly Group[]): ParsedArgs {
  const owners = new Map<string, Owner>();
  const drivers = new Map<string, Owner>();
  for (const g of groups) {
    for (const o of g.options) (o.driver === undefined ? owners.set(o.name, [o, g]) : drivers.set(o.driver, [o, g]));
  }
  const builtins = new Map([[CONFIG_OPTION.name, CONFIG_OPTION], ...(drivers.size > 0 ? [[DEVICE_OPTION.name, DEVICE_OPTION] as const] : [])]);
  const known = [...owners.keys(), ...builtins.keys()].sort();

  const out: ParsedArgs = { cli: {}, help: false, version: false };
  for (let i = 0; i < argv.length; i++) {
    const raw = argv[i] as string;
    const opt = raw.startsWith('--') ? raw.slice(1) : raw;
    if (opt === '-h' || opt === '-help') { out.help = true; continue; }
    if (opt === '-version' || opt === '-V') { out.version = true; continue; }
    const owner = owners.get(opt);
    const spec = owner?.[0] ?? builtins.get(opt);
    if (!spec) throw new ConfigError(`unknown option '${raw}' (known options: ${known.join(' ')})`);
    let value: string | undefined;
    const next = argv[i + 1];
    if (spec.takes === 'value') {
      if (next === undefined) throw new ConfigError(`${opt}: missing value`);
      value = next;
      i++;
    } else if (spec.takes === 'optional' && next !== undefined && !next.startsWith('-')) {
      value = next;
      i++;
    }
    if (owner) owner[1].fromCli(owner[0], value, out.cli);
    else if (spec === DEVICE_OPTION) dispatchDevice(value as string, drivers, out.cli);
    else out.configFile = value;
  }
  return out;
}

/** `-device DRIVER,key=value,...`: the driver picks the group; the group gets the rest. */
function dispatchDevice(value: string, drivers: Map<string, Owner>, into: Settings): void {
  const comma = value.indexOf(',');
  const driver = comma < 0 ? value : value.slice(0, comma);
  const owner = drivers.get(driver);
  if (!owner) throw new ConfigError(`-device: unknown driver '${driver}' (allowed: ${[...drivers.keys()].join(', ')})`);
  owner[1].fromCli(owner[0], comma < 0 ? '' : value.slice(comma + 1), into);
}
