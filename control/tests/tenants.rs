//! Tenant isolation, end to end through the control plane's own path: a topology with
//! two tenants whose address spaces overlap is planned by `control::plan` exactly as the
//! daemon plans it, and applied to a `vnfhost switch --control` process over its control
//! socket. vnfhost's virtio-user frontends stand in for the pods' NICs on the pods' port
//! sockets (real vhost-user, real shared memory), so the test can send what a hostile
//! guest would: spoofed MACs and addresses, double-tagged frames, ARP replies for other
//! tenants' addresses, and routed packets toward addresses that exist in the other
//! tenant. Nothing of it may reach tenant blue.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use api::http::request;
use api::switch::{ApplyReply, SwitchCounters, SwitchSpec};
use control::plan::{plan, GuestImage};
use pmd::virtio_user::{VirtioUser, VirtioUserConfig};

const TOPOLOGY: &str = r#"
switch: { cores: [1] }
networks:
  - { name: red-1, tenant: red, cidrs: [10.0.0.0/24], vlan: 10, gateway: [10.0.0.254] }
  - { name: red-2, tenant: red, cidrs: [10.0.1.0/24], vlan: 11, gateway: [10.0.1.254] }
  - { name: blue-1, tenant: blue, cidrs: [10.0.0.0/24], vlan: 20, gateway: [10.0.0.254] }
  - { name: blue-2, tenant: blue, cidrs: [10.0.1.0/24], vlan: 21, gateway: [10.0.1.254] }
routers:
  - { name: red-r, tenant: red, networks: [red-1, red-2] }
  - { name: blue-r, tenant: blue, networks: [blue-1, blue-2] }
pods:
  - name: red-a
    memory: 64Mi
    interfaces: [{ network: red-1, mac: "02:00:00:00:01:0a", ips: [10.0.0.1/24] }]
  - name: red-b
    memory: 64Mi
    interfaces: [{ network: red-2, mac: "02:00:00:00:01:0b", ips: [10.0.1.1/24] }]
  - name: blue-a
    memory: 64Mi
    interfaces: [{ network: blue-1, mac: "02:00:00:00:02:0a", ips: [10.0.0.1/24] }]
  - name: blue-b
    memory: 64Mi
    interfaces: [{ network: blue-2, mac: "02:00:00:00:02:0b", ips: [10.0.1.1/24] }]
"#;

const RED_A: [u8; 6] = [2, 0, 0, 0, 1, 0x0a];
const RED_B: [u8; 6] = [2, 0, 0, 0, 1, 0x0b];
const BLUE_A: [u8; 6] = [2, 0, 0, 0, 2, 0x0a];
const BLUE_B: [u8; 6] = [2, 0, 0, 0, 2, 0x0b];
const ROUTER: [u8; 6] = [0x02, 0x76, 0x6e, 0x68, 0x72, 0x01];

struct Switch {
    child: std::process::Child,
    sock: PathBuf,
}

impl Drop for Switch {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

fn start_switch(run: &Path, args: &[String]) -> Switch {
    let log = std::fs::File::create(run.join("switch.log")).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vnfhost"));
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    common::qemu::set_pdeathsig(&mut cmd);
    let child = cmd.spawn().expect("vnfhost switch starts");
    let sock = control::plan::switch_socket(run);
    let t = Instant::now();
    while std::os::unix::net::UnixStream::connect(&sock).is_err() {
        assert!(t.elapsed() < Duration::from_secs(10), "no control socket");
        std::thread::sleep(Duration::from_millis(20));
    }
    Switch { child, sock }
}

fn csum(b: &[u8]) -> u16 {
    vswitch::wire::checksum(b)
}

/// An IPv4/UDP frame with a valid header checksum.
fn udp(dst: [u8; 6], src: [u8; 6], sip: [u8; 4], dip: [u8; 4]) -> Vec<u8> {
    let mut f = vec![0u8; 60];
    f[..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&src);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    f[14] = 0x45;
    f[14 + 2..14 + 4].copy_from_slice(&46u16.to_be_bytes());
    f[14 + 8] = 64;
    f[14 + 9] = 17;
    f[14 + 12..14 + 16].copy_from_slice(&sip);
    f[14 + 16..14 + 20].copy_from_slice(&dip);
    let c = csum(&f[14..34]);
    f[24..26].copy_from_slice(&c.to_be_bytes());
    f
}

fn arp(dst: [u8; 6], op: u8, sha: [u8; 6], spa: [u8; 4], tha: [u8; 6], tpa: [u8; 4]) -> Vec<u8> {
    let mut f = vec![0u8; 60];
    f[..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&sha);
    f[12..14].copy_from_slice(&[0x08, 0x06]);
    f[14..22].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, op]);
    f[22..28].copy_from_slice(&sha);
    f[28..32].copy_from_slice(&spa);
    f[32..38].copy_from_slice(&tha);
    f[38..42].copy_from_slice(&tpa);
    f
}

