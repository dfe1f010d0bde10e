//! The pod VM monitor of vnfhost.
//!
//! A pod is a small VM with its own kernel whose NIC is a virtio-net device served by the
//! switch: the VMM sets the device up over vhost-user and then stays out of the data path.
//! Two hypervisor backends sit behind `vnfhost vm run` ([`hypervisor`]):
//!
//! - **`kvm`**, this crate's own monitor ([`vm::Vm`]): KVM through `kvm-ioctls`, guest RAM
//!   in one shared memfd (huge pages optional), x86-64 long-mode or PVH boot of an ELF or
//!   bzImage kernel with an initramfs, ACPI tables, a 16550 console, virtio-mmio network
//!   devices that are vhost-user frontends, and the image pods' virtio-blk disks and
//!   agent port (virtio-console) served by the VMM itself ([`devices`]).
//! - **`qemu`**: QEMU `-M microvm` with the same memory and vhost-user set-up
//!   ([`qemu`]), for hosts where KVM is not hardware-accelerated.
//!
//! `auto` picks `kvm` where `/proc/cpuinfo` shows `vmx` or `svm` and `qemu` otherwise.
//! Guest payloads used by tests and benchmarks are assembled from `payload/` at build time
//! ([`payload`]); the Linux guest image builder is `vmm/guest/build-guest.sh`.

pub mod acpi;
pub mod boot;
pub mod bus;
pub mod devices;
pub mod guest;
pub mod hypervisor;
pub mod layout;
pub mod memory;
pub mod payload;
pub mod qemu;
pub mod vm;

pub use devices::vhost_net::NetConfig;
pub use vm::{DiskConfig, Vm, VmConfig, VmError, VmExit};
