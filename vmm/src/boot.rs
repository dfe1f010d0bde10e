//! x86-64 boot: descriptor tables, identity page tables, the Linux zero page, the PVH start
//! info, and the initial vCPU state for each entry protocol.
//!
//! Two ways in, as the kernel image asks:
//! - **64-bit** (a plain ELF such as `vmlinux`, or a bzImage's 64-bit entry): long mode,
//!   paging on with the first 4 GiB identity-mapped by 2 MiB pages, `%rsi` = zero page.
//! - **PVH** (an ELF with the `XEN_ELFNOTE_PHYS32_ENTRY` note): 32-bit protected mode,
//!   paging off, `%ebx` = `hvm_start_info`.

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_segment, kvm_sregs, CpuId};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::elf::start_info::{hvm_memmap_table_entry, hvm_start_info};
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryMmap};

use crate::layout::*;

/// How the vCPU enters the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// 64-bit entry at this address, `%rsi` = zero page.
    Long(u64),
    /// PVH entry at this address, `%ebx` = start info.
    Pvh(u64),
}

/// An e820 memory type: usable RAM.
pub const E820_RAM: u32 = 1;
/// An e820 memory type: reserved.
pub const E820_RESERVED: u32 = 2;

// GDT: null, 32-bit code (0x08), 64-bit code (0x10, Linux's __BOOT_CS), data (0x18,
// __BOOT_DS), TSS (0x20).
const GDT: [u64; 5] = [
    0,
    gdt_entry(0xc09b, 0, 0xfffff),
    gdt_entry(0xa09b, 0, 0xfffff),
    gdt_entry(0xc093, 0, 0xfffff),
    gdt_entry(0x808b, 0, 0xfffff),
];
const CODE32_SEL: u16 = 0x08;
const CODE64_SEL: u16 = 0x10;
const DATA_SEL: u16 = 0x18;
const TSS_SEL: u16 = 0x20;

const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << (56 - 24))
        | ((flags as u64 & 0x0000_f0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << (48 - 16))
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

fn segment(entry: u64, selector: u16) -> kvm_segment {
    let base = ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000);
    let mut limit = (entry & 0xffff) | ((entry >> 32) & 0xf_0000);
    let g = ((entry >> 55) & 1) as u8;
    if g == 1 {
        limit = (limit << 12) | 0xfff;
    }
    kvm_segment {
        base,
        limit: limit as u32,
        selector,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        unusable: 0,
        padding: 0,
    }
}

/// Writes the GDT, an empty IDT and the identity page tables.
pub fn write_tables(mem: &GuestMemoryMmap) -> Result<(), vm_memory::GuestMemoryError> {
    for (i, e) in GDT.iter().enumerate() {
        mem.write_obj(*e, GuestAddress(GDT_ADDR + i as u64 * 8))?;
    }
    mem.write_obj(0u64, GuestAddress(IDT_ADDR))?;
    // PML4[0] -> PDPT; PDPT[0..4] -> PD0..PD3; each PD maps 1 GiB with 2 MiB pages.
    // Built in one buffer and written once: VM start-up time counts.
    mem.write_obj(PDPT_ADDR | 0x3, GuestAddress(PML4_ADDR))?;
    let mut pdpt = [0u8; 32];
    let mut pds = vec![0u8; 4 * 4096];
    for g in 0..4u64 {
        let pd = PD_ADDR + g * 4096;
        pdpt[g as usize * 8..][..8].copy_from_slice(&(pd | 0x3).to_le_bytes());
        for i in 0..512u64 {
            let page = (g << 30) | (i << 21) | 0x83; // present, writable, 2 MiB
            pds[((g * 512 + i) * 8) as usize..][..8].copy_from_slice(&page.to_le_bytes());
        }
    }
    mem.write_slice(&pdpt, GuestAddress(PDPT_ADDR))?;
    mem.write_slice(&pds, GuestAddress(PD_ADDR))
}

/// The e820 map for `ranges` of RAM.
pub fn e820(ranges: &[(u64, u64)]) -> Vec<(u64, u64, u32)> {
    let mut v = vec![
        (0, EBDA_START, E820_RAM),
        (EBDA_START, HIMEM_START - EBDA_START, E820_RESERVED),
    ];
    for &(start, len) in ranges {
        let start2 = start.max(HIMEM_START);
        let end = start + len;
        if end > start2 {
            v.push((start2, end - start2, E820_RAM));
        }
    }
    v
}

/// Writes the Linux zero page: boot protocol header, command line, initrd and e820 map.
pub fn write_zero_page(
    mem: &GuestMemoryMmap,
    header: Option<setup_header>,
    cmdline_len: usize,
    initrd: Option<(u64, u64)>,
    e820: &[(u64, u64, u32)],
    rsdp: u64,
) -> Result<(), vm_memory::GuestMemoryError> {
    let mut params = boot_params::default();
    if let Some(h) = header {
        params.hdr = h;
    }
    params.hdr.type_of_loader = 0xff;
    params.hdr.boot_flag = 0xaa55;
    params.hdr.header = 0x5372_6448; // "HdrS"
    params.hdr.cmd_line_ptr = CMDLINE_ADDR as u32;
    params.hdr.cmdline_size = cmdline_len as u32;
    if header.is_none() {
        // A vmlinux has no header of its own; a bzImage keeps the alignment it asks for.
        params.hdr.kernel_alignment = 0x0100_0000;
    }
    if let Some((addr, len)) = initrd {
        params.hdr.ramdisk_image = addr as u32;
        params.hdr.ramdisk_size = len as u32;
    }
    params.acpi_rsdp_addr = rsdp;
    for (i, &(addr, size, type_)) in e820.iter().enumerate().take(params.e820_table.len()) {
        params.e820_table[i] = boot_e820_entry {
            addr,
            size,
            r#type: type_,
        };
        params.e820_entries = (i + 1) as u8;
    }
    mem.write_obj(params, GuestAddress(ZERO_PAGE_ADDR))
}

