//! The guest-physical memory map of a vnfhost VM (x86-64).
//!
//! ```text
//! 0x0000_0500  GDT (5 entries)            0x0000_9000  PML4
//! 0x0000_0520  IDT (empty)                0x0000_a000  PDPT
//! 0x0000_6000  PVH start info + memmap    0x0000_b000  4 page directories (4 GiB, 2 MiB pages)
//! 0x0000_7000  zero page (boot_params)    0x0002_0000  kernel command line
//! 0x0000_8ff0  boot stack top             0x0009_fc00  EBDA .. 1 MiB: reserved
//! 0x000e_0000  ACPI: RSDP, XSDT, FADT, MADT, DSDT
//! 0x0010_0000  kernel (ELF p_paddr, or bzImage protected-mode code)
//! ...          initrd at the top of low RAM
//! 0xc000_0000  MMIO hole: virtio-mmio slots at 0xd000_0000 + n * 0x1000, IOAPIC, LAPIC
//! 0x1_0000_0000 RAM above 3 GiB continues here
//! ```

/// Global descriptor table.
pub const GDT_ADDR: u64 = 0x500;
/// An empty interrupt descriptor table.
pub const IDT_ADDR: u64 = 0x520;
/// PVH `hvm_start_info`, followed by its memory map.
pub const PVH_INFO_ADDR: u64 = 0x6000;
/// The Linux zero page (`struct boot_params`).
pub const ZERO_PAGE_ADDR: u64 = 0x7000;
/// Initial stack pointer.
pub const BOOT_STACK: u64 = 0x8ff0;
/// Level-4 page table.
pub const PML4_ADDR: u64 = 0x9000;
/// Page-directory-pointer table.
pub const PDPT_ADDR: u64 = 0xa000;
/// First of four page directories.
pub const PD_ADDR: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_ADDR: u64 = 0x20000;
/// Longest command line Linux accepts on x86 (`COMMAND_LINE_SIZE`), with its NUL.
pub const CMDLINE_MAX: usize = 2048;
/// Start of the extended BIOS data area; RAM below it is usable.
pub const EBDA_START: u64 = 0x9fc00;
/// ACPI tables (Linux scans 0xe0000..0x100000 for the RSDP).
pub const ACPI_ADDR: u64 = 0xe0000;
/// End of the ACPI area.
pub const ACPI_END: u64 = 0x100000;
/// Kernels load at or above 1 MiB.
pub const HIMEM_START: u64 = 0x10_0000;
/// Start of the 32-bit MMIO hole.
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
/// End of the 32-bit MMIO hole: RAM continues here.
pub const MMIO_HOLE_END: u64 = 0x1_0000_0000;
/// The first virtio-mmio slot.
pub const VIRTIO_MMIO_BASE: u64 = 0xd000_0000;
/// Size of one virtio-mmio slot.
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// Most virtio-mmio devices one VM has.
pub const VIRTIO_MMIO_SLOTS: usize = 8;
/// Interrupt line of the first virtio-mmio device (one line per device).
pub const VIRTIO_IRQ_BASE: u32 = 5;
/// Interrupt line of the serial port.
pub const SERIAL_IRQ: u32 = 4;
/// IOAPIC MMIO address.
pub const IOAPIC_ADDR: u32 = 0xfec0_0000;
/// Local APIC MMIO address.
pub const LAPIC_ADDR: u32 = 0xfee0_0000;
/// Where KVM puts its TSS pages (Intel needs three pages below 4 GiB, outside RAM).
pub const KVM_TSS_ADDR: usize = 0xfffb_d000;
/// Smallest guest RAM accepted.
pub const MIN_MEM: u64 = 16 << 20;

// The page tables end before the command line, the boot tables before the kernel.
const _: () = assert!(PD_ADDR + 4 * 4096 <= CMDLINE_ADDR);
const _: () = assert!(CMDLINE_ADDR + CMDLINE_MAX as u64 <= EBDA_START);

/// The guest-physical address of virtio-mmio slot `n`.
pub fn virtio_mmio_addr(n: usize) -> u64 {
    VIRTIO_MMIO_BASE + n as u64 * VIRTIO_MMIO_SIZE
}

/// Splits `mem` bytes of RAM into the guest-physical ranges `(start, len)` around the
/// MMIO hole.
pub fn ram_ranges(mem: u64) -> Vec<(u64, u64)> {
    let low = mem.min(MMIO_HOLE_START);
    let mut v = vec![(0, low)];
    if mem > low {
        v.push((MMIO_HOLE_END, mem - low));
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ram_skips_the_mmio_hole() {
        assert_eq!(ram_ranges(256 << 20), vec![(0, 256 << 20)]);
        assert_eq!(
            ram_ranges(4 << 30),
            vec![(0, MMIO_HOLE_START), (MMIO_HOLE_END, 1 << 30)]
        );
        assert!(virtio_mmio_addr(VIRTIO_MMIO_SLOTS) < u64::from(IOAPIC_ADDR));
    }
}
