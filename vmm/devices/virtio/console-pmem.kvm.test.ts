// virtio-console and virtio-pmem on real KVM with the default image, seccomp on (one boot):
// - console: `echo > /dev/hvc0` reaches a client of the -chardev socket; 64 KiB of host bytes are
//   read by `head -c` from /dev/hvc0 (raw tty) with the right checksum; 256 KiB the guest writes
//   arrive intact.
// - pmem: an ext4 image made with `mkfs.ext4 -d` is /dev/pmem0 in the guest, mounts read-only
//   (DAX when the guest allows it) and its file reads back right; a write to the device fails or
//   leaves the host file unchanged (KVM_MEM_READONLY).
// The default initramfs may not carry the pmem and ext4 modules: the test appends a second cpio
// archive with them (Linux unpacks concatenated archives) and insmods them in the guest.
// Run by scripts/kvm-tests.sh.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { execFileSync, spawnSync } from 'node:child_process';
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync, appendFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { tmpdir } from 'node:os';
import { probeKvm } from '../../../lib/kvm-probe.js';
import { connectUnix, ConsoleClient, killAllVmms, QmpClient, startVmm, testImage, waitFor, waitForFile } from '../../testing/clients.js';

const BOOT_TIMEOUT = Number(process.env.CAPSULE_TEST_BOOT_TIMEOUT_MS ?? 240_000);
const work = mkdtempSync(join(tmpdir(), 'capsule-con-pmem-test-'));
let img: Awaited<ReturnType<typeof testImage>>;
const md5 = (b: Uint8Array): string => createHash('md5').update(b).digest('hex');

before(async () => {
  const p = probeKvm();
  assert.ok(p.available, `KVM is not usable here: ${p.reason}`);
  img = await testImage();
});
after(() => killAllVmms());

/** The kernel release of the image (its modules must be this host's, as build-image.sh takes them). */
function kernelRelease(vmlinuz: string): string {
  const r = spawnSync('file', ['-b', vmlinuz], { encoding: 'utf8' });
  const m = /version (\S+)/.exec(r.stdout ?? '');
  if (m) return m[1] as string;
  return execFileSync('uname', ['-r'], { encoding: 'utf8' }).trim();
}

/** initrd + a cpio with the modules `mods` need, in load order, under /extra (listed in /extra/order). */
function initrdWithModules(initrd: string, mods: string[]): string {
  const kver = kernelRelease(img.kernel);
  const root = join(work, 'extra-root');
  mkdirSync(join(root, 'extra'), { recursive: true });
  const order: string[] = [];
  for (const m of mods) {
    const deps = execFileSync('modprobe', ['-S', kver, '--show-depends', m], { encoding: 'utf8' });
    for (const line of deps.split('\n')) {
      const ko = /^insmod (\S+)/.exec(line)?.[1];
      if (!ko) continue;
      const name = basename(ko).replace(/\.ko(\.xz|\.zst)?$/, '');
      if (order.includes(name)) continue;
      order.push(name);
      const out = join(root, 'extra', `${name}.ko`);
      if (ko.endsWith('.xz')) writeFileSync(out, execFileSync('xz', ['-dc', ko]));
      else if (ko.endsWith('.zst')) writeFileSync(out, execFileSync('zstd', ['-dcq', ko]));
      else copyFileSync(ko, out);
    }
  }
  writeFileSync(join(root, 'extra', 'order'), order.join('\n') + '\n');
  const cpio = execFileSync('sh', ['-c', 'cd "$0" && find extra | cpio -o -H newc --quiet | gzip -1', root], { maxBuffer: 256 << 20 });
  const out = join(work, 'initrd-extra.cpio.gz');
  copyFileSync(initrd, out);
  appendFileSync(out, cpio);
  return out;
}

