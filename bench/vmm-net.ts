// Benchmark: virtio-net TCP throughput guest <-> host over a tap in a network namespace, and the
// idle memory of a VMM with blk + net + rng: native capsule-vmm (userspace virtio-net on the main
// thread, and on an -iothread; vhost=on with BENCH_VHOST=1) vs qemu -M microvm (virtio-*-device, userspace; vhost with BENCH_VHOST=1),
// all on KVM in the same run (`npm run bench:net`, inside the lab through scripts/kvm-tests.sh).
// Prints one JSON object; writes it to BENCH_SAVE when set.
//
// Throughput: iperf3 (the host's, packed into the guest's initramfs by guest-tools.ts), the
// guest as client, the server in the namespace: guest -> host, then -R for host -> guest;
// the receiver's Mbit/s, median of BENCH_RUNS. Memory: smaps of the VMM after the guest has
// booted and its NIC is up, then 5 s idle (USS with and without the guest RAM mapping).
//
// vhost is opt-in because the nested lab's L1 kernel panics or hangs under vhost-net moving an
// L2 guest's frames (docs/vmm.md, net.kvm.test.ts); on a host with real KVM, set it.
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { QmpClient, startVmm, testImage, type ConsoleClient } from '../vmm/testing/clients.js';
import { guestTool, initrdWithTools } from './guest-tools.js';
import { guestConsole } from './guest-console.js';
import { killProcess, sh } from './util.js';
import { spawnQemuMicrovm } from './qemu-microvm.js';
import { procMem, type ProcMem } from '../vmm/testing/proc-mem.js';

const NS = `capsule-bench-${process.pid}`;
const RUNS = Number(process.env.BENCH_RUNS ?? 3);
const SECONDS = Number(process.env.BENCH_RUNTIME_S ?? 5);
const VHOST = process.env.BENCH_VHOST === '1';
const RAM_MIB = 512;
/** Each VMM gets its own tap and subnet in the namespace: they all run at once. */
const LINKS = [
  { tap: 'tap0', hostIp: '10.0.2.1', guestIp: '10.0.2.2', mac: '52:54:00:c5:0b:01' },
  { tap: 'tap1', hostIp: '10.0.3.1', guestIp: '10.0.3.2', mac: '52:54:00:c5:0b:02' },
  { tap: 'tap2', hostIp: '10.0.4.1', guestIp: '10.0.4.2', mac: '52:54:00:c5:0b:03' },
] as const;
type Link = (typeof LINKS)[number];
const work = mkdtempSync(join(tmpdir(), 'capsule-bench-net-'));
type Img = Awaited<ReturnType<typeof testImage>>;

const inNs = (...args: string[]): string => sh('ip', ['netns', 'exec', NS, ...args]);

function makeNamespace(): void {
  if (!existsSync('/dev/net/tun')) spawnSync('modprobe', ['tun']);
  if (VHOST && !existsSync('/dev/vhost-net')) spawnSync('modprobe', ['vhost_net']);
  sh('ip', ['netns', 'add', NS]);
  inNs('ip', 'link', 'set', 'lo', 'up');
  for (const l of LINKS) {
    inNs('ip', 'tuntap', 'add', 'dev', l.tap, 'mode', 'tap');
    inNs('ip', 'addr', 'add', `${l.hostIp}/24`, 'dev', l.tap);
    inNs('ip', 'link', 'set', l.tap, 'up');
  }
}

/** The native NIC's counters (QMP query-virtio): frames and bytes each way, and the VMM's userspace exits. */
interface NetCounters { txFrames: number; txBytes: number; rxFrames: number; rxBytes: number; exits: number }
interface Guest {
  name: string; link: Link; con: ConsoleClient; pid: number; counters?(): Promise<NetCounters>;
  /** what to print when a run fails: the NIC's counters and the end of the VMM's log */
  diagnose?(): Promise<string>;
  /**
   * The VMM has exited with status 0 without being asked to: the guest reset itself (the lab's
   * triple fault; capsule-vmm under its seccomp filter and QEMU with -no-reboot exit 0 then). A
   * run that hangs with the VMM alive is a stall, and a crash is a crash: both fail the bench.
   */
  guestReset(): boolean;
  stop(): Promise<void>;
}

