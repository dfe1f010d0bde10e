//! Our virtio-user frontend against our vhost-user backend port, over a real socket.

use std::time::{Duration, Instant};

use pmd::port::{Port, RxBatch, TxSel, HEAD_SNAPSHOT};
use pmd::vhost_user::{Mode, VhostUserConfig, VhostUserPort};
use pmd::virtio_user::{VirtioUser, VirtioUserConfig};
use pmd::VlanEdit;

fn tmp(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("pmd-test-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).expect("tmp dir");
    d.join("s.sock")
}

fn port(path: &std::path::Path, mode: Mode, queues: u16) -> VhostUserPort {
    VhostUserPort::new(VhostUserConfig {
        mode,
        queue_pairs: queues,
        ..VhostUserConfig::new("p0", path)
    })
    .expect("port")
}

fn wait_up(p: &VhostUserPort) {
    let t = Instant::now();
    while !p.is_up() {
        assert!(t.elapsed() < Duration::from_secs(5), "port never came up");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn frame(i: u32, len: usize) -> Vec<u8> {
    let mut f = vec![0u8; len];
    f[..6].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
    f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
    f[12..14].copy_from_slice(&[0x88, 0xb5]);
    f[14..18].copy_from_slice(&i.to_be_bytes());
    for (k, b) in f[18..].iter_mut().enumerate() {
        *b = (k as u32 ^ i) as u8;
    }
    f
}

/// Receives everything the port has, echoing each burst back with `edit`.
fn echo(p: &VhostUserPort, q: u16, edit: VlanEdit) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    let mut b = RxBatch::default();
    let mut sel = Vec::new();
    p.poll_rx(q, &mut b, &mut |batch| {
        sel.clear();
        for i in 0..batch.len() {
            got.push(batch.frame(i).to_vec());
            sel.push(TxSel {
                idx: i as u16,
                edit,
            });
        }
        p.tx_burst(q, batch, &sel);
    });
    got
}

#[test]
fn frames_cross_both_ways_unchanged_and_in_order() {
    let path = tmp("a");
    let p = port(&path, Mode::Server, 1);
    let mut vu = VirtioUser::new(&VirtioUserConfig::new(&path)).expect("virtio-user");
    wait_up(&p);
    let sent: Vec<Vec<u8>> = (0..1000)
        .map(|i| frame(i, 60 + (i as usize % 1400)))
        .collect();
    let mut seen = Vec::new();
    let mut back = Vec::new();
    let mut next = 0;
    let t = Instant::now();
    while back.len() < sent.len() && t.elapsed() < Duration::from_secs(10) {
        if next < sent.len() {
            next += vu.send(0, &sent[next..(next + 32).min(sent.len())]);
        }
        seen.extend(echo(&p, 0, VlanEdit::Keep));
        vu.recv(0, 64, |f| back.push(f.to_vec()));
    }
    assert_eq!(seen, sent, "switch side saw different frames");
    assert_eq!(back, sent, "frames echoed back differ");
    let st = p.stats();
    assert_eq!(st.rx_packets, 1000);
    assert_eq!(st.tx_packets, 1000);
    assert_eq!(st.total_drops(), 0);
}

#[test]
fn vlan_edit_is_applied_while_copying() {
    let path = tmp("b");
    let p = port(&path, Mode::Server, 1);
    let mut vu = VirtioUser::new(&VirtioUserConfig::new(&path)).expect("virtio-user");
    wait_up(&p);
    let f = frame(7, 100);
    assert_eq!(vu.send(0, &[&f]), 1);
    let t = Instant::now();
    let mut back = Vec::new();
    while back.is_empty() && t.elapsed() < Duration::from_secs(5) {
        echo(&p, 0, VlanEdit::Push(0x0064));
        vu.recv(0, 1, |x| back.push(x.to_vec()));
    }
    assert_eq!(back.len(), 1);
    assert_eq!(back[0].len(), 104);
    assert_eq!(&back[0][12..16], &[0x81, 0x00, 0x00, 0x64]);
    assert_eq!(&back[0][16..], &f[12..]);
}

#[test]
fn switch_as_client_reconnects_to_a_restarted_frontend() {
    let path = tmp("c");
    let p = port(&path, Mode::Client, 1);
    for round in 0..2 {
        let mut cfg = VirtioUserConfig::new(&path);
        cfg.server = true;
        let mut vu = VirtioUser::new(&cfg).expect("virtio-user server");
        wait_up(&p);
        let f = frame(round, 64);
        let t = Instant::now();
        let mut back = Vec::new();
        let mut sent = false;
        while back.is_empty() && t.elapsed() < Duration::from_secs(5) {
            if !sent {
                sent = vu.send(0, &[&f]) == 1;
            }
            echo(&p, 0, VlanEdit::Keep);
            vu.recv(0, 1, |x| back.push(x.to_vec()));
        }
        assert_eq!(back, vec![f], "round {round}");
        drop(vu);
        let t = Instant::now();
        while p.is_up() {
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "port stayed up after the frontend left"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    assert!(p.connections() >= 2);
}

#[test]
fn two_queue_pairs_are_independent() {
    let path = tmp("d");
    let p = port(&path, Mode::Server, 2);
    let mut cfg = VirtioUserConfig::new(&path);
    cfg.queue_pairs = 2;
    let mut vu = VirtioUser::new(&cfg).expect("virtio-user");
    wait_up(&p);
    let a = frame(1, 64);
    let b = frame(2, 64);
    vu.send(0, &[&a]);
    vu.send(1, &[&b]);
    let t = Instant::now();
    let (mut q0, mut q1) = (Vec::new(), Vec::new());
    while (q0.is_empty() || q1.is_empty()) && t.elapsed() < Duration::from_secs(5) {
        q0.extend(echo(&p, 0, VlanEdit::Keep));
        q1.extend(echo(&p, 1, VlanEdit::Keep));
    }
    assert_eq!(q0, vec![a]);
    assert_eq!(q1, vec![b]);
}

#[test]
fn toggling_rings_and_call_fds_keeps_their_position() {
    let path = tmp("e");
    let p = port(&path, Mode::Server, 1);
    let mut vu = VirtioUser::new(&VirtioUserConfig::new(&path)).expect("virtio-user");
    wait_up(&p);
    let mut seen = Vec::new();
    let mut back = Vec::new();
    for round in 0..3u32 {
        let sent: Vec<Vec<u8>> = (0..100).map(|i| frame(round * 1000 + i, 64)).collect();
        let mut next = 0;
        let t = Instant::now();
        let before = back.len();
        while back.len() < before + sent.len() && t.elapsed() < Duration::from_secs(10) {
            if next < sent.len() {
                next += vu.send(0, &sent[next..(next + 32).min(sent.len())]);
            }
            seen.extend(echo(&p, 0, VlanEdit::Keep));
            vu.recv(0, 64, |f| back.push(f.to_vec()));
        }
        assert_eq!(
            &back[before..],
            &sent[..],
            "round {round}: frames lost, repeated or reordered; port {:?}, up {}",
            p.stats(),
            p.is_up()
        );
        // As QEMU does on `ethtool -L` or an MSI-X mask: disable, new call fd, enable.
        vu.reenable_rings().expect("re-enable");
        wait_up(&p);
    }
    assert_eq!(seen.len(), 300, "the port saw frames twice");
}

#[test]
fn a_guest_rewriting_its_buffer_after_the_decision_cannot_change_the_headers_sent() {
    let path = tmp("f");
    let p = port(&path, Mode::Server, 1);
    let mut vu = VirtioUser::new(&VirtioUserConfig::new(&path)).expect("virtio-user");
    wait_up(&p);
    // Longer than the head copy, so that the rest is read from the guest at transmit.
    let f = frame(42, HEAD_SNAPSHOT + 36);
    assert_eq!(vu.send(0, &[&f]), 1);
    let mut b = RxBatch::default();
    let mut decided = Vec::new();
    let t = Instant::now();
    while decided.is_empty() && t.elapsed() < Duration::from_secs(5) {
        p.poll_rx(0, &mut b, &mut |batch| {
            decided = batch.head(0).to_vec();
            // The guest's other vCPU rewrites the MACs and inserts a tag-like pattern
            // after the switch looked at the frame (descriptor 0 held it: the first free
            // id; its buffer starts with the 12-byte virtio-net header).
            let mut evil = vec![0u8; 12];
            evil.extend_from_slice(&[0xee; 20]);
            vu.raw_ring(1, |r| r.write_buf(0, &evil));
            let sel = [TxSel {
                idx: 0,
                edit: VlanEdit::Keep,
            }];
            p.tx_burst(0, batch, &sel);
        });
    }
    assert_eq!(
        decided,
        f[..HEAD_SNAPSHOT].to_vec(),
        "the decision saw the original headers"
    );
    let got = vu.recv_wait(0, 1, Duration::from_secs(2));
    assert_eq!(got.len(), 1);
    assert_eq!(
        &got[0][..HEAD_SNAPSHOT],
        &f[..HEAD_SNAPSHOT],
        "the headers sent are the ones decided on"
    );
}