test('virtio-console and virtio-pmem in one guest', { timeout: 900_000 }, async () => {
  // the pmem image: ext4 with one file, made without mounting anything
  const tree = join(work, 'tree');
  mkdirSync(join(tree, 'dir'), { recursive: true });
  const fileContent = randomBytes(300_000);
  writeFileSync(join(tree, 'dir', 'data.bin'), fileContent);
  writeFileSync(join(tree, 'hello.txt'), 'hello from pmem\n');
  const image = join(work, 'pmem.ext4');
  // 4 KiB blocks (DAX needs block size = page size); 10 MiB + a bit: the VMM pads to 12 MiB
  execFileSync('mkfs.ext4', ['-q', '-F', '-b', '4096', '-d', tree, '-L', 'capsulepmem', image, `${10 * 1024 + 4}k`], { stdio: 'pipe' });
  const imageMd5 = md5(readFileSync(image));
  const initrd = initrdWithModules(img.initrd, ['virtio_pmem', 'nd_pmem', 'ext4']);

  const qmpPath = join(work, 'vm.qmp');
  const conPath = join(work, 'vm.console');
  const hvcPath = join(work, 'hvc.sock');
  const vmm = startVmm(['-kernel', img.kernel, '-initrd', initrd, '-append', img.cmdline, '-smp', '1', '-m', '512M',
    '-api-channel', `unix:${qmpPath}`, '-chardev', `id=console0,path=${conPath}`,
    '-chardev', `id=vc0,path=${hvcPath}`, '-device', 'virtconsole,id=vcon0,chardev=vc0',
    '-device', `virtio-pmem,id=pmem0,file=${image}`], { CAPSULE_LOG_LEVEL: 'info' });
  await waitForFile(qmpPath, 60_000);
  const con = await ConsoleClient.connect(conPath);
  const q = await QmpClient.connect(qmpPath);
  const hvc = await connectUnix(hvcPath);
  const hvcBytes: Buffer[] = [];
  hvc.on('data', (d: Buffer) => hvcBytes.push(d));
  const hvcText = (): string => Buffer.concat(hvcBytes).toString('latin1');
  await con.waitFor(/CAPSULE_READY/, BOOT_TIMEOUT);
  await con.waitFor(/capsule# /, 60_000);

  // ---- virtio-console ----
  const dev = await con.run('ls /sys/bus/virtio/drivers/virtio_console/ | grep -c virtio; ls -l /dev/hvc0');
  assert.match(dev.out, /^1$/m, `virtio_console not bound: ${dev.out}`);
  assert.match(dev.out, /hvc0/);
  const echo = await con.run('echo hello-from-the-guest > /dev/hvc0');
  assert.equal(echo.status, 0, echo.out);
  await waitFor(() => /hello-from-the-guest/.test(hvcText()) || undefined, 30_000, 'guest output at the hvc socket');

  // host → guest: 64 KiB of random bytes through a raw tty
  const toGuest = randomBytes(64 * 1024);
  const rx = await con.run('rm -f /tmp/rx-ready; ((stty raw -echo && echo ok > /tmp/rx-ready; head -c 65536 > /tmp/in) <>/dev/hvc0 &) ; ' +
    'for i in $(seq 50); do [ -e /tmp/rx-ready ] && break; sleep 0.2; done; cat /tmp/rx-ready');
  assert.match(rx.out, /ok/, `the guest reader did not start: ${rx.out}`);
  hvc.write(toGuest);
  const got = await waitFor(async () => {
    const r = await con.run('wc -c < /tmp/in');
    return Number(r.out.trim()) >= toGuest.length ? r : undefined;
  }, 180_000, '64 KiB in the guest');
  assert.ok(got);
  const inSum = await con.run('md5sum /tmp/in');
  assert.match(inSum.out, new RegExp(md5(toGuest)), 'the guest read exactly what the host sent');

  // guest → host: 256 KiB through a raw tty
  hvcBytes.length = 0;
  const mk = await con.run('head -c 262144 /dev/urandom > /tmp/out && md5sum /tmp/out');
  const outSum = /^([0-9a-f]{32})/m.exec(mk.out)?.[1];
  assert.ok(outSum, mk.out);
  const tx = await con.run('(stty raw -echo && cat /tmp/out) <>/dev/hvc0 >&0', 180_000);
  assert.equal(tx.status, 0, tx.out);
  await waitFor(() => Buffer.concat(hvcBytes).length >= 262144 || undefined, 60_000, '256 KiB at the host');
  assert.equal(md5(Buffer.concat(hvcBytes).subarray(0, 262144)), outSum, 'the host got exactly what the guest wrote');

  // ---- virtio-pmem ----
  const mods = await con.run('for m in $(cat /extra/order); do insmod /extra/$m.ko 2>/dev/null; done; ' +
    'for i in $(seq 50); do [ -e /dev/pmem0 ] && break; sleep 0.2; done; ls -l /dev/pmem0; cat /sys/block/pmem0/size');
  assert.match(mods.out, /pmem0/, `no /dev/pmem0: ${mods.out}`);
  assert.equal(mods.out.trim().split('\n').pop(), String(12 * 1024 * 1024 / 512), 'the padded window: 12 MiB');
  const raw = await con.run(`head -c ${readFileSync(image).length} /dev/pmem0 | md5sum`);
  assert.match(raw.out, new RegExp(imageMd5), 'the guest reads the image byte for byte');
  const mnt = await con.run('mkdir -p /mnt && (mount -t ext4 -o ro,dax /dev/pmem0 /mnt 2>&1 && echo MOUNT=dax || ' +
    '(mount -t ext4 -o ro /dev/pmem0 /mnt 2>&1 && echo MOUNT=plain)); grep pmem0 /proc/mounts');
  assert.match(mnt.out, /MOUNT=(dax|plain)/, mnt.out);
  process.stderr.write(`pmem: mounted ${/MOUNT=(\w+)/.exec(mnt.out)?.[1]}: ${mnt.out.split('\n').filter((l) => l.includes('pmem0')).join(' ')}\n`);
  const files = await con.run('cat /mnt/hello.txt; md5sum /mnt/dir/data.bin');
  assert.match(files.out, /hello from pmem/);
  assert.match(files.out, new RegExp(md5(fileContent)), 'the file in the image reads back right');
  // the guest cannot change the image: writes to the read-only slot go nowhere
  await con.run('umount /mnt; dd if=/dev/zero of=/dev/pmem0 bs=4096 count=1 conv=notrunc 2>&1; sync');
  assert.equal(md5(readFileSync(image)), imageMd5, 'the host image is unchanged');

  con.type('poweroff\n');
  const exit = await vmm.exited;
  assert.equal(exit.code, 0, vmm.stderr);
  q.close();
  hvc.destroy();
  con.close();
});
