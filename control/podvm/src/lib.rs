//! A pod VM that runs containers from their own images, shared by the containerd shim
//! (`containerd-shim-vnfhost-v2`) and `vnfhost run`:
//!
//! - [`image`]: a container's root file system becomes a read-only ext4 image, built once
//!   per image (snapshot chain) and cached on the node; OCI and Docker archives are
//!   unpacked into a local image store;
//! - [`vm`]: the VM (`vnfhost vm run`: QEMU microvm, or vnfhost's own `kvm` backend)
//!   with the agent's virtio-serial port and a few virtio-blk *slots*: sparse files fixed
//!   at boot that a
//!   container's image is copied into when the container is made, as Kata does with
//!   Firecracker's drives (virtio-mmio has no hotplug);
//! - [`spec`]: what of an OCI runtime spec the guest honours, and a clear error for what
//!   it cannot.

pub mod image;
pub mod spec;
pub mod vm;

pub use agent::client::{Agent, Event, Handler};
