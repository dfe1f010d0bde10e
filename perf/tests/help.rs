//! `vnfhost-bench --help`, `p2p --help`, `vm --help` and `churn --help` print their options and exit 0;
//! an unknown option is an error that names it.

use std::process::{Command, Output, Stdio};

fn bench(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vnfhost-bench"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("vnfhost-bench runs")
}

#[test]
fn help_lists_the_options() {
    for (args, options) in [
        (&["--help"][..], &["p2p", "vm"][..]),
        (&["-h"], &["p2p", "vm"]),
        (
            &["p2p", "--help"],
            &["--duts", "--generators", "--frame-sizes", "--ndr"],
        ),
        (&["p2p", "-h"], &["--dut-cores", "--gen-core", "--install"]),
        (
            &["vm", "--help"],
            &["--trials", "--create", "--cpu", "--out"],
        ),
        (&["vm", "-h"], &["--trials"]),
        (&["churn", "--help"], &["--rate", "--changes", "--dut-core"]),
        (&["churn", "-h"], &["--rate"]),
    ] {
        let o = bench(args);
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success(), "{args:?}: {:?}\n{out}", o.status);
        assert!(out.starts_with("usage: "), "{args:?}:\n{out}");
        for opt in options {
            assert!(out.contains(opt), "{args:?} lacks {opt}:\n{out}");
        }
    }
}

#[test]
fn an_unknown_option_is_named() {
    for args in [
        &["p2p", "--bogus"][..],
        &["vm", "--bogus"],
        &["churn", "--bogus"],
    ] {
        let o = bench(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        assert!(String::from_utf8_lossy(&o.stderr).contains("--bogus"));
    }
}
