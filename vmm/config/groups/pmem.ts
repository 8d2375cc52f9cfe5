// -device virtio-pmem,id=ID,file=PATH  (repeatable): a read-only image mapped into guest memory;
// JSON "pmem": [{"id", "file"}].
import * as z from 'zod';
import { id, KeyTable, path } from '../options.js';
import { defineGroup, optionLabel } from '../group.js';
import { append } from '../settings.js';

export const PMEM_KEYS = new KeyTable({
  id: id({ cli: 'id', required: true }),
  file: path({ cli: 'file', required: true }),
});

export const pmemGroup = defineGroup({
  options: [{ name: '-device', driver: 'virtio-pmem', syntax: PMEM_KEYS.syntax(), help: 'read-only image mapped into guest memory (repeatable)', takes: 'value' }],
  json: { pmem: z.array(PMEM_KEYS.jsonObject()) },
  fromCli(option, value, s) {
    s.pmems = append(s.pmems, PMEM_KEYS.parseKv(optionLabel(option), value ?? ''));
  },
  fromJson(j, s) {
    if (j.pmem) s.pmems = j.pmem.map((p) => PMEM_KEYS.fromJson(p));
  },
});
