// Host settings that change what each VM costs, read once at start so the operator sees them in
// the log. Today: the transparent huge page mode. Under `always` (Debian's default) a process's
// thread stacks and malloc arenas can take 2 MiB pages for a few KiB used. capsule-vmm keeps its
// own memory off them (docs/vmm.md, "Idle memory"); QEMU VMMs and this server do not, and guest
// RAM refills what the balloon gave back. Under `madvise` only memory that asks gets them (QEMU
// asks for its guest RAM).
import { readThpMode, THP_ENABLED } from '../../lib/thp.js';

/** A line for the log when the host's THP mode costs each VM memory; undefined otherwise. */
export function thpAdvice(readText?: (path: string) => string): string | undefined {
  if (readThpMode(readText) !== 'always') return undefined;
  return `transparent huge pages are "always": QEMU VMMs' stacks and heaps (and this server's) may take 2 MiB pages for a few KiB used (capsule-vmm keeps its own off them), and guest RAM refills what the balloon gave back; "madvise" gives them only to memory that asks (echo madvise > ${THP_ENABLED}; docs/vmm.md, "Idle memory")`;
}
