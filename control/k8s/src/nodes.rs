//! The cluster's nodes, from their `Node` objects: each node's tunnel endpoint (VTEP)
//! and pod CIDR, told to this node's daemon as its overlay (`PUT /v1/overlay`), and what
//! a node that leaves leaves behind, reclaimed.
//!
//! - A node's VTEP is the IPv4 address in its annotation [`VTEP_ANNOTATION`], else its
//!   first IPv4 `InternalIP`. A controller started with `--vtep ADDRESS` publishes that
//!   annotation on its own Node.
//! - This node's daemon gets the other nodes' VTEPs, sorted by name, and with
//!   `--uplink IFNAME` its uplink, whose address is this node's VTEP. It is told again
//!   whenever that changes, retried every [`RETRY`] while it refuses or cannot be
//!   reached, and told again when it says otherwise (checked as often).
//! - A Node deleted: the other nodes drop its VTEP, and its blocks (`status.blocks`) and
//!   finalizer are removed from every Network (any controller may; each removal is an
//!   update with the read `resourceVersion`, retried on conflict). After each full list
//!   of the nodes the same is done for nodes that left while no controller watched,
//!   each confirmed gone with a read of its Node first.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, ResourceExt};

use api::daemon::{Overlay, OverlayUplink, OverlayVtep};

use crate::{daemon, finalizer_of, reason_of, Error, Network};

/// The annotation through which a node publishes its VTEP address.
pub const VTEP_ANNOTATION: &str = "vnfhost.io/vtep";

/// How long a refused or failed overlay waits before it is sent again.
pub const RETRY: Duration = Duration::from_secs(10);

/// What a node's `Node` object says that vnfhost uses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeFacts {
    /// Its tunnel endpoint.
    pub vtep: Option<Ipv4Addr>,
    /// Its pod CIDR: the first IPv4 of `spec.podCIDRs`, else `spec.podCIDR` (as
    /// written: it is checked where it is used).
    pub pod_cidr: Option<String>,
}

/// The nodes as this controller last saw them.
#[derive(Clone, Debug, Default)]
pub struct NodeView {
    /// Every node by name.
    pub nodes: BTreeMap<String, NodeFacts>,
    /// A full list has been read (until then an absent node may only be unseen).
    pub synced: bool,
}

/// Shared between the node watch and the Network reconciler.
pub type SharedView = Arc<Mutex<NodeView>>;

/// A node's VTEP: its [`VTEP_ANNOTATION`] (an address that does not parse gives none,
/// rather than a guess), else its first IPv4 `InternalIP`.
pub fn vtep_of(n: &Node) -> Option<Ipv4Addr> {
    if let Some(a) = n.annotations().get(VTEP_ANNOTATION) {
        return a.trim().parse().ok();
    }
    n.status
        .as_ref()?
        .addresses
        .as_ref()?
        .iter()
        .filter(|a| a.type_ == "InternalIP")
        .find_map(|a| a.address.parse().ok())
}

/// A node's pod CIDR (see [`NodeFacts::pod_cidr`]).
pub fn pod_cidr_of(n: &Node) -> Option<String> {
    let spec = n.spec.as_ref()?;
    spec.pod_cidrs
        .iter()
        .flatten()
        .find(|c| {
            c.split('/')
                .next()
                .is_some_and(|a| a.parse::<Ipv4Addr>().is_ok())
        })
        .or(spec.pod_cidr.as_ref())
        .cloned()
}

/// The facts of `n`.
pub fn facts_of(n: &Node) -> NodeFacts {
    NodeFacts {
        vtep: vtep_of(n),
        pod_cidr: pod_cidr_of(n),
    }
}

/// The overlay of node `me`: the other nodes' VTEPs by name, and with `uplink` this
/// node's uplink at its own VTEP (`vtep`, the one it publishes, else the one its Node
/// gives).
pub fn overlay_for(
    view: &NodeView,
    me: Option<&str>,
    uplink: Option<&str>,
    vtep: Option<Ipv4Addr>,
) -> Overlay {
    let own = vtep.or_else(|| me.and_then(|m| view.nodes.get(m)).and_then(|f| f.vtep));
    Overlay {
        uplink: uplink.map(|i| OverlayUplink {
            interface: i.to_string(),
            address: own.map(|a| a.to_string()),
        }),
        vteps: view
            .nodes
            .iter()
            .filter(|(name, _)| Some(name.as_str()) != me)
            .filter_map(|(name, f)| {
                Some(OverlayVtep {
                    name: name.clone(),
                    address: f.vtep?.to_string(),
                })
            })
            .collect(),
    }
}

