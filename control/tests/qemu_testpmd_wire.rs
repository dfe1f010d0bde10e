//! Reference test of the QEMU guest harness against DPDK testpmd (not our switch).
//!
//! `dpdk-testpmd` with two `net_vhost` ports in `io` forward mode is a wire between two
//! QEMU Linux guests (TCG). If these tests fail, the harness or the machine is broken,
//! not vnfhost. They also record how QEMU's vhost-user NIC survives a backend restart:
//! QEMU as client with `reconnect=1`, and QEMU as server (`server=on`) with testpmd
//! connecting (`client=1`).
//!
//! Run: `cargo test -p control --test qemu_testpmd_wire -- --nocapture`
//! (prints `SKIPPED: ...` and passes when QEMU or testpmd is missing).

mod common;

use common::qemu::{GuestOpts, QemuGuest, VhostMode};
use common::testpmd::{Testpmd, TestpmdOpts};
use common::{skip, TestDir};
use std::time::{Duration, Instant};

const BOOT_TIMEOUT: Duration = Duration::from_secs(120);
const IP1: &str = "10.0.0.1";
const IP2: &str = "10.0.0.2";

fn unavailable() -> Option<String> {
    common::qemu::qemu_unavailable().or_else(common::testpmd::testpmd_unavailable)
}

/// Starts two guests on `sock0`/`sock1` (10.0.0.1/24 and 10.0.0.2/24); they boot in
/// parallel (see [`wait_pair_ready`]).
fn spawn_pair(dir: &TestDir, mode: VhostMode) -> (QemuGuest, QemuGuest) {
    let image = common::qemu::guest_image().expect("guest image");
    let opts = |n: u8, ip: &str| {
        let mut o = GuestOpts::new(
            &format!("vm{n}"),
            dir.join(&format!("sock{}", n - 1)),
            dir.join(&format!("vm{n}.log")),
        )
        .mac(&format!("52:54:00:00:00:0{n}"))
        .ip(&format!("{ip}/24"))
        .mode(mode);
        o.image = Some(image.clone());
        o
    };
    let g1 = QemuGuest::spawn(&opts(1, IP1)).expect("spawn vm1");
    let g2 = QemuGuest::spawn(&opts(2, IP2)).expect("spawn vm2");
    (g1, g2)
}

fn wait_pair_ready(g1: &QemuGuest, g2: &QemuGuest) {
    let t1 = g1.wait_ready(BOOT_TIMEOUT).expect("vm1 ready");
    let t2 = g2.wait_ready(BOOT_TIMEOUT).expect("vm2 ready");
    println!(
        "TIMING: vm1 ready {:.1}s, vm2 ready {:.1}s after spawn (TCG, booted together)",
        t1.as_secs_f64(),
        t2.as_secs_f64()
    );
}

fn testpmd_opts(dir: &TestDir, tag: &str, client: bool) -> TestpmdOpts {
    let mut o = TestpmdOpts::wire(
        tag,
        vec![dir.join("sock0"), dir.join("sock1")],
        dir.join("testpmd.log"),
    );
    o.client = client;
    o
}

/// Pings until one reply arrives or `timeout` passes; returns the time it took.
fn ping_until_ok(g: &mut QemuGuest, ip: &str, timeout: Duration) -> Result<Duration, String> {
    let start = Instant::now();
    loop {
        let (status, out) =
            g.run_status(&format!("ping -c 1 -W 1 {ip}"), Duration::from_secs(20))?;
        if status == 0 {
            return Ok(start.elapsed());
        }
        if start.elapsed() >= timeout {
            return Err(format!(
                "no ping reply from {ip} within {timeout:?}:\n{out}"
            ));
        }
    }
}

