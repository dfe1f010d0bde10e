//! `vnfhost switch` as a user runs it, with vnfhost's own virtio-user ports as the VMs.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::switch::SwitchProc;
use pmd::virtio_user::{VirtioUser, VirtioUserConfig};

fn dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vnfhost-sw-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("tmp dir");
    d
}

fn vu(path: &Path) -> VirtioUser {
    VirtioUser::new(&VirtioUserConfig::new(path)).expect("virtio-user connects to the switch")
}

fn frame(dst: [u8; 6], src: [u8; 6], seq: u32, len: usize) -> Vec<u8> {
    let mut f = vec![0u8; len];
    f[..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&src);
    f[12..14].copy_from_slice(&[0x88, 0xb5]);
    f[14..18].copy_from_slice(&seq.to_be_bytes());
    for (i, b) in f[18..].iter_mut().enumerate() {
        *b = (i as u32).wrapping_mul(31).wrapping_add(seq) as u8;
    }
    f
}

/// `--port NAME,vhost-user=SOCK` for each name and socket.
fn port_args(names: &[&str], socks: &[PathBuf]) -> Vec<String> {
    names
        .iter()
        .zip(socks)
        .flat_map(|(n, s)| {
            [
                "--port".to_string(),
                format!("{n},vhost-user={}", s.display()),
            ]
        })
        .collect()
}

const A: [u8; 6] = [2, 0, 0, 0, 0, 0xa];
const B: [u8; 6] = [2, 0, 0, 0, 0, 0xb];
const C: [u8; 6] = [2, 0, 0, 0, 0, 0xc];

/// Sends all `frames` from `tx` and collects what arrives at `rx` until `want` frames
/// came or 10 s passed.
fn pump(tx: &mut VirtioUser, frames: &[Vec<u8>], rx: &mut VirtioUser, want: usize) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    let mut next = 0;
    let t = Instant::now();
    while got.len() < want && t.elapsed() < Duration::from_secs(10) {
        if next < frames.len() {
            next += tx.send(0, &frames[next..(next + 32).min(frames.len())]);
        }
        if rx.recv(0, 64, |f| got.push(f.to_vec())) == 0 {
            std::thread::sleep(Duration::from_micros(100));
        }
    }
    got
}

#[test]
fn frames_cross_the_switch_unchanged_in_order_and_learning_stops_floods() {
    let d = dir("basic");
    let socks: Vec<PathBuf> = ["a", "b", "c"]
        .iter()
        .map(|n| d.join(format!("{n}.sock")))
        .collect();
    let mut args = port_args(&["a", "b", "c"], &socks);
    args.push("--stats".into());
    let sw = SwitchProc::spawn(&args, &d.join("switch.log"), &socks).expect("switch starts");
    for s in &socks {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(s).expect("socket").permissions().mode() & 0o777;
        assert_eq!(mode, 0o660, "{} has mode {mode:o}", s.display());
    }
    let (mut a, mut b, mut c) = (vu(&socks[0]), vu(&socks[1]), vu(&socks[2]));
    std::thread::sleep(Duration::from_millis(300));

    // A → B before anyone has spoken: flooded to B and C.
    let first = frame(B, A, 0, 64);
    let got = pump(&mut a, std::slice::from_ref(&first), &mut b, 1);
    if got.is_empty() {
        let _ = sw.stop(libc::SIGTERM);
        panic!(
            "nothing arrived; switch log:\n{}",
            std::fs::read_to_string(d.join("switch.log")).unwrap_or_default()
        );
    }
    assert_eq!(got, vec![first.clone()]);
    assert_eq!(
        c.recv_wait(0, 1, Duration::from_secs(2)),
        vec![first],
        "unknown unicast is flooded"
    );
    // B answers: the switch learned A, so only A gets it.
    let reply = frame(A, B, 1, 64);
    assert_eq!(
        pump(&mut b, std::slice::from_ref(&reply), &mut a, 1),
        vec![reply]
    );
    // Now A → B is known unicast: 2000 frames of mixed sizes, all to B, in order, and
    // none to C.
    let frames: Vec<Vec<u8>> = (0..2000)
        .map(|i| frame(B, A, i + 2, 60 + (i as usize * 7) % 1455))
        .collect();
    let got = pump(&mut a, &frames, &mut b, frames.len());
    assert_eq!(got.len(), frames.len(), "frames lost");
    assert!(got == frames, "frames changed or reordered");
    assert!(
        c.recv_wait(0, 1, Duration::from_millis(300)).is_empty(),
        "learned unicast leaked to C"
    );

    std::thread::sleep(Duration::from_millis(1100));
    let log = sw.log_text();
    assert!(
        log.contains("a: rx ") && log.contains(" pps"),
        "--stats printed no rates:\n{log}"
    );
    let st = sw.stop(libc::SIGTERM).expect("stops on SIGTERM");
    assert!(st.success(), "exit status {st:?}");
    for s in &socks {
        assert!(!s.exists(), "{} left behind", s.display());
    }
}

