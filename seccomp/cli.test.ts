// The CLI as a user runs it: a real `node dist/seccomp/cli.js` process per case.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const cli = fileURLToPath(new URL('./cli.js', import.meta.url));
const run = (...args: string[]) => spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8' });

test('compile, disasm and eval', () => {
  const dir = mkdtempSync(join(tmpdir(), 'seccomp-cli-'));
  try {
    const policy = join(dir, 'p.json');
    const out = join(dir, 'p.bpf');
    writeFileSync(policy, JSON.stringify({ defaultAction: 'kill_process', rules: [{ syscall: ['read', 'write'], action: 'allow' }, { syscall: 'mkdir', action: 'errno(EPERM)', args: [{ arg: 1, op: '>', value: '0x1ff' }] }] }));
    let r = run('compile', policy, '-o', out);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /\d+ instructions/);
    assert.equal(readFileSync(out).length % 8, 0);
    r = run('disasm', out);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /if \(A == write\) goto/);
    assert.equal(run('disasm', policy).stdout, r.stdout, 'policy and compiled file disassemble the same');
    r = run('eval', policy, '--nr', 'write', '--args', '1,2,3');
    assert.match(r.stdout, /x86_64 write\(0x1, 0x2, 0x3\) -> ALLOW/);
    r = run('eval', out, '--nr', '83', '--args', '0,0x200');
    assert.match(r.stdout, /mkdir\(0x0, 0x200\) -> ERRNO\(1\)/);
    r = run('eval', out, '--nr', 'mkdir', '--args', '0,0x1ff');
    assert.match(r.stdout, /-> KILL_PROCESS/);
    assert.match(run('eval', out, '--nr', 'read', '--arch', 'i386').stdout, /i386 .* -> KILL_PROCESS/);
    assert.match(run('eval', out, '--nr', 'read', '--arch', 'x32').stdout, /x32 read\(\) -> KILL_PROCESS/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('errors are clear and exit non-zero', () => {
  const dir = mkdtempSync(join(tmpdir(), 'seccomp-cli-'));
  try {
    const bad = join(dir, 'bad.json');
    writeFileSync(bad, JSON.stringify({ defaultAction: 'allow', rules: [{ syscall: ['read', 'nosuchcall'], action: 'allow' }] }));
    let r = run('compile', bad, '-o', join(dir, 'x.bpf'));
    assert.notEqual(r.status, 0);
    assert.match(r.stderr, /unknown syscall name for x86_64: nosuchcall/);
    r = run('eval', join(dir, 'missing.json'), '--nr', 'read');
    assert.notEqual(r.status, 0);
    assert.match(r.stderr, /cannot read .*missing\.json: ENOENT/);
    writeFileSync(join(dir, 'odd.bpf'), Buffer.alloc(7));
    r = run('disasm', join(dir, 'odd.bpf'));
    assert.notEqual(r.status, 0);
    assert.match(r.stderr, /multiple of 8 bytes/);
    r = run('frobnicate', bad);
    assert.equal(r.status, 2);
    assert.match(r.stderr, /unknown command/);
    r = run('eval', bad, '--nr', 'read', '--arch', 'arm64');
    assert.equal(r.status, 2);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
