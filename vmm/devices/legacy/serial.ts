// 8250/16550A UART (COM1: 0x3f8, IRQ 4). Output goes to a sink; input is queued from the host.
// Details that matter to Linux: IER keeps its low 4 bits (the driver's scratch test), IIR reports
// the THR-empty interrupt and clears it when read, loopback mirrors MCR into MSR (autoconfig),
// and the interrupt line is only driven on level changes.
import * as z from 'zod';
import type { BusDevice } from '../../bus/bus.js';
import { decodeState, encodeState, u8, type Snapshottable } from '../snapshot.js';

const DATA = 0, IER = 1, IIR_FCR = 2, LCR = 3, MCR = 4, LSR = 5, MSR = 6, SCR = 7;
const IER_RDI = 0x01, IER_THRI = 0x02;
const IIR_NONE = 0x01, IIR_THRI = 0x02, IIR_RDI = 0x04, IIR_FIFO = 0xc0;
const LCR_DLAB = 0x80;
const LSR_DR = 0x01, LSR_THRE = 0x20, LSR_TEMT = 0x40;
const MCR_LOOP = 0x10;
const MSR_CTS = 0x10, MSR_DSR = 0x20, MSR_DCD = 0x80;
const RX_FIFO = 64;
const RX_QUEUE_MAX = 1 << 16;

const StateSchema = z.strictObject({
  ier: z.number().int().min(0).max(0x0f), lcr: u8, mcr: z.number().int().min(0).max(0x1f), scr: u8, dll: u8, dlm: u8,
  fifoEnabled: z.boolean(), thrPending: z.boolean(), irqLevel: z.boolean(),
  rx: z.array(u8).max(RX_FIFO), backlog: z.array(u8).max(RX_QUEUE_MAX),
});

export class Serial implements BusDevice, Snapshottable {
  readonly snapshotKind = 'serial-16550a';
  private ier = 0;
  private lcr = 0x03;
  private mcr = 0x08;
  private scr = 0;
  private dll = 0x0c;
  private dlm = 0;
  private fifoEnabled = false;
  private thrPending = false;
  private rx: number[] = [];
  private irqLevel = false;
  /** bytes the host sent that did not fit in the FIFO yet */
  private backlog: number[] = [];
  dropped = 0;

  trace: ((m: string) => void) | null = null;

  constructor(
    private readonly out: (bytes: Uint8Array) => void,
    private readonly setIrq: (level: boolean) => void,
  ) {}

  /** Queue host input for the guest (the console socket). */
  enqueueInput(bytes: Uint8Array): void {
    for (const b of bytes) {
      if (this.backlog.length >= RX_QUEUE_MAX) {
        this.dropped++;
        continue;
      }
      this.backlog.push(b);
    }
    this.refill();
    this.updateIrq();
  }

  private refill(): void {
    while (this.rx.length < RX_FIFO && this.backlog.length > 0) this.rx.push(this.backlog.shift() as number);
  }

  private iir(): number {
    const fifo = this.fifoEnabled ? IIR_FIFO : 0;
    if (this.ier & IER_RDI && this.rx.length > 0) return IIR_RDI | fifo;
    if (this.ier & IER_THRI && this.thrPending) return IIR_THRI | fifo;
    return IIR_NONE | fifo;
  }

  private updateIrq(): void {
    const level = (this.iir() & IIR_NONE) === 0;
    if (level !== this.irqLevel) {
      this.irqLevel = level;
      this.setIrq(level);
    }
  }

  read(offset: number, data: Uint8Array): void {
    data.fill(0);
    data[0] = this.readReg(offset);
  }

  write(offset: number, data: Uint8Array): void {
    this.writeReg(offset, data[0] ?? 0);
  }

  readReg(offset: number): number {
    const dlab = (this.lcr & LCR_DLAB) !== 0;
    let v = 0;
    switch (offset) {
      case DATA:
        if (dlab) return this.dll;
        v = this.rx.shift() ?? 0;
        this.refill();
        break;
      case IER:
        return dlab ? this.dlm : this.ier;
      case IIR_FCR:
        v = this.iir();
        if ((v & 0x0f) === IIR_THRI) this.thrPending = false;
        break;
      case LCR: return this.lcr;
      case MCR: return this.mcr;
      case LSR:
        v = LSR_THRE | LSR_TEMT | (this.rx.length > 0 ? LSR_DR : 0);
        break;
      case MSR:
        if (this.mcr & MCR_LOOP) {
          return ((this.mcr & 0x01) << 5) | ((this.mcr & 0x02) << 3) | ((this.mcr & 0x04) << 4) | ((this.mcr & 0x08) << 4);
        }
        return MSR_DCD | MSR_DSR | MSR_CTS;
      case SCR: return this.scr;
      default: return 0xff;
    }
    this.updateIrq();
    return v;
  }

  writeReg(offset: number, v: number): void {
    const dlab = (this.lcr & LCR_DLAB) !== 0;
    switch (offset) {
      case DATA:
        if (dlab) {
          this.dll = v;
          return;
        }
        if (this.mcr & MCR_LOOP) {
          if (this.rx.length < RX_FIFO) this.rx.push(v);
        } else {
          this.out(Uint8Array.of(v));
        }
        this.thrPending = true;
        break;
      case IER:
        if (dlab) {
          this.dlm = v;
          return;
        }
        this.trace?.(`IER <- 0x${v.toString(16)} (was 0x${this.ier.toString(16)}, thr pending ${this.thrPending})`);
        // enabling the THR-empty interrupt with an empty THR raises it at once
        if (v & IER_THRI && !(this.ier & IER_THRI)) this.thrPending = true;
        this.ier = v & 0x0f;
        break;
      case IIR_FCR:
        this.fifoEnabled = (v & 0x01) !== 0;
        if (v & 0x02) this.rx = [];
        break;
      case LCR:
        this.lcr = v;
        return;
      case MCR:
        this.mcr = v & 0x1f;
        return;
      case SCR:
        this.scr = v;
        return;
      default:
        return;
    }
    this.updateIrq();
  }

  /** Registers and unread input; the interrupt line's level is the irqchip's (restored with it). */
  saveState(): Buffer {
    const { ier, lcr, mcr, scr, dll, dlm, fifoEnabled, thrPending, irqLevel, rx, backlog } = this;
    return encodeState({ ier, lcr, mcr, scr, dll, dlm, fifoEnabled, thrPending, irqLevel, rx, backlog });
  }

  restoreState(bytes: Buffer): void {
    const s = decodeState(bytes, StateSchema, 'serial');
    Object.assign(this, s);
  }

  reset(): void {
    this.ier = 0;
    this.lcr = 0x03;
    this.mcr = 0x08;
    this.fifoEnabled = false;
    this.thrPending = false;
    this.rx = [];
    this.updateIrq();
  }
}
