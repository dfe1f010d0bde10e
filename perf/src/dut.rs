//! Devices under test, each started in a private directory with two vhost-user ports
//! (server mode: the DUT creates the sockets) and its forwarding loop pinned to one core.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The DUTs the harness knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DutKind {
    /// `vnfhost switch`, L2 learning bridge, pure polling.
    Vnfhost,
    /// DPDK testpmd with two `net_vhost` ports, `io` forwarding (no header touched).
    TestpmdIo,
    /// DPDK testpmd, `mac` forwarding (rewrites both MACs, like a minimal L2 app).
    TestpmdMac,
    /// Open vSwitch with DPDK, `actions=NORMAL` (MAC learning switch).
    OvsNormal,
    /// Open vSwitch with DPDK, explicit `in_port` → `output` flows.
    OvsFlows,
    /// `vnfhost switch` routing between two VLANs (TTL, checksum, MACs), 2 connected
    /// prefixes and 10 static routes.
    VnfhostL3,
    /// The same with 100 000 static routes.
    VnfhostL3Big,
    /// Open vSwitch with DPDK doing the same with OpenFlow: `mod_dl_src`,
    /// `mod_dl_dst`, `dec_ttl`, `output`.
    OvsL3,
    /// `vnfhost switch` with a VXLAN tunnel: port 0 a pod, port 1 the uplink (over
    /// vhost-user) to the remote VTEP the generator plays.
    VnfhostVxlan,
    /// Open vSwitch with DPDK's userspace tunnelling doing the same: `br-int` with the
    /// pod port and a `vxlan` port (`tnl_push`/`tnl_pop`), `br-phy` with the uplink.
    OvsVxlan,
    /// `vnfhost switch`, L2, both ports in stateful security groups: `p0` may send only
    /// UDP (default-deny egress), `p1` be sent only UDP to port 5201 (default-deny
    /// ingress). Established packets skip both rule scans.
    VnfhostSg,
    /// Open vSwitch with DPDK doing the same with conntrack: IP goes through `ct()`,
    /// a new UDP conversation to 5201 from `p0` is committed, established ones pass
    /// both ways, the rest is dropped.
    OvsCt,
    /// `vnfhost switch` routing between two VLANs with a service: UDP to
    /// 10.96.0.1:80 balanced (one backend, 10.0.1.1:5201), DNAT and its reverse.
    VnfhostVip,
    /// Open vSwitch with DPDK doing the same: `ct(nat)`, a new conversation committed
    /// with `nat(dst=10.0.1.1:5201)`, then the L3 rewrite of `ovs-l3`.
    OvsNat,
}

