// virtio-pmem (virtio 1.2, 5.19): a host file mapped straight into guest-physical memory above RAM;
// Linux's virtio_pmem + nd_pmem make it /dev/pmem0, which a filesystem can mount with DAX (the
// guest reads the host's page cache, no copies, no virtqueue traffic). Config: le64 start, le64
// size of the window. One request queue: FLUSH (le32 type 0) answered le32 0 = OK.
//
// Read-only (-device virtio-pmem,id=,file= is what capsule offers): the file is opened O_RDONLY
// and mapped PROT_READ, MAP_SHARED; the KVM slot is KVM_MEM_READONLY, so a guest write exits as an
// MMIO write that no device claims (ignored, logged once per page) and the file never changes.
// FLUSH has nothing to write back and answers OK (a writable pmem would fsync the file here).
//
// The window is 2 MiB-aligned in address and size (DeviceManager.addDeviceMemory). A file whose
// size is not a multiple of 2 MiB is padded: an anonymous read-only reservation of the padded
// size, with the file mapped over its start (MAP_FIXED), so the guest reads zeroes past the end
// of the file instead of the VMM taking SIGBUS. The host must not shrink the file while the VM
// runs (the pages past the new end would fault: the vCPU fails and the VM stops).
import { closeSync, fstatSync, openSync } from 'node:fs';
import { DEVICE_ID } from '../../../virtio/constants.js';
import { readConfigBytes, type ActivateContext, type VirtioDevice } from '../../../virtio/device.js';
import { ChainReader, ChainWriter } from '../../../virtio/queue.js';
import { MAP_ANONYMOUS, MAP_NORESERVE, MAP_PRIVATE, MAP_SHARED, mmap, mmapFixed, munmap, PROT_READ } from '../../../kvm/sys.js';
import { DEVICE_MEMORY_ALIGN } from '../../manager.js';

export const PMEM_REQ_FLUSH = 0;
export const PMEM_RESP_OK = 0;
export const PMEM_RESP_EIO = 1;
const QUEUE_SIZE = 64;
const PAGE = 4096;

export interface PmemOptions {
  id: string;
  file: string;
}

export interface PmemMetrics {
  flushes: number;
  badRequests: number;
  rejected: number;
}

export class VirtioPmem implements VirtioDevice {
  readonly deviceType = DEVICE_ID.PMEM;
  readonly queueSizes = [QUEUE_SIZE];
  /** no VIRTIO_PMEM_F_SHMEM_REGION: the window comes from config start/size */
  readonly features = 0n;
  readonly metrics: PmemMetrics = { flushes: 0, badRequests: 0, rejected: 0 };
  readonly readOnly = true;
  /** the file's size in bytes */
  readonly fileSize: number;
  /** the window's size: fileSize rounded up to 2 MiB */
  readonly size: number;
  /** host address of the mapping (size bytes) */
  readonly hostAddr: bigint;
  /** guest-physical address of the window, set once the device manager placed it */
  guestBase = 0;
  private ctx: ActivateContext | null = null;
  private mapped = true;

  constructor(readonly opts: PmemOptions) {
    const fd = openSync(opts.file, 'r');
    try {
      const st = fstatSync(fd);
      if (!st.isFile()) throw new Error(`${opts.file} is not a regular file`);
      if (st.size === 0) throw new Error(`${opts.file} is empty`);
      this.fileSize = st.size;
      this.size = Math.ceil(st.size / DEVICE_MEMORY_ALIGN) * DEVICE_MEMORY_ALIGN;
      this.hostAddr = mmap(this.size, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE);
      try {
        mmapFixed(this.hostAddr, Math.ceil(st.size / PAGE) * PAGE, PROT_READ, MAP_SHARED, fd, 0);
      } catch (e) {
        munmap(this.hostAddr, this.size);
        throw e;
      }
    } finally {
      closeSync(fd); // the mapping keeps the file
    }
  }

  private configSpace(): Uint8Array {
    const c = new Uint8Array(16);
    const v = new DataView(c.buffer);
    v.setBigUint64(0, BigInt(this.guestBase), true);
    v.setBigUint64(8, BigInt(this.size), true);
    return c;
  }

  readConfig(offset: number, data: Uint8Array): void {
    readConfigBytes(this.configSpace(), offset, data);
  }
  writeConfig(): void {}

  activate(ctx: ActivateContext): void {
    this.ctx = ctx;
  }

  notify(index: number): void {
    const ctx = this.ctx;
    const q = ctx?.queues[index];
    if (!ctx || !q || index !== 0) return;
    let used = false;
    for (;;) {
      const p = q.popOrArm(ctx.mem);
      if (!p) break;
      used = true;
      if (p.error) {
        this.metrics.rejected++;
        q.addUsed(ctx.mem, p.error.head, 0);
        continue;
      }
      const r = new ChainReader(ctx.mem, p.chain.readable);
      const w = new ChainWriter(ctx.mem, p.chain.writable);
      if (w.total < 4) {
        this.metrics.rejected++;
        q.addUsed(ctx.mem, p.chain.head, 0);
        continue;
      }
      let ret = PMEM_RESP_EIO;
      if (r.total >= 4 && new DataView(r.read(4).buffer).getUint32(0, true) === PMEM_REQ_FLUSH) {
        // read-only: nothing was written, nothing to write back
        this.metrics.flushes++;
        ret = PMEM_RESP_OK;
      } else {
        this.metrics.badRequests++;
      }
      const out = new Uint8Array(4);
      new DataView(out.buffer).setUint32(0, ret, true);
      w.write(out);
      q.addUsed(ctx.mem, p.chain.head, 4);
    }
    if (used) ctx.interrupt.signalUsed(index);
  }

  reset(): void {
    this.ctx = null;
  }

  /** Unmaps the window (after the VM is gone: KVM must not use the slot any more). */
  close(): void {
    this.reset();
    if (!this.mapped) return;
    this.mapped = false;
    munmap(this.hostAddr, this.size);
  }
}