/** How many times a guest that reset itself (the lab's triple fault) is booted again, and a boot that failed tried again. */
const RESTARTS = Number(process.env.BENCH_RESTARTS ?? 3);


async function nicCounters(q: QmpClient): Promise<NetCounters> {
  const r = await q.execute('query-virtio') as { exits: number; devices: Array<{ type: number; metrics: Record<string, number> }> };
  const nic = r.devices.find((d) => d.type === 1);
  if (!nic) throw new Error('query-virtio: no virtio-net device');
  const m = nic.metrics;
  return { txFrames: m.txFrames ?? 0, txBytes: m.txBytes ?? 0, rxFrames: m.rxFrames ?? 0, rxBytes: m.rxBytes ?? 0, exits: r.exits };
}

function disk(name: string): string {
  const f = join(work, name);
  writeFileSync(f, Buffer.alloc(0));
  truncateSync(f, 64 << 20);
  return f;
}

/** Guests booted so far: each boot gets its own socket, log and disk paths. */
let bootCount = 0;

/** userspace: frames move on the VMM's main thread; iothread: on an -iothread; vhost: in the kernel. */
type NativeNet = 'userspace' | 'iothread' | 'vhost';
const NATIVE_NAME = { userspace: 'native', iothread: 'nativeIothread', vhost: 'nativeVhost' } as const;

async function bootNative(img: Img, initrd: string, mode: NativeNet, link: Link): Promise<Guest> {
  const tag = `${{ userspace: 'n', iothread: 'ni', vhost: 'nv' }[mode]}-${++bootCount}`;
  const net = `id=net0,netdev=${link.tap},mac=${link.mac}${mode === 'vhost' ? ',vhost=on' : mode === 'iothread' ? ',iothread=io0' : ''}`;
  const qmp = join(work, `${tag}.qmp`);
  const conPath = join(work, `${tag}.con`);
  const logFile = join(work, `${tag}.log`);
  const vmm = startVmm(['-D', logFile, '-kernel', img.kernel, '-initrd', initrd, '-append', img.cmdline, '-smp', '1', '-m', `${RAM_MIB}M`,
    '-api-channel', `unix:${qmp}`, '-chardev', `id=c,path=${conPath}`, '-drive', `id=disk,file=${disk(`${tag}.img`)}`,
    ...(mode === 'iothread' ? ['-iothread', 'id=io0'] : []),
    '-netdev', net, '-rng', 'random_file=/dev/urandom', '-hotplug-slots', '0'],
  { CAPSULE_LOG_LEVEL: 'warn' }, ['ip', 'netns', 'exec', NS]);
  let con: ConsoleClient | undefined;
  let q: QmpClient;
  try {
    // a boot that never answers shows the VMM's log (warnings: -D above) with the error
    con = await guestConsole(conPath, () => `${vmm.stderr}${existsSync(logFile) ? readFileSync(logFile, 'utf8') : ''}`);
    q = await QmpClient.connect(qmp);
  } catch (e) {
    // its VMM goes too: it would hold the tap (and the namespace) past the bench
    con?.close();
    await killProcess(vmm.child);
    throw e;
  }
  return {
    name: NATIVE_NAME[mode], link, con,
    pid: vmm.child.pid as number,
    guestReset: () => vmm.child.exitCode === 0,
    counters: () => nicCounters(q),
    diagnose: async () => {
      // twice, 5 s apart: does anything still move (and which side waits for the other)
      const m1 = await q.call('x-query-net-metrics').catch((e: Error) => e.message);
      await new Promise((r) => setTimeout(r, 5000));
      const m2 = await q.call('x-query-net-metrics').catch((e: Error) => e.message);
      const host = spawnSync('ip', ['netns', 'exec', NS, 'sh', '-c', `ss -tin; ip -s link show ${link.tap}`], { encoding: 'utf8', timeout: 10_000 }).stdout;
      const logTail = existsSync(logFile) ? readFileSync(logFile, 'utf8').slice(-2000) : '(no log)';
      return `net metrics: ${JSON.stringify(m1)}\n5 s later: ${JSON.stringify(m2)}\nhost side: ${host}\nVMM log (end): ${logTail}\nstderr: ${vmm.stderr.slice(-500)}`;
    },
    stop: async () => {
      await q.execute('quit').catch(() => undefined);
      await Promise.race([vmm.exited, new Promise((r) => setTimeout(r, 10_000))]);
      await killProcess(vmm.child);
      q.close();
      con?.close();
    },
  };
}

