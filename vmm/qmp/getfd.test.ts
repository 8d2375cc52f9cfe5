// QMP getfd/closefd over a real Unix socket: fds sent with SCM_RIGHTS in the same sendmsg() as the
// command (as libvirt does with QEMU), from this process (koffi sendmsg) and from another one
// (python3 socket.send_fds). The VMM side's fd is checked by writing through it into a pipe.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, readdirSync, readSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { promisify } from 'node:util';
import koffi from 'koffi';
import { QmpServer } from './server.js';
import { register as registerFdCommands } from './commands/fds.js';
import { socketFd } from './scm-reader.js';
import { mainPoller } from '../io/poller.js';
import { closeFd, mmap, MAP_ANONYMOUS, MAP_PRIVATE, PROT_READ, PROT_WRITE } from '../kvm/sys.js';
import { QmpClient, waitFor } from '../testing/clients.js';

const libc = koffi.load('libc.so.6');
const pipe2Raw = libc.func('int pipe2(void *fds, int flags)') as (fds: Buffer, flags: number) => number;
const sendmsgRaw = libc.func('long sendmsg(int fd, void *msg, int flags)') as (fd: number, msg: bigint, flags: number) => number | bigint;
const O_NONBLOCK = 0o4000, O_CLOEXEC = 0o2000000;

/** [read end, write end], non-blocking */
function pipe(): [number, number] {
  const b = Buffer.alloc(8);
  assert.equal(pipe2Raw(b, O_CLOEXEC | O_NONBLOCK), 0);
  return [b.readInt32LE(0), b.readInt32LE(4)];
}

/** 'eof', 'open' (no data, a writer is still open) or the data read */
function readPipe(r: number): string {
  const buf = Buffer.alloc(256);
  try {
    const n = readSync(r, buf);
    return n === 0 ? 'eof' : buf.subarray(0, n).toString();
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'EAGAIN') return 'open';
    throw e;
  }
}

