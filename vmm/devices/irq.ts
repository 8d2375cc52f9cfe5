// Interrupt lines for devices: one interface, two ways to drive a GSI of the in-kernel irqchip.
//
//   KvmLineIrq  KVM_IRQ_LINE ioctl on the VM fd: what the legacy devices use (serial, GED). An
//               ioctl per change, from the thread that holds the VmFd (the main thread).
//   IrqFdLine   an eventfd bound to the GSI with KVM_IRQFD: raising it is an 8-byte write to
//               that eventfd, from any thread (a device's iothread or a vCPU worker), with no
//               ioctl and no exit; the kernel injects the interrupt.
//
// Edge or level for virtio-mmio on the x86 IOAPIC (IrqFdLine's two modes):
//
// - Firecracker: edge. Its virtio-mmio devices get an irqfd without resample, the DSDT declares
//   them `Interrupt(ResourceConsumer, Edge, ActiveHigh, Exclusive)`, and IrqTrigger sets a bit
//   in an atomic interrupt-status word and writes the eventfd on every used-ring update.
// - QEMU microvm: level. virtio-mmio's IRQ follows `InterruptStatus != 0` (qemu_set_irq) and the
//   DSDT says `Level, ActiveHigh`; with the in-kernel irqchip it is a KVM_IRQ_LINE ioctl from
//   QEMU's main loop, and irqfd+resample is QEMU's way to do the same for assigned devices' INTx.
// - Cloud Hypervisor has no virtio-mmio on x86 (virtio-pci with MSI-X, which is edge by nature).
//
// Capsule uses edge (`IrqFdLine.create(vm, gsi)`) for virtio-mmio, as Firecracker. An edge costs
// one eventfd write and nothing else. Level with KVM_IRQFD_FLAG_RESAMPLE costs, per interrupt, a
// resample eventfd signal at the guest's EOI that userspace must read and answer (one more
// poller/iothread wake-up) even when nothing is pending. Edge is safe here because Linux's
// virtio-mmio handler (vm_interrupt) reads InterruptStatus, writes it back to InterruptACK and
// then services every queue, so one interrupt covers all work that came before it, and the device
// raises a new edge for every used-ring update that needs a notification (never "only on a 0 ->
// non-zero status change"): an edge that arrives while the guest is in the handler is latched by
// the LAPIC (IRR) and delivered after EOI. Requirements that come with it: the line's ACPI
// Interrupt descriptor must say Edge/ActiveHigh, and the line cannot be shared.
//
// Level mode (`{ level: true }`) is kept for what needs it (a shared line, a device model that
// keeps its line high until acknowledged): KVM holds the line asserted until the guest EOIs it,
// then lowers it and signals the resample eventfd; onResample() re-asserts while the status word
// is non-zero. Whoever polls the resample fd (the main Poller or an iothread's IoLoop) calls
// onResample(); watchResample() does that registration.
//
// The virtio-mmio interrupt handler costs two MMIO exits per interrupt (InterruptStatus read,
// InterruptACK write). `status` is therefore an Int32Array on a SharedArrayBuffer that can be the
// transport's InterruptStatus register itself, so a later step can serve those two registers on
// the vCPU thread (Atomics.load / Atomics.and) without a main-thread round trip.
import { KVM_CAP_IRQFD_RESAMPLE } from '../kvm/ioctls.js';
import type { VmFd } from '../kvm/kvm.js';
import { EPOLLIN } from '../io/epoll.js';
import { EventFd } from '../io/eventfd.js';

/** An interrupt line into the guest. */
export interface IrqLine {
  /** The GSI (IOAPIC pin; 0-15 are also the PIC's IRQs). */
  readonly gsi: number;
  /** Edge: raise one interrupt now (whatever the level was). */
  trigger(): void;
  /** Drive the line's level (a rising level raises an interrupt on an edge line). */
  set(level: boolean): void;
}

/** KVM_IRQ_LINE on the VM fd. Main thread only (it needs the VmFd). */
export class KvmLineIrq implements IrqLine {
  /** `vm` may be a getter: the machine rebuilds its VmFd on a reset. */
  constructor(private readonly vm: VmFd | (() => VmFd | null), readonly gsi: number) {}

  private fd(): VmFd | null {
    return typeof this.vm === 'function' ? this.vm() : this.vm;
  }

  /** A pulse (assert + deassert), as KVM itself does for an irqfd without resample. */
  trigger(): void {
    const vm = this.fd();
    vm?.setIrqLine(this.gsi, true);
    vm?.setIrqLine(this.gsi, false);
  }

  set(level: boolean): void {
    this.fd()?.setIrqLine(this.gsi, level);
  }
}

/** What a worker needs to drive an IrqFdLine created on the main thread (structured-cloneable). */
export interface IrqFdLineShared {
  gsi: number;
  fd: number;
  resampleFd: number | null;
  /** Int32Array over a SharedArrayBuffer: word 0 is the level / interrupt status */
  status: Int32Array;
}

/** Anything that calls back when a fd is readable: the main Poller, an iothread's IoLoop. */
export interface FdWatcher {
  add(fd: number, events: number, cb: (events: number) => void): void;
  remove(fd: number, cb?: (events: number) => void): boolean;
}

