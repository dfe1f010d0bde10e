//! A userspace IOAPIC for KVM's split irqchip.
//!
//! With `KVM_CAP_SPLIT_IRQCHIP` the local APICs stay in KVM and the IOAPIC is emulated
//! here; there is no 8259 PIC. Devices still raise their interrupt lines through irqfds on
//! GSIs 0..24: when the guest programs a redirection entry, the IOAPIC turns it into an
//! MSI route for that GSI (`KVM_SET_GSI_ROUTING`), so an interrupt is delivered by KVM
//! without a trip to userspace. A masked entry has no route, and its interrupts are
//! dropped, as edge interrupts on a masked pin are.
//!
//! The split irqchip is the default because the in-kernel PIC and IOAPIC cost about 15 ms
//! of SRCU grace periods when a VM is torn down on the reference host; it is what Cloud
//! Hypervisor does too. All devices here are edge-triggered (the DSDT says so); a guest that
//! programs a pin level-triggered gets an EOI exit, which just clears Remote IRR.

use std::sync::Arc;

use kvm_bindings::{kvm_irq_routing_entry, KvmIrqRouting, KVM_IRQ_ROUTING_MSI};
use kvm_ioctls::VmFd;

/// Pins (GSIs 0..24).
pub const PINS: usize = 24;
/// Size of the register window.
pub const WINDOW: u64 = 0x100;

const IOREGSEL: u64 = 0x00;
const IOWIN: u64 = 0x10;
const EOI: u64 = 0x40;
const RTE_MASK: u64 = 1 << 16;
const RTE_LEVEL: u64 = 1 << 15;
const RTE_REMOTE_IRR: u64 = 1 << 14;

/// The IOAPIC.
pub struct Ioapic {
    vm: Option<Arc<VmFd>>,
    regsel: u32,
    id: u32,
    rte: [u64; PINS],
    /// Routing updates KVM refused.
    pub route_errors: u64,
}

/// The MSI (address, data) a redirection entry means.
pub fn rte_to_msi(rte: u64) -> (u32, u32) {
    let vector = (rte & 0xff) as u32;
    let delivery = ((rte >> 8) & 0x7) as u32;
    let logical = ((rte >> 11) & 1) as u32;
    let level = ((rte >> 15) & 1) as u32;
    let dest = ((rte >> 56) & 0xff) as u32;
    let addr = 0xfee0_0000 | (dest << 12) | (logical << 2);
    let data = vector | (delivery << 8) | (level << 15) | (level << 14);
    (addr, data)
}

impl Ioapic {
    /// An IOAPIC with every pin masked; `vm` None only in unit tests.
    pub fn new(vm: Option<Arc<VmFd>>) -> Ioapic {
        Ioapic {
            vm,
            regsel: 0,
            id: 0,
            rte: [RTE_MASK; PINS],
            route_errors: 0,
        }
    }

    /// The redirection entry of `pin`.
    pub fn rte(&self, pin: usize) -> u64 {
        self.rte[pin]
    }

