//! The node image (`deploy/build-node-image.sh`): it builds, containerd imports it under the
//! name `deploy/02-daemonset.yaml` gives, and what the DaemonSet runs in it works: the
//! install-cni init container's own command, with the DaemonSet's volumes, puts a working
//! `vnfhost-cni` and the ConfigMap's conflist onto the "node"; each container's command
//! line parses in the image; the daemon finds the guest image and the tools it runs.
//!
//! The image is assembled from the binaries of this build (`--bin-dir`, not a release
//! build), with the guest kernel and init from build-guest.sh's cache (built when
//! missing). A private containerd (no CRI plugin) imports it and runs it with runc.
//! Needs containerd, ctr and runc (`scripts/setup.sh`), python3 and busybox-static; says
//! SKIPPED without them, or when the other packages' binaries are not built.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

use common::{skip, spawn, wait_socket, Proc};
use serde::Deserialize;
use serde_yaml::Value;

/// The image the script names and the manifests run.
fn image() -> String {
    format!("docker.io/vnfhost/node:{}", env!("CARGO_PKG_VERSION"))
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The directory of this build's binaries: `vnfhost` and, built by their own packages,
/// `vnfhost-cni`, `vnfhost-k8s` and `containerd-shim-vnfhost-v2`.
fn bin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_vnfhost"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn unavailable() -> Option<String> {
    for bin in ["containerd", "ctr", "runc"] {
        if common::find_in_path(bin).is_none() {
            return Some(format!(
                "{bin} not found (scripts/setup.sh installs containerd and runc)"
            ));
        }
    }
    if common::find_in_path("python3").is_none() {
        return Some("python3 not found (the image's archive is written by it)".into());
    }
    if !Path::new("/bin/busybox").exists() {
        return Some("/bin/busybox missing (apt-get install busybox-static)".into());
    }
    for b in ["vnfhost-cni", "vnfhost-k8s", "containerd-shim-vnfhost-v2"] {
        if !bin_dir().join(b).exists() {
            return Some(format!(
                "{} not built (cargo build -p vnfhost-cni -p vnfhost-k8s -p \
                 containerd-shim-vnfhost, or cargo test --workspace)",
                bin_dir().join(b).display()
            ));
        }
    }
    None
}

