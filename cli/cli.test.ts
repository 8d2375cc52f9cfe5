// The capsule CLI end to end: the real command as a subprocess against a real server
// (server/test/harness.ts), VMs booting under QEMU. One server for the file.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdirSync, readFileSync, statSync, writeFileSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import { TestServer, freePort } from '../server/test/harness.js';
import { CliUser, CAPSULE_BIN } from './test/run-cli.js';

let s: TestServer;
let user: CliUser;
before(async () => {
  s = await TestServer.start({ env: { CAPSULE_BUILD_IMAGE: '0' } });
  user = new CliUser();
  const login = await user.login(s);
  assert.equal(login.code, 0, login.stderr);
});
after(async () => {
  await s.stop();
  user.cleanup();
});

test('login checks the token and stores URL and token in a 0600 file in a 0700 directory; commands use it; logout forgets', async () => {
  const u = new CliUser();
  try {
    const bad = await u.run(['login', '--url', s.url, '--token', 'cap_wrong']);
    assert.equal(bad.code, 1);
    assert.match(bad.stderr, /^error: unauthorized: .*refused the token.*nothing saved/m);
    assert.equal(existsSync(join(u.configHome, 'capsule', 'config.json')), false, 'a refused token is not saved');

    // The token on stdin (not a terminal) and the URL without a scheme, as a script would.
    const ok = await u.run(['login', '--url', `127.0.0.1:${s.port}`], { input: `${s.token}\n` });
    assert.equal(ok.code, 0, ok.stderr);
    assert.match(ok.stdout, new RegExp(`logged in to ${s.url.replace(/\./g, '\\.')}`));
    const file = join(u.configHome, 'capsule', 'config.json');
    assert.equal(statSync(file).mode & 0o777, 0o600);
    assert.equal(statSync(join(u.configHome, 'capsule')).mode & 0o777, 0o700);
    assert.deepEqual(JSON.parse(readFileSync(file, 'utf8')), { url: s.url, token: s.token });

    const images = await u.json<{ items: Array<{ name: string }> }>(['image', 'ls']);
    assert.ok(images.items.some((i) => i.name === 'default'));
    const who = await u.run(['whoami']);
    assert.equal(who.code, 0, who.stderr);
    assert.match(who.stdout, new RegExp(`url:\\s+${s.url.replace(/\./g, '\\.')}`));

    const out = await u.run(['logout']);
    assert.equal(out.code, 0);
    assert.equal(existsSync(file), false);
    const after = await u.run(['vm', 'ls']);
    assert.equal(after.code, 2, 'no server configured is a usage error');
    assert.match(after.stderr, /^error: not logged in: run `capsule login`/m);
  } finally {
    u.cleanup();
  }
});

test('CAPSULE_URL and CAPSULE_TOKEN override the stored login', async () => {
  const u = new CliUser();
  try {
    // Env only, no file at all.
    const envOnly = await u.run(['vm', 'ls'], { env: { CAPSULE_URL: s.url, CAPSULE_TOKEN: s.token } });
    assert.equal(envOnly.code, 0, envOnly.stderr);

    // A stored login with a stale token: the file's token fails, CAPSULE_TOKEN wins over it.
    mkdirSync(join(u.configHome, 'capsule'), { recursive: true, mode: 0o700 });
    writeFileSync(join(u.configHome, 'capsule', 'config.json'), JSON.stringify({ url: s.url, token: 'cap_stale' }), { mode: 0o600 });
    const stale = await u.run(['vm', 'ls']);
    assert.equal(stale.code, 1);
    assert.match(stale.stderr, /^error: unauthorized: invalid token/m);
    assert.equal((await u.run(['vm', 'ls'], { env: { CAPSULE_TOKEN: s.token } })).code, 0);

    // CAPSULE_URL wins over the file's URL: a port nobody listens on is unreachable (exit 1).
    const dead = `http://127.0.0.1:${await freePort()}`;
    const unreachable = await u.run(['vm', 'ls'], { env: { CAPSULE_URL: dead, CAPSULE_TOKEN: s.token } });
    assert.equal(unreachable.code, 1);
    assert.match(unreachable.stderr, new RegExp(`^error: unreachable: cannot reach ${dead.replace(/\./g, '\\.')}: ECONNREFUSED`, 'm'));
  } finally {
    u.cleanup();
  }
});

