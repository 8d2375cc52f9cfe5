// The guest agent as a host process (the bundle the sandbox image installs, on a free port,
// real processes and real files in a temp directory) driven by the server's AgentClient; and
// the client against hostile fake agents (oversized frames, silence): it never hangs.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { chmodSync, copyFileSync, createWriteStream, existsSync, mkdtempSync, openSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { REPO_ROOT } from '../paths.js';
import { AgentClient, type AgentTransport } from './client.js';
import { MAGIC } from '../../agent/protocol.js';
import { waitFor } from '../test/harness.js';

const BUNDLE = join(REPO_ROOT, 'dist', 'agent', 'capsule-agent.cjs');
const TOKEN = randomBytes(16).toString('hex');
let agent: ChildProcess;
let port = 0;
let dir: string;
let client: AgentClient;

const tcp = (p: () => number): AgentTransport => ({
  connect: () => new Promise((res, rej) => { const s = connect(p(), '127.0.0.1', () => res(s)); s.once('error', rej); }),
});

/** The bundled agent on a free port (extra arguments appended): its process, port and a client. */
async function startAgent(extra: string[] = []): Promise<{ proc: ChildProcess; port: number; client: AgentClient }> {
  const proc = spawn(process.execPath, [BUNDLE, '--port', '0', '--host', '127.0.0.1', '--token', TOKEN, '--allow-local', ...extra], { stdio: ['ignore', 'pipe', 'inherit'] });
  const p = await new Promise<number>((res, rej) => {
    let out = '';
    proc.stdout!.on('data', (d: Buffer) => { out += d.toString(); const m = /listening on [^:]+:(\d+)/.exec(out); if (m) res(Number(m[1])); });
    proc.once('exit', (c) => rej(new Error(`agent exited ${c}`)));
  });
  return { proc, port: p, client: new AgentClient({ transport: tcp(() => p), token: () => TOKEN, callTimeoutMs: 5000 }) };
}

before(async () => {
  assert.ok(existsSync(BUNDLE), `${BUNDLE} (npm run build)`);
  assert.ok(existsSync(join(BUNDLE, '..', 'capsule-spawn')), 'capsule-spawn is built beside the bundle (gcc)');
  dir = mkdtempSync(join(tmpdir(), 'capsule-agent-test-'));
  ({ proc: agent, port, client } = await startAgent());
});

after(() => {
  agent?.kill('SIGKILL');
  rmSync(dir, { recursive: true, force: true });
});

async function run(req: Parameters<AgentClient['exec']>[1], c = client) {
  const out: Buffer[] = [];
  const err: Buffer[] = [];
  const s = await c.exec('vm', req, { onOutput: (ch, d) => { (ch === 1 ? out : err).push(d); } });
  const exit = await s.done;
  return { exit: exit!, stdout: Buffer.concat(out), stderr: Buffer.concat(err), pid: (await s.started).pid };
}

test('exec: exit codes, stdout and stderr apart, env, cwd, stdin, non-UTF-8 bytes, users', async () => {
  let r = await run({ cmd: ['sh', '-c', 'echo out; echo err >&2; exit 3'] });
  assert.equal(r.exit.exitCode, 3);
  assert.equal(r.stdout.toString(), 'out\n');
  assert.equal(r.stderr.toString(), 'err\n');
  r = await run({ shell: 'echo "$FOO" && pwd', env: { FOO: 'bar baz' }, cwd: dir });
  assert.equal(r.stdout.toString(), `bar baz\n${dir}\n`);
  r = await run({ cmd: ['cat'], stdin: Buffer.from('from stdin').toString('base64') });
  assert.equal(r.stdout.toString(), 'from stdin');
  r = await run({ shell: "printf '\\377\\000\\200abc'" });
  assert.deepEqual([...r.stdout], [0xff, 0x00, 0x80, 0x61, 0x62, 0x63]);
  r = await run({ cmd: ['id', '-u'], user: 'nobody' });
  assert.equal(r.stdout.toString().trim(), '65534');
  await assert.rejects(run({ cmd: ['/no/such/program'] }), (e: any) => e.status === 400 && e.code === 'spawn_failed' && /ENOENT \(exec\)/.test(e.message));
  await assert.rejects(run({ cmd: ['no-such-program-on-the-path'] }), (e: any) => e.status === 400 && /ENOENT/.test(e.message));
  await assert.rejects(run({ cmd: ['true'], cwd: '/no/such/dir' }), (e: any) => e.status === 404);
  await assert.rejects(run({ cmd: ['true'], user: 'no-such-user' }), (e: any) => e.status === 400);
  // stdio are real pipes (FIFOs), not socket pairs: /dev/stderr opens, /dev/stdin is a pipe
  // when the request gives stdin, /dev/null when it does not.
  r = await run({ cmd: ['sh', '-c', 'echo to-stderr > /dev/stderr; test -p /dev/stdin && test -p /dev/stdout && echo pipes'], stdin: '' });
  assert.equal(r.stderr.toString(), 'to-stderr\n');
  assert.equal(r.stdout.toString(), 'pipes\n');
  r = await run({ cmd: ['sh', '-c', 'readlink /proc/self/fd/0; cat'] });
  assert.equal(r.stdout.toString(), '/dev/null\n');
});

