// The device manager: slot and GSI allocation, the DSDT entries it contributes, limits.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { buildDsdt } from '../boot/acpi.js';
import { GuestMemory } from '../memory/guest-memory.js';
import { DEVICE_ID } from '../virtio/constants.js';
import type { VirtioDevice } from '../virtio/device.js';
import { DeviceError, DeviceManager, MAX_VIRTIO_SLOTS, VIRTIO_GSIS, VIRTIO_MMIO_BASE } from './manager.js';

const stub = (): VirtioDevice => ({
  deviceType: DEVICE_ID.RNG, queueSizes: [8], features: 0n,
  readConfig: (_o, d) => d.fill(0), writeConfig: () => {}, activate: () => {}, notify: () => {}, reset: () => {},
});

test('slots: 4 KiB windows from the MMIO hole, 16 distinct GSIs that avoid the serial and the GED', () => {
  const levels: Array<[number, boolean]> = [];
  const m = new DeviceManager(GuestMemory.fromBuffers(1 << 20), (gsi) => (l) => levels.push([gsi, l]));
  for (let i = 0; i < MAX_VIRTIO_SLOTS; i++) m.addVirtio(`d${i}`, stub());
  assert.deepEqual(m.slots.map((s) => s.base), Array.from({ length: 16 }, (_, i) => VIRTIO_MMIO_BASE + i * 0x1000));
  const gsis = m.slots.map((s) => s.gsi);
  assert.equal(new Set(gsis).size, 16);
  assert.ok(!gsis.includes(4) && !gsis.includes(16) && gsis.every((g) => g < 24));
  assert.deepEqual(gsis, [...VIRTIO_GSIS]);
  assert.throws(() => m.addVirtio('one-too-many', stub()), DeviceError);
  // the MMIO bus routes a window to its transport: the magic value reads back
  const b = new Uint8Array(4);
  assert.equal(m.mmio.read(VIRTIO_MMIO_BASE + 3 * 0x1000, b), true);
  assert.equal(new DataView(b.buffer).getUint32(0, true), 0x74726976);
  assert.equal(m.mmio.nameAt(VIRTIO_MMIO_BASE + 3 * 0x1000 + 0x70), 'd3');
});

test('duplicate ids are refused', () => {
  const m = new DeviceManager(GuestMemory.fromBuffers(1 << 20), () => () => {});
  m.addVirtio('disk', stub());
  assert.throws(() => m.addVirtio('disk', stub()), /already in use/);
});

test('DSDT: one LNRO0005 device per slot with its window and interrupt', () => {
  const m = new DeviceManager(GuestMemory.fromBuffers(1 << 20), () => () => {});
  m.addVirtio('a', stub());
  m.addVirtio('b', stub());
  const dsdt = Buffer.from(buildDsdt(m.acpiDevices()));
  assert.equal(dsdt.reduce((a, x) => (a + x) & 0xff, 0), 0, 'checksum');
  const text = dsdt.toString('latin1');
  assert.equal(text.split('LNRO0005').length - 1, 2);
  assert.ok(text.includes('VR00') && text.includes('VR01'));
  // Memory32Fixed(ReadWrite, base, 0x200) of slot 1, then its Interrupt descriptor with GSI 6
  const mem = Buffer.from([0x86, 0x09, 0x00, 0x01, 0x00, 0x10, 0x00, 0xd0, 0x00, 0x02, 0x00, 0x00]);
  const at = dsdt.indexOf(mem);
  assert.ok(at > 0, 'slot 1 window described');
  assert.deepEqual([...dsdt.subarray(at + 12, at + 21)], [0x89, 6, 0, 0x03, 1, 6, 0, 0, 0], 'edge, active high');
});
