// Exec and files through the API into a real sandbox guest (QEMU/TCG): a server as deployed
// (jailed where the host allows, the VM on its own network: the agent is reached through the
// VM's host-side address, docs/network.md), one VM of the sandbox image shared by the tests.
// The user-networking fallback (CAPSULE_AGENT_USERNET=1) has its own test: agent/usernet.test.ts.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import WebSocket from 'ws';
import { buildImage } from '../images/registry.js';
import { TEST_IMAGES_DIR, TestServer, waitFor } from '../test/harness.js';

let server: TestServer;
let vmId: string;

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

before(async () => {
  buildImage(TEST_IMAGES_DIR, 'sandbox', 'ignore'); // cached
  server = await TestServer.start({ env: { CAPSULE_NETWORK: 'on', CAPSULE_NET_POOL: `10.${234 + (process.pid % 20)}.0.0/24`, CAPSULE_RATE_LIMIT: '1000', CAPSULE_RATE_BURST: '1000' } });
  const created = await server.api('POST', '/v1/vms', { name: 'agent-vm', image: 'sandbox', memoryMiB: 512, hypervisor: 'qemu' });
  assert.equal(created.status, 201, JSON.stringify(created.body));
  vmId = created.body.id;
  const started = await server.api('POST', `/v1/vms/${vmId}/start`);
  assert.equal(started.status, 200, JSON.stringify(started.body));
  // The guest boots (~10-20 s under TCG) and starts its agent.
  const t0 = Date.now();
  const health = await waitFor('the guest agent', async () => {
    const h = await server.api('GET', `/v1/vms/${vmId}/agent`);
    return h.status === 200 ? h.body : undefined;
  }, 180_000);
  console.log(`agent up ${Date.now() - t0} ms after start: ${JSON.stringify(health)}`);
});

after(async () => {
  await server?.stop();
});

const exec = (body: unknown, token?: string) => server.api('POST', `/v1/vms/${vmId}/exec`, body, token ? { authorization: `Bearer ${token}` } : {});

interface WsResult { started: any; stdout: Buffer; stderr: Buffer; exit: any; error: any; messages: any[]; soFar: () => string }

/** Runs one WebSocket exec: sends `start`, then `then(ws)`; resolves at close. */
function wsExec(start: unknown, then?: (ws: WebSocket, r: WsResult) => void, token?: string): Promise<WsResult> {
  return new Promise((resolve, reject) => {
    const ws = server.ws(`/v1/vms/${vmId}/exec`, token);
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    const r: WsResult = { started: undefined, stdout: Buffer.alloc(0), stderr: Buffer.alloc(0), exit: undefined, error: undefined, messages: [], soFar: () => Buffer.concat(out).toString() };
    ws.on('open', () => { ws.send(JSON.stringify(start)); then?.(ws, r); });
    ws.on('message', (d: Buffer, binary: boolean) => {
      if (binary) { (d[0] === 1 ? out : err).push(d.subarray(1)); return; }
      const m = JSON.parse(d.toString());
      r.messages.push(m);
      if (m.started) r.started = m.started;
      if (m.exit) r.exit = m.exit;
      if (m.error) r.error = m.error;
    });
    ws.on('unexpected-response', (_req, res) => reject(Object.assign(new Error(`upgrade refused: ${res.statusCode}`), { status: res.statusCode })));
    ws.on('error', reject);
    ws.on('close', () => { r.stdout = Buffer.concat(out); r.stderr = Buffer.concat(err); resolve(r); });
  });
}

