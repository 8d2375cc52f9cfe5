// Benchmark: virtio-blk, native capsule-vmm (main-thread and iothread-served) vs qemu -M microvm
// (virtio-blk-device), all on KVM, same guest image, same size of raw disk file, in the same run
// (`npm run bench:blk`, which runs this inside the lab through scripts/kvm-tests.sh). Prints one
// JSON object and writes it to BENCH_SAVE when set.
//
// The workloads are fio's (the host's fio, packed into the guest's initramfs by guest-tools.ts),
// on the raw /dev/vda with O_DIRECT and libaio: 4 KiB random reads and writes at queue depth 32
// (IOPS), the same at depth 1 (per-request latency: the ioeventfd and interrupt path), and 1 MiB
// sequential reads and writes at depth 8 (MB/s). For native, QMP query-virtio gives the
// userspace exits per request (should be ~0: notifications are ioeventfds).
import { mkdtempSync, writeFileSync, truncateSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { spawn } from 'node:child_process';
import { ConsoleClient, QmpClient, startVmm, testImage, waitForFile } from '../vmm/testing/clients.js';
import { guestTool, initrdWithTools } from './guest-tools.js';

const work = mkdtempSync(join(tmpdir(), 'capsule-bench-blk-'));
const DISK_MIB = 256;
const RUNS = Number(process.env.BENCH_RUNS ?? 3);
const RUNTIME_S = Number(process.env.BENCH_RUNTIME_S ?? 5);
type Img = Awaited<ReturnType<typeof testImage>>;

interface Workload { name: string; fio: string; unit: 'MB/s' | 'IOPS' }
const WORKLOADS: Workload[] = [
  { name: 'randRead4kQd32', fio: '--rw=randread --bs=4k --iodepth=32', unit: 'IOPS' },
  { name: 'randWrite4kQd32', fio: '--rw=randwrite --bs=4k --iodepth=32', unit: 'IOPS' },
  { name: 'randRead4kQd1', fio: '--rw=randread --bs=4k --iodepth=1', unit: 'IOPS' },
  { name: 'randWrite4kQd1', fio: '--rw=randwrite --bs=4k --iodepth=1', unit: 'IOPS' },
  { name: 'seqRead1M', fio: '--rw=read --bs=1M --iodepth=8', unit: 'MB/s' },
  { name: 'seqWrite1M', fio: '--rw=write --bs=1M --iodepth=8', unit: 'MB/s' },
];

const fioCommand = (w: Workload): string => guestTool('fio', `--name=w --filename=/dev/vda --ioengine=libaio --direct=1 ${w.fio} ` +
  `--runtime=${RUNTIME_S} --ramp_time=1 --time_based --minimal 2>&1 | tail -1`);

/** fio --minimal (terse v3): field 7/8 read KiB/s and IOPS, 48/49 the same for writes. */
function fioResult(out: string, w: Workload): number {
  const line = out.split('\n').find((l) => l.startsWith('3;'));
  if (!line) throw new Error(`${w.name}: no fio result in: ${out.slice(-400)}`);
  const f = line.split(';');
  const write = w.fio.includes('write');
  const kibps = Number(f[write ? 47 : 6]);
  const iops = Number(f[write ? 48 : 7]);
  return w.unit === 'IOPS' ? iops : (kibps * 1024) / 1e6;
}

async function runWorkloads(con: ConsoleClient, q: QmpClient | null): Promise<Record<string, unknown>> {
  const out: Record<string, unknown> = {};
  for (const w of WORKLOADS) {
    const vals: number[] = [];
    let exitsPerReq: number | undefined;
    for (let i = 0; i < RUNS; i++) {
      const before = q ? ((await q.execute('query-virtio')) as { exits: number; devices: Array<{ id: string; metrics: Record<string, number> }> }) : null;
      const r = await con.run(fioCommand(w), (RUNTIME_S + 120) * 1000);
      vals.push(fioResult(r.out, w));
      if (q && before) {
        const after = (await q.execute('query-virtio')) as typeof before;
        const d = (v: typeof before): Record<string, number> => v.devices.find((x) => x.id === 'disk')?.metrics ?? {};
        const reqs = ['reads', 'writes', 'flushes'].reduce((n, k) => n + ((d(after)[k] ?? 0) - (d(before)[k] ?? 0)), 0);
        exitsPerReq = reqs > 0 ? Number(((after.exits - before.exits) / reqs).toFixed(4)) : undefined;
      }
    }
    vals.sort((a, b) => a - b);
    out[w.name] = { median: Number((vals[Math.floor(vals.length / 2)] as number).toFixed(1)), unit: w.unit, runs: vals.map((v) => Number(v.toFixed(1))), ...(exitsPerReq !== undefined ? { exitsPerRequest: exitsPerReq } : {}) };
  }
  return out;
}

function disk(name: string): string {
  const f = join(work, name);
  writeFileSync(f, Buffer.alloc(0));
  truncateSync(f, DISK_MIB << 20);
  return f;
}

/** Native capsule-vmm; with `iothread`, the disk's queue is served on an iothread. */
async function native(img: Img, initrd: string, iothread: boolean): Promise<Record<string, unknown>> {
  const tag = iothread ? 'ni' : 'n';
  const qmp = join(work, `${tag}.qmp`);
  const conPath = join(work, `${tag}.con`);
  const drive = `id=disk,file=${disk(`${tag}.img`)}${iothread ? ',iothread=io0' : ''}`;
  const vmm = startVmm(['-kernel', img.kernel, '-initrd', initrd, '-append', img.cmdline, '-m', '512M',
    '-api-channel', `unix:${qmp}`, '-chardev', `id=c,path=${conPath}`, ...(iothread ? ['-iothread', 'id=io0'] : []),
    '-drive', drive, '-hotplug-slots', '0']);
  await waitForFile(conPath, 30_000);
  const con = await ConsoleClient.connect(conPath);
  await con.waitFor(/CAPSULE_READY/, 180_000);
  await con.waitFor(/# /, 30_000);
  const q = await QmpClient.connect(qmp);
  const r = await runWorkloads(con, q);
  await q.execute('quit');
  await vmm.exited;
  q.close();
  con.close();
  return r;
}

async function qemu(img: Img, initrd: string): Promise<Record<string, unknown>> {
  const conPath = join(work, 'q.con');
  const p = spawn('qemu-system-x86_64', ['-accel', 'kvm', '-cpu', 'host', '-M', 'microvm,acpi=on,rtc=on,pit=on,pic=on,isa-serial=on', '-m', '512M',
    '-nodefaults', '-no-reboot', '-nographic', '-kernel', img.kernel, '-initrd', initrd, '-append', img.cmdline,
    '-chardev', `socket,id=c,path=${conPath},server=on,wait=off`, '-serial', 'chardev:c',
    '-drive', `id=disk,file=${disk('qemu.img')},format=raw,if=none,cache=writeback`, '-device', 'virtio-blk-device,drive=disk'], { stdio: 'ignore' });
  try {
    await waitForFile(conPath, 30_000);
    const con = await ConsoleClient.connect(conPath);
    await con.waitFor(/CAPSULE_READY/, 180_000);
    await con.waitFor(/# /, 30_000);
    const r = await runWorkloads(con, null);
    con.close();
    return r;
  } finally {
    p.kill('SIGKILL');
  }
}

const img = await testImage();
const initrd = initrdWithTools(img.initrd, work);
const n = await native(img, initrd, false);
const ni = await native(img, initrd, true);
const q = await qemu(img, initrd);
const ratioTo = (x: Record<string, unknown>): Record<string, number> => Object.fromEntries(WORKLOADS.map((w) =>
  [w.name, Number(((x[w.name] as { median: number }).median / (q[w.name] as { median: number }).median).toFixed(2))]));
const result = {
  bench: 'vmm-blk',
  date: new Date().toISOString(),
  where: process.env.CAPSULE_IN_LAB ? 'lab (nested KVM under TCG)' : 'host KVM',
  diskMiB: DISK_MIB,
  runs: RUNS,
  runtimeSeconds: RUNTIME_S,
  tool: 'fio (libaio, O_DIRECT, /dev/vda)',
  native: n,
  nativeIothread: ni,
  qemu: q,
  ratioNativeOverQemu: ratioTo(n),
  ratioNativeIothreadOverQemu: ratioTo(ni),
  target: 'ratio >= 1.0 for each workload',
};
console.log(JSON.stringify(result, null, 2));
if (process.env.BENCH_SAVE) writeFileSync(process.env.BENCH_SAVE, JSON.stringify(result, null, 2) + '\n');
process.exit(0);