#[test]
fn access_ports_in_different_vlans_are_isolated_and_trunks_tag() {
    let d = dir("vlan");
    let socks: Vec<PathBuf> = ["a10", "b20", "t"]
        .iter()
        .map(|n| d.join(format!("{n}.sock")))
        .collect();
    let args = vec![
        "--port".to_string(),
        format!("a10,vhost-user={},vlan=10", socks[0].display()),
        "--port".to_string(),
        format!("b20,vhost-user={},vlan=20", socks[1].display()),
        "--port".to_string(),
        format!("t,vhost-user={},trunk=10-20", socks[2].display()),
    ];
    let _sw = SwitchProc::spawn(&args, &d.join("switch.log"), &socks).expect("switch starts");
    let (mut a, mut b, mut t) = (vu(&socks[0]), vu(&socks[1]), vu(&socks[2]));
    std::thread::sleep(Duration::from_millis(300));

    // A broadcast from the VLAN 10 access port reaches the trunk tagged 10, never B.
    let bc = frame([0xff; 6], A, 1, 60);
    let got = pump(&mut a, std::slice::from_ref(&bc), &mut t, 1);
    assert_eq!(got.len(), 1);
    assert_eq!(
        &got[0][12..16],
        &[0x81, 0x00, 0x00, 0x0a],
        "trunk copy carries tag 10"
    );
    assert_eq!(&got[0][16..], &bc[12..]);
    assert!(
        b.recv_wait(0, 1, Duration::from_millis(300)).is_empty(),
        "VLAN 10 leaked into VLAN 20"
    );

    // A tagged-20 frame from the trunk reaches B untagged, and not A.
    let mut tagged = frame(C, [2, 0, 0, 0, 0, 0x77], 2, 60);
    tagged.splice(12..12, [0x81, 0x00, 0x00, 0x14]);
    let got = pump(&mut t, std::slice::from_ref(&tagged), &mut b, 1);
    assert_eq!(got.len(), 1);
    assert_eq!(&got[0][12..], &tagged[16..], "access copy is untagged");
    assert!(
        a.recv_wait(0, 1, Duration::from_millis(300)).is_empty(),
        "VLAN 20 leaked into VLAN 10"
    );
}

/// An IPv4 frame (just enough header for port security) from `src`/`ip`.
fn ipv4(dst: [u8; 6], src: [u8; 6], ip: [u8; 4]) -> Vec<u8> {
    let mut f = vec![0u8; 60];
    f[..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&src);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    f[14] = 0x45;
    f[14 + 12..14 + 16].copy_from_slice(&ip);
    f[14 + 16..14 + 20].copy_from_slice(&[10, 0, 0, 2]);
    f
}

