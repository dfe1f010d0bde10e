//! Emulated devices: the serial console, the legacy reset and power ports, and the
//! virtio-mmio transport with its vhost-user network device.
//!
//! Devices sit on two buses (port I/O and MMIO) that the vCPU threads dispatch to. Each
//! device has its own lock; the data path of the network device never comes here: the
//! guest's queue kicks go to the switch through ioeventfds and the switch's interrupts
//! come back through irqfds, both inside KVM.

pub mod ioapic;
pub mod legacy;
pub mod serial;
pub mod vhost_net;
pub mod virtio_mmio;

/// What a device asks of the VM after an access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Nothing.
    None,
    /// The guest asked for a reset (i8042 or ACPI reset register).
    Reset,
    /// The guest asked to power off (ACPI S5).
    PowerOff,
}
