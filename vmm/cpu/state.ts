// Save and restore the KVM state of one vCPU (VcpuState) and of the VM's in-kernel devices
// (VmState: PIC x2, IOAPIC, PIT, kvmclock). A snapshot (vmm/snapshot/) stores these as sections;
// a restore applies them to a freshly created VM and vCPUs before any KVM_RUN.
//
// Everything here runs with the vCPUs stopped (parked outside KVM_RUN): KVM_GET/SET_VCPU_EVENTS
// is not safe while another vCPU runs, and a moving guest gives an inconsistent picture.
//
// Orders, from Firecracker (src/vmm/src/arch/x86_64/vcpu.rs save_state/restore_state) and the
// reasons it gives, which come from QEMU's kvm_arch_put_registers:
// save:    MP_STATE first (KVM_GET_MP_STATE runs kvm_apic_accept_events(), which may change the
//          vCPU and LAPIC state everything after it reads), then REGS, SREGS, XSAVE, XCRS,
//          DEBUGREGS, LAPIC, CPUID, MSRS, and VCPU_EVENTS last (the other GETs may touch what it
//          reports: pending exceptions and interrupts).
// restore: CPUID first (what the other SETs accept depends on the guest's features), MP_STATE,
//          REGS before VCPU_EVENTS (KVM_SET_REGS clears a pending exception, VCPU_EVENTS puts it
//          back), SREGS before LAPIC (SREGS carries the APIC base, which says where and whether
//          the LAPIC is), XSAVE, XCRS, DEBUGREGS, LAPIC before MSRS (the TSC deadline MSR is only
//          accepted once the LAPIC is in TSC-deadline mode), MSRS with TSC_DEADLINE in a call of
//          its own after IA32_TSC (vmm/cpu/msrs.ts), VCPU_EVENTS last; then KVMCLOCK_CTRL so the
//          guest does not count the stop as a soft lockup.
import * as io from '../kvm/ioctls.js';
import { MAX_MSRS_PER_CALL, MsrReadError, type CpuidEntry, type MsrEntry } from '../kvm/kvm.js';
import { OFFSETOF, SIZEOF } from '../kvm/layout.js';
import { msrBatches, MSR_IA32_TSC, MSR_IA32_TSC_DEADLINE } from './msrs.js';

/** The vCPU operations save/restore use: VcpuFd has them; tests pass a recorder. */
export interface VcpuStateIo {
  readonly id: number;
  getMpState(): number;
  setMpState(s: number): void;
  getRegs(): Buffer;
  setRegs(b: Buffer): void;
  getSregs(): Buffer;
  setSregs(b: Buffer): void;
  getXsave(size?: number): Buffer;
  setXsave(b: Buffer, size?: number): void;
  getXcrs(): Buffer;
  setXcrs(b: Buffer): void;
  getDebugregs(): Buffer;
  setDebugregs(b: Buffer): void;
  getLapic(): Buffer;
  setLapic(b: Buffer): void;
  getCpuid(): CpuidEntry[];
  setCpuid(entries: CpuidEntry[]): void;
  getMsrs(indices: ReadonlyArray<number>): MsrEntry[];
  setMsrs(msrs: ReadonlyArray<MsrEntry>): number;
  getVcpuEvents(): Buffer;
  setVcpuEvents(b: Buffer): void;
  kvmclockCtrl(): boolean;
}

/** The VM operations VmState uses (VmFd has them). */
export interface VmStateIo {
  getIrqchip(chipId: number): Buffer;
  setIrqchip(b: Buffer): void;
  getPit2(): Buffer;
  setPit2(b: Buffer): void;
  getClock(): Buffer;
  setClock(b: Buffer): void;
}

export interface VcpuState {
  /** the vCPU's index (APIC ID): a restore applies it to the vCPU created with the same id */
  id: number;
  /** KVM_MP_STATE_* */
  mpState: number;
  regs: Buffer;
  sregs: Buffer;
  /** kvm_xsave, 4096 bytes or the VM's KVM_CAP_XSAVE2 size */
  xsave: Buffer;
  xcrs: Buffer;
  debugregs: Buffer;
  lapic: Buffer;
  /** the CPUID the guest sees on this vCPU (KVM_GET_CPUID2) */
  cpuid: CpuidEntry[];
  /** in restore order: TSC_DEADLINE, when present, after IA32_TSC */
  msrs: MsrEntry[];
  events: Buffer;
}

export interface VmState {
  picMaster: Buffer;
  picSlave: Buffer;
  ioapic: Buffer;
  pit2: Buffer;
  clock: Buffer;
}

export class VcpuStateError extends Error {
  constructor(msg: string) {
    super(msg);
    this.name = 'VcpuStateError';
  }
}

