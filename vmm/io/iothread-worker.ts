// An iothread's worker entry (see io/iothread.ts): an IoLoop over the stop and control eventfds
// plus whatever the loaded handler modules register. Blocks in epoll_pwait between events; returns
// to Node's event loop only to import and set up handler modules.
import { parentPort, receiveMessageOnPort, workerData, type MessagePort, type Transferable } from 'node:worker_threads';
import { gettid } from '../kvm/sys.js';
import { adoptLog } from '../log.js';
import { EPOLLIN } from './epoll.js';
import { EventFd } from './eventfd.js';
import { IoLoop, type IoHandlerContext, type IoHandlerSetup, type IoThreadInit, type IoThreadReply, type IoThreadRequest } from './iothread.js';

const init = workerData as IoThreadInit & { port: MessagePort };
// handlers' warnings (a tap read error, a broken ring) go where the main thread's do
adoptLog(init.log);
const parent = parentPort;
if (!parent) throw new Error('iothread-worker must run as a worker thread');
const post = (m: IoThreadReply, transfer?: readonly Transferable[]): void => parent.postMessage(m, transfer);
const describe = (e: unknown): string => (e instanceof Error ? e.stack ?? e.message : String(e));

const loop = new IoLoop((e, fd) => post({ t: 'error', error: `callback for fd ${fd}: ${describe(e)}` }));
const stopFd = EventFd.borrow(init.stopFd);
const controlFd = EventFd.borrow(init.controlFd);
const stopHooks: Array<() => void> = [];
let stopRequested = false;
let controlPending = false;

loop.add(stopFd.fd, EPOLLIN, () => { stopRequested = true; loop.stop(); });
loop.add(controlFd.fd, EPOLLIN, () => { controlFd.read(); controlPending = true; loop.stop(); });

const ctx: IoHandlerContext = {
  name: init.name,
  loop,
  post: (data, transfer) => post({ t: 'message', data }, transfer),
  onStop: (fn) => { stopHooks.push(fn); },
};

async function load(req: IoThreadRequest): Promise<void> {
  try {
    const mod = (await import(req.module)) as { setup?: IoHandlerSetup };
    if (typeof mod.setup !== 'function') throw new Error(`${req.module} does not export setup()`);
    const result = await mod.setup(ctx, req.data);
    post({ t: 'loaded', id: req.id, result });
  } catch (e) {
    post({ t: 'failed', id: req.id, error: describe(e) });
  }
}

async function main(): Promise<void> {
  post({ t: 'ready', tid: gettid() });
  while (!stopRequested) {
    loop.run();
    if (controlPending) {
      controlPending = false;
      for (let m = receiveMessageOnPort(init.port); m; m = receiveMessageOnPort(init.port)) {
        await load(m.message as IoThreadRequest);
      }
    }
  }
  for (const fn of stopHooks.reverse()) {
    try { fn(); } catch (e) { post({ t: 'error', error: `onStop: ${describe(e)}` }); }
  }
  loop.close();
  init.port.close();
  post({ t: 'stopped' });
}

void main();
