//! One pod network across nodes, on one machine: each "node" is a network namespace
//! with its own `vnfhost daemon` and switch, the underlay two veths through a Linux
//! bridge in a third namespace, and the pods network namespaces attached with
//! `vnfhost-cni` (and, in the QEMU test, Linux pod VMs from topology.yaml). Two tenants
//! use the same prefix on VXLAN networks of their own.
//!
//! - pods reach each other across nodes, by ping and a 10 MB TCP transfer, on both
//!   tenants, and no frame of one tenant reaches the other's pods;
//! - the MTU: the CNI result, the pods' interfaces and the pod VMs' NICs say the
//!   uplink's less 50; a ping of that size passes, one larger is refused by the pod's own
//!   stack, and a pod that ignores the MTU loses its big frames at the uplink, counted;
//! - interop: the Linux kernel's own `vxlan` device, in another namespace, is a VTEP of
//!   the same VNI, reachable from a vnfhost pod and the other way round;
//! - bad input (an uplink that does not exist, a VNI out of range or taken twice, a
//!   tunnel address that is not this node's, a block outside the prefix) is refused with
//!   the field named, and the running configuration stays.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::cni::{cni, conf, Daemon, Netns};
use serde_json::Value;

const VNFHOST: &str = env!("CARGO_BIN_EXE_vnfhost");

/// A command in namespace `ns`.
fn in_ns(ns: &str, args: &[&str]) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns]).args(args);
    c
}

fn ok(ns: &str, args: &[&str]) -> String {
    let o = in_ns(ns, args).output().unwrap();
    assert!(o.status.success(), "{ns}: {args:?}: {o:?}");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn ip(args: &[&str]) {
    let o = Command::new("ip").args(args).output().unwrap();
    assert!(o.status.success(), "ip {args:?}: {o:?}");
}

/// The underlay: `nodes` namespaces, each with a veth `up0` at 192.168.77.(i+1)/24
/// into the bridge of namespace `under`.
struct Underlay {
    _under: Netns,
    nodes: Vec<Netns>,
}

impl Underlay {
    fn new(tag: &str, nodes: usize) -> Underlay {
        let under = Netns::new(format!("{tag}-u"));
        ip(&["-n", &under.0, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &under.0, "link", "set", "br0", "up"]);
        let nodes: Vec<Netns> = (0..nodes)
            .map(|i| {
                let ns = Netns::new(format!("{tag}-n{i}"));
                let peer = format!("{tag}p{i}");
                ip(&[
                    "link", "add", "up0", "netns", &ns.0, "type", "veth", "peer", "name", &peer,
                    "netns", &under.0,
                ]);
                ip(&["-n", &under.0, "link", "set", &peer, "master", "br0"]);
                ip(&["-n", &under.0, "link", "set", &peer, "up"]);
                let addr = format!("192.168.77.{}/24", i + 1);
                ip(&["-n", &ns.0, "addr", "add", &addr, "dev", "up0"]);
                ip(&["-n", &ns.0, "link", "set", "up0", "up"]);
                ip(&["-n", &ns.0, "link", "set", "lo", "up"]);
                ns
            })
            .collect();
        Underlay {
            _under: under,
            nodes,
        }
    }
}

fn daemon_in(ns: &str, run: &Path) -> Daemon {
    common::cni::daemon_in(Some(ns), run)
}

/// `vnfhost up` of `topology`; Ok(stdout) or Err(stderr).
fn up(run: &Path, api: &str, topology: &str) -> Result<String, String> {
    let f = run.join("t.yaml");
    std::fs::write(&f, topology).unwrap();
    let o = Command::new(VNFHOST)
        .args(["up", f.to_str().unwrap(), "--api", api])
        .output()
        .unwrap();
    if o.status.success() {
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&o.stderr).into_owned())
    }
}

fn status(api: &str) -> Value {
    common::cni::status(api)
}

