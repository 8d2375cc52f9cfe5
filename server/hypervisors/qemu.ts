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
import { ApiError } from '../supervisor/errors.js';
import { loadQemuState, saveQemuState } from './qemu-migration.js';
import { effectiveCmdline, NO_DEVICES, type Availability, type DriveSpec, type PmemSpec, type ForegroundPaths, type Hypervisor, type LaunchCommand, type QmpCommands, type VmDevices, type VmPaths } from './types.js';

/** QEMU option values: a comma is written twice. */
/**
 * TCG's translated-code cache in MiB. QEMU's default is 1 GiB, filled as the guest runs more
 * code: a busy sandbox guest grew its VMM past guest memory + the jail's 256 MiB overhead and
 * the memory cgroup killed it (a 64 MiB upload through the NIC). 128 MiB holds a Linux guest's
 * working set; the cache is flushed and refilled when full.
 */
export const TCG_CODE_CACHE_MIB = 128;

export function qemuValue(s: string): string {
  return s.replace(/,/g, ',,');
}

const onOff = (b: boolean) => (b ? 'on' : 'off');

/** cache mode -> QEMU's cache.direct / cache.no-flush. */
export function cacheFlags(cache: DriveSpec['cache']): { direct: boolean; noFlush: boolean } {
  return { direct: cache === 'none', noFlush: cache === 'unsafe' };
}

/**
 * The device arguments of a VM: each drive as a `-drive if=none` backend (with its throttling)
 * and a virtio-blk device whose id is the drive's id, then the rng and the balloon. `pci`:
 * virtio-*-pci devices (machine pc; their order is the guest's vda, vdb, ...), else
 * virtio-*-device on microvm's virtio-mmio transports.
 */
export function qemuDeviceArgs(devices: VmDevices, pci: boolean): string[] {
  const dev = (kind: string) => `virtio-${kind}-${pci ? 'pci' : 'device'}`;
  const args: string[] = [];
  for (const d of devices.drives) {
    const { direct, noFlush } = cacheFlags(d.cache);
    const opts = [
      'if=none', `id=${d.id}`, `file=${qemuValue(d.path)}`, 'format=raw', `readonly=${onOff(d.readOnly)}`,
      `cache.direct=${onOff(direct)}`, `cache.no-flush=${onOff(noFlush)}`,
      ...(d.iops !== undefined ? [`throttling.iops-total=${d.iops}`] : []),
    ];
    args.push('-drive', opts.join(','), '-device', `${dev('blk')},drive=${d.id},id=${d.id}`);
  }
  if (devices.rng) args.push('-object', 'rng-random,id=rng0,filename=/dev/urandom', '-device', `${dev('rng')},rng=rng0,id=rng0`);
  if (devices.balloon) args.push('-device', `${dev('balloon')},id=balloon0,deflate-on-oom=${onOff(devices.balloon.deflateOnOom)}`);
  if (devices.userNet) {
    const fwd = devices.userNet.hostForwards.map((f) => `,hostfwd=tcp:127.0.0.1:${f.hostPort}-:${f.guestPort}`).join('');
    args.push('-netdev', `user,id=usernet0,restrict=on${fwd}`, '-device', `${dev('net')},netdev=usernet0,id=usernet0`);
  }
  // The tap exists already (the server made it, owned by the VMM's uid, in the namespace QEMU runs in).
  if (devices.net) args.push('-netdev', `tap,id=net0,ifname=${qemuValue(devices.net.tap)},script=no,downscript=no`, '-device', `${dev('net')},netdev=net0,id=net0,mac=${devices.net.mac}`);
  return args;
}

const MiB = 1024 * 1024;
/** NVDIMMs are placed in the hot-plug memory area in 2 MiB-aligned pieces. */
const NVDIMM_ALIGN = 2 * MiB;

/**
 * Guest RAM and the NVDIMMs around it (Kata's memory_offset): each pmem file is a slot in
 * the hot-plug memory area above RAM, so `maxmem` = RAM + the files' sizes (each rounded up
 * to 2 MiB) and there is one slot per file. Without pmem, just the RAM.
 */
