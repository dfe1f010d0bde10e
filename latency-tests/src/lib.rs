//! Latency under load for vnfhost.
//!
//! Latency at 10/50/90 % of the zero-loss rate is measured today by the benchmark
//! harness (`perf::p2p` with `--ndr`: TSC stamps in the generator's payload, recorded
//! in an HDR histogram), because it needs the same DUT runners and NDR search. This
//! crate is reserved for what is not built yet: guest-to-guest round trips through pod
//! VMs, and jitter over long runs.
