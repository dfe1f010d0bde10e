//! QEMU Linux guests with one vhost-user virtio-net NIC, driven over their serial console.
//!
//! The guest image is built by `vmm/guest/build-guest.sh` (see [`guest_image`]): a Debian
//! cloud kernel and a BusyBox initramfs whose `/init` configures `eth0` from the kernel
//! command line (`vnf.ip=ADDR/PREFIX`, `vnf.gw=ADDR`), prints [`READY_MARKER`] and then runs
//! a shell on the console with empty prompts and echo off.
//!
//! Guests are started with `vnfhost vm run --hypervisor qemu`, which execs QEMU `-M
//! microvm` (TCG where the CPU has no hardware virtualization) with guest RAM in a shared
//! memfd, so that a vhost-user backend can map it. Its stdin and stdout are the guest's
//! serial console: [`QemuGuest::run`] types a command and collects its output.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The line the guest's `/init` prints once its network is configured.
pub const READY_MARKER: &str = "VNFHOST-GUEST-READY";
/// The prefix of the line the guest's `/init` prints when configuring the network failed.
pub const FAILED_MARKER: &str = "VNFHOST-GUEST-FAILED";
/// Name of the QEMU binary looked up in `PATH`.
pub const QEMU_BIN: &str = "qemu-system-x86_64";
/// Lines of console output quoted in errors.
const TAIL_LINES: usize = 40;

/// Returns `Some(reason)` when QEMU guests cannot run here (tests then print `SKIPPED:`).
pub fn qemu_unavailable() -> Option<String> {
    if super::find_in_path(QEMU_BIN).is_none() {
        return Some(format!(
            "{QEMU_BIN} not found in PATH (apt-get install qemu-system-x86)"
        ));
    }
    None
}

/// Builds the guest image if needed (once per test process) and returns
/// `(kernel, initrd)`.
///
/// Runs `CARGO_MANIFEST_DIR/../vmm/guest/build-guest.sh`, which caches its output in
/// `${VNFHOST_CACHE:-/var/cache/vnfhost}/guest/`. The first build downloads the kernel
/// package with `apt-get download`.
pub fn guest_image() -> Result<(PathBuf, PathBuf), String> {
    static IMAGE: OnceLock<Result<(PathBuf, PathBuf), String>> = OnceLock::new();
    IMAGE.get_or_init(build_guest_image).clone()
}

fn build_guest_image() -> Result<(PathBuf, PathBuf), String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../vmm/guest/build-guest.sh");
    let out = Command::new("bash")
        .arg(&script)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "{} failed ({}):\n{}{}",
            script.display(),
            out.status,
            stdout,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let mut kernel = None;
    let mut initrd = None;
    for line in stdout.lines() {
        if let Some(p) = line.strip_prefix("VNFHOST_GUEST_KERNEL=") {
            kernel = Some(PathBuf::from(p));
        } else if let Some(p) = line.strip_prefix("VNFHOST_GUEST_INITRD=") {
            initrd = Some(PathBuf::from(p));
        }
    }
    match (kernel, initrd) {
        (Some(k), Some(i)) if k.is_file() && i.is_file() => Ok((k, i)),
        _ => Err(format!(
            "{} did not print existing VNFHOST_GUEST_KERNEL/INITRD paths:\n{stdout}",
            script.display()
        )),
    }
}

/// How QEMU attaches to the vhost-user socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VhostMode {
    /// QEMU connects to a socket the backend listens on; with `reconnect=1` QEMU retries
    /// every second, at start-up and after the backend goes away.
    Client,
    /// QEMU listens (`server=on`) and the backend connects (e.g. DPDK `client=1`).
    /// QEMU creates the socket file and blocks at start-up until the backend connects.
    Server,
}

/// Options of [`QemuGuest::spawn`].
#[derive(Clone, Debug)]
pub struct GuestOpts {
    /// A short name used in errors.
    pub name: String,
    /// The vhost-user socket path.
    pub socket: PathBuf,
    /// Whether QEMU is the vhost-user client or server.
    pub mode: VhostMode,
    /// The NIC's MAC address, e.g. `52:54:00:00:00:01`.
    pub mac: String,
    /// `ADDR/PREFIX` for the guest's `eth0`; `None` leaves it unconfigured.
    pub ip: Option<String>,
    /// Optional default gateway.
    pub gw: Option<String>,
    /// Guest RAM in MiB.
    pub memory_mb: u32,
    /// File that receives QEMU's command line, the console output and QEMU's stderr.
    pub log: PathBuf,
    /// Extra words for the kernel command line.
    pub extra_append: Vec<String>,
    /// Kernel and initrd; `None` uses [`guest_image`].
    pub image: Option<(PathBuf, PathBuf)>,
    /// The NIC offers packed virtqueues (QEMU `packed=on`).
    pub packed: bool,
}

