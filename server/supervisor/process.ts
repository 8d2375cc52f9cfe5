// Small process helpers for daemonized VMMs (not our children once they daemonize).
import { readdirSync, readFileSync, rmSync } from 'node:fs';

/** True if pid exists and is not a zombie. */
export function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
    return state !== 'Z' && state !== 'X';
  } catch {
    return false;
  }
}

/** True if pid is alive and its command line mentions `marker` (guards against pid reuse). */
export function isOurProcess(pid: number, marker: string): boolean {
  if (!isAlive(pid)) return false;
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(marker);
  } catch {
    return false;
  }
}

export function readPidfile(path: string): number | undefined {
  try {
    const pid = Number.parseInt(readFileSync(path, 'utf8').trim(), 10);
    return Number.isInteger(pid) && pid > 1 ? pid : undefined;
  } catch {
    return undefined;
  }
}

export async function waitForExit(pid: number, timeoutMs: number): Promise<boolean> {
  const end = Date.now() + timeoutMs;
  while (isAlive(pid)) {
    if (Date.now() > end) return false;
    await new Promise((r) => setTimeout(r, 20));
  }
  return true;
}

export function kill(pid: number, signal: NodeJS.Signals = 'SIGKILL'): void {
  try {
    process.kill(pid, signal);
  } catch {
    /* already gone */
  }
}

export function removeFiles(...paths: string[]): void {
  for (const p of paths) rmSync(p, { force: true });
}

/** Live processes (not this one) whose command line mentions `marker` (a VM's id). */
export function processesNaming(marker: string): number[] {
  const found: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const pid = Number(entry);
    if (pid === process.pid) continue;
    if (isOurProcess(pid, marker)) found.push(pid);
  }
  return found;
}

/** Kills every process naming `marker` (see processesNaming), each waited for up to 5 s; `onKill` first says which. */
export async function killProcessesNaming(marker: string, onKill: (pid: number) => void): Promise<void> {
  for (const pid of processesNaming(marker)) {
    onKill(pid);
    kill(pid);
    await waitForExit(pid, 5000);
  }
}
