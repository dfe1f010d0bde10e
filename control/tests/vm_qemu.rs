//! `vnfhost vm run --hypervisor qemu` with the Linux guest image: the pod's init
//! (`vnfhost-init`) runs the workload given on the command line and powers the VM off;
//! `vnfhost vm run` exits with the workload's status.
//! (The ping and TCP tests of two pods through the switch are in `switch_qemu.rs`.)

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{skip, TestDir};

/// `vm run` arguments of a QEMU pod VM of 256 MiB with `append` on its command line.
fn qemu_vm(kernel: &Path, initrd: &Path, append: &str) -> Vec<std::ffi::OsString> {
    let mut a: Vec<std::ffi::OsString> = ["vm", "run", "--hypervisor", "qemu", "--mem", "256M"]
        .iter()
        .map(Into::into)
        .collect();
    a.extend([
        "--kernel".into(),
        kernel.into(),
        "--initrd".into(),
        initrd.into(),
    ]);
    a.extend(["--append".into(), append.into()]);
    a
}

#[test]
fn a_pod_runs_its_workload_and_powers_off_with_its_status() {
    skip!(common::qemu::qemu_unavailable());
    let _g = common::serial();
    let dir = TestDir::new("vm-workload").unwrap();
    let (kernel, initrd) = common::qemu::guest_image().expect("guest image");
    let console = dir.join("console.txt");
    let mut child = Command::new(env!("CARGO_BIN_EXE_vnfhost"))
        .args(qemu_vm(
            &kernel,
            &initrd,
            "\"vnf.run=echo hello from the workload; exit 3\"",
        ))
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&console).unwrap())
        .stderr(std::fs::File::create(dir.join("vmm.log")).unwrap())
        .spawn()
        .unwrap();
    let t = Instant::now();
    let st = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if t.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            panic!(
                "the pod did not power off\n{}",
                std::fs::read_to_string(&console).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = std::fs::read_to_string(&console).unwrap_or_default();
    // `vnfhost vm run` exits with the workload's status.
    assert_eq!(st.code(), Some(3), "exit {st}\n{out}");
    assert!(out.contains(common::qemu::READY_MARKER), "{out}");
    assert!(out.contains("hello from the workload"), "{out}");
    assert!(out.contains("VNFHOST-WORKLOAD-EXIT status=3"), "{out}");
}

/// A guest that ends without its workload's status (here the workload powers the VM off
/// itself, as a kernel panic's reset would end it) is a failure, not a clean power-off.
#[test]
fn a_pod_that_ends_without_its_workload_status_fails() {
    skip!(common::qemu::qemu_unavailable());
    let _g = common::serial();
    let dir = TestDir::new("vm-nostatus").unwrap();
    let (kernel, initrd) = common::qemu::guest_image().expect("guest image");
    let o = Command::new("timeout")
        .args(["-s", "KILL", "120"])
        .arg(env!("CARGO_BIN_EXE_vnfhost"))
        .args(qemu_vm(&kernel, &initrd, "\"vnf.run=poweroff -f\""))
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(dir.join("console.txt")).unwrap())
        .output()
        .unwrap();
    let console = std::fs::read_to_string(dir.join("console.txt")).unwrap_or_default();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}\n{console}");
    assert!(err.contains("without its workload's exit status"), "{err}");
    assert!(!console.contains("VNFHOST-WORKLOAD-EXIT"), "{console}");
}
