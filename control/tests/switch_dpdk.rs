//! `vnfhost switch` against DPDK 22.11 testpmd, a vhost-user peer no one here wrote:
//! testpmd's `net_virtio_user` ports as the VMs (1 and 2 queue pairs), vnfhost's
//! virtio-user port against testpmd's `net_vhost` back end, and a testpmd frontend
//! killed with SIGKILL in the middle of its traffic.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::switch::SwitchProc;
use common::testpmd::{testpmd_unavailable, Testpmd, TestpmdOpts};
use common::{serial, skip, TestDir};
use pmd::virtio_user::{VirtioUser, VirtioUserConfig};

fn frame(src: u8, flow: u8, seq: u32, len: usize) -> Vec<u8> {
    let mut f = vec![0u8; len];
    f[..6].copy_from_slice(&[2, 0, 0, 0, 0x99, 0x99]); // never learned: flooded in its VLAN
    f[6..12].copy_from_slice(&[2, 0, 0, 0, src, flow]);
    f[12..14].copy_from_slice(&[0x88, 0xb5]);
    f[14] = flow;
    f[15..19].copy_from_slice(&seq.to_be_bytes());
    for (i, b) in f[19..].iter_mut().enumerate() {
        *b = (i as u32).wrapping_mul(13).wrapping_add(seq) as u8;
    }
    f
}

fn vu(path: &std::path::Path, queues: u16) -> VirtioUser {
    let mut c = VirtioUserConfig::new(path);
    c.queue_pairs = queues;
    VirtioUser::new(&c).expect("virtio-user connects")
}

/// Sends `flows[q]` on queue q of `tx` and collects per queue at `rx` until every
/// frame arrived or 30 s passed; at most `window` frames in flight per queue.
fn pump(
    tx: &mut VirtioUser,
    rx: &mut VirtioUser,
    flows: &[Vec<Vec<u8>>],
    window: usize,
) -> Vec<Vec<Vec<u8>>> {
    let nq = flows.len();
    let mut got: Vec<Vec<Vec<u8>>> = vec![Vec::new(); nq];
    let mut next = vec![0usize; nq];
    let total: usize = flows.iter().map(|f| f.len()).sum();
    let t = Instant::now();
    while got.iter().map(|g| g.len()).sum::<usize>() < total
        && t.elapsed() < Duration::from_secs(30)
    {
        let mut idle = true;
        for q in 0..nq {
            let in_flight = next[q] - got[q].len().min(next[q]);
            if next[q] < flows[q].len() && in_flight < window {
                let end = (next[q] + 32)
                    .min(flows[q].len())
                    .min(next[q] + window - in_flight);
                let n = tx.send(q as u16, &flows[q][next[q]..end]);
                next[q] += n;
                idle &= n == 0;
            }
            let g = &mut got[q];
            idle &= rx.recv(q as u16, 64, |f| g.push(f.to_vec())) == 0;
        }
        if idle {
            std::thread::sleep(Duration::from_micros(50));
        }
    }
    got
}

fn flow(src: u8, id: u8, n: u32) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| frame(src, id, i, 60 + (i as usize * 37) % 1455))
        .collect()
}

fn sock_args(specs: &[(&str, &PathBuf, &str)]) -> Vec<String> {
    specs
        .iter()
        .flat_map(|(name, path, extra)| {
            [
                "--port".to_string(),
                format!("{name},vhost-user={}{extra}", path.display()),
            ]
        })
        .collect()
}

/// g0 (VLAN 10) → switch → t0 (testpmd, VLAN 10) → testpmd io → t1 (VLAN 20) → switch →
/// g1 (VLAN 20): every frame crosses DPDK's virtio-user twice.
fn through_testpmd(tag: &str, queues: u16, cores: &str) {
    through_testpmd_rings(tag, queues, cores, false)
}

/// As [`through_testpmd`], testpmd's virtio-user ports on packed virtqueues when
/// `packed` (the switch's side of t0 and t1 then walks packed rings).
fn through_testpmd_rings(tag: &str, queues: u16, cores: &str, packed: bool) {
    let _g = serial();
    skip!(testpmd_unavailable());
    let dir = TestDir::new(tag).expect("test dir");
    let s: Vec<PathBuf> = ["g0", "t0", "t1", "g1"]
        .iter()
        .map(|n| dir.join(&format!("{n}.sock")))
        .collect();
    let q = format!(",queues={queues}");
    let (v10, v20) = (format!("{q},vlan=10"), format!("{q},vlan=20"));
    let mut args = sock_args(&[
        ("g0", &s[0], &v10),
        ("t0", &s[1], &v10),
        ("t1", &s[2], &v20),
        ("g1", &s[3], &v20),
    ]);
    args.extend([
        "--core".to_string(),
        cores.to_string(),
        "--hugepages".to_string(),
    ]);
    let sw = SwitchProc::spawn(&args, &dir.join("switch.log"), &s).expect("switch starts");
    let tp = Testpmd::spawn(&TestpmdOpts {
        packed,
        ..TestpmdOpts::virtio_user(
            tag,
            vec![s[1].clone(), s[2].clone()],
            queues,
            dir.join("testpmd.log"),
        )
    })
    .expect("testpmd starts");
    let (mut g0, mut g1) = (vu(&s[0], queues), vu(&s[3], queues));
    // testpmd's ports come up a moment after it connects; the switch follows link state
    // within milliseconds.
    std::thread::sleep(Duration::from_secs(2));
    let flows: Vec<Vec<Vec<u8>>> = (0..queues).map(|qi| flow(0x10, qi as u8, 3000)).collect();
    let got = pump(&mut g0, &mut g1, &flows, 128);
    for (qi, (want, have)) in flows.iter().zip(&got).enumerate() {
        assert_eq!(
            have.len(),
            want.len(),
            "queue {qi}: {} of {} frames arrived; testpmd log:\n{}\nswitch log:\n{}",
            have.len(),
            want.len(),
            tp.log_tail(20),
            sw.log_text()
        );
        assert!(have == want, "queue {qi}: frames changed or reordered");
    }
    drop(tp);
    let st = sw.stop(libc::SIGTERM).expect("switch stops");
    assert!(st.success());
}

