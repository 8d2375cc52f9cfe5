// Iothreads: worker threads that block in epoll_pwait over device fds (ioeventfd queue
// notifications, taps, irqfd resample fds) and run the device's queue handler right there, so a
// guest's QueueNotify write -> ioeventfd -> handler -> used ring -> irqfd write never touches the
// main thread (whose wake-ups go through the libuv threadpool, and which also serves QMP, the
// console and every vCPU exit).
//
//   worker side  IoLoop: a synchronous loop (plain koffi epoll_pwait, this thread blocks) with
//                add/modify/remove like the main Poller and stop() to return from run().
//   main side    IoThread: start(name) creates the worker (during init: no threads can be made
//                under the seccomp filter), load(module, data) runs a handler module in it,
//                stop() ends it (a stop eventfd, since a thread blocked in a native call cannot
//                be interrupted by Worker.terminate()).
//
// Handler modules (ESM, loaded in the worker with import()) export
//
//   export function setup(ctx: IoHandlerContext, data: unknown): unknown | Promise<unknown>
//
// which registers its fds on ctx.loop (callbacks run on the iothread, synchronously) and returns
// a structured-cloneable result that load() resolves with. `data` arrives by structured clone:
// fd numbers, SharedArrayBuffers (guest memory views are made in the worker with koffi.view from
// an address), IrqFdLine.shared(). ctx.post() sends a message to the main thread (IoThread's
// 'message' event); ctx.onStop() registers clean-up run before the thread ends.
//
// Control path: main posts on a private MessageChannel and writes a control eventfd; the worker's
// loop returns from epoll, takes the messages with receiveMessageOnPort (synchronous, so nothing
// depends on when Node delivers port messages), awaits each setup() (its import() needs the
// worker's event loop), then blocks again.
import { EventEmitter } from 'node:events';
import { resolve as resolvePath } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { MessageChannel, Worker, type MessagePort, type Transferable } from 'node:worker_threads';
import { logger } from '../log.js';
import { EpollSet, type IoCallback } from './epoll.js';
import { EventFd } from './eventfd.js';

const log = logger('iothread');
const WORKER_URL = new URL('./iothread-worker.js', import.meta.url);

/** A synchronous epoll loop for the thread that calls run() (an iothread). */
export class IoLoop {
  private readonly set = new EpollSet();
  private stopping = false;
  private running = false;

  /** `onError`: a callback threw (the loop goes on). */
  constructor(private readonly onError: (e: unknown, fd: number) => void = (e) => { throw e; }) {}

  get size(): number {
    return this.set.size;
  }

  /** Call `cb(events)` on this thread when `fd` is ready (see EpollSet.add). */
  add(fd: number, events: number, cb: IoCallback): void {
    this.set.add(fd, events, cb);
  }

  modify(fd: number, events: number, cb?: IoCallback): void {
    this.set.modify(fd, events, cb);
  }

  remove(fd: number, cb?: IoCallback): boolean {
    return this.set.remove(fd, cb);
  }

  /**
   * Block in epoll_pwait and run callbacks until one of them calls stop() (or `timeoutMs` passes
   * with nothing ready, when >= 0). Returns true when stopped, false on the timeout.
   */
  run(timeoutMs = -1): boolean {
    if (this.running) throw new Error('IoLoop.run() is already running');
    this.running = true;
    this.stopping = false;
    try {
      while (!this.stopping) {
        const n = this.set.waitSync(timeoutMs);
        if (n === 0 && timeoutMs >= 0) return false;
        this.set.dispatch(n, this.onError);
      }
      return true;
    } finally {
      this.running = false;
    }
  }

  /** Make run() return after the current callbacks (call it from a callback). */
  stop(): void {
    this.stopping = true;
  }

  close(): void {
    this.set.close();
  }
}

/**
 * A synchronous hand-back from an iothread: the main thread posts a request and blocks in
 * Atomics.wait until the iothread calls `acknowledge(ack.word)` (or until `ms` pass, so a stuck
 * iothread cannot hang the VMM). For a driver reset: the driver frees its rings as soon as its
 * Status write returns, so the iothread must have stopped touching them before that.
 */
export class IoThreadAck {
  /** how long waitAfter() waits by default */
  static readonly WAIT_MS = 2000;
  readonly word = new Int32Array(new SharedArrayBuffer(4));

  /** Runs `post` (which leads the iothread to acknowledge) and waits; false when `ms` passed first. */
  waitAfter(post: () => void, ms = IoThreadAck.WAIT_MS): boolean {
    const seen = Atomics.load(this.word, 0);
    post();
    return Atomics.wait(this.word, 0, seen, ms) !== 'timed-out';
  }
}

/** The iothread's side of IoThreadAck: wakes the main thread's wait. */
export function acknowledge(word: Int32Array): void {
  Atomics.add(word, 0, 1);
  Atomics.notify(word, 0);
}

/** What a handler module's setup() gets. */
export interface IoHandlerContext {
  /** the iothread's name (IoThread.start) */
  readonly name: string;
  /** register fds here; callbacks run on the iothread */
  readonly loop: IoLoop;
  /** a message to the main thread (IoThread emits 'message') */
  post(message: unknown, transfer?: readonly Transferable[]): void;
  /** run `fn` when the iothread stops (before its fds and loop are closed) */
  onStop(fn: () => void): void;
}