impl DutKind {
    /// Name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            DutKind::Vnfhost => "vnfhost",
            DutKind::TestpmdIo => "testpmd-io",
            DutKind::TestpmdMac => "testpmd-mac",
            DutKind::OvsNormal => "ovs-normal",
            DutKind::OvsFlows => "ovs-flows",
            DutKind::VnfhostL3 => "vnfhost-l3",
            DutKind::VnfhostL3Big => "vnfhost-l3-100k",
            DutKind::OvsL3 => "ovs-l3",
            DutKind::VnfhostVxlan => "vnfhost-vxlan",
            DutKind::OvsVxlan => "ovs-vxlan",
            DutKind::VnfhostSg => "vnfhost-sg",
            DutKind::OvsCt => "ovs-ct",
            DutKind::VnfhostVip => "vnfhost-vip",
            DutKind::OvsNat => "ovs-nat",
        }
    }

    /// Parses a name.
    pub fn parse(s: &str) -> Option<DutKind> {
        Self::ALL.into_iter().find(|d| d.name() == s)
    }

    /// Every DUT.
    pub const ALL: [DutKind; 14] = [
        DutKind::Vnfhost,
        DutKind::TestpmdIo,
        DutKind::TestpmdMac,
        DutKind::OvsNormal,
        DutKind::OvsFlows,
        DutKind::VnfhostL3,
        DutKind::VnfhostL3Big,
        DutKind::OvsL3,
        DutKind::VnfhostVxlan,
        DutKind::OvsVxlan,
        DutKind::VnfhostSg,
        DutKind::OvsCt,
        DutKind::VnfhostVip,
        DutKind::OvsNat,
    ];

    /// The L2 DUTs (what `bench p2p` runs by default).
    pub const L2: [DutKind; 5] = [
        DutKind::Vnfhost,
        DutKind::TestpmdIo,
        DutKind::TestpmdMac,
        DutKind::OvsNormal,
        DutKind::OvsFlows,
    ];

    /// Whether the DUT routes (the generator then sends IPv4 to the router MAC).
    pub fn is_l3(self) -> bool {
        matches!(
            self,
            DutKind::VnfhostL3 | DutKind::VnfhostL3Big | DutKind::OvsL3
        )
    }

    /// The vnfhost DUT that others of its kind are compared with.
    pub fn reference(self) -> DutKind {
        if self.is_l3() {
            DutKind::VnfhostL3
        } else {
            DutKind::Vnfhost
        }
    }

    /// Whether the DUT connects to sockets the generator creates (OVS
    /// `dpdkvhostuserclient` ports), rather than creating them.
    pub fn generator_listens(self) -> bool {
        matches!(
            self,
            DutKind::OvsNormal
                | DutKind::OvsFlows
                | DutKind::OvsL3
                | DutKind::OvsVxlan
                | DutKind::OvsCt
                | DutKind::OvsNat
        )
    }
}

/// The service benchmark's VIP and port.
pub const VIP: ([u8; 4], u16) = ([10, 96, 0, 1], 80);
/// Its backend (the generator's receiving side, [`crate::gen::L3_DST_IP`]).
pub const VIP_BACKEND: ([u8; 4], u16) = ([10, 0, 1, 1], 5201);

/// How to start a DUT.
#[derive(Clone, Debug)]
pub struct DutConfig {
    /// Which DUT.
    pub kind: DutKind,
    /// The cores its forwarding loops are pinned to (one or more).
    pub cores: Vec<usize>,
    /// A core for testpmd's (mostly idle) main thread.
    pub main_core: usize,
    /// A fresh directory for sockets and logs.
    pub dir: PathBuf,
    /// The `vnfhost` binary.
    pub vnfhost: PathBuf,
    /// Use hugepages (vnfhost `--hugepages`; testpmd a private hugetlbfs mount).
    pub hugepages: bool,
    /// vnfhost only: its control socket (`--control`), for benchmarks that change the
    /// switch's configuration while it forwards.
    pub control: Option<PathBuf>,
    /// vnfhost only: its session-table capacity per core (`--sessions`).
    pub sessions: Option<u32>,
}

/// A running DUT; stopped (and its files removed) on drop.
pub struct RunningDut {
    children: Vec<Child>,
    ovs_dir: Option<PathBuf>,
    /// Socket of port 0.
    pub port0: PathBuf,
    /// Socket of port 1.
    pub port1: PathBuf,
    log: PathBuf,
    huge_mount: Option<PathBuf>,
}

/// The DPDK-enabled Open vSwitch daemon of Debian's `openvswitch-switch-dpdk`.
pub const OVS_VSWITCHD: &str = "/usr/lib/openvswitch-switch-dpdk/ovs-vswitchd-dpdk";

/// Whether `name` is an executable in PATH.
pub fn in_path(name: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
        .unwrap_or(false)
}

