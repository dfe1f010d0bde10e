//! `vnfhost-k8s controller [--api SOCK] [--node NAME] [--uplink IFNAME] [--vtep ADDR]
//! [--default-network NAME]`: the `Network` controller of one node, its node watch, and
//! its Service watch.
//! It talks to the API server from `KUBECONFIG` (or the in-cluster service account) and
//! to the node's daemon on its socket (default `/run/vnfhost/api.sock`).

use std::sync::{Arc, Mutex};

use futures::StreamExt;
use kube::runtime::{watcher, Controller};
use kube::{Api, Client};
use vnfhost_k8s::nodes::{watch_nodes, NodeView, NodeWatch};
use vnfhost_k8s::services::{watch_services, ServiceWatch};
use vnfhost_k8s::{error_policy, reconcile, Ctx, Network};

const USAGE: &str = "\
usage: vnfhost-k8s controller [options]

Runs the Network controller of one node: Network custom resources into the node's
daemon, the extra networks of its pods, and Services (their cluster IPs, with their
ready endpoints as backends) into the daemon's services. It talks to the API server
from KUBECONFIG (or the in-cluster service account).

options:
  --api SOCK               the daemon's socket (default /run/vnfhost/api.sock, or
                           VNFHOST_API)
  --node NAME              this node (default $NODE_NAME): a finalizer of its own, only
                           its pods' extra networks, and the cluster's nodes: the other
                           nodes' VTEPs to the daemon, this node's share of addresses
  --uplink IFNAME          this node's uplink to the other nodes, told to the daemon
                           with this node's VTEP as its address (default: the daemon's
                           topology says, or there is none)
  --vtep ADDRESS           publish ADDRESS as this node's VTEP (annotation
                           vnfhost.io/vtep on its Node; default: others use its first
                           InternalIP)
  --default-network NAME   the network whose addresses on this node are its Node's
                           spec.podCIDR, and the network of Services without a
                           vnfhost.io/network annotation (default \"default\")
  -h, --help               this text
";

fn main() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("VNFHOST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    let mut api = api::daemon::default_api_socket();
    let mut p = lexopt::Parser::from_env();
    let mut cmd = None;
    let mut node = std::env::var("NODE_NAME").ok().filter(|n| !n.is_empty());
    let mut uplink = None;
    let mut vtep: Option<std::net::Ipv4Addr> = None;
    let mut default_network = "default".to_string();
    loop {
        match p.next() {
            Ok(None) => break,
            Ok(Some(lexopt::Arg::Long("api"))) => match p.value() {
                Ok(v) => api = v.into(),
                Err(e) => fail(&e.to_string()),
            },
            Ok(Some(lexopt::Arg::Long("node"))) => match p.value() {
                Ok(v) => node = v.into_string().ok(),
                Err(e) => fail(&e.to_string()),
            },
            Ok(Some(lexopt::Arg::Long("uplink"))) => match p.value() {
                Ok(v) => uplink = v.into_string().ok(),
                Err(e) => fail(&e.to_string()),
            },
            Ok(Some(lexopt::Arg::Long("vtep"))) => match p.value().map(|v| v.into_string()) {
                Ok(Ok(v)) => match v.parse() {
                    Ok(a) => vtep = Some(a),
                    Err(_) => fail(&format!("--vtep {v:?}: not an IPv4 address")),
                },
                Ok(Err(v)) => fail(&format!("--vtep {v:?}: not an IPv4 address")),
                Err(e) => fail(&e.to_string()),
            },
            Ok(Some(lexopt::Arg::Long("default-network"))) => match p.value() {
                Ok(v) => default_network = v.to_string_lossy().into_owned(),
                Err(e) => fail(&e.to_string()),
            },
            Ok(Some(lexopt::Arg::Long("help") | lexopt::Arg::Short('h'))) => {
                print!("{USAGE}");
                return;
            }
            Ok(Some(lexopt::Arg::Value(v))) if cmd.is_none() => {
                cmd = v.into_string().ok();
                if cmd.as_deref() == Some("help") {
                    print!("{USAGE}");
                    return;
                }
            }
            Ok(Some(other)) => fail(&other.unexpected().to_string()),
            Err(e) => fail(&e.to_string()),
        }
    }
    if cmd.as_deref() != Some("controller") {
        fail("give a command");
    }
    if node.is_none() && (uplink.is_some() || vtep.is_some()) {
        fail("--uplink and --vtep need the node's name (--node or NODE_NAME)");
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => fail(&format!("tokio: {e}")),
    };
    rt.block_on(async move {
        let client = match Client::try_default().await {
            Ok(c) => c,
            Err(e) => fail(&format!("kubernetes client (KUBECONFIG?): {e}")),
        };
        tracing::info!("controller: Networks into the daemon at {}", api.display());
        let view = Arc::new(Mutex::new(NodeView::default()));
        // This node's facts changing (its pod CIDR, its Node deleted) reconciles every
        // Network again.
        let (again, again_rx) = futures::channel::mpsc::unbounded::<()>();
        let controller = Controller::new(
            Api::<Network>::all(client.clone()),
            watcher::Config::default(),
        );
        let ctx = Arc::new(Ctx {
            client: client.clone(),
            api: api.clone(),
            finalizer: vnfhost_k8s::finalizer_of(node.as_deref()),
            node: node.clone(),
            default_network: default_network.clone(),
            nodes: view.clone(),
            networks: controller.store(),
        });
        let node_watch = match &node {
            Some(n) => {
                tracing::info!(
                    "controller: node {n}, uplink {}, VTEP {}",
                    uplink.as_deref().unwrap_or("(the topology's)"),
                    vtep.map(|a| a.to_string())
                        .unwrap_or_else(|| "its InternalIP".into())
                );
                futures::future::Either::Left(watch_nodes(NodeWatch {
                    client: client.clone(),
                    api: api.clone(),
                    node: node.clone(),
                    uplink,
                    vtep,
                    view,
                    on_own_change: Box::new(move || {
                        let _ = again.unbounded_send(());
                    }),
                }))
            }
            None => futures::future::Either::Right(futures::future::pending::<()>()),
        };
        let services = watch_services(ServiceWatch {
            client: client.clone(),
            api: api.clone(),
            default_network,
        });
        let pods = vnfhost_k8s::watch_pods(client.clone(), api, node);
        let networks = controller
            .reconcile_all_on(again_rx)
            .shutdown_on_signal()
            .run(reconcile, error_policy, ctx)
            .for_each(|r| async move {
                match r {
                    Ok((obj, _)) => tracing::debug!("reconciled network {}", obj.name),
                    Err(e) => tracing::warn!("controller: {e}"),
                }
            });
        // The Network controller ends on SIGTERM; the other watches with it.
        tokio::select! {
            _ = networks => {}
            _ = pods => {}
            _ = node_watch => {}
            _ = services => {}
        }
    });
}

fn fail(msg: &str) -> ! {
    eprintln!("vnfhost-k8s: {msg}\n{USAGE}");
    std::process::exit(2)
}