#[test]
fn port_security_drops_spoofed_macs_and_addresses_and_counts_them() {
    let d = dir("spoof");
    let socks: Vec<PathBuf> = ["a", "b"]
        .iter()
        .map(|n| d.join(format!("{n}.sock")))
        .collect();
    let args = vec![
        "--port".to_string(),
        format!(
            "a,vhost-user={},mac=02:00:00:00:00:0a,ip=10.0.0.1,ip=fd00::1",
            socks[0].display()
        ),
        "--port".to_string(),
        format!("b,vhost-user={}", socks[1].display()),
    ];
    let log = d.join("switch.log");
    let sw = SwitchProc::spawn(&args, &log, &socks).expect("switch starts");
    let (mut a, mut b) = (vu(&socks[0]), vu(&socks[1]));
    std::thread::sleep(Duration::from_millis(300));

    let good = ipv4([0xff; 6], A, [10, 0, 0, 1]);
    let got = pump(&mut a, std::slice::from_ref(&good), &mut b, 1);
    assert_eq!(got, vec![good.clone()], "the port's own address passes");

    // Another guest's MAC, and another address with the port's MAC: neither arrives.
    let spoofed = [
        ipv4([0xff; 6], C, [10, 0, 0, 1]),
        ipv4([0xff; 6], A, [10, 0, 0, 3]),
    ];
    assert_eq!(a.send(0, &spoofed), 2);
    assert!(
        b.recv_wait(0, 1, Duration::from_millis(500)).is_empty(),
        "a spoofed frame crossed the switch"
    );
    // The spoofed MAC was not learned: a frame to C from B floods back to A's port (the
    // port is policed on what it sends, not on what it receives).
    let to_c = frame(C, B, 9, 60);
    assert_eq!(
        pump(&mut b, std::slice::from_ref(&to_c), &mut a, 1).len(),
        1
    );

    let st = sw.stop(libc::SIGTERM).expect("switch stops");
    assert!(st.success());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("spoofed_mac=1") && text.contains("spoofed_ip=1"),
        "{text}"
    );
}

const RMAC: [u8; 6] = [0x02, 0x76, 0x6e, 0x68, 0x72, 0x01];

fn csum(b: &[u8]) -> u16 {
    vswitch::wire::checksum(b)
}

/// An IPv4/UDP frame with a valid header checksum.
fn udp(dst: [u8; 6], src: [u8; 6], sip: [u8; 4], dip: [u8; 4], ttl: u8) -> Vec<u8> {
    let mut f = ipv4(dst, src, sip);
    f[14 + 2..14 + 4].copy_from_slice(&46u16.to_be_bytes());
    f[14 + 8] = ttl;
    f[14 + 9] = 17;
    f[14 + 16..14 + 20].copy_from_slice(&dip);
    f[34..]
        .iter_mut()
        .enumerate()
        .for_each(|(i, b)| *b = i as u8);
    let c = csum(&f[14..34]);
    f[24..26].copy_from_slice(&c.to_be_bytes());
    f
}

fn arp_frame(
    dst: [u8; 6],
    op: u16,
    sha: [u8; 6],
    spa: [u8; 4],
    tha: [u8; 6],
    tpa: [u8; 4],
) -> Vec<u8> {
    let mut f = vec![0u8; 60];
    f[..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&sha);
    f[12..14].copy_from_slice(&[0x08, 0x06]);
    f[14..22].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, op as u8]);
    f[22..28].copy_from_slice(&sha);
    f[28..32].copy_from_slice(&spa);
    f[32..38].copy_from_slice(&tha);
    f[38..42].copy_from_slice(&tpa);
    f
}

