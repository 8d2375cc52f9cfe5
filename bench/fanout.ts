// Event fan-out: N WebSocket subscribers on /v1/events while events are produced through the
// API (VM definitions created and deleted: VM_CREATED, VM_DELETED). Measures messages/s
// delivered and the latency from the event's timestamp to its arrival.
// Targets: >= 20k msgs/s delivered, p99 < 50 ms, with 1,000 subscribers.
import WebSocket from 'ws';
import { TestServer } from '../server/test/harness.js';
import { isMain, percentile, printJson, round } from './util.js';

export async function benchFanout(opts: { subscribers?: number; events?: number; ratePerSecond?: number } = {}) {
  const subscribers = opts.subscribers ?? 1000;
  const events = opts.events ?? 400;
  const rate = opts.ratePerSecond ?? 40; // events/s produced; x subscribers = msgs/s offered
  const s = await TestServer.start({ env: { CAPSULE_RATE_LIMIT: '10000000', CAPSULE_RATE_BURST: '10000000', CAPSULE_MAX_SOCKETS_PER_TOKEN: '100000', CAPSULE_LOG_LEVEL: 'warn' } });
  const sockets: WebSocket[] = [];
  try {
    const latencies: number[] = [];
    let received = 0;
    let dropped = 0;
    for (let i = 0; i < subscribers; i++) {
      const ws = s.ws('/v1/events');
      ws.on('message', (d) => {
        const m = JSON.parse(d.toString()) as { event: string; timestamp: string; data: { count?: number } };
        if (m.event === 'EVENTS_DROPPED') { dropped += m.data.count ?? 0; return; }
        received++;
        latencies.push(Date.now() - Date.parse(m.timestamp));
      });
      sockets.push(ws);
      await new Promise((r, j) => { ws.once('open', r); ws.once('error', j); });
    }
    const t0 = performance.now();
    const interval = 1000 / rate;
    for (let i = 0; i < events; i += 2) {
      const c = await s.api('POST', '/v1/vms', { name: `fan-${i}` });
      await s.api('DELETE', `/v1/vms/${c.body.id}`);
      const behind = t0 + ((i + 2) * interval) - performance.now();
      if (behind > 0) await new Promise((r) => setTimeout(r, behind));
    }
    const expected = events * subscribers;
    const deadline = Date.now() + 30_000;
    while (received + dropped < expected && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    const seconds = (performance.now() - t0) / 1000;
    latencies.sort((a, b) => a - b);
    return {
      bench: 'event-fanout',
      subscribers,
      eventsProduced: events,
      messagesExpected: expected,
      messagesDelivered: received,
      messagesDropped: dropped,
      seconds: round(seconds, 2),
      messagesPerSecond: round(received / seconds, 0),
      latencyMs: { p50: percentile(latencies, 50), p99: percentile(latencies, 99), max: latencies.at(-1) },
      target: { messagesPerSecond: 20_000, p99Ms: 50 },
      meetsTarget: received / seconds >= 20_000 && percentile(latencies, 99) < 50,
    };
  } finally {
    for (const ws of sockets) ws.terminate();
    await s.stop();
  }
}

if (isMain(import.meta.url)) printJson(await benchFanout());