test('spawning: capsule-spawn by default; Node\'s spawn with --spawner none and after the helper is killed, same results', async () => {
  assert.equal((await client.health('vm')).spawner, 'capsule-spawn');
  // What a command sees is the same whichever starts it.
  const probe = async (c: AgentClient) => {
    const r = await run({ shell: 'echo "$FOO $(id -u)" && pwd && echo e >/dev/stderr; test -p /dev/stdin && read x && echo "in:$x"; exit 5', env: { FOO: 'bar' }, cwd: dir, user: 'nobody', stdin: Buffer.from('line\n').toString('base64') }, c);
    return { code: r.exit.exitCode, out: r.stdout.toString(), err: r.stderr.toString() };
  };
  const want = { code: 5, out: `bar 65534\n${dir}\nin:line\n`, err: 'e\n' };
  assert.deepEqual(await probe(client), want);
  // Processes that end at once: the helper's start and exit replies then come in one read (a
  // bug once left such a process running forever in the agent's eyes).
  const quick = Promise.all(Array.from({ length: 60 }, (_, i) => run(i % 2 ? { cmd: ['true'] } : { cmd: ['id', '-u'], user: 'nobody' })));
  const all = await Promise.race([quick, new Promise<never>((_r, rej) => setTimeout(() => rej(new Error('quick processes did not all end within 20 s')), 20_000).unref())]);
  assert.ok(all.every((r) => r.exit.exitCode === 0));
  const plain = await startAgent(['--spawner', 'none']);
  try {
    assert.equal((await plain.client.health('vm')).spawner, 'node');
    assert.deepEqual(await probe(plain.client), want);
  } finally {
    plain.proc.kill('SIGKILL');
  }
  // A second agent whose helper is killed while a process it started runs: that process's end is
  // still reported (without a code: the helper took it), and later ones start through Node.
  const lone = await startAgent();
  try {
    // The process outlives the helper whatever the machine's speed; it is ended by a signal
    // once the helper is gone (its exit status then is nobody's to report).
    const s = await lone.client.exec('vm', { cmd: ['sleep', '600'] }, { onOutput: () => undefined });
    await s.started;
    const helper = Number(execFileSync('pgrep', ['-P', String(lone.proc.pid), '-f', 'capsule-spawn']).toString().trim());
    assert.ok(helper > 0);
    process.kill(helper, 'SIGKILL');
    await waitFor('the agent to notice the helper is gone', async () => (await lone.client.health('vm')).spawner === 'node' || undefined, 20_000);
    s.signal('SIGTERM');
    const exit = await s.done;
    assert.equal(exit!.exitCode, null);
    assert.equal((await lone.client.health('vm')).spawner, 'node');
    assert.deepEqual(await probe(lone.client), want);
  } finally {
    lone.proc.kill('SIGKILL');
  }
});