    /// A read in the register window.
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        let v = match offset {
            IOREGSEL => self.regsel,
            IOWIN => self.read_reg(self.regsel),
            _ => 0,
        };
        let b = v.to_le_bytes();
        for (i, x) in data.iter_mut().enumerate() {
            *x = b.get(i).copied().unwrap_or(0);
        }
    }

    fn read_reg(&self, reg: u32) -> u32 {
        match reg {
            0x00 => self.id << 24,
            0x01 => ((PINS as u32 - 1) << 16) | 0x20,
            0x02 => self.id << 24,
            0x10..=0x3f => {
                let pin = ((reg - 0x10) / 2) as usize;
                let rte = self.rte[pin];
                if reg.is_multiple_of(2) {
                    rte as u32
                } else {
                    (rte >> 32) as u32
                }
            }
            _ => 0,
        }
    }

    /// A write in the register window.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        let mut b = [0u8; 4];
        for (i, x) in data.iter().take(4).enumerate() {
            b[i] = *x;
        }
        let v = u32::from_le_bytes(b);
        match offset {
            IOREGSEL => self.regsel = v & 0xff,
            IOWIN => self.write_reg(self.regsel, v),
            EOI => self.eoi(v as u8),
            _ => {}
        }
    }

    fn write_reg(&mut self, reg: u32, v: u32) {
        match reg {
            0x00 => self.id = (v >> 24) & 0xf,
            0x10..=0x3f => {
                let pin = ((reg - 0x10) / 2) as usize;
                let old = self.rte[pin];
                // Delivery status (bit 12) and Remote IRR (bit 14) are read-only.
                let ro = (1 << 12) | RTE_REMOTE_IRR;
                let new = if reg.is_multiple_of(2) {
                    (old & !0xffff_ffff) | (u64::from(v) & !ro) | (old & ro)
                } else {
                    (old & 0xffff_ffff) | (u64::from(v) << 32)
                };
                self.rte[pin] = new;
                if new != old {
                    self.update_routes();
                }
            }
            _ => {}
        }
    }

    /// The guest signalled end of interrupt for `vector` (level-triggered pins).
    pub fn eoi(&mut self, vector: u8) {
        for r in self.rte.iter_mut() {
            if *r & 0xff == u64::from(vector) && *r & RTE_LEVEL != 0 {
                *r &= !RTE_REMOTE_IRR;
            }
        }
    }

    /// The MSI routes of all unmasked pins.
    pub fn routes(&self) -> Vec<kvm_irq_routing_entry> {
        let mut v = vec![];
        for (gsi, &rte) in self.rte.iter().enumerate() {
            if rte & RTE_MASK != 0 {
                continue;
            }
            let (addr, data) = rte_to_msi(rte);
            let mut e = kvm_irq_routing_entry {
                gsi: gsi as u32,
                type_: KVM_IRQ_ROUTING_MSI,
                ..Default::default()
            };
            e.u.msi.address_lo = addr;
            e.u.msi.data = data;
            v.push(e);
        }
        v
    }

    fn update_routes(&mut self) {
        let Some(vm) = &self.vm else { return };
        let routes = self.routes();
        let ok = KvmIrqRouting::from_entries(&routes)
            .ok()
            .map(|r| vm.set_gsi_routing(&r).is_ok())
            .unwrap_or(false);
        if !ok {
            self.route_errors += 1;
            if self.route_errors.is_power_of_two() {
                tracing::warn!(
                    "IOAPIC: KVM refused the interrupt routes ({} times)",
                    self.route_errors
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_rte(io: &mut Ioapic, pin: u32, rte: u64) {
        io.write(IOREGSEL, &(0x10 + 2 * pin + 1).to_le_bytes());
        io.write(IOWIN, &((rte >> 32) as u32).to_le_bytes());
        io.write(IOREGSEL, &(0x10 + 2 * pin).to_le_bytes());
        io.write(IOWIN, &(rte as u32).to_le_bytes());
    }

    #[test]
    fn version_and_masked_pins_at_reset() {
        let mut io = Ioapic::new(None);
        io.write(IOREGSEL, &1u32.to_le_bytes());
        let mut b = [0u8; 4];
        io.read(IOWIN, &mut b);
        assert_eq!(u32::from_le_bytes(b), 0x0017_0020);
        assert!(io.routes().is_empty());
    }

    #[test]
    fn an_unmasked_pin_becomes_an_msi_route() {
        let mut io = Ioapic::new(None);
        // Vector 0x31, fixed, physical, edge, destination APIC 1.
        write_rte(&mut io, 5, (1u64 << 56) | 0x31);
        let r = io.routes();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].gsi, 5);
        // SAFETY: the entry was built as an MSI route.
        let msi = unsafe { r[0].u.msi };
        assert_eq!(msi.address_lo, 0xfee0_1000);
        assert_eq!(msi.data, 0x31);
        // Remote IRR cannot be set by the guest.
        write_rte(&mut io, 6, RTE_REMOTE_IRR | RTE_MASK);
        assert_eq!(io.rte(6) & RTE_REMOTE_IRR, 0);
    }

    #[test]
    fn level_entries_carry_trigger_and_assert() {
        let (_, data) = rte_to_msi(RTE_LEVEL | 0x40);
        assert_eq!(data, 0x40 | (1 << 15) | (1 << 14));
    }
}
