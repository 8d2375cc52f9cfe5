// Benchmark (run where KVM works, e.g. inside the lab: scripts/kvm-tests.sh runs only tests, so
// use `node dist/bench/vmm-boot.js` in a lab command). Prints one JSON object:
//  - boot: spawn -> CAPSULE_READY on the console, native capsule-vmm vs qemu -M microvm, median of N
//  - memory: USS/PSS (smaps_rollup) of each VMM idle after boot, 1 and 2 vCPUs; the native VMM
//    both as bin/capsule-vmm runs it (the bundle) and as tsc's modules (nativeModules_*)
//  - exits: PIO exit round trips/s for a guest `out` loop: worker thread (capsule's design),
//    blocking KVM_RUN on the main thread, and koffi async (libuv pool)
import { spawn } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import koffi from 'koffi';
import { procMem, type ProcMem } from '../vmm/testing/proc-mem.js';
import { ConsoleClient, QmpClient, REPO_ROOT, startVmm, testImage, VMM_BIN, waitForFile } from '../vmm/testing/clients.js';
import { Kvm } from '../vmm/kvm/kvm.js';
import { KVM_RUN } from '../vmm/kvm/ioctls.js';
import { EXIT, RUN } from '../vmm/kvm/layout.js';
import { ioctlInt } from '../vmm/kvm/sys.js';
import { GuestMemory } from '../vmm/memory/guest-memory.js';
import { VcpuThreads } from '../vmm/cpu/vcpus.js';

const RUNS = Number(process.env.BENCH_RUNS ?? 5);
const READY = /CAPSULE_READY cpus=(\d+)/;
const work = mkdtempSync(join(tmpdir(), 'capsule-bench-'));

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)] as number;
};

const GUEST_RAM_KIB = 256 * 1024; // both VMMs boot with -m 256M

const smaps = (pid: number): ProcMem => procMem(pid, GUEST_RAM_KIB);

type Img = Awaited<ReturnType<typeof testImage>>;

/** The VMM as tsc's separate modules, not the bundle bin/capsule-vmm runs: what the bundle saves. */
const MODULES_ENTRY = join(REPO_ROOT, 'dist', 'vmm', 'main.js');

async function bootNative(img: Img, cpus: number, measureMem: boolean, entry = VMM_BIN): Promise<{ ms: number; mem?: ReturnType<typeof smaps> }> {
  const qmp = join(work, `n${Date.now()}.qmp`);
  const con = join(work, `n${Date.now()}.con`);
  const t0 = performance.now();
  const vmm = startVmm(['-kernel', img.kernel, '-initrd', img.initrd, '-append', img.cmdline, '-smp', String(cpus),
    '-api-channel', `unix:${qmp}`, '-chardev', `id=c,path=${con}`], {}, [], entry);
  await waitForFile(con, 30000);
  const c = await ConsoleClient.connect(con);
  await c.waitFor(READY, 180000);
  const ms = performance.now() - t0;
  let mem;
  if (measureMem) {
    await new Promise((r) => setTimeout(r, 3000));
    mem = smaps(vmm.child.pid as number);
  }
  const q = await QmpClient.connect(qmp);
  await q.execute('quit');
  await vmm.exited;
  q.close();
  c.close();
  return mem ? { ms, mem } : { ms };
}

async function bootQemu(img: Img, cpus: number, measureMem: boolean): Promise<{ ms: number; mem?: ReturnType<typeof smaps> }> {
  const t0 = performance.now();
  const q = spawn('qemu-system-x86_64', ['-accel', 'kvm', '-cpu', 'host', '-M', 'microvm', '-m', '256M', '-smp', String(cpus),
    '-nodefaults', '-no-reboot', '-nographic', '-serial', 'stdio', '-kernel', img.kernel, '-initrd', img.initrd,
    '-append', img.cmdline], { stdio: ['pipe', 'pipe', 'pipe'] });
  let out = '';
  q.stdout.setEncoding('utf8');
  await new Promise<void>((resolve, reject) => {
    const t = setTimeout(() => reject(new Error('qemu boot timeout')), 180000);
    q.stdout.on('data', (d: string) => {
      out += d;
      if (READY.test(out)) {
        clearTimeout(t);
        resolve();
      }
    });
    q.once('exit', (code) => reject(new Error(`qemu exited ${code}: ${out.slice(-500)}`)));
  });
  const ms = performance.now() - t0;
  let mem;
  if (measureMem) {
    await new Promise((r) => setTimeout(r, 3000));
    mem = smaps(q.pid as number);
  }
  q.removeAllListeners('exit');
  const gone = new Promise((r) => q.once('exit', r));
  q.kill('SIGTERM');
  await gone;
  return mem ? { ms, mem } : { ms };
}

