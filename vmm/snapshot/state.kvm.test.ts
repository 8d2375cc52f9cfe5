// Snapshot and restore of vCPU + VM state on a real /dev/kvm (run by scripts/kvm-tests.sh,
// directly or in the nested lab). A tiny real-mode guest counts; the host saves its state through
// the state file format, maps the saved memory MAP_PRIVATE into a fresh VM and vCPU, restores,
// and the count continues. Each piece of restored state is needed for that or checked directly:
//
// - REGS: the count lives in EBX; the guest stores it to [DS:0]. A fresh vCPU would start at 1.
// - SREGS: DS = 0x200 (base 0x2000), CS = 0, and real mode at 0x1000 rather than the reset vector.
// - XSAVE: the x87 FPU keeps a second copy of the count (fadd, fistl to [DS:4]). A fresh FPU has an
//   empty stack: the store would be the integer indefinite 0x80000000.
// - MSRS: the guest writes SYSENTER_ESP = 0x12345678 (WRMSR); read back on the new vCPU.
// - DEBUGREGS: the host sets DR0 on the source vCPU; read back on the new one.
// - IRQCHIP: the guest programs the PIC (vector base 0x20, IMR 0xfe); read back on the new VM.
// - CLOCK: the host sets kvmclock to 10^15 ns on the source VM; the new VM's clock continues there.
// - memory: the new VM maps the snapshot's memory file MAP_PRIVATE: the guest goes on writing, the
//   file keeps the saved count (copy-on-write).
//
// A watchdog thread kicks the vCPU (SIGUSR2 -> KVM_RUN EINTR) if a restored guest stops exiting.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { Worker } from 'node:worker_threads';
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { configureLapic } from '../boot/regs.js';
import { filterCpuid } from '../boot/cpuid.js';
import { KVM_TSS_ADDR } from '../boot/layout.js';
import { msrsToSave } from '../cpu/msrs.js';
import { restoreVcpuState, restoreVmState, savableMsrs, saveVcpuState, saveVmState } from '../cpu/state.js';
import * as io from '../kvm/ioctls.js';
import { Kvm, type VcpuFd, type VmFd } from '../kvm/kvm.js';
import { enterRealMode } from '../testing/real-mode.js';
import { EXIT, OFFSETOF, RUN } from '../kvm/layout.js';
import { gettid, ioctlInt, mmap, munmap, MAP_ANONYMOUS, MAP_PRIVATE, PROT_READ, PROT_WRITE, view } from '../kvm/sys.js';
import { probeKvm } from '../../lib/kvm-probe.js';
import { FORMAT_VERSION } from './format.js';
import { checkCompatible, cpuVendor, makeManifest } from './manifest.js';
import { readSnapshotFile, writeSnapshotFile } from './state.js';

/*
 * guest.S (as --32; ld -m elf_i386 -Ttext 0x1000 --oformat binary), CS=0, real mode:
 *   1000 cli; PIC ICW1..4 (0x11 -> 0x20; 0x20, 0x04, 0x01 -> 0x21): vector base 0x20
 *   1011 mov al,0xfe; out 0x21,al                   IMR: only IRQ0 unmasked (never taken: cli)
 *   1015 mov ecx,0x175; mov eax,0x12345678; xor edx,edx; wrmsr     SYSENTER_ESP
 *   1026 fninit; fld1; fldz                         st0 = 0, st1 = 1
 *   102c mov ax,0x200; mov ds,ax; xor ebx,ebx; mov dx,0x500
 *   1037 1: inc ebx; mov [0],ebx                    [0x2000] = count (EBX)
 *   103e fadd st,st(1); fistl [4]                   [0x2004] = count (x87)
 *   1044 out dx,al; jmp 1b                          exit: one per count
 */
const CODE = Buffer.from(
  'fab011e620b020e621b004e621b001e621b0fee62166b97501000066b8785634126631d20f30dbe3d9e8d9eeb800028ed86631dbba0005' +
  '664366891e0000d8c1db160400eeebf0', 'hex');