/// What the node watch needs.
pub struct NodeWatch {
    /// The API server.
    pub client: Client,
    /// The daemon's socket.
    pub api: PathBuf,
    /// This node.
    pub node: Option<String>,
    /// `--uplink`.
    pub uplink: Option<String>,
    /// `--vtep`: published on this node's Node.
    pub vtep: Option<Ipv4Addr>,
    /// Where the Network reconciler reads the nodes.
    pub view: SharedView,
    /// Called when this node's own facts change (its Networks are reconciled again).
    pub on_own_change: Box<dyn Fn() + Send + Sync>,
}

/// Watches Nodes until the stream ends; see the module's documentation.
pub async fn watch_nodes(w: NodeWatch) {
    let nodes: Api<Node> = Api::all(w.client.clone());
    let stream = watcher(nodes.clone(), watcher::Config::default()).default_backoff();
    futures::pin_mut!(stream);
    let mut listing: Option<BTreeMap<String, NodeFacts>> = None;
    let mut sent: Option<Overlay> = None;
    let mut retry = tokio::time::interval(RETRY);
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let ev = tokio::select! {
            ev = stream.next() => match ev {
                Some(ev) => Some(ev),
                None => return,
            },
            _ = retry.tick() => {
                // A daemon that lost what it was told (a fresh run directory) is told
                // again.
                if let Some(o) = &sent {
                    let r = daemon(w.api.clone(), "GET", "/v1/overlay".into(), None).await;
                    let now = match r {
                        Ok((200, body)) => serde_json::from_str::<Overlay>(&body).ok(),
                        _ => None,
                    };
                    if now.as_ref() != Some(o) {
                        sent = None;
                    }
                }
                None
            }
        };
        let mut gone = Vec::new();
        let mut listed = false;
        match ev {
            None => {}
            Some(Err(e)) => {
                tracing::warn!("node watch: {e}; retrying");
                continue;
            }
            Some(Ok(watcher::Event::Init)) => listing = Some(BTreeMap::new()),
            Some(Ok(watcher::Event::InitApply(n))) => {
                if Some(n.name_any()) == w.node {
                    publish_vtep(&nodes, &n, w.vtep).await;
                }
                listing
                    .get_or_insert_with(BTreeMap::new)
                    .insert(n.name_any(), facts_of(&n));
            }
            Some(Ok(watcher::Event::InitDone)) => {
                let new = listing.take().unwrap_or_default();
                let own_changed = update(&w, |v| {
                    let own = |v: &NodeView| w.node.as_ref().and_then(|m| v.nodes.get(m)).cloned();
                    let before = own(v);
                    v.nodes = new;
                    v.synced = true;
                    before != own(v)
                });
                if own_changed {
                    (w.on_own_change)();
                }
                listed = true;
            }
            Some(Ok(watcher::Event::Apply(n))) => {
                if Some(n.name_any()) == w.node {
                    publish_vtep(&nodes, &n, w.vtep).await;
                }
                let (name, facts) = (n.name_any(), facts_of(&n));
                let is_own = Some(&name) == w.node.as_ref();
                let changed = update(&w, |v| {
                    v.nodes.insert(name.clone(), facts.clone()) != Some(facts.clone())
                });
                if changed && is_own {
                    (w.on_own_change)();
                }
            }
            Some(Ok(watcher::Event::Delete(n))) => {
                let name = n.name_any();
                update(&w, |v| v.nodes.remove(&name).is_some());
                if Some(&name) == w.node.as_ref() {
                    tracing::warn!("node {name}: this node's Node object was deleted");
                    (w.on_own_change)();
                }
                gone.push(name);
            }
        }
        // The daemon's overlay, when it differs from what it last took.
        let overlay = {
            let v = w.view.lock().unwrap_or_else(|p| p.into_inner());
            v.synced
                .then(|| overlay_for(&v, w.node.as_deref(), w.uplink.as_deref(), w.vtep))
        };
        if let Some(o) = overlay.filter(|o| sent.as_ref() != Some(o)) {
            let body = serde_json::to_vec(&o).unwrap_or_default();
            match daemon(w.api.clone(), "PUT", "/v1/overlay".into(), Some(body)).await {
                Ok((200, _)) => {
                    tracing::info!(
                        "overlay: {} other node(s) told to the daemon: {}",
                        o.vteps.len(),
                        o.vteps
                            .iter()
                            .map(|v| format!("{} {}", v.name, v.address))
                            .collect::<Vec<_>>()
                            .join(", ")
                    );
                    sent = Some(o);
                }
                Ok((st, body)) => tracing::warn!(
                    "overlay: the daemon refused it ({st}): {}; retrying in {RETRY:?}",
                    reason_of(&body)
                ),
                Err(e) => tracing::warn!("overlay: {e}; retrying in {RETRY:?}"),
            }
        }
        if listed {
            // Nodes that left while no controller watched: confirmed gone, one by one.
            let known: Vec<String> = {
                let v = w.view.lock().unwrap_or_else(|p| p.into_inner());
                v.nodes.keys().cloned().collect()
            };
            match recorded_nodes(&w.client).await {
                Ok(recorded) => {
                    for n in recorded.into_iter().filter(|n| !known.contains(n)) {
                        if matches!(nodes.get_opt(&n).await, Ok(None)) {
                            gone.push(n);
                        }
                    }
                }
                Err(e) => tracing::warn!("networks: {e}"),
            }
        }
        for n in gone {
            if let Err(e) = reclaim(&w.client, &n).await {
                tracing::warn!("node {n} left: reclaiming its blocks: {e}");
            }
        }
    }
}

