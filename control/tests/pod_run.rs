//! `vnfhost run`, `exec`, `logs`, `ps`, `rm` as a user without Kubernetes uses them: a
//! BusyBox image built here as an OCI or Docker archive runs in its own pod VM (QEMU
//! microvm; TCG on this host) with its own files and environment; exit statuses, separate
//! stdout and stderr, exec with stdin and with a terminal, a volume, and bad input that is
//! refused with nothing left behind.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Instant;

use common::skip;

struct Env {
    dir: common::TestDir,
}

impl Env {
    fn new(tag: &str) -> Env {
        let dir = common::TestDir::new(tag).unwrap();
        Env { dir }
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_vnfhost"));
        c.args(args)
            .env("VNFHOST_PODS", self.dir.join("pods"))
            .env("VNFHOST_IMAGES", self.dir.join("images"))
            .env("VNFHOST_CACHE", self.dir.join("cache"))
            .stdin(Stdio::null());
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    fn archive(&self, file: &str, name: &str, extra: &[&str]) -> PathBuf {
        let out = self.dir.join(file);
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/cri/cri_tool.py");
        let o = Command::new("python3")
            .arg(script)
            .args(["image", out.to_str().unwrap(), name])
            .args(extra)
            .output()
            .unwrap();
        assert!(o.status.success(), "{o:?}");
        out
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        // Pods a failed test left: stopped (their keepers stop their VMs).
        for e in std::fs::read_dir(self.dir.join("pods"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            let _ = self.run(&["rm", "-f", &name]);
        }
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn unavailable() -> Option<String> {
    if let Some(r) = common::qemu::qemu_unavailable() {
        return Some(r);
    }
    if common::find_in_path("mkfs.ext4").is_none() {
        return Some("mkfs.ext4 not found (apt-get install e2fsprogs)".into());
    }
    if let Err(e) = common::qemu::guest_image() {
        return Some(format!("no guest image: {e}"));
    }
    None
}

fn set_guest_image() {
    let (kernel, initrd) = common::qemu::guest_image().unwrap();
    std::env::set_var("VNFHOST_GUEST_KERNEL", kernel);
    std::env::set_var("VNFHOST_GUEST_INITRD", initrd);
}

#[test]
fn an_image_runs_in_its_own_pod_vm_with_exec_logs_and_exit_status() {
    skip!(unavailable());
    set_guest_image();
    let _serial = common::serial();
    let env = Env::new("podrun");
    let oci = env.archive("bb.tar", "test/busybox:1", &[]);

    // Foreground: the image's own file and variable; stdout and stderr apart; its status.
    let t = Instant::now();
    let o = env.run(&[
        "run",
        "--name",
        "one",
        "--image",
        &format!("oci-archive:{}", oci.display()),
        "-e",
        "MINE=given",
        "--",
        "sh",
        "-c",
        "cat /etc/image-marker; echo var=$IMAGE_VAR mine=$MINE; echo oops >&2; exit 5",
    ]);
    println!("vnfhost run, to the workload's exit: {:?}", t.elapsed());
    assert_eq!(o.status.code(), Some(5), "{o:?}");
    assert_eq!(
        text(&o.stdout),
        "vnfhost test image\nvar=from-the-image mine=given\n"
    );
    assert!(text(&o.stderr).contains("oops\n"), "{o:?}");
    assert!(!text(&o.stdout).contains("oops"));
    // logs gives the same streams back; ps shows how it ended.
    let o = env.run(&["logs", "one"]);
    assert_eq!(
        text(&o.stdout),
        "vnfhost test image\nvar=from-the-image mine=given\n"
    );
    assert_eq!(text(&o.stderr), "oops\n");
    let ps = text(&env.run(&["ps"]).stdout);
    assert!(
        ps.lines()
            .any(|l| l.starts_with("one ") && l.contains("exited 5")),
        "{ps}"
    );

    // Detached, by name from the local store now; exec into it.
    let o = env.run(&[
        "run",
        "-d",
        "--name",
        "two",
        "--image",
        "test/busybox:1",
        "--",
        "sleep",
        "600",
    ]);
    assert!(o.status.success(), "{o:?}");
    assert_eq!(text(&o.stdout), "two\n");
    let o = env.run(&[
        "exec",
        "two",
        "--",
        "sh",
        "-c",
        "echo in=$IMAGE_VAR; hostname; exit 4",
    ]);
    assert_eq!(o.status.code(), Some(4), "{o:?}");
    assert_eq!(text(&o.stdout), "in=from-the-image\ntwo\n");
    let o = env.run(&["exec", "two", "--", "no-such-command"]);
    assert_eq!(o.status.code(), Some(127), "not found exits 127: {o:?}");
    assert!(text(&o.stderr).contains("no-such-command"), "{o:?}");
    // Arguments arrive as they are: quotes, $( ), tty control characters, 8 KiB.
    let hostile = format!(
        "'q' \"d\" $(id) `id` ; \u{15}\u{13}\u{4} {}",
        "x".repeat(8192)
    );
    let o = env.run(&["exec", "two", "--", "printf", "%s", &hostile]);
    assert_eq!(text(&o.stdout), hostile, "arguments changed on the way");
    // -i: stdin reaches the process, and its end ends it.
    let mut c = env
        .cmd(&["exec", "-i", "two", "--", "wc", "-c"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin
        .take()
        .unwrap()
        .write_all(&vec![b'a'; 100_000])
        .unwrap();
    let o = c.wait_with_output().unwrap();
    assert_eq!(text(&o.stdout).trim(), "100000", "{o:?}");
    // -it: a terminal in the guest, driven from a pseudo-terminal here.
    let o = Command::new("python3")
        .arg("-c")
        .arg(
            r#"
import os, pty, sys, time, select
pid, fd = pty.fork()
if pid == 0:
    os.execv(sys.argv[1], sys.argv[1:])
out = b""
def pump(t):
    global out
    end = time.time() + t
    while time.time() < end:
        r, _, _ = select.select([fd], [], [], 0.1)
        if r:
            try:
                d = os.read(fd, 4096)
            except OSError:
                return False
            if not d:
                return False
            out += d
    return True
pump(3)
os.write(fd, b"tty; echo sum=$((40+2)); exit 9\n")
while pump(1):
    pass
_, st = os.waitpid(pid, 0)
sys.stdout.write(out.decode(errors="replace"))
sys.stdout.write("\nEXIT=%d\n" % os.WEXITSTATUS(st))
"#,
        )
        .arg(env!("CARGO_BIN_EXE_vnfhost"))
        .args(["exec", "-it", "two", "--", "sh"])
        .env("VNFHOST_PODS", env.dir.join("pods"))
        .output()
        .unwrap();
    let out = text(&o.stdout);
    assert!(out.contains("/dev/pts/"), "no terminal in the guest: {out}");
    assert!(out.contains("sum=42"), "{out}");
    assert!(out.contains("EXIT=9"), "{out}");
    let o = env.run(&["exec", "-t", "two", "--", "sh"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("-t needs -i"), "{o:?}");

    // rm refuses a running pod without -f; with -f the VM stops and the pod is gone.
    let o = env.run(&["rm", "two"]);
    assert!(
        !o.status.success() && text(&o.stderr).contains("-f"),
        "{o:?}"
    );
    let o = env.run(&["rm", "-f", "two", "one"]);
    assert!(o.status.success(), "{o:?}");
    assert!(!text(&env.run(&["ps"]).stdout).contains("two"));
}

#[test]
fn docker_archives_and_volumes() {
    skip!(unavailable());
    set_guest_image();
    let _serial = common::serial();
    let env = Env::new("podvol");
    let docker = env.archive("bb-docker.tar", "test/docker-bb:2", &["docker"]);
    // A volume: an ext4 file made from a directory, mounted read-only at /data.
    let content = env.dir.join("voldir");
    std::fs::create_dir_all(&content).unwrap();
    std::fs::write(content.join("note"), "from the volume\n").unwrap();
    let vol = env.dir.join("vol.ext4");
    let o = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&content)
        .arg(&vol)
        .arg("8M")
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    let o = env.run(&[
        "run",
        "--name",
        "vol",
        "--image",
        &format!("docker-archive:{}", docker.display()),
        "-v",
        &format!("{}:/data:ro", vol.display()),
        "--",
        "sh",
        "-c",
        "cat /data/note /etc/image-marker; if touch /data/x 2>/dev/null; then echo writable; fi",
    ]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    assert_eq!(
        text(&o.stdout),
        "from the volume\nvnfhost test image\n",
        "{o:?}"
    );
}

#[test]
fn bad_input_is_refused_and_leaves_nothing() {
    skip!(unavailable());
    let env = Env::new("podbad");
    let pods = env.dir.join("pods");
    let left = |p: &Path| std::fs::read_dir(p).map(|d| d.count()).unwrap_or(0);
    let refused = |args: &[&str], says: &str| {
        let o = env.run(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {o:?}");
        assert!(
            text(&o.stderr).contains(says),
            "{args:?}: {}",
            text(&o.stderr)
        );
        assert_eq!(left(&pods), 0, "{args:?} left a pod behind");
    };
    refused(
        &["run", "--image", "nothing/here:1"],
        "not in the local store",
    );
    let corrupt = env.dir.join("corrupt.tar");
    std::fs::write(&corrupt, b"this is not a tar archive at all").unwrap();
    refused(
        &[
            "run",
            "--image",
            &format!("oci-archive:{}", corrupt.display()),
        ],
        "not a readable archive",
    );
    let arm = env.archive("arm.tar", "test/arm:1", &["oci", "arm64"]);
    refused(
        &["run", "--image", &format!("oci-archive:{}", arm.display())],
        "arm64",
    );
    refused(
        &["run", "--image", "x", "-v", "/does/not/exist:/data"],
        "/does/not/exist",
    );
    refused(&["run", "--image", "x", "--name", "../up"], "pod name");
    refused(&["exec", "nosuchpod", "--", "true"], "no pod named");
}
