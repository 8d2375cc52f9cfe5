// Sending file descriptors over a Unix stream socket (SCM_RIGHTS), which Node's net module cannot
// do: one sendmsg() through koffi carrying the bytes and the fds together, as libvirt sends QMP
// `getfd` to QEMU. Used by the API server to hand a jailed VMM a file it cannot open itself, and
// by tests. x86_64 Linux layouts: struct msghdr (56 bytes), struct iovec (16), struct cmsghdr (16).
import koffi from 'koffi';

const libc = koffi.load('libc.so.6');
const sendmsgRaw = libc.func('long sendmsg(int fd, void *msg, int flags)') as (fd: number, msg: Buffer, flags: number) => number | bigint;
const SOL_SOCKET = 1;
const SCM_RIGHTS = 1;
const MSG_NOSIGNAL = 0x4000;
/** QEMU accepts at most 16 fds per message. */
export const MAX_FDS = 16;

/**
 * Sends `data` with `fds` in one sendmsg() on the connected Unix socket `sock`. Throws if the
 * kernel took less than all of `data` (the caller's message is small: a short write would
 * split a command from its fds).
 */
export function sendWithFds(sock: number, data: Uint8Array, fds: number[]): void {
  if (fds.length > MAX_FDS) throw new RangeError(`at most ${MAX_FDS} fds per message`);
  sendWithAnyFds(sock, data, fds);
}

/**
 * sendWithFds() without QEMU's 16-fd bound (the kernel's own is 253, SCM_MAX_FD): for tests that
 * send a VMM more fds than any well-behaved client would.
 */
export function sendWithAnyFds(sock: number, data: Uint8Array, fds: number[]): void {
  const clen = 16 + 4 * fds.length;
  const control = Buffer.alloc((clen + 7) & ~7);
  control.writeBigUInt64LE(BigInt(clen), 0);
  control.writeInt32LE(SOL_SOCKET, 8);
  control.writeInt32LE(SCM_RIGHTS, 12);
  fds.forEach((fd, i) => control.writeInt32LE(fd, 16 + 4 * i));
  const payload = Buffer.from(data);
  const iov = Buffer.alloc(16);
  iov.writeBigUInt64LE(BigInt(koffi.address(payload)), 0);
  iov.writeBigUInt64LE(BigInt(payload.length), 8);
  const msg = Buffer.alloc(56);
  msg.writeBigUInt64LE(BigInt(koffi.address(iov)), 16);
  msg.writeBigUInt64LE(1n, 24);
  msg.writeBigUInt64LE(fds.length ? BigInt(koffi.address(control)) : 0n, 32);
  msg.writeBigUInt64LE(fds.length ? BigInt(control.length) : 0n, 40);
  const n = Number(sendmsgRaw(sock, msg, MSG_NOSIGNAL));
  if (n !== payload.length) throw new Error(`sendmsg with fds: ${n < 0 ? `errno ${koffi.errno()}` : `sent ${n} of ${payload.length} bytes`}`);
}