/// Why `kind` cannot run here, if it cannot.
pub fn missing(kind: DutKind, vnfhost: &Path) -> Option<String> {
    match kind {
        DutKind::Vnfhost
        | DutKind::VnfhostL3
        | DutKind::VnfhostL3Big
        | DutKind::VnfhostVxlan
        | DutKind::VnfhostSg
        | DutKind::VnfhostVip
            if !vnfhost.is_file() =>
        {
            Some(format!("{} not found", vnfhost.display()))
        }
        DutKind::TestpmdIo | DutKind::TestpmdMac if !in_path("dpdk-testpmd") => {
            Some("dpdk-testpmd not installed (apt-get install dpdk-dev librte-net-vhost23)".into())
        }
        DutKind::OvsNormal
        | DutKind::OvsFlows
        | DutKind::OvsL3
        | DutKind::OvsVxlan
        | DutKind::OvsCt
        | DutKind::OvsNat
            if !Path::new(OVS_VSWITCHD).is_file() =>
        {
            Some(
                "Open vSwitch with DPDK not installed (apt-get install openvswitch-switch-dpdk)"
                    .into(),
            )
        }
        _ => None,
    }
}

/// Pins the calling thread (the generator) to `gen_core` (warning through `progress`
/// when it cannot), and splits `duts` into those that can run here and those that
/// cannot, with the reason.
pub fn pin_and_select(
    gen_core: usize,
    duts: &[DutKind],
    vnfhost: &Path,
    progress: &mut dyn FnMut(&str),
) -> (Vec<DutKind>, Vec<(DutKind, String)>) {
    if !core_affinity::set_for_current(core_affinity::CoreId { id: gen_core }) {
        progress(&format!(
            "warning: could not pin the generator to core {gen_core}"
        ));
    }
    let mut gone = Vec::new();
    let ok = duts
        .iter()
        .copied()
        .filter(|d| match missing(*d, vnfhost) {
            Some(why) => {
                gone.push((*d, why));
                false
            }
            None => true,
        })
        .collect();
    (ok, gone)
}

/// `n` static routes (`PREFIX/LEN via ADDR` lines) of lengths 24, 23, 22 and 16 from
/// 20.0.0.0 up, none covering the generator's destination. That destination is on a
/// connected /24, the longest length present, so a lookup probes one hash table: what
/// grows with `n` is that table (a quarter of the routes), far beyond the caches.
pub fn route_list(n: u32) -> String {
    let mut s = String::with_capacity(n as usize * 28);
    for i in 0..n {
        let net = (20u32 << 24) + (i << 8);
        let [a, b, c, _] = net.to_be_bytes();
        let len = [24, 23, 22, 16][(i % 4) as usize];
        s.push_str(&format!("{a}.{b}.{c}.0/{len} via 10.0.1.1\n"));
    }
    s
}