async function bootQemu(img: Img, initrd: string, vhost: boolean, link: Link): Promise<Guest> {
  const conPath = join(work, `q${vhost ? 'v' : ''}-${++bootCount}.con`);
  const p = spawnQemuMicrovm(NS, { kernel: img.kernel, initrd, cmdline: img.cmdline, ramMiB: RAM_MIB, console: conPath, disk: disk(`q${vhost ? 'v' : ''}-${bootCount}.img`), tap: link.tap, mac: link.mac, vhost });
  let stderr = '';
  p.stderr?.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  const exited = new Promise<void>((r) => p.once('exit', () => r()));
  const con = await guestConsole(conPath, () => stderr, p);
  return {
    name: vhost ? 'qemuVhost' : 'qemu', link, con,
    pid: p.pid as number, // `ip netns exec` execs qemu in place
    guestReset: () => p.exitCode === 0,
    stop: async () => {
      p.kill('SIGKILL');
      await exited;
      con.close();
    },
  };
}

/** Receiver Mbit/s of one iperf3 run from the guest (reverse: host -> guest). */
async function iperf(g: Guest, reverse: boolean): Promise<number> {
  let r;
  try {
    r = await g.con.run(guestTool('iperf3', `-c ${g.link.hostIp} -t ${SECONDS} -f m${reverse ? ' -R' : ''} 2>&1 | grep receiver`), (SECONDS + 180) * 1000);
  } catch (e) {
    throw new Error(`${g.name}: iperf3${reverse ? ' -R' : ''}: ${(e as Error).message}\n${await g.diagnose?.() ?? ''}`);
  }
  const m = /([\d.]+) Mbits\/sec\s+receiver/.exec(r.out);
  if (!m) throw new Error(`${g.name}: iperf3${reverse ? ' -R' : ''}: no result in: ${r.out.slice(-500)}`);
  return Number(m[1]);
}

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] as number;

/** A guest booted and its network up; both tried again, up to RESTARTS more times, where the guest never comes up (the lab's triple fault strikes at boot too). */
async function bootReady(boot: () => Promise<Guest>): Promise<Guest> {
  for (let attempt = 0; ; attempt++) {
    let g: Guest | undefined;
    try {
      g = await boot();
      await networkUp(g);
      return g;
    } catch (e) {
      await g?.stop().catch(() => undefined);
      if (attempt >= RESTARTS) throw e;
      console.error(`vmm-net: a guest did not come up (${(e as Error).message.slice(0, 300)}); booting it again`);
    }
  }
}

/** The guest's address on its tap's subnet, link up, and the host answering a ping. */
async function networkUp(g: Guest): Promise<void> {
  const up = await g.con.run(`ip addr add ${g.link.guestIp}/24 dev eth0 && ip link set eth0 up && ping -c 2 -W 5 ${g.link.hostIp}`, 120_000);
  if (up.status !== 0) throw new Error(`${g.name}: guest network: ${up.out}`);
}

/**
 * The guests up at once; their NICs configured, 5 s idle, then memory; then iperf3 runs taking
 * turns (rotating order), so that the lab's drifting speed hits them all alike.
 */
