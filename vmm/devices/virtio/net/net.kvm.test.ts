// virtio-net of capsule-vmm on real KVM with a real guest (the default image, busybox ip/ping/nc)
// and real taps, all inside a network namespace of the test's own (nothing touches the host's
// network): ping both ways, 1 MiB TCP streams both ways checked by md5, the MAC from the command
// line, a NIC hot-replaced over QMP with a tap passed as an fd, DEVICE_DELETED, a NIC on an
// iothread (the same exchange, before and after a driver reset); and a quick
// guest -> host throughput figure, userspace and (where /dev/vhost-net exists) vhost-net.
// The seccomp filter stays on (the VMM's default). Run by scripts/kvm-tests.sh (needs root).
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { fileURLToPath } from 'node:url';
import { probeKvm } from '../../../../lib/kvm-probe.js';
import { ConsoleClient, killAllVmms, QmpClient, startVmm, testImage, waitForFile } from '../../../testing/clients.js';

const BOOT_TIMEOUT = Number(process.env.CAPSULE_TEST_BOOT_TIMEOUT_MS ?? 240_000);
const NS = `capsule-net-${process.pid}`;
const MAC = '52:54:00:c5:0a:01';
const PEER = fileURLToPath(new URL('./net-peer.js', import.meta.url));
const work = mkdtempSync(join(tmpdir(), 'capsule-net-test-'));
let img: Awaited<ReturnType<typeof testImage>>;

function sh(cmd: string, args: string[]): { ok: boolean; out: string } {
  const r = spawnSync(cmd, args, { encoding: 'utf8', timeout: 30_000 });
  return { ok: r.status === 0, out: `${r.stdout ?? ''}${r.stderr ?? ''}` };
}
const inNs = (...args: string[]): { ok: boolean; out: string } => sh('ip', ['netns', 'exec', NS, ...args]);
function must(r: { ok: boolean; out: string }, what: string): string {
  assert.ok(r.ok, `${what}: ${r.out}`);
  return r.out;
}

