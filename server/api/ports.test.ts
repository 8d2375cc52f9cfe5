// The ports proxy (/v1/vms/:id/ports/:port/*) into a real sandbox guest (QEMU/TCG), on the VM's
// own network (docs/network.md): python3 -m http.server, a header- and body-echoing server, a
// WebSocket echo server and some broken servers run in the guest; one boot for the whole file.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { connect } from 'node:net';
import WebSocket from 'ws';
import { buildImage } from '../images/registry.js';
import { TEST_IMAGES_DIR, TestServer, waitFor } from '../test/harness.js';

let server: TestServer;
let vmId: string;
const IDLE_S = 5;

const sha = (b: Buffer | Uint8Array) => createHash('sha256').update(b).digest('hex');

// Echoes each request: method, target, headers, body length and sha256 (chunked bodies decoded);
// /drip answers three chunks a second apart.
const ECHO_PY = String.raw`
import http.server, json, hashlib, time
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'
    def read_exact(self, left, h):
        n = 0
        while left:
            d = self.rfile.read(min(left, 65536))
            if not d: break
            h.update(d); n += len(d); left -= len(d)
        return n
    def drip(self):
        self.send_response(200)
        self.send_header('Transfer-Encoding', 'chunked')
        self.end_headers()
        for i in range(3):
            if i: time.sleep(1)
            d = b'tick%d\n' % i
            self.wfile.write(b'%x\r\n%s\r\n' % (len(d), d)); self.wfile.flush()
        self.wfile.write(b'0\r\n\r\n')
    def any(self):
        if self.path == '/drip': return self.drip()
        h = hashlib.sha256(); n = 0
        if self.headers.get('Transfer-Encoding', '').lower() == 'chunked':
            while True:
                size = int(self.rfile.readline().split(b';')[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b'\r\n', b'\n', b''): pass
                    break
                n += self.read_exact(size, h)
                self.rfile.readline()
        else:
            n = self.read_exact(int(self.headers.get('Content-Length') or 0), h)
        body = json.dumps({'method': self.command, 'path': self.path, 'headers': [[k, v] for k, v in self.headers.items()], 'length': n, 'sha256': h.hexdigest()}).encode()
        self.send_response(200)
        self.send_header('Content-Type', 'application/json')
        self.send_header('Content-Length', str(len(body)))
        self.send_header('X-Echo', 'yes')
        self.end_headers()
        if self.command != 'HEAD': self.wfile.write(body)
    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = any
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(('0.0.0.0', 8001), H).serve_forever()
`;

// A WebSocket echo server with node's http and crypto only: the first message is what it saw of
// the upgrade request; then every text or binary message comes back as it came.
const WS_ECHO_JS = String.raw`
const http = require('node:http');
const crypto = require('node:crypto');
const srv = http.createServer((req, res) => { res.writeHead(426); res.end('upgrade required\n'); });
srv.on('upgrade', (req, sock, head) => {
  const accept = crypto.createHash('sha1').update(req.headers['sec-websocket-key'] + '258EAFA5-E914-47DA-95CA-C5AB0DC85B11').digest('base64');
  sock.write('HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ' + accept + '\r\n\r\n');
  const send = (op, p) => {
    let h;
    if (p.length < 126) h = Buffer.from([0x80 | op, p.length]);
    else if (p.length < 65536) { h = Buffer.alloc(4); h[0] = 0x80 | op; h[1] = 126; h.writeUInt16BE(p.length, 2); }
    else { h = Buffer.alloc(10); h[0] = 0x80 | op; h[1] = 127; h.writeBigUInt64BE(BigInt(p.length), 2); }
    sock.write(Buffer.concat([h, p]));
  };
  send(1, Buffer.from(JSON.stringify({ url: req.url, headers: req.headers })));
  let buf = Buffer.alloc(0);
  const onData = (d) => {
    buf = Buffer.concat([buf, d]);
    for (;;) {
      if (buf.length < 2) return;
      const op = buf[0] & 15;
      let n = buf[1] & 127, o = 2;
      if (n === 126) { if (buf.length < 4) return; n = buf.readUInt16BE(2); o = 4; }
      else if (n === 127) { if (buf.length < 10) return; n = Number(buf.readBigUInt64BE(2)); o = 10; }
      const masked = buf[1] & 128;
      if (buf.length < o + (masked ? 4 : 0) + n) return;
      const mask = masked ? buf.subarray(o, o + 4) : null;
      if (masked) o += 4;
      const p = Buffer.from(buf.subarray(o, o + n));
      if (mask) for (let i = 0; i < n; i++) p[i] ^= mask[i & 3];
      buf = buf.subarray(o + n);
      if (op === 8) { send(8, p.subarray(0, 2)); sock.end(); return; }
      if (op === 9) { send(10, p); continue; }
      send(op, p);
    }
  };
  sock.on('data', onData);
  sock.on('error', () => {});
  onData(head);
});
srv.listen(8002);
`;

