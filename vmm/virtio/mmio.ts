// virtio-mmio transport, version 2 (virtio 1.2, 4.2): the register window of one device slot.
// It owns feature negotiation, the status state machine, the queues' addresses and the interrupt
// status; the device only sees activate / notify / reset and its configuration space.
//
// Interrupts are edges (as Firecracker's virtio-mmio): each used-ring or config update the driver
// wants raises one (an irqfd write), and the DSDT describes the slot's GSI as edge, active high.
// Linux's handler reads InterruptStatus, acknowledges what it read and then serves every queue, so
// one edge covers all work before it, and an edge during the handler is latched by the LAPIC.
// InterruptStatus lives in a SharedArrayBuffer word so that the vCPU threads can serve the
// handler's two register accesses (status read, ACK write) themselves, without handing the exit
// to the main thread (cpu/vcpu-worker.ts); everyone updates it with Atomics.
import * as z from 'zod';
import type { BusDevice } from '../bus/bus.js';
import { decodeState, DeviceStateError, encodeState, gpa, u16, u32, u64Text, u8 } from '../devices/snapshot.js';
import type { GuestMemory } from '../memory/guest-memory.js';
import { logger } from '../log.js';
import { INT_CONFIG_CHANGE, INT_USED_RING, STATUS, TRANSPORT_FEATURES, F_RING_EVENT_IDX, F_RING_INDIRECT_DESC, F_VERSION_1 } from './constants.js';
import type { ActivateContext, VirtioDevice, VirtioInterrupt } from './device.js';
import { Queue, QueueBrokenError, type QueueState } from './queue.js';

const log = logger('virtio-mmio');

/** Register offsets (spec 4.2.2). */
export const REG = {
  MAGIC: 0x000, VERSION: 0x004, DEVICE_ID: 0x008, VENDOR_ID: 0x00c,
  DEVICE_FEATURES: 0x010, DEVICE_FEATURES_SEL: 0x014, DRIVER_FEATURES: 0x020, DRIVER_FEATURES_SEL: 0x024,
  QUEUE_SEL: 0x030, QUEUE_NUM_MAX: 0x034, QUEUE_NUM: 0x038, QUEUE_READY: 0x044, QUEUE_NOTIFY: 0x050,
  INTERRUPT_STATUS: 0x060, INTERRUPT_ACK: 0x064, STATUS: 0x070,
  QUEUE_DESC_LOW: 0x080, QUEUE_DESC_HIGH: 0x084, QUEUE_DRIVER_LOW: 0x090, QUEUE_DRIVER_HIGH: 0x094,
  QUEUE_DEVICE_LOW: 0x0a0, QUEUE_DEVICE_HIGH: 0x0a4, SHM_SEL: 0x0ac, SHM_LEN_LOW: 0x0b0, SHM_LEN_HIGH: 0x0b4,
  SHM_BASE_LOW: 0x0b8, SHM_BASE_HIGH: 0x0bc, CONFIG_GENERATION: 0x0fc, CONFIG: 0x100,
} as const;
/** Size of one slot's register window. */
export const MMIO_WINDOW = 0x1000;
const MAGIC = 0x74726976; // "virt"
/** Our virtio vendor ID ("CPSL" would not fit the spirit; any value works, QEMU uses 0x554d4551) */
export const VENDOR_ID = 0x4c535043;

export interface TransportState {
  status: number;
  driverFeatures: string;
  interruptStatus: number;
  configGeneration: number;
  queueSel: number;
  queues: QueueState[];
}

const QueueStateSchema = z.strictObject({
  size: z.number().int().min(1).max(32768), ready: z.boolean(), desc: gpa, avail: gpa, used: gpa,
  nextAvail: u16, nextUsed: u16, eventIdx: z.boolean(), indirect: z.boolean(), signalledUsed: u16.nullable(),
});
const TransportStateSchema = z.strictObject({
  status: u8, deviceFeaturesSel: u32, driverFeaturesSel: u32, driverFeatures: u64Text, queueSel: u32,
  interruptStatus: z.number().int().min(0).max(INT_USED_RING | INT_CONFIG_CHANGE), configGeneration: u32,
  queues: z.array(QueueStateSchema).max(64), device: z.base64().nullable(),
});

export interface TransportMetrics {
  /** register accesses that were not 32-bit wide or hit nothing */
  badAccesses: number;
  /** driver mistakes the transport refused (features, queue layout) */
  refused: number;
  interrupts: number;
  notifications: number;
}

