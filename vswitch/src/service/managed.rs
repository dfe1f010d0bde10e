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
//!   neighbour table; a changed one takes over its predecessor's neighbours.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use api::switch::{
    ApplyReply, CoreCounters, Driver, PortCounters, PortFailure, PortState, SwitchCounters,
    SwitchSpec, VhostMode,
};
use pmd::port::{Port, PortDrop};
use pmd::tap::TapPort;
use pmd::vhost_user::{Mode, VhostUserConfig, VhostUserPort};

use super::spec::{self, CheckedPort};
use crate::bridge::PortId;
use crate::switch::{continuity, Change, Switch, SwitchConfig, SwitchError, SwitchPort};

/// First retry of a port that failed to open; doubles up to [`RETRY_MAX`].
pub const RETRY_FIRST: Duration = Duration::from_secs(1);
/// Longest wait between two retries.
pub const RETRY_MAX: Duration = Duration::from_secs(30);

/// Opens the driver of one port.
pub fn open_port(p: &CheckedPort, hugepages: bool) -> Result<Arc<dyn Port>, String> {
    Ok(match &p.driver {
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
    })
}

/// A port whose driver is open.
struct Open {
    id: PortId,
    spec: CheckedPort,
    port: Arc<dyn Port>,
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
        for (name, o) in self.open.drain() {
            match wanted.get(name.as_str()) {
                Some(w) if same_driver(&o.spec, w) => {
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
            match open_port(p, self.hugepages) {
                Ok(port) => {
                    used[i] = true;
                    self.next_id = i + 1;
                    let id = PortId(i as u16);
                    change.set.push((id, switch_port(p, port.clone())));
                    opened.push(Open {
                        id,
                        spec: p.clone(),
                        port,
                    });
                }
                Err(e) => {
                    let f = self.failure(p, e);
                    failed.insert(p.name.clone(), f);
                }
            }
        }
        let routers = continuity(self.switch.routers(), checked.routers);
        let unchanged = routers.len() == self.switch.routers().len()
            && routers
                .iter()
                .enumerate()
                .all(|(k, r)| r.same && r.from == Some(k));
        change.routers = (!unchanged).then_some(routers);
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

    /// Opens again the failed ports whose back-off has passed; returns how many opened.
    pub fn retry(&mut self) -> usize {
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
            let opened = open_port(&f.spec, self.hugepages).and_then(|port| {
                self.switch
                    .apply(Change {
                        set: vec![(id, switch_port(&f.spec, port.clone()))],
                        ..Change::default()
                    })
                    .map(|_| port)
                    .map_err(|e| e.to_string())
            });
            match opened {
                Ok(port) => {
                    tracing::info!("port {name}: opened on retry");
                    self.next_id = i + 1;
                    self.open.insert(
                        name,
                        Open {
                            id,
                            spec: f.spec,
                            port,
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
        }
    }

    /// Stops the cores, then closes every port.
    pub fn shutdown(&mut self) {
        self.switch.halt();
        self.open.clear();
    }
}
