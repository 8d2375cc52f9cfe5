// agent/spawner.ts against scripted helpers: replies that come together in one read (a start and
// the exit of a process that ended at once), failures naming errno and step, nonsense from the
// helper (it is dropped, and waiting spawns fail), and the real capsule-spawn's exit statuses.
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { chmodSync, existsSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { REPO_ROOT } from '../server/paths.js';
import { SpawnError, Spawner, type SpawnRequest } from './spawner.js';

const dir = mkdtempSync(join(tmpdir(), 'capsule-spawner-test-'));
/** Every spawner a test starts is let go at the end, pass or fail (its helper would keep the process alive). */
const started: Spawner[] = [];
after(() => { for (const s of started) s.close(); });
const start = (path: string): Spawner => { const s = Spawner.start(path)!; started.push(s); return s; };

/** A helper that answers each request with `reply` (printf format; %s is the request's id). */
function scripted(name: string, reply: string): string {
  const path = join(dir, name);
  // Reads one request (u32 LE length + body), answers, and goes on; python3 keeps it exact.
  writeFileSync(path, `#!/usr/bin/env python3
import sys, struct
while True:
    h = sys.stdin.buffer.read(4)
    if len(h) < 4: break
    body = sys.stdin.buffer.read(struct.unpack('<I', h)[0])
    rid = body.split(b'\\0')[1].decode()
    sys.stdout.write(${JSON.stringify(reply)}.replace('%s', rid)); sys.stdout.flush()
`);
  chmodSync(path, 0o755);
  return path;
}

const req: SpawnRequest = { argv: ['true'], env: { PATH: '/usr/bin:/bin' }, cwd: '/', uid: process.getuid!(), gid: process.getgid!(), stdio: ['/dev/null', '/dev/null', '/dev/null'] };

test('a start and an exit in one read: the process still gets its exit', async () => {
  const s = start(scripted('together', 'S %s 4242\nX 4242 7 0\n'));
  const p = await s.spawn(req);
  assert.equal(p.pid, 4242);
  const exit = await Promise.race([new Promise((r) => p.onExit((code, sig) => r([code, sig]))), new Promise((r) => setTimeout(() => r('no exit'), 2000).unref())]);
  assert.deepEqual(exit, [7, null]);
});

test('a failure names the errno and the step; a signal ends a process without a code', async () => {
  const s = start(scripted('fails', 'F %s 2 exec\n'));
  await assert.rejects(s.spawn(req), (e: unknown) => e instanceof SpawnError && e.errno === 'ENOENT' && e.step === 'exec');
  const k = start(scripted('killed', 'S %s 77\nX 77 -1 9\n'));
  const p = await k.spawn(req);
  assert.deepEqual(await new Promise((r) => p.onExit((code, sig) => r([code, sig]))), [null, 'SIGKILL']);
});

test('nonsense from the helper: it is dropped, the waiting spawn fails, the spawner says it is gone', async () => {
  for (const reply of ['S %s not-a-pid\n', 'Z what\n', 'S 999 1\n', 'x'.repeat(5000)]) {
    const s = start(scripted(`bad-${reply.length}-${reply[0]}`, reply));
    await assert.rejects(Promise.race([s.spawn(req), new Promise((_r, rej) => setTimeout(() => rej(new Error('hung')), 3000).unref())]), (e: Error) => /gone/.test(e.message), JSON.stringify(reply.slice(0, 20)));
    assert.equal(s.alive, false);
  }
  assert.equal(Spawner.start(join(dir, 'no-such-helper')), undefined);
});

test('the real capsule-spawn: exit codes and signals of quick processes', async (t) => {
  const helper = join(REPO_ROOT, 'dist', 'agent', 'capsule-spawn');
  if (!existsSync(helper)) return t.skip('capsule-spawn not built (no gcc)');
  const s = start(helper);
  const ends = await Promise.all(Array.from({ length: 40 }, async (_, i) => {
    const p = await s.spawn({ ...req, argv: ['sh', '-c', i % 2 ? `exit ${i}` : 'kill -TERM $$'] });
    return new Promise((r) => p.onExit((code, sig) => r([code, sig])));
  }));
  ends.forEach((e, i) => assert.deepEqual(e, i % 2 ? [i, null] : [null, 'SIGTERM']));
});
