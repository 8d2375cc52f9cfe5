// One vsock stream connection between a guest socket and a host Unix socket: its state, the
// credit accounting of both directions (virtio 1.2, 5.10.6.3) and its bounded buffers. It has no
// I/O of its own: the muxer hands it guest packets and host bytes, and asks it for the next
// packet to put in a guest rx buffer.
//
// Credit, in both directions: each side advertises buf_alloc (its receive buffer) and fwd_cnt
// (bytes it has consumed so far, a wrapping u32) in every packet; a sender may have at most
// buf_alloc - (sent - fwd_cnt) bytes in flight.
// - guest → host: we advertise CONN_BUF_SIZE; fwd_cnt counts bytes Node has flushed into the host
//   socket. A guest that sends past its credit is reset (nothing is buffered beyond the bound).
//   A CREDIT_UPDATE goes out once CREDIT_UPDATE_THRESHOLD bytes were forwarded since the last
//   fwd_cnt the guest saw (every packet we send carries it).
// - host → guest: bytes read from the host socket wait in rx chunks (at most RX_BUF_LIMIT plus one
//   read; the host socket is paused above it, resumed below half) and go out as RW packets no
//   larger than the guest's credit, its rx buffer and MAX_PKT_PAYLOAD. Out of credit we send one
//   CREDIT_REQUEST, and another only after the guest's credit actually moved (no ping-pong).
import { HOST_CID, OP, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM, type VsockHeader } from './packet.js';

/** buf_alloc we advertise: guest→host bytes we accept in flight per connection. */
export const CONN_BUF_SIZE = 256 * 1024;
/** Forwarded-but-unreported bytes that trigger a CREDIT_UPDATE. */
export const CREDIT_UPDATE_THRESHOLD = 128 * 1024;
/** host→guest bytes buffered per connection before the host socket is paused. */
export const RX_BUF_LIMIT = 256 * 1024;

/**
 * connecting: the guest sent REQUEST, connect() to the host socket is in progress.
 * requesting: a host client sent CONNECT, our REQUEST waits for the guest's RESPONSE.
 * established: data flows.
 */
export type ConnState = 'connecting' | 'requesting' | 'established';

/** The host socket as the connection sees it. */
export interface HostSide {
  /** queue bytes for the host peer; `flushed` runs once they reached the kernel */
  write(data: Uint8Array, flushed: () => void): void;
  pause(): void;
  resume(): void;
}

export interface OutPacket {
  hdr: VsockHeader;
  payload: Uint8Array[];
}

export class VsockConnection {
  state: ConnState;
  // guest → host
  /** bytes flushed into the host socket (u32, wraps) */
  fwdCnt = 0;
  private lastFwdCntSent = 0;
  /** bytes handed to the host socket and not flushed yet */
  txPending = 0;
  creditUpdateWanted = false;
  // host → guest
  private peerBufAlloc = 0;
  private peerFwdCnt = 0;
  /** bytes sent to the guest (u32, wraps) */
  rxCnt = 0;
  private rxChunks: Uint8Array[] = [];
  rxBytes = 0;
  hostPaused = false;
  private creditRequestSent = false;
  // handshake and shutdown
  wantRequest = false;
  wantResponse = false;
  /** the host peer will send no more (EOF read) */
  hostEof = false;
  /** the host socket is gone: it can receive nothing either */
  hostClosed = false;
  /** SHUTDOWN flags the guest announced (cumulative) */
  guestShut = 0;
  /** SHUTDOWN flags we announced (cumulative) */
  shutSent = 0;
  /** called when a flush makes a CREDIT_UPDATE due (the muxer marks the connection ready) */
  onWork: () => void = () => {};

  constructor(readonly localPort: number, readonly peerPort: number, readonly guestCid: bigint, state: ConnState, public host: HostSide | null = null) {
    this.state = state;
    if (state === 'requesting') this.wantRequest = true;
  }

  /** Every guest packet carries its receive buffer state. */
  peerCreditFrom(h: VsockHeader): void {
    if (h.bufAlloc !== this.peerBufAlloc || h.fwdCnt !== this.peerFwdCnt) this.creditRequestSent = false;
    this.peerBufAlloc = h.bufAlloc;
    this.peerFwdCnt = h.fwdCnt;
  }

  /** Bytes the guest can take now. A guest claiming more consumed than sent gets nothing. */
  peerCredit(): number {
    const inFlight = (this.rxCnt - this.peerFwdCnt) >>> 0;
    return Math.max(0, this.peerBufAlloc - inFlight);
  }

