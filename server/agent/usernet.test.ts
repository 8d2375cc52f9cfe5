// The agent's fallback path for hosts without per-VM networking: CAPSULE_NETWORK=off with
// CAPSULE_AGENT_USERNET=1 gives an unjailed QEMU VM a user-mode NIC whose one host forward
// (127.0.0.1:PORT) reaches its agent (components/agent.ts, transports.ts). A real sandbox guest
// under TCG; exec through the API both ways (plain and WebSocket) and a file round trip.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { buildImage } from '../images/registry.js';
import { TEST_IMAGES_DIR, TestServer, waitFor } from '../test/harness.js';

let server: TestServer;
let vmId: string;

before(async () => {
  buildImage(TEST_IMAGES_DIR, 'sandbox', 'ignore'); // cached
  server = await TestServer.start({ env: { CAPSULE_NETWORK: 'off', CAPSULE_AGENT_USERNET: '1', CAPSULE_JAIL: 'off' } });
  const created = await server.api('POST', '/v1/vms', { name: 'usernet-vm', image: 'sandbox', memoryMiB: 512, hypervisor: 'qemu' });
  assert.equal(created.status, 201, JSON.stringify(created.body));
  vmId = created.body.id;
  assert.equal((await server.api('POST', `/v1/vms/${vmId}/start`)).status, 200);
});

after(async () => {
  await server?.stop();
});

test('CAPSULE_NETWORK=off + CAPSULE_AGENT_USERNET=1: exec and files reach the agent through the user-mode forward', async () => {
  const port = Number(readFileSync(join(server.dataDir, 'vms', vmId, 'agent.port'), 'utf8'));
  assert.ok(port >= 20000 && port < 60000, `the forward's port: ${port}`);
  await server.waitForAgent(vmId, 180_000);
  const r = await server.api('POST', `/v1/vms/${vmId}/exec`, { shell: 'ip -4 -o addr show scope global | grep -o "inet [0-9./]*"; id -un' });
  assert.equal(r.status, 200, JSON.stringify(r.body));
  assert.equal(r.body.stdout, 'inet 10.0.2.15/24\nuser\n', 'the user-mode network\'s static guest address');
  const put = await fetch(`${server.url}/v1/vms/${vmId}/files?path=/tmp/usernet.txt`, {
    method: 'PUT', headers: { authorization: `Bearer ${server.token}`, 'content-type': 'application/octet-stream' }, body: 'over slirp\n',
  });
  assert.equal(put.status, 200, await put.text());
  assert.equal((await server.api('GET', `/v1/vms/${vmId}/files?path=/tmp/usernet.txt`)).body, 'over slirp\n');
});
