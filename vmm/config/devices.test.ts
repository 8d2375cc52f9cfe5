// Device option groups: the command-line and JSON forms of each give the same config, and the
// errors name the option and what it allows.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { buildConfig, ConfigError, type VmConfig } from './config.js';

const K = ['-kernel', '/k'];
const cli = (...args: string[]): VmConfig => buildConfig([...K, ...args]);
const json = (o: object, ...args: string[]): VmConfig =>
  buildConfig(['-config', 'vm.json', ...args], () => JSON.stringify({ 'boot-source': { kernel_image_path: '/k' }, ...o }));
const refuses = (args: string[], re: RegExp): void =>
  assert.throws(() => cli(...args), (e: Error) => e instanceof ConfigError && re.test(e.message), `${args.join(' ')} should fail with ${re}`);
const refusesJson = (o: object, re: RegExp): void =>
  assert.throws(() => json(o), (e: Error) => e instanceof ConfigError && re.test(e.message), `${JSON.stringify(o)} should fail with ${re}`);

test('no devices by default; four hot-replace slots', () => {
  const c = cli();
  assert.deepEqual([c.drives, c.nets, c.pmems, c.consoles, c.iothreads], [[], [], [], [], []]);
  assert.equal(c.vsock, undefined);
  assert.equal(c.rng, undefined);
  assert.equal(c.balloon, undefined);
  assert.equal(c.hotplugSlots, 4);
});

