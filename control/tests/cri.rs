//! Kubernetes' side of the node without Kubernetes: containerd 1.6 with its CRI plugin
//! and runc, configured with `vnfhost-cni`, driven over CRI v1 the way the kubelet drives
//! it (RunPodSandbox, CreateContainer, StartContainer, ExecSync, StopPodSandbox,
//! RemovePodSandbox). Pods of one network reach each other through the switch; a pod of
//! another tenant's network does not; stopped pods leave no port behind.
//!
//! Needs containerd, runc, the CNI reference plugins (for `loopback`) and a Python venv
//! with a CRI client, all from `scripts/setup.sh`; says SKIPPED without them.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{skip, spawn, wait_socket, Proc};
use serde_json::Value;

const IMAGE: &str = "docker.io/vnfhost/busybox:1";

fn python() -> PathBuf {
    let cache = std::env::var("VNFHOST_CACHE").unwrap_or_else(|_| "/var/cache/vnfhost".into());
    Path::new(&cache).join("venv/bin/python")
}

fn unavailable() -> Option<String> {
    for bin in ["containerd", "ctr", "runc"] {
        if common::find_in_path(bin).is_none() {
            return Some(format!(
                "{bin} not found (scripts/setup.sh installs containerd and runc)"
            ));
        }
    }
    if !Path::new("/usr/lib/cni/loopback").exists() {
        return Some("/usr/lib/cni/loopback missing (containernetworking-plugins)".into());
    }
    let ok = Command::new(python())
        .args(["-c", "import grpc, cri_api.v1.api_pb2_grpc"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        return Some(format!(
            "{} cannot import the CRI client (scripts/setup.sh makes that venv)",
            python().display()
        ));
    }
    None
}

fn tool(args: &[&str]) -> Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/cri/cri_tool.py");
    let o = Command::new(python())
        .arg(script)
        .args(args)
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "cri_tool {args:?}: {e}: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    });
    assert!(o.status.success(), "cri_tool {args:?}: {v}");
    v
}

/// A node: the vnfhost daemon with a topology of two tenants that use the same prefix,
/// and containerd configured with vnfhost-cni and the `vnfhost` VM runtime handler.
struct Node {
    dir: common::TestDir,
    api: PathBuf,
    sock: String,
    containerd: Option<Proc>,
    _daemon: Proc,
}

impl Node {
    fn start(tag: &str) -> Node {
        let dir = common::TestDir::new(tag).unwrap();
        let d = dir.path().to_path_buf();
        let run = d.join("run");
        std::fs::create_dir_all(&run).unwrap();
        let api = run.join("api.sock");
        let daemon = spawn(
            Command::new(env!("CARGO_BIN_EXE_vnfhost")).args([
                "daemon",
                "--run-dir",
                run.to_str().unwrap(),
            ]),
            &d.join("daemon.log"),
        );
        wait_socket(&api, &d.join("daemon.log"));
        std::fs::write(
            d.join("t.yaml"),
            "switch: { cores: [1] }\nnetworks:\n\
             \x20 - { name: net-a, tenant: t1, cidrs: [10.0.0.0/24], vlan: 10, gateway: [10.0.0.254] }\n\
             \x20 - { name: net-x, tenant: t2, cidrs: [10.0.0.0/24], vlan: 30, gateway: [10.0.0.254] }\n",
        )
        .unwrap();
        let o = Command::new(env!("CARGO_BIN_EXE_vnfhost"))
            .args([
                "up",
                d.join("t.yaml").to_str().unwrap(),
                "--api",
                api.to_str().unwrap(),
            ])
            .output()
            .unwrap();
        assert!(o.status.success(), "{o:?}");

        // containerd with a private root, state, socket and CNI set-up: vnfhost-cni for
        // the pod network, namespace `blue` on tenant t2's network; the `vnfhost`
        // runtime handler's shim is found on containerd's PATH.
        let bin = d.join("cni-bin");
        let conf = d.join("cni-conf");
        let shims = d.join("shim-bin");
        for x in [&bin, &conf, &shims] {
            std::fs::create_dir_all(x).unwrap();
        }
        for e in std::fs::read_dir("/usr/lib/cni").unwrap().flatten() {
            std::os::unix::fs::symlink(e.path(), bin.join(e.file_name())).unwrap();
        }
        std::os::unix::fs::symlink(common::cni_binary(), bin.join("vnfhost-cni")).unwrap();
        let shim = shim_binary();
        if shim.exists() {
            std::os::unix::fs::symlink(&shim, shims.join("containerd-shim-vnfhost-v2")).unwrap();
        }
        std::fs::write(
            conf.join("10-vnfhost.conflist"),
            format!(
                r#"{{"cniVersion":"1.0.0","name":"vnfhost","plugins":[{{"type":"vnfhost-cni","network":"net-a","namespaces":{{"blue":"net-x"}},"api":"{}"}}]}}"#,
                api.display()
            ),
        )
        .unwrap();
        let sock = d.join("c.sock");
        let ds = d.display();
        std::fs::write(
            d.join("containerd.toml"),
            format!(
                r#"version = 2
root = "{ds}/root"
state = "{ds}/state"
[grpc]
  address = "{ds}/c.sock"
[ttrpc]
  address = "{ds}/c.sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{ds}/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{IMAGE}"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{}"
    conf_dir = "{}"
    max_conf_num = 1
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.vnfhost]
    runtime_type = "io.containerd.vnfhost.v2"
"#,
                bin.display(),
                conf.display()
            ),
        )
        .unwrap();
        let path = format!(
            "{}:{}",
            shims.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let containerd = spawn(
            Command::new("containerd")
                .arg("--config")
                .arg(d.join("containerd.toml"))
                .env("PATH", path)
                .env("VNFHOST_API", &api),
            &d.join("containerd.log"),
        );
        wait_socket(&sock, &d.join("containerd.log"));
        let s = sock.to_str().unwrap().to_string();
        let img = d.join("busybox.tar");
        tool(&["image", img.to_str().unwrap(), IMAGE]);
        let o = Command::new("ctr")
            .args(["-a", &s, "-n", "k8s.io", "images", "import"])
            .arg(&img)
            .output()
            .unwrap();
        assert!(o.status.success(), "ctr import: {o:?}");
        Node {
            dir,
            api,
            sock: s,
            containerd: Some(containerd),
            _daemon: daemon,
        }
    }

