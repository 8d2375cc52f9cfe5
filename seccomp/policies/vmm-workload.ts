// A stand-in for the VMM's steady state, used to MEASURE the VMM policy's syscall list (under
// `strace -f -c -p`) and to TEST it (installed with --install, the process must keep working).
//
// Init (before the filter): open the log file, start a vCPU-like worker thread, warm libuv's
// thread pool (its threads start on first use and starting threads needs clone3/mmap/rseq...),
// listen on a Unix socket. Steady state: a QMP-like JSON-lines server on the socket, the worker
// blocked in a wait loop that reports "exits" to the main thread, interval timers, log appends
// (async through the thread pool and sync on an fd), replies written to the client socket.
//
// Usage: node dist/seccomp/policies/vmm-workload.js SOCKET LOGFILE [--install] [--log]
// Prints "READY <pid>" once init is done (and the filter is installed with --install).
import { write, openSync, writeSync, fstatSync, closeSync, rmSync } from 'node:fs';
import { stat } from 'node:fs/promises';
import { createServer, type Socket } from 'node:net';
import { Worker } from 'node:worker_threads';
import { installPolicy } from '../install.js';
import { vmmPolicy } from './vmm.js';

const [socketPath, logPath] = process.argv.slice(2).filter((a) => !a.startsWith('--'));
if (!socketPath || !logPath) {
  process.stderr.write('usage: vmm-workload SOCKET LOGFILE [--install] [--log]\n');
  process.exit(2);
}
const install = process.argv.includes('--install');
const logMode = process.argv.includes('--log');

const logFd = openSync(logPath, 'a');
const log = (msg: string): void => {
  writeSync(logFd, `${new Date().toISOString()} ${msg}\n`);
};

// The "vCPU": blocks (futex via Atomics.wait, where the real one blocks in ioctl(KVM_RUN)) and
// reports an exit every few wake-ups.
const shared = new Int32Array(new SharedArrayBuffer(8));
const vcpu = new Worker(
  `const { parentPort, workerData } = require('node:worker_threads');
   const s = workerData;
   let n = 0;
   for (;;) {
     Atomics.wait(s, 0, 0, 20);
     if (Atomics.load(s, 1) === 1) break;
     if (++n % 5 === 0) parentPort.postMessage({ exit: 'io', n });
   }
   parentPort.postMessage({ exit: 'shutdown', n });`,
  { eval: true, workerData: shared },
);
let exits = 0;
vcpu.on('message', (m: { exit: string; n: number }) => {
  exits++;
  // Async append through the thread pool on the fd opened at init (no open() after the filter).
  if (exits % 10 === 0) write(logFd, `vcpu exits=${exits} last=${m.exit}\n`, () => {});
});

const clients = new Set<Socket>();
const server = createServer((sock) => {
  clients.add(sock);
  sock.setEncoding('utf8');
  sock.write(JSON.stringify({ QMP: { version: { capsule: '0.1' }, capabilities: [] } }) + '\n');
  let buf = '';
  sock.on('data', (chunk: string) => {
    buf += chunk;
    let i: number;
    while ((i = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, i);
      buf = buf.slice(i + 1);
      let req: { execute?: string; arguments?: unknown; id?: unknown };
      try {
        req = JSON.parse(line) as typeof req;
      } catch {
        sock.write(JSON.stringify({ error: { class: 'GenericError', desc: 'bad json' } }) + '\n');
        continue;
      }
      log(`qmp ${req.execute ?? '?'}`);
      if (req.execute === 'query-status') {
        sock.write(JSON.stringify({ return: { status: 'running', exits, log: fstatSync(logFd).size }, id: req.id }) + '\n');
      } else if (req.execute === 'quit') {
        sock.write(JSON.stringify({ return: {}, id: req.id }) + '\n', () => shutdown());
      } else {
        // Several small writes in one tick go out as one writev; the garbage keeps V8's GC busy.
        const junk = Array.from({ length: 200 }, (_, k) => ({ k, s: 'x'.repeat(k) }));
        sock.cork();
        sock.write(JSON.stringify({ return: { echo: req, n: junk.length }, id: req.id }));
        sock.write('\n');
        process.nextTick(() => sock.uncork());
      }
    }
  });
  sock.on('close', () => clients.delete(sock));
  sock.on('error', () => clients.delete(sock));
});

const ticker = setInterval(() => {
  log(`tick exits=${exits}`);
  for (const c of clients) c.write(JSON.stringify({ event: 'TICK', data: { exits } }) + '\n');
}, 100);

function shutdown(): void {
  clearInterval(ticker);
  Atomics.store(shared, 1, 1);
  Atomics.notify(shared, 0);
  for (const c of clients) c.end();
  server.close();
  vcpu.once('exit', () => {
    closeSync(logFd);
    process.exit(0);
  });
}

// The first Date formatting loads the time zone (openat /etc/localtime): do it during init, as
// the VMM does when it logs its start-up, or the filter kills the process on the first log line.
log('init start');
rmSync(socketPath, { force: true });
// Warm the thread pool now: its threads are created on first use.
await stat(logPath);
await new Promise<void>((resolve) => server.listen(socketPath, resolve));
await new Promise<void>((resolve) => vcpu.once('online', () => resolve()));
if (install) installPolicy(vmmPolicy({ log: logMode }));
log('init done');
process.stdout.write(`READY ${process.pid}\n`);