/// The status once `ok` holds for it: the daemon samples the switch's counters every
/// second, so what just happened shows within a couple of seconds.
fn status_until(api: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let t = Instant::now();
    loop {
        let s = status(api);
        if ok(&s) {
            return s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "{what}: not in the status within 10 s: {}",
            s["overlay"]
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Node `i`'s topology: tenants a (red) and b (blue), both 10.1.0.0/24, on VNIs 100
/// and 200, the node's block of each the `i`th /26, the other nodes' VTEPs, and `extra`.
fn node_topology(i: usize, vteps: &[(&str, &str)], extra: &str) -> String {
    let block = format!("10.1.0.{}/26", i * 64);
    let vteps: Vec<String> = vteps
        .iter()
        .map(|(n, a)| format!("{{ name: {n}, address: {a} }}"))
        .collect();
    format!(
        r#"
switch: {{ cores: [0], uplink: {{ interface: up0 }} }}
networks:
  - {{ name: red, tenant: a, cidrs: [10.1.0.0/24], vni: 100, pool: {block} }}
  - {{ name: blue, tenant: b, cidrs: [10.1.0.0/24], vni: 200, pool: {block} }}
vteps: [{}]
{extra}"#,
        vteps.join(", ")
    )
}

/// A pod: a namespace with IPv6 off (so nothing but the test's own traffic moves) and an
/// interface from `vnfhost-cni` on `network`; returns it with the CNI result.
fn pod(name: String, network: &str, api: &str) -> (Netns, Value) {
    let ns = Netns::new(name);
    for k in ["all", "default"] {
        ok(
            &ns.0,
            &[
                "sysctl",
                "-qw",
                &format!("net.ipv6.conf.{k}.disable_ipv6=1"),
            ],
        );
    }
    ok(&ns.0, &["ip", "link", "set", "lo", "up"]);
    let (good, v, _) = cni("ADD", &ns.0, &ns.path(), &conf(network, "1.1.0", api), api);
    assert!(good, "ADD {}: {v}", ns.0);
    (ns, v)
}

fn rx_packets(ns: &Netns) -> u64 {
    ok(&ns.0, &["cat", "/sys/class/net/eth0/statistics/rx_packets"])
        .trim()
        .parse()
        .unwrap()
}

fn ping(ns: &Netns, to: &str, size: usize) -> std::process::Output {
    in_ns(
        &ns.0,
        &[
            "ping",
            "-c",
            "2",
            "-i",
            "0.2",
            "-W",
            "2",
            "-M",
            "do",
            "-s",
            &size.to_string(),
            to,
        ],
    )
    .output()
    .unwrap()
}

/// Pings until one answer comes (the first frames also resolve the underlay's and the
/// pods' neighbours).
fn ping_until(ns: &Netns, to: &str, timeout: Duration) {
    let t = Instant::now();
    loop {
        let o = in_ns(&ns.0, &["ping", "-c", "1", "-W", "1", to])
            .output()
            .unwrap();
        if o.status.success() {
            return;
        }
        assert!(t.elapsed() < timeout, "{} cannot reach {to}: {o:?}", ns.0);
    }
}

const SERVER: &str = r#"
import hashlib, socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 5001)); s.listen(1); print("ready", flush=True)
c, _ = s.accept(); h = hashlib.sha256(); n = 0
while True:
    b = c.recv(1 << 16)
    if not b: break
    h.update(b); n += len(b)
print(n, h.hexdigest(), flush=True)
"#;

const CLIENT: &str = r#"
import hashlib, random, socket, sys
random.seed(7); data = random.randbytes(10 << 20)
c = socket.create_connection((sys.argv[1], 5001), timeout=30); c.sendall(data); c.close()
print(len(data), hashlib.sha256(data).hexdigest(), flush=True)
"#;

/// 10 MiB over TCP from `from` to `to` (at `ip`): (bytes, sha256) as sent and as
/// received.
fn tcp_10mb(from: &Netns, to: &Netns, ip: &str) -> (String, String) {
    let mut server = Reaped(
        in_ns(&to.0, &["python3", "-c", SERVER])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut lines = BufReader::new(server.0.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "ready");
    let sent = ok(&from.0, &["python3", "-c", CLIENT, ip]);
    let got = lines.next().unwrap().unwrap();
    (sent.trim().to_string(), got)
}

/// A child killed and reaped when dropped (a failed transfer must not leave its server).
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn two_nodes_carry_two_tenants_with_one_prefix_over_vxlan_and_never_mix_them() {
    let _serial = common::serial();
    let tag = format!("ov{}", std::process::id() % 10000);
    let u = Underlay::new(&tag, 2);
    let dir = common::TestDir::new("overlay").unwrap();
    let (r0, r1) = (dir.join("n0"), dir.join("n1"));
    std::fs::create_dir_all(&r0).unwrap();
    std::fs::create_dir_all(&r1).unwrap();
    let d0 = daemon_in(&u.nodes[0].0, &r0);
    let d1 = daemon_in(&u.nodes[1].0, &r1);
    up(&r0, &d0.1, &node_topology(0, &[("n1", "192.168.77.2")], "")).unwrap();
    up(&r1, &d1.1, &node_topology(1, &[("n0", "192.168.77.1")], "")).unwrap();

    let (red0, v) = pod(format!("{tag}-r0"), "red", &d0.1);
    assert_eq!(v["interfaces"][0]["mtu"], 1450, "CNI 1.1 result: {v}");
    assert_eq!(v["ips"][0]["address"], "10.1.0.1/24", "node 0's block: {v}");
    let (blue0, _) = pod(format!("{tag}-b0"), "blue", &d0.1);
    let (red1, v) = pod(format!("{tag}-r1"), "red", &d1.1);
    assert_eq!(
        v["ips"][0]["address"], "10.1.0.64/24",
        "node 1's block: {v}"
    );
    let (blue1, v) = pod(format!("{tag}-b1"), "blue", &d1.1);
    assert_eq!(
        v["ips"][0]["address"], "10.1.0.64/24",
        "the same address, tenant b"
    );
    assert!(ok(&red0.0, &["ip", "link", "show", "eth0"]).contains("mtu 1450"));

    // Across nodes, on both tenants: the same address answers with its own tenant's MAC.
    ping_until(&red0, "10.1.0.64", Duration::from_secs(20));
    ping_until(&blue0, "10.1.0.64", Duration::from_secs(20));
    let mac_of = |ns: &Netns| {
        ok(&ns.0, &["cat", "/sys/class/net/eth0/address"])
            .trim()
            .to_string()
    };
    let neigh = |ns: &Netns| ok(&ns.0, &["ip", "neigh", "show", "10.1.0.64"]);
    assert!(neigh(&red0).contains(&mac_of(&red1)), "{}", neigh(&red0));
    assert!(neigh(&blue0).contains(&mac_of(&blue1)), "{}", neigh(&blue0));

    // MTU: the largest ping passes; one byte more is refused by the pod's own stack.
    let o = ping(&red0, "10.1.0.64", 1450 - 28);
    assert!(o.status.success(), "an MTU-sized ping: {o:?}");
    let o = ping(&red0, "10.1.0.64", 1450 - 27);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("mtu=1450")
            || String::from_utf8_lossy(&o.stdout).contains("mtu=1450"),
        "{o:?}"
    );

    // 10 MB each way of tenant a, then of tenant b; the other tenant's pods receive
    // nothing meanwhile (IPv6 is off in the pods, so no frame of theirs is expected).
    for (tx, rx, others) in [
        (&red0, &red1, [&blue0, &blue1]),
        (&blue1, &blue0, [&red0, &red1]),
    ] {
        let to = if std::ptr::eq(rx, &red1) || std::ptr::eq(rx, &blue1) {
            "10.1.0.64"
        } else {
            "10.1.0.1"
        };
        let before: Vec<u64> = others.iter().map(|n| rx_packets(n)).collect();
        let t = Instant::now();
        let (sent, got) = tcp_10mb(tx, rx, to);
        println!(
            "10 MiB {} -> {}: {:.2} s",
            tx.0,
            rx.0,
            t.elapsed().as_secs_f64()
        );
        assert_eq!(sent, got, "what arrived is what was sent");
        let after: Vec<u64> = others.iter().map(|n| rx_packets(n)).collect();
        assert_eq!(before, after, "the other tenant's pods received frames");
    }

    // A pod that ignores the MTU: its big frames cannot leave through the uplink and are
    // counted there, not sent in pieces.
    ok(&red0.0, &["ip", "link", "set", "eth0", "mtu", "1500"]);
    let o = ping(&red0, "10.1.0.64", 1472);
    assert!(!o.status.success(), "{o:?}");
    let s = status_until(&d0.1, "frame_too_big >= 2", |s| {
        s["overlay"]["drops"]["frame_too_big"].as_u64().unwrap_or(0) >= 2
    });
    let ov = &s["overlay"];
    assert_eq!(ov["mtu"], 1500);
    assert_eq!(ov["pod_mtu"], 1450);
    assert!(ov["decapsulated"].as_u64().unwrap() > 1000, "{ov}");
    let t = &ov["tunnels"];
    assert_eq!(t.as_array().map(Vec::len), Some(2), "{t}");
    assert!(t[0]["next_hop_mac"].is_string(), "{t}");
    // `vnfhost status` shows the uplink and its tunnels.
    let o = Command::new(VNFHOST)
        .args(["status", "--api", &d0.1])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("uplink: up0 192.168.77.1 (MTU 1500, pods 1450)"),
        "{text}"
    );
    assert!(text.contains("tunnel vx.100.192.168.77.2"), "{text}");
    drop((d0, d1));
}