    /// The daemon's attachments.
    fn attachments(&self) -> Vec<Value> {
        common::cni::attachments(&self.api)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // Sandboxes a failed test left: stopped and removed while containerd runs, so
        // their mounts go with them.
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/cri/cri_tool.py");
        let quiet = |args: &[&str]| {
            Command::new(python())
                .arg(script)
                .args(args)
                .output()
                .ok()
                .and_then(|o| serde_json::from_slice::<Value>(&o.stdout).ok())
        };
        if let Some(list) = quiet(&["list", &self.sock]) {
            for id in list["ids"].as_array().into_iter().flatten() {
                let id = id.as_str().unwrap_or_default();
                quiet(&["stop", &self.sock, id]);
                quiet(&["rm", &self.sock, id]);
            }
        }
        drop(self.containerd.take());
        // containerd leaves its netns mounts under the state dir when stopped.
        let netns = self.dir.join("state/io.containerd.grpc.v1.cri/netns");
        if let Ok(entries) = std::fs::read_dir(netns) {
            for e in entries.flatten() {
                let _ = Command::new("umount").arg(e.path()).output();
            }
        }
        let _ = Command::new(env!("CARGO_BIN_EXE_vnfhost"))
            .args(["down", "--api", self.api.to_str().unwrap()])
            .output();
    }
}

/// The VM runtime's shim, built by the workspace (`containerd-shim-vnfhost` package).
fn shim_binary() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_vnfhost")).with_file_name("containerd-shim-vnfhost-v2")
}

