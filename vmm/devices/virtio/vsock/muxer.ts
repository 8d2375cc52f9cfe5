// The host side of virtio-vsock, Firecracker style: guest streams become Unix-socket connections,
// so the host needs no vhost-vsock module and the VMM needs no AF_VSOCK.
//
// - host → guest: a client connects to the listener at `uds-path` and writes `CONNECT <port>\n`;
//   we send the guest a REQUEST to that port from a fresh host port (2^30 and up). On the guest's
//   RESPONSE the client reads `OK <host port>\n` and the socket is the stream; on RST or after
//   HANDSHAKE_TIMEOUT_MS it is closed. Bytes written after the CONNECT line are kept for the guest.
// - guest → host: a REQUEST to CID 2 port P connects to the Unix socket `<uds-path>_P`; connected
//   → RESPONSE, absent or refused → RST.
// Every socket is a Node `net` socket on the main thread, where the device runs. Closing follows
// Linux's transport: a SHUTDOWN from either side half-closes, a SHUTDOWN with both flags is
// answered with RST; when we announced both and the guest does not RST within
// SHUTDOWN_TIMEOUT_MS we send the RST. Limits: MAX_CONNECTIONS streams, MAX_HANDSHAKES clients
// still writing their CONNECT line (CONNECT_LINE_MAX bytes), CONTROL_SOFT_LIMIT queued control
// packets before the device stops reading the tx queue (the guest's own backpressure).
import { unlinkSync } from 'node:fs';
import { createConnection, createServer, type Server, type Socket } from 'node:net';
import { logger } from '../../../log.js';
import { rstPacket, VsockConnection, type HostSide, type OutPacket } from './connection.js';
import { describe, HOST_CID, OP, SHUTDOWN_BOTH, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM, type VsockHeader } from './packet.js';

const log = logger('vsock');

export const MAX_CONNECTIONS = 1024;
export const MAX_HANDSHAKES = 64;
export const CONNECT_LINE_MAX = 64;
export const HANDSHAKE_TIMEOUT_MS = 2000;
export const SHUTDOWN_TIMEOUT_MS = 2000;
/** After a graceful close, a host peer that does not read gets this long before the socket is destroyed. */
export const LINGER_MS = 5000;
/** Queued control packets (RSTs) above which the device leaves tx requests in the ring. */
export const CONTROL_SOFT_LIMIT = 256;
export const LOCAL_PORT_BASE = 2 ** 30;
const LOCAL_PORT_END = 2 ** 31;

export interface MuxerMetrics {
  hostInitiated: number;
  guestInitiated: number;
  established: number;
  rstSent: number;
  rstReceived: number;
  /** guest packets dropped without an answer (wrong source CID) */
  dropped: number;
  /** guests that sent past their credit (reset) */
  creditViolations: number;
  /** connections refused by a limit */
  refused: number;
  /** protocol errors that reset a connection */
  protocolErrors: number;
}

export interface MuxerLimits {
  maxConnections: number;
  handshakeTimeoutMs: number;
  shutdownTimeoutMs: number;
}

interface Entry {
  key: string;
  conn: VsockConnection;
  sock: Socket;
  timer: NodeJS.Timeout | null;
  /** our write side to the host peer is closed (guest SHUTDOWN SEND) */
  hostEnded: boolean;
  hostInitiated: boolean;
  /** removes the muxer's listeners from the socket */
  detach: () => void;
}

const keyOf = (localPort: number, peerPort: number): string => `${localPort}:${peerPort}`;

function hostSide(sock: Socket): HostSide {
  return {
    write: (d, flushed) => { sock.write(d, (err) => { if (!err) flushed(); }); },
    pause: () => sock.pause(),
    resume: () => sock.resume(),
  };
}

/** Closes a socket after its queued writes, or destroys it after LINGER_MS if the peer does not read. */
function release(sock: Socket): void {
  sock.on('error', () => {});
  if (sock.destroyed) return;
  const t = setTimeout(() => sock.destroy(), LINGER_MS);
  t.unref();
  sock.once('close', () => clearTimeout(t));
  sock.end(() => sock.destroy());
  sock.resume();
}

