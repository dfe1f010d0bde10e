//! Checking a [`SwitchSpec`] and turning it into what the runtime takes. Every refusal
//! names the field in the spec's words (`ports[2] (pod-a.eth0).driver.vhost_user.queues`).

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use api::switch::{
    Driver, PortSpec, Protocol, RouterSpec, RuleSpec, SecurityGroupSpec, SessionSpec, SwitchSpec,
};
use api::values::{Mac, VlanMode as ApiVlanMode};

use crate::bridge::{
    FilterRule, GroupFilter, IngressFilter, PortFilter, PortSecurity, RuleProto, Vid, VlanMode,
    VlanSet,
};
use crate::conntrack::Timeouts;
use crate::router::{Router, RouterIf, StaticRoute, StaticRoute6};
use crate::wire::EthernetAddress;

/// The MAC of router interfaces that name none (locally administered).
pub const ROUTER_MAC: Mac = Mac([0x02, 0x76, 0x6e, 0x68, 0x72, 0x01]);

/// A port of a checked spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckedPort {
    /// Name.
    pub name: String,
    /// Driver, as given.
    pub driver: Driver,
    /// The MAC (given or derived from the name).
    pub mac: Mac,
    /// VLAN membership.
    pub vlan: VlanMode,
    /// Port security, when on.
    pub security: Option<PortSecurity>,
    /// Its security groups, if it has any.
    pub filter: Option<PortFilter>,
    /// A tunnel to another node: in the split-horizon group.
    pub horizon: bool,
}

/// A spec that passed every check.
#[derive(Clone, Debug)]
pub struct Checked {
    /// Ports, in spec order.
    pub ports: Vec<CheckedPort>,
    /// Routers, in spec order.
    pub routers: Vec<Router>,
    /// Services, in spec order.
    pub services: Vec<CheckedService>,
    /// Session table capacity per core.
    pub session_capacity: usize,
    /// Session timeouts.
    pub timeouts: Timeouts,
}

/// A service of a checked spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckedService {
    /// Its name.
    pub name: String,
    /// Its router's zone (see [`zone_of_router`]).
    pub zone: u16,
    /// VIP.
    pub vip: u32,
    /// IP protocol.
    pub proto: u8,
    /// Port.
    pub port: u16,
    /// Backends (address, port).
    pub backends: Vec<(u32, u16)>,
    /// Affinity timeout, s (0: none).
    pub affinity_s: u32,
}

/// The session zone of a router: its lowest VLAN (stable while that VLAN stays; no VLAN
/// is in two routers). A VLAN without a router is its own zone.
pub fn zone_of_router(r: &Router) -> u16 {
    r.interfaces()
        .iter()
        .map(|i| i.vid.get())
        .min()
        .unwrap_or(0)
}

fn vid(v: api::VlanId) -> Vid {
    // `VlanId` holds 1..=4094 only, as `Vid` does.
    Vid::new(v.get()).unwrap_or(Vid::MIN)
}

/// Whether `name` is a valid port name: 1–32 of `[A-Za-z0-9._-]`.
pub fn valid_port_name(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
}

fn vlan_mode(m: &ApiVlanMode, at: &str) -> Result<VlanMode, String> {
    Ok(match m {
        ApiVlanMode::Access { vlan } => VlanMode::Access { vid: vid(*vlan) },
        ApiVlanMode::Trunk { allowed, native } => {
            if allowed.is_empty() && native.is_none() {
                return Err(format!("{at}.vlan.trunk: allows no VLAN"));
            }
            let mut set = VlanSet::new();
            for r in allowed {
                for v in r.first.get()..=r.last.get() {
                    if let Some(v) = Vid::new(v) {
                        set.insert(v);
                    }
                }
            }
            VlanMode::Trunk {
                allowed: set,
                native: native.map(vid),
            }
        }
    })
}

