//! Dispatch of port I/O and MMIO exits to the devices.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::acpi;
use crate::devices::ioapic::{self, Ioapic};
use crate::devices::legacy;
use crate::devices::serial::{Console, COM1};
use crate::devices::vhost_net::VhostNet;
use crate::devices::virtio_mmio::{MmioSlot, MmioTransport};
use crate::devices::Action;
use crate::layout;
use crate::memory::GuestRam;

/// A virtio-net device (its vhost-user monitor needs the type).
pub type NetDevice = Arc<Mutex<MmioTransport<VhostNet>>>;
/// A virtio-mmio device on the bus, whatever it is.
pub type VirtioDevice = Arc<Mutex<dyn MmioSlot>>;

/// The devices of one VM.
pub struct Bus {
    /// COM1.
    pub serial: Mutex<Console>,
    /// virtio-mmio devices, in slot order.
    pub virtio: Vec<VirtioDevice>,
    /// The userspace IOAPIC (split irqchip); `None` when KVM emulates PIC and IOAPIC.
    pub ioapic: Option<Mutex<Ioapic>>,
    /// Guest RAM, kept mapped for as long as anything here (the IOAPIC holds the VM fd)
    /// can reach the VM. Declared after `ioapic`, so dropped after it.
    _ram: Arc<GuestRam>,
    /// Port accesses nothing answered.
    pub unhandled_pio: AtomicU64,
    /// MMIO accesses nothing answered.
    pub unhandled_mmio: AtomicU64,
}

/// Logs the 1st, 2nd, 4th, 8th... occurrence: a guest probing for hardware (Linux reads
/// dozens of absent ports) or hammering an address cannot flood the log.
fn log_limited(counter: &AtomicU64, what: std::fmt::Arguments<'_>) {
    let n = counter.fetch_add(1, Ordering::Relaxed) + 1;
    if n.is_power_of_two() {
        tracing::debug!("{what} (unhandled access #{n}, ignored)");
    }
}

impl Bus {
    /// A bus with COM1, `virtio` devices and, for a split irqchip, the IOAPIC, for a VM
    /// with guest memory `ram`.
    pub fn new(
        serial: Console,
        virtio: Vec<VirtioDevice>,
        ioapic: Option<Ioapic>,
        ram: Arc<GuestRam>,
    ) -> Bus {
        Bus {
            serial: Mutex::new(serial),
            virtio,
            ioapic: ioapic.map(Mutex::new),
            _ram: ram,
            unhandled_pio: AtomicU64::new(0),
            unhandled_mmio: AtomicU64::new(0),
        }
    }

    /// A guest `in`.
    pub fn pio_read(&self, port: u16, data: &mut [u8]) {
        match port {
            COM1..=0x3ff if data.len() == 1 => {
                let mut s = self.serial.lock().unwrap_or_else(|e| e.into_inner());
                data[0] = s.read((port - COM1) as u8);
            }
            legacy::I8042_DATA | legacy::I8042_CMD if data.len() == 1 => {
                data[0] = legacy::i8042_read(port);
            }
            acpi::POWER_PORT if data.len() == 1 => data[0] = 0,
            // No 8259 with a split irqchip: reading back anything but the mask Linux wrote
            // (0xff) tells it so.
            0x20 | 0x21 | 0xa0 | 0xa1 if self.ioapic.is_some() => data.fill(0),
            _ => {
                data.fill(0xff);
                log_limited(
                    &self.unhandled_pio,
                    format_args!("guest read of {} bytes from port {port:#x}", data.len()),
                );
            }
        }
    }

    /// A guest `out`.
    pub fn pio_write(&self, port: u16, data: &[u8]) -> Action {
        match (port, data) {
            (COM1..=0x3ff, &[v]) => {
                let mut s = self.serial.lock().unwrap_or_else(|e| e.into_inner());
                if let Err(e) = s.write((port - COM1) as u8, v) {
                    log_limited(
                        &self.unhandled_pio,
                        format_args!("serial console write failed: {e:?}"),
                    );
                }
                Action::None
            }
            (legacy::I8042_DATA | legacy::I8042_CMD, &[v]) => legacy::i8042_write(port, v),
            (acpi::POWER_PORT, &[v]) => legacy::power_write(v),
            _ => {
                log_limited(
                    &self.unhandled_pio,
                    format_args!("guest write of {data:x?} to port {port:#x}"),
                );
                Action::None
            }
        }
    }

    fn virtio_at(&self, addr: u64) -> Option<(&VirtioDevice, u64)> {
        let off = addr.checked_sub(layout::VIRTIO_MMIO_BASE)?;
        let slot = (off / layout::VIRTIO_MMIO_SIZE) as usize;
        self.virtio
            .get(slot)
            .map(|d| (d, off % layout::VIRTIO_MMIO_SIZE))
    }

    fn ioapic_at(&self, addr: u64) -> Option<(&Mutex<Ioapic>, u64)> {
        let off = addr.checked_sub(u64::from(layout::IOAPIC_ADDR))?;
        (off < ioapic::WINDOW)
            .then_some(self.ioapic.as_ref())
            .flatten()
            .map(|io| (io, off))
    }

    /// The guest's EOI for a level-triggered vector (split irqchip).
    pub fn ioapic_eoi(&self, vector: u8) {
        if let Some(io) = &self.ioapic {
            io.lock().unwrap_or_else(|e| e.into_inner()).eoi(vector);
        }
    }

    /// A guest MMIO read.
    pub fn mmio_read(&self, addr: u64, data: &mut [u8]) {
        if let Some((io, off)) = self.ioapic_at(addr) {
            io.lock().unwrap_or_else(|e| e.into_inner()).read(off, data);
            return;
        }
        match self.virtio_at(addr) {
            Some((d, off)) => d.lock().unwrap_or_else(|e| e.into_inner()).read(off, data),
            None => {
                data.fill(0xff);
                log_limited(
                    &self.unhandled_mmio,
                    format_args!("guest read of {} bytes at unmapped {addr:#x}", data.len()),
                );
            }
        }
    }

    /// A guest MMIO write.
    pub fn mmio_write(&self, addr: u64, data: &[u8]) -> Action {
        if let Some((io, off)) = self.ioapic_at(addr) {
            io.lock()
                .unwrap_or_else(|e| e.into_inner())
                .write(off, data);
            return Action::None;
        }
        match self.virtio_at(addr) {
            Some((d, off)) => d.lock().unwrap_or_else(|e| e.into_inner()).write(off, data),
            None => log_limited(
                &self.unhandled_mmio,
                format_args!("guest write of {data:x?} at unmapped {addr:#x}"),
            ),
        }
        Action::None
    }
}