// Broken servers: 8004 answers something that is not HTTP, 8005 a 100 KB header, 8006 nothing
// ever, 8007 a head and part of the body, then nothing; 8003 listens on loopback only (out of
// the host's reach).
const BROKEN_PY = String.raw`
import socket, threading, time
def serve(port, reply, host='0.0.0.0'):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind((host, port)); s.listen(16)
    def one(c):
        try:
            c.recv(65536)
            if reply is not None: c.sendall(reply)
            if reply is None or reply.endswith(b'partial'): time.sleep(600)
        except OSError: pass
        finally: c.close()
    while True:
        c, _ = s.accept(); threading.Thread(target=one, args=(c,), daemon=True).start()
for p, r in {8004: b'NOT HTTP AT ALL\r\n\r\n', 8005: b'HTTP/1.1 200 OK\r\nX-Big: ' + b'a' * 100000 + b'\r\n\r\n', 8006: None, 8007: b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial'}.items():
    threading.Thread(target=serve, args=(p, r), daemon=True).start()
serve(8003, b'HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok', '127.0.0.1')
`;

const put = (path: string, body: string | Buffer) => fetch(`${server.url}/v1/vms/${vmId}/files?path=${encodeURIComponent(path)}`, { method: 'PUT', headers: { authorization: `Bearer ${server.token}` }, body });
const exec = (shell: string) => server.api('POST', `/v1/vms/${vmId}/exec`, { shell, timeoutMs: 60_000 });
const portUrl = (port: number | string, rest = '/') => `${server.url}/v1/vms/${vmId}/ports/${port}${rest}`;
const auth = (token = server.token) => ({ authorization: `Bearer ${token}` });
const errorOf = async (r: Response) => ((await r.json()) as { error: { code: string; message: string } }).error;

before(async () => {
  buildImage(TEST_IMAGES_DIR, 'sandbox', 'ignore'); // cached
  server = await TestServer.start({
    env: {
      CAPSULE_NETWORK: 'on', CAPSULE_NET_POOL: `10.${214 + (process.pid % 20)}.0.0/24`, CAPSULE_RATE_LIMIT: '1000', CAPSULE_RATE_BURST: '1000',
      CAPSULE_PORT_IDLE_TIMEOUT: String(IDLE_S),
    },
  });
  const created = await server.api('POST', '/v1/vms', { name: 'ports-vm', image: 'sandbox', memoryMiB: 512, hypervisor: 'qemu' });
  assert.equal(created.status, 201, JSON.stringify(created.body));
  vmId = created.body.id;
  const started = await server.api('POST', `/v1/vms/${vmId}/start`);
  assert.equal(started.status, 200, JSON.stringify(started.body));
  const t0 = Date.now();
  await server.waitForAgent(vmId, 180_000);
  console.log(`agent up ${Date.now() - t0} ms after start`);
  // The guest's servers, detached from the agent's process (setsid -f).
  for (const [path, text] of [['/home/user/echo.py', ECHO_PY], ['/home/user/ws-echo.js', WS_ECHO_JS], ['/home/user/broken.py', BROKEN_PY]] as const) {
    assert.equal((await put(path, text)).status, 200);
  }
  const r = await exec([
    'mkdir -p /home/user/www && echo "hello from the guest" > /home/user/www/hello.txt && head -c 8388608 /dev/urandom > /home/user/www/big.bin',
    // node first: under TCG on a busy host it takes longest to start.
    'cd /home/user && setsid -f node ws-echo.js > /tmp/ws.log 2>&1',
    'cd /home/user/www && setsid -f python3 -m http.server 8000 > /tmp/http.log 2>&1',
    'cd /home/user && setsid -f python3 echo.py > /tmp/echo.log 2>&1',
    'setsid -f python3 broken.py > /tmp/broken.log 2>&1',
  ].join('\n'));
  assert.equal(r.body.exitCode, 0, JSON.stringify(r.body));
});

