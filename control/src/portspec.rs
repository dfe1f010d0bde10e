//! Parsing of `--port` arguments:
//! `NAME,vhost-user=PATH[,client][,queues=Q][,mac=MAC][,vlan=VID | ,trunk=LIST[,native=VID]]`
//! or `NAME,tap=IFNAME[,vlan=...]`.

use std::path::PathBuf;

use vswitch::bridge::{Vid, VlanMode, VlanSet};

/// The driver behind a port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortKind {
    /// A vhost-user backend port.
    VhostUser {
        /// Socket path.
        path: PathBuf,
        /// Connect to the socket instead of creating it.
        client: bool,
        /// Queue pairs.
        queues: u16,
    },
    /// A kernel tap interface.
    Tap {
        /// Interface name.
        ifname: String,
        /// The network namespace to create it in (default: the switch's).
        netns: Option<PathBuf>,
    },
}

/// A parsed `--port` argument.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortSpec {
    /// Port name.
    pub name: String,
    /// Driver.
    pub kind: PortKind,
    /// MAC reported to the frontend.
    pub mac: [u8; 6],
    /// VLAN membership.
    pub vlan: VlanMode,
    /// Addresses the port may send from (`ip=`, repeatable); when any is given, port
    /// security is on: the port may send only from `mac` and these addresses.
    pub ips: Vec<std::net::IpAddr>,
    /// Security group (`sg=NAME`, defined with `--security-group`).
    pub sg: Option<String>,
}

fn parse_vid(s: &str, what: &str) -> Result<Vid, String> {
    let v: u16 = s
        .parse()
        .map_err(|_| format!("{what}={s:?} is not a VLAN id"))?;
    Vid::new(v).ok_or_else(|| format!("{what}={v} is outside 1..=4094"))
}

/// Parses a MAC address `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return Err(format!("mac={s:?} is not six colon-separated bytes"));
    }
    let mut m = [0u8; 6];
    for (o, p) in m.iter_mut().zip(parts) {
        *o = u8::from_str_radix(p, 16).map_err(|_| format!("mac={s:?} has a bad byte {p:?}"))?;
    }
    Ok(m)
}

