// The vCPU threads, seen from the main thread: start, serve exits, pause (kick + park), resume, stop.
import { Worker } from 'node:worker_threads';
import { fileURLToPath } from 'node:url';
import type { VcpuFd } from '../kvm/kvm.js';
import { RUN } from '../kvm/layout.js';
import { SIGUSR2, tgkill } from '../kvm/sys.js';
import { logger } from '../log.js';
import { CTRL_PAUSE, CTRL_REQ, CTRL_STOP, CTRL_WORDS, type FastInterruptRegisters, type WorkerInit, type WorkerMessage } from './protocol.js';

const log = logger('vcpu');
const WORKER_URL = new URL('./vcpu-worker.js', import.meta.url);

export interface VcpuEvents {
  /** serve an IO/MMIO exit described in the vCPU's kvm_run */
  onExit(vcpu: VcpuFd): void;
  onShutdown(vcpu: number): void; // triple fault
  onSystemEvent(vcpu: number, type: number): void;
  onFatal(vcpu: number, detail: string): void;
}

let sigusr2Installed = false;
function installKickHandler(): void {
  if (sigusr2Installed) return;
  // A JS handler makes libuv install a real signal handler: the signal then interrupts KVM_RUN
  // (EINTR) in the thread it is sent to instead of killing the process.
  process.on('SIGUSR2', () => {});
  sigusr2Installed = true;
}

class VcpuThread {
  readonly ctrl: Int32Array;
  readonly worker: Worker;
  tid = 0;
  ready: Promise<void>;
  parked = false;
  stopped: Promise<void>;
  private parkWaiters: Array<() => void> = [];

  constructor(readonly vcpu: VcpuFd, private readonly ev: VcpuEvents, fastMmio: FastInterruptRegisters[], paused: boolean) {
    const sab = new SharedArrayBuffer(CTRL_WORDS * 4);
    this.ctrl = new Int32Array(sab);
    // a restored machine starts parked: its guest must not run before the caller resumes it
    if (paused) Atomics.store(this.ctrl, CTRL_PAUSE, 1);
    const init: WorkerInit = { id: vcpu.id, fd: vcpu.fd, runAddr: vcpu.runAddr, runSize: vcpu.runSize, ctrl: sab, fastMmio };
    this.worker = new Worker(fileURLToPath(WORKER_URL), { workerData: init, name: `vcpu${vcpu.id}` });
    let readyResolve!: () => void;
    this.ready = new Promise((r) => (readyResolve = r));
    this.stopped = new Promise((resolve) => this.worker.once('exit', () => resolve()));
    this.worker.on('message', (m: WorkerMessage) => {
      switch (m.t) {
        case 'exit':
          try {
            this.ev.onExit(this.vcpu);
          } catch (e) {
            log.error(`vcpu${vcpu.id}: device error: ${(e as Error).stack ?? e}`);
          }
          Atomics.store(this.ctrl, CTRL_REQ, 0);
          Atomics.notify(this.ctrl, CTRL_REQ);
          break;
        case 'ready':
          this.tid = m.tid;
          readyResolve();
          break;
        case 'parked':
          this.parked = true;
          for (const w of this.parkWaiters.splice(0)) w();
          break;
        case 'shutdown':
          this.ev.onShutdown(vcpu.id);
          break;
        case 'system-event':
          this.ev.onSystemEvent(vcpu.id, m.type);
          break;
        case 'hlt':
          log.warn(`vcpu${vcpu.id}: HLT exit (unexpected with the in-kernel irqchip)`);
          break;
        case 'fatal':
          this.ev.onFatal(vcpu.id, m.detail);
          break;
        case 'stopped':
          break;
      }
    });
    this.worker.on('error', (e) => this.ev.onFatal(vcpu.id, `worker error: ${e.stack ?? e}`));
  }

  kick(): void {
    this.vcpu.runView.setUint8(RUN.immediateExit, 1);
    if (this.tid) {
      try {
        tgkill(process.pid, this.tid, SIGUSR2);
      } catch (e) {
        log.debug(`kick vcpu${this.vcpu.id}: ${(e as Error).message}`);
      }
    }
  }

  pause(): Promise<void> {
    Atomics.store(this.ctrl, CTRL_PAUSE, 1);
    if (this.parked) return Promise.resolve();
    const p = new Promise<void>((r) => this.parkWaiters.push(r));
    this.kick();
    return p;
  }

  resume(): void {
    this.parked = false;
    Atomics.store(this.ctrl, CTRL_PAUSE, 0);
    Atomics.notify(this.ctrl, CTRL_PAUSE);
  }

  stop(): void {
    Atomics.store(this.ctrl, CTRL_STOP, 1);
    Atomics.notify(this.ctrl, CTRL_PAUSE);
    // an exit being served must not hold the thread
    Atomics.store(this.ctrl, CTRL_REQ, 0);
    Atomics.notify(this.ctrl, CTRL_REQ);
    this.kick();
  }
}

export class VcpuThreads {
  private threads: VcpuThread[] = [];

  constructor(private readonly ev: VcpuEvents) {
    installKickHandler();
  }

  /** `fastMmio`: virtio interrupt registers the threads serve without the main thread */
  async start(vcpus: VcpuFd[], fastMmio: FastInterruptRegisters[] = [], opts: { paused?: boolean } = {}): Promise<void> {
    const paused = opts.paused ?? false;
    this.threads = vcpus.map((v) => new VcpuThread(v, this.ev, fastMmio, paused));
    await Promise.all(this.threads.map((t) => t.ready));
    // parked before any KVM_RUN into the guest (the worker checks CTRL_PAUSE first)
    if (paused) await this.pause();
  }

  async pause(): Promise<void> {
    await Promise.all(this.threads.map((t) => t.pause()));
  }

  resume(): void {
    for (const t of this.threads) t.resume();
  }

  tids(): number[] {
    return this.threads.map((t) => t.tid);
  }

  /** Stop all threads; resolves when they are gone (forcibly terminated after `timeoutMs`). */
  async stop(timeoutMs = 2000): Promise<void> {
    for (const t of this.threads) t.stop();
    const all = Promise.all(this.threads.map((t) => t.stopped));
    const timer = new Promise<'timeout'>((r) => setTimeout(() => r('timeout'), timeoutMs).unref());
    if ((await Promise.race([all, timer])) === 'timeout') {
      log.warn('vCPU threads did not stop in time: terminating them');
      for (const t of this.threads) t.kick();
      await Promise.race([Promise.all(this.threads.map((t) => t.worker.terminate())), new Promise((r) => setTimeout(r, 1000).unref())]);
    }
    this.threads = [];
  }
}
