//! The switch as a service: a running [`Switch`] that follows a [`SwitchSpec`].
//!
//! [`Managed::apply`] takes a whole spec, checks it (a spec that fails a check is refused
//! whole, with the field named, and nothing changes), and applies only the difference
//! to what runs:
//!
//! - a port whose driver settings and MAC are unchanged keeps its driver (its vhost-user
//!   connection, rings and FDB entries); a change of its VLANs, port security or groups
//!   is applied in place;
//! - a new port's driver is opened; one that cannot open (a tap name taken in the pod's
//!   namespace, a socket path someone else listens on) is reported in the reply and in
//!   [`counters`](Managed::counters) with its reason, and [`retry`](Managed::retry)
//!   opens it again later with back-off (1 s doubling to 30 s). Every other port is
//!   applied;
//! - a port no longer in the spec is removed and closed;
//! - a router whose interfaces and routes did not change keeps running with its
//!   neighbour table; a changed one takes over its predecessor's neighbours;
//! - the uplink opens when the spec names one (and is retried like a port when it
//!   cannot); `vxlan` ports tunnel through it, and a change of the uplink reopens them.
//!   [`retry`](Managed::retry) also refreshes each tunnel's next hop from the kernel's
//!   routes and neighbours.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use api::switch::{
    ApplyReply, CoreCounters, Driver, OverlayCounters, PortCounters, PortFailure, PortState,
    SwitchCounters, SwitchSpec, TunnelStatus, UplinkSpec, VhostMode,
};
use api::values::Mac;
use pmd::afpacket::{AfPacketPort, UplinkConfig};
use pmd::port::{Port, PortDrop};
use pmd::tap::TapPort;
use pmd::vhost_user::{Mode, VhostUserConfig, VhostUserPort};

use super::spec::{self, CheckedPort};
use crate::bridge::PortId;
use crate::overlay::{Decap, NextHop, Uplink, VxlanPort};
use crate::switch::{continuity, Change, Switch, SwitchConfig, SwitchError, SwitchPort};

/// First retry of a port that failed to open; doubles up to [`RETRY_MAX`].
pub const RETRY_FIRST: Duration = Duration::from_secs(1);
/// Longest wait between two retries.
pub const RETRY_MAX: Duration = Duration::from_secs(30);

/// An opened driver, and the same driver as a tunnel when it is one.
type Opened = (Arc<dyn Port>, Option<Arc<VxlanPort>>);

/// The tunnels the first core decapsulates into: (VNI, remote VTEP, port).
type Tunnels = Vec<(u32, Ipv4Addr, PortId)>;

/// Opens the driver of one port; a `vxlan` port needs the open uplink.
fn open_port(
    p: &CheckedPort,
    hugepages: bool,
    uplink: Option<&Arc<Uplink>>,
) -> Result<Opened, String> {
    if let Driver::Vxlan { remote, vni } = &p.driver {
        let Some(u) = uplink else {
            return Err("the uplink is not open".into());
        };
        let t = Arc::new(VxlanPort::new(&p.name, u.clone(), *vni, *remote));
        return Ok((t.clone(), Some(t)));
    }
    let port: Arc<dyn Port> = match &p.driver {
        Driver::VhostUser {
            path,
            mode,
            queues,
            max_memory_mib,
        } => Arc::new(
            VhostUserPort::new(VhostUserConfig {
                name: p.name.clone(),
                path: path.clone(),
                mode: match mode {
                    VhostMode::Server => Mode::Server,
                    VhostMode::Client => Mode::Client,
                },
                queue_pairs: *queues,
                mac: p.mac.0,
                hugepages,
                max_memory: max_memory_mib.map_or(pmd::vhost_user::DEFAULT_MAX_MEMORY, |m| m << 20),
            })
            .map_err(|e| e.to_string())?,
        ),
        Driver::Tap { name, netns } => Arc::new(
            TapPort::new_in(&p.name, name, netns.as_deref(), hugepages)
                .map_err(|e| e.to_string())?,
        ),
        Driver::Vxlan { .. } => unreachable!("opened above"),
    };
    Ok((port, None))
}

