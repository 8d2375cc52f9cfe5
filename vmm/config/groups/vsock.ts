// -device vsock,id=ID,guest-cid=N,uds-path=PATH  (one per VM; the host side is a Unix socket,
// Firecracker style); JSON "vsock": {"vsock_id", "guest_cid", "uds_path"}.
import * as z from 'zod';
import { ConfigError, id, KeyTable, path, uint, type Values } from '../options.js';
import { defineGroup, optionLabel } from '../group.js';
import type { VsockConfig } from '../types.js';

/** 0-2 are reserved (hypervisor, local, host); u32::MAX is VMADDR_CID_ANY */
export const MIN_GUEST_CID = 3;
export const MAX_GUEST_CID = 2 ** 32 - 2;

export const VSOCK_KEYS = new KeyTable({
  id: id({ cli: 'id', json: 'vsock_id', required: true }),
  guestCid: uint({ cli: 'guest-cid', json: 'guest_cid', min: MIN_GUEST_CID, max: MAX_GUEST_CID, required: true }),
  udsPath: path({ cli: 'uds-path', json: 'uds_path', metavar: 'SOCKET', required: true }),
});

const toVsock = (v: Values<typeof VSOCK_KEYS.keys>): VsockConfig => ({ id: v.id, guestCid: v.guestCid, udsPath: v.udsPath });

export const vsockGroup = defineGroup({
  options: [{ name: '-device', driver: 'vsock', syntax: VSOCK_KEYS.syntax(), help: 'virtio-vsock, host side on a Unix socket (one per VM)', takes: 'value' }],
  json: { vsock: VSOCK_KEYS.jsonObject() },
  fromCli(option, value, s) {
    const label = optionLabel(option);
    if (s.vsock) throw new ConfigError(`${label}: only one vsock device per VM`);
    s.vsock = toVsock(VSOCK_KEYS.parseKv(label, value ?? ''));
  },
  fromJson(j, s) {
    if (j.vsock) s.vsock = toVsock(VSOCK_KEYS.fromJson(j.vsock));
  },
});
