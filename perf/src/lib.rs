//! The forwarding benchmark harness of vnfhost.
//!
//! Built so far: a traffic generator on pmd's virtio-user port ([`gen`]), runners that
//! start and stop each device under test in private directories pinned to the same
//! core ([`dut`]), and the p2p maximum-receive-rate method that interleaves the DUTs
//! round by round and reports min/median/max per DUT and ratios of medians ([`p2p`]).
//!
//! Not built yet (the performance issue stays open for them): RFC 2544 NDR/PDR search,
//! latency percentiles, Open vSwitch as a DUT, cycles per packet, plots.
pub mod dut;
pub mod gen;
mod ovs;
pub mod p2p;
