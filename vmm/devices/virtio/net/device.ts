// virtio-net (virtio 1.2, 5.1) on a host tap: one rx and one tx queue, no control queue.
//
// Features: MAC (when -netdev mac= is given; otherwise the guest picks a random one), STATUS
// (link up while a tap is attached: hot-replace slots start down), MRG_RXBUF (a frame may span
// several rx buffers), and the checksum/TSO offloads, which cost nothing here: the
// virtio_net_hdr_v1 in front of every frame is the tap's 12-byte vnet header, so frames and
// their offload metadata pass through unchanged (tx: CSUM, HOST_TSO4/6, HOST_ECN; rx:
// GUEST_CSUM, GUEST_TSO4/6, GUEST_ECN, which become the tap's TUNSETOFFLOAD flags on activation).
//
// rx: the tap's fd is in the main Poller while the driver is live. When it is readable, frames
// are read (one read(2) each, into a 64 KiB bounce buffer: a frame's size is only known once
// read) and copied into the guest's rx buffers, at most RX_BATCH per wake-up (the fd stays
// readable, so the Poller comes back). With MRG_RXBUF a frame takes as many chains as it needs
// and num_buffers says how many; they are published with one used-index update. When the guest
// has no rx buffers left, the frame waits in the bounce buffer, the tap leaves the Poller (the
// kernel queues, then drops, as a real NIC would) and the driver is asked to notify; its rx
// notification brings the tap back.
// tx: on notification every chain is written to the tap with one writev(2) straight from the
// guest's buffers (header first), at most TX_BATCH per turn of the event loop.
//
// Hostile drivers: chains are checked by Queue (guest RAM, loops, lengths); a tx chain shorter
// than the header or longer than MAX_FRAME, an rx chain without room for the header, and any
// rejected chain are completed with length 0 and counted; nothing a guest writes can make the
// device allocate, loop without bound or throw past the transport.
//
// iothread=: the queues are served on an iothread (iothread.ts, net-iothread-handler.ts): this
// class runs there over the same guest RAM, woken by the queues' ioeventfds and the tap.
//
// vhost=on: the rings are handed to the kernel's vhost-net (vhost.ts) on activation; the device
// then only forwards notifications and interrupts.
import { logger } from '../../../log.js';
import { EPOLLERR, EPOLLHUP, EPOLLIN } from '../../../io/epoll.js';
import { mainPoller } from '../../../io/poller.js';
import type { FdWatcher } from '../../irq.js';
import { DEVICE_ID } from '../../../virtio/constants.js';
import { readConfigBytes, type ActivateContext, type VirtioDevice } from '../../../virtio/device.js';
import { ChainReader, ChainWriter, QueueBrokenError, type DescriptorChain, type Queue } from '../../../virtio/queue.js';
import type { NetBackend } from './tap.js';
import {
  NET_F, NET_HDR_SIZE, TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_TSO_ECN, VIRTIO_NET_S_LINK_UP,
} from './sys.js';
import type { VhostNet } from './vhost.js';

const log = logger('virtio-net');
const bit = (n: number): bigint => 1n << BigInt(n);
const has = (features: bigint, n: number): boolean => (features & bit(n)) !== 0n;

export const RXQ = 0;
export const TXQ = 1;
export const QUEUE_SIZE = 256;
/** The largest frame: 64 KiB of TSO payload plus Ethernet and VLAN headers (Firecracker's bound), and the header. */
export const MAX_FRAME = 65550 + NET_HDR_SIZE;
/** Frames moved per Poller wake-up / tx chains per event-loop turn, so one device cannot starve the rest. */
const RX_BATCH = 64;
const TX_BATCH = 256;

/** Offloads offered: all of them ride on the tap's vnet header. */
const OFFLOADS = [NET_F.CSUM, NET_F.GUEST_CSUM, NET_F.GUEST_TSO4, NET_F.GUEST_TSO6, NET_F.GUEST_ECN,
  NET_F.HOST_TSO4, NET_F.HOST_TSO6, NET_F.HOST_ECN].reduce((f, n) => f | bit(n), 0n);

