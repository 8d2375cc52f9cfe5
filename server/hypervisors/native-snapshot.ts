// Native snapshots (docs/snapshots.md): capsule-vmm writes a state file and one memory file per
// guest-memory region, all opened here and handed over with QMP getfd (a jailed, seccomp-filtered
// VMM opens no host file); a restore is a VMM started with -incoming defer that gets the same
// files read-only and maps the memory files copy-on-write (MAP_PRIVATE).
import { closeSync, constants as fsc, openSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import type { QmpCommands } from './types.js';

const STATE = 'state';
const MEMORY_FILE = /^memory-\d+$/;

interface Layout {
  state: string;
  memory: Array<{ file: string; gpa: number; size: number }>;
}

interface MigrationInfo {
  status?: string;
  'error-desc'?: string;
}

/** Passes `fd` under `name`; the server's copy is closed either way. */
async function passFd(qmp: QmpCommands, name: string, fd: number): Promise<void> {
  try {
    await qmp.executeWithFds('getfd', { fdname: name }, [fd]);
  } finally {
    closeSync(fd);
  }
}

/** The VMM finishes the command before it answers; query-migrate says how it ended. */
async function checkMigration(qmp: QmpCommands, what: string): Promise<void> {
  const info = await qmp.execute<MigrationInfo>('query-migrate');
  if (info.status !== 'completed') throw new Error(`${what} failed: ${info['error-desc'] ?? info.status ?? 'no status'}`);
}

/** Writes the paused VM's snapshot into `dir` (empty): the files its layout names. */
export async function saveNativeState(qmp: QmpCommands, dir: string, timeoutMs: number): Promise<string[]> {
  const layout = await qmp.execute<Layout>('query-snapshot-layout');
  const names = [layout.state, ...layout.memory.map((m) => m.file)];
  for (const n of names) {
    if (n !== STATE && !MEMORY_FILE.test(n)) throw new Error(`the VMM named an unexpected snapshot file ${JSON.stringify(n)}`);
  }
  for (const n of names) await passFd(qmp, n, openSync(join(dir, n), fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL, 0o600));
  await qmp.execute('migrate', { uri: `fd:${layout.state}` }, timeoutMs);
  await checkMigration(qmp, 'writing the snapshot');
  return names;
}

/** Loads `dir`'s snapshot into a VMM started with -incoming defer; it ends paused. */
export async function loadNativeState(qmp: QmpCommands, dir: string, timeoutMs: number): Promise<void> {
  const names = [STATE, ...readdirSync(dir).filter((n) => MEMORY_FILE.test(n)).sort()];
  for (const n of names) await passFd(qmp, n, openSync(join(dir, n), fsc.O_RDONLY));
  await qmp.execute('migrate-incoming', { uri: `fd:${STATE}` }, timeoutMs);
  await checkMigration(qmp, 'loading the snapshot');
}
