// ioctl request numbers for /dev/kvm, computed the way <asm-generic/ioctl.h> does.
// _IOR/_IOWR numbers have bit 31 set, so every result goes through `>>> 0` to stay an unsigned
// 32-bit number (JS bitwise operators work on signed 32-bit integers).
// fixtures/layout.txt holds the values printed by a C program against the system headers;
// ioctls.test.ts compares the two.

const IOC_NONE = 0;
const IOC_WRITE = 1;
const IOC_READ = 2;

function ioc(dir: number, type: number, nr: number, size: number): number {
  if (size < 0 || size >= 1 << 14) throw new RangeError(`ioctl size ${size} does not fit 14 bits`);
  return ((dir << 30) | (size << 16) | (type << 8) | nr) >>> 0;
}
export const _IO = (type: number, nr: number): number => ioc(IOC_NONE, type, nr, 0);
export const _IOR = (type: number, nr: number, size: number): number => ioc(IOC_READ, type, nr, size);
export const _IOW = (type: number, nr: number, size: number): number => ioc(IOC_WRITE, type, nr, size);
export const _IOWR = (type: number, nr: number, size: number): number => ioc(IOC_READ | IOC_WRITE, type, nr, size);

const KVMIO = 0xae;

export const KVM_GET_API_VERSION = _IO(KVMIO, 0x00);
export const KVM_CREATE_VM = _IO(KVMIO, 0x01);
export const KVM_CHECK_EXTENSION = _IO(KVMIO, 0x03);
export const KVM_GET_VCPU_MMAP_SIZE = _IO(KVMIO, 0x04);
export const KVM_GET_SUPPORTED_CPUID = _IOWR(KVMIO, 0x05, 8);
export const KVM_CREATE_VCPU = _IO(KVMIO, 0x41);
export const KVM_SET_USER_MEMORY_REGION = _IOW(KVMIO, 0x46, 32);
export const KVM_SET_TSS_ADDR = _IO(KVMIO, 0x47);
export const KVM_SET_IDENTITY_MAP_ADDR = _IOW(KVMIO, 0x48, 8);
export const KVM_CREATE_IRQCHIP = _IO(KVMIO, 0x60);
export const KVM_IRQ_LINE = _IOW(KVMIO, 0x61, 8);
export const KVM_CREATE_PIT2 = _IOW(KVMIO, 0x77, 64);
export const KVM_RUN = _IO(KVMIO, 0x80);
export const KVM_GET_REGS = _IOR(KVMIO, 0x81, 144);
export const KVM_SET_REGS = _IOW(KVMIO, 0x82, 144);
export const KVM_GET_SREGS = _IOR(KVMIO, 0x83, 312);
export const KVM_SET_SREGS = _IOW(KVMIO, 0x84, 312);
export const KVM_SET_MSRS = _IOW(KVMIO, 0x89, 8);
export const KVM_SET_CPUID2 = _IOW(KVMIO, 0x90, 8);
export const KVM_GET_LAPIC = _IOR(KVMIO, 0x8e, 1024);
export const KVM_SET_LAPIC = _IOW(KVMIO, 0x8f, 1024);
export const KVM_SET_FPU = _IOW(KVMIO, 0x8d, 416);
export const KVM_GET_MP_STATE = _IOR(KVMIO, 0x98, 4);
export const KVM_SET_MP_STATE = _IOW(KVMIO, 0x99, 4);
/** struct kvm_irqfd (32 bytes): an eventfd write injects an interrupt on a GSI. */
export const KVM_IRQFD = _IOW(KVMIO, 0x76, 32);
/** struct kvm_ioeventfd (64 bytes): a guest PIO/MMIO write signals an eventfd instead of exiting. */
export const KVM_IOEVENTFD = _IOW(KVMIO, 0x79, 64);

// Snapshot/restore (vmm/cpu/state.ts). Sizes are the structs' (layout.ts), which the numbers encode.
/** system ioctl (/dev/kvm): struct kvm_msr_list, the MSRs KVM can save/restore; E2BIG + nmsrs filled in when too small */
export const KVM_GET_MSR_INDEX_LIST = _IOWR(KVMIO, 0x02, 4);
export const KVM_GET_MSRS = _IOWR(KVMIO, 0x88, 8);
/** struct kvm_cpuid2: the CPUID the vCPU was given (KVM_SET_CPUID2) */
export const KVM_GET_CPUID2 = _IOWR(KVMIO, 0x91, 8);
export const KVM_GET_XSAVE = _IOR(KVMIO, 0xa4, 4096);
/** reads KVM_CHECK_EXTENSION(KVM_CAP_XSAVE2) bytes, not the 4096 the number encodes */
export const KVM_SET_XSAVE = _IOW(KVMIO, 0xa5, 4096);
/** writes KVM_CHECK_EXTENSION(KVM_CAP_XSAVE2) bytes (>= 4096: dynamic features such as AMX) */
export const KVM_GET_XSAVE2 = _IOR(KVMIO, 0xcf, 4096);
export const KVM_GET_XCRS = _IOR(KVMIO, 0xa6, 392);
export const KVM_SET_XCRS = _IOW(KVMIO, 0xa7, 392);
export const KVM_GET_VCPU_EVENTS = _IOR(KVMIO, 0x9f, 64);
export const KVM_SET_VCPU_EVENTS = _IOW(KVMIO, 0xa0, 64);
export const KVM_GET_DEBUGREGS = _IOR(KVMIO, 0xa1, 128);
export const KVM_SET_DEBUGREGS = _IOW(KVMIO, 0xa2, 128);
export const KVM_GET_IRQCHIP = _IOWR(KVMIO, 0x62, 520);
/** _IOR although it writes: a historical mistake the header keeps (the number is what counts) */
export const KVM_SET_IRQCHIP = _IOR(KVMIO, 0x63, 520);
/** the same nr as KVM_GET_VCPU_EVENTS; the size (struct kvm_pit_state2, 112) tells them apart */
export const KVM_GET_PIT2 = _IOR(KVMIO, 0x9f, 112);
export const KVM_SET_PIT2 = _IOW(KVMIO, 0xa0, 112);
export const KVM_GET_CLOCK = _IOR(KVMIO, 0x7c, 48);
export const KVM_SET_CLOCK = _IOW(KVMIO, 0x7b, 48);
/** tells a paused guest's kvmclock it was stopped on purpose (no soft-lockup warning on resume) */
export const KVM_KVMCLOCK_CTRL = _IO(KVMIO, 0xad);

