//! `vnfhost-init`: PID 1 of a vnfhost pod guest, like hyperstart for HyperContainer.
//!
//! Built as a static binary by `vmm/guest/build-guest.sh` and put in the initramfs as
//! `/init`. In order it:
//!
//! 1. mounts `/proc`, `/sys`, `/dev` (devtmpfs), `/dev/pts`, `/tmp` and `/run`;
//! 2. loads the kernel modules listed in `/lib/modules/load-order` (the virtio drivers of
//!    Debian's cloud kernel, dependencies first) with `finit_module`;
//! 3. reads its settings from the kernel command line (see [`Settings`]): `vnf.ip=`,
//!    `vnf.gw=`, `vnf.echo=`, `vnf.run=`, `vnf.agent=`;
//! 4. brings up `lo` and, with `vnf.ip`, waits for `eth0` and configures its address,
//!    netmask and the default route (ioctls: no `ip` binary needed);
//! 5. prints `VNFHOST-GUEST-READY` on the console, or `VNFHOST-GUEST-FAILED: reason`;
//! 6. with `vnf.agent=1`, serves the host's `vnfhost.agent` virtio-serial port (the
//!    [`agent`] module: containers from their own images, exec, stdio, exit statuses);
//!    else runs the workload: `vnf.run=CMD` runs `sh -c CMD`, prints
//!    `VNFHOST-WORKLOAD-EXIT status=N` (its exit status 0 to 255, 128 + the signal that
//!    killed it, 127 when it cannot be started), waits for the console to send it and
//!    powers off: `vnfhost vm run` reads that line and exits with N (the line is
//!    `vmm::guest::WORKLOAD_EXIT`; this crate stays free of the host's). Without
//!    `vnf.run`, an interactive shell on the console (no prompts, echo off unless
//!    `vnf.echo=1`), restarted when it exits.
//!
//! As PID 1 it reaps every orphan. It never exits: the kernel would panic.

use std::ffi::CString;
use std::io::Write;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod agent;
mod net;

/// What the kernel command line asks of init.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// `vnf.ip=ADDR/PREFIX` for `eth0`.
    pub ip: Option<(Ipv4Addr, u8)>,
    /// `vnf.gw=ADDR`: the default gateway.
    pub gw: Option<Ipv4Addr>,
    /// `vnf.echo=1`: keep the console's echo on.
    pub echo: bool,
    /// `vnf.run=CMD` (quote it when it has spaces: `"vnf.run=ping -c 1 10.0.0.2"`).
    pub run: Option<String>,
    /// `vnf.agent=1`: serve the host's agent port (containers from their images) instead
    /// of a console shell.
    pub agent: bool,
    /// Words that could not be understood.
    pub errors: Vec<String>,
}

/// Splits a command line into words, honouring double quotes like the kernel does.
pub fn words(cmdline: &str) -> Vec<String> {
    let mut out = vec![];
    let mut cur = String::new();
    let mut quoted = false;
    let mut any = false;
    for c in cmdline.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                any = true;
            }
            c if c.is_whitespace() && !quoted => {
                if any {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            c => {
                cur.push(c);
                any = true;
            }
        }
    }
    if any {
        out.push(cur);
    }
    out
}

/// Reads the `vnf.*` words of a command line.
pub fn settings(cmdline: &str) -> Settings {
    let mut s = Settings::default();
    for w in words(cmdline) {
        let Some((k, v)) = w.split_once('=') else {
            continue;
        };
        match k {
            "vnf.ip" => match v.split_once('/').and_then(|(a, p)| {
                Some((
                    a.parse::<Ipv4Addr>().ok()?,
                    p.parse::<u8>().ok().filter(|p| *p <= 32)?,
                ))
            }) {
                Some(ip) => s.ip = Some(ip),
                None => s.errors.push(format!("vnf.ip={v}: expected ADDR/PREFIX")),
            },
            "vnf.gw" => match v.parse() {
                Ok(gw) => s.gw = Some(gw),
                Err(_) => s.errors.push(format!("vnf.gw={v}: not an IPv4 address")),
            },
            "vnf.echo" => s.echo = v == "1",
            "vnf.agent" => s.agent = v == "1",
            "vnf.run" if !v.is_empty() => s.run = Some(v.to_string()),
            _ => {}
        }
    }
    s
}

