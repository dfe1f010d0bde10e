//! The uplink rate: how many VXLAN frames per second one core puts on a veth through
//! vnfhost's `AF_PACKET` uplink, against the Linux kernel's own `vxlan` device on the
//! same kind of veth pair.
//!
//! Each side runs in network namespaces made for it: the sending node's namespace holds
//! veth `ua` (192.168.98.1/24), whose peer `ub` (192.168.98.2/24) sits in a second
//! namespace; what arrives on `ub` is counted (its receive counter, read before and
//! after the trial).
//!
//! - **vnfhost**: `vnfhost switch` on CPU 0 in the node's namespace, with the uplink on
//!   `ua` and a tunnel to 192.168.98.2 on VNI 100; our virtio-user generator (CPU 1)
//!   offers 64-byte frames to the pod port as fast as the switch takes them.
//! - **kernel**: in a fresh node namespace, a `vxlan` device (VNI 100, `dev ua`,
//!   remote 192.168.98.2) in a bridge with veth `kf`; a sender on CPU 0 writes 64-byte
//!   frames into the peer of `kf` with one `sendmmsg` per 64 frames. The kernel
//!   bridges, encapsulates and sends them on the sender's CPU (a veth delivers in the
//!   sender's context), so CPU 0 is the kernel's core as it is vnfhost's.
//!
//! The receive direction (decapsulation from the wire) is not measured here.

use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use crate::p2p::stats;

/// What to run.
#[derive(Clone, Debug)]
pub struct UplinkConfig {
    /// The `vnfhost` binary.
    pub vnfhost: std::path::PathBuf,
    /// Counted rounds (each side one trial per round).
    pub rounds: u32,
    /// Length of a trial.
    pub trial: Duration,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let o = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if o.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr)
        ))
    }
}

/// Namespaces removed on drop.
struct Nets(Vec<String>);

impl Drop for Nets {
    fn drop(&mut self) {
        for n in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", n]).output();
        }
    }
}

/// Node namespace `a` with `ua` at .1, its peer `ub` at .2 in namespace `b`.
fn pair(a: &str, b: &str) -> Result<Nets, String> {
    for n in [a, b] {
        let _ = Command::new("ip").args(["netns", "del", n]).output();
        ip(&["netns", "add", n])?;
    }
    let nets = Nets(vec![a.into(), b.into()]);
    ip(&[
        "link", "add", "ua", "netns", a, "type", "veth", "peer", "name", "ub", "netns", b,
    ])?;
    ip(&["-n", a, "addr", "add", "192.168.98.1/24", "dev", "ua"])?;
    ip(&["-n", b, "addr", "add", "192.168.98.2/24", "dev", "ub"])?;
    for (n, l) in [(a, "ua"), (b, "ub"), (a, "lo"), (b, "lo")] {
        ip(&["-n", n, "link", "set", l, "up"])?;
    }
    Ok(nets)
}

fn rx_packets(ns: &str, dev: &str) -> u64 {
    Command::new("ip")
        .args(["netns", "exec", ns, "cat"])
        .arg(format!("/sys/class/net/{dev}/statistics/rx_packets"))
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(0)
}

/// A 64-byte frame (60 without FCS) to an unknown unicast MAC, so a bridge floods it
/// to the vxlan device, and vnfhost's bridge to its tunnel.
fn frame() -> [u8; 60] {
    let mut f = [0u8; 60];
    f[..6].copy_from_slice(&[0x02, 0, 0, 0, 0x98, 0x02]);
    f[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0x98, 0x01]);
    f[12..14].copy_from_slice(&[0x88, 0xb5]);
    f
}