fn group_filter(g: &SecurityGroupSpec, at: &str) -> Result<(GroupFilter, bool), String> {
    Ok((
        GroupFilter {
            ingress: rules_filter(&g.rules, g.default_deny, &format!("{at}.rules"), false)?,
            egress: rules_filter(
                &g.egress,
                g.default_deny_egress,
                &format!("{at}.egress"),
                true,
            )?,
        },
        g.stateful,
    ))
}

fn rules_filter(
    list: &[RuleSpec],
    default_deny: bool,
    at: &str,
    egress: bool,
) -> Result<IngressFilter, String> {
    let mut rules = Vec::new();
    for (k, r) in list.iter().enumerate() {
        let at = format!("{at}[{k}]");
        let (remote, wrong) = if egress {
            (r.destination, r.source.map(|_| "source"))
        } else {
            (r.source, r.destination.map(|_| "destination"))
        };
        if let Some(w) = wrong {
            return Err(format!(
                "{at}.{w}: an {} rule names its {}",
                if egress { "egress" } else { "ingress" },
                if egress { "destination" } else { "source" }
            ));
        }
        if let Some((a, b)) = r.ports {
            if a == 0 || a > b {
                return Err(format!(
                    "{at}.ports: [{a}, {b}] is not a range of ports 1..=65535"
                ));
            }
            if !matches!(r.protocol, Protocol::Tcp | Protocol::Udp) {
                return Err(format!("{at}.ports: only tcp and udp rules have ports"));
            }
        }
        let proto = match r.protocol {
            Protocol::Any => RuleProto::Any,
            Protocol::Icmp => RuleProto::Icmp,
            Protocol::Tcp => RuleProto::Tcp(r.ports),
            Protocol::Udp => RuleProto::Udp(r.ports),
        };
        rules.push(FilterRule {
            proto,
            src: remote.map(|p| (p.addr, p.len)),
        });
    }
    Ok(IngressFilter {
        default_deny,
        rules,
    })
}

fn check_port(
    p: &PortSpec,
    at: &str,
    groups: &HashMap<&str, (GroupFilter, bool)>,
) -> Result<CheckedPort, String> {
    match &p.driver {
        Driver::VhostUser {
            path,
            queues,
            max_memory_mib,
            ..
        } => {
            if path.as_os_str().is_empty() {
                return Err(format!("{at}.driver.vhost_user.path: empty"));
            }
            if let Some(m) = max_memory_mib {
                if *m == 0 || *m > 1 << 24 {
                    return Err(format!(
                        "{at}.driver.vhost_user.max_memory_mib: {m} is outside 1..=16777216"
                    ));
                }
            }
            if !(1..=64).contains(queues) {
                return Err(format!(
                    "{at}.driver.vhost_user.queues: {queues} is outside 1..=64"
                ));
            }
        }
        Driver::Vxlan { vni, .. } => {
            if !(1..=crate::overlay::VNI_MAX).contains(vni) {
                return Err(format!(
                    "{at}.driver.vxlan.vni: {vni} is outside 1..=16777215"
                ));
            }
            if !matches!(p.vlan, ApiVlanMode::Access { .. }) {
                return Err(format!(
                    "{at}.vlan: a vxlan port carries one network, so it is an access port"
                ));
            }
            if !p.security_groups.is_empty() {
                return Err(format!(
                    "{at}.security_groups: a vxlan port takes none (groups apply on the pods' own ports, on every node)"
                ));
            }
        }
        Driver::Tap { name, netns } => {
            if name.is_empty() || name.len() > 15 || name.contains(['/', ' ', '\0']) {
                return Err(format!(
                    "{at}.driver.tap.name: {name:?} is not an interface name (1-15 bytes, no '/' or space)"
                ));
            }
            if netns.as_ref().is_some_and(|n| n.as_os_str().is_empty()) {
                return Err(format!("{at}.driver.tap.netns: empty"));
            }
        }
    }
    let mac = p.mac.unwrap_or_else(|| Mac::derived(&p.name));
    if !mac.is_unicast() {
        return Err(format!("{at}.mac: {mac} is not a unicast MAC"));
    }
    let vlan = vlan_mode(&p.vlan, at)?;
    let mut seen = HashSet::new();
    let mut found = Vec::new();
    for (k, g) in p.security_groups.iter().enumerate() {
        let f = groups
            .get(g.as_str())
            .ok_or_else(|| format!("{at}.security_groups[{k}]: no security group {g:?}"))?;
        if seen.insert(g.as_str()) {
            found.push(f);
        }
    }
    // As Neutron: a port's groups are all stateful or all stateless, so that a session
    // means the same to every check of the port.
    if let (Some(a), Some(b)) = (
        found.iter().position(|g| g.1),
        found.iter().position(|g| !g.1),
    ) {
        return Err(format!(
            "{at}.security_groups: {:?} is stateful and {:?} stateless; a port's groups \
             must all be one or the other",
            p.security_groups[a], p.security_groups[b]
        ));
    }
    let filter = (!found.is_empty()).then(|| PortFilter {
        stateful: found.iter().all(|g| g.1),
        groups: found.iter().map(|g| g.0.clone()).collect(),
    });
    if !p.anti_spoofing && !p.allowed_addresses.is_empty() {
        return Err(format!(
            "{at}.allowed_addresses: anti_spoofing is off, so they would not be enforced"
        ));
    }
    let tunnel = matches!(p.driver, Driver::Vxlan { .. });
    // What enters through a tunnel was held to port security on the node that sent it.
    let security = (p.anti_spoofing && !tunnel).then(|| PortSecurity {
        mac: EthernetAddress(mac.0),
        ips: p.allowed_addresses.clone(),
        router: p.router,
    });
    Ok(CheckedPort {
        name: p.name.clone(),
        driver: p.driver.clone(),
        mac,
        vlan,
        security,
        filter,
        horizon: tunnel,
    })
}

