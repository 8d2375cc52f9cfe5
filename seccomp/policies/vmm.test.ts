// The VMM policy: its decisions in the emulator, its documentation, and a real run: the
// steady-state workload with the policy installed (kill on anything else) serves a client, and
// every thread shows `Seccomp: 2`.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { createConnection } from 'node:net';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { compilePolicy } from '../compiler.js';
import { emulate } from '../emulator.js';
import { threadSeccompStatus } from '../install.js';
import { syscallNumber } from '../syscalls.js';
import { VMM_CONDITIONAL_SYSCALLS, VMM_IOCTLS, VMM_SYSCALLS, vmmPolicy, vmmSyscallNames } from './vmm.js';

const nr = (name: string): number => syscallNumber(name)!;
const workload = fileURLToPath(new URL('./vmm-workload.js', import.meta.url));
const repoRoot = fileURLToPath(new URL('../../../', import.meta.url));

test('VMM policy decisions', () => {
  const prog = compilePolicy(vmmPolicy()).program;
  const act = (name: string, args: (number | bigint)[] = []) => emulate(prog, { nr: nr(name), args }).action;
  for (const name of Object.keys(VMM_SYSCALLS)) assert.equal(act(name), 'allow', name);
  for (const name of ['execve', 'execveat', 'fork', 'vfork', 'clone', 'clone3', 'ptrace', 'open', 'mkdir', 'kill', 'bind', 'listen', 'setuid', 'mount', 'bpf', 'seccomp', 'prctl']) {
    assert.equal(act(name), 'kill_process', name);
  }
  // virtio-vsock: AF_UNIX stream sockets only (flags above the type allowed), SO_ERROR only
  const AF_UNIX = 1, AF_INET = 2, AF_INET6 = 10, AF_NETLINK = 16, AF_PACKET = 17, SOCK_STREAM = 1, SOCK_DGRAM = 2;
  const NONBLOCK_CLOEXEC = 0o4000 | 0o2000000;
  assert.equal(act('socket', [AF_UNIX, SOCK_STREAM | NONBLOCK_CLOEXEC, 0]), 'allow');
  assert.equal(act('socket', [AF_UNIX, SOCK_STREAM, 0]), 'allow');
  for (const dom of [AF_INET, AF_INET6, AF_NETLINK, AF_PACKET, 0]) assert.equal(act('socket', [dom, SOCK_STREAM, 0]), 'kill_process', `domain ${dom}`);
  assert.equal(act('socket', [AF_UNIX, SOCK_DGRAM, 0]), 'kill_process', 'AF_UNIX datagram');
  assert.equal(act('socket', [AF_UNIX, 5 /* SOCK_SEQPACKET */, 0]), 'kill_process', 'AF_UNIX seqpacket');
  assert.equal(act('socket', [AF_UNIX, SOCK_STREAM, 1]), 'kill_process', 'a protocol number');
  assert.equal(act('socket', [0x1_0000_0001n, SOCK_STREAM, 0]), 'kill_process', 'high bits in the domain');
  assert.equal(act('connect', [20, 0, 110]), 'allow');
  assert.equal(act('getsockopt', [20, 1, 4]), 'allow', 'SOL_SOCKET/SO_ERROR');
  assert.equal(act('getsockopt', [20, 1, 7]), 'kill_process', 'SO_SNDBUF');
  assert.equal(act('getsockopt', [20, 6, 4]), 'kill_process', 'IPPROTO_TCP');
  for (const name of Object.keys(VMM_CONDITIONAL_SYSCALLS)) assert.equal(act(name, [99, 99, 99]), 'kill_process', `${name} with other arguments`);
  assert.equal(emulate(prog, { nr: nr('unlink') }).data, 1, 'unlink -> EPERM');
  assert.equal(emulate(prog, { nr: nr('openat') }).data, 1, 'openat -> EPERM (hot-replace files come as fds)');
  for (const [name, req] of Object.entries(VMM_IOCTLS)) {
    assert.equal(act('ioctl', [10, req]), 'allow', name);
    // Upper half sign-extended or garbage: the kernel only looks at the low 32 bits.
    assert.equal(act('ioctl', [10, 0xffffffff00000000n | BigInt(req)]), 'allow', `${name} sign-extended`);
  }
  assert.equal(act('ioctl', [10, 0xae01]), 'kill_process', 'KVM_CREATE_VM is init-only');
  assert.equal(act('ioctl', [10, 0xae41]), 'kill_process', 'KVM_CREATE_VCPU is init-only');
  assert.equal(act('ioctl', [10, 0x5413]), 'kill_process', 'TIOCGWINSZ not needed');
  // snapshot: the GETs are allowed (above); restoring state is init-only, in a fresh VMM process
  for (const [name, req] of Object.entries({
    KVM_SET_REGS: 0x4090ae82, KVM_SET_SREGS: 0x4138ae84, KVM_SET_XSAVE: 0x5000aea5, KVM_SET_XCRS: 0x4188aea7,
    KVM_SET_LAPIC: 0x4400ae8f, KVM_SET_MSRS: 0x4008ae89, KVM_SET_CPUID2: 0x4008ae90, KVM_SET_VCPU_EVENTS: 0x4040aea0,
    KVM_SET_DEBUGREGS: 0x4080aea2, KVM_SET_MP_STATE: 0x4004ae99, KVM_SET_IRQCHIP: 0x8208ae63, KVM_SET_PIT2: 0x4070aea0,
    KVM_SET_CLOCK: 0x4030ae7b, KVM_GET_MSR_INDEX_LIST: 0xc004ae02,
  })) assert.equal(act('ioctl', [10, req]), 'kill_process', `${name} is init-only`);
  assert.equal(emulate(compilePolicy(vmmPolicy({ log: true })).program, { nr: nr('socket') }).action, 'log');
  assert.equal(emulate(prog, { nr: nr('read'), arch: 0x40000003 }).action, 'kill_process', 'i386');
  assert.equal(emulate(prog, { nr: nr('read') | 0x40000000 }).action, 'kill_process', 'x32');
});

