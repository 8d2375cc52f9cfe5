// What a virtio device implements; the transport (mmio.ts) owns registers, feature negotiation,
// the status machine, queues and interrupts, and calls the device at the few points it matters.
import type { GuestMemory } from '../memory/guest-memory.js';
import type { Queue } from './queue.js';

/** How a device tells the driver something happened. */
export interface VirtioInterrupt {
  /** buffers were added to queue `index`'s used ring (sent only if the driver wants it) */
  signalUsed(index: number): void;
  /**
   * used-ring interrupt for queue `index` whose EVENT_IDX / NO_INTERRUPT check was already made
   * elsewhere (vhost's call eventfd: the kernel checked before signalling)
   */
  raiseUsed?(index: number): void;
  /** the device's configuration space changed */
  signalConfig(): void;
  /** the device cannot go on (a broken ring): DEVICE_NEEDS_RESET + config interrupt */
  fail(reason: string): void;
}

/** Handed to the device when the driver sets DRIVER_OK. */
export interface ActivateContext {
  mem: GuestMemory;
  queues: Queue[];
  /** features the driver accepted (device bits and transport bits) */
  features: bigint;
  interrupt: VirtioInterrupt;
  /**
   * The queues' notification eventfds (ioeventfds), for a device that serves its queues on its
   * own thread (`ownsNotifiers`); empty otherwise (the main Poller calls notify()).
   */
  notifiers: number[];
  /**
   * The slot's interrupt line as a thread other than the main one drives it: InterruptStatus (set
   * INT_USED_RING with Atomics.or) and the irqfd to write after it. Present once the KVM VM exists.
   * A device that serves its queues on an iothread raises its own interrupts with it.
   */
  irq?: { status: Int32Array; fd: number };
}

export interface VirtioDevice {
  /** virtio device ID (constants.ts DEVICE_ID) */
  readonly deviceType: number;
  /** maximum size of each queue; the length is the number of queues */
  readonly queueSizes: readonly number[];
  /** device-specific feature bits offered (the transport adds VERSION_1, INDIRECT_DESC, EVENT_IDX) */
  readonly features: bigint;
  /** device configuration space, at offset 0x100 of the transport */
  readConfig(offset: number, data: Uint8Array): void;
  writeConfig(offset: number, data: Uint8Array): void;
  activate(ctx: ActivateContext): void;
  /** the driver notified queue `index` (an ioeventfd wake-up or a QueueNotify write) */
  notify(index: number): void;
  /** back to the state before activation (the driver wrote 0 to Status) */
  reset(): void;
  /** host set-up that must be done before the VM runs, e.g. listening on a socket (DeviceManager.start()) */
  start?(): Promise<void>;
  /**
   * The device waits on its queues' ioeventfds itself (an iothread), so the main Poller must not:
   * they come in ActivateContext.notifiers.
   */
  readonly ownsNotifiers?: boolean;
  /**
   * Resolves once no request the device accepted is still running elsewhere (virtio-blk's
   * threadpool I/O): a snapshot, a machine reset and a hot-unplug wait for it.
   */
  quiesce?(): Promise<void>;
  /** requests accepted and still running elsewhere (what quiesce() waits for) */
  pendingRequests?(): number;
  /** release host resources (files, sockets) when the VMM exits or the device is removed */
  close?(): void;
  // ---- snapshots (devices/snapshot.ts); the transport saves the queues and negotiation itself ----
  /** why the device cannot be snapshotted now (its rings are not the main thread's), or null */
  snapshotBlocker?(): string | null;
  /** device-specific state beyond the transport's (config values, host-side bookkeeping) */
  saveState?(): Buffer;
  /** applied before the device is activated again with its restored queues */
  restoreState?(state: Buffer): void;
  /** after a restore re-activated the device: tell the driver what a copy of the VM must know (vsock: transport reset) */
  restored?(): void;
}

/** Config space helper: read `data.length` bytes at `offset` of `space`, zero past its end. */
export function readConfigBytes(space: Uint8Array, offset: number, data: Uint8Array): void {
  data.fill(0);
  if (offset < 0 || offset >= space.length) return;
  data.set(space.subarray(offset, Math.min(space.length, offset + data.length)));
}