fn console(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn mount(src: &str, target: &str, fstype: &str) -> Result<(), String> {
    let _ = std::fs::create_dir_all(target);
    let c = |s: &str| CString::new(s).map_err(|e| e.to_string());
    let (src_c, target_c, fs_c) = (c(src)?, c(target)?, c(fstype)?);
    // SAFETY: three valid NUL-terminated strings and no data argument.
    let rc = unsafe {
        libc::mount(
            src_c.as_ptr(),
            target_c.as_ptr(),
            fs_c.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EBUSY) {
            return Err(format!("mount {fstype} on {target}: {e}"));
        }
    }
    Ok(())
}

fn load_module(path: &str) -> Result<(), String> {
    let f = std::fs::File::open(path).map_err(|e| format!("{path}: {e}"))?;
    // SAFETY: finit_module(fd, "", 0) with an open fd and a NUL-terminated empty string.
    let rc = unsafe { libc::syscall(libc::SYS_finit_module, f.as_raw_fd(), c"".as_ptr(), 0) };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        // EEXIST: built in or loaded. ENODEV: not for this machine (crc32c-intel on a CPU
        // without SSE4.2, which crc32c then does without).
        if !matches!(e.raw_os_error(), Some(libc::EEXIST) | Some(libc::ENODEV)) {
            return Err(format!("loading {path}: {e}"));
        }
    }
    Ok(())
}

fn echo_off() {
    // SAFETY: termios calls on fd 0 with a zeroed struct filled by tcgetattr.
    unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        if libc::tcgetattr(0, &mut t) == 0 {
            t.c_lflag &= !libc::ECHO;
            libc::tcsetattr(0, libc::TCSANOW, &t);
        }
    }
}

fn setup(s: &Settings) -> Vec<String> {
    let mut errors = s.errors.clone();
    for (src, target, fs) in [
        ("sysfs", "/sys", "sysfs"),
        ("devtmpfs", "/dev", "devtmpfs"),
        ("devpts", "/dev/pts", "devpts"),
        ("tmpfs", "/tmp", "tmpfs"),
        ("tmpfs", "/run", "tmpfs"),
    ] {
        if let Err(e) = mount(src, target, fs) {
            errors.push(e);
        }
    }
    let _ = std::fs::create_dir_all("/dev/shm");
    let host = b"vnfguest";
    // SAFETY: a valid buffer and its length.
    unsafe { libc::sethostname(host.as_ptr().cast(), host.len()) };
    let order = std::fs::read_to_string("/lib/modules/load-order").unwrap_or_default();
    for m in order.lines().map(str::trim).filter(|m| !m.is_empty()) {
        if let Err(e) = load_module(&format!("/lib/modules/{m}")) {
            errors.push(e);
        }
    }
    if let Err(e) = net::link_up("lo") {
        errors.push(e);
    }
    if let Some((addr, prefix)) = s.ip {
        let t = Instant::now();
        while !std::path::Path::new("/sys/class/net/eth0").exists()
            && t.elapsed() < Duration::from_secs(10)
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        if !std::path::Path::new("/sys/class/net/eth0").exists() {
            errors.push("no eth0 (virtio-net device missing?)".into());
        } else if let Err(e) = net::configure("eth0", addr, prefix) {
            errors.push(e);
        } else if let Some(gw) = s.gw {
            if let Err(e) = net::default_route(gw) {
                errors.push(e);
            }
        }
    }
    errors
}

/// What the host reads on the console when the workload has ended: this, the status, a
/// newline (`vmm::guest::WORKLOAD_EXIT`).
const WORKLOAD_EXIT: &str = "VNFHOST-WORKLOAD-EXIT status=";

/// A status from [`reap_until`] as an exit status, 0 to 255 (-1, a lost child: 255).
fn exit_status(status: i32) -> u8 {
    u8::try_from(status).unwrap_or(255)
}

/// Reaps children until `pid` exits; returns its status.
fn reap_until(pid: libc::pid_t) -> i32 {
    loop {
        let mut status = 0;
        // SAFETY: waitpid with a valid status pointer.
        let r = unsafe { libc::waitpid(-1, &mut status, 0) };
        if r == pid {
            return if libc::WIFEXITED(status) {
                libc::WEXITSTATUS(status)
            } else {
                128 + libc::WTERMSIG(status)
            };
        }
        if r < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ECHILD) {
            return -1;
        }
    }
}

fn power_off() -> ! {
    // SAFETY: sync and reboot take no pointers; as PID 1 we may power off.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_POWER_OFF);
    }
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

