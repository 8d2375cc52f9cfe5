// VcpuState/VmState without KVM: the save and restore orders (a recorder stands in for VcpuFd),
// validation of restored buffers, and the MSR selection.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as io from '../kvm/ioctls.js';
import { MsrReadError, type CpuidEntry, type MsrEntry, type VcpuFd, type VmFd } from '../kvm/kvm.js';
import { OFFSETOF, SIZEOF } from '../kvm/layout.js';
import { msrBatches, msrShouldSerialize, msrsToSave, MSR_IA32_TSC, MSR_IA32_TSC_DEADLINE } from './msrs.js';
import {
  describeVcpu, restoreVcpuState, restoreVmState, savableMsrs, saveVcpuState, saveVmState, validateVcpuState, VcpuStateError,
  type VcpuState, type VcpuStateIo, type VmState, type VmStateIo,
} from './state.js';

// compile-time: the real handles are what save/restore take
export const vcpuFdIsStateIo = (v: VcpuFd): VcpuStateIo => v;
export const vmFdIsStateIo = (v: VmFd): VmStateIo => v;

const sz = (n: string): number => SIZEOF[n] as number;
const CPUID: CpuidEntry[] = [{ function: 1, index: 0, flags: 0, eax: 0, ebx: 0, ecx: 0, edx: (1 << 12) | (1 << 7) }];

class Recorder implements VcpuStateIo {
  calls: string[] = [];
  setMsrBatches: MsrEntry[][] = [];
  constructor(readonly id = 0, private readonly msrValues = new Map<number, bigint>()) {}
  private get(name: string, size: number): Buffer {
    this.calls.push(name);
    return Buffer.alloc(size, 0);
  }
  getMpState(): number { this.calls.push('getMpState'); return io.KVM_MP_STATE_HALTED; }
  setMpState(): void { this.calls.push('setMpState'); }
  getRegs(): Buffer { return this.get('getRegs', sz('kvm_regs')); }
  setRegs(): void { this.calls.push('setRegs'); }
  getSregs(): Buffer { return this.get('getSregs', sz('kvm_sregs')); }
  setSregs(): void { this.calls.push('setSregs'); }
  getXsave(size = 4096): Buffer { return this.get('getXsave', size); }
  setXsave(): void { this.calls.push('setXsave'); }
  getXcrs(): Buffer { return this.get('getXcrs', sz('kvm_xcrs')); }
  setXcrs(): void { this.calls.push('setXcrs'); }
  getDebugregs(): Buffer { return this.get('getDebugregs', sz('kvm_debugregs')); }
  setDebugregs(): void { this.calls.push('setDebugregs'); }
  getLapic(): Buffer { return this.get('getLapic', sz('kvm_lapic_state')); }
  setLapic(): void { this.calls.push('setLapic'); }
  getCpuid(): CpuidEntry[] { this.calls.push('getCpuid'); return CPUID; }
  setCpuid(): void { this.calls.push('setCpuid'); }
  getMsrs(indices: ReadonlyArray<number>): MsrEntry[] {
    this.calls.push('getMsrs');
    return indices.map((i) => [i, this.msrValues.get(i) ?? 0n]);
  }
  setMsrs(m: ReadonlyArray<MsrEntry>): number {
    this.calls.push('setMsrs');
    this.setMsrBatches.push([...m]);
    return m.length;
  }
  getVcpuEvents(): Buffer { return this.get('getVcpuEvents', sz('kvm_vcpu_events')); }
  setVcpuEvents(): void { this.calls.push('setVcpuEvents'); }
  kvmclockCtrl(): boolean { this.calls.push('kvmclockCtrl'); return false; }
}

const dedupe = (a: string[]): string[] => a.filter((c, i) => c !== a[i - 1]);

test('save reads MP_STATE first and VCPU_EVENTS last (Firecracker order)', () => {
  const r = new Recorder(0, new Map([[MSR_IA32_TSC, 1000n]]));
  const s = saveVcpuState(r, { msrIndices: msrsToSave([MSR_IA32_TSC, MSR_IA32_TSC_DEADLINE, 0xc0000080], CPUID), xsaveSize: 4096 });
  assert.deepEqual(dedupe(r.calls), ['getMpState', 'getRegs', 'getSregs', 'getXsave', 'getXcrs', 'getDebugregs', 'getLapic', 'getCpuid', 'getMsrs', 'getVcpuEvents']);
  assert.equal(s.mpState, io.KVM_MP_STATE_HALTED);
  // a zero TSC deadline is saved as the TSC (Firecracker's fix: no lost timer after restore)
  assert.deepEqual(s.msrs.find(([i]) => i === MSR_IA32_TSC_DEADLINE), [MSR_IA32_TSC_DEADLINE, 1000n]);
});

function state(): VcpuState {
  const r = new Recorder();
  return saveVcpuState(r, { msrIndices: [MSR_IA32_TSC_DEADLINE, MSR_IA32_TSC, 0xc0000080], xsaveSize: 4096 });
}