test('exec: 20 MiB of output streamed without loss; streamed stdin; a timeout kills the process group', async () => {
  const big = join(dir, 'big');
  const r = await run({ cmd: ['sh', '-c', `head -c 20971520 /dev/urandom > ${big}; cat ${big} >&2; sha256sum < ${big}; rm ${big}`] });
  // stdout carries the sum of the bytes, stderr the bytes themselves.
  assert.equal(r.stderr.length, 20 * 1024 * 1024);
  assert.equal(r.stdout.toString().split(' ')[0], createHash('sha256').update(r.stderr).digest('hex'));

  const out: Buffer[] = [];
  const s = await client.exec('vm', { cmd: ['sha256sum'], stdinOpen: true }, { onOutput: (_c, d) => { out.push(d); } });
  const data = randomBytes(5 * 1024 * 1024);
  for (let off = 0; off < data.length; off += 100_000) {
    if (!s.stdin(data.subarray(off, off + 100_000))) await new Promise<void>((res) => s.onDrain(res));
  }
  s.eof();
  assert.equal((await s.done)!.exitCode, 0);
  assert.equal(Buffer.concat(out).toString().split(' ')[0], createHash('sha256').update(data).digest('hex'));

  const t0 = Date.now();
  const marker = join(dir, 'timeout-child');
  const t = await run({ cmd: ['sh', '-c', `sleep 30 & echo $! > ${marker}; wait`], timeoutMs: 1000 });
  assert.equal(t.exit.timedOut, true);
  assert.equal(t.exit.signal, 'SIGKILL');
  assert.ok(Date.now() - t0 < 5000);
  const child = Number(readFileSync(marker, 'utf8'));
  await new Promise((r) => setTimeout(r, 200));
  assert.ok(gone(child), 'the shell\'s child went with it');
});

test('exec: 20 at once; signals; a background process outlives its client and is reattached by id', async () => {
  const many = await Promise.all(Array.from({ length: 20 }, (_, i) => run({ cmd: ['sh', '-c', `sleep 0.2; echo ${i}`] })));
  many.forEach((r, i) => { assert.equal(r.stdout.toString(), `${i}\n`); assert.equal(r.exit.exitCode, 0); });

  const s = await client.exec('vm', { cmd: ['sleep', '30'] }, { onOutput: () => undefined });
  const { pid } = await s.started;
  s.signal('SIGTERM');
  assert.equal((await s.done)!.signal, 'SIGTERM');

  // A foreground process dies with its client ...
  const fg = await client.exec('vm', { cmd: ['sleep', '30'] }, { onOutput: () => undefined });
  const fgPid = (await fg.started).pid;
  fg.close();
  await new Promise((r) => setTimeout(r, 300));
  assert.ok(gone(fgPid));

  // ... a background one does not: its output is kept until someone attaches.
  // (Output sent to a client that is going away is lost with it: the first line comes after it went.)
  const out: Buffer[] = [];
  const bg = await client.exec('vm', { cmd: ['sh', '-c', 'sleep 0.5; for i in 1 2 3; do echo line$i; sleep 0.3; done; exit 7'], background: true, tag: 'bg' }, { onOutput: (_c, d) => { out.push(d); } });
  const bgPid = (await bg.started).pid;
  bg.close();
  await new Promise((r) => setTimeout(r, 100));
  const list = await client.processes('vm');
  const info = list.processes.find((p) => p.pid === bgPid);
  assert.ok(info && info.running && info.background && !info.attached && info.tag === 'bg', JSON.stringify(list));
  const again = await client.attach('vm', bgPid, { onOutput: (_c, d) => { out.push(d); } });
  const exit = await again.done;
  assert.equal(exit!.exitCode, 7);
  assert.equal(Buffer.concat(out).toString(), 'line1\nline2\nline3\n');
  assert.notEqual(pid, bgPid);
});

