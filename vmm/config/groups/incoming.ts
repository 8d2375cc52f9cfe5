// -incoming defer | file:DIR (StratoVirt's and QEMU's): the VMM starts without booting and
// restores a snapshot instead (docs/snapshots.md). `defer`: it waits for QMP
// `migrate-incoming {"uri":"fd:NAME"}` with the files passed by getfd (how the server does it: a
// jailed VMM opens no host file); `file:DIR`: it opens DIR's state and memory files itself at start.
import * as z from 'zod';
import { KeyTable, show, text, type Key } from '../options.js';
import { settingsGroup } from '../group.js';
import type { IncomingConfig } from '../types.js';

const FILE = 'file:';
function parseIncoming(s: string): IncomingConfig | undefined {
  if (s === 'defer') return { mode: 'defer' };
  if (s.startsWith(FILE) && s.length > FILE.length) return { mode: 'file', dir: s.slice(FILE.length) };
  return undefined;
}

export const INCOMING_KEYS = new KeyTable({
  incoming: {
    ...text({ cli: '-incoming', json: 'incoming', metavar: 'defer|file:DIR', expect: 'defer or file:DIR' }),
    fromText: parseIncoming,
    valid: () => true,
    jsonType: z.string()
      .refine((s) => parseIncoming(s) !== undefined, { error: (iss) => `must be defer or file:DIR (got ${show(iss.input)})` })
      .transform((s) => parseIncoming(s) as IncomingConfig),
  } as Key<IncomingConfig, false>,
});

export const incomingGroup = settingsGroup({
  table: INCOMING_KEYS,
  options: { incoming: 'restore a snapshot instead of booting: wait for QMP\nmigrate-incoming (defer), or load DIR at start (file:DIR)' },
});
