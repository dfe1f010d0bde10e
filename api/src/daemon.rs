//! The daemon's API (`RUN/api.sock`, HTTP/JSON under `/v1`): where it listens, and the
//! bodies of its requests and replies. The daemon (`vnfhost daemon`, in `control`) serves
//! them; `vnfhost up/down/status`, the CNI plugin, the Kubernetes controller and the
//! containerd shim send them with [`crate::http::call`].
//!
//! Requests refuse unknown fields; replies do not, so that a client reads the reply of a
//! newer daemon.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::switch::{CoreCounters, PortCounters};

/// The API version the daemon serves (the path prefix).
pub const API_VERSION: &str = "v1";

/// Default run directory.
pub const RUN_DIR: &str = "/run/vnfhost";

/// The API socket: `VNFHOST_API`, else `RUN_DIR/api.sock`.
pub fn default_api_socket() -> PathBuf {
    std::env::var_os("VNFHOST_API")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(RUN_DIR).join("api.sock"))
}

/// The guest image pods boot when they name no kernel.
#[derive(Clone, Debug)]
pub struct GuestImage {
    /// Kernel.
    pub kernel: PathBuf,
    /// Initramfs.
    pub initrd: PathBuf,
}

impl GuestImage {
    /// `VNFHOST_GUEST_KERNEL`/`VNFHOST_GUEST_INITRD`, else what
    /// `vmm/guest/build-guest.sh` builds.
    pub fn from_env() -> GuestImage {
        let var = |k: &str, d: &str| std::env::var_os(k).map(PathBuf::from).unwrap_or(d.into());
        GuestImage {
            kernel: var("VNFHOST_GUEST_KERNEL", "/var/cache/vnfhost/guest/vmlinuz"),
            initrd: var(
                "VNFHOST_GUEST_INITRD",
                "/var/cache/vnfhost/guest/initramfs.cpio.gz",
            ),
        }
    }
}

/// How a process ended, as far as the daemon can tell.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Exit {
    /// Exit status 0.
    Success,
    /// Another exit status or a signal.
    Failed(String),
    /// Not the daemon's child (adopted), so its status is unknown.
    Unknown,
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::Success => write!(f, "exit status 0"),
            Exit::Failed(how) => write!(f, "{}", how.replace("exit status: ", "exit status ")),
            Exit::Unknown => write!(f, "ended (status unknown: adopted process)"),
        }
    }
}

/// Lifecycle of a pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Its VM runs.
    Running,
    /// Its VM exited with status 0 and is not restarted.
    Succeeded,
    /// Its VM failed and is not restarted.
    Failed,
    /// Its VM exited and will be started again.
    BackOff,
}

/// One extra network of a pod (`PUT /v1/pod-networks/NAMESPACE/NAME` takes a list).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodNetwork {
    /// The network.
    pub network: String,
    /// The interface name in the pod (default `net1`, `net2`, … in order).
    #[serde(default)]
    pub interface: Option<String>,
}

/// `PUT /v1/overlay` (and what `GET /v1/overlay` answers): the facts of the cluster a
/// node agent (the Kubernetes controller) learnt and tells its daemon, which merges them
/// into the topology it plans.
///
/// - `uplink`: this node's uplink, used when the topology has no `switch.uplink` of its
///   own (the topology's wins);
/// - `vteps`: the other nodes' tunnel endpoints, added to the topology's static `vteps`
///   (an entry whose address or name a static one has is left out: the static one wins).
///
/// The merge is checked as a whole topology: a refused overlay changes nothing, and its
/// problems are named `overlay.uplink.…` and `overlay.vteps[i].…`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Overlay {
    /// This node's uplink.
    #[serde(default)]
    pub uplink: Option<OverlayUplink>,
    /// The other nodes' tunnel endpoints.
    #[serde(default)]
    pub vteps: Vec<OverlayVtep>,
}

