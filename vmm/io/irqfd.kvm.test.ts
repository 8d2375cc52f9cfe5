// KVM_IOEVENTFD and KVM_IRQFD on a real /dev/kvm (run by scripts/kvm-tests.sh, directly or in the
// nested lab). A tiny real-mode guest (16-bit code below, assembled with GNU as) runs on one vCPU
// whose KVM_RUN loop is this test's main thread, so every exit to userspace is seen and recorded:
//
// 1. ioeventfds: `out 0x500` x3 with the datamatched value and a dword write to MMIO 0x20050 only
//    signal their eventfds (no exit); a non-matching value, a write after DEASSIGN and a write to
//    an unregistered MMIO address do exit.
// 2. irqfd: the guest programs the in-kernel PIC (IRQ5 -> vector 13, edge or level via ELCR),
//    reports it with `out 0x502`, and halts with interrupts on. An iothread (vmm/io/iothread.ts)
//    then raises an IrqFdLine bound to GSI 5: the halted vCPU takes the interrupt (its handler
//    reports with `out 0x503` and EOIs). Edge: exactly one interrupt. Level (resample): the line is
//    re-asserted by the iothread's resample handler after each EOI while the status word is set;
//    the host clears it at the 3rd interrupt, so exactly 3.
//
// A watchdog thread kicks the vCPU (SIGUSR2 -> KVM_RUN EINTR) if an interrupt never comes.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { Worker } from 'node:worker_threads';
import { configureLapic } from '../boot/regs.js';
import { KVM_TSS_ADDR } from '../boot/layout.js';
import { IrqFdLine } from '../devices/irq.js';
import * as io from '../kvm/ioctls.js';
import { Kvm, KvmError, type VcpuFd, type VmFd } from '../kvm/kvm.js';
import { EXIT, EXIT_IO_OUT, RUN } from '../kvm/layout.js';
import { probeKvm } from '../../lib/kvm-probe.js';
import { gettid, ioctlInt, mmap, munmap, MAP_ANONYMOUS, MAP_PRIVATE, PROT_READ, PROT_WRITE, view } from '../kvm/sys.js';
import { EventFd } from './eventfd.js';
import { IoThread } from './iothread.js';
import { enterRealMode } from '../testing/real-mode.js';

/*
 * guest.S (as --32; ld -m elf_i386 -Ttext 0x1000 --oformat binary), CS=DS=SS=0:
 *   1000 cli; mov dx,0x500; mov al,0x42; mov cx,3
 *   1009 1: out dx,al; loop 1b                     ioeventfd PIO 0x500 datamatch 0x42: no exit
 *   100c mov ax,0x2000; mov es,ax
 *   1011 mov dword es:[0x50],0x12345678           ioeventfd MMIO 0x20050 len 4: no exit
 *   101b mov al,0x43; out dx,al                   datamatch miss: exit (host deassigns 0x500)
 *   101e mov al,0x42; out dx,al                   deassigned: exit
 *   1021 mov dword es:[0x58],0xcafe               unregistered MMIO: exit
 *   102b ICW1..4: 0x11 -> 0x20; 0x08, 0x04, 0x01 -> 0x21 (vector base 8)
 *   103b mov al,[0xff0]; mov dx,0x4d0; out dx,al  ELCR1 from the host (0x20: IRQ5 level)
 *   1042 mov al,0xdf; out 0x21,al                 unmask IRQ5 only
 *   1046 mov dx,0x502; out dx,al                  "ready": exit
 *   104a 2: sti; hlt; cli                         halted in the kernel until an interrupt
 *   104d mov al,[0xff2]; cmp al,[0xff1]; jb 2b    until handled count >= target
 *   1056 mov dx,0x501; out dx,al; 3: jmp 3b       "done": exit
 *   105c handler: push ax; push dx; inc byte [0xff2]; mov dx,0x503; mov al,0x5a; out dx,al  exit
 *   1068 mov al,0x20; out 0x20,al; pop dx; pop ax; iret                                   EOI
 */