export interface IrqFdLineOptions {
  /** level-triggered (KVM_IRQFD_FLAG_RESAMPLE); default edge */
  level?: boolean;
  /**
   * The status word (index 0 of an Int32Array on a SharedArrayBuffer): non-zero means an
   * interrupt is pending. Default: a word of its own. A virtio-mmio transport passes its
   * InterruptStatus word, sets bits with Atomics.or and calls trigger(); the guest's ACK clears
   * them (Atomics.and), and in level mode the line is re-asserted while any bit is left.
   */
  status?: Int32Array;
}

/** An eventfd bound to a GSI with KVM_IRQFD. */
export class IrqFdLine implements IrqLine {
  readonly mode: 'edge' | 'level';
  private resampleCb: ((events: number) => void) | null = null;
  private watcher: FdWatcher | null = null;

  private constructor(
    readonly gsi: number,
    readonly eventFd: EventFd,
    readonly resample: EventFd | null,
    readonly status: Int32Array,
    private readonly vm: VmFd | null,
  ) {
    this.mode = resample ? 'level' : 'edge';
  }

  /**
   * Create the eventfd(s) and bind them to `gsi` (KVM_IRQFD). Needs the in-kernel irqchip
   * (KVM_CREATE_IRQCHIP) first; level mode needs KVM_CAP_IRQFD_RESAMPLE.
   */
  static create(vm: VmFd, gsi: number, opts: IrqFdLineOptions = {}): IrqFdLine {
    const status = opts.status ?? new Int32Array(new SharedArrayBuffer(4));
    if (!(status.buffer instanceof SharedArrayBuffer) || status.length < 1) throw new TypeError('status must be an Int32Array on a SharedArrayBuffer');
    if (opts.level && vm.kvm.checkExtension(KVM_CAP_IRQFD_RESAMPLE) <= 0) throw new Error('KVM lacks KVM_CAP_IRQFD_RESAMPLE: no level-triggered irqfd');
    const fd = EventFd.create();
    const resample = opts.level ? EventFd.create() : null;
    try {
      vm.registerIrqfd(fd.fd, gsi, resample?.fd);
    } catch (e) {
      fd.close();
      resample?.close();
      throw e;
    }
    return new IrqFdLine(gsi, fd, resample, status, vm);
  }

  /** A line driven from a worker: same fds and status word, owned by the main thread's line. */
  static fromShared(s: IrqFdLineShared): IrqFdLine {
    return new IrqFdLine(s.gsi, EventFd.borrow(s.fd), s.resampleFd === null ? null : EventFd.borrow(s.resampleFd), s.status, null);
  }

  /** For postMessage to a worker (fd numbers and the shared status word). */
  shared(): IrqFdLineShared {
    return { gsi: this.gsi, fd: this.eventFd.fd, resampleFd: this.resample?.fd ?? null, status: this.status };
  }

  /**
   * Raise an interrupt: one eventfd write. Edge: KVM pulses the line. Level: KVM asserts it until
   * the guest's EOI (then onResample() decides by the status word).
   */
  trigger(): void {
    this.eventFd.write();
  }

  /**
   * Set the level in the status word (0 or 1: for a line that owns its word; a shared
   * InterruptStatus is driven with Atomics and trigger()). Edge: a 0 -> 1 change raises an
   * interrupt, 1 -> 1 does not. Level: true (re)asserts the line; false only records it, KVM
   * lowers the line at the guest's EOI and onResample() then leaves it low.
   */
  set(level: boolean): void {
    const old = Atomics.exchange(this.status, 0, level ? 1 : 0);
    if (!level) return;
    if (this.mode === 'level' || old === 0) this.eventFd.write();
  }

  /** The guest EOI'd a level line: drain the resample eventfd, re-assert if still pending. */
  onResample(): void {
    if (!this.resample) return;
    this.resample.read();
    if (Atomics.load(this.status, 0) !== 0) this.eventFd.write();
  }

  /** Call onResample() from `watcher` (a Poller or IoLoop on the thread that should do it). */
  watchResample(watcher: FdWatcher): void {
    if (!this.resample) return;
    this.unwatchResample();
    this.resampleCb = () => this.onResample();
    this.watcher = watcher;
    watcher.add(this.resample.fd, EPOLLIN, this.resampleCb);
  }

  unwatchResample(): void {
    if (this.resample && this.watcher && this.resampleCb) this.watcher.remove(this.resample.fd, this.resampleCb);
    this.watcher = null;
    this.resampleCb = null;
  }

  /**
   * The owning (main-thread) line: unbind from KVM (KVM_IRQFD deassign; ignored if the VM is
   * already gone) and close the eventfds. A borrowed line (fromShared) only stops watching.
   */
  close(): void {
    this.unwatchResample();
    if (!this.vm) return;
    try {
      this.vm.unregisterIrqfd(this.eventFd.fd, this.gsi);
    } catch { /* VM closed, or never bound */ }
    this.eventFd.close();
    this.resample?.close();
  }
}