/// `f` with a VLAN tag (`tpid`, `vid`) pushed after the MACs.
fn tagged(f: &[u8], tpid: u16, vid: u16) -> Vec<u8> {
    let mut t = f.to_vec();
    let tag = [(tpid >> 8) as u8, tpid as u8, (vid >> 8) as u8, vid as u8];
    t.splice(12..12, tag);
    t
}

/// Everything `vu` receives within `wait`.
fn drain(vu: &mut VirtioUser, wait: Duration) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    let t = Instant::now();
    while t.elapsed() < wait {
        if vu.recv(0, 64, |f| got.push(f.to_vec())) == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    got
}

fn counters(sock: &Path) -> SwitchCounters {
    request(sock, "GET", "/v1/stats", None).expect("stats")
}

#[test]
fn no_frame_from_tenant_red_reaches_tenant_blue() {
    let dir = common::TestDir::new("tenants").unwrap();
    let run = dir.path();
    let t = control::topology::parse(TOPOLOGY).expect("topology parses");
    let host = control::topology::Host {
        cpus: 2,
        free_hugepages: 0,
        interface: control::topology::interface_facts,
    };
    assert_eq!(t.check(host), vec![], "overlapping tenants are allowed");
    let image = GuestImage {
        kernel: "/unused".into(),
        initrd: "/unused".into(),
    };
    let p = plan(&t, run, &image, &host).expect("plans");
    let sw = start_switch(run, &p.switch_args);
    let body = serde_json::to_vec(&p.switch).unwrap();
    let r: ApplyReply = request(&sw.sock, "PUT", "/v1/config", Some(&body)).expect("applies");
    assert!(r.failed.is_empty(), "{r:?}");
    let applied: SwitchSpec = request(&sw.sock, "GET", "/v1/config", None).unwrap();
    assert_eq!(applied, p.switch);

    let nic = |pod: &str| {
        let s = run.join("pods").join(pod).join("eth0.sock");
        VirtioUser::new(&VirtioUserConfig::new(&s)).expect("connects to the pod's port")
    };
    let (mut ra, mut rb, mut ba, mut bb) =
        (nic("red-a"), nic("red-b"), nic("blue-a"), nic("blue-b"));
    let t0 = Instant::now();
    while !counters(&sw.sock).ports.iter().all(|p| p.up) {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "ports did not come up"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // Legitimate: red-a → red's router → red-b at 10.0.1.1. blue-b has the same address
    // in its own tenant; the red router must resolve and deliver in red only.
    let to_b = udp(ROUTER, RED_A, [10, 0, 0, 1], [10, 0, 1, 1]);
    assert_eq!(ra.send(0, std::slice::from_ref(&to_b)), 1);
    let got = drain(&mut rb, Duration::from_millis(500));
    let req = got
        .iter()
        .find(|f| f[12..14] == [0x08, 0x06])
        .expect("red's router asks red-b for 10.0.1.1");
    assert_eq!(&req[38..42], &[10, 0, 1, 1]);
    let reply = arp(ROUTER, 2, RED_B, [10, 0, 1, 1], ROUTER, [10, 0, 1, 254]);
    assert_eq!(rb.send(0, std::slice::from_ref(&reply)), 1);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(ra.send(0, std::slice::from_ref(&to_b)), 1);
    let got = drain(&mut rb, Duration::from_millis(500));
    assert!(
        got.iter()
            .any(|f| f[..6] == RED_B && f[12..14] == [0x08, 0x00] && f[14 + 8] == 63),
        "the routed packet reached red-b with TTL 63: {got:?}"
    );

    // Hostile: everything red-a can try to reach blue.
    let attacks: Vec<(&str, Vec<u8>)> = vec![
        // blue-a's MAC as source, to broadcast and straight to blue-b.
        (
            "spoofed MAC",
            udp([0xff; 6], BLUE_A, [10, 0, 0, 1], [10, 0, 0, 2]),
        ),
        (
            "spoofed MAC unicast",
            udp(BLUE_B, BLUE_A, [10, 0, 0, 1], [10, 0, 1, 1]),
        ),
        // An address red-a does not own.
        (
            "spoofed IP",
            udp(ROUTER, RED_A, [10, 0, 0, 9], [10, 0, 1, 1]),
        ),
        // Double tags: C-tag 20 over C-tag 10, an S-tag, and a single tag for blue's VLAN.
        (
            "double-tagged",
            tagged(
                &tagged(
                    &udp(BLUE_A, RED_A, [10, 0, 0, 1], [10, 0, 0, 1]),
                    0x8100,
                    10,
                ),
                0x8100,
                20,
            ),
        ),
        (
            "S-tagged",
            tagged(
                &tagged(
                    &udp(BLUE_A, RED_A, [10, 0, 0, 1], [10, 0, 0, 1]),
                    0x8100,
                    20,
                ),
                0x88a8,
                20,
            ),
        ),
        (
            "tagged for blue",
            tagged(
                &udp(BLUE_B, RED_A, [10, 0, 0, 1], [10, 0, 1, 1]),
                0x8100,
                21,
            ),
        ),
        // ARP replies claiming blue's (and red-b's) addresses for red-a.
        (
            "ARP for a foreign address",
            arp(
                [0xff; 6],
                2,
                RED_A,
                [10, 0, 1, 1],
                [0xff; 6],
                [10, 0, 1, 254],
            ),
        ),
        (
            "gratuitous ARP",
            arp(
                [0xff; 6],
                1,
                RED_A,
                [10, 0, 0, 254],
                [0; 6],
                [10, 0, 0, 254],
            ),
        ),
        // Routed: to blue's router MAC is red's router MAC (one MAC, separate domains);
        // to blue's gateway address, which red's router does not have.
        (
            "to blue's gateway",
            udp(ROUTER, RED_A, [10, 0, 0, 1], [10, 0, 0, 254]),
        ),
        // Plain broadcast and unknown unicast: flood within red-1 only.
        (
            "broadcast",
            udp([0xff; 6], RED_A, [10, 0, 0, 1], [10, 0, 0, 255]),
        ),
        (
            "unknown unicast",
            udp([2, 0, 0, 0, 9, 9], RED_A, [10, 0, 0, 1], [10, 0, 0, 77]),
        ),
    ];
    let before = counters(&sw.sock);
    for (what, f) in &attacks {
        assert_eq!(ra.send(0, std::slice::from_ref(f)), 1, "{what}: sent");
    }
    let blue_a = drain(&mut ba, Duration::from_millis(700));
    let blue_b = drain(&mut bb, Duration::from_millis(10));
    assert!(
        blue_a.is_empty(),
        "tenant blue (blue-a) received {blue_a:?}"
    );
    assert!(
        blue_b.is_empty(),
        "tenant blue (blue-b) received {blue_b:?}"
    );
    let after = counters(&sw.sock);
    let delta = |r: &str| {
        after.bridge_drops.get(r).copied().unwrap_or(0)
            - before.bridge_drops.get(r).copied().unwrap_or(0)
    };
    assert!(delta("spoofed_mac") >= 2, "{:?}", after.bridge_drops);
    assert!(delta("spoofed_ip") >= 1, "{:?}", after.bridge_drops);
    assert!(delta("spoofed_arp") >= 1, "{:?}", after.bridge_drops);
    assert!(
        delta("tagged_on_access") + delta("qinq") >= 3,
        "{:?}",
        after.bridge_drops
    );
    // Blue's ports sent and got nothing at all: not one frame of red's crossed.
    for p in after.ports.iter().filter(|p| p.name.starts_with("blue")) {
        assert_eq!(
            p.tx_packets, 0,
            "{} was sent {} frames",
            p.name, p.tx_packets
        );
    }
}
