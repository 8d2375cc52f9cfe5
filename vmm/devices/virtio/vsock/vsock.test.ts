// virtio-vsock on the host: packet format, credit accounting, and the device + muxer against real
// Unix sockets with a fake guest (TestDriver rings carrying virtio-vsock packets) — both
// directions, RST for unknown ports, credit stalls, bounded buffers, resets, hostile headers.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { createConnection, createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { GuestAddress as GA, GuestMemory } from '../../../memory/guest-memory.js';
import { F_VERSION_1, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE } from '../../../virtio/constants.js';
import { REG } from '../../../virtio/mmio.js';
import { TestDriver } from '../../../virtio/testing/driver.js';
import { CONN_BUF_SIZE, CREDIT_UPDATE_THRESHOLD, RX_BUF_LIMIT, VsockConnection, type HostSide } from './connection.js';
import { VirtioVsock } from './device.js';
import { LOCAL_PORT_BASE } from './muxer.js';
import {
  checkTxHeader, encodeHeader, HDR_SIZE, HOST_CID, MAX_PKT_PAYLOAD, OP, parseHeader, SHUTDOWN_BOTH, SHUTDOWN_RCV, SHUTDOWN_SEND,
  TYPE_STREAM, type VsockHeader,
} from './packet.js';

const dir = mkdtempSync(join(tmpdir(), 'capsule-vsock-'));
test.after(() => rmSync(dir, { recursive: true, force: true }));
let seq = 0;
const GUEST_CID = 3n;
const md5 = (b: Uint8Array): string => createHash('md5').update(b).digest('hex');
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

// ---------------------------------------------------------------------------------------------
// packet.ts

test('packet header: 44 bytes, little endian, round trip; bounds checks', () => {
  const h: VsockHeader = {
    srcCid: 0x1_0000_0003n, dstCid: 2n, srcPort: 0xdeadbeef, dstPort: 5000, len: 1234, type: TYPE_STREAM, op: OP.RW,
    flags: 3, bufAlloc: 262144, fwdCnt: 0xffff_fff0,
  };
  const b = encodeHeader(h);
  assert.equal(b.length, HDR_SIZE);
  assert.equal(HDR_SIZE, 44);
  assert.deepEqual(parseHeader(b), h);
  assert.deepEqual([...b.subarray(16, 20)], [0xef, 0xbe, 0xad, 0xde]);
  assert.equal(b[30], OP.RW);
  assert.throws(() => parseHeader(new Uint8Array(43)), /43 bytes/);
  assert.equal(checkTxHeader({ ...h, len: 10 }, 10), null);
  assert.match(checkTxHeader({ ...h, len: 11 }, 10) ?? '', /only 10 bytes/);
  assert.match(checkTxHeader({ ...h, len: MAX_PKT_PAYLOAD + 1 }, 1 << 20) ?? '', /> 65536/);
  assert.match(checkTxHeader({ ...h, len: 0xffff_ffff }, 0) ?? '', /len/);
});

// ---------------------------------------------------------------------------------------------
// connection.ts: credit, without sockets

class FakeHost implements HostSide {
  writes: Uint8Array[] = [];
  flushes: Array<() => void> = [];
  paused = false;
  write(d: Uint8Array, flushed: () => void): void {
    this.writes.push(d);
    this.flushes.push(flushed);
  }
  pause(): void { this.paused = true; }
  resume(): void { this.paused = false; }
  flushAll(): void {
    for (const f of this.flushes.splice(0)) f();
  }
}

const guestHdr = (over: Partial<VsockHeader>): VsockHeader => ({
  srcCid: GUEST_CID, dstCid: HOST_CID, srcPort: 1000, dstPort: 2000, len: 0, type: TYPE_STREAM, op: OP.CREDIT_UPDATE,
  flags: 0, bufAlloc: 0, fwdCnt: 0, ...over,
});

