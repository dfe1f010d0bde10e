//! A Linux pod under vnfhost's own `kvm` backend, nested in a QEMU guest.
//!
//! This host's KVM has no vmx/svm (every guest instruction is emulated), so
//! `vm_kvm.rs::linux_boots_under_the_kvm_backend` only runs where the CPU has them. Here,
//! QEMU's TCG emulates an AMD CPU with SVM instead: its guest (L1, built by
//! `vmm/guest/build-nested.sh`) loads `kvm-amd`, starts `vnfhost switch` with a
//! vhost-user port and a tap port, and runs `vnfhost vm run --hypervisor kvm` for the pod
//! (L2, the guest image of `vmm/guest/build-guest.sh`). The pod's console is forwarded to
//! L1's console, which is QEMU's stdout here.
//!
//! Then a container image runs in L1 under the `kvm` backend as `vnfhost run` runs it: a
//! BusyBox OCI image imported and built into ext4 on this host, copied into L1's
//! initramfs as `vnfhost run`'s image store and cache; the pod VM gets its image on a
//! virtio-blk disk and is driven over the agent's virtio-console port, both served by the
//! `kvm` backend; `vnfhost exec` reaches the running container through the same port.

mod common;

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::qemu::{guest_image, qemu_unavailable, QEMU_BIN, READY_MARKER};
use common::{find_in_path, skip, TestDir};

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
/// How long the whole nested run may take on a loaded two-core machine (about 35 s idle).
const RUN_TIMEOUT: Duration = Duration::from_secs(300);

/// Lines the L1 guest prints (`build-nested.sh` and the scenario below).
const L1_READY: &str = "VNFHOST-L1-READY";
const L1_FAILED: &str = "VNFHOST-L1-FAILED";
const L2_START: &str = "VNFHOST-L2-START";
const L2_EXIT: &str = "VNFHOST-L2-EXIT status=";

/// A line typed into the pod's console, and what its workload prints when it reads it.
const TYPED: &str = "typed-into-the-console";
const READ_BACK: &str = "pod-console-read:";

/// The container image (`control/tests/cri/cri_tool.py image`: BusyBox and a marker
/// file), the pod that runs it, and what the scenario prints about it.
const IMAGE: &str = "test/busybox:1";
const IMAGE_MARKER: &str = "vnfhost test image";
const POD: &str = "img";
const IMG_START: &str = "VNFHOST-IMG-START";
const EXEC_OUT: &str = "exec-in-the-pod:";
const EXEC_EXIT: &str = "VNFHOST-EXEC-EXIT status=";
const RUN_EXIT: &str = "VNFHOST-RUN-EXIT status=";
const RUN_OUT_BEGIN: &str = "VNFHOST-RUN-STDOUT-BEGIN";
const RUN_OUT_END: &str = "VNFHOST-RUN-STDOUT-END";
const POD_VM_LOG: &str = "--- the pod VM's console:";

/// What L1 runs: the switch with the pod's vhost-user port and a tap port whose kernel
/// side has [`HOST_IP`], then the pod, whose workload reads a line from its console (typed
/// once the pod printed its ready line) and pings [`HOST_IP`]. Then the image pod:
/// `vnfhost run --hypervisor kvm` in the foreground, its container waiting for a file
/// that `vnfhost exec` makes, then printing [`IMAGE_MARKER`] and exiting 3.
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

# The image pod: the store and the built ext4 came with the initramfs (--extra).
export VNFHOST_IMAGES=/images VNFHOST_CACHE=/cache VNFHOST_PODS=/tmp/pods \
    VNFHOST_GUEST_KERNEL=/l2/vmlinuz VNFHOST_GUEST_INITRD=/l2/initramfs.cpio.gz
echo {IMG_START}
vnfhost run --hypervisor kvm --name {POD} --image {IMAGE} -- \
    sh -c 'until [ -e /tmp/go ]; do sleep 0.1; done; cat /etc/image-marker; exit 3' \
    >/run/run.out 2>/run/run.err &