// Limits a restored state must respect (it comes from a file: vmm/snapshot/ treats it as hostile).
export const MAX_CPUID_ENTRIES = 256;
/** far above the ~150-300 a snapshot saves; the x2APIC range alone is 1024 */
export const MAX_SAVED_MSRS = 4096;
/** kvm_xsave with every dynamic feature KVM knows today (AMX tiles: ~11 KiB) fits well inside */
export const MAX_XSAVE_SIZE = 64 * 1024;
const KNOWN_MP_STATES = new Set([
  io.KVM_MP_STATE_RUNNABLE, io.KVM_MP_STATE_UNINITIALIZED, io.KVM_MP_STATE_INIT_RECEIVED,
  io.KVM_MP_STATE_HALTED, io.KVM_MP_STATE_SIPI_RECEIVED,
]);
/** KVM_VCPUEVENT_VALID_NMI_PENDING | SIPI_VECTOR | SHADOW | SMM | PAYLOAD | TRIPLE_FAULT */
const VCPU_EVENTS_VALID_FLAGS = 0x3f;
const IRQCHIPS = [io.KVM_IRQCHIP_PIC_MASTER, io.KVM_IRQCHIP_PIC_SLAVE, io.KVM_IRQCHIP_IOAPIC] as const;

export interface SaveVcpuOptions {
  /** vmm/cpu/msrs.ts msrsToSave(), computed at init (KVM_GET_MSR_INDEX_LIST is a /dev/kvm ioctl) */
  msrIndices: ReadonlyArray<number>;
  /** VmFd.xsaveSize() */
  xsaveSize: number;
}

/**
 * The part of `indices` (msrsToSave()) this vCPU can read, and the MSRs KVM refused.
 * KVM_GET_MSR_INDEX_LIST names MSRs that KVM_GET_MSRS refuses for a given vCPU (PMU MSRs when the
 * CPUID hides the PMU, VMX ones without nested, some under nested virtualization): Firecracker
 * keeps a deny list of those; asking the vCPU finds the same set without a list to maintain. Run
 * once at init, on a vCPU whose CPUID is set, before the seccomp filter; saveVcpuState() then
 * fails on any MSR it cannot read instead of skipping it. An MSR KVM cannot read for this vCPU
 * it could not restore either, so nothing is lost by leaving it out.
 */
export function savableMsrs(vcpu: Pick<VcpuStateIo, 'getMsrs'>, indices: ReadonlyArray<number>): { msrs: number[]; refused: number[] } {
  const msrs: number[] = [];
  const refused: number[] = [];
  let left = [...indices];
  while (left.length > 0) {
    const batch = left.slice(0, MAX_MSRS_PER_CALL);
    try {
      vcpu.getMsrs(batch);
      msrs.push(...batch);
      left = left.slice(batch.length);
    } catch (e) {
      if (!(e instanceof MsrReadError)) throw e;
      msrs.push(...batch.slice(0, e.read));
      refused.push(e.index);
      left = left.slice(e.read + 1);
    }
  }
  return { msrs, refused };
}

/**
 * Reads a stopped vCPU's whole state, in Firecracker's order (see the header). The vCPU must have
 * re-entered KVM_RUN since its last IO/MMIO exit (e.g. one KVM_RUN with immediate_exit = 1, or a
 * kick out of KVM_RUN): KVM completes an exit's instruction only on the next KVM_RUN, so state read
 * right after an exit would restore the instruction half done (KVM API docs, KVM_RUN / immediate_exit).
 */
export function saveVcpuState(vcpu: VcpuStateIo, opts: SaveVcpuOptions): VcpuState {
  const mpState = vcpu.getMpState();
  const regs = vcpu.getRegs();
  const sregs = vcpu.getSregs();
  const xsave = vcpu.getXsave(opts.xsaveSize);
  const xcrs = vcpu.getXcrs();
  const debugregs = vcpu.getDebugregs();
  const lapic = vcpu.getLapic();
  const cpuid = vcpu.getCpuid();
  const msrs: MsrEntry[] = [];
  for (const batch of msrBatches([...opts.msrIndices], (i) => i, MAX_MSRS_PER_CALL)) msrs.push(...vcpu.getMsrs(batch));
  fixZeroTscDeadline(msrs);
  const events = vcpu.getVcpuEvents();
  return { id: vcpu.id, mpState, regs, sregs, xsave, xcrs, debugregs, lapic, cpuid, msrs, events };
}

/**
 * Firecracker's fix_zero_tsc_deadline_msr: a deadline of 0 was seen saved while its timer
 * interrupt had not been delivered, and the restored vCPU then never got another timer tick.
 * Writing the current TSC instead fires the timer at once after restore (a guest treats an early
 * or spurious tick as harmless; a lost one hangs it).
 */