#[test]
fn the_router_answers_arp_resolves_routes_between_vlans_and_reports_ttl_expiry() {
    let d = dir("route");
    let socks: Vec<PathBuf> = ["a", "b"]
        .iter()
        .map(|n| d.join(format!("{n}.sock")))
        .collect();
    let args = vec![
        "--port".to_string(),
        format!("a,vhost-user={},vlan=10", socks[0].display()),
        "--port".to_string(),
        format!("b,vhost-user={},vlan=20", socks[1].display()),
        "--router-if".to_string(),
        "vlan=10,ip=10.0.0.254/24".to_string(),
        "--router-if".to_string(),
        "vlan=20,ip=10.0.1.254/24".to_string(),
    ];
    let log = d.join("switch.log");
    let sw = SwitchProc::spawn(&args, &log, &socks).expect("switch starts");
    let (mut a, mut b) = (vu(&socks[0]), vu(&socks[1]));
    std::thread::sleep(Duration::from_millis(300));

    // A asks for its gateway and gets the router's MAC.
    let req = arp_frame([0xff; 6], 1, A, [10, 0, 0, 1], [0; 6], [10, 0, 0, 254]);
    assert_eq!(a.send(0, std::slice::from_ref(&req)), 1);
    let got = a.recv_wait(0, 1, Duration::from_secs(5));
    assert_eq!(got.len(), 1, "no ARP reply for the gateway");
    assert_eq!(&got[0][..6], &A);
    assert_eq!(&got[0][20..22], &[0, 2], "an ARP reply");
    assert_eq!(&got[0][22..28], &RMAC);
    assert_eq!(&got[0][28..32], &[10, 0, 0, 254]);
    assert!(
        b.recv_wait(0, 1, Duration::from_millis(300)).is_empty(),
        "VLAN 10's ARP leaked"
    );

    // A packet for B: the router does not know B yet and asks on VLAN 20.
    let pkt = udp(RMAC, A, [10, 0, 0, 1], [10, 0, 1, 1], 64);
    assert_eq!(a.send(0, std::slice::from_ref(&pkt)), 1);
    let got = b.recv_wait(0, 1, Duration::from_secs(5));
    assert_eq!(got.len(), 1, "the router did not ask for B");
    assert_eq!(&got[0][..6], &[0xff; 6]);
    assert_eq!(&got[0][12..14], &[0x08, 0x06]);
    assert_eq!(
        &got[0][28..32],
        &[10, 0, 1, 254],
        "asked by the VLAN 20 gateway"
    );
    assert_eq!(&got[0][38..42], &[10, 0, 1, 1], "for B");

    // B answers; A sends again; B gets the packet routed.
    let reply = arp_frame(RMAC, 2, B, [10, 0, 1, 1], RMAC, [10, 0, 1, 254]);
    assert_eq!(b.send(0, std::slice::from_ref(&reply)), 1);
    std::thread::sleep(Duration::from_millis(200));
    let got = pump(&mut a, std::slice::from_ref(&pkt), &mut b, 1);
    assert_eq!(got.len(), 1, "the routed packet did not arrive");
    let r = &got[0];
    assert_eq!(&r[..6], &B, "to B's MAC");
    assert_eq!(&r[6..12], &RMAC, "from the router");
    assert_eq!(r[22], 63, "TTL decremented");
    assert_eq!(csum(&r[14..34]), 0, "header checksum still valid");
    assert_eq!(&r[26..], &pkt[26..], "addresses and payload unchanged");

    // TTL 1: A gets ICMP time exceeded from its gateway, B gets nothing.
    let dying = udp(RMAC, A, [10, 0, 0, 1], [10, 0, 1, 1], 1);
    assert_eq!(a.send(0, std::slice::from_ref(&dying)), 1);
    let got = a.recv_wait(0, 1, Duration::from_secs(5));
    assert_eq!(got.len(), 1, "no ICMP time exceeded");
    let icmp = &got[0];
    assert_eq!(&icmp[26..30], &[10, 0, 0, 254]);
    assert_eq!((icmp[23], icmp[34], icmp[35]), (1, 11, 0));
    assert_eq!(&icmp[42..70], &dying[14..42], "quotes the dropped header");
    assert!(b.recv_wait(0, 1, Duration::from_millis(300)).is_empty());

    let st = sw.stop(libc::SIGTERM).expect("switch stops");
    assert!(st.success());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("router: routed 1, generated 3"), "{text}");
}

