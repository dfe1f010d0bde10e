//! Two Linux guests under QEMU (TCG) whose virtio-net NICs are ports of `vnfhost
//! switch`: they ping each other and move 10 MB over TCP through it; then, with the
//! switch as vhost-user client and QEMU as server, the switch is restarted (SIGTERM and
//! SIGKILL) and traffic resumes without rebooting the guests.

mod common;

use common::guests::{
    ping_until_ok, spawn_pair, spawn_pair_rings, tcp_transfer, wait_pair_ready, IP1, IP2,
};
use common::qemu::VhostMode;
use common::switch::SwitchProc;
use common::{serial, skip, TestDir};
use std::path::PathBuf;
use std::time::{Duration, Instant};

fn switch_args(dir: &TestDir, client: bool) -> (Vec<String>, Vec<PathBuf>) {
    let socks = vec![dir.join("sock0"), dir.join("sock1")];
    let c = if client { ",client" } else { "" };
    let args = vec![
        "--core".to_string(),
        "1".to_string(),
        "--hugepages".to_string(),
        "--port".to_string(),
        format!("vm1,vhost-user={}{c}", socks[0].display()),
        "--port".to_string(),
        format!("vm2,vhost-user={}{c}", socks[1].display()),
    ];
    (args, socks)
}

#[test]
fn two_linux_guests_ping_and_move_10mb_through_the_switch() {
    guests_ping_and_move_10mb("swq", false);
}

/// The same with Linux's packed-ring driver on both NICs (QEMU `packed=on`): the
/// switch's packed walk against a driver it did not write, indirect descriptors and
/// event suppression included.
#[test]
fn two_linux_guests_on_packed_rings_ping_and_move_10mb_through_the_switch() {
    guests_ping_and_move_10mb("swqp", true);
}

fn guests_ping_and_move_10mb(tag: &str, packed: bool) {
    let _g = serial();
    skip!(common::qemu::qemu_unavailable());
    let dir = TestDir::new(tag).expect("test dir");
    let (args, socks) = switch_args(&dir, false);
    let sw = SwitchProc::spawn(&args, &dir.join("switch.log"), &socks).expect("switch starts");
    let (mut g1, mut g2) = spawn_pair_rings(&dir, VhostMode::Client, packed);
    wait_pair_ready(&g1, &g2);
    if packed {
        // The guests must really run packed rings, or this test proves nothing.
        for g in [&mut g1, &mut g2] {
            let f = g
                .run(
                    "cat /sys/bus/virtio/devices/*/features",
                    Duration::from_secs(10),
                )
                .expect("read virtio features");
            // Feature bit 34 (VIRTIO_F_RING_PACKED): the 35th character.
            assert!(
                f.lines()
                    .any(|l| l.trim().as_bytes().get(34) == Some(&b'1')),
                "the guest's virtio device did not negotiate packed rings: {f}"
            );
        }
    }
    let out = g1
        .run(&format!("ping -c 3 -W 2 {IP2}"), Duration::from_secs(30))
        .expect("ping through the switch");
    println!("{out}");
    g2.run(&format!("ping -c 1 -W 2 {IP1}"), Duration::from_secs(30))
        .expect("ping back");
    let took = tcp_transfer(&mut g1, &mut g2, IP2, 10);
    println!(
        "TIMING: 10 MiB over TCP through vnfhost in {:.1}s",
        took.as_secs_f64()
    );
    g1.shutdown().expect("vm1 shutdown");
    g2.shutdown().expect("vm2 shutdown");
    let st = sw.stop(libc::SIGTERM).expect("switch stops");
    assert!(st.success());
}