test('-drive and JSON drive', () => {
  const expected = [
    { id: 'rootfs', file: '/img/root', serial: '11111111', readOnly: true, direct: false, noFlush: true, iothread: 'io1', iops: 200, bps: 1048576, aio: 'inline' },
    { id: 'data', file: '/img/data', serial: undefined, readOnly: false, direct: false, noFlush: false, iothread: undefined, iops: undefined, bps: undefined, aio: 'threads' },
  ];
  const c = cli('-iothread', 'id=io1', '-drive', 'id=rootfs,file=/img/root,serial=11111111,readonly=on,direct=off,no-flush=on,iothread=io1,iops=200,bps=1048576',
    '-drive', 'id=data,file=/img/data,aio=threads');
  assert.deepEqual(c.drives, expected);
  const j = json({
    iothread: [{ id: 'io1' }],
    drive: [
      { drive_id: 'rootfs', path_on_host: '/img/root', serial_num: '11111111', read_only: true, direct: false, no_flush: true, iothread: 'io1', iops: 200, bps: 1048576 },
      { drive_id: 'data', path_on_host: '/img/data', aio: 'threads' },
    ],
  });
  assert.deepEqual(j.drives, expected);
  assert.equal(cli('-drive', 'id=d,file=rel/disk').drives[0]?.file, `${process.cwd()}/rel/disk`);
  // the engine by default: the threadpool on the main thread, one at a time on an iothread
  assert.equal(cli('-drive', 'id=d,file=/x').drives[0]?.aio, 'threads');
  assert.equal(cli('-drive', 'id=d,file=/x,aio=inline').drives[0]?.aio, 'inline');
  assert.equal(json({ iothread: [{ id: 'io1' }], drive: [{ drive_id: 'd', path_on_host: '/x', iothread: 'io1' }] }).drives[0]?.aio, 'inline');
  refuses(['-drive', 'id=d'], /-drive: needs id=ID,file=PATH/);
  refuses(['-drive', 'id=d,file=/x,readonly=yes'], /-drive: readonly must be 'on' or 'off' \(got 'yes'\)/);
  refuses(['-drive', 'id=d,file=/x,iops=0'], /-drive: iops must be an integer in range 1-4294967295/);
  refuses(['-drive', 'id=d,file=/x,serial=123456789012345678901'], /-drive: serial must be 1-20 printable ASCII characters/);
  refuses(['-drive', 'id=d,file=/x,cache=none'], /-drive: unknown key 'cache' \(allowed keys: id, file, serial, readonly, direct, no-flush, iothread, iops, bps, aio\)/);
  refuses(['-drive', 'id=d,file=/x,aio=native'], /-drive: aio must be one of inline, threads \(got 'native'\)/);
  refuses(['-drive', 'id=9d,file=/x'], /-drive: id must be 1-64 letters/);
  refuses(['-drive', 'id=d,file=/x,iothread=nope'], /-drive id=d: iothread 'nope' is not defined \(defined: none; add -iothread id=nope\)/);
  refusesJson({ drive: [{ drive_id: 'd', path_on_host: '/x', iops: -1 }] }, /drive\.0\.iops: must be an integer in range 1-4294967295 \(got -1\)/);
  refusesJson({ drive: [{ drive_id: 'd' }] }, /drive\.0\.path_on_host: is required/);
  refusesJson({ drive: [{ drive_id: 'd', path_on_host: '/x', cache: 1 }] }, /drive\.0: unknown key 'cache' \(allowed keys: drive_id, path_on_host/);
});

test('the command line overrides JSON drives by id, in place', () => {
  const c = json({ drive: [{ drive_id: 'a', path_on_host: '/a' }, { drive_id: 'b', path_on_host: '/b' }] }, '-drive', 'id=a,file=/a2,readonly=on', '-drive', 'id=c,file=/c');
  assert.deepEqual(c.drives.map((d) => [d.id, d.file, d.readOnly]), [['a', '/a2', true], ['b', '/b', false], ['c', '/c', false]]);
  refuses(['-drive', 'id=a,file=/a', '-drive', 'id=a,file=/b'], /-drive id=a: device id 'a' is already used by -drive id=a/);
});

test('-netdev and JSON net', () => {
  const c = cli('-iothread', 'id=io1', '-netdev', 'id=net0,netdev=tap0,mac=52:54:00:AB:CD:EF,iothread=io1', '-netdev', 'id=net1,fd=tapfd,vhost=on');
  const expected = [
    { id: 'net0', ifname: 'tap0', fd: undefined, mac: '52:54:00:ab:cd:ef', iothread: 'io1', vhost: false },
    { id: 'net1', ifname: undefined, fd: 'tapfd', mac: undefined, iothread: undefined, vhost: true },
  ];
  assert.deepEqual(c.nets, expected);
  const j = json({
    iothread: [{ id: 'io1' }],
    net: [{ iface_id: 'net0', host_dev_name: 'tap0', mac: '52:54:00:AB:CD:EF', iothread: 'io1' }, { iface_id: 'net1', fd: 'tapfd', vhost_type: 'vhost-kernel' }],
  });
  assert.deepEqual(j.nets, expected);
  refuses(['-netdev', 'id=n'], /-netdev: needs exactly one of netdev=TAPNAME and fd=NAME/);
  refuses(['-netdev', 'id=n,netdev=tap0,fd=x'], /-netdev: needs exactly one of netdev=TAPNAME and fd=NAME/);
  refuses(['-netdev', 'id=n,netdev=averyveryverylongtap'], /-netdev: netdev must be a tap interface name of 1-15 characters/);
  for (const bad of ['52:54:00:12:34', '01:00:5e:00:00:01', '00:00:00:00:00:00', 'zz:54:00:12:34:56']) {
    refuses(['-netdev', `id=n,netdev=t,mac=${bad}`], /-netdev: mac must be a unicast MAC address/);
  }
  refusesJson({ net: [{ iface_id: 'n' }] }, /net\.0: needs exactly one of "host_dev_name" and "fd"/);
  refusesJson({ net: [{ iface_id: 'n', host_dev_name: 't', vhost_type: 'vhost-user' }] }, /net\.0\.vhost_type/);
});

test('-device vsock and JSON vsock', () => {
  const expected = { id: 'vsock0', guestCid: 3, udsPath: '/run/v.sock' };
  assert.deepEqual(cli('-device', 'vsock,id=vsock0,guest-cid=3,uds-path=/run/v.sock').vsock, expected);
  assert.deepEqual(json({ vsock: { vsock_id: 'vsock0', guest_cid: 3, uds_path: '/run/v.sock' } }).vsock, expected);
  assert.equal(cli('-device', `vsock,id=v,guest-cid=${2 ** 32 - 2},uds-path=/v`).vsock?.guestCid, 2 ** 32 - 2);
  refuses(['-device', 'vsock,id=v,guest-cid=2,uds-path=/v'], /-device vsock: guest-cid must be an integer in range 3-4294967294/);
  refuses(['-device', `vsock,id=v,guest-cid=${2 ** 32 - 1},uds-path=/v`], /range 3-4294967294/);
  refuses(['-device', 'vsock,id=v,guest-cid=3'], /-device vsock: needs id=ID,guest-cid=N,uds-path=SOCKET/);
  refuses(['-device', 'vsock,id=v,guest-cid=3,uds-path=/v', '-device', 'vsock,id=w,guest-cid=4,uds-path=/w'], /-device vsock: only one vsock device/);
  refuses(['-device', 'floppy,id=f'], /-device: unknown driver 'floppy' \(allowed: .*vsock/);
  refusesJson({ vsock: { vsock_id: 'v', guest_cid: 1, uds_path: '/v' } }, /vsock\.guest_cid: must be an integer in range 3-4294967294 \(got 1\)/);
});

test('-rng, -balloon, -device virtio-pmem and their JSON', () => {
  assert.deepEqual(cli('-rng', 'random_file=/dev/urandom,bytes_per_sec=1000000').rng, { file: '/dev/urandom', bytesPerSec: 1000000 });
  assert.deepEqual(json({ rng: { random_file: '/dev/urandom', bytes_per_sec: 1000000 } }).rng, { file: '/dev/urandom', bytesPerSec: 1000000 });
  assert.deepEqual(cli('-rng', 'random_file=/dev/urandom').rng, { file: '/dev/urandom', bytesPerSec: undefined });
  refuses(['-rng', 'random_file=/r,bytes_per_sec=63'], /-rng: bytes_per_sec must be an integer in range 64-999999999/);
  refuses(['-rng', 'random_file=/r,bytes_per_sec=1000000000'], /range 64-999999999/);
  refuses(['-rng', 'bytes_per_sec=100'], /-rng: needs random_file=PATH/);

  assert.deepEqual(cli('-balloon', 'deflate-on-oom=true').balloon, { deflateOnOom: true });
  assert.deepEqual(cli('-balloon', 'deflate-on-oom=off').balloon, { deflateOnOom: false });
  assert.deepEqual(json({ balloon: { deflate_on_oom: true } }).balloon, { deflateOnOom: true });
  refuses(['-balloon', 'deflate-on-oom=1'], /-balloon: deflate-on-oom must be/);

  const pmems = [{ id: 'pm0', file: '/img/ro.img' }];
  assert.deepEqual(cli('-device', 'virtio-pmem,id=pm0,file=/img/ro.img').pmems, pmems);
  assert.deepEqual(json({ pmem: [{ id: 'pm0', file: '/img/ro.img' }] }).pmems, pmems);
  refuses(['-device', 'virtio-pmem,id=pm0'], /-device virtio-pmem: needs id=ID,file=PATH/);
});

test('-iothread and JSON iothread', () => {
  assert.deepEqual(cli('-iothread', 'id=a', '-iothread', 'id=b').iothreads, ['a', 'b']);
  assert.deepEqual(json({ iothread: [{ id: 'a' }] }, '-iothread', 'id=b').iothreads, ['a', 'b']);
  refuses(['-iothread', 'id=a', '-iothread', 'id=a'], /-iothread id=a: iothread id 'a' is already used/);
  refuses(['-iothread', 'name=a'], /-iothread: unknown key 'name' \(allowed keys: id\)/);
});

test('chardevs: the serial console (backward compatible) and virtio consoles', () => {
  // the server's launch command: one chardev, nothing else uses it -> the serial console
  const one = cli('-chardev', 'id=console,path=/run/c.sock');
  assert.deepEqual(one.console, { id: 'console', path: '/run/c.sock' });
  assert.deepEqual(one.consoles, []);
  assert.deepEqual(json({ console: [{ console_id: 'c0', socket_path: '/run/c.sock' }] }).console, { id: 'c0', path: '/run/c.sock' });
  assert.deepEqual(json({ chardev: { id: 'c0', path: '/run/c.sock' } }).console, { id: 'c0', path: '/run/c.sock' });

  const both = cli('-chardev', 'id=console,path=/run/c.sock', '-chardev', 'id=hvc,path=/run/hvc.sock', '-device', 'virtconsole,id=vc0,chardev=hvc');
  assert.deepEqual(both.console, { id: 'console', path: '/run/c.sock' });
  assert.deepEqual(both.consoles, [{ id: 'vc0', path: '/run/hvc.sock' }]);
  const viaJson = json({ chardev: [{ id: 'console', path: '/run/c.sock' }, { id: 'hvc', path: '/run/hvc.sock' }], virtconsole: [{ id: 'vc0', chardev: 'hvc' }] });
  assert.deepEqual([viaJson.console, viaJson.consoles], [both.console, both.consoles]);

  const onlyVirtio = cli('-chardev', 'id=hvc,path=/run/hvc.sock', '-device', 'virtconsole,id=vc0,chardev=hvc');
  assert.equal(onlyVirtio.console, undefined);
  const named = cli('-chardev', 'id=a,path=/a', '-chardev', 'id=b,path=/b', '-serial', 'chardev:b', '-device', 'virtconsole,id=vc,chardev=a');
  assert.deepEqual([named.console?.id, named.consoles], ['b', [{ id: 'vc', path: '/a' }]]);
  assert.equal(cli('-serial', 'stdio', '-chardev', 'id=c,path=/c').serialStdio, true);

  refuses(['-chardev', 'id=a,path=/a', '-chardev', 'id=b,path=/b'], /-chardev: 'a', 'b' not used by any device: name the serial console with -serial chardev:ID/);
  refuses(['-device', 'virtconsole,id=vc,chardev=nope'], /-device virtconsole,id=vc: chardev 'nope' is not defined/);
  refuses(['-chardev', 'id=a,path=/a', '-serial', 'chardev:a', '-device', 'virtconsole,id=vc,chardev=a'], /-serial: chardev 'a' is already used by -device virtconsole,id=vc/);
  refuses(['-chardev', 'id=a,path=/a', '-chardev', 'id=a,path=/b'], /-chardev: id 'a' is used twice/);
  refuses(['-serial', 'chardev:'], /-serial: expected 'stdio' or 'chardev:ID'/);
});

test('the virtio-mmio budget: devices + hot-replace slots <= 16', () => {
  const drives = (n: number): string[] => Array.from({ length: n }, (_, i) => ['-drive', `id=d${i},file=/d${i}`]).flat();
  assert.equal(cli('-hotplug-slots', '0').hotplugSlots, 0);
  assert.equal(cli('-hotplug-slots', '16').hotplugSlots, 16);
  assert.equal(json({ 'hotplug-slots': 7 }).hotplugSlots, 7);
  assert.equal(cli(...drives(14)).hotplugSlots, 2, 'the default shrinks to what is left');
  assert.equal(cli(...drives(16)).hotplugSlots, 0);
  refuses(drives(17), /too many virtio devices: 17 configured, at most 16 \(MAX_VIRTIO_DEVICES\)/);
  refuses([...drives(12), '-hotplug-slots', '5'], /-hotplug-slots: 5 slots and 12 virtio device\(s\) exceed the limit of 16 \(MAX_VIRTIO_DEVICES\); at most 4 slots are left/);
  refuses(['-hotplug-slots', '17'], /-hotplug-slots: expected an integer in range 0-16 \(got '17'\)/);
  // rng and balloon take a slot too
  refuses(['-rng', 'random_file=/r', '-balloon', 'deflate-on-oom=on', '-hotplug-slots', '15'], /at most 14 slots are left/);
  refusesJson({ 'hotplug-slots': -1 }, /hotplug-slots: must be an integer in range 0-16/);
});

test('device ids are unique across device kinds', () => {
  refuses(['-drive', 'id=x,file=/x', '-netdev', 'id=x,netdev=tap0'], /-netdev id=x: device id 'x' is already used by -drive id=x/);
  refuses(['-netdev', 'id=x,netdev=tap0', '-device', 'vsock,id=x,guest-cid=3,uds-path=/v'], /-device vsock,id=x: device id 'x' is already used by -netdev id=x/);
});
