//! vnfhost's Kubernetes controller: the cluster-scoped `Network` custom resource
//! (`vnfhost.io/v1alpha1`), reconciled into the node's daemon.
//!
//! For each `Network` the controller:
//!
//! 1. adds the finalizer `vnfhost.io/network`, so a deletion waits for the node;
//! 2. `PUT`s the network to the daemon (`/v1/networks/NAME`), which checks it against
//!    the rest of the node's topology and applies it;
//! 3. sets the `Ready` condition: `True` (`Applied`) when the daemon took it, `False`
//!    with reason `Rejected` and the daemon's message when it refused it, or `False` with
//!    `DaemonUnavailable` when the daemon cannot be reached (retried with back-off);
//! 4. on deletion, removes the network from the daemon (refused while pods use it:
//!    condition `InUse`, retried) and then the finalizer.
//!
//! With a node name (`--node`, `NODE_NAME`) the controller also knows the cluster's
//! nodes ([`nodes`]) and gives this node its share of a network's addresses ([`ipam`]),
//! sent to the daemon as the network's `pool`:
//!
//! - the default network (`--default-network`, `default`): the node's `spec.podCIDR`;
//!   one outside the network's prefix or overlapping another network of the tenant is
//!   refused (`Ready=False`, reason `BadPodCIDR`) and the network is not applied;
//! - a network with a `vni`: a block of its first IPv4 prefix (`spec.blockSize`, default
//!   [`ipam::default_block_len`]), the lowest free one, recorded in `status.blocks`
//!   (`{node: cidr}`) with the read `resourceVersion`, so two nodes never take the same
//!   one (a conflict is re-read and retried);
//! - any other network: its whole prefix, as on a single node.
//!
//! Every status write is such an update ([`update_status`]). Nodes share the one `Ready`
//! condition: a node's failure says `node NAME: …` and stands, for that generation,
//! until that node clears it or leaves; no other node overwrites it. A node whose Node
//! object is gone leaves the Networks alone.
//!
//! Beside the Networks, the controller watches:
//!
//! - `Node`s (with a node name): the other nodes' VTEPs, told to the daemon as its
//!   overlay ([`nodes`]);
//! - `Pod`s (of this node, with a node name): their extra networks
//!   ([`NETWORKS_ANNOTATION`]), recorded in the daemon ([`watch_pods`]);
//! - `Service`s and `discovery.k8s.io/v1` `EndpointSlice`s: each Service's cluster IP
//!   with its ready endpoints as backends, sent to the daemon as a service
//!   (`/v1/services/NAMESPACE.NAME`) on its tenant's network ([`services`]).
//!
//! The CRD's OpenAPI schema (`deploy/00-crd-network.yaml`) rejects malformed objects at
//! the API server; the daemon's checks catch what a schema cannot say (overlaps,
//! references). A watch that loses the API server is retried with back-off by
//! kube-runtime, and each failure is logged.

pub mod ipam;
pub mod nodes;
pub mod services;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use api::values::Prefix;
use kube::api::PostParams;
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{finalizer, Event};
use kube::runtime::reflector::Store;
use kube::{Api, Client, CustomResource, ResourceExt};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// The finalizer that makes a deletion wait for the node; with a node name each node
/// has its own (`vnfhost.io/network-NODE`), so a deletion waits for every node.
pub const FINALIZER: &str = "vnfhost.io/network";

/// The finalizer of `node`.
pub fn finalizer_of(node: Option<&str>) -> String {
    match node {
        Some(n) => format!("{FINALIZER}-{n}"),
        None => FINALIZER.to_string(),
    }
}

/// A tenant network, as `kubectl` sees it.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[kube(
    group = "vnfhost.io",
    version = "v1alpha1",
    kind = "Network",
    status = "NetworkStatus",
    schema = "disabled"
)]
#[serde(rename_all = "camelCase")]
pub struct NetworkSpec {
    /// The tenant: networks of one tenant may be routed together, never across tenants.
    pub tenant: String,
    /// IPv4 and/or IPv6 prefixes.
    pub cidrs: Vec<String>,
    /// VLAN id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vlan: Option<u16>,
    /// VXLAN network identifier: the network spans the nodes, each handing out
    /// addresses from a block of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vni: Option<u32>,
    /// The prefix length of each node's block of a network with a `vni` (default
    /// [`ipam::default_block_len`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_size: Option<u8>,
    /// Gateway addresses (at most one per family).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateway: Vec<String>,
    /// Namespaces whose pods may join this network through their networks annotation
    /// though their primary network is another tenant's (the node refuses anyone else
    /// of another tenant).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_namespaces: Vec<String>,
}

