// Native backend: capsule's own KVM VMM (bin/capsule-vmm), StratoVirt-style command line.
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { REPO_ROOT } from '../paths.js';
import type { Image } from '../db/images.js';
import type { Vm } from '../db/vms.js';
import type { Availability, ForegroundPaths, Hypervisor, LaunchCommand, VmPaths } from './types.js';
import { FORBIDDEN_SYSCALL_ENV } from '../../lib/vmm-test-hooks.js';
export const VMM_BIN = join(REPO_ROOT, 'bin', 'capsule-vmm');
const VMM_MAIN = join(REPO_ROOT, 'dist', 'vmm', 'main.js');

export class NativeHypervisor implements Hypervisor {
  readonly name = 'native' as const;
  /**
   * The VMM installs its seccomp filter after init, and under it a reset (guest reboot or QMP
   * system_reset) ends the VMM with SHUTDOWN guest-reset / host-qmp-system-reset and status 0
   * instead of rebuilding the KVM VM in place: the supervisor relaunches it. Only with
   * -disable-seccomp among the extra arguments does the VMM reboot in place.
   */
  readonly resetExits: boolean;
  readonly limits = { minMemoryMiB: 256, maxVcpus: 254 };

  constructor(private readonly kvm: { available: boolean; reason: string }, private readonly extraArgs: string[] = []) {
    this.resetExits = !extraArgs.includes('-disable-seccomp');
  }

  availability(): Availability {
    if (!this.kvm.available) return { available: false, reason: `needs KVM: ${this.kvm.reason}` };
    if (!existsSync(VMM_MAIN)) return { available: false, reason: `${VMM_MAIN} is missing (npm run build)` };
    return { available: true, reason: `${VMM_BIN} on /dev/kvm` };
  }

  launchCommand(vm: Vm, image: Image, paths: VmPaths): LaunchCommand {
    const args = [
      ...this.commonArgs(vm, image, paths),
      '-pidfile', paths.pidfile,
      '-D', paths.log,
      '-daemonize',
      ...this.extraArgs,
    ];
    return { command: process.execPath, args, env: this.env(), config: this.config(vm, image) };
  }

  /** In the foreground a bare -D logs to stderr, which the jail points at the VM's log. */
  foregroundCommand(vm: Vm, image: Image, paths: ForegroundPaths): LaunchCommand {
    return { command: process.execPath, args: [...this.commonArgs(vm, image, paths), '-D', ...this.extraArgs], env: this.env(), config: this.config(vm, image) };
  }

  /** The kernel command line in a -config file (docs/vmm.md): argv would show it to every local user. */
  private config(vm: Vm, image: Image): string {
    return `${JSON.stringify({ 'boot-source': { boot_args: vm.cmdline ?? image.cmdline } })}\n`;
  }

  /** Node's shared libraries, and the repository pieces bin/capsule-vmm loads (at their host paths). */
  jailFiles(): string[] {
    return [
      '/lib', '/lib64', '/usr/lib', '/usr/lib64',
      join(REPO_ROOT, 'package.json'), join(REPO_ROOT, 'bin'), join(REPO_ROOT, 'dist'), join(REPO_ROOT, 'node_modules'),
    ];
  }

  usesKvm(): boolean {
    return true;
  }

  private commonArgs(vm: Vm, image: Image, paths: ForegroundPaths): string[] {
    return [
      VMM_BIN,
      '-machine', 'microvm',
      '-smp', String(vm.vcpus),
      '-m', `${vm.memoryMiB}M`,
      '-kernel', image.kernel,
      ...(image.initrd ? ['-initrd', image.initrd] : []),
      '-config', paths.config,
      '-chardev', `id=console,path=${paths.consoleSocket}`,
      '-api-channel', `unix:${paths.qmpSocket}`,
    ];
  }

  private env(): NodeJS.ProcessEnv {
    const env: NodeJS.ProcessEnv = { CAPSULE_LOG_LEVEL: process.env.CAPSULE_VMM_LOG_LEVEL ?? 'info' };
    // Test-only (docs/vmm.md): makes every VMM this server starts call a forbidden syscall after
    // N ms, so that tests can see a seccomp kill reported as a crash. Nothing else passes through.
    const inject = process.env[FORBIDDEN_SYSCALL_ENV];
    if (inject !== undefined) env[FORBIDDEN_SYSCALL_ENV] = inject;
    return env;
  }
}
