// Runs the real `capsule` command (bin/capsule → dist/cli/main.js) as a subprocess, the way a
// user's shell would, with its own config directory so tests never read or write ~/.config.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { REPO_ROOT, waitFor, type TestServer } from '../../server/test/harness.js';

export const CAPSULE_BIN = join(REPO_ROOT, 'bin', 'capsule');

export interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** A user of the CLI: a home and config directory of their own, and the environment they run it in. */
export class CliUser {
  readonly home = mkdtempSync(join(tmpdir(), 'capsule-cli-home-'));
  readonly configHome = join(this.home, '.config');

  constructor(readonly extraEnv: Record<string, string> = {}) {}

  env(more: Record<string, string | undefined> = {}): NodeJS.ProcessEnv {
    const env: NodeJS.ProcessEnv = { ...process.env, HOME: this.home, XDG_CONFIG_HOME: this.configHome, ...this.extraEnv, ...more };
    // The test runner's own settings must not leak into the CLI under test.
    for (const k of ['CAPSULE_URL', 'CAPSULE_TOKEN', 'COLUMNS']) if (!(k in this.extraEnv) && !(k in more)) delete env[k];
    for (const [k, v] of Object.entries(more)) if (v === undefined) delete env[k];
    return env;
  }

  /** Runs `capsule ARGS…` to completion. */
  run(args: string[], opts: { env?: Record<string, string | undefined>; input?: string; timeoutMs?: number } = {}): Promise<CliResult> {
    const child = this.spawn(args, opts.env);
    const result = collect(child);
    child.stdin!.end(opts.input ?? '');
    const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 120_000);
    return result.finally(() => clearTimeout(timer));
  }

  /** Runs `capsule ARGS…` and parses its stdout as JSON (asserting exit 0). */
  async json<T = any>(args: string[], env?: Record<string, string | undefined>): Promise<T> {
    const r = await this.run(['--output', 'json', ...args], { env });
    if (r.code !== 0) throw new Error(`capsule ${args.join(' ')} exited ${r.code}: ${r.stderr}`);
    return JSON.parse(r.stdout) as T;
  }

  /** Starts a long-running `capsule ARGS…` (events); read `output()` while it runs. */
  start(args: string[], env?: Record<string, string | undefined>): RunningCli {
    return new RunningCli(this.spawn(args, env));
  }

  /** Logs in to `server` with its admin token (through stdin, as a script would). */
  async login(server: TestServer): Promise<CliResult> {
    return this.run(['login', '--url', server.url], { input: server.token + '\n' });
  }

  cleanup(): void {
    rmSync(this.home, { recursive: true, force: true });
  }

  private spawn(args: string[], env?: Record<string, string | undefined>): ChildProcess {
    return spawn(process.execPath, [CAPSULE_BIN, ...args], { env: this.env(env), stdio: ['pipe', 'pipe', 'pipe'] });
  }
}

export class RunningCli {
  stdout = '';
  stderr = '';
  readonly exited: Promise<CliResult>;

  constructor(readonly child: ChildProcess) {
    this.exited = collect(child);
    child.stdout!.on('data', (d: Buffer) => { this.stdout += d.toString(); });
    child.stderr!.on('data', (d: Buffer) => { this.stderr += d.toString(); });
  }

  waitForOutput(pred: (stdout: string) => boolean, what: string, timeoutMs = 60_000): Promise<true> {
    return waitFor(what, () => pred(this.stdout) || undefined, timeoutMs).catch((e: Error) => {
      throw new Error(`${e.message}; stdout: ${this.stdout}; stderr: ${this.stderr}`);
    });
  }

  /** Interrupts it as Ctrl-C would and waits for its exit. */
  async interrupt(): Promise<CliResult> {
    this.child.kill('SIGINT');
    return this.exited;
  }
}

function collect(child: ChildProcess): Promise<CliResult> {
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (d: Buffer) => { stdout += d.toString(); });
  child.stderr!.on('data', (d: Buffer) => { stderr += d.toString(); });
  return new Promise((resolve, reject) => {
    child.once('error', reject);
    child.once('close', (code) => resolve({ code, stdout, stderr }));
  });
}