fn main() {
    // SAFETY: getpid has no preconditions.
    if unsafe { libc::getpid() } != 1 {
        eprintln!("vnfhost-init: not PID 1; it is the /init of a pod guest");
        std::process::exit(2);
    }
    let mut early = vec![];
    if let Err(e) = mount("proc", "/proc", "proc") {
        early.push(e);
    }
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let s = settings(&cmdline);
    let mut errors = early;
    errors.extend(setup(&s));
    // Shell settings for a program driving the console: no prompts, no job-control chatter.
    let mut shrc = String::from("PS1=''\nPS2=''\nset +m\n");
    if !s.echo {
        shrc.push_str("stty -echo 2>/dev/null\n");
        echo_off();
    }
    let _ = std::fs::create_dir_all("/etc");
    let _ = std::fs::write("/etc/shrc", shrc);
    match errors.first() {
        None => console("VNFHOST-GUEST-READY"),
        Some(_) => {
            for e in &errors {
                console(&format!("VNFHOST-GUEST-FAILED: {e}"));
            }
        }
    }
    if s.agent {
        // The virtio console driver makes the port shortly after it loads.
        let t = Instant::now();
        loop {
            if let Some(port) = agent::find_port() {
                agent::run(&port);
            }
            if t.elapsed() > Duration::from_secs(10) {
                console("VNFHOST-GUEST-FAILED: no vnfhost.agent port (virtio-serial missing?)");
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    if let Some(run) = &s.run {
        let status = match Command::new("/bin/sh").args(["-c", run]).spawn() {
            Ok(child) => reap_until(child.id() as libc::pid_t),
            Err(e) => {
                console(&format!(
                    "VNFHOST-GUEST-FAILED: cannot run the workload: {e}"
                ));
                127
            }
        };
        console(&format!("{WORKLOAD_EXIT}{}", exit_status(status)));
        // The line is in the tty's buffer: see it sent before the VM goes away.
        // SAFETY: tcdrain on fd 1, the console.
        unsafe { libc::tcdrain(1) };
        power_off();
    }
    // The shell reads its commands from the console as a script file (a second open of
    // the tty), not as its stdin: an interactive ash reading stdin with echo off uses
    // fgets(), and a SIGCHLD while it waits makes it see EOF and exit. `-i` keeps it
    // interactive: a syntax error or Ctrl-C does not end it, and it reads $ENV.
    loop {
        let child = Command::new("setsid")
            .args(["cttyhack", "sh", "-i", "/proc/self/fd/0"])
            .env("ENV", "/etc/shrc")
            .env("PATH", "/sbin:/bin:/usr/sbin:/usr/bin")
            .env("HOME", "/root")
            .stdin(Stdio::inherit())
            .spawn();
        let status = match child {
            Ok(c) => reap_until(c.id() as libc::pid_t),
            Err(e) => {
                console(&format!(
                    "VNFHOST-GUEST-FAILED: cannot start the shell: {e}"
                ));
                -1
            }
        };
        console(&format!("VNFHOST-GUEST-SHELL-EXITED status={status}"));
        std::thread::sleep(Duration::from_secs(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_words_and_quotes() {
        assert_eq!(
            words(r#"console=ttyS0 "vnf.run=ping -c 1 10.0.0.2" quiet"#),
            ["console=ttyS0", "vnf.run=ping -c 1 10.0.0.2", "quiet"]
        );
        assert!(words("  ").is_empty());
    }

    #[test]
    fn settings_from_the_command_line() {
        let s =
            settings("quiet vnf.ip=10.0.0.1/24 vnf.gw=10.0.0.254 vnf.echo=1 vnf.run=\"echo hi\"");
        assert_eq!(s.ip, Some((Ipv4Addr::new(10, 0, 0, 1), 24)));
        assert_eq!(s.gw, Some(Ipv4Addr::new(10, 0, 0, 254)));
        assert!(s.echo);
        assert_eq!(s.run.as_deref(), Some("echo hi"));
        assert!(s.errors.is_empty());
    }

    #[test]
    fn exit_statuses_fit_a_byte() {
        assert_eq!(exit_status(3), 3);
        assert_eq!(exit_status(128 + 9), 137);
        assert_eq!(exit_status(-1), 255);
    }

    #[test]
    fn bad_settings_are_reported_not_guessed() {
        let s = settings("vnf.ip=10.0.0.1 vnf.gw=banana vnf.ip=10.0.0.1/33");
        assert_eq!(s.ip, None);
        assert_eq!(s.errors.len(), 3, "{:?}", s.errors);
    }
}