after(async () => {
  await server?.stop();
});

test('GET /ports lists the guest\'s listening ports (not the agent\'s), with their proxy paths', async () => {
  let last: any;
  const list = await waitFor('the guest\'s servers listening', async () => {
    const l = await server.api('GET', `/v1/vms/${vmId}/ports`);
    assert.equal(l.status, 200, JSON.stringify(l.body));
    last = l.body;
    const ports = l.body.ports.map((p: any) => p.port);
    return [8000, 8001, 8002, 8003, 8004, 8005, 8006, 8007].every((p) => ports.includes(p)) ? l.body.ports : undefined;
  }, 300_000).catch(async (e) => {
    const logs = await exec('tail -n 20 /tmp/*.log; ps aux | grep -E "python3|node" | grep -v grep');
    throw new Error(`${e.message}: last ${JSON.stringify(last)}; in the guest: ${logs.body.stdout}${logs.body.stderr}`);
  });
  const byPort = new Map<number, any>(list.map((p: any) => [p.port, p]));
  assert.ok(!byPort.has(49983), 'the agent\'s own port is not listed');
  assert.deepEqual(byPort.get(8000), { ...byPort.get(8000), reachable: true, path: `/v1/vms/${vmId}/ports/8000/` });
  assert.deepEqual(byPort.get(8001).addresses, ['0.0.0.0']);
  assert.equal(byPort.get(8003).reachable, false, JSON.stringify(byPort.get(8003)));
  assert.deepEqual(byPort.get(8003).addresses, ['127.0.0.1']);
});

test('python3 -m http.server answers through the proxy: a file, a listing, HEAD, 8 MiB streamed, its own 501', async () => {
  let r = await fetch(portUrl(8000, '/hello.txt'), { headers: auth() });
  assert.equal(r.status, 200);
  assert.equal(await r.text(), 'hello from the guest\n');
  r = await fetch(portUrl(8000, '/'), { headers: auth() });
  assert.equal(r.status, 200);
  assert.match(await r.text(), /hello\.txt/);
  r = await fetch(portUrl(8000, ''), { headers: auth() }); // no trailing slash: the guest's "/"
  assert.match(await r.text(), /big\.bin/);
  r = await fetch(portUrl(8000, '/hello.txt'), { method: 'HEAD', headers: auth() });
  assert.equal(r.status, 200);
  assert.equal(r.headers.get('content-length'), '21');
  const inGuest = await exec('sha256sum /home/user/www/big.bin');
  const t0 = Date.now();
  r = await fetch(portUrl(8000, '/big.bin'), { headers: auth() });
  const big = Buffer.from(await r.arrayBuffer());
  assert.equal(big.length, 8 * 1024 * 1024);
  assert.equal(sha(big), inGuest.body.stdout.split(' ')[0]);
  console.log(`8 MiB through the proxy in ${Date.now() - t0} ms`);
  r = await fetch(portUrl(8000, '/missing'), { headers: auth() });
  assert.equal(r.status, 404, 'the guest\'s own 404 passes through');
  r = await fetch(portUrl(8000, '/hello.txt'), { method: 'POST', headers: auth(), body: 'x' });
  assert.equal(r.status, 501, 'http.server\'s answer to POST, passed through');
});