#[test]
fn switch_restarts_as_client_and_guests_keep_their_traffic() {
    let _g = serial();
    skip!(common::qemu::qemu_unavailable());
    let dir = TestDir::new("swq-restart").expect("test dir");
    // QEMU is the server: it creates the sockets and waits for the switch to connect.
    let (mut g1, mut g2) = spawn_pair(&dir, VhostMode::Server);
    let (args, socks) = switch_args(&dir, true);
    let t = Instant::now();
    while !socks.iter().all(|s| s.exists()) {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "QEMU made no sockets"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut sw = SwitchProc::spawn(&args, &dir.join("switch.log"), &[]).expect("switch starts");
    wait_pair_ready(&g1, &g2);
    ping_until_ok(&mut g1, IP2, Duration::from_secs(30)).expect("first ping");
    for (round, sig) in [(1, libc::SIGTERM), (2, libc::SIGKILL)] {
        let _ = sw.stop(sig).expect("switch stops");
        let (status, _) = g1
            .run_status(&format!("ping -c 1 -W 1 {IP2}"), Duration::from_secs(20))
            .expect("console without switch");
        assert_ne!(status, 0, "round {round}: ping answered without a switch");
        let restarted = Instant::now();
        sw = SwitchProc::spawn(&args, &dir.join(&format!("switch{round}.log")), &[])
            .expect("switch restarts");
        let back = ping_until_ok(&mut g1, IP2, Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("round {round}: {e}\nswitch log:\n{}", sw.log_text()));
        println!(
            "TIMING: round {round} (signal {sig}): ping back {:.1}s after the switch restarted ({:.1}s pinging)",
            restarted.elapsed().as_secs_f64(),
            back.as_secs_f64()
        );
        tcp_transfer(&mut g2, &mut g1, IP1, 2);
    }
    g1.shutdown().expect("vm1 shutdown");
    g2.shutdown().expect("vm2 shutdown");
    assert!(sw.stop(libc::SIGTERM).expect("switch stops").success());
}

#[test]
fn two_linux_pods_on_two_networks_ping_across_the_router() {
    let _g = serial();
    skip!(common::qemu::qemu_unavailable());
    let dir = TestDir::new("swq-route").expect("test dir");
    let socks = vec![dir.join("sock0"), dir.join("sock1")];
    // Two networks (VLANs 10 and 20) with port security, and a router between them.
    let args: Vec<String> = [
        "--core",
        "1",
        "--port",
        &format!(
            "vm1,vhost-user={},vlan=10,mac=52:54:00:00:00:01,ip=10.0.0.1",
            socks[0].display()
        ),
        "--port",
        &format!(
            "vm2,vhost-user={},vlan=20,mac=52:54:00:00:00:02,ip=10.0.1.1",
            socks[1].display()
        ),
        "--router-if",
        "vlan=10,ip=10.0.0.254/24",
        "--router-if",
        "vlan=20,ip=10.0.1.254/24",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let log = dir.join("switch.log");
    let sw = SwitchProc::spawn(&args, &log, &socks).expect("switch starts");
    let image = common::qemu::guest_image().expect("guest image");
    let opts = |n: u8, ip: &str, gw: &str| {
        let mut o = common::qemu::GuestOpts::new(
            &format!("vm{n}"),
            dir.join(&format!("sock{}", n - 1)),
            dir.join(&format!("vm{n}.log")),
        )
        .mac(&format!("52:54:00:00:00:0{n}"))
        .ip(ip)
        .mode(VhostMode::Client);
        o.gw = Some(gw.to_string());
        o.image = Some(image.clone());
        o
    };
    let mut g1 =
        common::qemu::QemuGuest::spawn(&opts(1, "10.0.0.1/24", "10.0.0.254")).expect("vm1");
    let mut g2 =
        common::qemu::QemuGuest::spawn(&opts(2, "10.0.1.1/24", "10.0.1.254")).expect("vm2");
    wait_pair_ready(&g1, &g2);
    // The gateway answers a normal-size ping.
    g1.run("ping -c 1 -W 2 10.0.0.254", Duration::from_secs(30))
        .expect("ping the gateway");
    // Across the router: the first packet may go while the router resolves vm2.
    ping_until_ok(&mut g1, "10.0.1.1", Duration::from_secs(30)).expect("ping across the router");
    let out = g1
        .run("ping -c 3 -W 2 10.0.1.1", Duration::from_secs(30))
        .expect("ping across the router");
    assert!(
        out.contains("ttl=63"),
        "one router hop decrements the TTL:\n{out}"
    );
    g2.run("ping -c 1 -W 2 10.0.0.1", Duration::from_secs(30))
        .expect("ping back");
    g1.shutdown().expect("vm1 shutdown");
    g2.shutdown().expect("vm2 shutdown");
    let st = sw.stop(libc::SIGTERM).expect("switch stops");
    assert!(st.success());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        !text.contains("spoofed"),
        "port security dropped a legitimate frame:\n{text}"
    );
    assert!(text.contains("router: routed"), "{text}");
}
