//! Two nodes of one cluster against a real API server (etcd and kube-apiserver, as in
//! `apiserver.rs`): each node a network namespace with its own daemon and switch, an
//! underlay of veths through a bridge, and its own controller (`--node`, `--uplink`).
//! Node objects are made through the API (there is no kubelet).
//!
//! - The default network takes each node's `spec.podCIDR`; a podCIDR outside its prefix
//!   is refused on the Network's condition with the field named, and that node's daemon
//!   does not get the network.
//! - A tenant network with a `vni` gives each node its own block, recorded in
//!   `status.blocks`; each daemon's pool is its node's block.
//! - Each daemon's overlay lists the other node's VTEP (node-a's published with
//!   `--vtep` in its Node's annotation, node-b's InternalIP) and its own uplink at its
//!   own; a bad overlay (no such interface, an address not on it, this
//!   node's own VTEP) is refused with the field named and changes nothing; one the
//!   daemon lost is told again.
//! - Pods (CNI ADD with `vnfhost-cni`) get addresses from their node's share and reach
//!   the other node's pods over VXLAN.
//! - A Node deleted: its VTEP, tunnels, blocks and finalizer are reclaimed by the other
//!   node, and a controller whose Node is gone does not take them back.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use common::{daemon_get, fresh_dir, ok, run, unavailable, wait, Cluster, Down, Proc};

/// A network namespace made for the test (removed on drop).
struct Netns(String);

impl Netns {
    fn new(name: String) -> Netns {
        let _ = run(Command::new("ip").args(["netns", "del", &name]));
        ok(&run(Command::new("ip").args(["netns", "add", &name])));
        Netns(name)
    }

    fn path(&self) -> String {
        format!("/var/run/netns/{}", self.0)
    }

    fn ping(&self, ip: &str) -> bool {
        run(Command::new("ip").args([
            "netns", "exec", &self.0, "busybox", "ping", "-c", "1", "-W", "1", ip,
        ]))
        .status
        .success()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = run(Command::new("ip").args(["netns", "del", &self.0]));
    }
}

fn ip(args: &[&str]) {
    ok(&run(Command::new("ip").args(args)));
}

/// One node: its namespace (underlay address on `ul0`), daemon and controller.
struct Node {
    api: PathBuf,
    run: PathBuf,
    controller: Proc,
    _down: Down,
    _daemon: Proc,
    _ns: Netns,
}

impl Node {
    fn get(&self, path: &str) -> Value {
        daemon_get(&self.api, path)
    }

    /// The daemon's network `name`, if it has it.
    fn network(&self, name: &str) -> Option<Value> {
        self.get("/v1/networks")
            .as_array()?
            .iter()
            .find(|n| n["name"] == name)
            .cloned()
    }

    fn pool(&self, name: &str) -> Option<String> {
        self.network(name)?["pool"].as_str().map(str::to_string)
    }

