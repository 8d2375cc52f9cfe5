// CPUID for each vCPU, from KVM_GET_SUPPORTED_CPUID: APIC ids, topology (each vCPU one core of one
// socket), the hypervisor bit, and a consistent XSAVE leaf (0xd).
import type { CpuidEntry } from '../kvm/kvm.js';

const HYPERVISOR = 1 << 31; // leaf 1 ECX
const HTT = 1 << 28; // leaf 1 EDX
const XSAVE = 1 << 26; // leaf 1 ECX
const OSXSAVE = 1 << 27;
const AVX = 1 << 28;

function bitsFor(n: number): number {
  let b = 0;
  while (1 << b < n) b++;
  return b;
}

export function filterCpuid(supported: CpuidEntry[], cpuIndex: number, cpuCount: number): CpuidEntry[] {
  const apicId = cpuIndex;
  const out: CpuidEntry[] = [];
  const coreBits = bitsFor(cpuCount);
  // XSAVE components that really exist (a sub-leaf with a non-zero size); see fixXsave.
  const xsaveSubs = supported.filter((e) => e.function === 0xd);
  const leaf1 = supported.find((e) => e.function === 1);
  const leaf7 = supported.find((e) => e.function === 7 && e.index === 0);
  const xsaveOk = fixXsave(xsaveSubs, {
    avx: ((leaf1?.ecx ?? 0) & AVX) !== 0,
    avx512f: ((leaf7?.ebx ?? 0) & (1 << 16)) !== 0,
    pku: ((leaf7?.ecx ?? 0) & (1 << 3)) !== 0,
  });
  for (const src of supported) {
    const e = { ...src };
    switch (e.function) {
      case 0x1:
        e.ebx = ((apicId & 0xff) << 24) | ((cpuCount & 0xff) << 16) | (8 << 8) | (e.ebx & 0xff);
        e.ecx |= HYPERVISOR;
        if (cpuCount > 1) e.edx |= HTT;
        else e.edx &= ~HTT;
        if (!xsaveOk) e.ecx &= ~(XSAVE | OSXSAVE | AVX);
        e.ecx &= ~OSXSAVE; // reflects CR4.OSXSAVE; KVM keeps it up to date
        break;
      case 0x4: {
        // deterministic cache parameters (Intel): cores per package, threads sharing the cache
        const level = (e.eax >> 5) & 7;
        e.eax &= 0x3fff;
        if (e.eax & 0x1f) {
          e.eax |= ((cpuCount - 1) & 0x3f) << 26;
          if (level === 3) e.eax |= ((cpuCount - 1) & 0xfff) << 14;
        }
        break;
      }
      case 0xb:
      case 0x1f:
        e.edx = apicId;
        if (e.index === 0) {
          e.eax = 0; e.ebx = 1; e.ecx = (1 << 8) | 0; // SMT level: 1 thread per core
        } else if (e.index === 1) {
          e.eax = coreBits; e.ebx = cpuCount; e.ecx = (2 << 8) | 1; // core level
        } else {
          e.eax = 0; e.ebx = 0; e.ecx = e.index & 0xff;
        }
        break;
      case 0xd:
        if (!xsaveOk) continue;
        if (!xsaveOk.keep.has(e.index)) continue;
        if (e.index === 0) {
          e.eax = xsaveOk.mask & 0xffffffff;
          e.edx = 0;
          e.ebx = xsaveOk.size;
          e.ecx = xsaveOk.size;
        } else if (e.index === 1) {
          e.eax &= ~(1 << 3); // no XSAVES: keeps the XSS-managed state out of the picture
          e.ebx = 0; e.ecx = 0; e.edx = 0;
        }
        break;
      case 0x80000008:
        e.ecx = (e.ecx & ~0xf0ff) | ((cpuCount - 1) & 0xff) | (coreBits << 12);
        break;
      case 0x8000001e:
        e.eax = apicId;
        e.ebx = apicId & 0xff; // core id; 1 thread per core
        e.ecx = 0;
        break;
      default:
        break;
    }
    out.push(e);
  }
  return out;
}

/**
 * Leaf 0xd under nested virtualisation can advertise components with no (or overlapping)
 * sub-leaf, which makes the guest print "XSAVE consistency problem" and fall back. Keep x87, SSE
 * and those user components whose sub-leaf has a size and an offset inside the standard area,
 * and recompute the sizes. null: no usable XSAVE (leaf missing or broken): hide XSAVE.
 */
export interface XsaveFeatures {
  avx: boolean;
  avx512f: boolean;
  pku: boolean;
}

export function fixXsave(subs: CpuidEntry[], f: XsaveFeatures): { mask: number; size: number; keep: Set<number> } | null {
  const s0 = subs.find((e) => e.index === 0);
  if (!s0 || !(s0.eax & 3)) return null;
  let mask = 0x3;
  let size = 576; // legacy area 512 + XSAVE header 64
  const keep = new Set<number>([0, 1]);
  for (let i = 2; i < 32; i++) {
    if (!(s0.eax & (1 << i))) continue;
    const s = subs.find((e) => e.index === i);
    if (!s || s.eax === 0 || s.ebx < 576) continue;
    // a component the guest kernel would not enable (its CPUID feature bit is missing) must not
    // be advertised either, or the sizes disagree ("XSAVE consistency problem")
    const usable = i === 2 ? f.avx : i >= 5 && i <= 7 ? f.avx512f && (mask & 4) !== 0 : i === 9 ? f.pku : false;
    if (!usable) continue;
    mask |= 1 << i;
    keep.add(i);
    size = Math.max(size, s.ebx + s.eax);
  }
  return { mask, size, keep };
}
