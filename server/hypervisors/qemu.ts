// QEMU backend: `-M microvm` on KVM; `-M pc` under TCG (software emulation).
//
// Why pc under TCG: microvm has no HPET or ACPI PM timer, so the guest kernel calibrates its
// TSC against the PIT alone; under TCG on a loaded host that calibration fails and the boot
// then hangs for minutes (seen here: 2 of 2 microvm boots stuck at load 6, while 2 of 2 pc
// boots reached the ready marker in 16 s). With KVM, kvmclock gives the TSC frequency.
import { execFileSync } from 'node:child_process';
import { probeKvm } from '../../lib/kvm-probe.js';
import type { Image } from '../db/images.js';
import type { Vm } from '../db/vms.js';
import type { Availability, ForegroundPaths, Hypervisor, LaunchCommand, VmPaths } from './types.js';

/**
 * QEMU's -readconfig reads lines of at most 1023 bytes and values in double quotes without
 * escapes (QEMU 7.2, util/qemu-config.c; 1012 bytes of value measured here): the longest
 * command line it carries, with room to spare.
 */
export const QEMU_CONFIG_MAX_CMDLINE = 1000;

/**
 * The kernel command line as a -readconfig file ([machine] append, the file form of -append),
 * or undefined where that format cannot hold it (a double quote, too long, empty): then it
 * stays in argv, visible to local users in ps (docs/jail.md).
 */
export function qemuConfigFile(cmdline: string): string | undefined {
  if (cmdline === '' || /["\n\r\0]/.test(cmdline) || Buffer.byteLength(cmdline) > QEMU_CONFIG_MAX_CMDLINE) return undefined;
  return `[machine]\nappend = "${cmdline}"\n`;
}

export class QemuHypervisor implements Hypervisor {
  readonly name = 'qemu' as const;
  readonly resetExits = true; // -no-reboot turns a reset into an exit
  readonly limits = { minMemoryMiB: 64, maxVcpus: 254 };
  private cachedAvailability: Availability | undefined;
  private cachedSandbox: boolean | undefined;

  constructor(private readonly binary: string, private readonly kvm = probeKvm().available) {}

  availability(): Availability {
    if (!this.cachedAvailability) {
      try {
        const out = execFileSync(this.binary, ['--version'], { encoding: 'utf8', timeout: 10_000 });
        this.cachedAvailability = { available: true, reason: `${out.split('\n')[0]} (${this.kvm ? 'kvm' : 'tcg'})` };
      } catch (e) {
        this.cachedAvailability = { available: false, reason: `${this.binary} not runnable: ${(e as Error).message}` };
      }
    }
    return this.cachedAvailability;
  }

  /** `-sandbox on` needs QEMU built with seccomp (Debian's is); without it the option is refused. */
  private sandboxSupported(): boolean {
    if (this.cachedSandbox === undefined) {
      try {
        execFileSync(this.binary, ['-sandbox', 'on', '-version'], { timeout: 10_000, stdio: 'ignore' });
        this.cachedSandbox = true;
      } catch {
        this.cachedSandbox = false;
      }
    }
    return this.cachedSandbox;
  }

  launchCommand(vm: Vm, image: Image, paths: VmPaths): LaunchCommand {
    const { args: common, config } = this.commonArgs(vm, image, paths);
    const args = [
      ...common,
      '-pidfile', paths.pidfile,
      // -D keeps stderr (our log file) open after -daemonize instead of /dev/null.
      '-D', paths.log,
      '-msg', 'timestamp=on',
      '-daemonize',
    ];
    // elevateprivileges=deny and spawn=deny break -daemonize (setsid, fork) in QEMU 7.2.
    if (this.sandboxSupported()) args.push('-sandbox', 'on,obsolete=deny,resourcecontrol=deny');
    return config === undefined ? { command: this.binary, args } : { command: this.binary, args, config };
  }

  foregroundCommand(vm: Vm, image: Image, paths: ForegroundPaths): LaunchCommand {
    const { args: common, config } = this.commonArgs(vm, image, paths);
    const args = [...common, '-msg', 'timestamp=on'];
    // In the foreground QEMU neither forks nor calls setsid: the whole sandbox applies.
    if (this.sandboxSupported()) args.push('-sandbox', 'on,obsolete=deny,resourcecontrol=deny,elevateprivileges=deny,spawn=deny');
    return config === undefined ? { command: this.binary, args } : { command: this.binary, args, config };
  }

  jailFiles(): string[] {
    // Shared libraries (and QEMU's modules under /usr/lib/x86_64-linux-gnu/qemu), the dynamic
    // loader, and the firmware search path Debian builds in (/usr/share/qemu, seabios, ipxe).
    return ['/lib', '/lib64', '/usr/lib', '/usr/lib64', '/usr/share/qemu', '/usr/share/seabios'];
  }

  usesKvm(): boolean {
    return this.kvm;
  }

  private commonArgs(vm: Vm, image: Image, paths: ForegroundPaths): { args: string[]; config: string | undefined } {
    const cmdline = vm.cmdline ?? image.cmdline;
    const config = qemuConfigFile(cmdline);
    const machine = this.kvm
      ? ['-M', 'microvm,acpi=on,rtc=on,pit=on,pic=on,isa-serial=on', '-accel', 'kvm', '-cpu', 'host']
      : ['-M', 'pc', '-accel', 'tcg'];
    const args = [
      '-name', `capsule-${vm.id},process=capsule-${vm.id}`,
      ...machine,
      '-smp', String(vm.vcpus),
      '-m', `${vm.memoryMiB}M`,
      '-nodefaults', '-nographic', '-no-reboot', '-no-user-config',
      '-kernel', image.kernel,
      ...(image.initrd ? ['-initrd', image.initrd] : []),
      // The command line is the client's and may hold secrets: read from a file where it can.
      ...(config === undefined ? ['-append', cmdline] : ['-readconfig', paths.config]),
      '-chardev', `socket,id=console,path=${paths.consoleSocket},server=on,wait=off`,
      '-serial', 'chardev:console',
      '-qmp', `unix:${paths.qmpSocket},server=on,wait=off`,
    ];
    return { args, config };
  }
}
