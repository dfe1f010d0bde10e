//! A Linux pod under vnfhost's own `kvm` backend, nested in a QEMU guest.
//!
//! This host's KVM has no vmx/svm (every guest instruction is emulated), so
//! `vm_kvm.rs::linux_boots_under_the_kvm_backend` only runs where the CPU has them. Here,
//! QEMU's TCG emulates an AMD CPU with SVM instead: its guest (L1, built by
//! `vmm/guest/build-nested.sh`) loads `kvm-amd`, starts `vnfhost switch` with a
//! vhost-user port and a tap port, and runs `vnfhost vm run --hypervisor kvm` for the pod
//! (L2, the guest image of `vmm/guest/build-guest.sh`). The pod's console is forwarded to
//! L1's console, which is QEMU's stdout here.

mod common;

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::qemu::{guest_image, qemu_unavailable, QEMU_BIN, READY_MARKER};
use common::{skip, TestDir};

/// The L1 CPU: QEMU's baseline model with SVM, plus the x86-64-v2 instructions the pod's
/// kernel modules (`crc32c-intel` needs SSE4.2) and glibc's string functions expect of
/// any server CPU of the last fifteen years.
const L1_CPU: &str = "qemu64,+svm,+ssse3,+sse4.1,+sse4.2,+popcnt";
/// The L1 guest's RAM in MiB.
const L1_MEM_MB: u32 = 1536;
/// The tap port's address in L1, which the pod pings.
const HOST_IP: &str = "10.0.0.1";
/// The pod's address.
const POD_IP: &str = "10.0.0.2";
/// How long the whole nested run may take on a loaded two-core machine (about 15 s idle).
const RUN_TIMEOUT: Duration = Duration::from_secs(240);

/// Lines the L1 guest prints (`build-nested.sh` and the scenario below).
const L1_READY: &str = "VNFHOST-L1-READY";
const L1_FAILED: &str = "VNFHOST-L1-FAILED";
const L2_START: &str = "VNFHOST-L2-START";
const L2_EXIT: &str = "VNFHOST-L2-EXIT status=";

/// A line typed into the pod's console, and what its workload prints when it reads it.
const TYPED: &str = "typed-into-the-console";
const READ_BACK: &str = "pod-console-read:";

/// What L1 runs: the switch with the pod's vhost-user port and a tap port whose kernel
/// side has [`HOST_IP`], then the pod, whose workload reads a line from its console (typed
/// once the pod printed its ready line) and pings [`HOST_IP`].
fn scenario() -> String {
    format!(
        r#"set -u
vnfhost switch --port pod,vhost-user=/run/pod.sock,client --port host,tap=vnft0 \
    >/run/switch.log 2>&1 &
sw=$!
i=0
until ip link show vnft0 >/dev/null 2>&1; do
    i=$((i + 1))
    if [ $i -gt 100 ]; then
        echo "the switch made no tap vnft0 in 10 s:"
        cat /run/switch.log
        exit 1
    fi
    sleep 0.1
done
ip addr add {HOST_IP}/24 dev vnft0
ip link set vnft0 up
echo {L2_START}
# The pod's console: stdin from a FIFO, into which a line is typed once the pod is up;
# stdout to L1's console and to a file that tells when the pod is up.
mkfifo /run/console-in
(
    until grep -q {READY_MARKER} /run/pod-console 2>/dev/null; do sleep 0.1; done
    echo {TYPED}
) >/run/console-in &
{{
    timeout 150 vnfhost vm run --hypervisor kvm --kernel /l2/vmlinuz \
        --initrd /l2/initramfs.cpio.gz --mem 256M \
        --net vhost-user=/run/pod.sock,mac=52:54:00:00:00:02 \
        --append 'vnf.ip={POD_IP}/24 "vnf.run=read -r w && echo {READ_BACK}$w && ping -c 3 {HOST_IP}"'
    echo $? >/run/pod-status
}} </run/console-in | tee /run/pod-console
st=$(cat /run/pod-status)
echo "{L2_EXIT}$st"
kill $sw
wait $sw
echo "--- switch log:"
cat /run/switch.log
exit $st
"#
    )
}

