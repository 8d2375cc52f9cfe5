// virtio-console (virtio 1.2, 5.3) with one port and no MULTIPORT: queue 0 receiveq (host → guest,
// device-writable buffers the driver posts), queue 1 transmitq (guest → host). Linux makes it
// /dev/hvc0 (the next hvcN for each further device). The host side is a Unix socket the VMM
// listens on (-chardev id=X,path=SOCK + -device virtconsole,chardev=X), served by the console
// hub in flow-control mode: any number of clients, output to all of them, input from any.
//
// Bounded both ways:
// - guest → host: while a connected client has more than 64 KiB queued (it does not read), the
//   device stops taking the guest's transmit buffers; they wait in the ring (Linux's hvc then
//   waits for the host, as with QEMU) until the client drains or leaves. With nobody connected the
//   bytes are discarded, as a serial line with nothing attached. One buffer counts at most
//   MAX_TX_CHAIN bytes (Linux sends at most a page); the rest of a longer one is dropped.
// - host → guest: input waits in a queue of at most RX_LIMIT bytes while the guest has posted no
//   receive buffers; over it the hub stops reading the clients (their writes wait in their socket
//   buffers) until the guest takes input again.
import { DEVICE_ID } from '../../../virtio/constants.js';
import { readConfigBytes, type ActivateContext, type VirtioDevice } from '../../../virtio/device.js';
import { ChainReader, ChainWriter } from '../../../virtio/queue.js';
import { ConsoleHub } from '../../../console.js';

const RX = 0;
const TX = 1;
const QUEUE_SIZE = 256;
/** Host input held for the guest before the clients are paused. */
export const RX_LIMIT = 64 * 1024;
/** A client with this much queued output stops the transmit queue. */
export const TX_HIGH_WATER = 64 * 1024;
/** Bytes taken from one transmit buffer at most. */
export const MAX_TX_CHAIN = 64 * 1024;

export interface ConsoleMetrics {
  /** guest → host bytes delivered to clients */
  txBytes: number;
  /** guest → host bytes discarded: nobody connected, or past MAX_TX_CHAIN */
  txDropped: number;
  /** host → guest bytes written into the guest's buffers */
  rxBytes: number;
  /** times the transmit queue waited for a slow client */
  txStalls: number;
  /** times host input was paused for a guest that did not read */
  rxPauses: number;
  rejected: number;
}

export class VirtioConsole implements VirtioDevice {
  readonly deviceType = DEVICE_ID.CONSOLE;
  readonly queueSizes = [QUEUE_SIZE, QUEUE_SIZE];
  /** no F_SIZE, F_MULTIPORT or F_EMERG_WRITE */
  readonly features = 0n;
  readonly metrics: ConsoleMetrics = { txBytes: 0, txDropped: 0, rxBytes: 0, txStalls: 0, rxPauses: 0, rejected: 0 };
  readonly hub: ConsoleHub;
  private ctx: ActivateContext | null = null;
  /** host input not yet in guest buffers */
  private input: Uint8Array[] = [];
  private inputBytes = 0;
  private stalled = false;

  constructor(readonly socketPath: string) {
    this.hub = new ConsoleHub(socketPath, false, { flowControl: true, highWater: TX_HIGH_WATER });
    this.hub.onInput = (b) => this.enqueueInput(b);
    this.hub.onDrain = () => {
      if (!this.stalled) return;
      this.stalled = false;
      this.notify(TX);
    };
  }

  /** Listens on the socket (before the VM runs). */
  async start(): Promise<void> {
    await this.hub.listen();
  }

  /** cols, rows (F_SIZE), max_nr_ports (F_MULTIPORT), emerg_wr (F_EMERG_WRITE): none offered, all 0. */
  readConfig(offset: number, data: Uint8Array): void {
    readConfigBytes(new Uint8Array(12), offset, data);
  }
  writeConfig(): void {}

  activate(ctx: ActivateContext): void {
    this.ctx = ctx;
    this.fillRx();
    this.notify(TX);
  }

  notify(index: number): void {
    if (index === RX) this.fillRx();
    else if (index === TX) this.drainTx();
  }

  /** Host bytes for the guest (from a client, or a test). */
  enqueueInput(b: Uint8Array): void {
    if (b.length === 0) return;
    this.input.push(Uint8Array.from(b));
    this.inputBytes += b.length;
    this.fillRx();
    if (this.inputBytes > RX_LIMIT) {
      this.metrics.rxPauses++;
      this.hub.pauseInput();
    }
  }

  /** Pending host input (bytes). */
  get inputPending(): number {
    return this.inputBytes;
  }

  private fillRx(): void {
    const ctx = this.ctx;
    const q = ctx?.queues[RX];
    if (!ctx || !q?.ready) return;
    let used = false;
    while (this.inputBytes > 0) {
      const p = q.popOrArm(ctx.mem);
      if (!p) break;
      used = true;
      if (p.error) {
        this.metrics.rejected++;
        q.addUsed(ctx.mem, p.error.head, 0);
        continue;
      }
      const w = new ChainWriter(ctx.mem, p.chain.writable);
      while (this.inputBytes > 0 && w.remaining > 0) {
        const head = this.input[0] as Uint8Array;
        const n = Math.min(head.length, w.remaining);
        w.write(head.subarray(0, n));
        this.inputBytes -= n;
        if (n === head.length) this.input.shift();
        else this.input[0] = head.subarray(n);
      }
      this.metrics.rxBytes += w.written;
      q.addUsed(ctx.mem, p.chain.head, w.written);
    }
    if (used) ctx.interrupt.signalUsed(RX);
    if (this.inputBytes <= RX_LIMIT / 2) this.hub.resumeInput();
  }

  private drainTx(): void {
    const ctx = this.ctx;
    const q = ctx?.queues[TX];
    if (!ctx || !q?.ready) return;
    let used = false;
    for (;;) {
      const connected = this.hub.clientCount > 0;
      if (connected && !this.hub.writable) {
        // leave the rest in the ring; onDrain picks it up
        if (!this.stalled) this.metrics.txStalls++;
        this.stalled = true;
        break;
      }
      const p = q.popOrArm(ctx.mem);
      if (!p) break;
      used = true;
      if (p.error) {
        this.metrics.rejected++;
        q.addUsed(ctx.mem, p.error.head, 0);
        continue;
      }
      const r = new ChainReader(ctx.mem, p.chain.readable);
      const take = Math.min(r.total, MAX_TX_CHAIN);
      this.metrics.txDropped += r.total - take;
      if (connected) {
        for (const v of r.views(take)) this.hub.write(v);
        this.metrics.txBytes += take;
      } else {
        this.metrics.txDropped += take;
      }
      q.addUsed(ctx.mem, p.chain.head, 0);
    }
    if (used) ctx.interrupt.signalUsed(TX);
  }

  /** Driver reset: queues are gone; host input waits for the next driver. */
  reset(): void {
    this.ctx = null;
    this.stalled = false;
  }

  close(): void {
    this.reset();
    void this.hub.close();
  }
}
