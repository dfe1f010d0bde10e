//! Every command of `vnfhost` answers `--help` and `-h` with its own options on stdout
//! and exit status 0; an option a command does not take is an error that names it.

use std::process::{Command, Output, Stdio};

fn vnfhost(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vnfhost"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("vnfhost runs")
}

/// `vnfhost CMD… --help` and `-h`: exit 0, the usage of CMD on stdout with `options`.
fn help_lists(cmd: &[&str], options: &[&str]) {
    for flag in ["--help", "-h"] {
        let mut args = cmd.to_vec();
        args.push(flag);
        let o = vnfhost(&args);
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(
            o.status.success(),
            "vnfhost {args:?}: {:?}\n{out}{}",
            o.status,
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(
            out.starts_with(&format!("usage: vnfhost {}", cmd.join(" "))),
            "vnfhost {args:?}:\n{out}"
        );
        for opt in options {
            assert!(out.contains(opt), "vnfhost {args:?} lacks {opt}:\n{out}");
        }
    }
}

#[test]
fn every_command_has_its_own_help() {
    help_lists(&[], &["switch", "daemon", "vm run", "status", "bench"]);
    help_lists(
        &["switch"],
        &[
            "--core",
            "--port",
            "--control",
            "--router-if",
            "--security-group",
            "--fdb-age",
        ],
    );
    help_lists(
        &["vm", "run"],
        &[
            "--kernel",
            "--initrd",
            "--append",
            "--mem",
            "--net",
            "--console",
        ],
    );
    help_lists(&["vm", "payload"], &["--out"]);
    help_lists(&["vm"], &["run", "payload"]);
    help_lists(&["daemon"], &["--run-dir", "--group", "--metrics"]);
    help_lists(&["up"], &["--api", "--check"]);
    help_lists(&["down"], &["--api"]);
    help_lists(&["status"], &["--watch", "--json", "--events", "--api"]);
    // The harness's help when vnfhost-bench is built beside vnfhost, a summary otherwise.
    help_lists(&["bench"], &["p2p", "vm"]);
}

#[test]
fn help_comes_before_other_checks() {
    // `vm run` requires --kernel, `switch` a --port: not for --help.
    let o = vnfhost(&["vm", "run", "--mem", "64M", "--help"]);
    assert!(o.status.success());
    let o = vnfhost(&["help", "switch"]);
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).contains("--fdb-size"));
    // An option's value that looks like -h is a value.
    let o = vnfhost(&["vm", "run", "--append", "-h"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--kernel"));
}

#[test]
fn an_unknown_option_is_an_error_that_names_it() {
    for cmd in [
        &["switch"][..],
        &["vm", "run"],
        &["vm", "payload"],
        &["daemon"],
        &["up"],
        &["down"],
        &["status"],
    ] {
        let mut args = cmd.to_vec();
        args.push("--bogus");
        let o = vnfhost(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "vnfhost {args:?}: {err}");
        assert!(err.contains("--bogus"), "vnfhost {args:?}: {err}");
        assert!(err.contains("--help"), "vnfhost {args:?}: {err}");
        assert!(o.stdout.is_empty(), "vnfhost {args:?}");
    }
    let o = vnfhost(&["frobnicate"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("frobnicate"));
}