/// What the controller reports.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NetworkStatus {
    /// The generation the conditions describe.
    #[serde(default)]
    pub observed_generation: Option<i64>,
    /// `Ready`.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// Each node's block of a network with a `vni`, `{node: cidr}`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub blocks: BTreeMap<String, String>,
}

/// A status condition (the `metav1.Condition` shape).
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// `Ready`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True` or `False`.
    pub status: String,
    /// Why, in one word.
    pub reason: String,
    /// Why, in words.
    pub message: String,
    /// When the status last changed (RFC 3339).
    pub last_transition_time: String,
    /// The generation it describes.
    #[serde(default)]
    pub observed_generation: Option<i64>,
}

/// What the controller needs.
pub struct Ctx {
    /// The API server.
    pub client: Client,
    /// The daemon's socket.
    pub api: PathBuf,
    /// This node's finalizer ([`finalizer_of`]).
    pub finalizer: String,
    /// This node, when known.
    pub node: Option<String>,
    /// The network whose pool is the node's `spec.podCIDR`.
    pub default_network: String,
    /// The nodes, as the node watch sees them.
    pub nodes: nodes::SharedView,
    /// The Networks, as the controller sees them.
    pub networks: Store<Network>,
}

impl Ctx {
    /// This node has a name but no Node object (its Node was deleted: it left the
    /// cluster, or `--node` is wrong). Such a node leaves the Networks alone: it writes
    /// no status and no finalizer, so it does not fight the nodes that are members.
    pub fn absent(&self) -> bool {
        let Some(me) = &self.node else {
            return false;
        };
        let v = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        v.synced && !v.nodes.contains_key(me)
    }
}

/// Reconcile failures (they are retried with back-off).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The daemon could not be reached.
    #[error("vnfhost daemon: {0}")]
    Daemon(String),
    /// The daemon refused a deletion (pods still use the network).
    #[error("the node refused to remove the network: {0}")]
    InUse(String),
    /// The API server.
    #[error("kubernetes: {0}")]
    Kube(#[from] kube::Error),
    /// The finalizer machinery.
    #[error("finalizer: {0}")]
    Finalizer(String),
    /// An update kept meeting newer versions of the object.
    #[error("network {0}: still conflicting after {CONFLICT_RETRIES} attempts")]
    Conflict(String),
}

/// The daemon's network for `n`, or why `n` cannot be one.
pub fn to_daemon(n: &Network) -> Result<serde_json::Value, String> {
    let name = n.name_any();
    let ok = !name.is_empty()
        && name.len() <= 24
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !ok {
        return Err(format!(
            "name {name:?}: a vnfhost network name is 1-24 of [a-z0-9-] (no dots)"
        ));
    }
    let s = &n.spec;
    let mut v = json!({
        "name": name,
        "tenant": s.tenant,
        "cidrs": s.cidrs,
        "gateway": s.gateway,
    });
    if let Some(vlan) = s.vlan {
        v["vlan"] = json!(vlan);
    }
    if let Some(vni) = s.vni {
        v["vni"] = json!(vni);
    }
    if !s.allowed_namespaces.is_empty() {
        v["allowed_namespaces"] = json!(s.allowed_namespaces);
    }
    Ok(v)
}

/// One call to the daemon, off the async runtime's threads.
pub(crate) async fn daemon(
    api: PathBuf,
    method: &'static str,
    path: String,
    body: Option<Vec<u8>>,
) -> Result<(u16, String), Error> {
    tokio::task::spawn_blocking(move || {
        api::http::call(
            &api,
            method,
            &path,
            body.as_deref(),
            Duration::from_secs(120),
        )
    })
    .await
    .map_err(|e| Error::Daemon(e.to_string()))?
    .map(|(st, b)| (st, String::from_utf8_lossy(&b).into_owned()))
    .map_err(|e| Error::Daemon(e.to_string()))
}

/// The `error` (and problems) of a daemon reply.
pub(crate) fn reason_of(body: &str) -> String {
    match serde_json::from_str::<serde_json::Value>(body) {
        Ok(v) => {
            let mut s = v["error"].as_str().unwrap_or(body).to_string();
            if let Some(p) = v["problems"].as_array() {
                for x in p.iter().filter_map(|x| x.as_str()) {
                    s.push_str("; ");
                    s.push_str(x);
                }
            }
            s
        }
        Err(_) => body.to_string(),
    }
}

