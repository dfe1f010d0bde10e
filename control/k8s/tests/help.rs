//! `vnfhost-k8s --help` prints its options and exits 0, without a cluster.

use std::process::{Command, Stdio};

#[test]
fn help_lists_the_options() {
    for flag in ["--help", "-h"] {
        let o = Command::new(env!("CARGO_BIN_EXE_vnfhost-k8s"))
            .args(["controller", flag])
            .stdin(Stdio::null())
            .output()
            .expect("vnfhost-k8s runs");
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success(), "{flag}: {:?}", o.status);
        assert!(out.starts_with("usage: vnfhost-k8s controller"), "{out}");
        assert!(out.contains("--api") && out.contains("--node"), "{out}");
    }
    let o = Command::new(env!("CARGO_BIN_EXE_vnfhost-k8s"))
        .arg("--bogus")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--bogus"));
}
