// Benchmark: virtio-blk, native capsule-vmm (main-thread and iothread-served) vs qemu -M microvm
// (virtio-blk-device), all on KVM, same guest image, same size of raw disk file, in the same run
// (`npm run bench:blk`, which runs this inside the lab through scripts/kvm-tests.sh). Prints one
// JSON object and writes it to BENCH_SAVE when set.
//
// The workloads are fio's (the host's fio, packed into the guest's initramfs by guest-tools.ts),
// on the raw /dev/vda with O_DIRECT and libaio: 4 KiB random reads and writes at queue depth 32
// (IOPS), the same at depth 1 (per-request latency: the ioeventfd and interrupt path), and 1 MiB
// sequential reads and writes at depth 8 (MB/s). The three VMMs run at once and take turns, so
// that the lab's drifting speed hits all alike. For native, QMP query-virtio gives the userspace
// exits per request above the idle guest's own rate (should be ~0: notifications are
// ioeventfds, interrupts irqfds).
import { existsSync, mkdtempSync, writeFileSync, truncateSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { QmpClient, startVmm, testImage, VMM_BIN, type ConsoleClient } from '../vmm/testing/clients.js';
import { MEMORY_FLAGS, VMM_NODE_FLAGS } from '../lib/vmm-node-flags.js';
import { guestTool, initrdWithTools } from './guest-tools.js';
import { guestConsole } from './guest-console.js';
import { killProcess } from './util.js';

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

/** A booted guest with its disk; `q` for native (query-virtio: exits and request counts). */
interface Guest {
  name: string; con: ConsoleClient; q: QmpClient | null; stop(): Promise<void>;
  /** the VMM's stderr so far */
  log(): string;
  /** 'running', or how the VMM process ended */
  status(): string;
  /**
   * The VMM has exited with status 0 without being asked to: the guest reset itself (the lab's
   * triple fault does that; capsule-vmm under its seccomp filter and QEMU with -no-reboot both
   * exit 0 then). Anything else (a VMM still running but stuck, a crash) is a failure.
   */
  guestReset(): boolean;
}

const ended = (p: ChildProcess): string => (p.exitCode === null && p.signalCode === null ? 'running' : `exited (code ${p.exitCode}, signal ${p.signalCode})`);


/** The last kernel messages (an OOM kill or a seccomp SIGSYS shows there), where dmesg may be read. */
function kernelLogTail(): string {
  const r = spawnSync('dmesg', ['--ctime'], { encoding: 'utf8' });
  return r.status === 0 ? r.stdout.trim().split('\n').slice(-15).join('\n') : `(dmesg: ${r.stderr.trim()})`;
}
interface Virtio { exits: number; devices: Array<{ id: string; metrics: Record<string, number> }> }

const requests = (v: Virtio): number => {
  const m = v.devices.find((x) => x.id === 'disk')?.metrics ?? {};
  return ['reads', 'writes', 'flushes'].reduce((n, k) => n + (m[k] ?? 0), 0);
};

/**
 * Userspace exits per second of the idle guest (timer, console): subtracted from the exits
 * seen during a workload, so that what is left is what the I/O itself cost.
 */
async function idleExitRate(g: Guest): Promise<number> {
  if (!g.q) return 0;
  const before = (await g.q.execute('query-virtio')) as Virtio;
  const t0 = Date.now();
  await g.con.run('sleep 5', 120_000);
  const after = (await g.q.execute('query-virtio')) as Virtio;
  return (after.exits - before.exits) / ((Date.now() - t0) / 1000);
}

/** How many times a guest whose fio did not finish is booted again (on the same disk file). */
const RESTARTS = Number(process.env.BENCH_RESTARTS ?? 3);

/**
 * Every workload, RUNS times, the guests taking turns (one after the other, in a rotating
 * order) so that all see the same load on the machine: the lab's speed drifts over minutes.
 * A guest that reset itself during its fio (its VMM exited 0: the lab's nested triple fault
 * ends QEMU's guests and ours alike after a minute or two of sustained I/O) is booted again on
 * the same disk file and its turn run again, at most RESTARTS times; every such end is reported
 * (`fioEnded`). A fio that does not finish with its VMM still running (a stuck device) or
 * crashed is a failure: that guest is stopped and left out (`failed` says why).
 */
async function runInterleaved(guests: Guest[], boot: (name: string) => Promise<Guest>): Promise<Record<string, Record<string, unknown>>> {
  const vals = new Map<string, number[]>();
  const exits = new Map<string, number[]>();
  const idle = new Map<string, number>();
  /** Why each guest's fio did not finish, in order (each end after which it was booted again, or left out). */
  const ends = new Map<string, string[]>();
  /** Guests left out of the later turns: past RESTARTS, or not booting again. */
  const failed = new Map<string, string>();
  for (const g of guests) idle.set(g.name, await idleExitRate(g));
  for (let i = 0; i < RUNS; i++) {
    for (const w of WORKLOADS) {
      for (let k = 0; k < guests.length; k++) {
        const slot = (i + k) % guests.length;
        const g = guests[slot] as Guest;
        if (failed.has(g.name)) continue;
        const t0 = Date.now();
        // the counters and the fio run: a VMM that died meanwhile fails either
        const r = await (async () => {
          const before = g.q ? ((await g.q.execute('query-virtio')) as Virtio) : null;
          return { before, out: (await g.con.run(fioCommand(w), (RUNTIME_S + 180) * 1000)).out };
        })().catch((e: unknown) => e as Error);
        if (r instanceof Error) {
          const counters = g.q ? JSON.stringify(((await g.q.execute('query-virtio').catch(() => null)) as Virtio | null)?.devices.find((x) => x.id === 'disk')?.metrics) : '';
          const why = `${w.name}, run ${i + 1}: ${r.message}; the VMM ${g.status()}; disk counters ${counters}; VMM log tail: ${g.log().slice(-1500)}; guest console tail: ${g.con.text.slice(-1500)}; kernel log tail: ${kernelLogTail()}`;
          ends.set(g.name, [...(ends.get(g.name) ?? []), why]);
          console.error(`vmm-blk: ${g.name}: ${why}`);
          // before stop(), which ends the VMM itself
          const reset = g.guestReset();
          const status = g.status();
          await g.stop().catch(() => undefined);
          const name = g.name;
          if (!reset) {
            failed.set(name, `its fio did not finish and the VMM ${status} (not a guest reset): not booted again`);
            continue;
          }
          if ((ends.get(name)?.length ?? 0) > RESTARTS) {
            failed.set(name, `its guest reset more than ${RESTARTS} times: not booted again`);
            continue;
          }
          const again = await boot(name).catch((e: unknown) => e as Error);
          if (again instanceof Error) {
            failed.set(name, `booting again: ${again.message}`);
            continue;
          }
          guests[slot] = again;
          idle.set(name, await idleExitRate(again).catch(() => idle.get(name) ?? 0));
          k--; // this turn again, on the fresh guest
          continue;
        }
        const seconds = (Date.now() - t0) / 1000;
        const key = `${g.name}/${w.name}`;
        vals.set(key, [...(vals.get(key) ?? []), fioResult(r.out, w)]);
        const before = r.before;
        if (g.q && before) {
          const after = (await g.q.execute('query-virtio')) as Virtio;
          const reqs = requests(after) - requests(before);
          const net = after.exits - before.exits - (idle.get(g.name) ?? 0) * seconds;
          if (reqs > 0) exits.set(key, [...(exits.get(key) ?? []), Math.max(0, net) / reqs]);
        }
      }
    }
  }
  const result: Record<string, Record<string, unknown>> = {};
  for (const g of guests) {
    const gone = ends.get(g.name) ?? [];
    result[g.name] = {
      idleExitsPerSecond: Number((idle.get(g.name) ?? 0).toFixed(1)),
      ...(gone.length > 0 ? { fioEnded: gone } : {}),
      ...(failed.has(g.name) ? { failed: failed.get(g.name) } : {}),
    };
    for (const w of WORKLOADS) {
      const v = [...(vals.get(`${g.name}/${w.name}`) ?? [])].sort((a, b) => a - b);
      const e = exits.get(`${g.name}/${w.name}`);
      if (v.length === 0) continue;
      result[g.name]![w.name] = {
        median: Number((v[Math.floor(v.length / 2)] as number).toFixed(1)), unit: w.unit, runs: v.map((x) => Number(x.toFixed(1))),
        ...(e ? { exitsPerRequestAboveIdle: Number((e.reduce((a, b) => a + b, 0) / e.length).toFixed(3)) } : {}),
      };
    }
  }
  return result;
}

/** The guest's raw disk file: made sparse the first time, the same file when a guest boots again. */
function disk(name: string): string {
  const f = join(work, name);
  if (existsSync(f)) return f;
  writeFileSync(f, Buffer.alloc(0));
  truncateSync(f, DISK_MIB << 20);
  return f;
}

/** Guests booted so far (each boot gets its own socket paths). */
let boots = 0;

/**
 * Native capsule-vmm; with `iothread`, the disk's queue is served on an iothread. `memoryFlags`:
 * with lib/vmm-node-flags.ts's MEMORY_FLAGS (nativeMemoryFlags), to see what they cost the disk.
 */
/** The native VMM's variants: the drive on the main thread or an iothread, and Node's memory flags. */
const NATIVE = {
  native: { tag: 'n', iothread: false, memoryFlags: false },
  nativeIothread: { tag: 'ni', iothread: true, memoryFlags: false },
  nativeMemoryFlags: { tag: 'nm', iothread: false, memoryFlags: true },
} as const;

async function native(img: Img, initrd: string, name: keyof typeof NATIVE): Promise<Guest> {
  const { tag, iothread, memoryFlags } = NATIVE[name];
  const boot = ++boots;
  const qmp = join(work, `${tag}-${boot}.qmp`);
  const conPath = join(work, `${tag}-${boot}.con`);
  // the main-thread drive with its requests on the threadpool (aio=threads; the default is inline)
  const drive = `id=disk,file=${disk(`${tag}.img`)}${iothread ? ',iothread=io0' : ',aio=threads'}`;
  const vmm = startVmm(['-kernel', img.kernel, '-initrd', initrd, '-append', img.cmdline, '-m', '512M',
    '-api-channel', `unix:${qmp}`, '-chardev', `id=c,path=${conPath}`, ...(iothread ? ['-iothread', 'id=io0'] : []),
    // -D: the VMM's log on stderr (info: a guest reset or triple fault says so), kept for a failure report
    '-drive', drive, '-hotplug-slots', '0', '-D'], { CAPSULE_LOG_LEVEL: process.env.CAPSULE_LOG_LEVEL ?? 'info' }, [], VMM_BIN, memoryFlags ? MEMORY_FLAGS : VMM_NODE_FLAGS);
  let con: ConsoleClient | undefined;
  let q: QmpClient;
  try {
    con = await guestConsole(conPath, () => vmm.stderr);
    q = await QmpClient.connect(qmp);
  } catch (e) {
    // a guest that never comes up: its VMM goes too (bootGuest may try again on the same disk)
    con?.close();
    await killProcess(vmm.child);
    throw e;
  }
  const c = con;
  return {
    name, con: c, q, log: () => vmm.stderr, status: () => ended(vmm.child),
    guestReset: () => vmm.child.exitCode === 0,
    stop: async () => {
      await q.execute('quit').catch(() => undefined);
      await Promise.race([vmm.exited, new Promise((r) => setTimeout(r, 10_000))]);
      await killProcess(vmm.child);
      q.close();
      c.close();
    },
  };
}

async function qemu(img: Img, initrd: string): Promise<Guest> {
  const conPath = join(work, `q-${++boots}.con`);
  let stderr = '';
  const p = spawn('qemu-system-x86_64', ['-accel', 'kvm', '-cpu', 'host', '-M', 'microvm,acpi=on,rtc=on,pit=on,pic=on,isa-serial=on', '-m', '512M',
    '-nodefaults', '-no-reboot', '-nographic', '-kernel', img.kernel, '-initrd', initrd, '-append', img.cmdline,
    '-chardev', `socket,id=c,path=${conPath},server=on,wait=off`, '-serial', 'chardev:c',
    '-drive', `id=disk,file=${disk('qemu.img')},format=raw,if=none,cache=writeback`, '-device', 'virtio-blk-device,drive=disk'], { stdio: ['ignore', 'ignore', 'pipe'] });
  p.stderr?.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  const exited = new Promise<void>((r) => p.once('exit', () => r()));
  const con = await guestConsole(conPath, () => stderr, p);
  return {
    name: 'qemu', guestReset: () => p.exitCode === 0, con, q: null, log: () => stderr, status: () => ended(p),
    stop: async () => {
      p.kill('SIGKILL');
      await exited;
      con.close();
    },
  };
}

const img = await testImage();
const initrd = initrdWithTools(img.initrd, work);
// All boot (one after the other) and stay up; the workloads then take turns (runInterleaved).
// BENCH_GUESTS picks some of them (comma-separated names; nativeMemoryFlags only when named).
const bootBy: Record<string, () => Promise<Guest>> = {
  native: () => native(img, initrd, 'native'), nativeIothread: () => native(img, initrd, 'nativeIothread'), qemu: () => qemu(img, initrd),
  nativeMemoryFlags: () => native(img, initrd, 'nativeMemoryFlags'),
};
const chosen = (process.env.BENCH_GUESTS ?? 'native,nativeIothread,qemu').split(',');
const unknown = chosen.filter((c) => !(c in bootBy));
if (unknown.length) throw new Error(`BENCH_GUESTS: unknown ${unknown.join(', ')} (choose from ${Object.keys(bootBy).join(', ')})`);
/** Boots `name`, again (up to RESTARTS more times) where the guest never comes up (the lab's triple fault strikes at boot too). */
async function bootGuest(name: string): Promise<Guest> {
  for (let attempt = 0; ; attempt++) {
    try {
      return await (bootBy[name] as () => Promise<Guest>)();
    } catch (e) {
      if (attempt >= RESTARTS) throw e;
      console.error(`vmm-blk: ${name} did not boot (${(e as Error).message.slice(0, 300)}); booting it again`);
    }
  }
}
const guests: Guest[] = [];
for (const c of chosen) guests.push(await bootGuest(c));
let results: Record<string, Record<string, unknown>>;
try {
  results = await runInterleaved(guests, bootGuest);
} finally {
  for (const g of guests) await g.stop().catch(() => undefined);
}
type Medians = Record<string, { median: number } | undefined>;
const { native: n, nativeIothread: ni, nativeMemoryFlags: nm, qemu: q } = results as Record<string, Medians | undefined>;
/** x / QEMU for each workload both finished. */
const ratioTo = (x: Medians | undefined): Record<string, number> | undefined => x && q ? Object.fromEntries(WORKLOADS.flatMap((w) => {
  const a = x[w.name]?.median;
  const b = q[w.name]?.median;
  return a !== undefined && b !== undefined ? [[w.name, Number((a / b).toFixed(2))]] : [];
})) : undefined;
const result = {
  bench: 'vmm-blk',
  date: new Date().toISOString(),
  where: process.env.CAPSULE_IN_LAB ? 'lab (nested KVM under TCG)' : 'host KVM',
  diskMiB: DISK_MIB,
  runs: RUNS,
  runtimeSeconds: RUNTIME_S,
  tool: 'fio (libaio, O_DIRECT, /dev/vda)',
  method: 'the VMMs boot one after the other and stay up together; each run of each workload goes to each in turn (rotating order); a guest that resets itself during a run (the lab triple fault; its VMM exits 0) is booted again on the same disk file and its turn repeated (fioEnded: why each time), at most BENCH_RESTARTS times; a fio that does not finish otherwise leaves that guest out (failed)',
  restartsAllowed: RESTARTS,
  native: n,
  nativeIothread: ni,
  ...(nm ? { nativeMemoryFlags: nm } : {}),
  qemu: q,
  ratioNativeOverQemu: ratioTo(n),
  ratioNativeIothreadOverQemu: ratioTo(ni),
  ...(nm ? { ratioNativeMemoryFlagsOverQemu: ratioTo(nm) } : {}),
  nodeFlags: { native: VMM_NODE_FLAGS, ...(nm ? { nativeMemoryFlags: MEMORY_FLAGS } : {}) },
  target: 'ratio >= 1.0 for each workload',
};
console.log(JSON.stringify(result, null, 2));
if (process.env.BENCH_SAVE) writeFileSync(process.env.BENCH_SAVE, JSON.stringify(result, null, 2) + '\n');
process.exit(0);
