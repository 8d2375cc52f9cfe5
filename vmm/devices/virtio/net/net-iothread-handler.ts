// Runs in an iothread (io/iothread.ts loads it): serves a virtio-net device's two queues there
// (iothread.ts is the main thread's side). A VirtioNet over the same guest RAM
// (GuestMemory.attach) reads the tap when the IoLoop says it is readable and transmits when the
// tx ioeventfd fires; it raises interrupts itself: INT_USED_RING into the transport's shared
// InterruptStatus word, then the slot's irqfd (edge), after the EVENT_IDX check made here, where
// the used rings are written. The main thread hears from this side only when a ring broke.
//
// The iothread blocks in epoll_pwait and runs no event loop, so nothing here may wait on a
// timer, a promise or setImmediate: the tx batch limit yields by writing the tx ioeventfd.
import { EPOLLIN } from '../../../io/epoll.js';
import { EventFd } from '../../../io/eventfd.js';
import { gatedLoop, leaseStep, type IoHandlerContext, type LeasedRequest } from '../../../io/iothread.js';
import { GuestMemory } from '../../../memory/guest-memory.js';
import { INT_USED_RING } from '../../../virtio/constants.js';
import { Queue, QueueBrokenError, type QueueState } from '../../../virtio/queue.js';
import { RXQ, sharedNetMetrics, TXQ, VirtioNet } from './device.js';
import { FdBackend } from './tap.js';

export type NetIoRequest =
  // preload and deactivate, as every device handler on an iothread (io/iothread.ts leaseStep)
  | Exclude<LeasedRequest, { op: 'activate' }>
  | {
    op: 'activate'; key: string; hostAddr: bigint; memSize: number; queues: [QueueState, QueueState]; maxSizes: [number, number];
    features: string; tapFd: number; tapName: string; notifiers: [number, number];
    irq: { status: Int32Array; fd: number }; counters: SharedArrayBuffer;
    /** IoThreadLease words and this activation's generation: serve only while it is current */
    lease: Int32Array; gen: number;
  }
  | { op: 'inspect'; key: string };

/** Worker → main: the device cannot go on (a broken ring), for activation `gen`. */
export type NetIoMessage = { key: string; gen: number; t: 'fail'; reason: string };

interface Served { net: VirtioNet; watched: Array<{ fd: number; cb: () => void }>; inspect?: () => unknown }
const served = new Map<string, Served>();

function stop(ctx: IoHandlerContext, key: string): boolean {
  const s = served.get(key);
  if (!s) return false;
  served.delete(key);
  for (const w of s.watched) ctx.loop.remove(w.fd, w.cb);
  // the tap fd is the main thread's (it closes it): reset() only stops watching it
  s.net.reset();
  return true;
}

export function setup(ctx: IoHandlerContext, req: NetIoRequest): unknown {
  if (req.op === 'inspect') return served.get(req.key)?.inspect?.() ?? { serving: false };
  const step = leaseStep(req, (key) => stop(ctx, key));
  if ('reply' in step) return step.reply;
  const { held, activation: act } = step;
  const s: Served = { net: null as unknown as VirtioNet, watched: [] };
  let run: (index: number) => void;
  try {
    run = activate(ctx, act, held, s);
  } catch (e) {
    // nothing half-registered stays behind (a later activation would find its fds taken)
    for (const w of s.watched) ctx.loop.remove(w.fd, w.cb);
    s.net?.reset();
    throw e;
  }
  served.set(act.key, s);
  // what the driver queued before this side listened
  run(TXQ);
  run(RXQ);
  return { serving: act.key };
}

/** Builds the activation's VirtioNet and watches its fds (recorded in `s`); returns "serve queue i". */
function activate(ctx: IoHandlerContext, req: Extract<NetIoRequest, { op: 'activate' }>, held: () => boolean, s: Served): (index: number) => void {
  const mem = GuestMemory.attach(req.hostAddr, req.memSize);
  const queues = req.queues.map((state, i) => {
    const q = new Queue(req.maxSizes[i] as number);
    q.restore(state);
    return q;
  });
  const irqFd = EventFd.borrow(req.irq.fd);
  const fail = (reason: string): void => {
    if (!served.has(req.key)) return;
    stop(ctx, req.key);
    ctx.post({ key: req.key, gen: req.gen, t: 'fail', reason } satisfies NetIoMessage);
  };
  const kick = req.notifiers.map((fd) => EventFd.borrow(fd));
  // every callback of this activation (the tap's too) runs only while it is current
  const loop = gatedLoop(ctx.loop, held);
  s.net = new VirtioNet({
    // not Tap: this side must neither configure nor close the main thread's fd
    backend: new FdBackend(req.tapFd, req.tapName),
    poller: loop,
    metrics: sharedNetMetrics(req.counters),
    yieldTx: () => kick[TXQ]?.write(),
  });
  const net = s.net;
  s.inspect = () => ({
    serving: true, polling: net.isPolling, pendingBytes: net.pendingBytes,
    queues: queues.map((q) => ({ ...q.state(), ...q.ringView(mem) })),
  });
  net.activate({
    mem, queues, features: BigInt(req.features), notifiers: [],
    interrupt: {
      signalUsed: (i) => {
        if (!queues[i]?.needsInterrupt(mem) || !held()) return;
        Atomics.or(req.irq.status, 0, INT_USED_RING);
        irqFd.write();
      },
      signalConfig: () => {},
      fail,
    },
  });
  const run = (index: number): void => {
    try {
      net.notify(index);
    } catch (e) {
      fail(e instanceof QueueBrokenError ? `queue ${index}: ${e.message}` : (e as Error).message);
    }
  };
  for (const index of [TXQ, RXQ]) {
    const efd = kick[index] as EventFd;
    const cb = (): void => {
      // drained even when revoked: a level-triggered fd left readable would spin the loop
      if (efd.read() !== null && held()) run(index);
    };
    ctx.loop.add(efd.fd, EPOLLIN, cb);
    s.watched.push({ fd: efd.fd, cb });
  }
  return (index) => {
    if (held()) run(index);
  };
}