/// Opens the uplink of `spec`.
fn open_uplink(spec: &UplinkSpec, hugepages: bool) -> Result<Arc<Uplink>, String> {
    if let Some(v) = &spec.vhost_user {
        let port = VhostUserPort::new(VhostUserConfig {
            name: spec.interface.clone(),
            path: v.path.clone(),
            mode: Mode::Server,
            queue_pairs: 1,
            mac: v.mac.0,
            hugepages,
            max_memory: pmd::vhost_user::DEFAULT_MAX_MEMORY,
        })
        .map_err(|e| format!("uplink: {e}"))?;
        return Ok(Arc::new(Uplink {
            port: Arc::new(port),
            mac: v.mac.0,
            mtu: v.mtu,
            local: spec.address,
            udp_port: spec.udp_port,
            next_hop: Some(v.next_hop_mac.0),
        }));
    }
    let port = AfPacketPort::open(&UplinkConfig {
        name: spec.interface.clone(),
        ifname: spec.interface.clone(),
        local: spec.address,
        udp_port: spec.udp_port,
    })
    .map_err(|e| format!("uplink: {e}"))?;
    let (mac, mtu) = (port.info().mac, port.info().mtu);
    Ok(Arc::new(Uplink {
        port: Arc::new(port),
        mac,
        mtu,
        local: spec.address,
        udp_port: spec.udp_port,
        next_hop: None,
    }))
}

/// The uplink as the service keeps it.
struct UplinkState {
    spec: UplinkSpec,
    open: Option<Arc<Uplink>>,
    error: Option<String>,
    next: Instant,
    wait: Duration,
}

/// A port whose driver is open.
struct Open {
    id: PortId,
    spec: CheckedPort,
    port: Arc<dyn Port>,
    /// The same driver, when it is a tunnel.
    tunnel: Option<Arc<VxlanPort>>,
}

/// A port whose driver could not open.
struct Failed {
    spec: CheckedPort,
    error: String,
    next: Instant,
    wait: Duration,
}

/// The switch as a service; see the module docs.
pub struct Managed {
    switch: Switch,
    hugepages: bool,
    spec: SwitchSpec,
    open: HashMap<String, Open>,
    failed: HashMap<String, Failed>,
    last_change: Duration,
    /// Where the search for a free port id starts: ids are handed out round-robin, so
    /// a removed port's id is reused as late as possible (its FDB entries are swept
    /// meanwhile instead of flushed on the polling core).
    next_id: usize,
    uplink: Option<UplinkState>,
    /// The uplink (by address) and the tunnels the first core decapsulates into, as
    /// last posted.
    decap: Option<(usize, Tunnels)>,
    /// Each tunnel's next hop, as last resolved.
    hops: HashMap<String, NextHop>,
}

/// The first id at or after `from` (wrapping) for which `used` is false.
fn free_id(used: &[bool], from: usize) -> Option<usize> {
    let n = used.len();
    (0..n).map(|k| (from + k) % n).find(|&i| !used[i])
}

fn switch_port(c: &CheckedPort, port: Arc<dyn Port>) -> SwitchPort {
    SwitchPort {
        port,
        vlan: c.vlan.clone(),
        security: c.security.clone(),
        filter: c.filter.clone(),
        horizon: c.horizon,
    }
}

/// Whether a port with spec `b` can keep the driver opened for `a`.
fn same_driver(a: &CheckedPort, b: &CheckedPort) -> bool {
    a.driver == b.driver && a.mac == b.mac
}

