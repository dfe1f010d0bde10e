//! `vnfhost-k8s controller [--api SOCK]`: the `Network` controller of one node. It talks
//! to the API server from `KUBECONFIG` (or the in-cluster service account) and to the
//! node's daemon on its socket (default `/run/vnfhost/api.sock`).

use std::sync::Arc;

use futures::StreamExt;
use kube::runtime::{watcher, Controller};
use kube::{Api, Client};
use vnfhost_k8s::{error_policy, reconcile, Ctx, Network};

const USAGE: &str = "\
usage: vnfhost-k8s controller [options]

Runs the Network controller of one node: Network custom resources into the node's
daemon, and the extra networks of its pods. It talks to the API server from KUBECONFIG
(or the in-cluster service account).

options:
  --api SOCK    the daemon's socket (default /run/vnfhost/api.sock, or VNFHOST_API)
  --node NAME   this node (default $NODE_NAME): a finalizer of its own, and only its
                pods' extra networks are recorded
  -h, --help    this text
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
    let mut node = std::env::var("NODE_NAME").ok();
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
        let ctx = Arc::new(Ctx {
            client: client.clone(),
            api: api.clone(),
            finalizer: vnfhost_k8s::finalizer_of(node.as_deref()),
        });
        let pods = vnfhost_k8s::watch_pods(client.clone(), api, node);
        let networks = Controller::new(Api::<Network>::all(client), watcher::Config::default())
            .shutdown_on_signal()
            .run(reconcile, error_policy, ctx)
            .for_each(|r| async move {
                match r {
                    Ok((obj, _)) => tracing::debug!("reconciled network {}", obj.name),
                    Err(e) => tracing::warn!("controller: {e}"),
                }
            });
        // The Network controller ends on SIGTERM; the pod watch with it.
        tokio::select! {
            _ = networks => {}
            _ = pods => {}
        }
    });
}

fn fail(msg: &str) -> ! {
    eprintln!("vnfhost-k8s: {msg}\n{USAGE}");
    std::process::exit(2)
}
