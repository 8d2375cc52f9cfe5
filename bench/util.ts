// Shared bench helpers: percentiles, JSON output, setup commands, ending a stuck child process.
import { spawnSync, type ChildProcess } from 'node:child_process';
import { kill, waitForExit } from '../server/supervisor/process.js';
export function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[i]!;
}

export const median = (xs: number[]) => percentile([...xs].sort((a, b) => a - b), 50);
export const round = (x: number, digits = 1) => Math.round(x * 10 ** digits) / 10 ** digits;

export function printJson(result: unknown): void {
  process.stdout.write(JSON.stringify(result, null, 2) + '\n');
}

export const isMain = (url: string) => process.argv[1] !== undefined && url.endsWith(process.argv[1].replace(/^.*\/dist\//, '/dist/'));

/** Ends a process that has not ended by itself (a VMM stuck or never up): SIGKILL, and its exit awaited. */
export async function killProcess(p: ChildProcess): Promise<void> {
  if (p.exitCode !== null || p.signalCode !== null) return;
  const gone = new Promise<void>((r) => p.once('exit', () => r()));
  p.kill('SIGKILL');
  await gone;
}

/** SIGKILLs a process that is not our child (a daemonized VMM) and waits until it is gone or a zombie. */
export async function killPid(pid: number): Promise<void> {
  kill(pid);
  if (!(await waitForExit(pid, 10_000))) throw new Error(`process ${pid} still there 10 s after SIGKILL`);
}

/** Runs a setup command (ip, modprobe, ...) to its end; its stdout, or an error with all it said. */
export function sh(cmd: string, args: string[]): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8', timeout: 30_000 });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')}: ${r.stdout}${r.stderr}`);
  return r.stdout;
}
