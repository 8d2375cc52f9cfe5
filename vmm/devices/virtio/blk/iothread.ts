// virtio-blk bound to an iothread (-drive …,iothread=ID): the transport and the configuration
// stay on the main thread (this device), the queue is served in the iothread
// (iothread-handler.ts), woken directly by the queue's ioeventfd. The iothread raises the
// interrupts itself once the KVM VM exists (the transport's InterruptStatus word and the slot's
// irqfd, ActivateContext.irq); without one (unit tests) they come back as messages.
import { IoThreadLease, type IoThread } from '../../../io/iothread.js';
import { logger } from '../../../log.js';
import type { ActivateContext, VirtioDevice } from '../../../virtio/device.js';
import { EventFd } from '../../../io/eventfd.js';
import type { BlkBackend } from './device.js';
import { VirtioBlk } from './device.js';
import type { BlkIoMessage, BlkIoRequest } from './iothread-handler.js';

const log = logger('blk');
const HANDLER = new URL('./iothread-handler.js', import.meta.url);

export class IoThreadBlk implements VirtioDevice {
  readonly ownsNotifiers = true;
  private readonly inner: VirtioBlk;
  private ctx: ActivateContext | null = null;
  /** which activation the iothread may serve (net/iothread.ts explains) */
  private readonly lease = new IoThreadLease();
  private readonly onMessage = (m: BlkIoMessage): void => {
    if (m?.key !== this.key || m.gen !== this.lease.generation || !this.ctx) return;
    if (m.t === 'irq') this.ctx.interrupt.raiseUsed?.(0);
    else this.ctx.interrupt.fail(m.reason);
  };

  constructor(private readonly backend: BlkBackend, private readonly thread: IoThread, private readonly key: string) {
    this.inner = new VirtioBlk(backend);
    thread.on('message', this.onMessage);
  }

  get deviceType(): number { return this.inner.deviceType; }
  get queueSizes(): readonly number[] { return this.inner.queueSizes; }
  get features(): bigint { return this.inner.features; }
  get metrics(): VirtioBlk['metrics'] { return this.inner.metrics; }
  readConfig(offset: number, data: Uint8Array): void { this.inner.readConfig(offset, data); }
  writeConfig(): void {}

  /**
   * During init (DeviceManager.start): load the handler module into the iothread now. The guest's
   * driver activates the device after the seccomp filter is on, and importing a module then would
   * need to open its file.
   */
  async start(): Promise<void> {
    const req: BlkIoRequest = { op: 'preload' };
    await this.thread.load(HANDLER, req);
  }

  activate(ctx: ActivateContext): void {
    const q = ctx.queues[0];
    const notifyFd = ctx.notifiers[0];
    if (!q || notifyFd === undefined) throw new Error('virtio-blk on an iothread needs its queue ioeventfd');
    this.ctx = ctx;
    const gen = this.lease.grant();
    const req: BlkIoRequest = {
      op: 'activate', key: this.key, hostAddr: ctx.mem.hostAddr, memSize: ctx.mem.totalSize, queue: q.state(), maxSize: q.maxSize,
      features: ctx.features.toString(), backend: { ...this.backend.opts, fd: this.backend.fd }, notifyFd, irq: ctx.irq ?? null,
      lease: this.lease.words, gen,
    };
    this.thread.load(HANDLER, req).catch((e: unknown) => {
      if (this.ctx === ctx && this.lease.generation === gen) ctx.interrupt.fail(`iothread: ${(e as Error).message}`);
    });
  }

  /** The queue's indices live in the iothread: a snapshot would save stale ones. */
  snapshotBlocker(): string | null {
    return 'its queue is served on an iothread (iothread=): a snapshot needs drives without one';
  }

  /** A notification that reached the main thread (a QueueNotify write the ioeventfd did not match): pass it on. */
  notify(): void {
    const fd = this.ctx?.notifiers[0];
    if (fd !== undefined) EventFd.borrow(fd).write();
  }

  /**
   * Revokes the iothread's service and waits until it acknowledges (as net/iothread.ts does): the
   * driver frees the ring once its Status write returns, and a request finishing in the worker
   * after that would write into freed guest memory. Bounded, so a stuck iothread cannot hang us.
   */
  reset(): void {
    if (!this.ctx) return;
    this.ctx = null;
    if (!this.thread.revoke(HANDLER, this.key, this.lease)) {
      // a request still inside preadv/pwritev there completes into the old ring; nothing after it runs
      log.warn(`${this.key}: the iothread did not acknowledge the reset within ${IoThreadLease.WAIT_MS} ms`);
    }
  }

  close(): void {
    this.thread.off('message', this.onMessage);
    this.inner.close();
  }
}
