//! Two Linux guests on vhost-user sockets, and what tests do with them: ping, a TCP
//! transfer checked by md5.

use super::qemu::{guest_image, GuestOpts, QemuGuest, VhostMode};
use super::TestDir;
use std::time::{Duration, Instant};

/// How long a TCG guest may take to boot next to a busy polling core.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(120);
/// Guest 1's address.
pub const IP1: &str = "10.0.0.1";
/// Guest 2's address.
pub const IP2: &str = "10.0.0.2";

/// Starts vm1 on `sock0` (10.0.0.1) and vm2 on `sock1` (10.0.0.2) in `dir`.
pub fn spawn_pair(dir: &TestDir, mode: VhostMode) -> (QemuGuest, QemuGuest) {
    spawn_pair_rings(dir, mode, false)
}

/// As [`spawn_pair`], the NICs on packed virtqueues when `packed`.
#[allow(dead_code)]
pub fn spawn_pair_rings(dir: &TestDir, mode: VhostMode, packed: bool) -> (QemuGuest, QemuGuest) {
    let image = guest_image().expect("guest image");
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
        o.packed = packed;
        o
    };
    let g1 = QemuGuest::spawn(&opts(1, IP1)).expect("spawn vm1");
    let g2 = QemuGuest::spawn(&opts(2, IP2)).expect("spawn vm2");
    (g1, g2)
}

/// Waits for both guests' network, printing the boot times.
pub fn wait_pair_ready(g1: &QemuGuest, g2: &QemuGuest) {
    let t1 = g1.wait_ready(BOOT_TIMEOUT).expect("vm1 ready");
    let t2 = g2.wait_ready(BOOT_TIMEOUT).expect("vm2 ready");
    println!(
        "TIMING: vm1 ready {:.1}s, vm2 ready {:.1}s after spawn (TCG, booted together)",
        t1.as_secs_f64(),
        t2.as_secs_f64()
    );
}

/// Pings `ip` once a second until it answers or `timeout` passes.
pub fn ping_until_ok(g: &mut QemuGuest, ip: &str, timeout: Duration) -> Result<Duration, String> {
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

/// md5 of a file in the guest.
pub fn md5_of(g: &mut QemuGuest, file: &str) -> String {
    let out = g
        .run(&format!("md5sum {file}"), Duration::from_secs(60))
        .expect("md5sum");
    out.split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Sends `mb` MiB of random data from `tx` to `rx` over TCP (BusyBox nc) and asserts
/// that it arrived whole and unchanged. Returns the transfer time.
pub fn tcp_transfer(tx: &mut QemuGuest, rx: &mut QemuGuest, rx_ip: &str, mb: u32) -> Duration {
    // A FIFO opened read-write keeps nc's stdin open: BusyBox nc half-closes the
    // connection when its stdin reaches end of file.
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
    assert_eq!(size.trim(), (u64::from(mb) * 1024 * 1024).to_string());
    took
}
