//! Kubernetes Services into the node's daemon: each Service with a virtual IP becomes an
//! [`api::daemon::Service`] (`PUT /v1/services/NAMESPACE.NAME`), balanced by the node's
//! switch over the ready endpoints its EndpointSlices list.
//!
//! What a Service becomes ([`to_daemon`]):
//!
//! - only types `ClusterIP`, `NodePort` and `LoadBalancer` with an IPv4 cluster IP (the
//!   first IPv4 of `spec.clusterIPs`, else `spec.clusterIP`) have one; headless
//!   (`None`), `ExternalName` and IPv6-only Services are skipped;
//! - its name on the daemon is `NAMESPACE.NAME` ([`daemon_name`]); one longer than 63
//!   characters is refused (logged), not truncated, as truncated names could collide;
//! - its network is the annotation [`NETWORK_ANNOTATION`], else the controller's
//!   `--default-network`. The daemon refuses a VIP on a network whose tenant has no
//!   router, so a VIP is reachable only inside its own tenant;
//! - each TCP or UDP port (SCTP is skipped, logged) keeps its `port`; its target port is
//!   the number the EndpointSlices give the port of the same name and protocol (which
//!   is how a named `targetPort` resolves), else an integer `targetPort`, else `port`;
//! - its backends are the IPv4 addresses of the endpoints of every EndpointSlice
//!   labelled [`SERVICE_NAME_LABEL`] with its name, ready ones only (`ready` not false,
//!   and not `terminating` unless `ready` is true), deduplicated and sorted;
//! - `sessionAffinity: ClientIP` is [`Affinity::ClientIp`] with
//!   `sessionAffinityConfig.clientIP.timeoutSeconds`.
//!
//! How the daemon is told ([`Syncer`], driven by [`watch_services`]):
//!
//! - a change to a Service or to any of its slices marks the Service dirty; a dirty
//!   Service is sent [`DEBOUNCE`] after it was first marked, as it is then, so a burst
//!   of slice updates (a rollout) is one `PUT`, at most one per [`DEBOUNCE`] each;
//! - nothing is sent before both watches have listed everything once (a Service seen
//!   before its slices would otherwise lose its backends for a moment), nor when the
//!   object equals the one the daemon last accepted;
//! - a Service deleted, or one that no longer qualifies, is `DELETE`d (a 404 is done);
//! - a daemon that cannot be reached (or answers 5xx) is retried with a back-off
//!   doubling from 1 s to [`MAX_BACKOFF`]; a refusal (4xx) is logged with the daemon's
//!   reasons, once per distinct reason, and retried with a back-off from 2 s to
//!   [`MAX_BACKOFF`] (the network may not be on the node yet); what the daemon holds
//!   is then unchanged, as it applies all of a service or nothing;
//! - once both watches have listed, and every [`RESYNC`] after, the daemon's services
//!   (`GET /v1/services`) are compared with what it was told: a name with a `.` (this
//!   controller's) whose Service does not exist is deleted, and one the daemon lost or
//!   holds otherwise is sent again. Names without a `.` (the topology file's) are left
//!   alone.
//!
//! EndpointSlices are watched as `discovery.k8s.io/v1`, or as `v1beta1` on an API
//! server without v1 (Kubernetes before 1.21). A watch that loses the API server is
//! retried with back-off by kube-runtime; after a re-list, Services and slices gone
//! meanwhile count as deleted.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::stream::BoxStream;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Service, ServiceSpec};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, ListParams};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, ResourceExt};

use api::daemon::{self as d, Affinity, ServicePort};
use api::switch::L4Protocol;

use crate::{daemon, reason_of};

/// The annotation naming the network (of its tenant) a Service's VIP belongs to.
pub const NETWORK_ANNOTATION: &str = "vnfhost.io/network";

/// The label by which an EndpointSlice names its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// How long a dirty Service waits before it is sent, gathering further changes.
pub const DEBOUNCE: Duration = Duration::from_millis(100);

/// How often the daemon's services are compared with what it was told.
pub const RESYNC: Duration = Duration::from_secs(30);

/// The longest wait between attempts, for a daemon down or refusing.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The first wait after the daemon could not be reached.
const FIRST_DAEMON_BACKOFF: Duration = Duration::from_secs(1);

/// The first wait after the daemon refused a service.
const FIRST_REFUSAL_BACKOFF: Duration = Duration::from_secs(2);

/// Kubernetes' (and the daemon's) ClientIP affinity timeout when none is given.
const DEFAULT_AFFINITY_TIMEOUT_S: u32 = 10_800;

/// A Service: (namespace, name).
pub type Key = (String, String);

/// The daemon's name of Service `name` in `namespace`: `NAMESPACE.NAME`, or why there is
/// none (a vnfhost service name is 1-63 of `[A-Za-z0-9._-]`).
pub fn daemon_name(namespace: &str, name: &str) -> Result<String, String> {
    let n = format!("{namespace}.{name}");
    let ok = !namespace.is_empty()
        && !name.is_empty()
        && n.len() <= 63
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(n)
    } else {
        Err(format!(
            "{n:?} cannot name a service on the node: NAMESPACE.NAME must be 1-63 of \
             [A-Za-z0-9._-] ({} characters)",
            n.len()
        ))
    }
}

/// The Service a daemon service name of this controller stands for (`NAMESPACE.NAME`:
/// neither a namespace nor a Service name has a dot); `None` for names without one.
pub fn key_of(daemon_name: &str) -> Option<Key> {
    let (ns, name) = daemon_name.split_once('.')?;
    (!ns.is_empty() && !name.is_empty()).then(|| (ns.to_string(), name.to_string()))
}

/// Why a Service has no VIP on the node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NotMapped {
    /// It has none to give (headless, `ExternalName`, no IPv4 cluster IP, no TCP or UDP
    /// port, or deleted).
    Skipped(String),
    /// It should have one but cannot (its name): worth a warning.
    Invalid(String),
}

/// A Service as the daemon takes it, and what of it was left out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapped {
    /// The daemon's service.
    pub service: d::Service,
    /// What was left out, and why (SCTP ports, slices that disagree on a port).
    pub notes: Vec<String>,
}

/// A port number of the API (`i32`) as a port, if it is one (1..=65535).
fn port16(n: i32) -> Option<u16> {
    u16::try_from(n).ok().filter(|p| *p != 0)
}

/// The IPv4 cluster IP of `spec`.
fn cluster_ipv4(spec: &ServiceSpec) -> Option<Ipv4Addr> {
    spec.cluster_ips
        .iter()
        .flatten()
        .chain(spec.cluster_ip.as_ref())
        .find_map(|a| a.parse().ok())
}

