// The host's transparent huge page mode, for the server's start-up advice
// (server/health/host-memory.ts) and the memory bench's record (bench/vmm-mem.ts).
import { readFileSync } from 'node:fs';

export const THP_ENABLED = '/sys/kernel/mm/transparent_hugepage/enabled';

/** The selected mode in a THP `enabled` file ("always [madvise] never" → "madvise"). */
export function thpMode(text: string): string | undefined {
  return /\[(\w+)\]/.exec(text)?.[1];
}

/** This host's mode; undefined on a kernel without THP. */
export function readThpMode(readText: (path: string) => string = (p) => readFileSync(p, 'utf8')): string | undefined {
  try {
    return thpMode(readText(THP_ENABLED));
  } catch {
    return undefined;
  }
}
