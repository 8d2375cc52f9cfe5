// QMP snapshot commands (docs/snapshots.md, docs/vmm.md). QEMU's names and shapes where they fit:
//
//   query-snapshot-layout        → {"state":"state","memory":[{"file":"memory-0","gpa":0,"size":N},...]}
//                                  the files a snapshot of this VM consists of (capsule's own command)
//   migrate {"uri":"fd:NAME"}    a paused VM's snapshot into the files passed with getfd: the state
//                                  file under NAME, each memory file under its file name
//   migrate {"uri":"file:DIR"}   the same into DIR/state and DIR/memory-N (StratoVirt's form; the VMM
//                                  opens them itself, so not under the seccomp filter)
//   migrate-incoming {"uri":...} a VMM started with -incoming defer loads a snapshot the same ways
//                                  and ends paused; a failed load ends the VMM (nothing half-started)
//   query-migrate                → {"status":"completed"|"failed", "error-desc"?, "total-time"}
//
// A snapshot is written synchronously on the main thread: the guest is paused and no device work
// can run meanwhile, so what is saved is one consistent moment.
import { closeSync, constants as fsc, openSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { closeFd } from '../../kvm/sys.js';
import type { Machine } from '../../machine.js';
import type { GuestMemory } from '../../memory/guest-memory.js';
import { logger } from '../../log.js';
import { loadSnapshot, saveSnapshot, snapshotLayout, STATE_FILE, type LoadResult } from '../../snapshot/snapshot.js';
import { QmpError, type QmpServer } from '../server.js';

const log = logger('snapshot');

export interface SnapshotDeps {
  machine: Machine;
  memory: GuestMemory;
  /** named fds from getfd: the ones a command uses are taken out and closed */
  fds: Map<string, number>;
  vcpus: number;
  /** -incoming defer: migrate-incoming is allowed once */
  incoming: boolean;
  /** run once the machine is built, before a `cont` can run it (the VMM's seccomp filter) */
  beforeRun(): Promise<void>;
  /** a snapshot was loaded */
  onLoaded(r: LoadResult): void;
  /** a load failed: the VMM ends */
  onLoadFailed(reason: string): void;
}

interface MigrationStatus {
  status: 'active' | 'completed' | 'failed';
  'error-desc'?: string;
  'total-time'?: number;
}

type Files = { fds: Map<string, number>; close(): void; /** a failed save: remove the files opened here */ discard(): void };

/** The fds of a snapshot's files from a URI: fd:NAME (getfd'd, taken out of `named`) or file:DIR (opened here). */
export function filesFor(uri: unknown, names: string[], named: Map<string, number>, write: boolean): Files {
  if (typeof uri !== 'string') throw new QmpError('GenericError', "Parameter 'uri' is missing");
  const fds = new Map<string, number>();
  const close = (): void => { for (const fd of fds.values()) closeFd(fd); };
  if (uri.startsWith('fd:')) {
    const stateName = uri.slice(3);
    // a save needs every file; a load needs the state file, and the check of its manifest names a missing memory file
    const missing = [stateName, ...(write ? names.slice(1) : [])].filter((n) => !named.has(n));
    if (missing.length) throw new QmpError('GenericError', `File descriptor named '${missing.join("', '")}' not found (getfd one per file: ${names.join(', ')})`);
    names.forEach((n, i) => {
      const key = i === 0 ? stateName : n;
      const fd = named.get(key);
      if (fd === undefined) return;
      fds.set(n, fd);
      named.delete(key);
    });
    return { fds, close, discard: () => undefined };
  }
  if (uri.startsWith('file:') && uri.length > 5) {
    const dir = uri.slice(5);
    // a failed save: the files created here go (O_EXCL: none was there before)
    const discard = (): void => { if (write) for (const n of fds.keys()) rmSync(join(dir, n), { force: true }); };
    try {
      names.forEach((n, i) => {
        try {
          fds.set(n, openSync(join(dir, n), write ? fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL : fsc.O_RDONLY, 0o600));
        } catch (e) {
          if (write || i === 0 || (e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
        }
      });
    } catch (e) {
      close();
      discard();
      const msg = (e as NodeJS.ErrnoException).code === 'EPERM' ? 'opening files is forbidden under the seccomp filter: pass fds (getfd, uri fd:NAME)' : (e as Error).message;
      throw new QmpError('GenericError', `cannot open the snapshot files in ${dir}: ${msg}`);
    }
    // fds opened here are ours to close; the map's values are not in `named`
    return { fds, close: () => { for (const fd of fds.values()) closeSync(fd); }, discard };
  }
  throw new QmpError('GenericError', `unsupported migration URI ${JSON.stringify(uri)}: fd:NAME or file:DIR`);
}

export function register(qmp: Pick<QmpServer, 'register'>, d: SnapshotDeps): void {
  let last: MigrationStatus | null = null;
  let incomingPending = d.incoming;
  const fileNames = (): string[] => {
    const l = snapshotLayout(d.memory);
    return [l.state, ...l.memory.map((r) => r.file)];
  };

  qmp.register('query-snapshot-layout', () => snapshotLayout(d.memory));
  qmp.register('query-migrate', () => last ?? {});

  const refuseUnlessPaused = (): void => {
    if (incomingPending) throw new QmpError('GenericError', 'the VM is waiting for an incoming snapshot (-incoming defer)');
    if (d.machine.state !== 'paused') throw new QmpError('GenericError', `the VM is ${d.machine.state}: stop it before a snapshot (QMP stop)`);
  };

  qmp.register('migrate', async (args) => {
    refuseUnlessPaused();
    // the vCPUs are parked, but disk requests they queued may still be running: their
    // completions belong in the saved rings (from here to the save, nothing else runs)
    await d.machine.devices.quiesce();
    refuseUnlessPaused();
    const files = filesFor(args.uri, fileNames(), d.fds, true);
    try {
      const r = saveSnapshot(d.machine, d.memory, files.fds);
      last = { status: 'completed', 'total-time': Math.round(r.ms) };
      log.info(`snapshot written: ${r.files.join(', ')}; ${r.memoryWritten} bytes of memory (the rest holes) in ${r.ms.toFixed(0)} ms`);
      return {};
    } catch (e) {
      last = { status: 'failed', 'error-desc': (e as Error).message };
      log.warn(`snapshot failed: ${(e as Error).message}`);
      files.discard();
      throw new QmpError('GenericError', `snapshot failed: ${(e as Error).message}`);
    } finally {
      files.close();
    }
  });

  qmp.register('migrate-incoming', async (args) => {
    if (!incomingPending) throw new QmpError('GenericError', d.incoming ? 'a snapshot was loaded already' : 'the VMM was not started with -incoming defer');
    // the state file's fd decides which memory files the manifest names; they are the layout's
    const files = filesFor(args.uri, [STATE_FILE, ...snapshotLayout(d.memory).memory.map((r) => r.file)], d.fds, false);
    incomingPending = false;
    try {
      const r = await loadSnapshot(d.machine, d.memory, files.fds, d.vcpus, d.beforeRun);
      last = { status: 'completed', 'total-time': Math.round(r.ms) };
      d.onLoaded(r);
      return {};
    } catch (e) {
      const reason = (e as Error).message;
      last = { status: 'failed', 'error-desc': reason };
      d.onLoadFailed(reason);
      throw new QmpError('GenericError', `cannot load the snapshot: ${reason}`);
    } finally {
      files.close();
    }
  });
}