/// The daemon's service of `svc`, whose EndpointSlices are `slices` (see the module's
/// documentation), or why it has none.
pub fn to_daemon(
    svc: &Service,
    slices: &[&EndpointSlice],
    default_network: &str,
) -> Result<Mapped, NotMapped> {
    use NotMapped::Skipped;
    let spec = svc.spec.as_ref().ok_or_else(|| Skipped("no spec".into()))?;
    let type_ = spec.type_.as_deref().unwrap_or("ClusterIP");
    if !matches!(type_, "ClusterIP" | "NodePort" | "LoadBalancer") {
        return Err(Skipped(format!("type {type_} has no cluster IP")));
    }
    let vip = cluster_ipv4(spec).ok_or_else(|| match spec.cluster_ip.as_deref() {
        Some("None") => Skipped("headless (clusterIP None)".into()),
        Some(ip) if !ip.is_empty() => Skipped(format!("cluster IP {ip} is not IPv4")),
        _ => Skipped("no cluster IP yet".into()),
    })?;
    let name = daemon_name(&svc.namespace().unwrap_or_default(), &svc.name_any())
        .map_err(NotMapped::Invalid)?;
    let network = svc
        .annotations()
        .get(NETWORK_ANNOTATION)
        .map(|n| n.trim())
        .filter(|n| !n.is_empty())
        .unwrap_or(default_network)
        .to_string();
    let mut slices: Vec<&EndpointSlice> = slices
        .iter()
        .copied()
        .filter(|s| s.address_type == "IPv4")
        .collect();
    slices.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));

    let mut notes = Vec::new();
    let mut ports = Vec::new();
    for p in spec.ports.iter().flatten() {
        let pname = p.name.as_deref().unwrap_or("");
        let label = if pname.is_empty() {
            format!("port {}", p.port)
        } else {
            format!("port {pname} ({})", p.port)
        };
        let proto = p.protocol.as_deref().unwrap_or("TCP");
        let protocol = match proto {
            "TCP" => L4Protocol::Tcp,
            "UDP" => L4Protocol::Udp,
            other => {
                notes.push(format!(
                    "{label}: protocol {other} is not balanced (TCP and UDP are); skipped"
                ));
                continue;
            }
        };
        let Some(port) = port16(p.port) else {
            notes.push(format!("{label}: not a port number; skipped"));
            continue;
        };
        // The slices' number for the port of this name and protocol.
        let given: Vec<u16> = slices
            .iter()
            .flat_map(|s| s.ports.iter().flatten())
            .filter(|e| {
                e.name.as_deref().unwrap_or("") == pname
                    && e.protocol.as_deref().unwrap_or("TCP") == proto
            })
            .filter_map(|e| e.port.and_then(port16))
            .collect();
        let target = match given.first() {
            Some(&t) => {
                if given.iter().any(|&x| x != t) {
                    let all: BTreeSet<u16> = given.iter().copied().collect();
                    notes.push(format!(
                        "{label}: its endpoint slices give target ports {all:?}; the node \
                         takes one per service port, {t} (of the first slice by name)"
                    ));
                }
                t
            }
            None => match &p.target_port {
                Some(IntOrString::Int(n)) => port16(*n).unwrap_or(port),
                _ => port,
            },
        };
        ports.push(ServicePort {
            protocol,
            port,
            target_port: (target != port).then_some(target),
        });
    }
    if ports.is_empty() {
        let mut why = "no TCP or UDP port".to_string();
        for n in &notes {
            why.push_str("; ");
            why.push_str(n);
        }
        return Err(Skipped(why));
    }

    let mut backends = BTreeSet::new();
    for e in slices.iter().flat_map(|s| &s.endpoints) {
        let c = e.conditions.as_ref();
        let ready = c.and_then(|c| c.ready);
        let terminating = c.and_then(|c| c.terminating);
        if ready == Some(false) || (terminating == Some(true) && ready != Some(true)) {
            continue;
        }
        backends.extend(
            e.addresses
                .iter()
                .filter_map(|a| a.parse::<Ipv4Addr>().ok()),
        );
    }

    let (affinity, affinity_timeout_s) = if spec.session_affinity.as_deref() == Some("ClientIP") {
        let t = spec
            .session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds)
            .and_then(|t| u32::try_from(t).ok())
            .filter(|t| *t > 0);
        (Affinity::ClientIp, t)
    } else {
        (Affinity::None, None)
    };

    Ok(Mapped {
        service: d::Service {
            name,
            network,
            vip,
            ports,
            backends: backends.iter().map(Ipv4Addr::to_string).collect(),
            affinity,
            affinity_timeout_s,
        },
        notes,
    })
}

/// `s` in one form for comparing: backends and ports sorted, defaults spelt out as
/// absent (a daemon may answer either way).
fn canonical(s: &d::Service) -> d::Service {
    let mut s = s.clone();
    let mut b: Vec<(Option<Ipv4Addr>, String)> = s
        .backends
        .iter()
        .map(|x| (x.parse().ok(), x.clone()))
        .collect();
    b.sort();
    b.dedup();
    s.backends = b.into_iter().map(|(_, x)| x).collect();
    for p in &mut s.ports {
        if p.target_port == Some(p.port) {
            p.target_port = None;
        }
    }
    s.ports.sort_by_key(|p| (p.protocol.number(), p.port));
    if s.affinity == Affinity::None || s.affinity_timeout_s == Some(DEFAULT_AFFINITY_TIMEOUT_S) {
        s.affinity_timeout_s = None;
    }
    s
}

/// Whether the daemon holding `a` holds `b`.
pub fn same(a: &d::Service, b: &d::Service) -> bool {
    canonical(a) == canonical(b)
}

/// What the daemon is known to hold under a Service's name.
#[derive(Clone, Debug, PartialEq)]
enum Held {
    /// This, as it accepted it.
    Exactly(d::Service),
    /// Something, or nothing (a call whose answer was lost, a service it holds otherwise).
    Unknown,
}

/// The next call for a Service.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// Send it this.
    Put(d::Service),
    /// Remove it (the daemon's name).
    Delete(String),
    /// Nothing to do.
    Done,
}

/// How a call went.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// Done (2xx; or 404 to a `DELETE`).
    Accepted,
    /// Refused (4xx): the daemon's reasons.
    Refused(String),
    /// The daemon could not be reached, or failed (5xx).
    Unavailable(String),
}

impl Outcome {
    /// The outcome of a reply `status` with `body` to a `method` call.
    pub fn of_reply(method: &str, status: u16, body: &str) -> Outcome {
        match status {
            200..=299 => Outcome::Accepted,
            404 if method == "DELETE" => Outcome::Accepted,
            400..=499 => Outcome::Refused(reason_of(body)),
            _ => Outcome::Unavailable(format!("the daemon answered {status}: {}", reason_of(body))),
        }
    }
}