const CODE_AT = 0x1000;
const COUNT_REG = 0x2000, COUNT_FPU = 0x2004;
const MEM_SIZE = 0x10000;
const PORT = 0x500;
const MSR_SYSENTER_ESP = 0x175;
const CLOCK_START = 1_000_000_000_000_000n; // 10^15 ns: far from where a new VM's kvmclock starts
const DR0 = 0xdead0000n;
const KICK_AFTER_MS = 60_000;

let kvm: Kvm;
let work: string;
before(() => {
  const p = probeKvm();
  assert.ok(p.available, `KVM is not usable here: ${p.reason}`);
  kvm = new Kvm();
  work = mkdtempSync(join(tmpdir(), 'capsule-snap-test-'));
  process.on('SIGUSR2', () => {}); // a real handler: the watchdog's kick interrupts KVM_RUN
});
after(() => {
  kvm?.close();
  if (work) rmSync(work, { recursive: true, force: true });
});

class Machine {
  readonly vm: VmFd;
  readonly vcpu: VcpuFd;
  readonly ram: DataView;

  /** `mem`: a mapping of MEM_SIZE bytes this machine owns (unmapped by close()) */
  constructor(readonly mem: bigint) {
    this.ram = new DataView(view(mem, MEM_SIZE));
    this.vm = kvm.createVm();
    this.vm.setUserMemoryRegion(0, 0n, BigInt(MEM_SIZE), mem);
    this.vm.setTssAddr(KVM_TSS_ADDR);
    this.vm.createIrqchip();
    this.vm.createPit2();
    this.vcpu = this.vm.createVcpu(0);
  }

  /** Sets up the source vCPU to run CODE from 0x1000 in real mode. */
  boot(): void {
    this.vcpu.setCpuid(filterCpuid(kvm.supportedCpuid(), 0, 1));
    this.vcpu.setLapic(configureLapic(this.vcpu.getLapic()));
    enterRealMode(this.vcpu, CODE_AT);
  }

  /** Runs to the next exit, which must be the guest's `out 0x500`; returns [EBX count, x87 count]. */
  step(): [number, number] {
    const r = ioctlInt(this.vcpu.fd, io.KVM_RUN, 0);
    assert.ok(r >= 0, 'KVM_RUN interrupted: the guest stopped exiting (watchdog)');
    const v = this.vcpu.runView;
    const reason = v.getUint32(RUN.exitReason, true);
    assert.equal(reason, EXIT.IO, `exit reason ${reason}, expected IO`);
    assert.equal(v.getUint16(RUN.ioPort, true), PORT);
    return [this.ram.getUint32(COUNT_REG, true), this.ram.getUint32(COUNT_FPU, true)];
  }

  /**
   * KVM_RUN with immediate_exit: KVM finishes the last exit's instruction and returns EINTR
   * without running the guest, so the state read next is between two instructions.
   */
  settle(): void {
    const v = this.vcpu.runView;
    v.setUint8(RUN.immediateExit, 1);
    const r = ioctlInt(this.vcpu.fd, io.KVM_RUN, 0);
    v.setUint8(RUN.immediateExit, 0);
    assert.ok(r < 0, 'KVM_RUN with immediate_exit returns EINTR');
  }

  close(): void {
    munmap(this.vcpu.runAddr, this.vcpu.runSize);
    this.vcpu.close();
    this.vm.close();
    munmap(this.mem, MEM_SIZE);
  }
}