  /** Guest→host payload (a copy the connection may keep). False: the guest exceeded its credit. */
  fromGuest(data: Uint8Array): boolean {
    if (data.length === 0) return true;
    if (this.txPending + data.length > CONN_BUF_SIZE || !this.host) return false;
    const n = data.length;
    this.txPending += n;
    this.host.write(data, () => {
      this.txPending -= n;
      this.fwdCnt = (this.fwdCnt + n) >>> 0;
      if (((this.fwdCnt - this.lastFwdCntSent) >>> 0) >= CREDIT_UPDATE_THRESHOLD && !this.creditUpdateWanted) {
        this.creditUpdateWanted = true;
        this.onWork();
      }
    });
    return true;
  }

  /** Host→guest bytes read from the host socket. */
  fromHost(chunk: Uint8Array): void {
    if (this.guestShut & SHUTDOWN_RCV || chunk.length === 0) return;
    this.rxChunks.push(chunk);
    this.rxBytes += chunk.length;
    if (this.rxBytes >= RX_BUF_LIMIT && !this.hostPaused) {
      this.hostPaused = true;
      this.host?.pause();
    }
  }

  /** The guest will receive no more: drop what waits for it. */
  dropRx(): void {
    this.rxChunks = [];
    this.rxBytes = 0;
    if (this.hostPaused) {
      this.hostPaused = false;
      this.host?.resume();
    }
  }

  /** SHUTDOWN flags we owe the guest once its data is out. */
  private shutdownDue(): number {
    if (this.rxBytes > 0 && !(this.guestShut & SHUTDOWN_RCV)) return 0;
    const flags = (this.hostEof ? SHUTDOWN_SEND : 0) | (this.hostClosed ? SHUTDOWN_RCV : 0);
    return flags & ~this.shutSent;
  }

  /** Whether nextPacket() could return something now (ignores the rx buffer size). */
  hasWork(): boolean {
    if (this.wantRequest || this.wantResponse) return true;
    if (this.state !== 'established') return false;
    if (this.rxBytes > 0 && (this.peerCredit() > 0 || !this.creditRequestSent)) return true;
    return this.shutdownDue() !== 0 || this.creditUpdateWanted;
  }

  /** The next packet for the guest, its payload at most `maxPayload` bytes, or null. */
  nextPacket(maxPayload: number): OutPacket | null {
    if (this.wantRequest) {
      this.wantRequest = false;
      return this.packet(OP.REQUEST);
    }
    if (this.wantResponse) {
      this.wantResponse = false;
      return this.packet(OP.RESPONSE);
    }
    if (this.state !== 'established') return null;
    if (this.rxBytes > 0) {
      const n = Math.min(this.rxBytes, this.peerCredit(), maxPayload);
      if (n > 0) {
        const payload = this.take(n);
        return { hdr: this.header(OP.RW, n, 0), payload };
      }
      if (this.peerCredit() === 0 && !this.creditRequestSent) {
        this.creditRequestSent = true;
        return this.packet(OP.CREDIT_REQUEST);
      }
    }
    const shut = this.shutdownDue();
    if (shut) {
      this.shutSent |= shut;
      return this.packet(OP.SHUTDOWN, this.shutSent);
    }
    if (this.creditUpdateWanted) return this.packet(OP.CREDIT_UPDATE);
    return null;
  }

  private take(n: number): Uint8Array[] {
    const out: Uint8Array[] = [];
    let left = n;
    while (left > 0) {
      const c = this.rxChunks[0] as Uint8Array;
      if (c.length <= left) {
        out.push(c);
        this.rxChunks.shift();
        left -= c.length;
      } else {
        out.push(c.subarray(0, left));
        this.rxChunks[0] = c.subarray(left);
        left = 0;
      }
    }
    this.rxBytes -= n;
    this.rxCnt = (this.rxCnt + n) >>> 0;
    if (this.hostPaused && this.rxBytes <= RX_BUF_LIMIT / 2) {
      this.hostPaused = false;
      this.host?.resume();
    }
    return out;
  }

  private packet(op: number, flags = 0): OutPacket {
    return { hdr: this.header(op, 0, flags), payload: [] };
  }

  /** A header from us; it reports fwd_cnt, so no separate CREDIT_UPDATE is owed after it. */
  header(op: number, len: number, flags: number): VsockHeader {
    this.lastFwdCntSent = this.fwdCnt;
    this.creditUpdateWanted = false;
    return {
      srcCid: HOST_CID, dstCid: this.guestCid, srcPort: this.localPort, dstPort: this.peerPort,
      len, type: TYPE_STREAM, op, flags, bufAlloc: CONN_BUF_SIZE, fwdCnt: this.fwdCnt,
    };
  }
}

/** An RST from host port `localPort` to guest port `peerPort`. */
export function rstPacket(localPort: number, peerPort: number, guestCid: bigint): OutPacket {
  return {
    hdr: {
      srcCid: HOST_CID, dstCid: guestCid, srcPort: localPort, dstPort: peerPort,
      len: 0, type: TYPE_STREAM, op: OP.RST, flags: 0, bufAlloc: 0, fwdCnt: 0,
    },
    payload: [],
  };
}
