//! DPDK `dpdk-testpmd` as a vhost-user backend with `net_vhost` ports in `io` forward
//! mode: with two ports it is a wire between the two guests attached to them. A reference
//! to check the QEMU harness (and later our switch) against.
//!
//! Flags that matter (DPDK 22.11):
//! - `--no-huge -m 512` needs `--total-num-mbufs` well below testpmd's default (155456
//!   mbufs of 2176 bytes): otherwise "Creation of mbuf pool for socket 0 failed".
//! - Without `-i`, testpmd waits for Enter on stdin and exits at once on EOF (stdin
//!   `/dev/null`) unless `--stats-period N` is given: then it prints port statistics every
//!   N seconds until SIGINT/SIGTERM.
//! - In server mode (the default) it refuses to start if a socket file already exists:
//!   stale sockets of a killed testpmd must be removed first.
//! - `client=1` on a vdev makes it connect (and reconnect every second) to a socket that
//!   QEMU listens on.

use super::qemu::{set_pdeathsig, shell_words};
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Name of the testpmd binary looked up in `PATH` (Debian package `dpdk-dev`).
pub const TESTPMD_BIN: &str = "dpdk-testpmd";

/// Returns `Some(reason)` when testpmd cannot run here.
pub fn testpmd_unavailable() -> Option<String> {
    if super::find_in_path(TESTPMD_BIN).is_none() {
        return Some(format!(
            "{TESTPMD_BIN} not found in PATH (apt-get install dpdk-dev)"
        ));
    }
    None
}

/// Which side of vhost-user testpmd's ports play.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// `net_vhost` ports: testpmd is the switch (back end).
    VhostBackend,
    /// `net_virtio_user` ports: testpmd is the VM (frontend), connecting to sockets a
    /// back end created.
    VirtioUser,
}

/// Options of [`Testpmd::spawn`].
#[derive(Clone, Debug)]
pub struct TestpmdOpts {
    /// One port per socket, in port order.
    pub sockets: Vec<PathBuf>,
    /// Back end or frontend ports.
    pub role: Role,
    /// Queue pairs per port (`--rxq`/`--txq`).
    pub queues: u16,
    /// `client=1` on every port: testpmd connects to sockets QEMU listens on.
    pub client: bool,
    /// EAL `--file-prefix`; must be unique per running DPDK process.
    pub file_prefix: String,
    /// EAL `-l` core list: the first is the main lcore, the second forwards.
    pub lcores: String,
    /// Forward mode (`io` makes a wire of two ports).
    pub forward_mode: String,
    /// `net_virtio_user` ports ask for packed virtqueues (`packed_vq=1`).
    pub packed: bool,
    /// File that receives testpmd's stdout and stderr.
    pub log: PathBuf,
}

impl TestpmdOpts {
    /// Server-mode `io` forwarding between `sockets`, lcores `0,1`, a file prefix unique to
    /// this process and the given tag.
    pub fn wire(tag: &str, sockets: Vec<PathBuf>, log: impl Into<PathBuf>) -> Self {
        TestpmdOpts {
            sockets,
            role: Role::VhostBackend,
            queues: 1,
            client: false,
            file_prefix: format!("vnfhost-{tag}-{}", std::process::id()),
            lcores: "0,1".to_string(),
            forward_mode: "io".to_string(),
            packed: false,
            log: log.into(),
        }
    }
}

impl TestpmdOpts {
    /// testpmd as the VMs: `net_virtio_user` ports on `sockets` (which a back end
    /// created), `queues` queue pairs each, `io` forwarding between port pairs.
    pub fn virtio_user(
        tag: &str,
        sockets: Vec<PathBuf>,
        queues: u16,
        log: impl Into<PathBuf>,
    ) -> Self {
        TestpmdOpts {
            role: Role::VirtioUser,
            queues,
            ..TestpmdOpts::wire(tag, sockets, log)
        }
    }

    /// Whether testpmd creates (and so removes) the socket files.
    fn owns_sockets(&self) -> bool {
        self.role == Role::VhostBackend && !self.client
    }
}

/// A running testpmd. Dropping it kills it (SIGKILL) and removes its files.
pub struct Testpmd {
    opts: TestpmdOpts,
    child: Option<Child>,
    pid: u32,
}