export function qemuMemoryArgs(memoryMiB: number, pmem: readonly PmemSpec[]): string[] {
  if (pmem.length === 0) return ['-m', `${memoryMiB}M`];
  const offsetMiB = pmem.reduce((n, p) => n + Math.ceil(p.sizeBytes / NVDIMM_ALIGN) * (NVDIMM_ALIGN / MiB), 0);
  const args = ['-m', `${memoryMiB}M,slots=${pmem.length},maxmem=${memoryMiB + offsetMiB}M`];
  pmem.forEach((p, i) => {
    // share=off: the guest's writes (there should be none: unarmed) never reach the file.
    args.push('-object', `memory-backend-file,id=pmem${i},mem-path=${qemuValue(p.path)},size=${p.sizeBytes},share=off,readonly=on`);
    args.push('-device', `nvdimm,id=${p.id},memdev=pmem${i},unarmed=on`);
  });
  return args;
}

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
  readonly hotplugNeedsPath = true;
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

  launchCommand(vm: Vm, image: Image, paths: VmPaths, devices: VmDevices = NO_DEVICES): LaunchCommand {
    const { args: common, config } = this.commonArgs(vm, image, paths, devices);
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

  foregroundCommand(vm: Vm, image: Image, paths: ForegroundPaths, devices: VmDevices = NO_DEVICES): LaunchCommand {
    const { args: common, config } = this.commonArgs(vm, image, paths, devices);
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

  /**
   * pc (TCG): a raw block node over a file node (blockdev-add), then a virtio-blk-pci device on
   * the root bus, which the guest learns of through ACPI PCI hot-plug. microvm (KVM): its
   * virtio-mmio transports cannot take a device after boot.
   */
  async attachDrive(qmp: QmpCommands, d: DriveSpec): Promise<void> {
    if (this.kvm) throw new ApiError(409, 'hotplug_unsupported', 'QEMU\'s microvm machine (used with KVM) cannot hot-plug drives: attach the volume while the VM is stopped');
    const { direct, noFlush } = cacheFlags(d.cache);
    const cache = { direct, 'no-flush': noFlush };
    await qmp.execute('blockdev-add', {
      driver: 'raw', 'node-name': d.id, 'read-only': d.readOnly, cache,
      file: { driver: 'file', filename: d.path, 'read-only': d.readOnly, cache },
    });
    try {
      await qmp.execute('device_add', { driver: 'virtio-blk-pci', id: d.id, drive: d.id });
      if (d.iops !== undefined) {
        // The block backend is the proxy's virtio-blk child's (the proxy itself has none).
        await qmp.execute('block_set_io_throttle', { id: `/machine/peripheral/${d.id}/virtio-backend`, bps: 0, bps_rd: 0, bps_wr: 0, iops: d.iops, iops_rd: 0, iops_wr: 0 });
      }
    } catch (e) {
      await qmp.execute('device_del', { id: d.id }).catch(() => undefined);
      await qmp.execute('blockdev-del', { 'node-name': d.id }).catch(() => undefined);
      throw e;
    }
  }

  async detachDrive(qmp: QmpCommands, id: string): Promise<void> {
    await qmp.execute('device_del', { id });
  }

  /** A hot-plugged drive's block node stays after its device: delete it (boot drives' go with the device). */
  async releaseDrive(qmp: QmpCommands, id: string): Promise<void> {
    await qmp.execute('blockdev-del', { 'node-name': id }).catch(() => undefined);
  }

  snapshotSupport(): Availability {
    return { available: true, reason: 'QEMU migration to a file (copy restore)' };
  }

  saveSnapshot(qmp: QmpCommands, dir: string, timeoutMs: number): Promise<string[]> {
    return saveQemuState(qmp, dir, timeoutMs);
  }

  loadSnapshot(qmp: QmpCommands, dir: string, timeoutMs: number): Promise<void> {
    return loadQemuState(qmp, dir, timeoutMs);
  }

  private commonArgs(vm: Vm, image: Image, paths: ForegroundPaths, devices: VmDevices): { args: string[]; config: string | undefined } {
    const cmdline = effectiveCmdline(vm, image, devices);
    const config = qemuConfigFile(cmdline);
    const pmem = devices.pmem ?? [];
    // microvm has no NVDIMM (no NFIT): a VM with pmem runs on pc, with KVM where there is one.
    const pc = !this.kvm || pmem.length > 0;
    const machine = !pc
      ? ['-M', 'microvm,acpi=on,rtc=on,pit=on,pic=on,isa-serial=on', '-accel', 'kvm', '-cpu', 'host']
      : ['-M', pmem.length > 0 ? 'pc,nvdimm=on' : 'pc', ...(this.kvm ? ['-accel', 'kvm', '-cpu', 'host'] : ['-accel', `tcg,tb-size=${TCG_CODE_CACHE_MIB}`])];
    const args = [
      '-name', `capsule-${vm.id},process=capsule-${vm.id}`,
      ...machine,
      '-smp', String(vm.vcpus),
      ...qemuMemoryArgs(vm.memoryMiB, pmem),
      '-nodefaults', '-nographic', '-no-reboot', '-no-user-config',
      '-kernel', image.kernel,
      ...(image.initrd ? ['-initrd', image.initrd] : []),
      // The command line is the client's and may hold secrets: read from a file where it can.
      ...(config === undefined ? ['-append', cmdline] : ['-readconfig', paths.config]),
      '-chardev', `socket,id=console,path=${paths.consoleSocket},server=on,wait=off`,
      '-serial', 'chardev:console',
      '-qmp', `unix:${paths.qmpSocket},server=on,wait=off`,
      ...qemuDeviceArgs(devices, pc),
      // A VM generation ID (ACPI; pc only): a new one in every QEMU process, so a guest restored
      // from a snapshot is told it is a copy and reseeds its RNG (Linux's vmgenid driver).
      ...(pc ? ['-device', 'vmgenid,guid=auto,id=vmgenid0'] : []),
      ...(devices.incoming ? ['-incoming', 'defer'] : []),
    ];
    return { args, config };
  }
}
