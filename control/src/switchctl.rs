//! The switch as the daemon runs it: `vnfhost switch --control SOCK`, a process of its
//! own whose ports, routers and security groups are set through a control socket.
//!
//! The switch outlives the daemon (that is how a daemon restart keeps forwarding), so
//! its configuration lives here, in the switch process; the daemon sends the whole
//! desired configuration ([`SwitchDesired`], `PUT /v1/config`) and reads the counters
//! (`GET /v1/stats`). Applying is all or nothing:
//!
//! 1. the new configuration is parsed and checked (port specs, routers, groups);
//! 2. the drivers of new ports are opened; ports that stay keep their driver, so their
//!    vhost-user connections and rings are untouched;
//! 3. the polling cores stop and start again on the new port set (about a millisecond;
//!    frames wait in the virtio rings meanwhile; FDB and neighbour tables are learned
//!    anew);
//! 4. removed ports are closed last.
//!
//! A failure in 1–3 leaves the previous configuration running.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pmd::port::{Port, PortDrop};
use serde::{Deserialize, Serialize};
use vswitch::router::Router;
use vswitch::switch::{Switch, SwitchConfig, SwitchStats};

use crate::http::{self, Request, Response};
use crate::portspec::{self, PortSpec, Route};
use crate::switch_cmd::{open_port, switch_port};

/// The whole configuration of a managed switch, in `vnfhost switch` option syntax.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwitchDesired {
    /// `--port` values.
    #[serde(default)]
    pub ports: Vec<String>,
    /// Routers, each its own routing domain.
    #[serde(default)]
    pub routers: Vec<RouterDesired>,
    /// `--security-group` values.
    #[serde(default)]
    pub security_groups: Vec<String>,
}

/// One router: `--router-if` and `--route` values.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouterDesired {
    /// Its name (for messages).
    pub name: String,
    /// `--router-if` values.
    pub interfaces: Vec<String>,
    /// `--route` values.
    #[serde(default)]
    pub routes: Vec<String>,
}

/// Counters of one port.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PortCounters {
    /// Port name.
    pub name: String,
    /// The peer is connected and its driver ready.
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
}

/// `GET /v1/stats` of the switch. Bridge and router counters count from the switch
/// process's start; port counters from the port's creation.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SwitchCounters {
    /// Configurations applied so far.
    pub generation: u64,
    /// How long the last reconfiguration stopped the polling cores, in microseconds.
    pub last_pause_us: u64,
    /// Per port.
    pub ports: Vec<PortCounters>,
    /// Bridge drops by reason (non-zero ones).
    pub bridge_drops: BTreeMap<String, u64>,
    /// Floods.
    pub floods: u64,
    /// Packets routed.
    pub routed: u64,
    /// Frames the routers generated (ARP, ND, ICMP).
    pub router_generated: u64,
    /// Router drops by reason (non-zero ones).
    pub router_drops: BTreeMap<String, u64>,
    /// Per polling core.
    pub cores: Vec<CoreCounters>,
}

/// A configuration parsed and checked, ready to apply.
struct Parsed {
    ports: Vec<PortSpec>,
    routers: Vec<Router>,
    groups: HashMap<String, vswitch::IngressFilter>,
}

fn parse(d: &SwitchDesired) -> Result<Parsed, String> {
    let mut groups = HashMap::new();
    for g in &d.security_groups {
        let (name, f) = portspec::parse_security_group(g)?;
        if groups.insert(name.clone(), f).is_some() {
            return Err(format!("security group {name}: defined twice"));
        }
    }
    let mut ports: Vec<PortSpec> = Vec::new();
    for p in &d.ports {
        let spec = portspec::parse_port(p)?;
        if ports.iter().any(|q| q.name == spec.name) {
            return Err(format!("port {}: name used twice", spec.name));
        }
        if let Some(g) = &spec.sg {
            if !groups.contains_key(g) {
                return Err(format!("port {}: unknown security group {g:?}", spec.name));
            }
        }
        ports.push(spec);
    }
    let mut routers = Vec::new();
    for r in &d.routers {
        let ifs = r
            .interfaces
            .iter()
            .map(|i| portspec::parse_router_if(i))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("router {}: {e}", r.name))?;
        let (mut v4, mut v6) = (Vec::new(), Vec::new());
        for rt in &r.routes {
            match portspec::parse_route(rt).map_err(|e| format!("router {}: {e}", r.name))? {
                Route::V4(x) => v4.push(x),
                Route::V6(x) => v6.push(x),
            }
        }
        routers.push(
            Router::with_routes6(ifs, &v4, &v6).map_err(|e| format!("router {}: {e}", r.name))?,
        );
    }
    Ok(Parsed {
        ports,
        routers,
        groups,
    })
}

