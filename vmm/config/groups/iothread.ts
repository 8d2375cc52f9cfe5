// -iothread id=ID (repeatable): threads devices may be put on (-drive/-netdev iothread=ID);
// JSON "iothread": [{"id"}].
import * as z from 'zod';
import { id, KeyTable } from '../options.js';
import { defineGroup } from '../group.js';
import { append } from '../settings.js';

export const IOTHREAD_KEYS = new KeyTable({ id: id({ cli: 'id', required: true }) });

export const iothreadGroup = defineGroup({
  options: [{ name: '-iothread', syntax: IOTHREAD_KEYS.syntax(), help: 'an I/O thread for -drive/-netdev iothread=ID (repeatable)', takes: 'value' }],
  json: { iothread: z.array(IOTHREAD_KEYS.jsonObject()) },
  fromCli(option, value, s) {
    s.iothreads = append(s.iothreads, IOTHREAD_KEYS.parseKv(option.name, value ?? ''));
  },
  fromJson(j, s) {
    if (j.iothread) s.iothreads = j.iothread.map((t) => IOTHREAD_KEYS.fromJson(t));
  },
});