test('connection, guest → host: our buf_alloc bounds what the guest may have in flight; CREDIT_UPDATE after the threshold', () => {
  const host = new FakeHost();
  const c = new VsockConnection(2000, 1000, GUEST_CID, 'established', host);
  let work = 0;
  c.onWork = () => work++;
  const chunk = new Uint8Array(64 * 1024);
  for (let i = 0; i < CONN_BUF_SIZE / chunk.length; i++) assert.equal(c.fromGuest(chunk), true);
  assert.equal(c.txPending, CONN_BUF_SIZE);
  assert.equal(c.fromGuest(new Uint8Array(1)), false, 'one byte past the credit is a violation');
  assert.equal(c.nextPacket(4096), null, 'nothing to say yet');
  host.flushes.shift()!();
  assert.equal(c.fwdCnt, 64 * 1024);
  assert.equal(c.creditUpdateWanted, false, 'below the threshold');
  host.flushes.shift()!();
  assert.equal(c.fwdCnt, CREDIT_UPDATE_THRESHOLD);
  assert.equal(c.creditUpdateWanted, true);
  assert.equal(work, 1);
  const p = c.nextPacket(4096)!;
  assert.equal(p.hdr.op, OP.CREDIT_UPDATE);
  assert.equal(p.hdr.fwdCnt, CREDIT_UPDATE_THRESHOLD);
  assert.equal(p.hdr.bufAlloc, CONN_BUF_SIZE);
  assert.equal(c.nextPacket(4096), null);
  // the guest may now send what was flushed
  assert.equal(c.fromGuest(new Uint8Array(CREDIT_UPDATE_THRESHOLD)), true);
  assert.equal(c.fromGuest(new Uint8Array(1)), false);
});

test('connection, host → guest: RW bounded by the guest credit and rx buffer; one CREDIT_REQUEST per stall; pause/resume', () => {
  const host = new FakeHost();
  const c = new VsockConnection(2000, 1000, GUEST_CID, 'established', host);
  c.peerCreditFrom(guestHdr({ bufAlloc: 10000, fwdCnt: 0 }));
  c.fromHost(new Uint8Array(30000).fill(7));
  let p = c.nextPacket(4096)!;
  assert.equal(p.hdr.op, OP.RW);
  assert.equal(p.hdr.len, 4096);
  assert.equal(p.payload.reduce((n, x) => n + x.length, 0), 4096);
  p = c.nextPacket(65536)!;
  assert.equal(p.hdr.len, 10000 - 4096, 'the rest of the credit');
  p = c.nextPacket(65536)!;
  assert.equal(p.hdr.op, OP.CREDIT_REQUEST);
  assert.equal(c.nextPacket(65536), null, 'no second CREDIT_REQUEST');
  assert.equal(c.hasWork(), false);
  c.peerCreditFrom(guestHdr({ bufAlloc: 10000, fwdCnt: 0 }));
  assert.equal(c.nextPacket(65536), null, 'an update that gives nothing does not restart the requests');
  c.peerCreditFrom(guestHdr({ bufAlloc: 10000, fwdCnt: 6000 }));
  assert.equal(c.hasWork(), true);
  assert.equal(c.nextPacket(65536)!.hdr.len, 6000);
  assert.equal(c.rxCnt, 16000);
  // buffering is bounded: pause at RX_BUF_LIMIT, resume at half
  c.fromHost(new Uint8Array(RX_BUF_LIMIT));
  assert.equal(host.paused, true);
  c.peerCreditFrom(guestHdr({ bufAlloc: 1 << 30, fwdCnt: 16000 }));
  while (c.rxBytes > RX_BUF_LIMIT / 2 + 1) c.nextPacket(65536);
  c.nextPacket(65536);
  assert.equal(host.paused, false);
  // a guest claiming it consumed more than it was sent gets no credit
  const d = new VsockConnection(2000, 1001, GUEST_CID, 'established', host);
  d.peerCreditFrom(guestHdr({ bufAlloc: 1000, fwdCnt: 5 }));
  assert.equal(d.peerCredit(), 0);
});

test('connection: counters wrap at 2^32', () => {
  const host = new FakeHost();
  const c = new VsockConnection(2000, 1000, GUEST_CID, 'established', host);
  c.rxCnt = 0xffff_f000;
  c.peerCreditFrom(guestHdr({ bufAlloc: 65536, fwdCnt: 0xffff_f000 }));
  c.fromHost(new Uint8Array(0x2000));
  assert.equal(c.nextPacket(65536)!.hdr.len, 0x2000);
  assert.equal(c.rxCnt, 0x1000);
  c.peerCreditFrom(guestHdr({ bufAlloc: 65536, fwdCnt: 0x800 }));
  assert.equal(c.peerCredit(), 65536 - 0x800);
  c.fwdCnt = 0xffff_ff00;
  c.header(OP.CREDIT_UPDATE, 0, 0); // a packet reports fwd_cnt 0xffffff00
  c.fromGuest(new Uint8Array(CREDIT_UPDATE_THRESHOLD));
  host.flushAll();
  assert.equal(c.fwdCnt, (0xffff_ff00 + CREDIT_UPDATE_THRESHOLD) >>> 0);
  assert.equal(c.creditUpdateWanted, true);
});