test('exec: a pty (python3 helper) reports a terminal of the asked size, and resizes', async (t) => {
  if (spawnSyncOk('python3', ['-c', 'import pty']) === false) return t.skip('no python3');
  const out: Buffer[] = [];
  const s = await client.exec('vm', { shell: 'tty >/dev/null && echo is-a-tty; stty size; read x; stty size', pty: { cols: 100, rows: 30 }, stdinOpen: true },
    { onOutput: (_c, d) => { out.push(d); } });
  await waitUntil(() => Buffer.concat(out).toString().includes('30 100'));
  s.resize(120, 40);
  await new Promise((r) => setTimeout(r, 200));
  s.stdin(Buffer.from('\n'));
  const exit = await s.done;
  assert.equal(exit!.exitCode, 0);
  const text = Buffer.concat(out).toString();
  assert.match(text, /is-a-tty/);
  assert.match(text, /40 120/);
});

test('files: write (streamed), read back, stat, list, mkdir, move, remove; missing paths are 404', async () => {
  const data = randomBytes(3 * 1024 * 1024 + 17);
  async function* chunks() { for (let o = 0; o < data.length; o += 65536) yield data.subarray(o, o + 65536); }
  const p = join(dir, 'sub/dir/file.bin');
  const w = await client.write('vm', p, chunks());
  assert.deepEqual(w, { path: p, size: data.length });
  assert.ok(readFileSync(p).equals(data));
  const r = await client.read('vm', p);
  assert.equal(r.kind, 'file');
  if (r.kind !== 'file') return;
  assert.equal(r.file.size, data.length);
  const back: Buffer[] = [];
  for await (const c of r.body as unknown as AsyncIterable<Uint8Array>) back.push(Buffer.from(c));
  assert.ok(Buffer.concat(back).equals(data));
  const l = await client.read('vm', join(dir, 'sub/dir'));
  assert.equal(l.kind, 'dir');
  if (l.kind === 'dir') assert.deepEqual(l.entries.map((e) => [e.name, e.type, e.size]), [['file.bin', 'file', data.length]]);
  assert.equal((await client.stat('vm', p)).type, 'file');
  assert.deepEqual(await client.mkdir('vm', join(dir, 'a/b')), { path: join(dir, 'a/b'), created: true });
  await client.move('vm', p, join(dir, 'a/b/moved.bin'));
  assert.equal(statSync(join(dir, 'a/b/moved.bin')).size, data.length);
  await client.remove('vm', join(dir, 'a'));
  assert.equal(existsSync(join(dir, 'a')), false);
  for (const call of [() => client.read('vm', join(dir, 'missing')), () => client.stat('vm', join(dir, 'missing')), () => client.remove('vm', join(dir, 'missing')),
    () => client.move('vm', join(dir, 'missing'), join(dir, 'x'))]) {
    await assert.rejects(call(), (e: any) => e.status === 404 && e.code === 'not_found');
  }
  writeFileSync(join(dir, 'plain'), 'x');
  await assert.rejects(client.mkdir('vm', join(dir, 'plain/sub')), (e: any) => e.status === 400 || e.status === 409);
  const h = await client.health('vm');
  assert.ok(typeof h.time === 'string' && (h.memory as any).totalBytes > 0);
});

/** A client whose connections tee what the agent sends into `heard` (to see what it offered). */
function listeningClient(p: number, heard: Buffer[]): AgentClient {
  const transport: AgentTransport = {
    connect: () => new Promise((res, rej) => {
      const s = connect(p, '127.0.0.1', () => res(s));
      s.on('data', (d: Buffer) => heard.push(Buffer.from(d)));
      s.once('error', rej);
    }),
  };
  return new AgentClient({ transport, token: () => TOKEN, callTimeoutMs: 5000 });
}

const leftovers = (d: string) => readdirSync(d).filter((n) => n.includes('.capsule-'));

