// vhost-net (-netdev ...,vhost=on): the kernel moves the frames between the guest's rings and the
// tap; the VMM only sets the rings up and relays notifications and interrupts.
//
// At init (before the seccomp filter): open /dev/vhost-net, VHOST_SET_OWNER (this process's
// memory is what the kernel worker will access), VHOST_GET_FEATURES, VHOST_SET_MEM_TABLE from the
// guest memory regions (they never change), and one kick and one call eventfd per queue.
// On activation (any time later, under the filter): VHOST_SET_FEATURES (what the driver accepted
// that vhost knows), then for rx (0) and tx (1): VHOST_SET_VRING_NUM/BASE/ADDR (host addresses of
// the rings), VHOST_SET_VRING_KICK/CALL, and VHOST_NET_SET_BACKEND with the tap's fd.
// On a driver reset: VHOST_NET_SET_BACKEND -1 and VHOST_GET_VRING_BASE stop both rings.
//
// Kick: a driver notification reaches the device as notify(index) (an MMIO exit, or the device
// manager's ioeventfd), which writes the queue's kick eventfd; kickFd(index) is that eventfd, so
// a manager that binds it as the KVM ioeventfd skips the VMM altogether.
// Call: the kernel writes the call eventfd after its own EVENT_IDX / NO_INTERRUPT check; the main
// Poller reads it and raises the transport's used-ring interrupt (virtio-mmio needs its
// InterruptStatus set, so the call eventfd cannot be a bare irqfd: the guest's handler would see
// status 0 and ignore it).
import { closeSync, openSync, constants as fsc } from 'node:fs';
import koffi from 'koffi';
import { logger } from '../../../log.js';
import { EPOLLIN } from '../../../io/epoll.js';
import { EventFd } from '../../../io/eventfd.js';
import { mainPoller, type Poller } from '../../../io/poller.js';
import { ioctlInt, ioctlPtr, SysError } from '../../../kvm/sys.js';
import type { GuestMemory } from '../../../memory/guest-memory.js';
import type { ActivateContext } from '../../../virtio/device.js';
import type { Queue } from '../../../virtio/queue.js';
import type { NetBackend } from './tap.js';
import {
  NET_OFFSETOF, NET_SIZEOF, VHOST_FILE_UNBIND, VHOST_GET_FEATURES, VHOST_GET_VRING_BASE, VHOST_NET_SET_BACKEND,
  VHOST_SET_FEATURES, VHOST_SET_MEM_TABLE, VHOST_SET_OWNER, VHOST_SET_VRING_ADDR, VHOST_SET_VRING_BASE,
  VHOST_SET_VRING_CALL, VHOST_SET_VRING_KICK, VHOST_SET_VRING_NUM,
} from './sys.js';
import { NET_F } from './sys.js';

const log = logger('vhost-net');
export const VHOST_NET_PATH = '/dev/vhost-net';
const QUEUES = 2;

/** Guest-physical → host-virtual translation of one ring, which must lie inside one region. */
export function hostAddress(mem: GuestMemory, gpa: number, len: number): bigint {
  for (const r of mem.regions) {
    if (gpa >= r.guestBase && gpa + len <= r.guestBase + r.size) return mem.regionHostAddr(r) + BigInt(gpa - r.guestBase);
  }
  throw new Error(`ring 0x${gpa.toString(16)}+${len} is not inside one guest RAM region`);
}

/** struct vhost_memory with one vhost_memory_region per guest RAM region. */
export function memTable(mem: GuestMemory): Buffer {
  const regionSize = NET_SIZEOF.vhost_memory_region as number;
  const base = NET_OFFSETOF['vhost_memory.regions'] as number;
  const b = Buffer.alloc(base + regionSize * mem.regions.length);
  b.writeUInt32LE(mem.regions.length, NET_OFFSETOF['vhost_memory.nregions'] as number);
  mem.regions.forEach((r, i) => {
    const at = base + i * regionSize;
    b.writeBigUInt64LE(BigInt(r.guestBase), at + (NET_OFFSETOF['vhost_memory_region.guest_phys_addr'] as number));
    b.writeBigUInt64LE(BigInt(r.size), at + (NET_OFFSETOF['vhost_memory_region.memory_size'] as number));
    b.writeBigUInt64LE(mem.regionHostAddr(r), at + (NET_OFFSETOF['vhost_memory_region.userspace_addr'] as number));
  });
  return b;
}

/** struct vhost_vring_addr for a queue (host addresses of its three parts). */
export function vringAddr(mem: GuestMemory, index: number, q: Queue): Buffer {
  const b = Buffer.alloc(NET_SIZEOF.vhost_vring_addr as number);
  b.writeUInt32LE(index, NET_OFFSETOF['vhost_vring_addr.index'] as number);
  b.writeUInt32LE(0, NET_OFFSETOF['vhost_vring_addr.flags'] as number);
  b.writeBigUInt64LE(hostAddress(mem, q.desc, 16 * q.size), NET_OFFSETOF['vhost_vring_addr.desc_user_addr'] as number);
  b.writeBigUInt64LE(hostAddress(mem, q.used, 6 + 8 * q.size), NET_OFFSETOF['vhost_vring_addr.used_user_addr'] as number);
  b.writeBigUInt64LE(hostAddress(mem, q.avail, 6 + 2 * q.size), NET_OFFSETOF['vhost_vring_addr.avail_user_addr'] as number);
  return b;
}

/** struct vhost_vring_state / vhost_vring_file: two 32-bit fields. */
function pair(index: number, value: number): Buffer {
  const b = Buffer.alloc(8);
  b.writeUInt32LE(index, 0);
  b.writeInt32LE(value, 4);
  return b;
}

