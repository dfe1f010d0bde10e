//! `topology.yaml`: the typed, strict description of a vnfhost deployment, and its
//! validation. The schema is documented in `docs/topology.md`.
//!
//! Loading happens in two steps, and a file is refused before anything on the host
//! changes if either fails:
//!
//! 1. **Parsing** (`serde_yaml` with `deny_unknown_fields` everywhere): a syntax error, an
//!    unknown field or a value of the wrong type is reported with the file, the line and
//!    column, and the field path (`pods[1].interfaces[0].mac`).
//! 2. **Checking** ([`Topology::check`]) what types cannot say: names unique, references
//!    resolve (networks of interfaces and routers, security groups), addresses parse and
//!    fall inside their network, CIDRs of one tenant do not overlap, VLAN and VNI ids are in
//!    range and unique, MACs unicast and unique, CPUs exist and polling cores are not
//!    shared with vCPUs, and the huge pages asked for are free. Every problem is listed,
//!    each with its field path.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::IpAddr;
use std::path::Path;

use serde::{Deserialize, Serialize};

use api::daemon::Overlay;
use api::values::parse_mac;

/// The whole deployment.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    /// The switch.
    #[serde(default)]
    pub switch: SwitchSpec,
    /// Tenant networks (each its own bridge domain).
    #[serde(default)]
    pub networks: Vec<Network>,
    /// Per-tenant routers between networks.
    #[serde(default)]
    pub routers: Vec<Router>,
    /// Security groups, referenced by interfaces.
    #[serde(default)]
    pub security_groups: Vec<SecurityGroup>,
    /// Services: a tenant's virtual IP and ports, balanced over backends.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<api::daemon::Service>,
    /// Pod VMs.
    #[serde(default)]
    pub pods: Vec<Pod>,
    /// Bounds on what tenants' pods may take of the node.
    #[serde(default)]
    pub limits: Limits,
    /// The other nodes' tunnel endpoints: every network with a `vni` is carried to each
    /// (needs `switch.uplink`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vteps: Vec<Vtep>,
}

/// Another node's VXLAN tunnel endpoint.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Vtep {
    /// The node's name.
    pub name: String,
    /// Its tunnel address (IPv4).
    pub address: String,
}

/// The switch's uplink to the other nodes.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct UplinkTopo {
    /// The host interface the tunnels leave through; it stays the kernel's.
    pub interface: String,
    /// This node's tunnel address; default the interface's first IPv4 address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// The overlay's UDP port.
    #[serde(default = "vxlan_port")]
    pub udp_port: u16,
}

fn vxlan_port() -> u16 {
    4789
}

/// What this node's host knows of an interface: its MTU and IPv4 addresses.
pub type InterfaceFacts = (u32, Vec<std::net::Ipv4Addr>);

/// The facts of interface `name` on this node (in the calling thread's network
/// namespace), or `None` when it does not exist.
pub fn interface_facts(name: &str) -> Option<InterfaceFacts> {
    pmd::afpacket::interface_info(name)
        .ok()
        .map(|i| (i.mtu, i.ipv4))
}

/// Bounds on what one pod, or the pods of one Kubernetes namespace, may take.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// CNI attachments (switch ports) of one pod: its primary interface, its extra
    /// networks and its VM's port.
    #[serde(default = "default_ports_per_pod")]
    pub ports_per_pod: u32,
    /// CNI attachments of all the pods of one Kubernetes namespace.
    #[serde(default = "default_ports_per_namespace")]
    pub ports_per_namespace: u32,
    /// CNI attachments on all the networks of one tenant, whatever their namespaces:
    /// by default half the switch's 256 ports, so no one tenant can take the port
    /// table from the others.
    #[serde(default = "default_ports_per_tenant")]
    pub ports_per_tenant: u32,
    /// Size at which a pod's `console.log` is rotated to `console.log.1` (the one before
    /// is dropped), e.g. `4Mi`: a pod's console takes at most twice this of the run
    /// directory (RAM).
    #[serde(default = "default_console_log_max")]
    pub console_log_max: String,
}

fn default_ports_per_pod() -> u32 {
    8
}

fn default_ports_per_namespace() -> u32 {
    128
}

fn default_ports_per_tenant() -> u32 {
    128
}

fn default_console_log_max() -> String {
    "4Mi".into()
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            ports_per_pod: default_ports_per_pod(),
            ports_per_namespace: default_ports_per_namespace(),
            ports_per_tenant: default_ports_per_tenant(),
            console_log_max: default_console_log_max(),
        }
    }
}

impl Limits {
    /// `console_log_max` in bytes (checked by [`Topology::check`]; the default when not).
    pub fn console_log_bytes(&self) -> u64 {
        parse_memory(&self.console_log_max).unwrap_or(4 << 20)
    }
}

/// The switch's resources.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SwitchSpec {
    /// Polling cores.
    #[serde(default = "default_cores")]
    pub cores: Vec<usize>,
    /// Packet buffers on huge pages.
    #[serde(default)]
    pub hugepages: bool,
    /// Longest idle sleep of a polling loop, µs.
    #[serde(default = "default_idle")]
    pub idle_max_us: u64,
    /// The uplink to other nodes (VXLAN).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uplink: Option<UplinkTopo>,
    /// The session table (stateful groups, services): capacity per polling core and
    /// timeouts; the switch spec's, with its defaults.
    #[serde(default, skip_serializing_if = "is_default_sessions")]
    pub sessions: api::switch::SessionSpec,
}

fn is_default_sessions(s: &api::switch::SessionSpec) -> bool {
    *s == api::switch::SessionSpec::default()
}

fn default_cores() -> Vec<usize> {
    vec![0]
}

fn default_idle() -> u64 {
    250
}

impl Default for SwitchSpec {
    fn default() -> SwitchSpec {
        SwitchSpec {
            cores: default_cores(),
            hugepages: false,
            idle_max_us: default_idle(),
            uplink: None,
            sessions: Default::default(),
        }
    }
}

/// A tenant network.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Network {
    /// Unique name.
    pub name: String,
    /// Owning tenant.
    pub tenant: String,
    /// IPv4 and/or IPv6 prefixes, e.g. `10.0.0.0/24`, `fd00:a::/64`.
    pub cidrs: Vec<String>,
    /// 802.1Q VLAN id (1..=4094); exclusive with `vni`.
    #[serde(default)]
    pub vlan: Option<u16>,
    /// VXLAN network identifier (1..=16777215); exclusive with `vlan`. The network
    /// spans every node with the same VNI.
    #[serde(default)]
    pub vni: Option<u32>,
    /// The block of the network's prefix this node hands out addresses from (default:
    /// the whole first IPv4 prefix). Nodes sharing a VNI network take disjoint blocks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// Gateway addresses (the router's address on this network), one per family.
    #[serde(default)]
    pub gateway: Vec<String>,
    /// Kubernetes namespaces whose pods may join this network as an extra network (the
    /// `k8s.v1.cni.cncf.io/networks` annotation) though their primary network is another
    /// tenant's. Without it only pods of this network's tenant may.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_namespaces: Vec<String>,
}

/// A tenant's router.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Router {
    /// Unique name.
    pub name: String,
    /// Owning tenant; it may only join that tenant's networks.
    pub tenant: String,
    /// Networks it joins (with their `gateway` addresses).
    pub networks: Vec<String>,
    /// Static routes.
    #[serde(default)]
    pub routes: Vec<Route>,
}

/// A static route.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Destination prefix.
    pub to: String,
    /// Next hop, on one of the router's networks.
    pub via: String,
}

/// A security group: allow rules for traffic into (`ingress`) and out of (`egress`)
/// the interfaces that use it.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SecurityGroup {
    /// Unique name.
    pub name: String,
    /// Drop ingress traffic that no rule allows (otherwise the rules are documentation
    /// of what is expected and nothing is dropped).
    #[serde(default)]
    pub default_deny_ingress: bool,
    /// Ingress allow rules (`cidr`: the source).
    #[serde(default)]
    pub ingress: Vec<Rule>,
    /// Drop egress traffic that no egress rule allows.
    #[serde(default)]
    pub default_deny_egress: bool,
    /// Egress allow rules (`cidr`: the destination).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<Rule>,
    /// Replies to what a rule allowed pass without rules of their own (connection
    /// tracking), as Neutron's groups. Default true; `false` holds every packet to the
    /// rules. An interface's groups are all stateful or all stateless.
    #[serde(default = "yes")]
    pub stateful: bool,
}

/// One allow rule.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Protocol.
    pub protocol: Protocol,
    /// Source prefix (default: anywhere).
    #[serde(default)]
    pub cidr: Option<String>,
    /// Destination ports, `80` or `1000-2000` (TCP and UDP only).
    #[serde(default)]
    pub ports: Option<String>,
}

/// Protocols a rule can name.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Any protocol.
    Any,
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// ICMP and ICMPv6.
    Icmp,
}

/// Which hypervisor runs a pod.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum HypervisorSpec {
    /// `kvm` with vmx/svm, `qemu` otherwise.
    #[default]
    Auto,
    /// vnfhost's KVM monitor.
    Kvm,
    /// QEMU microvm.
    Qemu,
}

