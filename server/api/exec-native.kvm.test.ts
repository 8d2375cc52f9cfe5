// The guest agent with the native VMM (bin/capsule-vmm), jailed, on real KVM (the nested lab,
// scripts/kvm-tests.sh): a sandbox VM on its own network; exec (exit code, stdout and stderr
// apart), a file up and back with the same sha256, and the ports proxy to a server in the guest.
// The QEMU tests (exec.test.ts, ports.test.ts) cover the rest; this shows the same paths work
// on the native VMM's virtio-blk root disk and virtio-net NIC.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { TEST_IMAGES_DIR, TestServer, waitFor } from '../test/harness.js';
import { instanceTag } from '../network/host.js';
import { loadNetworkModules, removeLeftovers } from '../test/network.js';
import { probeKvm } from '../../lib/kvm-probe.js';

let s: TestServer;
let tag = '';
let id = '';

before(async () => {
  assert.ok(probeKvm().available, 'KVM is not usable here');
  assert.ok(existsSync(join(TEST_IMAGES_DIR, 'sandbox', 'image.json')), 'the sandbox image (scripts/kvm-tests.sh copies or builds it)');
  // The lab's L1 cannot autoload modules: load what VM networks need.
  loadNetworkModules();
  s = await TestServer.start({ env: { CAPSULE_STOP_TIMEOUT: '120', CAPSULE_NET_POOL: '10.232.0.0/24', CAPSULE_NET_DNS: '192.0.2.53' } });
  tag = instanceTag(s.dataDir);
  const c = await s.api('POST', '/v1/vms', { name: 'native-sandbox', image: 'sandbox', memoryMiB: 512 });
  assert.equal(c.status, 201, JSON.stringify(c.body));
  assert.equal(c.body.hypervisor, 'native');
  id = c.body.id;
  const st = await s.api('POST', `/v1/vms/${id}/start`);
  assert.equal(st.status, 200, JSON.stringify(st.body) + s.output.slice(-2000));
  const t0 = Date.now();
  await s.waitForAgent(id, 300_000);
  console.log(`agent up ${Date.now() - t0} ms after start (native, lab)`);
});

after(async () => {
  await s?.stop();
  if (tag) removeLeftovers(tag);
});

test('native: exec, a file up and back, the ports proxy to a server in the guest', async () => {
  const r = await s.api('POST', `/v1/vms/${id}/exec`, { shell: 'echo out; echo err >&2; id -un; exit 3' });
  assert.equal(r.status, 200, JSON.stringify(r.body));
  assert.deepEqual([r.body.exitCode, r.body.stdout, r.body.stderr], [3, 'out\nuser\n', 'err\n']);

  const data = randomBytes(8 * 1024 * 1024);
  const put = await fetch(`${s.url}/v1/vms/${id}/files?path=up.bin`, { method: 'PUT', headers: { authorization: `Bearer ${s.token}` }, body: data });
  assert.equal(put.status, 200, await put.text());
  const sum = await s.api('POST', `/v1/vms/${id}/exec`, { shell: 'sha256sum up.bin' });
  const want = createHash('sha256').update(data).digest('hex');
  assert.equal(sum.body.stdout, `${want}  up.bin\n`);
  const back = await fetch(`${s.url}/v1/vms/${id}/files?path=up.bin`, { headers: { authorization: `Bearer ${s.token}` } });
  assert.equal(createHash('sha256').update(Buffer.from(await back.arrayBuffer())).digest('hex'), want);

  const bg = await s.api('POST', `/v1/vms/${id}/exec`, { shell: 'setsid nohup python3 -m http.server 8000 >/dev/null 2>&1 </dev/null &' });
  assert.equal(bg.body.exitCode, 0);
  const listing = await waitFor('the guest\'s http.server through the proxy', async () => {
    const p = await fetch(`${s.url}/v1/vms/${id}/ports/8000/`, { headers: { authorization: `Bearer ${s.token}` } }).catch(() => undefined);
    return p?.status === 200 ? p.text() : undefined;
  }, 120_000);
  assert.match(listing, /up\.bin/);
  assert.equal((await s.api('DELETE', `/v1/vms/${id}?force=true`)).status, 204);
});

test('native templates: built into a native snapshot; a pool claim and a restore run the start command\'s server, reseeded, with the agent answering', { timeout: 900_000 }, async () => {
  const exec = async (vm: string, shell: string): Promise<{ exitCode: number; stdout: string }> => {
    const r = await s.api('POST', `/v1/vms/${vm}/exec`, { shell });
    assert.equal(r.status, 200, JSON.stringify(r.body));
    return r.body;
  };
  const created = await s.api('POST', '/v1/templates', {
    name: 'native-web', image: 'sandbox', memoryMiB: 512, hypervisor: 'native', pool: 1,
    startCmd: 'mkdir -p ~/site && echo built-$((6*7)) > ~/site/index.html && cd ~/site && exec python3 -m http.server 8000 --bind 127.0.0.1',
    readyCmd: 'curl -sf http://127.0.0.1:8000/index.html',
  });
  assert.equal(created.status, 202, JSON.stringify(created.body));
  const t = await waitFor('the native template ready', async () => {
    const g = (await s.api('GET', '/v1/templates/native-web')).body;
    assert.notEqual(g.state, 'failed', JSON.stringify(g) + s.output.slice(-3000));
    return g.state === 'ready' ? g : undefined;
  }, 600_000);
  assert.equal(t.hypervisor, 'native');
  await waitFor('the pool ready', async () => {
    const p = (await s.api('GET', '/v1/pools')).body.items.find((x: any) => x.template === 'native-web');
    return p?.ready === 1 ? true : undefined;
  }, 300_000);
  const a = await s.api('POST', '/v1/vms', { name: 'native-claim', template: 'native-web' });
  assert.equal(a.status, 201, JSON.stringify(a.body));
  assert.equal(a.body.startedFrom, 'pool');
  assert.equal((await exec(a.body.id, 'curl -sf http://127.0.0.1:8000/index.html')).stdout, 'built-42\n');
  // pool 0: the next VM is a restore of the template's snapshot, not a pool VM
  assert.equal((await s.api('PATCH', '/v1/templates/native-web', { pool: 0 })).status, 200);
  await waitFor('the pool drained', async () => {
    const p = (await s.api('GET', '/v1/pools')).body.items.find((x: any) => x.template === 'native-web');
    return p?.ready === 0 && p?.warming === 0 ? true : undefined;
  }, 120_000);
  const b = await s.api('POST', '/v1/vms', { name: 'native-restore', template: 'native-web' });
  assert.equal(b.status, 201, JSON.stringify(b.body));
  assert.equal(b.body.startedFrom, 'snapshot');
  const page = await waitFor('the restored VM answers', async () => {
    const e = await s.api('POST', `/v1/vms/${b.body.id}/exec`, { shell: 'curl -sf http://127.0.0.1:8000/index.html' });
    return e.status === 200 && e.body.exitCode === 0 ? e.body.stdout : undefined;
  }, 120_000);
  assert.equal(page, 'built-42\n');
  // two copies of one snapshot: different random bytes (native-snapshots.kvm.test.ts checks the kernel's reseed)
  const rand = await Promise.all([a, b].map(async (r) => (await exec(r.body.id, 'head -c 16 /dev/urandom | od -An -tx1 | tr -d " \\n"')).stdout));
  assert.notEqual(rand[0], rand[1]);
  for (const r of [a, b]) assert.equal((await s.api('DELETE', `/v1/vms/${r.body.id}?force=true`)).status, 204);
  assert.equal((await s.api('DELETE', '/v1/templates/native-web')).status, 204);
});
