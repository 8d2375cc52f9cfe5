// Hardware-reduced ACPI: RSDP, XSDT, FADT (HW_REDUCED_ACPI, sleep control/status registers on
// I/O ports the VMM traps), DSDT (\_S5, a power button and a Generic Event Device that notifies
// it) and MADT (one local APIC per vCPU, the IOAPIC, LINT1 NMI).
import * as aml from './aml.js';
import { checksum, putAscii } from './checksum.js';
import {
  ACPI_GED_GSI, ACPI_GED_PORT, ACPI_SLEEP_CONTROL_PORT, ACPI_SLEEP_STATUS_PORT, IOAPIC_ADDR, LAPIC_ADDR, VMGENID_ADDR,
} from './layout.js';

/** GED event selector bits (devices/legacy/acpi-pm.ts raises them): the DSDT's _EVT notifies. */
export const GED_EVENT_POWER_BUTTON = 0x01;
export const GED_EVENT_VMGENID = 0x02;

/** SLP_TYP for S5 written by the guest as (SLP_TYP << 2) | SLP_EN(0x20). */
export const S5_SLP_TYP = 5;
export const SLP_EN = 0x20;
const OEM_ID = 'CAPSUL';
const OEM_TABLE = 'CAPSULEV';

function header(sig: string, len: number, rev: number): Uint8Array {
  const b = new Uint8Array(len);
  const dv = new DataView(b.buffer);
  putAscii(b, 0, sig, 4);
  dv.setUint32(4, len, true);
  b[8] = rev;
  putAscii(b, 10, OEM_ID, 6);
  putAscii(b, 16, OEM_TABLE, 8);
  dv.setUint32(24, 1, true);
  putAscii(b, 28, 'CPSL', 4);
  dv.setUint32(32, 1, true);
  return b;
}
function finish(b: Uint8Array): Uint8Array {
  b[9] = 0;
  b[9] = checksum(b);
  return b;
}

/** Generic Address Structure: 8-bit System I/O register. */
function gas(b: DataView, off: number, port: number): void {
  b.setUint8(off, 1); // SystemIO
  b.setUint8(off + 1, 8);
  b.setUint8(off + 2, 0);
  b.setUint8(off + 3, 1); // byte access
  b.setBigUint64(off + 4, BigInt(port), true);
}

/**
 * `devices`: AML Device objects placed in \_SB_ (the device manager's virtio-mmio slots: Linux's
 * guest kernel finds virtio-mmio devices only here, CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES is off).
 */
export function buildDsdt(devices: number[][] = []): Uint8Array {
  const body = [
    aml.name('_S5_', aml.pkg([aml.integer(S5_SLP_TYP), aml.integer(0), aml.integer(0), aml.integer(0)])),
    aml.scope('\\_SB_', [
      // In hardware-reduced mode Linux has no legacy ISA IRQs: the UART must be described here
      // for its IRQ 4 to be usable (8250_pnp takes ttyS0 over from the legacy probe).
      aml.device('COM1', [
        aml.name('_HID', [0x0c, ...u32(aml.eisaId('PNP0501'))]),
        aml.name('_UID', aml.integer(1)),
        aml.name('_CRS', aml.buffer(aml.ioIrqResource(0x3f8, 8, 4))),
      ]),
      aml.device('PWRB', [
        aml.name('_HID', [0x0c, ...u32(aml.eisaId('PNP0C0C'))]),
        aml.name('_UID', aml.integer(0)),
      ]),
      aml.device('GED0', [
        aml.name('_HID', aml.string('ACPI0013')),
        aml.name('_UID', aml.integer(0)),
        aml.name('_CRS', aml.buffer(aml.interruptResource(ACPI_GED_GSI))),
        aml.opRegion('EREG', 1, ACPI_GED_PORT, 1),
        aml.field('EREG', [['ESEL', 8]]),
        // ESEL is read once (reading it clears the events): into Local0, then each bit tested
        aml.method('_EVT', 1, true, [
          aml.store(aml.nameString('ESEL'), aml.local0),
          aml.ifOp(aml.and(aml.local0, aml.integer(GED_EVENT_POWER_BUTTON)), [aml.notify('\\_SB_.PWRB', 0x80)]),
          aml.ifOp(aml.and(aml.local0, aml.integer(GED_EVENT_VMGENID)), [aml.notify('\\_SB_.VGEN', 0x80)]),
        ]),
      ]),
      // VM generation ID (Linux drivers/virt/vmgenid.c matches _HID VMGENCTR and reads ADDR, a
      // package of the ID's address, low and high 32 bits): a new ID and a notification after
      // every restore make the guest reseed its RNG (add_vmfork_randomness).
      aml.device('VGEN', [
        aml.name('_HID', aml.string('VMGENCTR')),
        aml.name('_UID', aml.integer(0)),
        aml.name('_DDN', aml.string('VM_Gen_Counter')),
        aml.name('ADDR', aml.pkg([aml.integer(VMGENID_ADDR), aml.integer(0)])),
      ]),
      ...devices,
    ]),
  ].flat();
  const b = header('DSDT', 36 + body.length, 2);
  b.set(body, 36);
  return finish(b);
}

