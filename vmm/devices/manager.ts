// The device manager (Firecracker's device_manager shape): owns the PIO and MMIO buses, the
// virtio-mmio slot and GSI allocators, each slot's DSDT entry, and reset / close of every device.
// The Machine only asks it to dispatch exits and to describe the devices to the guest.
import * as aml from '../boot/aml.js';
import { Bus, type BusDevice } from '../bus/bus.js';
import { EPOLLIN } from '../io/epoll.js';
import { EventFd } from '../io/eventfd.js';
import type { Poller } from '../io/poller.js';
import type { VmFd } from '../kvm/kvm.js';
import { logger } from '../log.js';
import { FOUR_GIB, MMIO_HOLE_START, type GuestMemory } from '../memory/guest-memory.js';
import type { VirtioDevice } from '../virtio/device.js';
import { MMIO_WINDOW, MmioTransport, REG } from '../virtio/mmio.js';
import { isSnapshottable, type Snapshottable } from './snapshot.js';

const log = logger('devices');

/** virtio-mmio slots start at the bottom of the 32-bit MMIO hole, one 4 KiB window each. */
export const VIRTIO_MMIO_BASE = MMIO_HOLE_START;
/** The guidebook's limit for x86_64. */
export const MAX_VIRTIO_SLOTS = 16;
/**
 * IOAPIC pins for virtio slots: 4 is the serial port, 16 the ACPI GED; 0–3, 8 and 12 stay with
 * the PIT, keyboard, cascade, COM2, RTC and mouse a guest may still probe. Exactly 16 remain.
 */
export const VIRTIO_GSIS: readonly number[] = [5, 6, 7, 9, 10, 11, 13, 14, 15, 17, 18, 19, 20, 21, 22, 23];
/** The part of the window Linux maps (registers + config space); the DSDT announces this much. */
const ANNOUNCED_WINDOW = 0x200;

/** KVM memory slots of device memory (virtio-pmem) count from here; guest RAM uses 0 and 1. */
export const DEVICE_MEMORY_FIRST_SLOT = 8;
/**
 * Device memory windows are 2 MiB-aligned in address and size: huge-page friendly, and Linux maps
 * a pmem range as ZONE_DEVICE pages, which needs (sub)section alignment (2 MiB on x86_64).
 */
export const DEVICE_MEMORY_ALIGN = 2 << 20;
/** Device memory starts at the first 1 GiB boundary above RAM (and above 4 GiB). */
const DEVICE_MEMORY_BASE_ALIGN = 1 << 30;

/** Host memory a device maps into guest-physical space (a KVM slot of its own, outside GuestMemory). */
export interface DeviceMemoryRegion {
  /** the device's id */
  id: string;
  slot: number;
  guestBase: number;
  /** bytes, a multiple of DEVICE_MEMORY_ALIGN */
  size: number;
  hostAddr: bigint;
  /** KVM_MEM_READONLY: guest writes exit as MMIO writes (and are ignored) */
  readOnly: boolean;
}

export interface VirtioSlot {
  index: number;
  id: string;
  base: number;
  gsi: number;
  device: VirtioDevice;
  transport: MmioTransport;
  /** one per queue: KVM signals it when the guest writes the queue's index to QueueNotify */
  notifiers: EventFd[];
  irq: SlotIrq;
}

/**
 * A slot's interrupt line, edge-triggered: an irqfd once the KVM VM exists (one eventfd write per
 * interrupt, from any thread, no ioctl), a KVM_IRQ_LINE pulse before that.
 */
export class SlotIrq {
  private efd: EventFd | null = null;
  constructor(readonly gsi: number, private readonly line: (level: boolean) => void) {}

  trigger(): void {
    if (this.efd) {
      this.efd.write();
      return;
    }
    this.line(true);
    this.line(false);
  }

  /** The irqfd (the same eventfd for every VM the machine builds), or null before the first. */
  get fd(): number | null {
    return this.efd?.fd ?? null;
  }

  /** Binds the line's eventfd to the GSI of `vm` (each VM the machine builds). */
  attach(vm: VmFd): void {
    this.efd ??= EventFd.create();
    vm.registerIrqfd(this.efd.fd, this.gsi);
  }

  close(): void {
    this.efd?.close();
    this.efd = null;
  }
}

export class DeviceError extends Error {
  constructor(msg: string) {
    super(msg);
    this.name = 'DeviceError';
  }
}

export class DeviceManager {
  readonly pio = new Bus('pio');
  readonly mmio = new Bus('mmio');
  private readonly virtio: VirtioSlot[] = [];
  private readonly devMem: DeviceMemoryRegion[] = [];
  /** PIO devices with state worth a snapshot (serial, i8042, ...), in the order they were added */
  private readonly legacy: Array<{ id: string; dev: Snapshottable }> = [];

