//! `vnfhost up --check FILE`: a topology is checked against its schema and this host, and
//! every problem is reported with the file and a line or field path, before any change.

use std::process::Command;

fn check(yaml: &str) -> (i32, String, String) {
    let dir = std::env::temp_dir().join(format!("vnfhost-topo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join(format!("t{}.yaml", yaml.len()));
    std::fs::write(&f, yaml).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_vnfhost"))
        .args(["up", "--check"])
        .arg(&f)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&f);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_default_topology_checks_clean_on_this_host() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../topology.yaml");
    let out = Command::new(env!("CARGO_BIN_EXE_vnfhost"))
        .args(["up", "--check", path])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stderr.contains("huge pages") {
        println!(
            "SKIPPED: this host has too few free huge pages for the default topology: {stderr}"
        );
        return;
    }
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.contains("ok: 2 network(s), 1 router(s), 0 security group(s), 2 pod(s)"),
        "{stdout}"
    );
}

#[test]
fn bad_topologies_are_refused_with_file_line_and_path() {
    let (code, _, err) = check("pods:\n  - name: a\n    memory: 64Mi\n    vcpu: 2\n");
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(".yaml:4:5: pods[0].vcpu: unknown field `vcpu`"),
        "{err}"
    );

    let (code, _, err) = check(
        "networks:\n  - { name: n, tenant: t, cidrs: [10.0.0.0/24] }\n  - { name: m, tenant: t, cidrs: [10.0.0.0/16] }\n\
         pods:\n  - name: a\n    memory: 64Mi\n    cpus: [99]\n    interfaces:\n      - { network: x, mac: \"52:54:00:00:00:01\" }\n",
    );
    assert_eq!(code, 2, "{err}");
    for want in [
        "networks[1].cidrs: 10.0.0.0/16 overlaps 10.0.0.0/24",
        "pods[0].cpus[0]: CPU 99 does not exist",
        "pods[0].interfaces[0].network: unknown network \"x\"",
    ] {
        assert!(err.contains(want), "missing {want:?} in {err}");
    }
}
