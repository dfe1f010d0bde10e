//! Open vSwitch 3.1 with DPDK as a DUT, run from a private directory: its own database,
//! sockets and logs, nothing shared with a system OVS. Recipe from PEERS.md: a netdev
//! bridge with two `dpdkvhostuserclient` ports (OVS connects to sockets the generator
//! listens on), `pmd-cpu-mask` for the forwarding core.

use std::fs::File;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::dut::{DutConfig, DutKind, OVS_VSWITCHD};

fn env(cmd: &mut Command, dir: &Path) {
    cmd.env("OVS_RUNDIR", dir)
        .env("OVS_DBDIR", dir)
        .env("OVS_LOGDIR", dir)
        .env("OVS_SYSCONFDIR", dir);
}

/// Runs an OVS tool against the private instance in `dir`.
fn tool(dir: &Path, name: &str, args: &[&str]) -> Result<String, String> {
    let mut c = Command::new(name);
    env(&mut c, dir);
    let out = c.args(args).output().map_err(|e| format!("{name}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{name} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn vsctl(dir: &Path, args: &[&str]) -> Result<String, String> {
    let db = format!("--db=unix:{}", dir.join("db.sock").display());
    let mut a = vec![db.as_str(), "--timeout=60"];
    a.extend_from_slice(args);
    tool(dir, "ovs-vsctl", &a)
}

/// `ovs-appctl dpif-netdev/pmd-stats-show` of the instance in `dir`.
pub fn pmd_stats(dir: &Path) -> Result<String, String> {
    let t = format!("--target={}", dir.join("ovs-vswitchd.ctl").display());
    tool(
        dir,
        "ovs-appctl",
        &["--timeout=5", &t, "dpif-netdev/pmd-stats-show"],
    )
}

/// The network namespace the tunnel DUT's `ovs-vswitchd` runs in.
pub fn netns_name() -> String {
    format!("vnfbench-ovs{}", std::process::id())
}

fn run(cmd: &str, args: &[&str]) -> Result<(), String> {
    let o = Command::new(cmd)
        .args(args)
        .output()
        .map_err(|e| format!("{cmd}: {e}"))?;
    if o.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr)
        ))
    }
}

