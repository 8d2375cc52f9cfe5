// Starting a VMM process (moved out of the supervisor): the daemonizing launcher of the
// unjailed path and the detached foreground command of the jail. Both give the child exactly
// stdin (/dev/null), stdout and stderr (the VM's log) and an environment of PATH plus the
// backend's variables: no fd or variable of the server's. A failed start becomes a
// LaunchError: a short cause for the API client (no host paths, uids or command lines) and the
// detail for the server log and the VM's vmm.log.
import { spawn } from 'node:child_process';
import { closeSync, openSync, writeSync } from 'node:fs';
import { constants } from 'node:os';
import { JAIL_PATH } from '../jail/command.js';
import { which } from '../jail/host.js';
import { markInheritedFdsCloexec } from '../util/fds.js';
import { lastLines } from './vm-log.js';

export const LAUNCH_TIMEOUT_MS = 60_000;

/** The jail script's status when it cannot set the jail up (command.ts, `die`). */
const JAIL_SETUP_STATUS = 121;

/** A failed start. `reason`: what the API client is told; `message`: the detail, for the operator. */
export class LaunchError extends Error {
  constructor(readonly reason: string, detail: string) {
    super(detail);
  }
}

/** Any error of a launch as a LaunchError (an unexpected one gets a generic cause). */
export function asLaunchError(e: unknown, reason = 'the VMM could not be started'): LaunchError {
  return e instanceof LaunchError ? e : new LaunchError(reason, (e as Error).message ?? String(e));
}

/** A command line as one log line (arguments with spaces or quotes JSON-quoted). */
export function commandLine(argv: string[]): string {
  return argv.map((a) => (/[\s"']/.test(a) ? JSON.stringify(a) : a)).join(' ');
}

/** The VMM's whole environment: PATH and the backend's variables. */
export function vmmEnv(env: NodeJS.ProcessEnv | undefined): Record<string, string> {
  const out: Record<string, string> = { PATH: JAIL_PATH };
  for (const [k, v] of Object.entries(env ?? {})) if (v !== undefined) out[k] = v;
  return out;
}

function exitText(code: number | null, signal: NodeJS.Signals | null): string {
  return signal ? `signal ${signal}` : `status ${code}`;
}

/**
 * Spawns with stdio on the log and nothing else inherited. The command is resolved in the
 * server's PATH first (the child's PATH is the fixed one).
 */
function spawnVmm(command: string, args: string[], env: Record<string, string>, logFd: number) {
  // Fds the server inherited without close-on-exec would otherwise reach the child.
  markInheritedFdsCloexec();
  return spawn(which(command) ?? command, args, { stdio: ['ignore', logFd, logFd], detached: true, env, cwd: '/' });
}

/** Runs the daemonizing launch command; resolves when it exits 0 (the VMM is ready). */
export function runLauncher(command: string, args: string[], env: NodeJS.ProcessEnv | undefined, logPath: string): Promise<void> {
  const logFd = openSync(logPath, 'a', 0o600);
  writeSync(logFd, `${new Date().toISOString()} capsule: launching ${commandLine([command, ...args])}\n`);
  return new Promise<void>((resolve, reject) => {
    const child = spawnVmm(command, args, vmmEnv(env), logFd);
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new LaunchError(`the VMM did not start within ${LAUNCH_TIMEOUT_MS / 1000} s`, `${command} did not return within ${LAUNCH_TIMEOUT_MS} ms: ${lastLines(logPath)}`));
    }, LAUNCH_TIMEOUT_MS);
    child.once('error', (e) => { clearTimeout(timer); reject(new LaunchError('the VMM could not be run', `${command}: ${e.message}`)); });
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      if (code === 0) resolve();
      else reject(new LaunchError(`the VMM exited during start (${exitText(code, signal)})`, `${command} exited with ${signal ?? code}: ${lastLines(logPath)}`));
    });
  }).finally(() => closeSync(logFd));
}

/** A detached foreground command: its pid, and its exit status once it has one. */
export interface Detached {
  pid: number;
  exit(): { code: number | null; signal: NodeJS.Signals | null } | undefined;
}

/** Starts a foreground VMM command in its own session, stdout/stderr on the log. */
export function spawnDetached(command: string, args: string[], env: Record<string, string>, logPath: string, record: string): Promise<Detached> {
  const logFd = openSync(logPath, 'a', 0o600);
  try {
    writeSync(logFd, `${new Date().toISOString()} capsule: launching ${record}\n`);
    const child = spawnVmm(command, args, env, logFd);
    child.unref();
    if (child.pid !== undefined) {
      let status: { code: number | null; signal: NodeJS.Signals | null } | undefined;
      child.on('error', () => { /* reported through its exit */ });
      child.once('exit', (code, signal) => { status = { code, signal }; });
      return Promise.resolve({ pid: child.pid, exit: () => status });
    }
    return new Promise((_, reject) => child.once('error', (e) => reject(new LaunchError('the VMM could not be run', `${command}: ${e.message}`))));
  } finally {
    closeSync(logFd);
  }
}

/**
 * Why a jailed VMM's QMP did not answer: it exited (the jail's setup failed, the kernel's OOM
 * killer, a signal, a status), or it still runs and QMP timed out.
 */
export async function jailedStartFailure(proc: Detached, e: Error, oomKilled: () => boolean, logPath: string): Promise<LaunchError> {
  // The exit event follows the process's death by a moment.
  for (let i = 0; i < 50 && !proc.exit(); i++) await new Promise((r) => setTimeout(r, 20));
  const st = proc.exit();
  const detail = `${e.message}; ${st ? `the jail exited with ${exitText(st.code, st.signal)}` : 'the VMM still runs'}: ${lastLines(logPath)}`;
  if (oomKilled()) return new LaunchError('out of memory (the VM\'s memory limit was reached during start)', detail);
  if (!st) return new LaunchError(`QMP did not answer within ${LAUNCH_TIMEOUT_MS / 1000} s`, detail);
  if (st.code === JAIL_SETUP_STATUS) return new LaunchError('the jail could not be set up', detail);
  // sh reports a VMM killed by signal N as 128 + N.
  if (st.code !== null && st.code > 128) {
    const name = Object.entries(constants.signals).find(([, n]) => n === st.code! - 128)?.[0];
    return new LaunchError(`the VMM was killed during start (signal ${name ?? st.code - 128})`, detail);
  }
  return new LaunchError(`the VMM exited during start (${exitText(st.code, st.signal)})`, detail);
}