test('exec: exit codes, stdout and stderr apart, env and cwd, stdin, the default user and root', async () => {
  let r = await exec({ shell: 'echo out; echo err >&2; exit 3' });
  assert.equal(r.status, 200, JSON.stringify(r.body));
  assert.equal(r.body.exitCode, 3);
  assert.equal(r.body.stdout, 'out\n');
  assert.equal(r.body.stderr, 'err\n');
  assert.equal(r.body.timedOut, false);
  r = await exec({ cmd: ['sh', '-c', 'echo "$GREETING"; pwd; id -un'], env: { GREETING: 'hello there' }, cwd: '/tmp' });
  assert.equal(r.body.stdout, 'hello there\n/tmp\nuser\n');
  r = await exec({ shell: 'pwd; id -u; id -un', user: 'root' });
  assert.equal(r.body.stdout, '/root\n0\nroot\n');
  r = await exec({ shell: 'pwd' });
  assert.equal(r.body.stdout, '/home/user\n', 'the default working directory is the user\'s home');
  r = await exec({ cmd: ['cat'], stdin: 'piped in' });
  assert.equal(r.body.stdout, 'piped in');
  // Non-UTF-8 bytes both ways, base64 in JSON.
  r = await exec({ cmd: ['sh', '-c', 'cat; printf "\\377\\001"'], stdin: Buffer.from([0xc3, 0x28, 0x00, 0xfe]).toString('base64'), encoding: 'base64' });
  assert.deepEqual([...Buffer.from(r.body.stdout, 'base64')], [0xc3, 0x28, 0x00, 0xfe, 0xff, 0x01]);
  r = await exec({ cmd: ['/no/such/program'] });
  assert.ok(r.status === 400 || (r.status === 200 && r.body.exitCode !== 0), JSON.stringify(r.body));
  r = await exec({ cmd: ['true'], cwd: '/no/such/dir' });
  assert.equal(r.status, 404);
  r = await exec({ cmd: ['true'], shell: 'true' });
  assert.equal(r.status, 400);
  // Output beyond 1 MiB is cut and flagged.
  r = await exec({ shell: 'head -c 1500000 /dev/zero' });
  assert.equal(r.body.stdoutTruncated, true);
  assert.equal(r.body.stdout.length, 1024 * 1024);
});

test('exec: a timeout kills the process and its children, and says so', async () => {
  const t0 = Date.now();
  const r = await exec({ shell: 'sleep 300 & echo $! > /tmp/child; wait', timeoutMs: 1500 });
  assert.equal(r.status, 200, JSON.stringify(r.body));
  assert.equal(r.body.timedOut, true);
  assert.equal(r.body.signal, 'SIGKILL');
  assert.equal(r.body.exitCode, null);
  assert.ok(Date.now() - t0 < 15_000);
  const check = await exec({ shell: 'kill -0 $(cat /tmp/child) 2>/dev/null && echo alive || echo gone' });
  assert.equal(check.body.stdout, 'gone\n');
});

test('exec: 20 at once; the round trip of `true`', async () => {
  const rs = await Promise.all(Array.from({ length: 20 }, (_, i) => exec({ shell: `sleep 0.5; echo n${i}` })));
  rs.forEach((r, i) => { assert.equal(r.status, 200, JSON.stringify(r.body)); assert.equal(r.body.stdout, `n${i}\n`); });
  const times: number[] = [];
  for (let i = 0; i < 10; i++) {
    const t0 = performance.now();
    assert.equal((await exec({ cmd: ['true'] })).body.exitCode, 0);
    times.push(performance.now() - t0);
  }
  times.sort((a, b) => a - b);
  console.log(`POST exec true (TCG guest, the VM's network): median ${times[5]!.toFixed(1)} ms, max ${times[9]!.toFixed(1)} ms`);
});

test('exec over WebSocket with a pty: the terminal has the asked size, follows a resize, takes input', async () => {
  const r = await wsExec({ shell: 'stty size; read line; echo "got $line"; stty size', pty: { cols: 90, rows: 20 } }, (ws, res) => {
    const iv = setInterval(() => {
      if (!res.soFar().includes('20 90')) return;
      clearInterval(iv);
      ws.send(JSON.stringify({ resize: { cols: 100, rows: 30 } }));
      setTimeout(() => ws.send(Buffer.from('hello\r'), { binary: true }), 300);
    }, 50);
  });
  assert.equal(r.exit?.exitCode, 0, JSON.stringify(r.messages));
  const text = r.stdout.toString();
  assert.match(text, /got hello/);
  assert.match(text, /30 100/);
  assert.equal(r.stderr.length, 0);
});

test('exec over WebSocket: 20 MiB of output without loss, binary-safe; stdin streamed; signals', async () => {
  const made = await exec({ shell: 'head -c 20971520 /dev/urandom > /home/user/big.bin && sha256sum /home/user/big.bin', timeoutMs: 120_000 });
  assert.equal(made.body.exitCode, 0, JSON.stringify(made.body));
  const want = made.body.stdout.split(' ')[0];
  const t0 = Date.now();
  const r = await wsExec({ cmd: ['cat', '/home/user/big.bin'] });
  assert.equal(r.exit?.exitCode, 0, JSON.stringify(r.messages));
  assert.equal(r.stdout.length, 20 * 1024 * 1024);
  assert.equal(sha(r.stdout), want);
  console.log(`20 MiB streamed in ${Date.now() - t0} ms`);

  const data = randomBytes(2 * 1024 * 1024);
  const s = await wsExec({ cmd: ['sha256sum'] }, (ws) => {
    for (let o = 0; o < data.length; o += 60_000) ws.send(data.subarray(o, o + 60_000), { binary: true });
    ws.send(JSON.stringify({ eof: true }));
  });
  assert.equal(s.stdout.toString().split(' ')[0], sha(data));

  const k = await wsExec({ shell: 'echo ready; sleep 100' }, (ws, res) => {
    const iv = setInterval(() => { if (res.started) { clearInterval(iv); setTimeout(() => ws.send(JSON.stringify({ signal: 'SIGTERM' })), 300); } }, 20);
  });
  assert.equal(k.exit?.signal, 'SIGTERM', JSON.stringify(k.messages));
});

