// Device state for snapshots (devices/snapshot.ts): each device's saveState() restored into a
// fresh device of the same kind gives the guest the same device, and a state that was tampered
// with is refused with a message naming the field, before anything is applied.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Serial } from './legacy/serial.js';
import { Cmos } from './legacy/cmos.js';
import { VirtioRng } from './virtio/rng/device.js';
import { VirtioBalloon } from './virtio/balloon/device.js';
import { DeviceStateError } from './snapshot.js';
import { DeviceManager } from './manager.js';
import { GuestMemory } from '../memory/guest-memory.js';
import { TestDriver } from '../virtio/testing/driver.js';
import { F_VERSION_1, STATUS } from '../virtio/constants.js';
import { REG } from '../virtio/mmio.js';

const rng = (): VirtioRng => new VirtioRng({ file: '/dev/urandom' });

/** The transport's saved JSON, edited. */
function edited(state: Buffer, edit: (s: any) => void): Buffer {
  const s = JSON.parse(state.toString());
  edit(s);
  return Buffer.from(JSON.stringify(s));
}

test('virtio-mmio: a live device restored on a copy of guest memory goes on without the driver starting over', () => {
  const d = new TestDriver(rng());
  assert.ok(d.init(F_VERSION_1) & STATUS.DRIVER_OK);
  d.submit(0, [{ writable: 16 }]);
  assert.deepEqual(d.takeUsed(0).map((u) => u.len), [16]);
  // queued but not yet served when the snapshot is taken: the restore must serve it
  d.submit(0, [{ writable: 8 }], { notify: false });
  const state = d.transport.saveState();

  const r = d.restoredCopy(rng(), state);
  assert.equal(r.reg(REG.STATUS), d.reg(REG.STATUS), 'status as the driver left it');
  assert.ok(r.transport.isActive, 'the device is live again');
  r.transport.kickAll();
  assert.deepEqual(r.takeUsed(0).map((u) => u.len), [8], 'the request queued before the snapshot is served');
  r.submit(0, [{ writable: 32 }]);
  assert.deepEqual(r.takeUsed(0).map((u) => u.len), [32], 'and new ones, on the same ring indices');
  // the original is untouched by the copy
  assert.deepEqual(d.takeUsed(0), []);
});

test('virtio-mmio: a tampered state is refused, naming what is wrong, and nothing is activated', () => {
  const d = new TestDriver(rng());
  d.init(F_VERSION_1);
  const state = d.transport.saveState();
  const cases: Array<[string, Buffer, RegExp]> = [
    ['not JSON', Buffer.from('{"status":'), /state is not JSON/],
    ['unknown field', edited(state, (s) => { s.extra = 1; }), /state field/],
    ['feature never offered', edited(state, (s) => { s.driverFeatures = String((1n << 50n) | F_VERSION_1); }), /never offered/],
    ['queue size not a power of two', edited(state, (s) => { s.queues[0].size = 3; }), /queue 0: size 3/],
    ['ring outside guest RAM', edited(state, (s) => { s.queues[0].desc = 1 << 30; }), /queue 0: descriptor table .* outside guest RAM/],
    ['index beyond u16', edited(state, (s) => { s.queues[0].nextAvail = 70000; }), /queues\.0\.nextAvail/],
    ['DRIVER_OK without FEATURES_OK', edited(state, (s) => { s.status = STATUS.ACKNOWLEDGE | STATUS.DRIVER | STATUS.DRIVER_OK; }), /DRIVER_OK without FEATURES_OK/],
    ['a queue too many', edited(state, (s) => { s.queues.push(s.queues[0]); }), /2 queues saved, the device has 1/],
  ];
  for (const [what, bytes, re] of cases) {
    const fresh = new TestDriver(rng());
    assert.throws(() => fresh.transport.restoreState(bytes), (e: Error) => e instanceof DeviceStateError && re.test(e.message), what);
    assert.equal(fresh.transport.isActive, false, `${what}: not activated`);
  }
});

test('serial: registers and unread input come back; a bad register value is refused', () => {
  const irqs: boolean[] = [];
  const a = new Serial(() => {}, (l) => irqs.push(l));
  a.writeReg(3, 0x83); // DLAB
  a.writeReg(0, 0x01);
  a.writeReg(3, 0x03);
  a.writeReg(1, 0x03); // IER: RDI | THRI
  a.writeReg(7, 0x5a);
  a.enqueueInput(new TextEncoder().encode('hi'));
  const b = new Serial(() => {}, () => {});
  b.restoreState(a.saveState());
  for (const reg of [1, 3, 4, 7]) assert.equal(b.readReg(reg), a.readReg(reg), `register ${reg}`);
  assert.equal(String.fromCharCode(b.readReg(0), b.readReg(0)), 'hi', 'unread input');
  const bad = edited(a.saveState(), (s) => { s.ier = 0x40; });
  assert.throws(() => new Serial(() => {}, () => {}).restoreState(bad), /serial: state field ier/);
});

test('cmos: its RAM must be exactly 128 bytes', () => {
  const c = new Cmos();
  c.write(0, Uint8Array.of(0x20));
  c.write(1, Uint8Array.of(0x99));
  const d = new Cmos();
  d.restoreState(c.saveState());
  const out = new Uint8Array(1);
  d.read(1, out);
  assert.equal(out[0], 0x99);
  assert.throws(() => new Cmos().restoreState(edited(c.saveState(), (s) => { s.ram = Buffer.alloc(4).toString('base64'); })), /4 bytes of RAM, expected 128/);
});

test('balloon: the target and what the driver reported come back; more pages than RAM is refused', () => {
  const mem = GuestMemory.fromBuffers(8 << 20);
  const a = new VirtioBalloon(mem, { deflateOnOom: false });
  a.setTarget(6 << 20);
  const b = new VirtioBalloon(mem, { deflateOnOom: false });
  b.restoreState(a.saveState());
  assert.equal(b.targetBytes, 6 << 20);
  assert.throws(() => new VirtioBalloon(mem, { deflateOnOom: false }).restoreState(edited(a.saveState(), (s) => { s.numPages = 1 << 20; })), /more pages than guest RAM/);
});

test('device manager: states in order, legacy devices first; a count that does not match is refused', () => {
  const mem = GuestMemory.fromBuffers(8 << 20);
  const m = new DeviceManager(mem, () => () => {});
  m.addPio(0x3f8, 8, new Serial(() => {}, () => {}), 'serial0');
  m.addPio(0x70, 2, new Cmos(), 'cmos');
  m.addVirtio('rng0', rng());
  assert.deepEqual(m.snapshotDevices(), [{ id: 'serial0', kind: 'serial-16550a' }, { id: 'cmos', kind: 'cmos' }, { id: 'rng0', kind: 'virtio-mmio:4' }]);
  const states = m.saveStates();
  assert.equal(states.length, 3);
  assert.throws(() => m.restoreStates(states.slice(1)), /2 device states for 3 devices/);
  m.restoreStates(states);
  m.close();
});