const CODE = Buffer.from(
  'faba0005b042b90300eee2fdb800208ec02666c706500078563412b043eeb042ee2666c7065800feca0000b011e620b008e621b004e621b001e621' +
  'a0f00fbad004eeb0dfe621ba0205eefbf4faa0f20f3a06f10f72f4ba0105eeebfe5052fe06f20fba0305b05aeeb020e6205a58cf', 'hex');
const CODE_AT = 0x1000;
const HANDLER_AT = 0x105c;
const VECTOR = 8 + 5;
const ELCR = 0xff0, TARGET = 0xff1, COUNT = 0xff2;
const MEM_SIZE = 0x10000;
const GSI = 5;
const PIO_PORT = 0x500, MMIO_ADDR = 0x20050;
const HANDLER_MODULE = new URL('../testing/io-handler.js', import.meta.url);
const KICK_AFTER_MS = 30_000;

let kvm: Kvm;
before(() => {
  const p = probeKvm();
  assert.ok(p.available, `KVM is not usable here: ${p.reason}`);
  kvm = new Kvm();
  process.on('SIGUSR2', () => {}); // a real handler: the watchdog's kick interrupts KVM_RUN
});
after(() => kvm?.close());

interface Exit { kind: 'io' | 'mmio'; addr: number; value: number; len: number }

class Guest {
  readonly vm: VmFd;
  readonly vcpu: VcpuFd;
  readonly mem: bigint;
  readonly ram: Uint8Array;

