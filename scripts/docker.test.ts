// The container deployment, as a user runs it: the Dockerfile built on a locally made Debian
// base (Docker Hub is not needed), `docker-compose up`, health, a VM started inside the
// container (QEMU; TCG where the host has no usable KVM) and its console read to the guest's
// ready marker, `docker-compose down` keeping the data volume, up again with the VM and the
// admin token still there. Runs where `docker info` works; skips (saying why) elsewhere.
//
// Cached between runs (so a rerun takes about a minute): the base image
// capsule-test-base:bookworm-node<version> (scripts/docker-test-base.sh) and the built image
// capsule-test:latest with its layers. Everything else (containers, network, volume) is
// removed at the end, also on failure. CAPSULE_DOCKER_BASE=IMAGE builds on another base
// (node:20-bookworm-slim where Docker Hub is reachable) instead of making one.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import WebSocket from 'ws';
import { REPO_ROOT, ConsoleCollector, freePort, waitFor } from '../server/test/harness.js';

const PROJECT = `capsuletest${process.pid}`;
const BASE = process.env.CAPSULE_DOCKER_BASE ?? `capsule-test-base:bookworm-node${process.versions.node}`;
const IMAGE = 'capsule-test:latest';

function sh(cmd: string, args: string[], opts: { env?: Record<string, string>; timeoutMs?: number } = {}) {
  const r = spawnSync(cmd, args, { cwd: REPO_ROOT, encoding: 'utf8', env: { ...process.env, ...opts.env }, timeout: opts.timeoutMs ?? 120_000, maxBuffer: 64 << 20 });
  return { ok: r.status === 0, out: `${r.stdout ?? ''}${r.stderr ?? ''}${r.error ? String(r.error) : ''}`.trim() };
}

/** Why the test cannot run here, or undefined. */
function unavailable(): string | undefined {
  const info = sh('docker', ['info', '--format', '{{.ServerVersion}}'], { timeoutMs: 20_000 });
  if (!info.ok) return `docker not available: ${info.out.split('\n').pop() || 'docker info failed'}`;
  if (!sh('docker-compose', ['version'], { timeoutMs: 20_000 }).ok) return 'docker-compose not available (apt-get install docker-compose)';
  if (!process.env.CAPSULE_DOCKER_BASE && !sh('docker', ['image', 'inspect', BASE]).ok && !sh('sh', ['-c', 'command -v mmdebstrap']).ok) {
    return `no base image ${BASE} and no mmdebstrap to make one (apt-get install mmdebstrap, or set CAPSULE_DOCKER_BASE)`;
  }
  return undefined;
}

const skip = unavailable();

