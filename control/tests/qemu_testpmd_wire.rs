//! Reference test of the QEMU guest harness against DPDK testpmd (not our switch).
//!
//! `dpdk-testpmd` with two `net_vhost` ports in `io` forward mode is a wire between two
//! QEMU Linux guests (TCG). If this test fails, the harness or the machine is broken,
//! not vnfhost. (Back-end restarts are tested with vnfhost's switch in `switch_qemu.rs`.)
//!
//! Run: `cargo test -p control --test qemu_testpmd_wire -- --nocapture`
//! (prints `SKIPPED: ...` and passes when QEMU or testpmd is missing).

mod common;

use common::guests::{spawn_pair, tcp_transfer, wait_pair_ready, IP1, IP2};
use common::qemu::VhostMode;
use common::testpmd::{Testpmd, TestpmdOpts};
use common::{skip, TestDir};
use std::time::{Duration, Instant};

fn unavailable() -> Option<String> {
    common::qemu::qemu_unavailable().or_else(common::testpmd::testpmd_unavailable)
}

fn testpmd_opts(dir: &TestDir, tag: &str) -> TestpmdOpts {
    TestpmdOpts::wire(
        tag,
        vec![dir.join("sock0"), dir.join("sock1")],
        dir.join("testpmd.log"),
    )
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

    let _pmd = Testpmd::spawn(&testpmd_opts(&dir, "wire")).expect("testpmd");
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