function fixZeroTscDeadline(msrs: MsrEntry[]): void {
  const tsc = msrs.filter(([i]) => i === MSR_IA32_TSC).reduce((m, [, v]) => (v > m ? v : m), 0n);
  if (tsc === 0n) return;
  for (const e of msrs) if (e[0] === MSR_IA32_TSC_DEADLINE && e[1] === 0n) e[1] = tsc;
}

const fail = (id: number, what: string): never => {
  throw new VcpuStateError(`vcpu${id}: ${what}`);
};

function exact(id: number, name: string, b: unknown, size: number): void {
  if (!Buffer.isBuffer(b)) fail(id, `${name} is missing`);
  else if (b.length !== size) fail(id, `${name} is ${b.length} bytes, expected ${size}`);
}

/**
 * Checks a state before any of it reaches KVM: every buffer the size of its struct (KVM copies
 * that many bytes from the pointer, a short buffer would make it read past ours), counts within
 * the kernel's limits, reserved fields zero and flags known (KVM refuses others with a bare
 * EINVAL; this names what is wrong).
 */
export function validateVcpuState(s: VcpuState, xsaveSize: number): void {
  const id = Number.isInteger(s.id) && s.id >= 0 ? s.id : fail(-1, `bad vCPU id ${String(s.id)}`);
  if (!KNOWN_MP_STATES.has(s.mpState)) fail(id, `unknown mp_state ${s.mpState}`);
  exact(id, 'regs', s.regs, SIZEOF.kvm_regs as number);
  exact(id, 'sregs', s.sregs, SIZEOF.kvm_sregs as number);
  if (xsaveSize > MAX_XSAVE_SIZE) fail(id, `xsave size ${xsaveSize} above ${MAX_XSAVE_SIZE}`);
  exact(id, 'xsave', s.xsave, xsaveSize);
  exact(id, 'xcrs', s.xcrs, SIZEOF.kvm_xcrs as number);
  const nXcrs = s.xcrs.readUInt32LE(OFFSETOF['kvm_xcrs.nr_xcrs'] as number);
  if (nXcrs > io.KVM_MAX_XCRS) fail(id, `xcrs: ${nXcrs} entries, at most ${io.KVM_MAX_XCRS}`);
  if (s.xcrs.readUInt32LE(OFFSETOF['kvm_xcrs.flags'] as number) !== 0) fail(id, 'xcrs: flags must be 0');
  exact(id, 'debugregs', s.debugregs, SIZEOF.kvm_debugregs as number);
  if (s.debugregs.readBigUInt64LE(OFFSETOF['kvm_debugregs.flags'] as number) !== 0n) fail(id, 'debugregs: flags must be 0');
  exact(id, 'lapic', s.lapic, SIZEOF.kvm_lapic_state as number);
  exact(id, 'vcpu events', s.events, SIZEOF.kvm_vcpu_events as number);
  const evFlags = s.events.readUInt32LE(OFFSETOF['kvm_vcpu_events.flags'] as number);
  if ((evFlags & ~VCPU_EVENTS_VALID_FLAGS) !== 0) fail(id, `vcpu events: unknown flags 0x${evFlags.toString(16)}`);
  if (!Array.isArray(s.cpuid) || s.cpuid.length === 0 || s.cpuid.length > MAX_CPUID_ENTRIES) {
    fail(id, `cpuid: ${Array.isArray(s.cpuid) ? s.cpuid.length : 'no'} entries, 1 to ${MAX_CPUID_ENTRIES} expected`);
  }
  if (!Array.isArray(s.msrs) || s.msrs.length > MAX_SAVED_MSRS) fail(id, `msrs: more than ${MAX_SAVED_MSRS}`);
  const seen = new Set<number>();
  for (const [i] of s.msrs) {
    if (seen.has(i)) fail(id, `msrs: 0x${i.toString(16)} twice`);
    seen.add(i);
  }
}

/** Applies a saved state to a fresh vCPU (created, never run), in Firecracker's order (see the header). */
export function restoreVcpuState(vcpu: VcpuStateIo, s: VcpuState, xsaveSize: number): void {
  validateVcpuState(s, xsaveSize);
  if (s.id !== vcpu.id) fail(vcpu.id, `state saved from vcpu${s.id}`);
  vcpu.setCpuid(s.cpuid);
  vcpu.setMpState(s.mpState);
  vcpu.setRegs(s.regs);
  vcpu.setSregs(s.sregs);
  vcpu.setXsave(s.xsave, xsaveSize);
  vcpu.setXcrs(s.xcrs);
  vcpu.setDebugregs(s.debugregs);
  vcpu.setLapic(s.lapic);
  for (const batch of msrBatches(s.msrs, ([i]) => i, MAX_MSRS_PER_CALL)) {
    const n = vcpu.setMsrs(batch);
    // KVM stops at the first MSR it refuses and says how many it took
    if (n !== batch.length) fail(s.id, `KVM_SET_MSRS took ${n} of ${batch.length}: MSR 0x${(batch[n]?.[0] ?? 0).toString(16)} refused`);
  }
  vcpu.setVcpuEvents(s.events);
  // EINVAL when the guest has no kvmclock: nothing to tell it, not an error
  vcpu.kvmclockCtrl();
}

