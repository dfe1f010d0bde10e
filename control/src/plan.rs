//! From a checked [`Topology`] to what runs: the switch's command line and configuration
//! ([`SwitchSpec`]), and one `vnfhost vm run` command line per pod.
//!
//! Names and places, under the daemon's run directory `RUN` (`/run/vnfhost`):
//!
//! | what | where |
//! |---|---|
//! | switch control socket | `RUN/switch.sock` |
//! | switch log | `RUN/switch.log` (rotated to `switch.log.1` at 16 MiB by `vnfhost console-log`) |
//! | pod directory | `RUN/pods/POD/` |
//! | port of a pod's interface *j* | switch port `POD.ethJ`, vhost-user socket `RUN/pods/POD/ethJ.sock` (the switch listens, the VM connects and reconnects) |
//! | pod console and VMM log | `RUN/pods/POD/console.log` (rotated to `console.log.1` at `limits.console_log_max` by `vnfhost console-log`), `RUN/pods/POD/vmm.log` (rotated the same way) |
//!
//! Each network is a VLAN (untagged: VLAN 1; a VXLAN network an internal VLAN, see
//! [`Topology::vlan_of`]); each router is a routing domain with an interface on each of
//! its networks at the network's gateway addresses. With `switch.uplink`, each VXLAN
//! network gets a tunnel port per remote VTEP, named `vx.VNI.ADDRESS`, and pods on it
//! are told the uplink's MTU less 50.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use api::switch::{
    Driver, PortSpec, Protocol as ApiProtocol, RouteSpec, RouterInterfaceSpec, RouterSpec,
    RuleSpec, SecurityGroupSpec, SwitchSpec, UplinkSpec, VhostMode,
};
use api::values::{Prefix, VlanId, VlanMode};

use crate::pod_cmd::RunSpec;
use crate::topology::{
    parse_memory, Cidr, Host, HypervisorSpec, PodCommand, Protocol, RestartPolicy, Topology,
};
pub use api::daemon::GuestImage;

/// One pod as it runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodPlan {
    /// Pod name.
    pub name: String,
    /// `vnfhost vm run …` arguments (after the program); a change restarts the pod.
    pub args: Vec<String>,
    /// Restart policy.
    pub restart: RestartPolicy,
    /// Its switch ports, `eth0` first.
    pub ports: Vec<String>,
    /// Size at which its `console.log` is rotated (`limits.console_log_max`; a change
    /// applies from the pod's next start).
    pub console_log_max: u64,
    /// Its directory.
    pub dir: PathBuf,
    /// An image pod's keeper spec: the file `args` names and its content, written
    /// before the pod starts.
    pub run_spec: Option<(PathBuf, String)>,
}

/// Where image pods' VMs keep their disk slots (on disk: the run directory is a tmpfs).
pub const VM_STATE_DIR: &str = "/var/lib/vnfhost/topology-vm";

/// Everything that runs for a topology.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// `vnfhost switch …` arguments; a change restarts the switch.
    pub switch_args: Vec<String>,
    /// The switch's configuration.
    pub switch: SwitchSpec,
    /// Pods, in file order.
    pub pods: Vec<PodPlan>,
}

/// The switch control socket under `run`.
pub fn switch_socket(run: &Path) -> PathBuf {
    run.join("switch.sock")
}

fn cidr_of(nets: &[Cidr], a: IpAddr) -> Option<Cidr> {
    nets.iter().copied().find(|c| c.contains(a))
}

/// The switch's form of a topology security group.
fn group_spec(g: &crate::topology::SecurityGroup) -> Result<SecurityGroupSpec, String> {
    Ok(SecurityGroupSpec {
        name: g.name.clone(),
        default_deny: g.default_deny_ingress,
        rules: rule_specs(g, &g.ingress, false)?,
        default_deny_egress: g.default_deny_egress,
        egress: rule_specs(g, &g.egress, true)?,
        stateful: g.stateful,
    })
}

