//! Live changes and many cores, in-process, with vhost-user ports and our virtio-user
//! frontends: what a user of the switch notices is frames lost, frames flooded and
//! addresses forgotten.

use std::sync::Arc;
use std::time::{Duration, Instant};

use pmd::vhost_user::{VhostUserConfig, VhostUserPort};
use pmd::virtio_user::{VirtioUser, VirtioUserConfig};
use vswitch::switch::{Change, Switch, SwitchConfig, SwitchPort};
use vswitch::{PortId, Vid, VlanMode};

fn dir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("vswitch-live-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).expect("dir");
    d
}

fn port(name: &str, path: &std::path::Path, vid: u16) -> SwitchPort {
    SwitchPort {
        port: Arc::new(VhostUserPort::new(VhostUserConfig::new(name, path)).expect("port")),
        vlan: VlanMode::Access {
            vid: Vid::new(vid).expect("vid"),
        },
        security: None,
        filter: None,
        horizon: false,
    }
}

fn frame(dst: u8, src: u8, seq: u32) -> Vec<u8> {
    let mut f = vec![0u8; 64];
    f[..12].copy_from_slice(&[2, 0, 0, 0, 0, dst, 2, 0, 0, 0, 0, src]);
    f[12..14].copy_from_slice(&[0x88, 0xb5]);
    f[14..18].copy_from_slice(&seq.to_be_bytes());
    f
}

/// Sends one frame each way until both arrive, so that both MACs are learnt.
fn learn(a: &mut VirtioUser, b: &mut VirtioUser) {
    let t = Instant::now();
    let (mut ab, mut ba) = (false, false);
    while !(ab && ba) {
        assert!(t.elapsed() < Duration::from_secs(10), "a and b never met");
        a.send(0, &[frame(0xb, 0xa, 0)]);
        b.send(0, &[frame(0xa, 0xb, 0)]);
        ab |= !b.recv_wait(0, 1, Duration::from_millis(20)).is_empty();
        ba |= !a.recv_wait(0, 1, Duration::from_millis(20)).is_empty();
    }
    // Drain what is left.
    while !b.recv_wait(0, 64, Duration::from_millis(20)).is_empty() {}
    while !a.recv_wait(0, 64, Duration::from_millis(20)).is_empty() {}
}