  /** `irq(gsi)` returns the function that drives that interrupt line. */
  constructor(private readonly mem: GuestMemory, private readonly irq: (gsi: number) => (level: boolean) => void) {}

  /** Guest RAM (devices that act on it directly, e.g. the balloon). */
  get memory(): GuestMemory {
    return this.mem;
  }

  addPio(base: number, len: number, dev: BusDevice, name: string): void {
    this.pio.insert(base, len, dev, name);
    if (isSnapshottable(dev)) this.legacy.push({ id: name, dev });
  }

  // ---- snapshots: every device's state, legacy ones first, then the virtio slots in order ----

  /** Each stateful device's id and model, in the order of saveStates() (the manifest's device list). */
  snapshotDevices(): Array<{ id: string; kind: string }> {
    return [
      ...this.legacy.map((l) => ({ id: l.id, kind: l.dev.snapshotKind })),
      ...this.virtio.map((s) => ({ id: s.id, kind: `virtio-mmio:${s.device.deviceType}` })),
    ];
  }

  /** Why the devices cannot be snapshotted now (every reason), or [] . */
  snapshotBlockers(): string[] {
    const out: string[] = [];
    for (const l of this.legacy) {
      const why = l.dev.snapshotBlocker?.();
      if (why) out.push(`${l.id}: ${why}`);
    }
    for (const s of this.virtio) {
      const why = s.device.snapshotBlocker?.();
      if (why) out.push(`${s.id}: ${why}`);
    }
    return out;
  }

  /** Every device's state (vCPUs parked; the main thread does all device work, so none runs meanwhile). */
  saveStates(): Buffer[] {
    const blockers = this.snapshotBlockers();
    if (blockers.length) throw new DeviceError(`cannot snapshot: ${blockers.join('; ')}`);
    return [...this.legacy.map((l) => l.dev.saveState()), ...this.virtio.map((s) => s.transport.saveState())];
  }

  /**
   * Applies saved states, in snapshotDevices() order, to the devices of a VM built for a restore
   * (notifiers attached, vCPUs not started); then every live queue is served once, since the
   * driver will not notify again for what it queued before the snapshot.
   */
  restoreStates(states: readonly Buffer[]): void {
    const n = this.legacy.length + this.virtio.length;
    if (states.length !== n) throw new DeviceError(`${states.length} device states for ${n} devices`);
    this.legacy.forEach((l, i) => l.dev.restoreState(states[i] as Buffer));
    this.virtio.forEach((s, i) => s.transport.restoreState(states[this.legacy.length + i] as Buffer));
    for (const s of this.virtio) if (s.transport.isActive) s.transport.kickAll();
  }

  /** Gives a virtio device the next slot: MMIO window, GSI, transport. */
  addVirtio(id: string, device: VirtioDevice): VirtioSlot {
    if (this.virtio.length >= MAX_VIRTIO_SLOTS) throw new DeviceError(`too many virtio devices: at most ${MAX_VIRTIO_SLOTS}`);
    if (this.virtio.some((s) => s.id === id)) throw new DeviceError(`device id '${id}' is already in use`);
    const index = this.virtio.length;
    const base = VIRTIO_MMIO_BASE + index * MMIO_WINDOW;
    const gsi = VIRTIO_GSIS[index] as number;
    const irq = new SlotIrq(gsi, this.irq(gsi));
    const transport = new MmioTransport(device, this.mem, () => irq.trigger(), id);
    this.mmio.insert(base, MMIO_WINDOW, transport, id);
    const slot = { index, id, base, gsi, device, transport, notifiers: [], irq };
    this.virtio.push(slot);
    log.debug(`${id}: virtio type ${device.deviceType} at 0x${base.toString(16)}, GSI ${gsi}`);
    return slot;
  }

  /**
   * Gives a device a window of guest-physical address space above RAM for `hostAddr` (a mapping
   * of at least `size` bytes the device owns): 2 MiB-aligned, one after the other, each in its own
   * KVM slot, registered by the Machine when it builds the VM. GuestMemory does not cover these
   * windows, so virtqueue buffers cannot point into them.
   */
  addDeviceMemory(id: string, size: number, hostAddr: bigint, readOnly: boolean): DeviceMemoryRegion {
    if (!Number.isSafeInteger(size) || size <= 0 || size % DEVICE_MEMORY_ALIGN) {
      throw new DeviceError(`${id}: device memory size ${size} is not a positive multiple of ${DEVICE_MEMORY_ALIGN}`);
    }
    const last = this.devMem[this.devMem.length - 1];
    const base = last ? last.guestBase + last.size : alignUp(Math.max(FOUR_GIB, this.ramEnd()), DEVICE_MEMORY_BASE_ALIGN);
    const r: DeviceMemoryRegion = { id, slot: DEVICE_MEMORY_FIRST_SLOT + this.devMem.length, guestBase: base, size, hostAddr, readOnly };
    this.devMem.push(r);
    log.debug(`${id}: device memory at 0x${base.toString(16)}+0x${size.toString(16)} (slot ${r.slot}${readOnly ? ', read-only' : ''})`);
    return r;
  }

