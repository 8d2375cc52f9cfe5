// The file operations virtio-blk needs beyond node:fs: fallocate(2) for discard / write-zeroes,
// and a page-aligned bounce buffer for O_DIRECT requests whose guest buffers are not aligned.
import { readSync, writeSync } from 'node:fs';
import koffi from 'koffi';
import { MAP_ANONYMOUS, MAP_PRIVATE, mmap, munmap, PROT_READ, PROT_WRITE, SysError, view } from '../../../kvm/sys.js';

const libc = koffi.load('libc.so.6');
const fallocateRaw = libc.func('int fallocate(int fd, int mode, long offset, long len)') as (fd: number, mode: number, off: number, len: number) => number;

export const FALLOC_FL_KEEP_SIZE = 0x01;
export const FALLOC_FL_PUNCH_HOLE = 0x02;
export const FALLOC_FL_ZERO_RANGE = 0x10;

export function fallocate(fd: number, mode: number, offset: number, len: number): void {
  if (fallocateRaw(fd, mode, offset, len) < 0) throw new SysError('fallocate', koffi.errno());
}

export class AlignedBuffer {
  private readonly addr: bigint;
  private readonly buf: Uint8Array;
  constructor(readonly size: number) {
    this.addr = mmap(size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
    this.buf = new Uint8Array(view(this.addr, size));
  }

  /** Moves the bytes of `views` to/from the file at `pos` through the aligned buffer. */
  transfer(fd: number, views: Uint8Array[], pos: number, dir: 'read' | 'write'): number {
    const total = views.reduce((n, v) => n + v.length, 0);
    let done = 0;
    let vi = 0;
    let voff = 0;
    while (done < total) {
      const chunk = Math.min(this.size, total - done);
      if (dir === 'write') this.gather(views, vi, voff, chunk);
      const n = dir === 'read'
        ? readSync(fd, this.buf, 0, chunk, pos + done)
        : writeSync(fd, this.buf, 0, chunk, pos + done);
      if (n <= 0) break;
      if (dir === 'read') this.scatter(views, vi, voff, n);
      // advance the view cursor by n
      let left = n;
      while (left > 0 && vi < views.length) {
        const room = (views[vi] as Uint8Array).length - voff;
        if (left >= room) {
          left -= room;
          vi++;
          voff = 0;
        } else {
          voff += left;
          left = 0;
        }
      }
      done += n;
      if (n < chunk) break;
    }
    return done;
  }

  private gather(views: Uint8Array[], vi: number, voff: number, n: number): void {
    let at = 0;
    while (at < n && vi < views.length) {
      const v = (views[vi] as Uint8Array).subarray(voff, voff + (n - at));
      this.buf.set(v, at);
      at += v.length;
      vi++;
      voff = 0;
    }
  }

  private scatter(views: Uint8Array[], vi: number, voff: number, n: number): void {
    let at = 0;
    while (at < n && vi < views.length) {
      const v = views[vi] as Uint8Array;
      const take = Math.min(v.length - voff, n - at);
      v.set(this.buf.subarray(at, at + take), voff);
      at += take;
      vi++;
      voff = 0;
    }
  }

  free(): void {
    munmap(this.addr, this.size);
  }
}