test('files: a large upload of a known size is taken raw by capsule-recv; a body shorter or longer than it fails and leaves nothing; without the helper, frames', async () => {
  assert.equal((await client.health('vm')).receiver, 'capsule-recv');
  const data = randomBytes(5 * 1024 * 1024 + 3);
  async function* chunks(d: Buffer = data) { for (let o = 0; o < d.length; o += 16384) yield d.subarray(o, o + 16384); }
  const heard: Buffer[] = [];
  const c = listeningClient(port, heard);
  const p = join(dir, 'raw/big.bin');
  assert.deepEqual(await c.write('vm', p, chunks(), { size: data.length, mode: 0o600 }), { path: p, size: data.length });
  assert.match(Buffer.concat(heard).toString('latin1'), /"ready":true,"raw":true/);
  assert.ok(readFileSync(p).equals(data));
  assert.equal(statSync(p).mode & 0o777, 0o600);
  // A small file is not worth a helper: frames, same result.
  heard.length = 0;
  assert.deepEqual(await c.write('vm', p, chunks(data.subarray(0, 1000)), { size: 1000 }), { path: p, size: 1000 });
  assert.doesNotMatch(Buffer.concat(heard).toString('latin1'), /"raw":true/);
  assert.ok(readFileSync(p).equals(data.subarray(0, 1000)));
  // The body is shorter or longer than the size it announced: 400, the old file stays, no temporary file.
  for (const [body, says] of [[data.subarray(0, 2 * 1024 * 1024), data.length], [data, 2 * 1024 * 1024]] as const) {
    await assert.rejects(c.write('vm', p, chunks(body), { size: says }), (e: any) => e.status === 400 && e.code === 'upload_failed');
  }
  await waitFor('the temporary files to go', async () => leftovers(join(dir, 'raw')).length === 0 || undefined, 10_000);
  assert.ok(readFileSync(p).equals(data.subarray(0, 1000)));
  // An agent without capsule-recv (or an older one) answers {"ready":true}: the client sends frames.
  const plain = await startAgent(['--receiver', 'none']);
  try {
    assert.equal((await plain.client.health('vm')).receiver, 'none');
    const q = join(dir, 'raw/framed.bin');
    heard.length = 0;
    assert.deepEqual(await listeningClient(plain.port, heard).write('vm', q, chunks(), { size: data.length }), { path: q, size: data.length });
    assert.doesNotMatch(Buffer.concat(heard).toString('latin1'), /"raw":true/);
    assert.ok(readFileSync(q).equals(data));
  } finally {
    plain.proc.kill('SIGKILL');
  }
});

test('raw uploads, failures: a full disk is no_space (507) even mid-body, nothing left; a helper that cannot start falls back to frames', async (t) => {
  const data = randomBytes(6 * 1024 * 1024);
  async function* chunks() { for (let o = 0; o < data.length; o += 65536) yield data.subarray(o, o + 65536); }
  // A helper that is there when the agent starts but cannot be run when the upload comes
  // (EACCES, like EAGAIN/EMFILE in a guest out of processes or descriptors).
  const helperDir = mkdtempSync(join(tmpdir(), 'capsule-recv-'));
  const helper = join(helperDir, 'capsule-recv');
  copyFileSync(join(BUNDLE, '..', 'capsule-recv'), helper);
  chmodSync(helper, 0o755);
  const flaky = await startAgent(['--receiver', helper]);
  try {
    chmodSync(helper, 0o644);
    const heard: Buffer[] = [];
    const q = join(dir, 'fallback/file.bin');
    assert.deepEqual(await listeningClient(flaky.port, heard).write('vm', q, chunks(), { size: data.length }), { path: q, size: data.length });
    assert.doesNotMatch(Buffer.concat(heard).toString('latin1'), /"raw":true/);
    assert.ok(readFileSync(q).equals(data));
  } finally {
    flaky.proc.kill('SIGKILL');
    rmSync(helperDir, { recursive: true, force: true });
  }
  if (process.getuid?.() !== 0) return t.skip('a small tmpfs needs root');
  const small = mkdtempSync(join(tmpdir(), 'capsule-full-'));
  execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=2m', 'tmpfs', small]);
  try {
    await assert.rejects(client.write('vm', join(small, 'big.bin'), chunks(), { size: data.length }), (e: any) => e.status === 507 && e.code === 'no_space');
    await waitFor('the temporary file to go', async () => readdirSync(small).length === 0 || undefined, 10_000);
    // The agent is fine after it: its connection came back to it non-blocking, and it serves on.
    assert.equal((await client.health('vm')).receiver, 'capsule-recv');
  } finally {
    execFileSync('umount', ['-l', small]);
    rmSync(small, { recursive: true, force: true });
  }
});