/// Writes the PVH start info and its memory map.
pub fn write_pvh_info(
    mem: &GuestMemoryMmap,
    initrd: Option<(u64, u64)>,
    e820: &[(u64, u64, u32)],
    rsdp: u64,
) -> Result<(), vm_memory::GuestMemoryError> {
    let info_size = std::mem::size_of::<hvm_start_info>() as u64;
    let modlist = PVH_INFO_ADDR + info_size;
    let memmap = modlist + 32;
    let mut info = hvm_start_info {
        magic: 0x336e_c578, // XEN_HVM_START_MAGIC_VALUE
        version: 1,
        cmdline_paddr: CMDLINE_ADDR,
        rsdp_paddr: rsdp,
        memmap_paddr: memmap,
        memmap_entries: e820.len() as u32,
        ..Default::default()
    };
    if let Some((addr, len)) = initrd {
        // struct hvm_modlist_entry { paddr, size, cmdline_paddr, reserved }
        mem.write_slice(
            &[addr.to_le_bytes(), len.to_le_bytes(), [0; 8], [0; 8]].concat(),
            GuestAddress(modlist),
        )?;
        info.nr_modules = 1;
        info.modlist_paddr = modlist;
    }
    for (i, &(addr, size, type_)) in e820.iter().enumerate() {
        let e = hvm_memmap_table_entry {
            addr,
            size,
            type_,
            reserved: 0,
        };
        mem.write_slice(
            e.as_slice(),
            GuestAddress(memmap + i as u64 * std::mem::size_of_val(&e) as u64),
        )?;
    }
    mem.write_slice(info.as_slice(), GuestAddress(PVH_INFO_ADDR))
}

/// The boot vCPU's general registers for `entry`.
pub fn regs(entry: Entry) -> kvm_regs {
    match entry {
        Entry::Long(rip) => kvm_regs {
            rflags: 0x2,
            rip,
            rsp: BOOT_STACK,
            rbp: BOOT_STACK,
            rsi: ZERO_PAGE_ADDR,
            ..Default::default()
        },
        Entry::Pvh(rip) => kvm_regs {
            rflags: 0x2,
            rip,
            rbx: PVH_INFO_ADDR,
            ..Default::default()
        },
    }
}

/// Updates `sregs` (as KVM created them) for `entry`.
pub fn sregs(entry: Entry, sregs: &mut kvm_sregs) {
    sregs.gdt.base = GDT_ADDR;
    sregs.gdt.limit = (GDT.len() * 8 - 1) as u16;
    sregs.idt.base = IDT_ADDR;
    sregs.idt.limit = 7;
    let data = segment(GDT[3], DATA_SEL);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment(GDT[4], TSS_SEL);
    const CR0_PE: u64 = 1;
    const CR0_ET: u64 = 1 << 4;
    const CR0_NE: u64 = 1 << 5;
    const CR0_PG: u64 = 1 << 31;
    const CR4_PAE: u64 = 1 << 5;
    const EFER_LME: u64 = 1 << 8;
    const EFER_LMA: u64 = 1 << 10;
    match entry {
        Entry::Long(_) => {
            sregs.cs = segment(GDT[2], CODE64_SEL);
            sregs.cr3 = PML4_ADDR;
            sregs.cr4 |= CR4_PAE;
            sregs.cr0 |= CR0_PE | CR0_ET | CR0_NE | CR0_PG;
            sregs.efer |= EFER_LME | EFER_LMA;
        }
        Entry::Pvh(_) => {
            sregs.cs = segment(GDT[1], CODE32_SEL);
            sregs.cr0 = CR0_PE | CR0_ET;
            sregs.cr4 = 0;
            sregs.cr3 = 0;
            sregs.efer = 0;
        }
    }
}

/// The x87/SSE state Linux expects at entry.
pub fn fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

/// Adapts KVM's supported CPUID for vCPU `id` of `count`: APIC ids, topology and the
/// hypervisor bit.
pub fn patch_cpuid(cpuid: &mut CpuId, id: u8, count: u8) {
    for e in cpuid.as_mut_slice() {
        match e.function {
            1 => {
                e.ebx = (e.ebx & 0x0000_ffff) | (u32::from(id) << 24) | (u32::from(count) << 16);
                e.ecx |= 1 << 31; // running under a hypervisor
                if count > 1 {
                    e.edx |= 1 << 28; // HTT: more than one logical processor
                }
            }
            0xb => e.edx = u32::from(id),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_entries_decode_to_flat_segments() {
        let cs = segment(GDT[2], CODE64_SEL);
        assert_eq!(
            (cs.base, cs.limit, cs.l, cs.db, cs.present),
            (0, 0xffff_ffff, 1, 0, 1)
        );
        let cs32 = segment(GDT[1], CODE32_SEL);
        assert_eq!((cs32.l, cs32.db, cs32.type_), (0, 1, 0xb));
        let ds = segment(GDT[3], DATA_SEL);
        assert_eq!((ds.type_, ds.s, ds.g), (3, 1, 1));
        let tr = segment(GDT[4], TSS_SEL);
        assert_eq!((tr.type_, tr.s), (0xb, 0));
    }

    #[test]
    fn e820_reserves_the_bios_area() {
        let m = e820(&[(0, 64 << 20)]);
        assert_eq!(m[0], (0, EBDA_START, E820_RAM));
        assert_eq!(m[1].2, E820_RESERVED);
        assert_eq!(m[2], (HIMEM_START, (64 << 20) - HIMEM_START, E820_RAM));
    }
}
