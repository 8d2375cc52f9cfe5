// Installing a compiled filter into the running Node process, through koffi (no native addon).
//
// Why the seccomp(2) syscall and not prctl(PR_SET_SECCOMP): prctl attaches the filter to the
// calling thread only, while Node already runs libuv's thread pool, V8 platform workers and any
// worker_threads. SECCOMP_FILTER_FLAG_TSYNC makes the kernel attach the filter to every thread of
// the process atomically, or fail and name the thread it could not synchronise.
// PR_SET_NO_NEW_PRIVS must be set first: without CAP_SYS_ADMIN the kernel refuses filters
// (EACCES) unless the process promised never to gain privileges through execve.
import { readdirSync, readFileSync } from 'node:fs';
import { constants as osConstants } from 'node:os';
import koffi from 'koffi';
import { BPF_MAXINSNS, SOCK_FILTER_SIZE } from './bpf.js';
import { compilePolicy, type CompileOptions, type CompiledFilter } from './compiler.js';
import type { Policy } from './policy.js';

const PR_SET_NO_NEW_PRIVS = 38;
const PR_GET_NO_NEW_PRIVS = 39;
const PR_GET_SECCOMP = 21;
const SYS_seccomp = 317; // x86_64
const SECCOMP_SET_MODE_FILTER = 1;
export const SECCOMP_FILTER_FLAG_TSYNC = 1;
export const SECCOMP_FILTER_FLAG_LOG = 2;

interface Libc {
  prctl: (option: number, a2: number, a3: number, a4: number, a5: number) => number;
  seccompFilter: (nr: number, op: number, flags: number, prog: Buffer) => number | bigint;
}

let libc: Libc | undefined;
function getLibc(): Libc {
  if (libc) return libc;
  if (process.platform !== 'linux' || process.arch !== 'x64') {
    throw new SeccompInstallError(`seccomp filters built by this library are for Linux x86_64; this is ${process.platform}/${process.arch}`);
  }
  const lib = koffi.load('libc.so.6');
  // Both prctl and syscall are variadic in glibc; declaring fixed-argument prototypes keeps koffi
  // on its plain (non-variadic) calling path, which is what the x86_64 ABI needs for integer args.
  libc = {
    prctl: lib.func('int prctl(int option, unsigned long a2, unsigned long a3, unsigned long a4, unsigned long a5)'),
    seccompFilter: lib.func('long syscall(long number, unsigned long op, unsigned long flags, void *prog)'),
  };
  return libc;
}

const errnoNames = new Map<number, string>();
for (const [name, n] of Object.entries(osConstants.errno as Record<string, number>)) if (!errnoNames.has(n)) errnoNames.set(n, name);
export const errnoName = (n: number): string => errnoNames.get(n) ?? `errno ${n}`;

const hints: Record<string, string> = {
  EINVAL: 'the kernel rejected the program or the flags (bad instruction, jump, length, or an unsupported flag)',
  EACCES: 'no_new_privs is not set and the process lacks CAP_SYS_ADMIN',
  EFAULT: 'the program pointer was not readable',
  ENOMEM: 'out of memory, or the stacked filters exceed 32768 instructions in total',
  EBUSY: 'another thread is being traced or using a user-notification listener',
};

export class SeccompInstallError extends Error {
  override name = 'SeccompInstallError';
  constructor(
    message: string,
    /** errno from the failing call, when there was one. */
    readonly errno?: number,
    /** For TSYNC failures: the id of the thread the kernel could not synchronise. */
    readonly threadId?: number,
  ) {
    super(message);
  }
}

export interface InstallOptions {
  /** Synchronise all threads of the process (SECCOMP_FILTER_FLAG_TSYNC). Default true. */
  tsync?: boolean;
  /** Ask the kernel to log every action except allow (SECCOMP_FILTER_FLAG_LOG). Default false. */
  log?: boolean;
}

/** Set PR_SET_NO_NEW_PRIVS (idempotent; it can never be cleared). */
export function setNoNewPrivs(): void {
  const { prctl } = getLibc();
  const r = prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
  const e = koffi.errno();
  if (r !== 0) throw new SeccompInstallError(`prctl(PR_SET_NO_NEW_PRIVS) failed: ${errnoName(e)}`, e);
}

