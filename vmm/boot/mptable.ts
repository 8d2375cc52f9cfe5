// Intel MultiProcessor Specification 1.4 table: how a non-ACPI guest finds its CPUs, the ISA bus,
// the IOAPIC and the ISA interrupt routing. Placed in the EBDA (0x9fc00).
import { checksum, putAscii } from './checksum.js';
import { IOAPIC_ADDR, LAPIC_ADDR } from './layout.js';

const APIC_VERSION = 0x14;
const IOAPIC_VERSION = 0x11;
const MP_INT = 0;
const MP_NMI = 1;
const MP_EXTINT = 3;
const ISA_BUS = 0;
export const MAX_LEGACY_IRQ = 15;

export function buildMpTable(baseAddr: number, cpus: number): Uint8Array {
  if (cpus < 1 || cpus > 254) throw new RangeError(`cpus ${cpus} out of range 1-254`);
  const ioapicId = cpus; // after the CPUs' APIC ids 0..cpus-1
  const entries: Uint8Array[] = [];
  for (let i = 0; i < cpus; i++) {
    const e = new Uint8Array(20);
    const dv = new DataView(e.buffer);
    e[0] = 0; // processor
    e[1] = i; // local APIC id
    e[2] = APIC_VERSION;
    e[3] = 0x1 | (i === 0 ? 0x2 : 0); // enabled, BSP
    dv.setUint32(4, 0x600, true); // signature: family 6
    dv.setUint32(8, 0x201, true); // features: FPU, APIC
    entries.push(e);
  }
  const bus = new Uint8Array(8);
  bus[0] = 1;
  bus[1] = ISA_BUS;
  putAscii(bus, 2, 'ISA', 6);
  entries.push(bus);
  const ioapic = new Uint8Array(8);
  ioapic[0] = 2;
  ioapic[1] = ioapicId;
  ioapic[2] = IOAPIC_VERSION;
  ioapic[3] = 1; // enabled
  new DataView(ioapic.buffer).setUint32(4, IOAPIC_ADDR, true);
  entries.push(ioapic);
  for (let irq = 0; irq <= MAX_LEGACY_IRQ; irq++) {
    const e = new Uint8Array(8);
    e[0] = 3; // I/O interrupt
    e[1] = MP_INT;
    e[4] = ISA_BUS;
    e[5] = irq;
    e[6] = ioapicId;
    e[7] = irq;
    entries.push(e);
  }
  const lint0 = new Uint8Array([4, MP_EXTINT, 0, 0, ISA_BUS, 0, 0, 0]); // LINT0 of APIC 0: ExtINT
  const lint1 = new Uint8Array([4, MP_NMI, 0, 0, ISA_BUS, 0, 0xff, 1]); // LINT1 of all APICs: NMI
  entries.push(lint0, lint1);

  const bodyLen = entries.reduce((n, e) => n + e.length, 0);
  const tableLen = 44 + bodyLen;
  const out = new Uint8Array(16 + tableLen);
  const dv = new DataView(out.buffer);
  // floating pointer structure
  putAscii(out, 0, '_MP_', 4);
  dv.setUint32(4, baseAddr + 16, true);
  out[8] = 1; // length in 16-byte units
  out[9] = 4; // spec 1.4
  out[10] = checksum(out.subarray(0, 16));
  // configuration table header
  const t = 16;
  putAscii(out, t, 'PCMP', 4);
  dv.setUint16(t + 4, tableLen, true);
  out[t + 6] = 4;
  putAscii(out, t + 8, 'CAPSULE', 8);
  putAscii(out, t + 16, 'MICROVM', 12);
  dv.setUint16(t + 34, entries.length, true);
  dv.setUint32(t + 36, LAPIC_ADDR, true);
  let o = t + 44;
  for (const e of entries) {
    out.set(e, o);
    o += e.length;
  }
  out[t + 7] = checksum(out.subarray(t, t + tableLen));
  return out;
}
