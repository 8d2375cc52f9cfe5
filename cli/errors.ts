// What can go wrong in the CLI, and the exit code each kind gets (docs/cli.md, "Exit codes").
//   1: the server said no (an API error), or it could not be reached;
//   2: the command line is wrong (unknown command, bad option, nothing to connect to).

export const EXIT_OK = 0;
export const EXIT_API = 1;
export const EXIT_USAGE = 2;

/** An error answer from the server: `{"error":{"code","message","field"?}}` and its status. */
export class ApiError extends Error {
  constructor(readonly status: number, readonly code: string, message: string, readonly field?: string) {
    super(message);
  }
}

/** A mistake on the command line (or missing configuration): exit 2. */
export class UsageError extends Error {
  readonly code = 'usage';
}

/** Any other failure at run time (server unreachable, console closed abnormally): exit 1. */
export class CliError extends Error {
  constructor(readonly code: string, message: string) {
    super(message);
  }
}

/** Prints `error: <code>: <message>` on stderr and returns the exit code for `err`. */
export function reportError(err: unknown, stderr: NodeJS.WritableStream = process.stderr): number {
  if (err instanceof ApiError || err instanceof CliError) {
    stderr.write(`error: ${err.code}: ${err.message}\n`);
    return EXIT_API;
  }
  if (err instanceof UsageError) {
    stderr.write(`error: ${err.message}\n`);
    return EXIT_USAGE;
  }
  stderr.write(`error: internal: ${err instanceof Error ? err.stack ?? err.message : String(err)}\n`);
  return EXIT_API;
}
