// Benchmark: virtio-blk, native capsule-vmm vs qemu -M microvm (virtio-blk-device), both on KVM,
// same guest image, same raw disk file, in the same run (`npm run bench:blk`, which runs this
// inside the lab through scripts/kvm-tests.sh). Prints one JSON object and writes it to
// bench/results/ when BENCH_SAVE is set.
//
// The default guest is busybox (no fio), so the workloads are dd's: sequential 1 MiB reads and
// writes (MB/s), and 4 KiB O_DIRECT reads and writes at queue depth 1 (IOPS: one request in
// flight, so this is per-request latency, the number ioeventfd and the interrupt path decide).
// For native, QMP query-virtio gives the userspace exits per request.
import { mkdtempSync, writeFileSync, truncateSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { spawn } from 'node:child_process';
import { ConsoleClient, QmpClient, startVmm, testImage, waitForFile } from '../vmm/testing/clients.js';

const work = mkdtempSync(join(tmpdir(), 'capsule-bench-blk-'));
const DISK_MIB = 256;
const RUNS = Number(process.env.BENCH_RUNS ?? 3);
type Img = Awaited<ReturnType<typeof testImage>>;

interface Workload { name: string; cmd: string; unit: 'MB/s' | 'IOPS'; ops?: number }
const WORKLOADS: Workload[] = [
  { name: 'seqRead1M', cmd: `echo 3 > /proc/sys/vm/drop_caches; dd if=/dev/vda of=/dev/null bs=1M count=${DISK_MIB}`, unit: 'MB/s' },
  { name: 'seqWrite1M', cmd: `dd if=/dev/zero of=/dev/vda bs=1M count=${DISK_MIB} conv=fsync`, unit: 'MB/s' },
  { name: 'read4kQd1Direct', cmd: 'dd if=/dev/vda of=/dev/null bs=4k count=4096 iflag=direct', unit: 'IOPS', ops: 4096 },
  { name: 'write4kQd1Direct', cmd: 'dd if=/dev/zero of=/dev/vda bs=4k count=4096 oflag=direct', unit: 'IOPS', ops: 4096 },
];

/** Debian's busybox dd prints no timing: the guest's /proc/uptime around it (10 ms steps). */
const timed = (cmd: string): string =>
  `a=$(cut -d" " -f1 /proc/uptime); ${cmd} >/dev/null 2>&1; s=$?; b=$(cut -d" " -f1 /proc/uptime); echo "ELAPSED $a $b $s"`;
function ddSeconds(out: string): number {
  const m = /ELAPSED ([\d.]+) ([\d.]+) (\d+)/.exec(out);
  if (!m) throw new Error(`no timing in: ${out.slice(-300)}`);
  if (m[3] !== '0') throw new Error(`dd failed (status ${m[3]}): ${out.slice(-300)}`);
  return Math.max(0.01, Number(m[2]) - Number(m[1]));
}

async function runWorkloads(con: ConsoleClient, q: QmpClient | null): Promise<Record<string, unknown>> {
  const out: Record<string, unknown> = {};
  for (const w of WORKLOADS) {
    const vals: number[] = [];
    let exitsPerReq: number | undefined;
    for (let i = 0; i < RUNS; i++) {
      const before = q ? ((await q.execute('query-virtio')) as { exits: number; devices: Array<{ id: string; metrics: Record<string, number> }> }) : null;
      const r = await con.run(timed(w.cmd), 300_000);
      const s = ddSeconds(r.out);
      vals.push(w.unit === 'MB/s' ? (DISK_MIB * 1.048576) / s : (w.ops as number) / s);
      if (q && before) {
        const after = (await q.execute('query-virtio')) as typeof before;
        const d = (v: typeof before): Record<string, number> => v.devices.find((x) => x.id === 'disk')?.metrics ?? {};
        const reqs = ['reads', 'writes', 'flushes'].reduce((n, k) => n + ((d(after)[k] ?? 0) - (d(before)[k] ?? 0)), 0);
        exitsPerReq = reqs > 0 ? Number(((after.exits - before.exits) / reqs).toFixed(3)) : undefined;
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

async function native(img: Img): Promise<Record<string, unknown>> {
  const qmp = join(work, 'n.qmp');
  const conPath = join(work, 'n.con');
  const vmm = startVmm(['-kernel', img.kernel, '-initrd', img.initrd, '-append', img.cmdline, '-m', '512M',
    '-api-channel', `unix:${qmp}`, '-chardev', `id=c,path=${conPath}`, '-drive', `id=disk,file=${disk('native.img')}`, '-hotplug-slots', '0']);
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

async function qemu(img: Img): Promise<Record<string, unknown>> {
  const conPath = join(work, 'q.con');
  const p = spawn('qemu-system-x86_64', ['-accel', 'kvm', '-cpu', 'host', '-M', 'microvm,acpi=on,rtc=on,pit=on,pic=on,isa-serial=on', '-m', '512M',
    '-nodefaults', '-no-reboot', '-nographic', '-kernel', img.kernel, '-initrd', img.initrd, '-append', img.cmdline,
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
const n = await native(img);
const q = await qemu(img);
const ratio: Record<string, number> = {};
for (const w of WORKLOADS) {
  const a = (n[w.name] as { median: number }).median;
  const b = (q[w.name] as { median: number }).median;
  ratio[w.name] = Number((a / b).toFixed(2));
}
const result = {
  bench: 'vmm-blk',
  date: new Date().toISOString(),
  where: process.env.CAPSULE_IN_LAB ? 'lab (nested KVM under TCG)' : 'host KVM',
  diskMiB: DISK_MIB,
  runs: RUNS,
  native: n,
  qemu: q,
  ratioNativeOverQemu: ratio,
  target: 'ratio >= 1.0 for each workload',
};
console.log(JSON.stringify(result, null, 2));
if (process.env.BENCH_SAVE) writeFileSync(process.env.BENCH_SAVE, JSON.stringify(result, null, 2) + '\n');
process.exit(0);
