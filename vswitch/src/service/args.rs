//! `vnfhost switch` options as a front end to [`SwitchSpec`](api::switch::SwitchSpec):
//! each option value parses
//! into the spec's types, and the switch then runs exactly as if the daemon had sent
//! that spec.
//!
//! - `--port NAME,vhost-user=PATH[,client][,queues=Q][,max-memory=MiB]` or `--port NAME,tap=IFNAME[,netns=PATH]`,
//!   then `[,mac=MAC][,vlan=VID | ,trunk=LIST[,native=VID]][,ip=ADDR]…[,sg=GROUP]…[,anti-spoofing=on|off][,router]`.
//!   Port security is on when `ip=` is given or `anti-spoofing=on`, and off otherwise:
//!   this command is also the benchmark's and the tests' switch, whose generators send
//!   from any MAC. (In a spec and in `topology.yaml` it is on unless turned off.)
//!   `router` marks the peer as an IPv6 router, the only kind of port port security
//!   lets send router advertisements and redirects.
//!   A value that must hold a comma (a socket path) cannot be given here; the spec
//!   (`PUT /v1/config`) carries any path.
//!   A tunnel to another node is `--port NAME,vxlan=REMOTE,vni=N[,vlan=VID]` (needs
//!   `--uplink`).
//! - `--uplink IFNAME,address=ADDR[,udp-port=P]`, or over vhost-user
//!   `--uplink NAME,vhost-user=PATH,address=ADDR,mac=MAC,next-hop-mac=MAC[,mtu=N]`.
//! - `--router-if vlan=VID,ip=ADDR/LEN[,ip6=ADDR/LEN][,mac=MAC]` and
//!   `--route PREFIX/LEN,via=ADDR`: one router.
//! - `--security-group NAME[,deny][,deny-egress][,stateless],RULE…` with RULE `any`,
//!   `icmp`, `tcp[:PORTS]` or `udp[:PORTS]`, each optionally `@PREFIX/LEN` (the
//!   source); an egress rule is `out:RULE` (its prefix the destination).
//! - `--service NAME,vip=ADDR,port=P[,udp],backend=ADDR:PORT…[,affinity=SECONDS]`: a
//!   service of the router the `--router-if` options make.

use std::net::IpAddr;
use std::path::PathBuf;

use api::switch::{
    Driver, PortSpec, Protocol, RouteSpec, RouterInterfaceSpec, RuleSpec, SecurityGroupSpec,
    VhostMode,
};
use api::values::{Mac, Prefix, VlanId, VlanMode, VlanRange};

fn vlan_id(s: &str, what: &str) -> Result<VlanId, String> {
    s.parse::<u16>()
        .ok()
        .and_then(VlanId::new)
        .ok_or_else(|| format!("{what}={s:?} is not a VLAN id in 1..=4094"))
}

fn mac(s: &str, what: &str) -> Result<Mac, String> {
    s.parse().map_err(|e| format!("{what}={s:?}: {e}"))
}

fn prefix(s: &str, what: &str) -> Result<Prefix, String> {
    s.parse().map_err(|e| format!("{what}={s:?}: {e}"))
}