/// Bridge and router counters of switch instances already stopped.
#[derive(Default)]
struct Carry {
    drops: BTreeMap<&'static str, u64>,
    floods: u64,
    routed: u64,
    generated: u64,
    route_drops: BTreeMap<&'static str, u64>,
}

impl Carry {
    fn add(&mut self, st: &SwitchStats) {
        for (r, n) in &st.drops {
            *self.drops.entry(r).or_default() += n;
        }
        for (r, n) in &st.route_drops {
            *self.route_drops.entry(r).or_default() += n;
        }
        self.floods += st.floods;
        self.routed += st.routed;
        self.generated += st.router_generated;
    }
}

/// The managed switch: its open ports and the running [`Switch`].
pub struct Managed {
    base: SwitchConfig,
    hugepages: bool,
    open: Vec<(PortSpec, Arc<dyn Port>)>,
    switch: Option<Switch>,
    desired: SwitchDesired,
    carry: Carry,
    generation: u64,
    last_pause: Duration,
}

/// Whether two specs need the same driver (then the open one is kept).
fn same_driver(a: &PortSpec, b: &PortSpec) -> bool {
    a.kind == b.kind && a.mac == b.mac
}

impl Managed {
    /// A switch with no ports yet, on `base`'s cores.
    pub fn new(base: SwitchConfig, hugepages: bool) -> Managed {
        Managed {
            base,
            hugepages,
            open: Vec::new(),
            switch: None,
            desired: SwitchDesired::default(),
            carry: Carry::default(),
            generation: 0,
            last_pause: Duration::ZERO,
        }
    }

    /// Applies `d` whole, or returns why not with the previous configuration running.
    pub fn apply(&mut self, d: SwitchDesired) -> Result<(), String> {
        if d == self.desired && self.generation > 0 && self.switch.is_some() {
            return Ok(());
        }
        let parsed = parse(&d)?;
        for spec in &parsed.ports {
            if let Some((old, _)) = self.open.iter().find(|(o, _)| o.name == spec.name) {
                if !same_driver(old, spec) {
                    return Err(format!(
                        "port {}: its socket, queues or MAC changed; remove the port first",
                        spec.name
                    ));
                }
            }
        }
        // Open what is new; kept ports keep their driver. A failure drops what was
        // opened here (removing its sockets) and nothing else.
        let mut next: Vec<(PortSpec, Arc<dyn Port>)> = Vec::new();
        for spec in parsed.ports {
            let port = match self.open.iter().find(|(o, _)| o.name == spec.name) {
                Some((_, p)) => p.clone(),
                None => open_port(&spec, self.hugepages)?,
            };
            next.push((spec, port));
        }
        let ports = next
            .iter()
            .map(|(s, p)| switch_port(s, p.clone(), &parsed.groups))
            .collect::<Result<Vec<_>, _>>()?;
        let cfg = SwitchConfig {
            routers: parsed.routers,
            ..self.base.clone()
        };
        let paused = Instant::now();
        self.stop_cores();
        match Switch::start(&cfg, ports) {
            Ok(sw) => {
                self.last_pause = paused.elapsed();
                self.switch = Some(sw);
                // Ports not in `next` are dropped here: connections closed, sockets gone.
                self.open = next;
                self.desired = d;
                self.generation += 1;
                Ok(())
            }
            Err(e) => {
                let back = std::mem::take(&mut self.desired);
                let restored = self.restart(&back);
                self.desired = back;
                match restored {
                    Ok(()) => Err(format!("switch: {e} (the previous configuration runs)")),
                    Err(e2) => Err(format!(
                        "switch: {e}; restarting the previous configuration failed too: {e2}"
                    )),
                }
            }
        }
    }

    /// Starts the cores again on the currently open ports with configuration `d`.
    fn restart(&mut self, d: &SwitchDesired) -> Result<(), String> {
        let parsed = parse(d)?;
        let ports = self
            .open
            .iter()
            .map(|(s, p)| switch_port(s, p.clone(), &parsed.groups))
            .collect::<Result<Vec<_>, _>>()?;
        let cfg = SwitchConfig {
            routers: parsed.routers,
            ..self.base.clone()
        };
        self.switch = Some(Switch::start(&cfg, ports).map_err(|e| e.to_string())?);
        Ok(())
    }