test('restore: CPUID, MP_STATE, REGS, SREGS, XSAVE, XCRS, DEBUGREGS, LAPIC, MSRS (TSC_DEADLINE alone, last), VCPU_EVENTS, KVMCLOCK_CTRL', () => {
  const r = new Recorder();
  restoreVcpuState(r, state(), 4096);
  assert.deepEqual(r.calls, ['setCpuid', 'setMpState', 'setRegs', 'setSregs', 'setXsave', 'setXcrs', 'setDebugregs', 'setLapic',
    'setMsrs', 'setMsrs', 'setVcpuEvents', 'kvmclockCtrl']);
  assert.deepEqual(r.setMsrBatches.map((b) => b.map(([i]) => i)), [[MSR_IA32_TSC, 0xc0000080], [MSR_IA32_TSC_DEADLINE]]);
});

test('restore refuses a state with a wrong-sized buffer, a bad count or flag, before any SET', () => {
  const cases: Array<[string, (s: VcpuState) => void, RegExp]> = [
    ['short regs', (s) => { s.regs = Buffer.alloc(100); }, /regs is 100 bytes, expected 144/],
    ['long lapic', (s) => { s.lapic = Buffer.alloc(2048); }, /lapic is 2048 bytes/],
    ['xsave size', (s) => { s.xsave = Buffer.alloc(8192); }, /xsave is 8192 bytes, expected 4096/],
    ['mp_state', (s) => { s.mpState = 99; }, /unknown mp_state 99/],
    ['nr_xcrs', (s) => { s.xcrs.writeUInt32LE(17, OFFSETOF['kvm_xcrs.nr_xcrs'] as number); }, /17 entries, at most 16/],
    ['debugregs flags', (s) => { s.debugregs.writeBigUInt64LE(1n, OFFSETOF['kvm_debugregs.flags'] as number); }, /flags must be 0/],
    ['events flags', (s) => { s.events.writeUInt32LE(0x100, OFFSETOF['kvm_vcpu_events.flags'] as number); }, /unknown flags 0x100/],
    ['duplicate msr', (s) => { s.msrs.push([MSR_IA32_TSC, 1n]); }, /0x10 twice/],
    ['no cpuid', (s) => { s.cpuid = []; }, /cpuid: 0 entries/],
  ];
  for (const [name, mutate, re] of cases) {
    const s = state();
    mutate(s);
    assert.throws(() => validateVcpuState(s, 4096), (e: Error) => e instanceof VcpuStateError && re.test(e.message), name);
    const r = new Recorder();
    assert.throws(() => restoreVcpuState(r, s, 4096), VcpuStateError, name);
    assert.deepEqual(r.calls, [], `${name}: nothing reached KVM`);
  }
  const r = new Recorder(1);
  assert.throws(() => restoreVcpuState(r, state(), 4096), /vcpu1: state saved from vcpu0/);
});

test('restore stops with the MSR KVM refused', () => {
  const r = new Recorder();
  r.setMsrs = (m) => { r.calls.push('setMsrs'); return m.length - 1; };
  assert.throws(() => restoreVcpuState(r, state(), 4096), /took 1 of 2: MSR 0xc0000080 refused/);
  assert.ok(!r.calls.includes('setVcpuEvents'));
});

class VmRecorder implements VmStateIo {
  calls: string[] = [];
  clockSet?: Buffer;
  getIrqchip(chip: number): Buffer {
    this.calls.push(`getIrqchip${chip}`);
    const b = Buffer.alloc(sz('kvm_irqchip'));
    b.writeUInt32LE(chip, 0);
    return b;
  }
  setIrqchip(b: Buffer): void { this.calls.push(`setIrqchip${b.readUInt32LE(0)}`); }
  getPit2(): Buffer { this.calls.push('getPit2'); return Buffer.alloc(sz('kvm_pit_state2')); }
  setPit2(): void { this.calls.push('setPit2'); }
  getClock(): Buffer {
    this.calls.push('getClock');
    const b = Buffer.alloc(sz('kvm_clock_data'));
    b.writeBigUInt64LE(123456789n, 0);
    b.writeUInt32LE(io.KVM_CLOCK_TSC_STABLE | io.KVM_CLOCK_REALTIME, OFFSETOF['kvm_clock_data.flags'] as number);
    return b;
  }
  setClock(b: Buffer): void { this.calls.push('setClock'); this.clockSet = b; }
}

