//! Poll-mode drivers and the core runtime of vnfhost.
//!
//! `unsafe` is denied in the crate and allowed only in the modules that must touch raw
//! memory or the system: the uplink's ring and socket ([`afpacket`]), memory ([`mem`]
//! with [`mem::GuestSlice`], [`fault`],
//! [`pool`], the frame batch in [`port`]), rings ([`vring`], and the driver side in
//! [`virtio_user`]), [`sync`], and the system ([`sys`], [`hint`], the `SCM_RIGHTS`
//! messaging of [`vhost_proto`]). The vhost-user and tap drivers deny it too, except
//! for a few statements each, allowed one by one, where a ring's or pool's buffer
//! becomes a batch entry ([`vhost_user`]: 5, [`tap`]: 1), listed with their reason at
//! the top of their module; the uplink driver, whose receive ring is memory the kernel
//! shares, allows it as a whole, each block with its reason.
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
//! - [`afpacket`]: the uplink, a host interface shared with the kernel through an
//!   `AF_PACKET` socket (`TPACKET_V3` receive ring, batched transmit);
//! - [`sched`]: polling threads pinned to cores, with idle back-off;
//! - [`hint`]: cache prefetch hints for the fast path;
//! - [`sys`]: safe wrappers over the system calls the drivers make.
#![deny(unsafe_code)]

#[allow(unsafe_code)]
pub mod afpacket;
#[allow(unsafe_code)]
pub mod fault;
pub mod frame;
#[allow(unsafe_code)]
pub mod hint;
#[allow(unsafe_code)]
pub mod mem;
#[allow(unsafe_code)]
pub mod pool;
#[allow(unsafe_code)]
pub mod port;
pub mod ratelimit;
pub mod sched;
#[allow(unsafe_code)]
pub mod sync;
#[allow(unsafe_code)]
pub mod sys;
pub mod tap;
#[allow(unsafe_code)]
pub mod vhost_proto;
pub mod vhost_user;
pub mod virtio;
#[allow(unsafe_code)]
pub mod virtio_user;
#[allow(unsafe_code)]
pub mod vring;

pub use frame::VlanEdit;