run=$!
i=0
until grep -q '"running"' /tmp/pods/{POD}/state.json 2>/dev/null; do
    if ! kill -0 $run 2>/dev/null || [ $i -gt 1800 ]; then break; fi
    i=$((i + 1))
    sleep 0.1
done
# The pod's files go with it: its VM's console (the `vnfhost vm run` log) is kept now.
cp /tmp/pods/{POD}/vm/console.log /run/pod-vm.log
vnfhost exec {POD} -- sh -c 'echo {EXEC_OUT}$(hostname); touch /tmp/go'
echo "{EXEC_EXIT}$?"
wait $run
rst=$?
echo "{RUN_EXIT}$rst"
echo {RUN_OUT_BEGIN}
cat /run/run.out
echo {RUN_OUT_END}
echo "--- vnfhost run's stderr:"
cat /run/run.err
echo "--- the pod's keeper:"
cat /tmp/pods/{POD}/keeper.log
echo "{POD_VM_LOG}"
cat /run/pod-vm.log
[ "$st" = 0 ] || exit $st
[ "$rst" = 3 ] || exit 1
exit 0
"#
    )
}

/// `Some(reason)` when this host lacks what the image pod needs here: the image is made
/// by `cri_tool.py`, imported with `tar` and built with `mkfs.ext4` on this host.
fn image_tools_missing() -> Option<String> {
    ["python3", "tar", "mkfs.ext4"]
        .into_iter()
        .find(|t| find_in_path(t).is_none())
        .map(|t| format!("{t} not found (the image pod's image is built on this host)"))
}

/// Imports the BusyBox image and builds its ext4 on this host, as `vnfhost run` would,
/// and lays out what it needs in L1: `images/NAME/image.json` (the store, without the
/// unpacked tree: the ext4 is built) and `cache/images/KEY.ext4`. Returns that tree, for
/// `build-nested.sh --extra`.
fn image_files(dir: &TestDir) -> PathBuf {
    let archive = dir.join("image.tar");
    let tool = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/cri/cri_tool.py");
    let o = Command::new("python3")
        .arg(tool)
        .arg("image")
        .arg(&archive)
        .arg(IMAGE)
        .output()
        .expect("run cri_tool.py");
    assert!(o.status.success(), "cri_tool.py image: {o:?}");
    // podvm finds the store and the cache through the environment: set for the import
    // and the build only (no other thread runs yet), then put back, so that the guest
    // image keeps coming from the usual cache.
    let vars = ["VNFHOST_IMAGES", "VNFHOST_CACHE"];
    let saved: Vec<_> = vars.iter().map(std::env::var_os).collect();
    std::env::set_var("VNFHOST_IMAGES", dir.join("host-images"));
    std::env::set_var("VNFHOST_CACHE", dir.join("host-cache"));
    let built = podvm::image::import(&archive, podvm::image::Format::Oci).and_then(|img| {
        let ext4 = podvm::image::build(&img.rootfs, &img.key)?;
        Ok((img, ext4))
    });
    for (k, v) in vars.iter().zip(saved) {
        match v {
            Some(v) => std::env::set_var(k, v),
            None => std::env::remove_var(k),
        }
    }
    let (img, ext4) = built.unwrap_or_else(|e| panic!("the image on this host: {e}"));
    let extra = dir.join("l1-files");
    let store = img.rootfs.parent().expect("the image's directory");
    let name = store.file_name().expect("the image's store name");
    let l1_store = extra.join("images").join(name);
    let l1_cache = extra.join("cache/images");
    std::fs::create_dir_all(&l1_store).unwrap();
    std::fs::create_dir_all(&l1_cache).unwrap();
    std::fs::copy(store.join("image.json"), l1_store.join("image.json")).unwrap();
    std::fs::copy(&ext4, l1_cache.join(ext4.file_name().unwrap())).unwrap();
    extra
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

/// Runs `build-nested.sh` for this scenario with the files `extra`; returns the L1
/// `(kernel, initrd)`.
fn build_l1(dir: &TestDir, extra: &Path) -> (PathBuf, PathBuf) {
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
        .arg("--extra")
        .arg(extra)
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

/// The text between the first `begin` line and the next `end` line of `c`.
fn between<'a>(c: &'a str, begin: &str, end: &str) -> Option<&'a str> {
    let from = c.find(&format!("{begin}\n"))? + begin.len() + 1;
    let len = c[from..].find(&format!("{end}\n"))?;
    Some(&c[from..from + len])
}