/// Applies `f` to the view; returns what it returns.
fn update<T>(w: &NodeWatch, f: impl FnOnce(&mut NodeView) -> T) -> T {
    let mut v = w.view.lock().unwrap_or_else(|p| p.into_inner());
    f(&mut v)
}

/// Publishes `vtep` in this node's [`VTEP_ANNOTATION`] when it says otherwise.
async fn publish_vtep(nodes: &Api<Node>, n: &Node, vtep: Option<Ipv4Addr>) {
    let Some(vtep) = vtep else {
        return;
    };
    let want = vtep.to_string();
    if n.annotations().get(VTEP_ANNOTATION) == Some(&want) {
        return;
    }
    let patch = serde_json::json!({ "metadata": { "annotations": { VTEP_ANNOTATION: want } } });
    match nodes
        .patch(
            &n.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        Ok(_) => tracing::info!("node {}: VTEP {want} published", n.name_any()),
        Err(e) => tracing::warn!("node {}: publishing VTEP {want}: {e}", n.name_any()),
    }
}

/// The nodes Networks record: in `status.blocks` or by their finalizer.
async fn recorded_nodes(client: &Client) -> Result<Vec<String>, Error> {
    let nets: Api<Network> = Api::all(client.clone());
    let prefix = format!("{}-", finalizer_of(None));
    let mut out = Vec::new();
    for n in nets.list(&Default::default()).await? {
        if let Some(st) = &n.status {
            out.extend(st.blocks.keys().cloned());
        }
        out.extend(
            n.finalizers()
                .iter()
                .filter_map(|f| f.strip_prefix(&prefix).map(str::to_string)),
        );
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// Removes node `gone`'s blocks and finalizer from every Network, and a `Ready`
/// condition only it reported; each an update with the read `resourceVersion`, re-read
/// and retried on conflict.
pub async fn reclaim(client: &Client, gone: &str) -> Result<(), Error> {
    let nets: Api<Network> = Api::all(client.clone());
    let fin = finalizer_of(Some(gone));
    for n in nets.list(&Default::default()).await? {
        let name = n.name_any();
        let Some(n) = crate::update_status(&nets, &n, |st| {
            let mut changed = st.blocks.remove(gone).is_some();
            let by_gone = st
                .conditions
                .iter()
                .any(|c| c.type_ == "Ready" && crate::reporter(&c.message) == Some(gone));
            if by_gone {
                st.conditions.retain(|c| c.type_ != "Ready");
                changed = true;
            }
            changed
        })
        .await?
        else {
            continue;
        };
        // The finalizer, with the same concurrency (other nodes add and remove theirs).
        let mut cur = n;
        for _ in 0..crate::CONFLICT_RETRIES {
            if !cur.finalizers().contains(&fin) {
                break;
            }
            let mut obj = cur.clone();
            obj.finalizers_mut().retain(|f| f != &fin);
            match nets.replace(&name, &PostParams::default(), &obj).await {
                Ok(_) => {
                    tracing::info!("network {name}: finalizer of departed node {gone} removed");
                    break;
                }
                Err(kube::Error::Api(s)) if s.is_conflict() => match nets.get_opt(&name).await? {
                    Some(n) => cur = n,
                    None => break,
                },
                Err(kube::Error::Api(s)) if s.is_not_found() => break,
                Err(e) => return Err(e.into()),
            }
        }
    }
    tracing::info!("node {gone} left: its blocks and finalizers reclaimed");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeAddress, NodeSpec, NodeStatus};

    fn node(name: &str, annotation: Option<&str>, addrs: &[(&str, &str)], cidrs: &[&str]) -> Node {
        let mut n = Node::default();
        n.metadata.name = Some(name.into());
        if let Some(a) = annotation {
            n.annotations_mut().insert(VTEP_ANNOTATION.into(), a.into());
        }
        n.status = Some(NodeStatus {
            addresses: Some(
                addrs
                    .iter()
                    .map(|(t, a)| NodeAddress {
                        type_: t.to_string(),
                        address: a.to_string(),
                    })
                    .collect(),
            ),
            ..Default::default()
        });
        n.spec = Some(NodeSpec {
            pod_cidr: cidrs.first().map(|c| c.to_string()),
            pod_cidrs: Some(cidrs.iter().map(|c| c.to_string()).collect()),
            ..Default::default()
        });
        n
    }

    #[test]
    fn a_vtep_is_the_annotation_else_the_first_ipv4_internal_ip() {
        let addrs = [
            ("Hostname", "a"),
            ("ExternalIP", "203.0.113.1"),
            ("InternalIP", "fd00::1"),
            ("InternalIP", "10.0.0.1"),
            ("InternalIP", "10.0.0.9"),
        ];
        assert_eq!(
            vtep_of(&node("a", None, &addrs, &[])),
            Some("10.0.0.1".parse().unwrap())
        );
        assert_eq!(
            vtep_of(&node("a", Some("192.168.7.1"), &addrs, &[])),
            Some("192.168.7.1".parse().unwrap())
        );
        assert_eq!(vtep_of(&node("a", Some("banana"), &addrs, &[])), None);
        assert_eq!(vtep_of(&node("a", None, &[("Hostname", "a")], &[])), None);
        // Dual-stack: the IPv4 pod CIDR, wherever it is listed.
        let n = node("a", None, &addrs, &["fd00:1::/64", "10.244.1.0/24"]);
        assert_eq!(pod_cidr_of(&n).as_deref(), Some("10.244.1.0/24"));
        assert_eq!(pod_cidr_of(&node("a", None, &addrs, &[])), None);
    }

    #[test]
    fn the_overlay_lists_the_other_nodes_and_this_ones_uplink() {
        let mut v = NodeView::default();
        for (n, a) in [
            ("b", Some("10.0.0.2")),
            ("a", Some("10.0.0.1")),
            ("c", None),
        ] {
            v.nodes.insert(
                n.into(),
                NodeFacts {
                    vtep: a.map(|a| a.parse().unwrap()),
                    pod_cidr: None,
                },
            );
        }
        let o = overlay_for(&v, Some("a"), Some("eth1"), None);
        assert_eq!(
            o.uplink,
            Some(OverlayUplink {
                interface: "eth1".into(),
                address: Some("10.0.0.1".into())
            })
        );
        assert_eq!(
            o.vteps,
            [OverlayVtep {
                name: "b".into(),
                address: "10.0.0.2".into()
            }]
        );
        let o = overlay_for(&v, Some("b"), None, None);
        assert_eq!(o.uplink, None);
        assert_eq!(o.vteps[0].name, "a");
        // --vtep: the uplink's address before the Node's annotation says so.
        let o = overlay_for(
            &v,
            Some("a"),
            Some("eth1"),
            Some("10.1.1.1".parse().unwrap()),
        );
        assert_eq!(o.uplink.unwrap().address.as_deref(), Some("10.1.1.1"));
        // A node that does not know itself (no --node) lists everyone.
        assert_eq!(overlay_for(&v, None, None, None).vteps.len(), 2);
    }
}