/// The Services and EndpointSlices as the watches see them, what the daemon holds, and
/// what is to be sent when: everything of [`watch_services`] but the calls.
#[derive(Debug, Default)]
pub struct Syncer {
    default_network: String,
    services: BTreeMap<Key, Service>,
    /// Slices by their Service, by name.
    slices: BTreeMap<Key, BTreeMap<String, EndpointSlice>>,
    /// Each slice's (namespace, name) Service.
    slice_owner: BTreeMap<Key, Key>,
    /// Lists under way (a watch's `Init` to `InitDone`).
    service_listing: Option<BTreeMap<Key, Service>>,
    slice_listing: Option<Vec<EndpointSlice>>,
    services_listed: bool,
    slices_listed: bool,
    /// Services to send, each when.
    dirty: BTreeMap<Key, Instant>,
    /// What the daemon holds of the Services it may hold something of.
    held: BTreeMap<Key, Held>,
    /// Services the daemon refused: its reasons and the back-off.
    refused: BTreeMap<Key, (String, Duration)>,
    /// What was last logged of each Service's notes (so each is logged once).
    noted: BTreeMap<Key, String>,
    /// The daemon's back-off (zero while it answers), and until when nothing is sent.
    daemon_backoff: Duration,
    daemon_retry_at: Option<Instant>,
    /// `GET /v1/services` was answered with "no such endpoint" (logged once).
    no_route_logged: bool,
}

impl Syncer {
    /// A syncer whose Services without [`NETWORK_ANNOTATION`] are on `default_network`.
    pub fn new(default_network: &str) -> Syncer {
        Syncer {
            default_network: default_network.to_string(),
            ..Default::default()
        }
    }

    /// Both watches have listed everything once.
    pub fn synced(&self) -> bool {
        self.services_listed && self.slices_listed
    }

    /// Marks `key` to be sent [`DEBOUNCE`] from `now` (or sooner, if it already is).
    pub fn mark(&mut self, key: Key, now: Instant) {
        let due = now + DEBOUNCE;
        self.dirty
            .entry(key)
            .and_modify(|t| *t = (*t).min(due))
            .or_insert(due);
    }

    /// The Services waiting to be sent.
    pub fn dirty(&self) -> impl Iterator<Item = &Key> {
        self.dirty.keys()
    }

    /// A Service watch event.
    pub fn service_event(&mut self, ev: watcher::Event<Service>, now: Instant) {
        let key = |s: &Service| (s.namespace().unwrap_or_default(), s.name_any());
        match ev {
            watcher::Event::Init => self.service_listing = Some(BTreeMap::new()),
            watcher::Event::InitApply(s) => {
                self.service_listing
                    .get_or_insert_with(BTreeMap::new)
                    .insert(key(&s), s);
            }
            watcher::Event::InitDone => {
                let new = self.service_listing.take().unwrap_or_default();
                let old = std::mem::replace(&mut self.services, new);
                self.services_listed = true;
                let touched: BTreeSet<Key> = old
                    .into_keys()
                    .chain(self.services.keys().cloned())
                    .collect();
                for k in touched {
                    self.mark(k, now);
                }
            }
            watcher::Event::Apply(s) => {
                let k = key(&s);
                self.services.insert(k.clone(), s);
                self.mark(k, now);
            }
            watcher::Event::Delete(s) => {
                let k = key(&s);
                self.services.remove(&k);
                self.mark(k, now);
            }
        }
    }

    /// An EndpointSlice watch event.
    pub fn slice_event(&mut self, ev: watcher::Event<EndpointSlice>, now: Instant) {
        let id = |s: &EndpointSlice| (s.namespace().unwrap_or_default(), s.name_any());
        match ev {
            watcher::Event::Init => self.slice_listing = Some(Vec::new()),
            watcher::Event::InitApply(s) => {
                self.slice_listing.get_or_insert_with(Vec::new).push(s);
            }
            watcher::Event::InitDone => {
                let list = self.slice_listing.take().unwrap_or_default();
                let mut touched: BTreeSet<Key> = self.slices.keys().cloned().collect();
                self.slices.clear();
                self.slice_owner.clear();
                for s in list {
                    touched.extend(self.add_slice(s));
                }
                self.slices_listed = true;
                for k in touched {
                    self.mark(k, now);
                }
            }
            watcher::Event::Apply(s) => {
                let old = self.remove_slice(&id(&s));
                let new = self.add_slice(s);
                for k in old.into_iter().chain(new) {
                    self.mark(k, now);
                }
            }
            watcher::Event::Delete(s) => {
                if let Some(k) = self.remove_slice(&id(&s)) {
                    self.mark(k, now);
                }
            }
        }
    }

    fn add_slice(&mut self, s: EndpointSlice) -> Option<Key> {
        let ns = s.namespace()?;
        let svc = s.labels().get(SERVICE_NAME_LABEL)?.clone();
        let name = s.name_any();
        let key = (ns.clone(), svc);
        self.slice_owner.insert((ns, name.clone()), key.clone());
        self.slices.entry(key.clone()).or_default().insert(name, s);
        Some(key)
    }

    fn remove_slice(&mut self, id: &Key) -> Option<Key> {
        let key = self.slice_owner.remove(id)?;
        if let Some(m) = self.slices.get_mut(&key) {
            m.remove(&id.1);
            if m.is_empty() {
                self.slices.remove(&key);
            }
        }
        Some(key)
    }

    /// What the daemon should hold for `key`, as the watches see it now.
    pub fn desired(&self, key: &Key) -> Result<Mapped, NotMapped> {
        let Some(svc) = self.services.get(key) else {
            return Err(NotMapped::Skipped("no such Service".into()));
        };
        let slices: Vec<&EndpointSlice> = self
            .slices
            .get(key)
            .map(|m| m.values().collect())
            .unwrap_or_default();
        to_daemon(svc, &slices, &self.default_network)
    }

    /// When something is next due: `None` while nothing is, or before both watches
    /// have listed.
    pub fn next_wake(&self) -> Option<Instant> {
        if !self.synced() {
            return None;
        }
        let first = self.dirty.values().min().copied()?;
        Some(match self.daemon_retry_at {
            Some(t) => first.max(t),
            None => first,
        })
    }