impl Managed {
    /// Starts the polling cores of `cfg` with no ports and no routers.
    pub fn new(cfg: &SwitchConfig, hugepages: bool) -> Result<Managed, SwitchError> {
        Ok(Managed {
            switch: Switch::new(&SwitchConfig {
                routers: Vec::new(),
                ..cfg.clone()
            })?,
            hugepages,
            spec: SwitchSpec::default(),
            open: HashMap::new(),
            failed: HashMap::new(),
            last_change: Duration::ZERO,
            next_id: 0,
            uplink: None,
            decap: None,
            hops: HashMap::new(),
        })
    }

    /// The running switch.
    pub fn switch(&self) -> &Switch {
        &self.switch
    }

    /// The spec being followed.
    pub fn spec(&self) -> &SwitchSpec {
        &self.spec
    }

    /// Applies `spec`; see the module docs. `Err` only when the spec fails a check or a
    /// polling core does not take the change (then the previous spec runs).
    pub fn apply(&mut self, spec: SwitchSpec) -> Result<ApplyReply, String> {
        let checked = spec::check(&spec)?;
        let mut change = Change::default();
        let mut keep: HashMap<String, Open> = HashMap::new();
        let mut closing: Vec<Open> = Vec::new();
        let wanted: HashMap<&str, &CheckedPort> =
            checked.ports.iter().map(|p| (p.name.as_str(), p)).collect();
        // A changed uplink takes its tunnels with it: they reopen on the new one.
        let uplink_changed = self.uplink.as_ref().map(|u| &u.spec) != spec.uplink.as_ref();
        for (name, o) in self.open.drain() {
            match wanted.get(name.as_str()) {
                Some(w) if same_driver(&o.spec, w) && !(uplink_changed && o.tunnel.is_some()) => {
                    keep.insert(name, o);
                }
                _ => closing.push(o),
            }
        }
        // Close first what goes (a changed driver may reuse the socket path or tap name).
        change.remove = closing.iter().map(|o| o.id).collect();
        let mut used: Vec<bool> = vec![false; crate::switch::MAX_SWITCH_PORTS];
        for o in keep.values() {
            used[usize::from(o.id.0)] = true;
        }
        if !closing.is_empty() {
            // The drivers must be gone before new ones take their paths and names.
            let remove = std::mem::take(&mut change.remove);
            let r = self.switch.apply(Change {
                remove,
                ..Change::default()
            });
            if let Err(e) = r {
                // Refused before anything changed: every port is as it was.
                self.open = keep;
                for o in closing {
                    self.open.insert(o.spec.name.clone(), o);
                }
                return Err(e.to_string());
            }
            drop(closing);
        }
        if uplink_changed {
            // The old uplink goes with the last tunnel and the decapsulation that hold it.
            if self.decap.is_some() {
                let r = self.switch.apply(Change {
                    decap: Some(None),
                    ..Change::default()
                });
                if let Err(e) = r {
                    self.open = keep;
                    return Err(e.to_string());
                }
                self.decap = None;
            }
            self.uplink = spec.uplink.as_ref().map(|u| {
                let (open, error) = match open_uplink(u, self.hugepages) {
                    Ok(o) => (Some(o), None),
                    Err(e) => (None, Some(e)),
                };
                UplinkState {
                    spec: u.clone(),
                    open,
                    error,
                    next: Instant::now() + RETRY_FIRST,
                    wait: RETRY_FIRST,
                }
            });
            self.hops.clear();
        }
        let uplink = self.uplink.as_ref().and_then(|u| u.open.clone());
        let mut failed = HashMap::new();
        let mut opened: Vec<Open> = Vec::new();
        for p in &checked.ports {
            if let Some(o) = keep.get_mut(&p.name) {
                o.spec = p.clone();
                change.set.push((o.id, switch_port(p, o.port.clone())));
                continue;
            }
            let Some(i) = free_id(&used, self.next_id) else {
                failed.insert(p.name.clone(), self.failure(p, "no free port id".into()));
                continue;
            };
            match open_port(p, self.hugepages, uplink.as_ref()) {
                Ok((port, tunnel)) => {
                    used[i] = true;
                    self.next_id = i + 1;
                    let id = PortId(i as u16);
                    change.set.push((id, switch_port(p, port.clone())));
                    opened.push(Open {
                        id,
                        spec: p.clone(),
                        port,
                        tunnel,
                    });
                }
                Err(e) => {
                    let f = self.failure(p, e);
                    failed.insert(p.name.clone(), f);
                }
            }
        }
        let routers = continuity(self.switch.routers(), checked.routers.clone());
        let unchanged = routers.len() == self.switch.routers().len()
            && routers
                .iter()
                .enumerate()
                .all(|(k, r)| r.same && r.from == Some(k));
        change.routers = (!unchanged).then_some(routers);
        let tunnels = keep
            .values()
            .chain(opened.iter())
            .filter_map(|o| o.tunnel.as_ref().map(|t| (t.vni(), t.remote(), o.id)));
        change.decap = self.decap_change(uplink.as_ref(), tunnels);
        // A router's change may move its zone (its lowest VLAN), which its services
        // carry.
        if spec.services != self.spec.services
            || spec.sessions != self.spec.sessions
            || change.routers.is_some()
        {
            change.sessions = Some(self.session_change(&checked));
        }
        match self.switch.apply(change) {
            Ok(took) => self.last_change = took,
            Err(e) => {
                // The ports kept run as before; the new ones close as `opened` drops.
                self.open = keep;
                return Err(e.to_string());
            }
        }
        for o in opened {
            keep.insert(o.spec.name.clone(), o);
        }
        self.open = keep;
        self.failed = failed;
        self.spec = spec;
        self.refresh_next_hops();
        for (n, f) in &self.failed {
            tracing::warn!("port {n}: {}; retrying in {:?}", f.error, f.wait);
        }
        Ok(self.reply())
    }

