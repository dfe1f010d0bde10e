//! ACPI tables, so that a stock Linux kernel finds its CPUs and the virtio-mmio devices.
//!
//! Debian's cloud kernel has no MP-table support and no `virtio_mmio.device=` command-line
//! parsing, so the VM describes itself the hardware-reduced ACPI way: an RSDP pointing to
//! an XSDT with a FADT (flags `HW_REDUCED_ACPI`, a sleep control register for power-off and
//! a reset register) and a MADT (one local APIC per vCPU, one IOAPIC); the FADT points to a
//! DSDT that declares the serial console (`PNP0501`, ports 0x3f8..0x400, GSI 4), each
//! virtio-mmio device (`_HID "LNRO0005"`, its MMIO window and its edge-triggered
//! interrupt) and the `_S5` sleep state. The AML is encoded here by hand: the handful of
//! opcodes it needs do not justify an AML crate.
//!
//! Every device with an interrupt must be in the DSDT: on a hardware-reduced system Linux
//! has no legacy PIC and no ISA IRQs, so an interrupt it is not told about through ACPI
//! does not exist for it. (The serial console's output then still works, polled, from the
//! kernel's `printk`, but `request_irq(4)` fails when userspace opens `ttyS0`, and all
//! that userspace writes there is lost.)

/// I/O port of the power device: the FADT's sleep control and reset register.
pub const POWER_PORT: u16 = 0x3c0;
/// Value written to [`POWER_PORT`] to reset.
pub const RESET_VALUE: u8 = 0x1;
/// `SLP_TYP` of `_S5` (soft off); Linux writes `SLP_TYP << 2 | SLP_EN`.
pub const S5_SLP_TYP: u8 = 5;
/// The `SLP_EN` bit of the sleep control register.
pub const SLP_EN: u8 = 1 << 5;

use crate::devices::serial::COM1;
use crate::layout::SERIAL_IRQ;

const OEM_ID: &[u8; 6] = b"VNFHST";
const OEM_TABLE: &[u8; 8] = b"VNFHOST ";

/// A virtio-mmio device for the DSDT.
#[derive(Debug, Clone, Copy)]
pub struct MmioDevice {
    /// Base address of its register window.
    pub addr: u64,
    /// Window size.
    pub len: u32,
    /// Its interrupt (GSI).
    pub irq: u32,
}

fn checksum(b: &[u8]) -> u8 {
    0u8.wrapping_sub(b.iter().fold(0u8, |a, &x| a.wrapping_add(x)))
}

/// An SDT with its header; `finish` fills in length and checksum.
struct Sdt(Vec<u8>);

impl Sdt {
    fn new(sig: &[u8; 4], revision: u8) -> Sdt {
        let mut v = Vec::with_capacity(256);
        v.extend_from_slice(sig);
        v.extend_from_slice(&[0; 4]); // length
        v.push(revision);
        v.push(0); // checksum
        v.extend_from_slice(OEM_ID);
        v.extend_from_slice(OEM_TABLE);
        v.extend_from_slice(&1u32.to_le_bytes()); // OEM revision
        v.extend_from_slice(b"VNFH"); // creator id
        v.extend_from_slice(&1u32.to_le_bytes()); // creator revision
        Sdt(v)
    }

    fn finish(mut self) -> Vec<u8> {
        let len = self.0.len() as u32;
        self.0[4..8].copy_from_slice(&len.to_le_bytes());
        self.0[9] = checksum(&self.0);
        self.0
    }
}

/// A generic address structure for an 8-bit I/O port.
fn gas_io(port: u16) -> [u8; 12] {
    let mut g = [0u8; 12];
    g[0] = 1; // system I/O space
    g[1] = 8; // bit width
    g[3] = 1; // byte access
    g[4..6].copy_from_slice(&port.to_le_bytes());
    g
}