test('vm create, ls, show, start, pause, resume, stop, rm: by name, by id and by id prefix, json checked', async () => {
  const vm = await user.json(['vm', 'create', 'cli-life', '--memory', '192M', '--vcpus', '1', '--no-rng', '--balloon', '--cmdline', 'console=ttyS0 quiet panic=-1 reboot=k']);
  assert.deepEqual(vm.balloon, { enabled: true, deflateOnOom: false });
  assert.equal(vm.name, 'cli-life');
  assert.equal(vm.state, 'created');
  assert.equal(vm.memoryMiB, 192);
  assert.equal(vm.rng, false);
  assert.equal(vm.cmdline, 'console=ttyS0 quiet panic=-1 reboot=k');
  // The API agrees with what the CLI printed.
  assert.deepEqual((await s.api('GET', `/v1/vms/${vm.id}`)).body, vm);

  const list = await user.json<{ items: Array<{ id: string; name: string }> }>(['vm', 'ls']);
  assert.ok(list.items.some((v) => v.id === vm.id && v.name === 'cli-life'));
  const table = await user.run(['vm', 'ls']);
  assert.match(table.stdout, /^NAME\s+STATE\s+/);
  // The admin sees every tenant's VMs: a TENANT column (the name) before the id.
  assert.match(table.stdout, new RegExp(`^cli-life\\s+created\\s+qemu\\s+1\\s+192 MiB\\s+0\\s+default\\s+default\\s+${vm.id}`, 'm'));

  for (const ref of ['cli-life', vm.id, vm.id.slice(0, 8)]) {
    assert.equal((await user.json(['vm', 'show', ref])).id, vm.id, `show ${ref}`);
  }
  const shown = await user.run(['vm', 'show', 'cli-life']);
  assert.match(shown.stdout, /^state:\s+created$/m);
  assert.match(shown.stdout, /^memory:\s+192 MiB$/m);

  assert.equal((await user.json(['vm', 'start', 'cli-life'])).state, 'running');
  assert.equal((await user.json(['vm', 'balloon', 'cli-life', '128M'])).targetMiB, 128);
  assert.equal(typeof (await user.json(['vm', 'balloon', 'cli-life'])).actualMiB, 'number');
  assert.equal((await user.json(['vm', 'pause', vm.id])).state, 'paused');
  const resumed = await user.run(['vm', 'resume', 'cli-life']);
  assert.equal(resumed.code, 0, resumed.stderr);
  assert.equal(resumed.stdout, 'cli-life: running\n');
  assert.match(await user.run(['vm', 'log', 'cli-life']).then((r) => r.stdout), /\S/, 'the VMM log has something');
  assert.equal((await user.json(['vm', 'stop', '--force', vm.id])).state, 'stopped');

  const rm = await user.run(['vm', 'rm', vm.id.slice(0, 8)]);
  assert.equal(rm.code, 0, rm.stderr);
  assert.equal(rm.stdout, 'cli-life: deleted\n');
  assert.equal((await s.api('GET', `/v1/vms/${vm.id}`)).status, 404);
});

test('vm create --metadata --timeout --on-timeout; ls --metadata/--state filters; vm timeout resets, sets and removes the TTL', async () => {
  const vm = await user.json(['vm', 'create', 'cli-ttl', '--memory', '128M', '--metadata', 'team=search', '--metadata', 'note=a=b', '--timeout', '2h', '--on-timeout', 'delete']);
  assert.deepEqual([vm.metadata, vm.timeoutSec, vm.onTimeout], [{ team: 'search', note: 'a=b' }, 7200, 'delete']);
  await user.json(['vm', 'create', 'cli-other', '--memory', '128M', '--metadata', 'team=ads']);
  const names = async (args: string[]) => (await user.json<{ items: Array<{ name: string }> }>(['vm', 'ls', ...args])).items.map((v) => v.name).filter((n) => n.startsWith('cli-')).sort();
  assert.deepEqual(await names(['--metadata', 'team=search']), ['cli-ttl']);
  assert.deepEqual(await names(['--metadata', 'team=ads', '--state', 'created']), ['cli-other']);
  assert.deepEqual(await names(['--state', 'running']), []);
  assert.match((await user.run(['vm', 'show', 'cli-ttl'])).stdout, /^metadata team:\s+search$[\s\S]*^ttl:\s+7200 s, then delete$/m);
  assert.equal((await user.json(['vm', 'timeout', 'cli-ttl', '15m'])).timeoutSec, 900);
  assert.equal((await user.run(['vm', 'timeout', 'cli-ttl', 'none'])).stdout, 'cli-ttl: no TTL\n');
  const bad = await user.run(['vm', 'create', 'cli-bad', '--timeout', 'soon']);
  assert.equal(bad.code, 2, 'a usage error');
  assert.match(bad.stderr, /duration/);
  assert.equal((await user.run(['vm', 'rm', 'cli-ttl', 'cli-other'])).code, 0);
});

