// A VM's log file (vms/<id>/vmm.log): the VMM writes it through its stderr, the server appends
// its own lines. It can reach RLIMIT_FSIZE (64 MiB jailed; unbounded unjailed), so the server
// never reads it whole: only its end.
import { appendFileSync, closeSync, fstatSync, openSync, readSync } from 'node:fs';

/** GET /v1/vms/:id/log returns at most this much of the end of the log. */
export const LOG_TAIL_BYTES = 1024 * 1024;

/** Appends a line of the server's; best effort (a full disk or a deleted VM must not stop the caller). */
export function logLine(logPath: string, line: string): void {
  try {
    appendFileSync(logPath, `${new Date().toISOString()} capsule: ${line}\n`, { mode: 0o600 });
  } catch { /* the directory may be gone (deleted VM), or the disk full */ }
}

/** The last `maxBytes` of the log (with a first line saying what is left out), or undefined if there is none. */
export function readLogTail(logPath: string, maxBytes = LOG_TAIL_BYTES): string | undefined {
  let fd: number | undefined;
  try {
    fd = openSync(logPath, 'r');
    const size = fstatSync(fd).size;
    const len = Math.min(size, maxBytes);
    const buf = Buffer.alloc(len);
    readSync(fd, buf, 0, len, size - len);
    return (size > len ? `[capsule: the first ${size - len} bytes of the log are not shown]\n` : '') + buf.toString('utf8');
  } catch {
    return undefined;
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
}

/** The log's last three lines as one line (the detail of a failed start), read from its last 16 KiB. */
export function lastLines(logPath: string): string {
  return (readLogTail(logPath, 16 * 1024) ?? '').trim().split('\n').slice(-3).join(' | ');
}
