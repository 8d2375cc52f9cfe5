// H3, at full speed: the console bridge on a real Unix socket (standing in for the VMM's console
// end, which here floods faster than any emulated UART can) with viewers on real WebSockets over
// TCP, wired as the console route wires them (api/console.ts socketViewer). A viewer that never
// reads is disconnected with 4008 once 1 MiB waits for it; a reading viewer is unaffected;
// output goes out in batched frames. (limits.test.ts does the same with a real guest, slower.)
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { createServer as createHttpServer } from 'node:http';
import { createServer as createUnixServer, type Socket } from 'node:net';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import WebSocket, { WebSocketServer } from 'ws';
import { ConsoleBridge, VIEWER_MAX_BUFFERED } from './bridge.js';
import { socketViewer, CLOSE_TOO_SLOW } from '../api/console.js';
import { sleep, waitFor } from '../test/harness.js';

const dir = mkdtempSync(join(tmpdir(), 'capsule-bridge-'));
after(() => rmSync(dir, { recursive: true, force: true }));

test('a stalled viewer is cut off at its cap, a reading one keeps up, frames are batched', { timeout: 120_000 }, async () => {
  // The VMM side: accepts the bridge, then writes as fast as the socket takes it.
  const path = join(dir, 'console.sock');
  let vmm: Socket | undefined;
  const unix = createUnixServer((s) => { vmm = s; });
  await new Promise<void>((r) => unix.listen(path, r));
  const bridge = new ConsoleBridge(path);
  await bridge.connect();
  await waitFor('the VMM side', () => vmm);

  // Viewers: a ws server whose connections become bridge viewers.
  const http = createHttpServer();
  const wss = new WebSocketServer({ server: http });
  wss.on('connection', (ws) => bridge.attach(socketViewer(ws)));
  await new Promise<void>((r) => http.listen(0, '127.0.0.1', r));
  const url = `ws://127.0.0.1:${(http.address() as { port: number }).port}`;
  const open = (ws: WebSocket) => new Promise((res, rej) => { ws.once('open', res); ws.once('error', rej); });

  const reader = new WebSocket(url);
  let received = 0;
  let frames = 0;
  reader.on('message', (d: Buffer) => { received += d.length; frames++; });
  const stalled = new WebSocket(url);
  let stalledCode = 0;
  stalled.on('close', (code) => { stalledCode = code; });
  stalled.on('error', () => { /* a terminated socket may error */ });
  await Promise.all([open(reader), open(stalled)]);
  await waitFor('both viewers attached', () => bridge.viewerCount === 2 || undefined);
  (stalled as unknown as { _socket: Socket })._socket.pause();

  // 64 MiB of guest output in 1 KiB writes (a serial console's small chunks).
  const chunk = Buffer.alloc(1024, 0x41);
  const total = 64 * 1024 * 1024;
  const t0 = Date.now();
  for (let sent = 0; sent < total; sent += chunk.length) {
    if (!vmm!.write(chunk)) await new Promise((r) => vmm!.once('drain', r));
  }
  await waitFor('the reader got everything', () => received >= total || undefined, 60_000);
  const seconds = (Date.now() - t0) / 1000;

  assert.equal(bridge.viewerCount, 1, 'the stalled viewer was detached');
  assert.equal(reader.readyState, WebSocket.OPEN, 'the reading viewer is still connected');
  assert.equal(received, total, 'the reading viewer lost nothing');
  // Batched: far fewer frames than the 65,536 writes (at most one per 10 ms or per 64 KiB).
  assert.ok(frames < total / (16 * 1024), `${frames} frames for ${total} bytes in ${seconds.toFixed(1)} s`);
  // The stalled viewer sees the close once it reads again: 4008, or the connection ended.
  (stalled as unknown as { _socket: Socket })._socket.resume();
  await waitFor('the stalled viewer closed', () => stalledCode !== 0 || undefined, 20_000);
  assert.ok(stalledCode === CLOSE_TOO_SLOW || stalledCode === 1006, `close code ${stalledCode}`);
  assert.ok(VIEWER_MAX_BUFFERED <= 1024 * 1024);

  reader.close();
  bridge.close();
  vmm!.destroy();
  await sleep(50);
  wss.close();
  http.close();
  unix.close();
});
