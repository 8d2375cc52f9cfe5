// libuv's poll handle (uv_poll_t) on the main thread's own event loop, called through koffi from
// the symbols the node binary exports for native addons (uv_poll_init, uv_poll_start, ...).
//
// Why: Node watches sockets, pipes and files, but not an arbitrary fd (an eventfd, an epoll
// fd, a tap). A uv_poll_t makes libuv's own epoll wake the main thread when such a fd is
// ready, with no threadpool thread in between (io/poller.ts used to wait in epoll_pwait on the
// threadpool: a hand-off to a pool thread and back on every wake-up).
//
// Only on the main thread: uv_default_loop() is the main thread's loop; a worker's loop is not
// reachable from here (iothreads block in epoll_pwait themselves: io/iothread.ts).
//
// libuv calls the registered callbacks outside Node's own callback machinery. A promise settled
// from the close callback was seen to wait until the loop ran dry ('beforeExit'), and a throw
// there would unwind into libuv. So the raw callbacks only schedule the caller's function with
// setImmediate, which runs inside a proper Node callback scope, in the same loop iteration for a
// poll (the check phase comes right after the poll phase). Level-triggered: the next poll phase
// reports the fd again if it is still ready then.
import { isMainThread } from 'node:worker_threads';
import koffi from 'koffi';
import { SysError } from '../kvm/sys.js';

// uv.h (libuv 1.x, as linked into node): uv_handle_type UV_POLL (checked below against the
// linked libuv's own name for it), uv_poll_event UV_READABLE
const UV_POLL = 8;
const UV_READABLE = 1;

const self = koffi.load(null);
const PollCb = koffi.proto('void capsule_uv_poll_cb(void *handle, int status, int events)');
const CloseCb = koffi.proto('void capsule_uv_close_cb(void *handle)');
const uvDefaultLoop = self.func('void *uv_default_loop()') as () => unknown;
const uvHandleSize = self.func('size_t uv_handle_size(int type)') as (type: number) => number | bigint;
const uvPollInit = self.func('int uv_poll_init(void *loop, void *handle, int fd)') as (loop: unknown, h: unknown, fd: number) => number;
const uvPollStart = self.func('int uv_poll_start(void *handle, int events, capsule_uv_poll_cb *cb)') as (h: unknown, events: number, cb: unknown) => number;
const uvPollStop = self.func('int uv_poll_stop(void *handle)') as (h: unknown) => number;
const uvClose = self.func('void uv_close(void *handle, capsule_uv_close_cb *cb)') as (h: unknown, cb: unknown) => void;

const uvHandleTypeName = self.func('const char *uv_handle_type_name(int type)') as (type: number) => string | null;

if (uvHandleTypeName(UV_POLL) !== 'poll') throw new Error(`libuv's handle type ${UV_POLL} is ${uvHandleTypeName(UV_POLL)}, not poll: uv.h changed`);
const HANDLE_SIZE = Number(uvHandleSize(UV_POLL));

/** Open handles by address: one registered callback pair serves them all (koffi trampolines are a scarce resource). */
const open = new Map<bigint, UvPoll>();
let pollCb: unknown = null;
let closeCb: unknown = null;

function callbacks(): { poll: unknown; close: unknown } {
  if (!pollCb) {
    pollCb = koffi.register((h: unknown, status: number) => open.get(koffi.address(h))?.fired(status), koffi.pointer(PollCb));
    closeCb = koffi.register((h: unknown) => open.get(koffi.address(h))?.closed(), koffi.pointer(CloseCb));
  }
  return { poll: pollCb, close: closeCb };
}

/** A libuv error (a negative errno) as an Error naming `what`. */
const uvError = (what: string, status: number): SysError => new SysError(what, -status);

/**
 * A uv_poll_t on `fd` (which stays the caller's to close, after close() resolved). `ready(status)`
 * runs on the main thread whenever the fd is readable while started; `status` < 0 is a libuv
 * error (libuv's UV_EBADF for POLLERR on the fd; libuv has then stopped the handle).
 */
export class UvPoll {
  private readonly handle: unknown;
  private readonly addr: bigint;
  private started = false;
  private scheduled = false;
  private closing: Promise<void> | null = null;
  private onClosed: (() => void) | null = null;
  private lastStatus = 0;

  constructor(readonly fd: number, private readonly ready: (status: number) => void) {
    if (!isMainThread) throw new Error('UvPoll runs on the main thread only (uv_default_loop)');
    this.handle = koffi.alloc('uint8_t', HANDLE_SIZE);
    this.addr = koffi.address(this.handle);
    const r = uvPollInit(uvDefaultLoop(), this.handle, fd);
    if (r < 0) {
      koffi.free(this.handle);
      throw uvError(`uv_poll_init(fd ${fd})`, r);
    }
    open.set(this.addr, this);
  }

  /** True while libuv watches the fd (an active handle keeps the event loop alive). */
  get active(): boolean {
    return this.started;
  }

  /** Watch for readability (idempotent). */
  start(): void {
    if (this.started || this.closing) return;
    const r = uvPollStart(this.handle, UV_READABLE, callbacks().poll);
    if (r < 0) throw uvError('uv_poll_start', r);
    this.started = true;
  }

  /** Stop watching (idempotent); a wake-up already scheduled still runs `ready`. */
  stop(): void {
    if (!this.started) return;
    uvPollStop(this.handle);
    this.started = false;
  }

  /** Stop and release the handle; resolves once libuv let go of it (its close callback ran). */
  close(): Promise<void> {
    if (this.closing) return this.closing;
    this.stop();
    this.closing = new Promise<void>((r) => { this.onClosed = r; });
    uvClose(this.handle, callbacks().close);
    return this.closing;
  }

  /** @internal from the registered poll callback */
  fired(status: number): void {
    // never throw into libuv: only schedule; several firings before the check phase run `ready` once
    this.lastStatus = status;
    if (this.scheduled) return;
    this.scheduled = true;
    setImmediate(() => {
      this.scheduled = false;
      if (!this.closing) this.ready(this.lastStatus);
    });
  }

  /** @internal from the registered close callback */
  closed(): void {
    open.delete(this.addr);
    koffi.free(this.handle);
    // settled from an immediate, like `ready`: a promise settled here would wait for another callback
    const settle = this.onClosed;
    this.onClosed = null;
    if (settle) setImmediate(settle);
  }
}
