//! The switch's typed spec, and what the switch reports back.
//!
//! The daemon sends a whole [`SwitchSpec`] (`PUT /v1/config` on the switch's control
//! socket); `vnfhost switch --port … --router-if …` builds the same spec from its options.
//! The switch applies the difference to what runs: a port, router or group that did not
//! change is not touched. A port whose driver cannot open is reported in
//! [`SwitchCounters::ports`] with its reason and retried; everything else is applied.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::values::{Mac, Prefix, VlanId, VlanMode};

/// The whole configuration of a switch.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwitchSpec {
    /// Ports.
    #[serde(default)]
    pub ports: Vec<PortSpec>,
    /// Routers, each its own routing domain (a tenant's VRF).
    #[serde(default)]
    pub routers: Vec<RouterSpec>,
    /// Security groups, referenced by ports.
    #[serde(default)]
    pub security_groups: Vec<SecurityGroupSpec>,
    /// The uplink to the underlay, which `vxlan` ports tunnel through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uplink: Option<UplinkSpec>,
    /// Load-balanced services: a virtual IP and port of one router's tenant, spread over
    /// backends.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<ServiceSpec>,
    /// The session table (connection tracking) that stateful groups and services share.
    #[serde(default)]
    pub sessions: SessionSpec,
}

/// The session table: one per polling core, of `capacity` sessions each, and how long
/// a session lives without a packet, by state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionSpec {
    /// Sessions per polling core, 16..=4194304. A new session that finds the table full
    /// (after reclaiming expired ones) is refused and counted; no live session is ever
    /// evicted for it. Default 131072.
    #[serde(default = "session_capacity")]
    pub capacity: u32,
    /// A TCP session that has seen both directions and no FIN or RST, in seconds.
    /// Default 3600.
    #[serde(default = "s3600")]
    pub tcp_established_s: u32,
    /// A TCP session that has seen one direction only (opening). Default 30.
    #[serde(default = "s30")]
    pub tcp_opening_s: u32,
    /// A TCP session after a FIN from both sides, or a RST. Default 10.
    #[serde(default = "s10")]
    pub tcp_closing_s: u32,
    /// UDP. Default 30.
    #[serde(default = "s30")]
    pub udp_s: u32,
    /// ICMP and every other protocol. Default 30.
    #[serde(default = "s30")]
    pub other_s: u32,
}

impl Default for SessionSpec {
    fn default() -> Self {
        SessionSpec {
            capacity: session_capacity(),
            tcp_established_s: s3600(),
            tcp_opening_s: s30(),
            tcp_closing_s: s10(),
            udp_s: s30(),
            other_s: s30(),
        }
    }
}

fn session_capacity() -> u32 {
    131_072
}
fn s3600() -> u32 {
    3600
}
fn s30() -> u32 {
    30
}
fn s10() -> u32 {
    10
}

/// A service: (router, protocol, virtual IP, port) balanced over backends. The VIP is
/// reachable only through that router, so only from its tenant's networks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    /// Its name (for status), unique in the spec.
    pub name: String,
    /// The router (tenant) whose networks reach it.
    pub router: String,
    /// The virtual IP: off the router's networks (clients send it to their gateway).
    pub vip: std::net::Ipv4Addr,
    /// TCP or UDP.
    pub protocol: L4Protocol,
    /// The port clients connect to, 1..=65535.
    pub port: u16,
    /// The ready backends (at most 1024). Empty: the VIP answers with a TCP reset or an
    /// ICMP port unreachable.
    #[serde(default)]
    pub backends: Vec<BackendSpec>,
    /// ClientIP affinity: a client's new connections go to the backend its last one
    /// went to, for this many seconds after its last packet. `None`: per connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity_timeout_s: Option<u32>,
}

/// One backend of a service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendSpec {
    /// Its address, on one of the router's networks.
    pub address: std::net::Ipv4Addr,
    /// The port it listens on, 1..=65535.
    pub port: u16,
}

/// A service's transport protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum L4Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl L4Protocol {
    /// The IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            L4Protocol::Tcp => 6,
            L4Protocol::Udp => 17,
        }
    }

    /// `tcp` or `udp`.
    pub fn as_str(self) -> &'static str {
        match self {
            L4Protocol::Tcp => "tcp",
            L4Protocol::Udp => "udp",
        }
    }
}

/// The switch's uplink: a host interface it shares with the kernel (`AF_PACKET`), and
/// this node's tunnel address on it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UplinkSpec {
    /// The host interface (in the switch's network namespace).
    pub interface: String,
    /// This node's VTEP address: one of the interface's IPv4 addresses.
    pub address: std::net::Ipv4Addr,
    /// The UDP port of the overlay. Default 4789 (VXLAN's).
    #[serde(default = "vxlan_port")]
    pub udp_port: u16,
    /// Instead of the host interface: a vhost-user socket (the switch listens) whose
    /// peer is the underlay, a router VM or a traffic generator. No kernel knows its
    /// addresses, so they are given; `interface` is then only the uplink's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vhost_user: Option<VhostUplinkSpec>,
}