    /// A failure record for `p`: a port that failed before keeps its back-off.
    fn failure(&self, p: &CheckedPort, error: String) -> Failed {
        let wait = match self.failed.get(&p.name) {
            Some(f) if f.spec == *p => (f.wait * 2).min(RETRY_MAX),
            _ => RETRY_FIRST,
        };
        Failed {
            spec: p.clone(),
            error: format!("ports.{}: {error}", p.name),
            next: Instant::now() + wait,
            wait,
        }
    }

    /// The services of `checked` (each keeps its counters from the version running)
    /// and its session table.
    fn session_change(&self, checked: &spec::Checked) -> crate::switch::SessionChange {
        let running = self.switch.stats().services;
        let services = checked
            .services
            .iter()
            .map(|c| {
                let prev = running
                    .list()
                    .iter()
                    .find(|s| s.name == c.name)
                    .map(|s| s.as_ref());
                std::sync::Arc::new(crate::lb::Service::new(
                    c.name.clone(),
                    c.zone,
                    c.vip,
                    c.proto,
                    c.port,
                    c.backends.clone(),
                    c.affinity_s,
                    prev,
                ))
            })
            .collect();
        crate::switch::SessionChange {
            services: crate::lb::Services::new(services),
            capacity: checked.session_capacity,
            timeouts: checked.timeouts,
        }
    }

    fn reply(&self) -> ApplyReply {
        let mut failed: Vec<PortFailure> = self
            .failed
            .iter()
            .map(|(n, f)| PortFailure {
                name: n.clone(),
                error: f.error.clone(),
            })
            .collect();
        failed.sort_by(|a, b| a.name.cmp(&b.name));
        ApplyReply {
            generation: self.switch.generation(),
            failed,
        }
    }

