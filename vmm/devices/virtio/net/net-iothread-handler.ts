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
import { acknowledge, type IoHandlerContext } from '../../../io/iothread.js';
import { GuestMemory } from '../../../memory/guest-memory.js';
import { INT_USED_RING } from '../../../virtio/constants.js';
import { Queue, QueueBrokenError, type QueueState } from '../../../virtio/queue.js';
import { RXQ, sharedNetMetrics, TXQ, VirtioNet } from './device.js';
import { FdBackend } from './tap.js';

export type NetIoRequest =
  | { op: 'preload' }
  | {
    op: 'activate'; key: string; hostAddr: bigint; memSize: number; queues: [QueueState, QueueState]; maxSizes: [number, number];
    features: string; tapFd: number; tapName: string; notifiers: [number, number];
    irq: { status: Int32Array; fd: number }; counters: SharedArrayBuffer;
  }
  | { op: 'deactivate'; key: string; released: Int32Array };

/** Worker → main: the device cannot go on (a broken ring). */
export type NetIoMessage = { key: string; t: 'fail'; reason: string };

interface Served { net: VirtioNet; watched: Array<{ fd: number; cb: () => void }> }
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
  // loaded once during init: a later import() would need openat, which the seccomp filter refuses
  if (req.op === 'preload') return { loaded: true };
  if (req.op === 'deactivate') {
    const stopped = stop(ctx, req.key);
    // the main thread waits for this before it lets the driver free the rings (also when the
    // activation had failed: then there was nothing to stop)
    acknowledge(req.released);
    return { stopped };
  }
  stop(ctx, req.key);
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
    ctx.post({ key: req.key, t: 'fail', reason } satisfies NetIoMessage);
  };
  const kick = req.notifiers.map((fd) => EventFd.borrow(fd));
  const net = new VirtioNet({
    // not Tap: this side must neither configure nor close the main thread's fd
    backend: new FdBackend(req.tapFd, req.tapName),
    poller: ctx.loop,
    metrics: sharedNetMetrics(req.counters),
    yieldTx: () => kick[TXQ]?.write(),
  });
  net.activate({
    mem, queues, features: BigInt(req.features), notifiers: [],
    interrupt: {
      signalUsed: (i) => {
        if (!queues[i]?.needsInterrupt(mem)) return;
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
  const watched = [RXQ, TXQ].map((index) => {
    const efd = kick[index] as EventFd;
    const cb = (): void => {
      if (efd.read() !== null) run(index);
    };
    ctx.loop.add(efd.fd, EPOLLIN, cb);
    return { fd: efd.fd, cb };
  });
  served.set(req.key, { net, watched });
  // what the driver queued before this side listened
  run(TXQ);
  run(RXQ);
  return { serving: req.key };
}