/// An uplink over vhost-user.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VhostUplinkSpec {
    /// The socket.
    pub path: PathBuf,
    /// The uplink's MAC (the tunnels' outer source).
    pub mac: Mac,
    /// The underlay next hop's MAC (every tunnel's outer destination).
    pub next_hop_mac: Mac,
    /// The underlay's MTU. Default 1500.
    #[serde(default = "mtu_1500")]
    pub mtu: u32,
}

fn mtu_1500() -> u32 {
    1500
}

fn vxlan_port() -> u16 {
    4789
}

/// One port.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortSpec {
    /// Name: 1–32 of `[A-Za-z0-9._-]`.
    pub name: String,
    /// The driver and its settings.
    pub driver: Driver,
    /// The MAC of the peer's interface: told to vhost-user frontends, and the only source
    /// MAC the port may send from. Default: derived from the name.
    #[serde(default)]
    pub mac: Option<Mac>,
    /// VLAN membership. Default: access port in VLAN 1.
    #[serde(default)]
    pub vlan: VlanMode,
    /// The addresses the port may send from. Empty: any address (MAC checks still apply
    /// while `anti_spoofing` is on).
    #[serde(default)]
    pub allowed_addresses: Vec<IpAddr>,
    /// Port security: the port may send only from `mac` (and, when `allowed_addresses` is
    /// not empty, only from those). On by default; turning it off lets the port send from
    /// any MAC and address, as a router or bridge VNF behind it needs.
    #[serde(default = "yes")]
    pub anti_spoofing: bool,
    /// The peer is an IPv6 router: with `anti_spoofing` on, it may send router
    /// advertisements and redirects (ICMPv6 134 and 137), which the switch drops from
    /// every other port so that no pod can make itself its neighbours' gateway. Off by
    /// default. (Without `anti_spoofing` a port may send anything anyway.)
    #[serde(default)]
    pub router: bool,
    /// Security groups: what the port may be sent (ingress) and may send (egress). A
    /// packet passes when any group allows it (their union, as in Neutron). A port's
    /// groups are all stateful or all stateless.
    #[serde(default)]
    pub security_groups: Vec<String>,
}

fn yes() -> bool {
    true
}

/// Whether the switch listens on a vhost-user socket or connects to one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VhostMode {
    /// The switch listens; the frontend (QEMU, DPDK) connects and may reconnect.
    #[default]
    Server,
    /// The switch connects to a socket the frontend listens on.
    Client,
}

/// A port's driver.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Driver {
    /// A vhost-user socket.
    VhostUser {
        /// Socket path (any bytes a path may hold).
        path: PathBuf,
        /// Who listens.
        #[serde(default)]
        mode: VhostMode,
        /// Queue pairs, 1..=64.
        #[serde(default = "one")]
        queues: u16,
        /// The most guest memory the frontend may share, in MiB (all regions
        /// together); a larger memory table is refused and the connection dropped.
        /// Every page the switch touches that the guest never did is allocated on the
        /// switch's account, so this bounds what one frontend can make it allocate.
        /// Default 16384 (16 GiB).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_memory_mib: Option<u64>,
    },
    /// A tap interface the switch creates.
    Tap {
        /// Interface name (at most 15 bytes).
        name: String,
        /// Network namespace to create it in (a path such as `/var/run/netns/X`).
        #[serde(default)]
        netns: Option<PathBuf>,
    },
    /// A VXLAN tunnel to another node's VTEP on one VNI, through the uplink. Its VLAN
    /// must be an access VLAN (the network the VNI carries); it needs no port security
    /// (what enters through it was checked by the sending node's).
    Vxlan {
        /// The remote VTEP.
        remote: std::net::Ipv4Addr,
        /// The VXLAN network identifier, 1..=16777215.
        vni: u32,
    },
}

fn one() -> u16 {
    1
}

/// One router: a routing domain with an interface on each of its VLANs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouterSpec {
    /// Its name (for messages and status).
    pub name: String,
    /// Interfaces, one per VLAN.
    pub interfaces: Vec<RouterInterfaceSpec>,
    /// Static routes.
    #[serde(default)]
    pub routes: Vec<RouteSpec>,
}

/// A router interface on one VLAN.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouterInterfaceSpec {
    /// The VLAN.
    pub vlan: VlanId,
    /// Its MAC. Default: the switch's router MAC.
    #[serde(default)]
    pub mac: Option<Mac>,
    /// IPv4 address with prefix length 1..=30 (the network's gateway).
    pub ipv4: Prefix,
    /// IPv6 address with prefix length 1..=127.
    #[serde(default)]
    pub ipv6: Option<Prefix>,
}