test('capsule-recv itself: exact copy, early end, stall, a full disk, bad arguments each exit with their status and one line', async () => {
  const recv = join(BUNDLE, '..', 'capsule-recv');
  const run = (args: string[], input: Buffer | 'stall', out = '/dev/null') => new Promise<{ code: number | null; stderr: string }>((res) => {
    const child = spawn(recv, args, { stdio: ['pipe', out === '/dev/null' ? 'ignore' : 'pipe', 'pipe'] });
    let stderr = '';
    child.stderr!.on('data', (d) => (stderr += d));
    if (out !== '/dev/null') child.stdout!.pipe(createWriteStream(out));
    child.stdin!.on('error', () => { /* a helper that refused its arguments does not read: EPIPE */ });
    if (input !== 'stall') child.stdin!.end(input);
    child.on('close', (code) => res({ code, stderr }));
  });
  const data = randomBytes(3 * 1024 * 1024 + 5);
  const out = join(dir, 'recv.bin');
  assert.deepEqual(await run([String(data.length)], Buffer.concat([data, Buffer.from('next message')]), out), { code: 0, stderr: '' });
  await waitFor('the copy on disk', async () => (statSync(out).size === data.length ? true : undefined), 5000);
  assert.ok(readFileSync(out).equals(data), 'exactly SIZE bytes, not what follows');
  assert.deepEqual(await run(['100'], Buffer.alloc(40)), { code: 3, stderr: 'read: eof 40\n' });
  assert.deepEqual(await run(['100', '1'], 'stall'), { code: 4, stderr: 'read: ETIMEDOUT 0\n' });
  const full = await new Promise<{ code: number | null; stderr: string }>((res) => {
    const child = spawn(recv, ['10'], { stdio: ['pipe', openSync('/dev/full', 'w'), 'pipe'] });
    let stderr = '';
    child.stderr!.on('data', (d) => (stderr += d));
    child.stdin!.end(Buffer.alloc(10));
    child.on('close', (code) => res({ code, stderr }));
  });
  assert.deepEqual(full, { code: 5, stderr: 'write: ENOSPC 0\n' });
  for (const bad of [[], ['-1'], ['12x'], ['1', '0'], ['1', '2', '3']]) assert.equal((await run(bad, Buffer.alloc(0))).code, 2, bad.join(' '));
});

test('the agent refuses a wrong token; plain HTTP gets the HTTP side (/health)', async () => {
  const bad = new AgentClient({ transport: tcp(() => port), token: () => 'wrong-token-0123456789', callTimeoutMs: 5000 });
  await assert.rejects(bad.health('vm'), (e: any) => e.code === 'unauthorized');
  const res = await fetch(`http://127.0.0.1:${port}/health`);
  assert.equal(res.status, 204);
});

// ---- hostile agents ----

async function fakeAgent(onConn: (s: Socket) => void): Promise<{ server: Server; port: number }> {
  const server = createServer((s) => { s.on('error', () => undefined); onConn(s); });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return { server, port: (server.address() as { port: number }).port };
}

