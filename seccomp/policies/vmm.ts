// The seccomp policy for the Node-based KVM VMM after init.
//
// The allow-list was measured, not guessed: seccomp/policies/vmm-workload.ts reproduces the
// VMM's steady state (QMP-like JSON server on a Unix socket, a worker-thread vCPU, timers, log
// appends) and ran under `strace -f -c -p PID` after init; docs/seccomp.md records the run and
// the reason for every entry. Anything not listed is fatal (kill_process), or only logged with
// `log: true` (SECCOMP_RET_LOG) which is how to find a syscall the measurement missed.
import type { Policy, Rule } from '../policy.js';

/**
 * ioctl request numbers the VMM may issue after init, from <linux/kvm.h> and <asm-generic/ioctls.h>
 * (the KVM ones are the same numbers vmm/kvm/ioctls.ts computes, checked there against C). Only the
 * requests the VMM really uses after init (tap/vhost: virtio-net's; vmm/sandbox.test.ts checks them against vmm/devices/virtio/net/sys.ts).
 */
export const VMM_IOCTLS: Readonly<Record<string, number>> = Object.freeze({
  // The VMM after init (vmm/): the vCPU run loop, interrupt lines of the legacy devices, and the
  // debug state dump (CAPSULE_DEBUG_DUMP_SECS). Everything that sets vCPU/VM state happens in
  // init (or in a reset rebuild, which the VMM does not do under the filter: it exits instead).
  KVM_RUN: 0xae80,
  KVM_IRQ_LINE: 0x4008ae61,
  KVM_GET_REGS: 0x8090ae81,
  KVM_GET_SREGS: 0x8138ae83,
  KVM_GET_MP_STATE: 0x8004ae98,
  // Virtio notifications (vmm/io, vmm/devices/irq.ts): binding and unbinding eventfds to queue
  // notify registers (KVM_IOEVENTFD) and to GSIs (KVM_IRQFD) when the guest driver activates or
  // resets a device, which happens whenever the guest likes, long after init.
  KVM_IRQFD: 0x4020ae76,
  KVM_IOEVENTFD: 0x4040ae79,
  // Snapshot (issue 12, vmm/cpu/state.ts saveVcpuState/saveVmState): a snapshot is taken from a
  // running VMM, paused by QMP long after init, so reading every vCPU's and the in-kernel devices'
  // state must stay allowed. Only GETs: they return the VMM's own guest's state, which the VMM
  // can already read in guest memory. (KVM_GET_REGS, KVM_GET_SREGS and KVM_GET_MP_STATE are above.)
  // The SETs stay init-only: a restore is a fresh VMM process that applies the state before it
  // installs the filter, and KVM_GET_MSR_INDEX_LIST (on /dev/kvm) is read once at init.
  KVM_GET_XSAVE: 0x9000aea4,
  KVM_GET_XSAVE2: 0x9000aecf, // only for guests with dynamic XSAVE features (KVM_CAP_XSAVE2 > 4096)
  KVM_GET_XCRS: 0x8188aea6,
  KVM_GET_DEBUGREGS: 0x8080aea1,
  KVM_GET_LAPIC: 0x8400ae8e,
  KVM_GET_CPUID2: 0xc008ae91,
  KVM_GET_MSRS: 0xc008ae88,
  KVM_GET_VCPU_EVENTS: 0x8040ae9f,
  KVM_GET_IRQCHIP: 0xc208ae62,
  KVM_GET_PIT2: 0x8070ae9f,
  KVM_GET_CLOCK: 0x8030ae7c,
  // pausing (snapshot, and QMP stop): tells the guest's kvmclock it was stopped on purpose, so its
  // watchdogs do not report a soft lockup for the time it was paused; changes no host state
  KVM_KVMCLOCK_CTRL: 0xaead,
  // virtio-net (vmm/devices/virtio/net/): the tap's rx offloads follow what the guest driver
  // accepted, known only when it activates the device (any time after init); a tap sent for QMP
  // netdev_add is checked (TUNGETIFF: a tap with IFF_NO_PI|IFF_VNET_HDR) and given the 12-byte
  // vnet header. Opening /dev/net/tun and TUNSETIFF stay init-only.
  TUNSETOFFLOAD: 0x400454d0,
  TUNGETIFF: 0x800454d2,
  TUNSETVNETHDRSZ: 0x400454d8,
  // vhost-net (-netdev vhost=on): the rings are handed to the kernel when the driver activates
  // the device and taken back at its reset. /dev/vhost-net, VHOST_SET_OWNER, VHOST_GET_FEATURES
  // and VHOST_SET_MEM_TABLE stay init-only.
  VHOST_SET_FEATURES: 0x4008af00,
  VHOST_SET_VRING_NUM: 0x4008af10,
  VHOST_SET_VRING_ADDR: 0x4028af11,
  VHOST_SET_VRING_BASE: 0x4008af12,
  VHOST_GET_VRING_BASE: 0xc008af12,
  VHOST_SET_VRING_KICK: 0x4008af20,
  VHOST_SET_VRING_CALL: 0x4008af21,
  VHOST_NET_SET_BACKEND: 0x4008af30,
  // Used by Node/libuv itself on its own fds: stream setup, and restoring a terminal's mode at exit
  // (uv_tty_set_mode uses TCSADRAIN = TCSETSW; Node's exit-time ResetStdio uses TCSANOW = TCSETS).
  TCGETS: 0x5401,
  TCSETS: 0x5402,
  TCSETSW: 0x5403,
  FIONBIO: 0x5421,
});