export class VsockMuxer {
  readonly metrics: MuxerMetrics = {
    hostInitiated: 0, guestInitiated: 0, established: 0, rstSent: 0, rstReceived: 0, dropped: 0, creditViolations: 0, refused: 0, protocolErrors: 0,
  };
  private readonly conns = new Map<string, Entry>();
  /** connections that have something to send, in round-robin order */
  private readonly ready = new Set<Entry>();
  private control: OutPacket[] = [];
  private readonly handshakes = new Set<Socket>();
  private readonly localPorts = new Set<number>();
  private nextLocalPort = LOCAL_PORT_BASE;
  private server: Server | null = null;
  /** the driver has activated the device: packets can flow */
  active = false;
  /** something became sendable: the device schedules an rx pass (it coalesces the calls) */
  onWork: () => void = () => {};

  readonly limits: MuxerLimits;

  constructor(readonly guestCid: bigint, readonly udsPath: string, limits: Partial<MuxerLimits> = {}) {
    this.limits = {
      maxConnections: MAX_CONNECTIONS, handshakeTimeoutMs: HANDSHAKE_TIMEOUT_MS, shutdownTimeoutMs: SHUTDOWN_TIMEOUT_MS, ...limits,
    };
  }

  /** Per-connection buffer state (tests, debugging). */
  stats(): Array<{ key: string; state: string; rxBytes: number; txPending: number; hostPaused: boolean }> {
    return [...this.conns.values()].map((e) => ({
      key: e.key, state: e.conn.state, rxBytes: e.conn.rxBytes, txPending: e.conn.txPending, hostPaused: e.conn.hostPaused,
    }));
  }

  get connections(): number {
    return this.conns.size;
  }

  /** Binds the host listener (at init: the seccomp filter forbids bind/listen later). */
  async listen(): Promise<void> {
    try { unlinkSync(this.udsPath); } catch { /* not there */ }
    const srv = createServer({ allowHalfOpen: true }, (s) => this.accept(s));
    await new Promise<void>((resolve, reject) => {
      srv.once('error', reject);
      srv.listen(this.udsPath, () => {
        srv.off('error', reject);
        resolve();
      });
    });
    srv.on('error', (e) => log.warn(`listener ${this.udsPath}: ${e.message}`));
    this.server = srv;
  }

  /** Packets waiting for guest rx buffers. */
  hasPending(): boolean {
    return this.control.length > 0 || this.ready.size > 0;
  }

  /** Too many control packets queued: stop taking tx requests until the guest reads. */
  backlogFull(): boolean {
    return this.control.length >= CONTROL_SOFT_LIMIT;
  }

  /** The next packet for a guest rx buffer with room for `maxPayload` payload bytes. */
  nextPacket(maxPayload: number): OutPacket | null {
    const c = this.control.shift();
    if (c) return c;
    for (const e of this.ready) {
      this.ready.delete(e);
      const p = e.conn.nextPacket(maxPayload);
      if (!p) continue;
      if (e.conn.hasWork()) this.ready.add(e); // to the back: connections take turns
      if (p.hdr.op === OP.SHUTDOWN && p.hdr.flags === SHUTDOWN_BOTH) this.awaitRst(e);
      return p;
    }
    return null;
  }

  /** A packet from the guest's tx queue; `payload` is a copy (RW only). */
  fromGuest(h: VsockHeader, payload: Uint8Array): void {
    if (h.srcCid !== this.guestCid) {
      this.metrics.dropped++;
      log.debug(`dropped (source CID is not the guest's ${this.guestCid}): ${describe(h)}`);
      return;
    }
    if (h.op === OP.RST) {
      this.metrics.rstReceived++;
      const e = this.conns.get(keyOf(h.dstPort, h.srcPort));
      if (e) this.kill(e, false);
      return;
    }
    if (h.dstCid !== HOST_CID || h.type !== TYPE_STREAM) {
      this.rst(h.dstPort, h.srcPort);
      return;
    }
    const e = this.conns.get(keyOf(h.dstPort, h.srcPort));
    if (h.op === OP.REQUEST) {
      if (e) this.protocolError(e, 'REQUEST on an open connection');
      else this.connectToHost(h);
      return;
    }
    if (!e) {
      this.rst(h.dstPort, h.srcPort);
      return;
    }
    const conn = e.conn;
    conn.peerCreditFrom(h);
    switch (h.op) {
      case OP.RESPONSE:
        if (conn.state !== 'requesting') return this.protocolError(e, 'unexpected RESPONSE');
        conn.state = 'established';
        this.metrics.established++;
        this.clearTimer(e);
        e.sock.write(`OK ${conn.localPort}\n`);
        break;
      case OP.RW:
        if (conn.state !== 'established' || conn.guestShut & SHUTDOWN_SEND) return this.protocolError(e, 'RW on a connection not open for it');
        if (!conn.fromGuest(payload)) {
          this.metrics.creditViolations++;
          return this.protocolError(e, `guest sent past its credit (${conn.txPending} + ${payload.length} bytes in flight)`);
        }
        break;
      case OP.CREDIT_UPDATE:
        break;
      case OP.CREDIT_REQUEST:
        conn.creditUpdateWanted = true;
        break;
      case OP.SHUTDOWN: {
        conn.guestShut |= h.flags & SHUTDOWN_BOTH;
        if (conn.guestShut & SHUTDOWN_RCV) conn.dropRx();
        if (conn.guestShut & SHUTDOWN_SEND && !e.hostEnded) {
          e.hostEnded = true;
          e.sock.end();
        }
        // Linux answers a peer's full shutdown with RST and so do we; queued host writes still flush
        if (conn.guestShut === SHUTDOWN_BOTH) return this.kill(e, true);
        break;
      }
      default:
        return this.protocolError(e, `op ${h.op}`);
    }
    this.markReady(e);
  }

