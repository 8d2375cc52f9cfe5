// Struct sizes and field offsets from <linux/kvm.h>, <asm/kvm.h> and <sys/epoll.h> (x86_64). Checked against
// fixtures/layout.txt (printed by fixtures/layout.c) in layout.test.ts.

export const SIZEOF: Record<string, number> = {
  kvm_userspace_memory_region: 32,
  kvm_regs: 144,
  kvm_segment: 24,
  kvm_dtable: 16,
  kvm_sregs: 312,
  kvm_fpu: 416,
  kvm_msr_entry: 16,
  kvm_msrs: 8,
  kvm_cpuid_entry2: 40,
  kvm_cpuid2: 8,
  kvm_lapic_state: 1024,
  kvm_irq_level: 8,
  kvm_pit_config: 64,
  kvm_mp_state: 4,
  kvm_irqfd: 32,
  kvm_ioeventfd: 64,
  // snapshot/restore (vmm/cpu/state.ts)
  kvm_msr_list: 4,
  /** the legacy 4 KiB XSAVE area; KVM_GET_XSAVE2 may need more (KVM_CHECK_EXTENSION(KVM_CAP_XSAVE2) on the VM) */
  kvm_xsave: 4096,
  kvm_xcr: 16,
  kvm_xcrs: 392,
  kvm_vcpu_events: 64,
  kvm_debugregs: 128,
  /** chip_id, pad, then a 512-byte union (PIC or IOAPIC state) */
  kvm_irqchip: 520,
  kvm_pit_channel_state: 24,
  kvm_pit_state2: 112,
  kvm_clock_data: 48,
  /** packed on x86_64: u32 events, then the u64 data at offset 4 */
  epoll_event: 12,
};

export const OFFSETOF: Record<string, number> = {
  'kvm_userspace_memory_region.slot': 0,
  'kvm_userspace_memory_region.flags': 4,
  'kvm_userspace_memory_region.guest_phys_addr': 8,
  'kvm_userspace_memory_region.memory_size': 16,
  'kvm_userspace_memory_region.userspace_addr': 24,
  'kvm_regs.rax': 0, 'kvm_regs.rsi': 32, 'kvm_regs.rsp': 48, 'kvm_regs.rbp': 56, 'kvm_regs.rip': 128, 'kvm_regs.rflags': 136,
  'kvm_segment.base': 0, 'kvm_segment.limit': 8, 'kvm_segment.selector': 12, 'kvm_segment.type': 14,
  'kvm_segment.present': 15, 'kvm_segment.dpl': 16, 'kvm_segment.db': 17, 'kvm_segment.s': 18, 'kvm_segment.l': 19,
  'kvm_segment.g': 20, 'kvm_segment.avl': 21, 'kvm_segment.unusable': 22,
  'kvm_dtable.base': 0, 'kvm_dtable.limit': 8,
  'kvm_sregs.cs': 0, 'kvm_sregs.ds': 24, 'kvm_sregs.es': 48, 'kvm_sregs.fs': 72, 'kvm_sregs.gs': 96, 'kvm_sregs.ss': 120,
  'kvm_sregs.tr': 144, 'kvm_sregs.ldt': 168, 'kvm_sregs.gdt': 192, 'kvm_sregs.idt': 208, 'kvm_sregs.cr0': 224,
  'kvm_sregs.cr2': 232, 'kvm_sregs.cr3': 240, 'kvm_sregs.cr4': 248, 'kvm_sregs.cr8': 256, 'kvm_sregs.efer': 264,
  'kvm_sregs.apic_base': 272, 'kvm_sregs.interrupt_bitmap': 280,
  'kvm_fpu.fcw': 128, 'kvm_fpu.mxcsr': 408,
  'kvm_msr_entry.index': 0, 'kvm_msr_entry.data': 8, 'kvm_msrs.entries': 8,
  'kvm_cpuid_entry2.function': 0, 'kvm_cpuid_entry2.index': 4, 'kvm_cpuid_entry2.flags': 8, 'kvm_cpuid_entry2.eax': 12,
  'kvm_cpuid_entry2.ebx': 16, 'kvm_cpuid_entry2.ecx': 20, 'kvm_cpuid_entry2.edx': 24, 'kvm_cpuid2.entries': 8,
  'kvm_run.immediate_exit': 1, 'kvm_run.exit_reason': 8,
  'kvm_run.io.direction': 32, 'kvm_run.io.size': 33, 'kvm_run.io.port': 34, 'kvm_run.io.count': 36, 'kvm_run.io.data_offset': 40,
  'kvm_run.mmio.phys_addr': 32, 'kvm_run.mmio.data': 40, 'kvm_run.mmio.len': 48, 'kvm_run.mmio.is_write': 52,
  'kvm_run.system_event.type': 32, 'kvm_run.internal.suberror': 32, 'kvm_run.fail_entry.hardware_entry_failure_reason': 32,
  'kvm_irqfd.fd': 0, 'kvm_irqfd.gsi': 4, 'kvm_irqfd.flags': 8, 'kvm_irqfd.resamplefd': 12,
  'kvm_ioeventfd.datamatch': 0, 'kvm_ioeventfd.addr': 8, 'kvm_ioeventfd.len': 16, 'kvm_ioeventfd.fd': 20,
  'kvm_ioeventfd.flags': 24,
  'epoll_event.events': 0, 'epoll_event.data': 4,
  'kvm_msr_list.nmsrs': 0, 'kvm_msr_list.indices': 4,
  'kvm_xsave.region': 0,
  'kvm_xcr.xcr': 0, 'kvm_xcr.value': 8, 'kvm_xcrs.nr_xcrs': 0, 'kvm_xcrs.flags': 4, 'kvm_xcrs.xcrs': 8,
  'kvm_vcpu_events.exception.injected': 0, 'kvm_vcpu_events.interrupt.injected': 8, 'kvm_vcpu_events.nmi.injected': 12,
  'kvm_vcpu_events.sipi_vector': 16, 'kvm_vcpu_events.flags': 20, 'kvm_vcpu_events.smi.smm': 24,
  'kvm_vcpu_events.triple_fault.pending': 28, 'kvm_vcpu_events.exception_has_payload': 55,
  'kvm_vcpu_events.exception_payload': 56,
  'kvm_debugregs.db': 0, 'kvm_debugregs.dr6': 32, 'kvm_debugregs.dr7': 40, 'kvm_debugregs.flags': 48,
  'kvm_irqchip.chip_id': 0, 'kvm_irqchip.chip': 8,
  'kvm_pit_state2.channels': 0, 'kvm_pit_state2.flags': 72,
  'kvm_clock_data.clock': 0, 'kvm_clock_data.flags': 8, 'kvm_clock_data.realtime': 16, 'kvm_clock_data.host_tsc': 24,
};

