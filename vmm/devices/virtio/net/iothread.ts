// virtio-net bound to an iothread (-netdev …,iothread=ID). The main thread keeps the transport,
// the configuration space and the tap's set-up (offloads, hot-replace refusal); the frames move
// in the iothread (net-iothread-handler.ts), where a VirtioNet over the same guest RAM is woken
// directly by the queues' ioeventfds and the tap's readability, and raises its interrupts itself
// (InterruptStatus with Atomics.or, then the slot's irqfd). So a frame costs the main thread
// nothing: no pass of the main event loop per wake-up (the main Poller's), no message per interrupt.
//
// Reset waits for the iothread: the driver frees its rings after writing 0 to Status, so the
// iothread must have stopped touching them before the MMIO write returns to the guest. Each
// activation holds an IoThreadLease generation; reset revokes it (the iothread's callbacks check
// it, so they stop at the next one), posts "deactivate" and blocks in Atomics.wait until the
// iothread acknowledges that request (after the callbacks of the epoll wake-up it is in: at most
// a batch of frames here, but also whatever else the same iothread serves), at most 2 s, so that
// a stuck iothread cannot hang the VMM. Messages from the worker carry the generation too: a
// failure reported for an earlier activation is ignored.
//
// Counters live in a SharedArrayBuffer the iothread's VirtioNet writes and `metrics` reads.
import { IoThreadLease, type IoThread } from '../../../io/iothread.js';
import { EventFd } from '../../../io/eventfd.js';
import { logger } from '../../../log.js';
import type { ActivateContext } from '../../../virtio/device.js';
import type { NetBackend } from './tap.js';
import { NET_METRIC_KEYS, RXQ, sharedNetMetrics, TXQ, tapOffloadFor, VirtioNet } from './device.js';
import type { NetIoMessage, NetIoRequest } from './net-iothread-handler.js';

const log = logger('virtio-net');
const HANDLER = new URL('./net-iothread-handler.js', import.meta.url);

export class IoThreadNet extends VirtioNet {
  readonly ownsNotifiers = true;
  private readonly counters: SharedArrayBuffer;
  /** which activation the iothread may serve (see the header) */
  private readonly lease = new IoThreadLease();
  private remote: ActivateContext | null = null;
  private readonly onMessage = (m: NetIoMessage): void => {
    if (m?.key !== this.key || m.gen !== this.lease.generation || !this.remote) return;
    this.remote.interrupt.fail(m.reason);
  };

  constructor(
    private readonly tap: NetBackend,
    private readonly thread: IoThread,
    private readonly key: string,
    mac: string | undefined,
  ) {
    const counters = new SharedArrayBuffer(8 * NET_METRIC_KEYS.length);
    super({ backend: tap, mac, metrics: sharedNetMetrics(counters) });
    this.counters = counters;
    thread.on('message', this.onMessage);
  }

  /** During init (DeviceManager.start): import the handler now; after the seccomp filter it could not open the file. */
  async start(): Promise<void> {
    const req: NetIoRequest = { op: 'preload' };
    await this.thread.load(HANDLER, req);
  }

  override activate(ctx: ActivateContext): void {
    const rx = ctx.queues[RXQ];
    const tx = ctx.queues[TXQ];
    const notifiers = ctx.notifiers;
    if (!rx || !tx || notifiers.length < 2 || !ctx.irq) throw new Error('virtio-net on an iothread needs its queue ioeventfds and irqfd');
    this.tap.setOffload(tapOffloadFor(ctx.features));
    this.remote = ctx;
    const gen = this.lease.grant();
    const req: NetIoRequest = {
      op: 'activate', key: this.key, hostAddr: ctx.mem.hostAddr, memSize: ctx.mem.totalSize,
      queues: [rx.state(), tx.state()], maxSizes: [rx.maxSize, tx.maxSize], features: ctx.features.toString(),
      tapFd: this.tap.fd, tapName: this.tap.name, notifiers: [notifiers[RXQ] as number, notifiers[TXQ] as number],
      irq: ctx.irq, counters: this.counters, lease: this.lease.words, gen,
    };
    this.thread.load(HANDLER, req).catch((e: unknown) => {
      if (this.remote === ctx && this.lease.generation === gen) ctx.interrupt.fail(`iothread: ${(e as Error).message}`);
    });
  }

  /** The iothread's view of the queues (indices it holds, what the rings say, a frame waiting): QMP x-query-net-metrics. */
  async inspect(): Promise<unknown> {
    if (!this.remote) return { serving: false };
    const req: NetIoRequest = { op: 'inspect', key: this.key };
    return await this.thread.load(HANDLER, req);
  }

  /** A notification that reached the main thread (a QueueNotify write the ioeventfds did not match): pass it on. */
  override notify(index: number): void {
    const fd = this.remote?.notifiers[index];
    if (fd !== undefined) EventFd.borrow(fd).write();
  }

  override get isPolling(): boolean {
    return this.remote !== null;
  }

  override attach(): void {
    throw new Error('a NIC on an iothread cannot be hot-replaced');
  }

  override detach(): string | undefined {
    throw new Error('a NIC on an iothread cannot be hot-replaced');
  }

  /** The queues' indices live in the iothread: a snapshot would save stale ones. */
  override snapshotBlocker(): string | null {
    return 'its queues are served on an iothread (iothread=): a snapshot needs NICs without one';
  }

  override reset(): void {
    if (!this.remote) return;
    this.remote = null;
    // the driver frees its rings once this returns: wait until the iothread no longer uses them
    if (!this.thread.revoke(HANDLER, this.key, this.lease)) {
      log.warn(`${this.key}: the iothread did not acknowledge the reset within ${IoThreadLease.WAIT_MS} ms (its callbacks for the old rings are off)`);
    }
    try {
      this.tap.setOffload(0);
    } catch (e) {
      log.warn(`${this.tap.name}: ${(e as Error).message}`);
    }
  }

  override close(): void {
    this.reset();
    this.thread.off('message', this.onMessage);
    this.tap.close();
  }
}
