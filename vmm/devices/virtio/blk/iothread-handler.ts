// Runs in an iothread (io/iothread.ts loads it): serves one virtio-blk queue there, so that the
// disk reads and writes (blocking preadv/pwritev) never hold the main thread. The main thread
// keeps the transport; this side gets the queue's layout, the image's fd and the queue's ioeventfd,
// sees the same guest RAM (GuestMemory.attach), and raises an interrupt only when the driver
// wants one (the EVENT_IDX check is made here, where the used ring is written): INT_USED_RING
// into the transport's shared InterruptStatus word, then the slot's irqfd; or, without an irqfd
// (no KVM VM: unit tests), a message asking the main thread to raise it.
import { EPOLLIN } from '../../../io/epoll.js';
import { EventFd } from '../../../io/eventfd.js';
import { leaseStep, type IoHandlerContext, type LeasedRequest } from '../../../io/iothread.js';
import { GuestMemory } from '../../../memory/guest-memory.js';
import { INT_USED_RING } from '../../../virtio/constants.js';
import { Queue, type QueueState } from '../../../virtio/queue.js';
import { BlkBackend, VirtioBlk, type BlkBackendOptions } from './device.js';

export type BlkIoRequest =
  // preload and deactivate, as every device handler on an iothread (io/iothread.ts leaseStep)
  | Exclude<LeasedRequest, { op: 'activate' }>
  | {
    op: 'activate'; key: string; hostAddr: bigint; memSize: number; queue: QueueState; maxSize: number;
    features: string; backend: BlkBackendOptions & { fd: number }; notifyFd: number;
    irq: { status: Int32Array; fd: number } | null;
    /** IoThreadLease words and this activation's generation: serve only while it is current */
    lease: Int32Array; gen: number;
  };

/** Worker → main, for activation `gen`: an interrupt is wanted, or the queue broke. */
export type BlkIoMessage = { key: string; gen: number; t: 'irq' } | { key: string; gen: number; t: 'fail'; reason: string };

interface Served { blk: VirtioBlk; notifyFd: number; cb: () => void }
const served = new Map<string, Served>();

function stop(ctx: IoHandlerContext, key: string): boolean {
  const s = served.get(key);
  if (!s) return false;
  served.delete(key);
  ctx.loop.remove(s.notifyFd, s.cb);
  return true;
}

export function setup(ctx: IoHandlerContext, req: BlkIoRequest): unknown {
  const step = leaseStep(req, (key) => stop(ctx, key));
  if ('reply' in step) return step.reply;
  const { held, activation: act } = step;
  const mem = GuestMemory.attach(act.hostAddr, act.memSize);
  const q = new Queue(act.maxSize);
  q.restore(act.queue);
  // the fd belongs to the main thread's backend: this side never closes it
  const blk = new VirtioBlk(new BlkBackend(act.backend));
  const post = (m: BlkIoMessage): void => ctx.post(m);
  const irq = act.irq;
  const irqFd = irq ? EventFd.borrow(irq.fd) : null;
  const raise = (): void => {
    if (!held()) return;
    if (!irq || !irqFd) return post({ key: act.key, gen: act.gen, t: 'irq' });
    Atomics.or(irq.status, 0, INT_USED_RING);
    irqFd.write();
  };
  blk.activate({
    mem, queues: [q], features: BigInt(act.features), notifiers: [],
    interrupt: {
      signalUsed: () => { if (q.needsInterrupt(mem)) raise(); },
      signalConfig: () => {},
      fail: (reason) => post({ key: act.key, gen: act.gen, t: 'fail', reason }),
    },
  });
  const notify = EventFd.borrow(act.notifyFd);
  const run = (): void => {
    try {
      blk.notify();
    } catch (e) {
      post({ key: act.key, gen: act.gen, t: 'fail', reason: (e as Error).message });
    }
  };
  const cb = (): void => {
    // drained even when revoked: a level-triggered fd left readable would spin the loop
    if (notify.read() !== null && held()) run();
  };
  ctx.loop.add(act.notifyFd, EPOLLIN, cb);
  served.set(act.key, { blk, notifyFd: act.notifyFd, cb });
  run(); // requests the driver queued before we listened
  return { serving: act.key };
}
