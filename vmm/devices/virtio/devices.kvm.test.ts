// virtio devices of capsule-vmm on real KVM with a real guest (the default image): disks read,
// written, read-only, flushed and hot-replaced over QMP; rng bytes at /dev/hwrng. The seccomp
// filter stays on (the VMM's default). Run by scripts/kvm-tests.sh.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync, truncateSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { probeKvm } from '../../../lib/kvm-probe.js';
import { ConsoleClient, killAllVmms, QmpClient, startVmm, testImage, waitForFile } from '../../testing/clients.js';

const BOOT_TIMEOUT = Number(process.env.CAPSULE_TEST_BOOT_TIMEOUT_MS ?? 240_000);
const work = mkdtempSync(join(tmpdir(), 'capsule-virtio-test-'));
let img: Awaited<ReturnType<typeof testImage>>;

before(async () => {
  const p = probeKvm();
  assert.ok(p.available, `KVM is not usable here: ${p.reason}`);
  img = await testImage();
});
after(() => killAllVmms());

const md5 = (b: Uint8Array): string => createHash('md5').update(b).digest('hex');

/** QMP getfd from another process, as a management layer sends it (python3 socket.send_fds). */
function sendFd(qmpPath: string, name: string, file: string): string {
  const py = `
import json, os, socket, sys
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); f = s.makefile('r'); f.readline()
s.sendall(b'{"execute":"qmp_capabilities"}\\n'); f.readline()
fd = os.open(sys.argv[3], os.O_RDWR)
socket.send_fds(s, [json.dumps({"execute": "getfd", "arguments": {"fdname": sys.argv[2]}}).encode() + b"\\n"], [fd])
print(f.readline().strip())`;
  const r = spawnSync('python3', ['-c', py, qmpPath, name, file], { encoding: 'utf8', timeout: 20_000 });
  return `${r.stdout}${r.stderr}`;
}