fn vnfhost_trial(cfg: &UplinkConfig, dir: &Path) -> Result<f64, String> {
    let (a, b) = ("vnfb-ul-a", "vnfb-ul-b");
    let _nets = pair(a, b)?;
    let sock = dir.join("p0.sock");
    let _ = std::fs::remove_file(&sock);
    let log = std::fs::File::create(dir.join("switch.log")).map_err(|e| e.to_string())?;
    let mut sw: Child = Command::new("ip")
        .args(["netns", "exec", a])
        .arg(&cfg.vnfhost)
        .args(["switch", "--core", "0", "--idle-max-us", "0", "--port"])
        .arg(format!("p0,vhost-user={}", sock.display()))
        .args([
            "--uplink",
            "ua,address=192.168.98.1",
            "--port",
            "vx,vxlan=192.168.98.2,vni=100",
        ])
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log)
        .spawn()
        .map_err(|e| format!("vnfhost switch: {e}"))?;
    let r = (|| {
        let mut c = pmd::virtio_user::VirtioUserConfig::new(&sock);
        c.ring_size = 1024;
        c.timeout = Duration::from_secs(30);
        let mut g = pmd::virtio_user::VirtioUser::new(&c).map_err(|e| e.to_string())?;
        let f = frame();
        // The tunnel's next hop resolves (the switch asks the kernel) within a second.
        let warm = Instant::now();
        while rx_packets(b, "ub") < 1000 {
            if warm.elapsed() > Duration::from_secs(10) {
                return Err("nothing reached ub in 10 s".to_string());
            }
            g.send_fill(0, 64, |_, buf| {
                buf[..60].copy_from_slice(&f);
                60
            });
            std::thread::sleep(Duration::from_millis(1));
        }
        let before = rx_packets(b, "ub");
        let t = Instant::now();
        while t.elapsed() < cfg.trial {
            for _ in 0..256 {
                g.send_fill(0, 64, |_, buf| {
                    buf[..60].copy_from_slice(&f);
                    60
                });
            }
        }
        let secs = t.elapsed().as_secs_f64();
        Ok((rx_packets(b, "ub") - before) as f64 / secs)
    })();
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(sw.id() as i32, libc::SIGTERM) };
    let _ = sw.wait();
    r
}

fn kernel_trial(cfg: &UplinkConfig) -> Result<f64, String> {
    let (a, b) = ("vnfb-uk-a", "vnfb-uk-b");
    let _nets = pair(a, b)?;
    ip(&[
        "-n",
        a,
        "link",
        "add",
        "vx0",
        "type",
        "vxlan",
        "id",
        "100",
        "dstport",
        "4789",
        "local",
        "192.168.98.1",
        "remote",
        "192.168.98.2",
        "dev",
        "ua",
    ])?;
    ip(&["-n", a, "link", "add", "kbr", "type", "bridge"])?;
    ip(&[
        "-n", a, "link", "add", "kf", "type", "veth", "peer", "name", "kfeed",
    ])?;
    for l in ["vx0", "kf"] {
        ip(&["-n", a, "link", "set", l, "master", "kbr"])?;
    }
    for l in ["vx0", "kf", "kbr", "kfeed"] {
        ip(&["-n", a, "link", "set", l, "up"])?;
    }
    // The sender: a thread in namespace a, pinned to CPU 0.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let ns = std::fs::File::open(format!("/var/run/netns/{a}")).map_err(|e| e.to_string())?;
    let sender = std::thread::spawn(move || -> Result<u64, String> {
        use std::os::fd::AsRawFd;
        // SAFETY: setns changes only this thread's namespace.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(format!("setns: {}", std::io::Error::last_os_error()));
        }
        let _ = core_affinity::set_for_current(core_affinity::CoreId { id: 0 });
        raw_sender("kfeed", &stop2)
    });
    std::thread::sleep(Duration::from_millis(500));
    let before = rx_packets(b, "ub");
    let t = Instant::now();
    std::thread::sleep(cfg.trial);
    let got = rx_packets(b, "ub") - before;
    let secs = t.elapsed().as_secs_f64();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    sender.join().map_err(|_| "sender panicked".to_string())??;
    Ok(got as f64 / secs)
}