async function measureTogether(boots: Array<() => Promise<Guest>>): Promise<Record<string, Record<string, unknown>>> {
  // booted one after the other: three guests booting at once on the lab's two emulated CPUs can
  // take longer than the console wait (2026-12-03: one never answered in 400 s)
  const settled: Array<PromiseSettledResult<Guest>> = [];
  for (const b of boots) settled.push(await bootReady(b).then((value) => ({ status: 'fulfilled', value }) as const, (reason: unknown) => ({ status: 'rejected', reason }) as const));
  const guests = settled.flatMap((s) => (s.status === 'fulfilled' ? [s.value] : []));
  try {
    const failed = settled.find((s): s is PromiseRejectedResult => s.status === 'rejected');
    if (failed) throw failed.reason;
    const reboot = new Map(guests.map((g, i) => [g.name, boots[i] as () => Promise<Guest>]));
    await new Promise((r) => setTimeout(r, 5000));
    const idle = new Map(guests.map((g) => [g.name, procMem(g.pid, RAM_MIB * 1024)] as const));
    const toHost = new Map<string, number[]>();
    const toGuest = new Map<string, number[]>();
    // native only: what the NIC moved during the runs of each direction (is TSO in use: bytes
    // per frame; do frames cost exits)
    const moved = new Map<string, { toHost: NetCounters[]; toGuest: NetCounters[] }>();
    const during = async (g: Guest, reverse: boolean): Promise<number> => {
      const before = await g.counters?.();
      const mbps = await iperf(g, reverse);
      const after = await g.counters?.();
      if (before && after) {
        const d = Object.fromEntries(Object.keys(after).map((k) => [k, after[k as keyof NetCounters] - before[k as keyof NetCounters]])) as unknown as NetCounters;
        const m = moved.get(g.name) ?? { toHost: [], toGuest: [] };
        (reverse ? m.toGuest : m.toHost).push(d);
        moved.set(g.name, m);
      }
      return mbps;
    };
    /** Why a guest's run failed when it reset itself (each time it was booted again). */
    const ended = new Map<string, string[]>();
    // one run; where the guest reset itself meanwhile (its VMM exited 0), boot it again and run again
    const turn = async (slot: number, reverse: boolean): Promise<number> => {
      for (;;) {
        const g = guests[slot] as Guest;
        try {
          return await during(g, reverse);
        } catch (e) {
          const ends = ended.get(g.name) ?? [];
          if (!g.guestReset()) throw e;
          if (ends.length >= RESTARTS) throw new Error(`${g.name}: its guest reset ${ends.length + 1} times (BENCH_RESTARTS=${RESTARTS}); the last time: ${(e as Error).message}`);
          ended.set(g.name, [...ends, (e as Error).message.slice(0, 1500)]);
          console.error(`vmm-net: ${g.name}: the guest reset during a run; booting it again: ${(e as Error).message.slice(0, 300)}`);
          await g.stop().catch(() => undefined);
          guests[slot] = await bootReady(reboot.get(g.name) as () => Promise<Guest>);
        }
      }
    };
    for (let i = 0; i < RUNS; i++) {
      for (let k = 0; k < guests.length; k++) {
        const slot = (i + k) % guests.length;
        const name = (guests[slot] as Guest).name;
        toHost.set(name, [...(toHost.get(name) ?? []), await turn(slot, false)]);
        toGuest.set(name, [...(toGuest.get(name) ?? []), await turn(slot, true)]);
      }
    }
    const perFrame = (runs: NetCounters[], dir: 'tx' | 'rx') => {
      const frames = runs.reduce((n, r) => n + r[`${dir}Frames`], 0);
      const bytes = runs.reduce((n, r) => n + r[`${dir}Bytes`], 0);
      const exits = runs.reduce((n, r) => n + r.exits, 0);
      return { frames, bytesPerFrame: frames ? Math.round(bytes / frames) : 0, exitsPerFrame: frames ? +(exits / frames).toFixed(3) : 0 };
    };
    return Object.fromEntries(guests.map((g) => {
      const m: ProcMem = idle.get(g.name)!;
      return [g.name, {
        guestToHostMbps: { median: median(toHost.get(g.name)!), runs: toHost.get(g.name) },
        hostToGuestMbps: { median: median(toGuest.get(g.name)!), runs: toGuest.get(g.name) },
        idleMemory: { ussMiB: +(m.ussKiB / 1024).toFixed(1), vmmUssMiB: +(m.vmmUssKiB / 1024).toFixed(1), pssMiB: +(m.pssKiB / 1024).toFixed(1) },
        ...(ended.has(g.name) ? { guestResetAndBootedAgain: ended.get(g.name) } : {}),
        ...(moved.has(g.name) ? {
          nic: { guestToHostTx: perFrame(moved.get(g.name)!.toHost, 'tx'), hostToGuestRx: perFrame(moved.get(g.name)!.toGuest, 'rx') },
        } : {}),
      }];
    }));
  } finally {
    for (const g of guests) await g.stop().catch(() => undefined);
  }
}

