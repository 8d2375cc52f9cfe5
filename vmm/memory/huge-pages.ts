// Transparent huge pages (THP) for the VMM's own memory and for guest RAM (docs/vmm.md, "Idle
// memory"). Under the host's THP mode `always` (Debian's default), a thread stack touched for a
// few KiB when the thread is made holds a whole 2 MiB page, and khugepaged later collapses any
// 2 MiB range of a stack or heap that has one page in use (`max_ptes_none` 511). Guest RAM, on the
// other hand, boots faster with huge pages (fewer nested page faults). So:
//  1. `startWithoutHugePages()`, first thing: no THP while the VMM starts. The flag belongs to the
//     process's memory and is kept across fork and execve, so a daemon spawned after it has it
//     from its first page.
//  2. `allowHugePagesForGuestOnly(guest)`, once the vCPU threads exist and before they run the
//     guest (Machine's onVcpuThreads): every anonymous mapping of the VMM's own (stacks, heaps,
//     reservations; a part mprotect'ed later keeps the advice) is marked MADV_NOHUGEPAGE, then the
//     flag is lifted, so guest RAM follows the host's mode. Mappings made after it (brk growth,
//     fresh mmaps, a reset's new vCPU threads) are not marked.
// Both are best effort: a kernel without THP, or a sandbox that refuses prctl, costs memory, not
// the VM.
import { readFileSync } from 'node:fs';
import { allowTransparentHugePages, disableTransparentHugePages, MADV_NOHUGEPAGE, tryMadvise } from '../kvm/sys.js';

export interface AddressRange { start: bigint; end: bigint }

/** undefined, or why THP could not be turned off (the VMM starts anyway). */
export function startWithoutHugePages(): string | undefined {
  try {
    disableTransparentHugePages();
    return undefined;
  } catch (e) {
    return (e as Error).message;
  }
}

/**
 * The anonymous mappings of a /proc/PID/maps text (no file: [heap], [stack], unnamed), minus the
 * kernel's special ones ([vdso], [vvar], [vsyscall]) and anything overlapping `except`.
 */
export function ownAnonymousMappings(maps: string, except: readonly AddressRange[]): AddressRange[] {
  const out: AddressRange[] = [];
  for (const line of maps.split('\n')) {
    const m = /^([0-9a-f]+)-([0-9a-f]+) \S+ \S+ \S+ (\d+)\s*(.*)$/.exec(line);
    if (!m || m[3] !== '0') continue;
    const name = m[4] ?? '';
    if (name !== '' && name !== '[heap]' && !name.startsWith('[stack') && !name.startsWith('[anon')) continue;
    const r = { start: BigInt(`0x${m[1]}`), end: BigInt(`0x${m[2]}`) };
    if (except.some((e) => r.start < e.end && e.start < r.end)) continue;
    out.push(r);
  }
  return out;
}

/**
 * Returns how many mappings were marked (one unmapped meanwhile is not an error), or why none
 * could be; the flag is lifted either way.
 */
export function allowHugePagesForGuestOnly(guest: readonly AddressRange[]): number | string {
  let marked: number | string = 0;
  try {
    for (const r of ownAnonymousMappings(readFileSync('/proc/self/maps', 'utf8'), guest)) {
      if (tryMadvise(r.start, r.end - r.start, MADV_NOHUGEPAGE) === 0) marked++;
    }
  } catch (e) {
    marked = (e as Error).message;
  }
  try { allowTransparentHugePages(); } catch { /* never set: startWithoutHugePages said why */ }
  return marked;
}
