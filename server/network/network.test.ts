// VM networks in real guests (QEMU; `-M pc` under TCG here) through the HTTP API of a real server
// (jailed where the host allows), on real network namespaces, veth pairs, taps and nftables
// (docs/network.md). "Outside" is a network namespace this test makes and connects to the root
// namespace like an uplink (a veth pair with a /24 on it): a remote host the VMs reach only through
// the host's NAT. The host's own listeners are a TCP server on 0.0.0.0 in this process and the
// capsule server itself (HOST=0.0.0.0).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createServer, type Server } from 'node:net';
import { TestServer, ConsoleCollector, waitFor, sleep } from '../test/harness.js';
import { createOutside, GET_OUTSIDE, guest, leftovers as leftoversOf, must, removeLeftovers, removeOutside, sh, shAsync, OUT_HOST, type Outside } from '../test/network.js';
import { instanceTag } from './host.js';
import { connectToGuest } from '../supervisor/components/network.js';

const POOL = `10.${214 + (process.pid % 20)}.0.0/24`;

let s: TestServer;
let tag = '';
let outside: Outside | undefined;
let OUT_NS = '';
let hostListener: Server;
let hostPort: number;
let hostAddr: string;
let hostHits = 0;
const leftovers = () => leftoversOf(tag);

before(async () => {
  outside = createOutside();
  OUT_NS = outside.ns;
  // A listener of the host's on every address.
  hostListener = createServer((c) => { hostHits++; c.end('host-listener\n'); });
  await new Promise<void>((r) => hostListener.listen(0, '0.0.0.0', r));
  hostPort = (hostListener.address() as { port: number }).port;
  // The host's own address on its main interface (not loopback, not ours).
  hostAddr = /src (\d+\.\d+\.\d+\.\d+)/.exec(sh('ip', ['route', 'get', '1.1.1.1']).out)?.[1] ?? OUT_HOST;
  s = await TestServer.start({ env: { CAPSULE_BUILD_IMAGE: '0', CAPSULE_NET_POOL: POOL, CAPSULE_NET_DNS: '192.0.2.53', HOST: '0.0.0.0' } });
  tag = instanceTag(s.dataDir);
  const h = (await s.api('GET', '/v1/health')).body;
  assert.equal(h.network?.enabled, true, `networks are not available: ${JSON.stringify(h.network)}`);
  await waitFor('the outside server', () => sh('ss', ['-N', OUT_NS, '-ltn']).out.includes(':8000') || undefined, 20_000);
});

after(async () => {
  await s?.stop();
  // A failed test may leave its VMs' networks (the server was killed, its data directory is gone).
  if (tag) removeLeftovers(tag);
  removeOutside(outside);
  hostListener?.close();
});

async function bootVm(name: string, extra: Record<string, unknown> = {}): Promise<{ id: string; vm: any; cons: ConsoleCollector }> {
  const c = await s.api('POST', '/v1/vms', { name, memoryMiB: 256, ...extra });
  assert.equal(c.status, 201, JSON.stringify(c.body));
  const id: string = c.body.id;
  const st = await s.api('POST', `/v1/vms/${id}/start`);
  assert.equal(st.status, 200, JSON.stringify(st.body));
  const cons = new ConsoleCollector(s.ws(`/v1/vms/${id}/console`));
  await cons.opened;
  await cons.waitFor('CAPSULE_READY', 240_000);
  return { id, vm: st.body, cons };
}

/** The root namespace's end of a VM's veth pair: its host-side address minus one. */
const gatewayOf = (a: string): string => a.split('.').map((p, i) => (i === 3 ? String(Number(p) - 1) : p)).join('.');
const wgetOutside = GET_OUTSIDE;
/** busybox nc: connect, print what the other side sends, give up after 4 s. */
const ncTo = (addr: string, port: number) => `echo x | nc -w 4 ${addr} ${port}`;