// ---------------------------------------------------------------------------------------------
// the device with a fake guest

const RX_BASE = 4 << 20;
/** header-only tx packets: one 128-byte slot per descriptor */
const TX_SMALL = 5 << 20;
/** tx packets with data: 64 slots, reused (never more than 64 outstanding) */
const TX_BASE = 8 << 20;
const TX_STRIDE = HDR_SIZE + MAX_PKT_PAYLOAD;
const MEM = 16 << 20;

interface Pkt { hdr: VsockHeader; data: Uint8Array }

/** The guest's side: rx buffers kept full, tx packets, per-connection credit like Linux's. */
class FakeGuest {
  readonly d: TestDriver;
  readonly received: Pkt[] = [];
  private txSlot = 0;
  /** bytes the guest has consumed per (guest port) and the buf_alloc it advertises */
  fwd = new Map<number, number>();
  bufAlloc = 256 * 1024;
  autoRefill = true;
  private held: number[] = [];

  constructor(readonly dev: VirtioVsock, readonly rxBufLen = HDR_SIZE + 4096, readonly rxCount = 64, readonly txCount = 128) {
    this.d = new TestDriver(dev, GuestMemory.fromBuffers(MEM));
  }

  init(): void {
    // a real driver allocates fresh (zeroed) rings; TestDriver reuses its ring area
    this.d.mem.fill(GA(1 << 20), 3 * (64 << 10), 0);
    this.d.init(F_VERSION_1 | this.dev.features, [256, this.txCount, 8]);
    for (let i = 0; i < this.rxCount; i++) this.giveRx(i, false);
    this.d.setReg(REG.QUEUE_NOTIFY, 0);
  }

  private giveRx(i: number, notify = true): void {
    // Linux (<= 6.1) uses two descriptors: the header, then the data buffer
    const ring = this.d.rings[0]!;
    const at = RX_BASE + i * this.rxBufLen;
    const a = i * 2 % ring.size;
    if (this.rxBufLen > HDR_SIZE && 2 * this.rxCount <= ring.size) {
      this.d.writeDesc(ring.desc, a, at, HDR_SIZE, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, a + 1);
      this.d.writeDesc(ring.desc, a + 1, at + HDR_SIZE, this.rxBufLen - HDR_SIZE, VIRTQ_DESC_F_WRITE, 0);
      this.d.publish(0, a, notify);
    } else {
      this.d.writeDesc(ring.desc, i, at, this.rxBufLen, VIRTQ_DESC_F_WRITE, 0);
      this.d.publish(0, i, notify);
    }
  }

  /** Reads what the device put in rx buffers; gives them back unless autoRefill is off. */
  poll(): Pkt[] {
    const out: Pkt[] = [];
    const two = this.rxBufLen > HDR_SIZE && 2 * this.rxCount <= this.d.rings[0]!.size;
    for (const u of this.d.takeUsed(0)) {
      const i = two ? u.id / 2 : u.id;
      const at = RX_BASE + i * this.rxBufLen;
      assert.ok(u.len >= HDR_SIZE, `used len ${u.len}`);
      const hdr = parseHeader(this.d.mem.read(GA(at), HDR_SIZE));
      assert.equal(u.len, HDR_SIZE + hdr.len, 'used length = header + payload');
      const p = { hdr, data: Uint8Array.from(this.d.mem.read(GA(at + HDR_SIZE), hdr.len)) };
      out.push(p);
      this.received.push(p);
      if (this.autoRefill) this.giveRx(i);
      else this.held.push(i);
    }
    this.d.takeUsed(1);
    this.d.ack();
    return out;
  }

  refill(): void {
    for (const i of this.held.splice(0)) this.giveRx(i);
  }

