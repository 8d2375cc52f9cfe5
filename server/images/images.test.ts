// The guest images booted straight under QEMU/TCG (no server): the sandbox image on its
// read-only rootfs with a writable layer (persisted across boots, fresh per layer, in memory
// without one; the rootfs on virtio-blk or virtio-pmem with DAX), and the default image's
// vsock tool.
import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { closeSync, createReadStream, mkdtempSync, openSync, readFileSync, statSync, ftruncateSync, rmSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildImage } from './registry.js';
import { createWritableLayer } from './layer.js';
import { QemuGuest } from './qemu-guest.js';

const IMAGES = process.env.CAPSULE_TEST_IMAGES ?? '/tmp/capsule-test-images';
const READY = /CAPSULE_READY cpus=1 uptime=[\d.]+/;

interface ImageJson { kernel: string; initrd?: string; rootfs?: string; cmdline: string }
let sandbox: { dir: string; meta: ImageJson };
let work: string;

before(() => {
  // run-tests.mjs builds both images first; a single file run builds them here (cached).
  sandbox = { dir: buildImage(IMAGES, 'sandbox', 'ignore'), meta: {} as ImageJson };
  sandbox.meta = JSON.parse(readFileSync(join(sandbox.dir, 'image.json'), 'utf8'));
  buildImage(IMAGES, 'default', 'ignore');
  work = mkdtempSync(join(tmpdir(), 'capsule-images-test-'));
  process.on('exit', () => rmSync(work, { recursive: true, force: true }));
});

function sha256(file: string): Promise<string> {
  return new Promise((res, rej) => {
    const h = createHash('sha256');
    createReadStream(file).on('data', (d) => h.update(d)).on('end', () => res(h.digest('hex'))).on('error', rej);
  });
}

function bootSandbox(layer: string, opts: { extraCmdline?: string; net?: boolean } = {}): QemuGuest {
  const { dir, meta } = sandbox;
  return new QemuGuest({
    kernel: join(dir, meta.kernel), initrd: join(dir, meta.initrd!), cmdline: meta.cmdline + (opts.extraCmdline ?? ''),
    disks: [{ file: join(dir, meta.rootfs!), readOnly: true }, { file: layer }], net: opts.net ?? false,
  });
}

/** An HTTP server on the host's 127.0.0.1 (the guest's 10.0.2.2 on QEMU's user network). */
async function hostHttp(body: string): Promise<{ server: Server; port: number }> {
  const server = createServer((_req, res) => res.end(body));
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return { server, port: (server.address() as { port: number }).port };
}

