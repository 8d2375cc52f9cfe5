// The two ACPI registers of capsule's hardware-reduced platform, on I/O ports:
//  - sleep control (0x600) / status (0x601): the guest writes (SLP_TYP << 2) | SLP_EN to power off;
//  - GED event selector (0x610): read by the DSDT's _EVT; bit 0 = power button pressed.
import * as z from 'zod';
import type { BusDevice } from '../../bus/bus.js';
import { decodeState, encodeState, u8, type Snapshottable } from '../snapshot.js';
import { S5_SLP_TYP, SLP_EN } from '../../boot/acpi.js';

export { GED_EVENT_POWER_BUTTON, GED_EVENT_VMGENID } from '../../boot/acpi.js';

export class AcpiSleep implements BusDevice {
  constructor(private readonly onPowerOff: () => void) {}
  read(_offset: number, data: Uint8Array): void {
    data.fill(0);
  }
  write(offset: number, data: Uint8Array): void {
    const v = data[0] ?? 0;
    if (offset === 0 && v & SLP_EN && ((v >> 2) & 7) === S5_SLP_TYP) this.onPowerOff();
  }
}

export class AcpiGed implements BusDevice, Snapshottable {
  readonly snapshotKind = 'acpi-ged';
  private pending = 0;
  constructor(private readonly setIrq: (level: boolean) => void) {}
  /** Raise a GED event (the interrupt stays up until the guest reads the selector). */
  trigger(event: number): void {
    this.pending |= event;
    this.setIrq(true);
  }
  read(_offset: number, data: Uint8Array): void {
    data.fill(0);
    data[0] = this.pending;
    this.pending = 0;
    this.setIrq(false);
  }
  write(): void {}

  /** Events the guest has not read yet (the line's level is the irqchip's). */
  saveState(): Buffer {
    return encodeState({ pending: this.pending });
  }
  restoreState(bytes: Buffer): void {
    this.pending = decodeState(bytes, z.strictObject({ pending: u8 }), 'acpi-ged').pending;
  }
}