/// A static route.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    /// Destination prefix.
    pub to: Prefix,
    /// Next hop, on one of the router's networks, of the same family.
    pub via: IpAddr,
}

/// A security group: what a port may be sent (ingress) and may send (egress).
///
/// Stateful (the default, as Neutron's): a packet a rule allows creates a session, and
/// the packets of that session, both ways, pass the port's checks without a rule scan;
/// so replies need no rules of their own. Stateless: every packet is held to the rules.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecurityGroupSpec {
    /// Its name.
    pub name: String,
    /// Drop ingress that no rule allows. Without it the group allows all ingress.
    #[serde(default)]
    pub default_deny: bool,
    /// Ingress allow rules (`source` prefixes).
    #[serde(default)]
    pub rules: Vec<RuleSpec>,
    /// Drop egress that no egress rule allows. Without it the group allows all egress.
    #[serde(default)]
    pub default_deny_egress: bool,
    /// Egress allow rules (`destination` prefixes).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<RuleSpec>,
    /// Replies to what a rule allowed pass without rules. Default true.
    #[serde(default = "yes")]
    pub stateful: bool,
}

/// One allow rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// Protocol.
    pub protocol: Protocol,
    /// Destination ports `[first, last]` (TCP and UDP only).
    #[serde(default)]
    pub ports: Option<(u16, u16)>,
    /// Source prefix (ingress rules). Default: anywhere.
    #[serde(default)]
    pub source: Option<Prefix>,
    /// Destination prefix (egress rules). Default: anywhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<Prefix>,
}

/// A rule's protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// Any IP protocol.
    Any,
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// ICMP and ICMPv6.
    Icmp,
}

/// A port's state in the switch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PortState {
    /// Open, and the peer connected and ready.
    Up,
    /// Open, waiting for the peer.
    #[default]
    Down,
    /// The driver could not open; see the error. Retried with back-off.
    Failed,
}

/// Counters and state of one port.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PortCounters {
    /// Port name.
    pub name: String,
    /// Its state.
    pub state: PortState,
    /// Why it failed to open (`Failed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The peer is connected and its driver ready (`state == Up`).
    pub up: bool,
    /// Frames from the peer.
    pub rx_packets: u64,
    /// Bytes from the peer.
    pub rx_bytes: u64,
    /// Frames to the peer.
    pub tx_packets: u64,
    /// Bytes to the peer.
    pub tx_bytes: u64,
    /// Drops by reason (non-zero ones).
    pub drops: BTreeMap<String, u64>,
    /// Peers that connected (vhost-user).
    #[serde(default)]
    pub connections: u64,
    /// Peers dropped, or requests refused, for breaking the protocol (vhost-user): a
    /// hostile or broken frontend shows here.
    #[serde(default)]
    pub protocol_errors: u64,
}

/// Load of one polling core.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CoreCounters {
    /// The CPU it is pinned to.
    pub cpu: Option<usize>,
    /// Polls that found work.
    pub busy_polls: u64,
    /// Polls that found none.
    pub idle_polls: u64,
    /// Frames handled.
    pub packets: u64,
    /// TSC cycles per frame on busy polls.
    pub cycles_per_packet: Option<f64>,
    /// Configuration changes this core has taken in.
    pub generation: u64,
    /// The longest time the core spent taking in one change, in ns: the longest pause
    /// a change put into its forwarding.
    #[serde(default)]
    pub longest_change_ns: u64,
    /// How long the core has made no progress, in ms (0 while it polls). A core stuck
    /// for a second or more stops every port it polls; the daemon restarts the switch
    /// when one stays stuck.
    #[serde(default)]
    pub stalled_ms: u64,
}

/// `GET /v1/stats` of the switch. Bridge and router counters count from the switch
/// process's start; port counters from the port's creation.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SwitchCounters {
    /// Configurations applied so far.
    pub generation: u64,
    /// How long the last change took until every core ran it, in microseconds. The
    /// cores do not stop meanwhile: each takes the change in between two bursts.
    pub last_change_us: u64,
    /// Per port in the spec, failed ones included.
    pub ports: Vec<PortCounters>,
    /// Bridge drops by reason (non-zero ones).
    pub bridge_drops: BTreeMap<String, u64>,
    /// Floods.
    pub floods: u64,
    /// Addresses one core learnt and told the others.
    pub shared_learns: u64,
    /// Packets routed.
    pub routed: u64,
    /// Frames the routers generated (ARP, ND, ICMP).
    pub router_generated: u64,
    /// Router drops by reason (non-zero ones).
    pub router_drops: BTreeMap<String, u64>,
    /// Per polling core.
    pub cores: Vec<CoreCounters>,
    /// The uplink and its tunnels, when the spec has an uplink.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlay: Option<OverlayCounters>,
    /// The session tables, summed over cores.
    #[serde(default)]
    pub sessions: SessionCounters,
    /// Per service in the spec.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<ServiceCounters>,
}