/// A pod VM.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Pod {
    /// Unique name.
    pub name: String,
    /// Hypervisor backend.
    #[serde(default)]
    pub hypervisor: HypervisorSpec,
    /// Kernel image (default: the guest image built by `vmm/guest/build-guest.sh`).
    #[serde(default)]
    pub kernel: Option<String>,
    /// Initramfs (default: the guest image's).
    #[serde(default)]
    pub initrd: Option<String>,
    /// Virtual CPUs.
    #[serde(default = "one")]
    pub vcpus: u8,
    /// Guest RAM, e.g. `256Mi` or `1Gi`.
    pub memory: String,
    /// Host CPUs for the vCPU threads.
    #[serde(default)]
    pub cpus: Vec<usize>,
    /// Guest RAM on huge pages.
    #[serde(default)]
    pub hugepages: bool,
    /// Network interfaces, `eth0` first.
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    /// The workload. Without `image`: a shell command the guest's init runs
    /// (`vnf.run=`), and without it the guest runs its console shell. With `image`: the
    /// container's arguments as a list (the image's entrypoint stays; no shell parses
    /// them), and without it the image's own command. The pod ends when it exits, with
    /// its status.
    #[serde(default)]
    pub command: Option<PodCommand>,
    /// A container image to run in the pod VM (`oci-archive:PATH`,
    /// `docker-archive:PATH`, or a name in the local image store), as `vnfhost run` does.
    #[serde(default)]
    pub image: Option<String>,
    /// `KEY=VALUE` for the image's process (with `image`).
    #[serde(default)]
    pub env: Vec<String>,
    /// Host files or block devices mounted in the container as disks (with `image`).
    #[serde(default)]
    pub volumes: Vec<PodVolume>,
    /// What the daemon does when the pod's VM exits.
    #[serde(default)]
    pub restart: RestartPolicy,
}

/// A pod's `command:`: a shell line (guest image) or a list of arguments (`image:`).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum PodCommand {
    /// `command: "ping -c 1 10.0.0.1"`.
    Line(String),
    /// `command: [ping, -c, "1", 10.0.0.1]`.
    Args(Vec<String>),
}

/// A pod's volume: a host file or block device with a file system, as a virtio-blk disk.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PodVolume {
    /// The host file or block device.
    pub path: String,
    /// Where it is mounted in the container.
    #[serde(rename = "mountPath")]
    pub mount_path: String,
    /// Mounted read-only.
    #[serde(default, rename = "readOnly")]
    pub read_only: bool,
}

/// What the daemon does when a pod's VM exits (as Kubernetes' `restartPolicy`).
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Start it again, whatever its exit status (with back-off).
    #[default]
    Always,
    /// Start it again when it failed (non-zero exit status).
    OnFailure,
    /// Leave it stopped.
    Never,
}

fn one() -> u8 {
    1
}

/// A pod's interface: a port on the switch.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Interface {
    /// The network it joins.
    pub network: String,
    /// Its MAC.
    pub mac: String,
    /// Its addresses with prefix length (`10.0.0.1/24`); the port may send from these only.
    #[serde(default)]
    pub ips: Vec<String>,
    /// Queue pairs.
    #[serde(default = "one_u16")]
    pub queues: u16,
    /// Security groups applied to traffic into this interface (their union).
    #[serde(default)]
    pub security_groups: Vec<String>,
    /// Port security: the interface may send only from its `mac` (and, when `ips` are
    /// given, only from those addresses). On by default; `false` lets it send from any
    /// MAC and address, as a VNF that routes or bridges other hosts' traffic needs.
    #[serde(default = "yes")]
    pub anti_spoofing: bool,
    /// The pod is an IPv6 router on this network (a vRouter VNF): port security then
    /// lets it send router advertisements and redirects, which it drops from any other
    /// pod. Off by default.
    #[serde(default)]
    pub router: bool,
}

fn one_u16() -> u16 {
    1
}

fn yes() -> bool {
    true
}

/// An IP prefix (`ADDR/LEN`; host bits may be set for interface addresses): the API's
/// [`Prefix`](api::Prefix).
pub type Cidr = api::Prefix;

/// Parses `256Mi`, `1Gi`, `512M`, `1G` into bytes.
pub fn parse_memory(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?} is not a size like 256Mi or 1Gi"))?;
    let mul: u64 = match unit {
        "Ki" | "K" => 1 << 10,
        "Mi" | "M" => 1 << 20,
        "Gi" | "G" => 1 << 30,
        _ => return Err(format!("{s:?}: unit must be Ki, Mi or Gi")),
    };
    n.checked_mul(mul)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// Why an interface address cannot be a host's: the network or broadcast address of an
/// IPv4 prefix shorter than /31.
fn reserved_host(c: Cidr) -> Option<&'static str> {
    let IpAddr::V4(v4) = c.addr else { return None };
    if c.len >= 31 {
        return None;
    }
    let host_bits = (1u32 << (32 - c.len)) - 1;
    match u32::from(v4) & host_bits {
        0 => Some("the network's own address"),
        h if h == host_bits => Some("the network's broadcast address"),
        _ => None,
    }
}

/// One problem found by [`Topology::check`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Field path, e.g. `pods[1].interfaces[0].network`.
    pub path: String,
    /// What is wrong.
    pub what: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.what)
    }
}

/// What the host offers, for the checks that depend on it.
#[derive(Debug, Clone, Copy)]
pub struct Host {
    /// Online CPUs.
    pub cpus: usize,
    /// Free 2 MiB huge pages.
    pub free_hugepages: u64,
    /// Looks an interface up (the uplink's).
    pub interface: fn(&str) -> Option<InterfaceFacts>,
}

impl Host {
    /// This machine.
    pub fn current() -> Host {
        Host {
            cpus: pmd::sched::online_cpus(),
            free_hugepages: vmm::memory::free_huge_pages(),
            interface: interface_facts,
        }
    }
}

/// Whether `name` can name a service: 1-63 of `[A-Za-z0-9._-]`.
pub fn valid_service_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// A service as the switch runs it: its tenant's router, and its backends' addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedService {
    /// The router whose tenant owns it.
    pub router: String,
    /// The backends' addresses.
    pub backends: Vec<std::net::Ipv4Addr>,
    /// Affinity timeout (s), if ClientIP.
    pub affinity_s: Option<u32>,
}

/// The problems of a list of other nodes' tunnel endpoints, named `AT[i].…`: names
/// empty or used twice, addresses not unicast IPv4, listed twice, or `local` (this
/// node's own tunnel address).
fn vtep_problems(vteps: &[Vtep], local: Option<std::net::Ipv4Addr>, at: &str) -> Vec<Problem> {
    let mut p = Vec::new();
    let mut bad = |path: String, what: String| p.push(Problem { path, what });
    let mut names = HashSet::new();
    let mut addrs = HashSet::new();
    for (i, v) in vteps.iter().enumerate() {
        let at = format!("{at}[{i}]");
        if v.name.is_empty() || !names.insert(v.name.as_str()) {
            bad(
                format!("{at}.name"),
                format!("{:?} is empty or used twice", v.name),
            );
        }
        match v.address.parse::<std::net::Ipv4Addr>() {
            Ok(a) if a.is_unspecified() || a.is_multicast() || a.is_broadcast() => bad(
                format!("{at}.address"),
                format!("{a} is not a unicast address"),
            ),
            Ok(a) if Some(a) == local => bad(
                format!("{at}.address"),
                format!("{a} is this node's own tunnel address"),
            ),
            Ok(a) => {
                if !addrs.insert(a) {
                    bad(format!("{at}.address"), format!("{a} is listed twice"));
                }
            }
            Err(_) => bad(
                format!("{at}.address"),
                format!("{:?} is not an IPv4 address", v.address),
            ),
        }
    }
    p
}

/// A topology with a node agent's [`Overlay`] merged in ([`Topology::with_overlay`]),
/// and where each merged field came from, so that a problem names the field its author
/// wrote.
#[derive(Debug, Clone)]
pub struct Merged {
    /// The topology to check and plan.
    pub topology: Topology,
    /// The overlay's VTEPs, checked apart when there is no uplink to carry them.
    overlay_vteps: Vec<Vtep>,
    /// `topology.vteps[i]` for `i >= statics` is `overlay.vteps[from_overlay[i - statics]]`.
    statics: usize,
    from_overlay: Vec<usize>,
    /// `topology.switch.uplink` is the overlay's.
    uplink_from_overlay: bool,
}

impl Merged {
    /// [`Topology::check`] of the merged topology, with the overlay's fields named
    /// `overlay.uplink.…` and `overlay.vteps[i].…`. Without an uplink the overlay's
    /// VTEPs are not merged (nothing could reach them) but still checked.
    pub fn check(&self, host: Host) -> Vec<Problem> {
        let mut problems = self.topology.check(host);
        for p in &mut problems {
            p.path = self.rename(&p.path);
        }
        if self.topology.switch.uplink.is_none() {
            problems.extend(vtep_problems(&self.overlay_vteps, None, "overlay.vteps"));
        }
        problems
    }

    fn rename(&self, path: &str) -> String {
        if self.uplink_from_overlay {
            if let Some(rest) = path.strip_prefix("switch.uplink") {
                return format!("overlay.uplink{rest}");
            }
        }
        let Some(rest) = path.strip_prefix("vteps[") else {
            return path.to_string();
        };
        let Some((i, rest)) = rest.split_once(']') else {
            return path.to_string();
        };
        match i
            .parse::<usize>()
            .ok()
            .and_then(|i| i.checked_sub(self.statics))
        {
            Some(k) => match self.from_overlay.get(k) {
                Some(j) => format!("overlay.vteps[{j}]{rest}"),
                None => path.to_string(),
            },
            None => path.to_string(),
        }
    }
}