/**
 * Syscalls allowed without argument conditions, with the reason each is needed. Keep in sync with
 * docs/seccomp.md (the test suite checks the documented list matches).
 */
export const VMM_SYSCALLS: Readonly<Record<string, string>> = Object.freeze({
  // --- measured in the steady state (strace -f -c -p, see docs/seccomp.md) ---
  futex: 'measured: thread wake-ups and waits (libuv pool, V8 platform threads, Atomics.wait in the vCPU worker)',
  epoll_pwait: 'measured: libuv event loop (main thread and each worker thread); also the VMM\'s own Poller (collects with a zero timeout on the main thread) and iothreads (vmm/io)',
  epoll_ctl: 'measured: libuv registers/unregisters fds (new QMP connections); the Poller and iothreads (un)register eventfds, taps and QMP sockets',
  read: 'measured: socket reads; eventfd reads for uv_async (worker postMessage wake-ups)',
  write: 'measured: socket and log writes; eventfd writes to wake other loops',
  writev: 'measured: corked socket writes (several buffers in one call)',
  accept4: 'measured: accepting QMP clients (libuv passes SOCK_NONBLOCK|SOCK_CLOEXEC); also console and virtio-console socket clients',
  shutdown: 'measured: half-closing a client socket (socket.end())',
  close: 'measured: closing client sockets and fds at shutdown',
  statx: 'measured: fs.fstat on the log fd (libuv tries statx first)',
  fstat: 'measured: fstat fallback and at exit',
  fcntl: 'measured: libuv sets O_NONBLOCK/FD_CLOEXEC on fds',
  mmap: 'measured: V8 heap growth and zone allocations',
  munmap: 'measured: V8 heap shrinking, thread-stack release',
  mprotect: 'measured: V8 code space write-protection flips (W^X) and heap pages',
  madvise: 'measured: V8 and glibc malloc return memory (MADV_DONTNEED/FREE); virtio-balloon releases inflated guest pages (MADV_DONTNEED on private guest memory, MADV_REMOVE with mem-share=on)',
  brk: 'measured (rare, late): glibc malloc growing the main arena',
  getpid: 'measured: V8/Node internals (e.g. process.pid, profiler/trace ids)',
  rt_sigprocmask: 'measured: libuv and thread teardown mask signals',
  fsync: 'measured: Node flushes stdio fds at exit',
  restart_syscall: 'measured: the kernel restarts an interrupted sleep/wait with it after a signal',
  // --- not always seen in a short run, needed by construction ---
  exit: 'a thread ending (worker vCPU shutdown); strace -c cannot count it as it never returns',
  exit_group: 'process exit; never returns, so strace -c does not count it',
  rt_sigreturn: 'return from any signal handler (SIGCHLD, SIGWINCH, the vCPU kick signal); never returns to the caller',
  rt_sigaction: 'process.on(signal) handlers installed after init',
  tgkill: 'abort() and V8 thread interrupts; also how the VMM kicks a vCPU out of KVM_RUN',
  gettid: 'glibc/V8 thread ids (tracing, abort path)',
  readv: 'libuv reads into several buffers (fs.readv, stream reads)',
  recvmsg: 'Unix-socket reads that carry fds (QMP getfd for tap/vhost fds)',
  sendmsg: 'Unix-socket writes carrying fds or ancillary data',
  pread64: 'fs.read with a position on fds opened at init (disk images, thread pool)',
  pwrite64: 'fs.write with a position (disk image writes, thread pool)',
  lseek: 'fs reads/writes without a position on seekable fds',
  newfstatat: 'fs.stat/fstat fallback used by glibc/libuv when statx is not used',
  fdatasync: 'fs.fdatasync on disk images (virtio-blk flush)',
  preadv: 'virtio-blk reads: fs.readvSync with a position reads a request straight into its guest buffers',
  pwritev: 'virtio-blk writes: fs.writevSync with a position writes a request from its guest buffers',
  fallocate: 'virtio-blk discard / write-zeroes: punch holes or zero ranges in sparse disk images',
  eventfd2: 'creating eventfds for KVM_IRQFD/KVM_IOEVENTFD when devices are added after init',
  clock_gettime: 'clocks when the vDSO cannot serve them (e.g. a clocksource without vDSO support)',
  gettimeofday: 'measured in the lab (nested KVM under TCG): Date.now()/new Date() go to the kernel when the clocksource has no vDSO support; every log line and QMP timestamp needs it',
  clock_nanosleep: 'sleeping (V8 and libuv back-off) when not served by futex timeouts',
  nanosleep: 'sleeping (glibc usleep in V8/libuv back-off)',
  sched_yield: 'rare, late: V8 spin-locks and GC task yields',
  getrusage: 'rare, late: process.resourceUsage()/cpuUsage() and V8 GC heuristics',
  connect: 'virtio-vsock guest→host streams: connecting the AF_UNIX socket to <uds-path>_P. The address is behind a pointer seccomp cannot read, so it is not restricted; socket() only makes AF_UNIX stream sockets, and the VMM runs in its own network namespace',
  sched_getaffinity: 'glibc malloc, the first time a thread needs an arena beyond the 8th (arena_get2 sizes its arena limit with __get_nprocs_sched): libuv pool threads that first allocate after init (virtio-blk aio=threads) reached it in a jailed lab VM, which the filter killed',
  epoll_create1: 'an epoll set (vmm/io/epoll.ts) made after init: the main Poller and iothreads make theirs at init, this covers one created later (e.g. a device added by QMP); poll() is no longer used (the QMP SCM_RIGHTS reader moved to the Poller)',
});