fn check_router(r: &RouterSpec, at: &str) -> Result<Router, String> {
    if r.interfaces.is_empty() {
        return Err(format!("{at}.interfaces: a router needs one"));
    }
    let mut ifs = Vec::new();
    for (k, i) in r.interfaces.iter().enumerate() {
        let at = format!("{at}.interfaces[{k}]");
        let (ip, prefix) = match i.ipv4.addr {
            IpAddr::V4(a) if (1..=30).contains(&i.ipv4.len) => (a, i.ipv4.len),
            _ => {
                return Err(format!(
                    "{at}.ipv4: {} is not an IPv4 address with a prefix length 1..=30",
                    i.ipv4
                ))
            }
        };
        let ip6 = match i.ipv6 {
            None => None,
            Some(p) => match p.addr {
                IpAddr::V6(a) if (1..=127).contains(&p.len) => Some((a, p.len)),
                _ => {
                    return Err(format!(
                        "{at}.ipv6: {p} is not an IPv6 address with a prefix length 1..=127"
                    ))
                }
            },
        };
        let mac = i.mac.unwrap_or(ROUTER_MAC);
        if !mac.is_unicast() {
            return Err(format!("{at}.mac: {mac} is not a unicast MAC"));
        }
        ifs.push(RouterIf {
            vid: vid(i.vlan),
            mac: EthernetAddress(mac.0),
            ip,
            prefix,
            ip6,
        });
    }
    let (mut v4, mut v6) = (Vec::new(), Vec::new());
    for (k, rt) in r.routes.iter().enumerate() {
        match (rt.to.addr, rt.via) {
            (IpAddr::V4(dst), IpAddr::V4(via)) => v4.push(StaticRoute {
                dst,
                len: rt.to.len,
                via,
            }),
            (IpAddr::V6(dst), IpAddr::V6(via)) => v6.push(StaticRoute6 {
                dst,
                len: rt.to.len,
                via,
            }),
            _ => {
                return Err(format!(
                    "{at}.routes[{k}]: to {} and via {} are of different families",
                    rt.to, rt.via
                ))
            }
        }
    }
    Router::with_routes6(ifs, &v4, &v6).map_err(|e| format!("{at}: {e}"))
}