/// The session tables of all polling cores.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SessionCounters {
    /// Live sessions (each core's table counts the sessions it holds).
    pub live: u64,
    /// Capacity, all cores together.
    pub capacity: u64,
    /// Sessions created.
    pub created: u64,
    /// Sessions that timed out.
    pub expired: u64,
    /// Sessions removed because their backend left its service.
    pub removed: u64,
    /// New sessions refused because the table was full (their packet dropped).
    pub table_full: u64,
}

/// One service's counters.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ServiceCounters {
    /// Its name.
    pub name: String,
    /// `VIP:PORT/PROTOCOL`.
    pub vip: String,
    /// Its backends, with the connections each was given.
    pub backends: Vec<BackendCounters>,
    /// New connections refused (reset or ICMP) for want of a backend.
    pub no_backend: u64,
}

/// One backend's counters.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BackendCounters {
    /// `ADDRESS:PORT`.
    pub backend: String,
    /// New sessions it was chosen for.
    pub hits: u64,
}

/// The uplink and the tunnels through it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct OverlayCounters {
    /// The host interface.
    pub interface: String,
    /// This node's VTEP address.
    pub address: String,
    /// Why the uplink is not open (it is retried), if it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The interface's MTU.
    pub mtu: u32,
    /// The pods' MTU on tunnelled networks: `mtu` less the encapsulation (50).
    pub pod_mtu: u32,
    /// Frames the uplink received (tunnelled datagrams to this node only: the rest is
    /// the kernel's) and sent.
    pub rx_packets: u64,
    /// Their bytes.
    pub rx_bytes: u64,
    /// Frames sent.
    pub tx_packets: u64,
    /// Their bytes.
    pub tx_bytes: u64,
    /// Uplink drops by reason (non-zero ones).
    pub drops: BTreeMap<String, u64>,
    /// Frames decapsulated into a network.
    pub decapsulated: u64,
    /// Frames not decapsulated, by reason (`not_vxlan`, `unknown_vni`, `unknown_vtep`).
    pub decap_drops: BTreeMap<String, u64>,
    /// One per tunnel port.
    pub tunnels: Vec<TunnelStatus>,
}

/// One tunnel: a remote VTEP on one VNI.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TunnelStatus {
    /// The port's name.
    pub port: String,
    /// The remote VTEP.
    pub remote: String,
    /// The VNI.
    pub vni: u32,
    /// The underlay next hop (the VTEP itself when on-link).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
    /// The next hop's MAC, once the kernel's neighbour table has it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_hop_mac: Option<Mac>,
    /// Why it cannot send, if it cannot (no route, a route through another interface,
    /// the neighbour not resolved yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The reply to `PUT /v1/config`: the spec was taken; these ports failed to open.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ApplyReply {
    /// The generation now running.
    pub generation: u64,
    /// Ports that could not open, with their reasons (retried with back-off).
    pub failed: Vec<PortFailure>,
}

/// A port that could not open.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortFailure {
    /// Port name.
    pub name: String,
    /// Why, in the spec's words.
    pub error: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_are_refused_with_their_name() {
        let ok = r#"{"ports":[{"name":"p0","driver":{"vhost_user":{"path":"/run/a,b=c.sock"}},
            "vlan":{"access":{"vlan":10}},"allowed_addresses":["10.0.0.1"]}]}"#;
        let s: SwitchSpec = serde_json::from_str(ok).unwrap();
        let p = &s.ports[0];
        assert!(p.anti_spoofing, "anti-spoofing is on by default");
        assert!(!p.router, "a port is not a router unless marked");
        assert_eq!(
            p.driver,
            Driver::VhostUser {
                path: "/run/a,b=c.sock".into(),
                mode: VhostMode::Server,
                queues: 1,
                max_memory_mib: None,
            }
        );
        for (bad, field) in [
            (r#"{"prts":[]}"#, "prts"),
            (
                r#"{"ports":[{"name":"p","driver":{"tap":{"name":"t","nets":"/x"}}}]}"#,
                "nets",
            ),
            (
                r#"{"ports":[{"name":"p","driver":{"tap":{"name":"t"}},"sg":["a"]}]}"#,
                "sg",
            ),
            (
                r#"{"ports":[{"name":"p","driver":{"tap":{"name":"t"}},"router":"yes"}]}"#,
                "boolean",
            ),
        ] {
            let e = serde_json::from_str::<SwitchSpec>(bad)
                .unwrap_err()
                .to_string();
            assert!(e.contains(field), "{bad}: {e}");
        }
    }
}
