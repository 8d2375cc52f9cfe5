// -device virtconsole,id=ID,chardev=ID: a virtio console (hvc in the guest) on the Unix socket of
// a -chardev; JSON "virtconsole": [{"id", "chardev"}]. (The guidebook's "console" JSON key is a
// chardev here: see chardev.ts.)
import * as z from 'zod';
import { id, KeyTable, text } from '../options.js';
import { defineGroup, optionLabel } from '../group.js';
import { append } from '../settings.js';

export const VIRTCONSOLE_KEYS = new KeyTable({
  id: id({ cli: 'id', required: true }),
  chardev: text({ cli: 'chardev', metavar: 'ID', required: true }),
});

export const consoleGroup = defineGroup({
  options: [{ name: '-device', driver: 'virtconsole', syntax: VIRTCONSOLE_KEYS.syntax(), help: 'virtio console (hvc) on the socket of -chardev ID', takes: 'value' }],
  json: { virtconsole: z.array(VIRTCONSOLE_KEYS.jsonObject()) },
  fromCli(option, value, s) {
    s.virtconsoles = append(s.virtconsoles, VIRTCONSOLE_KEYS.parseKv(optionLabel(option), value ?? ''));
  },
  fromJson(j, s) {
    if (j.virtconsole) s.virtconsoles = j.virtconsole.map((v) => VIRTCONSOLE_KEYS.fromJson(v));
  },
});