fn ipv6_frame(
    dst: [u8; 6],
    src: [u8; 6],
    sip: [u8; 16],
    dip: [u8; 16],
    next: u8,
    hops: u8,
    payload: &[u8],
) -> Vec<u8> {
    let mut f = vec![0u8; 54];
    f[..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&src);
    f[12..14].copy_from_slice(&[0x86, 0xdd]);
    f[14] = 0x60;
    f[18..20].copy_from_slice(&(payload.len() as u16).to_be_bytes());
    f[20] = next;
    f[21] = hops;
    f[22..38].copy_from_slice(&sip);
    f[38..54].copy_from_slice(&dip);
    f.extend_from_slice(payload);
    if next == 58 {
        // ICMPv6 checksum over the pseudo-header (RFC 4443 2.3).
        let mut sum: u32 = 0;
        for c in f[22..54].chunks(2) {
            sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
        }
        sum += payload.len() as u32 + 58;
        for c in f[54..].chunks(2) {
            sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        f[56..58].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    }
    f.resize(f.len().max(60), 0);
    f
}

fn v6(s: &str) -> [u8; 16] {
    s.parse::<std::net::Ipv6Addr>().unwrap().octets()
}

#[test]
fn the_router_does_neighbour_discovery_and_routes_ipv6() {
    let d = dir("route6");
    let socks: Vec<PathBuf> = ["a", "b"]
        .iter()
        .map(|n| d.join(format!("{n}.sock")))
        .collect();
    let args = vec![
        "--port".to_string(),
        format!("a,vhost-user={},vlan=10", socks[0].display()),
        "--port".to_string(),
        format!("b,vhost-user={},vlan=20", socks[1].display()),
        "--router-if".to_string(),
        "vlan=10,ip=10.0.0.254/24,ip6=fd00:a::fe/64".to_string(),
        "--router-if".to_string(),
        "vlan=20,ip=10.0.1.254/24,ip6=fd00:b::fe/64".to_string(),
    ];
    let log = d.join("switch.log");
    let sw = SwitchProc::spawn(&args, &log, &socks).expect("switch starts");
    let (mut a, mut b) = (vu(&socks[0]), vu(&socks[1]));
    std::thread::sleep(Duration::from_millis(300));

    // A solicits its gateway on the solicited-node group and gets an advertisement.
    let mut ns = vec![135, 0, 0, 0, 0, 0, 0, 0];
    ns.extend(v6("fd00:a::fe"));
    ns.extend([1, 1]);
    ns.extend(A);
    let snm = [0x33, 0x33, 0xff, 0, 0, 0xfe];
    let f = ipv6_frame(snm, A, v6("fd00:a::1"), v6("ff02::1:ff00:fe"), 58, 255, &ns);
    assert_eq!(a.send(0, std::slice::from_ref(&f)), 1);
    let got = a.recv_wait(0, 1, Duration::from_secs(5));
    assert_eq!(got.len(), 1, "no neighbour advertisement");
    assert_eq!(got[0][54], 136);
    assert_eq!(
        &got[0][80..86],
        &RMAC,
        "the router's MAC as target link-layer address"
    );

    // A sends to B: the router solicits B on VLAN 20 first.
    let pkt = ipv6_frame(
        RMAC,
        A,
        v6("fd00:a::1"),
        v6("fd00:b::1"),
        17,
        64,
        &[9u8; 16],
    );
    assert_eq!(a.send(0, std::slice::from_ref(&pkt)), 1);
    let got = b.recv_wait(0, 1, Duration::from_secs(5));
    assert_eq!(got.len(), 1, "the router did not solicit B");
    assert_eq!(&got[0][..6], &[0x33, 0x33, 0xff, 0, 0, 1]);
    assert_eq!(got[0][54], 135);
    assert_eq!(&got[0][62..78], &v6("fd00:b::1"));

    // B advertises itself; A's next packet arrives, hop limit decremented.
    let mut na = vec![136, 0, 0, 0, 0x60, 0, 0, 0];
    na.extend(v6("fd00:b::1"));
    na.extend([2, 1]);
    na.extend(B);
    let f = ipv6_frame(RMAC, B, v6("fd00:b::1"), v6("fd00:b::fe"), 58, 255, &na);
    assert_eq!(b.send(0, std::slice::from_ref(&f)), 1);
    std::thread::sleep(Duration::from_millis(200));
    let got = pump(&mut a, std::slice::from_ref(&pkt), &mut b, 1);
    assert_eq!(got.len(), 1, "the routed IPv6 packet did not arrive");
    assert_eq!(&got[0][..6], &B);
    assert_eq!(&got[0][6..12], &RMAC);
    assert_eq!(got[0][21], 63);
    assert_eq!(&got[0][22..], &pkt[22..]);

    let st = sw.stop(libc::SIGTERM).expect("switch stops");
    assert!(st.success());
}

#[test]
fn a_security_group_lets_through_only_what_its_rules_allow() {
    let d = dir("sg");
    let socks: Vec<PathBuf> = ["a", "b"]
        .iter()
        .map(|n| d.join(format!("{n}.sock")))
        .collect();
    let args = vec![
        "--security-group".to_string(),
        "web,deny,tcp:80@10.0.0.0/24,icmp".to_string(),
        "--port".to_string(),
        format!("a,vhost-user={}", socks[0].display()),
        "--port".to_string(),
        format!("b,vhost-user={},sg=web", socks[1].display()),
    ];
    let log = d.join("switch.log");
    let sw = SwitchProc::spawn(&args, &log, &socks).expect("switch starts");
    let (mut a, mut b) = (vu(&socks[0]), vu(&socks[1]));
    std::thread::sleep(Duration::from_millis(300));
    let tcp = |dport: u16| {
        let mut f = udp([0xff; 6], A, [10, 0, 0, 1], [10, 0, 0, 2], 64);
        f[23] = 6;
        f[36..38].copy_from_slice(&dport.to_be_bytes());
        f
    };
    let web = tcp(80);
    assert_eq!(
        pump(&mut a, std::slice::from_ref(&web), &mut b, 1),
        vec![web.clone()]
    );
    assert_eq!(a.send(0, &[tcp(22)]), 1);
    assert!(
        b.recv_wait(0, 1, Duration::from_millis(500)).is_empty(),
        "TCP 22 passed a group that allows 80 only"
    );
    let st = sw.stop(libc::SIGTERM).expect("switch stops");
    assert!(st.success());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("security_group=1"), "{text}");
}