impl GuestOpts {
    /// Defaults: QEMU as vhost-user client with reconnect, 256 MiB, no IP.
    pub fn new(name: &str, socket: impl Into<PathBuf>, log: impl Into<PathBuf>) -> Self {
        GuestOpts {
            name: name.to_string(),
            socket: socket.into(),
            mode: VhostMode::Client,
            mac: "52:54:00:00:00:01".to_string(),
            ip: None,
            gw: None,
            memory_mb: 256,
            log: log.into(),
            extra_append: Vec::new(),
            image: None,
            packed: false,
        }
    }

    /// Sets the MAC address.
    pub fn mac(mut self, mac: &str) -> Self {
        self.mac = mac.to_string();
        self
    }

    /// Sets `ADDR/PREFIX` of `eth0`.
    pub fn ip(mut self, ip: &str) -> Self {
        self.ip = Some(ip.to_string());
        self
    }

    /// Sets the vhost-user role of QEMU.
    pub fn mode(mut self, mode: VhostMode) -> Self {
        self.mode = mode;
        self
    }
}

#[derive(Default)]
struct ConsoleState {
    /// Everything the console printed, `\r` removed.
    text: Vec<u8>,
    /// Bytes of `text` already matched by `wait_for`/`run`.
    consumed: usize,
    /// QEMU closed its stdout (it exited).
    eof: bool,
}

#[derive(Default)]
struct Console {
    state: Mutex<ConsoleState>,
    changed: Condvar,
}

