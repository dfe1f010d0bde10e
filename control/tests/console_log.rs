//! A pod's console is bounded: `vnfhost console-log`, which the daemon puts between each
//! pod's VM and its `console.log`, fed by a process that writes far more than the limit,
//! keeps the file and its one predecessor within the limit each, with the newest output.

mod common;

use std::process::{Command, Stdio};

#[test]
fn a_chatty_console_takes_bounded_space_and_keeps_the_newest_output() {
    let dir = common::TestDir::new("console").unwrap();
    let log = dir.join("console.log");
    const MAX: u64 = 64 << 10;
    // About 15 MiB of numbered lines: over 200 times the limit.
    let mut writer = Command::new("seq")
        .args(["1", "2000000"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pump = Command::new(env!("CARGO_BIN_EXE_vnfhost"))
        .args(["console-log", "--max", "64Ki", log.to_str().unwrap()])
        .stdin(writer.stdout.take().unwrap())
        .output()
        .unwrap();
    assert!(writer.wait().unwrap().success());
    assert!(pump.status.success(), "{pump:?}");
    let old = log.with_file_name("console.log.1");
    let (now_len, old_len) = (
        std::fs::metadata(&log).unwrap().len(),
        std::fs::metadata(&old).unwrap().len(),
    );
    println!("console.log {now_len} B, console.log.1 {old_len} B (limit {MAX} B each)");
    assert!(now_len <= MAX && old_len <= MAX, "{now_len} {old_len}");
    let files = std::fs::read_dir(dir.path()).unwrap().count();
    assert_eq!(files, 2, "only console.log and console.log.1");
    // The newest output is kept, and the two files join without a gap.
    let text = format!(
        "{}{}",
        std::fs::read_to_string(&old).unwrap(),
        std::fs::read_to_string(&log).unwrap()
    );
    assert!(
        text.ends_with("1999999\n2000000\n"),
        "{}",
        &text[text.len() - 40..]
    );
    let lines: Vec<u64> = text
        .lines()
        .skip(1) // the first may be cut
        .map(|l| l.parse().unwrap())
        .collect();
    assert!(
        lines.windows(2).all(|w| w[1] == w[0] + 1),
        "a gap in the kept output"
    );
    // Bad options are errors, not a pump that never rotates.
    for bad in [&["--max", "1"][..], &["--max", "x", "f"], &["f"]] {
        let o = Command::new(env!("CARGO_BIN_EXE_vnfhost"))
            .arg("console-log")
            .args(bad)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2), "{bad:?}: {o:?}");
    }
}

/// Through the daemon: a pod whose workload prints several times the topology's
/// `limits.console_log_max` leaves its newest output in `console.log`, and the pod's
/// directory holds no more than twice the limit of console.
#[test]
fn a_pods_console_is_rotated_at_the_topologys_limit() {
    common::skip!(common::qemu::qemu_unavailable());
    let (kernel, initrd) = match common::qemu::guest_image() {
        Ok(x) => x,
        Err(e) => panic!("guest image: {e}"),
    };
    let _serial = common::serial();
    let dir = common::TestDir::new("dconsole").unwrap();
    let run = dir.path();
    std::env::set_var("VNFHOST_GUEST_KERNEL", &kernel);
    std::env::set_var("VNFHOST_GUEST_INITRD", &initrd);
    let d = common::cni::daemon(run);
    common::cni::up(
        run,
        &d.1,
        "switch: { cores: [1] }\nlimits: { console_log_max: 16Ki }\nnetworks:\n  - { name: n, tenant: t, cidrs: [10.0.0.0/24] }\npods:\n  - name: chatty\n    hypervisor: qemu\n    memory: 128Mi\n    cpus: [0]\n    command: \"seq 100000 110000; echo chatty-done\"\n    restart: never\n",
    );
    let pod = run.join("pods").join("chatty");
    let t = std::time::Instant::now();
    let done = loop {
        let s = common::cni::status(&d.1);
        let phase = s["pods"][0]["phase"].as_str().unwrap_or("").to_string();
        if phase == "succeeded" || phase == "failed" {
            break phase;
        }
        assert!(
            t.elapsed() < std::time::Duration::from_secs(120),
            "the pod did not end: {s}"
        );
        std::thread::sleep(std::time::Duration::from_millis(300));
    };
    // The pump ends with the VM; give it a moment to write the last bytes.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let now = std::fs::read_to_string(pod.join("console.log")).unwrap();
    let old = std::fs::read(pod.join("console.log.1"))
        .unwrap_or_else(|e| panic!("console.log.1: {e}; console.log:\n{now}"));
    println!(
        "pod {done}: console.log {} B, console.log.1 {} B",
        now.len(),
        old.len()
    );
    assert!(now.len() <= 16 << 10 && old.len() <= 16 << 10);
    assert!(
        now.contains("109999") && now.contains("chatty-done"),
        "{now}"
    );
    // The boot messages, the oldest output, have been rotated away.
    let old = String::from_utf8_lossy(&old);
    assert!(
        !old.contains("VNFHOST-GUEST-READY") && !now.contains("VNFHOST-GUEST-READY"),
        "the oldest output was kept"
    );
}