/** A node net-peer.js process in the namespace; resolves with its JSON result line. */
function peer(args: string[]): { ready: Promise<void>; result: Promise<Record<string, unknown>>; kill(): void } {
  const child = spawn('ip', ['netns', 'exec', NS, process.execPath, PEER, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  let readyResolve: () => void = () => {};
  const ready = new Promise<void>((r) => { readyResolve = r; });
  child.stdout.setEncoding('utf8').on('data', (d: string) => {
    out += d;
    if (out.includes('listening')) readyResolve();
  });
  child.stderr.setEncoding('utf8').on('data', (d: string) => (err += d));
  const result = new Promise<Record<string, unknown>>((resolve, reject) => {
    child.once('exit', (code) => {
      const line = out.split('\n').find((l) => l.startsWith('{'));
      if (line) resolve(JSON.parse(line) as Record<string, unknown>);
      else reject(new Error(`net-peer ${args.join(' ')} exited ${code}: ${out}${err}`));
    });
  });
  return { ready, result, kill: () => child.kill('SIGTERM') };
}

/** QMP getfd of a tap opened in the namespace (python3: TUNSETIFF IFF_TAP|IFF_NO_PI|IFF_VNET_HDR), as a management layer does. */
function sendTapFd(qmpPath: string, name: string, tap: string): string {
  const py = `
import fcntl, json, os, socket, struct, sys
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); f = s.makefile('r'); f.readline()
s.sendall(b'{"execute":"qmp_capabilities"}\\n'); f.readline()
fd = os.open('/dev/net/tun', os.O_RDWR)
fcntl.ioctl(fd, 0x400454ca, struct.pack('16sH22x', sys.argv[3].encode(), 0x0002 | 0x1000 | 0x4000))
socket.send_fds(s, [json.dumps({"execute": "getfd", "arguments": {"fdname": sys.argv[2]}}).encode() + b"\\n"], [fd])
print(f.readline().strip())`;
  const r = spawnSync('ip', ['netns', 'exec', NS, 'python3', '-c', py, qmpPath, name, tap], { encoding: 'utf8', timeout: 20_000 });
  return `${r.stdout}${r.stderr}`;
}

const md5 = (b: Uint8Array): string => createHash('md5').update(b).digest('hex');

interface Vm { q: QmpClient; con: ConsoleClient; qmpPath: string; exited: Promise<{ code: number | null }>; stderr: () => string; kill(): void }

async function boot(name: string, netdev: string, extra: string[] = []): Promise<Vm> {
  const qmpPath = join(work, `${name}.qmp`);
  const conPath = join(work, `${name}.console`);
  const vmm = startVmm(['-kernel', img.kernel, '-initrd', img.initrd, '-append', img.cmdline, '-smp', '1', '-m', '256M',
    '-api-channel', `unix:${qmpPath}`, '-chardev', `id=console0,path=${conPath}`, '-netdev', netdev, ...extra],
  { CAPSULE_LOG_LEVEL: 'info' }, ['ip', 'netns', 'exec', NS]);
  await waitForFile(qmpPath, 60_000);
  const con = await ConsoleClient.connect(conPath);
  const q = await QmpClient.connect(qmpPath);
  await con.waitFor(/CAPSULE_READY/, BOOT_TIMEOUT);
  await con.waitFor(/capsule# /, 60_000);
  return { q, con, qmpPath, exited: vmm.exited, stderr: () => vmm.stderr, kill: () => vmm.child.kill('SIGKILL') };
}

async function powerOff(vm: Vm): Promise<void> {
  vm.con.type('poweroff\n');
  const exit = await vm.exited;
  assert.equal(exit.code, 0, vm.stderr());
  vm.q.close();
  vm.con.close();
}

/** guest -> host: `count` x 64 KiB of zeros through nc, timed on the host side (first byte to EOF). */
async function throughput(vm: Vm, port: number, count = TP_CHUNKS): Promise<{ mbps: number; bytes: number; ms: number }> {
  const sink = peer(['sink', '10.0.2.1', String(port)]);
  await sink.ready;
  try {
    const r = await vm.con.run(`dd if=/dev/zero bs=64k count=${count} 2>/dev/null | nc 10.0.2.1 ${port}`, 180_000);
    assert.equal(r.status, 0, r.out);
  } catch (e) {
    sink.kill();
    const partial = await sink.result.catch((x: Error) => x.message);
    const m = await vm.q.call('x-query-net-metrics');
    throw new Error(`${(e as Error).message}; host got ${JSON.stringify(partial)}; device ${JSON.stringify(m.return)}`);
  }
  const res = await sink.result as { bytes: number; ms: number };
  assert.equal(res.bytes, 64 * 1024 * count);
  return { bytes: res.bytes, ms: res.ms, mbps: res.bytes / 1e6 / (res.ms / 1000) };
}

/** 1 MiB of random bytes host -> guest into busybox nc on `port`; checks the guest's md5. */
async function mibToGuest(vm: Vm, port: number, tag: string): Promise<void> {
  const bytes = randomBytes(1 << 20);
  const file = join(work, `to-guest-${tag}.bin`);
  writeFileSync(file, bytes);
  vm.con.type(`nc -l -p ${port} </dev/null >/tmp/x &\n`);
  const sent = await peer(['send', '10.0.2.2', String(port), file]).result;
  assert.equal(sent.sent, 1 << 20, JSON.stringify(sent));
  const sum = await vm.con.run('sleep 1; wait; wc -c </tmp/x; md5sum /tmp/x');
  assert.match(sum.out, /\b1048576\b/, sum.out);
  assert.match(sum.out, new RegExp(md5(bytes)), `${tag}: the guest got exactly the host's bytes`);
}

/** 1 MiB of the guest's random bytes guest -> host (a sink on `port`); checks the host's md5; returns the ms it took. */
async function mibToHost(vm: Vm, port: number, tag: string): Promise<number> {
  const sink = peer(['sink', '10.0.2.1', String(port)]);
  await sink.ready;
  const g = await vm.con.run(`head -c 1048576 /dev/urandom >/tmp/y && md5sum /tmp/y && nc 10.0.2.1 ${port} </tmp/y`);
  assert.equal(g.status, 0, g.out);
  const got = await sink.result;
  assert.equal(got.bytes, 1 << 20);
  assert.match(g.out, new RegExp(String(got.md5)), `${tag}: the host got exactly the guest's bytes`);
  return got.ms as number;
}

/** throughput runs: 8 MiB guest -> host, the same for userspace and vhost */
const TP_CHUNKS = 128;
const t0 = Date.now();
const step = (what: string): void => console.log(`[${((Date.now() - t0) / 1000).toFixed(1)} s] ${what}`);

before(async () => {
  const p = probeKvm();
  assert.ok(p.available, `KVM is not usable here: ${p.reason}`);
  img = await testImage();
  // the lab's L1 loads only what KVM and 9p need; its /lib/modules is the host's
  if (!existsSync('/dev/net/tun')) sh('modprobe', ['tun']);
  if (!existsSync('/dev/vhost-net')) sh('modprobe', ['vhost_net']);
  assert.ok(existsSync('/dev/net/tun'), 'no /dev/net/tun (modprobe tun failed)');
  must(sh('ip', ['netns', 'add', NS]), 'ip netns add');
  must(inNs('ip', 'link', 'set', 'lo', 'up'), 'lo up');
  for (const [tap, addr] of [['tap0', '10.0.2.1/24'], ['tap1', '10.0.3.1/24']] as const) {
    must(inNs('ip', 'tuntap', 'add', 'dev', tap, 'mode', 'tap'), `tuntap add ${tap}`);
    must(inNs('ip', 'addr', 'add', addr, 'dev', tap), `addr ${tap}`);
    must(inNs('ip', 'link', 'set', tap, 'up'), `up ${tap}`);
  }
});
after(() => {
  killAllVmms();
  sh('ip', ['netns', 'del', NS]);
});

describe('virtio-net on KVM', { concurrency: false }, () => {
  test('ping both ways, 1 MiB TCP both ways (md5), MAC, hot-replace a NIC with a tap fd, DEVICE_DELETED', async () => {
    const vm = await boot('vm', `id=net0,netdev=tap0,mac=${MAC}`, ['-hotplug-slots', '1']);
    try {
      step('booted');
      const { con, q } = vm;
      // eth0 is -netdev net0 (its MAC), eth1 the replaceable slot (link down, no tap)
      const macs = await con.run('cat /sys/class/net/eth0/address /sys/class/net/eth1/address');
      assert.equal(macs.out.trim().split('\n')[0], MAC, macs.out);
      const up = await con.run('ip addr add 10.0.2.2/24 dev eth0 && ip link set eth0 up && ping -c 3 -W 5 10.0.2.1');
      assert.equal(up.status, 0, `guest -> host ping: ${up.out}`);
      assert.match(up.out, /3 packets received/);
      const back = inNs('busybox', 'ping', '-c', '3', '-W', '5', '10.0.2.2');
      assert.ok(back.ok, `host -> guest ping: ${back.out}`);
      assert.match(must(inNs('ip', 'neigh', 'show', '10.0.2.2'), 'neigh'), new RegExp(MAC));

      step('pings done');
      await mibToGuest(vm, 5000, 'main thread');
      step('1 MiB host -> guest');
      step(`1 MiB guest -> host in ${await mibToHost(vm, 5001, 'main thread')} ms`);

      // hot-replace: the path form is refused under the seccomp filter, the fd form works
      const byName = await q.call('netdev_add', { id: 'hnet0', ifname: 'tap1' });
      assert.match(JSON.stringify(byName.error), /seccomp.*getfd/, JSON.stringify(byName));
      assert.match(sendTapFd(vm.qmpPath, 'tap1fd', 'tap1'), /"return": ?\{\}/);
      await con.run('ip addr add 10.0.3.2/24 dev eth1; ip link set eth1 up');
      assert.equal((await con.run('cat /sys/class/net/eth1/carrier')).out.trim(), '0', 'no tap: no carrier');
      await q.execute('netdev_add', { id: 'hnet0', fd: 'tap1fd' });
      await q.execute('device_add', { id: 'hnet0', driver: 'virtio-net-mmio', addr: '0x0' });
      const carrier = await con.run('for i in $(seq 20); do [ "$(cat /sys/class/net/eth1/carrier)" = 1 ] && break; sleep 0.5; done; cat /sys/class/net/eth1/carrier');
      assert.equal(carrier.out.trim(), '1', 'link up after device_add');
      const ping1 = await con.run('ping -c 3 -W 5 10.0.3.1');
      assert.equal(ping1.status, 0, `ping over the hot-replaced NIC: ${ping1.out}`);
      const del = await q.call('device_del', { id: 'hnet0' });
      assert.deepEqual(del.return, {});
      const ev = await q.event('DEVICE_DELETED');
      assert.deepEqual(ev.data, { device: 'hnet0', path: 'hnet0' });
      const down = await con.run('for i in $(seq 20); do [ "$(cat /sys/class/net/eth1/carrier)" = 0 ] && break; sleep 0.5; done; cat /sys/class/net/eth1/carrier');
      assert.equal(down.out.trim(), '0', 'link down after device_del');
      // the first NIC is unaffected
      assert.equal((await con.run('ping -c 1 -W 5 10.0.2.1')).status, 0);

      step('hot-replace done');
      await powerOff(vm);
    } finally {
      vm.kill();
    }
  });

  test('iothread=: frames move on an iothread; ping and 1 MiB each way (md5), again after the driver unbinds and rebinds', async () => {
    // -D: the log (info) on stderr, where a reset the iothread did not acknowledge would be warned of
    const vm = await boot('io', `id=net0,netdev=tap0,mac=${MAC},iothread=io0`, ['-iothread', 'id=io0', '-hotplug-slots', '0', '-D']);
    try {
      step('iothread VM booted');
      const { con, q } = vm;
      const exchange = async (round: string): Promise<void> => {
        const up = await con.run('ip addr add 10.0.2.2/24 dev eth0 2>/dev/null; ip link set eth0 up && ping -c 3 -W 5 10.0.2.1');
        assert.equal(up.status, 0, `${round}: guest -> host ping: ${up.out}\n${vm.stderr()}`);
        assert.ok(inNs('busybox', 'ping', '-c', '2', '-W', '5', '10.0.2.2').ok, `${round}: host -> guest ping`);
        await mibToGuest(vm, 5000, `iothread, ${round}`);
        await mibToHost(vm, 5001, `iothread, ${round}`);
        step(`iothread NIC, ${round}: pings and 1 MiB each way`);
      };
      await exchange('first driver');
      // the counters the iothread keeps reach QMP on the main thread; the transport (main thread)
      // raised no interrupt itself: the frames and their interrupts were the iothread's
      const [m] = (await q.execute('x-query-net-metrics')) as Array<Record<string, number>>;
      assert.ok((m?.txBytes ?? 0) >= 1 << 20 && (m?.rxBytes ?? 0) >= 1 << 20, JSON.stringify(m));
      assert.equal(m?.interrupts, 0, JSON.stringify(m));
      // unbind: the driver resets the device (the main thread waits for the iothread to let go of
      // the rings); bind: a new activation with new rings
      const dev = (await con.run('basename $(readlink /sys/class/net/eth0/device)')).out.trim();
      assert.match(dev, /^virtio\d+$/, dev);
      const rebind = await con.run(`echo ${dev} > /sys/bus/virtio/drivers/virtio_net/unbind && echo ${dev} > /sys/bus/virtio/drivers/virtio_net/bind && sleep 1 && ls /sys/class/net`);
      assert.equal(rebind.status, 0, rebind.out);
      assert.match(rebind.out, /eth0/);
      await exchange('after a rebind');
      assert.doesNotMatch(vm.stderr(), /did not acknowledge the reset/, 'the unbind\'s reset was acknowledged');
      await powerOff(vm);
    } finally {
      vm.kill();
    }
  });

  test('throughput, userspace: guest -> host and host -> guest TCP, with the counters that explain it', async () => {
    const vm = await boot('tp', `id=net0,netdev=tap0,mac=${MAC}`, ['-hotplug-slots', '0']);
    try {
      const { con, q } = vm;
      const up = await con.run('ip addr add 10.0.2.2/24 dev eth0 && ip link set eth0 up && ping -c 5 -W 5 10.0.2.1');
      assert.equal(up.status, 0, up.out);
      console.log(`guest ping: ${up.out.split('\n').filter((l) => /min\/avg|packets/.test(l)).join('; ')}`);
      const feats = await con.run('for d in /sys/bus/virtio/devices/*; do echo "$(cat $d/device) $(cat $d/features)"; done');
      console.log(`guest virtio features (device id, negotiated bits 0..): ${feats.out.trim().replace(/\n/g, ' | ')}`);
      const snmp = async (): Promise<string> => (await con.run("grep '^Tcp:' /proc/net/snmp | tail -1; grep -i virtio /proc/interrupts")).out.trim();
      const before = await snmp();
      const g = await throughput(vm, 5002);
      console.log(`virtio-net userspace, guest -> host TCP: ${g.mbps.toFixed(2)} MB/s (${g.bytes} bytes in ${g.ms} ms)`);
      console.log(`guest TCP/irqs before: ${before}\nafter: ${await snmp()}`);
      console.log(`device: ${JSON.stringify((await q.call('x-query-net-metrics')).return)}`);
      console.log(`host tap0: ${inNs('ip', '-s', 'link', 'show', 'tap0').out.replace(/\n\s*/g, ' ')}`);
      console.log(`host TCP: ${inNs('sh', '-c', "grep '^Tcp:' /proc/net/snmp | tail -1").out.trim()}`);
      // host -> guest: 2 MiB into the guest's nc, timed on the host (send to close)
      const file = join(work, 'tp.bin');
      writeFileSync(file, Buffer.alloc(2 << 20));
      con.type('nc -l -p 5003 </dev/null >/dev/null &\n');
      await new Promise((r) => setTimeout(r, 2000));
      const t1 = Date.now();
      await peer(['send', '10.0.2.2', '5003', file]).result;
      const ms = Date.now() - t1;
      console.log(`virtio-net userspace, host -> guest TCP: ${((2 << 20) / 1e6 / (ms / 1000)).toFixed(2)} MB/s (2 MiB in ${ms} ms)`);
      console.log(`device: ${JSON.stringify((await q.call('x-query-net-metrics')).return)}`);
      await powerOff(vm);
    } finally {
      vm.kill();
    }
  });

  test('vhost=on: the kernel moves the frames (ping, TCP both ways, throughput)', async (t) => {
    if (!existsSync('/dev/vhost-net')) {
      t.skip('no /dev/vhost-net here (modprobe vhost_net failed)');
      return;
    }
    // The nested lab's L1 kernel (Debian 6.1 under QEMU/TCG's emulated SVM) does not survive
    // vhost-net moving an L2 guest's frames: of 4 runs, 2 panicked (kernel stack overflow in
    // exc_page_fault, in a vCPU thread's KVM_RUN), 1 hung silently until the lab's timeout, 1
    // passed (16 MiB at 1.2 MB/s). Either way the whole lab run is lost, so this is opt-in;
    // vhost.kvm.test.ts covers vhost-net without a guest (passes in the lab; also opt-in).
    if (process.env.CAPSULE_TEST_VHOST !== '1') {
      t.skip('set CAPSULE_TEST_VHOST=1 (the nested lab\'s L1 kernel panics or hangs under vhost-net with an L2 guest)');
      return;
    }
    const vm = await boot('vhost', `id=net0,netdev=tap0,mac=${MAC},vhost=on`, ['-hotplug-slots', '0']);
    try {
      step('vhost VM booted');
      const { con } = vm;
      const up = await con.run('ip addr add 10.0.2.2/24 dev eth0 && ip link set eth0 up && ping -c 3 -W 5 10.0.2.1');
      assert.equal(up.status, 0, `guest -> host ping over vhost: ${up.out}\n${vm.stderr()}`);
      assert.ok(inNs('busybox', 'ping', '-c', '2', '-W', '5', '10.0.2.2').ok, 'host -> guest ping over vhost');
      const toGuest = randomBytes(1 << 20);
      const file = join(work, 'to-guest-vhost.bin');
      writeFileSync(file, toGuest);
      con.type('nc -l -p 5000 </dev/null >/tmp/x &\n');
      await peer(['send', '10.0.2.2', '5000', file]).result;
      const sum = await con.run('sleep 1; wait; md5sum /tmp/x');
      assert.match(sum.out, new RegExp(md5(toGuest)));
      const tp = await throughput(vm, 5003);
      console.log(`virtio-net vhost-net, guest -> host TCP: ${tp.mbps.toFixed(1)} MB/s (${tp.bytes} bytes in ${tp.ms} ms)`);
      await powerOff(vm);
    } finally {
      vm.kill();
    }
  });
});