/// Checks `spec` whole; the first problem found is the error.
pub fn check(spec: &SwitchSpec) -> Result<Checked, String> {
    let mut groups = HashMap::new();
    for (k, g) in spec.security_groups.iter().enumerate() {
        let at = format!("security_groups[{k}] ({})", g.name);
        if g.name.is_empty() {
            return Err(format!("security_groups[{k}].name: empty"));
        }
        let f = group_filter(g, &at)?;
        if groups.insert(g.name.as_str(), f).is_some() {
            return Err(format!("{at}.name: defined twice"));
        }
    }
    if let Some(u) = &spec.uplink {
        let n = &u.interface;
        if n.is_empty() || n.len() > 15 || n.contains(['/', ' ', '\0']) {
            return Err(format!(
                "uplink.interface: {n:?} is not an interface name (1-15 bytes, no '/' or space)"
            ));
        }
        if u.udp_port == 0 {
            return Err("uplink.udp_port: 0 is not a port".into());
        }
        if let Some(v) = &u.vhost_user {
            if v.path.as_os_str().is_empty() {
                return Err("uplink.vhost_user.path: empty".into());
            }
            if !v.next_hop_mac.is_unicast() || !v.mac.is_unicast() {
                return Err("uplink.vhost_user: mac and next_hop_mac must be unicast".into());
            }
            if !(68 + 50..=9216).contains(&v.mtu) {
                return Err(format!(
                    "uplink.vhost_user.mtu: {} is outside 118..=9216",
                    v.mtu
                ));
            }
        }
        if u.address.is_unspecified() || u.address.is_multicast() || u.address.is_broadcast() {
            return Err(format!(
                "uplink.address: {} is not a unicast address",
                u.address
            ));
        }
    }
    let mut names = HashSet::new();
    let mut tunnels = HashMap::new();
    let mut ports = Vec::new();
    for (k, p) in spec.ports.iter().enumerate() {
        if !valid_port_name(&p.name) {
            return Err(format!(
                "ports[{k}].name: {:?} is not 1-32 of [A-Za-z0-9._-]",
                p.name
            ));
        }
        let at = format!("ports[{k}] ({})", p.name);
        if !names.insert(p.name.as_str()) {
            return Err(format!("{at}.name: used twice"));
        }
        if let Driver::Vxlan { remote, vni } = &p.driver {
            let Some(u) = &spec.uplink else {
                return Err(format!(
                    "{at}.driver.vxlan: the spec has no uplink to tunnel through"
                ));
            };
            if *remote == u.address || remote.is_unspecified() || remote.is_multicast() {
                return Err(format!(
                    "{at}.driver.vxlan.remote: {remote} is not another node's unicast address"
                ));
            }
            if let Some(other) = tunnels.insert((*remote, *vni), p.name.as_str()) {
                return Err(format!(
                    "{at}.driver.vxlan: port {other} already tunnels VNI {vni} to {remote}"
                ));
            }
        }
        ports.push(check_port(p, &at, &groups)?);
    }
    let mut routers = Vec::new();
    let mut vlans = HashMap::new();
    for (k, r) in spec.routers.iter().enumerate() {
        let at = format!("routers[{k}] ({})", r.name);
        for (j, i) in r.interfaces.iter().enumerate() {
            if let Some(other) = vlans.insert(i.vlan, r.name.as_str()) {
                return Err(format!(
                    "{at}.interfaces[{j}].vlan: VLAN {} already has an interface in router {other}",
                    i.vlan
                ));
            }
        }
        routers.push(check_router(r, &at)?);
    }
    if ports.len() > crate::switch::MAX_SWITCH_PORTS {
        return Err(format!(
            "ports: {} of them; the switch takes at most {}",
            ports.len(),
            crate::switch::MAX_SWITCH_PORTS
        ));
    }
    let services = check_services(spec, &routers)?;
    let timeouts = check_sessions(&spec.sessions)?;
    Ok(Checked {
        ports,
        routers,
        services,
        session_capacity: spec.sessions.capacity as usize,
        timeouts,
    })
}

