// Register state of the boot vCPU for the 64-bit boot protocol entry, and the per-vCPU MSRs,
// FPU and LAPIC settings. Pure functions over byte buffers (kvm_regs, kvm_sregs, kvm_fpu, kvm_lapic_state).
import { OFFSETOF, SIZEOF } from '../kvm/layout.js';
import { BOOT_GDT, GDT_CODE, GDT_DATA, GDT_TSS, segmentFromGdt, type Segment } from './gdt.js';
import { BOOT_GDT_ADDR, BOOT_IDT_ADDR, BOOT_STACK_POINTER, PML4_ADDR, ZERO_PAGE_ADDR } from './layout.js';

const O = (k: string): number => OFFSETOF[k] as number;

export function bootRegs(entry: number): Buffer {
  const b = Buffer.alloc(SIZEOF.kvm_regs as number);
  b.writeBigUInt64LE(2n, O('kvm_regs.rflags'));
  b.writeBigUInt64LE(BigInt(entry), O('kvm_regs.rip'));
  b.writeBigUInt64LE(BigInt(BOOT_STACK_POINTER), O('kvm_regs.rsp'));
  b.writeBigUInt64LE(BigInt(BOOT_STACK_POINTER), O('kvm_regs.rbp'));
  b.writeBigUInt64LE(BigInt(ZERO_PAGE_ADDR), O('kvm_regs.rsi'));
  return b;
}

function writeSegment(b: Buffer, off: number, s: Segment): void {
  b.writeBigUInt64LE(s.base, off);
  b.writeUInt32LE(s.limit >>> 0, off + 8);
  b.writeUInt16LE(s.selector, off + 12);
  b.writeUInt8(s.type, off + 14);
  b.writeUInt8(s.present, off + 15);
  b.writeUInt8(s.dpl, off + 16);
  b.writeUInt8(s.db, off + 17);
  b.writeUInt8(s.s, off + 18);
  b.writeUInt8(s.l, off + 19);
  b.writeUInt8(s.g, off + 20);
  b.writeUInt8(s.avl, off + 21);
  b.writeUInt8(s.unusable, off + 22);
}

export const CR0_PE = 0x1n;
export const CR0_ET = 0x10n;
export const CR0_PG = 0x8000_0000n;
export const CR4_PAE = 0x20n;
export const EFER_LME = 0x100n;
export const EFER_LMA = 0x400n;

/** Long mode with paging on the identity tables; modifies the kvm_sregs read from the vCPU. */
export function bootSregs(current: Buffer): Buffer {
  const b = Buffer.from(current);
  const code = segmentFromGdt(BOOT_GDT[GDT_CODE] as bigint, GDT_CODE);
  const data = segmentFromGdt(BOOT_GDT[GDT_DATA] as bigint, GDT_DATA);
  const tss = segmentFromGdt(BOOT_GDT[GDT_TSS] as bigint, GDT_TSS);
  writeSegment(b, O('kvm_sregs.cs'), code);
  for (const s of ['ds', 'es', 'fs', 'gs', 'ss']) writeSegment(b, O(`kvm_sregs.${s}`), data);
  writeSegment(b, O('kvm_sregs.tr'), tss);
  b.writeBigUInt64LE(BigInt(BOOT_GDT_ADDR), O('kvm_sregs.gdt'));
  b.writeUInt16LE(BOOT_GDT.length * 8 - 1, O('kvm_sregs.gdt') + 8);
  b.writeBigUInt64LE(BigInt(BOOT_IDT_ADDR), O('kvm_sregs.idt'));
  b.writeUInt16LE(7, O('kvm_sregs.idt') + 8);
  const cr0 = b.readBigUInt64LE(O('kvm_sregs.cr0'));
  b.writeBigUInt64LE(cr0 | CR0_PE | CR0_PG | CR0_ET, O('kvm_sregs.cr0'));
  b.writeBigUInt64LE(BigInt(PML4_ADDR), O('kvm_sregs.cr3'));
  const cr4 = b.readBigUInt64LE(O('kvm_sregs.cr4'));
  b.writeBigUInt64LE(cr4 | CR4_PAE, O('kvm_sregs.cr4'));
  const efer = b.readBigUInt64LE(O('kvm_sregs.efer'));
  b.writeBigUInt64LE(efer | EFER_LME | EFER_LMA, O('kvm_sregs.efer'));
  return b;
}

export function bootFpu(): Buffer {
  const b = Buffer.alloc(SIZEOF.kvm_fpu as number);
  b.writeUInt16LE(0x37f, O('kvm_fpu.fcw'));
  b.writeUInt32LE(0x1f80, O('kvm_fpu.mxcsr'));
  return b;
}

export const MSR_IA32_SYSENTER_CS = 0x174;
export const MSR_IA32_SYSENTER_ESP = 0x175;
export const MSR_IA32_SYSENTER_EIP = 0x176;
export const MSR_STAR = 0xc0000081;
export const MSR_LSTAR = 0xc0000082;
export const MSR_CSTAR = 0xc0000083;
export const MSR_SYSCALL_MASK = 0xc0000084;
export const MSR_KERNEL_GS_BASE = 0xc0000102;
export const MSR_IA32_TSC = 0x10;
export const MSR_IA32_MISC_ENABLE = 0x1a0;
export const MSR_MTRR_DEF_TYPE = 0x2ff;

export function bootMsrs(): Array<[number, bigint]> {
  return [
    [MSR_IA32_SYSENTER_CS, 0n],
    [MSR_IA32_SYSENTER_ESP, 0n],
    [MSR_IA32_SYSENTER_EIP, 0n],
    [MSR_STAR, 0n],
    [MSR_CSTAR, 0n],
    [MSR_KERNEL_GS_BASE, 0n],
    [MSR_SYSCALL_MASK, 0n],
    [MSR_LSTAR, 0n],
    [MSR_IA32_TSC, 0n],
    [MSR_IA32_MISC_ENABLE, 1n], // fast strings
    [MSR_MTRR_DEF_TYPE, (1n << 11n) | 6n], // MTRRs on, default write-back
  ];
}

const APIC_LVT0 = 0x350;
const APIC_LVT1 = 0x360;
const APIC_MODE_NMI = 0x4;
const APIC_MODE_EXTINT = 0x7;

/** LINT0 = ExtINT (the PIC), LINT1 = NMI. */
export function configureLapic(lapic: Buffer): Buffer {
  const b = Buffer.from(lapic);
  const set = (off: number, mode: number): void => {
    const v = b.readUInt32LE(off);
    b.writeUInt32LE(((v & ~0x700) | (mode << 8)) >>> 0, off);
  };
  set(APIC_LVT0, APIC_MODE_EXTINT);
  set(APIC_LVT1, APIC_MODE_NMI);
  return b;
}
