// capsule vm console NAME: the terminal attached to the VM's serial console WebSocket.
//
// The terminal goes to raw mode so every key (Ctrl-C, arrows, tab) reaches the guest; the
// escape sequences in ../escape.ts leave. The terminal is restored on every way out (escape,
// the VM stopping, an error, SIGTERM/SIGHUP). A serial line has no window-size channel (the
// console protocol carries bytes only, server/console/bridge.ts), so the CLI leaves the local
// terminal's size as it is and the guest keeps its own idea of it (`stty rows R cols C` in
// the guest sets it).
import { Command } from 'commander';
import type WebSocket from 'ws';
import { withContext } from '../context.js';
import { CliError } from '../errors.js';
import { EscapeDetector } from '../escape.js';
import { resolveVm } from '../resolve.js';

/** How long a piped (non-terminal) stdin's session lingers after EOF for the guest's answer. */
const EOF_LINGER_MS = 1000;
const CLOSE_TOO_SLOW = 4008;

export function consoleCommand(): Command {
  return new Command('console')
    .description('Attach the terminal to a VM\'s serial console (leave with Ctrl-] or ~. at the start of a line)')
    .argument('<vm>', 'name or id')
    .option('-q, --quiet', 'no connect and disconnect messages')
    .action(withContext(async (ctx, ref: string, o: { quiet?: boolean }) => {
      const client = ctx.client();
      const vm = await resolveVm(client, ref);
      const ws = await client.openSocket(`/v1/vms/${vm.id}/console`, (data) => process.stdout.write(data));
      const say = (s: string) => { if (!o.quiet) process.stderr.write(s); };
      say(`[capsule: connected to ${vm.name}'s console; leave with Ctrl-] or ~. at the start of a line]\r\n`);
      const failure = await runConsole(ws, process.stdin, say);
      if (failure instanceof Error) throw failure;
    }));
}

/** Pipes the terminal's keys to the socket (its output is already wired) until an escape, EOF or the socket's close. */
export function runConsole(ws: WebSocket, stdin: NodeJS.ReadStream, say: (s: string) => void): Promise<void | Error> {
  const rawMode = stdin.isTTY === true;
  const restore = () => {
    if (rawMode && stdin.isTTY) stdin.setRawMode(false);
  };
  // The last resort: whatever ends the process, the terminal is not left raw.
  process.once('exit', restore);
  if (rawMode) stdin.setRawMode(true);
  const escape = new EscapeDetector();

  return new Promise((resolve) => {
    let done = false;
    const finish = (result: void | Error, message?: string) => {
      if (done) return;
      done = true;
      stdin.off('data', onInput);
      stdin.off('end', onEnd);
      process.off('SIGTERM', onSignal);
      process.off('SIGHUP', onSignal);
      stdin.pause();
      restore();
      if (message) say(`\r\n[capsule: ${message}]\r\n`);
      if (ws.readyState === ws.OPEN || ws.readyState === ws.CONNECTING) ws.close(1000);
      resolve(result);
    };
    const onInput = (chunk: Buffer) => {
      const { forward, exit } = escape.feed(chunk);
      if (forward.length > 0 && ws.readyState === ws.OPEN) ws.send(forward, { binary: true });
      if (exit) finish(undefined, 'disconnected');
    };
    const onEnd = () => setTimeout(() => finish(undefined), EOF_LINGER_MS);
    const onSignal = () => finish(new CliError('interrupted', 'console closed by a signal'), 'interrupted');

    ws.on('close', (code, reason) => {
      const why = reason.toString() || `code ${code}`;
      if (code === 1000) finish(undefined, `console closed: ${why}`);
      else if (code === CLOSE_TOO_SLOW) finish(new CliError('too_slow', why), `console closed: ${why}`);
      else finish(new CliError('console_closed', `the console connection closed: ${why}`), `console closed: ${why}`);
    });
    ws.on('error', (e) => finish(new CliError('console_error', e.message)));
    stdin.on('data', onInput);
    stdin.on('end', onEnd);
    process.on('SIGTERM', onSignal);
    process.on('SIGHUP', onSignal);
    stdin.resume();
  });
}