test('VM state: PIT, clock, PIC master, slave, IOAPIC; clock restored with flags 0; chips checked by id', () => {
  const src = new VmRecorder();
  const s = saveVmState(src);
  assert.deepEqual(src.calls, ['getPit2', 'getClock', 'getIrqchip0', 'getIrqchip1', 'getIrqchip2']);
  const dst = new VmRecorder();
  restoreVmState(dst, s);
  assert.deepEqual(dst.calls, ['setPit2', 'setClock', 'setIrqchip0', 'setIrqchip1', 'setIrqchip2']);
  assert.equal(dst.clockSet?.readBigUInt64LE(0), 123456789n);
  assert.equal(dst.clockSet?.readUInt32LE(OFFSETOF['kvm_clock_data.flags'] as number), 0);
  assert.equal(s.clock.readUInt32LE(8), io.KVM_CLOCK_TSC_STABLE | io.KVM_CLOCK_REALTIME, 'the saved state is not modified');
  const swapped: VmState = { ...s, picMaster: s.ioapic, ioapic: s.picMaster };
  const r = new VmRecorder();
  assert.throws(() => restoreVmState(r, swapped), /PIC master state names chip 2, expected 0/);
  assert.throws(() => restoreVmState(r, { ...s, pit2: Buffer.alloc(64) }), /PIT is 64 bytes, expected 112/);
  assert.deepEqual(r.calls, []);
});

test('MSR selection follows Firecracker: architectural and KVM PV MSRs in, Hyper-V/VMX/PMU and MCG_CTL out, CPUID extras added', () => {
  for (const i of [0x10, 0x1b, 0x174, 0x6e0, 0xc0000080, 0xc0000102, 0x4b564d01, 0x4b564d00 + 0xff, 0xda0]) assert.ok(msrShouldSerialize(i), i.toString(16));
  for (const i of [0x40000000, 0x480, 0x17b, 0x38f, 0xc1, 0x186, 0x4b564d00 + 0x100, 0xc0010000]) assert.ok(!msrShouldSerialize(i), i.toString(16));
  const list = msrsToSave([MSR_IA32_TSC_DEADLINE, 0xc0000080, 0x40000000, MSR_IA32_TSC, MSR_IA32_TSC], CPUID);
  assert.equal(list.at(-1), MSR_IA32_TSC_DEADLINE, 'deadline last');
  assert.equal(new Set(list).size, list.length, 'no duplicates');
  assert.ok(list.includes(0x2ff) && list.includes(0x277) && list.includes(0x200), 'MTRRs from CPUID.1:EDX.MTRR');
  assert.ok(list.includes(0x47f), 'MCE banks from CPUID.1:EDX.MCE');
  assert.ok(!list.includes(0x40000000));
  assert.ok(!msrsToSave([], [{ ...CPUID[0]!, edx: 0 }]).includes(0x2ff), 'no MTRR bit, no MTRRs');
  const batches = msrBatches(list, (i) => i, 100);
  assert.ok(batches.slice(0, -1).every((b) => b.length <= 100 && !b.includes(MSR_IA32_TSC_DEADLINE)));
  assert.deepEqual(batches.at(-1), [MSR_IA32_TSC_DEADLINE]);
  assert.deepEqual(batches.flat().sort(), [...list].sort());
});

test('savableMsrs: drops exactly the MSRs KVM refuses to read, in batches of at most 255', () => {
  const refuse = new Set([0x3, 0x200, 0x250]);
  const calls: number[] = [];
  const io = {
    getMsrs(indices: ReadonlyArray<number>): MsrEntry[] {
      calls.push(indices.length);
      assert.ok(indices.length <= 255);
      const bad = indices.findIndex((i) => refuse.has(i));
      if (bad >= 0) throw new MsrReadError(indices[bad]!, bad, indices.length);
      return indices.map((i) => [i, 0n]);
    },
  };
  const all = Array.from({ length: 600 }, (_, i) => i);
  const r = savableMsrs(io, all);
  assert.deepEqual(r.refused, [0x3, 0x200, 0x250]);
  assert.deepEqual(r.msrs, all.filter((i) => !refuse.has(i)));
  assert.throws(() => savableMsrs({ getMsrs: () => { throw new Error('EBADF'); } }, [1]), /EBADF/);
});

test('describeVcpu: the registers a dead guest is read by, at the layout\'s offsets; an unreadable vCPU says why', () => {
  const regs = Buffer.alloc(sz('kvm_regs'));
  const sregs = Buffer.alloc(sz('kvm_sregs'));
  const off = (f: string): number => OFFSETOF[f] as number;
  regs.writeBigUInt64LE(0xffffffff81000123n, off('kvm_regs.rip'));
  regs.writeBigUInt64LE(0x7ffc0000n, off('kvm_regs.rsp'));
  sregs.writeBigUInt64LE(0x1000n, off('kvm_sregs.cr3'));
  sregs.writeBigUInt64LE(0xffff888000000000n, off('kvm_sregs.gs') + off('kvm_segment.base'));
  sregs.writeUInt16LE(0x10, off('kvm_sregs.cs') + off('kvm_segment.selector'));
  const line = describeVcpu({ getRegs: () => regs, getSregs: () => sregs });
  assert.match(line, /rip=0xffffffff81000123 rsp=0x7ffc0000 /);
  assert.match(line, / cr3=0x1000 /);
  assert.match(line, / cs=10@0x0 /);
  assert.match(line, / gs=0@0xffff888000000000 /);
  const broken = describeVcpu({ getRegs: () => { throw new Error('EBADF'); }, getSregs: () => sregs });
  assert.equal(broken, '(registers unreadable: EBADF)');
});