export class MmioTransport implements BusDevice, VirtioInterrupt {
  readonly queues: Queue[];
  private status = 0;
  private deviceFeaturesSel = 0;
  private driverFeaturesSel = 0;
  private driverFeatures = 0n;
  private queueSel = 0;
  /** InterruptStatus, shared with the vCPU threads (see the header) */
  readonly interruptWord = new Int32Array(new SharedArrayBuffer(4));
  private configGeneration = 0;
  private activated = false;
  readonly metrics: TransportMetrics = { badAccesses: 0, refused: 0, interrupts: 0, notifications: 0 };
  /** the queues' ioeventfds (set by the device manager), handed to a device that owns them */
  notifierFds: number[] = [];
  /** the slot's irqfd once the KVM VM exists (set by the device manager), for a device that raises interrupts itself */
  irqFd: number | null = null;

  constructor(
    readonly device: VirtioDevice,
    private readonly mem: GuestMemory,
    /** raise one interrupt (an edge) on the slot's line */
    private readonly trigger: () => void,
    readonly name = `virtio-${device.deviceType}`,
  ) {
    this.queues = device.queueSizes.map((n) => new Queue(n));
  }

  get offeredFeatures(): bigint {
    return this.device.features | TRANSPORT_FEATURES;
  }

  get isActive(): boolean {
    return this.activated;
  }

  // ---- VirtioInterrupt: used by the device ----------------------------------------------------

  signalUsed(index: number): void {
    const q = this.queues[index];
    if (!q || !this.activated) return;
    if (!q.needsInterrupt(this.mem)) return;
    this.raise(INT_USED_RING);
  }

  raiseUsed(index: number): void {
    if (!this.activated || index >= this.queues.length) return;
    this.raise(INT_USED_RING);
  }

  signalConfig(): void {
    this.configGeneration = (this.configGeneration + 1) >>> 0;
    if (this.status & STATUS.DRIVER_OK) this.raise(INT_CONFIG_CHANGE);
  }

  fail(reason: string): void {
    if (this.status & STATUS.DEVICE_NEEDS_RESET) return;
    log.warn(`${this.name}: device needs reset: ${reason}`);
    this.status |= STATUS.DEVICE_NEEDS_RESET;
    this.signalConfig();
  }

  private raise(bit: number): void {
    Atomics.or(this.interruptWord, 0, bit);
    this.metrics.interrupts++;
    this.trigger();
  }

  /** Each queue's indices and what its ring says now (debugging a stalled device: QMP x-query-net-metrics). */
  queueViews(): Array<ReturnType<Queue['state']> & ReturnType<Queue['ringView']>> {
    return this.queues.map((q) => ({ ...q.state(), ...(q.ready ? q.ringView(this.mem) : { availIdx: 0, usedIdx: 0, usedEvent: 0, availEvent: 0 }) }));
  }

  /** A queue notification that did not come through the MMIO register (ioeventfd). */
  notify(index: number): void {
    if (!this.activated || index >= this.queues.length) return;
    if (this.status & STATUS.DEVICE_NEEDS_RESET) return;
    this.metrics.notifications++;
    try {
      this.device.notify(index);
    } catch (e) {
      if (e instanceof QueueBrokenError) this.fail(`queue ${index}: ${e.message}`);
      else throw e;
    }
  }

  // ---- BusDevice ------------------------------------------------------------------------------

  read(offset: number, data: Uint8Array): void {
    if (offset >= REG.CONFIG) {
      this.device.readConfig(offset - REG.CONFIG, data);
      return;
    }
    data.fill(0);
    if (data.length !== 4 || offset % 4) {
      this.metrics.badAccesses++;
      return;
    }
    new DataView(data.buffer, data.byteOffset, 4).setUint32(0, this.readRegister(offset), true);
  }

  write(offset: number, data: Uint8Array): void {
    if (offset >= REG.CONFIG) {
      // the driver may only write the config space between FEATURES_OK and a reset
      if (this.status & STATUS.DRIVER) this.device.writeConfig(offset - REG.CONFIG, data);
      return;
    }
    if (data.length !== 4 || offset % 4) {
      this.metrics.badAccesses++;
      return;
    }
    this.writeRegister(offset, new DataView(data.buffer, data.byteOffset, 4).getUint32(0, true));
  }

  private get selectedQueue(): Queue | undefined {
    return this.queues[this.queueSel];
  }

