// GET /metrics against a real server process with real QEMU VMMs (no guest needs to boot):
// the token, the format, the families, and that the figures move with what happens.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { EventCollector, TestServer, freePort, waitFor } from '../test/harness.js';
import { kill } from '../supervisor/process.js';

let s: TestServer;
before(async () => { s = await TestServer.start({ env: { CAPSULE_STOP_TIMEOUT: '5' } }); });
after(async () => { await s.stop(); });

/** The samples of a Prometheus text exposition: `name{labels}` -> value. */
function parse(text: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const at = line.lastIndexOf(' ');
    out.set(line.slice(0, at), Number(line.slice(at + 1)));
  }
  return out;
}

async function scrape(server = s): Promise<Map<string, number>> {
  const r = await server.api('GET', '/metrics');
  assert.equal(r.status, 200, String(r.body));
  return parse(r.body as string);
}

const vmsIn = (m: Map<string, number>, state: string) => m.get(`capsule_vms{state="${state}",backend="qemu",tenant="default"}`);
const lifecycle = (m: Map<string, number>, what: string) => m.get(`capsule_vm_${what}_total{backend="qemu",tenant="default"}`);

test('/metrics needs an admin token and speaks the Prometheus text format', async () => {
  const none = await fetch(`${s.url}/metrics`);
  assert.equal(none.status, 401);
  assert.equal(((await none.json()) as { error: { code: string } }).error.code, 'unauthorized');
  assert.equal((await fetch(`${s.url}/metrics`, { headers: { authorization: 'Bearer cap_wrong' } })).status, 401);
  const r = await s.api('GET', '/metrics');
  assert.equal(r.status, 200);
  assert.equal(r.headers.get('content-type'), 'text/plain; version=0.0.4; charset=utf-8');
  const text = r.body as string;
  for (const [family, type] of [
    ['capsule_vms', 'gauge'], ['capsule_vm_starts_total', 'counter'], ['capsule_vm_stops_total', 'counter'], ['capsule_vm_crashes_total', 'counter'],
    ['capsule_http_request_duration_seconds', 'histogram'], ['capsule_events_published_total', 'counter'], ['capsule_events_dropped_total', 'counter'],
    ['capsule_websockets_open', 'gauge'], ['capsule_qmp_round_trip_seconds', 'histogram'], ['capsule_vm_cpu_seconds_total', 'counter'],
    ['capsule_vm_memory_bytes', 'gauge'], ['capsule_host_memory_capacity_bytes', 'gauge'], ['capsule_host_memory_free_bytes', 'gauge'],
    ['capsule_host_vcpus_capacity', 'gauge'], ['capsule_host_vcpus_free', 'gauge'],
    ['process_cpu_seconds_total', 'counter'], ['process_resident_memory_bytes', 'gauge'], ['nodejs_eventloop_lag_seconds', 'gauge'],
  ]) assert.match(text, new RegExp(`^# TYPE ${family} ${type}$`, 'm'), family);
  const m = parse(text);
  assert.equal(vmsIn(m, 'running'), 0, 'every state is there, zero or not');
  assert.equal(m.get('capsule_host_memory_reserved_bytes'), 0);
  assert.equal(m.get('capsule_host_memory_free_bytes'), m.get('capsule_host_memory_capacity_bytes'));
});

test('VM lifecycle: state gauges, counters, host capacity, per-VM CPU and memory, QMP, WebSockets, route patterns', async () => {
  const before = await scrape();
  const created = await s.api('POST', '/v1/vms', { name: 'metrics-a', memoryMiB: 256 });
  assert.equal(created.status, 201);
  const id = created.body.id as string;
  let m = await scrape();
  assert.equal(vmsIn(m, 'created'), 1);
  assert.ok(m.get('capsule_events_published_total')! > before.get('capsule_events_published_total')!, 'VM_CREATED counted');

  const events = new EventCollector(s.ws(`/v1/vms/${id}/events`));
  await events.opened;
  await waitFor('the events socket counted', async () => (await scrape()).get('capsule_websockets_open{kind="events"}') === 1 || undefined, 5000);

  const started = await s.api('POST', `/v1/vms/${id}/start`);
  assert.equal(started.status, 200, JSON.stringify(started.body));
  m = await scrape();
  assert.equal(vmsIn(m, 'running'), 1);
  assert.equal(vmsIn(m, 'created'), 0);
  assert.equal(lifecycle(m, 'starts'), 1);
  assert.equal(m.get('capsule_host_memory_reserved_bytes'), 256 * 1024 * 1024);
  assert.equal(m.get('capsule_host_vcpus_reserved'), 1);
  assert.equal(m.get('capsule_host_memory_free_bytes'), m.get('capsule_host_memory_capacity_bytes')! - 256 * 1024 * 1024);
  // The VMM's own usage: QEMU has its guest RAM mapped, and some of it is resident at once.
  const memory = m.get(`capsule_vm_memory_bytes{vm="${id}",tenant="default"}`);
  const cpu = m.get(`capsule_vm_cpu_seconds_total{vm="${id}",tenant="default"}`);
  assert.ok(memory !== undefined && memory > 1024 * 1024, `memory ${memory}`);
  assert.ok(cpu !== undefined && cpu >= 0, `cpu ${cpu}`);
  await waitFor('CPU time grows', async () => ((await scrape()).get(`capsule_vm_cpu_seconds_total{vm="${id}",tenant="default"}`)! > cpu) || undefined, 20_000);
  // The server's QMP commands were timed (qmp_capabilities at connect at least).
  assert.ok((m.get('capsule_qmp_round_trip_seconds_count{command="qmp_capabilities",outcome="ok"}') ?? 0) >= 1);

  assert.equal((await s.api('POST', `/v1/vms/${id}/stop?force=true`)).status, 200);
  m = await scrape();
  assert.equal(vmsIn(m, 'stopped'), 1);
  assert.equal(lifecycle(m, 'stops'), 1);
  assert.equal(m.get('capsule_host_memory_reserved_bytes'), 0, 'the stop gave the room back');
  assert.equal(m.get(`capsule_vm_memory_bytes{vm="${id}",tenant="default"}`), undefined, 'a stopped VM has no usage series');

  // A VMM killed behind the server's back is a crash.
  const again = await s.api('POST', `/v1/vms/${id}/start`);
  assert.equal(again.status, 200);
  kill(again.body.pid as number);
  await events.waitFor('CRASHED', () => true, 20_000);
  m = await scrape();
  assert.equal(lifecycle(m, 'crashes'), 1);
  assert.equal(lifecycle(m, 'starts'), 2);
  assert.equal(vmsIn(m, 'crashed'), 1);
  assert.equal(m.get('capsule_host_memory_reserved_bytes'), 0, 'the crash gave the room back');

  events.close();
  await waitFor('the events socket uncounted', async () => (await scrape()).get('capsule_websockets_open{kind="events"}') === 0 || undefined, 5000);

  // Requests are labelled by route pattern, never by the VM's id.
  const text = (await s.api('GET', '/metrics')).body as string;
  assert.match(text, /capsule_http_request_duration_seconds_count\{method="POST",route="\/v1\/vms\/:id\/start",status="200"\} 2/);
  assert.match(text, /capsule_http_request_duration_seconds_count\{method="POST",route="\/v1\/vms",status="201"\} 1/);
  const requestLines = text.split('\n').filter((l) => l.startsWith('capsule_http_request_duration_seconds'));
  assert.ok(requestLines.every((l) => !l.includes(id)), 'no raw id in a route label');
  assert.equal((await s.api('DELETE', `/v1/vms/${id}`)).status, 204);
});