    /// The decapsulation change for `tunnels` over `uplink`, if it differs from what
    /// the first core runs (and records it as posted).
    fn decap_change(
        &mut self,
        uplink: Option<&Arc<Uplink>>,
        tunnels: impl Iterator<Item = (u32, Ipv4Addr, PortId)>,
    ) -> Option<Option<Arc<Decap>>> {
        // With an uplink but no tunnel yet, the uplink is still read, so that what
        // arrives is counted (as unknown) rather than left in the ring.
        let want = uplink.map(|u| {
            let mut t: Tunnels = tunnels.collect();
            t.sort_unstable();
            (Arc::as_ptr(u) as usize, t)
        });
        if want == self.decap {
            return None;
        }
        self.decap = want.clone();
        Some(
            uplink
                .zip(want)
                .map(|(u, (_, t))| Arc::new(Decap::new(u.clone(), t))),
        )
    }

    /// Opens the uplink again when it failed and its back-off has passed; then the
    /// tunnels that failed for want of it open on the retry of ports.
    fn retry_uplink(&mut self) {
        let now = Instant::now();
        let Some(u) = self.uplink.as_mut() else {
            return;
        };
        if u.open.is_some() || u.next > now {
            return;
        }
        match open_uplink(&u.spec, self.hugepages) {
            Ok(o) => {
                tracing::info!("uplink {}: opened on retry", u.spec.interface);
                u.open = Some(o);
                u.error = None;
                u.wait = RETRY_FIRST;
                // Every tunnel waiting for it is due now.
                for f in self.failed.values_mut() {
                    if matches!(f.spec.driver, Driver::Vxlan { .. }) {
                        f.next = now;
                    }
                }
            }
            Err(e) => {
                u.wait = (u.wait * 2).min(RETRY_MAX);
                u.next = now + u.wait;
                if u.error.as_deref() != Some(e.as_str()) {
                    tracing::warn!("{e}; retrying");
                }
                u.error = Some(e);
            }
        }
    }

    /// Resolves each tunnel's next hop from the kernel's tables and hands changes to
    /// the tunnel ports.
    fn refresh_next_hops(&mut self) {
        let Some((ifname, given)) = self
            .uplink
            .as_ref()
            .and_then(|u| Some((u.spec.interface.clone(), u.open.as_ref()?.next_hop)))
        else {
            return;
        };
        // One lookup per remote VTEP, however many VNIs it carries.
        let mut known: HashMap<Ipv4Addr, NextHop> = HashMap::new();
        for o in self.open.values() {
            let Some(t) = &o.tunnel else { continue };
            let hop = match given {
                Some(mac) => NextHop::Resolved {
                    via: t.remote(),
                    mac,
                },
                None => known
                    .entry(t.remote())
                    .or_insert_with(|| crate::overlay::resolve(t.remote(), &ifname))
                    .clone(),
            };
            let mac = match &hop {
                NextHop::Resolved { mac, .. } => Some(*mac),
                _ => None,
            };
            if t.next_hop() != mac {
                match &hop {
                    NextHop::Resolved { via, mac } => tracing::info!(
                        "tunnel {}: {} via {via} ({})",
                        o.spec.name,
                        t.remote(),
                        Mac(*mac)
                    ),
                    NextHop::Pending { via } => {
                        tracing::info!("tunnel {}: resolving {via}", o.spec.name)
                    }
                    NextHop::Unreachable(e) => tracing::warn!("tunnel {}: {e}", o.spec.name),
                }
                t.set_next_hop(mac);
            }
            self.hops.insert(o.spec.name.clone(), hop);
        }
    }

    /// Opens again the failed ports whose back-off has passed (the uplink first), and
    /// refreshes the tunnels' next hops; returns how many ports opened.
    pub fn retry(&mut self) -> usize {
        self.retry_uplink();
        let n = self.retry_ports();
        self.refresh_next_hops();
        n
    }

