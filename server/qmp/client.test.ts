// The QMP client against a real QEMU (-S: no guest runs), and against a hostile peer.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MAX_QMP_LINE, QmpClient, QmpError } from './client.js';
import { onRateLimitedEvents } from './event-rate.js';

test('talks to QEMU: capabilities, commands, errors, events', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'qmp-'));
  const sock = join(dir, 'qmp.sock');
  const qemu = spawn('qemu-system-x86_64', ['-M', 'none', '-accel', 'tcg', '-S', '-nodefaults', '-display', 'none', '-qmp', `unix:${sock},server=on,wait=off`], { stdio: 'ignore' });
  try {
    const qmp = await QmpClient.connectWithRetry(sock, 15_000);
    assert.ok(qmp.greeting && 'version' in qmp.greeting);
    const status = await qmp.execute<{ status: string; running: boolean }>('query-status');
    assert.equal(status.running, false);
    await assert.rejects(qmp.execute('no-such-command'), (e: unknown) => e instanceof QmpError && e.qmpClass === 'CommandNotFound');
    const resumed = new Promise((r) => qmp.once('event', r));
    await qmp.execute('cont');
    assert.equal(((await resumed) as { event: string }).event, 'RESUME');
    const closed = new Promise((r) => qmp.once('close', r));
    await qmp.execute('quit').catch(() => undefined);
    await closed;
    assert.equal(qmp.isClosed, true);
    await assert.rejects(qmp.execute('query-status'), /closed/);
  } finally {
    qemu.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  }
});

test('survives garbage from the peer and fails pending commands when it hangs up', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'qmp-'));
  const sock = join(dir, 'evil.sock');
  const server = createServer((c) => {
    c.write('{"QMP":{"version":{},"capabilities":[]}}\n');
    c.on('data', (d) => {
      const msg = JSON.parse(d.toString().trim().split('\n')[0]!) as { execute: string; id: string };
      if (msg.execute === 'qmp_capabilities') c.write(`not json at all\n{"return":{},"id":"${msg.id}"}\n`);
      else c.destroy(); // hang up mid-command
    });
  });
  await new Promise<void>((r) => server.listen(sock, r));
  try {
    const qmp = await QmpClient.connect(sock);
    await assert.rejects(qmp.execute('query-status'), /closed/);
  } finally {
    server.close();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a peer that sends an endless line is cut off at MAX_QMP_LINE instead of growing the server', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'qmp-'));
  const sock = join(dir, 'flood.sock');
  let peerClosed = false;
  const server = createServer((c) => {
    c.on('close', () => { peerClosed = true; });
    c.on('error', () => { /* cut off */ });
    c.write('{"QMP":{"version":{},"capabilities":[]}}\n');
    c.once('data', (d) => {
      const msg = JSON.parse(d.toString().trim().split('\n')[0]!) as { id: string };
      c.write(`{"return":{},"id":"${msg.id}"}\n`);
      // Then 8 MiB without a newline, as fast as the socket takes it.
      const chunk = Buffer.alloc(64 * 1024, 0x61);
      let sent = 0;
      const pump = () => {
        while (sent < 8 * 1024 * 1024 && !c.destroyed) {
          sent += chunk.length;
          if (!c.write(chunk)) return void c.once('drain', pump);
        }
      };
      pump();
    });
  });
  await new Promise<void>((r) => server.listen(sock, r));
  try {
    const qmp = await QmpClient.connect(sock);
    const why = new Promise<string>((r) => qmp.once('protocol-error', r));
    const closed = new Promise((r) => qmp.once('close', r));
    assert.match(await why, new RegExp(`longer than ${MAX_QMP_LINE}`));
    await closed;
    assert.equal(qmp.isClosed, true);
    await new Promise((r) => setTimeout(r, 100));
    assert.ok(peerClosed, 'the connection was closed');
  } finally {
    server.close();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a peer flooding events: all reach the handler, only the rate is marked for publishing, the rest is counted', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'qmp-'));
  const sock = join(dir, 'events.sock');
  let peer: import('node:net').Socket | undefined;
  const server = createServer((c) => {
    peer = c;
    c.write('{"QMP":{"version":{},"capabilities":[]}}\n');
    c.once('data', (d) => {
      const msg = JSON.parse(d.toString().trim().split('\n')[0]!) as { id: string };
      c.write(`{"return":{},"id":"${msg.id}"}\n`);
    });
  });
  await new Promise<void>((r) => server.listen(sock, r));
  let qmp: QmpClient | undefined;
  try {
    qmp = await QmpClient.connect(sock);
    let handled = 0;
    let published = 0;
    const drops: number[] = [];
    onRateLimitedEvents(qmp, (_ev, publish) => { handled++; if (publish) published++; }, (n) => drops.push(n), 100);
    peer!.write('{"event":"RTC_CHANGE","data":{}}\n'.repeat(1000));
    await new Promise((r) => setTimeout(r, 300));
    assert.equal(handled, 1000, 'every event is handed on (state changes must apply)');
    // the burst (200) and what leaked in while the flood arrived (in several reads on a loaded machine)
    assert.ok(published >= 200 && published <= 300, `the burst and what leaked in meanwhile are published: ${published}`);
    const unpublished = 1000 - published;
    peer!.write('{"event":"STOP","data":{}}\n');
    await new Promise((r) => setTimeout(r, 100));
    // reported whenever an event fits again: once, or in parts when the flood came in several reads
    assert.ok(drops.length >= 1, 'drops reported');
    assert.equal(drops.reduce((a, b) => a + b, 0), unpublished, 'every unpublished event is counted exactly once');
  } finally {
    // closed on failure too: an open connection would keep server.close() and the process waiting
    qmp?.close();
    peer?.destroy();
    server.close();
    rmSync(dir, { recursive: true, force: true });
  }
});
