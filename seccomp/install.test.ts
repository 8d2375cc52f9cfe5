// Real-kernel tests: each case runs a child Node process that installs a filter and then does
// allowed and forbidden work. Children run with `ulimit -c 0` so SIGSYS does not leave cores.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { mkdtempSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const installUrl = new URL('./install.js', import.meta.url).href;
const bpfUrl = new URL('./bpf.js', import.meta.url).href;
const hereDir = fileURLToPath(new URL('.', import.meta.url));

interface ChildResult {
  status: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** Run an ES module body in a child node with core dumps disabled. */
function child(body: string, timeoutMs = 20000): ChildResult {
  const script = `import { installPolicy, installFilter, threadSeccompStatus, SeccompInstallError } from ${JSON.stringify(installUrl)};\n${body}`;
  const r = spawnSync('/bin/sh', ['-c', 'ulimit -c 0; exec "$0" --input-type=module -e "$1"', process.execPath, script], {
    encoding: 'utf8',
    timeout: timeoutMs,
    cwd: hereDir,
  });
  // sh execs node, so a signal death of node is reported as the signal itself.
  return { status: r.status, signal: r.signal, stdout: r.stdout, stderr: r.stderr };
}

test('a forbidden getppid kills the process with SIGSYS after allowed work succeeds', () => {
  const r = child(`
    import { writeFileSync, readFileSync, unlinkSync } from 'node:fs';
    installPolicy({ defaultAction: 'allow', rules: [{ syscall: 'getppid', action: 'kill_process' }] });
    const f = '/tmp/seccomp-test-' + process.pid;
    writeFileSync(f, 'hello'); const back = readFileSync(f, 'utf8'); unlinkSync(f);
    await new Promise((r) => setTimeout(r, 20));
    console.log('survived ' + back + ' ' + JSON.stringify({ ok: true }));
    console.log('ppid ' + process.ppid);
    console.log('after');
  `);
  assert.equal(r.signal, 'SIGSYS', JSON.stringify(r));
  assert.match(r.stdout, /survived hello \{"ok":true\}/);
  assert.doesNotMatch(r.stdout, /after/);
});

test('a forbidden mkdir kills the process (kill_process), allowed calls keep working before it', () => {
  const dir = mkdtempSync(join(tmpdir(), 'seccomp-mkdir-'));
  try {
    const r = child(`
      import { mkdirSync } from 'node:fs';
      installPolicy({ defaultAction: 'allow', rules: [{ syscall: ['mkdir', 'mkdirat'], action: 'kill_process' }] });
      console.log('installed');
      mkdirSync(${JSON.stringify(join(dir, 'x'))});
      console.log('after');
    `);
    assert.equal(r.signal, 'SIGSYS', JSON.stringify(r));
    assert.match(r.stdout, /installed/);
    assert.doesNotMatch(r.stdout, /after/);
    assert.equal(existsSync(join(dir, 'x')), false);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('errno(EPERM) makes the call fail with EPERM and the process carries on', () => {
  const dir = mkdtempSync(join(tmpdir(), 'seccomp-eperm-'));
  try {
    const r = child(`
      import { mkdirSync } from 'node:fs';
      installPolicy({ defaultAction: 'allow', rules: [{ syscall: ['mkdir', 'mkdirat'], action: 'errno(EPERM)' }] });
      try { mkdirSync(${JSON.stringify(join(dir, 'x'))}); console.log('created'); }
      catch (e) { console.log('code ' + e.code + ' errno ' + e.errno); }
      console.log('still alive');
    `);
    assert.equal(r.status, 0, JSON.stringify(r));
    assert.match(r.stdout, /code EPERM errno -1\b/);
    assert.match(r.stdout, /still alive/);
    assert.equal(existsSync(join(dir, 'x')), false);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('argument conditions (masked bits, 64-bit high word) are enforced by the kernel', () => {
  const r = child(`
    import { openSync, fchmodSync, ftruncateSync, fstatSync, unlinkSync } from 'node:fs';
    const f = '/tmp/seccomp-args-' + process.pid;
    const fd = openSync(f, 'w');
    installPolicy({ defaultAction: 'allow', rules: [
      // fchmod only without any execute bit; ftruncate only below 4 GiB (needs the high word).
      { syscall: 'fchmod', action: 'allow', args: [{ arg: 1, op: 'masked==', mask: 0o111, value: 0 }] },
      { syscall: 'fchmod', action: 'errno(EACCES)' },
      { syscall: 'ftruncate', action: 'errno(EFBIG)', args: [{ arg: 1, op: '>=', value: 2n ** 32n }] },
    ] });
    const tryIt = (name, fn) => { try { fn(); return name + ':ok'; } catch (e) { return name + ':' + e.code; } };
    console.log([
      tryIt('chmod644', () => fchmodSync(fd, 0o644)),
      tryIt('chmod755', () => fchmodSync(fd, 0o755)),
      tryIt('trunc100', () => ftruncateSync(fd, 100)),
      tryIt('trunc4G-1', () => ftruncateSync(fd, 2 ** 32 - 1)),
      tryIt('trunc4G', () => ftruncateSync(fd, 2 ** 32)),
      tryIt('trunc8G+5', () => ftruncateSync(fd, 2 ** 33 + 5)),
    ].join(' ') + ' size=' + fstatSync(fd).size + ' mode=' + (fstatSync(fd).mode & 0o777).toString(8));
    unlinkSync(f);
  `);
  assert.equal(r.status, 0, JSON.stringify(r));
  assert.match(r.stdout, /chmod644:ok chmod755:EACCES trunc100:ok trunc4G-1:ok trunc4G:EFBIG trunc8G\+5:EFBIG size=4294967295 mode=644/);
});

test('TSYNC covers worker threads created before the filter', () => {
  const r = child(`
    import { Worker } from 'node:worker_threads';
    // --input-type=module applies to eval'd workers too, hence import syntax.
    const w = new Worker("import { parentPort } from 'node:worker_threads'; parentPort.on('message', (m) => { if (m === 'ppid') { parentPort.postMessage('calling'); process.ppid; parentPort.postMessage('worker survived'); } });", { eval: true });
    await new Promise((r) => w.once('online', r));
    installPolicy({ defaultAction: 'allow', rules: [{ syscall: 'getppid', action: 'kill_process' }] });
    const st = threadSeccompStatus();
    console.log('threads ' + st.length + ' all2 ' + st.every((t) => t.seccomp === 2 && t.filters === 1));
    w.on('message', (m) => console.log(m));
    w.postMessage('ppid');
    await new Promise((r) => setTimeout(r, 3000));
    console.log('main survived');
  `);
  assert.equal(r.signal, 'SIGSYS', JSON.stringify(r));
  const m = /threads (\d+) all2 (\w+)/.exec(r.stdout);
  assert.ok(m, r.stdout);
  assert.ok(Number(m[1]) >= 6, `expected main + libuv/V8 threads + worker, got ${m[1]}`);
  assert.equal(m[2], 'true');
  assert.doesNotMatch(r.stdout, /worker survived|main survived/);
});

test('TSYNC failure names the thread that has a foreign filter', () => {
  // The worker installs a filter on itself only (tsync: false); the main thread's TSYNC install
  // then cannot synchronise the worker, and the kernel returns the worker's thread id.
  const r = child(`
    import { Worker } from 'node:worker_threads';
    const w = new Worker(\`
      import { parentPort } from 'node:worker_threads';
      import { readlinkSync } from 'node:fs';
      import(${JSON.stringify(installUrl)}).then(({ installPolicy }) => {
        installPolicy({ defaultAction: 'allow', rules: [{ syscall: 'getppid', action: 'errno(1)' }] }, { tsync: false });
        parentPort.postMessage(Number(readlinkSync('/proc/thread-self').split('/').pop()));
      });
      setInterval(() => {}, 1000);\`, { eval: true });
    const tid = await new Promise((r) => w.once('message', r));
    try {
      installPolicy({ defaultAction: 'allow', rules: [] });
      console.log('installed?!');
    } catch (e) {
      console.log(JSON.stringify({ name: e.name, threadId: e.threadId, tid, msg: e.message }));
    }
    process.exit(0);
  `);
  assert.equal(r.status, 0, JSON.stringify(r));
  const out = JSON.parse(r.stdout.trim()) as { name: string; threadId: number; tid: number; msg: string };
  assert.equal(out.name, 'SeccompInstallError');
  assert.equal(out.threadId, out.tid);
  assert.match(out.msg, new RegExp(`thread ${out.tid}\\b`));
});

test('a program the kernel rejects gives a clear EINVAL error', () => {
  const r = child(`
    import { encodeProgram, stmt } from ${JSON.stringify(bpfUrl)};
    // Load from offset 64: outside struct seccomp_data, which the kernel's checker refuses.
    const bad = encodeProgram([stmt(0x20, 64), stmt(0x06, 0x7fff0000)]);
    try { installFilter(bad); console.log('installed?!'); }
    catch (e) { console.log(e.name + ': ' + e.message + ' errno=' + e.errno); }
  `);
  assert.equal(r.status, 0, JSON.stringify(r));
  assert.match(r.stdout, /SeccompInstallError: seccomp\(SECCOMP_SET_MODE_FILTER\) failed: EINVAL .* errno=22/);
});

test('the log flag and log action are accepted by the kernel', () => {
  const r = child(`
    installPolicy({ defaultAction: 'allow', rules: [{ syscall: 'getppid', action: 'log' }] }, { log: true });
    console.log('ppid ' + (process.ppid > 0));
  `);
  assert.equal(r.status, 0, JSON.stringify(r));
  assert.match(r.stdout, /ppid true/);
});

test('a 360-rule program with long-jump trampolines is accepted by the kernel and enforced', () => {
  const r = child(`
    import { compilePolicy } from ${JSON.stringify(new URL('./compiler.js', import.meta.url).href)};
    import { SYSCALLS_X86_64 } from ${JSON.stringify(new URL('./syscalls-x86_64.js', import.meta.url).href)};
    import { openSync, ftruncateSync, unlinkSync } from 'node:fs';
    // Every syscall gets a rule that only fires on a magic first argument; ftruncate gets one on
    // its 64-bit length. Default allow, so the process keeps running.
    const rules = Object.keys(SYSCALLS_X86_64).map((name, i) => ({ syscall: name, action: 'kill_process', args: [{ arg: 0, op: '==', value: 0xdead00000000n + BigInt(i) }] }));
    rules.unshift({ syscall: 'ftruncate', action: 'errno(EFBIG)', args: [{ arg: 1, op: '==', value: 2n ** 40n + 7n }] });
    const policy = { defaultAction: 'allow', rules };
    const c = compilePolicy(policy);
    console.log('insns ' + c.instructions.length + ' trampolines ' + c.trampolines);
    installPolicy(policy);
    const f = '/tmp/seccomp-big-' + process.pid;
    const fd = openSync(f, 'w');
    const t = (n) => { try { ftruncateSync(fd, n); return 'ok'; } catch (e) { return e.code; } };
    console.log('small ' + t(10) + ' magic ' + t(2 ** 40 + 7) + ' near ' + t(2 ** 40 + 6));
    unlinkSync(f);
  `);
  assert.equal(r.status, 0, JSON.stringify(r));
  const m = /insns (\d+) trampolines (\d+)/.exec(r.stdout);
  assert.ok(m && Number(m[2]) > 0, r.stdout);
  assert.match(r.stdout, /small ok magic EFBIG near ok/);
});