    fn retry_ports(&mut self) -> usize {
        let now = Instant::now();
        let due: Vec<String> = self
            .failed
            .iter()
            .filter(|(_, f)| f.next <= now)
            .map(|(n, _)| n.clone())
            .collect();
        let mut n = 0;
        for name in due {
            let Some(f) = self.failed.remove(&name) else {
                continue;
            };
            let mut used = vec![false; crate::switch::MAX_SWITCH_PORTS];
            for o in self.open.values() {
                used[usize::from(o.id.0)] = true;
            }
            let Some(i) = free_id(&used, self.next_id) else {
                self.failed.insert(name, f);
                continue;
            };
            let id = PortId(i as u16);
            let uplink = self.uplink.as_ref().and_then(|u| u.open.clone());
            let opened =
                open_port(&f.spec, self.hugepages, uplink.as_ref()).and_then(|(port, tunnel)| {
                    let mut tunnels: Tunnels = self
                        .open
                        .values()
                        .filter_map(|o| o.tunnel.as_ref().map(|t| (t.vni(), t.remote(), o.id)))
                        .collect();
                    if let Some(t) = &tunnel {
                        tunnels.push((t.vni(), t.remote(), id));
                    }
                    let decap = self.decap_change(uplink.as_ref(), tunnels.into_iter());
                    self.switch
                        .apply(Change {
                            set: vec![(id, switch_port(&f.spec, port.clone()))],
                            decap,
                            ..Change::default()
                        })
                        .map(|_| (port, tunnel))
                        .map_err(|e| e.to_string())
                });
            match opened {
                Ok((port, tunnel)) => {
                    tracing::info!("port {name}: opened on retry");
                    self.next_id = i + 1;
                    self.open.insert(
                        name,
                        Open {
                            id,
                            spec: f.spec,
                            port,
                            tunnel,
                        },
                    );
                    n += 1;
                }
                Err(e) => {
                    let wait = (f.wait * 2).min(RETRY_MAX);
                    self.failed.insert(
                        name.clone(),
                        Failed {
                            error: format!("ports.{name}: {e}"),
                            next: now + wait,
                            wait,
                            spec: f.spec,
                        },
                    );
                }
            }
        }
        n
    }

    /// Counters and per-port state, ports in spec order.
    pub fn counters(&self) -> SwitchCounters {
        let st = self.switch.stats();
        let nonzero = |m: &[(&str, u64)]| -> BTreeMap<String, u64> {
            m.iter()
                .filter(|(_, n)| *n > 0)
                .map(|(r, n)| (r.to_string(), *n))
                .collect()
        };
        let ports = self
            .spec
            .ports
            .iter()
            .map(|p| &p.name)
            .filter_map(|name| {
                if let Some(o) = self.open.get(name) {
                    let s = o.port.stats();
                    let up = o.port.is_up();
                    Some(PortCounters {
                        name: name.clone(),
                        state: if up { PortState::Up } else { PortState::Down },
                        error: None,
                        up,
                        rx_packets: s.rx_packets,
                        rx_bytes: s.rx_bytes,
                        tx_packets: s.tx_packets,
                        tx_bytes: s.tx_bytes,
                        drops: PortDrop::ALL
                            .iter()
                            .map(|d| (d.as_str().to_string(), s.drops[*d as usize]))
                            .filter(|(_, n)| *n > 0)
                            .collect(),
                        connections: s.connections,
                        protocol_errors: s.protocol_errors,
                    })
                } else {
                    self.failed.get(name).map(|f| PortCounters {
                        name: name.clone(),
                        state: PortState::Failed,
                        error: Some(f.error.clone()),
                        ..PortCounters::default()
                    })
                }
            })
            .collect();
        SwitchCounters {
            generation: self.switch.generation(),
            last_change_us: self.last_change.as_micros() as u64,
            ports,
            bridge_drops: nonzero(&st.drops),
            floods: st.floods,
            shared_learns: st.shared_learns,
            routed: st.routed,
            router_generated: st.router_generated,
            router_drops: nonzero(&st.route_drops),
            cores: st
                .cores
                .iter()
                .zip(self.switch.cores())
                .map(|(c, cpu)| CoreCounters {
                    cpu: *cpu,
                    busy_polls: c.busy_polls,
                    idle_polls: c.idle_polls,
                    packets: c.packets,
                    cycles_per_packet: c.cycles_per_packet,
                    generation: c.generation,
                    longest_change_ns: c.longest_change_ns,
                    stalled_ms: c.stalled.as_millis() as u64,
                })
                .collect(),
            overlay: self.overlay_counters(&st),
            sessions: api::switch::SessionCounters {
                live: st.sessions.live,
                capacity: st.session_capacity,
                created: st.sessions.created,
                expired: st.sessions.expired,
                removed: st.sessions.removed,
                table_full: st.sessions.table_full,
            },
            services: st
                .services
                .list()
                .iter()
                .map(|s| {
                    use std::sync::atomic::Ordering::Relaxed;
                    let ip = |a: u32| std::net::Ipv4Addr::from(a);
                    api::switch::ServiceCounters {
                        name: s.name.clone(),
                        vip: format!(
                            "{}:{}/{}",
                            ip(s.vip),
                            s.port,
                            if s.proto == 6 { "tcp" } else { "udp" }
                        ),
                        backends: s
                            .backends
                            .iter()
                            .zip(&s.hits)
                            .map(|(b, h)| api::switch::BackendCounters {
                                backend: format!("{}:{}", ip(b.0), b.1),
                                hits: h.load(Relaxed),
                            })
                            .collect(),
                        no_backend: s.no_backend.load(Relaxed),
                    }
                })
                .collect(),
        }
    }