  /** One tx packet; `notify` false queues it without a kick. */
  send(over: Partial<VsockHeader>, data: Uint8Array = new Uint8Array(0), notify = true): void {
    const port = over.srcPort ?? 0;
    const hdr: VsockHeader = {
      srcCid: GUEST_CID, dstCid: HOST_CID, srcPort: port, dstPort: 0, len: data.length, type: TYPE_STREAM, op: OP.RW, flags: 0,
      bufAlloc: this.bufAlloc, fwdCnt: this.fwd.get(port) ?? 0, ...over,
    };
    const ring = this.d.rings[1]!;
    const slot = this.txSlot++ % ring.size;
    const at = data.length + HDR_SIZE <= 128 ? TX_SMALL + slot * 128 : TX_BASE + (slot % 64) * TX_STRIDE;
    this.d.mem.write(GA(at), encodeHeader(hdr));
    this.d.mem.write(GA(at + HDR_SIZE), data);
    this.d.writeDesc(ring.desc, slot, at, HDR_SIZE + data.length, 0, 0);
    this.d.publish(1, slot, notify);
  }

  kickTx(): void {
    this.d.setReg(REG.QUEUE_NOTIFY, 1);
  }

  /** The guest application read `n` bytes on `port`. */
  consume(port: number, n: number): void {
    this.fwd.set(port, ((this.fwd.get(port) ?? 0) + n) >>> 0);
  }

  async until<T>(what: string, f: () => T | undefined | null | false, ms = 5000): Promise<T> {
    const end = Date.now() + ms;
    for (;;) {
      this.poll();
      const v = f();
      if (v) return v;
      if (Date.now() > end) throw new Error(`timed out waiting for ${what}; metrics ${JSON.stringify(this.dev.metrics)}`);
      await sleep(2);
    }
  }

  /** Waits for a packet matching `pred` among those not yet claimed. */
  private claimed = new Set<Pkt>();
  async expect(what: string, pred: (p: Pkt) => boolean, ms = 5000): Promise<Pkt> {
    return this.until(what, () => {
      const p = this.received.find((x) => !this.claimed.has(x) && pred(x));
      if (p) this.claimed.add(p);
      return p;
    }, ms);
  }
}

async function setup(limits = {}): Promise<{ uds: string; dev: VirtioVsock; g: FakeGuest; done: () => void }> {
  const uds = join(dir, `v${seq++}.sock`);
  const dev = new VirtioVsock({ guestCid: Number(GUEST_CID), udsPath: uds, limits });
  await dev.listen();
  const g = new FakeGuest(dev);
  g.init();
  return { uds, dev, g, done: () => dev.close() };
}

async function listenAt(path: string, onConn: (s: Socket) => void): Promise<Server> {
  const srv = createServer({ allowHalfOpen: true }, onConn);
  await new Promise<void>((r) => srv.listen(path, r));
  return srv;
}

function readAll(s: Socket): Promise<Buffer> {
  const parts: Buffer[] = [];
  s.on('data', (d: Buffer) => parts.push(d));
  return new Promise((resolve, reject) => {
    s.on('end', () => resolve(Buffer.concat(parts)));
    s.on('error', reject);
  });
}

/** Connects to the listener and performs CONNECT; resolves with the socket once the guest side sees REQUEST. */
function hostConnect(uds: string, port: number, extra = ''): { sock: Socket; lines: () => string; closed: Promise<void> } {
  const sock = createConnection(uds);
  let text = '';
  sock.on('data', (d: Buffer) => { text += d.toString('latin1'); });
  sock.on('error', () => {});
  const closed = new Promise<void>((r) => sock.on('close', () => r()));
  sock.write(`CONNECT ${port}\n${extra}`);
  return { sock, lines: () => text, closed };
}

