//! A hostile or buggy driver against our vhost-user backend port: descriptor chains
//! that loop, point outside guest memory, exceed the queue, nest indirect tables, or
//! carry frames larger than the buffers. The port must count each case by reason,
//! return the bad chain, and keep working.

use std::time::{Duration, Instant};

use pmd::port::{Port, PortDrop, RxBatch, TxSel};
use pmd::vhost_user::{VhostUserConfig, VhostUserPort};
use pmd::virtio::{Desc, DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE};
use pmd::virtio_user::{VirtioUser, VirtioUserConfig};
use pmd::VlanEdit;

const TX: usize = 1; // the driver's transmit ring of queue pair 0
const RX: usize = 0; // the driver's receive ring of queue pair 0

fn setup(tag: &str, mrg: bool) -> (VhostUserPort, VirtioUser) {
    let d = std::env::temp_dir().join(format!("pmd-hostile-{}-{tag}", std::process::id()));
    std::fs::create_dir_all(&d).expect("tmp dir");
    let path = d.join("s.sock");
    let p = VhostUserPort::new(VhostUserConfig::new(tag, &path)).expect("port");
    let mut cfg = VirtioUserConfig::new(&path);
    cfg.mrg_rxbuf = mrg;
    let vu = VirtioUser::new(&cfg).expect("virtio-user");
    let t = Instant::now();
    while !p.is_up() {
        assert!(t.elapsed() < Duration::from_secs(5), "port never came up");
        std::thread::sleep(Duration::from_millis(5));
    }
    (p, vu)
}

fn frame(n: usize) -> Vec<u8> {
    let mut f = vec![0x5a; n];
    f[..12].copy_from_slice(&[2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1]);
    f
}

/// Polls the port until it has taken everything; returns the frames it delivered.
fn drain(p: &VhostUserPort) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut b = RxBatch::default();
    for _ in 0..20 {
        p.poll_rx(0, &mut b, &mut |batch| {
            for i in 0..batch.len() {
                out.push(batch.frame(i).to_vec());
            }
        });
    }
    out
}

fn d(addr: u64, len: u32, flags: u16, next: u16) -> Desc {
    Desc {
        addr,
        len,
        flags,
        next,
    }
}

/// Good frame after the bad chains: the port still receives.
fn still_works(p: &VhostUserPort, vu: &mut VirtioUser) {
    vu.raw_used(TX);
    let f = frame(80);
    assert_eq!(vu.send(0, &[&f]), 1);
    let got = drain(p);
    assert_eq!(got, vec![f], "port stopped receiving after bad input");
}