test('a background process keeps running after its client disconnects; reattach by pid sees it finish', async () => {
  let pid = 0;
  await wsExec({ shell: 'for i in 1 2 3 4 5 6; do echo tick$i; sleep 1; done; exit 5', background: true, tag: 'ticker' }, (ws, r) => {
    const iv = setInterval(() => { if (r.started) { clearInterval(iv); pid = r.started.pid; ws.close(); } }, 20);
  });
  assert.ok(pid > 0);
  await new Promise((res) => setTimeout(res, 1500));
  const list = await server.api('GET', `/v1/vms/${vmId}/processes`);
  const p = list.body.processes.find((x: any) => x.pid === pid);
  assert.ok(p && p.running && p.background && p.tag === 'ticker' && !p.attached, JSON.stringify(list.body));
  const again = await wsExec({ attach: pid });
  assert.equal(again.exit?.exitCode, 5, JSON.stringify(again.messages));
  assert.match(again.stdout.toString(), /tick6\n$/);
});

test('files: a 64 MiB upload has the same sha256 in the guest and back out; listings, stat, mkdir, move, delete; missing paths are 404', async () => {
  const data = randomBytes(64 * 1024 * 1024);
  const t0 = Date.now();
  const put = await fetch(`${server.url}/v1/vms/${vmId}/files?path=${encodeURIComponent('/home/user/upload/big.bin')}`, {
    method: 'PUT', headers: { authorization: `Bearer ${server.token}`, 'content-type': 'application/octet-stream' }, body: data,
  });
  assert.equal(put.status, 200, await put.clone().text());
  assert.deepEqual(await put.json(), { path: '/home/user/upload/big.bin', size: data.length });
  const tUp = Date.now() - t0;
  const inGuest = await exec({ shell: 'sha256sum /home/user/upload/big.bin; stat -c %U /home/user/upload/big.bin', timeoutMs: 120_000 });
  assert.equal(inGuest.body.stdout, `${sha(data)}  /home/user/upload/big.bin\nuser\n`);
  const t1 = Date.now();
  const get = await fetch(`${server.url}/v1/vms/${vmId}/files?path=upload/big.bin`, { headers: { authorization: `Bearer ${server.token}` } });
  assert.equal(get.status, 200);
  assert.equal(get.headers.get('x-capsule-file-size'), String(data.length));
  const back = Buffer.from(await get.arrayBuffer());
  assert.equal(sha(back), sha(data));
  console.log(`64 MiB: up ${tUp} ms, down ${Date.now() - t1} ms`);

  // A file the guest makes is downloadable; a directory is listed.
  await exec({ shell: 'echo made in the guest > /home/user/made.txt' });
  const made = await server.api('GET', `/v1/vms/${vmId}/files?path=/home/user/made.txt`);
  assert.equal(made.status, 200);
  assert.equal(made.body, 'made in the guest\n');
  const dir = await server.api('GET', `/v1/vms/${vmId}/files?path=/home/user`);
  assert.equal(dir.status, 200);
  assert.ok(dir.body.entries.some((e: any) => e.name === 'made.txt' && e.type === 'file'), JSON.stringify(dir.body));
  assert.ok(dir.body.entries.some((e: any) => e.name === 'upload' && e.type === 'dir'));

  assert.equal((await server.api('POST', `/v1/vms/${vmId}/files/mkdir`, { path: 'a/b/c' })).status, 200);
  assert.equal((await server.api('GET', `/v1/vms/${vmId}/files/stat?path=a/b/c`)).body.type, 'dir');
  assert.equal((await server.api('POST', `/v1/vms/${vmId}/files/move`, { from: 'made.txt', to: 'a/b/c/moved.txt' })).status, 200);
  assert.equal((await server.api('GET', `/v1/vms/${vmId}/files?path=a/b/c/moved.txt`)).body, 'made in the guest\n');
  assert.equal((await server.api('DELETE', `/v1/vms/${vmId}/files?path=a`)).status, 204);
  assert.equal((await server.api('DELETE', `/v1/vms/${vmId}/files?path=upload/big.bin`)).status, 204);
  for (const [m, p] of [['GET', '/files?path=/no/such/file'], ['GET', '/files/stat?path=/no/such'], ['DELETE', '/files?path=/no/such'], ['GET', '/files?path=a']] as const) {
    const r = await server.api(m, `/v1/vms/${vmId}${p}`);
    assert.equal(r.status, 404, `${m} ${p}: ${JSON.stringify(r.body)}`);
  }
  const mv = await server.api('POST', `/v1/vms/${vmId}/files/move`, { from: '/no/such', to: '/tmp/x' });
  assert.equal(mv.status, 404);
});