test('bodies stream to the guest (chunked and with a length); the capsule token never reaches it; X-Forwarded-* are set', async () => {
  const data = randomBytes(4 * 1024 * 1024);
  // A body without a length, sent in pieces as it is made.
  const stream = new ReadableStream<Uint8Array>({
    start(c) {
      for (let o = 0; o < data.length; o += 256 * 1024) c.enqueue(data.subarray(o, o + 256 * 1024));
      c.close();
    },
  });
  let r = await fetch(portUrl(8001, '/upload/x%20y?a=1&access_token=secret&b=2'), { method: 'POST', headers: { ...auth(), 'x-custom': 'kept' }, body: stream, duplex: 'half' } as RequestInit);
  assert.equal(r.status, 200);
  assert.equal(r.headers.get('x-echo'), 'yes');
  let seen = await r.json() as { method: string; path: string; headers: [string, string][]; length: number; sha256: string };
  assert.equal(seen.method, 'POST');
  assert.equal(seen.path, '/upload/x%20y?a=1&b=2', 'the rest of the target as sent, without access_token');
  assert.equal(seen.length, data.length);
  assert.equal(seen.sha256, sha(data));
  const headers = new Map(seen.headers.map(([k, v]) => [k.toLowerCase(), v]));
  assert.ok(!headers.has('authorization'), JSON.stringify(seen.headers));
  assert.ok(!JSON.stringify(seen).includes(server.token), 'the token appears nowhere');
  assert.equal(headers.get('x-custom'), 'kept');
  assert.equal(headers.get('x-forwarded-for'), '127.0.0.1');
  assert.equal(headers.get('x-forwarded-proto'), 'http');
  assert.equal(headers.get('x-forwarded-host'), `127.0.0.1:${server.port}`);
  assert.equal(headers.get('host'), `127.0.0.1:${server.port}`);

  // A PUT with a length, larger than the API's body limit (64 KiB): proxied bodies are not bounded here.
  const put2 = randomBytes(1024 * 1024);
  r = await fetch(portUrl(8001, '/p'), { method: 'PUT', headers: auth(), body: put2 });
  seen = await r.json() as typeof seen;
  assert.equal(seen.method, 'PUT');
  assert.equal(seen.length, put2.length);
  assert.equal(seen.sha256, sha(put2));
  assert.equal(new Map(seen.headers.map(([k, v]) => [k.toLowerCase(), v])).get('content-length'), String(put2.length));
  // The answer streams too: the first chunk is here long before the guest has sent the last.
  const t0 = Date.now();
  r = await fetch(portUrl(8001, '/drip'), { headers: auth() });
  const reader = r.body!.getReader();
  const first = await reader.read();
  const tFirst = Date.now() - t0;
  let text = Buffer.from(first.value!).toString();
  for (let c = await reader.read(); !c.done; c = await reader.read()) text += Buffer.from(c.value).toString();
  assert.equal(text, 'tick0\ntick1\ntick2\n');
  assert.ok(Date.now() - t0 - tFirst >= 1500, `first chunk after ${tFirst} ms, all after ${Date.now() - t0} ms`);
  for (const method of ['DELETE', 'PATCH', 'OPTIONS']) {
    r = await fetch(portUrl(8001, '/m'), { method, headers: auth() });
    assert.equal(r.status, 200, method);
    assert.equal((await r.json() as typeof seen).method, method);
  }
});

/** Opens a WebSocket through the proxy; resolves with it and its first message (what the guest saw). */
function openWs(url: string, opts?: WebSocket.ClientOptions): Promise<{ ws: WebSocket; hello: any; next: () => Promise<{ data: Buffer; binary: boolean }> }> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, opts);
    const queue: { data: Buffer; binary: boolean }[] = [];
    const waiters: ((m: { data: Buffer; binary: boolean }) => void)[] = [];
    ws.on('message', (data: Buffer, binary: boolean) => {
      const m = { data, binary };
      const w = waiters.shift();
      if (w) w(m); else queue.push(m);
    });
    const next = () => new Promise<{ data: Buffer; binary: boolean }>((res) => { const m = queue.shift(); if (m) res(m); else waiters.push(res); });
    ws.on('unexpected-response', (_req, res) => {
      let body = '';
      res.on('data', (d: Buffer) => { body += d; });
      res.on('end', () => reject(Object.assign(new Error(`upgrade refused: ${res.statusCode} ${body}`), { status: res.statusCode, body })));
    });
    ws.on('error', reject);
    ws.on('open', () => { next().then((m) => resolve({ ws, hello: JSON.parse(m.data.toString()), next }), reject); });
  });
}

