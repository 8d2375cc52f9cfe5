// The QEMU side of the device benches (bench:net, bench:mem): `qemu -M microvm` with the devices
// capsule-vmm gets in the same run — serial console on a Unix socket, virtio-blk on a raw file
// (writeback), virtio-net on a tap (userspace, or vhost), virtio-rng — started in the bench's
// network namespace. One command line, so the two benches compare against the same QEMU.
import { spawn, type ChildProcess } from 'node:child_process';

export interface QemuMicrovm {
  kernel: string; initrd: string; cmdline: string; ramMiB: number;
  /** where QEMU listens for the serial console */
  console: string;
  disk: string;
  tap: string; mac?: string; vhost?: boolean;
}

export function qemuMicrovmArgs(o: QemuMicrovm): string[] {
  return ['-accel', 'kvm', '-cpu', 'host', '-smp', '1', '-m', `${o.ramMiB}M`,
    '-M', 'microvm,acpi=on,rtc=on,pit=on,pic=on,isa-serial=on', '-nodefaults', '-no-reboot', '-nographic',
    '-kernel', o.kernel, '-initrd', o.initrd, '-append', o.cmdline,
    '-chardev', `socket,id=c,path=${o.console},server=on,wait=off`, '-serial', 'chardev:c',
    '-drive', `id=disk,file=${o.disk},format=raw,if=none,cache=writeback`, '-device', 'virtio-blk-device,drive=disk',
    '-netdev', `tap,id=n0,ifname=${o.tap},script=no,downscript=no,vhost=${o.vhost ? 'on' : 'off'}`,
    '-device', `virtio-net-device,netdev=n0${o.mac ? `,mac=${o.mac}` : ''}`,
    '-object', 'rng-random,id=r0,filename=/dev/urandom', '-device', 'virtio-rng-device,rng=r0'];
}

/** `ip netns exec NS qemu-system-x86_64 ...`: ip execs QEMU in place, so the child's pid is QEMU's. */
export function spawnQemuMicrovm(ns: string, o: QemuMicrovm): ChildProcess {
  return spawn('ip', ['netns', 'exec', ns, 'qemu-system-x86_64', ...qemuMicrovmArgs(o)], { stdio: ['ignore', 'ignore', 'pipe'] });
}