#[test]
fn a_linux_pod_boots_under_the_kvm_backend_nested_pings_and_runs_an_image() {
    skip!(qemu_unavailable());
    skip!(image_tools_missing());
    if let Err(e) = guest_image() {
        skip!(kernel_package_missing(&e));
        panic!("guest image: {e}");
    }
    let dir = TestDir::new("nested").unwrap();
    let t = Instant::now();
    let extra = image_files(&dir);
    let (kernel, initrd) = build_l1(&dir, &extra);
    let build = t.elapsed();

    let mut l1 = L1::spawn(&dir, &kernel, &initrd);
    let seen = l1.run_to_end(&[
        L1_READY,
        L2_START,
        READY_MARKER,
        vmm::guest::WORKLOAD_EXIT,
        L2_EXIT,
        IMG_START,
        EXEC_EXIT,
        RUN_EXIT,
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

    // The image pod, under the kvm backend (its VM said which), reached through the
    // agent's port: exec ran in the container (its hostname is the pod's name) and
    // released it; `vnfhost run` printed the image's own file and exited with the
    // container's status.
    assert!(
        c.contains(IMG_START),
        "L1 did not start the image pod:\n{c}"
    );
    let pod_vm_log = c.split_once(POD_VM_LOG).map_or("", |(_, l)| l);
    assert!(
        pod_vm_log.contains("hypervisor: kvm (asked for"),
        "the image pod's VM did not run under the kvm backend:\n{c}"
    );
    assert!(
        c.contains(&format!("{EXEC_OUT}{POD}\n")) && c.contains(&format!("{EXEC_EXIT}0\n")),
        "`vnfhost exec` into the image pod failed:\n{c}"
    );
    assert_eq!(
        between(&c, RUN_OUT_BEGIN, RUN_OUT_END),
        Some(&*format!("{IMAGE_MARKER}\n")),
        "`vnfhost run` did not print the image's marker file:\n{c}"
    );
    assert!(
        c.contains(&format!("{RUN_EXIT}3\n")),
        "`vnfhost run` did not exit with the container's status 3:\n{c}"
    );
    assert!(c.contains("VNFHOST-L1-EXIT status=0"), "{c}");

    let secs = |d: Option<Duration>| d.map_or(f64::NAN, |d| d.as_secs_f64());
    let start = at(&seen, L2_START);
    let since_start = |m: &str| at(&seen, m).zip(start).map(|(t, s)| t - s);
    let img = at(&seen, IMG_START);
    let since_img = |m: &str| at(&seen, m).zip(img).map(|(t, s)| t - s);
    println!(
        "TIMING: image and L1 initramfs {:.1}s; L1 boot to KVM loaded {:.1}s; pod (L2) \
         under the kvm backend: boot to {READY_MARKER} {:.1}s, whole run (boot, 3 pings, \
         power-off) {:.1}s; image pod under the kvm backend: vnfhost run to the exec's \
         end {:.1}s, to its exit {:.1}s; whole QEMU run {:.1}s (TCG with SVM, wall clock \
         of this host)",
        build.as_secs_f64(),
        secs(at(&seen, L1_READY)),
        secs(since_start(READY_MARKER)),
        secs(since_start(L2_EXIT)),
        secs(since_img(EXEC_EXIT)),
        secs(since_img(RUN_EXIT)),
        secs(at(&seen, "QEMU exited")),
    );
}
