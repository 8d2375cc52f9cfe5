// Native backend: capsule's own KVM VMM (bin/capsule-vmm), StratoVirt-style command line.
import { existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Image } from '../db/images.js';
import type { Vm } from '../db/vms.js';
import type { Availability, Hypervisor, LaunchCommand, VmPaths } from './types.js';

const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
export const VMM_BIN = join(REPO_ROOT, 'bin', 'capsule-vmm');
const VMM_MAIN = join(REPO_ROOT, 'dist', 'vmm', 'main.js');

export class NativeHypervisor implements Hypervisor {
  readonly name = 'native' as const;
  readonly resetExits = false; // system_reset reboots the guest inside the same VMM
  readonly limits = { minMemoryMiB: 256, maxVcpus: 254 };

  constructor(private readonly kvm: { available: boolean; reason: string }, private readonly extraArgs: string[] = []) {}

  availability(): Availability {
    if (!this.kvm.available) return { available: false, reason: `needs KVM: ${this.kvm.reason}` };
    if (!existsSync(VMM_MAIN)) return { available: false, reason: `${VMM_MAIN} is missing (npm run build)` };
    return { available: true, reason: `${VMM_BIN} on /dev/kvm` };
  }

  launchCommand(vm: Vm, image: Image, paths: VmPaths): LaunchCommand {
    const args = [
      VMM_BIN,
      '-machine', 'microvm',
      '-smp', String(vm.vcpus),
      '-m', `${vm.memoryMiB}M`,
      '-kernel', image.kernel,
      ...(image.initrd ? ['-initrd', image.initrd] : []),
      '-append', vm.cmdline ?? image.cmdline,
      '-chardev', `id=console,path=${paths.consoleSocket}`,
      '-api-channel', `unix:${paths.qmpSocket}`,
      '-pidfile', paths.pidfile,
      '-D', paths.log,
      '-daemonize',
      ...this.extraArgs,
    ];
    return { command: process.execPath, args, env: { CAPSULE_LOG_LEVEL: process.env.CAPSULE_VMM_LOG_LEVEL ?? 'info' } };
  }
}
