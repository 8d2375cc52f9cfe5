// VM networks with the native VMM (bin/capsule-vmm), jailed, on real KVM (in the nested lab via
// scripts/kvm-tests.sh): the tap in the VM's namespace opened by name before the seccomp filter;
// the guest reaches the outside with egress on and not with it off; the server reaches a listener
// in the guest; nothing is left after delete. (The QEMU test, network.test.ts, covers the rest.)
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { TestServer, ConsoleCollector, waitFor, sleep } from '../test/harness.js';
import { createOutside, GET_OUTSIDE, guest, leftovers, loadNetworkModules, removeLeftovers, removeOutside, sh, OUT_HOST, type Outside } from '../test/network.js';
import { instanceTag } from './host.js';
import { connectToGuest } from '../supervisor/components/network.js';
import { probeKvm } from '../../lib/kvm-probe.js';

let s: TestServer;
let tag = '';
let outside: Outside | undefined;

before(async () => {
  const kvm = probeKvm();
  assert.ok(kvm.available, `KVM is not usable here: ${kvm.reason}`);
  // The lab's L1 cannot autoload modules (its usermode helper's root is its initramfs): load them here.
  loadNetworkModules();
  // The server first: under TCG in the lab a second node starting beside it (the outside's
  // server) slowed its start past the harness's 30 s.
  s = await TestServer.start({ env: { CAPSULE_STOP_TIMEOUT: '120', CAPSULE_NET_POOL: '10.231.0.0/24', CAPSULE_NET_DNS: '192.0.2.53' } });
  tag = instanceTag(s.dataDir);
  outside = createOutside();
  const ns = outside.ns;
  await waitFor('the outside server', () => sh('ss', ['-N', ns, '-ltn']).out.includes(':8000') || undefined, 120_000);
  const h = (await s.api('GET', '/v1/health')).body;
  assert.equal(h.network?.enabled, true, JSON.stringify(h.network));
});
after(async () => {
  await s?.stop();
  if (tag) removeLeftovers(tag);
  removeOutside(outside);
});

test('native: egress on and off, the server reaches the guest, nothing left after delete', async () => {
  const c = await s.api('POST', '/v1/vms', { name: 'native-net', memoryMiB: 256 });
  assert.equal(c.status, 201);
  assert.equal(c.body.hypervisor, 'native');
  const id: string = c.body.id;
  const st = await s.api('POST', `/v1/vms/${id}/start`);
  assert.equal(st.status, 200, JSON.stringify(st.body) + s.output.slice(-2000));
  const net = st.body.network;
  const cons = new ConsoleCollector(s.ws(`/v1/vms/${id}/console`));
  await cons.opened;
  await cons.waitFor('CAPSULE_READY', 240_000);
  const conf = await guest(cons, 'ip -4 addr show eth0; ip route; cat /sys/class/net/eth0/address');
  assert.match(conf.out, /169\.254\.0\.21\/30/);
  assert.match(conf.out, new RegExp(net.mac));
  const out1 = await guest(cons, GET_OUTSIDE);
  assert.equal(out1.status, 0, out1.out);
  assert.match(out1.out, new RegExp(`outside-ok from (::ffff:)?${OUT_HOST.replace(/\./g, '\\.')}`));
  cons.send('while :; do echo native-guest-hello | nc -l -p 49983; done &\n');
  await sleep(1000);
  const got = await waitFor('the guest listens', async () => {
    const sock = await connectToGuest({ hostAddress: net.hostAddress }, 49983, 10_000).catch(() => undefined);
    if (!sock) return undefined;
    let data = '';
    sock.setEncoding('utf8').on('data', (d: string) => (data += d));
    await new Promise((r) => sock.once('end', r));
    sock.destroy();
    return data || undefined;
  }, 60_000);
  assert.match(got, /native-guest-hello/);
  assert.equal((await s.api('PATCH', `/v1/vms/${id}`, { network: { egress: false } })).status, 200);
  const out2 = await guest(cons, GET_OUTSIDE);
  assert.notEqual(out2.status, 0, out2.out);
  assert.equal((await s.api('PATCH', `/v1/vms/${id}`, { network: { egress: true } })).status, 200);
  const out3 = await guest(cons, GET_OUTSIDE);
  assert.equal(out3.status, 0, out3.out);
  assert.equal((await s.api('DELETE', `/v1/vms/${id}?force=true`)).status, 204);
  await waitFor('nothing left', () => (leftovers(tag).length === 0 ? true : undefined), 20_000).catch(() => assert.deepEqual(leftovers(tag), []));
});