/// OVS's userspace tunnelling, as its documentation sets it up: `br-int` with the pod
/// port `p0` and a `vxlan` port, flows between them; `br-phy` (NORMAL) with the uplink
/// `p1`, the tunnel address on its LOCAL port, and the remote VTEP's MAC in its
/// neighbour cache. The address and the MACs are the generator's tunnel constants.
fn tunnel_bridges(d: &Path, p0: &Path, p1: &Path, ns: &str) -> Result<(), String> {
    use crate::gen::{TUN_DUT_IP, TUN_DUT_MAC, TUN_GEN_IP, TUN_GEN_MAC, TUN_VNI};
    let m = |b: [u8; 6]| {
        b.iter()
            .map(|x| format!("{x:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    };
    let ip = |a: [u8; 4]| std::net::Ipv4Addr::from(a).to_string();
    let netdev = "datapath_type=netdev";
    vsctl(
        d,
        &["add-br", "br-int", "--", "set", "bridge", "br-int", netdev],
    )?;
    let path0 = format!("options:vhost-server-path={}", p0.display());
    vsctl(
        d,
        &[
            "add-port",
            "br-int",
            "p0",
            "--",
            "set",
            "Interface",
            "p0",
            "type=dpdkvhostuserclient",
            &path0,
        ],
    )?;
    let (remote, local, key) = (
        format!("options:remote_ip={}", ip(TUN_GEN_IP)),
        format!("options:local_ip={}", ip(TUN_DUT_IP)),
        format!("options:key={TUN_VNI}"),
    );
    vsctl(
        d,
        &[
            "add-port",
            "br-int",
            "vx0",
            "--",
            "set",
            "Interface",
            "vx0",
            "type=vxlan",
            &remote,
            &local,
            &key,
        ],
    )?;
    let hw = format!("other_config:hwaddr={}", m(TUN_DUT_MAC));
    vsctl(
        d,
        &[
            "add-br", "br-phy", "--", "set", "bridge", "br-phy", netdev, &hw,
        ],
    )?;
    let path1 = format!("options:vhost-server-path={}", p1.display());
    vsctl(
        d,
        &[
            "add-port",
            "br-phy",
            "p1",
            "--",
            "set",
            "Interface",
            "p1",
            "type=dpdkvhostuserclient",
            &path1,
            "mtu_request=2000",
        ],
    )?;
    run("ip", &["-n", ns, "link", "set", "br-phy", "up"])?;
    run(
        "ip",
        &[
            "-n",
            ns,
            "addr",
            "add",
            &format!("{}/24", ip(TUN_DUT_IP)),
            "dev",
            "br-phy",
        ],
    )?;
    let t = format!("--target={}", d.join("ovs-vswitchd.ctl").display());
    tool(
        d,
        "ovs-appctl",
        &[
            &t,
            "tnl/arp/set",
            "br-phy",
            &ip(TUN_GEN_IP),
            &m(TUN_GEN_MAC),
        ],
    )?;
    let br = format!("unix:{}", d.join("br-int.mgmt").display());
    tool(d, "ovs-ofctl", &["del-flows", &br])?;
    tool(
        d,
        "ovs-ofctl",
        &["add-flow", &br, "in_port=p0,actions=output:vx0"],
    )?;
    tool(
        d,
        "ovs-ofctl",
        &["add-flow", &br, "in_port=vx0,actions=output:p0"],
    )?;
    Ok(())
}

/// Starts ovsdb-server and ovs-vswitchd-dpdk in `cfg.dir`, adds the bridge and ports,
/// and (for [`DutKind::OvsFlows`]) replaces NORMAL with two in_port flows. The daemons
/// are pushed onto `kids` as they start, so a failure half-way still stops them.
pub fn start(
    cfg: &DutConfig,
    p0: &Path,
    p1: &Path,
    log: &File,
    huge: Option<&Path>,
    kids: &mut Vec<Child>,
) -> Result<(), String> {
    let d = cfg.dir.as_path();
    let db = d.join("conf.db");
    tool(
        d,
        "ovsdb-tool",
        &[
            "create",
            &db.to_string_lossy(),
            "/usr/share/openvswitch/vswitch.ovsschema",
        ],
    )?;
    let spawn = |cmd: &mut Command| -> Result<Child, String> {
        env(cmd, d);
        let out = log.try_clone().map_err(|e| e.to_string())?;
        let err = log.try_clone().map_err(|e| e.to_string())?;
        cmd.stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("start OVS: {e}"))
    };
    kids.push(spawn(
        Command::new("ovsdb-server")
            .arg(&db)
            .arg(format!("--remote=punix:{}", d.join("db.sock").display()))
            .arg(format!(
                "--unixctl={}",
                d.join("ovsdb-server.ctl").display()
            )),
    )?);
    let t = Instant::now();
    while !d.join("db.sock").exists() {
        if t.elapsed() > Duration::from_secs(10) {
            return Err("ovsdb-server made no socket in 10 s".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let prefix = format!("--no-pci --file-prefix vnfbench-ovs{}", std::process::id());
    let extra = match huge {
        Some(h) => format!("{prefix} --huge-dir {}", h.display()),
        None => format!("{prefix} --no-huge -m 1024"),
    };
    vsctl(d, &["--no-wait", "init"])?;
    vsctl(
        d,
        &[
            "--no-wait",
            "set",
            "Open_vSwitch",
            ".",
            "other_config:dpdk-init=true",
            &format!("other_config:dpdk-extra=\"{extra}\""),
            &format!("other_config:dpdk-lcore-mask={:#x}", 1u64 << cfg.main_core),
            &format!(
                "other_config:pmd-cpu-mask={:#x}",
                cfg.cores.iter().fold(0u64, |m, &c| m | 1u64 << (c % 64))
            ),
        ],
    )?;
    // The tunnel DUT's bridge port takes an address; in a namespace of its own it
    // touches nothing of the host's.
    let tunnel = cfg.kind == DutKind::OvsVxlan;
    let ns = netns_name();
    let mut vswitchd = if tunnel {
        let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        run("ip", &["netns", "add", &ns])?;
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &ns, OVS_VSWITCHD]);
        c
    } else {
        Command::new(OVS_VSWITCHD)
    };
    kids.push(spawn(
        vswitchd
            .arg(format!("unix:{}", d.join("db.sock").display()))
            .arg(format!(
                "--unixctl={}",
                d.join("ovs-vswitchd.ctl").display()
            )),
    )?);
    if tunnel {
        return tunnel_bridges(d, p0, p1, &ns);
    }
    vsctl(
        d,
        &[
            "add-br",
            "br0",
            "--",
            "set",
            "bridge",
            "br0",
            "datapath_type=netdev",
        ],
    )?;
    for (n, p) in [("p0", p0), ("p1", p1)] {
        let path = format!("options:vhost-server-path={}", p.display());
        vsctl(
            d,
            &[
                "add-port",
                "br0",
                n,
                "--",
                "set",
                "Interface",
                n,
                "type=dpdkvhostuserclient",
                &path,
            ],
        )?;
    }
    if cfg.kind == DutKind::OvsL3 {
        // What vnfhost's router does, as OpenFlow: rewrite both MACs, decrement the TTL
        // (with the checksum), forward.
        let br = format!("unix:{}", d.join("br0.mgmt").display());
        tool(d, "ovs-ofctl", &["del-flows", &br])?;
        let m = |b: [u8; 6]| {
            b.iter()
                .map(|x| format!("{x:02x}"))
                .collect::<Vec<_>>()
                .join(":")
        };
        let flow = format!(
            "in_port=p0,ip,actions=mod_dl_src:{},mod_dl_dst:{},dec_ttl,output:p1",
            m(crate::gen::ROUTER_MAC),
            m(crate::gen::DST)
        );
        tool(d, "ovs-ofctl", &["add-flow", &br, &flow])?;
    }
    if matches!(cfg.kind, DutKind::OvsCt | DutKind::OvsNat) {
        let br = format!("unix:{}", d.join("br0.mgmt").display());
        tool(d, "ovs-ofctl", &["del-flows", &br])?;
        let m = |b: [u8; 6]| {
            b.iter()
                .map(|x| format!("{x:02x}"))
                .collect::<Vec<_>>()
                .join(":")
        };
        let ip = |a: [u8; 4]| std::net::Ipv4Addr::from(a).to_string();
        let (r, dst, src) = (
            m(crate::gen::ROUTER_MAC),
            m(crate::gen::DST),
            m(crate::gen::SRC),
        );
        let (vip, be) = (crate::dut::VIP, crate::dut::VIP_BACKEND);
        let flows: Vec<String> = if cfg.kind == DutKind::OvsCt {
            // vnfhost-sg's groups as conntrack: p0 may open UDP conversations, p1 be
            // sent UDP to 5201; established ones pass both ways.
            vec![
                "table=0,priority=10,ip,actions=ct(table=1,zone=1)".into(),
                "table=0,priority=0,actions=NORMAL".into(),
                "table=1,priority=20,ct_state=+trk+est,ip,in_port=p0,actions=output:p1".into(),
                "table=1,priority=20,ct_state=+trk+est,ip,in_port=p1,actions=output:p0".into(),
                "table=1,priority=10,ct_state=+trk+new,udp,in_port=p0,tp_dst=5201,actions=ct(commit,zone=1),output:p1".into(),
                "table=1,priority=0,actions=drop".into(),
            ]
        } else {
            // vnfhost-vip as conntrack NAT and the router's rewrite.
            let fwd = format!("mod_dl_src:{r},mod_dl_dst:{dst},dec_ttl,output:p1");
            let back = format!("mod_dl_src:{r},mod_dl_dst:{src},dec_ttl,output:p0");
            vec![
                format!(
                    "table=0,priority=10,udp,in_port=p0,nw_dst={},tp_dst={},actions=ct(table=1,zone=1,nat)",
                    ip(vip.0),
                    vip.1
                ),
                "table=0,priority=10,ip,in_port=p1,actions=ct(table=1,zone=1,nat)".into(),
                "table=0,priority=0,actions=drop".into(),
                format!(
                    "table=1,priority=10,ct_state=+trk+new,udp,in_port=p0,actions=ct(commit,zone=1,nat(dst={}:{})),{fwd}",
                    ip(be.0),
                    be.1
                ),
                format!("table=1,priority=20,ct_state=+trk+est,in_port=p0,actions={fwd}"),
                format!("table=1,priority=20,ct_state=+trk+est,in_port=p1,actions={back}"),
                "table=1,priority=0,actions=drop".into(),
            ]
        };
        for f in flows {
            tool(d, "ovs-ofctl", &["add-flow", &br, &f])?;
        }
    }
    if cfg.kind == DutKind::OvsFlows {
        let br = format!("unix:{}", d.join("br0.mgmt").display());
        tool(d, "ovs-ofctl", &["del-flows", &br])?;
        tool(
            d,
            "ovs-ofctl",
            &["add-flow", &br, "in_port=p0,actions=output:p1"],
        )?;
        tool(
            d,
            "ovs-ofctl",
            &["add-flow", &br, "in_port=p1,actions=output:p0"],
        )?;
    }
    Ok(())
}