#[test]
fn bad_transmit_chains_are_counted_returned_and_survived() {
    let (p, mut vu) = setup("tx", true);
    let hdr = 12usize;
    let mut good = vec![0u8; hdr];
    good.extend(frame(64));
    vu.raw_ring(TX, |r| {
        let n = r.size();
        // 1. A loop of empty buffers: 200 -> 201 -> 200 (empty buffers add no segment:
        // the bound on descriptors per chain ends it after MAX_CHAIN_DESCS reads, not a
        // whole ring's), and a loop of full ones: 240 -> 241 -> 240 (the buffer bound
        // ends it first). A loop in a small indirect table, 0 -> 1 -> 0, is a loop.
        r.set_desc(200, d(r.buf_gpa(200), 0, DESC_F_NEXT, 201));
        r.set_desc(201, d(r.buf_gpa(201), 0, DESC_F_NEXT, 200));
        r.push_avail(200);
        r.set_desc(240, d(r.buf_gpa(240), 40, DESC_F_NEXT, 241));
        r.set_desc(241, d(r.buf_gpa(241), 40, DESC_F_NEXT, 240));
        r.push_avail(240);
        r.set_indirect(242, 0, d(r.buf_gpa(243), 10, DESC_F_NEXT, 1));
        r.set_indirect(242, 1, d(r.buf_gpa(243), 10, DESC_F_NEXT, 0));
        r.set_desc(242, d(r.buf_gpa(242), 32, DESC_F_INDIRECT, 0));
        r.push_avail(242);
        // 2. A buffer outside guest memory.
        r.set_desc(202, d(0xdead_0000_0000, 100, 0, 0));
        r.push_avail(202);
        // 3. A next index beyond the table.
        r.set_desc(203, d(r.buf_gpa(203), 40, DESC_F_NEXT, n + 5));
        r.push_avail(203);
        // 4. A head beyond the queue size.
        r.push_avail(n + 7);
        // 5. An indirect table that contains another indirect descriptor.
        r.set_indirect(204, 0, d(r.buf_gpa(205), 32, DESC_F_INDIRECT, 0));
        r.set_desc(204, d(r.buf_gpa(204), 16, DESC_F_INDIRECT, 0));
        r.push_avail(204);
        // 6. A device-writable buffer on the transmit ring.
        r.set_desc(206, d(r.buf_gpa(206), 100, DESC_F_WRITE, 0));
        r.push_avail(206);
        // 7. A frame larger than the switch accepts: six 2 KiB buffers chained.
        for i in 0..6u16 {
            let flags = if i < 5 { DESC_F_NEXT } else { 0 };
            r.set_desc(210 + i, d(r.buf_gpa(210 + i), 2048, flags, 211 + i));
        }
        r.push_avail(210);
        // 8. A runt: shorter than header + Ethernet header.
        r.set_desc(220, d(r.buf_gpa(220), 20, 0, 0));
        r.push_avail(220);
        // 9. A good frame in an indirect table split over three buffers.
        r.write_buf(230, &good[..20]);
        r.write_buf(231, &good[20..50]);
        r.write_buf(232, &good[50..]);
        r.set_indirect(233, 0, d(r.buf_gpa(230), 20, DESC_F_NEXT, 1));
        r.set_indirect(233, 1, d(r.buf_gpa(231), 30, DESC_F_NEXT, 2));
        r.set_indirect(233, 2, d(r.buf_gpa(232), (good.len() - 50) as u32, 0, 0));
        r.set_desc(233, d(r.buf_gpa(233), 48, DESC_F_INDIRECT, 0));
        r.push_avail(233);
    });
    let got = drain(&p);
    assert_eq!(
        got,
        vec![frame(64)],
        "only the good indirect frame gets through, gathered whole"
    );
    let s = p.stats();
    for (why, n) in [
        (PortDrop::DescLoop, 1),
        (PortDrop::TooManySegs, 2),
        (PortDrop::BadAddress, 1),
        (PortDrop::BadIndex, 1),
        (PortDrop::BadHead, 1),
        (PortDrop::BadIndirect, 1),
        (PortDrop::WrongDirection, 1),
        (PortDrop::RxTooBig, 1),
        (PortDrop::RxRunt, 1),
    ] {
        assert_eq!(s.drops[why as usize], n, "{} count", why.as_str());
    }
    // Every chain with a valid head came back to the driver; the bogus head did not.
    let used = vu.raw_used(TX);
    let mut ids: Vec<u16> = used.iter().map(|u| u.0).collect();
    ids.sort_unstable();
    assert_eq!(ids, vec![200, 202, 203, 204, 206, 210, 220, 233, 240, 242]);
    still_works(&p, &mut vu);
}

#[test]
fn a_bogus_avail_index_is_ignored() {
    let (p, mut vu) = setup("idx", true);
    vu.raw_ring(TX, |r| r.bump_avail_idx(5000));
    assert!(drain(&p).is_empty());
    // The driver fixes its index (wraps back) and sends normally.
    vu.raw_ring(TX, |r| r.bump_avail_idx(0u16.wrapping_sub(5000)));
    still_works(&p, &mut vu);
}

/// Sends `f` from the switch side into the driver's receive ring.
fn deliver(p: &VhostUserPort, vu: &mut VirtioUser, f: &[u8]) -> usize {
    // The frame goes out of the driver's transmit ring and the port loops it back.
    assert_eq!(vu.send(0, &[f]), 1);
    let mut sent = 0;
    let mut b = RxBatch::default();
    for _ in 0..20 {
        p.poll_rx(0, &mut b, &mut |batch| {
            let sel: Vec<TxSel> = (0..batch.len())
                .map(|i| TxSel {
                    idx: i as u16,
                    edit: VlanEdit::Keep,
                })
                .collect();
            sent += p.tx_burst(0, batch, &sel);
        });
    }
    sent
}

