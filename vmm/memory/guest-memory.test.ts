import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mappings } from '../testing/proc-mem.js';
import { FOUR_GIB, GuestAddress as GA, GuestMemory, GuestMemoryError, layoutRegions, MMIO_HOLE_START } from './guest-memory.js';

test('regions split around the MMIO hole', () => {
  assert.deepEqual(layoutRegions(256 << 20), [{ slot: 0, guestBase: 0, size: 256 << 20, hostOffset: 0 }]);
  const r = layoutRegions(4 * 1024 ** 3);
  assert.equal(r.length, 2);
  assert.equal(r[0]?.size, MMIO_HOLE_START);
  assert.equal(r[1]?.guestBase, FOUR_GIB);
  assert.equal(r[1]?.size, 4 * 1024 ** 3 - MMIO_HOLE_START);
  assert.equal(r[1]?.hostOffset, MMIO_HOLE_START);
});

test('reads and writes are little-endian and bounds-checked', () => {
  const m = GuestMemory.fromBuffers(1 << 20);
  m.writeU32(GA(0x100), 0xdeadbeef);
  assert.equal(m.readU8(GA(0x100)), 0xef);
  assert.equal(m.readU16(GA(0x102)), 0xdead);
  m.writeU64(GA(0x200), 0x0102030405060708n);
  assert.equal(m.readU64(GA(0x200)), 0x0102030405060708n);
  m.write(GA((1 << 20) - 4), new Uint8Array([1, 2, 3, 4]));
  assert.deepEqual([...m.read(GA((1 << 20) - 4), 4)], [1, 2, 3, 4]);
  assert.throws(() => m.readU32(GA((1 << 20) - 2)), GuestMemoryError);
  assert.throws(() => m.write(GA((1 << 20) - 2), new Uint8Array(4)), GuestMemoryError);
  assert.throws(() => m.slice(GA(0), (1 << 20) + 1), GuestMemoryError);
  assert.throws(() => m.readU8(-1 as GA), GuestMemoryError);
  assert.throws(() => m.readU8(0.5 as GA), GuestMemoryError);
  assert.throws(() => GA(-5), RangeError);
  assert.equal(m.contains(0, 1 << 20), true);
  assert.equal(m.contains(1, 1 << 20), false);
});

test('accesses into the MMIO hole fail', () => {
  // a sparse check: only the layout matters, use a tiny fake with the real rule
  const m = GuestMemory.fromBuffers(16 << 20);
  assert.throws(() => m.readU8(GA(MMIO_HOLE_START)), GuestMemoryError);
  assert.throws(() => m.readU8(GA(FOUR_GIB)), GuestMemoryError);
});

test('real mmap-backed memory', () => {
  const m = GuestMemory.create({ size: 2 << 20 });
  m.writeU32(GA(0x1000), 42);
  assert.equal(m.readU32(GA(0x1000)), 42);
  assert.equal(m.readU32(GA(0x2000)), 0);
  m.close();
});

/** The VmFlags of the mapping at `addr` in this process's smaps. */
function vmFlags(addr: bigint): string[] {
  const m = mappings('self').find((x) => x.start === addr);
  assert.ok(m, `no mapping at 0x${addr.toString(16)}`);
  return m.vmFlags;
}

test('dump-guest-core=off marks guest RAM dd; guest RAM does not ask for huge pages (hg: docs/vmm.md, "Idle memory")', () => {
  const m = GuestMemory.create({ size: 4 << 20, dontDump: true });
  try {
    const f = vmFlags(m.hostAddr);
    assert.ok(f.includes('dd'), `VmFlags ${f.join(' ')}`);
    assert.ok(!f.includes('hg'), `VmFlags ${f.join(' ')}`);
  } finally {
    m.close();
  }
  const plain = GuestMemory.create({ size: 4 << 20 });
  try {
    assert.ok(!vmFlags(plain.hostAddr).includes('dd'));
  } finally {
    plain.close();
  }
});
