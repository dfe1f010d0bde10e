//! The vnfhost control plane: the `vnfhost` command and its subcommands.
//!
//! Today it runs the switch in the foreground (`vnfhost switch`), pod VMs in the
//! foreground (`vnfhost vm run`) and the benchmarks (`vnfhost bench`); the daemon, the
//! topology reconciler, the CNI plugin and the Kubernetes controller come with later
//! issues and are refused with a clear message until then.
pub mod bench_cmd;
pub mod cli;
pub mod ctl_cmd;
pub mod daemon;
pub mod http;
pub mod plan;
pub mod portspec;
pub mod switch_cmd;
pub mod switchctl;
pub mod topology;
pub mod vm_cmd;
