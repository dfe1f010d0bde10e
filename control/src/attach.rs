//! Attachments: switch ports the daemon makes on request of the CNI plugin, one per
//! (container, interface), on a network of the applied topology.
//!
//! Two kinds, as the CNI configuration asks:
//!
//! - **`tap`** (default), for ordinary pods: the switch creates a tap interface, the
//!   daemon moves it into the pod's network namespace, renames it (`eth0`), sets its MAC,
//!   address and default route. The pod's kernel stack is then on the switch.
//! - **`vhost-user`**, for pods that run a DPDK or vnfhost virtio-user application: the
//!   switch listens on `RUN/cni/POD/IFNAME.sock` (directory per pod, mode 0750; socket
//!   0660) and the result names it in `interfaces[].socketPath`.
//!
//! A `tap` attachment of a VM sandbox is later handed over to its VM ([`for_vm`],
//! [`api::attach::HandOverRequest`]): it keeps its port, MAC and address and becomes a
//! `vhost-user` socket as above, and its tap leaves the namespace.
//!
//! Addresses come from the network's first IPv4 prefix (IPAM per network): the lowest
//! address that is not the network or broadcast address, a gateway, a topology pod's, or
//! another attachment's. Port security is on for every attachment: its MAC and address.
//!
//! The request and reply types are [`api::attach`]'s (re-exported here); this module
//! allocates attachments and sets their interfaces up.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

pub use api::attach::{
    valid_key, AttachError, AttachRequest, Attachment, HandOverRequest, Kind, NetnsId,
    CODE_FORBIDDEN_NETWORK, CODE_NOT_A_TAP, CODE_POOL_EXHAUSTED, CODE_PORT_LIMIT, CODE_SETUP,
    CODE_UNKNOWN_CONTAINER, CODE_UNKNOWN_NETWORK,
};

use crate::topology::{Cidr, Topology};