#[test]
fn containerd_pods_on_vnfhost_networks() {
    skip!(unavailable());
    let _serial = common::serial();
    let node = Node::start("cri");
    let s = node.sock.as_str();

    // Three pods: two in `default` (net-a), one in `blue` (net-x).
    let mut pods = Vec::new();
    let mut times = Vec::new();
    for (name, ns) in [("pod1", "default"), ("pod2", "default"), ("pod3", "blue")] {
        let r = tool(&["run", s, name, ns]);
        times.push(r["seconds"].as_f64().unwrap());
        let id = r["id"].as_str().unwrap().to_string();
        let st = tool(&["status", s, &id]);
        assert_eq!(st["state"], "SANDBOX_READY", "{st}");
        let c = tool(&["start", s, &id, name, ns, IMAGE]);
        pods.push((
            id,
            st["ip"].as_str().unwrap().to_string(),
            c["id"].as_str().unwrap().to_string(),
        ));
    }
    println!("RunPodSandbox with vnfhost-cni: {times:.3?} s");
    assert_eq!(pods[0].1, "10.0.0.1");
    assert_eq!(pods[1].1, "10.0.0.2");
    assert_eq!(pods[2].1, "10.0.0.1", "tenant t2 has its own pool");

    let ping = |from: &str, ip: &str| tool(&["exec", s, from, "ping", "-c", "1", "-W", "2", ip]);
    let ok = (0..3).any(|_| ping(&pods[0].2, &pods[1].1)["exit"] == 0);
    assert!(
        ok,
        "pod1 could not ping pod2: {}",
        ping(&pods[0].2, &pods[1].1)
    );
    let r = ping(&pods[2].2, &pods[1].1);
    assert_ne!(r["exit"], 0, "a pod of tenant t2 reached tenant t1: {r}");
    let r = ping(&pods[2].2, "10.0.0.254");
    assert_ne!(r["exit"], 0, "t2 reached a gateway it does not have: {r}");

    // Each pod is a port on the switch; stopping and removing pod2 removes its port.
    assert_eq!(node.attachments().len(), 3);
    tool(&["stop", s, &pods[1].0]);
    tool(&["rm", s, &pods[1].0]);
    let left = node.attachments();
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(left.iter().all(|a| a["container"] != pods[1].0.as_str()));
    assert_ne!(
        ping(&pods[0].2, &pods[1].1)["exit"],
        0,
        "pod2 answers after removal"
    );

    for (id, _, _) in [&pods[0], &pods[2]] {
        tool(&["stop", s, id]);
        tool(&["rm", s, id]);
    }
    assert!(node.attachments().is_empty());
}