impl Topology {
    /// The VLAN that carries network `name` in the switch: its `vlan`, VLAN 1 when it
    /// has neither `vlan` nor `vni`, and for a VXLAN network an internal VLAN, the
    /// lowest that no `vlan` takes, in order of VNI (VLANs never leave the node).
    pub fn vlan_of(&self, name: &str) -> Option<u16> {
        let n = self.networks.iter().find(|n| n.name == name)?;
        match (n.vlan, n.vni) {
            (Some(v), _) => Some(v),
            (None, None) => Some(1),
            (None, Some(vni)) => {
                let taken: HashSet<u16> = self.networks.iter().filter_map(|n| n.vlan).collect();
                let mut vnis: Vec<u32> = self.networks.iter().filter_map(|n| n.vni).collect();
                vnis.sort_unstable();
                let rank = vnis.iter().position(|&v| v == vni)?;
                (2..=4094u16).filter(|v| !taken.contains(v)).nth(rank)
            }
        }
    }

    /// This topology with what a node agent learnt of the cluster: its uplink when the
    /// topology has none, and the other nodes' VTEPs after the static `vteps` (one
    /// whose address or name a static entry has is left out: the static one wins). The
    /// daemon plans nothing else; see [`api::daemon::Overlay`].
    pub fn with_overlay(&self, o: &Overlay) -> Merged {
        let mut t = self.clone();
        let mut uplink_from_overlay = false;
        if t.switch.uplink.is_none() {
            if let Some(u) = &o.uplink {
                t.switch.uplink = Some(UplinkTopo {
                    interface: u.interface.clone(),
                    address: u.address.clone(),
                    udp_port: vxlan_port(),
                });
                uplink_from_overlay = true;
            }
        }
        let statics = t.vteps.len();
        let mut from_overlay = Vec::new();
        if t.switch.uplink.is_some() {
            for (j, v) in o.vteps.iter().enumerate() {
                let taken = self
                    .vteps
                    .iter()
                    .any(|s| s.address == v.address || s.name == v.name);
                if !taken {
                    t.vteps.push(Vtep {
                        name: v.name.clone(),
                        address: v.address.clone(),
                    });
                    from_overlay.push(j);
                }
            }
        }
        Merged {
            topology: t,
            overlay_vteps: o
                .vteps
                .iter()
                .map(|v| Vtep {
                    name: v.name.clone(),
                    address: v.address.clone(),
                })
                .collect(),
            statics,
            from_overlay,
            uplink_from_overlay,
        }
    }

    /// This node's tunnel address: `switch.uplink.address`, or the first IPv4 address
    /// of the uplink interface.
    pub fn vtep_address(&self, host: &Host) -> Option<std::net::Ipv4Addr> {
        let u = self.switch.uplink.as_ref()?;
        match &u.address {
            Some(a) => a.parse().ok(),
            None => (host.interface)(&u.interface).and_then(|(_, a)| a.first().copied()),
        }
    }

    /// The pods' MTU on VXLAN networks: the uplink's less the encapsulation (50).
    pub fn overlay_mtu(&self, host: &Host) -> Option<u32> {
        let u = self.switch.uplink.as_ref()?;
        (host.interface)(&u.interface).map(|(mtu, _)| mtu.saturating_sub(50))
    }
}

/// Huge pages (2 MiB) the switch takes per port receive queue when `hugepages: true`:
/// each queue's gather pool (`pmd::vhost_user`, 32 buffers of the largest frame) fits one.
pub const SWITCH_HUGEPAGES_PER_QUEUE: u64 = 1;

/// Loads and checks `path`; the error lists every problem, prefixed with the file name.
pub fn load(path: &Path, host: Host) -> Result<Topology, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let t = parse(&text).map_err(|e| format!("{}:{e}", path.display()))?;
    let problems = t.check(host);
    if problems.is_empty() {
        Ok(t)
    } else {
        let list: Vec<String> = problems
            .iter()
            .map(|p| format!("{}: {p}", path.display()))
            .collect();
        Err(list.join("\n"))
    }
}

/// Parses YAML text; errors read `LINE:COLUMN: PATH: what`.
pub fn parse(text: &str) -> Result<Topology, String> {
    let de = serde_yaml::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let at = inner
            .location()
            .map(|l| format!("{}:{}: ", l.line(), l.column()))
            .unwrap_or_else(|| " ".into());
        // serde_yaml appends " at line L column C"; the position is already in front.
        let mut msg = inner.to_string();
        if let Some(i) = msg.find(" at line ") {
            msg.truncate(i);
        }
        // ... and sometimes starts with its own path, which ours replaces.
        if let Some((head, rest)) = msg.split_once(": ") {
            let pathlike = head
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "[]._-".contains(c));
            if pathlike && !head.is_empty() {
                msg = rest.to_string();
            }
        }
        if path == "." || path.is_empty() {
            format!("{at}{msg}")
        } else {
            format!("{at}{path}: {msg}")
        }
    })
}

/// Why `name` cannot name a network, router, group or pod, if it cannot: names end up in
/// port names and socket paths.
fn bad_name(name: &str) -> Option<String> {
    let ok = !name.is_empty()
        && name.len() <= 24
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && !name.starts_with('-');
    (!ok).then(|| format!("{name:?} must be 1-24 of [A-Za-z0-9_-], not starting with -"))
}

impl Topology {
    /// The router and backend addresses of `svc`, or its problems as (field, message).
    pub fn resolve_service(
        &self,
        svc: &api::daemon::Service,
    ) -> Result<ResolvedService, Vec<(String, String)>> {
        let mut bad = Vec::new();
        let Some(net) = self.networks.iter().find(|n| n.name == svc.network) else {
            return Err(vec![(
                "network".into(),
                format!("no network {:?}", svc.network),
            )]);
        };
        let tenant = &net.tenant;
        let Some(router) = self
            .routers
            .iter()
            .find(|r| r.tenant == *tenant && r.networks.contains(&svc.network))
        else {
            return Err(vec![(
                "network".into(),
                format!(
                    "network {:?} has no router: clients reach a VIP through their gateway",
                    svc.network
                ),
            )]);
        };
        // The tenant's prefixes that the router joins (the VIP's reach).
        let prefixes: Vec<(String, Cidr)> = self
            .networks
            .iter()
            .filter(|n| n.tenant == *tenant && router.networks.contains(&n.name))
            .flat_map(|n| {
                n.cidrs
                    .iter()
                    .filter_map(|c| Cidr::parse(c).ok())
                    .map(move |c| (n.name.clone(), c))
            })
            .collect();
        let vip = std::net::IpAddr::V4(svc.vip);
        if svc.vip.is_unspecified()
            || svc.vip.is_loopback()
            || svc.vip.is_multicast()
            || svc.vip.is_broadcast()
            || svc.vip.is_link_local()
        {
            bad.push((
                "vip".into(),
                format!("{} is not a unicast address", svc.vip),
            ));
        }
        for n in self.networks.iter().filter(|n| n.tenant == *tenant) {
            let pool = n.pool.as_deref().and_then(|p| Cidr::parse(p).ok());
            for c in n.cidrs.iter().filter_map(|c| Cidr::parse(c).ok()) {
                if c.contains(vip) {
                    let what = match pool {
                        Some(p) if p.contains(vip) => format!("its pool {p}"),
                        _ => format!("its prefix {c}"),
                    };
                    bad.push((
                        "vip".into(),
                        format!(
                            "{} is inside network {}'s addresses ({what}): pods would ask \
                             for it by ARP instead of sending it to their gateway; take a \
                             VIP off the tenant's networks (a service range)",
                            svc.vip, n.name
                        ),
                    ));
                }
            }
        }
        if svc.ports.is_empty() {
            bad.push(("ports".into(), "a service needs a port".into()));
        }
        for (j, p) in svc.ports.iter().enumerate() {
            if p.port == 0 {
                bad.push((
                    format!("ports[{j}].port"),
                    "0 is not a port (1..=65535)".into(),
                ));
            }
            if p.target_port == Some(0) {
                bad.push((
                    format!("ports[{j}].target_port"),
                    "0 is not a port (1..=65535)".into(),
                ));
            }
        }
        if let Some(t) = svc.affinity_timeout_s {
            if !(1..=86_400).contains(&t) {
                bad.push((
                    "affinity_timeout_s".into(),
                    format!("{t} is outside 1..=86400"),
                ));
            }
        }
        if svc.backends.len() > vswitch::lb::MAX_BACKENDS {
            bad.push((
                "backends".into(),
                format!(
                    "{} of them; a service takes at most {}",
                    svc.backends.len(),
                    vswitch::lb::MAX_BACKENDS
                ),
            ));
        }
        let mut backends = Vec::new();
        for (j, b) in svc.backends.iter().enumerate() {
            let addr = match b.parse::<std::net::Ipv4Addr>() {
                Ok(a) => Some(a),
                Err(_) => match self.pods.iter().find(|p| p.name == *b) {
                    None => {
                        bad.push((
                            format!("backends[{j}]"),
                            format!("{b:?} is neither an IPv4 address nor a pod"),
                        ));
                        continue;
                    }
                    Some(pod) => {
                        let a = pod
                            .interfaces
                            .iter()
                            .filter(|i| prefixes.iter().any(|(n, _)| *n == i.network))
                            .flat_map(|i| i.ips.iter())
                            .filter_map(|a| a.split('/').next()?.parse::<std::net::Ipv4Addr>().ok())
                            .next();
                        if a.is_none() {
                            bad.push((
                                format!("backends[{j}]"),
                                format!(
                                    "pod {b:?} has no IPv4 address on a network of router {}",
                                    router.name
                                ),
                            ));
                        }
                        a
                    }
                },
            };
            let Some(a) = addr else { continue };
            if !prefixes
                .iter()
                .any(|(_, c)| c.contains(std::net::IpAddr::V4(a)))
            {
                let other = self
                    .networks
                    .iter()
                    .find(|n| {
                        n.tenant != *tenant
                            && n.cidrs
                                .iter()
                                .filter_map(|c| Cidr::parse(c).ok())
                                .any(|c| c.contains(std::net::IpAddr::V4(a)))
                    })
                    .map(|n| format!(" (it is on tenant {:?}'s network {})", n.tenant, n.name))
                    .unwrap_or_default();
                bad.push((
                    format!("backends[{j}]"),
                    format!(
                        "{a} is on none of tenant {tenant:?}'s networks that router {} joins{other}",
                        router.name
                    ),
                ));
                continue;
            }
            backends.push(a);
        }
        if !bad.is_empty() {
            return Err(bad);
        }
        Ok(ResolvedService {
            router: router.name.clone(),
            backends,
            affinity_s: match svc.affinity {
                api::daemon::Affinity::None => None,
                api::daemon::Affinity::ClientIp => Some(svc.affinity_timeout_s.unwrap_or(10_800)),
            },
        })
    }