  constructor(elcr: number, target: number) {
    this.vm = kvm.createVm();
    this.mem = mmap(MEM_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
    this.ram = new Uint8Array(view(this.mem, MEM_SIZE));
    this.ram.set(CODE, CODE_AT);
    new DataView(this.ram.buffer).setUint16(VECTOR * 4, HANDLER_AT, true); // IVT: offset, segment 0
    this.ram[ELCR] = elcr;
    this.ram[TARGET] = target;
    this.vm.setUserMemoryRegion(0, 0n, BigInt(MEM_SIZE), this.mem);
    this.vm.setTssAddr(KVM_TSS_ADDR);
    this.vm.createIrqchip();
    this.vcpu = this.vm.createVcpu(0);
    this.vcpu.setLapic(configureLapic(this.vcpu.getLapic())); // LINT0 ExtINT: the PIC reaches the CPU
    enterRealMode(this.vcpu, CODE_AT);
  }

  /** One KVM_RUN; the exit it returned with (null: interrupted by the watchdog). */
  run(): Exit | 'hlt' | null {
    const r = ioctlInt(this.vcpu.fd, io.KVM_RUN, 0);
    const v = this.vcpu.runView;
    if (r < 0) {
      v.setUint8(RUN.immediateExit, 0);
      return null;
    }
    const reason = v.getUint32(RUN.exitReason, true);
    if (reason === EXIT.IO) {
      assert.equal(v.getUint8(RUN.ioDirection), EXIT_IO_OUT);
      const size = v.getUint8(RUN.ioSize);
      const off = Number(v.getBigUint64(RUN.ioDataOffset, true));
      return { kind: 'io', addr: v.getUint16(RUN.ioPort, true), value: v.getUint8(off), len: size };
    }
    if (reason === EXIT.MMIO) {
      const len = v.getUint32(RUN.mmioLen, true);
      return { kind: 'mmio', addr: Number(v.getBigUint64(RUN.mmioPhysAddr, true)), value: v.getUint32(RUN.mmioData, true), len };
    }
    if (reason === EXIT.HLT) return 'hlt';
    throw new Error(`unexpected exit reason ${reason}`);
  }

  close(): void {
    munmap(this.vcpu.runAddr, this.vcpu.runSize);
    this.vcpu.close();
    this.vm.close();
    munmap(this.mem, MEM_SIZE);
  }
}

/** Kicks this thread with SIGUSR2 every second once `ms` have passed, until stopped. */
function watchdog(ms: number): { stop: () => Promise<number> } {
  const url = new URL('../kvm/sys.js', import.meta.url).href;
  const ctl = new Int32Array(new SharedArrayBuffer(4));
  const w = new Worker(`
    const { workerData, parentPort } = require('node:worker_threads');
    (async () => {
      const { tgkill } = await import(${JSON.stringify(url)});
      const ctl = new Int32Array(workerData.ctl);
      let kicks = 0;
      let wait = workerData.ms;
      while (Atomics.wait(ctl, 0, 0, wait) === 'timed-out') { tgkill(process.pid, workerData.tid, 12); kicks++; wait = 1000; }
      parentPort.postMessage(kicks);
    })();`, { eval: true, workerData: { ms, tid: gettid(), ctl: ctl.buffer } });
  const kicks = new Promise<number>((resolve) => w.once('message', (k: number) => resolve(k)));
  return {
    stop: () => {
      Atomics.store(ctl, 0, 1);
      Atomics.notify(ctl, 0);
      return kicks;
    },
  };
}

test('capabilities: IRQFD, IOEVENTFD, IRQFD_RESAMPLE', () => {
  assert.ok(kvm.checkExtension(io.KVM_CAP_IRQFD) > 0, 'KVM_CAP_IRQFD');
  assert.ok(kvm.checkExtension(io.KVM_CAP_IOEVENTFD) > 0, 'KVM_CAP_IOEVENTFD');
  assert.ok(kvm.checkExtension(io.KVM_CAP_IRQFD_RESAMPLE) > 0, 'KVM_CAP_IRQFD_RESAMPLE');
});

test('KVM_IRQFD and KVM_IOEVENTFD register, refuse duplicates, deassign', () => {
  const vm = kvm.createVm();
  try {
    const e = EventFd.create();
    const r = EventFd.create();
    // irqfd needs the in-kernel irqchip
    assert.throws(() => vm.registerIrqfd(e.fd, GSI), (err: unknown) => err instanceof KvmError);
    vm.createIrqchip();
    vm.registerIrqfd(e.fd, GSI);
    assert.throws(() => vm.registerIrqfd(e.fd, GSI), (err: unknown) => err instanceof KvmError && err.errno === 16, 'EBUSY');
    vm.unregisterIrqfd(e.fd, GSI);
    vm.registerIrqfd(e.fd, GSI, r.fd);
    vm.unregisterIrqfd(e.fd, GSI);
    const EEXIST = (err: unknown): boolean => err instanceof KvmError && err.errno === 17;
    // one register, one eventfd per datamatch value (virtio-mmio QueueNotify: one per queue)
    vm.registerIoeventfd(e.fd, 0xd0000050, 4, 0);
    vm.registerIoeventfd(r.fd, 0xd0000050, 4, 1);
    assert.throws(() => vm.registerIoeventfd(r.fd, 0xd0000050, 4, 1), EEXIST, 'same datamatch');
    assert.throws(() => vm.registerIoeventfd(r.fd, 0xd0000050, 4), EEXIST, 'a wildcard overlaps every datamatch');
    vm.unregisterIoeventfd(r.fd, 0xd0000050, 4, 1);
    vm.unregisterIoeventfd(e.fd, 0xd0000050, 4, 0);
    vm.registerIoeventfd(e.fd, 0xd0000050, 4);
    assert.throws(() => vm.registerIoeventfd(e.fd, 0xd0000050, 4), EEXIST, 'same wildcard');
    vm.unregisterIoeventfd(e.fd, 0xd0000050, 4);
    assert.throws(() => vm.unregisterIoeventfd(e.fd, 0xd0000050, 4), (err: unknown) => err instanceof KvmError && err.errno === 2, 'ENOENT');
    vm.registerIoeventfd(e.fd, 0x510, 2, 0xffff, true);
    vm.unregisterIoeventfd(e.fd, 0x510, 2, 0xffff, true);
    e.close();
    r.close();
  } finally {
    vm.close();
  }
});

for (const mode of ['edge', 'level'] as const) {
  test(`a real-mode guest: ioeventfds signal without exits; an iothread's irqfd (${mode}) wakes the halted vCPU`, { timeout: 120_000 }, async () => {
    const level = mode === 'level';
    const target = level ? 3 : 1;
    const g = new Guest(level ? 0x20 : 0x00, target);
    const pio = EventFd.create();
    const mmio = EventFd.create();
    const go = EventFd.create();
    const line = IrqFdLine.create(g.vm, GSI, { level });
    const iot = await IoThread.start(`irq-${mode}`);
    const dog = watchdog(KICK_AFTER_MS);
    try {
      g.vm.registerIoeventfd(pio.fd, PIO_PORT, 1, 0x42, true);
      g.vm.registerIoeventfd(mmio.fd, MMIO_ADDR, 4);
      const stamp = new BigInt64Array(new SharedArrayBuffer(8));
      await iot.load(HANDLER_MODULE, { kind: 'resample', line: line.shared(), go: go.fd, delayMs: 50, raise: level ? 'set' : 'trigger', stamp });

      const exits: string[] = [];
      let pioCount: bigint | null = null;
      let mmioCount: bigint | null = null;
      let interrupts = 0;
      const irqMs: number[] = [];
      for (;;) {
        const x = g.run();
        assert.ok(x !== null, `KVM_RUN interrupted by the watchdog after ${KICK_AFTER_MS} ms: exits so far ${exits.join(' ')}`);
        assert.notEqual(x, 'hlt', 'HLT exit: expected the in-kernel irqchip to keep it');
        if (x === 'hlt') break;
        exits.push(`${x.kind}:${x.addr.toString(16)}=${x.value.toString(16)}/${x.len}`);
        if (x.kind === 'io' && x.addr === PIO_PORT && x.value === 0x43) {
          // the three matching writes and the MMIO one went to the eventfds, not here
          pioCount = pio.read();
          mmioCount = mmio.read();
          g.vm.unregisterIoeventfd(pio.fd, PIO_PORT, 1, 0x42, true);
        } else if (x.kind === 'io' && x.addr === 0x502) {
          go.write(); // the iothread raises the line ~50 ms later, while the vCPU is halted
        } else if (x.kind === 'io' && x.addr === 0x503) {
          irqMs.push(Number(process.hrtime.bigint() - Atomics.load(stamp, 0)) / 1e6);
          interrupts++;
          // the device's status: pending until the host has seen `target` interrupts
          if (interrupts >= target) line.set(false);
        } else if (x.kind === 'io' && x.addr === 0x501) {
          break;
        }
      }
      assert.equal(pioCount, 3n, 'PIO ioeventfd signalled 3 times without exits');
      assert.equal(mmioCount, 1n, 'MMIO ioeventfd signalled without an exit');
      assert.equal(pio.read(), null);
      assert.equal(mmio.read(), null);
      assert.deepEqual(exits, [
        'io:500=43/1', // datamatch miss
        'io:500=42/1', // after DEASSIGN
        'mmio:20058=cafe/4', // not registered
        'io:502=df/1',
        ...Array.from({ length: target }, () => 'io:503=5a/1'),
        `io:501=${target.toString(16)}/1`,
      ]);
      assert.equal(g.ram[COUNT], target, 'handler runs');
      assert.equal(interrupts, target);
      assert.equal(iot.errors, 0);
      // from the iothread's irqfd write to the handler's exit on this thread: injection into the
      // halted vCPU, the handler's first instructions, one exit (level: later ones include the
      // EOI -> resample -> iothread -> irqfd write loop)
      console.log(`# ${mode}: irqfd write (iothread) -> interrupt handler's exit: ${irqMs.map((m) => m.toFixed(2)).join(', ')} ms after the first write`);
    } finally {
      const kicks = await dog.stop();
      assert.equal(kicks, 0, 'watchdog never had to kick');
      await iot.stop();
      line.close();
      for (const e of [pio, mmio, go]) e.close();
      g.close();
    }
  });
}

test('a bad eventfd is refused with its errno', () => {
  const vm = kvm.createVm();
  try {
    assert.throws(() => vm.registerIoeventfd(-1, 0x600, 1, undefined, true), (e: unknown) => e instanceof KvmError && e.errno === 9, 'EBADF');
  } finally {
    vm.close();
  }
});