    fn stop_cores(&mut self) {
        if let Some(mut sw) = self.switch.take() {
            sw.halt();
            self.carry.add(&sw.stats());
        }
    }

    /// The configuration running.
    pub fn desired(&self) -> &SwitchDesired {
        &self.desired
    }

    /// Counters, including those of earlier configurations.
    pub fn counters(&self) -> SwitchCounters {
        let mut c = SwitchCounters {
            generation: self.generation,
            last_pause_us: self.last_pause.as_micros() as u64,
            floods: self.carry.floods,
            routed: self.carry.routed,
            router_generated: self.carry.generated,
            ..Default::default()
        };
        let mut drops = self.carry.drops.clone();
        let mut rdrops = self.carry.route_drops.clone();
        if let Some(sw) = &self.switch {
            let st = sw.stats();
            for (r, n) in &st.drops {
                *drops.entry(r).or_default() += n;
            }
            for (r, n) in &st.route_drops {
                *rdrops.entry(r).or_default() += n;
            }
            c.floods += st.floods;
            c.routed += st.routed;
            c.router_generated += st.router_generated;
            c.cores = st
                .cores
                .iter()
                .zip(self.base.cores.iter())
                .map(|(l, cpu)| CoreCounters {
                    cpu: *cpu,
                    busy_polls: l.busy_polls,
                    idle_polls: l.idle_polls,
                    packets: l.packets,
                    cycles_per_packet: l.cycles_per_packet,
                })
                .collect();
        }
        let nonzero = |m: BTreeMap<&str, u64>| -> BTreeMap<String, u64> {
            m.into_iter()
                .filter(|(_, n)| *n > 0)
                .map(|(r, n)| (r.to_string(), n))
                .collect()
        };
        c.bridge_drops = nonzero(drops);
        c.router_drops = nonzero(rdrops);
        c.ports = self
            .open
            .iter()
            .map(|(spec, p)| {
                let s = p.stats();
                PortCounters {
                    name: spec.name.clone(),
                    up: p.is_up(),
                    rx_packets: s.rx_packets,
                    rx_bytes: s.rx_bytes,
                    tx_packets: s.tx_packets,
                    tx_bytes: s.tx_bytes,
                    drops: PortDrop::ALL
                        .iter()
                        .map(|d| (d.as_str().to_string(), s.drops[*d as usize]))
                        .filter(|(_, n)| *n > 0)
                        .collect(),
                }
            })
            .collect();
        c
    }

    /// Stops the cores and closes every port.
    pub fn shutdown(&mut self) {
        self.stop_cores();
        self.open.clear();
    }
}

fn handle(m: &Mutex<Managed>, req: Request) -> Response {
    let mut m = match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    };
    match (req.method.as_str(), req.path.as_str()) {
        ("GET", "/v1/stats") => json(&m.counters()),
        ("GET", "/v1/config") => json(m.desired()),
        ("PUT", "/v1/config") => match serde_json::from_slice::<SwitchDesired>(&req.body) {
            Err(e) => Response::json(400, http::error_body(&format!("config: {e}"))),
            Ok(d) => match m.apply(d) {
                Ok(()) => json(&m.counters()),
                Err(e) => Response::json(422, http::error_body(&e)),
            },
        },
        (_, "/v1/stats" | "/v1/config") => {
            Response::json(405, http::error_body("method not allowed"))
        }
        _ => Response::json(404, http::error_body("no such endpoint")),
    }
}

/// A 200 response with `v` as JSON.
pub fn json<T: Serialize>(v: &T) -> Response {
    Response::json(200, serde_json::to_vec(v).unwrap_or_default())
}

/// Binds the control socket (mode 0600; a stale socket file is replaced, a live one
/// refused) and serves it on a thread.
pub fn serve(path: &Path, m: Arc<Mutex<Managed>>) -> Result<PathBuf, String> {
    let l = bind_socket(path, 0o600)?;
    std::thread::Builder::new()
        .name("switch-ctl".into())
        .spawn(move || {
            for s in l.incoming().flatten() {
                http::serve_one(s, Duration::from_secs(5), |req| handle(&m, req));
            }
        })
        .map_err(|e| format!("control thread: {e}"))?;
    Ok(path.to_path_buf())
}