  /** Drops every connection (device reset): the guest has forgotten them, the host sockets close. */
  reset(): void {
    for (const e of [...this.conns.values()]) this.kill(e, false, true);
    for (const s of this.handshakes) s.destroy();
    this.handshakes.clear();
    this.control = [];
    this.ready.clear();
  }

  close(): void {
    this.active = false;
    this.reset();
    this.server?.close();
    this.server = null;
  }

  // ---- host-initiated connections ----

  private accept(sock: Socket): void {
    if (!this.active || this.handshakes.size >= MAX_HANDSHAKES) {
      this.metrics.refused++;
      sock.destroy();
      return;
    }
    this.handshakes.add(sock);
    let buf: Buffer = Buffer.alloc(0);
    const done = (): void => {
      clearTimeout(timer);
      this.handshakes.delete(sock);
      sock.off('data', onData);
      sock.off('error', onError);
      sock.off('close', onClose);
      sock.off('end', onEnd);
    };
    const fail = (why: string): void => {
      log.debug(`host connection refused: ${why}`);
      done();
      sock.on('error', () => {});
      sock.destroy();
    };
    const onError = (): void => fail('socket error');
    const onEnd = (): void => fail('EOF before CONNECT');
    const onClose = (): void => done();
    const onData = (d: Buffer): void => {
      buf = buf.length ? Buffer.concat([buf, d]) : d;
      const nl = buf.indexOf(10);
      if (nl < 0) {
        if (buf.length > CONNECT_LINE_MAX) fail('CONNECT line too long');
        return;
      }
      if (nl > CONNECT_LINE_MAX) return fail('CONNECT line too long');
      const m = /^CONNECT\s+(\d{1,10})\s*$/.exec(buf.subarray(0, nl).toString('latin1'));
      const port = m ? Number(m[1]) : NaN;
      if (!(port <= 0xffff_ffff)) return fail('not "CONNECT <port>"');
      done();
      this.openToGuest(sock, port, buf.subarray(nl + 1));
    };
    const timer = setTimeout(() => fail('no CONNECT line in time'), this.limits.handshakeTimeoutMs);
    timer.unref();
    sock.on('error', onError);
    sock.on('close', onClose);
    sock.on('end', onEnd);
    sock.on('data', onData);
  }

  private openToGuest(sock: Socket, port: number, early: Uint8Array): void {
    const local = this.allocLocalPort();
    if (!this.active || this.conns.size >= this.limits.maxConnections || local === null) {
      this.metrics.refused++;
      sock.on('error', () => {});
      sock.destroy();
      return;
    }
    this.metrics.hostInitiated++;
    const conn = new VsockConnection(local, port, this.guestCid, 'requesting', hostSide(sock));
    const e = this.add(conn, sock, true);
    conn.fromHost(early);
    e.timer = setTimeout(() => {
      log.debug(`CONNECT ${port}: no answer from the guest`);
      this.kill(e, true);
    }, this.limits.handshakeTimeoutMs);
    e.timer.unref();
    this.markReady(e);
  }

