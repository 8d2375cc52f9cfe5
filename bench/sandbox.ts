// Sandbox benchmarks (issue 11), one server, real sandbox guests, each VM on its own network:
//   coldStart   POST /v1/vms -> start -> the first exec that succeeds (the sandbox image's boot,
//               its init, the agent's start), median of `boots` VMs;
//   exec        POST /v1/vms/:id/exec of `true`, one at a time: p50/p99, against a bare TCP
//               server in the same guest reached the same way (a new connection to the VM's
//               host-side address per round, as the agent client makes one per call) that runs
//               `true` itself and answers its exit status: the same work without our layers (the
//               API, the agent client, the agent's protocol) — their cost is the ratio (target
//               <= 2x). A plain echo (no process) is measured too: the network path alone;
//   upload      PUT /v1/vms/:id/files of 64 MiB against raw TCP into the guest (a python3
//               socket reader writing the same file) in the same run (target >= 0.5x).
// QEMU/TCG on this host (`npm run bench -- sandbox`); the native VMM in the lab
// (`npm run bench:sandbox`, BENCH_HYPERVISOR=native).
import { createHash, randomBytes } from 'node:crypto';
import { connect } from 'node:net';
import { TEST_IMAGES_DIR, TestServer, waitFor } from '../server/test/harness.js';
import { buildImage } from '../server/images/registry.js';
import { loadNetworkModules } from '../server/test/network.js';
import { isMain, percentile, printJson, round } from './util.js';

const ECHO_PORT = 7000;
const SINK_PORT = 7001;
const SPAWN_PORT = 7002;
// Guest-side helpers, stdlib only. The echo answers each connection's one message and closes;
// the spawner runs `true` for each connection's message and answers its exit status; the sink
// writes what it receives to a file and answers its size when the sender half-closes.
const ECHO_PY = `import socket, subprocess, sys
port = int(sys.argv[1]); spawn = sys.argv[2] == 'spawn'
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('0.0.0.0', port)); s.listen(64)
while True:
    c, _ = s.accept(); c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    d = c.recv(4096)
    if spawn: d = str(subprocess.run(['true']).returncode).encode()
    c.sendall(d); c.close()
`;
const SINK_PY = `import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('0.0.0.0', ${SINK_PORT})); s.listen(4)
while True:
    c, _ = s.accept(); n = 0
    with open('/home/user/raw.bin', 'wb') as f:
        while True:
            d = c.recv(1 << 20)
            if not d: break
            f.write(d); n += len(d)
    c.sendall(str(n).encode()); c.close()
`;

type Api = TestServer['api'];

async function put(s: TestServer, id: string, path: string, body: Buffer): Promise<void> {
  const r = await fetch(`${s.url}/v1/vms/${id}/files?path=${encodeURIComponent(path)}`, { method: 'PUT', headers: { authorization: `Bearer ${s.token}`, 'content-type': 'application/octet-stream' }, body });
  if (r.status !== 200) throw new Error(`PUT ${path}: ${r.status} ${await r.text()}`);
}

async function exec(api: Api, id: string, body: Record<string, unknown>): Promise<{ status: number; body: any }> {
  return api('POST', `/v1/vms/${id}/exec`, body);
}

/** A new TCP connection to the guest's port, one message, its echo back: ms. */
function tcpEcho(host: string, port: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const sock = connect({ host, port }, () => { sock.setNoDelay(true); sock.write('ping'); });
    sock.once('data', () => { resolve(performance.now() - t0); sock.destroy(); });
    sock.once('error', reject);
  });
}

/** `data` over one TCP connection into the guest's sink; resolves when it reports the size written. */
function tcpSend(host: string, port: number, data: Buffer): Promise<number> {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const sock = connect({ host, port }, () => sock.end(data));
    let answer = '';
    sock.on('data', (d) => (answer += d.toString()));
    sock.once('close', () => (Number(answer) === data.length ? resolve(performance.now() - t0) : reject(new Error(`the sink wrote ${answer} bytes`))));
    sock.once('error', reject);
  });
}

const stats = (xs: number[]) => {
  const sorted = [...xs].sort((a, b) => a - b);
  return { p50: round(percentile(sorted, 50), 2), p99: round(percentile(sorted, 99), 2), n: xs.length };
};

