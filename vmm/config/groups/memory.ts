// -m [size=]N[M|G] and -mem-path FILE|DIR; JSON machine-config.mem_size (bytes) and .mem_path.
import { absolutePath, ConfigError, KeyTable, size } from '../options.js';
import { settingsGroup, type Group } from '../group.js';

export const MIN_MEM = 256 * 1024 * 1024;
export const MAX_MEM = 512 * 1024 * 1024 * 1024;
export const DEFAULT_MEM = MIN_MEM;

export const MEMORY_KEYS = new KeyTable({
  memSize: size({ cli: 'size', json: 'mem_size', min: MIN_MEM, max: MAX_MEM, align: 4096, range: '256M-512G' }),
}, 'memSize');

export const MEM_PATH_KEYS = new KeyTable({
  memPath: absolutePath({ cli: '-mem-path', json: 'mem_path', metavar: 'FILE|DIR', expect: 'an absolute path (a file or a directory)' }),
});

/** `-m` text (256M, 1G, or bytes) → bytes; a ConfigError naming `opt` and the range otherwise. */
export function parseMemSize(v: string, opt = '-m'): number {
  const bytes = MEMORY_KEYS.parseKv(opt, v).memSize;
  if (bytes === undefined) throw new ConfigError(`${opt}: needs a size (range 256M-512G)`);
  return bytes;
}

export const memoryGroups: Group[] = [
  settingsGroup({
    table: MEMORY_KEYS,
    kv: { option: '-m', help: 'memory, 256M-512G (default 256M; a plain number is bytes)' },
    section: 'machine-config',
  }),
  settingsGroup({
    table: MEM_PATH_KEYS,
    options: { memPath: 'back guest memory with a file, or an unlinked file in a directory (hugetlbfs)' },
    section: 'machine-config',
  }),
];