/// Our virtio-user on packed virtqueues against the switch, beside one on split rings:
/// frames of every size cross unchanged and in order, both ways, over many wraps of
/// the 256-slot rings.
#[test]
fn packed_and_split_ports_exchange_frames_unchanged_in_order() {
    let d = dir("packed");
    let socks: Vec<PathBuf> = ["p", "s"]
        .iter()
        .map(|n| d.join(format!("{n}.sock")))
        .collect();
    let args = port_args(&["p", "s"], &socks);
    let sw = SwitchProc::spawn(&args, &d.join("switch.log"), &socks).expect("switch starts");
    let mut pc = VirtioUserConfig::new(&socks[0]);
    pc.packed = true;
    let mut p = VirtioUser::new(&pc).expect("packed virtio-user connects");
    assert_ne!(
        p.features() & pmd::virtio::F_RING_PACKED,
        0,
        "packed rings were not negotiated"
    );
    let mut s = vu(&socks[1]);
    std::thread::sleep(Duration::from_millis(300));
    for round in 0..2u32 {
        let (tx, rx, dst, src) = if round == 0 {
            (&mut p, &mut s, B, A)
        } else {
            (&mut s, &mut p, A, B)
        };
        let frames: Vec<Vec<u8>> = (0..3000)
            .map(|i| frame(dst, src, i, 60 + (i as usize * 13) % 1455))
            .collect();
        let got = pump(tx, &frames, rx, frames.len());
        assert_eq!(got.len(), frames.len(), "round {round}: frames lost");
        assert!(got == frames, "round {round}: frames changed or reordered");
    }
    let st = sw.stop(libc::SIGTERM).expect("stops on SIGTERM");
    assert!(st.success(), "exit status {st:?}");
}

/// A TCP segment from `sip:sport` to `dip:dport` with `flags`.
fn tcp_seg(
    (dst, src): ([u8; 6], [u8; 6]),
    (sip, sport): ([u8; 4], u16),
    (dip, dport): ([u8; 4], u16),
    flags: u8,
) -> Vec<u8> {
    let mut f = udp(dst, src, sip, dip, 64);
    f[14 + 9] = 6;
    f[24..26].copy_from_slice(&[0, 0]);
    let c = csum(&f[14..34]);
    f[24..26].copy_from_slice(&c.to_be_bytes());
    f[34..36].copy_from_slice(&sport.to_be_bytes());
    f[36..38].copy_from_slice(&dport.to_be_bytes());
    f[46] = 0x50;
    f[47] = flags;
    f
}

