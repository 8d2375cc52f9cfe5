// virtio-pmem against the driver-side stand-in: the file's mapping (padded to 2 MiB with zeroes),
// config start/size, FLUSH, bad requests, and the device manager's device-memory windows.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { randomBytes } from 'node:crypto';
import { GuestAddress as GA, GuestMemory, FOUR_GIB } from '../../../memory/guest-memory.js';
import { F_VERSION_1, STATUS } from '../../../virtio/constants.js';
import { TestDriver } from '../../../virtio/testing/driver.js';
import { view } from '../../../kvm/sys.js';
import { DEVICE_MEMORY_FIRST_SLOT, DeviceManager } from '../../manager.js';
import { buildDevices } from '../../build.js';
import { PMEM_REQ_FLUSH, VirtioPmem } from './device.js';

const MiB = 1 << 20;
const work = mkdtempSync(join(tmpdir(), 'pmem-test-'));

function u32(n: number): Uint8Array {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setUint32(0, n, true);
  return b;
}

test('the file is mapped read-only, padded to 2 MiB with zeroes; config start/size', () => {
  const file = join(work, 'img');
  const content = randomBytes(3 * MiB + 1234);
  writeFileSync(file, content);
  const p = new VirtioPmem({ id: 'pmem0', file });
  try {
    assert.equal(p.fileSize, content.length);
    assert.equal(p.size, 4 * MiB);
    const mapped = new Uint8Array(view(p.hostAddr, p.size));
    assert.ok(Buffer.from(mapped.subarray(0, content.length)).equals(content), 'the file');
    assert.ok(mapped.subarray(content.length).every((x) => x === 0), 'zeroes past its end');
    p.guestBase = 0x1_4000_0000;
    const d = new TestDriver(p);
    assert.equal(d.reg(0x008), 27);
    const c = new DataView(d.config(0, 16).buffer);
    assert.equal(c.getBigUint64(0, true), 0x1_4000_0000n);
    assert.equal(c.getBigUint64(8, true), BigInt(4 * MiB));
  } finally {
    p.close();
  }
  assert.throws(() => new VirtioPmem({ id: 'x', file: join(work, 'missing') }), /ENOENT/);
  writeFileSync(join(work, 'empty'), '');
  assert.throws(() => new VirtioPmem({ id: 'x', file: join(work, 'empty') }), /empty/);
});

test('FLUSH answers OK; other types and short buffers are refused', () => {
  const file = join(work, 'small');
  writeFileSync(file, 'hello');
  const p = new VirtioPmem({ id: 'pmem0', file });
  try {
    const d = new TestDriver(p);
    assert.equal(d.init(F_VERSION_1) & STATUS.DRIVER_OK, STATUS.DRIVER_OK);
    const ask = (type: number, respLen = 4): { len: number; ret: number } => {
      const { addrs } = d.submit(0, [{ data: u32(type) }, { writable: respLen }]);
      const [u] = d.takeUsed(0);
      assert.ok(u);
      const ret = u.len >= 4 ? new DataView(d.mem.read(GA(addrs[1] as number), 4).buffer).getUint32(0, true) : -1;
      return { len: u.len, ret };
    };
    assert.deepEqual(ask(PMEM_REQ_FLUSH), { len: 4, ret: 0 });
    assert.deepEqual(ask(7), { len: 4, ret: 1 });
    assert.deepEqual(ask(PMEM_REQ_FLUSH, 2), { len: 0, ret: -1 });
    assert.deepEqual(p.metrics, { flushes: 1, badRequests: 1, rejected: 1 });
  } finally {
    p.close();
  }
});

test('device memory windows: above RAM and 4 GiB, 1 GiB-aligned start, 2 MiB-aligned, own slots, in order', () => {
  const a = join(work, 'a');
  const b = join(work, 'b');
  writeFileSync(a, randomBytes(5 * MiB));
  writeFileSync(b, randomBytes(4096));
  for (const [ram, base] of [[256 * MiB, FOUR_GIB], [5 * 1024 * MiB, 0x1_8000_0000]] as const) {
    // a real mapping (NORESERVE: 5 GiB of address space, nothing touched)
    const mem = GuestMemory.create({ size: ram });
    const devices = new DeviceManager(mem, () => () => {});
    buildDevices(devices, { drives: [], hotplugSlots: 0, pmems: [{ id: 'pa', file: a }, { id: 'pb', file: b }] });
    try {
      assert.deepEqual(devices.deviceMemory.map((r) => [r.id, r.slot, r.guestBase, r.size, r.readOnly]), [
        ['pa', DEVICE_MEMORY_FIRST_SLOT, base, 6 * MiB, true],
        ['pb', DEVICE_MEMORY_FIRST_SLOT + 1, base + 6 * MiB, 2 * MiB, true],
      ]);
      assert.deepEqual(devices.slots.map((s) => [s.id, (s.device as VirtioPmem).guestBase]), [['pa', base], ['pb', base + 6 * MiB]]);
      assert.equal(devices.memory.contains(base, 1), false, 'GuestMemory does not cover device memory');
    } finally {
      devices.close();
      mem.close();
    }
  }
  const devices = new DeviceManager(GuestMemory.fromBuffers(256 * MiB), () => () => {});
  assert.throws(() => devices.addDeviceMemory('x', 4096, 0n, true), /multiple of 2097152/);
  assert.throws(() => buildDevices(devices, { drives: [], hotplugSlots: 0, pmems: [{ id: 'p', file: join(work, 'nope') }] }),
    /-device virtio-pmem,id=p: cannot map .*nope/);
});
