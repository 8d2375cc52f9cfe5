// Which MSRs a snapshot saves. KVM_GET_MSR_INDEX_LIST names every MSR KVM can save on this host,
// but not all of them belong in a snapshot and not all of them are readable for a given vCPU, and
// some MSRs a guest relies on are missing from it. The selection follows Firecracker
// (src/vmm/src/arch/x86_64/msr.rs `msr_should_serialize`, cpuid/common.rs `msrs_to_save_by_cpuid`):
//
// - keep an index from KVM's list only if it falls in one of SERIALIZABLE below: architectural
//   state (SYSENTER/SYSCALL, FS/GS bases, EFER, TSC, TSC_DEADLINE, APIC base, MTRRs, MCE banks,
//   MISC_ENABLE, SPEC_CTRL, XSS, ...) and KVM's own paravirtual MSRs (kvmclock, async PF, steal
//   time, PV EOI: 0x4b564d00-0x4b564dff). Hyper-V, VMX capability and PMU MSRs are left out;
//   IA32_MCG_CTL is refused by kernels unless MCG_CAP.CTL_P is set, so it is left out too.
// - add the MSRs KVM emulates without listing them, when the guest's CPUID has the feature: the
//   MTRRs (variable 0x200-0x20f, fixed, PAT, default type) with CPUID.1:EDX.MTRR, the 32 MCE
//   banks KVM configures by default (0x400-0x47f) with CPUID.1:EDX.MCE, BNDCFGS with MPX.
// - MSR_IA32_TSC_DEADLINE goes last on restore (DEFERRED): KVM arms the deadline timer against the
//   current TSC, so writing it before IA32_TSC loses or misfires the timer.
import type { CpuidEntry } from '../kvm/kvm.js';

export const MSR_IA32_TSC = 0x10;
export const MSR_IA32_APICBASE = 0x1b;
export const MSR_IA32_MCG_CTL = 0x17b;
export const MSR_IA32_TSC_DEADLINE = 0x6e0;
export const MSR_MTRR_DEF_TYPE = 0x2ff;
export const MSR_IA32_CR_PAT = 0x277;
export const MSR_IA32_BNDCFGS = 0xd90;
/** KVM's paravirtual MSRs (MSR_KVM_WALL_CLOCK_NEW, SYSTEM_TIME_NEW, ASYNC_PF_*, STEAL_TIME, PV_EOI_EN, POLL_CONTROL) */
export const MSR_KVM_RANGE: readonly [number, number] = [0x4b564d00, 0x100];

/** [first index, count] */
type Range = readonly [number, number];

const SERIALIZABLE: readonly Range[] = [
  [0x0, 1], // IA32_P5_MC_ADDR
  [0x1, 1], // IA32_P5_MC_TYPE
  [MSR_IA32_TSC, 1],
  [0x17, 1], // IA32_PLATFORM_ID
  [MSR_IA32_APICBASE, 1],
  [0x2a, 1], // EBL_CR_POWERON
  [0x2c, 1], // EBC_FREQUENCY_ID
  [0x34, 1], // SMI_COUNT
  [0x3a, 1], // IA32_FEAT_CTL
  [0x3b, 1], // IA32_TSC_ADJUST
  [0x48, 1], // IA32_SPEC_CTRL
  [0x49, 1], // IA32_PRED_CMD
  [0x79, 1], // IA32_UCODE_WRITE
  [0x8b, 1], // IA32_UCODE_REV
  [0x9e, 1], // IA32_SMBASE
  [0xcd, 1], // FSB_FREQ
  [0xce, 1], // PLATFORM_INFO
  [0xe2, 1], // PKG_CST_CONFIG_CONTROL
  [0xe7, 1], // IA32_MPERF
  [0xe8, 1], // IA32_APERF
  [0xfe, 1], // MTRRcap
  [0x11e, 1], // BBL_CR_CTL3
  [0x122, 1], // IA32_TSX_CTRL
  [0x140, 1], // MISC_FEATURES_ENABLES
  [0x174, 3], // IA32_SYSENTER_CS/ESP/EIP
  [0x179, 1], // IA32_MCG_CAP
  [0x17a, 1], // IA32_MCG_STATUS
  [MSR_IA32_MCG_CTL, 1], // listed like Firecracker, but msrShouldSerialize() refuses it
  [0x198, 1], // IA32_PERF_STATUS
  [0x1a0, 1], // IA32_MISC_ENABLE
  [0x1a4, 1], // MISC_FEATURE_CONTROL
  [0x1aa, 1], // MISC_PWR_MGMT
  [0x1ad, 2], // TURBO_RATIO_LIMIT, TURBO_RATIO_LIMIT1
  [0x1d9, 1], // IA32_DEBUGCTL
  [0x1db, 4], // LASTBRANCHFROMIP, LASTBRANCHTOIP, LASTINTFROMIP, LASTINTTOIP
  [0x1fc, 1], // IA32_POWER_CTL
  [0x200, 0x100], // MTRRs (variable, fixed, PAT, default type)
  [0x3fc, 3], // CORE_C3/C6/C7_RESIDENCY
  [0x400, 0x80], // IA32_MC0_CTL.. : the 32 MCE banks
  [0x606, 1], // RAPL_POWER_UNIT
  [0x60a, 3], // PKGC3/6/7_IRTL
  [0x610, 2], // PKG_POWER_LIMIT, PKG_ENERGY_STATUS
  [0x613, 2], // PKG_PERF_STATUS, PKG_POWER_INFO
  [0x618, 2], // DRAM_POWER_LIMIT, DRAM_ENERGY_STATUS
  [0x61b, 2], // DRAM_PERF_STATUS, DRAM_POWER_INFO
  [0x648, 5], // CONFIG_TDP_NOMINAL, LEVEL_1, LEVEL_2, CONTROL, TURBO_ACTIVATION_RATIO
  [MSR_IA32_TSC_DEADLINE, 1],
  [0x800, 0x400], // x2APIC registers
  [0xda0, 1], // IA32_XSS: without it a guest's XRSTORS of supervisor state (CET, PT) faults
  [0xc0000080, 1], // EFER
  [0xc0000081, 4], // STAR, LSTAR, CSTAR, SYSCALL_MASK
  [0xc0000100, 4], // FS_BASE, GS_BASE, KERNEL_GS_BASE, TSC_AUX
  [0xc0010015, 1], // K7_HWCR
  MSR_KVM_RANGE,
];