/// A locally administered MAC derived from the port name (stable across runs).
fn default_mac(name: &str) -> [u8; 6] {
    let mut h: u32 = 0x811c_9dc5;
    for b in name.bytes() {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    let b = h.to_be_bytes();
    [0x02, 0x76, b[0], b[1], b[2], b[3]]
}

/// The default MAC of router interfaces (locally administered).
pub const ROUTER_MAC: [u8; 6] = [0x02, 0x76, 0x6e, 0x68, 0x72, 0x01];

/// Parses `ADDR/LEN` (IPv4 or IPv6) for option `what`, with the checks of
/// `topology::Cidr::parse`.
fn prefix(v: &str, what: &str) -> Result<(std::net::IpAddr, u8), String> {
    crate::topology::Cidr::parse(v)
        .map(|c| (c.addr, c.len))
        .map_err(|e| format!("{what}: {e}"))
}

/// Parses one `--router-if` value: `vlan=VID,ip=ADDR/LEN[,ip6=ADDR/LEN][,mac=MAC]`.
pub fn parse_router_if(s: &str) -> Result<vswitch::router::RouterIf, String> {
    use std::net::IpAddr;
    let (mut vid, mut ip, mut mac, mut ip6) = (None, None, ROUTER_MAC, None);
    for part in s.split(',') {
        match part.split_once('=') {
            Some(("vlan", v)) => vid = Some(parse_vid(v, "vlan")?),
            Some(("mac", v)) => mac = parse_mac(v)?,
            Some(("ip", v)) => match prefix(v, "--router-if ip")? {
                (IpAddr::V4(a), l @ 1..=30) => ip = Some((a, l)),
                _ => {
                    return Err(format!(
                        "--router-if ip={v:?}: expected an IPv4 ADDR/LEN with LEN 1..=30"
                    ))
                }
            },
            Some(("ip6", v)) => match prefix(v, "--router-if ip6")? {
                (IpAddr::V6(a), l @ 1..=127) => ip6 = Some((a, l)),
                _ => {
                    return Err(format!(
                        "--router-if ip6={v:?}: expected an IPv6 ADDR/LEN with LEN 1..=127"
                    ))
                }
            },
            _ => return Err(format!("--router-if {s:?}: unknown part {part:?}")),
        }
    }
    let vid = vid.ok_or_else(|| format!("--router-if {s:?}: vlan=VID is missing"))?;
    let (ip, prefix) = ip.ok_or_else(|| format!("--router-if {s:?}: ip=ADDR/LEN is missing"))?;
    Ok(vswitch::router::RouterIf {
        vid,
        mac: vswitch::wire::EthernetAddress(mac),
        ip,
        prefix,
        ip6,
    })
}

/// Parses one `--security-group` value:
/// `NAME[,deny],RULE...` with RULE one of `any`, `icmp`, `tcp[:PORTS]`, `udp[:PORTS]`,
/// each optionally followed by `@PREFIX/LEN` (the source); PORTS is `80` or `1000-2000`.
pub fn parse_security_group(s: &str) -> Result<(String, vswitch::IngressFilter), String> {
    use vswitch::{FilterRule, RuleProto};
    let mut parts = s.split(',');
    let name = parts.next().unwrap_or("").to_string();
    if name.is_empty() || name.contains(['@', ':']) {
        return Err(format!("--security-group {s:?}: must start with its name"));
    }
    let mut filter = vswitch::IngressFilter {
        default_deny: false,
        rules: Vec::new(),
    };
    for part in parts {
        if part == "deny" {
            filter.default_deny = true;
            continue;
        }
        let (rule, src) = match part.split_once('@') {
            Some((r, c)) => (r, Some(prefix(c, &format!("--security-group {name}"))?)),
            None => (part, None),
        };
        let ports = |p: Option<&str>| -> Result<Option<(u16, u16)>, String> {
            let Some(p) = p else { return Ok(None) };
            let (a, b) = p.split_once('-').unwrap_or((p, p));
            match (a.parse::<u16>(), b.parse::<u16>()) {
                (Ok(a), Ok(b)) if a >= 1 && a <= b => Ok(Some((a, b))),
                _ => Err(format!(
                    "--security-group {name}: ports {p:?} are not PORT or A-B"
                )),
            }
        };
        let (proto, p) = match rule.split_once(':') {
            Some((r, p)) => (r, Some(p)),
            None => (rule, None),
        };
        let proto = match proto {
            "any" if p.is_none() => RuleProto::Any,
            "icmp" if p.is_none() => RuleProto::Icmp,
            "tcp" => RuleProto::Tcp(ports(p)?),
            "udp" => RuleProto::Udp(ports(p)?),
            _ => return Err(format!("--security-group {name}: unknown rule {part:?}")),
        };
        filter.rules.push(FilterRule { proto, src });
    }
    Ok((name, filter))
}

/// A static route of either family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// IPv4.
    V4(vswitch::router::StaticRoute),
    /// IPv6.
    V6(vswitch::router::StaticRoute6),
}

/// Parses one `--route` value: `PREFIX/LEN,via=ADDR`, IPv4 or IPv6.
pub fn parse_route(s: &str) -> Result<Route, String> {
    use std::net::IpAddr;
    let (dst, via) = s
        .split_once(",via=")
        .ok_or_else(|| format!("--route {s:?}: expected PREFIX/LEN,via=ADDR"))?;
    let (dst, len) = prefix(dst, &format!("--route {s:?}"))?;
    let via: IpAddr = via
        .parse()
        .map_err(|_| format!("--route {s:?}: via={via:?} is not an IP address"))?;
    match (dst, via) {
        (IpAddr::V4(dst), IpAddr::V4(via)) => {
            Ok(Route::V4(vswitch::router::StaticRoute { dst, len, via }))
        }
        (IpAddr::V6(dst), IpAddr::V6(via)) => {
            Ok(Route::V6(vswitch::router::StaticRoute6 { dst, len, via }))
        }
        _ => Err(format!(
            "--route {s:?}: prefix and next hop of different families"
        )),
    }
}