  private allocLocalPort(): number | null {
    for (let i = 0; i <= this.limits.maxConnections; i++) {
      const p = this.nextLocalPort;
      this.nextLocalPort = p + 1 >= LOCAL_PORT_END ? LOCAL_PORT_BASE : p + 1;
      if (!this.localPorts.has(p)) return p;
    }
    return null;
  }

  // ---- guest-initiated connections ----

  private connectToHost(h: VsockHeader): void {
    if (this.conns.size >= this.limits.maxConnections) {
      this.metrics.refused++;
      this.rst(h.dstPort, h.srcPort);
      return;
    }
    this.metrics.guestInitiated++;
    const sock = createConnection({ path: `${this.udsPath}_${h.dstPort}`, allowHalfOpen: true });
    const conn = new VsockConnection(h.dstPort, h.srcPort, this.guestCid, 'connecting', hostSide(sock));
    conn.peerCreditFrom(h);
    const e = this.add(conn, sock, false);
    sock.once('connect', () => {
      if (this.conns.get(e.key) !== e) return;
      this.clearTimer(e);
      conn.state = 'established';
      conn.wantResponse = true;
      this.metrics.established++;
      this.markReady(e);
    });
    e.timer = setTimeout(() => this.kill(e, true), this.limits.handshakeTimeoutMs);
    e.timer.unref();
  }

  // ---- both ----

  private add(conn: VsockConnection, sock: Socket, hostInitiated: boolean): Entry {
    const onData = (d: Buffer): void => {
      conn.fromHost(d);
      this.markReady(e);
    };
    const onEnd = (): void => {
      conn.hostEof = true;
      this.markReady(e);
    };
    const onError = (err: Error): void => {
      log.debug(`${e.key}: host socket: ${err.message}`);
      this.kill(e, true);
    };
    const onClose = (): void => {
      if (this.conns.get(e.key) !== e) return;
      if (conn.state !== 'established') return this.kill(e, true);
      conn.hostEof = conn.hostClosed = true;
      this.markReady(e);
    };
    const detach = (): void => {
      sock.off('data', onData);
      sock.off('end', onEnd);
      sock.off('error', onError);
      sock.off('close', onClose);
    };
    const e: Entry = { key: keyOf(conn.localPort, conn.peerPort), conn, sock, timer: null, hostEnded: false, hostInitiated, detach };
    this.conns.set(e.key, e);
    if (hostInitiated) this.localPorts.add(conn.localPort);
    conn.onWork = () => this.markReady(e);
    sock.on('data', onData);
    sock.on('end', onEnd);
    sock.on('error', onError);
    sock.on('close', onClose);
    return e;
  }

  private markReady(e: Entry): void {
    if (this.conns.get(e.key) !== e || !e.conn.hasWork()) return;
    this.ready.add(e);
    this.onWork();
  }

  /** We announced a full shutdown: the guest answers RST, or we do after a while. */
  private awaitRst(e: Entry): void {
    this.clearTimer(e);
    e.timer = setTimeout(() => this.kill(e, true), this.limits.shutdownTimeoutMs);
    e.timer.unref();
  }

  private clearTimer(e: Entry): void {
    if (e.timer) clearTimeout(e.timer);
    e.timer = null;
  }

  private protocolError(e: Entry, why: string): void {
    this.metrics.protocolErrors++;
    log.debug(`${e.key}: ${why}: reset`);
    this.kill(e, true, true); // a reset stream: what the host peer has not read yet is dropped
  }

  private rst(localPort: number, peerPort: number): void {
    this.control.push(rstPacket(localPort, peerPort, this.guestCid));
    this.metrics.rstSent++;
    this.onWork();
  }

  /**
   * Forgets a connection: RST to the guest if asked, the host socket closed after its queued
   * writes (or destroyed at once with `abort`).
   */
  private kill(e: Entry, sendRst: boolean, abort = false): void {
    if (this.conns.get(e.key) !== e) return;
    this.conns.delete(e.key);
    this.ready.delete(e);
    if (e.hostInitiated) this.localPorts.delete(e.conn.localPort);
    this.clearTimer(e);
    e.conn.onWork = () => {};
    e.detach();
    if (abort || e.conn.state !== 'established') {
      e.sock.on('error', () => {});
      e.sock.destroy();
    } else {
      release(e.sock);
    }
    if (sendRst) this.rst(e.conn.localPort, e.conn.peerPort);
  }
}