    /// The Services due at `now`.
    pub fn due(&self, now: Instant) -> Vec<Key> {
        if !self.synced() || self.daemon_retry_at.is_some_and(|t| t > now) {
            return vec![];
        }
        self.dirty
            .iter()
            .filter(|(_, t)| **t <= now)
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Logs `msg` about `key` at warning level when it differs from the last one.
    fn note(&mut self, key: &Key, msg: String) {
        if self.noted.get(key) != Some(&msg) {
            if !msg.is_empty() {
                tracing::warn!("service {}/{}: {msg}", key.0, key.1);
            }
            self.noted.insert(key.clone(), msg);
        }
    }

    /// The call `key` needs now; a Service that needs none is no longer dirty.
    pub fn step(&mut self, key: &Key) -> Step {
        let want = self.desired(key);
        let step = match want {
            Ok(m) => {
                self.note(key, m.notes.join("; "));
                match self.held.get(key) {
                    Some(Held::Exactly(h)) if same(h, &m.service) => Step::Done,
                    _ => Step::Put(m.service),
                }
            }
            Err(why) => {
                match &why {
                    NotMapped::Invalid(e) => self.note(key, e.clone()),
                    NotMapped::Skipped(e) => {
                        self.noted.remove(key);
                        tracing::debug!("service {}/{}: no VIP: {e}", key.0, key.1);
                    }
                }
                match daemon_name(&key.0, &key.1) {
                    Ok(name) if self.held.contains_key(key) => Step::Delete(name),
                    _ => Step::Done,
                }
            }
        };
        if step == Step::Done {
            self.dirty.remove(key);
            self.refused.remove(key);
            if !self.services.contains_key(key) {
                self.noted.remove(key);
            }
        }
        step
    }

    /// Records how `step` for `key` went, at `now`.
    pub fn record(&mut self, key: &Key, step: Step, outcome: Outcome, now: Instant) {
        let what = match &step {
            Step::Put(_) => "sending it",
            Step::Delete(_) => "removing it",
            Step::Done => return,
        };
        match outcome {
            Outcome::Accepted => {
                self.daemon_backoff = Duration::ZERO;
                self.daemon_retry_at = None;
                self.dirty.remove(key);
                self.refused.remove(key);
                match step {
                    Step::Put(s) => {
                        let ports: Vec<String> = s
                            .ports
                            .iter()
                            .map(|p| {
                                let proto = match p.protocol {
                                    L4Protocol::Tcp => "tcp",
                                    L4Protocol::Udp => "udp",
                                };
                                match p.target_port {
                                    Some(t) => format!("{}/{proto}->{t}", p.port),
                                    None => format!("{}/{proto}", p.port),
                                }
                            })
                            .collect();
                        tracing::info!(
                            "service {}/{}: VIP {} ({}) on network {}, {} backend(s), on the node",
                            key.0,
                            key.1,
                            s.vip,
                            ports.join(" "),
                            s.network,
                            s.backends.len()
                        );
                        self.held.insert(key.clone(), Held::Exactly(s));
                    }
                    _ => {
                        tracing::info!("service {}/{}: removed from the node", key.0, key.1);
                        self.held.remove(key);
                    }
                }
            }
            Outcome::Refused(why) => {
                // A refusal changes nothing on the daemon: what it held, it holds.
                self.daemon_backoff = Duration::ZERO;
                self.daemon_retry_at = None;
                let (last, backoff) = match self.refused.get(key) {
                    Some((w, b)) => (Some(w.clone()), (*b * 2).min(MAX_BACKOFF)),
                    None => (None, FIRST_REFUSAL_BACKOFF),
                };
                if last.as_deref() != Some(why.as_str()) {
                    tracing::warn!(
                        "service {}/{}: the node refused {what}: {why}; retrying",
                        key.0,
                        key.1
                    );
                } else {
                    tracing::debug!("service {}/{}: refused again: {why}", key.0, key.1);
                }
                self.refused.insert(key.clone(), (why, backoff));
                self.dirty.insert(key.clone(), now + backoff);
            }
            Outcome::Unavailable(why) => {
                if matches!(step, Step::Put(_)) {
                    // It may have been applied before the answer was lost.
                    self.held.insert(key.clone(), Held::Unknown);
                }
                self.daemon_backoff = if self.daemon_backoff.is_zero() {
                    FIRST_DAEMON_BACKOFF
                } else {
                    (self.daemon_backoff * 2).min(MAX_BACKOFF)
                };
                self.daemon_retry_at = Some(now + self.daemon_backoff);
                tracing::warn!(
                    "service {}/{}: {what}: {why}; retrying in {:?}",
                    key.0,
                    key.1,
                    self.daemon_backoff
                );
            }
        }
    }

    /// Compares the daemon's services (`GET /v1/services`: each name, and the service
    /// if it reads as one) with what it was told, at `now`: this controller's services
    /// whose Service does not exist are to be removed, and those it lost or holds
    /// otherwise to be sent again. Only once both watches have listed.
    pub fn compare(&mut self, on_daemon: Vec<(String, Option<d::Service>)>, now: Instant) {
        if !self.synced() {
            return;
        }
        let mut seen = BTreeSet::new();
        for (name, svc) in on_daemon {
            let Some(key) = key_of(&name) else {
                continue;
            };
            if daemon_name(&key.0, &key.1).as_deref() != Ok(name.as_str()) {
                continue;
            }
            seen.insert(key.clone());
            match (self.held.get(&key).cloned(), svc) {
                (Some(Held::Exactly(h)), Some(s)) if same(&h, &s) => {}
                (None, Some(s)) if self.services.contains_key(&key) => {
                    // Told before this controller started: sent again only if it differs.
                    self.held.insert(key.clone(), Held::Exactly(s));
                    self.mark(key, now);
                }
                (None, _) if !self.services.contains_key(&key) => {
                    tracing::info!(
                        "service {}/{}: on the node, but no such Service; removing it",
                        key.0,
                        key.1
                    );
                    self.held.insert(key.clone(), Held::Unknown);
                    self.mark(key, now);
                }
                _ => {
                    self.held.insert(key.clone(), Held::Unknown);
                    self.mark(key, now);
                }
            }
        }
        let lost: Vec<Key> = self
            .held
            .keys()
            .filter(|k| !seen.contains(*k))
            .cloned()
            .collect();
        for k in lost {
            self.held.remove(&k);
            self.mark(k, now);
        }
    }

    /// Sends what is due, until the daemon cannot be reached.
    pub async fn flush(&mut self, api: &Path) {
        for key in self.due(Instant::now()) {
            let step = self.step(&key);
            let r = match &step {
                Step::Done => continue,
                Step::Put(s) => {
                    let body = serde_json::to_vec(s).unwrap_or_default();
                    let path = format!("/v1/services/{}", s.name);
                    daemon(api.to_path_buf(), "PUT", path, Some(body))
                        .await
                        .map(|(st, b)| Outcome::of_reply("PUT", st, &b))
                }
                Step::Delete(name) => {
                    let path = format!("/v1/services/{name}");
                    daemon(api.to_path_buf(), "DELETE", path, None)
                        .await
                        .map(|(st, b)| Outcome::of_reply("DELETE", st, &b))
                }
            };
            let outcome = r.unwrap_or_else(|e| Outcome::Unavailable(e.to_string()));
            let stop = matches!(outcome, Outcome::Unavailable(_));
            self.record(&key, step, outcome, Instant::now());
            if stop {
                break;
            }
        }
    }

    /// Reads the daemon's services and [`Syncer::compare`]s them.
    pub async fn resync(&mut self, api: &Path) {
        if !self.synced() {
            return;
        }
        let r = daemon(api.to_path_buf(), "GET", "/v1/services".into(), None).await;
        match r {
            Ok((200, body)) => {
                let list = match serde_json::from_str::<Vec<serde_json::Value>>(&body) {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::warn!("services: the daemon's list does not read: {e}");
                        return;
                    }
                };
                let list = list
                    .into_iter()
                    .filter_map(|v| {
                        let name = v.get("name")?.as_str()?.to_string();
                        Some((name, serde_json::from_value(v).ok()))
                    })
                    .collect();
                self.compare(list, Instant::now());
            }
            Ok((404, body)) => {
                if !self.no_route_logged {
                    tracing::warn!(
                        "services: the daemon has no GET /v1/services ({}): an older daemon?",
                        reason_of(&body)
                    );
                    self.no_route_logged = true;
                }
            }
            Ok((st, body)) => {
                tracing::warn!("services: GET /v1/services: {st}: {}", reason_of(&body))
            }
            Err(e) => tracing::warn!("services: {e}"),
        }
    }
}