/** The TUN_F_* flags matching the rx offloads the driver accepted. */
export function tapOffloadFor(features: bigint): number {
  if (!has(features, NET_F.GUEST_CSUM)) return 0;
  let f = TUN_F_CSUM;
  if (has(features, NET_F.GUEST_TSO4)) f |= TUN_F_TSO4;
  if (has(features, NET_F.GUEST_TSO6)) f |= TUN_F_TSO6;
  if (f & (TUN_F_TSO4 | TUN_F_TSO6) && has(features, NET_F.GUEST_ECN)) f |= TUN_F_TSO_ECN;
  return f;
}

/** "52:54:00:12:34:56" -> 6 bytes. */
export function parseMac(mac: string): Uint8Array {
  const parts = mac.split(':');
  if (parts.length !== 6 || parts.some((p) => !/^[0-9a-f]{2}$/i.test(p))) throw new Error(`bad MAC address '${mac}'`);
  return Uint8Array.from(parts.map((p) => parseInt(p, 16)));
}

export interface NetOptions {
  /** the guest's MAC (config space); none: the guest makes one up */
  mac?: string | undefined;
  /** the tap; null for an empty hot-replace slot (link down) */
  backend: NetBackend | null;
  /** what watches the tap (default: the main thread's Poller; an iothread's IoLoop: net-iothread-handler.ts) */
  poller?: FdWatcher | undefined;
  /**
   * After TX_BATCH chains, how to get notify(TXQ) called again once other work had its turn.
   * Default: setImmediate (the main thread's event loop). An iothread, which blocks in epoll and
   * runs no event loop, writes the tx queue's ioeventfd instead.
   */
  yieldTx?: (() => void) | undefined;
  /** the counters to update (default: a fresh object; an iothread's are shared with the main thread) */
  metrics?: NetMetrics | undefined;
  /** offer MRG_RXBUF (default true; false makes every frame fit one rx chain) */
  mrgRxbuf?: boolean | undefined;
  /** hand the rings to vhost-net instead of moving frames here */
  vhost?: VhostNet | null | undefined;
}

export interface NetMetrics {
  rxFrames: number;
  rxBytes: number;
  /** frames the guest had no room for (a chain too small), or that were not even a header */
  rxDropped: number;
  /** times the guest ran out of rx buffers (the tap left the Poller until an rx notification) */
  rxStalls: number;
  txFrames: number;
  txBytes: number;
  /** tx chains with no frame in them (shorter than the header, longer than MAX_FRAME), or no tap */
  txDropped: number;
  /** writes the tap refused (e.g. an offload header it does not accept) */
  txErrors: number;
  /** chains Queue rejected, or rx chains without room for the header */
  rejected: number;
  /** read errors on the tap (it went away) */
  rxErrors: number;
}

/** The counter names, in a fixed order (an iothread's counters live in a shared array in this order). */
export const NET_METRIC_KEYS = ['rxFrames', 'rxBytes', 'rxDropped', 'rxStalls', 'txFrames', 'txBytes', 'txDropped', 'txErrors', 'rejected', 'rxErrors'] as const satisfies ReadonlyArray<keyof NetMetrics>;

function newNetMetrics(): NetMetrics {
  return Object.fromEntries(NET_METRIC_KEYS.map((k) => [k, 0])) as unknown as NetMetrics;
}

/**
 * Counters over a shared Float64Array, one slot per key, readable from either thread: an
 * iothread's VirtioNet writes them, the main thread's IoThreadNet reads them.
 */
export function sharedNetMetrics(buffer: SharedArrayBuffer): NetMetrics {
  const a = new Float64Array(buffer);
  const m = {} as NetMetrics;
  NET_METRIC_KEYS.forEach((k, i) => Object.defineProperty(m, k, {
    enumerable: true, get: () => a[i] as number, set: (v: number) => { a[i] = v; },
  }));
  return m;
}

type RxResult = 'delivered' | 'dropped' | 'no-buffers';

export class VirtioNet implements VirtioDevice {
  readonly deviceType = DEVICE_ID.NET;
  readonly queueSizes = [QUEUE_SIZE, QUEUE_SIZE];
  readonly features: bigint;
  readonly metrics: NetMetrics;
  private readonly mac: Uint8Array | null;
  private backend: NetBackend | null;
  private readonly vhost: VhostNet | null;
  private readonly poller: FdWatcher;
  private readonly yieldTx: (() => void) | null;
  private ctx: ActivateContext | null = null;
  private mrg = false;
  private polling = false;
  /** the frame read from the tap and not yet delivered (bounce buffer; length in pendingLen) */
  private readonly frame = Buffer.alloc(MAX_FRAME);
  private pendingLen = 0;
  private txLater: NodeJS.Immediate | null = null;
  private readonly onReadable = (events: number): void => this.tapReadable(events);

