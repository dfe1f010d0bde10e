//! Services and EndpointSlices against a real API server (etcd and kube-apiserver, as
//! in `apiserver.rs`), each node's controller telling its daemon
//! (`/v1/services/NAMESPACE.NAME`):
//!
//! - a Service with an EndpointSlice of 2 ready endpoints and 1 not ready reaches the
//!   daemon with the 2 ready ones as backends, its named target port resolved from the
//!   slice, its UDP port and its ClientIP affinity; the slice scaled to 3 ready gives 3;
//!   the Service deleted is removed from the daemon;
//! - a Service on a network the node does not have is refused, logged, and retried
//!   without the controller failing; a headless one is not sent;
//! - at start, a service of this controller's (`NAMESPACE.NAME`) whose Service does not
//!   exist is removed from the daemon, and the topology's (no dot) are left alone;
//! - a daemon that answers 503 for a while gets the latest state once it is back.
//!
//! Two daemons, each with its own controller, and every assertion made of both: the
//! real one (`vnfhost daemon` with a topology whose network `default`, 10.1.0.0/24, has
//! a router), and a stand-in that follows the routes' documented contract and can be
//! made to fail, for the outage case, which the real daemon cannot be asked to stage.

mod common;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use api::daemon::Service;
use api::http::{error_body, Request, Response};
use serde_json::{json, Value};

use common::{daemon_get, fresh_dir, ok, run, unavailable, wait, Cluster, Down, Proc};

/// The stand-in's one network: `default`, whose tenant has a router.
const NETWORK: &str = "10.1.0.0/24";

/// A daemon's service routes as documented (`PUT`, `DELETE`, `GET /v1/services`), on a
/// socket of their own: a `PUT` is checked (the path's name, the network, the VIP
/// outside the tenant's networks, backends on them, ports) and refused with a 422
/// `{error, problems}`; a `DELETE` of an absent service is a 404. While `down`, every
/// request is answered 503.
struct StandIn {
    api: PathBuf,
    services: Arc<Mutex<BTreeMap<String, Service>>>,
    calls: Arc<Mutex<Vec<String>>>,
    down: Arc<AtomicBool>,
}

impl StandIn {
    fn start(api: PathBuf, services: Vec<Service>) -> StandIn {
        let listener = UnixListener::bind(&api).unwrap();
        let s = StandIn {
            api,
            services: Arc::new(Mutex::new(
                services.into_iter().map(|s| (s.name.clone(), s)).collect(),
            )),
            calls: Arc::default(),
            down: Arc::default(),
        };
        let (services, calls, down) = (s.services.clone(), s.calls.clone(), s.down.clone());
        // Ends with the test's process.
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                api::http::serve_one(conn, Duration::from_secs(5), |req| {
                    handle(&services, &calls, &down, req)
                });
            }
        });
        s
    }

    fn get(&self, name: &str) -> Option<Service> {
        self.services.lock().unwrap().get(name).cloned()
    }

    fn names(&self) -> Vec<String> {
        self.services.lock().unwrap().keys().cloned().collect()
    }

    fn puts(&self, name: &str) -> usize {
        let c = format!("PUT /v1/services/{name}");
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|x| **x == c)
            .count()
    }
}

fn handle(
    services: &Mutex<BTreeMap<String, Service>>,
    calls: &Mutex<Vec<String>>,
    down: &AtomicBool,
    req: Request,
) -> Response {
    calls
        .lock()
        .unwrap()
        .push(format!("{} {}", req.method, req.path));
    if down.load(Ordering::SeqCst) {
        return Response::json(503, error_body("the stand-in is down"));
    }
    let mut services = services.lock().unwrap();
    let name = req.path.strip_prefix("/v1/services/");
    match (req.method.as_str(), req.path.as_str(), name) {
        ("GET", "/v1/services", _) => api::http::json(&services.values().collect::<Vec<_>>()),
        ("PUT", _, Some(name)) => {
            let s: Service = match serde_json::from_slice(&req.body) {
                Ok(s) => s,
                Err(e) => return Response::json(400, error_body(&e.to_string())),
            };
            let net: api::values::Prefix = NETWORK.parse().unwrap();
            let mut problems = Vec::new();
            if s.name != name {
                problems.push(format!("name: {:?} is not the path's {name:?}", s.name));
            }
            if s.network != "default" {
                problems.push(format!("network: no network {:?} on this node", s.network));
            }
            if net.contains(s.vip.into()) {
                problems.push(format!("vip: {} is inside network default", s.vip));
            }
            for (i, b) in s.backends.iter().enumerate() {
                let on = b.parse::<Ipv4Addr>().is_ok_and(|a| net.contains(a.into()));
                if !on {
                    problems.push(format!("backends[{i}]: {b} is on none of the networks"));
                }
            }
            for (i, p) in s.ports.iter().enumerate() {
                if p.port == 0 || p.target_port == Some(0) {
                    problems.push(format!("ports[{i}]: not a port"));
                }
            }
            if !problems.is_empty() {
                let body = json!({
                    "error": format!("{} problem(s); nothing was changed", problems.len()),
                    "problems": problems,
                });
                return Response::json(422, body.to_string().into_bytes());
            }
            services.insert(s.name.clone(), s);
            api::http::json(&json!({"generation": 1, "changes": []}))
        }
        ("DELETE", _, Some(name)) => match services.remove(name) {
            Some(_) => api::http::json(&json!({"generation": 1, "changes": []})),
            None => Response::json(404, error_body(&format!("no service {name:?}"))),
        },
        _ => Response::json(
            404,
            error_body(&format!("no such endpoint {} (stand-in)", req.path)),
        ),
    }
}

