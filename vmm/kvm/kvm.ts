// Typed KVM handles, rust-vmm kvm-ioctls shaped: Kvm (/dev/kvm), VmFd, VcpuFd.
// Every ioctl is one method; failures throw KvmError carrying errno.
import { openSync } from 'node:fs';
import * as io from './ioctls.js';
import { OFFSETOF, SIZEOF } from './layout.js';
import { closeFd, E2BIG, errno, errnoName, ioctlInt, ioctlPtr, mmap, MAP_SHARED, PROT_READ, PROT_WRITE, view } from './sys.js';

export class KvmError extends Error {
  constructor(readonly op: string, readonly errno: number) {
    super(`${op} failed: ${errnoName(errno)} (errno ${errno})`);
    this.name = 'KvmError';
  }
}

function check(op: string, r: number): number {
  if (r < 0) throw new KvmError(op, errno());
  return r;
}

/**
 * A SET ioctl makes the kernel copy a fixed number of bytes from the pointer it is given: a
 * shorter Buffer would have it read past the end of ours (into whatever the heap holds next).
 * Every fixed-size setter checks the length first.
 */
function sized(op: string, b: Buffer, size: number): Buffer {
  if (b.length !== size) throw new RangeError(`${op}: ${b.length} bytes, the struct is ${size}`);
  return b;
}

/** An ioctl that fills a struct of `size` bytes (a KVM_GET_*): the struct. */
function getStruct(fd: number, op: string, nr: number, size: number): Buffer {
  const b = Buffer.alloc(size);
  check(op, ioctlPtr(fd, nr, b));
  return b;
}

/** An ioctl that reads a struct of `size` bytes (a KVM_SET_*); a Buffer of another size is refused. */
function setStruct(fd: number, op: string, nr: number, b: Buffer, size: number): void {
  check(op, ioctlPtr(fd, nr, sized(op, b, size)));
}

/** KVM_GET_MSRS read only the first `read` of `wanted` MSRs: KVM refuses MSR `index` for this vCPU. */
export class MsrReadError extends Error {
  constructor(readonly index: number, readonly read: number, readonly wanted: number) {
    super(`KVM_GET_MSRS stopped at MSR 0x${index.toString(16)}: ${read} of ${wanted} read`);
    this.name = 'MsrReadError';
  }
}

/** One MSR: its index and 64-bit value (struct kvm_msr_entry). */
export type MsrEntry = [index: number, value: bigint];

/** entries per KVM_GET/SET_MSRS call: the kernel's msr_io() says E2BIG when nmsrs >= MAX_IO_MSRS (256) */
export const MAX_MSRS_PER_CALL = 255;

function encodeMsrs(entries: ReadonlyArray<MsrEntry>): Buffer {
  const b = Buffer.alloc(8 + 16 * entries.length);
  b.writeUInt32LE(entries.length, 0);
  entries.forEach(([idx, val], i) => {
    b.writeUInt32LE(idx >>> 0, 8 + i * 16);
    b.writeBigUInt64LE(BigInt.asUintN(64, val), 16 + i * 16);
  });
  return b;
}

export interface CpuidEntry {
  function: number;
  index: number;
  flags: number;
  eax: number;
  ebx: number;
  ecx: number;
  edx: number;
}

export const KVM_CPUID_FLAG_SIGNIFCANT_INDEX = 1;
const MAX_CPUID_ENTRIES = 256;
/** KVM_GET_MSR_INDEX_LIST: a list longer than this is refused (a few hundred is normal) */
const MAX_MSR_INDICES = 4096;

export function encodeCpuid(entries: CpuidEntry[]): Buffer {
  const esz = SIZEOF.kvm_cpuid_entry2 as number;
  const b = Buffer.alloc(8 + esz * entries.length);
  b.writeUInt32LE(entries.length, 0);
  entries.forEach((e, i) => {
    const o = 8 + i * esz;
    b.writeUInt32LE(e.function >>> 0, o);
    b.writeUInt32LE(e.index >>> 0, o + 4);
    b.writeUInt32LE(e.flags >>> 0, o + 8);
    b.writeUInt32LE(e.eax >>> 0, o + 12);
    b.writeUInt32LE(e.ebx >>> 0, o + 16);
    b.writeUInt32LE(e.ecx >>> 0, o + 20);
    b.writeUInt32LE(e.edx >>> 0, o + 24);
  });
  return b;
}

