// Benchmark: idle memory of a VMM with 1 vCPU and blk + net + rng (target <= 24 MiB of the
// VMM's own USS): native capsule-vmm vs qemu -M microvm with the same devices, same guest image
// (its /init loads the virtio drivers before the ready marker), all on KVM in the same run
// (`npm run bench:mem`, inside the lab through scripts/kvm-tests.sh). Prints one JSON object;
// writes it to BENCH_SAVE when set.
//
// Each kind is measured twice:
//  - alone: the only VMM of its kind. Its program's text pages count as private (USS) because
//    nothing else maps them (for the native VMM, the bench's own node shares some of them);
//  - side by side: BENCH_VMS (3) of the kind running at once, as on a host that runs many VMs.
//    There the text is shared and each VMM's USS is what one more VM costs the host: the
//    figure the target is read against (docs/vmm.md, "Idle memory and Node's flags").
// The native VMM also runs with lib/vmm-node-flags.ts's MEMORY_FLAGS ("nativeMemoryFlags"), to
// show what they save. Memory is read BENCH_IDLE_S (15) s after the guest's shell prompt; the
// VMM's own USS leaves out the guest RAM mapping (vmm/testing/proc-mem.ts). The native VMMs are
// daemonized, as the server runs them. The host's THP mode is recorded with each VMM's
// AnonHugePages outside guest RAM: under `always` a thread stack can hold a 2 MiB page
// (capsule-vmm keeps THP off while it starts: docs/vmm.md, "Idle memory").
import { spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { startVmm, testImage, VMM_BIN, type ConsoleClient } from '../vmm/testing/clients.js';
import { MEMORY_FLAGS, VMM_NODE_FLAGS } from '../lib/vmm-node-flags.js';
import { readThpMode } from '../lib/thp.js';
import { guestConsole } from './guest-console.js';
import { killPid, killProcess, median, printJson, round, sh } from './util.js';
import { spawnQemuMicrovm } from './qemu-microvm.js';
import { procMem } from '../vmm/testing/proc-mem.js';

const NS = `capsule-bench-mem-${process.pid}`;
const VMS = Number(process.env.BENCH_VMS ?? 3);
const IDLE_MS = Number(process.env.BENCH_IDLE_S ?? 15) * 1000;
const RAM_MIB = 256;
const TARGET_MIB = 24;
const work = mkdtempSync(join(tmpdir(), 'capsule-bench-mem-'));
type Img = Awaited<ReturnType<typeof testImage>>;
type Kind = 'native' | 'nativeMemoryFlags' | 'qemu';

interface Guest { pid: number; con: ConsoleClient; stop(): Promise<void> }

/** One tap per VMM slot, in a namespace of the bench's own (no addresses: the NICs idle). */
function makeNamespace(): void {
  if (!existsSync('/dev/net/tun')) spawnSync('modprobe', ['tun']);
  sh('ip', ['netns', 'add', NS]);
  for (let i = 0; i < VMS; i++) sh('ip', ['netns', 'exec', NS, 'ip', 'tuntap', 'add', 'dev', `tap${i}`, 'mode', 'tap']);
}

let boots = 0;
function disk(): string {
  const f = join(work, `d${++boots}.img`);
  writeFileSync(f, Buffer.alloc(0));
  truncateSync(f, 64 << 20);
  return f;
}

/**
 * Started as the server starts it, daemonized: the daemon is a fresh process that has THP off
 * from its first page (vmm/memory/huge-pages.ts), where a VMM in the foreground turns it off only
 * once Node has started (by then one pool thread's stack can hold a 2 MiB page under `always`).
 */
async function bootNative(img: Img, slot: number, nodeFlags: readonly string[]): Promise<Guest> {
  const tag = `n${++boots}`;
  const conPath = join(work, `${tag}.con`);
  const pidfile = join(work, `${tag}.pid`);
  const log = join(work, `${tag}.log`);
  const parent = startVmm(['-kernel', img.kernel, '-initrd', img.initrd, '-append', img.cmdline, '-smp', '1', '-m', `${RAM_MIB}M`,
    '-api-channel', `unix:${join(work, `${tag}.qmp`)}`, '-chardev', `id=c,path=${conPath}`, '-drive', `id=disk,file=${disk()}`,
    '-netdev', `id=net0,netdev=tap${slot}`, '-rng', 'random_file=/dev/urandom', '-hotplug-slots', '0',
    '-daemonize', '-pidfile', pidfile, '-D', log],
  { CAPSULE_LOG_LEVEL: 'warn' }, ['ip', 'netns', 'exec', NS], VMM_BIN, nodeFlags);
  const started = await parent.exited;
  if (started.code !== 0) throw new Error(`capsule-vmm -daemonize exited with ${started.code}: ${parent.stderr.slice(-2000)}`);
  const pid = Number(readFileSync(pidfile, 'utf8').trim());
  const con = await guestConsole(conPath, () => readFileSync(log, 'utf8'), pid);
  return { pid, con, stop: async () => { con.close(); await killPid(pid); } };
}

async function bootQemu(img: Img, slot: number): Promise<Guest> {
  const conPath = join(work, `q${++boots}.con`);
  const p = spawnQemuMicrovm(NS, { kernel: img.kernel, initrd: img.initrd, cmdline: img.cmdline, ramMiB: RAM_MIB, console: conPath, disk: disk(), tap: `tap${slot}` });
  let stderr = '';
  p.stderr?.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  const con = await guestConsole(conPath, () => stderr, p);
  return { pid: p.pid as number, con, stop: () => stopGuest(p, con) }; // `ip netns exec` execs qemu in place
}

async function stopGuest(p: ChildProcess, con: ConsoleClient): Promise<void> {
  con.close();
  await killProcess(p);
}

const boot = (img: Img, kind: Kind, slot: number): Promise<Guest> =>
  kind === 'qemu' ? bootQemu(img, slot) : bootNative(img, slot, kind === 'nativeMemoryFlags' ? MEMORY_FLAGS : VMM_NODE_FLAGS);

/** vmmCleanMiB: of vmmUssMiB, clean file pages (mostly program text) only this process maps. */
interface Reading { vmmUssMiB: number; vmmCleanMiB: number; vmmAnonHugeMiB: number; ussMiB: number; pssMiB: number; threads: number }

/** Boots `count` VMMs of a kind (one after another), lets them idle, reads each one's memory. */
async function measure(img: Img, kind: Kind, count: number): Promise<Reading[]> {
  const guests: Guest[] = [];
  try {
    for (let i = 0; i < count; i++) guests.push(await boot(img, kind, i));
    await new Promise((r) => setTimeout(r, IDLE_MS));
    return guests.map((g) => {
      const m = procMem(g.pid, RAM_MIB * 1024);
      return { vmmUssMiB: round(m.vmmUssKiB / 1024), vmmCleanMiB: round(m.vmmCleanKiB / 1024), vmmAnonHugeMiB: round(m.vmmAnonHugeKiB / 1024), ussMiB: round(m.ussKiB / 1024), pssMiB: round(m.pssKiB / 1024), threads: readdirSync(`/proc/${g.pid}/task`).length };
    });
  } finally {
    for (const g of guests) await g.stop();
  }
}

async function main() {
  const img = await testImage();
  try {
    makeNamespace();
    const kinds: Kind[] = ['native', 'nativeMemoryFlags', 'qemu'];
    const result: Record<string, unknown> = {};
    for (const kind of kinds) {
      const alone = (await measure(img, kind, 1))[0] as Reading;
      const sideBySide = await measure(img, kind, VMS);
      result[kind] = { alone, sideBySide: { vms: VMS, medianVmmUssMiB: median(sideBySide.map((r) => r.vmmUssMiB)), each: sideBySide } };
    }
    const mid = (k: Kind) => (result[k] as { sideBySide: { medianVmmUssMiB: number } }).sideBySide.medianVmmUssMiB;
    return {
      bench: 'vmm-idle-memory',
      setup: { vcpus: 1, guestRamMiB: RAM_MIB, devices: 'virtio-blk (64 MiB raw), virtio-net (tap, userspace), virtio-rng', idleSeconds: IDLE_MS / 1000, nodeFlags: { native: VMM_NODE_FLAGS, nativeMemoryFlags: MEMORY_FLAGS }, thp: readThpMode() ?? 'none' },
      ...result,
      ratioNativeOverQemuSideBySide: round(mid('native') / mid('qemu'), 2),
      target: { vmmUssMiB: TARGET_MIB, readAgainst: 'native.sideBySide.medianVmmUssMiB' },
      meetsTarget: mid('native') <= TARGET_MIB,
    };
  } finally {
    spawnSync('ip', ['netns', 'del', NS]);
    rmSync(work, { recursive: true, force: true });
  }
}

const out = await main();
if (process.env.BENCH_SAVE) writeFileSync(process.env.BENCH_SAVE, `${JSON.stringify(out, null, 2)}\n`);
printJson(out);
process.exit(0);
