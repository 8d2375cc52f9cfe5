// An iothread handler module for tests (vmm/io/iothread.test.ts, vmm/io/irqfd.kvm.test.ts).
// `data.kind` picks what it does:
//   echo     on each write to data.fd: read the counter, post { fd, count }
//   stamp    on each write to data.fd: store process.hrtime.bigint() in data.stamp[0], bump and
//            notify data.ctrl[0] (wake-up latency without a message round trip)
//   throw    throws from its callback on each write to data.fd (the loop must go on)
//   resample a level IrqFdLine (data.line = IrqFdLine.shared()): watch its resample fd here, and
//            raise it when data.go is written (after data.delayMs), as a device thread would;
//            the time of that write goes to data.stamp[0] (process.hrtime.bigint())
import { EPOLLIN } from '../io/epoll.js';
import { EventFd } from '../io/eventfd.js';
import type { IoHandlerContext } from '../io/iothread.js';
import { IrqFdLine, type IrqFdLineShared } from '../devices/irq.js';

type Data =
  | { kind: 'echo'; fd: number }
  | { kind: 'stamp'; fd: number; stamp: BigInt64Array; ctrl: Int32Array }
  | { kind: 'throw'; fd: number }
  | { kind: 'resample'; line: IrqFdLineShared; go: number; delayMs: number; raise: 'trigger' | 'set'; stamp?: BigInt64Array };

export function setup(ctx: IoHandlerContext, data: Data): unknown {
  switch (data.kind) {
    case 'echo': {
      const e = EventFd.borrow(data.fd);
      ctx.loop.add(e.fd, EPOLLIN, () => ctx.post({ fd: e.fd, count: String(e.read()) }));
      ctx.onStop(() => { ctx.loop.remove(e.fd); ctx.post({ stopped: e.fd }); });
      return { registered: e.fd, thread: ctx.name };
    }
    case 'stamp': {
      const e = EventFd.borrow(data.fd);
      ctx.loop.add(e.fd, EPOLLIN, () => {
        Atomics.store(data.stamp, 0, process.hrtime.bigint());
        e.read();
        Atomics.add(data.ctrl, 0, 1);
        Atomics.notify(data.ctrl, 0);
      });
      return null;
    }
    case 'throw': {
      const e = EventFd.borrow(data.fd);
      ctx.loop.add(e.fd, EPOLLIN, () => { e.read(); throw new Error('handler failure'); });
      return null;
    }
    case 'resample': {
      const line = IrqFdLine.fromShared(data.line);
      line.watchResample(ctx.loop);
      const go = EventFd.borrow(data.go);
      const nap = new Int32Array(new SharedArrayBuffer(4));
      ctx.loop.add(go.fd, EPOLLIN, () => {
        go.read();
        Atomics.wait(nap, 0, 0, data.delayMs); // let the vCPU reach HLT
        if (data.stamp) Atomics.store(data.stamp, 0, process.hrtime.bigint());
        if (data.raise === 'set') line.set(true);
        else line.trigger();
      });
      ctx.onStop(() => line.unwatchResample());
      return null;
    }
  }
}