  constructor(opts: NetOptions) {
    this.mac = opts.mac ? parseMac(opts.mac) : null;
    this.backend = opts.backend;
    this.vhost = opts.vhost ?? null;
    this.poller = opts.poller ?? mainPoller();
    this.yieldTx = opts.yieldTx ?? null;
    this.metrics = opts.metrics ?? newNetMetrics();
    let f = OFFLOADS | bit(NET_F.STATUS);
    if (opts.mrgRxbuf ?? true) f |= bit(NET_F.MRG_RXBUF);
    if (this.mac) f |= bit(NET_F.MAC);
    if (this.vhost) f &= this.vhost.deviceFeatureMask();
    this.features = f;
  }

  /** The tap's name (or fd label), if one is attached. */
  get backendName(): string | undefined {
    return this.backend?.name;
  }

  get linkUp(): boolean {
    return this.backend !== null;
  }

  get isPolling(): boolean {
    return this.polling;
  }

  /** Bytes of a frame read from the tap and waiting for rx buffers (0: none). */
  get pendingBytes(): number {
    return this.pendingLen;
  }

  private configSpace(): Uint8Array {
    const c = new Uint8Array(12);
    const v = new DataView(c.buffer);
    if (this.mac) c.set(this.mac, 0);
    v.setUint16(6, this.linkUp ? VIRTIO_NET_S_LINK_UP : 0, true);
    v.setUint16(8, 1, true); // max_virtqueue_pairs (only read with VIRTIO_NET_F_MQ)
    return c;
  }

  readConfig(offset: number, data: Uint8Array): void {
    readConfigBytes(this.configSpace(), offset, data);
  }

  /** The MAC is read-only for a virtio 1.x driver (no CTRL_MAC_ADDR); writes are ignored. */
  writeConfig(): void {}

  activate(ctx: ActivateContext): void {
    this.mrg = has(ctx.features, NET_F.MRG_RXBUF);
    if (this.vhost) {
      if (!this.backend) throw new Error('vhost-net needs a tap');
      this.vhost.start(ctx, this.backend);
      this.ctx = ctx;
      return;
    }
    this.backend?.setOffload(tapOffloadFor(ctx.features));
    this.ctx = ctx;
    this.startPolling();
  }

  notify(index: number): void {
    if (!this.ctx) return;
    if (this.vhost) {
      this.vhost.kick(index);
      return;
    }
    if (index === RXQ) {
      // the driver added rx buffers: deliver what waits, then read the tap again
      this.processRx();
      if (this.ctx && this.pendingLen === 0) this.startPolling();
    } else if (index === TXQ) {
      this.processTx();
    }
  }

  // ---- rx ----------------------------------------------------------------------------------

  private startPolling(): void {
    if (this.polling || !this.backend || !this.ctx || this.vhost) return;
    this.poller.add(this.backend.fd, EPOLLIN, this.onReadable);
    this.polling = true;
  }

  private stopPolling(): void {
    if (!this.polling) return;
    this.polling = false;
    if (this.backend) this.poller.remove(this.backend.fd, this.onReadable);
  }

  private tapReadable(events: number): void {
    if (events & (EPOLLERR | EPOLLHUP) && !(events & EPOLLIN)) {
      this.metrics.rxErrors++;
      log.warn(`${this.backend?.name}: the tap reports an error (events 0x${events.toString(16)}); no longer reading it`);
      this.stopPolling();
      return;
    }
    this.processRx();
  }