describe('virtio devices on KVM', { concurrency: false }, () => {
  test('disks: read what the host wrote, write back (aio=threads: the threadpool engine), read-only refused (served on an iothread), hot-replace with DEVICE_DELETED; rng', async () => {
    const data = join(work, 'data.img');
    const content = randomBytes(4 << 20);
    writeFileSync(data, content);
    const ro = join(work, 'ro.img');
    const roContent = randomBytes(1 << 20);
    writeFileSync(ro, roContent);
    const hot = join(work, 'hot.img');
    writeFileSync(hot, Buffer.alloc(0));
    truncateSync(hot, 2 << 20);
    const hotContent = randomBytes(4096);
    writeFileSync(hot, hotContent, { flag: 'r+' });

    const qmpPath = join(work, 'vm.qmp');
    const conPath = join(work, 'vm.console');
    const vmm = startVmm(['-kernel', img.kernel, '-initrd', img.initrd, '-append', img.cmdline, '-smp', '1', '-m', '256M',
      '-api-channel', `unix:${qmpPath}`, '-chardev', `id=console0,path=${conPath}`,
      '-drive', `id=data,file=${data},serial=capsule-data,aio=threads`,
      '-iothread', 'id=io1',
      '-drive', `id=ro,file=${ro},readonly=on,iothread=io1`,
      '-rng', 'random_file=/dev/urandom',
      '-hotplug-slots', '1'], { CAPSULE_LOG_LEVEL: 'info' });
    await waitForFile(qmpPath, 60_000);
    const con = await ConsoleClient.connect(conPath);
    const q = await QmpClient.connect(qmpPath);
    await con.waitFor(/CAPSULE_READY/, BOOT_TIMEOUT);
    await con.waitFor(/capsule# /, 60_000);

    // the guest found the disks in DSDT order: vda (data), vdb (ro), vdc (the empty hot slot)
    const sizes = await con.run('cat /sys/block/vda/size /sys/block/vdb/size /sys/block/vdc/size');
    assert.deepEqual(sizes.out.trim().split(/\s+/), [String(8192), String(2048), '0'], sizes.out);
    const before = (await q.execute('query-virtio')) as { exits: number; devices: Array<{ id: string; transport: { notifications: number }; metrics: { reads: number } }> };
    const sum = await con.run('md5sum /dev/vda');
    assert.match(sum.out, new RegExp(md5(content)), 'guest reads exactly what the host wrote');
    const after = (await q.execute('query-virtio')) as typeof before;
    const dev = (v: typeof before) => v.devices.find((d) => d.id === 'data')!;
    const reads = dev(after).metrics.reads - dev(before).metrics.reads;
    const notes = dev(after).transport.notifications - dev(before).transport.notifications;
    assert.ok(reads > 0 && notes > 0, 'reads were notified');
    process.stdout.write(`# 4 MiB read: ${reads} requests, ${notes} notifications (ioeventfd), ${after.exits - before.exits} exits in all (${((after.exits - before.exits) / reads).toFixed(2)} per request; console typing and interrupt acks included)\n`);
    const serial = await con.run('cat /sys/block/vda/serial');
    assert.match(serial.out, /capsule-data/);

    // write a marker at sector 100, flush, read it back on the host after power-off
    const w = await con.run('printf CAPSULE_WROTE_THIS > /tmp/m && dd if=/tmp/m of=/dev/vda bs=512 seek=100 conv=notrunc 2>/dev/null && sync && echo written');
    assert.match(w.out, /written/);

    // the read-only disk is served on the iothread
    assert.match((await con.run('md5sum /dev/vdb')).out, new RegExp(md5(roContent)), 'the iothread serves vdb');
    // read-only: the guest sees it and cannot write
    assert.equal((await con.run('cat /sys/block/vdb/ro')).out.trim(), '1');
    const roWrite = await con.run('dd if=/dev/zero of=/dev/vdb bs=512 count=1 2>&1');
    assert.notEqual(roWrite.status, 0, `write to a read-only disk succeeded: ${roWrite.out}`);

    // rng
    const rng = await con.run('cat /sys/class/misc/hw_random/rng_current; head -c 4096 /dev/hwrng | wc -c');
    assert.match(rng.out, /virtio_rng/);
    assert.match(rng.out, /\b4096\b/);

    // hot-replace: errors first (nothing attached by them), then a real attach. Under the seccomp
    // filter a path cannot be opened (a clear error, the VMM lives); the image comes as an fd.
    const byPath = await q.call('blockdev-add', { 'node-name': 'hot0', file: { driver: 'file', filename: hot } });
    assert.match(JSON.stringify(byPath.error), /Could not open.*getfd/);
    const noFd = await q.call('blockdev-add', { 'node-name': 'hot0', file: { driver: 'file', filename: 'fd:nope' } });
    assert.match(JSON.stringify(noFd.error), /not found/);
    assert.match(sendFd(qmpPath, 'hotimg', hot), /"return": ?\{\}/);
    await q.execute('blockdev-add', { 'node-name': 'hot0', file: { driver: 'file', filename: 'fd:hotimg' }, cache: { direct: false }, 'read-only': false });
    const badAddr = await q.call('device_add', { id: 'hot0', driver: 'virtio-blk-mmio', addr: '0x5' });
    assert.match(JSON.stringify(badAddr.error), /out of range/);
    const badId = await q.call('device_add', { id: 'nope', driver: 'virtio-blk-mmio', addr: '0x0' });
    assert.match(JSON.stringify(badId.error), /blockdev-add it first/);
    await q.execute('device_add', { id: 'hot0', driver: 'virtio-blk-mmio', addr: '0x0' });
    const grown = await con.run('for i in 1 2 3 4 5 6 7 8 9 10; do s=$(cat /sys/block/vdc/size); [ "$s" != 0 ] && break; sleep 0.5; done; echo size=$s');
    assert.match(grown.out, /size=4096/);
    const hotSum = await con.run('head -c 4096 /dev/vdc | md5sum');
    assert.match(hotSum.out, new RegExp(md5(hotContent)));
    const del = await q.call('device_del', { id: 'hot0' });
    assert.deepEqual(del.return, {});
    const ev = await q.event('DEVICE_DELETED');
    assert.deepEqual(ev.data, { device: 'hot0', path: 'fd:hotimg' });
    const gone = await q.call('device_del', { id: 'hot0' });
    assert.match(JSON.stringify(gone.error), /not found/);
    const shrunk = await con.run('for i in 1 2 3 4 5 6 7 8 9 10; do s=$(cat /sys/block/vdc/size); [ "$s" = 0 ] && break; sleep 0.5; done; echo size=$s');
    assert.match(shrunk.out, /size=0/);

    con.type('poweroff\n');
    const exit = await vmm.exited;
    assert.equal(exit.code, 0, vmm.stderr);
    const onDisk = readFileSync(data);
    assert.equal(onDisk.subarray(100 * 512, 100 * 512 + 18).toString(), 'CAPSULE_WROTE_THIS');
    assert.equal(md5(readFileSync(ro)), md5(roContent), 'read-only image unchanged');
    q.close();
    con.close();
  });
});
