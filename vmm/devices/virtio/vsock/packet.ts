// virtio-vsock packets (virtio 1.2, 5.10.6): a 44-byte little-endian header, then `len` payload
// bytes for RW. Everything in a header that comes from the guest is hostile: lengths are checked
// against the buffers that carry them and against MAX_PKT_PAYLOAD before anything is read.

export const HDR_SIZE = 44;
/** The largest payload we accept or send in one packet (Linux sends at most 64 KiB too). */
export const MAX_PKT_PAYLOAD = 64 * 1024;
/** The host's CID: guest→host packets must be addressed to it; ours come from it. */
export const HOST_CID = 2n;

export const OP = {
  INVALID: 0,
  REQUEST: 1,
  RESPONSE: 2,
  RST: 3,
  SHUTDOWN: 4,
  RW: 5,
  CREDIT_UPDATE: 6,
  CREDIT_REQUEST: 7,
} as const;
export const OP_NAMES = ['INVALID', 'REQUEST', 'RESPONSE', 'RST', 'SHUTDOWN', 'RW', 'CREDIT_UPDATE', 'CREDIT_REQUEST'];

export const TYPE_STREAM = 1;
export const TYPE_SEQPACKET = 2;
/** SHUTDOWN flags: the sender will receive no more / send no more. */
export const SHUTDOWN_RCV = 1;
export const SHUTDOWN_SEND = 2;
export const SHUTDOWN_BOTH = SHUTDOWN_RCV | SHUTDOWN_SEND;

/** Feature bit (5.10.3): stream sockets. Linux assumes streams when no bit is negotiated. */
export const VSOCK_F_STREAM = 1n << 0n;

/** The event queue's only event (5.10.6.7): the device lost every connection (after restore). */
export const EVENT_TRANSPORT_RESET = 0;

export interface VsockHeader {
  srcCid: bigint;
  dstCid: bigint;
  srcPort: number;
  dstPort: number;
  len: number;
  type: number;
  op: number;
  flags: number;
  bufAlloc: number;
  fwdCnt: number;
}

export class PacketError extends Error {
  constructor(msg: string) {
    super(msg);
    this.name = 'PacketError';
  }
}

/** Reads a header from at least HDR_SIZE bytes. */
export function parseHeader(b: Uint8Array): VsockHeader {
  if (b.length < HDR_SIZE) throw new PacketError(`header of ${b.length} bytes, need ${HDR_SIZE}`);
  const v = new DataView(b.buffer, b.byteOffset, HDR_SIZE);
  return {
    srcCid: v.getBigUint64(0, true),
    dstCid: v.getBigUint64(8, true),
    srcPort: v.getUint32(16, true),
    dstPort: v.getUint32(20, true),
    len: v.getUint32(24, true),
    type: v.getUint16(28, true),
    op: v.getUint16(30, true),
    flags: v.getUint32(32, true),
    bufAlloc: v.getUint32(36, true),
    fwdCnt: v.getUint32(40, true),
  };
}

/** Writes `h` into the first HDR_SIZE bytes of `out` (or a new buffer). */
export function encodeHeader(h: VsockHeader, out: Uint8Array = new Uint8Array(HDR_SIZE)): Uint8Array {
  if (out.length < HDR_SIZE) throw new PacketError(`header buffer of ${out.length} bytes`);
  const v = new DataView(out.buffer, out.byteOffset, HDR_SIZE);
  v.setBigUint64(0, BigInt.asUintN(64, h.srcCid), true);
  v.setBigUint64(8, BigInt.asUintN(64, h.dstCid), true);
  v.setUint32(16, h.srcPort >>> 0, true);
  v.setUint32(20, h.dstPort >>> 0, true);
  v.setUint32(24, h.len >>> 0, true);
  v.setUint16(28, h.type & 0xffff, true);
  v.setUint16(30, h.op & 0xffff, true);
  v.setUint32(32, h.flags >>> 0, true);
  v.setUint32(36, h.bufAlloc >>> 0, true);
  v.setUint32(40, h.fwdCnt >>> 0, true);
  return out;
}

/**
 * Checks a guest (tx) header against the bytes that follow it in its chain: null when the packet
 * may be used, else why not. Only RW's payload is read; other ops' `len` must still be honest.
 */
export function checkTxHeader(h: VsockHeader, payloadBytes: number): string | null {
  if (h.len > MAX_PKT_PAYLOAD) return `len ${h.len} > ${MAX_PKT_PAYLOAD}`;
  if (h.len > payloadBytes) return `len ${h.len} but only ${payloadBytes} bytes follow the header`;
  return null;
}

export function describe(h: VsockHeader): string {
  return `${OP_NAMES[h.op] ?? `op${h.op}`} ${h.srcCid}:${h.srcPort} -> ${h.dstCid}:${h.dstPort} len ${h.len} flags ${h.flags} buf ${h.bufAlloc} fwd ${h.fwdCnt}`;
}
