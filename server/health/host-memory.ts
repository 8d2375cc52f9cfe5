// Host settings that change what each VM costs, read once at start so the operator sees them in
// the log. Today: the transparent huge page mode. Under `always` (Debian's default) every VMM's
// thread stacks and malloc arenas can take 2 MiB pages for a few KiB used (up to 4 MiB per idle
// native VMM in bench:mem); under `madvise` only memory that asks gets them (QEMU asks for its
// guest RAM; capsule-vmm does not, so ballooned-out pages stay out: docs/vmm.md, "Idle memory").
import { readThpMode, THP_ENABLED } from '../../lib/thp.js';

/** A line for the log when the host's THP mode costs each VM memory; undefined otherwise. */
export function thpAdvice(readText?: (path: string) => string): string | undefined {
  if (readThpMode(readText) !== 'always') return undefined;
  return `transparent huge pages are "always": each VMM's own stacks and heaps may take 2 MiB pages for a few KiB used; "madvise" gives them only to memory that asks (echo madvise > ${THP_ENABLED}; docs/vmm.md, "Idle memory")`;
}
