// Guest-physical layout of the boot structures (x86_64, 64-bit boot protocol entry).
export const BOOT_GDT_ADDR = 0x500;
export const BOOT_IDT_ADDR = 0x520;
export const ZERO_PAGE_ADDR = 0x7000; // struct boot_params
export const BOOT_STACK_POINTER = 0x8ff0;
export const PML4_ADDR = 0x9000;
export const PDPT_ADDR = 0xa000;
export const PD_ADDR = 0xb000; // 4 pages: 0xb000..0xefff, identity-map the first 4 GiB with 2 MiB pages
export const IDENTITY_MAP_GIB = 4;
export const CMDLINE_ADDR = 0x20000;
export const CMDLINE_MAX = 0x10000;
export const EBDA_START = 0x9fc00; // MP floating pointer + table live here
export const MPTABLE_ADDR = EBDA_START;
export const ACPI_TABLES_ADDR = 0xe0000; // RSDP first, scannable by the guest in 0xe0000..0xfffff
export const BIOS_END = 0x100000;
/**
 * The VM generation ID (16 bytes, Linux's vmgenid driver): the last page below 1 MiB, inside the
 * e820-reserved BIOS area, after the ACPI tables. A restore writes a new one and notifies the guest.
 */
export const VMGENID_ADDR = 0xff000;
export const KERNEL_LOAD_ADDR = 0x100000; // 1 MiB
export const KERNEL_64BIT_ENTRY_OFFSET = 0x200; // startup_64 relative to the protected-mode kernel
// KVM needs three pages (TSS) and one page (identity map for real mode on VMX) below 4 GiB,
// outside RAM: put them in the MMIO hole, as QEMU does.
export const KVM_IDENTITY_MAP_ADDR = 0xfffbc000;
export const KVM_TSS_ADDR = 0xfffbd000;
export const IOAPIC_ADDR = 0xfec00000;
export const LAPIC_ADDR = 0xfee00000;

// Ports the VMM traps for ACPI (hardware-reduced: no PM1 blocks, just these).
export const ACPI_SLEEP_CONTROL_PORT = 0x600;
export const ACPI_SLEEP_STATUS_PORT = 0x601;
export const ACPI_GED_PORT = 0x610; // event selector read by the GED's _EVT
export const ACPI_GED_GSI = 16;
