// -api-channel unix:PATH (the QMP socket); JSON "api-channel": "unix:PATH".
import * as z from 'zod';
import { KeyTable, show, text } from '../options.js';
import { settingsGroup } from '../group.js';

const UNIX = 'unix:';
const socketPath = (s: string): string | undefined => (s.startsWith(UNIX) && s.length > UNIX.length ? s.slice(UNIX.length) : undefined);

export const QMP_KEYS = new KeyTable({
  apiChannel: {
    ...text({ cli: '-api-channel', json: 'api-channel', metavar: 'unix:PATH', expect: 'unix:PATH' }),
    fromText: socketPath,
    // the JSON file has the same text form as the command line
    jsonType: z.string()
      .refine((s) => socketPath(s) !== undefined, { error: (iss) => `must be unix:PATH (got ${show(iss.input)})` })
      .transform((s) => socketPath(s) as string),
  },
});

export const qmpGroup = settingsGroup({ table: QMP_KEYS, options: { apiChannel: 'QMP socket' } });