test('host capacity in use is rebuilt from the running VMs when the server restarts', async () => {
  const id = (await s.api('POST', '/v1/vms', { name: 'metrics-restart', memoryMiB: 192, vcpus: 2 })).body.id as string;
  assert.equal((await s.api('POST', `/v1/vms/${id}/start`)).status, 200);
  await s.kill9();
  await s.launch();
  await waitFor('reattached', async () => ((await s.api('GET', `/v1/vms/${id}`)).body.state === 'running') || undefined, 10_000);
  const m = await scrape();
  assert.equal(m.get('capsule_host_memory_reserved_bytes'), 192 * 1024 * 1024);
  assert.equal(m.get('capsule_host_vcpus_reserved'), 2);
  assert.equal(vmsIn(m, 'running'), 1);
  assert.equal((await s.api('DELETE', `/v1/vms/${id}?force=true`)).status, 204);
  assert.equal((await scrape()).get('capsule_host_memory_reserved_bytes'), 0);
});

test('CAPSULE_METRICS_ADDR: a separate listener serves /metrics without a token, the main one no longer does; unjailed VMs are measured from /proc', async () => {
  const port = await freePort();
  const t = await TestServer.start({ env: { CAPSULE_METRICS_ADDR: `127.0.0.1:${port}`, CAPSULE_JAIL: 'off' } });
  try {
    const r = await fetch(`http://127.0.0.1:${port}/metrics`);
    assert.equal(r.status, 200);
    assert.equal(r.headers.get('content-type'), 'text/plain; version=0.0.4; charset=utf-8');
    assert.match(await r.text(), /^# TYPE capsule_vms gauge$/m);
    assert.equal((await fetch(`http://127.0.0.1:${port}/v1/vms`)).status, 404, 'only /metrics there');
    const main = await t.api('GET', '/metrics');
    assert.equal(main.status, 404, 'not on the main listener, even with the admin token');
    assert.equal((await t.api('GET', '/v1/vms')).status, 200);
    // No jail, no cgroup: the daemonized QEMU's own /proc figures.
    const id = (await t.api('POST', '/v1/vms', { name: 'unjailed' })).body.id as string;
    assert.equal((await t.api('POST', `/v1/vms/${id}/start`)).status, 200);
    const m = parse(await (await fetch(`http://127.0.0.1:${port}/metrics`)).text());
    assert.ok(m.get(`capsule_vm_memory_bytes{vm="${id}",tenant="default"}`)! > 1024 * 1024);
    assert.ok(m.get(`capsule_vm_cpu_seconds_total{vm="${id}",tenant="default"}`)! >= 0);
    assert.equal((await t.api('DELETE', `/v1/vms/${id}?force=true`)).status, 204);
  } finally {
    await t.stop();
  }
});

test('every answer says the server\'s own time for it (Server-Timing: app;dur=ms), refusals too', async () => {
  for (const r of [await s.api('GET', '/v1/vms'), await s.api('GET', '/v1/vms/nope'), { headers: (await fetch(`${s.url}/v1/vms`)).headers }]) {
    const m = /^app;dur=(\d+\.\d\d)$/.exec(r.headers.get('server-timing') ?? '');
    assert.ok(m, `server-timing: ${r.headers.get('server-timing')}`);
    assert.ok(Number(m[1]) >= 0 && Number(m[1]) < 60_000, m[1]);
  }
});