test('tenants and scopes: another tenant\'s VM is 404 on exec and files; a read token may only GET files', async () => {
  const t = await server.api('POST', '/v1/tenants', { name: 'other' });
  assert.equal(t.status, 201, JSON.stringify(t.body));
  const other = (await server.api('POST', '/v1/tokens', { tenant: 'other', name: 'w', scope: 'write' })).body.token;
  const reader = (await server.api('POST', '/v1/tokens', { tenant: 'default', name: 'r', scope: 'read' })).body.token;
  const as = (tok: string) => ({ authorization: `Bearer ${tok}` });
  assert.equal((await exec({ cmd: ['true'] }, other)).status, 404);
  assert.equal((await server.api('GET', `/v1/vms/${vmId}/files?path=/etc/hostname`, undefined, as(other))).status, 404);
  assert.equal((await server.api('PUT', `/v1/vms/${vmId}/files?path=/tmp/x`, 'x', as(other))).status, 404);
  assert.equal((await server.api('GET', `/v1/vms/${vmId}/processes`, undefined, as(other))).status, 404);
  await assert.rejects(wsExec({ cmd: ['true'] }, undefined, other), (e: any) => e.status === 404);

  assert.equal((await server.api('GET', `/v1/vms/${vmId}/files?path=/etc/hostname`, undefined, as(reader))).body, 'capsule\n');
  assert.equal((await exec({ cmd: ['true'] }, reader)).status, 403);
  assert.equal((await server.api('PUT', `/v1/vms/${vmId}/files?path=/tmp/x`, 'x', as(reader))).status, 403);
  assert.equal((await server.api('DELETE', `/v1/vms/${vmId}/files?path=/tmp/x`, undefined, as(reader))).status, 403);
  await assert.rejects(wsExec({ cmd: ['true'] }, undefined, reader), (e: any) => e.status === 403);
});

test('the agent\'s secret is not readable by the guest\'s user', async () => {
  const r = await exec({ shell: 'cat /proc/cmdline; cat /run/capsule/agent/token 2>&1; true' });
  assert.match(r.body.stdout, /capsule\.agent_token=hidden/);
  assert.doesNotMatch(r.body.stdout, /capsule\.agent_token=[0-9a-f]{16}/);
  assert.match(r.body.stdout, /Permission denied/);
  const root = await exec({ shell: 'cat /run/capsule/agent/token | wc -c', user: 'root' });
  assert.equal(root.body.stdout.trim(), '49');
});

test('the OpenAPI document describes exec and files', async () => {
  const doc = (await server.api('GET', '/v1/openapi.json')).body;
  for (const p of ['/v1/vms/{id}/exec', '/v1/vms/{id}/files', '/v1/vms/{id}/files/mkdir', '/v1/vms/{id}/files/move', '/v1/vms/{id}/processes']) {
    assert.ok(doc.paths[p], p);
  }
});

test('a VM that is not running answers 409; after a server restart (kill -9) the agent is reached again (its secret is kept in the VM directory)', async () => {
  const idle = await server.api('POST', '/v1/vms', { name: 'idle-vm', image: 'sandbox', memoryMiB: 256, hypervisor: 'qemu' });
  assert.equal((await server.api('POST', `/v1/vms/${idle.body.id}/exec`, { cmd: ['true'] })).status, 409);
  assert.equal((await server.api('GET', `/v1/vms/${idle.body.id}/files?path=/`)).status, 409);
  await server.kill9();
  await server.launch();
  await waitFor('the VM reattached', async () => ((await server.api('GET', `/v1/vms/${vmId}`)).body.state === 'running' ? true : undefined), 30_000);
  const r = await exec({ shell: 'echo still here' });
  assert.equal(r.status, 200, JSON.stringify(r.body));
  assert.equal(r.body.stdout, 'still here\n');
});
