// A process's memory as the VMM benches and the VMM KVM test read it: USS (private pages), PSS,
// RSS from smaps_rollup, and the VMM's own USS: without the guest RAM mapping, so that what the
// guest happened to touch does not count as the VMM's cost.
import { readFileSync } from 'node:fs';

export interface ProcMem {
  ussKiB: number; pssKiB: number; rssKiB: number; vmmUssKiB: number;
  /** Of vmmUssKiB, the clean pages: file pages (mostly program text) no other process maps right now. */
  vmmCleanKiB: number;
  /**
   * Of the VMM's own mappings, what transparent huge pages back (AnonHugePages): under THP mode
   * `always` a thread stack or malloc arena touched for a few KiB can hold a whole 2 MiB page.
   */
  vmmAnonHugeKiB: number;
}

/** `guestRamKiB`: mappings at least this large are taken to be guest RAM. */
export function procMem(pid: number, guestRamKiB: number): ProcMem {
  const t = readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8');
  const f = (k: string): number => Number(new RegExp(`^${k}:\\s+(\\d+)`, 'm').exec(t)?.[1] ?? 0);
  const own = vmmOwnUss(pid, guestRamKiB);
  return { ussKiB: f('Private_Clean') + f('Private_Dirty'), pssKiB: f('Pss'), rssKiB: f('Rss'), vmmUssKiB: own.clean + own.dirty, vmmCleanKiB: own.clean, vmmAnonHugeKiB: own.huge };
}

function vmmOwnUss(pid: number, guestRamKiB: number): { clean: number; dirty: number; huge: number } {
  const own = { clean: 0, dirty: 0, huge: 0 };
  let skip = false;
  for (const line of readFileSync(`/proc/${pid}/smaps`, 'utf8').split('\n')) {
    const size = /^Size:\s+(\d+) kB/.exec(line);
    if (size) skip = Number(size[1]) >= guestRamKiB;
    const priv = /^Private_(Clean|Dirty):\s+(\d+) kB/.exec(line);
    if (priv && !skip) own[priv[1] === 'Clean' ? 'clean' : 'dirty'] += Number(priv[2]);
    const huge = /^AnonHugePages:\s+(\d+) kB/.exec(line);
    if (huge && !skip) own.huge += Number(huge[1]);
  }
  return own;
}

export interface Mapping { start: bigint; end: bigint; perms: string; name: string; vmFlags: string[] }

/** Each mapping of a process ('self': this one) in address order, with its smaps VmFlags. */
export function mappings(pid: number | 'self'): Mapping[] {
  const out: Mapping[] = [];
  for (const line of readFileSync(`/proc/${pid}/smaps`, 'utf8').split('\n')) {
    const m = /^([0-9a-f]+)-([0-9a-f]+) (\S+) \S+ \S+ \d+\s*(.*)$/.exec(line);
    if (m) out.push({ start: BigInt(`0x${m[1]}`), end: BigInt(`0x${m[2]}`), perms: m[3]!, name: m[4] ?? '', vmFlags: [] });
    else if (line.startsWith('VmFlags:') && out.length > 0) out[out.length - 1]!.vmFlags = line.split(/\s+/).slice(1).filter(Boolean);
  }
  return out;
}
