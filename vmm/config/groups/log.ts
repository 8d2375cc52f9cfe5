// -D [LOGFILE]: log to LOGFILE, or to stderr without one; JSON "log": {"enabled", "file"}.
import * as z from 'zod';
import { defineGroup } from '../group.js';

export const logGroup = defineGroup({
  options: [{ name: '-D', syntax: '[LOGFILE]', help: 'log to LOGFILE (or stderr); level from CAPSULE_LOG_LEVEL', takes: 'optional' }],
  json: { log: z.strictObject({ enabled: z.boolean(), file: z.string().min(1).optional() }) },
  fromCli(_option, value, s) {
    s.log = value === undefined ? { enabled: true } : { enabled: true, file: value };
  },
  fromJson(j, s) {
    if (j.log) s.log = j.log.file === undefined ? { enabled: j.log.enabled } : { enabled: j.log.enabled, file: j.log.file };
  },
});
