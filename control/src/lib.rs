//! The vnfhost control plane: the `vnfhost` command and its subcommands.
//!
//! - [`daemon`]: `vnfhost daemon`, its API server and reconcile loop; [`ctl_cmd`]: `up`,
//!   `down`, `status` (its clients). The API's types ([`api::daemon`], [`api::attach`])
//!   and the small HTTP/1.1 both speak ([`api::http`]) are the `api` crate's.
//! - [`topology`]: the `topology.yaml` schema and its checks; [`plan`]: what runs for it.
//! - [`switch_cmd`]: `vnfhost switch`, in the foreground with options or for the daemon
//!   with `--control SOCK`; both run [`vswitch::service`] with one typed spec.
//! - [`vm_cmd`]: `vnfhost vm run`. `vnfhost bench` runs `vnfhost-bench` (package `perf`,
//!   the benchmark harness), which this crate does not link.
//! - [`attach`]: the attachments (ports) the daemon makes for the CNI plugin.
//! - [`console_log`]: `vnfhost console-log`, which keeps a pod's console with rotation.
//! - [`pod_cmd`]: `vnfhost run`, `exec`, `logs`, `ps`, `rm`: container images in pod VMs
//!   without Kubernetes (the VM and its agent are `vnfhost-podvm`'s).
//! - [`args`]: what the commands' option parsers share. [`cli`] dispatches to the
//!   commands; they depend on `args`, never on `cli` or on each other's parsers
//!   (`tests/modules.rs` checks there is no import circle).
//!
//! The CNI plugin (`vnfhost-cni`), the Kubernetes controller (`vnfhost-k8s`) and the
//! containerd shim are API clients in packages of their own: they link `api`, not this
//! crate.
pub mod args;
pub mod attach;
pub mod cli;
pub mod console_log;
pub mod ctl_cmd;
pub mod daemon;
pub mod netlink;
pub mod plan;
pub mod pod_cmd;
pub mod switch_cmd;
pub mod topology;
pub mod vm_cmd;