fn text(o: &Output) -> String {
    format!(
        "{}\n{}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A private containerd on a test directory, and `ctr` against it in its own namespace.
struct Containerd {
    sock: PathBuf,
    namespace: String,
    proc: Option<Proc>,
}

impl Containerd {
    fn start(d: &Path) -> Containerd {
        let ds = d.display();
        std::fs::write(
            d.join("containerd.toml"),
            format!(
                r#"version = 2
root = "{ds}/root"
state = "{ds}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{ds}/c.sock"
[ttrpc]
  address = "{ds}/c.sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{ds}/opt"
"#
            ),
        )
        .unwrap();
        let log = d.join("containerd.log");
        let proc = spawn(
            Command::new("containerd")
                .arg("--config")
                .arg(d.join("containerd.toml")),
            &log,
        );
        let sock = d.join("c.sock");
        wait_socket(&sock, &log);
        Containerd {
            sock,
            // Its own namespace: ctr's containers get cgroups named after it.
            namespace: format!("vnfhost-test-{}", std::process::id()),
            proc: Some(proc),
        }
    }

    fn ctr(&self, args: &[&str]) -> Output {
        Command::new("ctr")
            .arg("-a")
            .arg(&self.sock)
            .args(["-n", &self.namespace])
            .args(args)
            .output()
            .unwrap()
    }

    /// `ctr run --rm` of the image: `mounts` are (host directory, container path, writable).
    fn run(&self, mounts: &[(PathBuf, String, bool)], cmd: &[&str]) -> Output {
        static N: AtomicU32 = AtomicU32::new(0);
        let id = format!("node-image-{}", N.fetch_add(1, Ordering::Relaxed));
        let mut args = vec!["run".to_string(), "--rm".to_string()];
        for (src, dst, rw) in mounts {
            args.push("--mount".into());
            args.push(format!(
                "type=bind,src={},dst={dst},options=rbind:{}",
                src.display(),
                if *rw { "rw" } else { "ro" }
            ));
        }
        args.push(image());
        args.push(id);
        args.extend(cmd.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.ctr(&args)
    }

    /// `run` that must succeed; its stdout.
    fn run_ok(&self, mounts: &[(PathBuf, String, bool)], cmd: &[&str]) -> String {
        let o = self.run(mounts, cmd);
        assert!(o.status.success(), "ctr run {cmd:?}: {}", text(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        drop(self.proc.take());
        // The (empty) cgroups ctr's containers were put under, one per hierarchy.
        if let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") {
            for h in hierarchies.flatten() {
                let _ = std::fs::remove_dir(h.path().join(&self.namespace));
            }
        }
    }
}

/// The documents of `deploy/02-daemonset.yaml`: the DaemonSet and the CNI ConfigMap.
fn manifests() -> (Value, Value) {
    let path = repo().join("deploy/02-daemonset.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut ds = None;
    let mut cm = None;
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let v = Value::deserialize(doc).unwrap();
        match v["kind"].as_str() {
            Some("DaemonSet") => ds = Some(v),
            Some("ConfigMap") => cm = Some(v),
            _ => {}
        }
    }
    (
        ds.expect("no DaemonSet in deploy/02-daemonset.yaml"),
        cm.expect("no ConfigMap in deploy/02-daemonset.yaml"),
    )
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_sequence()
        .into_iter()
        .flatten()
        .map(|s| s.as_str().unwrap())
        .collect()
}

#[test]
fn the_node_image_builds_imports_and_installs_the_cni_plugin() {
    skip!(unavailable());
    let dir = common::TestDir::new("image").unwrap();
    let d = dir.path();

    // 1. It builds.
    let archive = d.join("node.oci.tar");
    let t = Instant::now();
    let o = Command::new("bash")
        .arg(repo().join("deploy/build-node-image.sh"))
        .arg("--bin-dir")
        .arg(bin_dir())
        .arg("--out")
        .arg(&archive)
        .output()
        .unwrap();
    assert!(o.status.success(), "build-node-image.sh: {}", text(&o));
    let size = std::fs::metadata(&archive).unwrap().len();
    println!(
        "node image built in {:.1?}: {} MiB (debug binaries, stripped)",
        t.elapsed(),
        size >> 20
    );

    // 2. containerd imports it under the manifests' name.
    let c = Containerd::start(d);
    let t = Instant::now();
    let o = c.ctr(&["images", "import", archive.to_str().unwrap()]);
    assert!(o.status.success(), "ctr images import: {}", text(&o));
    println!("imported and unpacked in {:.1?}", t.elapsed());
    let o = c.ctr(&["images", "ls", "-q"]);
    let names = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        names.lines().any(|l| l == image()),
        "{} not among the images: {names}",
        image()
    );
    let (ds, cm) = manifests();
    let spec = &ds["spec"]["template"]["spec"];
    let init = &spec["initContainers"][0];
    let all: Vec<&Value> = spec["initContainers"]
        .as_sequence()
        .into_iter()
        .chain(spec["containers"].as_sequence())
        .flatten()
        .collect();
    for ctn in &all {
        assert_eq!(ctn["image"].as_str(), Some(image().as_str()), "{ctn:?}");
    }

    // 3. Each container's command line parses in the image (here with --help added).
    for ctn in spec["containers"].as_sequence().unwrap() {
        let mut cmd = strings(&ctn["command"]);
        cmd.push("--help");
        let out = c.run_ok(&[], &cmd);
        assert!(out.starts_with("usage:"), "{cmd:?}: {out}");
    }
    // The guest image where the image's environment says, and the tools the daemon runs
    // for image pods, with their libraries.
    let out = c.run_ok(
        &[],
        &[
            "sh",
            "-c",
            r#"test -s "$VNFHOST_GUEST_KERNEL" && test -s "$VNFHOST_GUEST_INITRD" && echo found"#,
        ],
    );
    assert_eq!(out.trim(), "found");
    assert!(c.run_ok(&[], &["tar", "--version"]).contains("GNU tar"));
    c.run_ok(&[], &["mkfs.ext4", "-V"]);

    // 4. The init container's command with the DaemonSet's volumes: host paths under
    // d/host, the ConfigMap's files in a directory of their own. Twice: a restarted pod
    // installs over what it installed before.
    let conflist = cm["data"]["10-vnfhost.conflist"].as_str().unwrap();
    let mut mounts = Vec::new();
    for m in init["volumeMounts"].as_sequence().unwrap() {
        let name = m["name"].as_str().unwrap();
        let vol = spec["volumes"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|v| v["name"].as_str() == Some(name))
            .unwrap_or_else(|| panic!("no volume {name}"));
        let src = if let Some(p) = vol["hostPath"]["path"].as_str() {
            d.join("host").join(p.trim_start_matches('/'))
        } else {
            let cm_name = vol["configMap"]["name"].as_str().unwrap();
            assert_eq!(cm["metadata"]["name"].as_str(), Some(cm_name));
            let p = d.join("configmap");
            std::fs::create_dir_all(&p).unwrap();
            for (k, v) in cm["data"].as_mapping().unwrap() {
                std::fs::write(p.join(k.as_str().unwrap()), v.as_str().unwrap()).unwrap();
            }
            p
        };
        std::fs::create_dir_all(&src).unwrap();
        let rw = vol.get("configMap").is_none();
        mounts.push((src, m["mountPath"].as_str().unwrap().to_string(), rw));
    }
    for _ in 0..2 {
        c.run_ok(&mounts, &strings(&init["command"]));
    }
    let cni_bin = d.join("host/opt/cni/bin");
    let net_d = d.join("host/etc/cni/net.d");
    let listing = |p: &Path| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(p)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    assert_eq!(listing(&cni_bin), ["vnfhost-cni"], "temporary files left");
    assert_eq!(
        listing(&net_d),
        ["10-vnfhost.conflist"],
        "temporary files left"
    );
    assert_eq!(
        std::fs::read_to_string(net_d.join("10-vnfhost.conflist")).unwrap(),
        conflist
    );
    // The installed plugin runs on the node, as the runtime runs it.
    let o = Command::new(cni_bin.join("vnfhost-cni"))
        .env("CNI_COMMAND", "VERSION")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("vnfhost-cni VERSION: {e}: {}", text(&o)));
    assert!(
        v["supportedVersions"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x == "1.0.0")),
        "{v}"
    );
    // Without the ConfigMap, the image's own copy is the same text.
    let own = c.run_ok(&[], &["cat", "/etc/vnfhost/10-vnfhost.conflist"]);
    assert_eq!(own, conflist);
}