export function decodeCpuid(b: Buffer): CpuidEntry[] {
  const esz = SIZEOF.kvm_cpuid_entry2 as number;
  const n = b.readUInt32LE(0);
  if (8 + n * esz > b.length) throw new RangeError(`kvm_cpuid2: ${n} entries do not fit ${b.length} bytes`);
  const out: CpuidEntry[] = [];
  for (let i = 0; i < n; i++) {
    const o = 8 + i * esz;
    out.push({
      function: b.readUInt32LE(o), index: b.readUInt32LE(o + 4), flags: b.readUInt32LE(o + 8),
      eax: b.readUInt32LE(o + 12), ebx: b.readUInt32LE(o + 16), ecx: b.readUInt32LE(o + 20), edx: b.readUInt32LE(o + 24),
    });
  }
  return out;
}

export class Kvm {
  readonly fd: number;
  constructor(path = '/dev/kvm') {
    try {
      this.fd = openSync(path, 'r+');
    } catch (e) {
      throw new KvmError(`open ${path}`, Math.abs((e as NodeJS.ErrnoException).errno ?? 0));
    }
    const v = this.apiVersion();
    if (v !== 12) throw new Error(`KVM API version ${v}, expected 12`);
  }
  apiVersion(): number {
    return check('KVM_GET_API_VERSION', ioctlInt(this.fd, io.KVM_GET_API_VERSION, 0));
  }
  checkExtension(cap: number): number {
    return check('KVM_CHECK_EXTENSION', ioctlInt(this.fd, io.KVM_CHECK_EXTENSION, cap));
  }
  vcpuMmapSize(): number {
    return check('KVM_GET_VCPU_MMAP_SIZE', ioctlInt(this.fd, io.KVM_GET_VCPU_MMAP_SIZE, 0));
  }
  supportedCpuid(): CpuidEntry[] {
    const b = Buffer.alloc(8 + MAX_CPUID_ENTRIES * (SIZEOF.kvm_cpuid_entry2 as number));
    b.writeUInt32LE(MAX_CPUID_ENTRIES, 0);
    check('KVM_GET_SUPPORTED_CPUID', ioctlPtr(this.fd, io.KVM_GET_SUPPORTED_CPUID, b));
    return decodeCpuid(b);
  }
  /**
   * KVM_GET_MSR_INDEX_LIST: every MSR index KVM can save and restore on this host (msrs_to_save
   * plus the emulated ones). The kernel says E2BIG and fills in the count when the array is too
   * small, so the first call asks with none and the second with exactly that many.
   */
  msrIndexList(): number[] {
    const head = Buffer.alloc(4);
    const r = ioctlPtr(this.fd, io.KVM_GET_MSR_INDEX_LIST, head);
    if (r < 0 && errno() !== E2BIG) throw new KvmError('KVM_GET_MSR_INDEX_LIST', errno());
    const n = head.readUInt32LE(0);
    if (n > MAX_MSR_INDICES) throw new RangeError(`KVM_GET_MSR_INDEX_LIST: ${n} MSRs, more than ${MAX_MSR_INDICES}`);
    const b = Buffer.alloc(4 + 4 * n);
    b.writeUInt32LE(n, 0);
    check('KVM_GET_MSR_INDEX_LIST', ioctlPtr(this.fd, io.KVM_GET_MSR_INDEX_LIST, b));
    const got = Math.min(b.readUInt32LE(0), n);
    const out: number[] = [];
    for (let i = 0; i < got; i++) out.push(b.readUInt32LE(4 + 4 * i));
    return out;
  }
  createVm(): VmFd {
    const fd = check('KVM_CREATE_VM', ioctlInt(this.fd, io.KVM_CREATE_VM, 0));
    return new VmFd(fd, this);
  }
  close(): void {
    closeFd(this.fd);
  }
}

export class VmFd {
  constructor(readonly fd: number, readonly kvm: Kvm) {}