fn rule_specs(
    g: &crate::topology::SecurityGroup,
    list: &[crate::topology::Rule],
    egress: bool,
) -> Result<Vec<RuleSpec>, String> {
    let mut rules = Vec::new();
    let dir = if egress { "egress" } else { "ingress" };
    for (k, r) in list.iter().enumerate() {
        let at = format!("security group {} {dir}[{k}]", g.name);
        let ports = match &r.ports {
            None => None,
            Some(p) => {
                let (a, b) = p.split_once('-').unwrap_or((p, p));
                match (a.trim().parse::<u16>(), b.trim().parse::<u16>()) {
                    (Ok(a), Ok(b)) => Some((a, b)),
                    _ => return Err(format!("{at}.ports: {p:?} is not PORT or A-B")),
                }
            }
        };
        rules.push(RuleSpec {
            protocol: match r.protocol {
                Protocol::Any => ApiProtocol::Any,
                Protocol::Tcp => ApiProtocol::Tcp,
                Protocol::Udp => ApiProtocol::Udp,
                Protocol::Icmp => ApiProtocol::Icmp,
            },
            ports,
            source: None,
            destination: None,
        });
        let remote = r
            .cidr
            .as_deref()
            .map(|c| c.parse().map_err(|e| format!("{at}.cidr: {e}")))
            .transpose()?;
        if let Some(last) = rules.last_mut() {
            if egress {
                last.destination = remote;
            } else {
                last.source = remote;
            }
        }
    }
    Ok(rules)
}

/// The switch port of the tunnel to `remote` on `vni`.
pub fn tunnel_port(vni: u32, remote: std::net::Ipv4Addr) -> String {
    format!("vx.{vni}.{remote}")
}

