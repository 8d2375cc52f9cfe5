// Runs in an iothread (io/iothread.ts loads it): serves one virtio-blk queue there, so that the
// disk reads and writes (blocking preadv/pwritev) never hold the main thread. The main thread
// keeps the transport; this side gets the queue's layout, the image's fd and the queue's ioeventfd,
// sees the same guest RAM (GuestMemory.attach), and asks the main thread for an interrupt only
// when the driver wants one (the EVENT_IDX check is made here, where the used ring is written).
import { EPOLLIN } from '../../../io/epoll.js';
import { EventFd } from '../../../io/eventfd.js';
import type { IoHandlerContext } from '../../../io/iothread.js';
import { GuestMemory } from '../../../memory/guest-memory.js';
import { Queue, type QueueState } from '../../../virtio/queue.js';
import { BlkBackend, VirtioBlk, type BlkBackendOptions } from './device.js';

export type BlkIoRequest =
  | { op: 'preload' }
  | {
    op: 'activate'; key: string; hostAddr: bigint; memSize: number; queue: QueueState; maxSize: number;
    features: string; backend: BlkBackendOptions & { fd: number }; notifyFd: number;
  }
  | { op: 'deactivate'; key: string };

/** Worker → main: an interrupt is wanted, or the queue broke. */
export type BlkIoMessage = { key: string; t: 'irq' } | { key: string; t: 'fail'; reason: string };

interface Served { blk: VirtioBlk; notifyFd: number; cb: () => void }
const served = new Map<string, Served>();

export function setup(ctx: IoHandlerContext, req: BlkIoRequest): unknown {
  // loaded once during init: a later import() would need openat, which the seccomp filter refuses
  if (req.op === 'preload') return { loaded: true };
  if (req.op === 'deactivate') {
    const s = served.get(req.key);
    if (s) {
      ctx.loop.remove(s.notifyFd, s.cb);
      served.delete(req.key);
    }
    return { stopped: !!s };
  }
  const mem = GuestMemory.attach(req.hostAddr, req.memSize);
  const q = new Queue(req.maxSize);
  q.restore(req.queue);
  // the fd belongs to the main thread's backend: this side never closes it
  const blk = new VirtioBlk(new BlkBackend(req.backend));
  const post = (m: BlkIoMessage): void => ctx.post(m);
  blk.activate({
    mem, queues: [q], features: BigInt(req.features), notifiers: [],
    interrupt: {
      signalUsed: () => { if (q.needsInterrupt(mem)) post({ key: req.key, t: 'irq' }); },
      signalConfig: () => {},
      fail: (reason) => post({ key: req.key, t: 'fail', reason }),
    },
  });
  const notify = EventFd.borrow(req.notifyFd);
  const run = (): void => {
    try {
      blk.notify();
    } catch (e) {
      post({ key: req.key, t: 'fail', reason: (e as Error).message });
    }
  };
  const cb = (): void => {
    if (notify.read() !== null) run();
  };
  ctx.loop.add(req.notifyFd, EPOLLIN, cb);
  served.set(req.key, { blk, notifyFd: req.notifyFd, cb });
  run(); // requests the driver queued before we listened
  return { serving: req.key };
}
