import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Serial } from './serial.js';
import { I8042 } from './i8042.js';
import { Cmos } from './cmos.js';
import { AcpiGed, AcpiSleep } from './acpi-pm.js';
import { Bus } from '../../bus/bus.js';

function uart() {
  const out: number[] = [];
  const irqs: boolean[] = [];
  const s = new Serial((b) => out.push(...b), (l) => irqs.push(l));
  return { s, out, irqs };
}

test('UART: THR output, LSR, scratch, IER low bits', () => {
  const { s, out, irqs } = uart();
  s.writeReg(0, 0x41);
  s.writeReg(0, 0x42);
  assert.deepEqual(out, [0x41, 0x42]);
  assert.equal(s.readReg(5) & 0x60, 0x60, 'THRE|TEMT');
  s.writeReg(7, 0x5a);
  assert.equal(s.readReg(7), 0x5a);
  s.writeReg(1, 0xff);
  assert.equal(s.readReg(1), 0x0f, 'IER keeps 4 bits');
  assert.deepEqual(irqs, [true], 'enabling THRI raises the line');
});

test('UART: THR-empty interrupt reported by IIR, cleared on read; level changes only', () => {
  const { s, irqs } = uart();
  s.writeReg(2, 0x01); // FIFO on
  s.writeReg(1, 0x02);
  assert.equal(s.readReg(2), 0xc2);
  assert.equal(s.readReg(2), 0xc1, 'no interrupt pending after the read');
  assert.deepEqual(irqs, [true, false]);
  s.writeReg(0, 0x30);
  s.writeReg(0, 0x31); // still pending: no second edge
  assert.deepEqual(irqs, [true, false, true]);
  s.writeReg(1, 0);
  assert.deepEqual(irqs, [true, false, true, false]);
});

test('UART: input FIFO, data-ready interrupt, DLAB, loopback', () => {
  const { s, out } = uart();
  s.writeReg(1, 0x01);
  s.enqueueInput(new Uint8Array([0x61, 0x62]));
  assert.equal(s.readReg(2) & 0x0f, 0x04);
  assert.equal(s.readReg(5) & 1, 1);
  assert.equal(s.readReg(0), 0x61);
  assert.equal(s.readReg(0), 0x62);
  assert.equal(s.readReg(5) & 1, 0);
  s.writeReg(3, 0x80);
  s.writeReg(0, 0x01);
  s.writeReg(1, 0x00);
  assert.equal(s.readReg(0), 0x01, 'DLL');
  s.writeReg(3, 0x03);
  s.writeReg(4, 0x1a); // loop + RTS + OUT2
  assert.equal(s.readReg(6) & 0xf0, 0x90);
  s.writeReg(0, 0x77);
  assert.equal(s.readReg(0), 0x77, 'looped back');
  assert.deepEqual(out, []);
  // a flood of input is bounded
  s.writeReg(4, 0x08);
  s.enqueueInput(new Uint8Array(200_000));
  assert.ok(s.dropped > 0);
});

test('i8042: status 0x01, reset via 0xfe and via the output port', () => {
  let resets = 0;
  const k = new I8042(() => resets++);
  const d = new Uint8Array(1);
  k.read(4, d);
  assert.equal(d[0], 0x01);
  k.write(4, Uint8Array.of(0xaa));
  k.read(0, d);
  assert.equal(d[0], 0x55);
  k.write(4, Uint8Array.of(0xfe));
  assert.equal(resets, 1);
  k.write(4, Uint8Array.of(0xd1));
  k.write(0, Uint8Array.of(0xfe));
  assert.equal(resets, 2);
});

test('CMOS: BCD time, never update-in-progress', () => {
  const c = new Cmos(() => new Date(Date.UTC(2026, 10, 25, 13, 45, 59)));
  const rd = (i: number): number => {
    c.write(0, Uint8Array.of(i));
    const d = new Uint8Array(1);
    c.read(1, d);
    return d[0] as number;
  };
  assert.equal(rd(0x00), 0x59);
  assert.equal(rd(0x02), 0x45);
  assert.equal(rd(0x04), 0x13);
  assert.equal(rd(0x09), 0x26);
  assert.equal(rd(0x0a) & 0x80, 0);
});

test('ACPI sleep register powers off only on S5 + SLP_EN; GED raises and clears', () => {
  let off = 0;
  const s = new AcpiSleep(() => off++);
  s.write(0, Uint8Array.of(5 << 2));
  s.write(0, Uint8Array.of(0x20 | (3 << 2)));
  assert.equal(off, 0);
  s.write(0, Uint8Array.of(0x20 | (5 << 2)));
  assert.equal(off, 1);
  const lines: boolean[] = [];
  const g = new AcpiGed((l) => lines.push(l));
  g.trigger(1);
  const d = new Uint8Array(1);
  g.read(0, d);
  assert.equal(d[0], 1);
  g.read(0, d);
  assert.equal(d[0], 0);
  assert.deepEqual(lines, [true, false, false]);
});

test('bus: dispatch by range, offsets, overlaps rejected, misses reported', () => {
  const b = new Bus('pio');
  const seen: Array<[number, number]> = [];
  b.insert(0x3f8, 8, { read: (o, d) => d.fill(o), write: (o, d) => seen.push([o, d[0] as number]) }, 'uart');
  b.insert(0x60, 5, { read: (_o, d) => d.fill(9), write: () => {} }, 'kbd');
  const d = new Uint8Array(1);
  assert.equal(b.read(0x3fd, d), true);
  assert.equal(d[0], 5);
  assert.equal(b.write(0x3f8, Uint8Array.of(7)), true);
  assert.deepEqual(seen, [[0, 7]]);
  assert.equal(b.read(0x400, d), false);
  assert.equal(b.read(0x3ff, new Uint8Array(2)), false, 'access straddling the end');
  assert.equal(b.nameAt(0x64), 'kbd');
  assert.throws(() => b.insert(0x3fc, 8, { read: () => {}, write: () => {} }, 'x'), /overlaps uart/);
});
