//! The guest agent: containers from their own images, driven by the host over the
//! `vnfhost.agent` virtio-serial port with the framed protocol of the `vnfhost-agent`
//! crate. Single-threaded (one `poll` loop), so a forked child may allocate before it
//! execs: nothing else holds a lock.
//!
//! A container is the image's file system (the disk the host named, ext4 or erofs,
//! read-only) under an overlay whose upper layer is a tmpfs, in its own mount, UTS and IPC
//! namespaces, with its own `/proc`, `/sys` (read-only), a minimal `/dev` (no disk and no
//! agent port in it) and `devpts`. Its processes share the VM's network namespace: the pod's.

use std::collections::HashMap;
use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use vnfhost_agent::{self as proto, Create, Decoder, Exec, Frame, Kind, Process, Stats};

/// Where containers' mounts live in the agent's own namespace.
const RUN: &str = "/run/vnf";

/// The agent's port device, once the virtio console driver made it.
pub fn find_port() -> Option<PathBuf> {
    for e in std::fs::read_dir("/sys/class/virtio-ports").ok()?.flatten() {
        let name = std::fs::read_to_string(e.path().join("name")).unwrap_or_default();
        if name.trim() == proto::PORT_NAME {
            return Some(Path::new("/dev").join(e.file_name()));
        }
    }
    None
}

/// The block device whose virtio serial number is `serial`.
fn find_disk(serial: &str) -> Result<PathBuf, String> {
    for e in std::fs::read_dir("/sys/block")
        .map_err(|e| format!("/sys/block: {e}"))?
        .flatten()
    {
        let s = std::fs::read_to_string(e.path().join("serial")).unwrap_or_default();
        if !serial.is_empty() && s.trim() == serial {
            return Ok(Path::new("/dev").join(e.file_name()));
        }
    }
    Err(format!("no disk with serial {serial:?}"))
}

fn cstr(s: impl AsRef<OsStr>) -> std::io::Result<CString> {
    CString::new(s.as_ref().as_bytes())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "NUL in a string"))
}

fn os_err(what: &str) -> String {
    format!("{what}: {}", std::io::Error::last_os_error())
}