  /** Moves frames from the tap (or the one waiting) into the guest's rx buffers. */
  private processRx(): void {
    const ctx = this.ctx;
    const q = ctx?.queues[RXQ];
    if (!ctx || !q || !this.backend) return;
    let used = false;
    let rearms = 0;
    try {
      // `frames` counts frames done (delivered or dropped), not turns: a turn that found buffers
      // added while it re-armed must go on with the waiting frame. Ending the batch there would
      // leave the frame waiting and the tap out of the Poller, and the driver, which saw
      // avail_event only after its buffers, would never notify again (the rx stall of iperf -R).
      for (let frames = 0; frames < RX_BATCH;) {
        if (this.pendingLen === 0) {
          let n: number;
          try {
            n = this.backend.recv(this.frame);
          } catch (e) {
            this.metrics.rxErrors++;
            log.warn(`${this.backend.name}: ${(e as Error).message}; no longer reading it`);
            this.stopPolling();
            break;
          }
          if (n === 0) break;
          if (n < NET_HDR_SIZE) {
            this.metrics.rxDropped++;
            frames++;
            continue;
          }
          this.pendingLen = n;
        }
        const r = this.mrg ? this.deliverMergeable(ctx, q) : this.deliverOne(ctx, q);
        if (r.used) used = true;
        if (r.result === 'no-buffers') {
          // ask to hear of buffers beyond those there now (which may be too few for this frame);
          // more may have come while we looked: then go on, else wait for the driver
          if (q.notifyBeyondAvail(ctx.mem)) {
            // Nothing is taken while a frame waits, so a driver can only move avail forward, at
            // most a ring's worth: more retries for one frame mean an index that goes back and
            // forth (or chains it keeps posting that are rejected): a broken ring, not a spin.
            if (++rearms > q.size) throw new QueueBrokenError(`the avail index moved ${rearms} times while one frame waited for rx buffers (more than the ring holds)`);
            continue;
          }
          this.metrics.rxStalls++;
          this.stopPolling();
          break;
        }
        frames++;
        rearms = 0;
        if (r.result === 'delivered') {
          this.metrics.rxFrames++;
          this.metrics.rxBytes += this.pendingLen - NET_HDR_SIZE;
        } else {
          this.metrics.rxDropped++;
        }
        this.pendingLen = 0;
      }
    } catch (e) {
      if (!(e instanceof QueueBrokenError)) throw e;
      this.stopPolling();
      this.pendingLen = 0;
      ctx.interrupt.fail(`queue ${RXQ}: ${e.message}`);
      return;
    }
    if (used) ctx.interrupt.signalUsed(RXQ);
  }

  /** Without MRG_RXBUF: the whole frame in one chain. */
  private deliverOne(ctx: ActivateContext, q: Queue): { result: RxResult; used: boolean } {
    const len = this.pendingLen;
    let used = false;
    for (;;) {
      const p = q.pop(ctx.mem);
      if (!p) return { result: 'no-buffers', used };
      if (p.error) {
        this.metrics.rejected++;
        q.addUsed(ctx.mem, p.error.head, 0);
        used = true;
        continue;
      }
      const w = new ChainWriter(ctx.mem, p.chain.writable);
      if (w.total < len) {
        // the guest's buffer is too small for this frame (Firecracker: drop it, return the buffer)
        if (w.total < NET_HDR_SIZE) this.metrics.rejected++;
        q.addUsed(ctx.mem, p.chain.head, 0);
        return { result: 'dropped', used: true };
      }
      this.frame.writeUInt16LE(1, 10); // num_buffers
      this.copyOut(w, 0, len);
      q.addUsed(ctx.mem, p.chain.head, len);
      return { result: 'delivered', used: true };
    }
  }

  /** With MRG_RXBUF: as many chains as the frame needs, published together. */
  private deliverMergeable(ctx: ActivateContext, q: Queue): { result: RxResult; used: boolean } {
    const len = this.pendingLen;
    const chains: Array<{ chain: DescriptorChain; room: number }> = [];
    const bad: Array<{ head: number; len: number }> = [];
    let room = 0;
    let pops = 0;
    let used = false;
    const undo = (): void => {
      for (; pops > 0; pops--) q.undoPop();
    };
    while (room < len) {
      if (pops >= q.size) {
        // a ring's worth of chains does not hold it: tiny buffers; drop the frame, keep the buffers
        undo();
        return { result: 'dropped', used };
      }
      const p = q.pop(ctx.mem);
      if (!p) {
        // put back what this frame took (bad chains after a good one included: they are
        // rejected again, and completed, once a frame is delivered)
        undo();
        return { result: 'no-buffers', used };
      }
      const head = p.error ? p.error.head : p.chain.head;
      // the header (with num_buffers) must fit in the first buffer chain
      const total = p.chain ? p.chain.writable.reduce((n, b) => n + b.len, 0) : 0;
      if (p.error || total === 0 || (chains.length === 0 && total < NET_HDR_SIZE)) {
        if (chains.length === 0) {
          this.metrics.rejected++;
          // nothing of this frame is taken yet: complete it now, it is not popped again
          q.addUsed(ctx.mem, head, 0);
          used = true;
        } else {
          pops++;
          bad.push({ head, len: 0 });
        }
        continue;
      }
      pops++;
      chains.push({ chain: p.chain, room: total });
      room += total;
    }
    this.metrics.rejected += bad.length;
    this.frame.writeUInt16LE(chains.length, 10); // num_buffers
    const entries = bad;
    let off = 0;
    for (const c of chains) {
      const take = Math.min(c.room, len - off);
      this.copyOut(new ChainWriter(ctx.mem, c.chain.writable), off, take);
      entries.push({ head: c.chain.head, len: take });
      off += take;
    }
    q.addUsedMany(ctx.mem, entries);
    return { result: 'delivered', used: true };
  }

