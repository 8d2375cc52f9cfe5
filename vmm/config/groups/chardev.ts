// -chardev id=ID,path=SOCKET: a Unix socket the VMM listens on, for the serial console or a
// virtio console (-device virtconsole,chardev=ID). JSON: "chardev" (one object or a list, the
// older form) and the guidebook's "console": [{"console_id", "socket_path"}] are both chardevs.
//
// Which chardev is the serial console: the one -serial chardev:ID names; otherwise, for backward
// compatibility (`-chardev id=console,path=...` alone has always been the serial console), the
// only chardev no virtconsole uses. Two or more unused chardevs are an error.
import * as z from 'zod';
import { ConfigError, KeyTable, path, text } from '../options.js';
import { defineGroup } from '../group.js';
import { append, type Chardev, type Settings } from '../settings.js';
import type { SerialSocketConfig, VirtioConsoleConfig } from '../types.js';

export const CHARDEV_KEYS = new KeyTable({
  id: text({ cli: 'id', metavar: 'ID', required: true }),
  path: path({ cli: 'path', metavar: 'SOCKET', required: true }),
});

/** The guidebook's JSON names for the same keys. */
const CONSOLE_JSON_KEYS = new KeyTable({
  id: { ...CHARDEV_KEYS.keys.id, json: 'console_id' },
  path: { ...CHARDEV_KEYS.keys.path, json: 'socket_path' },
});

export const chardevGroup = defineGroup({
  options: [{
    name: '-chardev', syntax: CHARDEV_KEYS.syntax(), takes: 'value',
    help: 'a Unix socket the VMM listens on (repeatable): the serial console,\nor a virtio console (-device virtconsole,chardev=ID)',
  }],
  json: {
    chardev: z.union([CHARDEV_KEYS.jsonObject(), z.array(CHARDEV_KEYS.jsonObject())]),
    console: z.array(CONSOLE_JSON_KEYS.jsonObject()),
  },
  fromCli(option, value, s) {
    s.chardevs = append(s.chardevs, CHARDEV_KEYS.parseKv(option.name, value ?? ''));
  },
  fromJson(j, s) {
    const chardevs = j.chardev === undefined ? [] : Array.isArray(j.chardev) ? j.chardev : [j.chardev];
    const all = [...chardevs.map((c) => CHARDEV_KEYS.fromJson(c)), ...(j.console ?? []).map((c) => CONSOLE_JSON_KEYS.fromJson(c))];
    if (all.length > 0) s.chardevs = all;
  },
});

/** The serial console's socket and the virtio consoles, from the chardevs and who uses them. Paths as given. */
export function assignChardevs(s: Settings): { serial?: SerialSocketConfig; consoles: VirtioConsoleConfig[] } {
  const chardevs = new Map<string, Chardev>();
  for (const c of s.chardevs ?? []) {
    if (chardevs.has(c.id)) throw new ConfigError(`-chardev: id '${c.id}' is used twice`);
    chardevs.set(c.id, c);
  }
  const users = new Map<string, string>();
  const use = (chardev: string, user: string): Chardev => {
    const c = chardevs.get(chardev);
    if (!c) throw new ConfigError(`${user}: chardev '${chardev}' is not defined (defined: ${[...chardevs.keys()].join(', ') || 'none'}; add -chardev id=${chardev},path=SOCKET)`);
    const other = users.get(chardev);
    if (other) throw new ConfigError(`${user}: chardev '${chardev}' is already used by ${other}`);
    users.set(chardev, user);
    return c;
  };
  const consoles = (s.virtconsoles ?? []).map((v) => ({ id: v.id, path: use(v.chardev, `-device virtconsole,id=${v.id}`).path }));
  if (s.serialChardev !== undefined) use(s.serialChardev, '-serial');
  const unused = [...chardevs.keys()].filter((id) => !users.has(id));
  if (s.serialChardev === undefined && unused.length === 1) use(unused[0] as string, '-serial');
  else if (unused.length > 0) {
    throw new ConfigError(`-chardev: ${unused.map((id) => `'${id}'`).join(', ')} not used by any device: name the serial console with ` +
      '-serial chardev:ID and attach the others with -device virtconsole,id=ID,chardev=ID');
  }
  const serialId = [...users].find(([, user]) => user === '-serial')?.[0];
  const serial = serialId === undefined ? undefined : chardevs.get(serialId);
  return serial ? { serial: { id: serial.id, path: serial.path }, consoles } : { consoles };
}
