//! From a checked [`Topology`] to what runs: the switch's command line and configuration
//! ([`SwitchDesired`]), and one `vnfhost vm run` command line per pod.
//!
//! Names and places, under the daemon's run directory `RUN` (`/run/vnfhost`):
//!
//! | what | where |
//! |---|---|
//! | switch control socket | `RUN/switch.sock` |
//! | switch log | `RUN/switch.log` |
//! | pod directory | `RUN/pods/POD/` |
//! | port of a pod's interface *j* | switch port `POD.ethJ`, vhost-user socket `RUN/pods/POD/ethJ.sock` (the switch listens, the VM connects and reconnects) |
//! | pod console and VMM log | `RUN/pods/POD/console.log`, `RUN/pods/POD/vmm.log` |
//!
//! Each network is a VLAN (untagged: VLAN 1); each router is a routing domain with an
//! interface on each of its networks at the network's gateway addresses.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

pub use api::daemon::GuestImage;

use crate::switchctl::{RouterDesired, SwitchDesired};
use crate::topology::{parse_memory, Cidr, HypervisorSpec, Protocol, RestartPolicy, Topology};

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
    /// Its directory.
    pub dir: PathBuf,
}

/// Everything that runs for a topology.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// `vnfhost switch …` arguments; a change restarts the switch.
    pub switch_args: Vec<String>,
    /// The switch's configuration.
    pub switch: SwitchDesired,
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

fn group_rules(g: &crate::topology::SecurityGroup) -> Vec<String> {
    g.ingress
        .iter()
        .map(|r| {
            let proto = match r.protocol {
                Protocol::Any => "any",
                Protocol::Tcp => "tcp",
                Protocol::Udp => "udp",
                Protocol::Icmp => "icmp",
            };
            let mut s = proto.to_string();
            if let Some(p) = &r.ports {
                s = format!("{s}:{p}");
            }
            if let Some(c) = &r.cidr {
                s = format!("{s}@{c}");
            }
            s
        })
        .collect()
}

/// The plan for `t`, which must have passed [`Topology::check`].
pub fn plan(t: &Topology, run: &Path, image: &GuestImage) -> Result<Plan, String> {
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
        if n.vni.is_some() {
            return Err(format!("network {}: VXLAN is not built yet", n.name));
        }
        nets.insert(n.name.as_str(), (n, n.vlan.unwrap_or(1), cidrs));
    }

    let mut sw = SwitchDesired::default();
    for r in &t.routers {
        let mut rd = RouterDesired {
            name: r.name.clone(),
            interfaces: Vec::new(),
            routes: r
                .routes
                .iter()
                .map(|rt| format!("{},via={}", rt.to, rt.via))
                .collect(),
        };
        for name in &r.networks {
            let (n, vlan, cidrs) = nets
                .get(name.as_str())
                .ok_or_else(|| format!("router {}: unknown network {name}", r.name))?;
            let mut spec = format!("vlan={vlan}");
            for g in &n.gateway {
                let a: IpAddr = g.parse().map_err(|_| format!("gateway {g}"))?;
                let c = cidr_of(cidrs, a)
                    .ok_or_else(|| format!("network {}: gateway {a} outside it", n.name))?;
                let key = if a.is_ipv4() { "ip" } else { "ip6" };
                spec.push_str(&format!(",{key}={a}/{}", c.len));
            }
            rd.interfaces.push(spec);
        }
        sw.routers.push(rd);
    }
    let groups: HashMap<&str, &crate::topology::SecurityGroup> = t
        .security_groups
        .iter()
        .map(|g| (g.name.as_str(), g))
        .collect();
    for g in &t.security_groups {
        let mut spec = g.name.clone();
        if g.default_deny_ingress {
            spec.push_str(",deny");
        }
        for r in group_rules(g) {
            spec.push(',');
            spec.push_str(&r);
        }
        sw.security_groups.push(spec);
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
            let mut spec = format!(
                "{port},vhost-user={},mac={},vlan={vlan}",
                sock.display(),
                ifc.mac
            );
            for ip in &ifc.ips {
                let c = Cidr::parse(ip)?;
                spec.push_str(&format!(",ip={}", c.addr));
            }
            match ifc.security_groups.as_slice() {
                [] => {}
                [g] => spec.push_str(&format!(",sg={g}")),
                many => {
                    // The switch takes one group per port: their union, denying by
                    // default when any of them does.
                    let mut merged = port.clone();
                    let found: Vec<_> =
                        many.iter().filter_map(|g| groups.get(g.as_str())).collect();
                    if found.iter().any(|g| g.default_deny_ingress) {
                        merged.push_str(",deny");
                    }
                    for g in found {
                        for r in group_rules(g) {
                            merged.push(',');
                            merged.push_str(&r);
                        }
                    }
                    sw.security_groups.push(merged);
                    spec.push_str(&format!(",sg={port}"));
                }
            }
            sw.ports.push(spec);
            args.extend([
                "--net".into(),
                format!("vhost-user={},client,mac={}", sock.display(), ifc.mac),
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
        if let Some(c) = &pod.command {
            append.push(format!("\"vnf.run={c}\""));
        }
        if !append.is_empty() {
            args.extend(["--append".into(), append.join(" ")]);
        }
        pods.push(PodPlan {
            name: pod.name.clone(),
            args,
            restart: pod.restart,
            ports,
            dir,
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
        let p = plan(&t, Path::new("/run/vnfhost"), &img).unwrap();
        assert_eq!(
            p.switch.ports[0],
            "pod-a.eth0,vhost-user=/run/vnfhost/pods/pod-a/eth0.sock,mac=52:54:00:00:00:0a,\
             vlan=10,ip=10.0.0.1"
        );
        assert_eq!(
            p.switch.routers[0].interfaces,
            ["vlan=10,ip=10.0.0.254/24", "vlan=20,ip=10.0.1.254/24"]
        );
        let a = &p.pods[0].args;
        assert!(a.windows(2).any(|w| w == ["--mem", "256M"]), "{a:?}");
        assert!(
            a.iter()
                .any(|x| x.starts_with("vnf.ip=10.0.0.1/24 vnf.gw=10.0.0.254")),
            "{a:?}"
        );
        // Every spec the plan makes parses as the switch will parse it.
        for s in &p.switch.ports {
            crate::portspec::parse_port(s).unwrap();
        }
        for r in &p.switch.routers {
            for i in &r.interfaces {
                crate::portspec::parse_router_if(i).unwrap();
            }
        }
    }
}