/** Kicks this thread with SIGUSR2 every second once `ms` have passed, until stopped. */
function watchdog(ms: number): { stop: () => void } {
  const url = new URL('../kvm/sys.js', import.meta.url).href;
  const ctl = new Int32Array(new SharedArrayBuffer(4));
  const w = new Worker(`
    const { workerData } = require('node:worker_threads');
    (async () => {
      const { tgkill } = await import(${JSON.stringify(url)});
      const ctl = new Int32Array(workerData.ctl);
      let wait = workerData.ms;
      while (Atomics.wait(ctl, 0, 0, wait) === 'timed-out') { tgkill(process.pid, workerData.tid, 12); wait = 1000; }
    })();`, { eval: true, workerData: { ms, tid: gettid(), ctl: ctl.buffer } });
  return {
    stop: () => {
      Atomics.store(ctl, 0, 1);
      Atomics.notify(ctl, 0);
      void w.terminate();
    },
  };
}

test('capabilities the snapshot needs', () => {
  for (const [name, cap] of Object.entries({
    KVM_CAP_XSAVE: io.KVM_CAP_XSAVE, KVM_CAP_XCRS: io.KVM_CAP_XCRS, KVM_CAP_VCPU_EVENTS: io.KVM_CAP_VCPU_EVENTS,
    KVM_CAP_DEBUGREGS: io.KVM_CAP_DEBUGREGS, KVM_CAP_ADJUST_CLOCK: io.KVM_CAP_ADJUST_CLOCK,
  })) assert.ok(kvm.checkExtension(cap) > 0, name);
  const list = kvm.msrIndexList();
  assert.ok(list.length > 20, `${list.length} MSRs in KVM_GET_MSR_INDEX_LIST`);
  // (EFER is not: it travels in SREGS)
  assert.ok(list.includes(0x10) && list.includes(0xc0000081), `TSC and STAR are listed: ${list.map((i) => i.toString(16)).join(' ')}`);
});

