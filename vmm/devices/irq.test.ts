// IrqLine semantics without KVM: KvmLineIrq's ioctl sequence (a fake VmFd), and IrqFdLine driven
// through borrowed eventfds (as a worker holds it): edge vs level writes, resample re-assertion.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { VmFd } from '../kvm/kvm.js';
import { EventFd } from '../io/eventfd.js';
import { IoLoop } from '../io/iothread.js';
import { IrqFdLine, KvmLineIrq } from './irq.js';

test('KvmLineIrq: set() is one KVM_IRQ_LINE, trigger() a pulse; a getter VM may be absent', () => {
  const calls: Array<[number, boolean]> = [];
  const vm = { setIrqLine: (irq: number, level: boolean) => calls.push([irq, level]) } as unknown as VmFd;
  const l = new KvmLineIrq(vm, 4);
  l.set(true);
  l.set(false);
  l.trigger();
  assert.deepEqual(calls, [[4, true], [4, false], [4, true], [4, false]]);
  let current: VmFd | null = null;
  const g = new KvmLineIrq(() => current, 16);
  g.trigger(); // no VM (between teardown and rebuild): nothing
  current = vm;
  g.set(true);
  assert.deepEqual(calls.slice(4), [[16, true]]);
});

function shared(level: boolean) {
  const irq = EventFd.create();
  const resample = level ? EventFd.create() : null;
  const status = new Int32Array(new SharedArrayBuffer(4));
  const line = IrqFdLine.fromShared({ gsi: 5, fd: irq.fd, resampleFd: resample?.fd ?? null, status });
  return { irq, resample, status, line };
}

test('IrqFdLine edge: trigger() always writes; set(true) writes only on a rising level', () => {
  const { irq, status, line } = shared(false);
  assert.equal(line.mode, 'edge');
  line.trigger();
  line.trigger();
  assert.equal(irq.read(), 2n);
  line.set(true);
  line.set(true);
  assert.equal(irq.read(), 1n, 'one rising edge');
  assert.equal(status[0], 1);
  line.set(false);
  assert.equal(irq.read(), null);
  line.set(true);
  assert.equal(irq.read(), 1n);
  line.onResample(); // edge: no resample fd, nothing to do
  line.close(); // borrowed: closes nothing
  irq.write();
  assert.equal(irq.read(), 1n, 'fd still open');
  irq.close();
});

test('IrqFdLine level: set(true) asserts, resample re-asserts while the status is non-zero', () => {
  const { irq, resample, status, line } = shared(true);
  assert.equal(line.mode, 'level');
  line.set(true);
  assert.equal(irq.read(), 1n);
  // the guest EOIs: KVM signals the resample fd
  resample!.write();
  line.onResample();
  assert.equal(irq.read(), 1n, 're-asserted: still pending');
  assert.equal(resample!.read(), null, 'resample fd drained');
  line.set(false);
  resample!.write();
  line.onResample();
  assert.equal(irq.read(), null, 'not re-asserted once acknowledged');
  // a transport's own status word with bits: trigger() after Atomics.or, ACK with Atomics.and
  Atomics.or(status, 0, 0b10);
  line.trigger();
  assert.equal(irq.read(), 1n);
  Atomics.and(status, 0, ~0b10);
  line.onResample();
  assert.equal(irq.read(), null);
  irq.close();
  resample!.close();
});

test('IrqFdLine level: watchResample() on an IoLoop calls onResample', () => {
  const { irq, resample, line } = shared(true);
  const loop = new IoLoop();
  line.watchResample(loop);
  line.set(true);
  irq.read();
  resample!.write();
  assert.equal(loop.run(100), false); // one dispatch happened within the wait, then timed out
  assert.equal(irq.read(), 1n);
  line.unwatchResample();
  assert.equal(loop.size, 0);
  loop.close();
  irq.close();
  resample!.close();
});

test('IrqFdLine.create refuses a status word that is not shared memory', () => {
  const vm = { kvm: { checkExtension: () => 1 }, registerIrqfd: () => {} } as unknown as VmFd;
  assert.throws(() => IrqFdLine.create(vm, 5, { status: new Int32Array(1) }), /SharedArrayBuffer/);
  const noResample = { kvm: { checkExtension: () => 0 }, registerIrqfd: () => {} } as unknown as VmFd;
  assert.throws(() => IrqFdLine.create(noResample, 5, { level: true }), /KVM_CAP_IRQFD_RESAMPLE/);
  const line = IrqFdLine.create(vm, 5);
  assert.equal(line.mode, 'edge');
  assert.deepEqual(Object.keys(line.shared()).sort(), ['fd', 'gsi', 'resampleFd', 'status']);
  line.close();
});