fn fadt(dsdt: u64) -> Vec<u8> {
    let mut t = Sdt::new(b"FACP", 6);
    let mut body = [0u8; 276 - 36];
    let at = |off: usize| off - 36;
    body[at(40)..at(44)].copy_from_slice(&(dsdt as u32).to_le_bytes());
    // IAPC_BOOT_ARCH: no VGA, no MSI worries, no CMOS RTC.
    body[at(109)..at(111)].copy_from_slice(&((1u16 << 2) | (1 << 5)).to_le_bytes());
    // Flags: WBINVD, RESET_REG_SUP, HW_REDUCED_ACPI.
    let flags: u32 = 1 | (1 << 10) | (1 << 20);
    body[at(112)..at(116)].copy_from_slice(&flags.to_le_bytes());
    body[at(116)..at(128)].copy_from_slice(&gas_io(POWER_PORT));
    body[at(128)] = RESET_VALUE;
    body[at(131)] = 5; // FADT minor version: ACPI 6.5
    body[at(140)..at(148)].copy_from_slice(&dsdt.to_le_bytes());
    body[at(244)..at(256)].copy_from_slice(&gas_io(POWER_PORT));
    body[at(256)..at(268)].copy_from_slice(&gas_io(POWER_PORT));
    body[at(268)..at(276)].copy_from_slice(b"VNFHOST ");
    t.0.extend_from_slice(&body);
    t.finish()
}

fn madt(vcpus: u8, pic: bool) -> Vec<u8> {
    let mut t = Sdt::new(b"APIC", 5);
    t.0.extend_from_slice(&crate::layout::LAPIC_ADDR.to_le_bytes());
    // PCAT_COMPAT only when KVM emulates the 8259s.
    t.0.extend_from_slice(&u32::from(pic).to_le_bytes());
    for id in 0..vcpus {
        t.0.extend_from_slice(&[0, 8, id, id]);
        t.0.extend_from_slice(&1u32.to_le_bytes()); // enabled
    }
    t.0.extend_from_slice(&[1, 12, 0, 0]);
    t.0.extend_from_slice(&crate::layout::IOAPIC_ADDR.to_le_bytes());
    t.0.extend_from_slice(&0u32.to_le_bytes()); // GSI base
    t.finish()
}

/// AML package length: the length of what follows plus the encoding itself.
fn pkg_len(body_len: usize) -> Vec<u8> {
    let one = body_len + 1;
    if one < 0x40 {
        return vec![one as u8];
    }
    for extra in 1..=3usize {
        let total = body_len + 1 + extra;
        if total < 1 << (4 + 8 * extra) {
            let mut v = vec![((extra as u8) << 6) | (total & 0xf) as u8];
            for i in 0..extra {
                v.push((total >> (4 + 8 * i)) as u8);
            }
            return v;
        }
    }
    unreachable!("AML objects here are far below 256 MiB")
}

fn aml_pkg(op: &[u8], body: &[u8]) -> Vec<u8> {
    let mut v = op.to_vec();
    v.extend(pkg_len(body.len()));
    v.extend_from_slice(body);
    v
}

fn aml_name(seg: &[u8; 4], value: &[u8]) -> Vec<u8> {
    let mut v = vec![0x08];
    v.extend_from_slice(seg);
    v.extend_from_slice(value);
    v
}

fn aml_int(x: u32) -> Vec<u8> {
    match x {
        0 => vec![0x00],
        1 => vec![0x01],
        2..=0xff => vec![0x0a, x as u8],
        0x100..=0xffff => {
            let mut v = vec![0x0b];
            v.extend_from_slice(&(x as u16).to_le_bytes());
            v
        }
        _ => {
            let mut v = vec![0x0c];
            v.extend_from_slice(&x.to_le_bytes());
            v
        }
    }
}

fn aml_string(s: &str) -> Vec<u8> {
    let mut v = vec![0x0d];
    v.extend_from_slice(s.as_bytes());
    v.push(0);
    v
}

fn aml_buffer(bytes: &[u8]) -> Vec<u8> {
    let mut body = aml_int(bytes.len() as u32);
    body.extend_from_slice(bytes);
    aml_pkg(&[0x11], &body)
}

/// A compressed EISA id (`EisaId ("PNP0501")`): three letters in 5 bits each, then four
/// hex digits, stored big-endian in an AML integer.
fn eisa_id(id: &[u8; 7]) -> u32 {
    let letter = |c: u8| u32::from(c - b'@') & 0x1f;
    let hex = |c: u8| char::from(c).to_digit(16).expect("EISA product id is hex");
    let vendor = (letter(id[0]) << 10) | (letter(id[1]) << 5) | letter(id[2]);
    let product = id[3..].iter().fold(0, |a, &c| (a << 4) | hex(c));
    ((vendor << 16) | product).swap_bytes()
}

/// Extended interrupt descriptor: consumer, edge, active high, exclusive; one GSI.
fn res_interrupt(res: &mut Vec<u8>, gsi: u32) {
    res.extend_from_slice(&[0x89, 6, 0, 0x03, 1]);
    res.extend_from_slice(&gsi.to_le_bytes());
}