/// This node's uplink in an [`Overlay`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OverlayUplink {
    /// The host interface the tunnels leave through.
    pub interface: String,
    /// This node's tunnel address (an IPv4 address of `interface`); default the
    /// interface's first IPv4 address.
    #[serde(default)]
    pub address: Option<String>,
}

/// Another node's tunnel endpoint in an [`Overlay`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OverlayVtep {
    /// The node's name.
    pub name: String,
    /// Its tunnel address (IPv4).
    pub address: String,
}

/// A service: topology `services:` entries, and `PUT /v1/services/NAME` (the
/// Kubernetes controller's Services). A virtual IP of one network's tenant, balanced
/// per connection over backends by the switch; only that tenant's pods reach it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    /// Unique name: 1-63 of `[A-Za-z0-9._-]`.
    pub name: String,
    /// The network whose tenant owns the VIP; that tenant needs a router (clients send
    /// to the VIP through their gateway).
    pub network: String,
    /// The virtual IP, IPv4. Not inside any of the tenant's networks.
    pub vip: std::net::Ipv4Addr,
    /// Its ports.
    pub ports: Vec<ServicePort>,
    /// Backends: topology pod names (the pod's address on a network of the tenant) or
    /// IPv4 addresses on the tenant's networks. Only ready ones belong here.
    #[serde(default)]
    pub backends: Vec<String>,
    /// Session affinity.
    #[serde(default)]
    pub affinity: Affinity,
    /// How long a client's affinity lasts after its last packet, in seconds (with
    /// `client_ip`). Default 10800, as Kubernetes'.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity_timeout_s: Option<u32>,
}

/// One port of a [`Service`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServicePort {
    /// Protocol.
    pub protocol: crate::switch::L4Protocol,
    /// The port clients connect to on the VIP, 1..=65535.
    pub port: u16,
    /// The backends' port. Default: `port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_port: Option<u16>,
}

/// Session affinity of a [`Service`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Affinity {
    /// Every connection picks its backend.
    #[default]
    None,
    /// A client's connections go to one backend while it keeps talking.
    ClientIp,
}

/// The body of an `up` refused before anything changed.
#[derive(Debug, Serialize, Deserialize)]
pub struct Refusal {
    /// Summary.
    pub error: String,
    /// Each problem, `field.path: what`.
    #[serde(default)]
    pub problems: Vec<String>,
}

/// `PUT /v1/topology` body.
///
/// `T` is the topology: the daemon reads it as its `topology.yaml` schema (in `control`);
/// a client without that schema sends it as JSON ([`serde_json::Value`]) and the daemon
/// checks it.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApplyRequest<T = serde_json::Value> {
    /// Where the topology came from (for status and messages).
    #[serde(default)]
    pub source: Option<String>,
    /// The topology.
    pub topology: T,
}

/// `POST /v1/attachments/gc`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GcRequest {
    /// Only attachments of this network.
    #[serde(default)]
    pub network: Option<String>,
    /// Only attachments of these networks (when not empty).
    #[serde(default)]
    pub networks: Vec<String>,
    /// The attachments that stay.
    pub valid: Vec<AttachmentKey>,
}

/// A (container, interface) pair.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AttachmentKey {
    /// Container id.
    pub container: String,
    /// Interface name.
    pub ifname: String,
}

/// `PUT /v1/topology` and `DELETE /v1/topology` answer.
#[derive(Debug, Serialize, Deserialize)]
pub struct ApplyReply {
    /// Generation now applied.
    pub generation: u64,
    /// What changed (empty: nothing had to).
    pub changes: Vec<String>,
}