/** A handler module's export. */
export type IoHandlerSetup = (ctx: IoHandlerContext, data: unknown) => unknown | Promise<unknown>;

/** main -> worker, on the private channel */
export type IoThreadRequest = { t: 'load'; id: number; module: string; data: unknown };
/** worker -> main */
export type IoThreadReply =
  | { t: 'ready'; tid: number }
  | { t: 'loaded'; id: number; result: unknown }
  | { t: 'failed'; id: number; error: string }
  | { t: 'message'; data: unknown }
  | { t: 'error'; error: string }
  | { t: 'stopped' };
export interface IoThreadInit { name: string; stopFd: number; controlFd: number }

/**
 * An iothread seen from the main thread. Events: 'message' (what handlers post), 'error' is not
 * emitted: handler errors are logged (io: iothread) and counted in `errors`.
 */
export class IoThread extends EventEmitter {
  /** the worker's kernel thread id (for logs, affinity, query-iothreads) */
  tid = 0;
  /** callbacks that threw on the iothread */
  errors = 0;
  private readonly pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();
  private nextId = 1;
  private stopped = false;
  private readonly exited: Promise<void>;

  private constructor(
    readonly name: string,
    private readonly worker: Worker,
    private readonly port: MessagePort,
    private readonly stopFd: EventFd,
    private readonly controlFd: EventFd,
  ) {
    super();
    this.exited = new Promise((r) => worker.once('exit', () => r()));
    worker.on('message', (m: IoThreadReply) => this.reply(m));
    worker.on('error', (e) => {
      this.errors++;
      log.error(`iothread ${name}: ${e.stack ?? e}`);
    });
    void this.exited.then(() => {
      for (const p of this.pending.values()) p.reject(new Error(`iothread ${name} exited`));
      this.pending.clear();
    });
  }

  /** Start the worker; resolves once its loop is running. Call during init. */
  static async start(name: string): Promise<IoThread> {
    const stopFd = EventFd.create();
    const controlFd = EventFd.create();
    const { port1, port2 } = new MessageChannel();
    const init: IoThreadInit & { port: unknown } = { name, stopFd: stopFd.fd, controlFd: controlFd.fd, port: port2 };
    const worker = new Worker(fileURLToPath(WORKER_URL), { workerData: init, transferList: [port2], name: `iothread-${name}` });
    const t = new IoThread(name, worker, port1, stopFd, controlFd);
    await new Promise<void>((resolve, reject) => {
      const onMsg = (m: IoThreadReply): void => {
        if (m.t !== 'ready') return;
        worker.off('message', onMsg);
        worker.off('exit', onExit);
        t.tid = m.tid;
        resolve();
      };
      const onExit = (code: number): void => reject(new Error(`iothread ${name} exited during start (${code})`));
      worker.on('message', onMsg);
      worker.once('exit', onExit);
    });
    return t;
  }

  /**
   * Import `module` (a file URL or path of an ESM module exporting `setup`) in the iothread and
   * call setup(ctx, data) there; resolves with what it returned, rejects with its error.
   */
  load(module: string | URL, data?: unknown, transfer: readonly Transferable[] = []): Promise<unknown> {
    if (this.stopped) return Promise.reject(new Error(`iothread ${this.name} stopped`));
    const id = this.nextId++;
    const url = module instanceof URL ? module.href : module.startsWith('file:') ? module : pathToFileURL(resolvePath(module)).href;
    const p = new Promise<unknown>((resolve, reject) => this.pending.set(id, { resolve, reject }));
    const req: IoThreadRequest = { t: 'load', id, module: url, data };
    this.port.postMessage(req, transfer);
    this.controlFd.write();
    return p;
  }

  /**
   * Stop the loop (handlers' onStop run in the worker), wait for the thread to end; after
   * `timeoutMs` it is terminated (only works if it is running JavaScript, not blocked).
   */
  async stop(timeoutMs = 2000): Promise<void> {
    if (!this.stopped) {
      this.stopped = true;
      this.stopFd.write();
    }
    let timer: NodeJS.Timeout | undefined;
    const timedOut = await Promise.race([
      this.exited.then(() => false),
      new Promise<boolean>((r) => { timer = setTimeout(() => r(true), timeoutMs); }),
    ]);
    clearTimeout(timer);
    if (timedOut) {
      // terminate() only takes effect when the thread runs JavaScript: one stuck in a native call
      // never ends, and waiting for it would hang the caller
      log.warn(`iothread ${this.name} did not stop in ${timeoutMs} ms: terminating it`);
      await Promise.race([this.worker.terminate(), new Promise((r) => setTimeout(r, timeoutMs).unref())]);
    }
    this.port.close();
    this.stopFd.close();
    this.controlFd.close();
  }

  private reply(m: IoThreadReply): void {
    switch (m.t) {
      case 'loaded':
      case 'failed': {
        const p = this.pending.get(m.id);
        this.pending.delete(m.id);
        if (m.t === 'loaded') p?.resolve(m.result);
        else p?.reject(new Error(m.error));
        break;
      }
      case 'message':
        this.emit('message', m.data);
        break;
      case 'error':
        this.errors++;
        log.error(`iothread ${this.name}: ${m.error}`);
        break;
      case 'ready':
      case 'stopped':
        break;
    }
  }
}