/// `Some(reason)` when the Debian kernel package the guests run cannot be had: the guest
/// image's build failed with `err` and no kernel package is cached (no apt lists, no
/// network).
fn kernel_package_missing(err: &str) -> Option<String> {
    let cache = std::env::var_os("VNFHOST_CACHE").unwrap_or_else(|| "/var/cache/vnfhost".into());
    let debs = Path::new(&cache).join("guest/debs");
    let cached = std::fs::read_dir(&debs)
        .map(|d| {
            d.flatten().any(|e| {
                let n = e.file_name();
                let n = n.to_string_lossy();
                n.starts_with("linux-image-") && n.ends_with(".deb")
            })
        })
        .unwrap_or(false);
    (!cached).then(|| {
        format!(
            "no guest kernel package: none in {} and build-guest.sh could not get one ({})",
            debs.display(),
            err.lines().next().unwrap_or_default()
        )
    })
}

/// Runs `build-nested.sh` for this scenario; returns the L1 `(kernel, initrd)`.
fn build_l1(dir: &TestDir) -> (PathBuf, PathBuf) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../vmm/guest/build-nested.sh");
    let scen = dir.join("scenario.sh");
    std::fs::write(&scen, scenario()).unwrap();
    let initrd = dir.join("l1.cpio");
    let out = Command::new("bash")
        .arg(&script)
        .arg("--vnfhost")
        .arg(env!("CARGO_BIN_EXE_vnfhost"))
        .arg("--scenario")
        .arg(&scen)
        .arg("--out")
        .arg(&initrd)
        .stdin(Stdio::null())
        .output()
        .expect("run build-nested.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{} failed ({}):\n{stdout}{}",
        script.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let kernel = stdout
        .lines()
        .find_map(|l| l.strip_prefix("VNFHOST_NESTED_KERNEL="))
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("no VNFHOST_NESTED_KERNEL= in:\n{stdout}"));
    assert!(kernel.is_file() && initrd.is_file(), "{stdout}");
    (kernel, initrd)
}

