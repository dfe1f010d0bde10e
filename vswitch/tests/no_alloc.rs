//! `Bridge::forward` performs no heap allocation once the bridge is built: a counting
//! global allocator watches 10 000 forwards of varied frames (known and unknown unicast,
//! floods, VLAN pushes and pops, every drop reason, a full FDB with ageing and reclaim).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

use pmd::VlanEdit;
use vswitch::bridge::{
    eui64_link_local, Bridge, BridgeConfig, DropReason, FilterRule, Forwarded, GroupFilter,
    IngressFilter, PortFilter, PortId, PortSecurity, RuleProto, Vid, VlanMode, VlanSet,
};
use vswitch::router::{Router, RouterIf, Verdict};
use vswitch::wire::{EtherType, EthernetAddress, EthernetFrame, Tci, VlanTag};

const RMAC: EthernetAddress = EthernetAddress([0x02, 0xaa, 0, 0, 0, 1]);

/// Counts allocations made by the thread that set `TRACKED`, so the test harness's own
/// threads cannot disturb the count.
struct CountingAllocator;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static TRACKED: Cell<bool> = const { Cell::new(false) };
}

fn note_allocation() {
    if TRACKED.try_with(Cell::get).unwrap_or(false) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: every method forwards its arguments unchanged to `System`, which implements
// the `GlobalAlloc` contract; counting touches only an atomic and a const-initialised
// thread-local `Cell`, neither of which allocates.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_allocation();
        // SAFETY: the caller upholds `alloc`'s contract for `layout`, as `System` needs.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note_allocation();
        // SAFETY: as in `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_allocation();
        // SAFETY: `ptr` was allocated by this allocator, that is by `System`, with
        // `layout`; the caller upholds the rest of `realloc`'s contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` (through this allocator) with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

fn vid(raw: u16) -> Vid {
    Vid::new(raw).expect("valid test vid")
}

fn mac(n: u8) -> EthernetAddress {
    EthernetAddress([0x02, 0, 0, 0, 0x10, n])
}

fn frame(dst: EthernetAddress, src: EthernetAddress, tags: &[(EtherType, u16)]) -> Vec<u8> {
    let mut v = vec![0u8; 14 + 4 * tags.len() + 46];
    let mut eth = EthernetFrame::new_unchecked(&mut v[..]);
    eth.set_dst_addr(dst);
    eth.set_src_addr(src);
    eth.set_ethertype(tags.first().map_or(EtherType::IPV4, |t| t.0));
    for (i, (_, tci)) in tags.iter().enumerate() {
        let mut tag = VlanTag::new_unchecked(&mut v[14 + 4 * i..]);
        tag.set_tci(Tci(*tci));
        tag.set_ethertype(tags.get(i + 1).map_or(EtherType::IPV4, |t| t.0));
    }
    v
}

/// An ARP request from `sha`/`spa`.
fn arp(sha: EthernetAddress, spa: [u8; 4]) -> Vec<u8> {
    let mut v = frame(EthernetAddress::BROADCAST, sha, &[]);
    v[12..14].copy_from_slice(&[0x08, 0x06]);
    v[14..22].copy_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    v[22..28].copy_from_slice(sha.as_bytes());
    v[28..32].copy_from_slice(&spa);
    v
}

/// An ICMPv6 message of type `ty` from `src`'s EUI-64 link-local address, carrying
/// `body` after the first 8 bytes.
fn icmp6(src: EthernetAddress, ty: u8, body: &[u8]) -> Vec<u8> {
    let ll = eui64_link_local(src).octets();
    let mut v = frame(EthernetAddress([0x33, 0x33, 0, 0, 0, 1]), src, &[]);
    v.truncate(14);
    v[12..14].copy_from_slice(&[0x86, 0xdd]);
    v.extend_from_slice(&[0x60, 0, 0, 0]);
    v.extend_from_slice(&(8 + body.len() as u16).to_be_bytes());
    v.extend_from_slice(&[58, 255]);
    v.extend_from_slice(&ll);
    v.extend_from_slice(&[0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    v.extend_from_slice(&[ty, 0, 0, 0, 0, 0, 0, 0]);
    v.extend_from_slice(body);
    v
}

/// (ingress port, frame) pairs covering every path of `forward`.
fn workload() -> Vec<(PortId, Vec<u8>)> {
    let c = EtherType::VLAN;
    let bcast = EthernetAddress::BROADCAST;
    let mcast = EthernetAddress([0x01, 0x00, 0x5e, 0, 0, 1]);
    let mut w = Vec::new();
    // 48 hosts, more than the FDB holds: learning, refusals, reclaim after ageing.
    for n in 0..48u8 {
        let access_port = PortId(u16::from(n % 3));
        w.push((access_port, frame(mac((n + 1) % 48), mac(n), &[])));
        w.push((access_port, frame(bcast, mac(n), &[])));
        w.push((PortId(3), frame(mac(n), mac(100 + n % 8), &[(c, 10)])));
        w.push((PortId(4), frame(mac(n % 5), mac(200 + n % 4), &[])));
        w.push((PortId(4), frame(mcast, mac(210), &[(c, 0x6014)])));
    }
    // mac(3) lives on port 0 (VLAN 10) and now shows up on port 1: a move.
    w.push((PortId(1), frame(bcast, mac(3), &[])));
    let drops = [
        (PortId(0), frame(bcast, mac(1), &[(c, 10)])), // tagged on access
        (PortId(3), frame(bcast, mac(1), &[])),        // no native VLAN
        (PortId(3), frame(bcast, mac(1), &[(c, 99)])), // VLAN not allowed
        (
            PortId(3),
            frame(bcast, mac(1), &[(EtherType::QINQ, 10), (c, 20)]),
        ),
        (PortId(3), frame(bcast, mac(1), &[(c, 10), (c, 20)])),
        (PortId(0), frame(mac(2), bcast, &[])), // bad source
        (
            PortId(0),
            frame(EthernetAddress([0x01, 0x80, 0xc2, 0, 0, 0]), mac(1), &[]),
        ),
        (PortId(0), frame(mac(0), mac(0), &[])), // same port
        (PortId(5), frame(bcast, mac(1), &[])),  // no egress
        (PortId(6), frame(bcast, mac(1), &[])),  // link down
        (PortId(9), frame(bcast, mac(1), &[])),  // unknown port
        (PortId(0), vec![0xff; 13]),             // too short
        (PortId(3), frame(bcast, mac(1), &[(c, 10)])[..16].to_vec()), // malformed tag
        (PortId(7), frame(bcast, mac(78), &[])), // spoofed MAC
        (PortId(7), frame(bcast, mac(77), &[])), // not a valid IPv4 header: spoofed IP
        (PortId(7), arp(mac(77), [10, 0, 0, 9])), // spoofed ARP sender
        (PortId(7), icmp6(mac(77), 134, &[0; 8])), // a router advertisement from a pod
        (PortId(8), frame(bcast, mac(88), &[])), // egress denied by its group
    ];
    w.extend(drops);
    // What the secured port may send.
    let mut own = frame(bcast, mac(77), &[]);
    own[14] = 0x45;
    own[26..30].copy_from_slice(&[10, 0, 0, 7]);
    w.push((PortId(7), own));
    w.push((PortId(7), arp(mac(77), [10, 0, 0, 7])));
    // A neighbour advertisement for its link-local address, with its MAC.
    let mut na = eui64_link_local(mac(77)).octets().to_vec();
    na.extend_from_slice(&[2, 1]);
    na.extend_from_slice(mac(77).as_bytes());
    w.push((PortId(7), icmp6(mac(77), 136, &na)));
    // Routing: a host on VLAN 20 (port 2) makes itself known, a host on VLAN 10 asks
    // for its gateway and sends through it, once with a TTL that expires.
    w.push((PortId(2), arp(mac(40), [10, 0, 1, 40])));
    let mut ask = arp(mac(30), [10, 0, 0, 30]);
    ask[38..42].copy_from_slice(&[10, 0, 0, 254]);
    w.push((PortId(0), ask));
    // Two tunnels (ports 11 and 12, split horizon, VLAN 50): a MAC learnt behind one is
    // not reached from the other.
    w.push((PortId(12), frame(bcast, mac(150), &[])));
    w.push((PortId(11), frame(mac(150), mac(151), &[])));
    for ttl in [64, 1] {
        let mut p = frame(RMAC, mac(30), &[]);
        p[14] = 0x45;
        p[16..18].copy_from_slice(&46u16.to_be_bytes());
        p[22] = ttl;
        p[23] = 17;
        p[26..30].copy_from_slice(&[10, 0, 0, 30]);
        p[30..34].copy_from_slice(&[10, 0, 1, 40]);
        let c = vswitch::wire::checksum(&p[14..34]);
        p[24..26].copy_from_slice(&c.to_be_bytes());
        w.push((PortId(0), p));
    }
    w
}

#[test]
fn forward_does_not_allocate() {
    let mut bridge = Bridge::new(BridgeConfig {
        max_ports: 16,
        fdb_capacity: 32,
        fdb_max_age: 300,
    })
    .expect("bridge");
    let trunk = VlanMode::Trunk {
        allowed: [vid(10), vid(20)].into_iter().collect(),
        native: None,
    };
    let native_trunk = VlanMode::Trunk {
        allowed: VlanSet::range(vid(10), vid(30)),
        native: Some(vid(20)),
    };
    for (p, mode) in [
        (0, VlanMode::Access { vid: vid(10) }),
        (1, VlanMode::Access { vid: vid(10) }),
        (2, VlanMode::Access { vid: vid(20) }),
        (3, trunk),
        (4, native_trunk),
        (5, VlanMode::Access { vid: vid(40) }),
        (6, VlanMode::Access { vid: vid(10) }),
        (7, VlanMode::Access { vid: vid(10) }),
    ] {
        bridge.add_port(PortId(p), mode).expect("add port");
    }
    bridge
        .set_port_security(
            PortId(7),
            Some(PortSecurity {
                mac: mac(77),
                ips: vec![std::net::IpAddr::from([10, 0, 0, 7])],
                router: false,
            }),
        )
        .expect("port security");
    // Port 8 (VLAN 10) takes TCP 80 only, and may send nothing.
    bridge
        .add_port(PortId(8), VlanMode::Access { vid: vid(10) })
        .expect("add port");
    bridge
        .set_ingress_filter(
            PortId(8),
            Some(PortFilter {
                stateful: false,
                groups: vec![GroupFilter {
                    ingress: IngressFilter {
                        default_deny: true,
                        rules: vec![FilterRule {
                            proto: RuleProto::Tcp(Some((80, 80))),
                            src: None,
                        }],
                    },
                    // And sends nothing.
                    egress: IngressFilter {
                        default_deny: true,
                        rules: vec![],
                    },
                }],
            }),
        )
        .expect("filter");
    bridge.set_link(PortId(6), false).expect("link down");
    for p in [11, 12] {
        bridge
            .add_port(PortId(p), VlanMode::Access { vid: vid(50) })
            .expect("add port");
        bridge.set_horizon(PortId(p), true).expect("horizon");
    }
    let work = workload();

    // A router between VLANs 10 and 20 (ports 0, 1 and 2).
    let mut router = Router::new(
        vec![
            RouterIf {
                vid: vid(10),
                mac: RMAC,
                ip: [10, 0, 0, 254].into(),
                prefix: 24,
                ip6: None,
            },
            RouterIf {
                vid: vid(20),
                mac: RMAC,
                ip: [10, 0, 1, 254].into(),
                prefix: 24,
                ip6: None,
            },
        ],
        &[],
    )
    .expect("router");
    bridge.set_router_macs(vec![(vid(10), RMAC), (vid(20), RMAC)]);

    let mut sent = [0u64; 16];
    let mut edits = [0u64; 3];
    let mut verdicts = [0u64; 3];
    let mut routed = [0u64; 3];
    let mut run = |bridge: &mut Bridge, now: u64, (port, frame): &(PortId, Vec<u8>)| {
        let mut out = |p: PortId, e: VlanEdit| {
            sent[usize::from(p.0)] += 1;
            edits[match e {
                VlanEdit::Keep => 0,
                VlanEdit::Push(_) => 1,
                VlanEdit::Pop => 2,
            }] += 1;
        };
        let verdict = bridge.forward(*port, frame, now, &mut out);
        match verdict {
            Ok(Forwarded::Unicast(_)) => verdicts[0] += 1,
            Ok(Forwarded::Flooded { .. }) => verdicts[1] += 1,
            Ok(Forwarded::Routed { vid, l3, .. }) => {
                verdicts[2] += 1;
                let mut head = [0u8; pmd::port::HEAD_SNAPSHOT];
                let n = frame.len().min(pmd::port::HEAD_SNAPSHOT);
                head[..n].copy_from_slice(&frame[..n]);
                let mut gen = [0u8; vswitch::router::GEN_MAX];
                match router.input(vid, &mut head[..n], usize::from(l3), now, &mut gen) {
                    Verdict::Forward { vid } => {
                        routed[0] += 1;
                        let _ = bridge.forward_routed(vid, &head[..n], frame.len(), now, &mut out);
                    }
                    Verdict::Reply { vid, len } => {
                        routed[1] += 1;
                        let _ = bridge.forward_routed(vid, &gen[..len], len, now, &mut out);
                    }
                    Verdict::Drop(_) => routed[2] += 1,
                }
            }
            Err(_) => {}
        }
        if now & 63 == 0 {
            bridge.expire(now, 8);
        }
    };

    // Warm-up pass, untracked.
    let mut now = 0u64;
    for item in &work {
        now += 1;
        run(&mut bridge, now, item);
    }

    TRACKED.with(|t| t.set(true));
    for (i, item) in work.iter().cycle().take(10_000).enumerate() {
        // Every 1000 frames, a pause longer than the ageing limit.
        now += if i % 1000 == 999 { 1000 } else { 1 };
        run(&mut bridge, now, item);
    }
    TRACKED.with(|t| t.set(false));

    assert_eq!(ALLOCATIONS.load(Ordering::Relaxed), 0, "forward allocated");

    // The run went through the interesting paths.
    assert!(
        verdicts.iter().all(|&v| v > 0),
        "unicast, flood and routed: {verdicts:?}"
    );
    assert!(
        routed.iter().all(|&v| v > 0),
        "forwarded, replied and dropped by the router: {routed:?}"
    );
    assert!(
        edits.iter().all(|&e| e > 0),
        "keep, push and pop: {edits:?}"
    );
    assert_eq!(sent[6], 0, "the down port got nothing");
    for reason in DropReason::ALL {
        assert!(
            bridge.counters().drops.get(reason) > 0,
            "no {reason} drop exercised"
        );
    }
    let fdb = bridge.fdb().stats();
    assert!(fdb.refused > 0 && fdb.reclaimed > 0, "{fdb:?}");
}
