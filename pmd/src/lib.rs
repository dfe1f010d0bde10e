//! Poll-mode drivers and the core runtime of vnfhost.
//!
//! This crate moves frames and knows nothing of MAC tables, tenants or VMs:
//! - [`mem`]: hugepage-backed shared regions and guest memory tables;
//! - [`fault`]: recovery from guest memory that shrinks under us (`SIGBUS`);
//! - [`pool`]: preallocated packet buffers;
//! - [`vring`]: the device side of a split virtqueue, walked by hand;
//! - [`port`]: the [`Port`](port::Port) trait with burst receive and transmit;
//! - [`vhost_user`]: the vhost-user backend port (switch side of a VM's NIC);
//! - [`virtio_user`]: the virtio-user frontend port (the VM side, for tests and the
//!   traffic generator);
//! - [`tap`]: a kernel tap interface as a port;
//! - [`sched`]: polling threads pinned to cores, with idle back-off;
//! - [`hint`]: cache prefetch hints for the fast path.
pub mod fault;
pub mod frame;
pub mod hint;
pub mod mem;
pub mod pool;
pub mod port;
pub mod ratelimit;
pub mod sched;
pub mod sync;
pub mod tap;
pub mod vhost_proto;
pub mod vhost_user;
pub mod virtio;
pub mod virtio_user;
pub mod vring;

pub use frame::VlanEdit;
