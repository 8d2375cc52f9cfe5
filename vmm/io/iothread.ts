// Iothreads: worker threads that block in epoll_pwait over device fds (ioeventfd queue
// notifications, taps, irqfd resample fds) and run the device's queue handler right there, so a
// guest's QueueNotify write -> ioeventfd -> handler -> used ring -> irqfd write never touches the
// main thread (where each wake-up waits for a pass of the event loop, which also serves QMP, the
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
import { logger, logShared } from '../log.js';
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
 * The main thread's hold on what an iothread serves for one device, in two shared words: [0] the
 * last request the iothread acknowledged, [1] the current activation's generation.
 *
 * grant() starts an activation; the iothread runs that activation's callbacks only while
 * `leaseHeld(words, gen)` (its generation is still the current one). revoke() ends it: the
 * generation moves on at once (so the iothread stops at its next callback even when its
 * acknowledgement comes late, and an activation queued behind never serves), then the main
 * thread posts the stop request numbered `seq` and blocks in Atomics.wait until the iothread
 * acknowledges that number, or `ms` pass (a stuck iothread cannot hang the VMM). For a driver
 * reset: the driver frees its rings as soon as its Status write returns.
 */
export class IoThreadLease {
  /** how long revoke() waits by default */
  static readonly WAIT_MS = 2000;
  readonly words = new Int32Array(new SharedArrayBuffer(8));
  private seq = 0;

  /** A new activation; returns its generation. */
  grant(): number {
    return Atomics.add(this.words, 1, 1) + 1;
  }

  get generation(): number {
    return Atomics.load(this.words, 1);
  }

  /**
   * Ends the current activation: `post(seq)` sends the stop request (false: it could not, e.g. the
   * iothread has stopped, so there is nothing to wait for). True once acknowledged; false after `ms`.
   */
  revoke(post: (seq: number) => boolean, ms = IoThreadLease.WAIT_MS): boolean {
    Atomics.add(this.words, 1, 1);
    const seq = ++this.seq;
    if (!post(seq)) return true;
    const end = Date.now() + ms;
    for (;;) {
      const acked = Atomics.load(this.words, 0);
      if (acked >= seq) return true;
      const left = end - Date.now();
      if (left <= 0) return false;
      Atomics.wait(this.words, 0, acked, left);
    }
  }
}

/** In the iothread: is activation `gen` still the current one? */
export function leaseHeld(words: Int32Array, gen: number): boolean {
  return Atomics.load(words, 1) === gen;
}

/** In the iothread: stop request `seq` is done (requests come in order, so the numbers only grow). */
export function acknowledge(words: Int32Array, seq: number): void {
  Atomics.store(words, 0, seq);
  Atomics.notify(words, 0);
}

/** What every device handler on an iothread is asked, besides its own requests. */
export type LeasedRequest =
  | { op: 'preload' }
  | { op: 'deactivate'; key: string; lease: Int32Array; seq: number }
  | { op: 'activate'; key: string; lease: Int32Array; gen: number };

/**
 * The part of a device handler's setup() that is the same for every device: `preload` (the
 * import during init: a later one would need openat, which the seccomp filter refuses),
 * `deactivate` (stop, and acknowledge even when stopping throws, or the main thread would wait
 * out its bound), and for `activate` stopping a previous activation and refusing one already
 * revoked (a reset came before this request). Returns the reply, or `held` and the request to activate.
 */
export function leaseStep<R extends LeasedRequest>(req: R, stop: (key: string) => boolean): { reply: unknown } | { held: () => boolean; activation: Extract<R, { op: 'activate' }> } {
  if (req.op === 'preload') return { reply: { loaded: true } };
  if (req.op === 'deactivate') {
    try {
      return { reply: { stopped: stop(req.key) } };
    } finally {
      acknowledge(req.lease, req.seq);
    }
  }
  stop(req.key);
  const { lease, gen } = req;
  const held = (): boolean => leaseHeld(lease, gen);
  return held() ? { held, activation: req as Extract<R, { op: 'activate' }> } : { reply: { serving: false } };
}

/**
 * The IoLoop as one activation sees it: every callback registered through it runs only while
 * `held()` is true, so a revoked activation does nothing more even before its fds are removed.
 * A skipped level-triggered fd fires again at once: the loop spins on it only until the
 * deactivate that follows every revoke (already posted, with the control eventfd written) removes it.
 */
export function gatedLoop(loop: IoLoop, held: () => boolean): { add(fd: number, events: number, cb: IoCallback): void; remove(fd: number, cb?: IoCallback): boolean } {
  const gated = new Map<IoCallback, IoCallback>();
  return {
    add(fd, events, cb) {
      const g: IoCallback = (e) => {
        if (held()) cb(e);
      };
      gated.set(cb, g);
      loop.add(fd, events, g);
    },
    remove(fd, cb) {
      if (cb === undefined) return loop.remove(fd);
      const g = gated.get(cb);
      gated.delete(cb);
      return g ? loop.remove(fd, g) : false;
    },
  };
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
export interface IoThreadInit { name: string; stopFd: number; controlFd: number; log: ReturnType<typeof logShared> }

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
    const init: IoThreadInit & { port: unknown } = { name, stopFd: stopFd.fd, controlFd: controlFd.fd, log: logShared(), port: port2 };
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
   * Ends `key`'s activation in the handler module `handler`: revokes `lease`, posts the
   * LeasedRequest "deactivate" and waits for its acknowledgement (IoThreadLease.revoke). True once
   * acknowledged, or at once when this iothread has stopped (nothing runs there any more); false
   * when the acknowledgement did not come in time.
   */
  revoke(handler: URL, key: string, lease: IoThreadLease): boolean {
    return lease.revoke((seq) => {
      if (this.stopped) return false;
      const req: LeasedRequest = { op: 'deactivate', key, lease: lease.words, seq };
      this.load(handler, req).catch((e: unknown) => log.warn(`${key}: iothread deactivate: ${(e as Error).message}`));
      return true;
    });
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