/// A service as a daemon answers it (its fields, read loosely).
fn service_on(api: &Path, name: &str) -> Option<Value> {
    daemon_get(api, "/v1/services")
        .as_array()?
        .iter()
        .find(|s| s["name"] == name)
        .cloned()
}

fn backends(s: &Value) -> Vec<String> {
    let mut b: Vec<String> = s["backends"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|x| x.as_str().map(str::to_string))
        .collect();
    b.sort();
    b
}

/// Ports as `PROTOCOL PORT->TARGET` (the target spelt out), sorted.
fn ports(s: &Value) -> Vec<String> {
    let mut p: Vec<String> = s["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            let port = p["port"].as_u64().unwrap_or(0);
            let target = p["target_port"].as_u64().unwrap_or(port);
            format!("{} {port}->{target}", p["protocol"].as_str().unwrap_or("?"))
        })
        .collect();
    p.sort();
    p
}

fn a_service(name: &str, vip: &str) -> Service {
    serde_json::from_value(json!({
        "name": name, "network": "default", "vip": vip,
        "ports": [{"protocol": "tcp", "port": 80}], "backends": ["10.1.0.50"],
    }))
    .unwrap()
}

/// Slice `web-1` of Service `web` (`version`: `v1`, or `v1beta1` on an API server
/// before Kubernetes 1.21) with these endpoints (address, ready).
fn slice_yaml(version: &str, ready: &[(&str, bool)]) -> String {
    let mut y = format!(
        "apiVersion: discovery.k8s.io/{version}\nkind: EndpointSlice\nmetadata:\n  name: web-1\n  \
         namespace: default\n  labels: {{kubernetes.io/service-name: web}}\naddressType: IPv4\n\
         ports:\n- {{name: http, port: 8080, protocol: TCP}}\n\
         - {{name: dns, port: 5353, protocol: UDP}}\nendpoints:\n",
    );
    for (a, r) in ready {
        y.push_str(&format!(
            "- {{addresses: [{a}], conditions: {{ready: {r}}}}}\n"
        ));
    }
    y
}

const SERVICES: &str = "\
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  clusterIP: 10.96.0.10
  sessionAffinity: ClientIP
  sessionAffinityConfig: {clientIP: {timeoutSeconds: 600}}
  ports:
  - {name: http, port: 80, targetPort: http, protocol: TCP}
  - {name: dns, port: 53, targetPort: 5353, protocol: UDP}
---
apiVersion: v1
kind: Service
metadata:
  name: elsewhere
  namespace: default
  annotations: {vnfhost.io/network: nowhere}
