// Benchmark: virtio-net TCP throughput guest <-> host over a tap in a network namespace, and the
// idle memory of a VMM with blk + net + rng: native capsule-vmm (userspace virtio-net; vhost=on
// with BENCH_VHOST=1) vs qemu -M microvm (virtio-*-device, userspace; vhost with BENCH_VHOST=1),
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
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { ConsoleClient, QmpClient, startVmm, testImage, waitForFile } from '../vmm/testing/clients.js';
import { guestTool, initrdWithTools } from './guest-tools.js';
import { procMem, type ProcMem } from './proc-mem.js';

const NS = `capsule-bench-${process.pid}`;
const RUNS = Number(process.env.BENCH_RUNS ?? 3);
const SECONDS = Number(process.env.BENCH_RUNTIME_S ?? 5);
const VHOST = process.env.BENCH_VHOST === '1';
const RAM_MIB = 512;
const HOST_IP = '10.0.2.1';
const GUEST_IP = '10.0.2.2';
const MAC = '52:54:00:c5:0b:01';
const work = mkdtempSync(join(tmpdir(), 'capsule-bench-net-'));
type Img = Awaited<ReturnType<typeof testImage>>;

function sh(cmd: string, args: string[]): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8', timeout: 30_000 });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')}: ${r.stdout}${r.stderr}`);
  return r.stdout;
}
const inNs = (...args: string[]): string => sh('ip', ['netns', 'exec', NS, ...args]);

function makeNamespace(): void {
  if (!existsSync('/dev/net/tun')) spawnSync('modprobe', ['tun']);
  if (VHOST && !existsSync('/dev/vhost-net')) spawnSync('modprobe', ['vhost_net']);
  sh('ip', ['netns', 'add', NS]);
  inNs('ip', 'link', 'set', 'lo', 'up');
  inNs('ip', 'tuntap', 'add', 'dev', 'tap0', 'mode', 'tap', 'vnet_hdr');
  inNs('ip', 'addr', 'add', `${HOST_IP}/24`, 'dev', 'tap0');
  inNs('ip', 'link', 'set', 'tap0', 'up');
}

interface Guest { con: ConsoleClient; pid: number; stop(): Promise<void> }

function disk(name: string): string {
  const f = join(work, name);
  writeFileSync(f, Buffer.alloc(0));
  truncateSync(f, 64 << 20);
  return f;
}

async function consoleOf(conPath: string): Promise<ConsoleClient> {
  await waitForFile(conPath, 60_000);
  const con = await ConsoleClient.connect(conPath);
  await con.waitFor(/CAPSULE_READY/, 180_000);
  await con.waitFor(/# /, 30_000);
  return con;
}

async function bootNative(img: Img, initrd: string, vhost: boolean): Promise<Guest> {
  const tag = vhost ? 'nv' : 'n';
  const qmp = join(work, `${tag}.qmp`);
  const conPath = join(work, `${tag}.con`);
  const vmm = startVmm(['-kernel', img.kernel, '-initrd', initrd, '-append', img.cmdline, '-smp', '1', '-m', `${RAM_MIB}M`,
    '-api-channel', `unix:${qmp}`, '-chardev', `id=c,path=${conPath}`, '-drive', `id=disk,file=${disk(`${tag}.img`)}`,
    '-netdev', `id=net0,netdev=tap0,mac=${MAC}${vhost ? ',vhost=on' : ''}`, '-rng', 'random_file=/dev/urandom', '-hotplug-slots', '0'],
  {}, ['ip', 'netns', 'exec', NS]);
  const con = await consoleOf(conPath);
  return {
    con,
    pid: vmm.child.pid as number,
    stop: async () => {
      const q = await QmpClient.connect(qmp);
      await q.execute('quit');
      await vmm.exited;
      q.close();
      con.close();
    },
  };
}

async function bootQemu(img: Img, initrd: string, vhost: boolean): Promise<Guest> {
  const conPath = join(work, `q${vhost ? 'v' : ''}.con`);
  const p: ChildProcess = spawn('ip', ['netns', 'exec', NS, 'qemu-system-x86_64', '-accel', 'kvm', '-cpu', 'host', '-smp', '1', '-m', `${RAM_MIB}M`,
    '-M', 'microvm,acpi=on,rtc=on,pit=on,pic=on,isa-serial=on', '-nodefaults', '-no-reboot', '-nographic',
    '-kernel', img.kernel, '-initrd', initrd, '-append', img.cmdline,
    '-chardev', `socket,id=c,path=${conPath},server=on,wait=off`, '-serial', 'chardev:c',
    '-drive', `id=disk,file=${disk(`q${vhost ? 'v' : ''}.img`)},format=raw,if=none,cache=writeback`, '-device', 'virtio-blk-device,drive=disk',
    '-netdev', `tap,id=n0,ifname=tap0,script=no,downscript=no,vhost=${vhost ? 'on' : 'off'}`, '-device', `virtio-net-device,netdev=n0,mac=${MAC}`,
    '-object', 'rng-random,id=r0,filename=/dev/urandom', '-device', 'virtio-rng-device,rng=r0'], { stdio: 'ignore' });
  const exited = new Promise<void>((r) => p.once('exit', () => r()));
  const con = await consoleOf(conPath);
  return {
    con,
    pid: p.pid as number, // `ip netns exec` execs qemu in place
    stop: async () => {
      p.kill('SIGKILL');
      await exited;
      con.close();
    },
  };
}

/** Receiver Mbit/s of one iperf3 run from the guest (reverse: host -> guest). */
async function iperf(con: ConsoleClient, reverse: boolean): Promise<number> {
  const r = await con.run(guestTool('iperf3', `-c ${HOST_IP} -t ${SECONDS} -f m${reverse ? ' -R' : ''} 2>&1 | grep receiver`), (SECONDS + 120) * 1000);
  const m = /([\d.]+) Mbits\/sec\s+receiver/.exec(r.out);
  if (!m) throw new Error(`iperf3${reverse ? ' -R' : ''}: no result in: ${r.out.slice(-500)}`);
  return Number(m[1]);
}

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] as number;

async function measure(boot: () => Promise<Guest>): Promise<Record<string, unknown>> {
  const g = await boot();
  try {
    const up = await g.con.run(`ip addr add ${GUEST_IP}/24 dev eth0 && ip link set eth0 up && ping -c 2 -W 5 ${HOST_IP}`, 60_000);
    if (up.status !== 0) throw new Error(`guest network: ${up.out}`);
    await new Promise((r) => setTimeout(r, 5000));
    const idle: ProcMem = procMem(g.pid, RAM_MIB * 1024);
    const toHost: number[] = [];
    const toGuest: number[] = [];
    for (let i = 0; i < RUNS; i++) {
      toHost.push(await iperf(g.con, false));
      toGuest.push(await iperf(g.con, true));
    }
    return {
      guestToHostMbps: { median: median(toHost), runs: toHost },
      hostToGuestMbps: { median: median(toGuest), runs: toGuest },
      idleMemory: { ussMiB: +(idle.ussKiB / 1024).toFixed(1), vmmUssMiB: +(idle.vmmUssKiB / 1024).toFixed(1), pssMiB: +(idle.pssKiB / 1024).toFixed(1) },
    };
  } finally {
    await g.stop();
  }
}

const img = await testImage();
const initrd = initrdWithTools(img.initrd, work);
makeNamespace();
const server = spawn('ip', ['netns', 'exec', NS, 'iperf3', '-s', '-B', HOST_IP], { stdio: 'ignore' });
try {
  await new Promise((r) => setTimeout(r, 1000));
  const native = await measure(() => bootNative(img, initrd, false));
  const qemu = await measure(() => bootQemu(img, initrd, false));
  const nativeVhost = VHOST ? await measure(() => bootNative(img, initrd, true)) : 'skipped (BENCH_VHOST=1 to run)';
  const qemuVhost = VHOST ? await measure(() => bootQemu(img, initrd, true)) : 'skipped (BENCH_VHOST=1 to run)';
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
    native,
    qemu,
    nativeVhost,
    qemuVhost,
    ratioNativeOverQemu: ratio(native, qemu),
    ratioNativeVhostOverQemuVhost: ratio(nativeVhost, qemuVhost),
    targets: 'throughput ratio >= 0.8 with vhost; idle VMM USS <= 24 MiB',
  };
  console.log(JSON.stringify(result, null, 2));
  if (process.env.BENCH_SAVE) writeFileSync(process.env.BENCH_SAVE, JSON.stringify(result, null, 2) + '\n');
} finally {
  server.kill();
  spawnSync('ip', ['netns', 'del', NS]);
}
process.exit(0);