fn check_sessions(s: &SessionSpec) -> Result<Timeouts, String> {
    if !(16..=crate::conntrack::MAX_CAPACITY as u32).contains(&s.capacity) {
        return Err(format!(
            "sessions.capacity: {} is outside 16..={}",
            s.capacity,
            crate::conntrack::MAX_CAPACITY
        ));
    }
    let ns = |v: u32, f: &str| -> Result<u64, String> {
        if v == 0 || v > 7 * 24 * 3600 {
            return Err(format!(
                "sessions.{f}: {v} s is outside 1..=604800 (one week)"
            ));
        }
        Ok(u64::from(v) * 1_000_000_000)
    };
    Ok(Timeouts {
        tcp_established: ns(s.tcp_established_s, "tcp_established_s")?,
        tcp_opening: ns(s.tcp_opening_s, "tcp_opening_s")?,
        tcp_closing: ns(s.tcp_closing_s, "tcp_closing_s")?,
        udp: ns(s.udp_s, "udp_s")?,
        other: ns(s.other_s, "other_s")?,
    })
}

fn check_services(spec: &SwitchSpec, routers: &[Router]) -> Result<Vec<CheckedService>, String> {
    let mut out = Vec::new();
    let mut names = HashSet::new();
    let mut keys = HashMap::new();
    for (k, s) in spec.services.iter().enumerate() {
        let at = format!("services[{k}] ({})", s.name);
        if s.name.is_empty() || !names.insert(s.name.as_str()) {
            return Err(format!("{at}.name: empty or used twice"));
        }
        let Some(ri) = spec.routers.iter().position(|r| r.name == s.router) else {
            return Err(format!("{at}.router: no router {:?}", s.router));
        };
        let r = &routers[ri];
        let vip = u32::from(s.vip);
        if s.vip.is_unspecified()
            || s.vip.is_multicast()
            || s.vip.is_broadcast()
            || s.vip.is_loopback()
            || s.vip.is_link_local()
        {
            return Err(format!("{at}.vip: {} is not a unicast address", s.vip));
        }
        let on_link = |a: u32| {
            r.interfaces().iter().find(|i| {
                let m = u32::MAX.checked_shl(32 - u32::from(i.prefix)).unwrap_or(0);
                a & m == u32::from(i.ip) & m
            })
        };
        if let Some(i) = on_link(vip) {
            return Err(format!(
                "{at}.vip: {} is inside the router's network {}/{} (VLAN {}): its pods would \
                 ask for it by ARP instead of sending it to their gateway; take an address \
                 off the tenant's networks",
                s.vip,
                i.ip,
                i.prefix,
                i.vid.get()
            ));
        }
        if s.port == 0 {
            return Err(format!("{at}.port: 0 is not a port"));
        }
        if s.backends.len() > crate::lb::MAX_BACKENDS {
            return Err(format!(
                "{at}.backends: {} of them; a service takes at most {}",
                s.backends.len(),
                crate::lb::MAX_BACKENDS
            ));
        }
        let mut backends = Vec::new();
        for (j, b) in s.backends.iter().enumerate() {
            if b.port == 0 {
                return Err(format!("{at}.backends[{j}].port: 0 is not a port"));
            }
            if on_link(u32::from(b.address)).is_none() {
                return Err(format!(
                    "{at}.backends[{j}].address: {} is on none of router {}'s networks \
                     (a backend of another tenant, or nowhere)",
                    b.address, s.router
                ));
            }
            backends.push((u32::from(b.address), b.port));
        }
        let zone = zone_of_router(r);
        let proto = s.protocol.number();
        if let Some(other) = keys.insert((zone, vip, s.port, proto), s.name.as_str()) {
            return Err(format!(
                "{at}: {}:{}/{} is service {other}'s already",
                s.vip,
                s.port,
                s.protocol.as_str()
            ));
        }
        out.push(CheckedService {
            name: s.name.clone(),
            zone,
            vip,
            proto,
            port: s.port,
            backends,
            affinity_s: s.affinity_timeout_s.unwrap_or(0),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> SwitchSpec {
        serde_json::from_str(json).expect("spec parses")
    }

    #[test]
    fn refusals_name_the_field_in_the_specs_words() {
        for (j, want) in [
            (
                r#"{"ports":[{"name":"p","driver":{"vhost_user":{"path":"/s","queues":0}}}]}"#,
                "ports[0] (p).driver.vhost_user.queues: 0 is outside 1..=64",
            ),
            (
                r#"{"ports":[{"name":"p q","driver":{"tap":{"name":"t"}}}]}"#,
                "ports[0].name",
            ),
            (
                r#"{"ports":[{"name":"p","driver":{"tap":{"name":"t"}},"security_groups":["web"]}]}"#,
                "ports[0] (p).security_groups[0]: no security group \"web\"",
            ),
            (
                r#"{"routers":[{"name":"r","interfaces":[{"vlan":10,"ipv4":"10.0.0.1/32"}]}]}"#,
                "routers[0] (r).interfaces[0].ipv4",
            ),
            (
                r#"{"routers":[{"name":"r","interfaces":[{"vlan":10,"ipv4":"10.0.0.1/24"}],
                    "routes":[{"to":"fd00::/8","via":"10.0.0.2"}]}]}"#,
                "routers[0] (r).routes[0]: to fd00::/8 and via 10.0.0.2 are of different families",
            ),
            (
                r#"{"routers":[{"name":"a","interfaces":[{"vlan":10,"ipv4":"10.0.0.1/24"}]},
                    {"name":"b","interfaces":[{"vlan":10,"ipv4":"10.1.0.1/24"}]}]}"#,
                "routers[1] (b).interfaces[0].vlan: VLAN 10 already has an interface in router a",
            ),
        ] {
            let e = check(&spec(j)).expect_err(j);
            assert!(e.contains(want), "{j}\n  got:  {e}\n  want: {want}");
        }
    }

    #[test]
    fn anti_spoofing_is_on_by_default_and_groups_are_a_union() {
        let c = check(&spec(
            r#"{"ports":[{"name":"p","driver":{"tap":{"name":"t"}},"security_groups":["a","b"]},
                         {"name":"q","driver":{"tap":{"name":"u"}},"anti_spoofing":false}],
                "security_groups":[{"name":"a","default_deny":true,"rules":[{"protocol":"icmp"}]},
                                   {"name":"b","default_deny":true,"rules":[{"protocol":"tcp","ports":[80,80]}]}]}"#,
        ))
        .expect("valid");
        let p = &c.ports[0];
        let sec = p
            .security
            .as_ref()
            .expect("MAC anti-spoofing is on by default");
        assert_eq!(sec.mac.0, Mac::derived("p").0);
        let f = p.filter.as_ref().expect("filter");
        assert!(f.filters() && f.stateful, "stateful by default");
        assert_eq!(f.groups.len(), 2, "both groups apply, each its own");
        assert_eq!(f.groups[1].ingress.rules.len(), 1);
        assert!(c.ports[1].security.is_none(), "turned off explicitly");
        assert!(!sec.router, "not a router unless marked");
    }

    #[test]
    fn a_port_marked_as_router_may_advertise() {
        let c = check(&spec(
            r#"{"ports":[{"name":"r","driver":{"tap":{"name":"t"}},"router":true}]}"#,
        ))
        .expect("valid");
        let sec = c.ports[0].security.as_ref().expect("port security");
        assert!(sec.router);
    }
}