test('VMM policy size is within target and every entry is documented', () => {
  const names = vmmSyscallNames();
  // 45 before devices; virtio-blk adds preadv/pwritev/fallocate and hot-replace the openat refusal;
  // virtio-vsock adds socket (AF_UNIX stream only), connect and getsockopt (SO_ERROR only)
  assert.ok(names.length <= 56, `${names.length} syscalls`);
  const doc = readFileSync(join(repoRoot, 'docs/seccomp.md'), 'utf8');
  for (const n of names) assert.match(doc, new RegExp('`' + n + '`'), `docs/seccomp.md should explain ${n}`);
  assert.match(doc, new RegExp(`\\b${names.length} syscalls\\b`));
});

test('VMM policy installed in a Node VMM stand-in: serves clients, Seccomp: 2 on every thread, exits cleanly', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'vmm-seccomp-'));
  const sock = join(dir, 'qmp.sock');
  const child = spawn('/bin/sh', ['-c', 'ulimit -c 0; exec "$0" "$@"', process.execPath, workload, sock, join(dir, 'vmm.log'), '--install'], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stderr = '';
  child.stderr.on('data', (d) => (stderr += d));
  const exited = new Promise<[number | null, string | null]>((r) => child.on('exit', (c, s) => r([c, s])));
  try {
    const pid = await new Promise<number>((resolve, reject) => {
      child.stdout.on('data', (d) => {
        const m = /READY (\d+)/.exec(String(d));
        if (m) resolve(Number(m[1]));
      });
      void exited.then(([c, s]) => reject(new Error(`workload died during init: ${c} ${s} ${stderr}`)));
    });
    const c = createConnection(sock);
    c.setEncoding('utf8');
    const lines: string[] = [];
    let buf = '';
    c.on('data', (d: string) => {
      buf += d;
      let i: number;
      while ((i = buf.indexOf('\n')) >= 0) {
        lines.push(buf.slice(0, i));
        buf = buf.slice(i + 1);
      }
    });
    const waitFor = async (pred: (l: string) => boolean, what: string): Promise<string> => {
      for (let t = 0; t < 200; t++) {
        const hit = lines.find(pred);
        if (hit) return hit;
        await new Promise((r) => setTimeout(r, 25));
      }
      throw new Error(`no ${what}; got ${lines.slice(-5).join(' | ')}; stderr ${stderr}`);
    };
    await waitFor((l) => l.includes('"QMP"'), 'greeting');
    for (let i = 0; i < 50; i++) c.write(JSON.stringify({ execute: i % 2 ? 'query-status' : 'echo', id: i }) + '\n');
    c.write('garbage\n');
    await waitFor((l) => l.includes('"id":49'), 'reply 49');
    await waitFor((l) => l.includes('bad json'), 'error reply');
    await new Promise((r) => setTimeout(r, 1500)); // timers, vCPU exits, log writes keep running
    await waitFor((l) => l.includes('"TICK"'), 'timer event');
    const status = JSON.parse((await waitFor((l) => l.includes('"status":"running"'), 'status')).trim()) as { return: { exits: number } };
    assert.ok(status.return.exits >= 0);

    const threads = threadSeccompStatus(pid);
    assert.ok(threads.length >= 7, `threads: ${threads.length}`);
    for (const t of threads) {
      assert.equal(t.seccomp, 2, `thread ${t.tid} (${t.name})`);
      assert.equal(t.filters, 1, `thread ${t.tid} (${t.name})`);
    }
    // Cross-check with the raw /proc text the brief asks about.
    for (const t of threads) assert.match(readFileSync(`/proc/${pid}/task/${t.tid}/status`, 'utf8'), /^Seccomp:\s+2$/m);

    c.write(JSON.stringify({ execute: 'quit', id: 'q' }) + '\n');
    const [code, signal] = await exited;
    assert.deepEqual([code, signal], [0, null], stderr);
    assert.match(readFileSync(join(dir, 'vmm.log'), 'utf8'), /qmp quit/);
    c.destroy();
  } finally {
    child.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  }
});

test('VMM policy kills a process that tries to open an IP connection (Unix sockets are allowed for vsock)', () => {
  const installUrl = new URL('../install.js', import.meta.url).href;
  const vmmUrl = new URL('./vmm.js', import.meta.url).href;
  const script = `
    import { installPolicy } from ${JSON.stringify(installUrl)};
    import { vmmPolicy } from ${JSON.stringify(vmmUrl)};
    import { createConnection } from 'node:net';
    console.log('before');
    installPolicy(vmmPolicy());
    console.log('installed');
    createConnection('/tmp/nonexistent.sock').on('error', () => {
      console.log('unix connect failed normally');
      createConnection({ host: '127.0.0.1', port: 9 }).on('error', () => console.log('tcp connect failed normally'));
    });
  `;
  const r = spawnSync('/bin/sh', ['-c', 'ulimit -c 0; exec "$0" --input-type=module -e "$1"', process.execPath, script], { encoding: 'utf8', timeout: 20000 });
  assert.equal(r.signal, 'SIGSYS', JSON.stringify(r));
  assert.match(r.stdout, /installed/);
  assert.match(r.stdout, /unix connect failed normally/);
  assert.doesNotMatch(r.stdout, /tcp connect failed/);
});