const off = (k: string): number => {
  const v = OFFSETOF[k];
  if (v === undefined) throw new Error(`no offset for ${k}`);
  return v;
};

/** kvm_run field offsets, named for the run loop. */
export const RUN = {
  immediateExit: off('kvm_run.immediate_exit'),
  exitReason: off('kvm_run.exit_reason'),
  ioDirection: off('kvm_run.io.direction'),
  ioSize: off('kvm_run.io.size'),
  ioPort: off('kvm_run.io.port'),
  ioCount: off('kvm_run.io.count'),
  ioDataOffset: off('kvm_run.io.data_offset'),
  mmioPhysAddr: off('kvm_run.mmio.phys_addr'),
  mmioData: off('kvm_run.mmio.data'),
  mmioLen: off('kvm_run.mmio.len'),
  mmioIsWrite: off('kvm_run.mmio.is_write'),
  systemEventType: off('kvm_run.system_event.type'),
  internalSuberror: off('kvm_run.internal.suberror'),
  failEntryReason: off('kvm_run.fail_entry.hardware_entry_failure_reason'),
} as const;

export const EXIT = {
  UNKNOWN: 0, EXCEPTION: 1, IO: 2, HYPERCALL: 3, DEBUG: 4, HLT: 5, MMIO: 6, IRQ_WINDOW_OPEN: 7, SHUTDOWN: 8,
  FAIL_ENTRY: 9, INTR: 10, INTERNAL_ERROR: 17, SYSTEM_EVENT: 24,
} as const;
export const EXIT_IO_IN = 0;
export const EXIT_IO_OUT = 1;
export const SYSTEM_EVENT = { SHUTDOWN: 1, RESET: 2, CRASH: 3 } as const;