/// The 16550 console: `Device (COM1)`, `PNP0501`, its eight ports and its interrupt.
fn com1() -> Vec<u8> {
    let mut res = Vec::new();
    // I/O port descriptor: 16-bit decode, minimum = maximum base, alignment 1, 8 ports.
    res.extend_from_slice(&[0x47, 0x01]);
    res.extend_from_slice(&COM1.to_le_bytes());
    res.extend_from_slice(&COM1.to_le_bytes());
    res.extend_from_slice(&[1, 8]);
    res_interrupt(&mut res, SERIAL_IRQ);
    res.extend_from_slice(&[0x79, 0]); // end tag
    let mut body = b"COM1".to_vec();
    body.extend(aml_name(b"_HID", &aml_int(eisa_id(b"PNP0501"))));
    body.extend(aml_name(b"_UID", &aml_int(0)));
    body.extend(aml_name(b"_CRS", &aml_buffer(&res)));
    aml_pkg(&[0x5b, 0x82], &body)
}

fn virtio_device(index: usize, d: &MmioDevice) -> Vec<u8> {
    let name = format!("V{index:03}");
    let seg: [u8; 4] = name.as_bytes().try_into().expect("V + 3 digits");
    let mut res = Vec::new();
    // Memory32Fixed, read-write.
    res.extend_from_slice(&[0x86, 9, 0, 1]);
    res.extend_from_slice(&(d.addr as u32).to_le_bytes());
    res.extend_from_slice(&d.len.to_le_bytes());
    res_interrupt(&mut res, d.irq);
    res.extend_from_slice(&[0x79, 0]); // end tag
    let mut body = seg.to_vec();
    body.extend(aml_name(b"_HID", &aml_string("LNRO0005")));
    body.extend(aml_name(b"_UID", &aml_int(index as u32)));
    body.extend(aml_name(b"_CRS", &aml_buffer(&res)));
    aml_pkg(&[0x5b, 0x82], &body)
}

fn dsdt(devices: &[MmioDevice]) -> Vec<u8> {
    let mut t = Sdt::new(b"DSDT", 2);
    let mut sb = b"\\_SB_".to_vec();
    sb.extend(com1());
    for (i, d) in devices.iter().enumerate() {
        sb.extend(virtio_device(i, d));
    }
    t.0.extend(aml_pkg(&[0x10], &sb));
    // Name (_S5, Package () { 5, 0 })
    let mut pkg = vec![2];
    pkg.extend(aml_int(u32::from(S5_SLP_TYP)));
    pkg.extend(aml_int(0));
    t.0.extend(aml_name(b"_S5_", &aml_pkg(&[0x12], &pkg)));
    t.finish()
}

/// The tables of one VM, laid out from `base`: `(rsdp address, bytes to write at base)`.
/// `pic`: the VM has 8259 PICs (MADT `PCAT_COMPAT`).
pub fn tables(base: u64, vcpus: u8, devices: &[MmioDevice], pic: bool) -> (u64, Vec<u8>) {
    let align = |v: &mut Vec<u8>| v.resize(v.len().div_ceil(16) * 16, 0);
    let mut out = vec![0u8; 48]; // RSDP, filled last
    let dsdt_addr = base + out.len() as u64;
    out.extend(dsdt(devices));
    align(&mut out);
    let fadt_addr = base + out.len() as u64;
    out.extend(fadt(dsdt_addr));
    align(&mut out);
    let madt_addr = base + out.len() as u64;
    out.extend(madt(vcpus, pic));
    align(&mut out);
    let xsdt_addr = base + out.len() as u64;
    let mut xsdt = Sdt::new(b"XSDT", 1);
    xsdt.0.extend_from_slice(&fadt_addr.to_le_bytes());
    xsdt.0.extend_from_slice(&madt_addr.to_le_bytes());
    out.extend(xsdt.finish());

    let mut rsdp = Vec::with_capacity(36);
    rsdp.extend_from_slice(b"RSD PTR ");
    rsdp.push(0); // checksum of the first 20 bytes
    rsdp.extend_from_slice(OEM_ID);
    rsdp.push(2); // revision: ACPI 2.0+
    rsdp.extend_from_slice(&0u32.to_le_bytes()); // no RSDT
    rsdp.extend_from_slice(&36u32.to_le_bytes());
    rsdp.extend_from_slice(&xsdt_addr.to_le_bytes());
    rsdp.extend_from_slice(&[0; 4]); // extended checksum, reserved
    rsdp[8] = checksum(&rsdp[..20]);
    rsdp[32] = checksum(&rsdp);
    out[..36].copy_from_slice(&rsdp);
    (base, out)
}