/// What the Service watch needs.
pub struct ServiceWatch {
    /// The API server.
    pub client: Client,
    /// The daemon's socket.
    pub api: PathBuf,
    /// The network of Services without [`NETWORK_ANNOTATION`].
    pub default_network: String,
}

async fn sleep_until(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}

/// A v1beta1 EndpointSlice read as a v1 one: the fields [`to_daemon`] reads
/// (`addressType`, `endpoints[].addresses`, `conditions`, `ports`) are the same in both.
pub fn slice_from_v1beta1(o: DynamicObject) -> Result<EndpointSlice, serde_json::Error> {
    let mut v = serde_json::to_value(o)?;
    v["apiVersion"] = serde_json::json!("discovery.k8s.io/v1");
    v["kind"] = serde_json::json!("EndpointSlice");
    serde_json::from_value(v)
}

fn v1beta1_event(ev: watcher::Event<DynamicObject>) -> Option<watcher::Event<EndpointSlice>> {
    use watcher::Event::*;
    let read = |o: DynamicObject| {
        let id = format!("{}/{}", o.namespace().unwrap_or_default(), o.name_any());
        slice_from_v1beta1(o)
            .map_err(|e| tracing::warn!("endpoint slice {id}: does not read: {e}"))
            .ok()
    };
    Some(match ev {
        Init => Init,
        InitDone => InitDone,
        InitApply(o) => InitApply(read(o)?),
        Apply(o) => Apply(read(o)?),
        Delete(o) => Delete(read(o)?),
    })
}