test('guest → host: REQUEST connects to <uds>_PORT, 1 MiB within credit arrives intact, SHUTDOWN both ways, RST closes', async () => {
  const { uds, dev, g, done } = await setup();
  try {
    const st: { server?: Socket; got?: Promise<Buffer> } = {};
    const srv = await listenAt(`${uds}_6000`, (s) => { st.server = s; st.got = readAll(s); });
    const GP = 49152;
    g.send({ op: OP.REQUEST, srcPort: GP, dstPort: 6000 });
    const resp = await g.expect('RESPONSE', (p) => p.hdr.op === OP.RESPONSE);
    assert.deepEqual([resp.hdr.srcCid, resp.hdr.dstCid, resp.hdr.srcPort, resp.hdr.dstPort], [HOST_CID, GUEST_CID, 6000, GP]);
    assert.equal(resp.hdr.bufAlloc, CONN_BUF_SIZE);
    // send 1 MiB in 4 KiB packets, never past the host's advertised credit (as Linux does)
    const data = randomBytes(1 << 20);
    let sent = 0;
    let hostFwd = 0;
    let hostBuf = resp.hdr.bufAlloc;
    let creditUpdates = 0;
    while (sent < data.length) {
      for (const p of g.poll()) {
        if (p.hdr.dstPort !== GP) continue;
        hostFwd = p.hdr.fwdCnt;
        hostBuf = p.hdr.bufAlloc;
        if (p.hdr.op === OP.CREDIT_UPDATE) creditUpdates++;
      }
      let credit = hostBuf - (sent - hostFwd);
      let batch = 0;
      while (credit > 0 && sent < data.length && batch < 60) {
        const n = Math.min(4096, credit, data.length - sent);
        g.send({ op: OP.RW, srcPort: GP, dstPort: 6000 }, data.subarray(sent, sent + n), false);
        sent += n;
        credit -= n;
        batch++;
      }
      if (batch) g.kickTx();
      else await sleep(1);
    }
    assert.ok(creditUpdates > 0, 'the host sent CREDIT_UPDATEs');
    g.send({ op: OP.SHUTDOWN, srcPort: GP, dstPort: 6000, flags: SHUTDOWN_SEND });
    const body = await g.until('host connection', () => st.got);
    assert.equal(md5(await body), md5(data));
    // the host end closes: the guest hears SHUTDOWN (both: the socket is gone) and answers RST
    st.server!.end();
    const sd = await g.expect('SHUTDOWN', (p) => p.hdr.op === OP.SHUTDOWN);
    assert.equal(sd.hdr.flags & SHUTDOWN_SEND, SHUTDOWN_SEND);
    await g.until('both flags', () => g.received.some((p) => p.hdr.op === OP.SHUTDOWN && p.hdr.flags === SHUTDOWN_BOTH));
    g.send({ op: OP.RST, srcPort: GP, dstPort: 6000 });
    await g.until('connection gone', () => dev.muxer.connections === 0);
    assert.equal(dev.metrics.guestInitiated, 1);
    assert.equal(dev.metrics.creditViolations, 0);
    srv.close();
  } finally {
    done();
  }
});

test('host → guest: CONNECT, REQUEST from a host port >= 2^30, OK after RESPONSE, 1 MiB paced by the guest credit, SHUTDOWN then RST', async () => {
  const { uds, dev, g, done } = await setup();
  try {
    const c = hostConnect(uds, 5000, 'early!');
    const req = await g.expect('REQUEST', (p) => p.hdr.op === OP.REQUEST);
    assert.equal(req.hdr.dstPort, 5000);
    assert.ok(req.hdr.srcPort >= LOCAL_PORT_BASE, `host port ${req.hdr.srcPort}`);
    assert.equal(req.hdr.dstCid, GUEST_CID);
    await sleep(20);
    assert.equal(c.lines(), '', 'no OK before the guest accepts');
    const HP = req.hdr.srcPort;
    const GP = 5000;
    g.bufAlloc = 64 * 1024; // the guest's receive buffer: the host may not send more unread
    g.send({ op: OP.RESPONSE, srcPort: GP, dstPort: HP });
    await g.until('OK', () => c.lines() === `OK ${HP}\n`);
    const data = randomBytes(1 << 20);
    c.sock.end(data);
    const got: Uint8Array[] = [];
    let n = 0;
    let inFlightMax = 0;
    let gotShutdown = false;
    await g.until('all data and SHUTDOWN', () => {
      for (const p of g.received.splice(0)) {
        if (p.hdr.op === OP.RW) {
          got.push(p.data);
          n += p.data.length;
          inFlightMax = Math.max(inFlightMax, n - (g.fwd.get(GP) ?? 0));
        } else if (p.hdr.op === OP.SHUTDOWN) {
          assert.equal(n, data.length + 6, 'SHUTDOWN comes after the data');
          gotShutdown = true;
        }
      }
      // the application reads everything, and the guest tells the host (Linux does on read)
      if (n - (g.fwd.get(GP) ?? 0) > 0) {
        g.consume(GP, n - (g.fwd.get(GP) ?? 0));
        g.send({ op: OP.CREDIT_UPDATE, srcPort: GP, dstPort: HP });
      }
      return gotShutdown;
    }, 20000);
    assert.equal(md5(Buffer.concat(got)), md5(Buffer.concat([Buffer.from('early!'), data])));
    assert.ok(inFlightMax <= 64 * 1024, `in flight ${inFlightMax} <= guest buf_alloc`);
    // the guest closes its end: SHUTDOWN both → RST from the host, the client sees EOF
    g.send({ op: OP.SHUTDOWN, srcPort: GP, dstPort: HP, flags: SHUTDOWN_BOTH });
    await g.expect('RST', (p) => p.hdr.op === OP.RST && p.hdr.srcPort === HP);
    await c.closed;
    assert.equal(dev.muxer.connections, 0);
    assert.equal(dev.metrics.hostInitiated, 1);
  } finally {
    done();
  }
});

