// capsule-vmm snapshots by hand, StratoVirt's way, on a real /dev/kvm (scripts/kvm-tests.sh):
// QMP `migrate {"uri":"file:DIR"}` on a paused VM, then a VMM started with `-incoming file:DIR`
// goes on where it was. A VMM whose configuration does not fit the snapshot (another vCPU count,
// another memory size) or a truncated memory file is refused at start with every reason, exit 1.
// (The server's path, fds through getfd under the seccomp filter, is server/snapshots/native-snapshots.kvm.test.ts.)
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, readdirSync, rmSync, statSync, truncateSync, copyFileSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { probeKvm } from '../../lib/kvm-probe.js';
import { ConsoleClient, killAllVmms, QmpClient, startVmm, testImage, waitForFile } from '../testing/clients.js';

const BOOT_MS = 240_000;
let img: Awaited<ReturnType<typeof testImage>>;
const work = mkdtempSync(join(tmpdir(), 'capsule-snap-kvm-'));
const dir = join(work, 'snap');

before(async () => {
  assert.ok(probeKvm().available, 'KVM is not usable here');
  img = await testImage();
});
after(() => {
  killAllVmms();
  rmSync(work, { recursive: true, force: true });
});

function vmmArgs(name: string, cpus: number, mem: string): { args: string[]; qmp: string; con: string } {
  const qmp = join(work, `${name}.qmp`);
  const con = join(work, `${name}.con`);
  return {
    qmp, con,
    args: ['-kernel', img.kernel, '-initrd', img.initrd, '-append', img.cmdline, '-smp', String(cpus), '-m', mem,
      '-api-channel', `unix:${qmp}`, '-chardev', `id=console0,path=${con}`, '-rng', 'random_file=/dev/urandom', '-disable-seccomp'],
  };
}

test('migrate file:DIR on a paused VM; -incoming file:DIR goes on where it was', async () => {
  const a = vmmArgs('src', 1, '256M');
  startVmm(a.args);
  await waitForFile(a.qmp, 30_000);
  const q = await QmpClient.connect(a.qmp);
  const c = await ConsoleClient.connect(a.con);
  await c.waitFor(/CAPSULE_READY/, BOOT_MS);
  await c.run('echo kept > /tmp/kept');
  c.type('(i=0; while true; do i=$((i+1)); echo tick-$i; sleep 0.3; done) &\n');
  await c.waitFor(/tick-3/, 60_000);
  // a running VM is refused: it must be paused first
  const running = await q.call('migrate', { uri: `file:${dir}` });
  assert.match(JSON.stringify(running), /stop it before a snapshot/);
  await q.execute('stop');
  mkdirSync(dir);
  await q.execute('migrate', { uri: `file:${dir}` }, 120_000);
  assert.equal(((await q.execute('query-migrate')) as { status: string }).status, 'completed');
  assert.deepEqual(readdirSync(dir).sort(), ['memory-0', 'state']);
  assert.equal(statSync(join(dir, 'memory-0')).size, 256 * 1024 * 1024);
  const last = Math.max(...[...c.text.matchAll(/tick-(\d+)/g)].map((m) => Number(m[1])));
  await q.execute('quit');
  q.close();
  c.close();

  const b = vmmArgs('dst', 1, '256M');
  const p = startVmm([...b.args, '-incoming', `file:${dir}`, '-D'], { CAPSULE_LOG_LEVEL: 'info' });
  await waitForFile(b.qmp, 30_000);
  const q2 = await QmpClient.connect(b.qmp);
  const c2 = await ConsoleClient.connect(b.con);
  assert.equal(((await q2.execute('query-status')) as { status: string }).status, 'paused', 'a restored VM starts paused');
  await q2.execute('cont');
  await c2.waitFor(new RegExp(`tick-(${last}|${last + 1}|${last + 2})\\b`), 60_000);
  const r = await c2.run('cat /tmp/kept');
  assert.equal(r.out.split('\n').filter((l) => !/^tick-/.test(l)).join('').trim(), 'kept');
  assert.doesNotMatch(c2.text, /Linux version|CAPSULE_READY/, 'no boot');
  assert.match(p.stderr, /snapshot .* loaded \(memory mapped copy-on-write\)/);
  await q2.execute('quit');
  q2.close();
  c2.close();
});

test('a VMM that does not fit the snapshot, or a truncated memory file: refused at start with the reasons, exit 1', async () => {
  const other = vmmArgs('bad', 2, '512M');
  const p = startVmm([...other.args, '-incoming', `file:${dir}`]);
  const r = await p.exited;
  assert.equal(r.code, 1);
  assert.match(p.stderr, /snapshot cannot be restored here/);
  assert.match(p.stderr, /vCPUs: snapshot 1, VM 2/);
  assert.match(p.stderr, /memory layout: snapshot \[0x0\+0x10000000\], VM \[0x0\+0x20000000\]/);

  const cut = join(work, 'cut');
  mkdirSync(cut);
  copyFileSync(join(dir, 'state'), join(cut, 'state'));
  copyFileSync(join(dir, 'memory-0'), join(cut, 'memory-0'));
  truncateSync(join(cut, 'memory-0'), 1024 * 1024);
  const t = vmmArgs('cut', 1, '256M');
  const p2 = startVmm([...t.args, '-incoming', `file:${cut}`]);
  assert.equal((await p2.exited).code, 1);
  assert.match(p2.stderr, /memory file memory-0 is 1048576 bytes, the snapshot's region 268435456/);
});