spec:
  clusterIP: 10.96.0.20
  ports: [{port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: headless, namespace: default}
spec:
  clusterIP: None
  ports: [{port: 80}]
";

#[test]
fn services_and_their_ready_endpoints_reach_the_daemon() {
    if let Some(why) = unavailable() {
        println!("SKIPPED: {why}");
        return;
    }
    let d = fresh_dir("services");
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let cluster = Cluster::start(&d);
    let kubectl = |args: &[&str]| cluster.kubectl_ok(args);
    for f in ["00-crd-network.yaml", "01-rbac.yaml"] {
        kubectl(&["apply", "-f", repo.join("deploy").join(f).to_str().unwrap()]);
    }
    // EndpointSlices are v1 from Kubernetes 1.21; the test's API server may be older.
    let versions = kubectl(&["api-versions"]);
    let slices = if versions.lines().any(|l| l == "discovery.k8s.io/v1") {
        "v1"
    } else {
        "v1beta1"
    };
    let apply = |name: &str, yaml: &str| {
        let f = d.join(format!("{name}.yaml"));
        std::fs::write(&f, yaml).unwrap();
        kubectl(&["apply", "-f", f.to_str().unwrap()]);
    };

    // The real daemon: the network `default` of tenant t, with a router.
    let bin = Path::new(env!("CARGO_BIN_EXE_vnfhost-k8s"))
        .parent()
        .unwrap();
    let vnfhost = bin.join("vnfhost");
    assert!(
        vnfhost.exists(),
        "build the workspace first (cargo test --workspace does)"
    );
    let run_dir = d.join("run");
    let real_api = run_dir.join("api.sock");
    let _daemon = Proc::spawn(
        Command::new(&vnfhost).args(["daemon", "--run-dir", run_dir.to_str().unwrap()]),
        &d.join("daemon.log"),
    );
    let _down = Down(vnfhost.clone(), real_api.clone());
    wait(
        "daemon socket",
        Duration::from_secs(10),
        || real_api.exists(),
        String::new,
    );
    std::fs::write(
        d.join("node.yaml"),
        format!(
            "switch: {{ cores: [1] }}\nnetworks:\n  - {{name: default, tenant: t, cidrs: \
             [{NETWORK}], vlan: 10, gateway: [10.1.0.254]}}\nrouters:\n  - {{name: r, \
             tenant: t, networks: [default]}}\n"
        ),
    )
    .unwrap();
    ok(&run(Command::new(&vnfhost).args([
        "up",
        d.join("node.yaml").to_str().unwrap(),
        "--api",
        real_api.to_str().unwrap(),
    ])));
    let (st, body) = api::http::call(
        &real_api,
        "GET",
        "/v1/services",
        None,
        Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!(
        st,
        200,
        "the daemon serves /v1/services: {}",
        String::from_utf8_lossy(&body)
    );
    {
        // A service of this controller's from before, whose Service is gone.
        let old = serde_json::to_vec(&a_service("old.gone", "10.96.0.99")).unwrap();
        let (st, body) = api::http::call(
            &real_api,
            "PUT",
            "/v1/services/old.gone",
            Some(&old),
            Duration::from_secs(10),
        )
        .unwrap();
        assert!(
            (200..300).contains(&st),
            "{st} {}",
            String::from_utf8_lossy(&body)
        );
    }

    // The stand-in, with a stale service of the controller's and one of the topology's.
    let fake = StandIn::start(
        d.join("standin.sock"),
        vec![
            a_service("old.gone", "10.96.0.99"),
            a_service("dns", "10.96.0.98"),
        ],
    );

    let controller = |api: &Path, log: &str| {
        Proc::spawn(
            Command::new(env!("CARGO_BIN_EXE_vnfhost-k8s"))
                .env("KUBECONFIG", &cluster.kubeconfig)
                .args(["controller", "--api", api.to_str().unwrap()]),
            &d.join(log),
        )
    };
    let mut fake_ctl = controller(&fake.api, "standin-controller.log");
    let mut real_ctl = Some(controller(&real_api, "controller.log"));
    let read = |f: &str| std::fs::read_to_string(d.join(f)).unwrap_or_default();
    let logs = || {
        format!(
            "--- stand-in's controller\n{}\n--- real daemon's controller\n{}",
            read("standin-controller.log"),
            read("controller.log")
        )
    };
    // Both daemons: the stand-in's socket and the real one's.
    let apis: Vec<&Path> = std::iter::once(fake.api.as_path())
        .chain(Some(real_api.as_path()))
        .collect();
    let web_on = |api: &Path| service_on(api, "default.web");
    let backends_everywhere = |want: &[&str]| {
        apis.iter()
            .all(|a| web_on(a).is_some_and(|s| backends(&s) == want))
    };

    // At start: the stale one goes, the topology's stays.
    wait(
        "old.gone removed at start",
        Duration::from_secs(60),
        || apis.iter().all(|a| service_on(a, "old.gone").is_none()),
        logs,
    );
    assert!(fake.get("dns").is_some(), "{:?}", fake.names());

    // A Service with 2 ready endpoints and 1 not ready: the 2 ready ones.
    apply("services", SERVICES);
    apply(
        "slice",
        &slice_yaml(
            slices,
            &[("10.1.0.1", true), ("10.1.0.2", true), ("10.1.0.3", false)],
        ),
    );
    wait(
        "default.web with its 2 ready backends",
        Duration::from_secs(60),
        || backends_everywhere(&["10.1.0.1", "10.1.0.2"]),
        logs,
    );
    for a in &apis {
        let s = web_on(a).unwrap();
        assert_eq!(s["vip"], "10.96.0.10", "{s}");
        assert_eq!(s["network"], "default", "{s}");
        assert_eq!(ports(&s), ["tcp 80->8080", "udp 53->5353"], "{s}");
        assert_eq!(s["affinity"], "client_ip", "{s}");
        assert_eq!(s["affinity_timeout_s"], 600, "{s}");
    }
    // On the node: the switch balances the VIP over the 2 backends (its status).
    let switch_backends = |want: usize| {
        let want_text = format!("service default.web:80/tcp 10.96.0.10:80/tcp: {want} backend(s)");
        let last = std::cell::RefCell::new(String::new());
        wait(
            &format!("the switch's VIP with {want} backends"),
            Duration::from_secs(30),
            || {
                let o = run(Command::new(&vnfhost).args([
                    "status",
                    "--api",
                    real_api.to_str().unwrap(),
                ]));
                *last.borrow_mut() = String::from_utf8_lossy(&o.stdout).into_owned();
                last.borrow().contains(&want_text)
            },
            || last.borrow().clone(),
        );
    };
    switch_backends(2);
    // The Service on a network the node lacks is refused with the daemon's reason and
    // retried; the headless one is never sent.
    wait(
        "the refusal logged",
        Duration::from_secs(30),
        || {
            read("standin-controller.log").contains(
                "service default/elsewhere: the node refused sending it: 1 problem(s); \
                 nothing was changed; network: no network \"nowhere\" on this node",
            ) && read("controller.log")
                .contains("service default/elsewhere: the node refused sending it")
        },
        logs,
    );
    for a in &apis {
        assert!(service_on(a, "default.elsewhere").is_none());
        assert!(service_on(a, "default.headless").is_none());
    }
    assert_eq!(
        fake.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.contains("headless"))
            .count(),
        0
    );

    // Scaled to 3 ready: 3 backends; after that, nothing more is sent.
    apply(
        "slice",
        &slice_yaml(
            slices,
            &[("10.1.0.1", true), ("10.1.0.2", true), ("10.1.0.3", true)],
        ),
    );
    wait(
        "default.web with 3 backends",
        Duration::from_secs(60),
        || backends_everywhere(&["10.1.0.1", "10.1.0.2", "10.1.0.3"]),
        logs,
    );
    switch_backends(3);
    let puts = fake.puts("default.web");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        fake.puts("default.web"),
        puts,
        "{:?}",
        fake.calls.lock().unwrap()
    );

    // The stand-in fails for a while: the controller retries, and the daemon gets the
    // state of when it is back.
    fake.down.store(true, Ordering::SeqCst);
    apply(
        "slice",
        &slice_yaml(
            slices,
            &[("10.1.0.1", false), ("10.1.0.2", true), ("10.1.0.3", false)],
        ),
    );
    wait(
        "the controller retrying",
        Duration::from_secs(30),
        || {
            read("standin-controller.log")
                .contains("service default/web: sending it: the daemon answered 503")
        },
        logs,
    );
    fake.down.store(false, Ordering::SeqCst);
    wait(
        "default.web with 1 backend once the daemon is back",
        Duration::from_secs(60),
        || backends_everywhere(&["10.1.0.2"]),
        logs,
    );
    assert!(fake_ctl.alive(), "{}", logs());

    // The Service deleted: gone from the daemon.
    kubectl(&["delete", "service", "web"]);
    wait(
        "default.web removed",
        Duration::from_secs(60),
        || apis.iter().all(|a| web_on(a).is_none()),
        logs,
    );
    // Left: the topology's, and the API server's own Service (a ClusterIP Service like
    // any other; without slices here, so without backends, which the stand-in takes).
    assert_eq!(fake.names(), ["default.kubernetes", "dns"]);
    assert!(fake_ctl.alive(), "{}", logs());
    fake_ctl.stop();
    if let Some(c) = real_ctl.as_mut() {
        assert!(c.alive(), "{}", logs());
        c.stop();
    }
    drop(_down);
    drop(_daemon);
    if std::env::var_os("VNFHOST_KEEP").is_none() {
        let _ = std::fs::remove_dir_all(&d);
    }
}