test('unknown ports fail cleanly both ways: RST for a missing <uds>_PORT, a stray packet, a CONNECT the guest refuses or ignores, a bad CONNECT line', async () => {
  const { uds, dev, g, done } = await setup({ handshakeTimeoutMs: 200 });
  try {
    g.send({ op: OP.REQUEST, srcPort: 1111, dstPort: 7777 });
    const r1 = await g.expect('RST for a port nobody listens on', (p) => p.hdr.op === OP.RST && p.hdr.dstPort === 1111);
    assert.equal(r1.hdr.srcPort, 7777);
    g.send({ op: OP.RW, srcPort: 1112, dstPort: 7778 }, new Uint8Array(10));
    await g.expect('RST for data on no connection', (p) => p.hdr.op === OP.RST && p.hdr.dstPort === 1112);
    g.send({ op: OP.REQUEST, srcPort: 1113, dstPort: 7777, dstCid: 5n });
    await g.expect('RST for another CID', (p) => p.hdr.op === OP.RST && p.hdr.dstPort === 1113);
    g.send({ op: OP.REQUEST, srcPort: 1114, dstPort: 7777, type: 2 });
    await g.expect('RST for SEQPACKET', (p) => p.hdr.op === OP.RST && p.hdr.dstPort === 1114);
    const rsts = dev.metrics.rstSent;
    g.send({ op: OP.RST, srcPort: 1115, dstPort: 7777 });
    g.send({ op: OP.REQUEST, srcPort: 1116, dstPort: 6000, srcCid: 9n });
    await sleep(50);
    g.poll();
    assert.equal(dev.metrics.rstSent, rsts, 'an RST is never answered, a spoofed source CID is dropped');
    assert.equal(dev.metrics.dropped, 1);

    // the guest refuses: the client is closed without OK
    const a = hostConnect(uds, 5001);
    const req = await g.expect('REQUEST', (p) => p.hdr.op === OP.REQUEST && p.hdr.dstPort === 5001);
    g.send({ op: OP.RST, srcPort: 5001, dstPort: req.hdr.srcPort });
    await a.closed;
    assert.equal(a.lines(), '');
    // the guest never answers: closed after the timeout, and the guest gets an RST
    const b = hostConnect(uds, 5002);
    const req2 = await g.expect('REQUEST', (p) => p.hdr.op === OP.REQUEST && p.hdr.dstPort === 5002);
    await b.closed;
    assert.equal(b.lines(), '');
    await g.expect('RST after the timeout', (p) => p.hdr.op === OP.RST && p.hdr.srcPort === req2.hdr.srcPort);
    // garbage instead of CONNECT, an over-long line, a port over 32 bits
    for (const line of ['HELLO 5\n', 'CONNECT ' + '9'.repeat(80) + '\n', 'CONNECT 4294967296\n']) {
      const s = createConnection(uds);
      s.on('error', () => {});
      s.write(line);
      await new Promise<void>((r) => s.on('close', () => r()));
    }
    assert.equal(dev.muxer.connections, 0);
  } finally {
    done();
  }
});