test('docker-compose: build on a local base, up, a VM inside, down keeps the data volume', { skip: skip ?? false, timeout: 45 * 60_000 }, async (t) => {
  const timings: Record<string, number> = {};
  const timed = async <T>(name: string, fn: () => T | Promise<T>): Promise<T> => {
    const t0 = Date.now();
    try { return await fn(); } finally { timings[name] = Math.round((Date.now() - t0) / 100) / 10; }
  };

  if (!process.env.CAPSULE_DOCKER_BASE) {
    await timed('base', () => {
      const r = sh('bash', [join(REPO_ROOT, 'scripts', 'docker-test-base.sh'), BASE], { timeoutMs: 15 * 60_000, env: { NODE: process.execPath } });
      assert.ok(r.ok, `making the base image failed:\n${r.out}`);
    });
  }

  const port = await freePort();
  const files = ['-f', 'docker-compose.yml', ...(existsSync('/dev/kvm') ? ['-f', 'docker-compose.kvm.yml'] : [])];
  const env = { CAPSULE_BASE: BASE, CAPSULE_IMAGE: IMAGE, CAPSULE_PORT: String(port), COMPOSE_PROJECT_NAME: PROJECT };
  const compose = (args: string[], timeoutMs = 180_000) => sh('docker-compose', ['-p', PROJECT, ...files, ...args], { env, timeoutMs });
  const url = `http://127.0.0.1:${port}`;
  let token = '';
  const api = async (method: string, path: string, body?: unknown) => {
    const res = await fetch(url + path, {
      method,
      headers: { authorization: `Bearer ${token}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
      ...(body === undefined ? {} : { body: JSON.stringify(body) }),
    });
    const text = await res.text();
    return { status: res.status, body: text ? JSON.parse(text) : undefined };
  };
  const containerId = () => compose(['ps', '-q', 'capsule']).out.split('\n').pop() ?? '';
  /** Waits for Docker's healthcheck (the Dockerfile's, against /v1/health/ready) to say healthy. */
  const healthy = () => waitFor('the container to be healthy', () => {
    const id = containerId();
    if (!id) return undefined;
    const s = sh('docker', ['inspect', '-f', '{{.State.Status}} {{.State.Health.Status}}', id]).out;
    if (s.startsWith('exited') || s.startsWith('dead')) throw new Error(`the container stopped:\n${compose(['logs', '--no-color']).out}`);
    return s === 'running healthy' || undefined;
  }, 180_000);

  try {
    await timed('build', () => {
      const r = compose(['build'], 40 * 60_000);
      assert.ok(r.ok, `docker-compose build failed:\n${r.out.slice(-6000)}`);
    });
    await timed('up', async () => {
      const r = compose(['up', '-d']);
      assert.ok(r.ok, `docker-compose up failed:\n${r.out}`);
      await healthy();
    });

    const health = await (await fetch(`${url}/v1/health`)).json() as { kvm: boolean; jail: { enabled: boolean; reasons: Record<string, string> } };
    t.diagnostic(`inside the container: kvm ${health.kvm}, jail ${health.jail.enabled} (${health.jail.reasons.jail})`);
    // docker-compose.yml gives the container what the jail needs (CAP_SYS_ADMIN).
    assert.equal(health.jail.enabled, true, `the jail is on in the container: ${JSON.stringify(health.jail.reasons)}`);
    const tok = compose(['exec', '-T', 'capsule', 'cat', '/var/lib/capsule/admin-token']);
    assert.ok(tok.ok, tok.out);
    token = tok.out.trim();
    assert.match(token, /^cap_[0-9a-f]+$/);
    assert.equal((await api('GET', '/v1/whoami')).status, 200);
    const images = await api('GET', '/v1/images');
    assert.ok(images.body.items.some((i: { name: string }) => i.name === 'default'), `the default image is in the container: ${JSON.stringify(images.body)}`);

    const id: string = await timed('vm', async () => {
      const c = await api('POST', '/v1/vms', { name: 'in-docker', vcpus: 1, memoryMiB: 256 });
      assert.equal(c.status, 201, JSON.stringify(c.body));
      const started = await api('POST', `/v1/vms/${c.body.id}/start`);
      assert.equal(started.status, 200, JSON.stringify(started.body));
      assert.equal(started.body.state, 'running');
      const cons = new ConsoleCollector(new WebSocket(`ws://127.0.0.1:${port}/v1/vms/${c.body.id}/console?access_token=${token}`));
      try {
        await cons.opened;
        await cons.waitFor(/CAPSULE_READY cpus=1/, 180_000);
        cons.send('echo sum-$((40+2))\n');
        await cons.waitFor('sum-42');
      } finally { cons.close(); }
      // The VMM runs jailed: the VM's pid is the jail's unshare (a network namespace of its own,
      // not the server's), and below it QEMU (named capsule-<id>) runs as a jail uid.
      const ps = compose(['exec', '-T', 'capsule', 'sh', '-c',
        'for p in /proc/[0-9]*; do echo "${p#/proc/} $(awk \'/^PPid|^Uid/{print $2}\' $p/status | tr "\\n" " ")$(readlink $p/ns/net) $(cat $p/comm)"; done']);
      const procs = ps.out.split('\n').map((l) => l.split(' ')).map(([pid, ppid, uid, ...rest]) => ({ pid: Number(pid), ppid: Number(ppid), uid: Number(uid), rest: rest.join(' ') }));
      const server = procs.find((p) => p.pid === 1);
      const unshare = procs.find((p) => p.pid === started.body.pid);
      const vmm = procs.find((p) => p.rest.endsWith(`capsule-${c.body.id}`.slice(0, 15)));
      assert.ok(unshare?.rest.includes('unshare') && server && unshare.rest.split(' ')[0] !== server.rest.split(' ')[0], `the VM's pid is the jail's unshare, in another network namespace:\n${ps.out}`);
      assert.ok(vmm && vmm.uid >= 100000, `QEMU runs as a jail uid:\n${ps.out}`);
      return c.body.id as string;
    });

    await timed('down-up', async () => {
      const down = compose(['down']);
      assert.ok(down.ok, `docker-compose down failed:\n${down.out}`);
      assert.equal(containerId(), '', 'no container after down');
      assert.ok(sh('docker', ['volume', 'inspect', `${PROJECT}_capsule-data`]).ok, 'down keeps the data volume');
      const up = compose(['up', '-d']);
      assert.ok(up.ok, `docker-compose up (again) failed:\n${up.out}`);
      await healthy();
    });
    // The same database: the admin token still works and the VM is still defined (its VMM
    // went with the container).
    const again = await api('GET', `/v1/vms/${id}`);
    assert.equal(again.status, 200, JSON.stringify(again.body));
    assert.equal(again.body.name, 'in-docker');
    t.diagnostic(`the VM after down and up: ${again.body.state}`);
    assert.ok(['stopped', 'crashed'].includes(again.body.state), `state after the container restarted: ${again.body.state}`);
    assert.equal(compose(['exec', '-T', 'capsule', 'cat', '/var/lib/capsule/admin-token']).out.trim(), token, 'the same admin token');
    // And it starts again.
    const restarted = await api('POST', `/v1/vms/${id}/start`);
    assert.equal(restarted.status, 200, JSON.stringify(restarted.body));
    assert.equal((await api('POST', `/v1/vms/${id}/stop?force=true`)).status, 200);
  } catch (e) {
    t.diagnostic(`container log:\n${compose(['logs', '--no-color', '--tail', '60']).out}`);
    throw e;
  } finally {
    const r = compose(['down', '-v', '--remove-orphans']);
    if (!r.ok) t.diagnostic(`cleanup: ${r.out}`);
    t.diagnostic(`seconds: ${JSON.stringify(timings)}`);
  }
  assert.ok(!sh('docker', ['volume', 'inspect', `${PROJECT}_capsule-data`]).ok, 'the test volume is removed');
});
