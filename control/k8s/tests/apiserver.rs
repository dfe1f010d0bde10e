//! The `Network` controller against a real API server: etcd 3.4 and kube-apiserver
//! (built from Debian's source package by `scripts/build-kube-apiserver.sh`) on loopback,
//! with a self-made CA, a token and RBAC. `deploy/` applies; a `Network` reaches the
//! node's daemon and gets its Ready condition; an edit updates it; a network the node
//! refuses says why; an invalid one is refused by the schema; a deletion removes it from
//! the node before the object goes; with the API server gone the controller keeps
//! retrying.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{daemon_get, fresh_dir, ok, run, unavailable, wait, Cluster, Down, Proc};

#[test]
fn networks_are_reconciled_into_the_daemon() {
    if let Some(why) = unavailable() {
        println!("SKIPPED: {why}");
        return;
    }
    let d = fresh_dir("api");
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut cluster = Cluster::start(&d);
    let kubectl = |args: &[&str]| -> Output { cluster.kubectl(args) };
    // The node: a daemon with a switch and no networks yet.
    let run_dir = d.join("run");
    let api = run_dir.join("api.sock");
    // The workspace's binaries, beside this package's (wherever the target directory is).
    let bin = Path::new(env!("CARGO_BIN_EXE_vnfhost-k8s"))
        .parent()
        .unwrap();
    let vnfhost = bin.join("vnfhost");
    assert!(
        vnfhost.exists(),
        "build the workspace first (cargo test --workspace does)"
    );
    let _daemon = Proc::spawn(
        Command::new(&vnfhost).args(["daemon", "--run-dir", run_dir.to_str().unwrap()]),
        &d.join("daemon.log"),
    );
    // Whatever happens below, the switch the daemon starts (a polling process of its
    // own) is brought down before the daemon goes: a failed test leaves nothing running.
    let _down = Down(vnfhost.clone(), api.clone());
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

    // deploy/ applies cleanly: CRD, RBAC, the node agent's DaemonSet and CNI config.
    let out = ok(&kubectl(&[
        "apply",
        "-f",
        repo.join("deploy").to_str().unwrap(),
    ]));
    assert!(
        out.contains("customresourcedefinition.apiextensions.k8s.io/networks.vnfhost.io"),
        "{out}"
    );
    assert!(out.contains("daemonset.apps/vnfhost-node"), "{out}");
    ok(&kubectl(&[
        "wait",
        "--for=condition=established",
        "--timeout=60s",
        "crd/networks.vnfhost.io",
    ]));

    let mut controller = Proc::spawn(
        Command::new(env!("CARGO_BIN_EXE_vnfhost-k8s"))
            .env("KUBECONFIG", &cluster.kubeconfig)
            .args(["controller", "--api", api.to_str().unwrap()]),
        &d.join("controller.log"),
    );
    let clog = || std::fs::read_to_string(d.join("controller.log")).unwrap_or_default();
    let ready = |name: &str| -> String {
        let o = kubectl(&[
            "get",
            "network",
            name,
            "-o",
            "jsonpath={.status.conditions[0].status}/{.status.conditions[0].reason}",
        ]);
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let node_networks = || -> Vec<serde_json::Value> {
        daemon_get(&api, "/v1/networks")
            .as_array()
            .cloned()
            .unwrap_or_default()
    };

    // Create: both example networks reach the node and turn Ready.
    ok(&kubectl(&[
        "apply",
        "-f",
        repo.join("deploy/examples/networks.yaml").to_str().unwrap(),
    ]));
    wait(
        "networks Ready",
        Duration::from_secs(60),
        || ready("default") == "True/Applied" && ready("blue-db") == "True/Applied",
        clog,
    );
    let nets = node_networks();
    assert_eq!(nets.len(), 2, "{nets:?}");
    let o = kubectl(&[
        "get",
        "network",
        "default",
        "-o",
        "jsonpath={.metadata.finalizers}",
    ]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("vnfhost.io/network"));

    // Edit: the node follows.
    ok(&kubectl(&[
        "patch",
        "network",
        "blue-db",
        "--type=merge",
        "-p",
        r#"{"spec":{"vlan":102}}"#,
    ]));
    wait(
        "the edit on the node",
        Duration::from_secs(60),
        || {
            node_networks()
                .iter()
                .any(|n| n["name"] == "blue-db" && n["vlan"] == 102)
        },
        clog,
    );

    // A network the node refuses (VLAN 100 is taken): Ready=False with the reason.
    std::fs::write(
        d.join("dup.yaml"),
        "apiVersion: vnfhost.io/v1alpha1\nkind: Network\nmetadata: {name: dup}\nspec: {tenant: red, cidrs: [10.20.0.0/24], vlan: 100}\n",
    )
    .unwrap();
    ok(&kubectl(&[
        "apply",
        "-f",
        d.join("dup.yaml").to_str().unwrap(),
    ]));
    wait(
        "dup Rejected",
        Duration::from_secs(60),
        || ready("dup") == "False/Rejected",
        clog,
    );
    let o = kubectl(&[
        "get",
        "network",
        "dup",
        "-o",
        "jsonpath={.status.conditions[0].message}",
    ]);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("VLAN 100"),
        "{o:?}"
    );
    assert!(!node_networks().iter().any(|n| n["name"] == "dup"));

    // Invalid objects are refused by the schema, before any controller sees them.
    for (bad, field) in [
        (
            "spec: {tenant: red, cidrs: [10.30.0.0/24], vlan: 5000}",
            "spec.vlan",
        ),
        ("spec: {tenant: red}", "spec.cidrs"),
        ("spec: {tenant: red, cidrs: [banana]}", "spec.cidrs"),
    ] {
        std::fs::write(
            d.join("bad.yaml"),
            format!(
                "apiVersion: vnfhost.io/v1alpha1\nkind: Network\nmetadata: {{name: bad}}\n{bad}\n"
            ),
        )
        .unwrap();
        // --validate=false: the API server's schema is what refuses, not kubectl.
        let o = kubectl(&[
            "apply",
            "--validate=false",
            "-f",
            d.join("bad.yaml").to_str().unwrap(),
        ]);
        let text = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && text.contains(field), "{bad}: {text}");
    }

    // A pod asks for an extra network with the Multus-style annotation; the controller
    // records it in the daemon, and the CNI ADD for that pod gives it eth0 on the
    // configured network and net1 on the annotated one; DEL removes both.
    std::fs::write(
        d.join("pod.yaml"),
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  namespace: default\n  annotations:\n    k8s.v1.cni.cncf.io/networks: blue-db\nspec:\n  automountServiceAccountToken: false\n  containers:\n  - {name: c, image: busybox}\n",
    )
    .unwrap();
    // No controller-manager here makes the default service account; the test does.
    ok(&kubectl(&[
        "create",
        "serviceaccount",
        "default",
        "-n",
        "default",
    ]));
    ok(&kubectl(&[
        "apply",
        "-f",
        d.join("pod.yaml").to_str().unwrap(),
    ]));
    wait(
        "the pod's networks recorded",
        Duration::from_secs(30),
        || {
            daemon_get(&api, "/v1/pod-networks/default/web")
                .to_string()
                .contains("blue-db")
        },
        clog,
    );
    let ns = format!("vnfhk8s{}", std::process::id());
    let _ = run(Command::new("ip").args(["netns", "del", &ns]));
    ok(&run(Command::new("ip").args(["netns", "add", &ns])));
    let cni = |cmd: &str| -> Output {
        use std::io::Write;
        let mut c = Command::new(bin.join("vnfhost-cni"))
            .env_clear()
            .env("CNI_COMMAND", cmd)
            .env("CNI_CONTAINERID", "websandbox")
            .env("CNI_NETNS", format!("/var/run/netns/{ns}"))
            .env("CNI_IFNAME", "eth0")
            .env("CNI_ARGS", "K8S_POD_NAMESPACE=default;K8S_POD_NAME=web")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let conf = format!(
            r#"{{"cniVersion":"1.0.0","name":"vnfhost","type":"vnfhost-cni","network":"default","api":"{}"}}"#,
            api.display()
        );
        c.stdin.take().unwrap().write_all(conf.as_bytes()).unwrap();
        c.wait_with_output().unwrap()
    };
    let add = ok(&cni("ADD"));
    let v: serde_json::Value = serde_json::from_str(add.trim()).unwrap();
    assert_eq!(v["interfaces"][0]["name"], "eth0", "{v}");
    assert_eq!(v["interfaces"][1]["name"], "net1", "{v}");
    assert_eq!(v["ips"][0]["address"], "10.10.0.1/24", "{v}");
    assert_eq!(v["ips"][1]["address"], "10.10.1.1/24", "{v}");
    assert_eq!(
        v["routes"].as_array().map(Vec::len),
        Some(1),
        "one default route: {v}"
    );
    let addrs = ok(&run(Command::new("ip").args(["-n", &ns, "-br", "addr"])));
    assert!(
        addrs.contains("10.10.0.1/24") && addrs.contains("10.10.1.1/24"),
        "{addrs}"
    );
    ok(&cni("DEL"));
    let addrs = ok(&run(Command::new("ip").args(["-n", &ns, "-br", "link"])));
    assert!(
        !addrs.contains("eth0") && !addrs.contains("net1"),
        "{addrs}"
    );
    let _ = run(Command::new("ip").args(["netns", "del", &ns]));
    ok(&kubectl(&["delete", "pod", "web", "--wait=false"]));
    wait(
        "the pod's record gone with the pod",
        Duration::from_secs(30),
        || daemon_get(&api, "/v1/pod-networks/default/web") == serde_json::json!([]),
        clog,
    );

    // Delete: gone from the node first, then the object (finalizer).
    ok(&kubectl(&["delete", "network", "blue-db", "--wait=false"]));
    wait(
        "blue-db removed",
        Duration::from_secs(60),
        || {
            !node_networks().iter().any(|n| n["name"] == "blue-db")
                && !kubectl(&["get", "network", "blue-db"]).status.success()
        },
        clog,
    );
    ok(&kubectl(&["delete", "network", "dup", "--wait=false"]));

    // The API server goes away: the controller keeps running and says it is retrying.
    cluster.apiserver.stop();
    std::thread::sleep(Duration::from_secs(4));
    assert!(
        controller.alive(),
        "the controller died without its API server:\n{}",
        clog()
    );
    controller.stop();
    let log = clog();
    assert!(
        log.contains("WARN") || log.contains("ERROR"),
        "no word about the lost API server:\n{log}"
    );
    drop(_down);
    drop(_daemon);
    let _ = std::fs::remove_dir_all(&d);
}