  private readRegister(offset: number): number {
    const q = this.selectedQueue;
    switch (offset) {
      case REG.MAGIC: return MAGIC;
      case REG.VERSION: return 2;
      case REG.DEVICE_ID: return this.device.deviceType;
      case REG.VENDOR_ID: return VENDOR_ID;
      case REG.DEVICE_FEATURES:
        return this.deviceFeaturesSel > 1 ? 0 : Number((this.offeredFeatures >> BigInt(32 * this.deviceFeaturesSel)) & 0xffff_ffffn);
      case REG.QUEUE_NUM_MAX: return q ? q.maxSize : 0;
      case REG.QUEUE_READY: return q?.ready ? 1 : 0;
      case REG.INTERRUPT_STATUS: return Atomics.load(this.interruptWord, 0) >>> 0;
      case REG.STATUS: return this.status;
      case REG.SHM_LEN_LOW: case REG.SHM_LEN_HIGH: return 0xffff_ffff; // no shared memory regions
      case REG.CONFIG_GENERATION: return this.configGeneration;
      default:
        this.metrics.badAccesses++;
        return 0;
    }
  }

  private writeRegister(offset: number, v: number): void {
    switch (offset) {
      case REG.DEVICE_FEATURES_SEL: this.deviceFeaturesSel = v; return;
      case REG.DRIVER_FEATURES_SEL: this.driverFeaturesSel = v; return;
      case REG.DRIVER_FEATURES: this.setDriverFeatures(v); return;
      case REG.QUEUE_SEL: this.queueSel = v; return;
      case REG.QUEUE_NOTIFY: this.notify(v); return;
      case REG.INTERRUPT_ACK:
        Atomics.and(this.interruptWord, 0, ~v);
        return;
      case REG.STATUS: this.setStatus(v); return;
      case REG.SHM_SEL: return;
      default: this.writeQueueRegister(offset, v);
    }
  }

  private setDriverFeatures(v: number): void {
    if (!(this.status & STATUS.DRIVER) || this.status & STATUS.FEATURES_OK || this.driverFeaturesSel > 1) {
      this.metrics.refused++;
      return;
    }
    const shift = BigInt(32 * this.driverFeaturesSel);
    this.driverFeatures = (this.driverFeatures & ~(0xffff_ffffn << shift)) | (BigInt(v >>> 0) << shift);
  }

  /** Queue layout registers: only while the queue is not ready and the device not live. */
  private writeQueueRegister(offset: number, v: number): void {
    const q = this.selectedQueue;
    if (!q || this.status & STATUS.DRIVER_OK || (q.ready && offset !== REG.QUEUE_READY)) {
      this.metrics.refused++;
      return;
    }
    const lo = (cur: number): number => Math.floor(cur / 2 ** 32) * 2 ** 32 + (v >>> 0);
    const hi = (cur: number): number => (v >>> 0) * 2 ** 32 + (cur % 2 ** 32);
    switch (offset) {
      case REG.QUEUE_NUM: q.size = v; return;
      case REG.QUEUE_READY: q.ready = v === 1; return;
      case REG.QUEUE_DESC_LOW: q.desc = lo(q.desc); return;
      case REG.QUEUE_DESC_HIGH: q.desc = hi(q.desc); return;
      case REG.QUEUE_DRIVER_LOW: q.avail = lo(q.avail); return;
      case REG.QUEUE_DRIVER_HIGH: q.avail = hi(q.avail); return;
      case REG.QUEUE_DEVICE_LOW: q.used = lo(q.used); return;
      case REG.QUEUE_DEVICE_HIGH: q.used = hi(q.used); return;
      default: this.metrics.badAccesses++;
    }
  }

  private setStatus(v: number): void {
    if (v === 0) {
      this.reset();
      return;
    }
    // bits only accumulate until a reset (spec 2.1.2); FAILED may be set at any time
    if ((v & this.status) !== this.status) {
      this.metrics.refused++;
      return;
    }
    const added = v & ~this.status;
    if (added & STATUS.FEATURES_OK && !this.featuresAcceptable()) {
      this.metrics.refused++;
      this.status = v & ~STATUS.FEATURES_OK; // the driver reads FEATURES_OK back and gives up
      return;
    }
    if (added & STATUS.DRIVER_OK) {
      if (!(this.status & STATUS.FEATURES_OK)) {
        this.metrics.refused++;
        return;
      }
      this.status = v;
      this.activate();
      return;
    }
    this.status = v;
  }

  private featuresAcceptable(): boolean {
    const f = this.driverFeatures;
    if ((f & ~this.offeredFeatures) !== 0n) return false;
    return (f & F_VERSION_1) !== 0n; // legacy (pre-1.0) drivers are not supported on version 2
  }

  private activateContext(): ActivateContext {
    return {
      mem: this.mem, queues: this.queues, features: this.driverFeatures, interrupt: this, notifiers: this.notifierFds,
      ...(this.irqFd === null ? {} : { irq: { status: this.interruptWord, fd: this.irqFd } }),
    };
  }

