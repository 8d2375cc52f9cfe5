// `capsule vm console` through a real pseudo-terminal (util-linux `script` allocates it and
// relays our bytes to it): keys reach the guest's shell, its output comes back, both escape
// sequences leave with exit code 0, and the terminal's modes and size are as they were.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import { readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { TestServer, waitFor } from '../server/test/harness.js';
import { CliUser, CAPSULE_BIN } from './test/run-cli.js';

const BOOT_TIMEOUT_MS = 300_000;
let s: TestServer;
let user: CliUser;
let vmId = '';
before(async () => {
  s = await TestServer.start({ env: { CAPSULE_BUILD_IMAGE: '0' } });
  user = new CliUser();
  assert.equal((await user.login(s)).code, 0);
  vmId = (await user.json(['vm', 'create', 'cli-console', '--start'])).id;
});
after(async () => {
  await s.stop();
  user.cleanup();
});

/** A shell command run on a fresh pseudo-terminal; `output` is what the terminal showed. */
class Pty {
  output = '';
  readonly child: ChildProcess;
  readonly exited: Promise<number | null>;

  constructor(command: string, as: CliUser = user) {
    this.child = spawn('script', ['--quiet', '--return', '--flush', '--command', command, '/dev/null'], { env: as.env({ TERM: 'xterm' }), stdio: ['pipe', 'pipe', 'pipe'] });
    this.child.stdout!.on('data', (d: Buffer) => { this.output += d.toString('utf8'); });
    this.child.stderr!.on('data', (d: Buffer) => { this.output += d.toString('utf8'); });
    this.exited = new Promise((r) => this.child.once('close', r));
  }

  /** Keys typed on the terminal. */
  type(keys: string): void {
    this.child.stdin!.write(keys);
  }

  waitFor(needle: string | RegExp | ((output: string) => boolean), timeoutMs = 90_000): Promise<true> {
    const found = () => (typeof needle === 'string' ? this.output.includes(needle) : typeof needle === 'function' ? needle(this.output) : needle.test(this.output));
    return waitFor(`terminal output ${needle}`, () => found() || undefined, timeoutMs).catch((e: Error) => {
      throw new Error(`${e.message}; the terminal showed: ${JSON.stringify(this.output.slice(-2000))}`);
    });
  }

  async close(): Promise<number | null> {
    this.child.stdin!.end();
    return this.exited;
  }
}

/** The console session inside a terminal of a known size, its settings saved before and after. */
function consoleSession(tag: string): { pty: Pty; files: { tty: string; before: string; after: string } } {
  const files = { tty: join(user.home, `${tag}.tty`), before: join(user.home, `${tag}.before`), after: join(user.home, `${tag}.after`) };
  const pty = new Pty([
    'stty rows 33 cols 111',
    `tty > ${files.tty}`,
    `stty -a > ${files.before}`,
    `"${process.execPath}" "${CAPSULE_BIN}" vm console cli-console; echo "EXIT=$?"`,
    `stty -a > ${files.after}`,
  ].join('; '));
  return { pty, files };
}

/** Runs `cmd` in the guest's shell and returns its output, fenced by markers that only the shell's expansion produces. */
async function inGuest(pty: Pty, cmd: string): Promise<string> {
  const tag = Math.random().toString(36).slice(2, 8);
  // The markers are built by the shell ("<<"tag) so the echo of the typed line does not match.
  pty.type(`echo "<<""${tag}>$(${cmd})<<""${tag}"\r`);
  const re = new RegExp(`<<${tag}>([^]*?)<<${tag}`);
  await pty.waitFor(re);
  return re.exec(pty.output)![1]!;
}

