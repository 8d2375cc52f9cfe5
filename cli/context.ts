// What every command gets: how to print (from the global --output) and a client for the
// configured server (made on first use, so `capsule completion` works without a login).
import type { Command } from 'commander';
import { ApiClient } from './client.js';
import { resolveConnection } from './config.js';
import { parseOutputFormat, Printer } from './output.js';

export interface Context {
  printer: Printer;
  client(): ApiClient;
}

export function contextOf(cmd: Command): Context {
  const opts = cmd.optsWithGlobals() as { output?: string };
  const printer = new Printer(parseOutputFormat(opts.output));
  let client: ApiClient | undefined;
  return {
    printer,
    client: () => (client ??= ApiClient.from(resolveConnection())),
  };
}

/**
 * Wraps a command's action so it receives its Context first. Commander calls actions with the
 * positional arguments, then the options, then the Command itself.
 */
export function withContext<A extends unknown[]>(fn: (ctx: Context, ...args: A) => Promise<void> | void) {
  return async (...args: unknown[]) => {
    const cmd = args[args.length - 1] as Command;
    await fn(contextOf(cmd), ...(args.slice(0, -1) as A));
  };
}
