// virtio-vsock (virtio 1.2, 5.10): three queues (rx: device → driver packets, tx: driver → device
// packets, event: transport events), a config space holding the guest's CID (le64), stream
// sockets only. The host side is the Unix-socket muxer (muxer.ts); everything runs on the main
// thread: tx requests are parsed and handed to the muxer when the guest notifies, rx buffers are
// filled whenever the muxer has packets and the guest has given buffers.
import { DEVICE_ID } from '../../../virtio/constants.js';
import type { ActivateContext, VirtioDevice } from '../../../virtio/device.js';
import { readConfigBytes } from '../../../virtio/device.js';
import { ChainReader, ChainWriter, QueueBrokenError } from '../../../virtio/queue.js';
import { logger } from '../../../log.js';
import { VsockMuxer, type MuxerLimits, type MuxerMetrics } from './muxer.js';
import { checkTxHeader, encodeHeader, HDR_SIZE, MAX_PKT_PAYLOAD, OP, parseHeader, VSOCK_F_STREAM } from './packet.js';

const log = logger('vsock');

export const RX_QUEUE = 0;
export const TX_QUEUE = 1;
export const EVENT_QUEUE = 2;
const QUEUE_SIZE = 256;

export interface VsockOptions {
  guestCid: number;
  /** the host listener; guest connections to port P go to `${udsPath}_${P}` */
  udsPath: string;
  /** tests: smaller limits and timeouts */
  limits?: Partial<MuxerLimits> | undefined;
}

export interface VsockMetrics extends MuxerMetrics {
  txPackets: number;
  rxPackets: number;
  txBytes: number;
  rxBytes: number;
  /** tx chains or headers refused (too short, len past the chain, > 64 KiB) */
  badPackets: number;
  /** rx chains too small for a header, or rejected by the queue */
  badRxBuffers: number;
}

export class VirtioVsock implements VirtioDevice {
  readonly deviceType = DEVICE_ID.VSOCK;
  readonly queueSizes = [QUEUE_SIZE, QUEUE_SIZE, 16];
  readonly features = VSOCK_F_STREAM;
  readonly muxer: VsockMuxer;
  private readonly config = new Uint8Array(8);
  private ctx: ActivateContext | null = null;
  private rxScheduled = false;
  private txStalled = false;
  private readonly counts = { txPackets: 0, rxPackets: 0, txBytes: 0, rxBytes: 0, badPackets: 0, badRxBuffers: 0 };

  constructor(readonly opts: VsockOptions) {
    new DataView(this.config.buffer).setBigUint64(0, BigInt(opts.guestCid), true);
    this.muxer = new VsockMuxer(BigInt(opts.guestCid), opts.udsPath, opts.limits);
    this.muxer.onWork = () => this.scheduleRx();
  }

  get metrics(): VsockMetrics {
    return { ...this.muxer.metrics, ...this.counts };
  }

  /** Binds the host listener; call during init (before the seccomp filter). */
  listen(): Promise<void> {
    return this.muxer.listen();
  }

  readConfig(offset: number, data: Uint8Array): void {
    readConfigBytes(this.config, offset, data);
  }
  writeConfig(): void {} // guest_cid is read-only

  activate(ctx: ActivateContext): void {
    this.ctx = ctx;
    this.muxer.active = true;
  }

  notify(index: number): void {
    if (!this.ctx) return;
    try {
      if (index === TX_QUEUE) this.processTx();
      // rx: new buffers; tx: replies may be due. The event queue only holds buffers for events we
      // would send after a snapshot restore: nothing to do when the guest adds them.
      if (index === RX_QUEUE || index === TX_QUEUE) this.processRx();
    } catch (e) {
      if (e instanceof QueueBrokenError) this.broken(); // the transport sets DEVICE_NEEDS_RESET
      throw e;
    }
  }

  /**
   * After a snapshot restore: the host side of every connection belonged to the VMM that saved,
   * so the driver is told its transport was reset (VIRTIO_VSOCK_EVENT_TRANSPORT_RESET, id 0, in
   * an event buffer it left with us); Linux then closes its sockets and re-reads the CID.
   */
  restored(): void {
    this.muxer.reset();
    const ctx = this.ctx;
    const q = ctx?.queues[EVENT_QUEUE];
    if (!ctx || !q?.ready) return;
    const popped = q.pop(ctx.mem);
    if (!popped) {
      log.warn('restore: the driver left no event buffer; its connections are not told of the reset');
      return;
    }
    if (popped.error) {
      q.addUsed(ctx.mem, popped.error.head, 0);
    } else {
      const event = new Uint8Array(4); // le32 id = VIRTIO_VSOCK_EVENT_TRANSPORT_RESET (0)
      const w = new ChainWriter(ctx.mem, popped.chain.writable);
      let len = 0;
      try {
        w.write(event);
        len = event.length;
      } catch { /* a buffer too small for the event: returned empty */ }
      q.addUsed(ctx.mem, popped.chain.head, len);
    }
    ctx.interrupt.signalUsed(EVENT_QUEUE);
  }