    /// The names of the switch's VXLAN tunnel ports.
    fn tunnels(&self) -> Vec<String> {
        let sock = self.run.join("switch.sock");
        let Ok((200, body)) =
            api::http::call(&sock, "GET", "/v1/config", None, Duration::from_secs(5))
        else {
            return vec![];
        };
        let cfg: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        cfg["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["driver"].get("vxlan").is_some())
            .filter_map(|p| p["name"].as_str().map(str::to_string))
            .collect()
    }

    fn log_file(&self) -> PathBuf {
        self.run.with_extension("controller.log")
    }

    /// CNI ADD of pod `pod` in `netns` on `network`: its address (without the length).
    fn add(&self, pod: &str, netns: &Netns, network: &str) -> String {
        let cni = Path::new(env!("CARGO_BIN_EXE_vnfhost-k8s"))
            .parent()
            .unwrap()
            .join("vnfhost-cni");
        let mut c = Command::new(cni)
            .env_clear()
            .env("CNI_COMMAND", "ADD")
            .env("CNI_CONTAINERID", pod)
            .env("CNI_NETNS", netns.path())
            .env("CNI_IFNAME", "eth0")
            .env(
                "CNI_ARGS",
                format!("K8S_POD_NAMESPACE=default;K8S_POD_NAME={pod}"),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let conf = json!({
            "cniVersion": "1.0.0", "name": "vnfhost", "type": "vnfhost-cni",
            "network": network, "api": self.api,
        });
        c.stdin
            .take()
            .unwrap()
            .write_all(conf.to_string().as_bytes())
            .unwrap();
        let out = ok(&c.wait_with_output().unwrap());
        let v: Value = serde_json::from_str(out.trim()).unwrap_or(Value::Null);
        v["ips"][0]["address"]
            .as_str()
            .and_then(|a| a.split('/').next())
            .unwrap_or_else(|| panic!("{pod}: no address in {out}"))
            .to_string()
    }
}

fn node_yaml(name: &str, internal_ip: &str, pod_cidr: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Node\nmetadata: {{name: {name}}}\n\
         spec: {{podCIDR: {pod_cidr}, podCIDRs: [{pod_cidr}]}}\n"
    ) + &format!(
        "status: {{addresses: [{{type: InternalIP, address: {internal_ip}}}, \
         {{type: Hostname, address: {name}}}]}}\n"
    )
}

/// Whether `a` (an IPv4 address) is inside `cidr`.
fn inside(a: &str, cidr: &str) -> bool {
    let p: api::values::Prefix = cidr.parse().unwrap();
    p.contains(a.parse().unwrap())
}

#[test]
fn nodes_give_each_daemon_its_overlay_and_its_share_of_addresses() {
    if let Some(why) = unavailable() {
        println!("SKIPPED: {why}");
        return;
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("SKIPPED: network namespaces need root");
        return;
    }
    let t0 = std::time::Instant::now();
    let pid = std::process::id();
    let d = fresh_dir("nodes");
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let cluster = Cluster::start(&d);
    let kubectl = |args: &[&str]| cluster.kubectl_ok(args);
    for f in ["00-crd-network.yaml", "01-rbac.yaml"] {
        kubectl(&["apply", "-f", repo.join("deploy").join(f).to_str().unwrap()]);
    }
    kubectl(&[
        "wait",
        "--for=condition=established",
        "--timeout=60s",
        "crd/networks.vnfhost.io",
    ]);
    let apply = |name: &str, yaml: &str| {
        let f = d.join(format!("{name}.yaml"));
        std::fs::write(&f, yaml).unwrap();
        kubectl(&["apply", "-f", f.to_str().unwrap()]);
    };
    let jsonpath = |what: &str, name: &str, path: &str| -> String {
        let o = cluster.kubectl(&["get", what, name, "-o", &format!("jsonpath={path}")]);
        String::from_utf8_lossy(&o.stdout).into_owned()
    };

    // The underlay: a bridge in a hub namespace, a veth `ul0` from each node into it.
    let hub = Netns::new(format!("vkh{pid}"));
    ip(&["-n", &hub.0, "link", "add", "br0", "type", "bridge"]);
    ip(&["-n", &hub.0, "link", "set", "br0", "up"]);

    let bin = Path::new(env!("CARGO_BIN_EXE_vnfhost-k8s"))
        .parent()
        .unwrap();
    let vnfhost = bin.join("vnfhost");
    assert!(
        vnfhost.exists(),
        "build the workspace first (cargo test --workspace does)"
    );
    let start_node = |name: &str, underlay: &str, vtep: Option<&str>, peer: &str| -> Node {
        let ns = Netns::new(format!("vk{}{pid}", &name[name.len() - 1..]));
        ip(&[
            "link", "add", "ul0", "netns", &ns.0, "type", "veth", "peer", "name", peer, "netns",
            &hub.0,
        ]);
        ip(&[
            "-n",
            &ns.0,
            "addr",
            "add",
            &format!("{underlay}/24"),
            "dev",
            "ul0",
        ]);
        if let Some(v) = vtep {
            ip(&["-n", &ns.0, "addr", "add", &format!("{v}/24"), "dev", "ul0"]);
        }
        ip(&["-n", &ns.0, "link", "set", "ul0", "up"]);
        ip(&["-n", &ns.0, "link", "set", "lo", "up"]);
        ip(&["-n", &hub.0, "link", "set", peer, "master", "br0", "up"]);
        let run_dir = d.join(name);
        let api = run_dir.join("api.sock");
        let daemon = Proc::spawn(
            Command::new("ip")
                .args(["netns", "exec", &ns.0])
                .arg(&vnfhost)
                .args(["daemon", "--run-dir", run_dir.to_str().unwrap()]),
            &d.join(format!("{name}.daemon.log")),
        );
        let down = Down(vnfhost.clone(), api.clone());
        wait(
            "daemon socket",
            Duration::from_secs(10),
            || api.exists(),
            String::new,
        );
        std::fs::write(d.join("node.yaml"), "switch: { cores: [1] }\n").unwrap();
        ok(&run(Command::new(&vnfhost).args([
            "up",
            d.join("node.yaml").to_str().unwrap(),
            "--api",
            api.to_str().unwrap(),
        ])));
        let controller = Proc::spawn(
            Command::new(env!("CARGO_BIN_EXE_vnfhost-k8s"))
                .env("KUBECONFIG", &cluster.kubeconfig)
                .env("NODE_NAME", name)
                .args([
                    "controller",
                    "--api",
                    api.to_str().unwrap(),
                    "--uplink",
                    "ul0",
                ])
                .args(vtep.iter().flat_map(|v| ["--vtep", v])),
            &run_dir.with_extension("controller.log"),
        );
        Node {
            api,
            run: run_dir,
            controller,
            _down: down,
            _daemon: daemon,
            _ns: ns,
        }
    };

    // node-b's podCIDR is outside the default network's prefix.
    apply("node-a", &node_yaml("node-a", "10.99.0.1", "10.244.0.0/24"));
    apply("node-b", &node_yaml("node-b", "10.99.0.2", "10.250.0.0/24"));
    assert_eq!(
        jsonpath("node", "node-b", "{.status.addresses[0].address}"),
        "10.99.0.2",
        "a Node's status is kept at create"
    );
    // node-a publishes a VTEP of its own (a second address on its uplink); node-b's is
    // its InternalIP.
    let a = start_node("node-a", "10.99.0.1", Some("10.99.0.11"), "pa");
    let mut b = start_node("node-b", "10.99.0.2", None, "pb");
    let (log_a, log_b) = (a.log_file(), b.log_file());
    let logs = || {
        let read = |f: &PathBuf| std::fs::read_to_string(f).unwrap_or_default();
        format!("--- node-a\n{}\n--- node-b\n{}", read(&log_a), read(&log_b))
    };
    apply(
        "networks",
        "apiVersion: vnfhost.io/v1alpha1\nkind: Network\nmetadata: {name: default}\n\
         spec: {tenant: blue, cidrs: [10.244.0.0/16], vni: 1000}\n---\n\
         apiVersion: vnfhost.io/v1alpha1\nkind: Network\nmetadata: {name: red-app}\n\
         spec: {tenant: red, cidrs: [10.30.0.0/24], vni: 2000}\n",
    );
    let t_nets = std::time::Instant::now();

    // The default network: node-a's pool is its podCIDR; node-b's is refused, named.
    wait(
        "node-a's default pool from its podCIDR",
        Duration::from_secs(60),
        || a.pool("default").as_deref() == Some("10.244.0.0/24"),
        logs,
    );
    let ready = |name: &str| {
        jsonpath(
            "network",
            name,
            "{.status.conditions[0].status}/{.status.conditions[0].reason}",
        )
    };
    wait(
        "default Ready=False/BadPodCIDR",
        Duration::from_secs(60),
        || ready("default") == "False/BadPodCIDR",
        logs,
    );
    let msg = jsonpath("network", "default", "{.status.conditions[0].message}");
    assert!(
        msg.starts_with("node node-b: spec.podCIDR 10.250.0.0/24 is not inside network default's prefix 10.244.0.0/16"),
        "{msg}"
    );

    // The tenant network: two disjoint blocks, each daemon's pool its node's.
    let blocks = || -> Value {
        let o = cluster.kubectl(&[
            "get",
            "network",
            "red-app",
            "-o",
            "jsonpath={.status.blocks}",
        ]);
        serde_json::from_slice(&o.stdout).unwrap_or(json!({}))
    };
    wait(
        "a block per node",
        Duration::from_secs(60),
        || blocks().as_object().is_some_and(|m| m.len() == 2),
        logs,
    );
    let bl = blocks();
    let (ba, bb) = (
        bl["node-a"].as_str().unwrap().to_string(),
        bl["node-b"].as_str().unwrap().to_string(),
    );
    let (pa, pb): (api::values::Prefix, api::values::Prefix) =
        (ba.parse().unwrap(), bb.parse().unwrap());
    assert!(!pa.overlaps(&pb), "{bl}");
    assert_eq!((pa.len, pb.len), (26, 26), "{bl}");
    wait(
        "each daemon's red-app pool its block",
        Duration::from_secs(60),
        || a.pool("red-app") == Some(ba.clone()) && b.pool("red-app") == Some(bb.clone()),
        logs,
    );
    // node-b's daemon has the tenant network and not the default one: its refusal
    // changed nothing there.
    assert!(b.network("default").is_none(), "{}", b.get("/v1/topology"));
    println!(
        "networks applied on both nodes in {:.1} s",
        t_nets.elapsed().as_secs_f64()
    );

    // Each daemon's overlay: the other node's VTEP, its own uplink at its own.
    let overlay_of = |n: &Node, me: &str, other: Option<(&str, &str)>| {
        json!({
            "uplink": {"interface": "ul0", "address": me},
            "vteps": other.map(|(n, a)| vec![json!({"name": n, "address": a})]).unwrap_or_default(),
        }) == n.get("/v1/overlay")
    };
    wait(
        "overlays",
        Duration::from_secs(60),
        || {
            overlay_of(&a, "10.99.0.11", Some(("node-b", "10.99.0.2")))
                && overlay_of(&b, "10.99.0.2", Some(("node-a", "10.99.0.11")))
        },
        logs,
    );
    assert_eq!(a.tunnels(), ["vx.1000.10.99.0.2", "vx.2000.10.99.0.2"]);
    // node-b does not carry the default network (its podCIDR was refused).
    assert_eq!(b.tunnels(), ["vx.2000.10.99.0.11"]);
    assert_eq!(
        jsonpath(
            "node",
            "node-a",
            "{.metadata.annotations.vnfhost\\.io/vtep}"
        ),
        "10.99.0.11"
    );

    // Bad overlays are refused by the daemon with the field named, and nothing changes.
    let before = a.get("/v1/overlay");
    for (body, want) in [
        (
            json!({"uplink": {"interface": "nope0"}, "vteps": []}),
            "overlay.uplink.interface: no interface \"nope0\" on this node",
        ),
        (
            json!({"uplink": {"interface": "ul0", "address": "10.99.0.9"}}),
            "overlay.uplink.address: 10.99.0.9 is not an address of ul0",
        ),
        (
            json!({"uplink": {"interface": "ul0"}, "vteps": [{"name": "me", "address": "10.99.0.1"}]}),
            "overlay.vteps[0].address: 10.99.0.1 is this node's own tunnel address",
        ),
    ] {
        let (st, reply) = api::http::call(
            &a.api,
            "PUT",
            "/v1/overlay",
            Some(body.to_string().as_bytes()),
            Duration::from_secs(10),
        )
        .unwrap();
        let reply: Value = serde_json::from_slice(&reply).unwrap_or(Value::Null);
        let named = reply["problems"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|p| p.as_str().is_some_and(|p| p.starts_with(want)));
        assert!(st == 422 && named, "{st} {reply}");
        assert_eq!(a.get("/v1/overlay"), before);
        assert_eq!(a.tunnels(), ["vx.1000.10.99.0.2", "vx.2000.10.99.0.2"]);
    }
    // A daemon that loses what it was told (here: the VTEPs, by hand) is told again;
    // without its uplink its VXLAN networks could not run, so that is refused.
    let put = |body: Value| {
        api::http::call(
            &a.api,
            "PUT",
            "/v1/overlay",
            Some(body.to_string().as_bytes()),
            Duration::from_secs(10),
        )
        .unwrap()
        .0
    };
    assert_eq!(put(json!({})), 422);
    let st = put(json!({"uplink": {"interface": "ul0", "address": "10.99.0.11"}}));
    assert_eq!(st, 200);
    wait(
        "the overlay told again",
        Duration::from_secs(30),
        || a.get("/v1/overlay") == before && a.tunnels().len() == 2,
        logs,
    );

    // node-b leaves while its controller still runs: node-a reclaims its VTEP and
    // block, the condition node-b reported goes, and node-b's controller takes none back.
    kubectl(&["delete", "node", "node-b"]);
    wait(
        "node-b reclaimed",
        Duration::from_secs(60),
        || {
            overlay_of(&a, "10.99.0.11", None)
                && blocks().as_object().is_some_and(|m| m.len() == 1)
                && ready("default") == "True/Applied"
        },
        logs,
    );
    std::thread::sleep(Duration::from_secs(3));
    assert!(blocks().get("node-b").is_none(), "{}", blocks());
    assert!(a.tunnels().is_empty(), "{:?}", a.tunnels());

    // node-b joins again with a podCIDR inside the prefix.
    apply("node-b", &node_yaml("node-b", "10.99.0.2", "10.244.1.0/24"));
    wait(
        "node-b's default pool from its podCIDR, a block, the overlays",
        Duration::from_secs(60),
        || {
            b.pool("default").as_deref() == Some("10.244.1.0/24")
                && blocks().as_object().is_some_and(|m| m.len() == 2)
                && b.pool("red-app").as_ref()
                    == blocks()["node-b"].as_str().map(String::from).as_ref()
                && overlay_of(&a, "10.99.0.11", Some(("node-b", "10.99.0.2")))
                && overlay_of(&b, "10.99.0.2", Some(("node-a", "10.99.0.11")))
        },
        logs,
    );
    let bl = blocks();
    let (ba, bb) = (
        bl["node-a"].as_str().unwrap().to_string(),
        bl["node-b"].as_str().unwrap().to_string(),
    );
    assert!(
        !ba.parse::<api::values::Prefix>()
            .unwrap()
            .overlaps(&bb.parse().unwrap()),
        "{bl}"
    );
    wait(
        "default Ready on both",
        Duration::from_secs(60),
        || ready("default") == "True/Applied" && ready("red-app") == "True/Applied",
        logs,
    );

    // Pods on each node take addresses from their node's share and reach each other.
    let pods: Vec<(Netns, Netns)> = ["a", "b"]
        .iter()
        .map(|n| {
            (
                Netns::new(format!("vkd{n}{pid}")),
                Netns::new(format!("vkr{n}{pid}")),
            )
        })
        .collect();
    let da = a.add("pod-da", &pods[0].0, "default");
    let ra = a.add("pod-ra", &pods[0].1, "red-app");
    let db = b.add("pod-db", &pods[1].0, "default");
    let rb = b.add("pod-rb", &pods[1].1, "red-app");
    println!("pods: node-a {da} {ra}, node-b {db} {rb}; blocks {bl}");
    assert!(inside(&da, "10.244.0.0/24"), "{da}");
    assert!(inside(&db, "10.244.1.0/24"), "{db}");
    assert!(inside(&ra, &ba), "{ra} not in {ba}");
    assert!(inside(&rb, &bb), "{rb} not in {bb}");
    let t_ping = std::time::Instant::now();
    wait(
        "pings across the nodes",
        Duration::from_secs(30),
        || pods[0].1.ping(&rb) && pods[1].0.ping(&da),
        logs,
    );
    println!(
        "pods on both networks reach each other across nodes (first pings within {:.1} s)",
        t_ping.elapsed().as_secs_f64()
    );

    // node-b leaves for good: its agent stops, then its Node goes. node-a drops its
    // tunnels, its block and its finalizer.
    b.controller.stop();
    let fin = |name: &str| jsonpath("network", name, "{.metadata.finalizers}");
    assert!(
        fin("red-app").contains("vnfhost.io/network-node-b"),
        "{}",
        fin("red-app")
    );
    kubectl(&["delete", "node", "node-b"]);
    wait(
        "node-b reclaimed by node-a",
        Duration::from_secs(60),
        || {
            overlay_of(&a, "10.99.0.11", None)
                && a.tunnels().is_empty()
                && blocks().as_object().is_some_and(|m| m.len() == 1)
                && !fin("red-app").contains("node-b")
                && !fin("default").contains("node-b")
        },
        logs,
    );
    assert!(
        !pods[0].1.ping(&rb),
        "node-b's pod still reached without a tunnel"
    );
    drop(pods);
    println!("two-node test: {:.1} s in all", t0.elapsed().as_secs_f64());
    drop((a, b));
    if std::env::var_os("VNFHOST_KEEP").is_none() {
        let _ = std::fs::remove_dir_all(&d);
    }
}