/** Every number above by its C name, for the fixture test. */
export const IOCTLS: Record<string, number> = {
  KVM_GET_API_VERSION, KVM_CREATE_VM, KVM_CHECK_EXTENSION, KVM_GET_VCPU_MMAP_SIZE, KVM_GET_SUPPORTED_CPUID,
  KVM_CREATE_VCPU, KVM_SET_USER_MEMORY_REGION, KVM_SET_TSS_ADDR, KVM_SET_IDENTITY_MAP_ADDR, KVM_CREATE_IRQCHIP,
  KVM_IRQ_LINE, KVM_CREATE_PIT2, KVM_RUN, KVM_GET_REGS, KVM_SET_REGS, KVM_GET_SREGS, KVM_SET_SREGS, KVM_SET_MSRS,
  KVM_SET_CPUID2, KVM_GET_LAPIC, KVM_SET_LAPIC, KVM_SET_FPU, KVM_GET_MP_STATE, KVM_SET_MP_STATE,
  KVM_IRQFD, KVM_IOEVENTFD,
  KVM_GET_MSR_INDEX_LIST, KVM_GET_MSRS, KVM_GET_CPUID2, KVM_GET_XSAVE, KVM_SET_XSAVE, KVM_GET_XSAVE2, KVM_GET_XCRS,
  KVM_SET_XCRS, KVM_GET_VCPU_EVENTS, KVM_SET_VCPU_EVENTS, KVM_GET_DEBUGREGS, KVM_SET_DEBUGREGS, KVM_GET_IRQCHIP,
  KVM_SET_IRQCHIP, KVM_GET_PIT2, KVM_SET_PIT2, KVM_GET_CLOCK, KVM_SET_CLOCK, KVM_KVMCLOCK_CTRL,
};

// KVM_CHECK_EXTENSION capabilities used.
export const KVM_CAP_IRQCHIP = 0;
export const KVM_CAP_USER_MEMORY = 3;
export const KVM_CAP_SET_TSS_ADDR = 4;
export const KVM_CAP_EXT_CPUID = 7;
export const KVM_CAP_PIT2 = 33;
export const KVM_CAP_SET_IDENTITY_MAP_ADDR = 37;
export const KVM_CAP_IMMEDIATE_EXIT = 136;
export const KVM_CAP_IRQFD = 32;
export const KVM_CAP_IOEVENTFD = 36;
export const KVM_CAP_IRQFD_RESAMPLE = 82;
/** ioeventfd len may be any size (with len 0 meaning "any write") */
export const KVM_CAP_IOEVENTFD_ANY_LENGTH = 122;
/** memory slots may be read-only (guest writes exit as MMIO): virtio-pmem images */
export const KVM_CAP_READONLY_MEM = 81;
// kvm_userspace_memory_region.flags
export const KVM_MEM_READONLY = 1 << 1;

// kvm_irqfd.flags
export const KVM_IRQFD_FLAG_DEASSIGN = 1 << 0;
/** resamplefd is valid: level-triggered emulation (the line stays asserted until the guest's EOI) */
export const KVM_IRQFD_FLAG_RESAMPLE = 1 << 1;
// kvm_ioeventfd.flags
export const KVM_IOEVENTFD_FLAG_DATAMATCH = 1 << 0;
export const KVM_IOEVENTFD_FLAG_PIO = 1 << 1;
export const KVM_IOEVENTFD_FLAG_DEASSIGN = 1 << 2;

// Snapshot/restore capabilities (vmm/cpu/state.ts checks the ones it needs before saving).
export const KVM_CAP_ADJUST_CLOCK = 39;
export const KVM_CAP_VCPU_EVENTS = 41;
export const KVM_CAP_DEBUGREGS = 50;
export const KVM_CAP_XSAVE = 55;
export const KVM_CAP_XCRS = 56;
export const KVM_CAP_KVMCLOCK_CTRL = 76;
/** on the VM fd: the kvm_xsave size KVM_GET_XSAVE2/KVM_SET_XSAVE use (0: no XSAVE2, 4096 is used) */
export const KVM_CAP_XSAVE2 = 208;
/** kvm_xcrs.xcrs has room for this many */
export const KVM_MAX_XCRS = 16;
// kvm_irqchip.chip_id
export const KVM_IRQCHIP_PIC_MASTER = 0;
export const KVM_IRQCHIP_PIC_SLAVE = 1;
export const KVM_IRQCHIP_IOAPIC = 2;
// kvm_clock_data.flags
export const KVM_CLOCK_TSC_STABLE = 2;
export const KVM_CLOCK_REALTIME = 1 << 2;
export const KVM_CLOCK_HOST_TSC = 1 << 3;
// kvm_mp_state.mp_state (x86)
export const KVM_MP_STATE_RUNNABLE = 0;
export const KVM_MP_STATE_UNINITIALIZED = 1;
export const KVM_MP_STATE_INIT_RECEIVED = 2;
export const KVM_MP_STATE_HALTED = 3;
export const KVM_MP_STATE_SIPI_RECEIVED = 4;
