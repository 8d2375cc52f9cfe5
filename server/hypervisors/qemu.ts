// QEMU backend: `-M microvm` on KVM; `-M pc` under TCG (software emulation).
//
// Why pc under TCG: microvm has no HPET or ACPI PM timer, so the guest kernel calibrates its
// TSC against the PIT alone; under TCG on a loaded host that calibration fails and the boot
// then hangs for minutes (seen here: 2 of 2 microvm boots stuck at load 6, while 2 of 2 pc
// boots reached the ready marker in 16 s). With KVM, kvmclock gives the TSC frequency.
import { execFileSync } from 'node:child_process';
import { probeKvm } from '../../vmm/kvm/probe.js';
import type { Image } from '../db/images.js';
import type { Vm } from '../db/vms.js';
import type { Availability, Hypervisor, LaunchCommand, VmPaths } from './types.js';

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
      '-append', vm.cmdline ?? image.cmdline,
      '-chardev', `socket,id=console,path=${paths.consoleSocket},server=on,wait=off`,
      '-serial', 'chardev:console',
      '-qmp', `unix:${paths.qmpSocket},server=on,wait=off`,
      '-pidfile', paths.pidfile,
      // -D keeps stderr (our log file) open after -daemonize instead of /dev/null.
      '-D', paths.log,
      '-msg', 'timestamp=on',
      '-daemonize',
    ];
    // elevateprivileges=deny and spawn=deny break -daemonize (setsid, fork) in QEMU 7.2.
    if (this.sandboxSupported()) args.push('-sandbox', 'on,obsolete=deny,resourcecontrol=deny');
    return { command: this.binary, args };
  }
}