/// mount(2).
fn mount(
    src: &str,
    target: &Path,
    fstype: &str,
    flags: libc::c_ulong,
    data: &str,
) -> std::io::Result<()> {
    let (s, t, f, d) = (cstr(src)?, cstr(target)?, cstr(fstype)?, cstr(data)?);
    // SAFETY: valid NUL-terminated strings; `data` is a string option list.
    let rc = unsafe {
        libc::mount(
            s.as_ptr(),
            t.as_ptr(),
            if fstype.is_empty() {
                std::ptr::null()
            } else {
                f.as_ptr()
            },
            flags,
            if data.is_empty() {
                std::ptr::null()
            } else {
                d.as_ptr().cast()
            },
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn umount(target: &Path) {
    if let Ok(t) = cstr(target) {
        // SAFETY: a valid path.
        unsafe { libc::umount2(t.as_ptr(), libc::MNT_DETACH) };
    }
}

/// Drops what the kernel cached of a disk (the host rewrites a slot between containers;
/// the probe at boot read its first blocks).
fn flush_buffers(dev: &Path) {
    if let Ok(f) = File::open(dev) {
        /// `_IO(0x12, 97)` from `<linux/fs.h>`.
        const BLKFLSBUF: libc::Ioctl = 0x1261;
        // SAFETY: BLKFLSBUF takes no argument on an open block device.
        unsafe { libc::ioctl(f.as_raw_fd(), BLKFLSBUF, 0) };
    }
}

fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: a two-element array for pipe2.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: pipe2 returned two new descriptors we own.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn nonblocking(fd: RawFd) {
    // SAFETY: fcntl on a descriptor we own.
    unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK);
    }
}

/// A pseudo-terminal of the container whose first process is `pid` (its own devpts, so
/// that `tty` and `ttyname` work inside it): (master, slave). The slave is opened from
/// the master (TIOCGPTPEER), never by a path inside the container.
fn openpty_in(pid: libc::pid_t, size: Option<(u16, u16)>) -> std::io::Result<(OwnedFd, OwnedFd)> {
    let ptmx = cstr(format!("/proc/{pid}/root/dev/pts/ptmx"))?;
    // SAFETY: open and ioctls on descriptors we own; the winsize is a local.
    unsafe {
        let m = libc::open(
            ptmx.as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        );
        if m < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let m = OwnedFd::from_raw_fd(m);
        let unlock: libc::c_int = 0;
        check(libc::ioctl(m.as_raw_fd(), libc::TIOCSPTLCK, &unlock))?;
        let s = libc::ioctl(
            m.as_raw_fd(),
            libc::TIOCGPTPEER,
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        );
        if s < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let s = OwnedFd::from_raw_fd(s);
        if let Some((r, c)) = size {
            let ws = libc::winsize {
                ws_row: r,
                ws_col: c,
                ws_xpixel: 0,
                ws_ypixel: 0,
            };
            libc::ioctl(m.as_raw_fd(), libc::TIOCSWINSZ, &ws);
        }
        Ok((m, s))
    }
}

/// A pseudo-terminal of the guest's own devpts (for a container's first process, made
/// before its namespaces exist): (master, slave).
fn openpty(size: Option<(u16, u16)>) -> std::io::Result<(OwnedFd, OwnedFd)> {
    let (mut m, mut s) = (0, 0);
    let ws = size.map(|(r, c)| libc::winsize {
        ws_row: r,
        ws_col: c,
        ws_xpixel: 0,
        ws_ypixel: 0,
    });
    let wp = ws
        .as_ref()
        .map_or(std::ptr::null(), |w| w as *const libc::winsize);
    // SAFETY: out-pointers to two ints; no name buffer; optional winsize.
    if unsafe { libc::openpty(&mut m, &mut s, std::ptr::null_mut(), std::ptr::null(), wp) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: openpty returned two new descriptors we own.
    let (m, s) = unsafe { (OwnedFd::from_raw_fd(m), OwnedFd::from_raw_fd(s)) };
    for fd in [m.as_raw_fd(), s.as_raw_fd()] {
        // SAFETY: fcntl on descriptors we own.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    Ok((m, s))
}

struct Proc {
    pid: Option<libc::pid_t>,
    /// The first process of its container (itself for a container's own).
    container: u32,
    spec: Process,
    stdin: Option<OwnedFd>,
    pending_in: Vec<u8>,
    close_in: bool,
    out: Option<OwnedFd>,
    err: Option<OwnedFd>,
    /// Its terminal's master (also `out` and `stdin`, duplicated).
    pty: Option<OwnedFd>,
    exit: Option<i32>,
    exit_sent: bool,
    /// Why it could not start, sent as its standard error.
    note: Vec<u8>,
}

struct Container {
    dir: PathBuf,
    disk: PathBuf,
    create: Create,
    /// The mount namespace of its first process, to find all its processes.
    mnt_ns: Option<String>,
    /// Its volumes' disks (open), mount paths and whether read-only.
    volumes: Vec<(File, String, bool)>,
}

struct Agent {
    port: File,
    dec: Decoder,
    procs: HashMap<u32, Proc>,
    containers: HashMap<u32, Container>,
    sigfd: OwnedFd,
    /// Read buffer for the port and the processes' output, reused.
    buf: Vec<u8>,
}

/// Runs the agent on `port` for ever.
pub fn run(port: &Path) -> ! {
    let port = loop {
        match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(port)
        {
            Ok(f) => break f,
            Err(e) => {
                crate::console(&format!("VNFHOST-AGENT: {}: {e}", port.display()));
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    };
    nonblocking(port.as_raw_fd());
    // SIGCHLD through a signalfd, so the loop sees it with the rest.
    // SAFETY: a sigset built with sigemptyset/sigaddset, blocked before the signalfd.
    let sigfd = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGCHLD);
        libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        let fd = libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC);
        OwnedFd::from_raw_fd(fd)
    };
    let _ = std::fs::create_dir_all(RUN);
    let mut a = Agent {
        port,
        dec: Decoder::default(),
        procs: HashMap::new(),
        containers: HashMap::new(),
        sigfd,
        buf: vec![0u8; proto::MAX_DATA],
    };
    crate::console("VNFHOST-AGENT-READY");
    loop {
        a.turn();
    }
}

impl Agent {
    fn send(&mut self, kind: Kind, p: u32, payload: &[u8]) {
        // The port is non-blocking for reads; a write that finds it full waits here.
        let frame = proto::encode(kind, p, payload);
        let mut off = 0;
        while off < frame.len() {
            match self.port.write(&frame[off..]) {
                Ok(n) => off += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    let mut pfd = libc::pollfd {
                        fd: self.port.as_raw_fd(),
                        events: libc::POLLOUT,
                        revents: 0,
                    };
                    // SAFETY: one pollfd.
                    unsafe { libc::poll(&mut pfd, 1, 1000) };
                    if pfd.revents & libc::POLLHUP != 0 {
                        // No host on the other end: what it would have read is lost, and
                        // the loop goes on serving the processes (no spinning here).
                        return;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                // The host is not connected: what it would have read is lost.
                Err(_) => return,
            }
        }
    }

    fn reply(&mut self, p: u32, r: Result<Vec<u8>, String>) {
        match r {
            Ok(b) => self.send(Kind::Ok, p, &b),
            Err(e) => self.send(Kind::Error, p, e.as_bytes()),
        }
    }

    fn turn(&mut self) {
        let mut fds = vec![
            libc::pollfd {
                fd: self.port.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: self.sigfd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let mut who = vec![];
        for (&p, pr) in &self.procs {
            for (fd, ev) in [
                (pr.out.as_ref(), libc::POLLIN),
                (pr.err.as_ref(), libc::POLLIN),
                (
                    pr.stdin.as_ref().filter(|_| !pr.pending_in.is_empty()),
                    libc::POLLOUT,
                ),
            ] {
                if let Some(fd) = fd {
                    fds.push(libc::pollfd {
                        fd: fd.as_raw_fd(),
                        events: ev,
                        revents: 0,
                    });
                    who.push(p);
                }
            }
        }
        // SAFETY: a vector of pollfds and its length.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if n < 0 {
            return;
        }
        if fds[0].revents & libc::POLLIN != 0 {
            self.read_port();
        } else if fds[0].revents & libc::POLLHUP != 0 {
            // No host on the other end: wait for one without spinning.
            std::thread::sleep(Duration::from_millis(100));
        }
        if fds[1].revents != 0 {
            let mut buf = [0u8; 128 * 8];
            // SAFETY: draining the signalfd into a buffer of whole siginfos.
            while unsafe { libc::read(self.sigfd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) }
                > 0
            {}
            self.reap();
        }
        for (i, pfd) in fds.iter().enumerate().skip(2) {
            if pfd.revents == 0 {
                continue;
            }
            let p = who[i - 2];
            if pfd.events == libc::POLLOUT {
                self.write_stdin(p);
            } else {
                self.pump(p, pfd.fd);
            }
        }
        self.report_exits();
    }

    fn read_port(&mut self) {
        loop {
            match self.port.read(&mut self.buf) {
                Ok(0) => {
                    std::thread::sleep(Duration::from_millis(100));
                    break;
                }
                Ok(n) => self.dec.push(&self.buf[..n]),
                Err(_) => break,
            }
        }
        loop {
            match self.dec.next_frame() {
                None => break,
                Some(Ok(f)) => self.handle(f),
                Some(Err(proto::FrameError::UnknownKind(k))) => {
                    self.send(Kind::Error, 0, format!("unknown frame kind {k}").as_bytes());
                }
                Some(Err(e)) => {
                    // The stream is out of step: drop what is buffered and start again.
                    crate::console(&format!("VNFHOST-AGENT: {e}; input dropped"));
                    self.dec = Decoder::default();
                    break;
                }
            }
        }
    }

    fn handle(&mut self, f: Frame) {
        let p = f.proc_id;
        match f.kind {
            Kind::Hello => self.send(Kind::Ok, p, proto::VERSION.as_bytes()),
            Kind::Create => {
                let r = serde_json::from_slice::<Create>(&f.payload)
                    .map_err(|e| format!("create: {e}"))
                    .and_then(|c| self.create(p, c));
                self.reply(p, r.map(|()| vec![]));
            }
            Kind::Start => {
                let r = self.start(p);
                self.reply(p, r.map(|()| vec![]));
                self.report_exits();
            }
            Kind::Exec => {
                let r = serde_json::from_slice::<Exec>(&f.payload)
                    .map_err(|e| format!("exec: {e}"))
                    .and_then(|e| self.exec(p, e));
                self.reply(p, r.map(|()| vec![]));
                self.report_exits();
            }
            Kind::Signal => {
                let r = match (
                    <[u8; 4]>::try_from(&f.payload[..]),
                    self.procs
                        .get(&p)
                        .and_then(|pr| pr.pid.filter(|_| pr.exit.is_none())),
                ) {
                    (Err(_), _) => Err("signal: expected a u32".into()),
                    (Ok(_), None) => Err(format!("process {p} is not running")),
                    (Ok(s), Some(pid)) => {
                        // SAFETY: kill(2) on a child of ours that is not reaped yet.
                        if unsafe { libc::kill(pid, u32::from_le_bytes(s) as i32) } == 0 {
                            Ok(vec![])
                        } else {
                            Err(os_err("kill"))
                        }
                    }
                };
                self.reply(p, r);
            }
            Kind::Resize => {
                let r = match (
                    f.payload.len(),
                    self.procs.get(&p).and_then(|pr| pr.pty.as_ref()),
                ) {
                    (4, Some(m)) => {
                        let ws = libc::winsize {
                            ws_row: u16::from_le_bytes([f.payload[0], f.payload[1]]),
                            ws_col: u16::from_le_bytes([f.payload[2], f.payload[3]]),
                            ws_xpixel: 0,
                            ws_ypixel: 0,
                        };
                        // SAFETY: TIOCSWINSZ with a winsize on a pty master we own.
                        unsafe { libc::ioctl(m.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
                        Ok(vec![])
                    }
                    (4, None) => Err(format!("process {p} has no terminal")),
                    _ => Err("resize: expected rows and columns".into()),
                };
                self.reply(p, r);
            }
            Kind::Stdin => {
                if let Some(pr) = self.procs.get_mut(&p) {
                    if pr.stdin.is_some() && !pr.close_in {
                        pr.pending_in.extend_from_slice(&f.payload);
                        self.write_stdin(p);
                    }
                }
            }
            Kind::CloseStdin => {
                let r = match self.procs.get_mut(&p) {
                    Some(pr) => {
                        pr.close_in = true;
                        Ok(vec![])
                    }
                    None => Err(format!("no process {p}")),
                };
                self.write_stdin(p);
                self.reply(p, r);
            }
            Kind::Destroy => {
                let r = self.destroy(p);
                self.reply(p, r.map(|()| vec![]));
            }
            Kind::Stats => {
                let r = self.stats(p);
                self.reply(p, r);
            }
            _ => self.reply(p, Err(format!("{:?} is not a request", f.kind))),
        }
    }

    fn create(&mut self, p: u32, c: Create) -> Result<(), String> {
        if self.procs.contains_key(&p) || self.containers.contains_key(&p) {
            return Err(format!("process number {p} is taken"));
        }
        if c.process.args.is_empty() {
            return Err("the container's process has no args".into());
        }
        let mut volumes = vec![];
        for v in &c.volumes {
            if !v.path.starts_with('/') || v.path.split('/').any(|s| s == "..") {
                return Err(format!(
                    "volume {:?}: not an absolute path without ..",
                    v.path
                ));
            }
            let dev = find_disk(&v.disk)?;
            flush_buffers(&dev);
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(!v.read_only)
                .open(&dev)
                .map_err(|e| format!("volume {}: {e}", dev.display()))?;
            volumes.push((f, v.path.clone(), v.read_only));
        }
        for f in &c.files {
            if !f.path.starts_with('/') || f.path.split('/').any(|s| s == "..") {
                return Err(format!(
                    "file {:?}: not an absolute path without ..",
                    f.path
                ));
            }
        }
        let disk = find_disk(&c.disk)?;
        let dir = Path::new(RUN).join(format!("c{p}"));
        let (lower, rw, root) = (dir.join("lower"), dir.join("rw"), dir.join("root"));
        for d in [&lower, &rw, &root] {
            std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
        }
        flush_buffers(&disk);
        let dev = disk.to_string_lossy().into_owned();
        let ro = libc::MS_RDONLY | libc::MS_NODEV;
        if let Err(e4) = mount(&dev, &lower, "ext4", ro, "noload") {
            if let Err(e) = mount(&dev, &lower, "erofs", ro, "") {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(format!(
                    "the image on {dev} is neither ext4 ({e4}) nor erofs ({e})"
                ));
            }
        }
        let undo = |dir: &Path| {
            for m in ["root", "rw", "lower"] {
                umount(&dir.join(m));
            }
            let _ = std::fs::remove_dir_all(dir);
        };
        let layered = mount("tmpfs", &rw, "tmpfs", libc::MS_NODEV, "mode=0755")
            .and_then(|()| std::fs::create_dir_all(rw.join("upper")))
            .and_then(|()| std::fs::create_dir_all(rw.join("work")))
            .and_then(|()| {
                mount(
                    "overlay",
                    &root,
                    "overlay",
                    0,
                    &format!(
                        "lowerdir={},upperdir={},workdir={}",
                        lower.display(),
                        rw.join("upper").display(),
                        rw.join("work").display()
                    ),
                )
            });
        if let Err(e) = layered {
            undo(&dir);
            return Err(format!("the container's overlay: {e}"));
        }
        self.procs.insert(p, new_proc(p, c.process.clone()));
        self.containers.insert(
            p,
            Container {
                dir,
                disk,
                create: c,
                mnt_ns: None,
                volumes,
            },
        );
        Ok(())
    }

    fn start(&mut self, p: u32) -> Result<(), String> {
        let c = self.containers.get(&p).ok_or(format!("no container {p}"))?;
        let pr = self.procs.get(&p).ok_or(format!("no process {p}"))?;
        if pr.pid.is_some() || pr.exit.is_some() {
            return Err(format!("container {p} was started already"));
        }
        let root = c.dir.join("root");
        let files = c.create.files.clone();
        let hostname = c.create.hostname.clone();
        let vols: Vec<(RawFd, String, bool)> = c
            .volumes
            .iter()
            .map(|(f, p, ro)| (f.as_raw_fd(), p.clone(), *ro))
            .collect();
        let setup = move || -> std::io::Result<()> {
            enter_new_root(&root)?;
            container_mounts()?;
            for (fd, path, ro) in &vols {
                mount_volume(*fd, path, *ro)?;
            }
            for f in &files {
                put_file(f)?;
            }
            if let Some(h) = &hostname {
                // SAFETY: a buffer and its length.
                if unsafe { libc::sethostname(h.as_ptr().cast(), h.len()) } != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        };
        self.spawn(p, Box::new(setup));
        if let Some(pid) = self.procs.get(&p).and_then(|pr| pr.pid) {
            let ns = std::fs::read_link(format!("/proc/{pid}/ns/mnt"))
                .ok()
                .map(|l| l.to_string_lossy().into_owned());
            if let Some(c) = self.containers.get_mut(&p) {
                c.mnt_ns = ns;
            }
        }
        Ok(())
    }

    fn exec(&mut self, p: u32, e: Exec) -> Result<(), String> {
        if self.procs.contains_key(&p) {
            return Err(format!("process number {p} is taken"));
        }
        if e.process.args.is_empty() {
            return Err("the process has no args".into());
        }
        let init = self
            .procs
            .get(&e.container)
            .filter(|_| self.containers.contains_key(&e.container))
            .ok_or(format!("no container {}", e.container))?;
        let pid = match (init.pid, init.exit) {
            (Some(pid), None) => pid,
            _ => return Err(format!("container {} is not running", e.container)),
        };
        let mut ns = vec![];
        for n in ["ipc", "uts", "mnt"] {
            let f = File::open(format!("/proc/{pid}/ns/{n}"))
                .map_err(|err| format!("the container's {n} namespace: {err}"))?;
            ns.push(f);
        }
        // Its root as its first process sees it: entering the mount namespace alone
        // would leave this process at the namespace's root (the initramfs under it).
        let root = File::open(format!("/proc/{pid}/root"))
            .map_err(|err| format!("the container's root: {err}"))?;
        self.procs.insert(p, new_proc(e.container, e.process));
        let setup = move || -> std::io::Result<()> {
            for f in &ns {
                // SAFETY: setns on a namespace file we opened.
                check(unsafe { libc::setns(f.as_raw_fd(), 0) })?;
            }
            // SAFETY: a directory descriptor we opened, then paths that are constants.
            unsafe {
                check(libc::fchdir(root.as_raw_fd()))?;
                check(libc::chroot(c".".as_ptr()))?;
                check(libc::chdir(c"/".as_ptr()))?;
            }
            Ok(())
        };
        self.spawn(p, Box::new(setup));
        Ok(())
    }

    /// Starts process `p`: `setup` runs in the child first (namespaces, root), then the
    /// session and terminal, the user, the working directory, and the executable.
    #[allow(clippy::type_complexity)]
    fn spawn(&mut self, p: u32, setup: Box<dyn FnMut() -> std::io::Result<()> + Send + Sync>) {
        let Some(container) = self.procs.get(&p).map(|pr| pr.container) else {
            return;
        };
        // An exec's terminal comes from its container's devpts.
        let in_container = self
            .procs
            .get(&container)
            .filter(|_| container != p)
            .and_then(|c| c.pid);
        let Some(pr) = self.procs.get_mut(&p) else {
            return;
        };
        let spec = pr.spec.clone();
        let result = (|| -> std::io::Result<(Stdio, Stdio, Stdio)> {
            if spec.terminal {
                let (m, s) = match in_container {
                    Some(pid) => openpty_in(pid, spec.size)?,
                    None => openpty(spec.size)?,
                };
                let out = m.try_clone()?;
                let inp = m.try_clone()?;
                nonblocking(out.as_raw_fd());
                pr.out = Some(out);
                pr.stdin = spec.stdin.then_some(inp);
                pr.pty = Some(m);
                Ok((s.try_clone()?.into(), s.try_clone()?.into(), s.into()))
            } else {
                let (or, ow) = pipe()?;
                let (er, ew) = pipe()?;
                nonblocking(or.as_raw_fd());
                nonblocking(er.as_raw_fd());
                pr.out = Some(or);
                pr.err = Some(er);
                let stdin = if spec.stdin {
                    let (ir, iw) = pipe()?;
                    nonblocking(iw.as_raw_fd());
                    pr.stdin = Some(iw);
                    Stdio::from(ir)
                } else {
                    Stdio::null()
                };
                Ok((stdin, ow.into(), ew.into()))
            }
        })();
        let (i, o, e) = match result {
            Ok(x) => x,
            Err(err) => {
                self.failed(
                    p,
                    128,
                    &format!("vnfhost-init: the process's stdio: {err}\n"),
                );
                return;
            }
        };
        let mut cmd = Command::new(&spec.args[0]);
        cmd.args(&spec.args[1..])
            .env_clear()
            .stdin(i)
            .stdout(o)
            .stderr(e);
        for kv in &spec.env {
            if let Some((k, v)) = kv.split_once('=') {
                cmd.env(k, v);
            }
        }
        let cwd = if spec.cwd.is_empty() {
            "/".to_string()
        } else {
            spec.cwd.clone()
        };
        let (uid, gid, groups, tty) = (
            spec.uid,
            spec.gid,
            spec.additional_gids.clone(),
            spec.terminal,
        );
        let mut setup = setup;
        // SAFETY: the agent is single-threaded, so the child may allocate; every call
        // below only affects the child.
        unsafe {
            cmd.pre_exec(move || {
                let say = |what: &str, e: &std::io::Error| {
                    let m = format!("vnfhost-init: {what}: {e}\n");
                    libc::write(2, m.as_ptr().cast(), m.len());
                };
                if let Err(e) = setup() {
                    say("setting up the container", &e);
                    return Err(e);
                }
                libc::setsid();
                if tty && libc::ioctl(0, libc::TIOCSCTTY, 0) != 0 {
                    let e = std::io::Error::last_os_error();
                    say("the terminal", &e);
                    return Err(e);
                }
                if libc::setgroups(groups.len(), groups.as_ptr()) != 0
                    || libc::setgid(gid) != 0
                    || libc::setuid(uid) != 0
                {
                    let e = std::io::Error::last_os_error();
                    say(&format!("becoming {uid}:{gid}"), &e);
                    return Err(e);
                }
                if let Err(e) = std::env::set_current_dir(&cwd) {
                    say(&format!("working directory {cwd:?}"), &e);
                    return Err(e);
                }
                Ok(())
            });
        }
        match cmd.spawn() {
            Ok(child) => {
                if let Some(pr) = self.procs.get_mut(&p) {
                    pr.pid = Some(child.id() as libc::pid_t);
                }
                // The child is reaped by the loop (waitpid(-1)), not by `Child`.
                std::mem::forget(child);
            }
            Err(err) => {
                let code = match err.raw_os_error() {
                    Some(libc::ENOENT) | Some(libc::ENOTDIR) => 127,
                    Some(libc::EACCES) | Some(libc::ENOEXEC) | Some(libc::EISDIR) => 126,
                    _ => 128,
                };
                // What the child said before it gave up comes first.
                let mut msg = vec![0u8; 4096];
                let said = self
                    .procs
                    .get(&p)
                    .and_then(|pr| pr.err.as_ref().or(pr.out.as_ref()))
                    // SAFETY: a non-blocking read into a live buffer.
                    .map(|fd| unsafe {
                        libc::read(fd.as_raw_fd(), msg.as_mut_ptr().cast(), msg.len())
                    })
                    .unwrap_or(0);
                msg.truncate(said.max(0) as usize);
                if said <= 0 {
                    msg = format!("vnfhost-init: cannot run {:?}: {err}\n", spec.args[0])
                        .into_bytes();
                }
                self.failed(p, code, &String::from_utf8_lossy(&msg));
            }
        }
    }

    /// Process `p` could not start: it "exits" with `code`, `msg` on its standard error.
    fn failed(&mut self, p: u32, code: i32, msg: &str) {
        if let Some(pr) = self.procs.get_mut(&p) {
            pr.stdin = None;
            pr.out = None;
            pr.err = None;
            pr.pty = None;
            pr.exit = Some(code);
            // Sent after the reply to Start/Exec (report_exits runs after it).
            pr.note = msg.as_bytes().to_vec();
        }
    }

    fn write_stdin(&mut self, p: u32) {
        let Some(pr) = self.procs.get_mut(&p) else {
            return;
        };
        if pr.pid.is_none() {
            return;
        }
        if let Some(fd) = pr.stdin.as_ref() {
            while !pr.pending_in.is_empty() {
                // SAFETY: writing from a live buffer to a descriptor we own.
                let n = unsafe {
                    libc::write(
                        fd.as_raw_fd(),
                        pr.pending_in.as_ptr().cast(),
                        pr.pending_in.len(),
                    )
                };
                if n <= 0 {
                    if std::io::Error::last_os_error().kind() == std::io::ErrorKind::WouldBlock {
                        return;
                    }
                    // The reader is gone: what is left is dropped.
                    pr.pending_in.clear();
                    break;
                }
                pr.pending_in.drain(..n as usize);
            }
        }
        if pr.close_in && pr.pending_in.is_empty() {
            if pr.pty.is_some() {
                // A terminal's end of input is its EOF character (^D).
                if let Some(fd) = pr.stdin.as_ref() {
                    // SAFETY: one byte from a static buffer.
                    unsafe { libc::write(fd.as_raw_fd(), [4u8].as_ptr().cast(), 1) };
                }
            }
            pr.stdin = None;
        }
    }

    /// Forwards what process `p` wrote on `fd`.
    fn pump(&mut self, p: u32, fd: RawFd) {
        let mut buf = std::mem::take(&mut self.buf);
        self.pump_with(p, fd, &mut buf);
        self.buf = buf;
    }

    fn pump_with(&mut self, p: u32, fd: RawFd, buf: &mut [u8]) {
        let Some(pr) = self.procs.get(&p) else {
            return;
        };
        let kind = if pr.out.as_ref().map(|f| f.as_raw_fd()) == Some(fd) {
            Kind::Stdout
        } else {
            Kind::Stderr
        };
        for _ in 0..16 {
            // SAFETY: reading into a live buffer from a descriptor we own.
            let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
            if n > 0 {
                self.send(kind, p, &buf[..n as usize]);
                continue;
            }
            if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::WouldBlock {
                return;
            }
            // End of the stream (EIO: a terminal whose last user closed it).
            if let Some(pr) = self.procs.get_mut(&p) {
                if kind == Kind::Stdout {
                    pr.out = None;
                } else {
                    pr.err = None;
                }
            }
            self.send(kind, p, &[]);
            return;
        }
    }

    fn reap(&mut self) {
        loop {
            let mut status = 0;
            // SAFETY: waitpid with a valid status pointer.
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if pid <= 0 {
                return;
            }
            let code = if libc::WIFEXITED(status) {
                libc::WEXITSTATUS(status)
            } else {
                128 + libc::WTERMSIG(status)
            };
            if let Some(pr) = self.procs.values_mut().find(|pr| pr.pid == Some(pid)) {
                pr.exit = Some(code);
            }
        }
    }

    /// Sends the exits not sent yet, after the output that was already written.
    fn report_exits(&mut self) {
        let done: Vec<u32> = self
            .procs
            .iter()
            .filter(|(_, pr)| pr.exit.is_some() && !pr.exit_sent)
            .map(|(&p, _)| p)
            .collect();
        for p in done {
            let fds: Vec<RawFd> = {
                let pr = &self.procs[&p];
                [pr.out.as_ref(), pr.err.as_ref()]
                    .into_iter()
                    .flatten()
                    .map(|f| f.as_raw_fd())
                    .collect()
            };
            for fd in fds {
                self.pump(p, fd);
            }
            let Some(pr) = self.procs.get_mut(&p) else {
                continue;
            };
            pr.exit_sent = true;
            let code = pr.exit.unwrap_or(255);
            let never_ran = pr.pid.is_none();
            let msg = std::mem::take(&mut pr.note);
            pr.stdin = None;
            pr.pending_in.clear();
            if never_ran {
                if !msg.is_empty() {
                    self.send(Kind::Stderr, p, &msg);
                }
                self.send(Kind::Stdout, p, &[]);
                self.send(Kind::Stderr, p, &[]);
            }
            self.send(Kind::Exit, p, &code.to_le_bytes());
            // A container ends with its first process: the others go with it.
            if self.containers.contains_key(&p) {
                self.kill_container(p);
            }
        }
    }

    /// The pids in container `p`'s mount namespace.
    fn container_pids(&self, p: u32) -> Vec<libc::pid_t> {
        let Some(ns) = self.containers.get(&p).and_then(|c| c.mnt_ns.clone()) else {
            return vec![];
        };
        let mut out = vec![];
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<libc::pid_t>() else {
                continue;
            };
            if std::fs::read_link(e.path().join("ns/mnt"))
                .map(|l| l.to_string_lossy() == ns)
                .unwrap_or(false)
            {
                out.push(pid);
            }
        }
        out
    }

    fn kill_container(&mut self, p: u32) {
        for pid in self.container_pids(p) {
            // SAFETY: kill(2) on a process of this container.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }

    fn destroy(&mut self, p: u32) -> Result<(), String> {
        let c = self.containers.get(&p).ok_or(format!("no container {p}"))?;
        let (dir, disk) = (c.dir.clone(), c.disk.clone());
        self.kill_container(p);
        if let Some(pid) = self
            .procs
            .get(&p)
            .and_then(|pr| pr.pid.filter(|_| pr.exit.is_none()))
        {
            // SAFETY: kill(2) on a child of ours that is not reaped yet.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        for m in ["root", "rw", "lower"] {
            umount(&dir.join(m));
        }
        let _ = std::fs::remove_dir_all(&dir);
        flush_buffers(&disk);
        self.containers.remove(&p);
        self.procs.retain(|_, pr| pr.container != p);
        Ok(())
    }

    fn stats(&self, p: u32) -> Result<Vec<u8>, String> {
        let c = self.containers.get(&p).ok_or(format!("no container {p}"))?;
        let mut s = Stats::default();
        // SAFETY: sysconf has no preconditions.
        let (tick, page) = unsafe {
            (
                libc::sysconf(libc::_SC_CLK_TCK).max(1) as u64,
                libc::sysconf(libc::_SC_PAGESIZE).max(1) as u64,
            )
        };
        for pid in self.container_pids(p) {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // Fields after the command name (which may hold spaces): state is the first.
            let rest = stat.rsplit_once(')').map(|x| x.1).unwrap_or("");
            let f: Vec<&str> = rest.split_whitespace().collect();
            let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            // utime, stime are fields 14 and 15 of stat; rss is 24 (1-based, with pid
            // and comm): here 11, 12 and 21.
            s.cpu_ns += (num(11) + num(12)) * 1_000_000_000 / tick;
            s.rss_bytes += num(21) * page;
            s.pids += 1;
        }
        let rw = cstr(c.dir.join("rw")).map_err(|e| e.to_string())?;
        // SAFETY: statfs into a zeroed struct with a valid path.
        unsafe {
            let mut st: libc::statfs = std::mem::zeroed();
            if libc::statfs(rw.as_ptr(), &mut st) == 0 {
                s.rw_bytes = (st.f_blocks - st.f_bfree) * st.f_bsize as u64;
            }
        }
        serde_json::to_vec(&s).map_err(|e| e.to_string())
    }
}

fn new_proc(container: u32, spec: Process) -> Proc {
    Proc {
        pid: None,
        container,
        spec,
        stdin: None,
        pending_in: vec![],
        close_in: false,
        out: None,
        err: None,
        pty: None,
        exit: None,
        exit_sent: false,
        note: vec![],
    }
}

fn check(rc: libc::c_int) -> std::io::Result<()> {
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// In the child: own namespaces, and `root` as `/`. The guest's own root is the
/// initramfs, which `pivot_root` refuses (EINVAL), so the container's root is moved over
/// `/` and entered with `chroot`, as runc does without pivot_root; in a mount namespace of
/// its own the initramfs underneath is out of reach.
fn enter_new_root(root: &Path) -> std::io::Result<()> {
    let r = cstr(root)?;
    // SAFETY: namespace and mount calls with valid NUL-terminated strings; they only
    // change this (child) process.
    unsafe {
        check(libc::unshare(
            libc::CLONE_NEWNS | libc::CLONE_NEWUTS | libc::CLONE_NEWIPC,
        ))?;
        check(libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ))?;
        check(libc::chdir(r.as_ptr()))?;
        check(libc::mount(
            c".".as_ptr(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_MOVE,
            std::ptr::null(),
        ))?;
        check(libc::chroot(c".".as_ptr()))?;
        check(libc::chdir(c"/".as_ptr()))?;
    }
    Ok(())
}

/// In the child, inside its root: `/proc`, `/sys`, `/dev`.
fn container_mounts() -> std::io::Result<()> {
    let nodev = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    let mk = |d: &str| std::fs::create_dir_all(d);
    mk("/proc")?;
    mount("proc", Path::new("/proc"), "proc", nodev, "")?;
    mk("/sys")?;
    mount(
        "sysfs",
        Path::new("/sys"),
        "sysfs",
        nodev | libc::MS_RDONLY,
        "",
    )?;
    mk("/dev")?;
    mount(
        "tmpfs",
        Path::new("/dev"),
        "tmpfs",
        libc::MS_NOSUID,
        "mode=0755",
    )?;
    for (name, major, minor) in [
        ("null", 1, 3),
        ("zero", 1, 5),
        ("full", 1, 7),
        ("random", 1, 8),
        ("urandom", 1, 9),
        ("tty", 5, 0),
    ] {
        let p = cstr(format!("/dev/{name}"))?;
        // SAFETY: mknod of a character device at a valid path.
        unsafe {
            check(libc::mknod(
                p.as_ptr(),
                libc::S_IFCHR | 0o666,
                libc::makedev(major, minor),
            ))?;
            libc::chmod(p.as_ptr(), 0o666);
        }
    }
    mk("/dev/pts")?;
    mount(
        "devpts",
        Path::new("/dev/pts"),
        "devpts",
        libc::MS_NOSUID | libc::MS_NOEXEC,
        "newinstance,ptmxmode=0666,mode=0620",
    )?;
    std::os::unix::fs::symlink("pts/ptmx", "/dev/ptmx")?;
    mk("/dev/shm")?;
    mount("shm", Path::new("/dev/shm"), "tmpfs", nodev, "mode=1777")?;
    mk("/dev/mqueue")?;
    let _ = mount("mqueue", Path::new("/dev/mqueue"), "mqueue", nodev, "");
    for (l, t) in [
        ("/dev/fd", "/proc/self/fd"),
        ("/dev/stdin", "/proc/self/fd/0"),
        ("/dev/stdout", "/proc/self/fd/1"),
        ("/dev/stderr", "/proc/self/fd/2"),
    ] {
        std::os::unix::fs::symlink(t, l)?;
    }
    Ok(())
}

/// In the child, inside its root: the disk open as `fd` (a volume) mounted at `path`.
/// The device is reached through `/proc/self/fd`: the container's `/dev` has no disks.
fn mount_volume(fd: RawFd, path: &str, ro: bool) -> std::io::Result<()> {
    std::fs::create_dir_all(path)?;
    let src = format!("/proc/self/fd/{fd}");
    let flags = libc::MS_NODEV | libc::MS_NOSUID | if ro { libc::MS_RDONLY } else { 0 };
    let mut last = None;
    for fs in ["ext4", "xfs", "btrfs", "erofs", "vfat"] {
        match mount(&src, Path::new(path), fs, flags, "") {
            Ok(()) => return Ok(()),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no file system")))
}

/// In the child, inside its root (so a symlink in the image resolves inside it): one file.
fn put_file(f: &vnfhost_agent::File) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let p = Path::new(&f.path);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent)?;
    }
    // What the image has there (often a symlink, such as /etc/resolv.conf) is replaced.
    let _ = std::fs::remove_file(p);
    std::fs::write(p, &f.content)?;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(f.mode & 0o7777))
}