/// The watch of EndpointSlices labelled [`SERVICE_NAME_LABEL`]: `discovery.k8s.io/v1`
/// where the API server serves it, else `v1beta1` (Kubernetes before 1.21). Which one
/// is asked once, retried with back-off while the API server cannot say.
async fn slice_watch(client: &Client) -> BoxStream<'static, SliceEvent> {
    let cfg = watcher::Config::default().labels(SERVICE_NAME_LABEL);
    let v1: Api<EndpointSlice> = Api::all(client.clone());
    let mut backoff = FIRST_DAEMON_BACKOFF;
    loop {
        match v1.list(&ListParams::default().limit(1)).await {
            Ok(_) => return watcher(v1, cfg).default_backoff().boxed(),
            Err(kube::Error::Api(s)) if s.is_not_found() => {
                tracing::info!(
                    "services: the API server has no discovery.k8s.io/v1 EndpointSlices; \
                     watching v1beta1"
                );
                let gvk = GroupVersionKind::gvk("discovery.k8s.io", "v1beta1", "EndpointSlice");
                let ar = ApiResource::from_gvk_with_plural(&gvk, "endpointslices");
                let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
                return watcher(api, cfg)
                    .default_backoff()
                    .filter_map(|r| {
                        futures::future::ready(match r {
                            Ok(ev) => v1beta1_event(ev).map(Ok),
                            Err(e) => Some(Err(e)),
                        })
                    })
                    .boxed();
            }
            Err(e) => {
                tracing::warn!("endpoint slices: {e}; retrying in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

type SliceEvent = Result<watcher::Event<EndpointSlice>, watcher::Error>;

/// Watches Services and EndpointSlices and tells the daemon, until a watch ends; see
/// the module's documentation.
pub async fn watch_services(w: ServiceWatch) {
    let services: Api<Service> = Api::all(w.client.clone());
    let services = watcher(services, watcher::Config::default()).default_backoff();
    let slices = slice_watch(&w.client).await;
    futures::pin_mut!(services, slices);
    let mut s = Syncer::new(&w.default_network);
    let mut resync = tokio::time::interval(RESYNC);
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut compared = false;
    loop {
        let wake = s.next_wake();
        tokio::select! {
            ev = services.next() => match ev {
                Some(Ok(ev)) => s.service_event(ev, Instant::now()),
                Some(Err(e)) => tracing::warn!("service watch: {e}; retrying"),
                None => return,
            },
            ev = slices.next() => match ev {
                Some(Ok(ev)) => s.slice_event(ev, Instant::now()),
                Some(Err(e)) => tracing::warn!("endpoint slice watch: {e}; retrying"),
                None => return,
            },
            _ = sleep_until(wake) => s.flush(&w.api).await,
            _ = resync.tick() => if compared {
                s.resync(&w.api).await;
            },
        }
        if s.synced() && !compared {
            // What the daemon holds from before is known before anything is sent.
            compared = true;
            tracing::info!(
                "services: {} Service(s) and their endpoint slices listed",
                s.services.len()
            );
            s.resync(&w.api).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ClientIPConfig, ServicePort as KPort, SessionAffinityConfig};
    use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort};

    fn svc(ns: &str, name: &str, ports: &[(&str, &str, i32, Option<IntOrString>)]) -> Service {
        let mut s = Service::default();
        s.metadata.namespace = Some(ns.into());
        s.metadata.name = Some(name.into());
        s.spec = Some(ServiceSpec {
            cluster_ip: Some("10.96.0.10".into()),
            cluster_ips: Some(vec!["10.96.0.10".into()]),
            type_: Some("ClusterIP".into()),
            ports: Some(
                ports
                    .iter()
                    .map(|(n, proto, port, target)| KPort {
                        name: (!n.is_empty()).then(|| n.to_string()),
                        protocol: Some(proto.to_string()),
                        port: *port,
                        target_port: target.clone(),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        });
        s
    }

    fn web() -> Service {
        svc("default", "web", &[("http", "TCP", 80, None)])
    }

    /// A slice of `svc` with endpoints (address, ready, terminating) and ports (name,
    /// protocol, port).
    fn slice(
        name: &str,
        svc: &str,
        eps: &[(&str, Option<bool>, Option<bool>)],
        ports: &[(&str, &str, i32)],
    ) -> EndpointSlice {
        let mut s = EndpointSlice {
            address_type: "IPv4".into(),
            endpoints: eps
                .iter()
                .map(|(a, ready, terminating)| Endpoint {
                    addresses: vec![a.to_string()],
                    conditions: Some(EndpointConditions {
                        ready: *ready,
                        serving: None,
                        terminating: *terminating,
                    }),
                    ..Default::default()
                })
                .collect(),
            ports: Some(
                ports
                    .iter()
                    .map(|(n, proto, port)| EndpointPort {
                        name: Some(n.to_string()),
                        protocol: Some(proto.to_string()),
                        port: Some(*port),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        };
        s.metadata.namespace = Some("default".into());
        s.metadata.name = Some(name.into());
        s.labels_mut()
            .insert(SERVICE_NAME_LABEL.into(), svc.to_string());
        s
    }

    fn map(s: &Service, slices: &[EndpointSlice]) -> Result<Mapped, NotMapped> {
        to_daemon(s, &slices.iter().collect::<Vec<_>>(), "default")
    }

    #[test]
    fn only_ready_ipv4_endpoints_are_backends_once_each_in_order() {
        let a = slice(
            "web-a",
            "web",
            &[
                ("10.1.0.10", Some(true), None),
                ("10.1.0.9", None, None),        // unknown counts as ready
                ("10.1.0.3", Some(false), None), // not ready
                ("10.1.0.4", None, Some(true)),  // terminating, not known ready
                ("10.1.0.5", Some(true), Some(true)), // terminating but ready
                ("banana", Some(true), None),
            ],
            &[("http", "TCP", 8080)],
        );
        let b = slice("web-b", "web", &[("10.1.0.9", Some(true), None)], &[]);
        let mut v6 = slice("web-c", "web", &[("fd00::1", Some(true), None)], &[]);
        v6.address_type = "IPv6".into();
        let m = map(&web(), &[a, b, v6]).unwrap();
        assert_eq!(m.service.backends, ["10.1.0.5", "10.1.0.9", "10.1.0.10"]);
        assert_eq!(m.service.name, "default.web");
        assert_eq!(m.service.network, "default");
        assert_eq!(m.service.vip, Ipv4Addr::new(10, 96, 0, 10));
        assert_eq!(m.service.affinity, Affinity::None);
        assert!(m.notes.is_empty(), "{:?}", m.notes);
        // No slices: no backends, still a VIP.
        assert!(map(&web(), &[]).unwrap().service.backends.is_empty());
    }

    #[test]
    fn target_ports_come_from_the_slices_else_an_integer_target_else_the_port() {
        let s = svc(
            "default",
            "web",
            &[
                ("http", "TCP", 80, Some(IntOrString::String("web".into()))),
                ("metrics", "TCP", 9100, Some(IntOrString::Int(9101))),
                (
                    "admin",
                    "TCP",
                    81,
                    Some(IntOrString::String("admin".into())),
                ),
                ("dns", "UDP", 53, Some(IntOrString::Int(5353))),
            ],
        );
        let sl = slice(
            "web-a",
            "web",
            &[("10.1.0.1", Some(true), None)],
            // The slice's number wins over the integer targetPort; a port of another
            // protocol with the same name does not count.
            &[
                ("http", "TCP", 8080),
                ("dns", "UDP", 5354),
                ("metrics", "UDP", 1),
            ],
        );
        let m = map(&s, &[sl]).unwrap();
        let got: Vec<(L4Protocol, u16, Option<u16>)> = m
            .service
            .ports
            .iter()
            .map(|p| (p.protocol, p.port, p.target_port))
            .collect();
        assert_eq!(
            got,
            [
                (L4Protocol::Tcp, 80, Some(8080)),
                (L4Protocol::Tcp, 9100, Some(9101)),
                (L4Protocol::Tcp, 81, None), // named, unresolved: the port
                (L4Protocol::Udp, 53, Some(5354)),
            ]
        );
        // An unnamed single port matches the slice's unnamed port ("" or absent).
        let one = svc("default", "one", &[("", "TCP", 80, None)]);
        let mut sl = slice("one-a", "one", &[("10.1.0.1", None, None)], &[]);
        sl.ports = Some(vec![EndpointPort {
            port: Some(8000),
            ..Default::default()
        }]);
        assert_eq!(
            map(&one, &[sl]).unwrap().service.ports[0].target_port,
            Some(8000)
        );
        // Slices that disagree: the first by name wins, and it is noted.
        let a = slice("web-a", "web", &[], &[("http", "TCP", 8080)]);
        let b = slice("web-b", "web", &[], &[("http", "TCP", 8081)]);
        let m = map(&web(), &[b, a]).unwrap();
        assert_eq!(m.service.ports[0].target_port, Some(8080));
        assert!(m.notes[0].contains("8080, 8081"), "{:?}", m.notes);
    }

    #[test]
    fn client_ip_affinity_with_its_timeout() {
        let mut s = web();
        let spec = s.spec.as_mut().unwrap();
        spec.session_affinity = Some("ClientIP".into());
        assert_eq!(map(&s, &[]).unwrap().service.affinity, Affinity::ClientIp);
        assert_eq!(map(&s, &[]).unwrap().service.affinity_timeout_s, None);
        s.spec.as_mut().unwrap().session_affinity_config = Some(SessionAffinityConfig {
            client_ip: Some(ClientIPConfig {
                timeout_seconds: Some(600),
            }),
        });
        let m = map(&s, &[]).unwrap().service;
        assert_eq!(
            (m.affinity, m.affinity_timeout_s),
            (Affinity::ClientIp, Some(600))
        );
        // "None" is no affinity, whatever the config says.
        s.spec.as_mut().unwrap().session_affinity = Some("None".into());
        let m = map(&s, &[]).unwrap().service;
        assert_eq!((m.affinity, m.affinity_timeout_s), (Affinity::None, None));
    }

    #[test]
    fn udp_is_carried_and_sctp_skipped_with_a_note() {
        let s = svc(
            "default",
            "dns",
            &[("dns", "UDP", 53, None), ("sig", "SCTP", 3868, None)],
        );
        let m = map(&s, &[]).unwrap();
        assert_eq!(m.service.ports.len(), 1);
        assert_eq!(m.service.ports[0].protocol, L4Protocol::Udp);
        assert!(m.notes[0].contains("SCTP"), "{:?}", m.notes);
        // Nothing but SCTP: no VIP at all.
        let s = svc("default", "sig", &[("sig", "SCTP", 3868, None)]);
        assert!(matches!(map(&s, &[]), Err(NotMapped::Skipped(w)) if w.contains("SCTP")));
        // The protocol defaults to TCP.
        let mut s = web();
        s.spec.as_mut().unwrap().ports.as_mut().unwrap()[0].protocol = None;
        assert_eq!(
            map(&s, &[]).unwrap().service.ports[0].protocol,
            L4Protocol::Tcp
        );
    }

    #[test]
    fn services_without_an_ipv4_cluster_ip_are_skipped() {
        let with = |f: &dyn Fn(&mut ServiceSpec)| {
            let mut s = web();
            f(s.spec.as_mut().unwrap());
            map(&s, &[])
        };
        let headless = with(&|s| {
            s.cluster_ip = Some("None".into());
            s.cluster_ips = Some(vec!["None".into()]);
        });
        assert!(matches!(headless, Err(NotMapped::Skipped(w)) if w.contains("headless")));
        let ext = with(&|s| {
            s.type_ = Some("ExternalName".into());
            s.external_name = Some("example.com".into());
        });
        assert!(matches!(ext, Err(NotMapped::Skipped(_))));
        let v6 = with(&|s| {
            s.cluster_ip = Some("fd00::10".into());
            s.cluster_ips = Some(vec!["fd00::10".into()]);
        });
        assert!(matches!(v6, Err(NotMapped::Skipped(w)) if w.contains("not IPv4")));
        // Dual-stack with IPv6 first: its IPv4 address.
        let dual = with(&|s| {
            s.cluster_ip = Some("fd00::10".into());
            s.cluster_ips = Some(vec!["fd00::10".into(), "10.96.0.11".into()]);
        });
        assert_eq!(dual.unwrap().service.vip, Ipv4Addr::new(10, 96, 0, 11));
        let pending = with(&|s| {
            s.cluster_ip = None;
            s.cluster_ips = None;
        });
        assert!(matches!(pending, Err(NotMapped::Skipped(_))));
        for t in ["NodePort", "LoadBalancer"] {
            assert!(with(&|s| s.type_ = Some(t.into())).is_ok(), "{t}");
        }
    }

    #[test]
    fn names_are_namespace_dot_name_up_to_63_and_the_annotation_picks_the_network() {
        let long = svc(&"n".repeat(40), &"s".repeat(23), &[("", "TCP", 80, None)]);
        assert!(matches!(map(&long, &[]), Err(NotMapped::Invalid(w)) if w.contains("1-63")));
        let fits = svc(&"n".repeat(40), &"s".repeat(22), &[("", "TCP", 80, None)]);
        assert_eq!(map(&fits, &[]).unwrap().service.name.len(), 63);
        assert!(daemon_name("", "x").is_err());
        assert!(daemon_name("a b", "x").is_err());
        assert_eq!(
            key_of("default.web"),
            Some(("default".into(), "web".into()))
        );
        assert_eq!(key_of("web"), None);
        assert_eq!(key_of(".web"), None);
        let mut s = web();
        s.annotations_mut()
            .insert(NETWORK_ANNOTATION.into(), "blue-app".into());
        assert_eq!(map(&s, &[]).unwrap().service.network, "blue-app");
        assert_eq!(
            to_daemon(&web(), &[], "other").unwrap().service.network,
            "other"
        );
    }

    #[test]
    fn a_daemon_answering_otherwise_is_compared_in_canonical_form() {
        let m = map(&web(), &[]).unwrap().service;
        let mut echoed = m.clone();
        echoed.ports[0].target_port = Some(80);
        assert!(same(&m, &echoed));
        let mut aff = m.clone();
        aff.affinity = Affinity::ClientIp;
        let mut aff2 = aff.clone();
        aff2.affinity_timeout_s = Some(DEFAULT_AFFINITY_TIMEOUT_S);
        assert!(same(&aff, &aff2));
        assert!(!same(&m, &aff));
        echoed.backends.push("10.1.0.1".into());
        assert!(!same(&m, &echoed));
        assert_eq!(Outcome::of_reply("DELETE", 404, ""), Outcome::Accepted);
        assert!(matches!(
            Outcome::of_reply("PUT", 404, r#"{"error":"no such endpoint"}"#),
            Outcome::Refused(w) if w == "no such endpoint"
        ));
        assert!(matches!(
            Outcome::of_reply("PUT", 422, r#"{"error":"1 problem","problems":["vip: x"]}"#),
            Outcome::Refused(w) if w == "1 problem; vip: x"
        ));
        assert!(matches!(
            Outcome::of_reply("PUT", 503, "busy"),
            Outcome::Unavailable(_)
        ));
    }

    fn key(name: &str) -> Key {
        ("default".into(), name.into())
    }

    /// A syncer that has listed `services` and `slices`, at `t`.
    fn listed(services: Vec<Service>, slices: Vec<EndpointSlice>, t: Instant) -> Syncer {
        let mut s = Syncer::new("default");
        s.service_event(watcher::Event::Init, t);
        for x in services {
            s.service_event(watcher::Event::InitApply(x), t);
        }
        s.service_event(watcher::Event::InitDone, t);
        assert!(s.due(t + DEBOUNCE).is_empty(), "nothing before the slices");
        s.slice_event(watcher::Event::Init, t);
        for x in slices {
            s.slice_event(watcher::Event::InitApply(x), t);
        }
        s.slice_event(watcher::Event::InitDone, t);
        s
    }

    fn ready(name: &str, addrs: &[&str]) -> EndpointSlice {
        let eps: Vec<(&str, Option<bool>, Option<bool>)> =
            addrs.iter().map(|a| (*a, Some(true), None)).collect();
        slice(name, "web", &eps, &[("http", "TCP", 8080)])
    }

    #[test]
    fn a_burst_of_changes_is_one_put_and_an_unchanged_service_none() {
        let t = Instant::now();
        let mut s = listed(vec![web()], vec![ready("web-a", &["10.1.0.1"])], t);
        assert!(s.synced());
        assert!(s.due(t).is_empty(), "not before the debounce");
        assert_eq!(s.next_wake(), Some(t + DEBOUNCE));
        // More changes within the window do not push it further.
        for (i, n) in [2, 3, 4].iter().enumerate() {
            let addrs: Vec<String> = (1..=*n).map(|x| format!("10.1.0.{x}")).collect();
            let addrs: Vec<&str> = addrs.iter().map(String::as_str).collect();
            let at = t + Duration::from_millis(20 * (i as u64 + 1));
            s.slice_event(watcher::Event::Apply(ready("web-a", &addrs)), at);
        }
        assert_eq!(s.next_wake(), Some(t + DEBOUNCE));
        let now = t + DEBOUNCE;
        assert_eq!(s.due(now), [key("web")]);
        let Step::Put(sent) = s.step(&key("web")) else {
            panic!("no put")
        };
        assert_eq!(sent.backends.len(), 4, "the latest state, once");
        s.record(&key("web"), Step::Put(sent.clone()), Outcome::Accepted, now);
        assert_eq!(s.next_wake(), None);
        // The same state again (a resync of the watch, an unrelated label): no call.
        s.slice_event(
            watcher::Event::Apply(ready(
                "web-a",
                &["10.1.0.4", "10.1.0.3", "10.1.0.2", "10.1.0.1"],
            )),
            now,
        );
        assert_eq!(s.due(now + DEBOUNCE), [key("web")]);
        assert_eq!(s.step(&key("web")), Step::Done);
        assert_eq!(s.dirty().count(), 0);
        // The Service deleted: removed from the daemon; then nothing is held.
        s.service_event(watcher::Event::Delete(web()), now);
        assert_eq!(s.step(&key("web")), Step::Delete("default.web".into()));
        s.record(
            &key("web"),
            Step::Delete("default.web".into()),
            Outcome::Accepted,
            now,
        );
        s.mark(key("web"), now);
        assert_eq!(s.step(&key("web")), Step::Done);
    }

    #[test]
    fn refusals_and_a_daemon_down_are_retried_with_back_off() {
        let t = Instant::now();
        let mut s = listed(vec![web()], vec![], t);
        let now = t + DEBOUNCE;
        let Step::Put(x) = s.step(&key("web")) else {
            panic!()
        };
        s.record(
            &key("web"),
            Step::Put(x.clone()),
            Outcome::Refused("no network default".into()),
            now,
        );
        assert_eq!(s.next_wake(), Some(now + FIRST_REFUSAL_BACKOFF));
        let later = now + FIRST_REFUSAL_BACKOFF;
        s.record(
            &key("web"),
            Step::Put(x.clone()),
            Outcome::Refused("no network default".into()),
            later,
        );
        assert_eq!(s.next_wake(), Some(later + 2 * FIRST_REFUSAL_BACKOFF));
        // A change is sent after the debounce, not after the back-off.
        s.slice_event(watcher::Event::Apply(ready("web-a", &["10.1.0.1"])), later);
        assert_eq!(s.next_wake(), Some(later + DEBOUNCE));
        // The daemon down: nothing is due until its back-off has passed, then again.
        let at = later + DEBOUNCE;
        let Step::Put(y) = s.step(&key("web")) else {
            panic!()
        };
        s.record(
            &key("web"),
            Step::Put(y.clone()),
            Outcome::Unavailable("connect".into()),
            at,
        );
        assert!(s.due(at).is_empty());
        assert_eq!(s.next_wake(), Some(at + FIRST_DAEMON_BACKOFF));
        s.record(
            &key("web"),
            Step::Put(y.clone()),
            Outcome::Unavailable("connect".into()),
            at,
        );
        assert_eq!(s.next_wake(), Some(at + 2 * FIRST_DAEMON_BACKOFF));
        let back = at + 2 * FIRST_DAEMON_BACKOFF;
        assert_eq!(s.due(back), [key("web")]);
        s.record(&key("web"), Step::Put(y.clone()), Outcome::Accepted, back);
        assert_eq!(s.next_wake(), None);
        // Removed from the cluster after an unknown outcome: deleted, not forgotten.
        s.record(
            &key("web"),
            Step::Put(y),
            Outcome::Unavailable("timed out".into()),
            back,
        );
        s.service_event(watcher::Event::Delete(web()), back);
        assert_eq!(s.step(&key("web")), Step::Delete("default.web".into()));
    }

    #[test]
    fn the_daemons_services_are_compared_with_the_cluster() {
        let t = Instant::now();
        let mut s = listed(vec![web()], vec![ready("web-a", &["10.1.0.1"])], t);
        let want = s.desired(&key("web")).unwrap().service;
        let mut stale = want.clone();
        stale.name = "old.gone".into();
        let mut topo = want.clone();
        topo.name = "dns".into();
        s.compare(
            vec![
                ("default.web".into(), Some(want.clone())),
                ("old.gone".into(), Some(stale)),
                ("dns".into(), Some(topo)),
            ],
            t,
        );
        let now = t + DEBOUNCE;
        let mut steps: Vec<(Key, Step)> = s
            .due(now)
            .into_iter()
            .map(|k| (k.clone(), s.step(&k)))
            .collect();
        steps.sort_by(|a, b| a.0.cmp(&b.0));
        // Held already as wanted: no put; the stale one deleted; the topology's untouched.
        assert_eq!(
            steps,
            [
                (key("web"), Step::Done),
                (
                    ("old".into(), "gone".into()),
                    Step::Delete("old.gone".into())
                ),
            ]
        );
        s.record(
            &("old".into(), "gone".into()),
            Step::Delete("old.gone".into()),
            Outcome::Accepted,
            now,
        );
        // The daemon lost it (restarted afresh): sent again.
        s.compare(vec![], now);
        assert_eq!(s.due(now + DEBOUNCE), [key("web")]);
        assert_eq!(s.step(&key("web")), Step::Put(want.clone()));
        s.record(&key("web"), Step::Put(want.clone()), Outcome::Accepted, now);
        // It holds another version: sent again.
        let mut other = want.clone();
        other.backends.clear();
        s.compare(vec![("default.web".into(), Some(other))], now);
        assert_eq!(s.step(&key("web")), Step::Put(want));
    }

    #[test]
    fn v1beta1_slices_read_as_v1() {
        let o: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "discovery.k8s.io/v1beta1",
            "kind": "EndpointSlice",
            "metadata": {"name": "web-1", "namespace": "default",
                         "labels": {SERVICE_NAME_LABEL: "web"}},
            "addressType": "IPv4",
            "endpoints": [
                {"addresses": ["10.1.0.1"], "conditions": {"ready": true},
                 "topology": {"kubernetes.io/hostname": "a"}},
                {"addresses": ["10.1.0.2"], "conditions": {"ready": false}},
            ],
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        }))
        .unwrap();
        let s = slice_from_v1beta1(o).unwrap();
        assert_eq!(s.labels()[SERVICE_NAME_LABEL], "web");
        let m = map(&web(), &[s]).unwrap().service;
        assert_eq!(m.backends, ["10.1.0.1"]);
        assert_eq!(m.ports[0].target_port, Some(8080));
    }

    #[test]
    fn a_relist_counts_what_went_missing_as_deleted() {
        let t = Instant::now();
        let mut s = listed(vec![web()], vec![ready("web-a", &["10.1.0.1"])], t);
        let Step::Put(x) = s.step(&key("web")) else {
            panic!()
        };
        s.record(&key("web"), Step::Put(x), Outcome::Accepted, t);
        // The slice watch re-lists without the slice: no backends.
        s.slice_event(watcher::Event::Init, t);
        s.slice_event(watcher::Event::InitDone, t);
        let Step::Put(y) = s.step(&key("web")) else {
            panic!()
        };
        assert!(y.backends.is_empty());
        s.record(&key("web"), Step::Put(y), Outcome::Accepted, t);
        // The Service watch re-lists without the Service: deleted.
        s.service_event(watcher::Event::Init, t);
        s.service_event(watcher::Event::InitDone, t);
        assert_eq!(s.step(&key("web")), Step::Delete("default.web".into()));
        // A slice relabelled to another Service moves with its label.
        let mut s = listed(
            vec![web(), svc("default", "api", &[("http", "TCP", 80, None)])],
            vec![ready("web-a", &["10.1.0.1"])],
            t,
        );
        let mut moved = ready("web-a", &["10.1.0.1"]);
        moved
            .labels_mut()
            .insert(SERVICE_NAME_LABEL.into(), "api".into());
        s.slice_event(watcher::Event::Apply(moved), t);
        assert!(s.desired(&key("web")).unwrap().service.backends.is_empty());
        assert_eq!(
            s.desired(&key("api")).unwrap().service.backends,
            ["10.1.0.1"]
        );
    }
}