test('vm console: a raw terminal to the guest\'s shell; Ctrl-] leaves with 0; the terminal is restored and its size kept', async () => {
  const { pty, files } = consoleSession('ctrl');
  await pty.waitFor("[capsule: connected to cli-console's console; leave with Ctrl-] or ~. at the start of a line]");
  // The boot under TCG takes seconds, or minutes on a host that is busy with other guests.
  await pty.waitFor('CAPSULE_READY', BOOT_TIMEOUT_MS);
  await pty.waitFor(/capsule# /);

  // While attached the terminal is raw (no echo, no line editing, no signals from Ctrl-C) and keeps its size.
  const during = execFileSync('stty', ['-a', '-F', readFileSync(files.tty, 'utf8').trim()]).toString();
  assert.match(during, /rows 33; columns 111;/);
  assert.match(during, /-icanon/);
  assert.match(during, /-echo /);
  assert.match(during, /-isig/);

  pty.type('echo hello-$((6*7))\r');
  await pty.waitFor('hello-42');
  assert.equal(await inGuest(pty, 'cat /proc/cmdline | grep -o console=ttyS0'), 'console=ttyS0');
  // Ctrl-C is a byte for the guest, not a signal for the CLI (raw mode): the session stays up.
  const before = pty.output.length;
  pty.type('\x03');
  // The guest's terminal echoes it (^C); busybox's shell then gives a new prompt.
  await pty.waitFor((o) => /\^C[^]*capsule# /.test(o.slice(before)));
  assert.equal(await inGuest(pty, 'echo still-here'), 'still-here');

  pty.type('\x1d');
  await pty.waitFor('EXIT=0');
  assert.match(pty.output, /\[capsule: disconnected\]/);
  assert.equal(await pty.close(), 0);
  const beforeModes = readFileSync(files.before, 'utf8');
  assert.match(beforeModes, /rows 33; columns 111;/);
  assert.equal(readFileSync(files.after, 'utf8'), beforeModes, 'stty -a after the session is what it was before');
});

test('vm console: ~. at the start of a line leaves too (a ~ elsewhere is typed); the VM stopping ends the session with 0', async () => {
  const first = consoleSession('tilde');
  await first.pty.waitFor(/capsule# /);
  // A ~ that does not start a line is an ordinary key.
  assert.equal(await inGuest(first.pty, 'echo a~.b'), 'a~.b');
  first.pty.type('~.');
  await first.pty.waitFor('EXIT=0');
  assert.equal(await first.pty.close(), 0);
  assert.equal(readFileSync(first.files.after, 'utf8'), readFileSync(first.files.before, 'utf8'));

  const second = consoleSession('stopped');
  await second.pty.waitFor(/capsule# /);
  assert.equal((await user.run(['vm', 'stop', '--force', vmId])).code, 0);
  await second.pty.waitFor('EXIT=0');
  assert.match(second.pty.output, /\[capsule: console closed: VM stopped\]/);
  assert.equal(await second.pty.close(), 0);
  assert.equal(readFileSync(second.files.after, 'utf8'), readFileSync(second.files.before, 'utf8'));

  // The console of a VM that does not run: the API's refusal, exit 1.
  const refused = await user.run(['vm', 'console', 'cli-console']);
  assert.equal(refused.code, 1);
  assert.match(refused.stderr, /^error: not_running: /m);
});

test('login on a terminal asks for the URL (with a default) and the token without echoing it', async () => {
  const u = new CliUser();
  try {
    const pty = new Pty(`"${process.execPath}" "${CAPSULE_BIN}" login; echo "EXIT=$?"`, u);
    await pty.waitFor('capsule server URL [http://127.0.0.1:8080]: ');
    pty.type(`${s.url}\r`);
    await pty.waitFor('API token: ');
    pty.type(`${s.token}\r`);
    await pty.waitFor('EXIT=0');
    assert.equal(await pty.close(), 0);
    assert.ok(!pty.output.includes(s.token), 'the token was not echoed');
    assert.match(pty.output, /logged in to http:\/\/127\.0\.0\.1:\d+/);
    const file = join(u.configHome, 'capsule', 'config.json');
    assert.equal(statSync(file).mode & 0o777, 0o600);
    assert.deepEqual(JSON.parse(readFileSync(file, 'utf8')), { url: s.url, token: s.token });
  } finally {
    u.cleanup();
  }
});