/// QEMU running L1, its console collected by a thread (and copied to `console.log`).
struct L1 {
    child: Child,
    text: Arc<Mutex<Vec<u8>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl L1 {
    fn spawn(dir: &TestDir, kernel: &Path, initrd: &Path) -> L1 {
        let cmdline = vmm::guest::default_cmdline(vmm::hypervisor::Backend::Qemu);
        let mut cmd = Command::new(QEMU_BIN);
        cmd.args(["-M", "microvm", "-accel", "tcg", "-cpu", L1_CPU])
            .args(["-m", &L1_MEM_MB.to_string(), "-smp", "1"])
            .args(["-nodefaults", "-no-user-config", "-nographic"])
            .args(["-serial", "stdio", "-no-reboot"])
            .arg("-kernel")
            .arg(kernel)
            .arg("-initrd")
            .arg(initrd)
            .args(["-append", &cmdline])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(File::create(dir.join("qemu.err")).unwrap());
        common::qemu::set_pdeathsig(&mut cmd);
        let mut child = cmd.spawn().expect("spawn QEMU");
        let mut stdout = child.stdout.take().expect("QEMU stdout");
        let text = Arc::new(Mutex::new(Vec::new()));
        let mut log = File::create(dir.join("console.log")).unwrap();
        let sink = Arc::clone(&text);
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let _ = log.write_all(&buf[..n]);
                let mut t = sink.lock().unwrap_or_else(|p| p.into_inner());
                t.extend(buf[..n].iter().filter(|&&b| b != b'\r'));
            }
        });
        L1 {
            child,
            text,
            reader: Some(reader),
        }
    }

    fn console(&self) -> String {
        String::from_utf8_lossy(&self.text.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
    }

    /// Waits for QEMU to exit (L1 powers off after its scenario), noting when each of
    /// `markers` first appeared. Panics with the console after [`RUN_TIMEOUT`].
    fn run_to_end(&mut self, markers: &[&'static str]) -> Vec<(&'static str, Duration)> {
        let start = Instant::now();
        let mut seen: Vec<(&'static str, Duration)> = vec![];
        loop {
            let done = self.child.try_wait().expect("wait for QEMU").is_some();
            let text = self.console();
            for &m in markers {
                if !seen.iter().any(|(s, _)| *s == m) && text.contains(m) {
                    seen.push((m, start.elapsed()));
                }
            }
            if done {
                break;
            }
            if start.elapsed() > RUN_TIMEOUT {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("the nested run did not end in {RUN_TIMEOUT:?}; console:\n{text}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        seen.push(("QEMU exited", start.elapsed()));
        seen
    }
}

impl Drop for L1 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn at(seen: &[(&str, Duration)], marker: &str) -> Option<Duration> {
    seen.iter().find(|(m, _)| *m == marker).map(|(_, t)| *t)
}

#[test]
fn a_linux_pod_boots_under_the_kvm_backend_nested_and_pings_through_the_switch() {
    skip!(qemu_unavailable());
    if let Err(e) = guest_image() {
        skip!(kernel_package_missing(&e));
        panic!("guest image: {e}");
    }
    let dir = TestDir::new("nested").unwrap();
    let t = Instant::now();
    let (kernel, initrd) = build_l1(&dir);
    let build = t.elapsed();

    let mut l1 = L1::spawn(&dir, &kernel, &initrd);
    let seen = l1.run_to_end(&[
        L1_READY,
        L2_START,
        READY_MARKER,
        vmm::guest::WORKLOAD_EXIT,
        L2_EXIT,
    ]);
    let c = l1.console();
    assert!(!c.contains(L1_FAILED), "L1 failed:\n{c}");
    assert!(c.contains(L1_READY), "L1 never loaded KVM:\n{c}");
    assert!(c.contains(L2_START), "L1 did not start the pod:\n{c}");
    // The pod's init writes this from userspace: it reaches the console only if the
    // guest's 8250 driver got its interrupt (the COM1 of the DSDT).
    assert!(
        c.contains(READY_MARKER),
        "the pod under the kvm backend never printed {READY_MARKER}:\n{c}"
    );
    // Console input reaches the pod's userspace (the 8250's receive interrupt).
    assert!(
        c.contains(&format!("{READ_BACK}{TYPED}")),
        "the pod did not read the line typed into its console:\n{c}"
    );
    assert!(
        c.contains("3 packets transmitted, 3 packets received"),
        "the pod's pings through the switch to the tap port were not all answered:\n{c}"
    );
    assert!(
        c.contains(&format!("{}0\n", vmm::guest::WORKLOAD_EXIT)),
        "the workload's exit line is missing:\n{c}"
    );
    // `vnfhost vm run` exits with the workload's status.
    assert!(
        c.contains(&format!("{L2_EXIT}0\n")),
        "`vnfhost vm run` did not exit 0:\n{c}"
    );
    assert!(c.contains("VNFHOST-L1-EXIT status=0"), "{c}");

    let secs = |d: Option<Duration>| d.map_or(f64::NAN, |d| d.as_secs_f64());
    let start = at(&seen, L2_START);
    let since_start = |m: &str| at(&seen, m).zip(start).map(|(t, s)| t - s);
    println!(
        "TIMING: L1 image {:.1}s; L1 boot to KVM loaded {:.1}s; pod (L2) under the kvm \
         backend: boot to {READY_MARKER} {:.1}s, whole run (boot, 3 pings, power-off) \
         {:.1}s; whole QEMU run {:.1}s (TCG with SVM, wall clock of this host)",
        build.as_secs_f64(),
        secs(at(&seen, L1_READY)),
        secs(since_start(READY_MARKER)),
        secs(since_start(L2_EXIT)),
        secs(at(&seen, "QEMU exited")),
    );
}