  setUserMemoryRegion(slot: number, guestPhys: bigint, size: bigint, hostAddr: bigint, flags = 0): void {
    const b = Buffer.alloc(SIZEOF.kvm_userspace_memory_region as number);
    b.writeUInt32LE(slot, 0);
    b.writeUInt32LE(flags, 4);
    b.writeBigUInt64LE(guestPhys, 8);
    b.writeBigUInt64LE(size, 16);
    b.writeBigUInt64LE(hostAddr, 24);
    check('KVM_SET_USER_MEMORY_REGION', ioctlPtr(this.fd, io.KVM_SET_USER_MEMORY_REGION, b));
  }
  /** Takes a pointer to a u64 (unlike KVM_SET_TSS_ADDR). Must precede vCPU creation. */
  setIdentityMapAddr(addr: bigint): void {
    const b = Buffer.alloc(8);
    b.writeBigUInt64LE(addr);
    check('KVM_SET_IDENTITY_MAP_ADDR', ioctlPtr(this.fd, io.KVM_SET_IDENTITY_MAP_ADDR, b));
  }
  /** Takes the address as a plain integer argument. */
  setTssAddr(addr: number): void {
    check('KVM_SET_TSS_ADDR', ioctlInt(this.fd, io.KVM_SET_TSS_ADDR, addr));
  }
  createIrqchip(): void {
    check('KVM_CREATE_IRQCHIP', ioctlInt(this.fd, io.KVM_CREATE_IRQCHIP, 0));
  }
  /** flags=1: KVM_PIT_SPEAKER_DUMMY (port 0x61 handled in the kernel). */
  createPit2(flags = 1): void {
    const b = Buffer.alloc(SIZEOF.kvm_pit_config as number);
    b.writeUInt32LE(flags, 0);
    check('KVM_CREATE_PIT2', ioctlPtr(this.fd, io.KVM_CREATE_PIT2, b));
  }
  private readonly irqBuf = Buffer.alloc(8);
  setIrqLine(irq: number, level: boolean): void {
    this.irqBuf.writeUInt32LE(irq, 0);
    this.irqBuf.writeUInt32LE(level ? 1 : 0, 4);
    check('KVM_IRQ_LINE', ioctlPtr(this.fd, io.KVM_IRQ_LINE, this.irqBuf));
  }
  /**
   * KVM_IRQFD: a write to `eventfd` raises `gsi` inside the kernel (no ioctl, no exit; any thread
   * may write it). Without `resampleFd` KVM pulses the line (assert + deassert): edge semantics.
   * With it (KVM_IRQFD_FLAG_RESAMPLE, needs KVM_CAP_IRQFD_RESAMPLE) the line stays asserted until
   * the guest EOIs it; KVM then lowers it and signals `resampleFd`, and userspace writes `eventfd`
   * again if the device still has an interrupt pending: level semantics (vmm/devices/irq.ts).
   * The default routing of KVM_CREATE_IRQCHIP covers GSIs 0-23 (PIC + IOAPIC pins), so no
   * KVM_SET_GSI_ROUTING is needed for them. EBUSY if this eventfd is already bound.
   */
  registerIrqfd(eventfd: number, gsi: number, resampleFd?: number): void {
    const flags = resampleFd === undefined ? 0 : io.KVM_IRQFD_FLAG_RESAMPLE;
    check('KVM_IRQFD', ioctlPtr(this.fd, io.KVM_IRQFD, irqfdArg(eventfd, gsi, flags, resampleFd ?? 0)));
  }
  /** Deassign an irqfd (the eventfd stays open; closing it is the caller's). */
  unregisterIrqfd(eventfd: number, gsi: number): void {
    check('KVM_IRQFD', ioctlPtr(this.fd, io.KVM_IRQFD, irqfdArg(eventfd, gsi, io.KVM_IRQFD_FLAG_DEASSIGN, 0)));
  }
  /**
   * KVM_IOEVENTFD: a guest write of `len` bytes (1, 2, 4 or 8) at `addr` (MMIO, or a port when
   * `pio`) signals `eventfd` inside the kernel instead of exiting to userspace; the vCPU goes on
   * at once. With `datamatch` only writes of that value do (others exit as usual), which is how
   * one register (virtio-mmio QueueNotify) gets one eventfd per queue. EEXIST if it overlaps a
   * registration at the same address and len with the same datamatch, or where either has none
   * (a wildcard collides with every datamatch).
   */
  registerIoeventfd(eventfd: number, addr: number | bigint, len: number, datamatch?: number | bigint, pio = false): void {
    check('KVM_IOEVENTFD', ioctlPtr(this.fd, io.KVM_IOEVENTFD, ioeventfdArg(eventfd, addr, len, datamatch, pio, false)));
  }
  /** Deassign: the same addr, len, datamatch and pio as at registration. */
  unregisterIoeventfd(eventfd: number, addr: number | bigint, len: number, datamatch?: number | bigint, pio = false): void {
    check('KVM_IOEVENTFD', ioctlPtr(this.fd, io.KVM_IOEVENTFD, ioeventfdArg(eventfd, addr, len, datamatch, pio, true)));
  }
  /** KVM_CHECK_EXTENSION on the VM: some answers are per VM (KVM_CAP_XSAVE2's size) */
  checkExtension(cap: number): number {
    return check('KVM_CHECK_EXTENSION', ioctlInt(this.fd, io.KVM_CHECK_EXTENSION, cap));
  }
  /** Bytes of a vCPU's XSAVE state for this VM: KVM_CAP_XSAVE2's answer, or the legacy 4096. */
  xsaveSize(): number {
    const n = this.checkExtension(io.KVM_CAP_XSAVE2);
    return n > 0 ? Math.max(n, SIZEOF.kvm_xsave as number) : SIZEOF.kvm_xsave as number;
  }
  /** KVM_GET_IRQCHIP: one in-kernel interrupt controller's state (PIC master/slave or IOAPIC), struct kvm_irqchip. */
  getIrqchip(chipId: number): Buffer {
    const b = Buffer.alloc(SIZEOF.kvm_irqchip as number);
    b.writeUInt32LE(chipId >>> 0, OFFSETOF['kvm_irqchip.chip_id'] as number);
    check('KVM_GET_IRQCHIP', ioctlPtr(this.fd, io.KVM_GET_IRQCHIP, b));
    return b;
  }
  /** KVM_SET_IRQCHIP: the chip is the one named by the buffer's chip_id. */
  setIrqchip(b: Buffer): void {
    setStruct(this.fd, 'KVM_SET_IRQCHIP', io.KVM_SET_IRQCHIP, b, SIZEOF.kvm_irqchip as number);
  }
  getPit2(): Buffer {
    return getStruct(this.fd, 'KVM_GET_PIT2', io.KVM_GET_PIT2, SIZEOF.kvm_pit_state2 as number);
  }
  setPit2(b: Buffer): void {
    setStruct(this.fd, 'KVM_SET_PIT2', io.KVM_SET_PIT2, b, SIZEOF.kvm_pit_state2 as number);
  }
  /** KVM_GET_CLOCK: kvmclock's value (ns) and flags (KVM_CLOCK_TSC_STABLE, and REALTIME/HOST_TSC when the host has them). */
  getClock(): Buffer {
    return getStruct(this.fd, 'KVM_GET_CLOCK', io.KVM_GET_CLOCK, SIZEOF.kvm_clock_data as number);
  }
  setClock(b: Buffer): void {
    setStruct(this.fd, 'KVM_SET_CLOCK', io.KVM_SET_CLOCK, b, SIZEOF.kvm_clock_data as number);
  }
  createVcpu(id: number): VcpuFd {
    const fd = check('KVM_CREATE_VCPU', ioctlInt(this.fd, io.KVM_CREATE_VCPU, id));
    const size = this.kvm.vcpuMmapSize();
    const run = mmap(size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    return new VcpuFd(fd, id, run, size);
  }
  close(): void {
    closeFd(this.fd);
  }
}

function irqfdArg(eventfd: number, gsi: number, flags: number, resampleFd: number): Buffer {
  const b = Buffer.alloc(SIZEOF.kvm_irqfd as number);
  b.writeUInt32LE(eventfd >>> 0, OFFSETOF['kvm_irqfd.fd'] as number);
  b.writeUInt32LE(gsi >>> 0, OFFSETOF['kvm_irqfd.gsi'] as number);
  b.writeUInt32LE(flags >>> 0, OFFSETOF['kvm_irqfd.flags'] as number);
  b.writeUInt32LE(resampleFd >>> 0, OFFSETOF['kvm_irqfd.resamplefd'] as number);
  return b;
}

function ioeventfdArg(eventfd: number, addr: number | bigint, len: number, datamatch: number | bigint | undefined, pio: boolean, deassign: boolean): Buffer {
  if (![1, 2, 4, 8].includes(len)) throw new RangeError(`ioeventfd len ${len}: 1, 2, 4 or 8`);
  const b = Buffer.alloc(SIZEOF.kvm_ioeventfd as number);
  let flags = 0;
  if (datamatch !== undefined) {
    flags |= io.KVM_IOEVENTFD_FLAG_DATAMATCH;
    b.writeBigUInt64LE(BigInt.asUintN(64, BigInt(datamatch)), OFFSETOF['kvm_ioeventfd.datamatch'] as number);
  }
  if (pio) flags |= io.KVM_IOEVENTFD_FLAG_PIO;
  if (deassign) flags |= io.KVM_IOEVENTFD_FLAG_DEASSIGN;
  b.writeBigUInt64LE(BigInt(addr), OFFSETOF['kvm_ioeventfd.addr'] as number);
  b.writeUInt32LE(len, OFFSETOF['kvm_ioeventfd.len'] as number);
  b.writeInt32LE(eventfd, OFFSETOF['kvm_ioeventfd.fd'] as number);
  b.writeUInt32LE(flags, OFFSETOF['kvm_ioeventfd.flags'] as number);
  return b;
}

export class VcpuFd {
  /** kvm_run, shared with the kernel (and with the vCPU's worker thread). */
  readonly runView: DataView;
  constructor(readonly fd: number, readonly id: number, readonly runAddr: bigint, readonly runSize: number) {
    this.runView = new DataView(view(runAddr, runSize));
  }
  getRegs(): Buffer {
    return getStruct(this.fd, 'KVM_GET_REGS', io.KVM_GET_REGS, SIZEOF.kvm_regs as number);
  }
  setRegs(b: Buffer): void {
    setStruct(this.fd, 'KVM_SET_REGS', io.KVM_SET_REGS, b, SIZEOF.kvm_regs as number);
  }
  getSregs(): Buffer {
    return getStruct(this.fd, 'KVM_GET_SREGS', io.KVM_GET_SREGS, SIZEOF.kvm_sregs as number);
  }
  setSregs(b: Buffer): void {
    setStruct(this.fd, 'KVM_SET_SREGS', io.KVM_SET_SREGS, b, SIZEOF.kvm_sregs as number);
  }
  setFpu(b: Buffer): void {
    setStruct(this.fd, 'KVM_SET_FPU', io.KVM_SET_FPU, b, SIZEOF.kvm_fpu as number);
  }
  setCpuid(entries: CpuidEntry[]): void {
    check('KVM_SET_CPUID2', ioctlPtr(this.fd, io.KVM_SET_CPUID2, encodeCpuid(entries)));
  }
  /** KVM_GET_CPUID2: the CPUID entries this vCPU was given (what the guest sees). */
  getCpuid(): CpuidEntry[] {
    const b = Buffer.alloc(8 + MAX_CPUID_ENTRIES * (SIZEOF.kvm_cpuid_entry2 as number));
    b.writeUInt32LE(MAX_CPUID_ENTRIES, 0);
    check('KVM_GET_CPUID2', ioctlPtr(this.fd, io.KVM_GET_CPUID2, b));
    return decodeCpuid(b);
  }
  /** Returns how many MSRs were set (KVM stops at the first one it refuses). */
  setMsrs(msrs: ReadonlyArray<MsrEntry>): number {
    return check('KVM_SET_MSRS', ioctlPtr(this.fd, io.KVM_SET_MSRS, encodeMsrs(msrs)));
  }
  /**
   * KVM_GET_MSRS for `indices` (at most MAX_MSRS_PER_CALL). KVM stops at the first MSR it cannot
   * read and returns how many it read: that is an error naming the MSR, not a shorter answer.
   */
  getMsrs(indices: ReadonlyArray<number>): MsrEntry[] {
    if (indices.length > MAX_MSRS_PER_CALL) throw new RangeError(`KVM_GET_MSRS: ${indices.length} MSRs, at most ${MAX_MSRS_PER_CALL} per call`);
    const b = encodeMsrs(indices.map((i) => [i, 0n]));
    const n = check('KVM_GET_MSRS', ioctlPtr(this.fd, io.KVM_GET_MSRS, b));
    if (n !== indices.length) throw new MsrReadError(indices[n] ?? 0, n, indices.length);
    return indices.map((idx, i) => [idx, b.readBigUInt64LE(16 + i * 16)]);
  }
  /**
   * XSAVE area: `size` is the VM's xsaveSize(). 4096 uses KVM_GET_XSAVE (every KVM with
   * KVM_CAP_XSAVE); larger needs KVM_GET_XSAVE2, which writes that many bytes.
   */
  getXsave(size = SIZEOF.kvm_xsave as number): Buffer {
    const legacy = SIZEOF.kvm_xsave as number;
    if (size < legacy || size % 4 !== 0) throw new RangeError(`xsave size ${size}: a multiple of 4, at least ${legacy}`);
    const b = Buffer.alloc(size);
    if (size === legacy) check('KVM_GET_XSAVE', ioctlPtr(this.fd, io.KVM_GET_XSAVE, b));
    else check('KVM_GET_XSAVE2', ioctlPtr(this.fd, io.KVM_GET_XSAVE2, b));
    return b;
  }
  /** KVM_SET_XSAVE reads the VM's xsaveSize() bytes: `b` must be exactly that long (`size`). */
  setXsave(b: Buffer, size = SIZEOF.kvm_xsave as number): void {
    setStruct(this.fd, 'KVM_SET_XSAVE', io.KVM_SET_XSAVE, b, size);
  }
  getXcrs(): Buffer {
    return getStruct(this.fd, 'KVM_GET_XCRS', io.KVM_GET_XCRS, SIZEOF.kvm_xcrs as number);
  }
  setXcrs(b: Buffer): void {
    setStruct(this.fd, 'KVM_SET_XCRS', io.KVM_SET_XCRS, b, SIZEOF.kvm_xcrs as number);
  }
  /** Pending exception/interrupt/NMI/SMI and the interrupt shadow: what is in flight between two instructions. */
  getVcpuEvents(): Buffer {
    return getStruct(this.fd, 'KVM_GET_VCPU_EVENTS', io.KVM_GET_VCPU_EVENTS, SIZEOF.kvm_vcpu_events as number);
  }
  setVcpuEvents(b: Buffer): void {
    setStruct(this.fd, 'KVM_SET_VCPU_EVENTS', io.KVM_SET_VCPU_EVENTS, b, SIZEOF.kvm_vcpu_events as number);
  }
  getDebugregs(): Buffer {
    return getStruct(this.fd, 'KVM_GET_DEBUGREGS', io.KVM_GET_DEBUGREGS, SIZEOF.kvm_debugregs as number);
  }
  setDebugregs(b: Buffer): void {
    setStruct(this.fd, 'KVM_SET_DEBUGREGS', io.KVM_SET_DEBUGREGS, b, SIZEOF.kvm_debugregs as number);
  }
  /**
   * KVM_KVMCLOCK_CTRL: tell the guest (through its kvmclock page) that it was paused by the host,
   * so its watchdogs do not report a soft lockup for the time spent stopped. EINVAL when the guest
   * has not enabled kvmclock: returned as false, that is not an error.
   */
  kvmclockCtrl(): boolean {
    return ioctlInt(this.fd, io.KVM_KVMCLOCK_CTRL, 0) >= 0;
  }
  getLapic(): Buffer {
    return getStruct(this.fd, 'KVM_GET_LAPIC', io.KVM_GET_LAPIC, SIZEOF.kvm_lapic_state as number);
  }
  setLapic(b: Buffer): void {
    setStruct(this.fd, 'KVM_SET_LAPIC', io.KVM_SET_LAPIC, b, SIZEOF.kvm_lapic_state as number);
  }
  getMpState(): number {
    const b = Buffer.alloc(4);
    check('KVM_GET_MP_STATE', ioctlPtr(this.fd, io.KVM_GET_MP_STATE, b));
    return b.readUInt32LE(0);
  }
  setMpState(state: number): void {
    const b = Buffer.alloc(SIZEOF.kvm_mp_state as number);
    b.writeUInt32LE(state >>> 0, 0);
    check('KVM_SET_MP_STATE', ioctlPtr(this.fd, io.KVM_SET_MP_STATE, b));
  }
  close(): void {
    closeFd(this.fd);
  }
}