  private activate(): void {
    const ready = this.queues.filter((q) => q.ready);
    for (const [i, q] of this.queues.entries()) {
      const bad = q.validate(this.mem);
      if (bad) {
        this.fail(`queue ${i}: ${bad}`);
        return;
      }
    }
    if (ready.length === 0) {
      this.fail('no queue is ready');
      return;
    }
    for (const q of this.queues) {
      q.eventIdx = (this.driverFeatures & F_RING_EVENT_IDX) !== 0n;
      q.indirect = (this.driverFeatures & F_RING_INDIRECT_DESC) !== 0n;
    }
    try {
      this.device.activate(this.activateContext());
      this.activated = true;
    } catch (e) {
      this.fail(`activation failed: ${(e as Error).message}`);
    }
  }

  /** Driver reset (Status = 0) or machine reset. */
  reset(): void {
    if (this.activated || this.status) this.device.reset();
    this.activated = false;
    this.status = 0;
    this.deviceFeaturesSel = this.driverFeaturesSel = this.queueSel = 0;
    this.driverFeatures = 0n;
    Atomics.store(this.interruptWord, 0, 0);
    for (const q of this.queues) q.reset();
  }

  // ---- snapshots ------------------------------------------------------------------------------

  /** The registers, negotiation, queues and the device's own state (devices/snapshot.ts). */
  saveState(): Buffer {
    return encodeState({
      status: this.status, deviceFeaturesSel: this.deviceFeaturesSel, driverFeaturesSel: this.driverFeaturesSel,
      driverFeatures: this.driverFeatures.toString(), queueSel: this.queueSel, interruptStatus: Atomics.load(this.interruptWord, 0) >>> 0,
      configGeneration: this.configGeneration, queues: this.queues.map((q) => q.state()),
      device: this.device.saveState ? this.device.saveState().toString('base64') : null,
    });
  }

  /**
   * Applies saveState()'s bytes to this power-on transport: checked as the driver's own writes
   * would be (features offered, queue sizes and rings inside guest RAM), then a live device is
   * activated again on its restored queues, without the driver doing anything.
   */
  restoreState(bytes: Buffer): void {
    const what = this.name;
    const s = decodeState(bytes, TransportStateSchema, what);
    const bad = (m: string): never => {
      throw new DeviceStateError(`${what}: ${m}`);
    };
    if (s.queues.length !== this.queues.length) bad(`${s.queues.length} queues saved, the device has ${this.queues.length}`);
    if ((s.driverFeatures & ~this.offeredFeatures) !== 0n) bad(`driver features 0x${s.driverFeatures.toString(16)} include some never offered (0x${this.offeredFeatures.toString(16)})`);
    const live = (s.status & STATUS.DRIVER_OK) !== 0 && (s.status & (STATUS.DEVICE_NEEDS_RESET | STATUS.FAILED)) === 0;
    if (s.status & STATUS.DRIVER_OK && !(s.status & STATUS.FEATURES_OK)) bad('status has DRIVER_OK without FEATURES_OK');
    if ((s.device === null) !== (this.device.saveState === undefined)) bad(s.device === null ? 'device state is missing' : 'device state for a device that has none');
    s.queues.forEach((qs, i) => {
      const q = this.queues[i] as Queue;
      if ((qs.size & (qs.size - 1)) !== 0 || qs.size > q.maxSize) bad(`queue ${i}: size ${qs.size} (a power of two up to ${q.maxSize})`);
      q.restore(qs);
      const why = q.validate(this.mem);
      if (why) bad(`queue ${i}: ${why}`);
    });
    this.status = s.status;
    this.deviceFeaturesSel = s.deviceFeaturesSel;
    this.driverFeaturesSel = s.driverFeaturesSel;
    this.driverFeatures = s.driverFeatures;
    this.queueSel = s.queueSel;
    this.configGeneration = s.configGeneration;
    Atomics.store(this.interruptWord, 0, s.interruptStatus);
    if (s.device !== null) this.device.restoreState?.(Buffer.from(s.device, 'base64'));
    if (!live) return;
    if (!this.queues.some((q) => q.ready)) bad('live device with no ready queue');
    try {
      this.device.activate(this.activateContext());
    } catch (e) {
      bad(`activation failed: ${(e as Error).message}`);
    }
    this.activated = true;
    this.device.restored?.();
  }

  /** After a restore: serve whatever the driver queued before the snapshot (no notification will come for it). */
  kickAll(): void {
    this.queues.forEach((_, i) => this.notify(i));
  }

  state(): TransportState {
    return {
      status: this.status, driverFeatures: this.driverFeatures.toString(), interruptStatus: Atomics.load(this.interruptWord, 0) >>> 0,
      configGeneration: this.configGeneration, queueSel: this.queueSel, queues: this.queues.map((q) => q.state()),
    };
  }
}