/// Parses one `--port` value.
pub fn parse_port<'a>(s: &'a str) -> Result<PortSpec, String> {
    let mut it = s.split(',');
    let name = it.next().unwrap_or("").trim();
    if name.is_empty() || name.contains('=') {
        return Err(format!("--port {s:?}: must start with the port name"));
    }
    if name.len() > 32
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
    {
        return Err(format!(
            "--port {s:?}: port name must be 1-32 of [A-Za-z0-9._-]"
        ));
    }
    let (mut path, mut tap, mut client, mut queues, mut mac) = (None, None, false, 1u16, None);
    let mut netns = None;
    let (mut access, mut trunk, mut native) = (None, None, None);
    let mut ips = Vec::new();
    let mut sg = None;
    for opt in it {
        let (k, v) = match opt.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (opt, None),
        };
        let need = |v: Option<&'a str>| -> Result<&'a str, String> {
            v.filter(|v| !v.is_empty())
                .ok_or(format!("--port {name}: {k} needs a value"))
        };
        match k {
            "vhost-user" => path = Some(PathBuf::from(need(v)?)),
            "tap" => tap = Some(need(v)?.to_string()),
            "netns" => netns = Some(PathBuf::from(need(v)?)),
            "client" if v.is_none() => client = true,
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
            "mac" => mac = Some(parse_mac(need(v)?)?),
            "sg" => sg = Some(need(v)?.to_string()),
            "ip" => {
                let a = need(v)?;
                ips.push(
                    a.parse()
                        .map_err(|_| format!("--port {name}: ip={a:?} is not an IP address"))?,
                );
            }
            "vlan" => access = Some(parse_vid(need(v)?, "vlan")?),
            "native" => native = Some(parse_vid(need(v)?, "native")?),
            "trunk" => {
                let mut set = VlanSet::new();
                for part in need(v)?.split(':') {
                    let (a, b) = part.split_once('-').unwrap_or((part, part));
                    let (a, b) = (parse_vid(a, "trunk")?, parse_vid(b, "trunk")?);
                    if b < a {
                        return Err(format!("--port {name}: trunk range {part:?} is backwards"));
                    }
                    for v in a.get()..=b.get() {
                        if let Some(v) = Vid::new(v) {
                            set.insert(v);
                        }
                    }
                }
                trunk = Some(set);
            }
            _ => return Err(format!("--port {name}: unknown option {opt:?}")),
        }
    }
    let kind = match (path, tap) {
        (Some(_), None) if netns.is_some() => {
            return Err(format!("--port {name}: netns applies to tap ports only"))
        }
        (Some(path), None) => PortKind::VhostUser {
            path,
            client,
            queues,
        },
        (None, Some(ifname)) => {
            if queues != 1 || client {
                return Err(format!(
                    "--port {name}: queues and client apply to vhost-user ports only"
                ));
            }
            PortKind::Tap { ifname, netns }
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
        (Some(_), None, Some(_)) => {
            return Err(format!("--port {name}: native applies to trunk ports"))
        }
        (Some(vid), None, None) => VlanMode::Access { vid },
        (None, Some(allowed), native) => VlanMode::Trunk { allowed, native },
        (None, None, Some(_)) => {
            return Err(format!("--port {name}: native applies to trunk ports"))
        }
        (None, None, None) => VlanMode::Access { vid: Vid::MIN },
    };
    Ok(PortSpec {
        name: name.into(),
        kind,
        mac: mac.unwrap_or_else(|| default_mac(name)),
        vlan,
        ips,
        sg,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_issue_example_parses() {
        let p = parse_port("p0,vhost-user=/run/vnfhost/p0.sock").expect("valid");
        assert_eq!(p.name, "p0");
        assert_eq!(
            p.kind,
            PortKind::VhostUser {
                path: "/run/vnfhost/p0.sock".into(),
                client: false,
                queues: 1
            }
        );
        assert_eq!(p.vlan, VlanMode::Access { vid: Vid::MIN });
        let p = parse_port("p1,vhost-user=/s,client,queues=2,vlan=10,mac=02:00:00:00:00:01")
            .expect("valid");
        assert_eq!(
            p.kind,
            PortKind::VhostUser {
                path: "/s".into(),
                client: true,
                queues: 2
            }
        );
        assert_eq!(p.mac, [2, 0, 0, 0, 0, 1]);
        assert_eq!(
            p.vlan,
            VlanMode::Access {
                vid: Vid::new(10).expect("vid")
            }
        );
    }

    #[test]
    fn trunks_parse_ranges() {
        let p = parse_port("t,tap=vt0,trunk=10-12:20,native=10").expect("valid");
        let VlanMode::Trunk { allowed, native } = p.vlan else {
            panic!("not a trunk")
        };
        let v = |x| Vid::new(x).expect("vid");
        assert_eq!(native, Some(v(10)));
        assert!(allowed.contains(v(11)) && allowed.contains(v(20)) && !allowed.contains(v(13)));
    }

    #[test]
    fn bad_ports_say_what_is_wrong() {
        for (arg, want) in [
            ("", "port name"),
            ("p0", "vhost-user=PATH or tap"),
            ("p0,vhost-user=", "needs a value"),
            ("p0,vhost-user=/s,queues=0", "outside 1..=64"),
            ("p0,vhost-user=/s,queues=x", "not a number"),
            ("p0,vhost-user=/s,vlan=4095", "outside 1..=4094"),
            ("p0,vhost-user=/s,bogus", "unknown option"),
            ("p0,vhost-user=/s,mac=zz", "six colon"),
            ("p0,vhost-user=/s,tap=x", "exclusive"),
        ] {
            let e = parse_port(arg).expect_err(arg);
            assert!(e.contains(want), "{arg}: {e}");
        }
    }

    #[test]
    fn router_interfaces_and_routes() {
        let r = parse_router_if("vlan=10,ip=10.0.0.254/24,ip6=fd00::fe/64").unwrap();
        assert_eq!((r.vid.get(), r.prefix), (10, 24));
        assert_eq!(r.ip6.map(|(_, l)| l), Some(64));
        assert!(
            parse_router_if("vlan=10,ip=fd00::1/64").is_err(),
            "v6 given as ip="
        );
        assert!(
            parse_router_if("vlan=10,ip=10.0.0.1/32").is_err(),
            "no hosts on a /32"
        );
        assert!(parse_router_if("ip=10.0.0.1/24")
            .unwrap_err()
            .contains("vlan"));
        assert!(matches!(
            parse_route("192.168.0.0/16,via=10.0.1.1"),
            Ok(Route::V4(_))
        ));
        assert!(matches!(
            parse_route("2001:db8::/32,via=fd00::1"),
            Ok(Route::V6(_))
        ));
        assert!(parse_route("2001:db8::/32,via=10.0.0.1")
            .unwrap_err()
            .contains("different families"));
        assert!(parse_route("10.0.0.0/33,via=10.0.0.1").is_err());
        let (name, f) = parse_security_group("web,deny,tcp:80@10.0.0.0/8,icmp").unwrap();
        assert_eq!(
            (name.as_str(), f.default_deny, f.rules.len()),
            ("web", true, 2)
        );
        assert!(parse_security_group("web,tcp:80@10.0.0.0/40").is_err());
    }
}
