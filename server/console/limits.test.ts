// H2/H3: the console's memory bounds against a real guest (QEMU, the default image).
//   - input: a frame over 64 KiB closes the socket (1009); while the guest does not read (the
//     VM is paused), the server stops reading the viewer instead of buffering its input;
//   - output: batched frames; a viewer that never reads costs the others nothing (its
//     disconnection at 1 MiB is in bridge.test.ts: a guest's UART is too slow to fill the
//     kernel's socket buffers in a test's time).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import type WebSocket from 'ws';
import { TestServer, ConsoleCollector, sleep } from '../test/harness.js';

let s: TestServer;
let id: string;
before(async () => {
  s = await TestServer.start({ env: { CAPSULE_RATE_LIMIT: '100000', CAPSULE_RATE_BURST: '100000' } });
  id = (await s.api('POST', '/v1/vms', { name: 'console-limits', memoryMiB: 256 })).body.id;
  const started = await s.api('POST', `/v1/vms/${id}/start`);
  assert.equal(started.status, 200, JSON.stringify(started.body));
});
after(async () => { await s.stop(); });

const open = async (ws: WebSocket) => new Promise((res, rej) => { ws.once('open', res); ws.once('error', rej); });
const socketOf = (ws: WebSocket) => (ws as unknown as { _socket: { pause(): void; resume(): void } })._socket;

test('H2: a console frame over 64 KiB is refused with 1009', async () => {
  const ws = s.ws(`/v1/vms/${id}/console`);
  await open(ws);
  const closed = new Promise<number>((res) => ws.once('close', (code) => res(code)));
  ws.on('error', () => { /* the close code tells */ });
  ws.send(Buffer.alloc(1024 * 1024, 0x61));
  assert.equal(await closed, 1009);
});

test('H3: a guest flooding its console reaches a reading viewer in batched frames, the server stays small', { timeout: 300_000 }, async () => {
  const reader = new ConsoleCollector(s.ws(`/v1/vms/${id}/console`));
  await reader.opened;
  await reader.waitFor(/CAPSULE_READY/, 180_000);
  let frames = 0;
  reader.socket.on('message', () => { frames++; });
  // A second viewer that never reads: it must not cost the reader anything.
  const stalled = s.ws(`/v1/vms/${id}/console`);
  await open(stalled);
  socketOf(stalled).pause();
  const rss0 = s.rssMiB();
  const bytes0 = reader.text.length;
  const t0 = Date.now();
  reader.send("yes 'capsule-flood-0123456789-abcdefghijklmnopqrstuvwxyz-0123456789-ABCDEFGHIJKLMNOPQRSTUVWXYZ' | head -c 1500000; echo FLOOD-$((6*7))-DONE\n");
  await reader.waitFor('FLOOD-42-DONE', 120_000);
  const seconds = (Date.now() - t0) / 1000;
  const received = reader.text.length - bytes0;
  assert.ok(received > 1_500_000, `the reading viewer got the flood (${received} bytes)`);
  // Batched: at most one frame per 10 ms (plus full 64 KiB batches), not one per serial chunk.
  assert.ok(frames / seconds <= 150, `${frames} frames in ${seconds.toFixed(1)} s`);
  const grown = s.rssMiB() - rss0;
  assert.ok(grown < 100, `server RSS grew ${grown.toFixed(0)} MiB`);
  stalled.terminate();
  reader.close();
});

test('H2: while the guest does not read its console, the server stops reading the viewer', { timeout: 120_000 }, async () => {
  assert.equal((await s.api('POST', `/v1/vms/${id}/pause`)).status, 200);
  const ws = s.ws(`/v1/vms/${id}/console`);
  await open(ws);
  const rss0 = s.rssMiB();
  const chunk = Buffer.alloc(60 * 1024, 0x61);
  for (let i = 0; i < 600; i++) ws.send(chunk); // 36 MiB the paused guest cannot take
  await sleep(3000);
  // Most of it is still queued in this client: the server pushed back instead of buffering it.
  assert.ok(ws.bufferedAmount > 16 * 1024 * 1024, `client still holds ${ws.bufferedAmount} bytes`);
  const grown = s.rssMiB() - rss0;
  assert.ok(grown < 64, `server RSS grew ${grown.toFixed(0)} MiB`);
  ws.terminate();
  assert.equal((await s.api('POST', `/v1/vms/${id}/stop?force=true`)).status, 200);
});
