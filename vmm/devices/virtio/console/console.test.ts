// virtio-console against the driver-side stand-in and a real Unix socket: bytes both ways, output
// with nobody connected, a client that does not read (the transmit queue waits), a guest that does
// not read (host input is bounded and the client's writes wait), and several clients.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { randomBytes } from 'node:crypto';
import type { Socket } from 'node:net';
import { GuestAddress as GA } from '../../../memory/guest-memory.js';
import { F_VERSION_1, STATUS } from '../../../virtio/constants.js';
import { TestDriver } from '../../../virtio/testing/driver.js';
import { connectUnix, waitFor } from '../../../testing/clients.js';
import { RX_LIMIT, VirtioConsole } from './device.js';

const tick = (): Promise<void> => new Promise((r) => setImmediate(r));

async function setup(): Promise<{ d: TestDriver; c: VirtioConsole; path: string }> {
  const path = join(mkdtempSync(join(tmpdir(), 'virtcon-')), 'hvc.sock');
  const c = new VirtioConsole(path);
  await c.start();
  const d = new TestDriver(c);
  assert.equal(d.init(F_VERSION_1) & STATUS.DRIVER_OK, STATUS.DRIVER_OK);
  return { d, c, path };
}

/** A client that collects what it reads. */
async function client(path: string): Promise<{ sock: Socket; got: () => Buffer }> {
  const sock = await connectUnix(path);
  const chunks: Buffer[] = [];
  sock.on('data', (b: Buffer) => chunks.push(b));
  return { sock, got: () => Buffer.concat(chunks) };
}

/** Receive buffers the "guest" posted, by head, so their content can be read back. */
class RxBuffers {
  private byHead = new Map<number, number>();
  out: Buffer[] = [];
  constructor(private readonly d: TestDriver) {}
  post(n: number, size: number): void {
    for (let i = 0; i < n; i++) {
      const { head, addrs } = this.d.submit(0, [{ writable: size }]);
      this.byHead.set(head, addrs[0] as number);
    }
  }
  collect(): void {
    for (const u of this.d.takeUsed(0)) this.out.push(Buffer.from(this.d.mem.read(GA(this.byHead.get(u.id) as number), u.len)));
  }
  get text(): string {
    return Buffer.concat(this.out).toString();
  }
}

test('guest → host and host → guest on the socket; output with nobody connected is discarded', async () => {
  const { d, c, path } = await setup();
  try {
    d.submit(1, [{ data: Buffer.from('lost ') }]);
    assert.equal(d.takeUsed(1).length, 1);
    assert.equal(c.metrics.txDropped, 5);
    const a = await client(path);
    await waitFor(() => c.hub.clientCount === 1 || undefined, 2000, 'client');
    d.submit(1, [{ data: Buffer.from('hel') }, { data: Buffer.from('lo\n') }]);
    assert.deepEqual(d.takeUsed(1).map((u) => u.len), [0]);
    await waitFor(() => a.got().toString() === 'hello\n' || undefined, 2000, 'hello at the client');
    assert.equal(c.metrics.txBytes, 6);

    // input before the guest posted receive buffers waits; then fills them in order
    a.sock.write('0123456789');
    await waitFor(() => c.inputPending === 10 || undefined, 2000, 'input queued');
    const rx = new RxBuffers(d);
    rx.post(2, 4);
    rx.collect();
    assert.equal(rx.text, '01234567');
    rx.post(1, 64);
    rx.collect();
    assert.equal(rx.text, '0123456789');
    assert.equal(c.inputPending, 0);
    // a buffer waiting in the ring is used as soon as input comes
    rx.post(1, 64);
    const b = await client(path);
    await waitFor(() => c.hub.clientCount === 2 || undefined, 2000, 'second client');
    b.sock.write('xyz');
    await waitFor(() => { rx.collect(); return rx.text.endsWith('xyz') || undefined; }, 2000, 'xyz in the guest');
    d.submit(1, [{ data: Buffer.from('both') }]);
    await waitFor(() => (a.got().toString().endsWith('both') && b.got().toString() === 'both') || undefined, 2000, 'output to every client');
    a.sock.destroy();
    b.sock.destroy();
  } finally {
    c.close();
  }
});

test('a client that does not read stops the transmit queue (bounded), which resumes when it reads', async () => {
  const { d, c, path } = await setup();
  try {
    const a = await client(path);
    a.sock.pause();
    await waitFor(() => c.hub.clientCount === 1 || undefined, 2000, 'client');
    const chunk = randomBytes(4096);
    let submitted = 0;
    while (c.metrics.txStalls === 0 && submitted < 4000) {
      d.submit(1, [{ data: chunk }]);
      submitted++;
      d.resetData();
      await tick();
      await tick();
    }
    assert.equal(c.metrics.txStalls, 1, `no stall after ${submitted} buffers`);
    // the guest keeps writing: nothing more is taken while the client sleeps
    const consumed = (): number => c.metrics.txBytes / 4096;
    const at = consumed();
    for (let i = 0; i < 50; i++) d.submit(1, [{ data: chunk }]);
    submitted += 50;
    await new Promise((r) => setTimeout(r, 100));
    assert.equal(consumed(), at, 'stalled');
    assert.ok(c.hub.backlog <= 64 * 1024 + 4096, `backlog ${c.hub.backlog}`);
    a.sock.resume();
    await waitFor(() => consumed() === submitted || undefined, 5000, 'all buffers taken after the client reads');
    await waitFor(() => a.got().length === submitted * 4096 || undefined, 5000, 'all bytes at the client');
    assert.ok(d.takeUsed(1).length > 0);
    a.sock.destroy();
  } finally {
    c.close();
  }
});

test('a guest that does not read: host input is bounded and the client waits; nothing is lost', async () => {
  const { d, c, path } = await setup();
  try {
    const a = await client(path);
    await waitFor(() => c.hub.clientCount === 1 || undefined, 2000, 'client');
    const data = randomBytes(1 << 20);
    a.sock.write(data);
    await new Promise((r) => setTimeout(r, 300));
    assert.ok(c.metrics.rxPauses >= 1);
    assert.ok(c.inputPending <= RX_LIMIT + (64 << 10), `pending ${c.inputPending}`);
    assert.ok(a.sock.writableLength > 0 || c.inputPending < data.length, 'the rest waits on the client side');
    // the guest starts reading, 16 pages at a time
    const rx = new RxBuffers(d);
    let total = 0;
    let posted = 0;
    while (total < data.length) {
      if (posted - rx.out.length < 32) {
        rx.post(16, 4096);
        posted += 16;
      }
      rx.collect();
      total = rx.out.reduce((n, b) => n + b.length, 0);
      await tick();
      if (total < data.length) await new Promise((r) => setTimeout(r, 1));
    }
    assert.ok(Buffer.concat(rx.out).equals(data), 'every byte, in order');
    a.sock.destroy();
  } finally {
    c.close();
  }
});