/** A real-mode guest looping on `out 0x80, al`; returns round trips per second for each mode. */
async function exitRate(seconds = 3): Promise<Record<string, number>> {
  const kvm = new Kvm();
  const results: Record<string, number> = {};
  const mkVm = () => {
    const vm = kvm.createVm();
    const mem = GuestMemory.create({ size: 1 << 20 });
    mem.write(0x1000 as never, Uint8Array.of(0xe6, 0x80, 0xeb, 0xfc)); // out 0x80,al; jmp $-2
    vm.setUserMemoryRegion(0, 0n, BigInt(1 << 20), mem.hostAddr);
    const v = vm.createVcpu(0);
    const sr = v.getSregs();
    sr.writeBigUInt64LE(0n, 0); // cs.base
    sr.writeUInt16LE(0, 12); // cs.selector
    v.setSregs(sr);
    const r = Buffer.alloc(144);
    r.writeBigUInt64LE(0x1000n, 128);
    r.writeBigUInt64LE(2n, 136);
    v.setRegs(r);
    return { vm, mem, v };
  };
  {
    const { vm, mem, v } = mkVm();
    let n = 0;
    const end = performance.now() + seconds * 1000;
    while (performance.now() < end) {
      ioctlInt(v.fd, KVM_RUN, 0);
      if (v.runView.getUint32(RUN.exitReason, true) === EXIT.IO) n++;
    }
    results.mainThreadSync = Math.round(n / seconds);
    v.close(); vm.close(); mem.close();
  }
  {
    const { vm, mem, v } = mkVm();
    let n = 0;
    const threads = new VcpuThreads({ onExit: () => { n++; }, onShutdown: () => {}, onSystemEvent: () => {}, onFatal: (_i, d) => { throw new Error(d); } });
    await threads.start([v]);
    const n0 = n;
    await new Promise((r) => setTimeout(r, seconds * 1000));
    results.workerThread = Math.round((n - n0) / seconds);
    await threads.stop();
    v.close(); vm.close(); mem.close();
  }
  {
    const { vm, mem, v } = mkVm();
    const libc = koffi.load('libc.so.6');
    const ioctlAsync = libc.func('ioctl', 'int', ['int', 'unsigned long', 'unsigned long']);
    let n = 0;
    const end = performance.now() + seconds * 1000;
    await new Promise<void>((resolve) => {
      const step = (): void => {
        if (performance.now() >= end) return resolve();
        ioctlAsync.async(v.fd, KVM_RUN, 0, () => {
          n++;
          step();
        });
      };
      step();
    });
    results.koffiAsync = Math.round(n / seconds);
    v.close(); vm.close(); mem.close();
  }
  return results;
}

async function main(): Promise<void> {
  const img = await testImage();
  const out: Record<string, unknown> = { runs: RUNS, image: img, node: process.version };
  out.exitRoundTripsPerSec = await exitRate();
  const native: number[] = [];
  const qemu: number[] = [];
  for (let i = 0; i < RUNS; i++) {
    native.push((await bootNative(img, 1, false)).ms);
    qemu.push((await bootQemu(img, 1, false)).ms);
  }
  out.bootToReadyMs = {
    native: { median: Math.round(median(native)), all: native.map(Math.round) },
    qemuMicrovm: { median: Math.round(median(qemu)), all: qemu.map(Math.round) },
    ratioNativeOverQemu: Number((median(native) / median(qemu)).toFixed(3)),
  };
  const mem: Record<string, unknown> = {};
  for (const cpus of [1, 2]) {
    mem[`native_${cpus}vcpu`] = (await bootNative(img, cpus, true)).mem;
    mem[`nativeModules_${cpus}vcpu`] = (await bootNative(img, cpus, true, MODULES_ENTRY)).mem;
    mem[`qemu_${cpus}vcpu`] = (await bootQemu(img, cpus, true)).mem;
  }
  out.idleMemoryKiB = mem;
  process.stdout.write(JSON.stringify(out, null, 2) + '\n');
}

main().catch((e) => {
  process.stderr.write(`bench failed: ${(e as Error).stack}\n`);
  process.exit(1);
});
