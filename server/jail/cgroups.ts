// Per-VM cgroups: <parent>/capsule/<id> with a CPU quota (one CPU per vCPU, at most the host's
// CPUs) and a memory limit
// (guest memory + overhead). cgroup v2 where the unified hierarchy offers the cpu and memory
// controllers; otherwise the v1 cpu and memory hierarchies. <parent> is the server's own
// cgroup in each hierarchy (so VMMs stay inside whatever limits the server runs under), or
// CAPSULE_CGROUP_PARENT. Nothing is written unless a hierarchy is usable.
import { mkdirSync, readFileSync, rmdirSync, writeFileSync, existsSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';

export const CPU_PERIOD_US = 100_000;

/**
 * The CPU quota (µs per CPU_PERIOD_US) of a VM: one CPU per vCPU, but never more than the host
 * has. A quota above the host's CPUs limits nothing (a 254-vCPU VM on 2 cores would get 25.4
 * CPUs), so the cap keeps the number meaningful and visible in cpu.max.
 */
export function cpuQuotaUs(vcpus: number, hostCpus = availableParallelism()): number {
  return Math.max(1, Math.min(vcpus, hostCpus)) * CPU_PERIOD_US;
}

export interface CgroupLimits {
  vcpus: number;
  memoryBytes: number;
}

export interface CgroupUsage {
  cpuSeconds: number | undefined;
  memoryBytes: number | undefined;
  /** The processes in the VM's (cpu) cgroup. */
  pids: number[];
}

export interface MountInfo {
  root: string;
  mountPoint: string;
  fsType: string;
  source: string;
  superOptions: string[];
}

export function parseMountInfo(text: string): MountInfo[] {
  const out: MountInfo[] = [];
  for (const line of text.split('\n')) {
    if (!line) continue;
    const f = line.split(' ');
    const dash = f.indexOf('-');
    if (dash < 0 || f.length < dash + 4) continue;
    const unescape = (s: string) => s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
    out.push({ root: unescape(f[3]!), mountPoint: unescape(f[4]!), fsType: f[dash + 1]!, source: unescape(f[dash + 2]!), superOptions: f[dash + 3]!.split(',') });
  }
  return out;
}

/** /proc/self/cgroup: hierarchy controllers ('' for v2) -> path. */
export function parseProcCgroup(text: string): Array<{ controllers: string[]; path: string }> {
  return text.split('\n').filter(Boolean).map((l) => {
    const [, ctl = '', ...rest] = l.split(':');
    return { controllers: ctl ? ctl.split(',') : [], path: rest.join(':') };
  });
}

function under(m: MountInfo, cgPath: string): string {
  const rel = m.root !== '/' && (cgPath === m.root || cgPath.startsWith(`${m.root}/`)) ? cgPath.slice(m.root.length) : cgPath;
  return rel === '/' || rel === '' ? m.mountPoint : join(m.mountPoint, rel);
}

type Layout =
  | { version: 'v2'; base: string }
  | { version: 'v1'; cpu: string; memory: string };

export class CgroupManager {
  private constructor(private readonly layout: Layout | undefined, readonly reason: string) {}

  get available(): boolean {
    return this.layout !== undefined;
  }

  get version(): 'v1' | 'v2' | undefined {
    return this.layout?.version;
  }

  /** Finds a usable hierarchy and creates <parent>/capsule in it (the one write it does). */
  static detect(parent?: string, mountinfo = readFileSync('/proc/self/mountinfo', 'utf8'), selfCgroup = readFileSync('/proc/self/cgroup', 'utf8')): CgroupManager {
    const mounts = parseMountInfo(mountinfo);
    const own = parseProcCgroup(selfCgroup);
    const why: string[] = [];

    const m2 = mounts.find((m) => m.fsType === 'cgroup2');
    if (!m2) why.push('cgroup v2: not mounted');
    else {
      const path = parent ?? own.find((c) => c.controllers.length === 0)?.path ?? '/';
      const base = under(m2, path);
      try {
        const controllers = readFileSync(join(base, 'cgroup.controllers'), 'utf8').trim().split(/\s+/);
        const missing = ['cpu', 'memory'].filter((c) => !controllers.includes(c));
        if (missing.length > 0) throw new Error(`${base} offers [${controllers.join(' ')}], not ${missing.join(', ')} (bound to v1 hierarchies or not delegated)`);
        enable(base);
        const capsule = join(base, 'capsule');
        mkdirSync(capsule, { recursive: true });
        enable(capsule);
        return new CgroupManager({ version: 'v2', base: capsule }, `cgroup v2: ${capsule}/<id> (cpu.max, memory.max)`);
      } catch (e) {
        why.push(`cgroup v2: ${(e as Error).message}`);
      }
    }

    try {
      const dirs: Record<'cpu' | 'memory', string> = { cpu: '', memory: '' };
      for (const ctl of ['cpu', 'memory'] as const) {
        const m = mounts.find((x) => x.fsType === 'cgroup' && x.superOptions.includes(ctl));
        if (!m) throw new Error(`no ${ctl} hierarchy mounted`);
        const path = parent ?? own.find((c) => c.controllers.includes(ctl))?.path ?? '/';
        const dir = join(under(m, path), 'capsule');
        try {
          mkdirSync(dir, { recursive: true });
        } catch (e) {
          throw new Error(`cannot create ${dir}: ${(e as Error).message}`);
        }
        dirs[ctl] = dir;
      }
      return new CgroupManager({ version: 'v1', ...dirs }, `cgroup v1: ${dirs.cpu}/<id> (cfs quota), ${dirs.memory}/<id> (memory limit); ${why.join('; ')}`);
    } catch (e) {
      why.push(`cgroup v1: ${(e as Error).message}`);
    }
    return new CgroupManager(undefined, why.join('; '));
  }

  static unavailable(reason: string): CgroupManager {
    return new CgroupManager(undefined, reason);
  }

  /** The VM's cgroup directories (whether or not they exist). */
  dirs(id: string): string[] {
    if (!this.layout) return [];
    return this.layout.version === 'v2' ? [join(this.layout.base, id)] : [join(this.layout.cpu, id), join(this.layout.memory, id)];
  }

  /** Creates the VM's cgroups with their limits; returns the cgroup.procs files to join. */
  create(id: string, limits: CgroupLimits): string[] {
    if (!this.layout) return [];
    const quota = cpuQuotaUs(limits.vcpus);
    if (this.layout.version === 'v2') {
      const dir = join(this.layout.base, id);
      mkdirSync(dir, { recursive: true });
      writeFileSync(join(dir, 'cpu.max'), `${quota} ${CPU_PERIOD_US}`);
      writeFileSync(join(dir, 'memory.max'), String(limits.memoryBytes));
      return [join(dir, 'cgroup.procs')];
    }
    const cpu = join(this.layout.cpu, id);
    const mem = join(this.layout.memory, id);
    mkdirSync(cpu, { recursive: true });
    mkdirSync(mem, { recursive: true });
    writeFileSync(join(cpu, 'cpu.cfs_period_us'), String(CPU_PERIOD_US));
    writeFileSync(join(cpu, 'cpu.cfs_quota_us'), String(quota));
    writeFileSync(join(mem, 'memory.limit_in_bytes'), String(limits.memoryBytes));
    return [join(cpu, 'cgroup.procs'), join(mem, 'cgroup.procs')];
  }

  /** Removes the VM's cgroups (they empty as the VMM's processes exit: retried briefly). */
  async remove(id: string, timeoutMs = 3000): Promise<void> {
    const end = Date.now() + timeoutMs;
    for (const dir of this.dirs(id)) {
      for (;;) {
        try {
          rmdirSync(dir);
          break;
        } catch (e) {
          const code = (e as NodeJS.ErrnoException).code;
          if (code === 'ENOENT') break;
          if (Date.now() > end) throw new Error(`cannot remove cgroup ${dir}: ${(e as Error).message}`);
          await new Promise((r) => setTimeout(r, 25));
        }
      }
    }
  }

  /** Whether the kernel's OOM killer ended a process of the VM's memory cgroup (a failed start's cause). */
  oomKilled(id: string): boolean {
    if (!this.layout) return false;
    const file = this.layout.version === 'v2' ? join(this.layout.base, id, 'memory.events') : join(this.layout.memory, id, 'memory.oom_control');
    try {
      const m = /^oom_kill (\d+)$/m.exec(readFileSync(file, 'utf8'));
      return m !== null && Number(m[1]) > 0;
    } catch {
      return false;
    }
  }

  /**
   * What the VM's cgroups have counted (for the metrics): CPU time, memory in use, and the
   * processes in them. A counter this hierarchy does not offer is left out (cgroup v1 keeps CPU
   * time in the cpuacct controller, which is a hierarchy of its own on some hosts and not one
   * the jail uses): the caller sums the processes' own figures from /proc instead.
   */
  usage(id: string): CgroupUsage | undefined {
    if (!this.layout) return undefined;
    const read = (file: string) => { try { return readFileSync(file, 'utf8'); } catch { return undefined; } };
    const num = (text: string | undefined) => (text === undefined || !/^\d+\s*$/.test(text) ? undefined : Number(text));
    const pids = (dir: string) => (read(join(dir, 'cgroup.procs')) ?? '').split('\n').filter(Boolean).map(Number);
    if (this.layout.version === 'v2') {
      const dir = join(this.layout.base, id);
      const procs = read(join(dir, 'cgroup.procs'));
      if (procs === undefined) return undefined;
      const usec = /^usage_usec (\d+)$/m.exec(read(join(dir, 'cpu.stat')) ?? '');
      return { cpuSeconds: usec ? Number(usec[1]) / 1e6 : undefined, memoryBytes: num(read(join(dir, 'memory.current'))), pids: pids(dir) };
    }
    const cpu = join(this.layout.cpu, id);
    const procs = read(join(cpu, 'cgroup.procs'));
    if (procs === undefined) return undefined;
    const ns = num(read(join(cpu, 'cpuacct.usage'))); // only where cpu and cpuacct share a hierarchy
    return { cpuSeconds: ns === undefined ? undefined : ns / 1e9, memoryBytes: num(read(join(this.layout.memory, id, 'memory.usage_in_bytes'))), pids: pids(cpu) };
  }

  exists(id: string): boolean {
    return this.dirs(id).some((d) => existsSync(d));
  }
}

/** Turns on the cpu and memory controllers for a v2 cgroup's children. */
function enable(dir: string): void {
  const on = readFileSync(join(dir, 'cgroup.subtree_control'), 'utf8').trim().split(/\s+/);
  const want = ['cpu', 'memory'].filter((c) => !on.includes(c));
  if (want.length === 0) return;
  try {
    writeFileSync(join(dir, 'cgroup.subtree_control'), want.map((c) => `+${c}`).join(' '));
  } catch (e) {
    throw new Error(`cannot enable ${want.join(', ')} in ${dir}/cgroup.subtree_control: ${(e as Error).message}` +
      ' (a cgroup with processes cannot; set CAPSULE_CGROUP_PARENT to a delegated cgroup)');
  }
}
