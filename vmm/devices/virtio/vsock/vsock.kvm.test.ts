// virtio-vsock on real KVM with the default image (vsock-tool, vmw_vsock_virtio_transport) and the
// seccomp filter on: host→guest through CONNECT/OK, guest→host through <uds>_PORT, 1 MiB each way
// with md5 checks, ports nobody listens on in both directions, and a guest that resets mid-stream
// (its socket killed; the driver unbound, which resets the device) while the VMM lives on.
// Run by scripts/kvm-tests.sh.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync } from 'node:fs';
import { createConnection, createServer, type Socket } from 'node:net';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { probeKvm } from '../../../../lib/kvm-probe.js';
import { ConsoleClient, killAllVmms, startVmm, testImage, waitFor, waitForFile } from '../../../testing/clients.js';

const BOOT_TIMEOUT = Number(process.env.CAPSULE_TEST_BOOT_TIMEOUT_MS ?? 240_000);
const work = mkdtempSync(join(tmpdir(), 'capsule-vsock-test-'));
let img: Awaited<ReturnType<typeof testImage>>;

before(async () => {
  const p = probeKvm();
  assert.ok(p.available, `KVM is not usable here: ${p.reason}`);
  img = await testImage();
});
after(() => {
  killAllVmms();
  for (const s of open) s.destroy();
});

const md5 = (b: Uint8Array): string => createHash('md5').update(b).digest('hex');
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** `p`, or an error after `ms`. */
function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let t: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => { t = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms); });
  return Promise.race([p, timeout]).finally(() => clearTimeout(t));
}

const open = new Set<Socket>();

/**
 * One CONNECT attempt: the socket after `OK <port>\n`, or null when the VMM closed it (EOF: the
 * socket is half-open, so 'close' alone would not come) or after 10 s.
 */
function tryConnect(uds: string, port: number): Promise<{ sock: Socket; hostPort: number; ms: number } | null> {
  const t0 = Date.now();
  return new Promise((resolve) => {
    const sock = createConnection({ path: uds, allowHalfOpen: true });
    open.add(sock);
    const fail = (): void => {
      clearTimeout(t);
      sock.destroy();
      resolve(null);
    };
    const t = setTimeout(fail, 10_000);
    let buf = '';
    const onData = (d: Buffer): void => {
      buf += d.toString('latin1');
      const nl = buf.indexOf('\n');
      if (nl < 0) return;
      sock.off('data', onData);
      sock.off('end', fail);
      sock.pause();
      const m = /^OK (\d+)$/.exec(buf.slice(0, nl));
      if (!m) return fail();
      clearTimeout(t);
      resolve({ sock, hostPort: Number(m[1]), ms: Date.now() - t0 });
    };
    sock.on('data', onData);
    sock.on('error', fail);
    sock.on('end', fail);
    sock.on('close', fail);
    sock.write(`CONNECT ${port}\n`);
  });
}

/** CONNECT until the guest's listener is up. */
async function connectGuest(uds: string, port: number): Promise<{ sock: Socket; hostPort: number }> {
  for (let i = 0; i < 100; i++) {
    const r = await tryConnect(uds, port);
    if (r) return r;
    await sleep(200);
  }
  throw new Error(`CONNECT ${port}: the guest never accepted`);
}

/** Writes until the socket dies; resolves with the bytes written. */
function streamUntilClosed(sock: Socket): Promise<number> {
  let n = 0;
  const chunk = Buffer.alloc(64 * 1024, 0x5a);
  return new Promise((resolve) => {
    const done = (): void => resolve(n);
    sock.on('close', done);
    sock.on('end', done);
    sock.on('error', () => {});
    sock.resume();
    const pump = (): void => {
      while (!sock.destroyed && sock.writable) {
        n += chunk.length;
        if (!sock.write(chunk)) {
          sock.once('drain', pump);
          return;
        }
      }
    };
    pump();
  });
}