test('tables fit the width in COLUMNS, truncating the widest columns; without it (a pipe) values are whole', async () => {
  const long = 'a-vm-with-a-rather-long-name-that-is-wider-than-the-terminal-x';
  const vm = await user.json(['vm', 'create', long]);
  try {
    for (const columns of [120, 80, 60, 40]) {
      const r = await user.run(['vm', 'ls'], { env: { COLUMNS: String(columns) } });
      assert.equal(r.code, 0, r.stderr);
      const lines = r.stdout.trimEnd().split('\n');
      assert.ok(lines.length >= 2);
      for (const line of lines) assert.ok([...line].length <= columns, `${columns} columns: ${JSON.stringify(line)} is ${[...line].length} wide`);
      assert.match(lines[0]!, /^NAME\s+STATE/, 'name and state always shown');
    }
    const narrow = await user.run(['vm', 'ls'], { env: { COLUMNS: '60' } });
    assert.match(narrow.stdout, /…/, 'truncated values end in an ellipsis');
    const whole = await user.run(['vm', 'ls']);
    assert.ok(whole.stdout.includes(long) && whole.stdout.includes(vm.id));
  } finally {
    await user.run(['vm', 'rm', vm.id]);
  }
});

test('API errors exit 1 with the API\'s code and message on stderr; usage errors exit 2', async () => {
  const notFound = await user.run(['vm', 'show', 'no-such-vm']);
  assert.equal(notFound.code, 1);
  assert.equal(notFound.stdout, '');
  assert.equal(notFound.stderr, 'error: not_found: no VM named or with id no-such-vm\n');

  assert.equal((await user.run(['vm', 'create', 'cli-dup'])).code, 0);
  const dup = await user.run(['vm', 'create', 'cli-dup']);
  assert.equal(dup.code, 1);
  assert.equal(dup.stderr, 'error: conflict: name: a VM named cli-dup exists\n');
  const invalid = await user.run(['vm', 'create', 'bad name']);
  assert.equal(invalid.code, 1);
  assert.match(invalid.stderr, /^error: invalid_request: name: /);
  const state = await user.run(['vm', 'pause', 'cli-dup']);
  assert.equal(state.code, 1);
  assert.match(state.stderr, /^error: invalid_state: /);
  const image = await user.run(['vm', 'create', 'cli-noimage', '--image', 'nope']);
  assert.equal(image.code, 1);
  assert.match(image.stderr, /^error: invalid_request: image: no image named "nope"/);
  // The option reaches the API, which explains what is wrong with it.
  const pmem = await user.run(['vm', 'create', 'cli-pmem', '--rootfs-device', 'pmem']);
  assert.equal(pmem.code, 1);
  assert.equal(pmem.stderr, 'error: invalid_request: rootfsDevice: image default has no root filesystem to map as pmem\n');
  assert.equal((await user.run(['vm', 'rm', 'cli-dup'])).code, 0);

  const usage: Array<[string[], RegExp]> = [
    [['vm', 'create'], /missing required argument 'name'/],
    [['vm', 'frobnicate'], /unknown command 'frobnicate'/],
    [['--output', 'yaml', 'vm', 'ls'], /argument 'yaml' is invalid/],
    [['vm', 'create', 'x', '--vcpus', '0'], /must be a positive integer/],
    [['vm', 'create', 'x', '--memory', 'lots'], /must be a size/],
    [['vm', 'create', 'x', '--backend', 'vmware'], /must be one of qemu, native/],
    [['vm', 'create', 'x', '--drive', 'data,bogus'], /unknown drive flag/],
    [['volume', 'create', 'v'], /needs --size, --from-image, or both/],
    [['events', '--since', '-1'], /error:/],
    [['completion', 'fish'], /must be one of bash, zsh/],
    [['vm'], /Usage: capsule vm/],
  ];
  for (const [args, message] of usage) {
    const r = await user.run(args);
    assert.equal(r.code, 2, `capsule ${args.join(' ')}: ${r.stderr}`);
    assert.match(r.stderr, message, `capsule ${args.join(' ')}`);
  }
  // Nothing was created by the refused commands.
  const names = (await user.json<{ items: Array<{ name: string }> }>(['vm', 'ls'])).items.map((v) => v.name);
  assert.ok(!names.includes('x') && !names.includes('cli-noimage') && !names.includes('cli-pmem'));
  // Help and version are not errors.
  assert.equal((await user.run(['--help'])).code, 0);
  assert.match((await user.run(['--version'])).stdout, /^\d+\.\d+\.\d+\n$/);
});

