// Disk file access for jailed VMMs: POSIX ACLs set through setxattr on a real file, checked by
// opening it as other uids (setpriv). Needs root (it switches uids); skipped otherwise.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, statSync, writeFileSync, chmodSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { encodeAcl, setFileAccess } from './access.js';

const root = process.getuid?.() === 0;

function as(uid: number, script: string): boolean {
  try {
    execFileSync('setpriv', [`--reuid=${uid}`, `--regid=${uid}`, '--clear-groups', '--', 'sh', '-c', script], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

test('the ACL xattr: version 2, owner rw, users sorted and merged, mask, no group or other', () => {
  const b = encodeAcl([{ uid: 200, write: false }, { uid: 100, write: true }, { uid: 200, write: true }]);
  const entries = Array.from({ length: (b.length - 4) / 8 }, (_, i) => [b.readUInt16LE(4 + i * 8), b.readUInt16LE(6 + i * 8), b.readUInt32LE(8 + i * 8)]);
  assert.equal(b.readUInt32LE(0), 2);
  assert.deepEqual(entries, [[0x01, 6, 0xffffffff], [0x02, 6, 100], [0x02, 6, 200], [0x04, 0, 0xffffffff], [0x10, 6, 0xffffffff], [0x20, 0, 0xffffffff]]);
});

test('grants let exactly the named uids in, read or read-write; none: 0600 again', { skip: !root && 'needs root' }, () => {
  const dir = mkdtempSync(join(tmpdir(), 'capsule-acl-'));
  chmodSync(dir, 0o755);
  const f = join(dir, 'vol.img');
  writeFileSync(f, 'data', { mode: 0o600 });
  try {
    assert.ok(!as(123456, `cat ${f}`), 'nobody but root before');
    setFileAccess(f, [{ uid: 123456, write: false }, { uid: 123457, write: true }]);
    assert.ok(as(123456, `cat ${f} >/dev/null`), 'r grant reads');
    assert.ok(!as(123456, `echo x >> ${f}`), 'r grant cannot write');
    assert.ok(as(123457, `echo x >> ${f}`), 'rw grant writes');
    assert.ok(!as(123458, `cat ${f}`), 'other uids stay out');
    setFileAccess(f, []);
    assert.equal(statSync(f).mode & 0o777, 0o600);
    assert.ok(!as(123457, `cat ${f}`), 'revoked');
    assert.throws(() => setFileAccess(join(dir, 'missing'), [{ uid: 1, write: false }]), (e: any) => e.code === 'ENOENT');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