#[test]
fn the_linux_kernels_vxlan_is_a_vtep_of_the_same_network() {
    let _serial = common::serial();
    let tag = format!("ok{}", std::process::id() % 10000);
    // Node 0 runs vnfhost; "node" 1 is the kernel: a vxlan device bridged to a veth whose
    // far end, in namespace kpod, holds an address of the pod network.
    let u = Underlay::new(&tag, 2);
    let k = &u.nodes[1].0;
    ip(&[
        "-n",
        k,
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
        "192.168.77.2",
        "dev",
        "up0",
    ]);
    ip(&["-n", k, "link", "add", "kbr", "type", "bridge"]);
    ip(&["-n", k, "link", "set", "vx0", "master", "kbr"]);
    let kpod = Netns::new(format!("{tag}-kp"));
    ip(&[
        "-n", k, "link", "add", "kv0", "type", "veth", "peer", "name", "eth0", "netns", &kpod.0,
    ]);
    ip(&["-n", k, "link", "set", "kv0", "master", "kbr"]);
    for l in ["vx0", "kbr", "kv0"] {
        ip(&["-n", k, "link", "set", l, "up"]);
    }
    // Head-end replication on the kernel's side: every unknown frame to node 0.
    let o = Command::new("bridge")
        .args([
            "-n",
            k,
            "fdb",
            "append",
            "00:00:00:00:00:00",
            "dev",
            "vx0",
            "dst",
            "192.168.77.1",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    ip(&["-n", &kpod.0, "addr", "add", "10.1.0.200/24", "dev", "eth0"]);
    ip(&["-n", &kpod.0, "link", "set", "eth0", "mtu", "1450"]);
    ip(&["-n", &kpod.0, "link", "set", "eth0", "up"]);
    // A veth hands on what its sender's stack left for the hardware: segmentation of
    // whole TCP windows (which no wire carries) is turned off; checksums left for the
    // hardware to finish stay on, and the uplink finishes them.
    ok(
        &kpod.0,
        &["ethtool", "-K", "eth0", "tso", "off", "gso", "off"],
    );

    let dir = common::TestDir::new("overlay-kernel").unwrap();
    let run = dir.join("n0");
    std::fs::create_dir_all(&run).unwrap();
    let d = daemon_in(&u.nodes[0].0, &run);
    up(
        &run,
        &d.1,
        &node_topology(0, &[("kernel", "192.168.77.2")], ""),
    )
    .unwrap();
    let (red, _) = pod(format!("{tag}-r0"), "red", &d.1);
    let before = unreachables(&u.nodes[0]);
    ping_until(&red, "10.1.0.200", Duration::from_secs(20));
    ping_until(&kpod, "10.1.0.1", Duration::from_secs(10));
    let o = ping(&kpod, "10.1.0.1", 1450 - 28);
    assert!(
        o.status.success(),
        "MTU-sized, from the kernel's side: {o:?}"
    );
    let (sent, got) = tcp_10mb(&kpod, &red, "10.1.0.1");
    assert_eq!(sent, got);
    let (sent, got) = tcp_10mb(&red, &kpod, "10.1.0.200");
    assert_eq!(sent, got);
    // vnfhost's VNI 200 got nothing of VNI 100, and the node's kernel, which sees the
    // same datagrams, answered none of them with ICMP port unreachable (the guard
    // socket): its count of unreachables sent did not move during the traffic.
    // 10 MiB from the kernel's side is at least 7 200 frames of at most 1 450 bytes.
    let s = status_until(&d.1, "the transfers' frames", |s| {
        s["overlay"]["decapsulated"].as_u64().unwrap_or(0) > 7_000
    });
    assert_eq!(
        s["overlay"]["decap_drops"],
        serde_json::json!({}),
        "{}",
        s["overlay"]
    );
    assert_eq!(unreachables(&u.nodes[0]), before, "ICMP unreachables sent");
    drop(d);
}

/// ICMP destination unreachables the namespace's kernel has sent (`OutType3`).
fn unreachables(ns: &Netns) -> u64 {
    let snmp = ok(&ns.0, &["cat", "/proc/net/snmp"]);
    let mut lines = snmp.lines().filter(|l| l.starts_with("IcmpMsg:"));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "OutType3")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

#[test]
fn bad_overlay_input_is_refused_with_the_field_named_and_nothing_changes() {
    let _serial = common::serial();
    let tag = format!("ob{}", std::process::id() % 10000);
    let u = Underlay::new(&tag, 1);
    let dir = common::TestDir::new("overlay-bad").unwrap();
    let run = dir.join("n0");
    std::fs::create_dir_all(&run).unwrap();
    let d = daemon_in(&u.nodes[0].0, &run);
    let good = node_topology(0, &[("n1", "192.168.77.2")], "");
    up(&run, &d.1, &good).unwrap();
    // The daemon samples the switch's counters every second.
    let t = Instant::now();
    while status(&d.1)["overlay"]["interface"] != "up0" {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "no overlay in the status"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let generation = status(&d.1)["generation"].clone();
    for (bad, field) in [
        (
            good.replace("interface: up0", "interface: nope0"),
            "switch.uplink.interface",
        ),
        (
            good.replace("interface: up0", "interface: up0, address: 192.168.77.9"),
            "switch.uplink.address",
        ),
        (good.replace("vni: 200", "vni: 16777216"), "networks[1].vni"),
        (good.replace("vni: 200", "vni: 100"), "networks[1].vni"),
        (
            good.replace("pool: 10.1.0.0/26", "pool: 10.2.0.0/26"),
            "networks[0].pool",
        ),
        (
            good.replace("address: 192.168.77.2", "address: 192.168.77.1"),
            "vteps[0].address",
        ),
        (
            good.replace(
                "switch: { cores: [0], uplink: { interface: up0 } }",
                "switch: { cores: [0] }",
            ),
            "networks[0].vni",
        ),
    ] {
        let e = up(&run, &d.1, &bad).expect_err(&bad);
        assert!(e.contains(field), "want {field}: {e}");
        let s = status(&d.1);
        assert_eq!(s["generation"], generation, "a refusal changed something");
        assert_eq!(s["overlay"]["interface"], "up0");
    }
    drop(d);
}

#[test]
fn pod_vms_on_two_nodes_reach_each_other_and_are_told_the_mtu() {
    common::skip!(common::qemu::qemu_unavailable());
    let (kernel, initrd) = match common::qemu::guest_image() {
        Ok(x) => x,
        Err(e) => panic!("guest image: {e}"),
    };
    let _serial = common::serial();
    std::env::set_var("VNFHOST_GUEST_KERNEL", &kernel);
    std::env::set_var("VNFHOST_GUEST_INITRD", &initrd);
    let tag = format!("oq{}", std::process::id() % 10000);
    let u = Underlay::new(&tag, 2);
    let dir = common::TestDir::new("overlay-vm").unwrap();
    let runs = [dir.join("n0"), dir.join("n1")];
    let mut daemons = Vec::new();
    for (i, run) in runs.iter().enumerate() {
        std::fs::create_dir_all(run).unwrap();
        daemons.push(daemon_in(&u.nodes[i].0, run));
    }
    // vm0 on node 0 prints the MTU its NIC was given, then pings vm1 on node 1.
    let vm = |i: usize, command: &str| {
        format!(
            "pods:\n  - name: vm{i}\n    hypervisor: qemu\n    memory: 192Mi\n    cpus: [1]\n    \
             restart: never\n{command}    interfaces: [{{ network: red, mac: \"52:54:00:00:01:0{i}\", \
             ips: [10.1.0.{}/24] }}]\n",
            10 + 64 * i
        )
    };
    let cmd0 = "    command: \"cat /sys/class/net/eth0/mtu; ping -c 60 -i 0.5 10.1.0.74\"\n";
    up(
        &runs[0],
        &daemons[0].1,
        &node_topology(0, &[("n1", "192.168.77.2")], &vm(0, cmd0)),
    )
    .unwrap();
    up(
        &runs[1],
        &daemons[1].1,
        &node_topology(1, &[("n0", "192.168.77.1")], &vm(1, "")),
    )
    .unwrap();
    // A CNI pod on node 0 reaches the VM on node 1 too.
    let (red0, _) = pod(format!("{tag}-r0"), "red", &daemons[0].1);
    ping_until(&red0, "10.1.0.74", Duration::from_secs(90));
    let console = runs[0].join("pods/vm0/console.log");
    let t = Instant::now();
    loop {
        let c = std::fs::read_to_string(&console).unwrap_or_default();
        if c.contains("bytes from 10.1.0.74") {
            assert!(
                c.lines().any(|l| l.trim() == "1450"),
                "the VM's NIC was not told MTU 1450:\n{c}"
            );
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(90),
            "vm0 got no answer from vm1 across the nodes:\n{c}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    // A container image in a pod VM (`vnfhost run --net red` on node 0) is told the MTU
    // too, and reaches the VM on node 1.
    if common::find_in_path("mkfs.ext4").is_some() {
        let oci = dir.join("bb.tar");
        let o = Command::new("python3")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/cri/cri_tool.py"
            ))
            .args(["image", oci.to_str().unwrap(), "test/busybox:1"])
            .output()
            .unwrap();
        assert!(o.status.success(), "{o:?}");
        let o = Command::new(VNFHOST)
            .args([
                "run",
                "--name",
                "img0",
                "--api",
                &daemons[0].1,
                "--net",
                "red",
            ])
            .arg("--image")
            .arg(format!("oci-archive:{}", oci.display()))
            .args([
                "--",
                "sh",
                "-c",
                "cat /sys/class/net/eth0/mtu && ping -c 2 -W 5 10.1.0.74",
            ])
            .env("VNFHOST_PODS", dir.join("pods"))
            .env("VNFHOST_IMAGES", dir.join("images"))
            .env("VNFHOST_CACHE", dir.join("cache"))
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success(), "{o:?}");
        assert_eq!(out.lines().next(), Some("1450"), "{out}");
        assert!(out.contains("bytes from 10.1.0.74"), "{out}");
    } else {
        println!("(the image pod part needs mkfs.ext4)");
    }
    drop(daemons);
}

#[test]
fn the_gateway_is_answered_by_the_askers_own_node_only() {
    let _serial = common::serial();
    let tag = format!("og{}", std::process::id() % 10000);
    let u = Underlay::new(&tag, 2);
    let dir = common::TestDir::new("overlay-gw").unwrap();
    // Every node has tenant a's router with the same gateway address (and MAC) on red.
    let routed = |i: usize, other: &str| {
        node_topology(i, &[("other", other)], "")
            .replace("vni: 100, pool:", "vni: 100, gateway: [10.1.0.254], pool:")
            + "routers: [{ name: ra, tenant: a, networks: [red] }]\n"
    };
    let mut daemons = Vec::new();
    for (i, other) in ["192.168.77.2", "192.168.77.1"].iter().enumerate() {
        let run = dir.join(&format!("n{i}"));
        std::fs::create_dir_all(&run).unwrap();
        let d = daemon_in(&u.nodes[i].0, &run);
        up(&run, &d.1, &routed(i, other)).unwrap();
        daemons.push(d);
    }
    let (red0, _) = pod(format!("{tag}-r0"), "red", &daemons[0].1);
    let (_red1, _) = pod(format!("{tag}-r1"), "red", &daemons[1].1);
    // The broadcast request reaches node 1's pods too (it is flooded), but only node 0's
    // router answers it: one reply, not one per node.
    ping_until(&red0, "10.1.0.254", Duration::from_secs(20));
    let o = in_ns(
        &red0.0,
        &[
            "busybox",
            "arping",
            "-c",
            "2",
            "-w",
            "3",
            "-I",
            "eth0",
            "10.1.0.254",
        ],
    )
    .output()
    .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("Received 2 response"),
        "one reply per request, from this node's router only:\n{out}"
    );
    ping_until(&red0, "10.1.0.64", Duration::from_secs(20));
    drop(daemons);
}