/// The plan for `t`, which must have passed [`Topology::check`] on `host`.
pub fn plan(t: &Topology, run: &Path, image: &GuestImage, host: &Host) -> Result<Plan, String> {
    let mut switch_args = vec![
        "switch".to_string(),
        "--control".into(),
        switch_socket(run).display().to_string(),
        "--idle-max-us".into(),
        t.switch.idle_max_us.to_string(),
    ];
    for c in &t.switch.cores {
        switch_args.extend(["--core".into(), c.to_string()]);
    }
    if t.switch.hugepages {
        switch_args.push("--hugepages".into());
    }

    let mut nets = HashMap::new();
    for n in &t.networks {
        let cidrs = n
            .cidrs
            .iter()
            .map(|c| Cidr::parse(c))
            .collect::<Result<Vec<_>, _>>()?;
        let vlan = t
            .vlan_of(&n.name)
            .ok_or_else(|| format!("network {}: no VLAN left to carry it", n.name))?;
        nets.insert(n.name.as_str(), (n, vlan, cidrs));
    }

    let mut sw = SwitchSpec::default();
    // The overlay: the uplink, and a tunnel per (VXLAN network, remote VTEP).
    let overlay_mtu = t.overlay_mtu(host);
    if let Some(u) = &t.switch.uplink {
        let address = t
            .vtep_address(host)
            .ok_or_else(|| format!("switch.uplink: no tunnel address on {}", u.interface))?;
        sw.uplink = Some(UplinkSpec {
            interface: u.interface.clone(),
            address,
            udp_port: u.udp_port,
            vhost_user: None,
        });
        let mut vxlan: Vec<_> = t
            .networks
            .iter()
            .filter_map(|n| Some((n.vni?, n.name.as_str())))
            .collect();
        vxlan.sort_unstable();
        for (vni, name) in vxlan {
            let vlan = nets.get(name).map(|(_, v, _)| *v).unwrap_or(1);
            for v in &t.vteps {
                let remote: std::net::Ipv4Addr = v
                    .address
                    .parse()
                    .map_err(|_| format!("vtep {}: address {}", v.name, v.address))?;
                sw.ports.push(PortSpec {
                    name: tunnel_port(vni, remote),
                    driver: Driver::Vxlan { remote, vni },
                    mac: None,
                    vlan: VlanMode::Access {
                        vlan: VlanId::new(vlan).ok_or_else(|| format!("VLAN {vlan}"))?,
                    },
                    allowed_addresses: Vec::new(),
                    anti_spoofing: false,
                    router: false,
                    security_groups: Vec::new(),
                });
            }
        }
    }
    for r in &t.routers {
        let mut rs = RouterSpec {
            name: r.name.clone(),
            interfaces: Vec::new(),
            routes: r
                .routes
                .iter()
                .map(|rt| {
                    Ok(RouteSpec {
                        to: rt
                            .to
                            .parse()
                            .map_err(|e| format!("router {}: route to {}: {e}", r.name, rt.to))?,
                        via: rt
                            .via
                            .parse()
                            .map_err(|_| format!("router {}: via {}", r.name, rt.via))?,
                    })
                })
                .collect::<Result<_, String>>()?,
        };
        for name in &r.networks {
            let (n, vlan, cidrs) = nets
                .get(name.as_str())
                .ok_or_else(|| format!("router {}: unknown network {name}", r.name))?;
            let (mut ipv4, mut ipv6) = (None, None);
            for g in &n.gateway {
                let a: IpAddr = g.parse().map_err(|_| format!("gateway {g}"))?;
                let c = cidr_of(cidrs, a)
                    .ok_or_else(|| format!("network {}: gateway {a} outside it", n.name))?;
                let p = Prefix {
                    addr: a,
                    len: c.len,
                };
                if a.is_ipv4() {
                    ipv4 = Some(p);
                } else {
                    ipv6 = Some(p);
                }
            }
            rs.interfaces.push(RouterInterfaceSpec {
                vlan: VlanId::new(*vlan)
                    .ok_or_else(|| format!("network {}: VLAN {vlan}", n.name))?,
                mac: None,
                ipv4: ipv4.ok_or_else(|| {
                    format!("router {}: network {} has no IPv4 gateway", r.name, n.name)
                })?,
                ipv6,
            });
        }
        sw.routers.push(rs);
    }
    for g in &t.security_groups {
        sw.security_groups.push(group_spec(g)?);
    }
    sw.sessions = t.switch.sessions;
    for s in &t.services {
        let r = t
            .resolve_service(s)
            .map_err(|e| format!("service {}: {}", s.name, e[0].1))?;
        for p in &s.ports {
            sw.services.push(api::switch::ServiceSpec {
                name: format!("{}:{}/{}", s.name, p.port, p.protocol.as_str()),
                router: r.router.clone(),
                vip: s.vip,
                protocol: p.protocol,
                port: p.port,
                backends: r
                    .backends
                    .iter()
                    .map(|a| api::switch::BackendSpec {
                        address: *a,
                        port: p.target_port.unwrap_or(p.port),
                    })
                    .collect(),
                affinity_timeout_s: r.affinity_s,
            });
        }
    }

    let mut pods = Vec::new();
    for pod in &t.pods {
        let dir = run.join("pods").join(&pod.name);
        let mem = parse_memory(&pod.memory)?;
        let hypervisor = match pod.hypervisor {
            HypervisorSpec::Auto => "auto",
            HypervisorSpec::Kvm => "kvm",
            HypervisorSpec::Qemu => "qemu",
        };
        let kernel = pod
            .kernel
            .clone()
            .unwrap_or_else(|| image.kernel.display().to_string());
        let mut args = vec![
            "vm".to_string(),
            "run".into(),
            "--hypervisor".into(),
            hypervisor.into(),
            "--kernel".into(),
            kernel,
            "--mem".into(),
            format!("{}M", mem >> 20),
            "--vcpus".into(),
            pod.vcpus.to_string(),
        ];
        match (&pod.initrd, &pod.kernel) {
            (Some(i), _) => args.extend(["--initrd".into(), i.clone()]),
            (None, None) => args.extend(["--initrd".into(), image.initrd.display().to_string()]),
            (None, Some(_)) => {}
        }
        if !pod.cpus.is_empty() {
            let list: Vec<String> = pod.cpus.iter().map(|c| c.to_string()).collect();
            args.extend(["--cpus".into(), list.join(",")]);
        }
        if pod.hugepages {
            args.push("--hugepages".into());
        }
        let mut append = Vec::new();
        let mut ports = Vec::new();
        for (j, ifc) in pod.interfaces.iter().enumerate() {
            let (n, vlan, _) = nets
                .get(ifc.network.as_str())
                .ok_or_else(|| format!("pod {}: unknown network {}", pod.name, ifc.network))?;
            let port = format!("{}.eth{j}", pod.name);
            let sock = dir.join(format!("eth{j}.sock"));
            let spec = PortSpec {
                name: port.clone(),
                driver: Driver::VhostUser {
                    path: sock.clone(),
                    mode: VhostMode::Server,
                    queues: ifc.queues,
                    // The VM's RAM plus room for what the VMM shares besides (ROMs,
                    // firmware): the switch never maps more for this pod.
                    max_memory_mib: Some((mem >> 20) + 256),
                },
                mac: Some(
                    ifc.mac
                        .parse()
                        .map_err(|e| format!("pod {}: mac: {e}", pod.name))?,
                ),
                vlan: VlanMode::Access {
                    vlan: VlanId::new(*vlan).ok_or_else(|| format!("VLAN {vlan}"))?,
                },
                allowed_addresses: ifc
                    .ips
                    .iter()
                    .map(|ip| Cidr::parse(ip).map(|c| c.addr))
                    .collect::<Result<_, _>>()?,
                anti_spoofing: ifc.anti_spoofing,
                // topology.yaml has no router pods yet.
                router: ifc.router,
                security_groups: ifc.security_groups.clone(),
            };
            sw.ports.push(spec);
            let mtu = match (n.vni, overlay_mtu) {
                (Some(_), Some(m)) => format!(",mtu={m}"),
                _ => String::new(),
            };
            args.extend([
                "--net".into(),
                format!("vhost-user={},client,mac={}{mtu}", sock.display(), ifc.mac),
            ]);
            if j == 0 {
                // The guest's init configures eth0 and the default route.
                if let Some(ip) = ifc.ips.iter().find(|i| !i.contains(':')) {
                    append.push(format!("vnf.ip={ip}"));
                    let gw = n
                        .gateway
                        .iter()
                        .find(|g| g.parse::<std::net::Ipv4Addr>().is_ok());
                    if let Some(gw) = gw {
                        append.push(format!("vnf.gw={gw}"));
                    }
                }
            }
            ports.push(port);
        }
        let mut run_spec = None;
        if let Some(image) = &pod.image {
            // A container image: the keeper (`vnfhost pod keep SPEC`) runs it in a pod VM.
            let net = pod.interfaces.first().map(|ifc| {
                let ip = ifc.ips.iter().find(|i| !i.contains(':')).cloned();
                let gw = nets.get(ifc.network.as_str()).and_then(|(n, _, _)| {
                    n.gateway
                        .iter()
                        .find(|g| g.parse::<std::net::Ipv4Addr>().is_ok())
                        .cloned()
                });
                (
                    dir.join("eth0.sock").display().to_string(),
                    ifc.mac.clone(),
                    ip.unwrap_or_default(),
                    gw,
                )
            });
            let spec = RunSpec {
                name: pod.name.clone(),
                image: image.clone(),
                image_file: None,
                process: None,
                command: match &pod.command {
                    Some(PodCommand::Args(a)) => a.clone(),
                    _ => vec![],
                },
                env: pod.env.clone(),
                mem_mib: mem >> 20,
                cpus: (!pod.cpus.is_empty()).then(|| {
                    pod.cpus
                        .iter()
                        .map(|c| c.to_string())
                        .collect::<Vec<_>>()
                        .join(",")
                }),
                net,
                // A VXLAN network's MTU, as for the other pods.
                net_mtu: pod
                    .interfaces
                    .first()
                    .and_then(|ifc| nets.get(ifc.network.as_str()))
                    .and_then(|(n, _, _)| n.vni.and(overlay_mtu)),
                api: None,
                volumes: pod
                    .volumes
                    .iter()
                    .map(|v| (v.path.clone().into(), v.mount_path.clone(), v.read_only))
                    .collect(),
                vm_dir: Some(Path::new(VM_STATE_DIR).join(&pod.name)),
                // `auto` keeps QEMU for image pods: it gives back the RAM the guest's
                // boot freed, which the kvm backend cannot.
                hypervisor: match pod.hypervisor {
                    HypervisorSpec::Auto => None,
                    _ => Some(hypervisor.into()),
                },
            };
            let json = serde_json::to_string_pretty(&spec).map_err(|e| e.to_string())?;
            let file = dir.join(format!("spec-{}.json", podvm::image::key(&[&json])));
            args = vec!["pod".into(), "keep".into(), file.display().to_string()];
            run_spec = Some((file, json));
        } else {
            if let Some(PodCommand::Line(c)) = &pod.command {
                append.push(format!("\"vnf.run={c}\""));
            }
            if !append.is_empty() {
                args.extend(["--append".into(), append.join(" ")]);
            }
        }
        pods.push(PodPlan {
            name: pod.name.clone(),
            args,
            run_spec,
            restart: pod.restart,
            ports,
            dir,
            console_log_max: t.limits.console_log_bytes(),
        });
    }
    Ok(Plan {
        switch_args,
        switch: sw,
        pods,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_topology_plans_ports_routers_and_pods() {
        let text =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../topology.yaml"))
                .unwrap();
        let t = crate::topology::parse(&text).unwrap();
        let img = GuestImage {
            kernel: "/k".into(),
            initrd: "/i".into(),
        };
        let host = Host::current();
        let p = plan(&t, Path::new("/run/vnfhost"), &img, &host).unwrap();
        assert!(p.switch.ports.iter().all(|p| !p.router), "router is opt-in");
        let mut t2 = t.clone();
        t2.pods[0].interfaces[0].router = true;
        let p2 = plan(&t2, Path::new("/run/vnfhost"), &img, &host).unwrap();
        assert!(
            p2.switch.ports[0].router,
            "an interface marked router plans a router port"
        );
        let port = &p.switch.ports[0];
        assert_eq!(port.name, "pod-a.eth0");
        assert_eq!(
            port.driver,
            Driver::VhostUser {
                path: "/run/vnfhost/pods/pod-a/eth0.sock".into(),
                mode: VhostMode::Server,
                queues: 1,
                max_memory_mib: Some(256 + 256),
            }
        );
        assert_eq!(
            port.mac.map(|m| m.to_string()).as_deref(),
            Some("52:54:00:00:00:0a")
        );
        assert_eq!(
            port.allowed_addresses,
            ["10.0.0.1".parse::<IpAddr>().unwrap()]
        );
        assert!(port.anti_spoofing);
        let ifs = &p.switch.routers[0].interfaces;
        assert_eq!(
            ifs.iter()
                .map(|i| (i.vlan.get(), i.ipv4.to_string()))
                .collect::<Vec<_>>(),
            [
                (10, "10.0.0.254/24".to_string()),
                (20, "10.0.1.254/24".to_string())
            ]
        );
        let a = &p.pods[0].args;
        assert!(a.windows(2).any(|w| w == ["--mem", "256M"]), "{a:?}");
        assert!(
            a.iter()
                .any(|x| x.starts_with("vnf.ip=10.0.0.1/24 vnf.gw=10.0.0.254")),
            "{a:?}"
        );
        // The switch takes the plan's spec as it is.
        vswitch::service::spec::check(&p.switch).unwrap();
    }
}
