// -drive id=ID,file=PATH[,serial=..][,readonly=on|off][,direct=on|off][,no-flush=on|off]
//        [,iothread=ID][,iops=N][,bps=N][,aio=inline|threads]  (virtio-blk, repeatable; the guest
//        sees vda, vdb, ... in order)
// JSON "drive": [{"drive_id", "path_on_host", "serial_num", "read_only", "direct", "no_flush",
//                 "iothread", "iops", "bps", "aio"}]
import * as z from 'zod';
import { choice, id, KeyTable, onOff, path, text, uint, type Values } from '../options.js';
import { defineGroup } from '../group.js';
import { append } from '../settings.js';
import type { DriveConfig } from '../types.js';

/** VIRTIO_BLK_ID_BYTES: the serial the guest reads is at most 20 bytes */
const SERIAL_MAX = 20;

export const DRIVE_KEYS = new KeyTable({
  id: id({ cli: 'id', json: 'drive_id', required: true }),
  file: path({ cli: 'file', json: 'path_on_host', required: true }),
  serial: text({
    cli: 'serial', json: 'serial_num', metavar: 'SERIAL',
    expect: `1-${SERIAL_MAX} printable ASCII characters`, valid: (s) => new RegExp(`^[\\x20-\\x7e]{1,${SERIAL_MAX}}$`).test(s),
  }),
  readOnly: onOff({ cli: 'readonly', json: 'read_only' }),
  direct: onOff({ cli: 'direct' }),
  noFlush: onOff({ cli: 'no-flush', json: 'no_flush' }),
  iothread: id({ cli: 'iothread' }),
  iops: uint({ cli: 'iops', min: 1, max: 2 ** 32 - 1 }),
  bps: uint({ cli: 'bps', min: 1, max: 2 ** 40 }),
  // threads (the default on the main thread): several requests at once on libuv's pool;
  // inline (an iothread's only engine): one at a time on the serving thread
  aio: choice({ cli: 'aio', values: ['inline', 'threads'] }),
});

function toDrive(v: Values<typeof DRIVE_KEYS.keys>): DriveConfig {
  return {
    id: v.id, file: v.file, serial: v.serial,
    readOnly: v.readOnly ?? false, direct: v.direct ?? false, noFlush: v.noFlush ?? false,
    iothread: v.iothread, iops: v.iops, bps: v.bps, aio: v.aio ?? (v.iothread ? 'inline' : 'threads'),
  };
}

export const driveGroup = defineGroup({
  options: [{ name: '-drive', syntax: DRIVE_KEYS.syntax(), help: 'virtio-blk disk (repeatable; vda, vdb, ... in order)', takes: 'value' }],
  json: { drive: z.array(DRIVE_KEYS.jsonObject()) },
  fromCli(option, value, s) {
    s.drives = append(s.drives, toDrive(DRIVE_KEYS.parseKv(option.name, value ?? '')));
  },
  fromJson(j, s) {
    if (j.drive) s.drives = j.drive.map((d) => toDrive(DRIVE_KEYS.fromJson(d)));
  },
});