test('a counting guest saved to a state file and restored into a fresh VM continues where it was', () => {
  const dog = watchdog(KICK_AFTER_MS);
  const src = new Machine(mmap(MEM_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS));
  let dst: Machine | undefined;
  try {
    new Uint8Array(view(src.mem, MEM_SIZE)).set(CODE, CODE_AT);
    src.boot();
    const clock = src.vm.getClock();
    clock.writeBigUInt64LE(CLOCK_START, OFFSETOF['kvm_clock_data.clock'] as number);
    clock.writeUInt32LE(0, OFFSETOF['kvm_clock_data.flags'] as number);
    src.vm.setClock(clock);
    const dr = src.vcpu.getDebugregs();
    dr.writeBigUInt64LE(DR0, OFFSETOF['kvm_debugregs.db'] as number);
    src.vcpu.setDebugregs(dr);

    const N = 100;
    for (let i = 1; i <= N; i++) assert.deepEqual(src.step(), [i, i], `source count ${i}`);
    src.settle();

    // save: MSR list chosen at "init" (this vCPU, its CPUID set), then every vCPU and VM state
    const wanted = msrsToSave(kvm.msrIndexList(), src.vcpu.getCpuid());
    const { msrs, refused } = savableMsrs(src.vcpu, wanted);
    if (refused.length) console.log(`# MSRs KVM refused to read here: ${refused.map((i) => `0x${i.toString(16)}`).join(' ')}`);
    assert.ok(msrs.includes(MSR_SYSENTER_ESP) && msrs.includes(0x10), 'SYSENTER_ESP and TSC are saved');
    const xsaveSize = src.vm.xsaveSize();
    const vcpuState = saveVcpuState(src.vcpu, { msrIndices: msrs, xsaveSize });
    const vmState = saveVmState(src.vm);
    assert.equal(vcpuState.msrs.find(([i]) => i === MSR_SYSENTER_ESP)?.[1], 0x12345678n);
    // the manifest's CPUID is the configured one (what the VMM gave KVM_SET_CPUID2), which a
    // restoring host computes the same way; KVM_GET_CPUID2's copy has run-time bits (OSXSAVE...)
    const cpuid = filterCpuid(kvm.supportedCpuid(), 0, 1);
    const manifest = makeManifest({
      formatVersion: FORMAT_VERSION, vmmVersion: 'test', cpuVendor: cpuVendor(cpuid), cpuid,
      memory: { shared: false, regions: [{ gpa: 0, size: MEM_SIZE, file: 'mem0' }] }, devices: [],
      machine: { vcpus: 1, memoryBytes: MEM_SIZE },
    });
    writeSnapshotFile(join(work, 'state'), { manifest, vcpus: [vcpuState], vm: vmState, devices: [] });
    writeFileSync(join(work, 'mem0'), new Uint8Array(view(src.mem, MEM_SIZE)));
    src.close();

    // restore: check the manifest first, then a fresh VM over the memory file, mapped copy-on-write
    const snap = readSnapshotFile(join(work, 'state'));
    const hostCpuid = filterCpuid(kvm.supportedCpuid(), 0, 1);
    assert.equal(checkCompatible(snap.manifest, {
      vmmVersion: 'test', cpuVendor: cpuVendor(hostCpuid), cpuid: hostCpuid, vcpus: 1,
      memory: [{ gpa: 0, size: MEM_SIZE }], devices: [],
    }), null);
    const fd = openSync(join(work, snap.manifest.memory.regions[0]!.file), 'r');
    const mem = mmap(MEM_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    closeSync(fd);
    dst = new Machine(mem);
    restoreVmState(dst.vm, snap.vm);
    restoreVcpuState(dst.vcpu, snap.vcpus[0]!, dst.vm.xsaveSize());

    // state that the count alone would not show
    assert.deepEqual(dst.vcpu.getMsrs([MSR_SYSENTER_ESP]), [[MSR_SYSENTER_ESP, 0x12345678n]], 'MSR restored');
    assert.equal(dst.vcpu.getDebugregs().readBigUInt64LE(OFFSETOF['kvm_debugregs.db'] as number), DR0, 'DR0 restored');
    const pic = dst.vm.getIrqchip(io.KVM_IRQCHIP_PIC_MASTER);
    const chip = OFFSETOF['kvm_irqchip.chip'] as number;
    assert.equal(pic[chip + 2], 0xfe, 'PIC IMR restored'); // kvm_pic_state: last_irr, irr, imr, isr, priority_add, irq_base
    assert.equal(pic[chip + 5], 0x20, 'PIC vector base restored');
    const now = dst.vm.getClock().readBigUInt64LE(OFFSETOF['kvm_clock_data.clock'] as number);
    assert.ok(now >= CLOCK_START && now < CLOCK_START + 600_000_000_000n, `kvmclock continues from the saved value (${now})`);

    // the guest continues: EBX and the x87 stack came back, and it runs from the same instruction
    for (let i = N + 1; i <= N + 50; i++) assert.deepEqual(dst.step(), [i, i], `restored count ${i}`);
    const file = readFileSync(join(work, 'mem0'));
    assert.equal(file.readUInt32LE(COUNT_REG), N, 'the memory file is untouched (MAP_PRIVATE)');
  } finally {
    dog.stop();
    dst?.close();
  }
});

test('a restore onto a VM whose XSAVE size differs, or with a corrupt state file, is refused before any SET', () => {
  const snapPath = join(work, 'state');
  const bytes = readFileSync(snapPath);
  bytes[bytes.length - 100]! ^= 0xff;
  writeFileSync(join(work, 'corrupt'), bytes);
  assert.throws(() => readSnapshotFile(join(work, 'corrupt')), /checksum mismatch/);
  const snap = readSnapshotFile(snapPath);
  const m = new Machine(mmap(MEM_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS));
  try {
    const before = m.vcpu.getRegs();
    assert.throws(() => restoreVcpuState(m.vcpu, snap.vcpus[0]!, snap.vcpus[0]!.xsave.length + 4096), /xsave is \d+ bytes, expected/);
    assert.deepEqual(m.vcpu.getRegs(), before, 'nothing was set');
  } finally {
    m.close();
  }
});
