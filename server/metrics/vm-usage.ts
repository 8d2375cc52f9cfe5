// Per-VM CPU time and memory, read at scrape time: from the VM's cgroups where it has them
// (jailed VMMs, server/jail/cgroups.ts), otherwise from /proc for the VMM's process and its
// descendants (an unjailed QEMU is one daemon; a jailed VMM without cgroups is a child of the
// `unshare` whose pid the server tracks, and a child's CPU time reaches its parent's
// /proc/<pid>/stat only once it is reaped).
import { readFileSync } from 'node:fs';
import type { CgroupManager } from '../jail/cgroups.js';

/** /proc/<pid>/stat counts CPU time in clock ticks: USER_HZ, which is 100 on Linux. */
const CLOCK_TICKS_PER_SECOND = 100;
/** A runaway process tree must not make a scrape walk the whole machine. */
const MAX_PROCESSES = 64;

export interface VmUsage {
  cpuSeconds: number;
  memoryBytes: number;
  /** Where the figures come from. */
  source: 'cgroup' | 'proc';
}

function read(path: string): string | undefined {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return undefined;
  }
}

/** utime + stime of one process (all its threads), seconds; undefined when it is gone. */
export function processCpuSeconds(pid: number): number | undefined {
  const stat = read(`/proc/${pid}/stat`);
  if (stat === undefined) return undefined;
  // Fields after the command (which may hold spaces and parentheses): state is field 3, utime 14, stime 15.
  const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const utime = Number(rest[11]);
  const stime = Number(rest[12]);
  return Number.isFinite(utime) && Number.isFinite(stime) ? (utime + stime) / CLOCK_TICKS_PER_SECOND : undefined;
}

/** Resident memory (VmRSS) of one process, bytes; undefined when it is gone. */
export function processRssBytes(pid: number): number | undefined {
  const m = /^VmRSS:\s+(\d+) kB$/m.exec(read(`/proc/${pid}/status`) ?? '');
  return m ? Number(m[1]) * 1024 : undefined;
}

/** The process and its descendants (through /proc/<pid>/task/<tid>/children), at most MAX_PROCESSES. */
export function processTree(pid: number): number[] {
  const out: number[] = [];
  const queue = [pid];
  while (queue.length > 0 && out.length < MAX_PROCESSES) {
    const p = queue.shift()!;
    out.push(p);
    const children = read(`/proc/${p}/task/${p}/children`);
    if (children) queue.push(...children.trim().split(/\s+/).filter(Boolean).map(Number));
  }
  return out;
}

function sumOver(pids: readonly number[], f: (pid: number) => number | undefined): number | undefined {
  let total: number | undefined;
  for (const pid of pids) {
    const v = f(pid);
    if (v !== undefined) total = (total ?? 0) + v;
  }
  return total;
}

/** The VM's usage, or undefined when neither its cgroup nor its process can be read. */
export function readVmUsage(id: string, pid: number | undefined, cgroups?: CgroupManager): VmUsage | undefined {
  const cg = cgroups?.usage(id);
  if (cg && cg.pids.length > 0) {
    const cpuSeconds = cg.cpuSeconds ?? sumOver(cg.pids, processCpuSeconds);
    const memoryBytes = cg.memoryBytes ?? sumOver(cg.pids, processRssBytes);
    if (cpuSeconds !== undefined && memoryBytes !== undefined) return { cpuSeconds, memoryBytes, source: 'cgroup' };
  }
  if (pid === undefined) return undefined;
  const tree = processTree(pid);
  const cpuSeconds = sumOver(tree, processCpuSeconds);
  const memoryBytes = sumOver(tree, processRssBytes);
  if (cpuSeconds === undefined || memoryBytes === undefined) return undefined;
  return { cpuSeconds, memoryBytes, source: 'proc' };
}