/// `GET /v1/status`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Status {
    /// API version.
    pub api: String,
    /// Topology generation.
    pub generation: u64,
    /// Where the topology came from.
    pub source: Option<String>,
    /// Whether a topology is applied.
    pub applied: bool,
    /// The switch.
    pub switch: SwitchStatus,
    /// Pods.
    pub pods: Vec<PodStatus>,
    /// Switch ports.
    pub ports: Vec<PortStatus>,
    /// Bridge drops by reason.
    pub bridge_drops: BTreeMap<String, u64>,
    /// Floods.
    pub floods: u64,
    /// Packets routed.
    pub routed: u64,
    /// Frames the routers generated.
    pub router_generated: u64,
    /// Router drops by reason.
    pub router_drops: BTreeMap<String, u64>,
    /// The uplink and its tunnels to other nodes, when the topology has an uplink.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlay: Option<crate::switch::OverlayCounters>,
    /// The switch's session tables.
    #[serde(default)]
    pub sessions: crate::switch::SessionCounters,
    /// Services, with their backends and the connections each was given.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<crate::switch::ServiceCounters>,
    /// Recent events, oldest first, each `UNIXTIME message`.
    pub events: Vec<String>,
}

/// The switch in [`Status`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SwitchStatus {
    /// Its process runs.
    pub running: bool,
    /// Its pid.
    pub pid: Option<i32>,
    /// Configurations it has applied.
    pub config_generation: u64,
    /// How long its last change took until every polling core ran it, µs (the cores
    /// do not stop meanwhile).
    pub last_change_us: u64,
    /// Polling cores.
    pub cores: Vec<CoreStatus>,
}

/// A polling core in [`Status`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CoreStatus {
    /// Share of polls that found work over the last second.
    pub busy_percent: f64,
    /// Packets per second over the last second.
    pub pps: f64,
    /// Totals.
    pub counters: CoreCounters,
}

/// A pod in [`Status`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PodStatus {
    /// Name.
    pub name: String,
    /// Phase.
    pub phase: Phase,
    /// VM process id while it runs.
    pub pid: Option<i32>,
    /// Restarts.
    pub restarts: u32,
    /// How its last VM ended.
    pub last_exit: Option<Exit>,
    /// Its console log.
    pub console: String,
}

/// A port in [`Status`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PortStatus {
    /// Port name (`POD.ethJ`).
    pub name: String,
    /// Its pod.
    pub pod: String,
    /// Its peer is connected and ready.
    pub up: bool,
    /// Frames per second from the pod over the last second.
    pub rx_pps: f64,
    /// Frames per second to the pod.
    pub tx_pps: f64,
    /// Totals.
    pub counters: PortCounters,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_apply_request_refuses_unknown_fields_and_carries_any_topology() {
        let r: ApplyRequest = serde_json::from_str(r#"{"topology":{"networks":[]}}"#).unwrap();
        assert_eq!(r.topology["networks"], serde_json::json!([]));
        assert_eq!(r.source, None);
        let e = serde_json::from_str::<ApplyRequest>(r#"{"topology":{},"sorce":"x"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("sorce"), "{e}");
    }

    #[test]
    fn exits_read_as_people_write_them() {
        assert_eq!(Exit::Success.to_string(), "exit status 0");
        assert_eq!(
            Exit::Failed("exit status: 3".into()).to_string(),
            "exit status 3"
        );
        let p: Vec<PodNetwork> = serde_json::from_str(r#"[{"network":"n"}]"#).unwrap();
        assert_eq!(p[0].interface, None);
        assert!(serde_json::from_str::<PodNetwork>(r#"{"network":"n","ifname":"x"}"#).is_err());
    }

    #[test]
    fn an_overlay_reads_with_defaults_and_refuses_unknown_fields() {
        let o: Overlay =
            serde_json::from_str(r#"{"vteps":[{"name":"b","address":"10.0.0.2"}]}"#).unwrap();
        assert_eq!(o.uplink, None);
        assert_eq!(o.vteps[0].name, "b");
        let o: Overlay = serde_json::from_str(r#"{"uplink":{"interface":"eth0"}}"#).unwrap();
        assert_eq!(o.uplink.unwrap().address, None);
        assert!(serde_json::from_str::<Overlay>(r#"{"vtep":[]}"#).is_err());
        assert_eq!(
            serde_json::from_str::<Overlay>("{}").unwrap(),
            Overlay::default()
        );
    }
}
