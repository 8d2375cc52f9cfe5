// Minimal i8042 keyboard controller: enough for the kernel's reboot=k path (0xfe on port 0x64
// pulses the CPU reset line) and for probes to end quickly. Port 0x60 is offset 0, 0x64 offset 4.
import * as z from 'zod';
import type { BusDevice } from '../../bus/bus.js';
import { decodeState, encodeState, u8, type Snapshottable } from '../snapshot.js';

const CMD_READ_CTR = 0x20;
const CMD_WRITE_CTR = 0x60;
const CMD_SELF_TEST = 0xaa;
const CMD_WRITE_OUTPUT = 0xd1;
const CMD_RESET = 0xfe;
const STATUS_OBF = 0x01;

export class I8042 implements BusDevice, Snapshottable {
  readonly snapshotKind = 'i8042';
  private ctr = 0x47;
  private pendingWrite = 0;
  private out: number[] = [];
  resets = 0;

  constructor(private readonly onReset: () => void) {}

  saveState(): Buffer {
    return encodeState({ ctr: this.ctr, pendingWrite: this.pendingWrite, out: this.out });
  }
  restoreState(bytes: Buffer): void {
    const s = decodeState(bytes, z.strictObject({ ctr: u8, pendingWrite: u8, out: z.array(u8).max(16) }), 'i8042');
    Object.assign(this, s);
  }

  read(offset: number, data: Uint8Array): void {
    data.fill(0);
    if (offset === 4) {
      // Always report "output buffer full": the kernel then reads port 0x60, finds junk and gives
      // up on the controller quickly (0xff here makes it poll for seconds). Input buffer is never busy.
      data[0] = STATUS_OBF;
    } else if (offset === 0) {
      data[0] = this.out.shift() ?? 0;
    }
  }

  write(offset: number, data: Uint8Array): void {
    const v = data[0] ?? 0;
    if (offset === 4) {
      this.pendingWrite = 0;
      switch (v) {
        case CMD_RESET:
          this.resets++;
          this.onReset();
          break;
        case CMD_READ_CTR:
          this.out.push(this.ctr);
          break;
        case CMD_WRITE_CTR:
        case CMD_WRITE_OUTPUT:
          this.pendingWrite = v;
          break;
        case CMD_SELF_TEST:
          this.out.push(0x55);
          break;
        default:
          break;
      }
      if (this.out.length > 16) this.out.splice(0, this.out.length - 16);
    } else if (offset === 0) {
      if (this.pendingWrite === CMD_WRITE_CTR) this.ctr = v;
      else if (this.pendingWrite === CMD_WRITE_OUTPUT && !(v & 1)) {
        this.resets++;
        this.onReset();
      }
      this.pendingWrite = 0;
    }
  }
}
