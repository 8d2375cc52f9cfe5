// vCPU thread: a blocking KVM_RUN loop. IO and MMIO exits are handed to the main thread (which
// owns the devices) through kvm_run itself: post 'exit', sleep on ctrl[REQ] until it is served.
// Pause: the main thread sets ctrl[PAUSE] and immediate_exit and sends SIGUSR2 to this thread;
// KVM_RUN returns EINTR and the loop parks on ctrl[PAUSE].
import { parentPort, workerData } from 'node:worker_threads';
import { KVM_RUN } from '../kvm/ioctls.js';
import { EXIT, RUN } from '../kvm/layout.js';
import { EAGAIN, EINTR, errno, gettid, ioctlInt, view } from '../kvm/sys.js';
import { CTRL_PAUSE, CTRL_REQ, CTRL_STATE, CTRL_STOP, FAST_ACK_OFFSET, FAST_STATUS_OFFSET, type WorkerInit, type WorkerMessage } from './protocol.js';

const init = workerData as WorkerInit;
const port = parentPort;
if (!port) throw new Error('vcpu-worker must run as a worker thread');
const ctrl = new Int32Array(init.ctrl);
const run = new DataView(view(init.runAddr, init.runSize));
const post = (m: WorkerMessage): void => port.postMessage(m);

// virtio-mmio InterruptStatus / InterruptACK, served here: the guest's interrupt handler touches
// both on every interrupt, and handing each to the main thread costs ~0.9 ms in the lab.
const fast = init.fastMmio.map((f) => ({ base: f.base, status: new Int32Array(f.status) }));

/** Serves an MMIO exit on this thread if it is one of the fast registers; false otherwise. */
function serveFastMmio(): boolean {
  if (fast.length === 0 || run.getUint32(RUN.mmioLen, true) !== 4) return false;
  const addr = Number(run.getBigUint64(RUN.mmioPhysAddr, true));
  for (const f of fast) {
    const off = addr - f.base;
    if (off === FAST_STATUS_OFFSET && !run.getUint8(RUN.mmioIsWrite)) {
      run.setUint32(RUN.mmioData, Atomics.load(f.status, 0) >>> 0, true);
      return true;
    }
    if (off === FAST_ACK_OFFSET && run.getUint8(RUN.mmioIsWrite)) {
      Atomics.and(f.status, 0, ~run.getUint32(RUN.mmioData, true));
      return true;
    }
  }
  return false;
}

/** The main thread serves the exit described in kvm_run; this thread sleeps until it is done. */
function handOver(): void {
  Atomics.store(ctrl, CTRL_REQ, 1);
  post({ t: 'exit' });
  while (Atomics.load(ctrl, CTRL_REQ) === 1) Atomics.wait(ctrl, CTRL_REQ, 1);
}

function parkUntil(cond: () => boolean): void {
  while (!cond()) {
    const p = Atomics.load(ctrl, CTRL_PAUSE);
    Atomics.wait(ctrl, CTRL_PAUSE, p, 1000);
  }
}

function waitStop(): void {
  Atomics.store(ctrl, CTRL_STATE, 1);
  while (!Atomics.load(ctrl, CTRL_STOP)) Atomics.wait(ctrl, CTRL_PAUSE, Atomics.load(ctrl, CTRL_PAUSE), 1000);
}

/**
 * Completes the last IO/MMIO exit's instruction before parking: KVM finishes it only on the next
 * KVM_RUN, and with immediate_exit that run returns EINTR without entering the guest. Finishing
 * it may need another exit first (an MMIO access split across pages, a 16-byte one): KVM then
 * returns 0 with that exit, which is served like any other before trying again. A snapshot taken
 * while parked holds the state between two instructions.
 */
function settle(): void {
  for (let i = 0; i < 64; i++) {
    run.setUint8(RUN.immediateExit, 1);
    const r = ioctlInt(init.fd, KVM_RUN, 0);
    run.setUint8(RUN.immediateExit, 0);
    if (r < 0) return;
    const reason = run.getUint32(RUN.exitReason, true);
    if (reason === EXIT.MMIO) {
      if (!serveFastMmio()) handOver();
    } else if (reason === EXIT.IO) {
      handOver();
    } else {
      return; // not an access to finish; the run loop meets it again after the pause
    }
  }
}

post({ t: 'ready', tid: gettid() });

loop: for (;;) {
  if (Atomics.load(ctrl, CTRL_STOP)) break;
  if (Atomics.load(ctrl, CTRL_PAUSE)) {
    settle();
    Atomics.store(ctrl, CTRL_STATE, 1);
    post({ t: 'parked' });
    parkUntil(() => !Atomics.load(ctrl, CTRL_PAUSE) || Atomics.load(ctrl, CTRL_STOP) !== 0);
    Atomics.store(ctrl, CTRL_STATE, 0);
    continue;
  }
  const r = ioctlInt(init.fd, KVM_RUN, 0);
  if (r < 0) {
    const e = errno();
    if (e === EINTR || e === EAGAIN) {
      run.setUint8(RUN.immediateExit, 0);
      continue;
    }
    post({ t: 'fatal', reason: -1, detail: `KVM_RUN failed: errno ${e}` });
    waitStop();
    break;
  }
  const reason = run.getUint32(RUN.exitReason, true);
  switch (reason) {
    case EXIT.MMIO:
      // the virtio interrupt registers are served here; any other MMIO access is the main thread's
      if (!serveFastMmio()) handOver();
      break;
    case EXIT.IO:
      handOver();
      break;
    case EXIT.INTR:
      run.setUint8(RUN.immediateExit, 0);
      break;
    case EXIT.HLT:
      post({ t: 'hlt' });
      waitStop();
      break loop;
    case EXIT.SHUTDOWN:
      post({ t: 'shutdown' });
      waitStop();
      break loop;
    case EXIT.SYSTEM_EVENT:
      post({ t: 'system-event', type: run.getUint32(RUN.systemEventType, true) });
      waitStop();
      break loop;
    case EXIT.IRQ_WINDOW_OPEN:
      break;
    default: {
      const extra = reason === EXIT.INTERNAL_ERROR ? ` suberror ${run.getUint32(RUN.internalSuberror, true)}`
        : reason === EXIT.FAIL_ENTRY ? ` hw reason 0x${run.getBigUint64(RUN.failEntryReason, true).toString(16)}` : '';
      post({ t: 'fatal', reason, detail: `unhandled exit reason ${reason}${extra}` });
      waitStop();
      break loop;
    }
  }
}
Atomics.store(ctrl, CTRL_STATE, 2);
post({ t: 'stopped' });
