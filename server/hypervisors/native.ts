// Native backend: capsule's own KVM VMM (bin/capsule-vmm), StratoVirt-style command line.
import { closeSync, existsSync, openSync } from 'node:fs';
import { QmpError } from '../qmp/client.js';
import { join } from 'node:path';
import { REPO_ROOT } from '../paths.js';
import type { Image } from '../db/images.js';
import type { Vm } from '../db/vms.js';
import { effectiveCmdline, NO_DEVICES, type Availability, type DriveSpec, type ForegroundPaths, type Hypervisor, type LaunchCommand, type QmpCommands, type VmDevices, type VmPaths } from './types.js';
import { FORBIDDEN_SYSCALL_ENV } from '../../lib/vmm-test-hooks.js';
import { VMM_NODE_FLAGS } from '../../lib/vmm-node-flags.js';
import { loadNativeState, saveNativeState } from './native-snapshot.js';

const onOff = (b: boolean) => (b ? 'on' : 'off');

/**
 * The device options of capsule-vmm (StratoVirt's syntax, docs/vmm.md): one `-drive` per disk
 * in guest order, `-device virtio-pmem` per pmem file, `-rng`, `-balloon`. A comma in a path is written twice (QEMU's escape).
 */
export function nativeDeviceArgs(devices: VmDevices): string[] {
  const args: string[] = [];
  for (const d of devices.drives) {
    const opts = [
      `id=${d.id}`, `file=${d.path.replace(/,/g, ',,')}`, `readonly=${onOff(d.readOnly)}`,
      `direct=${onOff(d.cache === 'none')}`, `no-flush=${onOff(d.cache === 'unsafe')}`,
      ...(d.iops !== undefined ? [`iops=${d.iops}`] : []),
    ];
    args.push('-drive', opts.join(','));
  }
  for (const p of devices.pmem ?? []) args.push('-device', `virtio-pmem,id=${p.id},file=${p.path.replace(/,/g, ',,')}`);
  if (devices.rng) args.push('-rng', 'random_file=/dev/urandom');
  if (devices.balloon) args.push('-balloon', `deflate-on-oom=${onOff(devices.balloon.deflateOnOom)}`);
  // The tap exists already in the VMM's network namespace, owned by its uid: opened by name before the seccomp filter.
  if (devices.net) args.push('-netdev', `id=net0,netdev=${devices.net.tap},mac=${devices.net.mac}`);
  return args;
}

export const VMM_BIN = join(REPO_ROOT, 'bin', 'capsule-vmm');
/** What bin/capsule-vmm runs: the bundle of vmm/ (vmm/build.mjs). */
const VMM_MAIN = join(REPO_ROOT, 'dist', 'vmm-bin', 'main.js');

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
  /** hot-plugged images come as fds the server opened (attachDrive) */
  readonly hotplugNeedsPath = false;

  constructor(private readonly kvm: { available: boolean; reason: string }, private readonly extraArgs: string[] = []) {
    this.resetExits = !extraArgs.includes('-disable-seccomp');
  }

  snapshotSupport(): Availability {
    return { available: true, reason: 'capsule-vmm snapshots: a state file and one memory file per region, restored copy-on-write (MAP_PRIVATE)' };
  }

  saveSnapshot(qmp: QmpCommands, dir: string, timeoutMs: number): Promise<string[]> {
    return saveNativeState(qmp, dir, timeoutMs);
  }

  loadSnapshot(qmp: QmpCommands, dir: string, timeoutMs: number): Promise<void> {
    return loadNativeState(qmp, dir, timeoutMs);
  }

  availability(): Availability {
    if (!this.kvm.available) return { available: false, reason: `needs KVM: ${this.kvm.reason}` };
    if (!existsSync(VMM_MAIN)) return { available: false, reason: `${VMM_MAIN} is missing (npm run build)` };
    return { available: true, reason: `${VMM_BIN} on /dev/kvm` };
  }

  launchCommand(vm: Vm, image: Image, paths: VmPaths, devices: VmDevices = NO_DEVICES): LaunchCommand {
    const args = [
      ...this.commonArgs(vm, image, paths, devices),
      '-pidfile', paths.pidfile,
      '-D', paths.log,
      '-daemonize',
      ...this.extraArgs,
    ];
    return { command: process.execPath, args: [...VMM_NODE_FLAGS, ...args], env: this.env(), config: this.config(vm, image, devices) };
  }

  /** In the foreground a bare -D logs to stderr, which the jail points at the VM's log. */
  foregroundCommand(vm: Vm, image: Image, paths: ForegroundPaths, devices: VmDevices = NO_DEVICES): LaunchCommand {
    return { command: process.execPath, args: [...VMM_NODE_FLAGS, ...this.commonArgs(vm, image, paths, devices), '-D', ...this.extraArgs], env: this.env(), config: this.config(vm, image, devices) };
  }

  /**
   * StratoVirt's hot-plug (its guidebook): a block backend named by node-name, then a
   * virtio-blk-mmio device whose id is that node-name, in MMIO slot `addr` (the drive's
   * guest-order index).
   */
  /**
   * Hot-replace (docs/vmm.md): the jailed VMM cannot open files under its seccomp filter, so the
   * server opens the image and hands the fd over with getfd; blockdev-add names it "fd:NAME".
   * The drive goes into the first empty replaceable slot the VMM reports.
   */
  async attachDrive(qmp: QmpCommands, d: DriveSpec): Promise<void> {
    const slots = await qmp.execute<Array<{ addr: string; id?: string }>>('query-hotplug-slots');
    const free = slots.find((s) => s.id === undefined);
    if (!free) throw new QmpError('GenericError', `no free hot-replace slot: all ${slots.length} are in use`);
    const fdname = `img-${d.id}`;
    const fd = openSync(d.path, d.readOnly ? 'r' : 'r+');
    try {
      await qmp.executeWithFds('getfd', { fdname }, [fd]);
    } finally {
      closeSync(fd); // the VMM has its own copy now
    }
    try {
      await qmp.execute('blockdev-add', {
        'node-name': d.id,
        file: { driver: 'file', filename: `fd:${fdname}` },
        cache: { direct: d.cache === 'none', 'no-flush': d.cache === 'unsafe' },
        'read-only': d.readOnly,
        ...(d.iops !== undefined ? { iops: d.iops } : {}),
      });
    } catch (e) {
      await qmp.execute('closefd', { fdname }).catch(() => undefined);
      throw e;
    }
    try {
      await qmp.execute('device_add', { id: d.id, driver: 'virtio-blk-mmio', addr: free.addr });
    } catch (e) {
      await qmp.execute('blockdev-del', { 'node-name': d.id }).catch(() => undefined);
      throw e;
    }
  }

  async detachDrive(qmp: QmpCommands, id: string): Promise<void> {
    await qmp.execute('device_del', { id });
  }

  async releaseDrive(qmp: QmpCommands, id: string): Promise<void> {
    await qmp.execute('blockdev-del', { 'node-name': id }).catch(() => undefined);
  }

  /** The kernel command line in a -config file (docs/vmm.md): argv would show it to every local user. */
  private config(vm: Vm, image: Image, devices: VmDevices): string {
    return `${JSON.stringify({ 'boot-source': { boot_args: effectiveCmdline(vm, image, devices) } })}\n`;
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

  private commonArgs(vm: Vm, image: Image, paths: ForegroundPaths, devices: VmDevices): string[] {
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
      ...nativeDeviceArgs(devices),
      ...(devices.incoming ? ['-incoming', 'defer'] : []),
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