test('bounded buffers: a guest that never gives credit pauses the host socket; a guest past its credit is reset', async () => {
  const { uds, dev, g, done } = await setup();
  try {
    // host → guest with a guest that grants 16 KiB and never reads
    const c = hostConnect(uds, 5000);
    const req = await g.expect('REQUEST', (p) => p.hdr.op === OP.REQUEST);
    g.bufAlloc = 16 * 1024;
    g.send({ op: OP.RESPONSE, srcPort: 5000, dstPort: req.hdr.srcPort });
    await g.until('OK', () => c.lines().startsWith('OK'));
    const big = Buffer.alloc(4 << 20, 1);
    c.sock.write(big);
    await g.until('paused', () => dev.muxer.stats()[0]?.hostPaused);
    await sleep(100);
    g.poll();
    const st = dev.muxer.stats()[0]!;
    assert.ok(st.rxBytes <= RX_BUF_LIMIT + 64 * 1024, `buffered ${st.rxBytes}`);
    const rw = g.received.filter((p) => p.hdr.op === OP.RW).reduce((n, p) => n + p.hdr.len, 0);
    assert.equal(rw, 16 * 1024, 'exactly the guest credit was sent');
    assert.equal(g.received.filter((p) => p.hdr.op === OP.CREDIT_REQUEST).length, 1, 'one CREDIT_REQUEST');
    assert.ok(c.sock.writableLength > 0, 'the host writer is held back by the socket');
    // the guest reads: data moves again
    g.consume(5000, 16 * 1024);
    g.bufAlloc = 1 << 20;
    g.send({ op: OP.CREDIT_UPDATE, srcPort: 5000, dstPort: req.hdr.srcPort });
    await g.until('more data', () => g.received.filter((p) => p.hdr.op === OP.RW).reduce((n, p) => n + p.hdr.len, 0) > 16 * 1024 + 4096);
    c.sock.destroy();

    // guest → host past the credit: RST, the host socket closes
    const srv = await listenAt(`${uds}_6001`, (s) => { s.on('error', () => {}); s.pause(); });
    g.send({ op: OP.REQUEST, srcPort: 2222, dstPort: 6001 });
    await g.expect('RESPONSE', (p) => p.hdr.op === OP.RESPONSE && p.hdr.dstPort === 2222);
    const chunk = new Uint8Array(MAX_PKT_PAYLOAD);
    for (let i = 0; i < CONN_BUF_SIZE / MAX_PKT_PAYLOAD + 1; i++) g.send({ op: OP.RW, srcPort: 2222, dstPort: 6001 }, chunk, false);
    g.kickTx();
    await g.expect('RST', (p) => p.hdr.op === OP.RST && p.hdr.dstPort === 2222);
    assert.equal(dev.metrics.creditViolations, 1);
    await g.until('connection forgotten', () => !dev.muxer.stats().some((x) => x.key === '6001:2222'));
    srv.close();
  } finally {
    done();
  }
});

test('limits and resets: connection cap, guest RST mid-stream, device reset drops every connection', async () => {
  const { uds, dev, g, done } = await setup({ maxConnections: 2 });
  try {
    const peers: Socket[] = [];
    const srv = await listenAt(`${uds}_6000`, (s) => {
      peers.push(s);
      s.on('error', () => {});
      s.on('end', () => s.end());
      s.resume();
    });
    g.send({ op: OP.REQUEST, srcPort: 1, dstPort: 6000 });
    g.send({ op: OP.REQUEST, srcPort: 2, dstPort: 6000 });
    g.send({ op: OP.REQUEST, srcPort: 3, dstPort: 6000 });
    await g.expect('RST for the third', (p) => p.hdr.op === OP.RST && p.hdr.dstPort === 3);
    await g.expect('RESPONSE 1', (p) => p.hdr.op === OP.RESPONSE && p.hdr.dstPort === 1);
    await g.expect('RESPONSE 2', (p) => p.hdr.op === OP.RESPONSE && p.hdr.dstPort === 2);
    assert.equal(dev.metrics.refused, 1);
    // a host peer streaming into a guest that resets mid-stream
    await g.until('peers', () => peers.length === 2);
    const p0 = peers[0]!;
    const closed0 = new Promise<void>((r) => p0.on('close', () => r()));
    const streaming = setInterval(() => { if (!p0.destroyed) p0.write(Buffer.alloc(8192)); }, 1);
    await g.expect('data', (p) => p.hdr.op === OP.RW && p.hdr.dstPort === 1);
    g.send({ op: OP.RST, srcPort: 1, dstPort: 6000 });
    await closed0;
    clearInterval(streaming);
    assert.equal(dev.muxer.connections, 1);
    // a REQUEST on an open connection is a protocol error: reset
    g.send({ op: OP.REQUEST, srcPort: 2, dstPort: 6000 });
    await g.expect('RST for the duplicate', (p) => p.hdr.op === OP.RST && p.hdr.dstPort === 2);
    assert.equal(dev.muxer.connections, 0);
    // device reset with a live connection: its host socket closes
    g.send({ op: OP.REQUEST, srcPort: 4, dstPort: 6000 });
    await g.expect('RESPONSE 4', (p) => p.hdr.op === OP.RESPONSE && p.hdr.dstPort === 4);
    const p2 = peers[peers.length - 1]!;
    const closed2 = new Promise<void>((r) => p2.on('close', () => r()));
    g.d.setReg(REG.STATUS, 0);
    await closed2;
    assert.equal(dev.muxer.connections, 0);
    // while the driver is away, host clients are refused at once
    const c = hostConnect(uds, 5000);
    await c.closed;
    // and after re-initialisation everything works again
    g.init();
    g.send({ op: OP.REQUEST, srcPort: 5, dstPort: 6000 });
    await g.expect('RESPONSE after reset', (p) => p.hdr.op === OP.RESPONSE && p.hdr.dstPort === 5);
    srv.close();
  } finally {
    done();
  }
});

