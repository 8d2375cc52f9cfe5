// QEMU snapshots through its own migration (docs/snapshots.md): the whole machine state,
// guest memory included, streamed into one file the server opened and passed to QEMU over QMP
// (getfd + `migrate fd:NAME`); a restore is a QEMU started with `-incoming defer` and fed the
// same file (`migrate-incoming fd:NAME`). No `exec:` URI: a jailed QEMU runs with
// `-sandbox spawn=deny` and could not start `cat`, and it can open no host file itself.
import { closeSync, constants as fsc, openSync } from 'node:fs';
import { join } from 'node:path';
import type { QmpCommands } from './types.js';

/** The single file of a QEMU snapshot. */
export const QEMU_STATE_FILE = 'vmstate';
const FD_NAME = 'capsule-snapshot';
/** How often query-migrate is asked while a migration runs. */
const POLL_MS = 20;

interface MigrationInfo {
  status?: string;
  'error-desc'?: string;
  ram?: { transferred?: number; total?: number };
}

/** Passes an fd to QEMU under FD_NAME (QMP getfd); the server's copy is closed either way. */
async function passFd(qmp: QmpCommands, fd: number): Promise<void> {
  try {
    await qmp.executeWithFds('getfd', { fdname: FD_NAME }, [fd]);
  } finally {
    closeSync(fd);
  }
}

/** Waits for the migration in either direction to end; throws with QEMU's reason if it failed. */
async function waitForMigration(qmp: QmpCommands, what: string, timeoutMs: number): Promise<void> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const info = await qmp.execute<MigrationInfo>('query-migrate');
    if (info.status === 'completed') return;
    if (info.status === 'failed' || info.status === 'cancelled') {
      throw new Error(`${what} failed: ${info['error-desc'] ?? info.status}`);
    }
    if (Date.now() > end) {
      await qmp.execute('migrate_cancel').catch(() => undefined);
      throw new Error(`${what} did not finish within ${Math.round(timeoutMs / 1000)} s (status ${info.status ?? 'none'})`);
    }
    await new Promise((r) => setTimeout(r, POLL_MS));
  }
}

/**
 * Saves a paused QEMU into dir/vmstate. The bandwidth cap QEMU applies to live migration
 * (128 MiB/s by default) is lifted: the guest is paused, so the file is written as fast as the
 * disk takes it.
 */
export async function saveQemuState(qmp: QmpCommands, dir: string, timeoutMs: number): Promise<string[]> {
  await qmp.execute('migrate-set-parameters', { 'max-bandwidth': Number.MAX_SAFE_INTEGER });
  await passFd(qmp, openSync(join(dir, QEMU_STATE_FILE), fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL, 0o600));
  await qmp.execute('migrate', { uri: `fd:${FD_NAME}` });
  await waitForMigration(qmp, 'writing the snapshot', timeoutMs);
  return [QEMU_STATE_FILE];
}

/** Loads dir/vmstate into a QEMU started with -incoming defer; it ends paused. */
export async function loadQemuState(qmp: QmpCommands, dir: string, timeoutMs: number): Promise<void> {
  await passFd(qmp, openSync(join(dir, QEMU_STATE_FILE), fsc.O_RDONLY));
  await qmp.execute('migrate-incoming', { uri: `fd:${FD_NAME}` });
  await waitForMigration(qmp, 'loading the snapshot', timeoutMs);
}