test('a WebSocket through the proxy echoes text and binary; the guest sees neither the token nor access_token', async () => {
  const wsUrl = (rest: string) => `ws://127.0.0.1:${server.port}/v1/vms/${vmId}/ports/8002${rest}`;
  // The token in the query (as browsers must).
  const a = await openWs(`${wsUrl('/echo?x=1')}&access_token=${encodeURIComponent(server.token)}`);
  assert.equal(a.hello.url, '/echo?x=1');
  assert.ok(!JSON.stringify(a.hello).includes(server.token), JSON.stringify(a.hello));
  a.ws.send('hello through the proxy');
  let m = await a.next();
  assert.equal(m.binary, false);
  assert.equal(m.data.toString(), 'hello through the proxy');
  const bin = randomBytes(200 * 1024);
  a.ws.send(bin);
  m = await a.next();
  assert.equal(m.binary, true);
  assert.equal(sha(m.data), sha(bin));
  const closed = new Promise<number>((res) => a.ws.once('close', (code) => res(code)));
  a.ws.close(1000, 'done');
  assert.equal(await closed, 1000);

  // The token in the Authorization header.
  const b = await openWs(wsUrl('/'), { headers: auth() });
  assert.equal(b.hello.url, '/');
  assert.equal(b.hello.headers.authorization, undefined);
  assert.equal(b.hello.headers['x-forwarded-for'], '127.0.0.1');
  b.ws.send('again');
  assert.equal((await b.next()).data.toString(), 'again');
  b.ws.terminate();

  // Counted with the token's other sockets: revoking the token cuts the connection at once.
  const t = (await server.api('POST', '/v1/tokens', { tenant: 'default', name: 'revoked', scope: 'write' })).body;
  const c = await openWs(wsUrl('/'), { headers: auth(t.token) });
  const cut = new Promise<void>((res) => c.ws.once('close', () => res()));
  assert.equal((await server.api('DELETE', `/v1/tokens/${t.id}`)).status, 204);
  await cut;
});

test('tenants and scopes: another tenant\'s VM is 404 on HTTP, upgrade and list; no token 401; a read token reads but neither POSTs nor opens a WebSocket', async () => {
  assert.equal((await server.api('POST', '/v1/tenants', { name: 'other' })).status, 201);
  const other = (await server.api('POST', '/v1/tokens', { tenant: 'other', name: 'w', scope: 'write' })).body.token;
  const reader = (await server.api('POST', '/v1/tokens', { tenant: 'default', name: 'r', scope: 'read' })).body.token;
  let r = await fetch(portUrl(8000, '/hello.txt'), { headers: auth(other) });
  assert.equal(r.status, 404);
  assert.equal((await errorOf(r)).code, 'not_found');
  assert.equal((await fetch(portUrl(8001, '/'), { method: 'POST', headers: auth(other), body: 'x' })).status, 404);
  assert.equal((await fetch(`${server.url}/v1/vms/${vmId}/ports`, { headers: auth(other) })).status, 404);
  await assert.rejects(openWs(`ws://127.0.0.1:${server.port}/v1/vms/${vmId}/ports/8002/`, { headers: auth(other) }), (e: any) => e.status === 404);
  r = await fetch(portUrl(8000, '/hello.txt'));
  assert.equal(r.status, 401);
  assert.equal((await fetch(portUrl(8000, '/hello.txt?access_token=' + server.token))).status, 401, 'no query token on plain HTTP');
  await assert.rejects(openWs(`ws://127.0.0.1:${server.port}/v1/vms/${vmId}/ports/8002/`), (e: any) => e.status === 401);

  assert.equal((await fetch(portUrl(8000, '/hello.txt'), { headers: auth(reader) })).status, 200);
  assert.equal((await fetch(portUrl(8001, '/'), { method: 'POST', headers: auth(reader), body: 'x' })).status, 403);
  await assert.rejects(openWs(`ws://127.0.0.1:${server.port}/v1/vms/${vmId}/ports/8002/`, { headers: auth(reader) }), (e: any) => e.status === 403);
});

