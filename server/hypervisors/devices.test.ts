// The backends' device arguments and hot-plug commands (pure, or against a recording QMP
// peer where no VMM can run here: the native VMM needs KVM). QEMU's hot-plug runs against a
// real QEMU in server/supervisor/drives.test.ts.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { QemuHypervisor, qemuDeviceArgs, qemuMemoryArgs, qemuValue } from './qemu.js';
import { NativeHypervisor, nativeDeviceArgs } from './native.js';
import { effectiveCmdline, type DriveSpec, type QmpCommands, type VmDevices } from './types.js';
import type { Vm } from '../db/vms.js';
import type { Image } from '../db/images.js';
import { mkdtempSync, readlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const drives: DriveSpec[] = [
  { id: 'rootfs', path: '/drives/rootfs', readOnly: true, cache: 'writeback', index: 0 },
  { id: 'drive-0', path: '/v/a,b.img', readOnly: false, cache: 'none', iops: 250, index: 2 },
  { id: 'drive-1', path: '/v/c.img', readOnly: false, cache: 'unsafe', index: 3 },
];
const devices: VmDevices = { drives, rng: true, balloon: { deflateOnOom: true }, kernelArgs: ['root=/dev/vda', 'capsule.overlay=/dev/vdb'] };

class Recorder implements QmpCommands {
  readonly calls: Array<[string, Record<string, unknown> | undefined]> = [];
  /** fds the peer received (as /proc/self/fd targets: what the fd pointed at) */
  readonly fdTargets: string[] = [];
  constructor(private readonly fail: string | undefined = undefined) {}
  async execute<T>(command: string, args?: Record<string, unknown>): Promise<T> {
    this.calls.push([command, args]);
    if (command === this.fail) throw new Error(`${command} failed`);
    if (command === 'query-hotplug-slots') return [{ addr: '0x0', driver: 'virtio-blk-mmio', id: 'busy' }, { addr: '0x1', driver: 'virtio-blk-mmio' }] as T;
    return {} as T;
  }
  async executeWithFds<T>(command: string, args: Record<string, unknown>, fds: number[]): Promise<T> {
    this.fdTargets.push(...fds.map((fd) => readlinkSync(`/proc/self/fd/${fd}`)));
    return this.execute<T>(command, args);
  }
}

test('QEMU on pc: -drive if=none backends with cache, read-only and throttling; virtio-*-pci devices in guest order', () => {
  const args = qemuDeviceArgs(devices, true);
  assert.deepEqual(args, [
    '-drive', 'if=none,id=rootfs,file=/drives/rootfs,format=raw,readonly=on,cache.direct=off,cache.no-flush=off',
    '-device', 'virtio-blk-pci,drive=rootfs,id=rootfs',
    '-drive', 'if=none,id=drive-0,file=/v/a,,b.img,format=raw,readonly=off,cache.direct=on,cache.no-flush=off,throttling.iops-total=250',
    '-device', 'virtio-blk-pci,drive=drive-0,id=drive-0',
    '-drive', 'if=none,id=drive-1,file=/v/c.img,format=raw,readonly=off,cache.direct=off,cache.no-flush=on',
    '-device', 'virtio-blk-pci,drive=drive-1,id=drive-1',
    '-object', 'rng-random,id=rng0,filename=/dev/urandom', '-device', 'virtio-rng-pci,rng=rng0,id=rng0',
    '-device', 'virtio-balloon-pci,id=balloon0,deflate-on-oom=on',
  ]);
  assert.equal(qemuValue('a,b,,c'), 'a,,b,,,,c');
});

test('QEMU on microvm (KVM): virtio-*-device on virtio-mmio; no drives, no rng: nothing', () => {
  const args = qemuDeviceArgs({ drives: [drives[1]!], rng: true, balloon: { deflateOnOom: false }, kernelArgs: [] }, false);
  assert.ok(args.includes('virtio-blk-device,drive=drive-0,id=drive-0'));
  assert.ok(args.includes('virtio-rng-device,rng=rng0,id=rng0'));
  assert.ok(args.includes('virtio-balloon-device,id=balloon0,deflate-on-oom=off'));
  assert.deepEqual(qemuDeviceArgs({ drives: [], rng: false, kernelArgs: [] }, false), []);
});

test('native VMM: -drive, -rng, -balloon in StratoVirt\'s syntax', () => {
  assert.deepEqual(nativeDeviceArgs(devices), [
    '-drive', 'id=rootfs,file=/drives/rootfs,readonly=on,direct=off,no-flush=off',
    '-drive', 'id=drive-0,file=/v/a,,b.img,readonly=off,direct=on,no-flush=off,iops=250',
    '-drive', 'id=drive-1,file=/v/c.img,readonly=off,direct=off,no-flush=on',
    '-rng', 'random_file=/dev/urandom',
    '-balloon', 'deflate-on-oom=on',
  ]);
  const native = new NativeHypervisor({ available: true, reason: 'unit' });
  const vm = { id: 'x', vcpus: 1, memoryMiB: 256, cmdline: undefined } as unknown as Vm;
  const image = { kernel: '/k', cmdline: 'console=ttyS0' } as Image;
  const fg = native.foregroundCommand(vm, image, { qmpSocket: '/qmp', consoleSocket: '/console', config: '/vmm.cfg' }, devices);
  assert.ok(fg.args.includes('-rng') && fg.args.includes('-balloon'));
  assert.equal(JSON.parse(fg.config!)['boot-source'].boot_args, 'console=ttyS0 root=/dev/vda capsule.overlay=/dev/vdb');
});

test('pmem: QEMU maps each file as an NVDIMM above RAM (maxmem = RAM + the files, 2 MiB-rounded: Kata\'s memory_offset), on pc with nvdimm=on; native gets -device virtio-pmem', () => {
  const MiB = 1024 * 1024;
  assert.deepEqual(qemuMemoryArgs(512, []), ['-m', '512M']);
  assert.deepEqual(qemuMemoryArgs(512, [{ id: 'rootfs', path: '/img/a,b.ext4', sizeBytes: 322 * MiB }]), [
    '-m', '512M,slots=1,maxmem=834M',
    '-object', 'memory-backend-file,id=pmem0,mem-path=/img/a,,b.ext4,size=337641472,share=off,readonly=on',
    '-device', 'nvdimm,id=rootfs,memdev=pmem0,unarmed=on',
  ]);
  // a size that is not a multiple of 2 MiB takes the next 2 MiB in the layout; two files, two slots
  const two = qemuMemoryArgs(256, [{ id: 'a', path: '/a', sizeBytes: 3 * MiB + 1 }, { id: 'b', path: '/b', sizeBytes: 2 * MiB }]);
  assert.deepEqual(two.slice(0, 2), ['-m', '256M,slots=2,maxmem=262M']);
  assert.ok(two.includes('nvdimm,id=b,memdev=pmem1,unarmed=on'));

  const pmem = { ...devices, drives: [drives[1]!], pmem: [{ id: 'rootfs', path: '/drives/rootfs', sizeBytes: 4 * MiB }] };
  const vm = { id: 'x', name: 'x', vcpus: 1, memoryMiB: 256, cmdline: undefined } as unknown as Vm;
  const image = { kernel: '/k', cmdline: 'console=ttyS0' } as Image;
  const paths = { qmpSocket: '/qmp', consoleSocket: '/console', config: '/vmm.cfg' };
  for (const kvm of [true, false]) {
    const q = new QemuHypervisor('/usr/bin/qemu-system-x86_64', kvm).foregroundCommand(vm, image, paths, pmem).args;
    assert.equal(q[q.indexOf('-M') + 1], 'pc,nvdimm=on', 'microvm has no NVDIMM: pc, with or without KVM');
    assert.equal(q[q.indexOf('-accel') + 1], kvm ? 'kvm' : 'tcg,tb-size=128');
    assert.equal(q[q.indexOf('-m') + 1], '256M,slots=1,maxmem=260M');
    assert.ok(q.includes('nvdimm,id=rootfs,memdev=pmem0,unarmed=on'));
    assert.ok(q.includes('virtio-blk-pci,drive=drive-0,id=drive-0'), 'pc: the disks are PCI');
  }
  const plain = new QemuHypervisor('/usr/bin/qemu-system-x86_64', true).foregroundCommand(vm, image, paths, devices).args;
  assert.match(plain[plain.indexOf('-M') + 1]!, /^microvm,/);
  assert.equal(plain[plain.indexOf('-m') + 1], '256M');
  assert.deepEqual(nativeDeviceArgs({ drives: [], pmem: [{ id: 'rootfs', path: '/d/r,1', sizeBytes: 2 * MiB }], rng: false, kernelArgs: [] }),
    ['-device', 'virtio-pmem,id=rootfs,file=/d/r,,1']);
});

test('the kernel command line gets the rootfs arguments after the VM\'s own', () => {
  const image = { cmdline: 'console=ttyS0 quiet' } as Image;
  assert.equal(effectiveCmdline({ cmdline: undefined } as unknown as Vm, image, devices), 'console=ttyS0 quiet root=/dev/vda capsule.overlay=/dev/vdb');
  assert.equal(effectiveCmdline({ cmdline: 'x=1' } as unknown as Vm, image, { ...devices, kernelArgs: [] }), 'x=1');
});

test('native hot-plug: the server opens the image and passes it with getfd; blockdev-add fd:NAME, device_add into the first free slot; rolled back on failure', async () => {
  const native = new NativeHypervisor({ available: true, reason: 'unit' });
  const img = join(mkdtempSync(join(tmpdir(), 'native-hp-')), 'v.img');
  writeFileSync(img, Buffer.alloc(4096));
  const drive: DriveSpec = { id: 'drive-0', path: img, readOnly: false, cache: 'none', iops: 250, index: 2 };
  const q = new Recorder();
  await native.attachDrive(q, drive);
  assert.deepEqual(q.fdTargets, [img], 'the fd sent is the image');
  assert.deepEqual(q.calls, [
    ['query-hotplug-slots', undefined],
    ['getfd', { fdname: 'img-drive-0' }],
    ['blockdev-add', { 'node-name': 'drive-0', file: { driver: 'file', filename: 'fd:img-drive-0' }, cache: { direct: true, 'no-flush': false }, 'read-only': false, iops: 250 }],
    ['device_add', { id: 'drive-0', driver: 'virtio-blk-mmio', addr: '0x1' }],
  ]);
  await native.detachDrive(q, 'drive-0');
  assert.deepEqual(q.calls.at(-1), ['device_del', { id: 'drive-0' }]);
  const failing = new Recorder('device_add');
  await assert.rejects(native.attachDrive(failing, { ...drive, id: 'drive-1' }), /device_add failed/);
  assert.deepEqual(failing.calls.at(-1), ['blockdev-del', { 'node-name': 'drive-1' }], 'the block node is removed again');
  await assert.rejects(native.attachDrive(new Recorder(), { ...drive, path: join(img, 'missing') }), /ENOTDIR|ENOENT/);
});

test('QEMU hot-plug: refused on microvm (KVM); on pc a device_add failure removes the block node', async () => {
  const kvm = new QemuHypervisor('/usr/bin/qemu-system-x86_64', true);
  const q = new Recorder();
  await assert.rejects(kvm.attachDrive(q, drives[1]!), (e: any) => e.status === 409 && e.code === 'hotplug_unsupported');
  assert.equal(q.calls.length, 0);
  const tcg = new QemuHypervisor('/usr/bin/qemu-system-x86_64', false);
  const failing = new Recorder('device_add');
  await assert.rejects(tcg.attachDrive(failing, drives[1]!), /device_add failed/);
  assert.deepEqual(failing.calls.map((c) => c[0]), ['blockdev-add', 'device_add', 'device_del', 'blockdev-del']);
  assert.deepEqual(failing.calls[0]![1], {
    driver: 'raw', 'node-name': 'drive-0', 'read-only': false, cache: { direct: true, 'no-flush': false },
    file: { driver: 'file', filename: '/v/a,b.img', 'read-only': false, cache: { direct: true, 'no-flush': false } },
  });
});
