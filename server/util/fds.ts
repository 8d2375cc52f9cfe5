// File descriptors the server did not open itself (inherited from whatever started it) carry no
// close-on-exec flag, and spawn() hands every such fd to the child: a VMM (and unshare, sh and
// QEMU on the way) would get the server's inherited pipes, sockets or files. Everything the
// server opens through Node is close-on-exec already (libuv, SQLite use O_CLOEXEC); this marks
// the rest before each spawn, so children get exactly the stdio they are given.
import koffi from 'koffi';

/** close_range(2) flag (Linux 5.11): set FD_CLOEXEC on the range instead of closing it. */
const CLOSE_RANGE_CLOEXEC = 1 << 2;

let closeRange: ((first: number, last: number, flags: number) => number) | null | undefined;

/**
 * Marks every fd from 3 up close-on-exec in this process (the server's own use of its fds is
 * unchanged). Returns false where close_range is unavailable (old glibc or kernel); the caller
 * then spawns as before.
 */
export function markInheritedFdsCloexec(): boolean {
  if (closeRange === undefined) {
    try {
      closeRange = koffi.load('libc.so.6').func('int close_range(unsigned int first, unsigned int last, int flags)') as (first: number, last: number, flags: number) => number;
    } catch {
      closeRange = null;
    }
  }
  if (!closeRange) return false;
  return closeRange(3, 0xffff_ffff, CLOSE_RANGE_CLOEXEC) === 0;
}
