// CMOS/RTC at 0x70 (index) / 0x71 (data): the time of day in BCD, never "update in progress".
import * as z from 'zod';
import type { BusDevice } from '../../bus/bus.js';
import { decodeState, encodeState, DeviceStateError, type Snapshottable } from '../snapshot.js';

const bcd = (n: number): number => ((Math.floor(n / 10) % 10) << 4) | (n % 10);

export class Cmos implements BusDevice, Snapshottable {
  readonly snapshotKind = 'cmos';
  private index = 0;
  private readonly ram = new Uint8Array(128);

  constructor(private readonly now: () => Date = () => new Date()) {}

  read(offset: number, data: Uint8Array): void {
    data.fill(0);
    if (offset === 0) {
      data[0] = this.index;
      return;
    }
    data[0] = this.reg(this.index);
  }

  write(offset: number, data: Uint8Array): void {
    const v = data[0] ?? 0;
    if (offset === 0) this.index = v & 0x7f; // bit 7 is the NMI mask
    else if (this.index > 0x0d) this.ram[this.index] = v;
  }

  /** The index register and the guest's RAM bytes; the clock is the host's, read when asked. */
  saveState(): Buffer {
    return encodeState({ index: this.index, ram: Buffer.from(this.ram).toString('base64') });
  }
  restoreState(bytes: Buffer): void {
    const s = decodeState(bytes, z.strictObject({ index: z.number().int().min(0).max(0x7f), ram: z.base64() }), 'cmos');
    const ram = Buffer.from(s.ram, 'base64');
    if (ram.length !== this.ram.length) throw new DeviceStateError(`cmos: ${ram.length} bytes of RAM, expected ${this.ram.length}`);
    this.index = s.index;
    this.ram.set(ram);
  }

  private reg(i: number): number {
    const d = this.now();
    switch (i) {
      case 0x00: return bcd(d.getUTCSeconds());
      case 0x02: return bcd(d.getUTCMinutes());
      case 0x04: return bcd(d.getUTCHours());
      case 0x06: return d.getUTCDay() + 1;
      case 0x07: return bcd(d.getUTCDate());
      case 0x08: return bcd(d.getUTCMonth() + 1);
      case 0x09: return bcd(d.getUTCFullYear() % 100);
      case 0x32: return bcd(Math.floor(d.getUTCFullYear() / 100));
      case 0x0a: return 0x26; // UIP clear, 32.768 kHz, 1024 Hz
      case 0x0b: return 0x02; // 24 h, BCD
      case 0x0c: return 0x00;
      case 0x0d: return 0x80; // RAM and time valid
      default: return this.ram[i] ?? 0;
    }
  }
}
