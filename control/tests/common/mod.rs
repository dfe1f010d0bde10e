//! Helpers shared by the integration tests (`mod common;` in `control/tests/*.rs`).
//!
//! - [`qemu`]: QEMU Linux guests with a vhost-user NIC, driven over their console.
//! - [`testpmd`]: DPDK `dpdk-testpmd` as a vhost-user back end or as virtio-user VMs.
//! - [`switch`]: `vnfhost switch` as a child process.
//! - [`TestDir`], [`serial`], [`find_in_path`], [`cni_binary`] and the [`skip!`] macro.
//! - [`spawn`], [`Proc`] and [`wait_socket`]: a service (containerd, the daemon) as a child
//!   with its output in a log, stopped on drop.
#![allow(dead_code, unused_macros, unused_imports)]

pub mod cni;
pub mod guests;
pub mod qemu;
pub mod switch;
pub mod testpmd;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Prints `SKIPPED: <reason>` and returns from the test when the `Option<String>` it is
/// given is `Some(reason)`. Example: `skip!(common::qemu::qemu_unavailable());`
macro_rules! skip {
    ($reason:expr) => {
        if let Some(reason) = $reason {
            println!("SKIPPED: {reason}");
            return;
        }
    };
}
pub(crate) use skip;

/// Serialises heavy tests (QEMU guests, DPDK) within one test binary: the machine has two
/// cores, and cargo runs the tests of a binary on parallel threads. Poisoning is ignored.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

/// `vnfhost-cni`, built by its own package (`control/cni`) into the directory of
/// `vnfhost`: `cargo test --workspace` builds both, as does `cargo build -p vnfhost-cni`.
pub fn cni_binary() -> PathBuf {
    let p = Path::new(env!("CARGO_BIN_EXE_vnfhost")).with_file_name("vnfhost-cni");
    assert!(
        p.exists(),
        "{} is missing: build it with `cargo build -p vnfhost-cni` (or run the tests with \
         `cargo test --workspace`)",
        p.display()
    );
    p
}

/// The first executable called `name` in `PATH`.
pub fn find_in_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| {
            p.metadata()
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

/// A fresh directory `/tmp/vnfhost-<tag>-<pid>-<n>` for sockets and logs. Removed on drop,
/// except when the test is panicking or `VNFHOST_KEEP_TMP` is set (its path is then
/// printed so that the logs can be read).
pub struct TestDir {
    path: PathBuf,
}

impl TestDir {
    /// Creates the directory. Paths stay short: unix socket paths are limited to 107 bytes.
    pub fn new(tag: &str) -> Result<TestDir, String> {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let path = PathBuf::from(format!("/tmp/vnfhost-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path)
            .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        Ok(TestDir { path })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A path inside the directory.
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("VNFHOST_KEEP_TMP").is_some() {
            eprintln!("kept test directory {} (logs inside)", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// A child process stopped on drop: SIGTERM, then SIGKILL after 10 s.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `cmd` with no input and its stdout and stderr in the file `log`; it is killed
/// if the test's thread ends first.
pub fn spawn(cmd: &mut Command, log: &Path) -> Proc {
    let f = std::fs::File::create(log).unwrap();
    cmd.stdin(Stdio::null())
        .stdout(f.try_clone().unwrap())
        .stderr(f);
    qemu::set_pdeathsig(cmd);
    Proc(cmd.spawn().unwrap())
}

/// Waits up to 20 s for a Unix socket at `p` to accept a connection; panics with the
/// server's `log` otherwise.
pub fn wait_socket(p: &Path, log: &Path) {
    let t = Instant::now();
    while std::os::unix::net::UnixStream::connect(p).is_err() {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "{} did not appear: {}",
            p.display(),
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