/// Sends 64-frame bursts of [`frame`] on `ifname` with `sendmmsg` until `stop`.
fn raw_sender(ifname: &str, stop: &std::sync::atomic::AtomicBool) -> Result<u64, String> {
    let name = std::ffi::CString::new(ifname).map_err(|e| e.to_string())?;
    // SAFETY: reads a NUL-terminated name.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        return Err(format!("no interface {ifname}"));
    }
    // SAFETY: socket(2); the result is checked and closed below.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(format!("socket: {}", std::io::Error::last_os_error()));
    }
    let sll = libc::sockaddr_ll {
        sll_family: libc::AF_PACKET as u16,
        sll_protocol: 0,
        sll_ifindex: index as i32,
        sll_hatype: 0,
        sll_pkttype: 0,
        sll_halen: 0,
        sll_addr: [0; 8],
    };
    // SAFETY: binds our socket to a sockaddr_ll on the stack, its size given.
    if unsafe {
        libc::bind(
            fd,
            (&sll as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    } < 0
    {
        let e = std::io::Error::last_os_error();
        // SAFETY: our descriptor, closed once.
        unsafe { libc::close(fd) };
        return Err(format!("bind: {e}"));
    }
    let f = frame();
    let mut iov = [libc::iovec {
        iov_base: f.as_ptr() as *mut _,
        iov_len: f.len(),
    }; 64];
    // SAFETY: mmsghdr is plain data; all-zero is an empty header.
    let mut msgs: [libc::mmsghdr; 64] = unsafe { std::mem::zeroed() };
    for (m, v) in msgs.iter_mut().zip(iov.iter_mut()) {
        m.msg_hdr.msg_iov = v;
        m.msg_hdr.msg_iovlen = 1;
    }
    let mut sent = 0u64;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        // SAFETY: 64 headers, each naming one iovec of our frame, which outlives the call.
        let r = unsafe { libc::sendmmsg(fd, msgs.as_mut_ptr(), 64, 0) };
        if r > 0 {
            sent += r as u64;
        }
    }
    // SAFETY: our descriptor, closed once.
    unsafe { libc::close(fd) };
    Ok(sent)
}

/// Runs the rounds; returns the markdown table.
pub fn run(cfg: &UplinkConfig, progress: &mut dyn FnMut(&str)) -> Result<String, String> {
    let dir = std::env::temp_dir().join(format!("vnfhost-uplink-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    if !core_affinity::set_for_current(core_affinity::CoreId { id: 1 }) {
        progress("warning: could not pin the generator to CPU 1");
    }
    let (mut v, mut k) = (Vec::new(), Vec::new());
    for round in 0..cfg.rounds {
        let x = vnfhost_trial(cfg, &dir)?;
        progress(&format!(
            "round {round}: vnfhost uplink {:.3} Mpps",
            x / 1e6
        ));
        v.push(x);
        let y = kernel_trial(cfg)?;
        progress(&format!("round {round}: kernel vxlan  {:.3} Mpps", y / 1e6));
        k.push(y);
    }
    let _ = std::fs::remove_dir_all(&dir);
    let (a, m, b) = stats(&v);
    let (c, n, d) = stats(&k);
    Ok(format!(
        "VXLAN frames onto a veth from one core (CPU 0), 64-byte inner frames, counted at \
         the peer; {} rounds of {:.1} s; Mpps as min / median / max\n\n\
         | sender | Mpps |\n|---|---|\n\
         | vnfhost uplink (`AF_PACKET`, one `sendmmsg` per burst) | {:.3} / **{:.3}** / {:.3} |\n\
         | Linux `vxlan` device (fed by `sendmmsg` through a bridge) | {:.3} / **{:.3}** / {:.3} |\n\
         | vnfhost / kernel (medians) | {:.2}× |\n",
        cfg.rounds,
        cfg.trial.as_secs_f64(),
        a / 1e6,
        m / 1e6,
        b / 1e6,
        c / 1e6,
        n / 1e6,
        d / 1e6,
        m / n
    ))
}