test('a hostile agent never hangs the client: oversized frames, garbage, silence, a stalled stream', async () => {
  // An oversized frame (a length of 2 GiB): the connection is closed at the header.
  const huge = await fakeAgent((s) => { const h = Buffer.alloc(5); h.writeUInt32BE(0x7fffffff, 0); h[4] = 1; s.write(h); });
  const silent = await fakeAgent(() => { /* accepts, never answers */ });
  const garbage = await fakeAgent((s) => s.write(Buffer.from([0, 0, 0, 3, 9, 9, 9])));
  // Answers the exec's start, then goes quiet (no heartbeat).
  const stall = await fakeAgent((s) => s.once('data', () => {
    const body = Buffer.from(JSON.stringify({ started: { pid: 1 } }));
    const h = Buffer.alloc(5); h.writeUInt32BE(body.length + 1, 0); h[4] = 1;
    s.write(Buffer.concat([h, body]));
  }));
  // Accepts the TCP connection only after a long time (never, here): connect deadline.
  const neverConnects: AgentTransport = { connect: () => new Promise(() => undefined) };
  const mk = (p: number | AgentTransport) => new AgentClient({
    transport: typeof p === 'number' ? tcp(() => p) : p, token: () => TOKEN, callTimeoutMs: 1000, idleTimeoutMs: 1000, connectTimeoutMs: 1000,
  });
  const t0 = Date.now();
  await assert.rejects(mk(huge.port).health('vm'), (e: any) => e.code === 'agent_protocol_error' && e.status === 502);
  await assert.rejects(mk(garbage.port).health('vm'), (e: any) => e.code === 'agent_protocol_error');
  await assert.rejects(mk(silent.port).health('vm'), (e: any) => e.code === 'agent_timeout' && e.status === 504);
  await assert.rejects(mk(neverConnects).health('vm'), (e: any) => e.code === 'agent_timeout');
  const s = await mk(stall.port).exec('vm', { cmd: ['x'] }, { onOutput: () => undefined });
  await s.started;
  await assert.rejects(s.done, (e: any) => e.code === 'agent_timeout');
  assert.ok(Date.now() - t0 < 8000, `all within their deadlines (${Date.now() - t0} ms)`);
  // And the magic is what the agent expects first.
  assert.equal(MAGIC.toString(), 'CAPSULE-AGENT/1\n');
  for (const f of [huge, silent, garbage, stall]) f.server.close();
});

test('a VM that goes away ends its operations at once (abortVm): an upload stuck on a full socket, a running exec', async () => {
  const frame = (obj: unknown) => { const b = Buffer.from(JSON.stringify(obj)); const h = Buffer.alloc(5); h.writeUInt32BE(b.length + 1, 0); h[4] = 1; return Buffer.concat([h, b]); };
  // Says "ready" for a write, then stops reading (a guest that vanished: the socket fills up, never drains).
  const stuck = await fakeAgent((s) => s.once('data', () => { s.write(frame({ ready: true })); s.pause(); }));
  const running = await fakeAgent((s) => s.once('data', () => s.write(frame({ started: { pid: 7 } }))));
  const mk = (p: number) => new AgentClient({ transport: tcp(() => p), token: () => TOKEN, callTimeoutMs: 60_000, idleTimeoutMs: 60_000 });
  const uploader = mk(stuck.port);
  async function* forever() { for (;;) yield Buffer.alloc(1 << 20); }
  const upload = uploader.write('vm-a', '/x', forever());
  await waitUntil(() => uploader.openSessions('vm-a') === 1);
  await new Promise((r) => setTimeout(r, 300)); // the socket's buffers fill; the writer waits for 'drain'
  const execer = mk(running.port);
  const s = await execer.exec('vm-a', { cmd: ['x'] }, { onOutput: () => undefined });
  await s.started;
  const t0 = Date.now();
  uploader.abortVm('vm-a', 'the VM stopped');
  execer.abortVm('vm-b'); // another VM: nothing of vm-a's ends
  assert.equal(execer.openSessions('vm-a'), 1);
  execer.abortVm('vm-a');
  await assert.rejects(upload, (e: any) => e.status === 502 && /the VM stopped/.test(e.message));
  await assert.rejects(s.done, (e: any) => e.status === 502);
  assert.ok(Date.now() - t0 < 2000, 'at once, not at a deadline');
  assert.deepEqual([uploader.openSessions('vm-a'), execer.openSessions('vm-a')], [0, 0]);
  for (const f of [stuck, running]) f.server.close();
});

/** The process is gone or a zombie (killed; its new parent has not reaped it yet). */
function gone(pid: number): boolean {
  try { return /^\d+ \(.*\) Z/.test(readFileSync(`/proc/${pid}/stat`, 'utf8')); } catch { return true; }
}

function spawnSyncOk(cmd: string, args: string[]): boolean {
  try { execFileSync(cmd, args, { stdio: 'ignore' }); return true; } catch { return false; }
}

async function waitUntil(fn: () => boolean, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!fn()) {
    if (Date.now() > end) throw new Error('timed out');
    await new Promise((r) => setTimeout(r, 20));
  }
}
