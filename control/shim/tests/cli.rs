//! The shim as containerd starts it, with what containerd would never send: it refuses
//! with a message and a failure status, without panicking. (This test also makes
//! `cargo test --workspace` build the shim binary that `control/tests/cri.rs` hands to
//! containerd.)

use std::process::Command;

#[test]
fn without_a_namespace_the_shim_refuses() {
    let o = Command::new(env!("CARGO_BIN_EXE_containerd-shim-vnfhost-v2"))
        .arg("start")
        .env_remove("TTRPC_ADDRESS")
        .output()
        .expect("the shim runs");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("namespace"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}
