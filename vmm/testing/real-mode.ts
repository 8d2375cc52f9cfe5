// Lab tests' tiny guests: a vCPU set up to run flat real-mode code (every segment base and
// selector 0), used by the irqfd/ioeventfd and snapshot tests.
import type { VcpuFd } from '../kvm/kvm.js';
import { OFFSETOF, SIZEOF } from '../kvm/layout.js';

const SEGMENTS = ['cs', 'ds', 'es', 'fs', 'gs', 'ss'] as const;

/** Points the vCPU at `rip` in real mode with the stack at `rsp` (rflags: only the reserved bit). */
export function enterRealMode(vcpu: VcpuFd, rip: number, rsp = 0x8000): void {
  const s = vcpu.getSregs();
  for (const seg of SEGMENTS) {
    const at = OFFSETOF[`kvm_sregs.${seg}`] as number;
    s.writeBigUInt64LE(0n, at + (OFFSETOF['kvm_segment.base'] as number));
    s.writeUInt16LE(0, at + (OFFSETOF['kvm_segment.selector'] as number));
  }
  vcpu.setSregs(s);
  const r = Buffer.alloc(SIZEOF.kvm_regs as number);
  r.writeBigUInt64LE(BigInt(rip), OFFSETOF['kvm_regs.rip'] as number);
  r.writeBigUInt64LE(2n, OFFSETOF['kvm_regs.rflags'] as number);
  r.writeBigUInt64LE(BigInt(rsp), OFFSETOF['kvm_regs.rsp'] as number);
  vcpu.setRegs(r);
}