test('sandbox image: image.json declares the rootfs and the overlay cmdline; the rootfs is ext4 without a journal', () => {
  const { dir, meta } = sandbox;
  assert.equal(meta.rootfs, 'rootfs.ext4');
  assert.match(meta.cmdline, /(^| )root=\/dev\/vda( |$)/);
  assert.match(meta.cmdline, /(^| )capsule\.overlay=\/dev\/vdb( |$)/);
  const st = statSync(join(dir, 'rootfs.ext4'));
  assert.equal(st.size % (2 * 1024 * 1024), 0, 'a multiple of 2 MiB');
  assert.ok(st.blocks * 512 < st.size, 'sparse');
  const fs = execFileSync('dumpe2fs', ['-h', join(dir, 'rootfs.ext4')], { stdio: ['ignore', 'pipe', 'ignore'] }).toString();
  assert.match(fs, /Filesystem volume name:\s+capsule-root/);
  assert.doesNotMatch(fs, /has_journal/);
  // The guest agent and the account commands run as (docs/agent.md).
  const debugfs = (cmd: string) => execFileSync('debugfs', ['-R', cmd, join(dir, 'rootfs.ext4')], { stdio: ['ignore', 'pipe', 'ignore'] }).toString();
  assert.match(debugfs('cat /etc/passwd'), /^user:x:1000:1000:[^:]*:\/home\/user:\/bin\/bash$/m);
  assert.match(debugfs('stat /home/user'), /Type: directory[\s\S]*User:\s+1000\s+Group:\s+1000/);
  assert.match(debugfs('cat /usr/lib/capsule/capsule-agent.cjs'), /^#!\/usr\/bin\/env node/);
});

test('sandbox image: python3 and node run; the layer persists across boots, a fresh one is empty; pmem root with DAX; the rootfs is unchanged', async () => {
  const rootfs = join(sandbox.dir, sandbox.meta.rootfs!);
  const sumBefore = await sha256(rootfs);
  const layer = join(work, 'layer-a.ext4');
  const t0 = Date.now();
  createWritableLayer(layer, 1024 * 1024 * 1024);
  const mkfsMs = Date.now() - t0;
  assert.ok(statSync(layer).blocks * 512 < 8 * 1024 * 1024, 'the formatted layer stays sparse (< 8 MiB used)');

  // Boot 1: run things, write a file, power off from inside (busybox poweroff -> PID 1).
  const token = `persist-${process.pid}-${Date.now()}`;
  let g = bootSandbox(layer);
  try {
    await g.ready(READY);
    assert.equal((await g.run("python3 -c 'print(6*7)'")).trim(), '42');
    assert.equal((await g.run("NO_COLOR=1 node -e 'console.log(6*7+1)' | cat")).trim(), '43');
    const boot = await g.run('cat /run/capsule/boot');
    assert.match(boot, /CAPSULE_ROOT=\/dev\/vda\n/);
    assert.match(boot, /CAPSULE_LAYER=\/dev\/vdb\n/);
    const mounts = await g.run('cat /proc/mounts');
    assert.match(mounts, /^overlay \/ overlay rw/m);
    assert.match(mounts, /^\/dev\/vda \/run\/capsule\/lower ext4 ro/m);
    assert.match(mounts, /^\/dev\/vdb \/run\/capsule\/layer ext4 rw/m);
    await g.run(`echo ${token} > /root/persisted.txt; rm /etc/hostname; sync`);
    assert.equal((await g.run('vsock-tool; echo rc=$?')).trim().split('\n').pop(), 'rc=2', 'vsock-tool is on the PATH');
    g.run('poweroff').catch(() => { /* the guest goes away */ });
    assert.equal(await g.exited, 0, 'poweroff ends QEMU');
  } finally {
    g.kill();
  }

  // Boot 2, same layer: the file is there (and the deleted one stays deleted); end with the
  // ACPI power button (what the server's clean stop sends).
  g = bootSandbox(layer);
  try {
    await g.ready(READY);
    assert.equal((await g.run('cat /root/persisted.txt')).trim(), token);
    assert.equal((await g.run('test -e /etc/hostname && echo present || echo gone')).trim(), 'gone');
    await g.qmp('system_powerdown');
    await g.waitFor('capsule: power button');
    assert.equal(await g.exited, 0, 'the power button powers off');
  } finally {
    g.kill();
  }

  // Boot 3, a blank layer (a sparse file of zeros): the guest formats it; the file is absent.
  const blank = join(work, 'layer-b.img');
  const fd = openSync(blank, 'wx');
  ftruncateSync(fd, 64 * 1024 * 1024);
  closeSync(fd);
  const http = await hostHttp('hello-from-host');
  g = bootSandbox(blank, { extraCmdline: ' capsule.ip=10.0.2.15/24,10.0.2.2,10.0.2.3', net: true });
  try {
    await g.ready(READY);
    assert.ok(g.output.includes('capsule: formatting the layer /dev/vdb'));
    // capsule.ip= (static) on virtio-net: curl reaches the host.
    assert.equal((await g.run(`curl -s http://10.0.2.2:${http.port}/`)).trim(), 'hello-from-host');
    assert.equal((await g.run('cat /etc/resolv.conf')).trim(), 'nameserver 10.0.2.3');
    assert.equal((await g.run('test -e /root/persisted.txt && echo present || echo absent')).trim(), 'absent');
    assert.equal((await g.run('cat /etc/hostname')).trim(), 'capsule');
    g.run('reboot').catch(() => { /* the guest goes away */ });
    assert.equal(await g.exited, 0, 'reboot ends QEMU under -no-reboot');
  } finally {
    g.kill();
    http.server.close();
  }
  const header = execFileSync('dumpe2fs', ['-h', blank], { stdio: ['ignore', 'pipe', 'ignore'] }).toString();
  assert.match(header, /Filesystem volume name:\s+capsule-layer/, 'the guest formatted the blank layer');
  assert.match(header, /Filesystem features:.*has_journal/, 'as ext4 with a journal (the root\'s mke2fs)');

  // Boot 4, the rootfs as a virtio-pmem device (root=/dev/pmem0, mounted with DAX) and no
  // layer: writes go to a tmpfs.
  g = new QemuGuest({
    kernel: join(sandbox.dir, sandbox.meta.kernel), initrd: join(sandbox.dir, sandbox.meta.initrd!),
    cmdline: sandbox.meta.cmdline.replace(/ ?capsule\.overlay=\S+/, '').replace('root=/dev/vda', 'root=/dev/pmem0'), pmem: rootfs,
  });
  try {
    await g.ready(READY);
    const boot = await g.run('cat /run/capsule/boot');
    assert.match(boot, /CAPSULE_ROOT=\/dev\/pmem0 dax\n/);
    assert.match(boot, /CAPSULE_LAYER=tmpfs\n/);
    assert.match(await g.run('cat /proc/mounts'), /^\/dev\/pmem0 \/run\/capsule\/lower ext4 ro,.*dax/m);
    assert.equal((await g.run("echo x > /root/y && cat /root/y && python3 -c 'print(6*7)'")).trim(), 'x\n42');
    g.run('poweroff').catch(() => { /* the guest goes away */ });
    assert.equal(await g.exited, 0);
  } finally {
    g.kill();
  }

  assert.equal(await sha256(rootfs), sumBefore, 'the rootfs is never written');
  console.log(`host mkfs.ext4 of a 1 GiB layer: ${mkfsMs} ms`);
});

test('a layer that is neither ext4 nor blank is refused, not formatted', async () => {
  const junk = join(work, 'layer-junk.img');
  const fd = openSync(junk, 'wx');
  ftruncateSync(fd, 32 * 1024 * 1024);
  closeSync(fd);
  execFileSync('sh', ['-c', `printf 'user data' | dd of=${junk} conv=notrunc status=none`]);
  const g = bootSandbox(junk);
  try {
    await g.waitFor(/holds no ext2\/3\/4 filesystem and is not blank/);
    assert.equal(await g.exited, 0, 'the guest powers off');
  } finally {
    g.kill();
  }
  assert.equal(readFileSync(junk).subarray(0, 9).toString(), 'user data');
});

test('default image: the initramfs carries vsock-tool and the device modules; vsock over loopback; DHCP and HTTP over virtio-net', async () => {
  const dir = join(IMAGES, 'default');
  const list = execFileSync('sh', ['-c', `zcat ${join(dir, 'initramfs.cpio.gz')} | cpio -t --quiet`]).toString().split('\n');
  assert.ok(list.includes('bin/vsock-tool'));
  const order = execFileSync('sh', ['-c', `zcat ${join(dir, 'initramfs.cpio.gz')} | cpio -i --quiet --to-stdout lib/modules/load-order`]).toString().trim().split('\n');
  const want = ['virtio_ring', 'virtio', 'virtio_mmio', 'virtio_pci', 'virtio_blk', 'failover', 'net_failover', 'virtio_net', 'virtio-rng',
    'virtio_balloon', 'virtio_console', 'virtio_pmem', 'nfit', 'nd_pmem', 'vsock', 'vmw_vsock_virtio_transport_common', 'vmw_vsock_virtio_transport'];
  const at = want.map((m) => order.indexOf(m));
  assert.ok(at.every((i) => i >= 0), `all of ${want.join(' ')} in ${order.join(' ')}`);
  assert.deepEqual(at, [...at].sort((a, b) => a - b), 'in this order');
  for (const m of order) assert.ok(list.includes(`lib/modules/${m}.ko`), m);

  const meta = JSON.parse(readFileSync(join(dir, 'image.json'), 'utf8')) as ImageJson;
  const http = await hostHttp('hello-default');
  const g = new QemuGuest({ kernel: join(dir, meta.kernel), initrd: join(dir, meta.initrd!), cmdline: `${meta.cmdline} capsule.ip=dhcp`, memoryMiB: 256, net: true });
  try {
    await g.ready(READY);
    // capsule.ip=dhcp: udhcpc (busybox) and its event script configure eth0 and the route.
    await g.run('for i in $(seq 50); do ip -4 addr show eth0 | grep -q 10.0.2.15 && break; sleep 0.2; done');
    assert.match(await g.run('ip -4 addr show eth0; ip route'), /inet 10\.0\.2\.15\/24[\s\S]*default via 10\.0\.2\.2/);
    assert.equal((await g.run(`wget -qO- http://10.0.2.2:${http.port}/`)).trim(), 'hello-default');
    assert.equal((await g.run('(vsock-tool listen -e 5000 &); sleep 0.5; echo hello-vsock | vsock-tool connect 1 5000')).trim(), 'hello-vsock');
    await g.qmp('system_powerdown');
    assert.equal(await g.exited, 0);
  } finally {
    g.kill();
    http.server.close();
  }
});
