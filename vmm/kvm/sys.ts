// libc through koffi: the handful of system calls the VMM needs. Pointers are BigInt (koffi 3).
// ioctl is variadic in C; koffi's async calls do not work on variadic functions, so it is declared
// twice with fixed arguments: a pointer form (Buffer or BigInt address) and an integer form.
import koffi from 'koffi';

const libc = koffi.load('libc.so.6');

export const ioctlPtr = libc.func('ioctl', 'int', ['int', 'unsigned long', 'void *']) as (fd: number, req: number, arg: Buffer | bigint | null) => number;
export const ioctlInt = libc.func('ioctl', 'int', ['int', 'unsigned long', 'unsigned long']) as (fd: number, req: number, arg: number | bigint) => number;
const mmapRaw = libc.func('void *mmap(void *addr, size_t len, int prot, int flags, int fd, long off)') as (addr: bigint | null, len: number | bigint, prot: number, flags: number, fd: number, off: number) => bigint;
const munmapRaw = libc.func('int munmap(void *addr, size_t len)') as (addr: bigint, len: number | bigint) => number;
const madviseRaw = libc.func('int madvise(void *addr, size_t len, int advice)') as (addr: bigint, len: number | bigint, advice: number) => number;
const gettidRaw = libc.func('long syscall(long nr)') as (nr: number) => number | bigint;
const tgkillRaw = libc.func('int tgkill(int tgid, int tid, int sig)') as (tgid: number, tid: number, sig: number) => number;
const closeRaw = libc.func('int close(int fd)') as (fd: number) => number;
// prctl is variadic in glibc: fixed arguments, as for ioctl
const prctlRaw = libc.func('int prctl(int option, unsigned long a2, unsigned long a3, unsigned long a4, unsigned long a5)') as (option: number, a2: number, a3: number, a4: number, a5: number) => number;

export const PROT_READ = 1;
export const PROT_WRITE = 2;
export const MAP_SHARED = 0x01;
export const MAP_PRIVATE = 0x02;
export const MAP_ANONYMOUS = 0x20;
export const MAP_NORESERVE = 0x4000;
export const MAP_FIXED = 0x10;
export const MADV_DONTNEED = 4;
/** free a range of a shared mapping (shmem, tmpfs, hugetlbfs): punches a hole in its backing */
export const MADV_REMOVE = 9;
export const MADV_DONTDUMP = 16;
/** keep a range out of transparent huge pages (khugepaged skips it too); split VMAs inherit it */
export const MADV_NOHUGEPAGE = 15;
export const MAP_FAILED = 0xffffffffffffffffn;
export const PR_SET_THP_DISABLE = 41;
export const PR_GET_THP_DISABLE = 42;
export const SIGUSR2 = 12;
const SYS_gettid = 186;

export const EINTR = 4;
export const EAGAIN = 11;
/** KVM_GET_MSR_INDEX_LIST / KVM_GET_CPUID2: the caller's array is too small */
export const E2BIG = 7;

/** A failed system call, with its errno. */
export class SysError extends Error {
  constructor(readonly call: string, readonly errno: number) {
    super(`${call} failed: errno ${errno} (${errnoName(errno)})`);
    this.name = 'SysError';
  }
}

const NAMES: Record<number, string> = {
  1: 'EPERM', 2: 'ENOENT', 4: 'EINTR', 7: 'E2BIG', 9: 'EBADF', 11: 'EAGAIN', 12: 'ENOMEM', 13: 'EACCES', 14: 'EFAULT',
  16: 'EBUSY', 17: 'EEXIST', 19: 'ENODEV', 22: 'EINVAL', 25: 'ENOTTY', 28: 'ENOSPC', 95: 'EOPNOTSUPP',
};
export function errnoName(e: number): string {
  return NAMES[e] ?? `errno${e}`;
}

export function errno(): number {
  return koffi.errno();
}

export function mmap(len: number | bigint, prot: number, flags: number, fd = -1, offset = 0): bigint {
  const p = mmapRaw(null, len, prot, flags, fd, offset);
  if (p === MAP_FAILED || p === 0n) throw new SysError('mmap', koffi.errno());
  return p;
}

/** mmap at a fixed address inside a mapping the caller owns (MAP_FIXED is added). */
export function mmapFixed(addr: bigint, len: number | bigint, prot: number, flags: number, fd = -1, offset = 0): bigint {
  const p = mmapRaw(addr, len, prot, flags | MAP_FIXED, fd, offset);
  if (p === MAP_FAILED || p === 0n) throw new SysError('mmap', koffi.errno());
  return p;
}

export function munmap(addr: bigint, len: number | bigint): void {
  if (munmapRaw(addr, len) < 0) throw new SysError('munmap', koffi.errno());
}

export function madvise(addr: bigint, len: number | bigint, advice: number): void {
  if (madviseRaw(addr, len, advice) < 0) throw new SysError('madvise', koffi.errno());
}

/**
 * No transparent huge pages for this process from now on, nor for what it forks and execs (the
 * flag is the mm's, kept across fork and execve): prctl(PR_SET_THP_DISABLE). Pages faulted in
 * meanwhile stay small after `allowTransparentHugePages()`.
 */
export function disableTransparentHugePages(): void {
  if (prctlRaw(PR_SET_THP_DISABLE, 1, 0, 0, 0) < 0) throw new SysError('prctl(PR_SET_THP_DISABLE, 1)', koffi.errno());
}

/** Lifts `disableTransparentHugePages()`: new faults follow the host's THP mode again. */
export function allowTransparentHugePages(): void {
  if (prctlRaw(PR_SET_THP_DISABLE, 0, 0, 0, 0) < 0) throw new SysError('prctl(PR_SET_THP_DISABLE, 0)', koffi.errno());
}

export function transparentHugePagesDisabled(): boolean {
  return prctlRaw(PR_GET_THP_DISABLE, 0, 0, 0, 0) === 1;
}

/** madvise that reports instead of throwing: for ranges that another thread may unmap meanwhile. */
export function tryMadvise(addr: bigint, len: number | bigint, advice: number): number {
  return madviseRaw(addr, len, advice) < 0 ? koffi.errno() : 0;
}

export function gettid(): number {
  return Number(gettidRaw(SYS_gettid));
}

export function tgkill(tgid: number, tid: number, sig: number): void {
  if (tgkillRaw(tgid, tid, sig) < 0) throw new SysError('tgkill', koffi.errno());
}

export function closeFd(fd: number): void {
  closeRaw(fd);
}

/** Zero-copy ArrayBuffer over native memory. */
export function view(addr: bigint, len: number): ArrayBuffer {
  return koffi.view(addr, len);
}