/// Binds a Unix socket with `mode`; a leftover socket nobody listens on is replaced,
/// one somebody listens on is an error.
pub fn bind_socket(path: &Path, mode: u32) -> Result<UnixListener, String> {
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(format!(
            "{}: something already listens here",
            path.display()
        ));
    }
    if let Ok(md) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if !md.file_type().is_socket() {
            return Err(format!("{}: exists and is not a socket", path.display()));
        }
        let _ = std::fs::remove_file(path);
    }
    // Bind under a restrictive umask so the socket never exists with a wider mode.
    // SAFETY: umask only changes this process's file-creation mask.
    let old = unsafe { libc::umask(0o177) };
    let l = UnixListener::bind(path);
    // SAFETY: as above, restoring the previous mask.
    unsafe { libc::umask(old) };
    let l = l.map_err(|e| format!("{}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(l)
}

/// `GET` or `PUT` against a switch control socket.
pub fn request<T: for<'de> Deserialize<'de>>(
    sock: &Path,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
) -> Result<T, String> {
    let (status, body) = http::call(sock, method, path, body, Duration::from_secs(10))
        .map_err(|e| format!("switch control: {e}"))?;
    if status != 200 {
        let msg = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(String::from))
            .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
        return Err(msg);
    }
    serde_json::from_slice(&body).map_err(|e| format!("switch control: bad reply: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_configurations_are_refused_whole() {
        let bad = [
            SwitchDesired {
                ports: vec!["a,vhost-user=/x".into(), "a,vhost-user=/y".into()],
                ..Default::default()
            },
            SwitchDesired {
                ports: vec!["a,vhost-user=/x,sg=web".into()],
                ..Default::default()
            },
            SwitchDesired {
                routers: vec![RouterDesired {
                    name: "r".into(),
                    interfaces: vec!["vlan=10,ip=banana".into()],
                    routes: vec![],
                }],
                ..Default::default()
            },
            SwitchDesired {
                security_groups: vec!["web,tcp:80".into(), "web,udp".into()],
                ..Default::default()
            },
        ];
        for d in bad {
            assert!(parse(&d).is_err(), "{d:?}");
        }
    }

    #[test]
    fn a_configuration_applies_and_reapplies_keeping_ports() {
        let dir = std::env::temp_dir().join(format!("vnfhost-swctl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let sock = |n: &str| dir.join(n).display().to_string();
        let mut m = Managed::new(SwitchConfig::default(), false);
        let d1 = SwitchDesired {
            ports: vec![
                format!("a,vhost-user={},vlan=10", sock("a")),
                format!("b,vhost-user={},vlan=10", sock("b")),
            ],
            ..Default::default()
        };
        m.apply(d1.clone()).unwrap();
        assert_eq!(m.counters().ports.len(), 2);
        let a_before = Arc::as_ptr(&m.open[0].1) as *const u8;
        // Changing b's VLAN and adding c keeps a's driver and b's.
        let d2 = SwitchDesired {
            ports: vec![
                format!("a,vhost-user={},vlan=10", sock("a")),
                format!("b,vhost-user={},vlan=20", sock("b")),
                format!("c,vhost-user={},vlan=20", sock("c")),
            ],
            ..Default::default()
        };
        m.apply(d2.clone()).unwrap();
        assert_eq!(Arc::as_ptr(&m.open[0].1) as *const u8, a_before);
        assert!(dir.join("c").exists());
        // A port whose socket changes under the same name is refused; d2 still runs.
        let d3 = SwitchDesired {
            ports: vec![format!("a,vhost-user={},vlan=10", sock("a2"))],
            ..Default::default()
        };
        assert!(m.apply(d3).unwrap_err().contains("remove the port first"));
        assert_eq!(m.desired(), &d2);
        // Two routers with an interface on one VLAN: refused by the switch, d2 runs on.
        let d4 = SwitchDesired {
            routers: vec![
                RouterDesired {
                    name: "r1".into(),
                    interfaces: vec!["vlan=10,ip=10.0.0.254/24".into()],
                    routes: vec![],
                },
                RouterDesired {
                    name: "r2".into(),
                    interfaces: vec!["vlan=10,ip=10.1.0.254/24".into()],
                    routes: vec![],
                },
            ],
            ..d2.clone()
        };
        let e = m.apply(d4).unwrap_err();
        assert!(e.contains("two routers") && e.contains("previous"), "{e}");
        assert_eq!(m.desired(), &d2);
        assert!(m.switch.is_some());
        // Removing c closes it and removes its socket.
        m.apply(d1).unwrap();
        assert!(!dir.join("c").exists());
        m.shutdown();
        assert!(!dir.join("a").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