const page = mmap(4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
/** One sendmsg() with `text` and the fds as one SCM_RIGHTS control message (x86_64 layouts). */
function sendWithFds(sock: number, text: string, fds: number[]): void {
  const v = new DataView(koffi.view(page, 4096));
  const data = Buffer.from(text);
  assert.ok(data.length <= 2048);
  new Uint8Array(v.buffer, 2048, data.length).set(data);
  const iov = page + 64n, control = page + 128n;
  const clen = 16 + fds.length * 4;
  v.setBigUint64(0, 0n, true); v.setUint32(8, 0, true);
  v.setBigUint64(16, iov, true); v.setBigUint64(24, 1n, true);
  v.setBigUint64(32, fds.length ? control : 0n, true); v.setBigUint64(40, BigInt(fds.length ? (clen + 7) & ~7 : 0), true);
  v.setInt32(48, 0, true);
  v.setBigUint64(64, page + 2048n, true); v.setBigUint64(72, BigInt(data.length), true);
  v.setBigUint64(128, BigInt(clen), true); v.setInt32(136, 1, true); v.setInt32(140, 1, true); // SOL_SOCKET, SCM_RIGHTS
  fds.forEach((fd, i) => v.setInt32(144 + 4 * i, fd, true));
  assert.equal(Number(sendmsgRaw(sock, page, 0)), data.length);
}

const fdCount = (): number => readdirSync('/proc/self/fd').length;

async function server(): Promise<{ srv: QmpServer; path: string; fds: Map<string, number> }> {
  const path = join(mkdtempSync(join(tmpdir(), 'qmp-getfd-')), 'qmp.sock');
  const srv = new QmpServer({ path });
  const fds = new Map<string, number>();
  registerFdCommands(srv, { fds }); // the same code main.ts registers
  srv.register('query-status', () => ({ running: true, singlestep: false, status: 'running' }));
  // test only: write through a named fd, as a device using it would
  srv.register('write-fd', (args) => {
    writeSync(fds.get(String(args.fdname))!, String(args.text));
    return {};
  });
  await srv.listen();
  return { srv, path, fds };
}

test('getfd/closefd with SCM_RIGHTS (in-process sendmsg); fds never leak', async () => {
  mainPoller(); // the shared poller's epoll fd and wake eventfd live as long as the process
  const before = fdCount();
  const { srv, path, fds } = await server();
  const a = await QmpClient.connect(path);
  const afd = socketFd(a.sock)!;
  const call = (text: string, id: string, with_: number[] = []): Promise<Record<string, unknown>> => {
    sendWithFds(afd, text, with_);
    return a.next((m) => m.id === id);
  };

  // getfd with a pipe's write end: {} and the VMM holds a working duplicate
  const [r1, w1] = pipe();
  const reply = await call('{"execute":"getfd","arguments":{"fdname":"fd1"},"id":"g1"}', 'g1', [w1]);
  assert.deepEqual(reply, { return: {}, id: 'g1' });
  closeFd(w1);
  const held = fds.get('fd1');
  assert.ok(held !== undefined && held >= 0);
  writeSync(held, 'through-vmm');
  assert.equal(readPipe(r1), 'through-vmm');
  // closefd: the VMM's copy was the last write end, so the pipe reports EOF
  assert.deepEqual(await call('{"execute":"closefd","arguments":{"fdname":"fd1"},"id":"c1"}', 'c1'), { return: {}, id: 'c1' });
  assert.equal(fds.has('fd1'), false);
  assert.equal(readPipe(r1), 'eof');
  closeFd(r1);
  assert.deepEqual((await call('{"execute":"closefd","arguments":{"fdname":"fd1"},"id":"c2"}', 'c2')).error,
    { class: 'GenericError', desc: "File descriptor named 'fd1' not found" });

  // getfd without an fd
  assert.deepEqual(await call('{"execute":"getfd","arguments":{"fdname":"fd2"},"id":"g2"}', 'g2'),
    { error: { class: 'GenericError', desc: 'No file descriptor supplied via SCM_RIGHTS' }, id: 'g2' });

  // three fds with one getfd: the first is kept, the others closed by the server
  const pipes = [pipe(), pipe(), pipe()];
  assert.deepEqual((await call('{"execute":"getfd","arguments":{"fdname":"many"},"id":"g3"}', 'g3', pipes.map((p) => p[1]))).return, {});
  for (const [, w] of pipes) closeFd(w);
  assert.deepEqual(pipes.map(([r]) => readPipe(r)), ['open', 'eof', 'eof']);
  // getfd under the same name replaces (and closes) the older fd
  const [r4, w4] = pipe();
  assert.deepEqual((await call('{"execute":"getfd","arguments":{"fdname":"many"},"id":"g4"}', 'g4', [w4])).return, {});
  closeFd(w4);
  assert.equal(readPipe(pipes[0]![0]), 'eof');
  assert.equal(readPipe(r4), 'open');

  // an fd sent with a command that does not take it is closed; so is one sent with a bad command
  const [r5, w5] = pipe();
  const [r6, w6] = pipe();
  assert.ok('return' in (await call('{"execute":"query-status","id":"q1"}', 'q1', [w5])));
  assert.ok('error' in (await call('{"execute":"getfd","arguments":{"fdname":"9x"},"id":"g5"}', 'g5', [w6])));
  closeFd(w5);
  closeFd(w6);
  assert.equal(readPipe(r5), 'eof');
  assert.equal(readPipe(r6), 'eof');

  // the fd comes with the first bytes of a command split over two sends: it still reaches it
  const [r7, w7] = pipe();
  sendWithFds(afd, '{"execute":"getfd",', [w7]);
  closeFd(w7);
  await new Promise((r) => setTimeout(r, 30));
  assert.deepEqual(await call('"arguments":{"fdname":"split"},"id":"g6"}', 'g6'), { return: {}, id: 'g6' });
  writeSync(fds.get('split')!, 'x');
  assert.equal(readPipe(r7), 'x');
  // the previous command's tail and the next command with its fd in one read: the fd is the next one's
  a.sendRaw('{"execute":"query-status",');
  await new Promise((r) => setTimeout(r, 30));
  const [r8, w8] = pipe();
  sendWithFds(afd, '"id":"q2"}{"execute":"getfd","arguments":{"fdname":"tail"},"id":"g7"}', [w8]);
  closeFd(w8);
  assert.ok('return' in (await a.next((m) => m.id === 'q2')));
  assert.deepEqual(await a.next((m) => m.id === 'g7'), { return: {}, id: 'g7' });
  assert.equal(readPipe(r8), 'open');

  // the rest of QMP on the same connection: malformed JSON, events, commands
  a.sendRaw('{bad json}\n');
  assert.equal(((await a.next((m) => 'error' in m && !('id' in m))).error as { class: string }).class, 'GenericError');
  srv.event('STOP');
  await a.event('STOP');
  assert.ok('return' in (await a.call('query-status')));

  // a client that disconnects with an fd attached to an unfinished command: the fd is closed
  const b = await QmpClient.connect(path);
  const [r9, w9] = pipe();
  sendWithFds(socketFd(b.sock)!, '{"execute":"getfd","arguments":', [w9]);
  closeFd(w9);
  await new Promise((r) => setTimeout(r, 30));
  assert.equal(readPipe(r9), 'open');
  b.close();
  await waitFor(() => readPipe(r9) === 'eof' || undefined, 5000, 'carried fd closed on disconnect');
  await waitFor(() => srv.conns.size === 1 || undefined, 5000, 'server drops the connection');

  a.close();
  await waitFor(() => srv.conns.size === 0 || undefined, 5000, 'server drops the last connection');
  await srv.close();
  for (const fd of fds.values()) closeFd(fd); // as main.ts does on exit
  for (const fd of [...pipes.map((p) => p[0]), r4, r5, r6, r7, r8, r9]) closeFd(fd);
  assert.equal(fdCount(), before, 'no fd left behind (received fds, sockets)');
  assert.equal(mainPoller().watching, false, 'libuv no longer watches the set once the server is closed');
});

const PY = `
import json, os, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[1])
f = s.makefile('rb')
def reply(i):
    while True:
        m = json.loads(f.readline())
        if m.get('id') == i: return m
json.loads(f.readline())  # greeting
s.sendall(b'{"execute":"qmp_capabilities","id":0}'); reply(0)
r, w = os.pipe()
socket.send_fds(s, [b'{"execute":"getfd","arguments":{"fdname":"py"},"id":1}'], [w])
os.close(w)
out = {'getfd': reply(1)}
s.sendall(b'{"execute":"write-fd","arguments":{"fdname":"py","text":"from-vmm"},"id":2}'); reply(2)
out['data'] = os.read(r, 100).decode()
s.sendall(b'{"execute":"closefd","arguments":{"fdname":"py"},"id":3}')
out['closefd'] = reply(3)
os.set_blocking(r, False)
try: out['after'] = 'eof' if os.read(r, 100) == b'' else 'data'
except BlockingIOError: out['after'] = 'open'
s.sendall(b'{"execute":"getfd","arguments":{"fdname":"none"},"id":4}')
out['nofd'] = reply(4)
print(json.dumps(out))
`;

test('getfd from another process (python3 socket.send_fds, as libvirt sends it)', async () => {
  const { srv, path, fds } = await server();
  const { stdout } = await promisify(execFile)('python3', ['-c', PY, path], { timeout: 20000 });
  assert.deepEqual(JSON.parse(stdout), {
    getfd: { return: {}, id: 1 },
    data: 'from-vmm',
    closefd: { return: {}, id: 3 },
    after: 'eof',
    nofd: { error: { class: 'GenericError', desc: 'No file descriptor supplied via SCM_RIGHTS' }, id: 4 },
  });
  assert.equal(fds.size, 0);
  await waitFor(() => srv.conns.size === 0 || undefined, 5000, 'python client gone');
  await srv.close();
});