/// Stats once the cores have published what they counted so far: a core publishes its
/// bridge counters every 4096 polls, so wait until each has polled that many more times.
fn settled(sw: &Switch) -> vswitch::switch::SwitchStats {
    let polls = |s: &vswitch::switch::SwitchStats| -> Vec<u64> {
        s.cores
            .iter()
            .map(|c| c.busy_polls + c.idle_polls)
            .collect()
    };
    let start = polls(&sw.stats());
    let t = Instant::now();
    loop {
        let st = sw.stats();
        if polls(&st)
            .iter()
            .zip(&start)
            .all(|(n, s)| *n >= s + 2 * 4096)
        {
            return st;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "cores stopped polling"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn ports_come_and_go_while_others_forward_without_loss_or_flooding() {
    let d = dir("churn");
    let (pa, pb) = (d.join("a.sock"), d.join("b.sock"));
    let mut sw = Switch::start(
        &SwitchConfig::default(),
        vec![port("a", &pa, 10), port("b", &pb, 10)],
    )
    .expect("switch");
    let mut a = VirtioUser::new(&VirtioUserConfig::new(&pa)).expect("a");
    let mut b = VirtioUser::new(&VirtioUserConfig::new(&pb)).expect("b");
    learn(&mut a, &mut b);
    let floods = settled(&sw).floods;
    let g0 = sw.generation();

    // A stream a → b; every few frames another tenant's port is added or removed.
    let (mut sent, mut got, mut seq) = (0u64, 0u64, 1u32);
    let mut next_seq = 1u32;
    let mut extra: Option<PortId> = None;
    let mut changes = 0;
    let mut slowest = Duration::ZERO;
    let t = Instant::now();
    while changes < 100 {
        assert!(t.elapsed() < Duration::from_secs(60), "too slow");
        let f: Vec<Vec<u8>> = (0..8).map(|k| frame(0xb, 0xa, seq + k)).collect();
        let n = a.send(0, &f) as u32;
        sent += u64::from(n);
        seq += n;
        b.recv(0, 64, |r| {
            let s = u32::from_be_bytes([r[14], r[15], r[16], r[17]]);
            assert_eq!(s, next_seq, "frames out of order or lost");
            next_seq += 1;
            got += 1;
        });
        let change = match extra.take() {
            None => {
                let id = sw.free_port_id().expect("id");
                extra = Some(id);
                Change {
                    set: vec![(id, port("c", &d.join("c.sock"), 20))],
                    ..Change::default()
                }
            }
            Some(id) => Change {
                remove: vec![id],
                ..Change::default()
            },
        };
        slowest = slowest.max(sw.apply(change).expect("change"));
        changes += 1;
    }
    let t = Instant::now();
    while got < sent && t.elapsed() < Duration::from_secs(5) {
        b.recv(0, 64, |r| {
            let s = u32::from_be_bytes([r[14], r[15], r[16], r[17]]);
            assert_eq!(s, next_seq, "frames out of order or lost");
            next_seq += 1;
            got += 1;
        });
    }
    let st = settled(&sw);
    assert_eq!(got, sent, "frames lost across 100 changes: {st:?}");
    assert!(sent > 0);
    assert_eq!(
        st.floods, floods,
        "a change elsewhere made the switch forget b's MAC: {st:?}"
    );
    assert_eq!(sw.generation(), g0 + 100);
    assert!(st.cores.iter().all(|c| c.generation == g0 + 100), "{st:?}");
    eprintln!("100 changes; slowest took {slowest:?} until every core ran it");
}

#[test]
fn a_removed_port_is_closed_and_its_socket_gone() {
    let d = dir("rm");
    let pc = d.join("c.sock");
    let mut sw = Switch::start(&SwitchConfig::default(), vec![port("c", &pc, 1)]).expect("sw");
    let weak = Arc::downgrade(sw.port(PortId(0)).expect("port c"));
    sw.apply(Change {
        remove: vec![PortId(0)],
        ..Change::default()
    })
    .expect("remove");
    assert!(sw.port(PortId(0)).is_none());
    assert!(weak.upgrade().is_none(), "the removed port is still open");
    assert!(sw.stats().ports.is_empty());
}

#[test]
fn two_cores_share_what_they_learn() {
    let d = dir("cores");
    let (pa, pb) = (d.join("a.sock"), d.join("b.sock"));
    let cfg = SwitchConfig {
        cores: vec![None, None],
        ..SwitchConfig::default()
    };
    let sw = Switch::start(&cfg, vec![port("a", &pa, 1), port("b", &pb, 1)]).expect("switch");
    let mut a = VirtioUser::new(&VirtioUserConfig::new(&pa)).expect("a");
    let mut b = VirtioUser::new(&VirtioUserConfig::new(&pb)).expect("b");
    // Port a's queue is polled by one core and b's by the other.
    learn(&mut a, &mut b);
    std::thread::sleep(Duration::from_millis(50));
    let before = settled(&sw);
    assert!(
        before.shared_learns >= 2,
        "each core must have told the other: {before:?}"
    );
    let mut got = 0;
    for k in 0..200u32 {
        a.send(0, &[frame(0xb, 0xa, k)]);
        b.send(0, &[frame(0xa, 0xb, k)]);
        got += b.recv_wait(0, 1, Duration::from_millis(50)).len();
        a.recv_wait(0, 1, Duration::from_millis(50));
    }
    let after = settled(&sw);
    assert_eq!(got, 200);
    assert_eq!(
        after.floods, before.floods,
        "once learnt, two-core p2p must not flood: {after:?}"
    );
    let ports: Vec<_> = after.ports.iter().map(|(n, _)| n.clone()).collect();
    assert_eq!(ports, ["a", "b"]);
}

fn csum(b: &[u8]) -> u16 {
    let mut s: u32 = b
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

fn udp(dst: [u8; 6], src: [u8; 6], sip: [u8; 4], dip: [u8; 4]) -> Vec<u8> {
    let mut f = vec![0u8; 60];
    f[..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&src);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    f[14] = 0x45;
    f[16..18].copy_from_slice(&46u16.to_be_bytes());
    f[22] = 64;
    f[23] = 17;
    f[26..30].copy_from_slice(&sip);
    f[30..34].copy_from_slice(&dip);
    let c = csum(&f[14..34]);
    f[24..26].copy_from_slice(&c.to_be_bytes());
    f
}

#[test]
fn the_router_runs_on_two_cores_and_a_neighbour_resolved_on_one_serves_the_other() {
    use vswitch::router::{Router, RouterIf};
    use vswitch::wire::EthernetAddress;
    const ROUTER: [u8; 6] = [2, 0x76, 0x6e, 0x68, 0x72, 1];
    let (ma, mb) = ([2, 0, 0, 0, 0, 0xa], [2, 0, 0, 0, 0, 0xb]);
    let d = dir("l3cores");
    let (pa, pb) = (d.join("a.sock"), d.join("b.sock"));
    let rif = |vid: u16, ip: [u8; 4]| RouterIf {
        vid: Vid::new(vid).expect("vid"),
        mac: EthernetAddress(ROUTER),
        ip: ip.into(),
        prefix: 24,
        ip6: None,
    };
    let router = Router::new(
        vec![rif(10, [10, 0, 0, 254]), rif(20, [10, 0, 1, 254])],
        &[],
    )
    .expect("router");
    let cfg = SwitchConfig {
        cores: vec![None, None],
        routers: vec![router],
        ..SwitchConfig::default()
    };
    let sw = Switch::start(&cfg, vec![port("a", &pa, 10), port("b", &pb, 20)]).expect("switch");
    let mut a = VirtioUser::new(&VirtioUserConfig::new(&pa)).expect("a");
    let mut b = VirtioUser::new(&VirtioUserConfig::new(&pb)).expect("b");
    std::thread::sleep(Duration::from_millis(100));
    // a → b across the router: the core polling a asks for b.
    let pkt = udp(ROUTER, ma, [10, 0, 0, 1], [10, 0, 1, 1]);
    let t = Instant::now();
    let req = loop {
        assert!(t.elapsed() < Duration::from_secs(5), "no ARP request for b");
        a.send(0, std::slice::from_ref(&pkt));
        let got = b.recv_wait(0, 8, Duration::from_millis(50));
        if let Some(f) = got.into_iter().find(|f| f[12..14] == [8, 6]) {
            break f;
        }
    };
    assert_eq!(&req[38..42], &[10, 0, 1, 1]);
    // b answers: the reply lands on the other core, whose router replica learns b.
    let mut rep = vec![0u8; 60];
    rep[..6].copy_from_slice(&ROUTER);
    rep[6..12].copy_from_slice(&mb);
    rep[12..14].copy_from_slice(&[8, 6]);
    rep[14..22].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 2]);
    rep[22..28].copy_from_slice(&mb);
    rep[28..32].copy_from_slice(&[10, 0, 1, 1]);
    rep[32..38].copy_from_slice(&ROUTER);
    rep[38..42].copy_from_slice(&[10, 0, 1, 254]);
    b.send(0, std::slice::from_ref(&rep));
    std::thread::sleep(Duration::from_millis(50));
    let before = settled(&sw);
    let unresolved = |s: &vswitch::switch::SwitchStats| {
        s.route_drops
            .iter()
            .find(|(r, _)| *r == "unresolved")
            .map_or(0, |(_, n)| *n)
    };
    // Now the core polling a routes to b at once: b's address came from the other core.
    let mut routed = 0;
    for _ in 0..50 {
        a.send(0, std::slice::from_ref(&pkt));
        routed += b
            .recv_wait(0, 1, Duration::from_millis(50))
            .iter()
            .filter(|f| f[..6] == mb && f[12..14] == [8, 0] && f[22] == 63)
            .count();
    }
    std::thread::sleep(Duration::from_millis(50));
    let after = settled(&sw);
    assert_eq!(routed, 50, "{after:?}");
    assert!(after.shared_learns > before.shared_learns || before.shared_learns > 0);
    assert_eq!(
        unresolved(&after),
        unresolved(&before),
        "the second core had to resolve b itself: {after:?}"
    );
}

/// A port whose receive blocks while `wedged` is set: a polling core stuck in one poll,
/// whatever the cause (a driver bug, a blocking call). A stand-in, inside this test
/// only, for a fault no real peer can cause any more.
struct Wedge {
    wedged: Arc<std::sync::atomic::AtomicBool>,
}

impl pmd::port::Port for Wedge {
    fn name(&self) -> &str {
        "wedge"
    }
    fn queue_pairs(&self) -> u16 {
        1
    }
    fn is_up(&self) -> bool {
        true
    }
    fn poll_rx(
        &self,
        _q: u16,
        _b: &mut pmd::port::RxBatch,
        _f: &mut dyn FnMut(&mut pmd::port::RxBatch),
    ) -> usize {
        while self.wedged.load(std::sync::atomic::Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(1));
        }
        0
    }
    fn tx_burst(&self, _q: u16, _s: &pmd::port::RxBatch, _sel: &[pmd::port::TxSel]) -> usize {
        0
    }
    fn stats(&self) -> pmd::port::PortStats {
        pmd::port::PortStats::default()
    }
}

#[test]
fn a_stuck_core_is_reported_and_changes_do_not_wait_for_it() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let wedged = Arc::new(AtomicBool::new(false));
    let wedge = SwitchPort {
        port: Arc::new(Wedge {
            wedged: wedged.clone(),
        }),
        vlan: VlanMode::Access {
            vid: Vid::new(1).expect("vid"),
        },
        security: None,
        filter: None,
        horizon: false,
    };
    let mut sw = Switch::start(&SwitchConfig::default(), vec![wedge]).expect("sw");
    let stalled = |sw: &Switch| sw.stats().cores[0].stalled;
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        stalled(&sw),
        Duration::ZERO,
        "a polling core reported stuck"
    );
    wedged.store(true, Ordering::Relaxed);
    let t = Instant::now();
    while stalled(&sw) < vswitch::switch::STALL_REPORTED {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "a core stuck for 5 s was not reported"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // A change does not hang on the stuck core: it is made, and the core takes it when
    // it polls again.
    let d = dir("stuck");
    let t = Instant::now();
    sw.apply(Change {
        set: vec![(PortId(1), port("other", &d.join("o.sock"), 1))],
        ..Change::default()
    })
    .expect("change");
    assert!(t.elapsed() < Duration::from_secs(5));
    assert_eq!(sw.lagging_core(), Some(0));
    wedged.store(false, Ordering::Relaxed);
    let t = Instant::now();
    while stalled(&sw) > Duration::ZERO || sw.lagging_core().is_some() {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "the core did not recover"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