    /// The uplink's and the tunnels' state, when the spec has an uplink.
    fn overlay_counters(&self, st: &crate::switch::SwitchStats) -> Option<OverlayCounters> {
        let u = self.uplink.as_ref()?;
        let mut c = OverlayCounters {
            interface: u.spec.interface.clone(),
            address: u.spec.address.to_string(),
            error: u.error.clone(),
            decapsulated: st.decapsulated,
            decap_drops: st
                .decap_drops
                .iter()
                .filter(|(_, n)| *n > 0)
                .map(|(r, n)| (r.to_string(), *n))
                .collect(),
            ..OverlayCounters::default()
        };
        if let Some(o) = &u.open {
            let s = o.port.stats();
            c.mtu = o.mtu;
            c.pod_mtu = o.pod_mtu();
            c.rx_packets = s.rx_packets;
            c.rx_bytes = s.rx_bytes;
            c.tx_packets = s.tx_packets;
            c.tx_bytes = s.tx_bytes;
            c.drops = PortDrop::ALL
                .iter()
                .map(|d| (d.as_str().to_string(), s.drops[*d as usize]))
                .filter(|(_, n)| *n > 0)
                .collect();
        }
        let mut tunnels: Vec<TunnelStatus> = self
            .open
            .iter()
            .filter_map(|(name, o)| {
                let t = o.tunnel.as_ref()?;
                let hop = self.hops.get(name);
                Some(TunnelStatus {
                    port: name.clone(),
                    remote: t.remote().to_string(),
                    vni: t.vni(),
                    via: match hop {
                        Some(NextHop::Resolved { via, .. } | NextHop::Pending { via }) => {
                            Some(via.to_string())
                        }
                        _ => None,
                    },
                    next_hop_mac: t.next_hop().map(Mac),
                    error: match hop {
                        Some(NextHop::Pending { via }) => {
                            Some(format!("the neighbour {via} is not resolved yet"))
                        }
                        Some(NextHop::Unreachable(e)) => Some(e.clone()),
                        _ => None,
                    },
                })
            })
            .collect();
        tunnels.sort_by(|a, b| a.port.cmp(&b.port));
        c.tunnels = tunnels;
        Some(c)
    }

    /// Stops the cores, then closes every port.
    pub fn shutdown(&mut self) {
        self.switch.halt();
        self.open.clear();
    }
}
