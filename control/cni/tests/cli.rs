//! `vnfhost-cni` as a runtime runs it, without a daemon: VERSION answers, and ADD is a
//! CNI error object (try again later, 11) on stdout with exit status 1.

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::Value;

fn cni(env: &[(&str, &str)], stdin: &str) -> (bool, Value) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vnfhost-cni"))
        .env_clear()
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("vnfhost-cni");
    c.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let o = c.wait_with_output().unwrap();
    let v = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&o.stdout)));
    (o.status.success(), v)
}

#[test]
fn version_answers_and_add_without_a_daemon_is_a_cni_error() {
    let (ok, v) = cni(&[("CNI_COMMAND", "VERSION")], "");
    assert!(ok);
    assert_eq!(v["cniVersion"], "1.1.0");
    assert_eq!(
        v["supportedVersions"],
        serde_json::json!(["0.4.0", "1.0.0", "1.1.0"])
    );

    let api = std::env::temp_dir().join(format!("vnfhost-cni-{}/none.sock", std::process::id()));
    let conf = format!(
        r#"{{"cniVersion":"1.0.0","name":"n","type":"vnfhost-cni","network":"net-a","api":"{}"}}"#,
        api.display()
    );
    let (ok, v) = cni(
        &[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", "/var/run/netns/none"),
        ],
        &conf,
    );
    assert!(!ok);
    assert_eq!(v["cniVersion"], "1.0.0");
    assert_eq!(v["code"], 11, "{v}");
    assert!(v["msg"].as_str().unwrap().contains("vnfhost daemon"), "{v}");
}

#[test]
fn help_describes_the_plugin() {
    for flag in ["--help", "-h"] {
        let o = Command::new(env!("CARGO_BIN_EXE_vnfhost-cni"))
            .arg(flag)
            .env_clear()
            .stdin(Stdio::null())
            .output()
            .expect("vnfhost-cni");
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success(), "{flag}: {:?}", o.status);
        assert!(
            out.contains("CNI_COMMAND") && out.contains("network"),
            "{out}"
        );
    }
}
