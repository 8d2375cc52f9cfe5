// Is hardware virtualisation usable on this host?
//
// /dev/kvm existing is not enough: some nested environments expose a /dev/kvm whose guests
// cannot leave real mode (QEMU hangs after "Probing EDD"). Such hosts also hide the
// virtualisation flag from the CPU, so a working KVM needs both the device and a CPU that
// advertises VMX (Intel) or SVM (AMD). CAPSULE_KVM=0|1 overrides the probe.
import { accessSync, constants, readFileSync } from 'node:fs';

export interface KvmProbe {
  available: boolean;
  reason: string;
}

export function probeKvm(devicePath = '/dev/kvm', cpuinfoPath = '/proc/cpuinfo'): KvmProbe {
  const forced = process.env.CAPSULE_KVM;
  if (forced === '0') return { available: false, reason: 'disabled by CAPSULE_KVM=0' };
  try {
    accessSync(devicePath, constants.R_OK | constants.W_OK);
  } catch {
    return { available: false, reason: `${devicePath} is missing or not read-write` };
  }
  if (forced === '1') return { available: true, reason: 'forced by CAPSULE_KVM=1' };
  let cpuinfo = '';
  try {
    cpuinfo = readFileSync(cpuinfoPath, 'utf8');
  } catch {
    return { available: false, reason: `cannot read ${cpuinfoPath}` };
  }
  const flags = /^flags\s*:(.*)$/m.exec(cpuinfo)?.[1]?.split(/\s+/) ?? [];
  if (!flags.includes('vmx') && !flags.includes('svm')) {
    return { available: false, reason: `${devicePath} exists but the CPU advertises neither vmx nor svm (nested KVM without virtualisation extensions)` };
  }
  return { available: true, reason: `${devicePath} usable` };
}