fn now() -> String {
    // RFC 3339 in UTC from the system clock, without a date crate.
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Attempts of an update that meets a newer version of the object.
pub const CONFLICT_RETRIES: usize = 20;

/// Updates `n`'s status with `f`, which says whether it changed anything: a replace of
/// the status carrying the `resourceVersion` read, so that nothing another node wrote
/// in between is lost; on a conflict the object is read again and `f` applied to that.
/// Returns the object as last written or read, `None` when it is gone.
pub async fn update_status(
    api: &Api<Network>,
    n: &Network,
    mut f: impl FnMut(&mut NetworkStatus) -> bool,
) -> Result<Option<Network>, Error> {
    let name = n.name_any();
    let mut cur = n.clone();
    for _ in 0..CONFLICT_RETRIES {
        let mut st = cur.status.clone().unwrap_or_default();
        if !f(&mut st) {
            return Ok(Some(cur));
        }
        let mut obj = cur.clone();
        obj.status = Some(st);
        match api
            .replace_status(&name, &PostParams::default(), &obj)
            .await
        {
            Ok(new) => return Ok(Some(new)),
            Err(kube::Error::Api(s)) if s.is_conflict() => match api.get_opt(&name).await? {
                Some(x) => cur = x,
                None => return Ok(None),
            },
            Err(kube::Error::Api(s)) if s.is_not_found() => return Ok(None),
            Err(e) => return Err(e.into()),
        }
    }
    Err(Error::Conflict(name))
}

/// The node that reported a condition: its message starts `node NAME: `.
pub fn reporter(message: &str) -> Option<&str> {
    message
        .strip_prefix("node ")?
        .split_once(": ")
        .map(|(n, _)| n)
}

/// Sets the `Ready` condition as node `me` sees it (keeping its transition time when
/// the status is the same). A failure is prefixed `node ME: `. Another known node's
/// failure of the same generation stands until that node clears it (or leaves, or the
/// spec changes): nodes that disagree take turns on no write.
async fn set_ready(
    api: &Api<Network>,
    n: &Network,
    ctx: &Ctx,
    ready: bool,
    reason: &str,
    message: &str,
) -> Result<(), Error> {
    let me = ctx.node.as_deref();
    let message = match me {
        Some(me) if !ready => format!("node {me}: {message}"),
        _ => message.to_string(),
    };
    let status = if ready { "True" } else { "False" };
    let generation = n.metadata.generation;
    let known = |node: &str| {
        let v = ctx.nodes.lock().unwrap_or_else(|p| p.into_inner());
        !v.synced || v.nodes.contains_key(node)
    };
    update_status(api, n, |st| {
        let old = st.conditions.iter().find(|c| c.type_ == "Ready");
        if let Some(c) = old {
            if c.status == status
                && c.reason == reason
                && c.message == message
                && c.observed_generation == generation
            {
                return false;
            }
            let others_failure = c.status == "False"
                && c.observed_generation == generation
                && reporter(&c.message).is_some_and(|r| Some(r) != me && known(r));
            if others_failure {
                return false;
            }
        }
        let since = match old {
            Some(c) if c.status == status => c.last_transition_time.clone(),
            _ => now(),
        };
        st.observed_generation = generation;
        st.conditions.retain(|c| c.type_ != "Ready");
        st.conditions.insert(
            0,
            Condition {
                type_: "Ready".into(),
                status: status.into(),
                reason: reason.into(),
                message: message.clone(),
                last_transition_time: since,
                observed_generation: generation,
            },
        );
        true
    })
    .await?;
    Ok(())
}

/// Where this node takes the addresses of a network from.
#[derive(Debug, PartialEq)]
enum Pool {
    /// The whole (first IPv4) prefix: a network of this node alone.
    Whole,
    /// This block of it.
    Block(Prefix),
    /// Not yet known (the nodes are not listed yet, or this node's is not there).
    Wait,
    /// Refused: reason and message for the `Ready` condition.
    Refused(&'static str, String),
}

/// This node's pool of network `n` (see the module's documentation); allocates its
/// block in `status.blocks` when it has none.
async fn pool(api: &Api<Network>, n: &Network, ctx: &Ctx) -> Result<Pool, Error> {
    let Some(me) = ctx.node.as_deref() else {
        return Ok(Pool::Whole);
    };
    let name = n.name_any();
    let is_default = name == ctx.default_network;
    let spans = n.spec.vni.is_some();
    let mine = n.status.as_ref().and_then(|s| s.blocks.get(me)).is_some();
    if !spans && mine {
        // No longer spanning nodes (its vni went): the block is given back.
        update_status(api, n, |st| st.blocks.remove(me).is_some()).await?;
    }
    if !is_default && !spans {
        return Ok(Pool::Whole);
    }
    let (synced, own) = {
        let v = ctx.nodes.lock().unwrap_or_else(|p| p.into_inner());
        (v.synced, v.nodes.get(me).cloned())
    };
    let Some(own) = own.filter(|_| synced) else {
        return Ok(Pool::Wait);
    };
    if is_default {
        if let Some(pc) = &own.pod_cidr {
            let others: Vec<(String, Vec<String>)> = ctx
                .networks
                .state()
                .iter()
                .filter(|x| x.spec.tenant == n.spec.tenant && x.name_any() != name)
                .map(|x| (x.name_any(), x.spec.cidrs.clone()))
                .collect();
            return Ok(
                match ipam::check_pod_cidr(pc, &name, &n.spec.cidrs, &others) {
                    Ok(p) => Pool::Block(p),
                    Err(e) => Pool::Refused("BadPodCIDR", format!("{e}; not applied")),
                },
            );
        }
        if !spans {
            return Ok(Pool::Whole);
        }
    }
    let Some(prefix) = ipam::first_ipv4(&n.spec.cidrs) else {
        return Ok(Pool::Whole);
    };
    let len = match ipam::block_len(prefix.len, n.spec.block_size) {
        Ok(l) => l,
        Err(e) => return Ok(Pool::Refused("Invalid", e)),
    };
    let latest = update_status(api, n, |st| {
        match ipam::block_for(&st.blocks, me, prefix, len) {
            Some(b) if st.blocks.get(me) != Some(&b.to_string()) => {
                st.blocks.insert(me.to_string(), b.to_string());
                true
            }
            _ => false,
        }
    })
    .await?;
    let blocks = latest
        .and_then(|x| x.status)
        .map(|s| s.blocks)
        .unwrap_or_default();
    Ok(
        match blocks.get(me).filter(|b| ipam::block_fits(b, prefix, len)) {
            Some(b) => match b.parse() {
                Ok(p) => Pool::Block(p),
                Err(e) => Pool::Refused("NoFreeBlock", e),
            },
            None => Pool::Refused(
                "NoFreeBlock",
                format!(
                    "no free /{len} block left in {prefix} ({} node(s) hold one); \
                 a longer spec.blockSize or a larger prefix makes room",
                    blocks.len()
                ),
            ),
        },
    )
}

async fn apply(n: Arc<Network>, ctx: &Ctx) -> Result<Action, Error> {
    let api: Api<Network> = Api::all(ctx.client.clone());
    let name = n.name_any();
    if ctx.absent() {
        return Ok(absent(ctx, &name));
    }
    let mut body = match to_daemon(&n) {
        Ok(v) => v,
        Err(e) => {
            set_ready(&api, &n, ctx, false, "Invalid", &e).await?;
            return Ok(Action::await_change());
        }
    };
    match pool(&api, &n, ctx).await? {
        Pool::Whole => {}
        Pool::Block(p) => body["pool"] = json!(p.to_string()),
        // The node watch reconciles again once it has listed the nodes.
        Pool::Wait => return Ok(Action::requeue(Duration::from_secs(2))),
        Pool::Refused(reason, why) => {
            tracing::warn!("network {name}: {why}");
            set_ready(&api, &n, ctx, false, reason, &why).await?;
            return Ok(Action::requeue(Duration::from_secs(60)));
        }
    }
    let body = body.to_string().into_bytes();
    match daemon(
        ctx.api.clone(),
        "PUT",
        format!("/v1/networks/{name}"),
        Some(body),
    )
    .await
    {
        Ok((200, _)) => {
            set_ready(
                &api,
                &n,
                ctx,
                true,
                "Applied",
                "the node's switch carries this network",
            )
            .await?;
            Ok(Action::requeue(Duration::from_secs(300)))
        }
        Ok((_, body)) => {
            let why = reason_of(&body);
            tracing::warn!("network {name}: the node refused it: {why}");
            set_ready(&api, &n, ctx, false, "Rejected", &why).await?;
            // Nothing changes until the object (or the node's topology) does.
            Ok(Action::requeue(Duration::from_secs(300)))
        }
        Err(e) => {
            set_ready(&api, &n, ctx, false, "DaemonUnavailable", &e.to_string()).await?;
            Err(e)
        }
    }
}

async fn cleanup(n: Arc<Network>, ctx: &Ctx) -> Result<Action, Error> {
    let name = n.name_any();
    match daemon(
        ctx.api.clone(),
        "DELETE",
        format!("/v1/networks/{name}"),
        None,
    )
    .await?
    {
        (200, _) => {
            tracing::info!("network {name}: removed from the node");
            Ok(Action::await_change())
        }
        (_, body) => {
            let why = reason_of(&body);
            let api: Api<Network> = Api::all(ctx.client.clone());
            set_ready(&api, &n, ctx, false, "InUse", &why).await?;
            Err(Error::InUse(why))
        }
    }
}

/// What a node without a Node object does with a Network: nothing (the node watch
/// warns when this node's Node goes).
fn absent(ctx: &Ctx, name: &str) -> Action {
    tracing::debug!(
        "network {name}: no Node object named {} (it left the cluster, or --node is \
         wrong); leaving the network alone",
        ctx.node.as_deref().unwrap_or_default()
    );
    Action::requeue(Duration::from_secs(30))
}

/// Reconciles one `Network`.
pub async fn reconcile(n: Arc<Network>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    // A node that left does not put its finalizer back on; one it still has is honoured.
    if ctx.absent() && !n.finalizers().contains(&ctx.finalizer) {
        return Ok(absent(&ctx, &n.name_any()));
    }
    let api: Api<Network> = Api::all(ctx.client.clone());
    finalizer(&api, &ctx.finalizer, n, |event| async {
        match event {
            Event::Apply(n) => apply(n, &ctx).await,
            Event::Cleanup(n) => cleanup(n, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(e.to_string()))
}

/// Retry policy: 5 s after a failure (the daemon down, a network in use).
pub fn error_policy(n: Arc<Network>, e: &Error, _ctx: Arc<Ctx>) -> Action {
    tracing::warn!("network {}: {e}; retrying in 5 s", n.name_any());
    Action::requeue(Duration::from_secs(5))
}

/// The Multus-style annotation through which a pod asks for extra networks.
pub const NETWORKS_ANNOTATION: &str = "k8s.v1.cni.cncf.io/networks";

/// Parses [`NETWORKS_ANNOTATION`]: `net-b, net-c@net5, other-ns/net-d`, or the JSON form
/// `[{"name": "net-b", "interface": "net1", "namespace": "x"}]`. Networks are
/// cluster-scoped here, so a namespace is accepted and ignored.
pub fn parse_networks_annotation(v: &str) -> Result<Vec<api::daemon::PodNetwork>, String> {
    use api::daemon::PodNetwork;
    let v = v.trim();
    if v.starts_with('[') {
        #[derive(Deserialize)]
        struct Sel {
            name: String,
            #[serde(default)]
            interface: Option<String>,
            #[serde(default, rename = "namespace")]
            _namespace: Option<String>,
        }
        let sels: Vec<Sel> =
            serde_json::from_str(v).map_err(|e| format!("{NETWORKS_ANNOTATION}: {e}"))?;
        return Ok(sels
            .into_iter()
            .map(|s| PodNetwork {
                network: s.name,
                interface: s.interface,
            })
            .collect());
    }
    let mut out = Vec::new();
    for part in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (net, ifname) = match part.split_once('@') {
            Some((n, i)) => (n, Some(i.to_string())),
            None => (part, None),
        };
        let net = net.rsplit('/').next().unwrap_or(net);
        if net.is_empty() || ifname.as_deref() == Some("") {
            return Err(format!(
                "{NETWORKS_ANNOTATION}: {part:?} is not NETWORK[@INTERFACE]"
            ));
        }
        out.push(PodNetwork {
            network: net.to_string(),
            interface: ifname,
        });
    }
    Ok(out)
}

/// Watches pods (of `node`, when given) and records their extra networks in the daemon,
/// where `vnfhost-cni` finds them at ADD time. Runs until the stream ends; errors are
/// logged and the watch is retried with back-off.
pub async fn watch_pods(client: Client, api: PathBuf, node: Option<String>) {
    use futures::StreamExt;
    use k8s_openapi::api::core::v1::Pod;
    use kube::runtime::{watcher, WatchStreamExt};
    let pods: Api<Pod> = Api::all(client);
    let mut cfg = watcher::Config::default();
    if let Some(n) = &node {
        cfg = cfg.fields(&format!("spec.nodeName={n}"));
    }
    let mut known = std::collections::HashSet::new();
    let stream = watcher(pods, cfg).default_backoff();
    futures::pin_mut!(stream);
    while let Some(ev) = stream.next().await {
        let (pod, deleted) = match ev {
            Ok(watcher::Event::Apply(p)) | Ok(watcher::Event::InitApply(p)) => (p, false),
            Ok(watcher::Event::Delete(p)) => (p, true),
            Ok(_) => continue,
            Err(e) => {
                tracing::warn!("pod watch: {e}; retrying");
                continue;
            }
        };
        let key = format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any());
        let annotation = pod.annotations().get(NETWORKS_ANNOTATION).cloned();
        let path = format!("/v1/pod-networks/{key}");
        let r = match (annotation, deleted) {
            (Some(a), false) => match parse_networks_annotation(&a) {
                Ok(list) => {
                    known.insert(key.clone());
                    let body = serde_json::to_vec(&list).unwrap_or_default();
                    daemon(api.clone(), "PUT", path, Some(body)).await
                }
                Err(e) => {
                    tracing::warn!("pod {key}: {e}");
                    continue;
                }
            },
            _ if known.remove(&key) => daemon(api.clone(), "DELETE", path, None).await,
            _ => continue,
        };
        match r {
            Ok((200, _)) => tracing::info!("pod {key}: extra networks recorded"),
            Ok((st, body)) => tracing::warn!("pod {key}: the daemon answered {st}: {body}"),
            Err(e) => tracing::warn!("pod {key}: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_networks_annotation_in_both_forms() {
        let l = parse_networks_annotation("net-b, other/net-c@net5").unwrap();
        assert_eq!(l[0].network, "net-b");
        assert_eq!(l[0].interface, None);
        assert_eq!(l[1].network, "net-c");
        assert_eq!(l[1].interface.as_deref(), Some("net5"));
        let j = parse_networks_annotation(r#"[{"name":"net-b","interface":"dp0"}]"#).unwrap();
        assert_eq!(j[0].interface.as_deref(), Some("dp0"));
        assert!(parse_networks_annotation("net-b@").is_err());
        assert!(parse_networks_annotation("[{\"nom\":1}]").is_err());
    }

    #[test]
    fn networks_map_to_the_daemon_and_bad_names_do_not() {
        let mut n = Network::new(
            "net-a",
            NetworkSpec {
                tenant: "blue".into(),
                cidrs: vec!["10.0.0.0/24".into()],
                vlan: Some(10),
                vni: None,
                block_size: None,
                gateway: vec!["10.0.0.254".into()],
                allowed_namespaces: vec![],
            },
        );
        let v = to_daemon(&n).unwrap();
        assert_eq!(v["name"], "net-a");
        assert_eq!(v["vlan"], 10);
        assert!(v.get("vni").is_none());
        assert!(v.get("allowed_namespaces").is_none());
        n.spec.allowed_namespaces = vec!["guests".into()];
        let v = to_daemon(&n).unwrap();
        assert_eq!(v["allowed_namespaces"], json!(["guests"]));
        let parsed: NetworkSpec = serde_json::from_value(json!({
            "tenant": "blue", "cidrs": ["10.0.0.0/24"], "allowedNamespaces": ["a", "b"]
        }))
        .unwrap();
        assert_eq!(parsed.allowed_namespaces, ["a", "b"]);
        n.metadata.name = Some("net.a".into());
        assert!(to_daemon(&n).is_err());
        assert_eq!(now().len(), 20);
        assert_eq!(reporter("node a-1: spec.podCIDR x"), Some("a-1"));
        assert_eq!(reporter("VLAN 100 is taken"), None);
        let st: NetworkStatus =
            serde_json::from_value(json!({"blocks": {"a": "10.0.0.0/26"}})).unwrap();
        assert_eq!(st.blocks["a"], "10.0.0.0/26");
        assert!(serde_json::to_value(NetworkStatus::default())
            .unwrap()
            .get("blocks")
            .is_none());
        assert!(now().starts_with("20"));
    }
}