/// One table: its signature and its bytes.
pub type Table = ([u8; 4], Vec<u8>);

/// Splits the tables written by [`tables`] back into `(signature, bytes)`, following the
/// pointers as an OS would (used by the tests).
pub fn walk(base: u64, bytes: &[u8]) -> Result<Vec<Table>, String> {
    let get = |addr: u64, len: usize| -> Result<&[u8], String> {
        let off =
            addr.checked_sub(base)
                .ok_or_else(|| format!("address {addr:#x} below the tables"))? as usize;
        bytes
            .get(off..off + len)
            .ok_or_else(|| format!("{len} bytes at {addr:#x} outside the tables"))
    };
    let table = |addr: u64| -> Result<Table, String> {
        let hdr = get(addr, 36)?;
        let len = u32::from_le_bytes(hdr[4..8].try_into().expect("4 bytes")) as usize;
        let t = get(addr, len)?;
        if checksum(t) != 0 {
            return Err(format!(
                "{} checksum wrong",
                String::from_utf8_lossy(&t[..4])
            ));
        }
        Ok((t[..4].try_into().expect("4 bytes"), t.to_vec()))
    };
    let rsdp = get(base, 36)?;
    if &rsdp[..8] != b"RSD PTR " || checksum(&rsdp[..20]) != 0 || checksum(rsdp) != 0 {
        return Err("RSDP signature or checksum wrong".into());
    }
    let xsdt_addr = u64::from_le_bytes(rsdp[24..32].try_into().expect("8 bytes"));
    let xsdt = table(xsdt_addr)?;
    let mut out = vec![];
    for p in xsdt.1[36..].chunks_exact(8) {
        let t = table(u64::from_le_bytes(p.try_into().expect("8 bytes")))?;
        if &t.0 == b"FACP" {
            let dsdt = u64::from_le_bytes(t.1[140..148].try_into().expect("8 bytes"));
            out.push(table(dsdt)?);
        }
        out.push(t);
    }
    out.insert(0, xsdt);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_walk_with_good_checksums() {
        let devs = [MmioDevice {
            addr: 0xd000_0000,
            len: 0x1000,
            irq: 5,
        }];
        let (rsdp, bytes) = tables(0xe0000, 2, &devs, false);
        assert_eq!(rsdp, 0xe0000);
        let t = walk(0xe0000, &bytes).unwrap();
        let sigs: Vec<_> = t.iter().map(|t| t.0).collect();
        assert_eq!(sigs, [*b"XSDT", *b"DSDT", *b"FACP", *b"APIC"]);
        let dsdt = &t[1].1;
        assert!(dsdt.windows(8).any(|w| w == b"LNRO0005"));
        assert!(dsdt.windows(4).any(|w| w == b"COM1"));
        // Two local APICs (type 0) and one IOAPIC (type 1) after the 44-byte MADT header.
        let madt = &t[3].1;
        assert_eq!(madt.len(), 44 + 8 * 2 + 12);
        assert!(bytes.len() < (crate::layout::ACPI_END - crate::layout::ACPI_ADDR) as usize);
    }

    #[test]
    fn eisa_ids_compress_like_iasl() {
        // iasl: EisaId ("PNP0501") = 0x0105D041, EisaId ("PNP0A03") = 0x030AD041.
        assert_eq!(eisa_id(b"PNP0501"), 0x0105_d041);
        assert_eq!(eisa_id(b"PNP0A03"), 0x030a_d041);
    }

    #[test]
    fn pkg_len_encodings() {
        assert_eq!(pkg_len(10), vec![11]);
        // 100 body bytes + 2 length bytes = 102 = 0x66: lead 0x40 | 6, then 0x06.
        assert_eq!(pkg_len(100), vec![0x46, 0x06]);
        assert_eq!(pkg_len(5000), vec![0x8b, 0x38, 0x01]);
    }

    #[test]
    fn corrupt_tables_are_reported() {
        let (_, mut bytes) = tables(0xe0000, 1, &[], true);
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        assert!(walk(0xe0000, &bytes).unwrap_err().contains("checksum"));
    }
}
