// virtio-blk request parsing (virtio 1.2, 5.2.6): a 16-byte header the device reads, data
// buffers, and one status byte the device writes last. Everything comes from the guest: a
// request that does not have this shape is answered IOERR (if it has a status byte) or returned
// with nothing written.
import type { GuestMemory } from '../../../memory/guest-memory.js';
import { ChainReader, type DescriptorChain, type GuestBuffer } from '../../../virtio/queue.js';

export const SECTOR_SIZE = 512;

export const REQ = { IN: 0, OUT: 1, FLUSH: 4, GET_ID: 8, DISCARD: 11, WRITE_ZEROES: 13 } as const;
export const BLK_STATUS = { OK: 0, IOERR: 1, UNSUPP: 2 } as const;
/** VIRTIO_BLK_ID_BYTES */
export const ID_BYTES = 20;
/** struct virtio_blk_discard_write_zeroes */
export const SEGMENT_SIZE = 16;
export const WRITE_ZEROES_FLAG_UNMAP = 1;

export interface Segment {
  sector: bigint;
  sectors: number;
  flags: number;
}

export interface BlkRequest {
  type: number;
  sector: bigint;
  /** buffers holding the data: the readable ones after the header (OUT) or the writable ones before the status (IN, GET_ID) */
  data: GuestBuffer[];
  dataLen: number;
  /** the status byte's buffer (the last writable byte) */
  status: GuestBuffer;
  /** DISCARD / WRITE_ZEROES ranges */
  segments: Segment[];
}

export class BlkRequestError extends Error {
  /** status: where to write IOERR, if the request has a status byte at all */
  constructor(msg: string, readonly status: GuestBuffer | null) {
    super(msg);
    this.name = 'BlkRequestError';
  }
}

/** Splits the writable buffers into data + the final status byte. */
function splitStatus(writable: GuestBuffer[]): { data: GuestBuffer[]; status: GuestBuffer } | null {
  const last = writable[writable.length - 1];
  if (!last) return null;
  const data = writable.slice(0, -1);
  const status = { addr: (last.addr + last.len - 1) as GuestBuffer['addr'], len: 1 };
  if (last.len > 1) data.push({ addr: last.addr, len: last.len - 1 });
  return { data, status };
}

const sum = (bufs: GuestBuffer[]): number => bufs.reduce((n, b) => n + b.len, 0);

/** Skips `n` bytes of a buffer list, returning what follows. */
function after(bufs: GuestBuffer[], n: number): GuestBuffer[] {
  const out: GuestBuffer[] = [];
  for (const b of bufs) {
    if (n >= b.len) {
      n -= b.len;
      continue;
    }
    out.push({ addr: (b.addr + n) as GuestBuffer['addr'], len: b.len - n });
    n = 0;
  }
  return out;
}

export function parseRequest(mem: GuestMemory, chain: DescriptorChain, maxSegments: number): BlkRequest {
  const split = splitStatus(chain.writable);
  const status = split?.status ?? null;
  const r = new ChainReader(mem, chain.readable);
  if (r.total < 16) throw new BlkRequestError(`header of ${r.total} bytes (need 16)`, status);
  if (!split) throw new BlkRequestError('no writable status byte', null);
  const h = new DataView(r.read(16).buffer);
  const type = h.getUint32(0, true);
  const sector = h.getBigUint64(8, true);
  const rest = after(chain.readable, 16);
  const req: BlkRequest = { type, sector, data: [], dataLen: 0, status: split.status, segments: [] };
  switch (type) {
    case REQ.IN:
    case REQ.GET_ID:
      if (rest.length > 0) throw new BlkRequestError('device-readable data in a read request', status);
      req.data = split.data;
      break;
    case REQ.OUT:
      if (split.data.length > 0) throw new BlkRequestError('device-writable data in a write request', status);
      req.data = rest;
      break;
    case REQ.FLUSH:
      break;
    case REQ.DISCARD:
    case REQ.WRITE_ZEROES: {
      const len = sum(rest);
      if (len === 0 || len % SEGMENT_SIZE) throw new BlkRequestError(`segment list of ${len} bytes`, status);
      if (len / SEGMENT_SIZE > maxSegments) throw new BlkRequestError(`${len / SEGMENT_SIZE} segments (max ${maxSegments})`, status);
      const seg = new ChainReader(mem, rest);
      for (let i = 0; i < len / SEGMENT_SIZE; i++) {
        const s = new DataView(seg.read(SEGMENT_SIZE).buffer);
        req.segments.push({ sector: s.getBigUint64(0, true), sectors: s.getUint32(8, true), flags: s.getUint32(12, true) });
      }
      break;
    }
    default:
      break; // answered UNSUPP by the device
  }
  req.dataLen = sum(req.data);
  return req;
}