#[test]
fn frames_larger_than_receive_buffers_are_dropped_and_counted() {
    // Without mergeable buffers a frame must fit one chain: make every receive buffer
    // 64 bytes long, then deliver a 1000-byte frame.
    let (p, mut vu) = setup("small", false);
    vu.raw_ring(RX, |r| {
        for id in 0..r.size() {
            let a = r.buf_gpa(id);
            r.set_desc(id, d(a, 64, DESC_F_WRITE, 0));
        }
    });
    assert_eq!(deliver(&p, &mut vu, &frame(1000)), 0);
    assert_eq!(p.stats().drops[PortDrop::FrameTooBig as usize], 1);
    // A frame that fits still arrives.
    assert_eq!(deliver(&p, &mut vu, &frame(50)), 1);
    let got = vu.recv_wait(0, 1, Duration::from_secs(2));
    assert_eq!(got, vec![frame(50)]);
}

#[test]
fn bad_receive_chain_is_returned_empty_and_the_queue_goes_on() {
    let (p, mut vu) = setup("badrx", true);
    // First receive descriptor points outside memory.
    vu.raw_ring(RX, |r| {
        r.set_desc(0, d(0xbad0_0000_0000, 2048, DESC_F_WRITE, 0))
    });
    assert_eq!(deliver(&p, &mut vu, &frame(60)), 0);
    assert_eq!(p.stats().drops[PortDrop::BadAddress as usize], 1);
    assert_eq!(deliver(&p, &mut vu, &frame(61)), 1);
    let got = vu.recv_wait(0, 1, Duration::from_secs(2));
    assert_eq!(got, vec![frame(61)]);
}

#[test]
fn a_chain_of_many_empty_descriptors_is_refused_after_a_bounded_walk() {
    // Empty descriptors add no segment, so only a bound on descriptors per chain stops a
    // chain that visits a whole indirect table of them before its one real buffer.
    let (p, mut vu) = setup("empty", true);
    let mut good = vec![0u8; 12];
    good.extend(frame(64));
    vu.raw_ring(TX, |r| {
        r.write_buf(100, &good);
        let n = 200u16;
        for k in 0..n - 1 {
            r.set_indirect(101, k, d(r.buf_gpa(102), 0, DESC_F_NEXT, k + 1));
        }
        r.set_indirect(101, n - 1, d(r.buf_gpa(100), good.len() as u32, 0, 0));
        r.set_desc(
            101,
            d(r.buf_gpa(101), u32::from(n) * 16, DESC_F_INDIRECT, 0),
        );
        r.push_avail(101);
    });
    assert!(drain(&p).is_empty(), "the overlong chain was taken");
    assert_eq!(p.stats().drops[PortDrop::TooManySegs as usize], 1);
    still_works(&p, &mut vu);
}

#[test]
fn costly_chains_are_taken_a_budget_at_a_time() {
    // 64 frames, each behind 64 empty descriptors in its indirect table: legal chains
    // (65 descriptors plus the indirect one) that cost 66 reads each. One poll takes
    // only as many as its walk budget allows; the rest come in later polls.
    let (p, mut vu) = setup("budget", true);
    let mut good = vec![0u8; 12];
    good.extend(frame(64));
    vu.raw_ring(TX, |r| {
        for c in 0..64u16 {
            let (table, data) = (2 * c, 2 * c + 1);
            r.write_buf(data, &good);
            for k in 0..64u16 {
                r.set_indirect(table, k, d(r.buf_gpa(data), 0, DESC_F_NEXT, k + 1));
            }
            r.set_indirect(table, 64, d(r.buf_gpa(data), good.len() as u32, 0, 0));
            r.set_desc(table, d(r.buf_gpa(table), 65 * 16, DESC_F_INDIRECT, 0));
            r.push_avail(table);
        }
    });
    let mut b = RxBatch::default();
    let first = p.poll_rx(0, &mut b, &mut |_| {});
    let most = (pmd::vhost_user::WALK_BUDGET / 66 + 1) as usize;
    assert!(
        (1..=most).contains(&first),
        "one poll took {first} costly chains (budget allows {most})"
    );
    let rest = drain(&p);
    assert_eq!(
        first + rest.len(),
        64,
        "every costly frame arrives in the end"
    );
    assert_eq!(p.stats().total_drops(), 0);
}