/** Install a compiled program (Buffer of struct sock_filter) for this process. */
export function installFilter(filter: Buffer | CompiledFilter, opts: InstallOptions = {}): void {
  const program = Buffer.isBuffer(filter) ? filter : filter.program;
  if (program.length === 0 || program.length % SOCK_FILTER_SIZE !== 0) {
    throw new SeccompInstallError(`program must be a non-empty multiple of ${SOCK_FILTER_SIZE} bytes; got ${program.length}`);
  }
  const count = program.length / SOCK_FILTER_SIZE;
  if (count > BPF_MAXINSNS) throw new SeccompInstallError(`program has ${count} instructions; the kernel accepts at most ${BPF_MAXINSNS}`);
  const { seccompFilter } = getLibc();
  setNoNewPrivs();
  // struct sock_fprog { unsigned short len; /* 6 bytes padding */ struct sock_filter *filter; }
  const fprog = Buffer.alloc(16);
  fprog.writeUInt16LE(count, 0);
  fprog.writeBigUInt64LE(koffi.address(program), 8);
  const flags = (opts.tsync === false ? 0 : SECCOMP_FILTER_FLAG_TSYNC) | (opts.log ? SECCOMP_FILTER_FLAG_LOG : 0);
  const r = Number(seccompFilter(SYS_seccomp, SECCOMP_SET_MODE_FILTER, flags, fprog));
  const e = koffi.errno();
  if (r === 0) return;
  if (r > 0) {
    // With TSYNC (and without TSYNC_ESRCH) the kernel returns the id of the thread that could not
    // be synchronised: one already running a filter that is not an ancestor of ours.
    throw new SeccompInstallError(
      `seccomp(SECCOMP_SET_MODE_FILTER, TSYNC) failed: thread ${r} has a different seccomp filter (not an ancestor of this thread's) and cannot be synchronised`,
      undefined,
      r,
    );
  }
  const name = errnoName(e);
  throw new SeccompInstallError(`seccomp(SECCOMP_SET_MODE_FILTER) failed: ${name}${hints[name] ? ` (${hints[name]})` : ''}`, e);
}

/** Compile and install a policy; returns the compiled filter for logging/inspection. */
export function installPolicy(policy: Policy, opts: InstallOptions & CompileOptions = {}): CompiledFilter {
  const compiled = compilePolicy(policy, opts);
  installFilter(compiled, opts);
  return compiled;
}

/** This thread's seccomp mode via prctl(PR_GET_SECCOMP): 0 off, 2 filter. */
export function currentSeccompMode(): number {
  return getLibc().prctl(PR_GET_SECCOMP, 0, 0, 0, 0);
}

/** Whether no_new_privs is set for this thread. */
export function noNewPrivs(): boolean {
  return getLibc().prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) === 1;
}

export interface ThreadSeccompStatus {
  tid: number;
  /** Thread name from /proc (comm), e.g. "node", "libuv-worker", "V8 Worker". */
  name: string;
  /** 0 = disabled, 1 = strict, 2 = filter. */
  seccomp: number;
  /** Number of filters attached (Seccomp_filters:, Linux 5.9+); undefined on older kernels. */
  filters: number | undefined;
  noNewPrivs: boolean | undefined;
}

/** Read Seccomp: and Seccomp_filters: for every thread of `pid` from /proc/PID/task/TID/status. */
export function threadSeccompStatus(pid: number = process.pid): ThreadSeccompStatus[] {
  const out: ThreadSeccompStatus[] = [];
  for (const t of readdirSync(`/proc/${pid}/task`)) {
    let text: string;
    try {
      text = readFileSync(`/proc/${pid}/task/${t}/status`, 'utf8');
    } catch {
      continue; // the thread exited between readdir and read
    }
    const field = (k: string): string | undefined => new RegExp(`^${k}:\\s*(.*)$`, 'm').exec(text)?.[1]?.trim();
    const filters = field('Seccomp_filters');
    const nnp = field('NoNewPrivs');
    out.push({
      tid: Number(t),
      name: field('Name') ?? '',
      seccomp: Number(field('Seccomp') ?? NaN),
      filters: filters === undefined ? undefined : Number(filters),
      noNewPrivs: nnp === undefined ? undefined : nnp === '1',
    });
  }
  return out.sort((a, b) => a.tid - b.tid);
}