/// `cores` as a CPU list for `-l` and `--core` (`2,3`).
pub fn cpu_list(cores: &[usize]) -> String {
    cores
        .iter()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// EAL memory options of a DPDK process: 256 MiB from the private hugetlbfs `huge`, or
/// 512 MiB of normal pages.
pub(crate) fn dpdk_memory_args(c: &mut Command, huge: Option<&Path>) {
    match huge {
        Some(m) => {
            c.arg("--huge-dir")
                .arg(m)
                .args(["-m", "256", "--single-file-segments"]);
        }
        None => {
            c.args(["--no-huge", "-m", "512"]);
        }
    }
}

/// Mounts a private hugetlbfs at `dir/huge`.
pub(crate) fn mount_hugetlbfs(dir: &Path) -> Option<PathBuf> {
    let m = dir.join("huge");
    std::fs::create_dir_all(&m).ok()?;
    let ok = Command::new("mount")
        .args(["-t", "hugetlbfs", "none"])
        .arg(&m)
        .status()
        .ok()?
        .success();
    ok.then_some(m)
}

impl RunningDut {
    /// Starts the DUT and waits until both sockets exist.
    pub fn start(cfg: &DutConfig) -> Result<RunningDut, String> {
        std::fs::create_dir_all(&cfg.dir).map_err(|e| format!("{}: {e}", cfg.dir.display()))?;
        let (p0, p1) = (cfg.dir.join("p0.sock"), cfg.dir.join("p1.sock"));
        let log = cfg.dir.join(format!("{}.log", cfg.kind.name()));
        let out = File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let mut huge_mount = None;
        let mut cmd = match cfg.kind {
            DutKind::Vnfhost
            | DutKind::VnfhostL3
            | DutKind::VnfhostL3Big
            | DutKind::VnfhostVxlan
            | DutKind::VnfhostSg
            | DutKind::VnfhostVip => {
                let mut c = Command::new(&cfg.vnfhost);
                c.args([
                    "switch",
                    "--core",
                    &cpu_list(&cfg.cores),
                    "--idle-max-us",
                    "0",
                ]);
                if cfg.hugepages {
                    c.arg("--hugepages");
                }
                if let Some(sock) = &cfg.control {
                    c.arg("--control").arg(sock);
                }
                if let Some(n) = cfg.sessions {
                    c.arg("--sessions").arg(n.to_string());
                }
                let ip = |a: [u8; 4]| std::net::Ipv4Addr::from(a).to_string();
                if cfg.kind == DutKind::VnfhostSg {
                    c.arg("--port")
                        .arg(format!("p0,vhost-user={},sg=client", p0.display()));
                    c.arg("--port")
                        .arg(format!("p1,vhost-user={},sg=server", p1.display()));
                    c.args(["--security-group", "client,deny-egress,out:udp"]);
                    c.args(["--security-group", "server,deny,udp:5201"]);
                } else if cfg.kind == DutKind::VnfhostVip {
                    c.arg("--port")
                        .arg(format!("p0,vhost-user={},vlan=10", p0.display()));
                    c.arg("--port")
                        .arg(format!("p1,vhost-user={},vlan=20", p1.display()));
                    c.args(["--router-if", "vlan=10,ip=10.0.0.254/24"]);
                    c.args(["--router-if", "vlan=20,ip=10.0.1.254/24"]);
                    c.arg("--service").arg(format!(
                        "web,vip={},port={},udp,backend={}:{}",
                        ip(VIP.0),
                        VIP.1,
                        ip(VIP_BACKEND.0),
                        VIP_BACKEND.1
                    ));
                } else if cfg.kind == DutKind::VnfhostVxlan {
                    let m = |b: [u8; 6]| {
                        b.iter()
                            .map(|x| format!("{x:02x}"))
                            .collect::<Vec<_>>()
                            .join(":")
                    };
                    use crate::gen::{TUN_DUT_IP, TUN_DUT_MAC, TUN_GEN_IP, TUN_GEN_MAC, TUN_VNI};
                    c.arg("--port")
                        .arg(format!("p0,vhost-user={}", p0.display()));
                    c.arg("--uplink").arg(format!(
                        "up,vhost-user={},address={},mac={},next-hop-mac={},mtu=2000",
                        p1.display(),
                        ip(TUN_DUT_IP),
                        m(TUN_DUT_MAC),
                        m(TUN_GEN_MAC)
                    ));
                    c.arg("--port")
                        .arg(format!("vx,vxlan={},vni={TUN_VNI}", ip(TUN_GEN_IP)));
                } else if cfg.kind.is_l3() {
                    // Two networks and a router between them, as a tenant would have.
                    c.arg("--port")
                        .arg(format!("p0,vhost-user={},vlan=10", p0.display()));
                    c.arg("--port")
                        .arg(format!("p1,vhost-user={},vlan=20", p1.display()));
                    c.args(["--router-if", "vlan=10,ip=10.0.0.254/24"]);
                    c.args(["--router-if", "vlan=20,ip=10.0.1.254/24"]);
                    let n = if cfg.kind == DutKind::VnfhostL3Big {
                        100_000
                    } else {
                        10
                    };
                    let routes = cfg.dir.join("routes.txt");
                    std::fs::write(&routes, route_list(n))
                        .map_err(|e| format!("{}: {e}", routes.display()))?;
                    c.arg("--routes").arg(&routes);
                } else {
                    c.arg("--port")
                        .arg(format!("p0,vhost-user={}", p0.display()));
                    c.arg("--port")
                        .arg(format!("p1,vhost-user={}", p1.display()));
                }
                c
            }
            DutKind::OvsNormal
            | DutKind::OvsFlows
            | DutKind::OvsL3
            | DutKind::OvsVxlan
            | DutKind::OvsCt
            | DutKind::OvsNat => {
                huge_mount = if cfg.hugepages {
                    mount_hugetlbfs(&cfg.dir)
                } else {
                    None
                };
                let mut d = RunningDut {
                    children: Vec::new(),
                    ovs_dir: Some(cfg.dir.clone()),
                    port0: p0.clone(),
                    port1: p1.clone(),
                    log: log.clone(),
                    huge_mount,
                };
                crate::ovs::start(
                    cfg,
                    &p0,
                    &p1,
                    &out,
                    d.huge_mount.as_deref(),
                    &mut d.children,
                )?;
                return Ok(d);
            }
            DutKind::TestpmdIo | DutKind::TestpmdMac => {
                let mut c = Command::new("dpdk-testpmd");
                c.args([
                    "-l",
                    &format!("{},{}", cfg.main_core, cpu_list(&cfg.cores)),
                    "--main-lcore",
                    &cfg.main_core.to_string(),
                ]);
                c.args([
                    "--no-pci",
                    "--file-prefix",
                    &format!("vnfbench{}", std::process::id()),
                ]);
                huge_mount = if cfg.hugepages {
                    mount_hugetlbfs(&cfg.dir)
                } else {
                    None
                };
                dpdk_memory_args(&mut c, huge_mount.as_deref());
                c.arg("--vdev")
                    .arg(format!("net_vhost0,iface={},queues=1", p0.display()));
                c.arg("--vdev")
                    .arg(format!("net_vhost1,iface={},queues=1", p1.display()));
                let mode = if cfg.kind == DutKind::TestpmdIo {
                    "io"
                } else {
                    "mac"
                };
                c.args([
                    "--",
                    &format!("--nb-cores={}", cfg.cores.len()),
                    "--auto-start",
                    "--stats-period=1",
                    "--total-num-mbufs=16384",
                ]);
                c.args([
                    "--rxd=1024",
                    "--txd=1024",
                    "--record-core-cycles",
                    &format!("--forward-mode={mode}"),
                ]);
                c
            }
        };
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                if let Some(m) = &huge_mount {
                    let _ = Command::new("umount").arg(m).status();
                }
                return Err(format!("start {}: {e}", cfg.kind.name()));
            }
        };
        let mut d = RunningDut {
            children: vec![child],
            ovs_dir: None,
            port0: p0,
            port1: p1,
            log,
            huge_mount,
        };
        let t = Instant::now();
        while !(d.port0.exists() && d.port1.exists()) {
            if let Some(Ok(Some(st))) = d.children.first_mut().map(|c| c.try_wait()) {
                return Err(format!(
                    "{} exited ({st}) before making its sockets:\n{}",
                    cfg.kind.name(),
                    d.log_tail()
                ));
            }
            if t.elapsed() > Duration::from_secs(30) {
                return Err(format!(
                    "{} made no sockets in 30 s:\n{}",
                    cfg.kind.name(),
                    d.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(d)
    }

    /// The resident memory of the DUT's forwarding process (vnfhost, or
    /// `ovs-vswitchd`), in KiB.
    pub fn rss_kib(&self) -> Option<u64> {
        let pid = self.children.last()?.id();
        let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        s.lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
    }

    /// The last lines of the DUT's log.
    pub fn log_tail(&self) -> String {
        let s = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Stops the DUT (SIGTERM, then SIGKILL after 10 s).
    pub fn stop(mut self) {
        self.shutdown();
    }

    /// Stops the DUT and returns the cycles per packet it reported for its forwarding
    /// core: vnfhost's own TSC accounting over busy polls, testpmd's
    /// `--record-core-cycles` figure.
    pub fn stop_with_cycles(mut self) -> Option<f64> {
        self.shutdown();
        let log = std::fs::read_to_string(&self.log).ok()?;
        parse_cycles(&log)
    }

    fn shutdown(&mut self) {
        if let Some(dir) = self.ovs_dir.take() {
            // OVS keeps its per-core figures in the daemon: save them into the log.
            if let Ok(stats) = crate::ovs::pmd_stats(&dir) {
                if let Ok(mut f) = std::fs::OpenOptions::new().append(true).open(&self.log) {
                    use std::io::Write;
                    let _ = f.write_all(stats.as_bytes());
                }
            }
        }
        // The last started goes first (OVS: vswitchd before its database).
        while let Some(mut c) = self.children.pop() {
            // SAFETY: kill(2) on our own unreaped child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let t = Instant::now();
            while matches!(c.try_wait(), Ok(None)) && t.elapsed() < Duration::from_secs(10) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_file(&self.port0);
        let _ = std::fs::remove_file(&self.port1);
        // DPDK leaves its runtime directory behind (and always after a SIGKILL).
        for prefix in ["vnfbench", "vnfbench-ovs"] {
            let _ =
                std::fs::remove_dir_all(format!("/var/run/dpdk/{prefix}{}", std::process::id()));
        }
        if let Some(m) = self.huge_mount.take() {
            let _ = Command::new("umount").arg(&m).status();
        }
        // The tunnel DUT's namespace, if it made one.
        let _ = Command::new("ip")
            .args(["netns", "del", &crate::ovs::netns_name()])
            .stderr(Stdio::null())
            .status();
    }
}

/// Finds the cycles-per-packet figure in a DUT's log (the last one printed).
pub fn parse_cycles(log: &str) -> Option<f64> {
    let mut found = None;
    for line in log.lines() {
        let v = if let Some(i) = line.find("processing cycles per packet:") {
            // OVS pmd-stats-show: "  avg processing cycles per packet: 557.62 (25476375/45689)"
            line[i + 29..].split_whitespace().next()
        } else if let Some(i) = line.find("CPU cycles/packet=") {
            // testpmd: "  CPU cycles/packet=123.45 (busy cycles=... / total ... packets=...)"
            line[i + 18..].split_whitespace().next()
        } else if line.starts_with("core ") && line.contains(" cycles/packet") {
            // vnfhost: "core 0: 123 packets, 456 cycles/packet on busy polls, ..."
            line.split(", ")
                .nth(1)
                .and_then(|p| p.split_whitespace().next())
        } else {
            None
        };
        if let Some(x) = v.and_then(|v| v.parse::<f64>().ok()) {
            found = Some(x);
        }
    }
    found
}

impl Drop for RunningDut {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cycles_are_found_in_both_logs() {
        let tp = "  RX-packets: 1\n  CPU cycles/packet=431.27 (busy cycles=1 / total 2 packets=3) at 2445 MHz Clock\n";
        assert_eq!(parse_cycles(tp), Some(431.27));
        let vh = "port p0: rx 1 frames\ncore 0: 4000 packets, 512 cycles/packet on busy polls, 99.0% of polls busy\n";
        assert_eq!(parse_cycles(vh), Some(512.0));
        let ovs = "pmd thread numa_id 0 core_id 1:\n  avg processing cycles per packet: 557.62 (25476375/45689)\n";
        assert_eq!(parse_cycles(ovs), Some(557.62));
        assert_eq!(
            parse_cycles("core 0: 0 packets, - cycles/packet on busy polls"),
            None
        );
    }
}
