// What a process holds, read from /proc: the drills compare these before and after.
import { existsSync, readdirSync, readFileSync } from 'node:fs';

/** Open file descriptors of `pid`. */
export function fdCount(pid: number): number {
  return readdirSync(`/proc/${pid}/fd`).length;
}

/** Resident memory of `pid` in MiB (VmRSS). */
export function rssMiB(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) / 1024 : 0;
}

/** The state letter and parent pid of a process (fields 3 and 4 of /proc/<pid>/stat; the name may hold spaces). */
function stat(pid: string): { state: string; ppid: number } | undefined {
  try {
    const s = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const rest = s.slice(s.lastIndexOf(')') + 2).split(' ');
    return { state: rest[0]!, ppid: Number(rest[1]) };
  } catch {
    return undefined; // gone meanwhile
  }
}

/** Children of `pid` in state Z (exited, never reaped). */
export function zombieChildren(pid: number): number[] {
  const out: number[] = [];
  for (const p of readdirSync('/proc')) {
    if (!/^\d+$/.test(p)) continue;
    const st = stat(p);
    if (st && st.ppid === pid && st.state === 'Z') out.push(Number(p));
  }
  return out;
}

/** Pids whose command line contains `needle` (e.g. a VM id, or a data directory). */
export function pidsWithCmdline(needle: string): number[] {
  const out: number[] = [];
  for (const p of readdirSync('/proc')) {
    if (!/^\d+$/.test(p) || Number(p) === process.pid) continue;
    try {
      const cmd = readFileSync(`/proc/${p}/cmdline`, 'utf8');
      if (cmd.includes(needle)) out.push(Number(p));
    } catch { /* gone meanwhile */ }
  }
  return out;
}

/**
 * The per-VM cgroup parents (<...>/capsule) the jail uses, read from GET /v1/health's
 * `jail.reasons.cgroups` ("cgroup v2: /sys/fs/cgroup/.../capsule/<id> (...)", or one per v1 hierarchy).
 */
export function jailCgroupParents(health: { jail?: { reasons?: Record<string, string> } }): string[] {
  const text = health.jail?.reasons?.cgroups ?? '';
  return [...text.matchAll(/(\/sys\/fs\/cgroup[^\s,;()]*?\/capsule)\/<id>/g)].map((m) => m[1]!);
}

/** Which of `ids` still have a cgroup directory under one of `parents`. */
export function cgroupsLeft(parents: string[], ids: Iterable<string>): string[] {
  const left: string[] = [];
  for (const id of ids) for (const p of parents) if (existsSync(`${p}/${id}`)) left.push(`${p}/${id}`);
  return left;
}