/// Parses one `--port` value.
pub fn parse_port(s: &str) -> Result<PortSpec, String> {
    let mut it = s.split(',');
    let name = it.next().unwrap_or("").trim();
    if name.is_empty() || name.contains('=') {
        return Err(format!("--port {s:?}: must start with the port name"));
    }
    if !super::spec::valid_port_name(name) {
        return Err(format!(
            "--port {s:?}: port name must be 1-32 of [A-Za-z0-9._-]"
        ));
    }
    let (mut path, mut tap, mut client, mut queues) = (None, None, false, 1u16);
    let (mut vxlan, mut vni) = (None, None);
    let mut max_memory_mib = None;
    let (mut netns, mut mac_, mut anti_spoofing, mut router) = (None, None, None, false);
    let (mut access, mut trunk, mut native) = (None, None, None);
    let (mut ips, mut groups) = (Vec::new(), Vec::new());
    for opt in it {
        let (k, v) = match opt.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (opt, None),
        };
        let need = |v: Option<&str>| -> Result<String, String> {
            v.filter(|v| !v.is_empty())
                .map(str::to_string)
                .ok_or(format!("--port {name}: {k} needs a value"))
        };
        match k {
            "vhost-user" => path = Some(PathBuf::from(need(v)?)),
            "vxlan" => {
                let a = need(v)?;
                vxlan =
                    Some(a.parse::<std::net::Ipv4Addr>().map_err(|_| {
                        format!("--port {name}: vxlan={a:?} is not an IPv4 address")
                    })?);
            }
            "vni" => {
                let a = need(v)?;
                vni = Some(
                    a.parse::<u32>()
                        .map_err(|_| format!("--port {name}: vni={a:?} is not a number"))?,
                );
            }
            "tap" => tap = Some(need(v)?),
            "netns" => netns = Some(PathBuf::from(need(v)?)),
            "client" if v.is_none() => client = true,
            "router" if v.is_none() => router = true,
            "server" if v.is_none() => client = false,
            "queues" => {
                let q: u16 = need(v)?
                    .parse()
                    .map_err(|_| format!("--port {name}: queues={v:?} is not a number"))?;
                if q == 0 || q > 64 {
                    return Err(format!("--port {name}: queues={q} is outside 1..=64"));
                }
                queues = q;
            }
            "max-memory" => {
                let v = need(v)?;
                max_memory_mib = Some(v.parse::<u64>().map_err(|_| {
                    format!("--port {name}: max-memory={v:?} is not a number of MiB")
                })?);
            }
            "mac" => mac_ = Some(mac(&need(v)?, "mac")?),
            "sg" => groups.push(need(v)?),
            "ip" => {
                let a = need(v)?;
                ips.push(
                    a.parse::<IpAddr>()
                        .map_err(|_| format!("--port {name}: ip={a:?} is not an IP address"))?,
                );
            }
            "anti-spoofing" => {
                anti_spoofing = match need(v)?.as_str() {
                    "on" => Some(true),
                    "off" => Some(false),
                    x => return Err(format!("--port {name}: anti-spoofing={x:?}: on or off")),
                }
            }
            "vlan" => access = Some(vlan_id(&need(v)?, "vlan")?),
            "native" => native = Some(vlan_id(&need(v)?, "native")?),
            "trunk" => {
                let list = need(v)?;
                let ranges = list
                    .split(':')
                    .map(|r| {
                        r.parse::<VlanRange>()
                            .map_err(|e| format!("--port {name}: trunk range {r:?}: {e}"))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                trunk = Some(ranges);
            }
            _ => return Err(format!("--port {name}: unknown option {opt:?}")),
        }
    }
    let driver = match (path, tap) {
        (None, None) if vxlan.is_some() => Driver::Vxlan {
            remote: vxlan.unwrap_or(std::net::Ipv4Addr::UNSPECIFIED),
            vni: vni.ok_or_else(|| format!("--port {name}: vxlan needs vni=N"))?,
        },
        _ if vxlan.is_some() || vni.is_some() => {
            return Err(format!(
                "--port {name}: vxlan=REMOTE,vni=N is a driver of its own"
            ))
        }
        (Some(_), None) if netns.is_some() => {
            return Err(format!("--port {name}: netns applies to tap ports only"))
        }
        (Some(path), None) => Driver::VhostUser {
            path,
            mode: if client {
                VhostMode::Client
            } else {
                VhostMode::Server
            },
            queues,
            max_memory_mib,
        },
        (None, Some(name_)) => {
            if queues != 1 || client || max_memory_mib.is_some() {
                return Err(format!(
                    "--port {name}: queues, client and max-memory apply to vhost-user ports only"
                ));
            }
            Driver::Tap { name: name_, netns }
        }
        (None, None) => return Err(format!("--port {name}: give vhost-user=PATH or tap=IFNAME")),
        (Some(_), Some(_)) => {
            return Err(format!("--port {name}: vhost-user and tap are exclusive"))
        }
    };
    let vlan = match (access, trunk, native) {
        (Some(_), Some(_), _) => {
            return Err(format!("--port {name}: vlan and trunk are exclusive"))
        }
        (_, None, Some(_)) => return Err(format!("--port {name}: native applies to trunk ports")),
        (Some(vlan), None, None) => VlanMode::Access { vlan },
        (None, Some(allowed), native) => VlanMode::Trunk { allowed, native },
        (None, None, None) => VlanMode::default(),
    };
    Ok(PortSpec {
        name: name.into(),
        driver,
        mac: mac_,
        vlan,
        anti_spoofing: anti_spoofing.unwrap_or(!ips.is_empty()),
        router,
        allowed_addresses: ips,
        security_groups: groups,
    })
}

/// Parses one `--uplink` value.
pub fn parse_uplink(s: &str) -> Result<api::switch::UplinkSpec, String> {
    let mut it = s.split(',');
    let name = it.next().unwrap_or("").trim().to_string();
    if name.is_empty() || name.contains('=') {
        return Err(format!(
            "--uplink {s:?}: must start with the interface name"
        ));
    }
    let (mut address, mut udp_port, mut path) = (None, 4789u16, None);
    let (mut mac_, mut next_hop, mut mtu) = (None, None, 1500u32);
    for part in it {
        match part.split_once('=') {
            Some(("address", v)) => {
                address = Some(
                    v.parse::<std::net::Ipv4Addr>()
                        .map_err(|_| format!("--uplink: address={v:?} is not an IPv4 address"))?,
                )
            }
            Some(("udp-port", v)) => {
                udp_port = v
                    .parse()
                    .map_err(|_| format!("--uplink: udp-port={v:?} is not a port"))?
            }
            Some(("vhost-user", v)) if !v.is_empty() => path = Some(PathBuf::from(v)),
            Some(("mac", v)) => mac_ = Some(mac(v, "mac")?),
            Some(("next-hop-mac", v)) => next_hop = Some(mac(v, "next-hop-mac")?),
            Some(("mtu", v)) => {
                mtu = v
                    .parse()
                    .map_err(|_| format!("--uplink: mtu={v:?} is not a number"))?
            }
            _ => return Err(format!("--uplink {s:?}: unknown part {part:?}")),
        }
    }
    let address = address.ok_or_else(|| format!("--uplink {s:?}: address=ADDR is missing"))?;
    let vhost_user = match (path, mac_, next_hop) {
        (None, None, None) => None,
        (Some(path), Some(mac), Some(next_hop_mac)) => Some(api::switch::VhostUplinkSpec {
            path,
            mac,
            next_hop_mac,
            mtu,
        }),
        _ => {
            return Err(format!(
                "--uplink {s:?}: vhost-user=PATH needs mac= and next-hop-mac= (and they need it)"
            ))
        }
    };
    Ok(api::switch::UplinkSpec {
        interface: name,
        address,
        udp_port,
        vhost_user,
    })
}

/// Parses one `--router-if` value.
pub fn parse_router_if(s: &str) -> Result<RouterInterfaceSpec, String> {
    let (mut vlan, mut ipv4, mut ipv6, mut mac_) = (None, None, None, None);
    for part in s.split(',') {
        match part.split_once('=') {
            Some(("vlan", v)) => vlan = Some(vlan_id(v, "vlan")?),
            Some(("mac", v)) => mac_ = Some(mac(v, "mac")?),
            Some(("ip", v)) => ipv4 = Some(prefix(v, "--router-if ip")?),
            Some(("ip6", v)) => ipv6 = Some(prefix(v, "--router-if ip6")?),
            _ => return Err(format!("--router-if {s:?}: unknown part {part:?}")),
        }
    }
    Ok(RouterInterfaceSpec {
        vlan: vlan.ok_or_else(|| format!("--router-if {s:?}: vlan=VID is missing"))?,
        mac: mac_,
        ipv4: ipv4.ok_or_else(|| format!("--router-if {s:?}: ip=ADDR/LEN is missing"))?,
        ipv6,
    })
}

/// Parses one `--route` value: `PREFIX/LEN,via=ADDR`.
pub fn parse_route(s: &str) -> Result<RouteSpec, String> {
    let (to, via) = s
        .split_once(",via=")
        .ok_or_else(|| format!("--route {s:?}: expected PREFIX/LEN,via=ADDR"))?;
    Ok(RouteSpec {
        to: prefix(to, "--route")?,
        via: via
            .parse()
            .map_err(|_| format!("--route {s:?}: via={via:?} is not an IP address"))?,
    })
}

/// Parses one `--service` value; `router` is the router it belongs to.
pub fn parse_service(s: &str, router: &str) -> Result<api::switch::ServiceSpec, String> {
    let mut parts = s.split(',');
    let name = parts.next().unwrap_or("").to_string();
    if name.is_empty() || name.contains('=') {
        return Err(format!("--service {s:?}: must start with its name"));
    }
    let what = |k: &str, v: &str| format!("--service {name}: {k}={v:?}");
    let (mut vip, mut port, mut udp) = (None, None, false);
    let (mut backends, mut affinity) = (Vec::new(), None);
    for part in parts {
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        match k {
            "vip" => {
                vip = Some(
                    v.parse()
                        .map_err(|_| what(k, v) + " is not an IPv4 address")?,
                )
            }
            "port" => port = Some(v.parse().map_err(|_| what(k, v) + " is not a port")?),
            "udp" if v.is_empty() => udp = true,
            "tcp" if v.is_empty() => udp = false,
            "backend" => {
                let (a, p) = v.rsplit_once(':').unwrap_or((v, ""));
                backends.push(api::switch::BackendSpec {
                    address: a.parse().map_err(|_| what(k, v) + " is not ADDR:PORT")?,
                    port: p.parse().map_err(|_| what(k, v) + " is not ADDR:PORT")?,
                });
            }
            "affinity" => affinity = Some(v.parse().map_err(|_| what(k, v) + " is not seconds")?),
            _ => return Err(format!("--service {name}: unknown option {part:?}")),
        }
    }
    Ok(api::switch::ServiceSpec {
        name: name.clone(),
        router: router.to_string(),
        vip: vip.ok_or(format!("--service {name}: needs vip="))?,
        protocol: if udp {
            api::switch::L4Protocol::Udp
        } else {
            api::switch::L4Protocol::Tcp
        },
        port: port.ok_or(format!("--service {name}: needs port="))?,
        backends,
        affinity_timeout_s: affinity,
    })
}

/// Parses one `--security-group` value.
pub fn parse_security_group(s: &str) -> Result<SecurityGroupSpec, String> {
    let mut parts = s.split(',');
    let name = parts.next().unwrap_or("").to_string();
    if name.is_empty() || name.contains(['@', ':']) {
        return Err(format!("--security-group {s:?}: must start with its name"));
    }
    let mut g = SecurityGroupSpec {
        name: name.clone(),
        default_deny: false,
        rules: Vec::new(),
        default_deny_egress: false,
        egress: Vec::new(),
        stateful: true,
    };
    for part in parts {
        match part {
            "deny" => g.default_deny = true,
            "deny-egress" => g.default_deny_egress = true,
            "stateless" => g.stateful = false,
            _ => {}
        }
        if matches!(part, "deny" | "deny-egress" | "stateless") {
            continue;
        }
        let (egress, part) = match part.strip_prefix("out:") {
            Some(rest) => (true, rest),
            None => (false, part),
        };
        let (rule, source) = match part.split_once('@') {
            Some((r, c)) => (r, Some(prefix(c, &format!("--security-group {name}"))?)),
            None => (part, None),
        };
        let (proto, ports) = match rule.split_once(':') {
            Some((r, p)) => {
                let (a, b) = p.split_once('-').unwrap_or((p, p));
                match (a.parse::<u16>(), b.parse::<u16>()) {
                    (Ok(a), Ok(b)) if a >= 1 && a <= b => (r, Some((a, b))),
                    _ => {
                        return Err(format!(
                            "--security-group {name}: ports {p:?} are not PORT or A-B"
                        ))
                    }
                }
            }
            None => (rule, None),
        };
        let protocol = match proto {
            "any" if ports.is_none() => Protocol::Any,
            "icmp" if ports.is_none() => Protocol::Icmp,
            "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            _ => return Err(format!("--security-group {name}: unknown rule {part:?}")),
        };
        if egress {
            g.egress.push(RuleSpec {
                protocol,
                ports,
                source: None,
                destination: source,
            });
        } else {
            g.rules.push(RuleSpec {
                protocol,
                ports,
                source,
                destination: None,
            });
        }
    }
    Ok(g)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_parse_into_the_spec() {
        let p = parse_port(
            "p1,vhost-user=/s,client,queues=2,vlan=10,mac=02:00:00:00:00:01,ip=10.0.0.1,sg=a,sg=b",
        )
        .expect("valid");
        assert_eq!(
            p.driver,
            Driver::VhostUser {
                path: "/s".into(),
                mode: VhostMode::Client,
                queues: 2,
                max_memory_mib: None,
            }
        );
        assert_eq!(p.security_groups, ["a", "b"]);
        assert!(p.anti_spoofing, "on with ip=");
        assert!(!parse_port("q,tap=t").unwrap().anti_spoofing, "off without");
        assert!(
            parse_port("q,tap=t,anti-spoofing=on")
                .unwrap()
                .anti_spoofing
        );
        assert_eq!(
            p.vlan,
            VlanMode::Access {
                vlan: VlanId::new(10).unwrap()
            }
        );
        let t = parse_port("t,tap=vt0,trunk=10-12:20,native=10,anti-spoofing=off").unwrap();
        assert!(!t.anti_spoofing);
        assert!(!p.router && !t.router, "not a router unless marked");
        assert!(parse_port("r,tap=vr0,ip=fd00::1,router").unwrap().router);
        assert!(
            parse_port("r,tap=vr0,router=yes").is_err(),
            "a flag, no value"
        );
        assert!(matches!(t.vlan, VlanMode::Trunk { ref allowed, .. } if allowed.len() == 2));
        for (arg, want) in [
            ("", "port name"),
            ("p0", "vhost-user=PATH or tap"),
            ("p0,vhost-user=", "needs a value"),
            ("p0,vhost-user=/s,queues=0", "outside 1..=64"),
            ("p0,vhost-user=/s,vlan=4095", "1..=4094"),
            ("p0,vhost-user=/s,bogus", "unknown option"),
            ("p0,vhost-user=/s,mac=zz", "six colon"),
            ("p0,vhost-user=/s,tap=x", "exclusive"),
        ] {
            let e = parse_port(arg).expect_err(arg);
            assert!(e.contains(want), "{arg}: {e}");
        }
        let r = parse_router_if("vlan=10,ip=10.0.0.254/24,ip6=fd00::fe/64").unwrap();
        assert_eq!(r.ipv4.len, 24);
        assert!(parse_router_if("ip=10.0.0.1/24")
            .unwrap_err()
            .contains("vlan"));
        assert!(parse_route("10.0.0.0/33,via=10.0.0.1").is_err());
        let g = parse_security_group("web,deny,tcp:80@10.0.0.0/8,icmp").unwrap();
        assert!(g.default_deny && g.rules.len() == 2);
        assert!(parse_security_group("web,tcp:80@10.0.0.0/40").is_err());
    }
}