/**
 * Syscalls answered with an error instead of being allowed: the caller copes with the failure and
 * allowing them would widen what a compromised VMM can do.
 */
export const VMM_ERRNO_SYSCALLS: Readonly<Record<string, string>> = Object.freeze({
  openat: 'QMP blockdev-add with a path: opening files after init stays forbidden, but the VMM answers a clear QMP error instead of dying; images to hot-replace come as fds (getfd, filename "fd:NAME")',
  unlink: 'measured once at exit: libuv unlinks the QMP socket path when the server closes; the parent removes the run directory instead (the VMM leaves its pidfile and sockets behind under the filter)',
});

/**
 * Syscalls allowed only with the argument values listed (OR-ed rules, AND-ed conditions), with the
 * reason. Keep in sync with docs/seccomp.md.
 */
export interface ConditionalSyscall {
  reason: string;
  /** each entry is one rule's AND-ed conditions; the syscall is allowed if any rule matches */
  rules: Array<Rule['args']>;
}

// <sys/socket.h> values the conditions use.
const AF_UNIX = 1;
const SOCK_STREAM = 1;
/** the socket type lives in the low bits; SOCK_NONBLOCK/SOCK_CLOEXEC are OR-ed above them */
const SOCK_TYPE_MASK = 0xf;
const SOL_SOCKET = 1;
const SO_ERROR = 4;

export const VMM_CONDITIONAL_SYSCALLS: Readonly<Record<string, ConditionalSyscall>> = Object.freeze({
  socket: {
    reason: 'virtio-vsock guest→host streams: a guest REQUEST to port P connects to the Unix socket <uds-path>_P after init (Node net.createConnection). Only socket(AF_UNIX, SOCK_STREAM[|SOCK_NONBLOCK|SOCK_CLOEXEC], 0): no IP, netlink, packet or datagram socket can be made',
    rules: [[
      { arg: 0, op: '==', value: AF_UNIX },
      { arg: 1, op: 'masked==', mask: SOCK_TYPE_MASK, value: SOCK_STREAM },
      { arg: 2, op: '==', value: 0 },
    ]],
  },
  getsockopt: {
    reason: 'virtio-vsock: libuv reads SO_ERROR once a non-blocking connect() completes; only (SOL_SOCKET, SO_ERROR)',
    rules: [[
      { arg: 1, op: '==', value: SOL_SOCKET },
      { arg: 2, op: '==', value: SO_ERROR },
    ]],
  },
});

/** The VMM's seccomp policy. `log: true` logs instead of killing (for finding missing syscalls). */
export function vmmPolicy(opts: { log?: boolean } = {}): Policy {
  // One rule per request (OR-ed). The request is `unsigned int` in the kernel but arrives in a
  // 64-bit register whose upper half a caller may leave sign-extended (e.g. 0xc008ae67 held in an
  // int), so only the low 32 bits are compared, as the kernel itself does.
  const ioctlRules: Rule[] = Object.entries(VMM_IOCTLS).map(([name, req]) => ({
    syscall: 'ioctl',
    action: 'allow',
    comment: name,
    args: [{ arg: 1, op: 'masked==', mask: 0xffffffff, value: req }],
  }));
  return {
    arch: 'x86_64',
    defaultAction: opts.log ? 'log' : 'kill_process',
    badArchAction: 'kill_process',
    rules: [
      { syscall: Object.keys(VMM_SYSCALLS), action: 'allow' },
      { syscall: Object.keys(VMM_ERRNO_SYSCALLS), action: 'errno(EPERM)' },
      ...ioctlRules,
      ...Object.entries(VMM_CONDITIONAL_SYSCALLS).flatMap(([name, c]) => c.rules.map((args): Rule => ({ syscall: name, action: 'allow', args }))),
    ],
  };
}

/** Every syscall name the policy mentions (allowed, errno'd, or argument-checked). */
export function vmmSyscallNames(): string[] {
  return [...Object.keys(VMM_SYSCALLS), ...Object.keys(VMM_ERRNO_SYSCALLS), 'ioctl', ...Object.keys(VMM_CONDITIONAL_SYSCALLS)];
}