    /// Huge pages (2 MiB) the topology takes: pods' RAM where they ask for huge pages,
    /// and the switch's per-queue pools where it does.
    pub fn hugepages_needed(&self) -> u64 {
        let mut n = 0;
        for pod in &self.pods {
            if pod.hugepages {
                n += parse_memory(&pod.memory).unwrap_or(0) / (2 << 20);
            }
            if self.switch.hugepages {
                n += pod
                    .interfaces
                    .iter()
                    .map(|i| SWITCH_HUGEPAGES_PER_QUEUE * u64::from(i.queues))
                    .sum::<u64>();
            }
        }
        n
    }

    /// Everything types cannot check; empty when the topology can be applied.
    pub fn check(&self, host: Host) -> Vec<Problem> {
        let mut p = Vec::new();
        let mut bad = |path: String, what: String| p.push(Problem { path, what });
        let named = self
            .networks
            .iter()
            .enumerate()
            .map(|(i, n)| (format!("networks[{i}].name"), &n.name))
            .chain(
                self.routers
                    .iter()
                    .enumerate()
                    .map(|(i, n)| (format!("routers[{i}].name"), &n.name)),
            )
            .chain(
                self.security_groups
                    .iter()
                    .enumerate()
                    .map(|(i, n)| (format!("security_groups[{i}].name"), &n.name)),
            )
            .chain(
                self.pods
                    .iter()
                    .enumerate()
                    .map(|(i, n)| (format!("pods[{i}].name"), &n.name)),
            );
        for (at, name) in named {
            if let Some(why) = bad_name(name) {
                bad(at, why);
            }
        }
        for (i, n) in self.networks.iter().enumerate() {
            for (k, ns) in n.allowed_namespaces.iter().enumerate() {
                // A Kubernetes namespace name: a DNS label.
                let ok = !ns.is_empty()
                    && ns.len() <= 63
                    && ns
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                    && !ns.starts_with('-')
                    && !ns.ends_with('-');
                if !ok {
                    bad(
                        format!("networks[{i}].allowed_namespaces[{k}]"),
                        format!("{ns:?} is not a namespace name (1-63 of [a-z0-9-])"),
                    );
                }
            }
        }
        let l = &self.limits;
        if !(1..=4096).contains(&l.ports_per_pod) {
            bad(
                "limits.ports_per_pod".into(),
                format!("{} is not in 1..=4096", l.ports_per_pod),
            );
        }
        if !(1..=65536).contains(&l.ports_per_namespace) {
            bad(
                "limits.ports_per_namespace".into(),
                format!("{} is not in 1..=65536", l.ports_per_namespace),
            );
        }
        if !(1..=65536).contains(&l.ports_per_tenant) {
            bad(
                "limits.ports_per_tenant".into(),
                format!("{} is not in 1..=65536", l.ports_per_tenant),
            );
        }
        match parse_memory(&l.console_log_max) {
            Ok(b) if (4 << 10..=1 << 30).contains(&b) => {}
            Ok(_) => bad(
                "limits.console_log_max".into(),
                format!("{:?} is not in 4Ki..=1Gi", l.console_log_max),
            ),
            Err(e) => bad("limits.console_log_max".into(), e),
        }
        let untagged: Vec<&str> = self
            .networks
            .iter()
            .filter(|n| n.vlan.is_none() && n.vni.is_none())
            .map(|n| n.name.as_str())
            .collect();
        if untagged.len() > 1 {
            bad(
                "networks".into(),
                format!(
                    "networks {untagged:?} are all untagged (VLAN 1); give each but one a vlan"
                ),
            );
        }
        if let (Some(u), Some(n)) = (
            untagged.first(),
            self.networks.iter().find(|n| n.vlan == Some(1)),
        ) {
            bad(
                "networks".into(),
                format!(
                    "network {:?} has vlan 1, which is untagged network {u:?}'s",
                    n.name
                ),
            );
        }

        let mut names = HashSet::new();
        let mut nets: HashMap<&str, (&Network, Vec<Cidr>)> = HashMap::new();
        let mut vlans = HashMap::new();
        let mut vnis = HashMap::new();
        for (i, n) in self.networks.iter().enumerate() {
            let at = format!("networks[{i}]");
            if n.name.is_empty() || !names.insert(("network", n.name.as_str())) {
                bad(
                    format!("{at}.name"),
                    format!("{:?} is empty or used twice", n.name),
                );
            }
            if n.cidrs.is_empty() {
                bad(
                    format!("{at}.cidrs"),
                    "a network needs at least one prefix".into(),
                );
            }
            let mut cidrs = vec![];
            for (j, c) in n.cidrs.iter().enumerate() {
                match Cidr::parse(c) {
                    Ok(c) => cidrs.push(c),
                    Err(e) => bad(format!("{at}.cidrs[{j}]"), e),
                }
            }
            match (n.vlan, n.vni) {
                (Some(_), Some(_)) => bad(at.clone(), "give vlan or vni, not both".into()),
                (Some(v), None) if !(1..=4094).contains(&v) => {
                    bad(format!("{at}.vlan"), format!("{v} is outside 1..=4094"))
                }
                (Some(v), None) => {
                    if let Some(other) = vlans.insert(v, n.name.clone()) {
                        bad(
                            format!("{at}.vlan"),
                            format!("VLAN {v} is already network {other:?}'s"),
                        );
                    }
                }
                (None, Some(v)) if !(1..=0xff_ffff).contains(&v) => {
                    bad(format!("{at}.vni"), format!("{v} is outside 1..=16777215"))
                }
                (None, Some(v)) => {
                    if let Some(other) = vnis.insert(v, n.name.clone()) {
                        bad(
                            format!("{at}.vni"),
                            format!("VNI {v} is already network {other:?}'s"),
                        );
                    }
                    if self.switch.uplink.is_none() {
                        bad(
                            format!("{at}.vni"),
                            "a VXLAN network needs switch.uplink to reach the other nodes".into(),
                        );
                    }
                }
                (None, None) => {}
            }
            let v4 = n
                .gateway
                .iter()
                .filter(|g| g.parse::<std::net::Ipv4Addr>().is_ok())
                .count();
            if v4 > 1 || n.gateway.len() - v4 > 1 {
                bad(
                    format!("{at}.gateway"),
                    "at most one gateway address per family".into(),
                );
            }
            for (j, g) in n.gateway.iter().enumerate() {
                match g.parse::<IpAddr>() {
                    Ok(a) if cidrs.iter().any(|c| c.contains(a)) => {}
                    Ok(a) => bad(
                        format!("{at}.gateway[{j}]"),
                        format!("{a} is not inside the network's prefixes"),
                    ),
                    Err(_) => bad(
                        format!("{at}.gateway[{j}]"),
                        format!("{g:?} is not an IP address"),
                    ),
                }
            }
            if let Some(p) = &n.pool {
                match Cidr::parse(p) {
                    Ok(c) if c.addr.is_ipv4() && cidrs.iter().any(|n| n.contains_prefix(&c)) => {}
                    Ok(c) => bad(
                        format!("{at}.pool"),
                        format!("{c} is not inside the network's IPv4 prefixes"),
                    ),
                    Err(e) => bad(format!("{at}.pool"), e),
                }
            }
            nets.insert(n.name.as_str(), (n, cidrs));
        }
        if let Some(u) = &self.switch.uplink {
            match (host.interface)(&u.interface) {
                None => bad(
                    "switch.uplink.interface".into(),
                    format!("no interface {:?} on this node", u.interface),
                ),
                Some((mtu, addrs)) => {
                    match &u.address {
                        None if addrs.is_empty() => bad(
                            "switch.uplink.address".into(),
                            format!(
                                "interface {} has no IPv4 address; give one or say address:",
                                u.interface
                            ),
                        ),
                        None => {}
                        Some(a) => match a.parse::<std::net::Ipv4Addr>() {
                            Ok(a) if addrs.contains(&a) => {}
                            Ok(a) => bad(
                                "switch.uplink.address".into(),
                                format!(
                                    "{a} is not an address of {} on this node (it has {})",
                                    u.interface,
                                    if addrs.is_empty() {
                                        "none".to_string()
                                    } else {
                                        addrs
                                            .iter()
                                            .map(|a| a.to_string())
                                            .collect::<Vec<_>>()
                                            .join(", ")
                                    }
                                ),
                            ),
                            Err(_) => bad(
                                "switch.uplink.address".into(),
                                format!("{a:?} is not an IPv4 address"),
                            ),
                        },
                    }
                    if mtu < 68 + 50 {
                        bad(
                            "switch.uplink.interface".into(),
                            format!("MTU {mtu} leaves no room for VXLAN's 50 bytes"),
                        );
                    }
                }
            }
            if u.udp_port == 0 {
                bad("switch.uplink.udp_port".into(), "0 is not a port".into());
            }
        }
        if self.switch.uplink.is_none() {
            for i in 0..self.vteps.len() {
                bad(
                    format!("vteps[{i}]"),
                    "VTEPs need switch.uplink to be reached".into(),
                );
            }
        }
        for q in vtep_problems(&self.vteps, self.vtep_address(&host), "vteps") {
            bad(q.path, q.what);
        }
        // Prefixes of one tenant must not overlap (tenants are separate address spaces).
        let list: Vec<(usize, &Network, &Vec<Cidr>)> = self
            .networks
            .iter()
            .enumerate()
            .filter_map(|(i, n)| nets.get(n.name.as_str()).map(|(n, c)| (i, *n, c)))
            .collect();
        for (a, (i, na, ca)) in list.iter().enumerate() {
            for (j, nb, cb) in &list[a + 1..] {
                if na.tenant != nb.tenant || na.name == nb.name {
                    continue;
                }
                for x in ca.iter() {
                    for y in cb.iter() {
                        if x.overlaps(y) {
                            bad(
                                format!("networks[{j}].cidrs"),
                                format!(
                                    "{y} overlaps {x} of network {:?} (networks[{i}]) in tenant {:?}",
                                    na.name, na.tenant
                                ),
                            );
                        }
                    }
                }
            }
        }

        let mut joined = HashMap::new();
        for (i, r) in self.routers.iter().enumerate() {
            let at = format!("routers[{i}]");
            if r.name.is_empty() || !names.insert(("router", r.name.as_str())) {
                bad(
                    format!("{at}.name"),
                    format!("{:?} is empty or used twice", r.name),
                );
            }
            for (j, n) in r.networks.iter().enumerate() {
                match nets.get(n.as_str()) {
                    None => bad(
                        format!("{at}.networks[{j}]"),
                        format!("unknown network {n:?}"),
                    ),
                    Some((net, _)) if net.tenant != r.tenant => bad(
                        format!("{at}.networks[{j}]"),
                        format!(
                            "network {n:?} belongs to tenant {:?}, the router to {:?}",
                            net.tenant, r.tenant
                        ),
                    ),
                    Some((net, _))
                        if !net
                            .gateway
                            .iter()
                            .any(|g| g.parse::<std::net::Ipv4Addr>().is_ok()) =>
                    {
                        bad(
                            format!("{at}.networks[{j}]"),
                            format!("network {n:?} has no IPv4 gateway address for the router"),
                        )
                    }
                    Some(_) => {
                        if let Some(other) = joined.insert(n.as_str(), r.name.as_str()) {
                            bad(
                                format!("{at}.networks[{j}]"),
                                format!("network {n:?} is already joined by router {other:?}"),
                            );
                        }
                    }
                }
            }
            for (j, rt) in r.routes.iter().enumerate() {
                if let Err(e) = Cidr::parse(&rt.to) {
                    bad(format!("{at}.routes[{j}].to"), e);
                }
                match rt.via.parse::<IpAddr>() {
                    Ok(a) => {
                        let on_link = r.networks.iter().any(|n| {
                            nets.get(n.as_str())
                                .is_some_and(|(_, cs)| cs.iter().any(|c| c.contains(a)))
                        });
                        if !on_link {
                            bad(
                                format!("{at}.routes[{j}].via"),
                                format!("{a} is on none of the router's networks"),
                            );
                        }
                    }
                    Err(_) => bad(
                        format!("{at}.routes[{j}].via"),
                        format!("{:?} is not an IP address", rt.via),
                    ),
                }
            }
        }

        for (i, g) in self.security_groups.iter().enumerate() {
            let at = format!("security_groups[{i}]");
            if g.name.is_empty() || !names.insert(("security group", g.name.as_str())) {
                bad(
                    format!("{at}.name"),
                    format!("{:?} is empty or used twice", g.name),
                );
            }
            let rules = g
                .ingress
                .iter()
                .enumerate()
                .map(|(j, r)| (format!("{at}.ingress[{j}]"), r))
                .chain(
                    g.egress
                        .iter()
                        .enumerate()
                        .map(|(j, r)| (format!("{at}.egress[{j}]"), r)),
                );
            for (rat, r) in rules {
                if let Some(c) = &r.cidr {
                    if let Err(e) = Cidr::parse(c) {
                        bad(format!("{rat}.cidr"), e);
                    }
                }
                if let Some(ports) = &r.ports {
                    if !matches!(r.protocol, Protocol::Tcp | Protocol::Udp) {
                        bad(
                            format!("{rat}.ports"),
                            "ports need protocol tcp or udp".into(),
                        );
                    }
                    let range = ports
                        .split_once('-')
                        .map(|(a, b)| (a.parse::<u16>(), b.parse::<u16>()))
                        .unwrap_or((ports.parse(), ports.parse()));
                    match range {
                        (Ok(a), Ok(b)) if a >= 1 && a <= b => {}
                        _ => bad(
                            format!("{rat}.ports"),
                            format!("{ports:?} is not a port or a range like 1000-2000"),
                        ),
                    }
                }
            }
        }
        let groups: HashSet<&str> = self
            .security_groups
            .iter()
            .map(|g| g.name.as_str())
            .collect();

        let sw = &self.switch;
        for (j, c) in sw.cores.iter().enumerate() {
            if *c >= host.cpus {
                bad(
                    format!("switch.cores[{j}]"),
                    format!("CPU {c} does not exist (this host has {})", host.cpus),
                );
            }
        }
        let mut seen = HashSet::new();
        for (j, c) in sw.cores.iter().enumerate() {
            if !seen.insert(*c) {
                bad(
                    format!("switch.cores[{j}]"),
                    format!("CPU {c} is listed twice"),
                );
            }
        }
        if sw.cores.len() > 1 && !self.routers.is_empty() {
            bad(
                "switch.cores".into(),
                "routers run on one polling core so far; give one core or no routers".into(),
            );
        }
        let ss = &sw.sessions;
        if !(16..=vswitch::conntrack::MAX_CAPACITY as u32).contains(&ss.capacity) {
            bad(
                "switch.sessions.capacity".into(),
                format!(
                    "{} is outside 16..={}",
                    ss.capacity,
                    vswitch::conntrack::MAX_CAPACITY
                ),
            );
        }
        for (f, v) in [
            ("tcp_established_s", ss.tcp_established_s),
            ("tcp_opening_s", ss.tcp_opening_s),
            ("tcp_closing_s", ss.tcp_closing_s),
            ("udp_s", ss.udp_s),
            ("other_s", ss.other_s),
        ] {
            if !(1..=604_800).contains(&v) {
                bad(
                    format!("switch.sessions.{f}"),
                    format!("{v} s is outside 1..=604800 (one week)"),
                );
            }
        }
        if sw.cores.is_empty() {
            bad(
                "switch.cores".into(),
                "the switch needs at least one polling core".into(),
            );
        }
        let mut macs = HashMap::new();
        let mut ips: HashMap<(String, IpAddr), String> = HashMap::new();
        for (i, pod) in self.pods.iter().enumerate() {
            let at = format!("pods[{i}]");
            if pod.name.is_empty() || !names.insert(("pod", pod.name.as_str())) {
                bad(
                    format!("{at}.name"),
                    format!("{:?} is empty or used twice", pod.name),
                );
            }
            match (&pod.command, &pod.image) {
                (Some(PodCommand::Line(c)), None)
                    if c.trim().is_empty() || c.contains(['"', '\n', '\r']) || c.len() > 1024 =>
                {
                    bad(
                        format!("{at}.command"),
                        "must be one line of at most 1024 bytes without double quotes (it goes \
                         on the kernel command line)"
                            .into(),
                    );
                }
                (Some(PodCommand::Args(_)), None) => bad(
                    format!("{at}.command"),
                    "a list of arguments needs `image:`; without it, command is one shell line"
                        .into(),
                ),
                (Some(PodCommand::Line(_)), Some(_)) => bad(
                    format!("{at}.command"),
                    "with `image:`, command is a list of arguments (no shell parses them), \
                     e.g. [sh, -c, \"...\"]"
                        .into(),
                ),
                (Some(PodCommand::Args(a)), Some(_)) if a.is_empty() || a[0].is_empty() => bad(
                    format!("{at}.command"),
                    "an empty list; leave it out to run the image's own command".into(),
                ),
                _ => {}
            }
            if let Some(img) = &pod.image {
                if pod.kernel.is_some() || pod.initrd.is_some() {
                    bad(
                        format!("{at}.image"),
                        "an image pod boots vnfhost's guest image; kernel and initrd do not \
                         apply"
                            .into(),
                    );
                }
                if pod.interfaces.len() > 1 {
                    bad(
                        format!("{at}.interfaces"),
                        "an image pod has one interface so far".into(),
                    );
                }
                for (prefix, what) in [("oci-archive:", "OCI"), ("docker-archive:", "Docker")] {
                    if let Some(path) = img.strip_prefix(prefix) {
                        if !std::path::Path::new(path).is_file() {
                            bad(
                                format!("{at}.image"),
                                format!("{what} archive {path:?} does not exist"),
                            );
                        }
                    }
                }
                for (k, e) in pod.env.iter().enumerate() {
                    if !e.contains('=') || e.starts_with('=') {
                        bad(format!("{at}.env[{k}]"), format!("{e:?} is not KEY=VALUE"));
                    }
                }
                for (k, v) in pod.volumes.iter().enumerate() {
                    use std::os::unix::fs::FileTypeExt;
                    match std::fs::metadata(&v.path) {
                        Err(e) => bad(
                            format!("{at}.volumes[{k}].path"),
                            format!("{}: {e}", v.path),
                        ),
                        Ok(md) if !(md.is_file() || md.file_type().is_block_device()) => bad(
                            format!("{at}.volumes[{k}].path"),
                            format!(
                                "{} is not a file or block device (host directories are not \
                                 carried into a pod VM)",
                                v.path
                            ),
                        ),
                        Ok(_) => {}
                    }
                    if !v.mount_path.starts_with('/') || v.mount_path.split('/').any(|p| p == "..")
                    {
                        bad(
                            format!("{at}.volumes[{k}].mountPath"),
                            "must be absolute, without ..".into(),
                        );
                    }
                }
            } else if !pod.env.is_empty() || !pod.volumes.is_empty() {
                bad(
                    format!("{at}.image"),
                    "env and volumes are for image pods (`image:`)".into(),
                );
            }
            if pod.vcpus == 0 || pod.vcpus > 64 {
                bad(
                    format!("{at}.vcpus"),
                    format!("{} is outside 1..=64", pod.vcpus),
                );
            }
            match parse_memory(&pod.memory) {
                Ok(m) if m < 16 << 20 => bad(format!("{at}.memory"), "less than 16Mi".into()),
                Ok(m) if !m.is_multiple_of(1 << 20) => {
                    bad(format!("{at}.memory"), "not a whole number of Mi".into())
                }
                Ok(m) if m > 1 << 40 => bad(format!("{at}.memory"), "more than 1Ti".into()),
                Ok(m) if pod.hugepages && m % (2 << 20) != 0 => bad(
                    format!("{at}.memory"),
                    "not a multiple of 2Mi, needed with hugepages".into(),
                ),
                Ok(_) => {}
                Err(e) => bad(format!("{at}.memory"), e),
            }
            for (j, c) in pod.cpus.iter().enumerate() {
                if *c >= host.cpus {
                    bad(
                        format!("{at}.cpus[{j}]"),
                        format!("CPU {c} does not exist (this host has {})", host.cpus),
                    );
                } else if sw.cores.contains(c) {
                    bad(
                        format!("{at}.cpus[{j}]"),
                        format!(
                            "CPU {c} is a polling core of the switch; a vCPU there would starve"
                        ),
                    );
                }
            }
            if pod.interfaces.len() > vmm::layout::VIRTIO_MMIO_SLOTS {
                bad(
                    format!("{at}.interfaces"),
                    format!(
                        "{} interfaces; a pod has at most {}",
                        pod.interfaces.len(),
                        vmm::layout::VIRTIO_MMIO_SLOTS
                    ),
                );
            }
            for (j, ifc) in pod.interfaces.iter().enumerate() {
                let at = format!("{at}.interfaces[{j}]");
                let net = nets.get(ifc.network.as_str());
                if net.is_none() {
                    bad(
                        format!("{at}.network"),
                        format!("unknown network {:?}", ifc.network),
                    );
                }
                match parse_mac(&ifc.mac) {
                    Ok(m) if m[0] & 1 == 1 || m == [0; 6] => bad(
                        format!("{at}.mac"),
                        format!("{} is not a unicast address", ifc.mac),
                    ),
                    Ok(m) => {
                        if let Some(other) = macs.insert(m, format!("{}.{j}", pod.name)) {
                            bad(
                                format!("{at}.mac"),
                                format!("{} is also used by {other}", ifc.mac),
                            );
                        }
                    }
                    Err(e) => bad(format!("{at}.mac"), e),
                }
                for (k, ip) in ifc.ips.iter().enumerate() {
                    match Cidr::parse(ip) {
                        Ok(c) => {
                            if let Some((n, cs)) = net {
                                if !cs.iter().any(|p| p.contains(c.addr) && p.len == c.len) {
                                    bad(
                                        format!("{at}.ips[{k}]"),
                                        format!(
                                            "{ip} is not inside network {:?}'s prefixes",
                                            n.name
                                        ),
                                    );
                                }
                                if let Some(why) = reserved_host(c) {
                                    bad(format!("{at}.ips[{k}]"), format!("{} is {why}", c.addr));
                                }
                                if n.gateway.iter().any(|g| g.parse() == Ok(c.addr)) {
                                    bad(
                                        format!("{at}.ips[{k}]"),
                                        format!("{} is the network's gateway", c.addr),
                                    );
                                }
                                let key = (n.name.clone(), c.addr);
                                if let Some(other) = ips.insert(key, pod.name.clone()) {
                                    bad(
                                        format!("{at}.ips[{k}]"),
                                        format!("{} is also pod {other:?}'s", c.addr),
                                    );
                                }
                            }
                        }
                        Err(e) => bad(format!("{at}.ips[{k}]"), e),
                    }
                }
                if ifc.queues != 1 {
                    bad(
                        format!("{at}.queues"),
                        format!(
                            "{}: pod NICs have one queue pair so far (multiqueue is not built)",
                            ifc.queues
                        ),
                    );
                }
                for (k, g) in ifc.security_groups.iter().enumerate() {
                    if !groups.contains(g.as_str()) {
                        bad(
                            format!("{at}.security_groups[{k}]"),
                            format!("unknown security group {g:?}"),
                        );
                    }
                }
                let kinds: HashSet<bool> = ifc
                    .security_groups
                    .iter()
                    .filter_map(|g| self.security_groups.iter().find(|x| &x.name == g))
                    .map(|g| g.stateful)
                    .collect();
                if kinds.len() > 1 {
                    bad(
                        format!("{at}.security_groups"),
                        "mixes stateful and stateless groups; an interface's groups must all \
                         be one or the other (as Neutron's)"
                            .into(),
                    );
                }
            }
        }
        let mut keys = HashSet::new();
        let mut svc_names = HashSet::new();
        for (k, svc) in self.services.iter().enumerate() {
            let at = format!("services[{k}]");
            if !valid_service_name(&svc.name) || !svc_names.insert(svc.name.as_str()) {
                bad(
                    format!("{at}.name"),
                    format!(
                        "{:?} is not 1-63 of [A-Za-z0-9._-], or is used twice",
                        svc.name
                    ),
                );
            }
            match self.resolve_service(svc) {
                Err(list) => {
                    for (f, m) in list {
                        bad(format!("{at}.{f}"), m);
                    }
                }
                Ok(r) => {
                    for (j, p) in svc.ports.iter().enumerate() {
                        if !keys.insert((r.router.clone(), svc.vip, p.port, p.protocol)) {
                            bad(
                                format!("{at}.ports[{j}]"),
                                format!(
                                    "{}:{}/{} is another service's already",
                                    svc.vip,
                                    p.port,
                                    p.protocol.as_str()
                                ),
                            );
                        }
                    }
                }
            }
        }
        let hugepages = self.hugepages_needed();
        if hugepages > host.free_hugepages {
            bad(
                "switch.hugepages, pods[*].hugepages".into(),
                format!(
                    "the topology needs {hugepages} free 2 MiB huge pages, the host has {} \
                     (echo N > /proc/sys/vm/nr_hugepages)",
                    host.free_hugepages
                ),
            );
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `eth0` (MTU 1500, 192.168.1.10) is this test host's only interface.
    fn test_interface(name: &str) -> Option<InterfaceFacts> {
        (name == "eth0").then(|| (1500, vec!["192.168.1.10".parse().unwrap()]))
    }

    const HOST: Host = Host {
        cpus: 2,
        free_hugepages: 512,
        interface: test_interface,
    };

    const GOOD: &str = r#"
switch:
  cores: [1]
  hugepages: true
networks:
  - name: net-a
    tenant: blue
    cidrs: [10.0.0.0/24, "fd00:a::/64"]
    vlan: 10
    gateway: [10.0.0.254]
  - name: net-b
    tenant: blue
    cidrs: [10.0.1.0/24]
    vlan: 20
    gateway: [10.0.1.254]
routers:
  - name: r1
    tenant: blue
    networks: [net-a, net-b]
    routes:
      - to: 192.168.0.0/16
        via: 10.0.1.1
security_groups:
  - name: web
    default_deny_ingress: true
    ingress:
      - { protocol: tcp, ports: "80", cidr: 0.0.0.0/0 }
      - { protocol: icmp }
pods:
  - name: pod-a
    memory: 256Mi
    cpus: [0]
    interfaces:
      - { network: net-a, mac: "52:54:00:00:00:0a", ips: [10.0.0.1/24], security_groups: [web] }
  - name: pod-b
    hypervisor: qemu
    memory: 128Mi
    hugepages: true
    interfaces:
      - { network: net-b, mac: "52:54:00:00:00:0b", ips: [10.0.1.1/24] }
"#;

    #[test]
    fn a_good_topology_parses_and_checks_clean() {
        let t = parse(GOOD).unwrap();
        assert_eq!(t.networks.len(), 2);
        assert_eq!(t.pods[1].hypervisor, HypervisorSpec::Qemu);
        assert_eq!(t.check(HOST), vec![]);
    }

    #[test]
    fn the_repository_topology_is_valid() {
        let text = include_str!("../../topology.yaml");
        let t = parse(text).unwrap();
        assert_eq!(t.check(HOST), vec![]);
    }

    #[test]
    fn yaml_errors_name_line_and_field_path() {
        let line_of = |text: &str, what: &str| {
            1 + text
                .lines()
                .position(|l| l.contains(what))
                .expect("in the text")
        };
        let bad = GOOD.replace("    cpus: [0]\n", "    cpus: [0]\n    colour: red\n");
        let e = parse(&bad).unwrap_err();
        assert!(
            e.starts_with(&format!("{}:", line_of(&bad, "colour"))),
            "{e}"
        );
        assert!(e.contains("pods[0].colour: unknown field `colour`"), "{e}");
        let bad = GOOD.replace("vlan: 20", "vlan: twenty");
        let e = parse(&bad).unwrap_err();
        assert!(
            e.starts_with(&format!("{}:", line_of(&bad, "twenty"))),
            "{e}"
        );
        assert!(e.contains("networks[1].vlan: invalid type"), "{e}");
        let e = parse("networks: [").unwrap_err();
        assert!(
            e.starts_with("2:1: ") && e.contains("did not find expected node"),
            "{e}"
        );
    }

    fn problems(yaml: &str, host: Host) -> Vec<String> {
        parse(yaml)
            .unwrap()
            .check(host)
            .iter()
            .map(|p| p.to_string())
            .collect()
    }

    #[test]
    fn image_pods_are_checked_with_the_field_named() {
        let yaml = |pod: &str| {
            format!(
                "switch: {{ cores: [1] }}\nnetworks:\n  - {{ name: n, tenant: t, cidrs: [10.0.0.0/24] }}\npods:\n  - {{ name: p, memory: 128Mi, {pod} }}\n"
            )
        };
        let cases = [
            (
                "image: img, command: \"sh -c x\"",
                "pods[0].command: with `image:`, command is a list",
            ),
            (
                "command: [sh, -c, x]",
                "pods[0].command: a list of arguments needs `image:`",
            ),
            ("image: img, command: []", "pods[0].command: an empty list"),
            (
                "image: \"oci-archive:/no/such.tar\"",
                "pods[0].image: OCI archive \"/no/such.tar\" does not exist",
            ),
            (
                "image: img, env: [NOEQUALS]",
                "pods[0].env[0]: \"NOEQUALS\" is not KEY=VALUE",
            ),
            (
                "image: img, volumes: [{ path: /no/such, mountPath: /d }]",
                "pods[0].volumes[0].path: /no/such",
            ),
            (
                "image: img, volumes: [{ path: /etc, mountPath: /d }]",
                "not carried into a pod VM",
            ),
            (
                "image: img, volumes: [{ path: /etc/hostname, mountPath: d }]",
                "pods[0].volumes[0].mountPath: must be absolute",
            ),
            (
                "env: [A=1]",
                "pods[0].image: env and volumes are for image pods",
            ),
        ];
        for (pod, want) in cases {
            let p = problems(&yaml(pod), HOST);
            assert!(
                p.iter().any(|x| x.contains(want)),
                "{pod}: missing {want:?} in {p:#?}"
            );
        }
        let ok = problems(
            &yaml("image: img, command: [sh, -c, \"echo $A\"], env: [A=1]"),
            HOST,
        );
        assert!(ok.is_empty(), "{ok:#?}");
    }

    #[test]
    fn references_and_addresses_are_checked() {
        let bad = GOOD
            .replace("network: net-b, mac", "network: net-x, mac")
            .replace("networks: [net-a, net-b]", "networks: [net-a, net-c]")
            .replace("security_groups: [web]", "security_groups: [db]")
            .replace("ips: [10.0.0.1/24]", "ips: [10.9.0.1/24]")
            .replace("via: 10.0.1.1", "via: 172.16.0.1");
        let p = problems(&bad, HOST);
        for want in [
            "pods[1].interfaces[0].network: unknown network \"net-x\"",
            "routers[0].networks[1]: unknown network \"net-c\"",
            "pods[0].interfaces[0].security_groups[0]: unknown security group \"db\"",
            "pods[0].interfaces[0].ips[0]: 10.9.0.1/24 is not inside network \"net-a\"'s prefixes",
            "routers[0].routes[0].via: 172.16.0.1 is on none of the router's networks",
        ] {
            assert!(p.iter().any(|x| x == want), "missing {want:?} in {p:#?}");
        }
    }

    #[test]
    fn overlaps_within_a_tenant_are_refused_across_tenants_allowed() {
        let bad = GOOD.replace("cidrs: [10.0.1.0/24]", "cidrs: [10.0.0.128/25]");
        let p = problems(&bad, HOST);
        assert!(
            p.iter()
                .any(|x| x.starts_with("networks[1].cidrs: 10.0.0.128/25 overlaps 10.0.0.0/24")),
            "{p:#?}"
        );
        let other_tenant = bad
            .replace(
                "    tenant: blue\n    cidrs: [10.0.0.128/25]",
                "    tenant: red\n    cidrs: [10.0.0.128/25]",
            )
            .replace("gateway: [10.0.1.254]", "gateway: [10.0.0.254]");
        let p = problems(&other_tenant, HOST);
        assert!(!p.iter().any(|x| x.contains("overlaps")), "{p:#?}");
        // ... but then the blue router cannot join the red network.
        assert!(
            p.iter().any(|x| x.contains("belongs to tenant \"red\"")),
            "{p:#?}"
        );
    }

    #[test]
    fn host_resources_are_checked() {
        let p = problems(&GOOD.replace("cpus: [0]", "cpus: [7]"), HOST);
        assert!(
            p.iter()
                .any(|x| x.contains("pods[0].cpus[0]: CPU 7 does not exist")),
            "{p:#?}"
        );
        let p = problems(&GOOD.replace("cpus: [0]", "cpus: [1]"), HOST);
        assert!(
            p.iter().any(|x| x.contains("polling core of the switch")),
            "{p:#?}"
        );
        let few = Host {
            cpus: 2,
            free_hugepages: 10,
            interface: test_interface,
        };
        let p = problems(GOOD, few);
        assert!(
            p.iter()
                .any(|x| x.contains("needs 66 free 2 MiB huge pages, the host has 10")),
            "{p:#?}"
        );
    }

    #[test]
    fn duplicates_and_ranges() {
        let bad = GOOD
            .replace("name: net-b", "name: net-a")
            .replace("vlan: 20", "vlan: 4095")
            .replace("52:54:00:00:00:0b", "52:54:00:00:00:0a");
        let p = problems(&bad, HOST);
        assert!(
            p.iter().any(|x| x.starts_with("networks[1].name")),
            "{p:#?}"
        );
        assert!(
            p.iter().any(|x| x.contains("4095 is outside 1..=4094")),
            "{p:#?}"
        );
        assert!(
            p.iter().any(|x| x.contains("is also used by pod-a.0")),
            "{p:#?}"
        );
        let p = problems(
            &GOOD.replace("52:54:00:00:00:0b", "01:00:5e:00:00:01"),
            HOST,
        );
        assert!(
            p.iter().any(|x| x.contains("not a unicast address")),
            "{p:#?}"
        );
    }

    #[test]
    fn reserved_addresses_duplicate_cores_and_odd_sizes() {
        let bad = GOOD
            .replace("ips: [10.0.0.1/24]", "ips: [10.0.0.255/24]")
            .replace("cores: [1]", "cores: [1, 1]")
            .replace("memory: 128Mi", "memory: 16385Ki")
            .replace("gateway: [10.0.1.254]", "gateway: [10.0.1.254, 10.0.1.253]");
        let p = problems(&bad, HOST);
        for want in [
            "broadcast address",
            "CPU 1 is listed twice",
            "not a whole number of Mi",
            "at most one gateway address per family",
        ] {
            assert!(
                p.iter().any(|x| x.contains(want)),
                "missing {want:?} in {p:#?}"
            );
        }
    }

    fn overlay(uplink: Option<(&str, Option<&str>)>, vteps: &[(&str, &str)]) -> Overlay {
        Overlay {
            uplink: uplink.map(|(i, a)| api::daemon::OverlayUplink {
                interface: i.into(),
                address: a.map(str::to_string),
            }),
            vteps: vteps
                .iter()
                .map(|(n, a)| api::daemon::OverlayVtep {
                    name: n.to_string(),
                    address: a.to_string(),
                })
                .collect(),
        }
    }

    fn merged_problems(yaml: &str, o: &Overlay) -> Vec<String> {
        parse(yaml)
            .unwrap()
            .with_overlay(o)
            .check(HOST)
            .iter()
            .map(|p| p.to_string())
            .collect()
    }

    #[test]
    fn an_overlay_merges_under_the_topology() {
        let vxlan = "networks:\n  - { name: n, tenant: t, cidrs: [10.0.0.0/24], vni: 7 }\n";
        let with_static = format!(
            "{vxlan}vteps:\n  - {{ name: b, address: 192.168.1.11 }}\n\
             switch: {{ uplink: {{ interface: eth0 }} }}\n"
        );
        let t = parse(&with_static).unwrap();
        // The topology's uplink wins; learnt VTEPs follow the static ones, less those
        // whose address or name a static one has.
        let m = t.with_overlay(&overlay(
            Some(("other0", None)),
            &[
                ("b2", "192.168.1.11"),
                ("b", "192.168.1.99"),
                ("c", "192.168.1.12"),
            ],
        ));
        assert_eq!(m.topology.switch.uplink.as_ref().unwrap().interface, "eth0");
        let vteps: Vec<(&str, &str)> = m
            .topology
            .vteps
            .iter()
            .map(|v| (v.name.as_str(), v.address.as_str()))
            .collect();
        assert_eq!(vteps, [("b", "192.168.1.11"), ("c", "192.168.1.12")]);
        assert!(m.check(HOST).is_empty(), "{:?}", m.check(HOST));
        // The overlay's uplink where the topology has none, with VXLAN's port; the
        // empty overlay changes nothing.
        let t = parse(vxlan).unwrap();
        let m = t.with_overlay(&overlay(Some(("eth0", Some("192.168.1.10"))), &[]));
        let u = m.topology.switch.uplink.as_ref().unwrap();
        assert_eq!((u.interface.as_str(), u.udp_port), ("eth0", 4789));
        assert!(m.check(HOST).is_empty(), "{:?}", m.check(HOST));
        assert_eq!(t.with_overlay(&Overlay::default()).topology, t);
    }

    #[test]
    fn a_bad_overlay_is_refused_with_its_own_field_named() {
        let vxlan = "networks:\n  - { name: n, tenant: t, cidrs: [10.0.0.0/24], vni: 7 }\n";
        let with_static = format!(
            "{vxlan}vteps:\n  - {{ name: b, address: 192.168.1.11 }}\n\
             switch: {{ uplink: {{ interface: eth0 }} }}\n"
        );
        let cases: [(&str, Overlay, &str); 6] = [
            (
                vxlan,
                overlay(Some(("eth9", None)), &[]),
                "overlay.uplink.interface: no interface \"eth9\" on this node",
            ),
            (
                vxlan,
                overlay(Some(("eth0", Some("192.168.1.77"))), &[]),
                "overlay.uplink.address: 192.168.1.77 is not an address of eth0",
            ),
            (
                &with_static,
                overlay(None, &[("c", "192.168.1.12"), ("self", "192.168.1.10")]),
                "overlay.vteps[1].address: 192.168.1.10 is this node's own tunnel address",
            ),
            (
                &with_static,
                overlay(None, &[("b", "192.168.1.11"), ("d", "224.0.0.1")]),
                "overlay.vteps[1].address: 224.0.0.1 is not a unicast address",
            ),
            (
                vxlan,
                overlay(None, &[]),
                "networks[0].vni: a VXLAN network needs switch.uplink",
            ),
            // Without an uplink the learnt VTEPs are not carried, but still checked.
            (
                "networks: []\n",
                overlay(None, &[("x", "10.1.1.1"), ("x", "10.1.1.300")]),
                "overlay.vteps[1].name: \"x\" is empty or used twice",
            ),
        ];
        for (yaml, o, want) in cases {
            let p = merged_problems(yaml, &o);
            assert!(p.iter().any(|x| x.starts_with(want)), "{want}: {p:#?}");
        }
        let p = merged_problems("networks: []\n", &overlay(None, &[("x", "10.1.1.300")]));
        assert_eq!(
            p,
            ["overlay.vteps[0].address: \"10.1.1.300\" is not an IPv4 address"]
        );
        // Static VTEPs keep their own names.
        let p = merged_problems(
            "vteps:\n  - { name: b, address: 192.168.1.10 }\nswitch: { uplink: { interface: eth0 } }\n",
            &overlay(None, &[("c", "192.168.1.12")]),
        );
        assert_eq!(
            p,
            ["vteps[0].address: 192.168.1.10 is this node's own tunnel address"]
        );
    }

    #[test]
    fn cidr_math() {
        let a = Cidr::parse("10.0.0.0/24").unwrap();
        assert!(a.contains("10.0.0.77".parse().unwrap()));
        assert!(!a.contains("10.0.1.1".parse().unwrap()));
        assert!(!a.contains("::1".parse().unwrap()));
        assert!(a.overlaps(&Cidr::parse("10.0.0.0/8").unwrap()));
        assert!(!a.overlaps(&Cidr::parse("10.0.1.0/24").unwrap()));
        let v6 = Cidr::parse("fd00:a::/64").unwrap();
        assert!(v6.contains("fd00:a::1".parse().unwrap()));
        assert!(Cidr::parse("0.0.0.0/0")
            .unwrap()
            .contains("8.8.8.8".parse().unwrap()));
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert_eq!(parse_memory("256Mi"), Ok(256 << 20));
        assert!(parse_memory("256MB").is_err());
    }

    #[test]
    fn services_and_sessions_are_checked_with_their_fields_named() {
        let base = "switch: { cores: [1] }
networks:
  - { name: a1, tenant: ta, cidrs: [10.1.0.0/24], vlan: 10, gateway: [10.1.0.254], pool: 10.1.0.0/26 }
  - { name: b1, tenant: tb, cidrs: [10.2.0.0/24], vlan: 20, gateway: [10.2.0.254] }
  - { name: lone, tenant: tc, cidrs: [10.3.0.0/24], vlan: 30 }
routers:
  - { name: ra, tenant: ta, networks: [a1] }
  - { name: rb, tenant: tb, networks: [b1] }
pods:
  - name: web
    memory: 64M
    interfaces: [{ network: a1, mac: \"52:54:00:00:00:01\", ips: [10.1.0.5/24] }]
";
        let with = |svc: &str| format!("{base}services:\n{svc}");
        let ok = with(
            "  - { name: s, network: a1, vip: 10.96.0.1, backends: [web, 10.1.0.6],
      ports: [{ protocol: tcp, port: 80, target_port: 8080 }], affinity: client_ip }\n",
        );
        assert!(problems(&ok, HOST).is_empty(), "{:?}", problems(&ok, HOST));
        let t = parse(&ok).unwrap();
        let r = t.resolve_service(&t.services[0]).unwrap();
        assert_eq!(r.router, "ra");
        assert_eq!(
            r.backends,
            [
                "10.1.0.5".parse::<std::net::Ipv4Addr>().unwrap(),
                "10.1.0.6".parse().unwrap()
            ]
        );
        assert_eq!(r.affinity_s, Some(10_800));
        for (svc, want) in [
            (
                "  - { name: s, network: a1, vip: 10.1.0.9, ports: [{ protocol: tcp, port: 80 }] }",
                "services[0].vip: 10.1.0.9 is inside network a1's addresses (its pool 10.1.0.0/26)",
            ),
            (
                "  - { name: s, network: a1, vip: 10.96.0.1, backends: [10.2.0.5], ports: [{ protocol: tcp, port: 80 }] }",
                "services[0].backends[0]: 10.2.0.5 is on none of tenant \"ta\"'s networks that router ra joins (it is on tenant \"tb\"'s network b1)",
            ),
            (
                "  - { name: s, network: a1, vip: 10.96.0.1, backends: [nobody], ports: [{ protocol: tcp, port: 80 }] }",
                "services[0].backends[0]: \"nobody\" is neither an IPv4 address nor a pod",
            ),
            (
                "  - { name: s, network: a1, vip: 10.96.0.1, ports: [{ protocol: udp, port: 0 }] }",
                "services[0].ports[0].port: 0 is not a port",
            ),
            (
                "  - { name: s, network: lone, vip: 10.96.0.1, ports: [{ protocol: tcp, port: 80 }] }",
                "services[0].network: network \"lone\" has no router",
            ),
            (
                "  - { name: s, network: a1, vip: 10.96.0.1, ports: [{ protocol: tcp, port: 80 }] }
  - { name: t, network: a1, vip: 10.96.0.1, ports: [{ protocol: tcp, port: 80 }] }",
                "services[1].ports[0]: 10.96.0.1:80/tcp is another service's already",
            ),
        ] {
            let p = problems(&with(&format!("{svc}\n")), HOST);
            assert!(p.iter().any(|x| x.starts_with(want)), "{svc}: {p:?}");
        }
        // The same VIP in another tenant is that tenant's own.
        let two = with(
            "  - { name: s, network: a1, vip: 10.96.0.1, ports: [{ protocol: tcp, port: 80 }] }
  - { name: t, network: b1, vip: 10.96.0.1, ports: [{ protocol: tcp, port: 80 }] }\n",
        );
        assert!(
            problems(&two, HOST).is_empty(),
            "{:?}",
            problems(&two, HOST)
        );
        // A port out of range is the parser's, with its path.
        let e = parse(&with(
            "  - { name: s, network: a1, vip: 10.96.0.1, ports: [{ protocol: tcp, port: 70000 }] }\n",
        ))
        .unwrap_err();
        assert!(e.contains("services[0].ports[0].port"), "{e}");
        let p = problems(
            &base.replace(
                "cores: [1] }",
                "cores: [1], sessions: { capacity: 8, udp_s: 0 } }",
            ),
            HOST,
        );
        assert!(
            p.iter()
                .any(|x| x.starts_with("switch.sessions.capacity: 8 is outside")),
            "{p:?}"
        );
        assert!(
            p.iter()
                .any(|x| x.starts_with("switch.sessions.udp_s: 0 s is outside")),
            "{p:?}"
        );
    }
}
