//! The vnfhost control plane: the `vnfhost` command and its subcommands.
//!
//! - [`daemon`]: `vnfhost daemon`, its API and reconcile loop; [`ctl_cmd`]: `up`, `down`,
//!   `status` (its clients); [`http`]: the small HTTP/1.1 both speak.
//! - [`topology`]: the `topology.yaml` schema and its checks; [`plan`]: what runs for it.
//! - [`switch_cmd`]: `vnfhost switch` in the foreground; [`switchctl`]: the switch as the
//!   daemon runs it, configured over its control socket.
//! - [`vm_cmd`]: `vnfhost vm run`; [`bench_cmd`]: `vnfhost bench`.
//!
//! The CNI plugin and the Kubernetes controller (a later issue) will be API clients too.
pub mod attach;
pub mod bench_cmd;
pub mod cli;
pub mod cni;
pub mod ctl_cmd;
pub mod daemon;
pub mod http;
pub mod netlink;
pub mod plan;
pub mod portspec;
pub mod switch_cmd;
pub mod switchctl;
pub mod topology;
pub mod vm_cmd;