impl Testpmd {
    /// Starts testpmd. In server mode waits (up to 20 s) until it has created all sockets.
    pub fn spawn(opts: &TestpmdOpts) -> Result<Testpmd, String> {
        let mut args: Vec<String> = vec![
            "--no-huge".into(),
            "-m".into(),
            "512".into(),
            "--no-pci".into(),
            "--file-prefix".into(),
            opts.file_prefix.clone(),
            "-l".into(),
            opts.lcores.clone(),
        ];
        let q = opts.queues;
        for (i, sock) in opts.sockets.iter().enumerate() {
            let vdev = match opts.role {
                Role::VhostBackend => {
                    let c = if opts.client { ",client=1" } else { "" };
                    format!("net_vhost{i},iface={},queues={q}{c}", sock.display())
                }
                Role::VirtioUser => {
                    let packed = if opts.packed { ",packed_vq=1" } else { "" };
                    format!(
                        "net_virtio_user{i},path={},queues={q}{packed}",
                        sock.display()
                    )
                }
            };
            args.push("--vdev".into());
            args.push(vdev);
        }
        args.extend(
            [
                "--",
                "--nb-cores=1",
                "--total-num-mbufs=16384",
                "--auto-start",
                "--stats-period=10",
            ]
            .map(String::from),
        );
        args.push(format!("--forward-mode={}", opts.forward_mode));
        args.push(format!("--rxq={q}"));
        args.push(format!("--txq={q}"));

        if opts.owns_sockets() {
            // A stale socket file makes the vhost library fail to bind.
            for sock in &opts.sockets {
                let _ = std::fs::remove_file(sock);
            }
        }
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&opts.log)
            .map_err(|e| format!("cannot open {}: {e}", opts.log.display()))?;
        let _ = writeln!(log, "### {TESTPMD_BIN} {}", shell_words(&args));
        let out = log
            .try_clone()
            .map_err(|e| format!("cannot clone log: {e}"))?;
        let mut cmd = Command::new(TESTPMD_BIN);
        cmd.args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(log));
        set_pdeathsig(&mut cmd);
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {TESTPMD_BIN}: {e}"))?;
        let mut pmd = Testpmd {
            opts: opts.clone(),
            pid: child.id(),
            child: Some(child),
        };
        if opts.owns_sockets() {
            pmd.wait_sockets(Duration::from_secs(20))?;
        }
        Ok(pmd)
    }

    fn wait_sockets(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.opts.sockets.iter().all(|s| s.exists()) {
                return Ok(());
            }
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    return Err(format!(
                        "testpmd exited ({status}) before creating its sockets; log {}:\n{}",
                        self.opts.log.display(),
                        self.log_tail(30)
                    ));
                }
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "testpmd did not create {:?} within {timeout:?}; log {}:\n{}",
                    self.opts.sockets,
                    self.opts.log.display(),
                    self.log_tail(30)
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// testpmd's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The log file.
    pub fn log_path(&self) -> &Path {
        &self.opts.log
    }

    /// The last `n` lines of the log.
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read(&self.opts.log).unwrap_or_default();
        let text = String::from_utf8_lossy(&text);
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Whether testpmd still runs.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Stops testpmd: `signal` (e.g. `libc::SIGTERM` for a clean exit, `libc::SIGKILL` for a
    /// crash), waits up to 10 s, then SIGKILL. Removes its sockets (server mode) and its
    /// EAL runtime directory.
    pub fn stop(mut self, signal: libc::c_int) -> Result<(), String> {
        self.stop_inner(signal)
    }

    fn stop_inner(&mut self, signal: libc::c_int) -> Result<(), String> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let mut result = Ok(());
        if matches!(child.try_wait(), Ok(None)) {
            // SAFETY: kill(2) on the pid of our own child, which is not yet reaped (so the
            // pid cannot have been reused).
            let r = unsafe { libc::kill(self.pid as libc::pid_t, signal) };
            if r != 0 {
                result = Err(format!(
                    "kill({}, {signal}): {}",
                    self.pid,
                    std::io::Error::last_os_error()
                ));
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while matches!(child.try_wait(), Ok(None)) {
                if Instant::now() >= deadline {
                    let _ = child.kill();
                    result = Err(format!(
                        "testpmd {} ignored signal {signal}; killed",
                        self.pid
                    ));
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let _ = child.wait();
        if self.opts.owns_sockets() {
            for sock in &self.opts.sockets {
                let _ = std::fs::remove_file(sock);
            }
        }
        let _ = std::fs::remove_dir_all(Path::new("/var/run/dpdk").join(&self.opts.file_prefix));
        result
    }
}

impl Drop for Testpmd {
    fn drop(&mut self) {
        let _ = self.stop_inner(libc::SIGKILL);
    }
}