test('volume create, ls, show, rm; drive attach and detach by volume name', async () => {
  const v = await user.json(['volume', 'create', 'cli-data', '--size', '64M']);
  assert.equal(v.sizeMiB, 64);
  const big = await user.run(['volume', 'create', 'cli-big', '-s', '2G']);
  assert.equal(big.code, 0, big.stderr);
  assert.match(big.stdout, /^cli-big: 2 GiB \(/);

  const listed = await user.json<{ items: Array<{ name: string; sizeMiB: number }> }>(['volume', 'ls']);
  assert.deepEqual(listed.items.filter((x) => x.name.startsWith('cli-')).map((x) => [x.name, x.sizeMiB]).sort(), [['cli-big', 2048], ['cli-data', 64]]);
  assert.match((await user.run(['volume', 'ls'])).stdout, /^cli-data\s+64 MiB\s/m);
  assert.equal((await user.json(['volume', 'show', v.id])).name, 'cli-data');

  // A drive on a VM that is not running changes its definition (no guest needed).
  const vm = await user.json(['vm', 'create', 'cli-disks', '--drive', 'cli-big,ro,cache=none']);
  assert.deepEqual(vm.drives.map((d: any) => [d.volumeName, d.readOnly, d.cache]), [['cli-big', true, 'none']]);
  const attached = await user.json(['vm', 'drive', 'attach', 'cli-disks', 'cli-data', '--iops', '500']);
  assert.equal(attached.volumeName, 'cli-data');
  assert.equal(attached.iops, 500);
  assert.match((await user.run(['volume', 'ls'])).stdout, /^cli-data\s+64 MiB\s+-\s+cli-disks:drive-1\s/m);
  const inUse = await user.run(['volume', 'rm', 'cli-data']);
  assert.equal(inUse.code, 1);
  assert.match(inUse.stderr, /^error: volume_in_use: /);
  const detached = await user.run(['vm', 'drive', 'detach', 'cli-disks', 'cli-data']);
  assert.equal(detached.code, 0, detached.stderr);
  assert.deepEqual((await user.json(['vm', 'drive', 'ls', 'cli-disks'])).items.map((d: any) => d.id), ['drive-0']);

  assert.equal((await user.run(['vm', 'rm', 'cli-disks'])).code, 0);
  const rm = await user.run(['volume', 'rm', 'cli-data', 'cli-big']);
  assert.equal(rm.code, 0, rm.stderr);
  assert.equal(rm.stdout, 'cli-data: deleted\ncli-big: deleted\n');
  assert.equal((await user.json<{ items: unknown[] }>(['volume', 'ls'])).items.length, 0);
});

test('events replays (--since) then follows the stream: a VM\'s start appears as lines, and as NDJSON with --output json; Ctrl-C ends it with 0', async () => {
  const vm = await user.json(['vm', 'create', 'cli-events']);
  // Both replay from seq 0 first: once the VM's VM_CREATED is printed, each is subscribed and
  // whatever the start publishes reaches it live.
  const all = user.start(['events', '--since', '0']);
  const json = user.start(['--output', 'json', 'events', '--vm', 'cli-events', '--since', '0']);
  try {
    await all.waitForOutput((o) => /\scli-events\s+VM_CREATED\s+image=default vcpus=1 memoryMiB=256$/m.test(o), 'the replayed VM_CREATED line');
    await json.waitForOutput((o) => o.includes('"VM_CREATED"'), 'the replayed VM_CREATED event');
    assert.equal((await user.run(['vm', 'start', 'cli-events'])).code, 0);
    await all.waitForOutput((o) => /cli-events\s+STATE_CHANGED\s+starting -> running/.test(o), 'a running line');
    await json.waitForOutput((o) => o.includes('"running"'), 'a running event');
    const events = json.stdout.trim().split('\n').map((l) => JSON.parse(l));
    const running = events.find((e) => e.event === 'STATE_CHANGED' && e.data.state === 'running');
    assert.equal(running.vm, vm.id);
    assert.ok(events.every((e, i) => i === 0 || e.seq > events[i - 1].seq), 'in seq order');
    assert.match(all.stdout, /^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\s+\d+\s+cli-events\s+STATE_CHANGED\s+created -> starting$/m);
  } finally {
    const [a, j] = await Promise.all([all.interrupt(), json.interrupt()]);
    assert.equal(a.code, 0, a.stderr);
    assert.equal(j.code, 0, j.stderr);
    await user.run(['vm', 'rm', '--force', 'cli-events']);
  }
});

test('completion: bash and zsh scripts; the bash one parses (bash -n) and completes commands and VM names', async () => {
  const bash = await user.run(['completion', 'bash']);
  assert.equal(bash.code, 0, bash.stderr);
  execFileSync('bash', ['-n'], { input: bash.stdout });
  const zsh = await user.run(['completion', 'zsh']);
  assert.equal(zsh.code, 0);
  assert.match(zsh.stdout, /^#compdef capsule/);
  assert.match(zsh.stdout, /bashcompinit/);

  await user.run(['vm', 'create', 'cli-complete-me']);
  const script = join(user.home, 'capsule.bash');
  writeFileSync(script, bash.stdout);
  try {
    // Source the script and ask it for completions as bash would, `capsule` being the CLI under test.
    const complete = (words: string[]) => execFileSync('bash', ['-c', `
      capsule() { "${process.execPath}" "${CAPSULE_BIN}" "$@"; }
      source "${script}"
      COMP_WORDS=(${words.map((w) => `"${w}"`).join(' ')}); COMP_CWORD=${words.length - 1}
      _capsule; printf '%s\\n' "\${COMPREPLY[@]}"`], { env: user.env() }).toString().trim().split('\n');
    assert.deepEqual(complete(['capsule', 'vm', 'st']).sort(), ['start', 'stop']);
    assert.ok(complete(['capsule', 'vm', 'start', 'cli-comp']).includes('cli-complete-me'));
    assert.deepEqual(complete(['capsule', '--output', '']).sort(), ['json', 'table']);
    assert.ok(complete(['capsule', '']).includes('volume'));
  } finally {
    await user.run(['vm', 'rm', 'cli-complete-me']);
  }
});

test('template create follows the build step by step; pool ls; vm create --template comes from the pool; template pool, rm', { timeout: 300_000 }, async () => {
  // The default image has no agent: its build is ready at the image's console marker.
  const built = await user.run(['template', 'create', 'cli-tpl', '--memory', '256M', '--pool', '1']);
  assert.equal(built.code, 0, built.stderr);
  assert.match(built.stderr, /^cli-tpl: booting… \(\d+\.\d s\)$/m);
  assert.match(built.stderr, /^cli-tpl: snapshotting… /m);
  assert.match(built.stdout, /^cli-tpl: ready, pool 1 \(/);
  assert.match((await user.run(['template', 'ls'])).stdout, /^cli-tpl\s+ready\s+1\s+default\s/m);
  // The pool fills in the background.
  for (let i = 0; ; i++) {
    const pools = await user.json<{ items: Array<{ template: string; ready: number }> }>(['pool', 'ls']);
    if (pools.items.find((p) => p.template === 'cli-tpl')?.ready === 1) break;
    assert.ok(i < 240, 'the pool filled within 2 minutes');
    await new Promise((r) => setTimeout(r, 500));
  }
  assert.match((await user.run(['pool', 'ls'])).stdout, /^cli-tpl\s+1\s+1\s+0\s+0/m);
  const vm = await user.run(['vm', 'create', 'cli-from-tpl', '--template', 'cli-tpl']);
  assert.equal(vm.code, 0, vm.stderr);
  assert.match(vm.stdout, /^cli-from-tpl: running, from the pool \(/);
  const clash = await user.run(['vm', 'create', 'x', '--template', 'cli-tpl', '--memory', '1G']);
  assert.equal(clash.code, 2);
  assert.match(clash.stderr, /--template gives the VM its template's memory/);
  assert.equal((await user.run(['template', 'pool', 'cli-tpl', '0'])).stdout, 'cli-tpl: pool 0\n');
  const failed = await user.run(['template', 'create', 'cli-bad', '--ready-cmd', 'false', '--ready-timeout', '10']);
  assert.equal(failed.code, 1);
  assert.match(failed.stderr, /error: template_failed: template cli-bad failed to build: /);
  const rm = await user.run(['template', 'rm', 'cli-tpl', 'cli-bad']);
  assert.equal(rm.code, 0, rm.stderr);
  assert.equal((await user.json<{ items: unknown[] }>(['template', 'ls'])).items.length, 0);
  assert.equal((await user.run(['vm', 'rm', '--force', 'cli-from-tpl'])).code, 0);
});