export class VhostNet {
  private readonly kicks: EventFd[] = [];
  private readonly calls: EventFd[] = [];
  private running = false;
  private onCall: Array<((events: number) => void) | null> = [];
  /** interrupts relayed from the kernel (metrics) */
  calledBack = 0;

  private constructor(readonly fd: number, readonly kernelFeatures: bigint, private readonly poller: Poller) {}

  /** Opens /dev/vhost-net and does the init-time set-up. Throws with the reason (no module, no access). */
  static open(mem: GuestMemory, opts: { path?: string; poller?: Poller } = {}): VhostNet {
    const path = opts.path ?? VHOST_NET_PATH;
    const fd = openSync(path, fsc.O_RDWR);
    try {
      if (ioctlInt(fd, VHOST_SET_OWNER, 0) < 0) throw new SysError('VHOST_SET_OWNER', koffi.errno());
      const f = Buffer.alloc(8);
      if (ioctlPtr(fd, VHOST_GET_FEATURES, f) < 0) throw new SysError('VHOST_GET_FEATURES', koffi.errno());
      if (ioctlPtr(fd, VHOST_SET_MEM_TABLE, memTable(mem)) < 0) throw new SysError('VHOST_SET_MEM_TABLE', koffi.errno());
      const v = new VhostNet(fd, f.readBigUInt64LE(0), opts.poller ?? mainPoller());
      for (let i = 0; i < QUEUES; i++) {
        v.kicks.push(EventFd.create());
        v.calls.push(EventFd.create());
        v.onCall.push(null);
      }
      return v;
    } catch (e) {
      closeSync(fd);
      throw e;
    }
  }

  /** Device feature bits the kernel cannot serve are not offered (MRG_RXBUF is the only optional one). */
  deviceFeatureMask(): bigint {
    const mrg = 1n << BigInt(NET_F.MRG_RXBUF);
    return (this.kernelFeatures & mrg) ? ~0n : ~mrg;
  }

  /** The eventfd that kicks queue `index` (for an ioeventfd bound straight to it). */
  kickFd(index: number): number | undefined {
    return this.kicks[index]?.fd;
  }

  get isRunning(): boolean {
    return this.running;
  }

  start(ctx: ActivateContext, backend: NetBackend): void {
    if (this.running) this.stop();
    const set = (req: number, name: string, arg: Buffer): void => {
      if (ioctlPtr(this.fd, req, arg) < 0) throw new SysError(name, koffi.errno());
    };
    // only what vhost-net knows: VERSION_1, EVENT_IDX, INDIRECT_DESC, MRG_RXBUF (offloads are the tap's)
    const features = ctx.features & this.kernelFeatures;
    const f = Buffer.alloc(8);
    f.writeBigUInt64LE(features);
    set(VHOST_SET_FEATURES, 'VHOST_SET_FEATURES', f);
    for (let i = 0; i < QUEUES; i++) {
      const q = ctx.queues[i];
      if (!q?.ready) throw new Error(`vhost-net: queue ${i} is not ready`);
      set(VHOST_SET_VRING_NUM, 'VHOST_SET_VRING_NUM', pair(i, q.size));
      set(VHOST_SET_VRING_BASE, 'VHOST_SET_VRING_BASE', pair(i, q.state().nextAvail));
      set(VHOST_SET_VRING_ADDR, 'VHOST_SET_VRING_ADDR', vringAddr(ctx.mem, i, q));
      set(VHOST_SET_VRING_KICK, 'VHOST_SET_VRING_KICK', pair(i, (this.kicks[i] as EventFd).fd));
      const call = this.calls[i] as EventFd;
      set(VHOST_SET_VRING_CALL, 'VHOST_SET_VRING_CALL', pair(i, call.fd));
      const cb = (): void => {
        if (call.read() === null) return;
        this.calledBack++;
        if (ctx.interrupt.raiseUsed) ctx.interrupt.raiseUsed(i);
        else ctx.interrupt.signalUsed(i);
      };
      this.onCall[i] = cb;
      this.poller.add(call.fd, EPOLLIN, cb);
    }
    this.running = true;
    for (let i = 0; i < QUEUES; i++) set(VHOST_NET_SET_BACKEND, 'VHOST_NET_SET_BACKEND', pair(i, backend.fd));
    // buffers the driver made available before the kernel listened
    for (const k of this.kicks) k.write();
    log.info(`vhost-net started on ${backend.name} (features 0x${features.toString(16)})`);
  }

  kick(index: number): void {
    if (this.running) this.kicks[index]?.write();
  }

  /** Detaches the tap and stops both rings (driver reset). */
  stop(): void {
    if (!this.running) return;
    this.running = false;
    for (let i = 0; i < QUEUES; i++) {
      if (ioctlPtr(this.fd, VHOST_NET_SET_BACKEND, pair(i, VHOST_FILE_UNBIND)) < 0) log.warn(`VHOST_NET_SET_BACKEND -1 on ${i}: errno ${koffi.errno()}`);
      if (ioctlPtr(this.fd, VHOST_GET_VRING_BASE, pair(i, 0)) < 0) log.warn(`VHOST_GET_VRING_BASE ${i}: errno ${koffi.errno()}`);
      const cb = this.onCall[i];
      if (cb) this.poller.remove((this.calls[i] as EventFd).fd, cb);
      this.onCall[i] = null;
      this.calls[i]?.read();
    }
  }

  close(): void {
    this.stop();
    for (const e of [...this.kicks, ...this.calls]) e.close();
    this.kicks.length = this.calls.length = 0;
    closeSync(this.fd);
  }
}
