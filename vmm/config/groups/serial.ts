// -serial stdio | -serial chardev:ID (both may be given: output goes to both); JSON
// "serial": {"stdio": bool, "chardev": "ID"}. Which chardev is the serial console when none is
// named: see chardev.ts.
import * as z from 'zod';
import { ConfigError } from '../options.js';
import { defineGroup } from '../group.js';

const CHARDEV = 'chardev:';

export const serialGroup = defineGroup({
  options: [{ name: '-serial', syntax: 'stdio|chardev:ID', help: 'serial console on stdin/stdout, or on the Unix socket of -chardev ID', takes: 'value' }],
  json: { serial: z.strictObject({ stdio: z.boolean().optional(), chardev: z.string().min(1).optional() }) },
  fromCli(_option, value, s) {
    if (value === 'stdio') s.serialStdio = true;
    else if (value?.startsWith(CHARDEV) && value.length > CHARDEV.length) s.serialChardev = value.slice(CHARDEV.length);
    else throw new ConfigError(`-serial: expected 'stdio' or 'chardev:ID' (got '${value}')`);
  },
  fromJson(j, s) {
    if (j.serial?.stdio !== undefined) s.serialStdio = j.serial.stdio;
    if (j.serial?.chardev !== undefined) s.serialChardev = j.serial.chardev;
  },
});