#[test]
fn the_vnfhost_runtime_handler_runs_containers_from_their_images_in_a_pod_vm() {
    skip!(unavailable());
    skip!(common::qemu::qemu_unavailable());
    if !shim_binary().exists() {
        println!(
            "SKIPPED: {} not built (cargo build -p containerd-shim-vnfhost)",
            shim_binary().display()
        );
        return;
    }
    let (kernel, initrd) = common::qemu::guest_image().expect("guest image");
    std::env::set_var("VNFHOST_GUEST_KERNEL", &kernel);
    std::env::set_var("VNFHOST_GUEST_INITRD", &initrd);
    let _serial = common::serial();
    let node = Node::start("crivm");
    let s = node.sock.as_str();

    // A runc pod on the same network, to reach the VM pod and be reached by it.
    let r = tool(&["run", s, "runcpod", "default"]);
    let runc_sandbox = r["id"].as_str().unwrap().to_string();
    let runc_ip = tool(&["status", s, &runc_sandbox])["ip"]
        .as_str()
        .unwrap()
        .to_string();
    let runc = tool(&["start", s, &runc_sandbox, "runcpod", "default", IMAGE]);
    let runc = runc["id"].as_str().unwrap().to_string();

    let logs = node.dir.join("logs/vmpod");
    std::fs::create_dir_all(&logs).unwrap();
    let t = Instant::now();
    let r = tool(&[
        "run",
        s,
        "vmpod",
        "default",
        "vnfhost",
        logs.to_str().unwrap(),
    ]);
    let sandbox = r["id"].as_str().unwrap().to_string();
    let vm_ip = tool(&["status", s, &sandbox])["ip"]
        .as_str()
        .unwrap()
        .to_string();
    // The pod IP CRI reports is the VM's: the sandbox's attachment is now its vhost-user
    // port, with the same address, and no second port was made.
    let mine: Vec<Value> = node
        .attachments()
        .into_iter()
        .filter(|a| a["container"] == sandbox.as_str())
        .collect();
    assert_eq!(mine.len(), 1, "{mine:?}");
    assert!(mine[0]["socket"].is_string(), "{}", mine[0]);
    assert!(
        mine[0]["address"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{vm_ip}/")),
        "{} vs {vm_ip}",
        mine[0]
    );

    let container = |name: &str, cmd: &[&str]| -> String {
        let dir = logs.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let mut args = vec![
            "start",
            s,
            &sandbox,
            "vmpod",
            "default",
            IMAGE,
            dir.to_str().unwrap(),
        ];
        args.extend_from_slice(cmd);
        tool(&args)["id"].as_str().unwrap().to_string()
    };
    let wait_exit = |cid: &str, name: &str| -> (Value, String) {
        let t = Instant::now();
        loop {
            let st = tool(&["cstatus", s, cid]);
            if st["state"] == "CONTAINER_EXITED" {
                let log =
                    std::fs::read_to_string(logs.join(name).join("main.log")).unwrap_or_default();
                return (st, log);
            }
            assert!(
                t.elapsed() < Duration::from_secs(240),
                "the container did not exit: {st}\n{}",
                std::fs::read_to_string(node.dir.join("containerd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };

    // 1. The image's own files and environment; stdout and stderr apart; its exit status.
    let a = container(
        "a",
        &[
            "sh",
            "-c",
            "cat /etc/image-marker; echo var=$IMAGE_VAR; echo to-stderr >&2; hostname; exit 3",
        ],
    );
    let (st, log) = wait_exit(&a, "a");
    println!("sandbox + first container in a pod VM: {:?}", t.elapsed());
    assert_eq!(st["exit_code"], 3, "{st}\n{log}");
    assert!(log.contains(" stdout F vnfhost test image"), "{log}");
    assert!(log.contains(" stdout F var=from-the-image"), "{log}");
    assert!(log.contains(" stderr F to-stderr"), "{log}");
    assert!(!log.contains(" stdout F to-stderr"), "{log}");
    assert!(log.contains(" stdout F vmpod"), "the pod's hostname: {log}");

    // 2. A long-running container, and ExecSync into it.
    let b = container("b", &["sleep", "3600"]);
    let exec = |cmd: &[&str]| {
        let mut args = vec!["exec", s, b.as_str()];
        args.extend_from_slice(cmd);
        tool(&args)
    };
    let r = exec(&["sh", "-c", "echo out; echo err >&2; exit 7"]);
    assert_eq!(r["exit"], 7, "{r}");
    assert_eq!(r["stdout"], "out\n", "{r}");
    assert_eq!(r["stderr"], "err\n", "{r}");
    let r = exec(&["cat", "/etc/image-marker"]);
    assert_eq!(r["stdout"], "vnfhost test image\n", "{r}");
    let r = exec(&["no-such-command"]);
    assert_eq!(r["exit"], 127, "a command that is not found exits 127: {r}");
    // Arguments reach the process as they are: quotes, $( ), tty control characters
    // (^U kill, ^S stop, ^D), and 8 KiB in one argument; no shell parses them.
    let hostile = format!(
        "'q' \"d\" $(id) `id` ; \u{15}\u{13}\u{4} {}",
        "x".repeat(8192)
    );
    let r = exec(&["printf", "%s", &hostile]);
    assert_eq!(r["exit"], 0, "{r}");
    assert_eq!(
        r["stdout"].as_str().unwrap(),
        hostile,
        "arguments changed on the way"
    );

    // 3. A third container of the same pod VM, from another image: its own files.
    let other = node.dir.join("other.tar");
    tool(&[
        "image",
        other.to_str().unwrap(),
        "docker.io/vnfhost/other:2",
        "oci",
        "amd64",
        "the other image",
    ]);
    let o = Command::new("ctr")
        .args(["-a", s, "-n", "k8s.io", "images", "import"])
        .arg(&other)
        .output()
        .unwrap();
    assert!(o.status.success(), "ctr import: {o:?}");
    let dir = logs.join("c");
    std::fs::create_dir_all(&dir).unwrap();
    let c = tool(&[
        "start",
        s,
        &sandbox,
        "vmpod",
        "default",
        "docker.io/vnfhost/other:2",
        dir.to_str().unwrap(),
        "cat",
        "/etc/image-marker",
    ]);
    let (st, log) = wait_exit(c["id"].as_str().unwrap(), "c");
    assert_eq!(st["exit_code"], 0, "{st}");
    assert!(log.contains(" stdout F the other image"), "{log}");
    // ... while the first image's container still sees its own.
    assert_eq!(
        exec(&["cat", "/etc/image-marker"])["stdout"],
        "vnfhost test image\n"
    );

    // 4. Pods reach each other by the pod IPs CRI reports: VM → runc and runc → VM.
    let ok = (0..5).any(|_| exec(&["ping", "-c", "1", "-W", "2", &runc_ip])["exit"] == 0);
    assert!(ok, "the VM pod cannot ping the runc pod at {runc_ip}");
    let r = tool(&["exec", s, &runc, "ping", "-c", "1", "-W", "2", &vm_ip]);
    assert_eq!(
        r["exit"], 0,
        "the runc pod cannot ping the VM pod at {vm_ip}: {r}"
    );

    tool(&["stop", s, &sandbox]);
    tool(&["rm", s, &sandbox]);
    tool(&["stop", s, &runc_sandbox]);
    tool(&["rm", s, &runc_sandbox]);
    assert!(node.attachments().is_empty(), "{:?}", node.attachments());
}