impl Console {
    fn lock(&self) -> std::sync::MutexGuard<'_, ConsoleState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

fn tail(text: &[u8], lines: usize) -> String {
    let text = String::from_utf8_lossy(text);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// One running QEMU guest. Dropping it kills QEMU.
///
/// QEMU is started with `PR_SET_PDEATHSIG = SIGKILL`: it dies when the thread that
/// spawned it exits, so spawn guests from the thread that owns them.
pub struct QemuGuest {
    name: String,
    child: Option<Child>,
    pid: u32,
    stdin: Option<ChildStdin>,
    console: Arc<Console>,
    reader: Option<JoinHandle<()>>,
    log: PathBuf,
    spawned: Instant,
    seq: u64,
}

impl QemuGuest {
    /// Starts QEMU; does not wait for the guest (see [`QemuGuest::wait_ready`]).
    pub fn spawn(opts: &GuestOpts) -> Result<QemuGuest, String> {
        let name = opts.name.clone();
        let (kernel, initrd) = match &opts.image {
            Some(img) => img.clone(),
            None => guest_image()?,
        };
        let mut append = vec![vmm::guest::default_cmdline(vmm::hypervisor::Backend::Qemu)];
        if let Some(ip) = &opts.ip {
            append.push(format!("vnf.ip={ip}"));
        }
        if let Some(gw) = &opts.gw {
            append.push(format!("vnf.gw={gw}"));
        }
        append.extend(opts.extra_append.iter().cloned());

        let sock = opts
            .socket
            .to_str()
            .ok_or_else(|| format!("{name}: socket path {} is not UTF-8", opts.socket.display()))?;
        let mut net = match opts.mode {
            VhostMode::Client => format!("vhost-user={sock},client,mac={}", opts.mac),
            VhostMode::Server => format!("vhost-user={sock},mac={}", opts.mac),
        };
        if opts.packed {
            net.push_str(",packed");
        }
        // The pod is started the way a user starts one: `vnfhost vm run`, which execs QEMU
        // (so the child's pid is QEMU's).
        let args: Vec<String> = vec![
            "vm".into(),
            "run".into(),
            "--hypervisor".into(),
            "qemu".into(),
            "--kernel".into(),
            kernel.display().to_string(),
            "--initrd".into(),
            initrd.display().to_string(),
            "--cmdline".into(),
            append.join(" "),
            "--mem".into(),
            format!("{}M", opts.memory_mb),
            "--net".into(),
            net,
        ];

        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&opts.log)
            .map_err(|e| format!("{name}: cannot open log {}: {e}", opts.log.display()))?;
        let _ = writeln!(log, "### vnfhost {}", shell_words(&args));
        let stderr = log
            .try_clone()
            .map_err(|e| format!("{name}: cannot clone log file: {e}"))?;

        let mut cmd = Command::new(env!("CARGO_BIN_EXE_vnfhost"));
        cmd.args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr));
        set_pdeathsig(&mut cmd);
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("{name}: cannot start {QEMU_BIN}: {e}"))?;
        let pid = child.id();
        let stdin = child.stdin.take();
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| format!("{name}: QEMU has no stdout pipe"))?;
        let console = Arc::new(Console::default());
        let reader = {
            let console = Arc::clone(&console);
            std::thread::Builder::new()
                .name(format!("console-{name}"))
                .spawn(move || read_console(stdout, &console, log))
                .map_err(|e| format!("{name}: cannot start console reader: {e}"))?
        };
        Ok(QemuGuest {
            name,
            child: Some(child),
            pid,
            stdin,
            console,
            reader: Some(reader),
            log: opts.log.clone(),
            spawned: Instant::now(),
            seq: 0,
        })
    }

    /// QEMU's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The log file (QEMU command line, console output, QEMU's stderr).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Everything the console printed so far (`\r` removed).
    pub fn output(&self) -> String {
        String::from_utf8_lossy(&self.console.lock().text).into_owned()
    }

    /// The last `n` lines of console output.
    pub fn tail(&self, n: usize) -> String {
        tail(&self.console.lock().text, n)
    }

    fn error(&self, what: &str, text: &[u8]) -> String {
        format!(
            "{}: {what}; log {}; last console lines:\n{}",
            self.name,
            self.log.display(),
            tail(text, TAIL_LINES)
        )
    }

    /// Waits until `matcher` finds something in the unconsumed console output. It returns
    /// the end of the match (relative to the unconsumed part) and a value; the output up
    /// to the match end becomes consumed.
    fn wait_match<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut matcher: impl FnMut(&[u8]) -> Option<Result<(usize, T), String>>,
    ) -> Result<T, String> {
        let deadline = Instant::now() + timeout;
        let mut st = self.console.lock();
        loop {
            let start = st.consumed;
            match matcher(&st.text[start..]) {
                Some(Ok((end, value))) => {
                    st.consumed = start + end;
                    return Ok(value);
                }
                Some(Err(e)) => return Err(self.error(&e, &st.text)),
                None => {}
            }
            if st.eof {
                return Err(self.error(&format!("QEMU exited while waiting for {what}"), &st.text));
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(self.error(
                    &format!("timed out after {timeout:?} waiting for {what}"),
                    &st.text,
                ));
            }
            st = self
                .console
                .changed
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Waits until `marker` appears in console output not yet matched by an earlier
    /// `wait_for`/`run`, and marks the output up to it as matched.
    pub fn wait_for(&self, marker: &str, timeout: Duration) -> Result<(), String> {
        let m = marker.as_bytes();
        self.wait_match(&format!("{marker:?}"), timeout, |t| {
            find(t, m).map(|p| Ok((p + m.len(), ())))
        })
    }

    /// Waits for [`READY_MARKER`]; fails early on [`FAILED_MARKER`] or a kernel panic.
    /// Returns the time since [`QemuGuest::spawn`].
    pub fn wait_ready(&self, timeout: Duration) -> Result<Duration, String> {
        let ready = READY_MARKER.as_bytes();
        self.wait_match("the guest to be ready", timeout, |t| {
            if let Some(p) = find(t, ready) {
                return Some(Ok((p + ready.len(), ())));
            }
            if find(t, FAILED_MARKER.as_bytes()).is_some() {
                return Some(Err("the guest failed to configure itself".to_string()));
            }
            if find(t, b"Kernel panic").is_some() {
                return Some(Err("the guest kernel panicked".to_string()));
            }
            None
        })?;
        Ok(self.spawned.elapsed())
    }

    /// Types `text` on the console as is.
    pub fn send(&mut self, text: &str) -> Result<(), String> {
        let name = self.name.clone();
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| format!("{name}: console input is closed"))?;
        stdin
            .write_all(text.as_bytes())
            .and_then(|_| stdin.flush())
            .map_err(|e| format!("{name}: cannot write to the console: {e}"))
    }

    /// Runs a shell command in the guest and returns its exit status and its output
    /// (stdout and stderr, `\r` removed, without the final newline).
    ///
    /// The command is typed on a line of its own between two `echo`s of unique markers,
    /// so it may end with `&`. It must not read the console (redirect its stdin). On
    /// timeout a Ctrl-C is typed to interrupt it and an error is returned.
    pub fn run_status(&mut self, cmd: &str, timeout: Duration) -> Result<(i32, String), String> {
        self.seq += 1;
        let seq = self.seq;
        // The quotes split the marker in what is typed, so an echoed command line (when
        // the console echoes) never matches the printed marker.
        let start = format!("__VNF_S{seq}__");
        let end = format!("__VNF_E{seq}__ ");
        self.send(&format!(
            "echo __VNF_\"\"S{seq}__\n{cmd}\necho __VNF_\"\"E{seq}__ $?\n"
        ))?;
        let result = self.wait_match(&format!("the end of `{cmd}`"), timeout, |t| {
            let s = find(t, start.as_bytes())?;
            // The output starts on the line after the start marker.
            let body_start = s + start.len() + find(&t[s + start.len()..], b"\n")? + 1;
            let rel_end = find(&t[body_start..], end.as_bytes())?;
            let end_at = body_start + rel_end;
            let status_from = end_at + end.len();
            let nl = find(&t[status_from..], b"\n")?;
            let status_text = String::from_utf8_lossy(&t[status_from..status_from + nl]);
            let status = match status_text.trim().parse::<i32>() {
                Ok(s) => s,
                Err(_) => return Some(Err(format!("bad exit status {status_text:?}"))),
            };
            let mut out = String::from_utf8_lossy(&t[body_start..end_at]).into_owned();
            if out.ends_with('\n') {
                out.pop();
            }
            Some(Ok((status_from + nl + 1, (status, out))))
        });
        if result.is_err() {
            // Interrupt whatever still runs so that the console is usable again.
            let _ = self.send("\x03\n");
        }
        result
    }

    /// Runs a shell command (see [`QemuGuest::run_status`]) and returns its output;
    /// a non-zero exit status is an error that quotes the output.
    pub fn run(&mut self, cmd: &str, timeout: Duration) -> Result<String, String> {
        let (status, out) = self.run_status(cmd, timeout)?;
        if status != 0 {
            return Err(format!(
                "{}: `{cmd}` exited with status {status}:\n{out}",
                self.name
            ));
        }
        Ok(out)
    }

    /// Whether QEMU still runs.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Types `poweroff -f`, waits up to 10 s for QEMU to exit, then kills it.
    pub fn shutdown(mut self) -> Result<ExitStatus, String> {
        let _ = self.send("\npoweroff -f\n");
        self.finish(Duration::from_secs(10))
    }

    /// Waits up to `timeout` for QEMU to exit, then kills it; joins the console reader.
    fn finish(&mut self, timeout: Duration) -> Result<ExitStatus, String> {
        let name = self.name.clone();
        let Some(mut child) = self.child.take() else {
            return Err(format!("{name}: QEMU already reaped"));
        };
        let deadline = Instant::now() + timeout;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Ok(status),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                Ok(None) => {
                    let _ = child.kill();
                    break match child.wait() {
                        Ok(s) => Err(format!(
                            "{name}: QEMU did not exit within {timeout:?}, killed ({s})"
                        )),
                        Err(e) => Err(format!("{name}: cannot reap QEMU: {e}")),
                    };
                }
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break Err(format!("{name}: cannot wait for QEMU: {e}"));
                }
            }
        };
        self.stdin = None;
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        status
    }
}

impl Drop for QemuGuest {
    fn drop(&mut self) {
        self.stdin = None;
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
        }
        let _ = self.finish(Duration::from_secs(5));
    }
}

fn read_console(mut out: ChildStdout, console: &Console, mut log: File) {
    let mut buf = [0u8; 8192];
    loop {
        match out.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let clean: Vec<u8> = buf[..n].iter().copied().filter(|&b| b != b'\r').collect();
                let _ = log.write_all(&clean);
                console.lock().text.extend_from_slice(&clean);
                console.changed.notify_all();
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    console.lock().eof = true;
    console.changed.notify_all();
}

/// Makes the child get SIGKILL when the spawning thread exits (test aborted or killed).
pub fn set_pdeathsig(cmd: &mut Command) {
    // SAFETY: the closure runs in the forked child before exec and only calls prctl(2),
    // which is async-signal-safe; it touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Quotes arguments for a log line that can be pasted into a shell.
pub fn shell_words(args: &[String]) -> String {
    args.iter()
        .map(|a| {
            if !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_=.,/:@+".contains(c))
            {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}