  /** A broken ring: nothing moves until the driver resets the device. */
  private broken(): void {
    this.ctx = null;
    this.muxer.active = false;
    this.muxer.reset();
  }

  reset(): void {
    this.ctx = null;
    this.muxer.active = false;
    this.txStalled = false;
    this.muxer.reset();
  }

  close(): void {
    this.reset();
    this.muxer.close();
  }

  private scheduleRx(): void {
    if (this.rxScheduled || !this.ctx) return;
    this.rxScheduled = true;
    setImmediate(() => {
      this.rxScheduled = false;
      const ctx = this.ctx;
      if (!ctx) return;
      // outside notify() the transport does not catch a broken ring for us
      try {
        this.processRx();
      } catch (e) {
        this.broken();
        ctx.interrupt.fail(`vsock rx: ${(e as Error).message}`);
      }
    });
  }

  /** Guest → host packets. Stops (requests left in the ring) while control replies pile up. */
  private processTx(): void {
    const ctx = this.ctx;
    const q = ctx?.queues[TX_QUEUE];
    if (!ctx || !q) return;
    let used = false;
    this.txStalled = false;
    for (;;) {
      if (this.muxer.backlogFull()) {
        this.txStalled = true;
        break;
      }
      const p = q.popOrArm(ctx.mem);
      if (!p) break;
      used = true;
      if (p.error) {
        this.counts.badPackets++;
        q.addUsed(ctx.mem, p.error.head, 0);
        continue;
      }
      const r = new ChainReader(ctx.mem, p.chain.readable);
      if (r.total < HDR_SIZE) {
        this.counts.badPackets++;
        q.addUsed(ctx.mem, p.chain.head, 0);
        continue;
      }
      const h = parseHeader(r.read(HDR_SIZE));
      const bad = checkTxHeader(h, r.remaining);
      if (bad) {
        this.counts.badPackets++;
        log.debug(`tx packet refused: ${bad}`);
        q.addUsed(ctx.mem, p.chain.head, 0);
        continue;
      }
      // copied out of guest memory: the buffer goes back to the guest now
      const payload = h.op === OP.RW && h.len > 0 ? r.read(h.len) : new Uint8Array(0);
      q.addUsed(ctx.mem, p.chain.head, 0);
      this.counts.txPackets++;
      this.counts.txBytes += payload.length;
      this.muxer.fromGuest(h, payload);
    }
    if (used) ctx.interrupt.signalUsed(TX_QUEUE);
  }

  /** Host → guest packets into the guest's rx buffers, for as long as both last. */
  private processRx(): void {
    const ctx = this.ctx;
    const q = ctx?.queues[RX_QUEUE];
    if (!ctx || !q) return;
    let used = false;
    while (this.muxer.hasPending()) {
      const p = q.popOrArm(ctx.mem);
      if (!p) break;
      if (p.error) {
        this.counts.badRxBuffers++;
        q.addUsed(ctx.mem, p.error.head, 0);
        used = true;
        continue;
      }
      const w = new ChainWriter(ctx.mem, p.chain.writable);
      if (w.total < HDR_SIZE) {
        this.counts.badRxBuffers++;
        q.addUsed(ctx.mem, p.chain.head, 0);
        used = true;
        continue;
      }
      const pkt = this.muxer.nextPacket(Math.min(MAX_PKT_PAYLOAD, w.total - HDR_SIZE));
      if (!pkt) {
        q.undoPop();
        break;
      }
      const hdr = new Uint8Array(HDR_SIZE);
      encodeHeader(pkt.hdr, hdr);
      w.write(hdr);
      for (const part of pkt.payload) w.write(part);
      q.addUsed(ctx.mem, p.chain.head, w.written);
      this.counts.rxPackets++;
      this.counts.rxBytes += pkt.hdr.len;
      used = true;
    }
    if (used) ctx.interrupt.signalUsed(RX_QUEUE);
    // replies went out: tx requests left in the ring can be taken again
    if (this.txStalled && !this.muxer.backlogFull()) {
      this.processTx();
      if (this.muxer.hasPending()) this.scheduleRx();
    }
  }
}