const img = await testImage();
const initrd = initrdWithTools(img.initrd, work);
makeNamespace();
const servers = LINKS.map((l) => spawn('ip', ['netns', 'exec', NS, 'iperf3', '-s', '-B', l.hostIp], { stdio: 'ignore' }));
try {
  await new Promise((r) => setTimeout(r, 1000));
  const boots = {
    native: () => bootNative(img, initrd, 'userspace', LINKS[0]), qemu: () => bootQemu(img, initrd, false, LINKS[1]),
    nativeIothread: () => bootNative(img, initrd, 'iothread', LINKS[2]),
  };
  // BENCH_GUESTS picks some of them (comma-separated names)
  const chosen = (process.env.BENCH_GUESTS ?? Object.keys(boots).join(',')).split(',');
  const unknown = chosen.filter((c) => !(c in boots));
  if (unknown.length) throw new Error(`BENCH_GUESTS: unknown ${unknown.join(', ')} (choose from ${Object.keys(boots).join(', ')})`);
  const userspace = await measureTogether(chosen.map((c) => boots[c as keyof typeof boots]));
  const vhost = VHOST ? await measureTogether([() => bootNative(img, initrd, 'vhost', LINKS[0]), () => bootQemu(img, initrd, true, LINKS[1])]) : undefined;
  const { native, qemu, nativeIothread } = userspace;
  const skipped = 'skipped (BENCH_VHOST=1 to run)';
  const nativeVhost = vhost?.nativeVhost ?? skipped;
  const qemuVhost = vhost?.qemuVhost ?? skipped;
  type M = { guestToHostMbps: { median: number }; hostToGuestMbps: { median: number } };
  const ratio = (a: unknown, b: unknown): Record<string, number> | undefined => typeof a === 'object' && typeof b === 'object'
    ? { guestToHost: +((a as M).guestToHostMbps.median / (b as M).guestToHostMbps.median).toFixed(2), hostToGuest: +((a as M).hostToGuestMbps.median / (b as M).hostToGuestMbps.median).toFixed(2) }
    : undefined;
  const result = {
    bench: 'vmm-net',
    date: new Date().toISOString(),
    where: process.env.CAPSULE_IN_LAB ? 'lab (nested KVM under TCG)' : 'host KVM',
    runs: RUNS,
    secondsPerRun: SECONDS,
    devices: 'virtio-blk + virtio-net (tap) + virtio-rng, 1 vCPU, ' + `${RAM_MIB} MiB`,
    method: 'native (main thread), native (NIC on an -iothread) and QEMU run at once, each on its own tap; iperf3 runs take turns (rotating order); a guest that resets itself during a run (the lab triple fault; its VMM exits 0) is booted again and the run repeated, at most BENCH_RESTARTS times (guestResetAndBootedAgain), as is a boot that does not come up; a run that hangs with its VMM alive, or a VMM that crashes, fails the bench',
    native,
    nativeIothread,
    qemu,
    nativeVhost,
    qemuVhost,
    ratioNativeOverQemu: ratio(native, qemu),
    ratioNativeIothreadOverQemu: ratio(nativeIothread, qemu),
    ratioNativeVhostOverQemuVhost: ratio(nativeVhost, qemuVhost),
    targets: 'throughput ratio >= 0.8 with vhost; idle VMM USS <= 24 MiB',
  };
  console.log(JSON.stringify(result, null, 2));
  if (process.env.BENCH_SAVE) writeFileSync(process.env.BENCH_SAVE, JSON.stringify(result, null, 2) + '\n');
} finally {
  for (const s of servers) s.kill();
  spawnSync('ip', ['netns', 'del', NS]);
}
process.exit(0);
