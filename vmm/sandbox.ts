// The VMM confines itself after init: vmmPolicy() from seccomp/ on every thread (TSYNC), the vCPU
// workers included. docs/seccomp.md lists what init must have done before (and why); prepare()
// does the lazy parts of Node that would otherwise need syscalls the filter forbids.
import { stat } from 'node:fs/promises';
import koffi from 'koffi';
import { installPolicy } from '../seccomp/install.js';
import { vmmPolicy, vmmSyscallNames } from '../seccomp/policies/vmm.js';
import { closeFd } from './kvm/sys.js';
import { FORBIDDEN_SYSCALL_ENV } from '../lib/vmm-test-hooks.js';

/** Test-only: after this many ms with the filter on, call socket(AF_INET) (forbidden) once. */
export { FORBIDDEN_SYSCALL_ENV };

const SYS_socket = 41;
// AF_INET: the filter lets AF_UNIX stream sockets through (virtio-vsock), never an IP socket
const AF_INET = 2;
const SOCK_STREAM = 1;

export interface SandboxInfo {
  mode: 'kill' | 'log';
  /** distinct syscalls the policy names (allowed, errno'd or argument-checked) */
  syscalls: number;
  instructions: number;
}

let forbiddenCall: ((nr: number, a: number, b: number, c: number) => number | bigint) | null = null;

/**
 * The lazy things Node/libuv do on first use, done while everything is still allowed: the time
 * zone (first local Date formatting opens /etc/localtime), process.stdout/stderr (fstat, ioctl),
 * libuv's thread pool (its threads start on the first async fs call), and the koffi function the
 * test-only injection calls.
 */
export async function prepare(): Promise<void> {
  void new Date().toString();
  void new Date().toLocaleString();
  void process.stdout;
  void process.stderr;
  await stat(process.execPath);
  if (process.env[FORBIDDEN_SYSCALL_ENV]) {
    forbiddenCall = koffi.load('libc.so.6').func('long syscall(long nr, long a, long b, long c)');
  }
}

/** Install the VMM policy on every thread of this process. Throws SeccompInstallError. */
export function install(mode: 'kill' | 'log'): SandboxInfo {
  const compiled = installPolicy(vmmPolicy({ log: mode === 'log' }), { tsync: true });
  return { mode, syscalls: vmmSyscallNames().length, instructions: compiled.instructions.length };
}

/**
 * Test-only (FORBIDDEN_SYSCALL_ENV): call socket(AF_INET) after `ms`. Under the kill filter this ends the
 * process with SIGSYS; under the log filter the call succeeds and the socket is closed again.
 */
export function scheduleForbiddenSyscall(ms: number, onReturn: (r: number) => void): void {
  const call = forbiddenCall;
  if (!call) return;
  setTimeout(() => {
    const r = Number(call(SYS_socket, AF_INET, SOCK_STREAM, 0));
    if (r >= 0) closeFd(r);
    onReturn(r);
  }, ms);
}
