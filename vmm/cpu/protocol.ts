// Shared-memory protocol between the main thread and a vCPU worker.
// ctrl is an Int32Array over a SharedArrayBuffer, one per vCPU.
export const CTRL_REQ = 0; // 1: an IO/MMIO exit waits for the main thread (worker sleeps on it)
export const CTRL_PAUSE = 1; // 1: park before the next KVM_RUN
export const CTRL_STOP = 2; // 1: leave the run loop and end the thread
export const CTRL_STATE = 3; // 0 running, 1 parked, 2 stopped
export const CTRL_WORDS = 8;

/**
 * A virtio-mmio slot whose interrupt registers the vCPU thread serves itself: the InterruptStatus
 * word (a SharedArrayBuffer the transport updates with Atomics) at `base`.
 */
export interface FastInterruptRegisters {
  base: number;
  status: SharedArrayBuffer;
}
/** Offsets of InterruptStatus and InterruptACK in a virtio-mmio window (virtio/mmio.ts REG). */
export const FAST_STATUS_OFFSET = 0x60;
export const FAST_ACK_OFFSET = 0x64;

export interface WorkerInit {
  id: number;
  fd: number;
  runAddr: bigint;
  runSize: number;
  ctrl: SharedArrayBuffer;
  fastMmio: FastInterruptRegisters[];
}

export type WorkerMessage =
  | { t: 'ready'; tid: number }
  | { t: 'exit' } // IO/MMIO exit: details are in kvm_run
  | { t: 'parked' }
  | { t: 'shutdown' } // KVM_EXIT_SHUTDOWN (triple fault)
  | { t: 'system-event'; type: number }
  | { t: 'hlt' }
  | { t: 'fatal'; reason: number; detail: string }
  | { t: 'stopped' };