describe('virtio-vsock on KVM', { concurrency: false }, () => {
  test('host→guest and guest→host streams, unknown ports, guest resets mid-stream; seccomp on', { timeout: 600_000 }, async () => {
    const uds = join(work, 'v.sock');
    const conPath = join(work, 'vm.console');
    const logFile = join(work, 'vmm.log');
    const vmm = startVmm(['-kernel', img.kernel, '-initrd', img.initrd, '-append', img.cmdline, '-smp', '1', '-m', '256M',
      '-chardev', `id=console0,path=${conPath}`, '-D', logFile,
      '-device', `vsock,id=vsock0,guest-cid=42,uds-path=${uds}`], { CAPSULE_LOG_LEVEL: 'info' });
    const log = (): string => { try { return readFileSync(logFile, 'utf8').slice(-4000); } catch { return ''; } };
    const tStart = Date.now();
    const step = (m: string): void => console.error(`vsock lab +${((Date.now() - tStart) / 1000).toFixed(1)}s: ${m}`);
    void vmm.exited.then((x) => step(`VMM exited ${JSON.stringify(x)}`));
    try {
      await waitForFile(conPath, 60_000);
      const con = await ConsoleClient.connect(conPath);
      await con.waitFor(/CAPSULE_READY/, BOOT_TIMEOUT);
      await con.waitFor(/capsule# /, 60_000);
      assert.match(log(), /seccomp filter installed/);
      step('booted');
      const cid = await con.run('vsock-tool cid');
      assert.equal(cid.out.trim(), '42', cid.out);

      step('host → guest');
      await con.run('vsock-tool listen 5000 </dev/null >/tmp/in 2>/tmp/in.err & echo started');
      const a = await connectGuest(uds, 5000);
      assert.ok(a.hostPort >= 2 ** 30, `host port ${a.hostPort}`);
      const data = randomBytes(1 << 20);
      const t0 = Date.now();
      const closedA = new Promise<void>((r) => a.sock.on('close', () => r()));
      a.sock.resume();
      a.sock.end(data);
      await within(closedA, 120_000, 'the guest to close after EOF');
      const h2gMs = Date.now() - t0;
      const sumIn = await con.run('wait; md5sum /tmp/in; cat /tmp/in.err');
      assert.match(sumIn.out, new RegExp(md5(data)), `guest md5: ${sumIn.out}`);

      step(`host → guest done in ${h2gMs} ms`);
      const got: { data?: Buffer; ms?: number } = {};
      let t1 = 0;
      const srv = createServer((s) => {
        t1 = Date.now();
        const parts: Buffer[] = [];
        s.on('data', (d: Buffer) => parts.push(d));
        s.on('end', () => {
          got.data = Buffer.concat(parts);
          got.ms = Date.now() - t1;
        });
        s.on('error', () => {});
      });
      await new Promise<void>((r) => srv.listen(`${uds}_6000`, r));
      srv.unref();
      const gen = await con.run('head -c 1048576 /dev/urandom > /tmp/out && md5sum /tmp/out');
      const guestSum = /^([0-9a-f]{32})/m.exec(gen.out)?.[1];
      assert.ok(guestSum, gen.out);
      const send = await con.run('vsock-tool connect 2 6000 < /tmp/out; echo rc=$?', 120_000);
      assert.match(send.out, /rc=0/, send.out);
      await waitFor(() => got.data, 30_000, 'host EOF');
      assert.equal(got.data!.length, 1 << 20);
      assert.equal(md5(got.data!), guestSum);
      srv.close();

      step(`guest → host done in ${got.ms} ms`);
      const t2 = Date.now();
      const refused = await con.run('vsock-tool connect 2 6001 </dev/null; echo rc=$?', 30_000);
      assert.match(refused.out, /rc=1/, refused.out);
      assert.match(refused.out, /reset|refused/i, refused.out);
      const g2hRefusedMs = Date.now() - t2;
      const t3 = Date.now();
      assert.equal(await tryConnect(uds, 5999), null, 'CONNECT to a closed guest port is refused');
      const h2gRefusedMs = Date.now() - t3;
      assert.ok(h2gRefusedMs < 1900, `refused by the guest's RST (${h2gRefusedMs} ms), not the 2 s timeout`);

      step('unknown ports done; guest process killed mid-stream');
      await con.run('vsock-tool listen 5001 </dev/null >/dev/null & echo $! > /tmp/p1');
      const b = await connectGuest(uds, 5001);
      const streamedB = streamUntilClosed(b.sock);
      await sleep(500);
      await con.run('kill -9 $(cat /tmp/p1)');
      const nB = await within(streamedB, 30_000, 'host socket closed after the guest process died');
      assert.ok(nB > 0);

      step('driver unbound mid-stream');
      await con.run('vsock-tool listen 5002 </dev/null >/dev/null 2>&1 & echo ok');
      const c = await connectGuest(uds, 5002);
      const streamedC = streamUntilClosed(c.sock);
      await sleep(500);
      const drv = '/sys/bus/virtio/drivers/vmw_vsock_virtio_transport';
      const unbind = await con.run(`d=$(ls ${drv} | grep ^virtio); echo dev=$d; echo $d > ${drv}/unbind; echo unbound=$?`, 60_000);
      assert.match(unbind.out, /unbound=0/, unbind.out);
      await within(streamedC, 30_000, 'host socket closed by the device reset');
      const dev = /dev=(virtio\d+)/.exec(unbind.out)?.[1];
      const bind = await con.run(`echo ${dev} > ${drv}/bind; echo bound=$?; vsock-tool cid`, 60_000);
      assert.match(bind.out, /bound=0/, bind.out);
      assert.match(bind.out, /^42$/m);
      await con.run('vsock-tool listen 5003 </dev/null >/tmp/in3 & echo ok');
      const d = await connectGuest(uds, 5003);
      const small = randomBytes(64 * 1024);
      const closedD = new Promise<void>((r) => d.sock.on('close', () => r()));
      d.sock.resume();
      d.sock.end(small);
      await within(closedD, 60_000, 'transfer after the reset');
      const sum3 = await con.run('wait; md5sum /tmp/in3');
      assert.match(sum3.out, new RegExp(md5(small)));

      console.log(`vsock lab: 1 MiB host→guest ${h2gMs} ms (${((1 << 20) / 1024 / (h2gMs / 1000)).toFixed(0)} KiB/s), ` +
        `guest→host ${got.ms} ms (${((1 << 20) / 1024 / (got.ms! / 1000)).toFixed(0)} KiB/s); ` +
        `refused guest→host in ${g2hRefusedMs} ms (console round trip included), host→guest in ${h2gRefusedMs} ms`);

      con.type('poweroff\n');
      const exit = await within(vmm.exited, 60_000, 'VMM exit after poweroff');
      assert.equal(exit.code, 0, `${vmm.stderr}\n${log()}`);
      con.close();
    } catch (e) {
      console.error(`VMM log tail:\n${log()}\nstderr:\n${vmm.stderr}`);
      throw e;
    }
  });
});