/// A short stable hash (FNV-1a, 64 bits) of the attachment key.
fn hash(container: &str, ifname: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in container.bytes().chain([0]).chain(ifname.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The vhost-user socket of (`container`, `ifname`): one directory per pod, named by a
/// hash of the full id, so ids never collide by a shared prefix and the path stays short
/// (a socket path has 108 bytes).
fn socket_path(run: &Path, container: &str, ifname: &str) -> String {
    run.join("cni")
        .join(format!("{:016x}", hash(container, "")))
        .join(format!("{ifname}.sock"))
        .display()
        .to_string()
}

/// What tap attachment `a` becomes once handed over to its sandbox's VM: the same
/// container, interface, request, port, MAC, address, gateway and namespace identity;
/// a vhost-user socket where the tap was ([`Attachment::vm`]). An attachment already
/// handed over is returned as it is; one CNI made as `vhost-user` is refused
/// ([`CODE_NOT_A_TAP`]).
pub fn for_vm(a: &Attachment, run: &Path) -> Result<Attachment, AttachError> {
    if a.vm {
        return Ok(a.clone());
    }
    if a.request.kind != Kind::Tap {
        return Err(AttachError::new(
            CODE_NOT_A_TAP,
            format!(
                "{}/{} is a vhost-user attachment already (CNI made it so); only a \
                 sandbox's tap attachment is handed over to its VM",
                a.container, a.ifname
            ),
        ));
    }
    Ok(Attachment {
        tap: None,
        socket: Some(socket_path(run, &a.container, &a.ifname)),
        vm: true,
        ..a.clone()
    })
}

/// Plans a new attachment: port name, MAC, address; fails on an unknown network or an
/// exhausted pool.
pub fn allocate(
    t: &Topology,
    existing: &[&Attachment],
    container: &str,
    ifname: &str,
    req: &AttachRequest,
    run: &Path,
) -> Result<Attachment, AttachError> {
    valid_key(container, ifname)?;
    let net = t
        .networks
        .iter()
        .find(|n| n.name == req.network)
        .ok_or_else(|| {
            AttachError::new(
                CODE_UNKNOWN_NETWORK,
                format!("network {:?} is not in the applied topology", req.network),
            )
        })?;
    let cidr = net
        .cidrs
        .iter()
        .filter_map(|c| Cidr::parse(c).ok())
        .find(|c| c.addr.is_ipv4())
        .ok_or_else(|| {
            AttachError::new(
                7,
                format!(
                    "network {}: no IPv4 prefix to take addresses from",
                    net.name
                ),
            )
        })?;
    // This node's block of the prefix, when nodes share the network.
    let block = match net.pool.as_deref().map(Cidr::parse) {
        Some(Ok(p)) if p.addr.is_ipv4() => p,
        _ => cidr,
    };
    let IpAddr::V4(base) = block.addr else {
        unreachable!("filtered to IPv4")
    };
    // Never the network's own first and last address, wherever the block lies.
    let net_mask = u32::MAX.checked_shl(32 - u32::from(cidr.len)).unwrap_or(0);
    let IpAddr::V4(net_base) = cidr.addr else {
        unreachable!("filtered to IPv4")
    };
    let net_first = u32::from(net_base) & net_mask;
    let mut used: Vec<Ipv4Addr> = net.gateway.iter().filter_map(|g| g.parse().ok()).collect();
    used.push(Ipv4Addr::from(net_first));
    used.push(Ipv4Addr::from(net_first | !net_mask));
    for p in &t.pods {
        for i in p.interfaces.iter().filter(|i| i.network == net.name) {
            used.extend(i.ips.iter().filter_map(|a| Cidr::parse(a).ok()).filter_map(
                |c| match c.addr {
                    IpAddr::V4(a) => Some(a),
                    IpAddr::V6(_) => None,
                },
            ));
        }
    }
    for a in existing.iter().filter(|a| a.request.network == net.name) {
        if let Some(Ok(ip)) = a.address.split('/').next().map(str::parse) {
            used.push(ip);
        }
    }
    let size = 1u64 << (32 - u32::from(block.len));
    // The block's first address, whatever host bits the prefix was written with.
    let mask = u32::MAX.checked_shl(32 - u32::from(block.len)).unwrap_or(0);
    let start = u32::from(base) & mask;
    let address = (0..size)
        .map(|i| Ipv4Addr::from(start.wrapping_add(i as u32)))
        .find(|a| !used.contains(a))
        .ok_or_else(|| {
            AttachError::new(
                CODE_POOL_EXHAUSTED,
                format!("network {}: no free address in {block}", net.name),
            )
        })?;
    let h = hash(container, ifname);
    let mut mac_h = h;
    let taken: Vec<String> = existing
        .iter()
        .map(|a| a.mac.clone())
        .chain(
            t.pods
                .iter()
                .flat_map(|p| p.interfaces.iter().map(|i| i.mac.to_lowercase())),
        )
        .collect();
    let mac = loop {
        let b = mac_h.to_be_bytes();
        // Locally administered unicast, the 02:76:6e ("vn") prefix of vnfhost.
        let m = format!("02:76:6e:{:02x}:{:02x}:{:02x}", b[5], b[6], b[7]);
        if !taken.contains(&m) {
            break m;
        }
        mac_h = mac_h.wrapping_mul(0x0100_0000_01b3).wrapping_add(1);
    };
    let id = format!("{:012x}", h & 0xffff_ffff_ffff);
    let (tap, socket) = match req.kind {
        // Created in the pod's namespace under its final name.
        Kind::Tap => (Some(ifname.to_string()), None),
        Kind::VhostUser => (None, Some(socket_path(run, container, ifname))),
    };
    Ok(Attachment {
        container: container.into(),
        ifname: ifname.into(),
        request: req.clone(),
        port: format!("cni-{id}"),
        mac,
        address: format!("{address}/{}", cidr.len),
        gateway: net
            .gateway
            .iter()
            .find(|g| g.parse::<Ipv4Addr>().is_ok())
            .cloned(),
        mtu: net
            .vni
            .and_then(|_| t.overlay_mtu(&crate::topology::Host::current())),
        tap,
        socket,
        netns_id: None,
        vm: false,
    })
}

/// The Kubernetes namespace of an attachment request (`K8S_POD_NAMESPACE`), if it names
/// a pod.
fn namespace_of(r: &AttachRequest) -> Option<&str> {
    r.pod
        .as_deref()
        .and_then(|p| p.split_once('/'))
        .map(|(ns, _)| ns)
}

/// Whether `container` may have one more port, `req`, next to `existing`:
///
/// - **Tenancy.** A pod's tenant is that of its primary interface's network (its first
///   attachment, which the node's CNI configuration chooses: `network`, or the one its
///   `namespaces` map gives the pod's namespace). Every further port of the pod (extra
///   networks from the pod's annotation, which the pod's owner writes) must be on a
///   network of that tenant, or on one whose `allowed_namespaces` lists the pod's
///   namespace.
/// - **Limits.** At most `limits.ports_per_pod` ports per pod (container), and
///   `limits.ports_per_namespace` for the pods of one Kubernetes namespace, and
///   `limits.ports_per_tenant` on the networks of one tenant.
///
/// Refusals carry [`CODE_FORBIDDEN_NETWORK`] or [`CODE_PORT_LIMIT`] and name the rule.
pub fn admit(
    t: &Topology,
    existing: &[&Attachment],
    container: &str,
    req: &AttachRequest,
) -> Result<(), AttachError> {
    let net_of = |name: &str| t.networks.iter().find(|n| n.name == name);
    let net = net_of(&req.network).ok_or_else(|| {
        AttachError::new(
            CODE_UNKNOWN_NETWORK,
            format!("network {:?} is not in the applied topology", req.network),
        )
    })?;
    let siblings: Vec<&&Attachment> = existing
        .iter()
        .filter(|a| a.container == container)
        .collect();
    let ns = namespace_of(req).or_else(|| siblings.iter().find_map(|a| namespace_of(&a.request)));
    let who = req
        .pod
        .clone()
        .map(|p| format!("pod {p}"))
        .unwrap_or_else(|| format!("container {container}"));
    let primary = siblings
        .iter()
        .find(|a| a.request.default_route)
        .or(siblings.first());
    if let Some(home) = primary.and_then(|p| net_of(&p.request.network)) {
        let opened = ns.is_some_and(|ns| net.allowed_namespaces.iter().any(|a| a == ns));
        if home.tenant != net.tenant && !opened {
            return Err(AttachError::new(
                CODE_FORBIDDEN_NETWORK,
                format!(
                    "{who} may not join network {:?}: it is tenant {:?}'s, the pod's primary \
                     network {:?} is tenant {:?}'s, and the network's allowed_namespaces does \
                     not list {}",
                    net.name,
                    net.tenant,
                    home.name,
                    home.tenant,
                    ns.map(|n| format!("namespace {n:?}"))
                        .unwrap_or_else(|| "the pod (it names no namespace)".into())
                ),
            ));
        }
    }
    let max_pod = t.limits.ports_per_pod as usize;
    if siblings.len() >= max_pod {
        return Err(AttachError::new(
            CODE_PORT_LIMIT,
            format!(
                "{who} has {} ports; limits.ports_per_pod is {max_pod}",
                siblings.len()
            ),
        ));
    }
    if let Some(ns) = ns {
        let in_ns = existing
            .iter()
            .filter(|a| {
                namespace_of(&a.request).or_else(|| {
                    // A port without a pod name (the VM runtime's) counts for the
                    // namespace of its container's other ports.
                    existing
                        .iter()
                        .filter(|b| b.container == a.container)
                        .find_map(|b| namespace_of(&b.request))
                }) == Some(ns)
            })
            .count();
        let max_ns = t.limits.ports_per_namespace as usize;
        if in_ns >= max_ns {
            return Err(AttachError::new(
                CODE_PORT_LIMIT,
                format!(
                    "namespace {ns:?} has {in_ns} ports; limits.ports_per_namespace is {max_ns}"
                ),
            ));
        }
    }
    let in_tenant = existing
        .iter()
        .filter(|a| net_of(&a.request.network).is_some_and(|n| n.tenant == net.tenant))
        .count();
    let max_tenant = t.limits.ports_per_tenant as usize;
    if in_tenant >= max_tenant {
        return Err(AttachError::new(
            CODE_PORT_LIMIT,
            format!(
                "tenant {:?} has {in_tenant} ports; limits.ports_per_tenant is {max_tenant}",
                net.tenant
            ),
        ));
    }
    Ok(())
}

/// The switch port spec of `a` on a network with VLAN `vlan`.
pub fn port_spec(a: &Attachment, vlan: u16) -> Result<api::switch::PortSpec, String> {
    use api::switch::{Driver, PortSpec, VhostMode};
    let bad = |what: &str| format!("attachment {}/{}: bad {what}", a.container, a.ifname);
    let ip: std::net::IpAddr = a
        .address
        .split('/')
        .next()
        .unwrap_or("")
        .parse()
        .map_err(|_| bad("address"))?;
    let driver = match (&a.tap, &a.socket) {
        (Some(t), _) => Driver::Tap {
            name: t.clone(),
            netns: a
                .request
                .netns
                .as_deref()
                .filter(|n| !n.is_empty())
                .map(Into::into),
        },
        (None, Some(s)) => Driver::VhostUser {
            path: s.into(),
            mode: VhostMode::Server,
            queues: 1,
            max_memory_mib: None,
        },
        (None, None) => return Err(bad("driver")),
    };
    Ok(PortSpec {
        name: a.port.clone(),
        driver,
        mac: Some(a.mac.parse().map_err(|_| bad("MAC"))?),
        vlan: api::VlanMode::Access {
            vlan: api::VlanId::new(vlan).ok_or_else(|| bad("VLAN"))?,
        },
        allowed_addresses: vec![ip],
        anti_spoofing: true,
        // A pod attached by the CNI never advertises routes.
        router: false,
        security_groups: Vec::new(),
    })
}

/// Configures the tap the switch made in `netns`: MAC, up, address, default route.
pub fn configure_tap(a: &Attachment, netns: &str) -> Result<(), AttachError> {
    set_up_tap(a, netns, false)
}

/// As [`configure_tap`], for a tap that may be configured already (put back after a
/// failed hand-over: the switch may or may not have closed and made it again): an
/// address or default route that exists is fine.
pub fn restore_tap(a: &Attachment, netns: &str) -> Result<(), AttachError> {
    set_up_tap(a, netns, true)
}

/// Removes what is left of `a`'s tap in `netns` once the switch no longer has it: an
/// interface named as the tap with its MAC (normally none: closing a tap removes it).
/// Another interface of that name is not the attachment's and stays.
pub fn remove_tap(a: &Attachment, netns: &str) -> Result<(), AttachError> {
    let fail = |e: String| AttachError::new(CODE_SETUP, format!("{}: {e}", a.ifname));
    let mac = a.mac.parse::<api::Mac>().map(|m| m.0).map_err(fail)?;
    let expect = a.netns_id.map(|id| (id.dev, id.ino));
    crate::netlink::remove_in(&a.ifname, mac, Path::new(netns), expect)
        .map(drop)
        .map_err(fail)
}

fn set_up_tap(a: &Attachment, netns: &str, again: bool) -> Result<(), AttachError> {
    let fail = |e: String| AttachError::new(CODE_SETUP, format!("{}: {e}", a.ifname));
    if !Path::new(netns).exists() {
        return Err(AttachError::new(
            4,
            format!("network namespace {netns:?} does not exist"),
        ));
    }
    let (ip, len) = a
        .address
        .split_once('/')
        .and_then(|(ip, l)| Some((ip.parse::<Ipv4Addr>().ok()?, l.parse::<u8>().ok()?)))
        .ok_or_else(|| fail(format!("bad address {}", a.address)))?;
    let mac = a.mac.parse::<api::Mac>().map(|m| m.0).map_err(fail)?;
    let p = crate::netlink::PodInterface {
        ifname: &a.ifname,
        mac,
        address: (ip, len),
        gateway: a
            .gateway
            .as_deref()
            .filter(|_| a.request.default_route)
            .and_then(|g| g.parse().ok()),
        mtu: a.mtu,
    };
    let expect = a.netns_id.map(|id| (id.dev, id.ino));
    crate::netlink::configure_in(&p, Path::new(netns), expect, again).map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: &str = r#"
networks:
  - { name: n, tenant: t, cidrs: [10.0.0.0/29], vlan: 10, gateway: [10.0.0.6] }
pods:
  - name: p
    memory: 64Mi
    interfaces: [{ network: n, mac: "02:00:00:00:00:01", ips: [10.0.0.1/29] }]
"#;

    #[test]
    fn addresses_skip_used_ones_and_run_out() {
        let t = crate::topology::parse(T).unwrap();
        let req = AttachRequest {
            network: "n".into(),
            netns: None,
            kind: Kind::Tap,
            pod: None,
            default_route: true,
        };
        let run = Path::new("/run/vnfhost");
        let mut have: Vec<Attachment> = Vec::new();
        // /29: .1 is the pod's, .6 the gateway's, .0 and .7 reserved: .2 .3 .4 .5 free.
        for want in ["10.0.0.2/29", "10.0.0.3/29", "10.0.0.4/29", "10.0.0.5/29"] {
            let refs: Vec<&Attachment> = have.iter().collect();
            let a = allocate(&t, &refs, &format!("c{}", have.len()), "eth0", &req, run).unwrap();
            assert_eq!(a.address, want);
            assert_eq!(a.gateway.as_deref(), Some("10.0.0.6"));
            assert_eq!(a.tap.as_deref(), Some("eth0"));
            have.push(a);
        }
        let refs: Vec<&Attachment> = have.iter().collect();
        let e = allocate(&t, &refs, "c9", "eth0", &req, run).unwrap_err();
        assert_eq!(e.code, CODE_POOL_EXHAUSTED);
        let other = AttachRequest {
            network: "nope".into(),
            ..req.clone()
        };
        assert_eq!(
            allocate(&t, &[], "c9", "eth0", &other, run)
                .unwrap_err()
                .code,
            CODE_UNKNOWN_NETWORK
        );
        assert_eq!(
            allocate(&t, &[], "../x", "eth0", &req, run)
                .unwrap_err()
                .code,
            4
        );
        assert_eq!(
            allocate(&t, &[], "c", "a-very-long-interface", &req, run)
                .unwrap_err()
                .code,
            4
        );
        let p = port_spec(&have[0], 10).unwrap();
        assert_eq!(p.name, have[0].port);
        assert_eq!(
            p.allowed_addresses,
            vec!["10.0.0.2".parse::<IpAddr>().unwrap()]
        );
        assert!(p.anti_spoofing);
    }

    #[test]
    fn a_tap_for_the_vm_keeps_its_port_mac_and_address_on_a_socket() {
        let t = crate::topology::parse(T).unwrap();
        let req = AttachRequest {
            network: "n".into(),
            netns: Some("/var/run/netns/sb".into()),
            kind: Kind::Tap,
            pod: Some("default/sb".into()),
            default_route: true,
        };
        let run = Path::new("/run/vnfhost");
        let tap = allocate(&t, &[], "sb", "eth0", &req, run).unwrap();
        let vm = for_vm(&tap, run).unwrap();
        assert!(vm.vm && vm.tap.is_none() && vm.kind() == Kind::VhostUser);
        assert_eq!(
            Attachment {
                tap: tap.tap.clone(),
                socket: None,
                vm: false,
                ..vm.clone()
            },
            tap,
            "only the driver changed"
        );
        // Where a vhost-user attachment of the same key would have its socket.
        let vu = AttachRequest {
            kind: Kind::VhostUser,
            ..req.clone()
        };
        let made_so = allocate(&t, &[], "sb", "eth0", &vu, run).unwrap();
        assert_eq!(vm.socket, made_so.socket);
        assert_eq!(for_vm(&vm, run).unwrap(), vm, "twice is once");
        let p = port_spec(&vm, 10).unwrap();
        assert_eq!(p.name, tap.port);
        assert!(matches!(
            p.driver,
            api::switch::Driver::VhostUser {
                mode: api::switch::VhostMode::Server,
                ..
            }
        ));
        assert_eq!(p.mac, port_spec(&tap, 10).unwrap().mac);
        assert_eq!(
            p.allowed_addresses,
            vec!["10.0.0.2".parse::<IpAddr>().unwrap()]
        );
        assert!(p.anti_spoofing);
        let e = for_vm(&made_so, run).unwrap_err();
        assert_eq!(e.code, CODE_NOT_A_TAP);
        assert!(e.error.contains("sb/eth0"), "{e:?}");
    }

    const TENANTS: &str = r#"
networks:
  - { name: a1, tenant: ta, cidrs: [10.0.0.0/24], vlan: 10 }
  - { name: a2, tenant: ta, cidrs: [10.0.1.0/24], vlan: 11 }
  - { name: b1, tenant: tb, cidrs: [10.0.0.0/24], vlan: 20 }
  - { name: b2, tenant: tb, cidrs: [10.0.2.0/24], vlan: 21, allowed_namespaces: [guests] }
limits: { ports_per_pod: 3, ports_per_namespace: 4, ports_per_tenant: 7 }
"#;

    fn req(net: &str, pod: &str, primary: bool) -> AttachRequest {
        AttachRequest {
            network: net.into(),
            netns: None,
            kind: Kind::Tap,
            pod: Some(pod.into()),
            default_route: primary,
        }
    }

    #[test]
    fn a_pod_joins_its_tenants_networks_and_those_opened_to_its_namespace() {
        let t = crate::topology::parse(TENANTS).unwrap();
        assert!(t
            .check(crate::topology::Host {
                cpus: 64,
                free_hugepages: 0,
                interface: crate::topology::interface_facts,
            })
            .is_empty());
        let run = Path::new("/run/vnfhost");
        let mut have: Vec<Attachment> = Vec::new();
        let add = |have: &mut Vec<Attachment>, c: &str, ifname: &str, r: AttachRequest| {
            let refs: Vec<&Attachment> = have.iter().collect();
            admit(&t, &refs, c, &r)?;
            let a = allocate(&t, &refs, c, ifname, &r, run)?;
            have.push(a);
            Ok::<(), AttachError>(())
        };
        // Pod x of namespace "apps", primary on tenant ta's a1.
        add(&mut have, "x", "eth0", req("a1", "apps/x", true)).unwrap();
        add(&mut have, "x", "net1", req("a2", "apps/x", false)).unwrap();
        let e = add(&mut have, "x", "net2", req("b1", "apps/x", false)).unwrap_err();
        assert_eq!(e.code, CODE_FORBIDDEN_NETWORK, "{e:?}");
        assert!(
            e.error.contains("\"tb\"") && e.error.contains("\"apps\""),
            "{e:?}"
        );
        // b2 is open to namespace "guests" only.
        let e = add(&mut have, "x", "net2", req("b2", "apps/x", false)).unwrap_err();
        assert_eq!(e.code, CODE_FORBIDDEN_NETWORK);
        add(&mut have, "g", "eth0", req("a1", "guests/g", true)).unwrap();
        add(&mut have, "g", "net1", req("b2", "guests/g", false)).unwrap();
        assert_eq!(have.len(), 4);
        // Per pod: x has 2 of 3; a third is fine, a fourth is refused.
        add(&mut have, "x", "net3", req("a2", "apps/x", false)).unwrap();
        let e = add(&mut have, "x", "net4", req("a2", "apps/x", false)).unwrap_err();
        assert_eq!(e.code, CODE_PORT_LIMIT);
        assert!(e.error.contains("limits.ports_per_pod is 3"), "{e:?}");
        // Per namespace: "apps" has 3 of 4; one more pod's first port fits, the next not.
        add(&mut have, "y", "eth0", req("a1", "apps/y", true)).unwrap();
        let e = add(&mut have, "y", "net1", req("a1", "apps/y", false)).unwrap_err();
        assert_eq!(e.code, CODE_PORT_LIMIT);
        assert!(e.error.contains("limits.ports_per_namespace is 4"), "{e:?}");
        // A pod of tenant tb as primary may not take ta's network either.
        add(&mut have, "z", "eth0", req("b1", "other/z", true)).unwrap();
        let e = add(&mut have, "z", "net1", req("a1", "other/z", false)).unwrap_err();
        assert_eq!(e.code, CODE_FORBIDDEN_NETWORK);
        // Per tenant, across namespaces: ta has 6 ports (x: 3, g: 1, y: 1 ... and
        // counting), up to 7; tb's ports do not count for ta.
        let ta = have
            .iter()
            .filter(|a| a.request.network.starts_with('a'))
            .count();
        for k in ta..7 {
            add(
                &mut have,
                &format!("w{k}"),
                "eth0",
                req("a1", &format!("ns{k}/w"), true),
            )
            .unwrap();
        }
        let e = add(&mut have, "v", "eth0", req("a2", "fresh/v", true)).unwrap_err();
        assert_eq!(e.code, CODE_PORT_LIMIT);
        assert!(e.error.contains("limits.ports_per_tenant is 7"), "{e:?}");
        add(&mut have, "u", "eth0", req("b1", "fresh/u", true)).unwrap();
    }

    #[test]
    fn limits_and_allowed_namespaces_are_checked() {
        let bad = TENANTS
            .replace("[guests]", "[Not_A_Namespace]")
            .replace("ports_per_pod: 3", "ports_per_pod: 0")
            .replace(
                "ports_per_tenant: 7 }",
                "ports_per_tenant: 0, console_log_max: 1Ki }",
            );
        let t = crate::topology::parse(&bad).unwrap();
        let p: Vec<String> = t
            .check(crate::topology::Host {
                cpus: 64,
                free_hugepages: 0,
                interface: crate::topology::interface_facts,
            })
            .iter()
            .map(|p| p.to_string())
            .collect();
        for want in [
            "networks[3].allowed_namespaces[0]",
            "limits.ports_per_pod",
            "limits.ports_per_tenant",
            "limits.console_log_max",
        ] {
            assert!(p.iter().any(|x| x.starts_with(want)), "{want}: {p:?}");
        }
        assert!(crate::topology::parse("limits: { ports_per_port: 1 }\n").is_err());
    }
}
