//! Switching logic of vnfhost.
//!
//! This crate decides where packets go; it never moves them. Ports, buffers and
//! polling loops belong to [`pmd`]; the switch service that binds ports to cores and
//! drives the bridge with bursts sits on top of the modules here.
//!
//! * [`wire`] — zero-copy views of Ethernet, 802.1Q, ARP, IPv4 and IPv6 headers. After
//!   a successful `new_checked` no accessor can panic, whatever the bytes.
//! * [`fdb`] — the L2 forwarding database: fixed capacity chosen at construction,
//!   O(1) learn and lookup, ageing against a caller-supplied clock, bounded behaviour
//!   when full (reclaim an aged entry or refuse and count).
//! * [`bridge`] — the 802.1Q learning bridge: VLAN admission per port mode (access or
//!   trunk), learning, known-unicast forwarding, flooding with split horizon, the
//!   [`pmd::VlanEdit`] each egress copy needs, and counters with one per
//!   [`DropReason`].
//!
//! Contracts shared by these modules:
//!
//! * **No allocation, lock or system call per packet.** Everything is sized when a
//!   [`Bridge`] or [`Fdb`] is built; `tests/no_alloc.rs` checks `Bridge::forward` with
//!   a counting allocator.
//! * **Hostile input.** Frames come from guests. Nothing in the per-packet path panics
//!   on any byte sequence; bad frames are dropped with a counted reason.
//! * **No `unsafe`.** These modules are `#![forbid(unsafe_code)]`.
//! * **Single owner.** A [`Bridge`] belongs to one polling core; see the
//!   [`bridge`](crate::bridge#cores) documentation for how cores share what they learn.
//!
//! [`service`] is the switch as a service configured by one typed spec; [`switch`] the
//! runtime that changes live.
#![forbid(unsafe_code)]

pub mod bridge;
pub mod conntrack;
pub mod fdb;
pub mod lb;
pub mod overlay;
pub mod router;
pub mod service;
pub mod stage;
pub mod switch;
pub mod wire;

pub use bridge::{
    Bridge, BridgeConfig, BridgeCounters, BridgeError, DropCounters, DropReason, FilterRule,
    Forwarded, GroupFilter, IngressFilter, PortCounters, PortFilter, PortId, PortSecurity,
    PortState, RuleProto, Track, Vid, VlanMode, VlanSet,
};
pub use fdb::{Fdb, FdbEntry, FdbError, FdbStats, Learn};
pub use pmd::VlanEdit;