test('egress, isolation from each other and from the host, the host reaches the guest, runtime egress switch, nothing left after delete or a kill -9', async () => {
  const a = await bootVm('net-a');
  const b = await bootVm('net-b');
  const na = a.vm.network;
  const nb = b.vm.network;
  assert.equal(na.enabled, true);
  assert.equal(na.egress, true);
  assert.equal(na.guestAddress, '169.254.0.21');
  assert.equal(nb.guestAddress, '169.254.0.21', 'every VM has the same guest address');
  assert.notEqual(na.hostAddress, nb.hostAddress, 'host-side addresses are unique');
  assert.match(na.mac, /^02:ca:/);
  assert.equal(leftovers().filter((l) => l.includes('capsule-') && !l.includes('table')).length >= 2, true);

  // The guest's configuration: its address, its route, its resolver, its MAC.
  const conf = await guest(a.cons, 'ip -4 addr show eth0; ip route; cat /etc/resolv.conf; cat /sys/class/net/eth0/address');
  assert.match(conf.out, /169\.254\.0\.21\/30/);
  assert.match(conf.out, /default via 169\.254\.0\.22/);
  assert.match(conf.out, /nameserver 192\.0\.2\.53/);
  assert.match(conf.out, new RegExp(na.mac));

  // Egress on: the outside answers, and sees the host's uplink address (NAT), not the guest's.
  const out1 = await guest(a.cons, wgetOutside);
  assert.equal(out1.status, 0, out1.out);
  assert.match(out1.out, new RegExp(`outside-ok from (::ffff:)?${OUT_HOST.replace(/\./g, '\\.')}`));

  // The host reaches a listener in the guest through the host-side address (the agent's port).
  a.cons.send('while :; do echo guest-a-hello | nc -l -p 49983; done &\n');
  b.cons.send('while :; do echo guest-b-hello | nc -l -p 49983; done &\n');
  await sleep(2000);
  const fromGuest = async (addr: string) => {
    const sock = await connectToGuest({ hostAddress: addr }, 49983, 10_000);
    let got = '';
    sock.setEncoding('utf8').on('data', (d: string) => (got += d));
    await new Promise((r) => sock.once('end', r));
    sock.destroy();
    return got;
  };
  assert.match(await waitFor('guest a listens', () => fromGuest(na.hostAddress).catch(() => undefined), 30_000), /guest-a-hello/);
  assert.match(await waitFor('guest b listens', () => fromGuest(nb.hostAddress).catch(() => undefined), 30_000), /guest-b-hello/);

  // VMs never reach each other (b listens, as the host just saw).
  const ab = await guest(a.cons, ncTo(nb.hostAddress, 49983));
  assert.doesNotMatch(ab.out, /guest-b-hello/, 'VM a reached VM b');
  const abPing = await guest(a.cons, `ping -c 1 -W 2 ${nb.hostAddress}`);
  assert.notEqual(abPing.status, 0, abPing.out);

  // Nor the host: its listener on 0.0.0.0, the capsule server's port, on any of the host's addresses.
  // (async: the listener lives in this process, which spawnSync would block)
  const outsideSees = await shAsync('ip', ['netns', 'exec', OUT_NS, 'sh', '-c', `echo | busybox nc -w 3 ${OUT_HOST} ${hostPort}`]);
  assert.match(outsideSees, /host-listener/, 'control: the listener answers the outside');
  hostHits = 0;
  for (const addr of [hostAddr, OUT_HOST, '172.17.0.1', gatewayOf(na.hostAddress), '127.0.0.1']) {
    for (const port of [hostPort, s.port]) {
      const r = await guest(a.cons, ncTo(addr, port));
      assert.doesNotMatch(r.out, /host-listener|HTTP/, `VM reached the host at ${addr}:${port}`);
    }
  }
  assert.equal(hostHits, 0, 'no connection from the VM reached the host listener');

  // Egress off at run time: the outside is out of reach; back on: reachable again.
  const off = await s.api('PATCH', `/v1/vms/${a.id}`, { network: { egress: false } });
  assert.equal(off.status, 200, JSON.stringify(off.body));
  assert.equal(off.body.network.egress, false);
  const out2 = await guest(a.cons, wgetOutside);
  assert.notEqual(out2.status, 0, out2.out);
  assert.doesNotMatch(out2.out, /outside-ok/);
  // b is not affected.
  const outB = await guest(b.cons, wgetOutside);
  assert.equal(outB.status, 0, outB.out);
  // The host still reaches a's guest with egress off.
  assert.match(await fromGuest(na.hostAddress), /guest-a-hello/);
  const on = await s.api('PATCH', `/v1/vms/${a.id}`, { network: { egress: true } });
  assert.equal(on.body.network.egress, true);
  const out3 = await guest(a.cons, wgetOutside);
  assert.equal(out3.status, 0, out3.out);
  assert.equal((await s.api('PATCH', `/v1/vms/${a.id}`, { network: { egress: false }, name: 'x' })).status, 400, 'only network.egress may change');

  // Egress off again, then kill -9 of the server; b's VMM dies while it is down; a keeps running.
  assert.equal((await s.api('PATCH', `/v1/vms/${a.id}`, { network: { egress: false } })).body.network.egress, false);
  await s.kill9();
  const bPid = Number(spawnSync('cat', [`${s.dataDir}/vms/${b.id}/vmm.pid`], { encoding: 'utf8' }).stdout);
  process.kill(bPid, 'SIGKILL');
  await waitFor('b\'s VMM gone', () => { try { process.kill(bPid, 0); return undefined; } catch { return true; } }, 20_000);
  // While the server is down, a's root side goes missing (its table, its host-side veth): the restart must restore it.
  must('nft', ['delete', 'table', 'inet', `capsule-${tag}-${a.id}`]);
  must('ip', ['link', 'del', `cap${tag}${a.id.slice(0, 8)}`]);
  await s.launch();
  await waitFor('b\'s network removed', () => (leftovers().some((l) => l.includes(b.id) || l.includes(`cap${tag}${b.id.slice(0, 8)}`)) ? undefined : true), 20_000);
  assert.equal((await s.api('GET', `/v1/vms/${a.id}`)).body.state, 'running');
  // a's network survived the restart: the host still reaches it, and it still reaches the outside (egress was off: still off).
  assert.match(await fromGuest(na.hostAddress), /guest-a-hello/);
  const cons2 = new ConsoleCollector(s.ws(`/v1/vms/${a.id}/console`));
  await cons2.opened;
  const out4 = await guest(cons2, wgetOutside);
  assert.notEqual(out4.status, 0, 'egress stays off across the restart');
  await s.api('PATCH', `/v1/vms/${a.id}`, { network: { egress: true } });
  const out5 = await guest(cons2, wgetOutside);
  assert.equal(out5.status, 0, out5.out);

  // Delete: nothing of either VM is left.
  assert.equal((await s.api('DELETE', `/v1/vms/${a.id}?force=true`)).status, 204);
  assert.equal((await s.api('DELETE', `/v1/vms/${b.id}`)).status, 204);
  await waitFor('nothing left', () => (leftovers().length === 0 ? true : undefined), 20_000).catch(() => assert.deepEqual(leftovers(), []));
});

test('"network": {"enabled": false}: no NIC, nothing made on the host', async () => {
  const c = await bootVm('net-off', { network: { enabled: false } });
  assert.deepEqual(c.vm.network, { enabled: false, egress: true });
  const links = await guest(c.cons, 'ls /sys/class/net');
  assert.doesNotMatch(links.out, /eth0/);
  assert.deepEqual(leftovers().filter((l) => l.includes(c.id) || l.includes(`cap${tag}${c.id.slice(0, 8)}`)), []);
  assert.equal((await s.api('PATCH', `/v1/vms/${c.id}`, { network: { egress: false } })).status, 409);
  assert.equal((await s.api('DELETE', `/v1/vms/${c.id}?force=true`)).status, 204);
});
