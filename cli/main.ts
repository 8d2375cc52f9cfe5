// The `capsule` command (bin/capsule): parse, run, and exit with 0 (done), 1 (the server said
// no, or could not be reached) or 2 (a usage error). docs/cli.md describes every command.
import { CommanderError } from 'commander';
import { EXIT_OK, EXIT_USAGE, reportError } from './errors.js';
import { buildProgram } from './program.js';

async function main(argv: string[]): Promise<number> {
  const program = buildProgram();
  try {
    await program.parseAsync(argv);
    return EXIT_OK;
  } catch (e) {
    // commander has already printed its own message ("error: unknown option '--x'").
    if (e instanceof CommanderError) return e.exitCode === 0 ? EXIT_OK : EXIT_USAGE;
    return reportError(e);
  }
}

// A closed stdout (`capsule vm ls | head -1`) is not an error worth a stack trace.
process.stdout.on('error', (e: NodeJS.ErrnoException) => {
  if (e.code === 'EPIPE') process.exit(EXIT_OK);
  throw e;
});

const code = await main(process.argv);
// Let pending writes flush before leaving; lingering handles (sockets, timers) must not keep us.
process.exitCode = code;
setImmediate(() => process.exit(code));