#[test]
fn testpmd_virtio_user_vms_on_packed_rings() {
    through_testpmd_rings("dpdk-packed", 1, "0", true);
}

#[test]
fn testpmd_virtio_user_vms_on_packed_rings_two_queue_pairs() {
    through_testpmd_rings("dpdk-packed2", 2, "0,1", true);
}

#[test]
fn testpmd_virtio_user_vms_one_queue_pair() {
    through_testpmd("tp-vu1", 1, "0");
}

#[test]
fn testpmd_virtio_user_vms_two_queue_pairs_keep_flows_on_their_queues() {
    // Two polling cores: core k serves queue k of every port and transmits on queue k,
    // so the flow sent on queue 1 crosses testpmd on queue 1 and arrives on queue 1.
    through_testpmd("tp-vu2", 2, "0,1");
}

#[test]
fn vnfhost_virtio_user_against_testpmd_vhost_backend() {
    let _g = serial();
    skip!(testpmd_unavailable());
    let dir = TestDir::new("tp-vhost").expect("test dir");
    let socks = vec![dir.join("v0.sock"), dir.join("v1.sock")];
    let tp = Testpmd::spawn(&TestpmdOpts::wire(
        "tp-vhost",
        socks.clone(),
        dir.join("testpmd.log"),
    ))
    .expect("testpmd");
    let (mut a, mut b) = (vu(&socks[0], 1), vu(&socks[1], 1));
    std::thread::sleep(Duration::from_secs(1));
    let there = vec![flow(0xa, 0, 3000)];
    let got = pump(&mut a, &mut b, &there, 128);
    assert!(
        got == there,
        "a→b through testpmd: {} of 3000 arrived intact; log:\n{}",
        got[0].len(),
        tp.log_tail(20)
    );
    let back = vec![flow(0xb, 1, 3000)];
    let got = pump(&mut b, &mut a, &back, 128);
    assert!(
        got == back,
        "b→a through testpmd: {} of 3000 arrived intact",
        got[0].len()
    );
}

#[test]
fn frontend_killed_mid_burst_leaves_the_switch_forwarding() {
    let _g = serial();
    skip!(testpmd_unavailable());
    let dir = TestDir::new("tp-kill").expect("test dir");
    let s: Vec<PathBuf> = ["g0", "g1", "k"]
        .iter()
        .map(|n| dir.join(&format!("{n}.sock")))
        .collect();
    let args = sock_args(&[
        ("g0", &s[0], ""),
        ("g1", &s[1], ""),
        ("k", &s[2], ",vlan=30"),
    ]);
    let mut sw = SwitchProc::spawn(&args, &dir.join("switch.log"), &s).expect("switch starts");
    let (mut g0, mut g1) = (vu(&s[0], 1), vu(&s[1], 1));
    let mut opts =
        TestpmdOpts::virtio_user("tp-kill", vec![s[2].clone()], 1, dir.join("testpmd.log"));
    opts.forward_mode = "txonly".into();
    for round in 0..2 {
        let tp = Testpmd::spawn(&opts).expect("testpmd");
        // Let it blast frames into the switch, then kill it in the middle of that.
        std::thread::sleep(Duration::from_secs(2));
        tp.stop(libc::SIGKILL).expect("kill testpmd");
        assert!(
            sw.is_running(),
            "switch died with its frontend (round {round}):\n{}",
            sw.log_text()
        );
        // The other ports still forward, nothing lost.
        let f = vec![flow(0x20, round, 2000)];
        let got = pump(&mut g0, &mut g1, &f, 128);
        assert!(
            got == f,
            "round {round}: {} of 2000 frames after the kill",
            got[0].len()
        );
    }
    let log = sw.log_text();
    assert_eq!(
        log.matches("port k: vhost-user frontend connected").count(),
        2,
        "killed port accepts a new frontend:\n{log}"
    );
    assert_eq!(
        log.matches("port k: vhost-user frontend disconnected")
            .count(),
        2
    );
    let st = sw.stop(libc::SIGTERM).expect("switch stops");
    assert!(st.success());
}