/** Reads the VM's in-kernel device state (vCPUs stopped). Firecracker's order: PIT, clock, chips. */
export function saveVmState(vm: VmStateIo): VmState {
  const pit2 = vm.getPit2();
  const clock = vm.getClock();
  const [picMaster, picSlave, ioapic] = IRQCHIPS.map((c) => vm.getIrqchip(c)) as [Buffer, Buffer, Buffer];
  return { picMaster, picSlave, ioapic, pit2, clock };
}

export function validateVmState(s: VmState): void {
  const check = (name: string, b: unknown, size: number): void => {
    if (!Buffer.isBuffer(b)) throw new VcpuStateError(`vm: ${name} is missing`);
    if (b.length !== size) throw new VcpuStateError(`vm: ${name} is ${b.length} bytes, expected ${size}`);
  };
  const chips: Array<[string, Buffer, number]> = [
    ['PIC master', s.picMaster, io.KVM_IRQCHIP_PIC_MASTER], ['PIC slave', s.picSlave, io.KVM_IRQCHIP_PIC_SLAVE],
    ['IOAPIC', s.ioapic, io.KVM_IRQCHIP_IOAPIC],
  ];
  for (const [name, b, chip] of chips) {
    check(name, b, SIZEOF.kvm_irqchip as number);
    const got = b.readUInt32LE(OFFSETOF['kvm_irqchip.chip_id'] as number);
    // KVM_SET_IRQCHIP sets the chip the buffer names: a swapped one would load PIC state into the IOAPIC
    if (got !== chip) throw new VcpuStateError(`vm: ${name} state names chip ${got}, expected ${chip}`);
  }
  check('PIT', s.pit2, SIZEOF.kvm_pit_state2 as number);
  check('clock', s.clock, SIZEOF.kvm_clock_data as number);
}

/**
 * Applies a saved VM state to a fresh VM whose irqchip and PIT exist (KVM_CREATE_IRQCHIP,
 * KVM_CREATE_PIT2), before its vCPUs run. Firecracker's order: PIT, clock, PIC master, slave, IOAPIC.
 * The clock is set with flags 0: kvmclock continues from the saved value, so the guest does not
 * see the time it spent saved (correcting its wall clock is the restore's job, later). Flags other
 * than 0 would ask for KVM_CLOCK_REALTIME semantics, which needs the same host clock.
 */
export function restoreVmState(vm: VmStateIo, s: VmState): void {
  validateVmState(s);
  vm.setPit2(s.pit2);
  const clock = Buffer.from(s.clock);
  clock.writeUInt32LE(0, OFFSETOF['kvm_clock_data.flags'] as number);
  vm.setClock(clock);
  vm.setIrqchip(s.picMaster);
  vm.setIrqchip(s.picSlave);
  vm.setIrqchip(s.ioapic);
}

/** A vCPU's registers in one line, for logs: where it was, and its paging and segment state. */
export function describeVcpu(v: Pick<VcpuStateIo, 'getRegs' | 'getSregs'>): string {
  const at = (field: string): number => {
    const o = OFFSETOF[field];
    if (o === undefined) throw new Error(`no layout for ${field}`);
    return o;
  };
  try {
    const r = v.getRegs();
    const sr = v.getSregs();
    const hex = (b: Buffer, off: number): string => `0x${b.readBigUInt64LE(off).toString(16)}`;
    const reg = (name: string): string => `${name}=${hex(r, at(`kvm_regs.${name}`))}`;
    const sreg = (name: string): string => `${name}=${hex(sr, at(`kvm_sregs.${name}`))}`;
    const seg = (name: string): string => {
      const off = at(`kvm_sregs.${name}`);
      return `${name}=${sr.readUInt16LE(off + at('kvm_segment.selector')).toString(16)}@${hex(sr, off + at('kvm_segment.base'))}`;
    };
    return [reg('rip'), reg('rsp'), reg('rflags'), sreg('cr0'), sreg('cr2'), sreg('cr3'), sreg('cr4'), sreg('efer'),
      seg('cs'), seg('ss'), seg('gs'), `idt=${hex(sr, at('kvm_sregs.idt'))}`].join(' ');
  } catch (e) {
    return `(registers unreadable: ${(e as Error).message})`;
  }
}
