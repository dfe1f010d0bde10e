//! The layering of issue 13, checked on the dependency graph (`cargo tree`): the daemon's
//! clients (the CNI plugin, the Kubernetes controller, the containerd shim) link the `api`
//! crate and never the data plane (pmd, vswitch, vmm), the benchmark harness (perf) or
//! `control`; and `control`, the node binary, does not link perf.

use std::collections::BTreeSet;
use std::process::Command;

/// Crates a client of the daemon must not link.
const NOT_IN_CLIENTS: [&str; 5] = ["pmd", "vswitch", "vmm", "perf", "control"];

/// The names of the packages in the normal (not dev, not build) dependency tree of
/// `package`, itself included.
fn tree(package: &str) -> BTreeSet<String> {
    let o = Command::new(env!("CARGO"))
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .args(["tree", "--offline", "-p", package, "-e", "normal"])
        .args(["--prefix", "none", "--format", "{p}"])
        .output()
        .expect("cargo tree");
    assert!(
        o.status.success(),
        "cargo tree -p {package}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout)
        .expect("UTF-8")
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

#[test]
fn clients_link_the_api_and_not_the_data_plane() {
    // vnfhost-podvm is what the shim links to run pod VMs: it runs `vnfhost vm run` as a
    // process and must not pull the VMM (or the rest of the data plane) into the shim.
    for client in [
        "vnfhost-cni",
        "vnfhost-k8s",
        "containerd-shim-vnfhost",
        "vnfhost-podvm",
    ] {
        let names = tree(client);
        assert!(
            names.contains(client) && names.contains("vnfhost-api"),
            "{client}: the tree was not read, or it does not link vnfhost-api: {names:?}"
        );
        let linked: Vec<&str> = NOT_IN_CLIENTS
            .into_iter()
            .filter(|n| names.contains(*n))
            .collect();
        assert!(
            linked.is_empty(),
            "{client} links {linked:?}; a client of the daemon links vnfhost-api only"
        );
    }
}

#[test]
fn the_node_binary_does_not_link_the_benchmark_harness() {
    let names = tree("control");
    // That the check sees a dependency at all: control does link the data plane.
    for n in ["vnfhost-api", "pmd", "vswitch", "vmm"] {
        assert!(names.contains(n), "control should link {n}: {names:?}");
    }
    assert!(
        !names.contains("perf"),
        "control links perf; `vnfhost bench` runs the vnfhost-bench binary instead"
    );
}