test('hostile tx packets are refused without harm; rx buffers too small for a header are returned empty', async () => {
  const { dev, g, done } = await setup();
  try {
    const ring = g.d.rings[1]!;
    // a chain shorter than a header
    g.d.writeDesc(ring.desc, 100, TX_BASE, 20, 0, 0);
    g.d.publish(1, 100);
    // a header whose len runs past the chain, and one over 64 KiB
    g.d.mem.write(GA(TX_BASE), encodeHeader(guestHdr({ op: OP.RW, len: 4096 })));
    g.d.writeDesc(ring.desc, 101, TX_BASE, HDR_SIZE + 100, 0, 0);
    g.d.publish(1, 101);
    g.d.mem.write(GA(TX_BASE), encodeHeader(guestHdr({ op: OP.RW, len: MAX_PKT_PAYLOAD + 1 })));
    g.d.writeDesc(ring.desc, 102, TX_BASE, HDR_SIZE + MAX_PKT_PAYLOAD + 1, 0, 0);
    g.d.publish(1, 102);
    // a device-writable tx buffer (no readable header)
    g.d.writeDesc(ring.desc, 103, TX_BASE, 64, VIRTQ_DESC_F_WRITE, 0);
    g.d.publish(1, 103);
    // an unknown op on no connection gets an RST, like any stray packet
    g.send({ op: 99, srcPort: 77, dstPort: 88 });
    assert.deepEqual(g.d.takeUsed(1).map((u) => u.len), [0, 0, 0, 0, 0]);
    assert.equal(dev.metrics.badPackets, 4);
    await g.expect('RST', (p) => p.hdr.op === OP.RST && p.hdr.dstPort === 77);
    assert.equal(dev.metrics.rxPackets, 1);
  } finally {
    done();
  }
});

test('a guest that floods REQUESTs and never reads: tx stops at the control backlog, resumes when rx buffers come', async () => {
  const uds = join(dir, `v${seq++}.sock`);
  const dev = new VirtioVsock({ guestCid: 3, udsPath: uds });
  await dev.listen();
  const g = new FakeGuest(dev, HDR_SIZE + 4096, 8, 256);
  g.autoRefill = false;
  try {
    g.init();
    // 400 packets to a CID that is not the host: each wants an RST back
    for (let i = 0; i < 200; i++) g.send({ op: OP.REQUEST, srcPort: 10000 + i, dstPort: 1, dstCid: 7n }, undefined, false);
    g.kickTx();
    let used = g.d.takeUsed(1).length;
    assert.equal(used, 200);
    for (let i = 200; i < 400; i++) g.send({ op: OP.REQUEST, srcPort: 10000 + i, dstPort: 1, dstCid: 7n }, undefined, false);
    g.kickTx();
    await sleep(20);
    used += g.d.takeUsed(1).length;
    g.poll();
    assert.ok(used < 400, `tx stalled (${used} taken)`);
    assert.ok(used >= 256, `took ${used}`);
    // the guest reads its replies: the rest of tx is taken
    await g.until('all replies', () => {
      g.refill();
      g.d.setReg(REG.QUEUE_NOTIFY, 0);
      return g.received.length === 400;
    });
    assert.equal(new Set(g.received.map((p) => p.hdr.dstPort)).size, 400);
  } finally {
    dev.close();
  }
});

test('config space: guest_cid as le64; only F_STREAM offered', () => {
  const dev = new VirtioVsock({ guestCid: 0x1234_5678, udsPath: join(dir, 'unused.sock') });
  const d = new TestDriver(dev);
  assert.deepEqual([...d.config(0, 8)], [0x78, 0x56, 0x34, 0x12, 0, 0, 0, 0]);
  assert.equal(dev.features, 1n);
  assert.equal(d.reg(REG.DEVICE_ID), 19);
  dev.close();
});

void SHUTDOWN_RCV;