fn md5_of(g: &mut QemuGuest, file: &str) -> String {
    let out = g
        .run(&format!("md5sum {file}"), Duration::from_secs(60))
        .expect("md5sum");
    out.split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Sends `mb` MiB of random data from `tx` to `rx` over TCP (BusyBox nc); asserts the
/// checksums match and returns the transfer time.
fn tcp_transfer(tx: &mut QemuGuest, rx: &mut QemuGuest, rx_ip: &str, mb: u32) -> Duration {
    // The receiver's stdin is a FIFO opened read-write: it never reaches EOF. With EOF on
    // stdin BusyBox nc half-closes the connection and the sender quits early.
    rx.run(
        "rm -f /tmp/r /tmp/fifo && mkfifo /tmp/fifo",
        Duration::from_secs(10),
    )
    .expect("fifo");
    rx.run(
        "nc -l -p 5001 <>/tmp/fifo >/tmp/r 2>/tmp/nc.err &",
        Duration::from_secs(10),
    )
    .expect("start receiver");
    tx.run(
        &format!("dd if=/dev/urandom of=/tmp/s bs=1M count={mb} 2>/dev/null"),
        Duration::from_secs(120),
    )
    .expect("make data");
    let sent = md5_of(tx, "/tmp/s");
    let start = Instant::now();
    tx.run(
        &format!("nc {rx_ip} 5001 </tmp/s"),
        Duration::from_secs(300),
    )
    .expect("send");
    rx.run("wait", Duration::from_secs(120))
        .expect("receiver done");
    let took = start.elapsed();
    let size = rx
        .run("wc -c </tmp/r", Duration::from_secs(10))
        .expect("size");
    let got = md5_of(rx, "/tmp/r");
    assert_eq!(
        sent, got,
        "md5 of sent and received data differ (received {size} bytes)"
    );
    assert_eq!(size.trim(), (mb as u64 * 1024 * 1024).to_string());
    took
}

#[test]
fn testpmd_wire_two_guests_ping_and_tcp() {
    skip!(unavailable());
    let _serial = common::serial();
    let t0 = Instant::now();
    let dir = TestDir::new("wire").expect("test dir");
    let image = common::qemu::guest_image().expect("guest image");
    println!(
        "TIMING: guest image ready in {:.1}s ({:?})",
        t0.elapsed().as_secs_f64(),
        image
    );

    let _pmd = Testpmd::spawn(&testpmd_opts(&dir, "wire", false)).expect("testpmd");
    let (mut g1, mut g2) = spawn_pair(&dir, VhostMode::Client);
    wait_pair_ready(&g1, &g2);

    let out = g1
        .run(&format!("ping -c 3 -W 2 {IP2}"), Duration::from_secs(30))
        .expect("ping");
    println!("{out}");
    g2.run(&format!("ping -c 1 -W 2 {IP1}"), Duration::from_secs(30))
        .expect("ping back");

    let took = tcp_transfer(&mut g1, &mut g2, IP2, 10);
    println!(
        "TIMING: 10 MiB over TCP in {:.1}s ({:.2} MB/s)",
        took.as_secs_f64(),
        10.0 * 1.048576 / took.as_secs_f64()
    );

    g1.shutdown().expect("vm1 shutdown");
    g2.shutdown().expect("vm2 shutdown");
    println!("TIMING: whole test {:.1}s", t0.elapsed().as_secs_f64());
}

/// Stops testpmd under running guests (round 1: SIGKILL, round 2: SIGTERM), restarts it,
/// and checks that ping comes back without rebooting the guests.
fn restart_backend(mode: VhostMode, tag: &str) {
    let _serial = common::serial();
    let t0 = Instant::now();
    let dir = TestDir::new(tag).expect("test dir");
    let opts = testpmd_opts(&dir, tag, mode == VhostMode::Server);
    let (mut g1, mut g2, mut pmd) = match mode {
        VhostMode::Client => {
            let pmd = Testpmd::spawn(&opts).expect("testpmd");
            let (g1, g2) = spawn_pair(&dir, mode);
            (g1, g2, pmd)
        }
        VhostMode::Server => {
            // QEMU as server blocks before booting until a backend connects; testpmd as
            // client retries every second, so either order works. Start QEMU first.
            let (g1, g2) = spawn_pair(&dir, mode);
            let deadline = Instant::now() + Duration::from_secs(20);
            while !(dir.join("sock0").exists() && dir.join("sock1").exists()) {
                assert!(Instant::now() < deadline, "QEMU did not create its sockets");
                std::thread::sleep(Duration::from_millis(50));
            }
            (g1, g2, Testpmd::spawn(&opts).expect("testpmd"))
        }
    };
    wait_pair_ready(&g1, &g2);
    ping_until_ok(&mut g1, IP2, Duration::from_secs(20)).expect("ping before restart");

    for (round, signal, signame) in [(1, libc::SIGKILL, "SIGKILL"), (2, libc::SIGTERM, "SIGTERM")] {
        pmd.stop(signal).expect("stop testpmd");
        let (status, _) = g1
            .run_status(&format!("ping -c 1 -W 1 {IP2}"), Duration::from_secs(20))
            .expect("console works without backend");
        assert_ne!(status, 0, "round {round}: ping answered without a backend");
        let restarted = Instant::now();
        pmd = Testpmd::spawn(&opts).expect("restart testpmd");
        let back = ping_until_ok(&mut g1, IP2, Duration::from_secs(60)).unwrap_or_else(|e| {
            panic!(
                "round {round}: ping after restart: {e}\ntestpmd:\n{}",
                pmd.log_tail(40)
            )
        });
        println!(
            "TIMING: round {round} ({signame}): ping back {:.1}s after testpmd restart \
             ({:.1}s of pinging)",
            restarted.elapsed().as_secs_f64(),
            back.as_secs_f64()
        );
        g2.run(&format!("ping -c 2 -W 2 {IP1}"), Duration::from_secs(30))
            .expect("ping back");
    }
    let took = tcp_transfer(&mut g2, &mut g1, IP1, 2);
    println!(
        "TIMING: 2 MiB over TCP after the restarts in {:.1}s",
        took.as_secs_f64()
    );
    g1.shutdown().expect("vm1 shutdown");
    g2.shutdown().expect("vm2 shutdown");
    drop(pmd);
    println!("TIMING: whole test {:.1}s", t0.elapsed().as_secs_f64());
}

#[test]
fn testpmd_wire_restart_backend_qemu_client_reconnect() {
    skip!(unavailable());
    restart_backend(VhostMode::Client, "reconn");
}

#[test]
fn testpmd_wire_restart_backend_qemu_server() {
    skip!(unavailable());
    restart_backend(VhostMode::Server, "qsrv");
}