  /** Device memory windows, for KVM_SET_USER_MEMORY_REGION. */
  get deviceMemory(): readonly DeviceMemoryRegion[] {
    return this.devMem;
  }

  private ramEnd(): number {
    return Math.max(...this.mem.regions.map((r) => r.guestBase + r.size));
  }

  get slots(): readonly VirtioSlot[] {
    return this.virtio;
  }

  slot(id: string): VirtioSlot | undefined {
    return this.virtio.find((s) => s.id === id);
  }

  /** The virtio slots' InterruptStatus words, for the vCPU threads to serve (cpu/protocol.ts). */
  fastInterruptRegisters(): Array<{ base: number; status: SharedArrayBuffer }> {
    return this.virtio.map((s) => ({ base: s.base, status: s.transport.interruptWord.buffer as SharedArrayBuffer }));
  }

  /** Guest-physical address of a slot's QueueNotify register (for ioeventfds). */
  static notifyAddress(slot: VirtioSlot): number {
    return slot.base + REG.QUEUE_NOTIFY;
  }

  /**
   * One DSDT Device per slot, as QEMU's microvm does: _HID "LNRO0005" (virtio-mmio), the window
   * and an edge-triggered interrupt (virtio/mmio.ts says why edge). Linux's virtio_mmio driver binds to these through ACPI.
   */
  acpiDevices(): number[][] {
    return this.virtio.map((s) => aml.device(`VR${s.index.toString(16).toUpperCase().padStart(2, '0')}`, [
      aml.name('_HID', aml.string('LNRO0005')),
      aml.name('_UID', aml.integer(s.index)),
      aml.name('_CCA', aml.integer(1)),
      aml.name('_CRS', aml.buffer(aml.resourceTemplate([aml.memory32Fixed(s.base, ANNOUNCED_WINDOW), aml.extendedInterrupt(s.gsi, true)]))),
    ]));
  }

  /**
   * Queue notifications without exits: an ioeventfd per queue on the slot's QueueNotify register
   * (datamatch = the queue index), watched by `poller`; a wake-up runs the device's queue on the
   * main thread. Without this every notification would be an MMIO exit handed from the vCPU
   * worker to the main thread (~0.9 ms in the lab). Called for each KVM VM the machine builds
   * (a reset rebuilds it); the eventfds are made once, at the first call, which is during init.
   */
  attachNotifiers(vm: VmFd, poller: Poller): void {
    for (const s of this.virtio) {
      if (s.notifiers.length === 0) {
        s.notifiers = s.transport.queues.map((_, i) => {
          const efd = EventFd.create();
          // a device on an iothread waits on its eventfds there
          if (!s.device.ownsNotifiers) {
            poller.add(efd.fd, EPOLLIN, () => {
              if (efd.read() !== null) s.transport.notify(i);
            });
          }
          return efd;
        });
        s.transport.notifierFds = s.notifiers.map((e) => e.fd);
      }
      s.notifiers.forEach((efd, i) => vm.registerIoeventfd(efd.fd, DeviceManager.notifyAddress(s), 4, i));
      s.irq.attach(vm);
      s.transport.irqFd = s.irq.fd;
    }
    this.poller = poller;
  }

  private poller: Poller | null = null;

  /** Host set-up of every device that has some (listening sockets), in slot order; before the VM runs. */
  async start(): Promise<void> {
    for (const s of this.virtio) await s.device.start?.();
  }

  /**
   * Waits until no device has a request running elsewhere (VirtioDevice.quiesce), all at once:
   * while one drive drained, another may have started requests (a notification still queued, a
   * rate limiter's retry), so it looks again until a pass finds none.
   */
  async quiesce(): Promise<void> {
    do await Promise.all(this.virtio.map((s) => s.device.quiesce?.()));
    while (this.virtio.some((s) => (s.device.pendingRequests?.() ?? 0) > 0));
  }

  /** Machine reset: every transport back to its power-on state. */
  reset(): void {
    for (const s of this.virtio) s.transport.reset();
  }

  close(): void {
    for (const s of this.virtio) {
      // the device first: one served on an iothread stops there (reset waits for it) before the
      // eventfds it writes (its irqfd, its own kick) are closed and their numbers can be reused
      try {
        s.transport.reset();
        s.device.close?.();
      } catch (e) {
        log.warn(`${s.id}: close: ${(e as Error).message}`);
      }
      for (const efd of s.notifiers) {
        if (!s.device.ownsNotifiers) this.poller?.remove(efd.fd);
        efd.close();
      }
      s.notifiers = [];
      s.irq.close();
    }
  }
}

function alignUp(n: number, a: number): number {
  return Math.ceil(n / a) * a;
}