test('bad ports are 400; a port nobody listens on 502 at once; a VM that is not running, or has no network, 409', async () => {
  for (const p of ['0', '70000', 'abc', '-1', '1e3']) {
    const r = await fetch(portUrl(p, '/'), { headers: auth() });
    assert.equal(r.status, 400, p);
    const e = await errorOf(r);
    assert.equal(e.code, 'invalid_request');
    assert.match(e.message, /1-65535/);
  }
  const t0 = Date.now();
  let r = await fetch(portUrl(9, '/'), { headers: auth() });
  assert.equal(r.status, 502);
  const e = await errorOf(r);
  assert.equal(e.code, 'port_unreachable');
  assert.match(e.message, /port 9\b/);
  assert.ok(Date.now() - t0 < 5000, `took ${Date.now() - t0} ms`);
  // Listening on the guest's loopback only: out of reach, the same answer.
  r = await fetch(portUrl(8003, '/'), { headers: auth() });
  assert.equal(r.status, 502);
  await assert.rejects(openWs(`ws://127.0.0.1:${server.port}/v1/vms/${vmId}/ports/9/`, { headers: auth() }), (x: any) => x.status === 502);

  const idle = await server.api('POST', '/v1/vms', { name: 'idle-vm', image: 'sandbox', memoryMiB: 256, hypervisor: 'qemu' });
  r = await fetch(`${server.url}/v1/vms/${idle.body.id}/ports/8000/`, { headers: auth() });
  assert.equal(r.status, 409);
  assert.equal((await errorOf(r)).code, 'not_running');
  assert.equal((await server.api('GET', `/v1/vms/${idle.body.id}/ports`)).status, 409);

  // Running without a network: 409 saying so (the check needs no booted guest: stopped at once).
  const bare = await server.api('POST', '/v1/vms', { name: 'no-net-vm', image: 'default', memoryMiB: 128, hypervisor: 'qemu', network: { enabled: false } });
  assert.equal(bare.status, 201, JSON.stringify(bare.body));
  assert.equal((await server.api('POST', `/v1/vms/${bare.body.id}/start`)).status, 200);
  try {
    r = await fetch(`${server.url}/v1/vms/${bare.body.id}/ports/8000/`, { headers: auth() });
    assert.equal(r.status, 409);
    const nn = await errorOf(r);
    assert.equal(nn.code, 'no_network');
    assert.match(nn.message, /without a network/);
    await assert.rejects(openWs(`ws://127.0.0.1:${server.port}/v1/vms/${bare.body.id}/ports/8000/`, { headers: auth() }), (x: any) => x.status === 409);
  } finally {
    await server.api('POST', `/v1/vms/${bare.body.id}/stop?force=true`);
  }
});

test('a hostile guest: garbage, a 100 KB header and silence get 502/502/504, a stall mid-answer is cut; the server lives on', async () => {
  let r = await fetch(portUrl(8004, '/'), { headers: auth() });
  assert.equal(r.status, 502);
  assert.equal((await errorOf(r)).code, 'port_protocol_error');
  r = await fetch(portUrl(8005, '/'), { headers: auth() });
  assert.equal(r.status, 502);
  assert.match((await errorOf(r)).message, /HPE_HEADER_OVERFLOW/);
  const t0 = Date.now();
  r = await fetch(portUrl(8006, '/'), { headers: auth() });
  assert.equal(r.status, 504);
  assert.equal((await errorOf(r)).code, 'port_timeout');
  assert.ok(Date.now() - t0 < (IDLE_S + 5) * 1000);
  // A guest that stalls mid-answer: the client's connection is cut after the idle timeout.
  const t1 = Date.now();
  r = await fetch(portUrl(8007, '/'), { headers: auth() });
  assert.equal(r.status, 200);
  await assert.rejects(r.arrayBuffer());
  assert.ok(Date.now() - t1 < (IDLE_S + 5) * 1000, `cut after ${Date.now() - t1} ms`);
  // An upgrade the guest never answers: 504 too.
  await assert.rejects(openWs(`ws://127.0.0.1:${server.port}/v1/vms/${vmId}/ports/8006/`, { headers: auth() }), (x: any) => x.status === 504);
  // A client that leaves mid-download: the server is fine, and so is the next request.
  await new Promise<void>((resolve) => {
    const s = connect(server.port, '127.0.0.1', () => {
      s.write(`GET /v1/vms/${vmId}/ports/8000/big.bin HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${server.token}\r\n\r\n`);
      s.once('data', () => { s.destroy(); resolve(); });
    });
  });
  assert.equal((await server.api('GET', '/v1/health')).status, 200);
  r = await fetch(portUrl(8000, '/hello.txt'), { headers: auth() });
  assert.equal(await r.text(), 'hello from the guest\n');
});

test('the OpenAPI document describes the ports routes', async () => {
  const doc = (await server.api('GET', '/v1/openapi.json')).body;
  for (const p of ['/v1/vms/{id}/ports', '/v1/vms/{id}/ports/{port}', '/v1/vms/{id}/ports/{port}/{path}']) assert.ok(doc.paths[p], p);
  assert.ok(doc.paths['/v1/vms/{id}/ports/{port}/{path}'].post);
});