/// A stateful group's session changes only by frames the switch took: a RST that
/// another port sends in the peer's name (dropped by port security) leaves it
/// established, where the peer's own RST closes it (and, with a 1 s closing timeout,
/// its next frame is then dropped).
#[test]
fn a_spoofed_reset_does_not_close_another_ports_session() {
    let d = dir("ctspoof");
    let socks: Vec<PathBuf> = ["a", "b", "c"]
        .iter()
        .map(|n| d.join(format!("{n}.sock")))
        .collect();
    let ctl = d.join("ctl.sock");
    let m = |b: [u8; 6]| {
        b.iter()
            .map(|x| format!("{x:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    };
    let args = vec![
        "--control".to_string(),
        ctl.display().to_string(),
        "--security-group".to_string(),
        "g,deny,deny-egress,out:tcp".to_string(),
        "--port".to_string(),
        format!(
            "a,vhost-user={},mac={},ip=10.0.0.1,sg=g",
            socks[0].display(),
            m(A)
        ),
        "--port".to_string(),
        format!(
            "b,vhost-user={},mac={},ip=10.0.0.2",
            socks[1].display(),
            m(B)
        ),
        "--port".to_string(),
        format!(
            "c,vhost-user={},mac={},ip=10.0.0.3",
            socks[2].display(),
            m(C)
        ),
    ];
    let log = d.join("switch.log");
    let sw = SwitchProc::spawn(&args, &log, &socks).expect("switch starts");
    common::switch::edit_config(&ctl, |s| s["sessions"]["tcp_closing_s"] = 1.into());
    let (mut a, mut b, mut c) = (vu(&socks[0]), vu(&socks[1]), vu(&socks[2]));
    std::thread::sleep(Duration::from_millis(300));
    let (pa, pb) = (([10, 0, 0, 1], 1000), ([10, 0, 0, 2], 80));
    const SYN: u8 = 0x02;
    const ACK: u8 = 0x10;
    const RST: u8 = 0x04;
    let handshake = |a: &mut VirtioUser, b: &mut VirtioUser| {
        let syn = tcp_seg((B, A), pa, pb, SYN);
        assert_eq!(
            pump(a, std::slice::from_ref(&syn), b, 1).len(),
            1,
            "a's SYN out"
        );
        let synack = tcp_seg((A, B), pb, pa, SYN | ACK);
        assert_eq!(
            pump(b, std::slice::from_ref(&synack), a, 1).len(),
            1,
            "the SYN-ACK in through a's session"
        );
    };
    handshake(&mut a, &mut b);
    // c speaks for b: port security drops it, and a's session is as it was.
    let spoofed = tcp_seg((A, C), pb, pa, RST | ACK);
    assert_eq!(c.send(0, &[spoofed]), 1);
    assert!(a.recv_wait(0, 1, Duration::from_millis(300)).is_empty());
    std::thread::sleep(Duration::from_millis(1600));
    let data = tcp_seg((A, B), pb, pa, ACK);
    assert_eq!(
        pump(&mut b, std::slice::from_ref(&data), &mut a, 1).len(),
        1,
        "b's data still reaches a after a spoofed reset"
    );
    // b's own reset closes it: a second later b's frames find no session.
    let rst = tcp_seg((A, B), pb, pa, RST | ACK);
    assert_eq!(pump(&mut b, std::slice::from_ref(&rst), &mut a, 1).len(), 1);
    std::thread::sleep(Duration::from_millis(1600));
    assert_eq!(b.send(0, &[data]), 1);
    assert!(
        a.recv_wait(0, 1, Duration::from_millis(500)).is_empty(),
        "b's frame after its reset and the closing timeout must be dropped"
    );
    let stats = common::switch::stats(&ctl);
    assert_eq!(
        stats["bridge_drops"]["spoofed_ip"].as_u64(),
        Some(1),
        "{}",
        stats["bridge_drops"]
    );
    let st = sw.stop(libc::SIGTERM).expect("switch stops");
    assert!(st.success());
}