  private copyOut(w: ChainWriter, from: number, n: number): void {
    let at = from;
    for (const v of w.views(n)) {
      v.set(this.frame.subarray(at, at + v.length));
      at += v.length;
    }
  }

  // ---- tx ----------------------------------------------------------------------------------

  private processTx(): void {
    const ctx = this.ctx;
    const q = ctx?.queues[TXQ];
    if (!ctx || !q) return;
    let used = false;
    let n = 0;
    for (;;) {
      if (n >= TX_BATCH) {
        // yield (other devices, QMP, the rx side); the rest goes next turn
        if (this.yieldTx) this.yieldTx();
        else this.txLater ??= setImmediate(() => {
          this.txLater = null;
          this.processTx();
        });
        break;
      }
      const p = q.popOrArm(ctx.mem);
      if (!p) break;
      n++;
      used = true;
      if (p.error) {
        this.metrics.rejected++;
        q.addUsed(ctx.mem, p.error.head, 0);
        continue;
      }
      this.transmit(ctx, p.chain);
      q.addUsed(ctx.mem, p.chain.head, 0);
    }
    if (used) ctx.interrupt.signalUsed(TXQ);
  }

  private transmit(ctx: ActivateContext, chain: DescriptorChain): void {
    const r = new ChainReader(ctx.mem, chain.readable);
    if (r.total < NET_HDR_SIZE || r.total > MAX_FRAME || !this.backend) {
      this.metrics.txDropped++;
      return;
    }
    try {
      this.backend.send(r.views(r.total));
      this.metrics.txFrames++;
      this.metrics.txBytes += r.total - NET_HDR_SIZE;
    } catch (e) {
      if (this.metrics.txErrors++ < 10) log.warn(`${this.backend.name}: tx: ${(e as Error).message}`);
    }
  }

  // ---- lifecycle ---------------------------------------------------------------------------

  /** Hot-replace: give the slot a tap (QMP device_add): link up, config-change interrupt. */
  attach(backend: NetBackend): void {
    if (this.backend) throw new Error('net slot already has a tap');
    if (this.vhost) throw new Error('a vhost-net slot cannot be hot-replaced');
    this.backend = backend;
    if (this.ctx) {
      backend.setOffload(tapOffloadFor(this.ctx.features));
      this.startPolling();
    }
    this.ctx?.interrupt.signalConfig();
  }

  /** Hot-replace: take the tap away (QMP device_del): link down; returns its name. */
  detach(): string | undefined {
    const b = this.backend;
    this.stopPolling();
    this.pendingLen = 0;
    this.backend = null;
    b?.close();
    this.ctx?.interrupt.signalConfig();
    return b?.name;
  }

  /** With vhost-net the kernel holds the rings' indices: a snapshot would save stale ones. */
  snapshotBlocker(): string | null {
    return this.vhost ? 'vhost=on: the kernel owns its rings; a snapshot needs vhost=off' : null;
  }

  reset(): void {
    this.stopPolling();
    this.pendingLen = 0;
    if (this.txLater) clearImmediate(this.txLater);
    this.txLater = null;
    if (this.vhost && this.ctx) this.vhost.stop();
    this.ctx = null;
    try {
      this.backend?.setOffload(0);
    } catch (e) {
      log.warn(`${this.backend?.name}: ${(e as Error).message}`);
    }
  }

  close(): void {
    this.reset();
    this.backend?.close();
    this.backend = null;
    this.vhost?.close();
  }
}