function u32(v: number): number[] {
  return [v & 0xff, (v >> 8) & 0xff, (v >> 16) & 0xff, (v >>> 24) & 0xff];
}

export function buildFadt(dsdtAddr: number): Uint8Array {
  const b = header('FACP', 276, 6);
  const dv = new DataView(b.buffer);
  dv.setUint32(40, dsdtAddr, true);
  dv.setUint16(109, 1 << 2, true); // IA-PC boot arch: VGA not present; no 8042, no legacy devices
  const HW_REDUCED_ACPI = 1 << 20;
  const PWR_BUTTON = 1 << 4; // power button is a control-method device (not fixed hardware)
  const SLP_BUTTON = 1 << 5;
  dv.setUint32(112, HW_REDUCED_ACPI | PWR_BUTTON | SLP_BUTTON, true);
  b[131] = 0; // FADT minor version (ACPI 6.0)
  dv.setBigUint64(140, BigInt(dsdtAddr), true); // X_DSDT
  gas(dv, 244, ACPI_SLEEP_CONTROL_PORT);
  gas(dv, 256, ACPI_SLEEP_STATUS_PORT);
  putAscii(b, 268, 'CAPSULE', 8); // hypervisor vendor identity
  return finish(b);
}

export function buildMadt(cpus: number): Uint8Array {
  const len = 44 + cpus * 8 + 12 + 6;
  const b = header('APIC', len, 4);
  const dv = new DataView(b.buffer);
  dv.setUint32(36, LAPIC_ADDR, true);
  dv.setUint32(40, 1, true); // PCAT_COMPAT: dual 8259 present (KVM's in-kernel PIC)
  let o = 44;
  for (let i = 0; i < cpus; i++) {
    b[o] = 0; // processor local APIC
    b[o + 1] = 8;
    b[o + 2] = i; // ACPI processor uid
    b[o + 3] = i; // APIC id
    dv.setUint32(o + 4, 1, true); // enabled
    o += 8;
  }
  b[o] = 1; // IOAPIC
  b[o + 1] = 12;
  b[o + 2] = cpus; // IOAPIC id
  dv.setUint32(o + 4, IOAPIC_ADDR, true);
  dv.setUint32(o + 8, 0, true); // GSI base
  o += 12;
  b[o] = 4; // local APIC NMI
  b[o + 1] = 6;
  b[o + 2] = 0xff; // all processors
  dv.setUint16(o + 3, 0, true);
  b[o + 5] = 1; // LINT1
  return finish(b);
}

export function buildXsdt(entries: number[]): Uint8Array {
  const b = header('XSDT', 36 + 8 * entries.length, 1);
  const dv = new DataView(b.buffer);
  entries.forEach((a, i) => dv.setBigUint64(36 + 8 * i, BigInt(a), true));
  return finish(b);
}

export function buildRsdp(xsdtAddr: number): Uint8Array {
  const b = new Uint8Array(36);
  const dv = new DataView(b.buffer);
  putAscii(b, 0, 'RSD PTR ', 8);
  putAscii(b, 9, OEM_ID, 6);
  b[15] = 2; // ACPI 2.0+
  dv.setUint32(16, 0, true); // no RSDT
  dv.setUint32(20, 36, true);
  dv.setBigUint64(24, BigInt(xsdtAddr), true);
  b[8] = checksum(b.subarray(0, 20));
  b[32] = checksum(b);
  return b;
}

export interface AcpiTables {
  rsdpAddr: number;
  /** [guest address, bytes] */
  blobs: Array<[number, Uint8Array]>;
}

/** Lays out all tables from `base` (16-byte aligned each); RSDP first. */
export function buildAcpiTables(base: number, cpus: number, limit: number, devices: number[][] = []): AcpiTables {
  const align = (n: number): number => (n + 15) & ~15;
  let at = base;
  const rsdpAddr = at;
  at = align(at + 36);
  const xsdtAddr = at;
  at = align(at + 36 + 8 * 2);
  const dsdt = buildDsdt(devices);
  const dsdtAddr = at;
  at = align(at + dsdt.length);
  const fadt = buildFadt(dsdtAddr);
  const fadtAddr = at;
  at = align(at + fadt.length);
  const madt = buildMadt(cpus);
  const madtAddr = at;
  at = align(at + madt.length);
  if (at > limit) throw new RangeError('ACPI tables do not fit');
  return {
    rsdpAddr,
    blobs: [
      [rsdpAddr, buildRsdp(xsdtAddr)],
      [xsdtAddr, buildXsdt([fadtAddr, madtAddr])],
      [dsdtAddr, dsdt],
      [fadtAddr, fadt],
      [madtAddr, madt],
    ],
  };
}
