//! The forwarding benchmark harness of vnfhost.
//!
//! Built so far: a traffic generator on pmd's virtio-user port ([`gen`]), runners that
//! start and stop each device under test in private directories pinned to the same
//! core ([`dut`]), and the p2p maximum-receive-rate method that interleaves the DUTs
//! round by round and reports min/median/max per DUT and ratios of medians ([`p2p`]).
//!
//! Also: RFC 2544 NDR/PDR binary search ([`ndr`]), Open vSwitch with DPDK as a DUT,
//! cycles per packet from each DUT's own accounting, latency histograms at fixed rates
//! (used by the `latency-tests` crate).
//!
//! And the pod VM monitor's start-up, memory and creation rate against QEMU
//! ([`vmstart`]); connection tracking (stateful groups, service VIPs) against OVS-DPDK's
//! conntrack ([`sessions`]).
pub mod churn;
pub mod dpdkgen;
pub mod dut;
pub mod gen;
pub mod ndr;
mod ovs;
pub mod p2p;
pub mod plot;
pub mod sessions;
pub mod tunnel;
pub mod uplink;
pub mod vmstart;