export async function benchSandbox(opts: { hypervisor?: 'qemu' | 'native'; boots?: number; rounds?: number; uploadMiB?: number } = {}) {
  const hypervisor = opts.hypervisor ?? (process.env.BENCH_HYPERVISOR as 'qemu' | 'native' | undefined) ?? 'qemu';
  const boots = opts.boots ?? 3;
  const rounds = opts.rounds ?? 100;
  const uploadMiB = opts.uploadMiB ?? 64;
  buildImage(TEST_IMAGES_DIR, 'sandbox', 'ignore');
  loadNetworkModules(); // the nested lab's L1 cannot autoload them
  const s = await TestServer.start({ env: { CAPSULE_LOG_LEVEL: 'warn', CAPSULE_NETWORK: 'on', CAPSULE_NET_POOL: '10.229.0.0/24', CAPSULE_RATE_LIMIT: '100000', CAPSULE_RATE_BURST: '100000' } });
  try {
    const health = (await s.api('GET', '/v1/health')).body;
    // Cold starts: create -> the first exec that works.
    const coldStart: Array<{ toRunningMs: number; toFirstExecMs: number }> = [];
    let id = '';
    for (let i = 0; i < boots; i++) {
      const t0 = performance.now();
      const c = await s.api('POST', '/v1/vms', { name: `bench-sandbox-${i}`, image: 'sandbox', memoryMiB: 512, hypervisor });
      if (c.status !== 201) throw new Error(`create: ${JSON.stringify(c.body)}`);
      const started = await s.api('POST', `/v1/vms/${c.body.id}/start`);
      if (started.body.state !== 'running') throw new Error(`start: ${JSON.stringify(started.body)}`);
      const toRunningMs = performance.now() - t0;
      await waitFor('the first exec', async () => ((await exec(s.api.bind(s), c.body.id, { cmd: ['true'] })).body?.exitCode === 0) || undefined, 300_000);
      coldStart.push({ toRunningMs: round(toRunningMs), toFirstExecMs: round(performance.now() - t0) });
      if (i < boots - 1) await s.api('DELETE', `/v1/vms/${c.body.id}?force=true`);
      else id = c.body.id;
    }
    const host = (await s.api('GET', `/v1/vms/${id}`)).body.network.hostAddress as string;

    // The guest's echo and sink.
    await put(s, id, '/tmp/echo.py', Buffer.from(ECHO_PY));
    await put(s, id, '/tmp/sink.py', Buffer.from(SINK_PY));
    const bg = await exec(s.api.bind(s), id, {
      shell: `for a in "echo ${ECHO_PORT} echo" "echo ${SPAWN_PORT} spawn" "sink"; do set -- $a; f=$1; shift; setsid nohup python3 /tmp/$f.py "$@" >/tmp/$f.$$.log 2>&1 </dev/null & done`, user: 'user',
    });
    if (bg.body.exitCode !== 0) throw new Error(`helpers: ${JSON.stringify(bg.body)}`);
    await waitFor('the guest echo', () => tcpEcho(host, ECHO_PORT).then(() => true, () => undefined), 60_000);
    await waitFor('the guest spawner', () => tcpEcho(host, SPAWN_PORT).then(() => true, () => undefined), 60_000);

    // Exec round trips and echo round trips, interleaved so noise falls on both.
    const execMs: number[] = [];
    const spawnMs: number[] = [];
    const echoMs: number[] = [];
    for (let i = 0; i < 5; i++) { await exec(s.api.bind(s), id, { cmd: ['true'] }); await tcpEcho(host, SPAWN_PORT); await tcpEcho(host, ECHO_PORT); } // warm-up
    for (let i = 0; i < rounds; i++) {
      const t0 = performance.now();
      const r = await exec(s.api.bind(s), id, { cmd: ['true'] });
      if (r.body.exitCode !== 0) throw new Error(`exec: ${JSON.stringify(r.body)}`);
      execMs.push(performance.now() - t0);
      spawnMs.push(await tcpEcho(host, SPAWN_PORT));
      echoMs.push(await tcpEcho(host, ECHO_PORT));
    }

    // Uploads: the API, then raw TCP, three times each, alternating.
    const data = randomBytes(uploadMiB * 1024 * 1024);
    const apiMs: number[] = [];
    const rawMs: number[] = [];
    for (let i = 0; i < 3; i++) {
      let t0 = performance.now();
      await put(s, id, '/home/user/api.bin', data);
      apiMs.push(performance.now() - t0);
      t0 = performance.now();
      rawMs.push(await tcpSend(host, SINK_PORT, data));
    }
    const sums = await exec(s.api.bind(s), id, { shell: 'sha256sum /home/user/api.bin /home/user/raw.bin', timeoutMs: 300_000 });
    const want = createHash('sha256').update(data).digest('hex');
    if ((sums.body.stdout as string).split('\n').filter((l) => l.startsWith(want)).length !== 2) throw new Error(`uploads differ: ${sums.body.stdout}`);
    const mbps = (ms: number) => round(data.length / 1e6 / (ms / 1000), 1);
    const apiBest = Math.min(...apiMs);
    const rawBest = Math.min(...rawMs);

    const exec50 = percentile([...execMs].sort((a, b) => a - b), 50);
    const spawn50 = percentile([...spawnMs].sort((a, b) => a - b), 50);
    return {
      bench: 'sandbox',
      date: new Date().toISOString(),
      hypervisor,
      accel: health.kvm ? 'kvm' : 'tcg',
      coldStart: { runs: coldStart, medianToFirstExecMs: round(percentile(coldStart.map((x) => x.toFirstExecMs).sort((a, b) => a - b), 50)) },
      exec: {
        apiExecTrueMs: stats(execMs),
        bareTcpSpawnTrueMs: stats(spawnMs),
        bareTcpEchoMs: stats(echoMs),
        ratioP50: round(exec50 / spawn50, 2),
        ratioP50Basis: 'API exec of true / a bare TCP request that runs true in the guest (python3 subprocess)',
        target: '<= 2x',
      },
      upload: {
        bytes: data.length,
        apiMBps: mbps(apiBest),
        rawTcpMBps: mbps(rawBest),
        ratio: round(rawBest / apiBest, 2),
        allApiMs: apiMs.map((x) => round(x)),
        allRawMs: rawMs.map((x) => round(x)),
        target: '>= 0.5x',
      },
    };
  } finally {
    await s.stop();
  }
}

if (isMain(import.meta.url)) printJson(await benchSandbox());