const inRange = (i: number, [base, n]: Range): boolean => i >= base && i < base + n;

/** Whether an MSR from KVM_GET_MSR_INDEX_LIST belongs in a snapshot. */
export function msrShouldSerialize(index: number): boolean {
  if (index === MSR_IA32_MCG_CTL) return false;
  return SERIALIZABLE.some((r) => inRange(index >>> 0, r));
}

function cpuidBit(cpuid: ReadonlyArray<CpuidEntry>, fn: number, index: number, reg: 'eax' | 'ebx' | 'ecx' | 'edx', bit: number): boolean {
  return cpuid.some((e) => e.function === fn && e.index === index && ((e[reg] >>> bit) & 1) === 1);
}

const range = (base: number, n: number): number[] => Array.from({ length: n }, (_, i) => base + i);

/** MSRs KVM emulates but does not list, that the guest uses when its CPUID has the feature. */
export function msrsByCpuid(cpuid: ReadonlyArray<CpuidEntry>): number[] {
  const out: number[] = [];
  if (cpuidBit(cpuid, 0x7, 0, 'ebx', 14)) out.push(MSR_IA32_BNDCFGS); // MPX
  if (cpuidBit(cpuid, 0x1, 0, 'edx', 12)) { // MTRR
    out.push(...range(0x200, 0x10), 0x250, 0x258, 0x259, ...range(0x268, 8), MSR_IA32_CR_PAT, MSR_MTRR_DEF_TYPE);
  }
  if (cpuidBit(cpuid, 0x1, 0, 'edx', 7)) out.push(...range(0x400, 0x80)); // MCE: KVM's default 32 banks
  return out;
}

/**
 * The MSRs to save for a vCPU with this CPUID: KVM's list filtered, plus the CPUID-dependent
 * ones, without duplicates, ascending, with TSC_DEADLINE (when present) moved to the end so the
 * restore writes it after IA32_TSC.
 */
export function msrsToSave(kvmIndexList: ReadonlyArray<number>, cpuid: ReadonlyArray<CpuidEntry>): number[] {
  const set = new Set<number>();
  for (const i of kvmIndexList) if (msrShouldSerialize(i)) set.add(i >>> 0);
  for (const i of msrsByCpuid(cpuid)) set.add(i);
  const sorted = [...set].sort((a, b) => a - b);
  return [...sorted.filter((i) => !DEFERRED.has(i)), ...sorted.filter((i) => DEFERRED.has(i))];
}

/** MSRs restored in a KVM_SET_MSRS call of their own, after all the others (see the header). */
export const DEFERRED: ReadonlySet<number> = new Set([MSR_IA32_TSC_DEADLINE]);

/**
 * Splits for KVM_GET/SET_MSRS: at most `max` per call, and every DEFERRED MSR in a final call of
 * its own (after IA32_TSC, which is in an earlier one).
 */
export function msrBatches<T>(entries: ReadonlyArray<T>, indexOf: (e: T) => number, max: number): T[][] {
  const now = entries.filter((e) => !DEFERRED.has(indexOf(e)));
  const later = entries.filter((e) => DEFERRED.has(indexOf(e)));
  const out: T[][] = [];
  for (let i = 0; i < now.length; i += max) out.push(now.slice(i, i + max));
  for (let i = 0; i < later.length; i += max) out.push(later.slice(i, i + max));
  return out;
}
