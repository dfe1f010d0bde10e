//! IPv6 neighbour-discovery spoofing from one pod, through the switch's burst path: the
//! frames sit in the sending guest's memory, the bridge decides on the private head
//! copies the port took at receive time, and the other pod's port transmits what the
//! bridge staged for it. Nothing spoofed may reach the other pod or the gateway's port,
//! and a guest that rewrites its buffer after the decision must not change what the
//! other pod receives. Frames are built with etherparse.

use std::net::Ipv6Addr;

use etherparse::icmpv6::{NeighborAdvertisementHeader, RouterAdvertisementHeader};
use etherparse::{Icmpv6Type, PacketBuilder};
use pmd::port::{edited_frame, RxBatch, TxSel};
use vswitch::bridge::{
    Bridge, BridgeConfig, DropReason, PortId, PortSecurity, ToRouter, Vid, VlanMode,
};
use vswitch::wire::EthernetAddress;

const POD_A: EthernetAddress = EthernetAddress([0x02, 0, 0, 0, 0, 0xa]);
const POD_B: EthernetAddress = EthernetAddress([0x02, 0, 0, 0, 0, 0xb]);
const ALL_NODES: [u8; 6] = [0x33, 0x33, 0, 0, 0, 1];

fn ip(s: &str) -> Ipv6Addr {
    s.parse().expect("test address")
}

/// An ICMPv6 message from pod A's MAC and `src` to all nodes.
fn icmp6(src: Ipv6Addr, ty: Icmpv6Type, body: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(POD_A.0, ALL_NODES)
        .ipv6(src.octets(), ip("ff02::1").octets(), 255)
        .icmpv6(ty);
    let mut v = Vec::with_capacity(b.size(body.len()));
    b.write(&mut v, body).expect("frame");
    v
}

/// A neighbour advertisement from pod A for `target`, pointing at `mac`.
fn na(target: Ipv6Addr, mac: EthernetAddress) -> Vec<u8> {
    let ty = Icmpv6Type::NeighborAdvertisement(NeighborAdvertisementHeader {
        router: false,
        solicited: false,
        r#override: true,
    });
    let mut body = target.octets().to_vec();
    body.extend_from_slice(&[2, 1]);
    body.extend_from_slice(mac.as_bytes());
    icmp6(ip("fd00::a"), ty, &body)
}

fn ra() -> Vec<u8> {
    let ty = Icmpv6Type::RouterAdvertisement(RouterAdvertisementHeader {
        cur_hop_limit: 64,
        managed_address_config: false,
        other_config: false,
        router_lifetime: 1800,
    });
    icmp6(ip("fe80::ff:fe00:a"), ty, &[0; 8])
}

/// Pod A (port 0, `fd00::a`) and pod B (port 1, `fd00::b`) with port security, and the
/// gateway's uplink (port 2, without), all in VLAN 10.
fn bridge() -> Bridge {
    let mut b = Bridge::new(BridgeConfig {
        max_ports: 4,
        fdb_capacity: 64,
        fdb_max_age: u64::MAX,
    })
    .expect("bridge");
    let vlan = VlanMode::Access {
        vid: Vid::new(10).expect("vid"),
    };
    for (p, sec) in [
        (0, Some((POD_A, "fd00::a"))),
        (1, Some((POD_B, "fd00::b"))),
        (2, None),
    ] {
        let security = sec.map(|(mac, a)| PortSecurity {
            mac,
            ips: vec![a.parse().expect("address")],
            router: false,
        });
        b.add_port_with(PortId(p), vlan.clone(), security, None, true)
            .expect("port");
    }
    b
}

/// What port `idx`'s copy puts on the wire: the head copy, then the rest of the frame
/// from guest memory, edited as staged.
fn transmitted(batch: &RxBatch, sel: TxSel) -> Vec<u8> {
    let (head, tail) = batch.parts(usize::from(sel.idx));
    edited_frame(head, tail, sel.edit)
}

#[test]
fn spoofed_neighbour_discovery_reaches_no_other_pod_and_what_was_checked_is_sent() {
    let mut b = bridge();
    // The guest's transmit buffers: its own advertisement first, then the spoofed ones.
    let frames = [
        na(ip("fd00::a"), POD_A),  // its own address: passes
        na(ip("fd00::b"), POD_A),  // pod B's address
        na(ip("fd00::fe"), POD_A), // the gateway's
        na(ip("fd00::a"), POD_B),  // its own address, pod B's MAC
        ra(),                      // "I am your router"
    ];
    let mut guest: Vec<Box<[u8]>> = frames.iter().map(|f| f.clone().into()).collect();
    let ptrs: Vec<*mut u8> = guest.iter_mut().map(|g| g.as_mut_ptr()).collect();
    let mut batch = RxBatch::default();
    for (p, f) in ptrs.iter().zip(&frames) {
        // SAFETY: each pointer addresses a live boxed buffer of f.len() bytes, which
        // `guest` keeps (unmoved) until after `batch.clear()` below, and the batch holds
        // fewer than BURST frames.
        unsafe { batch.push(*p as *const u8, f.len() as u32) };
    }

    let mut staging: Vec<Vec<TxSel>> = (0..4).map(|_| Vec::new()).collect();
    let mut to_router: Vec<ToRouter> = Vec::new();
    b.forward_burst(PortId(0), &batch, 1, &mut staging, &mut to_router);

    // Only the pod's own advertisement reaches pod B and the uplink.
    for port in [1, 2] {
        let idx: Vec<u16> = staging[port].iter().map(|s| s.idx).collect();
        assert_eq!(idx, [0], "port {port} gets the honest frame only");
    }
    assert!(staging[0].is_empty() && to_router.is_empty());
    assert_eq!(b.counters().drops.get(DropReason::SpoofedNd), 4);

    // The guest rewrites its advertisement after the decision: the target to pod B's
    // address, the target link-layer option to pod B's MAC (bytes 62..78 and 80..86).
    // SAFETY: ptrs[0] addresses frames[0].len() (86) bytes, which `guest` keeps alive;
    // nothing else reads or writes them meanwhile.
    unsafe {
        for (k, byte) in ip("fd00::b").octets().iter().enumerate() {
            ptrs[0].add(62 + k).write(*byte);
        }
        for (k, byte) in POD_B.as_bytes().iter().enumerate() {
            ptrs[0].add(80 + k).write(*byte);
        }
    }
    // What goes out is what was decided on.
    for port in [1, 2] {
        assert_eq!(transmitted(&batch, staging[port][0]), frames[0]);
    }
    batch.clear();
    drop(guest);
}
