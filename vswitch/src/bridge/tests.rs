//! Unit and property tests of the bridge.

use super::*;
use proptest::prelude::*;
use std::collections::HashMap;

const T: EtherType = EtherType::VLAN;

fn mac(n: u8) -> EthernetAddress {
    EthernetAddress([0x02, 0, 0, 0, 0, n])
}

fn vid(raw: u16) -> Vid {
    Vid::new(raw).expect("valid test vid")
}

fn access(raw: u16) -> VlanMode {
    VlanMode::Access { vid: vid(raw) }
}

fn trunk(allowed: &[u16], native: Option<u16>) -> VlanMode {
    VlanMode::Trunk {
        allowed: allowed.iter().map(|&v| vid(v)).collect(),
        native: native.map(vid),
    }
}

/// An IPv4-typed frame with the given tags (outermost first) and payload length.
fn frame(
    dst: EthernetAddress,
    src: EthernetAddress,
    tags: &[(EtherType, Tci)],
    payload: usize,
) -> Vec<u8> {
    let mut v = vec![0u8; 14 + 4 * tags.len() + payload];
    let mut eth = EthernetFrame::new_unchecked(&mut v[..]);
    eth.set_dst_addr(dst);
    eth.set_src_addr(src);
    eth.set_ethertype(tags.first().map_or(EtherType::IPV4, |t| t.0));
    for (i, (_, tci)) in tags.iter().enumerate() {
        let mut tag = VlanTag::new_unchecked(&mut v[14 + 4 * i..]);
        tag.set_tci(*tci);
        tag.set_ethertype(tags.get(i + 1).map_or(EtherType::IPV4, |t| t.0));
    }
    v
}

fn untagged(dst: EthernetAddress, src: EthernetAddress) -> Vec<u8> {
    frame(dst, src, &[], 46)
}

fn tagged(dst: EthernetAddress, src: EthernetAddress, tci: Tci) -> Vec<u8> {
    frame(dst, src, &[(T, tci)], 42)
}

/// The frame an egress port would put on the wire.
fn apply(frame: &[u8], edit: VlanEdit) -> Vec<u8> {
    match edit {
        VlanEdit::Keep => frame.to_vec(),
        VlanEdit::Push(tci) => {
            let mut v = frame[..12].to_vec();
            v.extend(0x8100u16.to_be_bytes());
            v.extend(tci.to_be_bytes());
            v.extend(&frame[12..]);
            v
        }
        VlanEdit::Pop => [&frame[..12], &frame[16..]].concat(),
    }
}

type Sent = Vec<(u16, VlanEdit)>;

fn send(
    b: &mut Bridge,
    port: u16,
    frame: &[u8],
    now: u64,
) -> (Result<Forwarded, DropReason>, Sent) {
    let mut sent = Vec::new();
    let verdict = b.forward(PortId(port), frame, now, &mut |p: PortId, e| {
        sent.push((p.0, e))
    });
    sent.sort_by_key(|s| s.0);
    (verdict, sent)
}

fn bridge_with(ports: &[(u16, VlanMode)]) -> Bridge {
    let mut b = Bridge::new(BridgeConfig {
        max_ports: 16,
        fdb_capacity: 256,
        fdb_max_age: 1000,
    })
    .expect("bridge");
    for (p, mode) in ports {
        b.add_port(PortId(*p), mode.clone()).expect("add port");
    }
    b
}

const BCAST: EthernetAddress = EthernetAddress::BROADCAST;

#[test]
fn learning_turns_floods_into_unicast() {
    let mut b = bridge_with(&[(0, access(10)), (1, access(10)), (2, access(10))]);
    let (v, sent) = send(&mut b, 0, &untagged(mac(2), mac(1)), 0);
    assert_eq!(v, Ok(Forwarded::Flooded { copies: 2 }));
    assert_eq!(sent, [(1, VlanEdit::Keep), (2, VlanEdit::Keep)]);
    // mac(1) is now known on port 0.
    let (v, sent) = send(&mut b, 1, &untagged(mac(1), mac(2)), 1);
    assert_eq!(v, Ok(Forwarded::Unicast(PortId(0))));
    assert_eq!(sent, [(0, VlanEdit::Keep)]);
    // and mac(2) on port 1.
    let (v, _) = send(&mut b, 0, &untagged(mac(2), mac(1)), 2);
    assert_eq!(v, Ok(Forwarded::Unicast(PortId(1))));
    assert_eq!(b.counters().unicast, 2);
    assert_eq!(b.counters().floods, 1);
    assert_eq!(b.fdb().live_len(2), 2);
}

#[test]
fn flood_respects_split_horizon_and_vlans() {
    let mut b = bridge_with(&[
        (0, access(10)),
        (1, access(10)),
        (2, access(20)),
        (3, trunk(&[20], None)),
        (4, trunk(&[10, 20], None)),
    ]);
    let (v, sent) = send(&mut b, 0, &untagged(BCAST, mac(1)), 0);
    assert_eq!(v, Ok(Forwarded::Flooded { copies: 2 }));
    assert_eq!(sent, [(1, VlanEdit::Keep), (4, VlanEdit::Push(10))]);
    // Multicast floods too.
    let mcast = EthernetAddress([0x01, 0x00, 0x5e, 0, 0, 1]);
    let (_, sent) = send(&mut b, 2, &untagged(mcast, mac(2)), 0);
    assert_eq!(sent, [(3, VlanEdit::Push(20)), (4, VlanEdit::Push(20))]);
    // A VLAN with no other member drops the flood.
    let mut b = bridge_with(&[(0, access(10)), (1, access(20))]);
    assert_eq!(
        send(&mut b, 0, &untagged(BCAST, mac(1)), 0),
        (Err(DropReason::NoEgress), vec![])
    );
    assert_eq!(b.counters().drops.get(DropReason::NoEgress), 1);
}

#[test]
fn tunnels_flood_to_local_ports_only_and_never_to_each_other() {
    // Ports 0 and 1 are local pods; 2 and 3 tunnels to two other nodes; all on VLAN 10.
    let mut b = bridge_with(&[
        (0, access(10)),
        (1, access(10)),
        (2, access(10)),
        (3, access(10)),
    ]);
    b.set_horizon(PortId(2), true).unwrap();
    b.set_horizon(PortId(3), true).unwrap();
    // A local broadcast is replicated to every tunnel (head-end replication).
    let (_, sent) = send(&mut b, 0, &untagged(BCAST, mac(1)), 0);
    assert_eq!(
        sent,
        [
            (1, VlanEdit::Keep),
            (2, VlanEdit::Keep),
            (3, VlanEdit::Keep)
        ]
    );
    // One from a tunnel reaches the local ports, never the other tunnel.
    let (_, sent) = send(&mut b, 2, &untagged(BCAST, mac(9)), 0);
    assert_eq!(sent, [(0, VlanEdit::Keep), (1, VlanEdit::Keep)]);
    // A MAC learnt behind tunnel 3 is not reached from tunnel 2 either.
    let _ = send(&mut b, 3, &untagged(mac(1), mac(8)), 0);
    assert_eq!(
        send(&mut b, 2, &untagged(mac(8), mac(9)), 0),
        (Err(DropReason::SplitHorizon), vec![])
    );
    // From a local port it is unicast into that tunnel.
    assert_eq!(
        send(&mut b, 0, &untagged(mac(8), mac(1)), 0).1,
        [(3, VlanEdit::Keep)]
    );
    // Out of the group, port 3 gets floods from port 2 again.
    b.set_horizon(PortId(3), false).unwrap();
    let (_, sent) = send(&mut b, 2, &untagged(BCAST, mac(9)), 1);
    assert_eq!(
        sent,
        [
            (0, VlanEdit::Keep),
            (1, VlanEdit::Keep),
            (3, VlanEdit::Keep)
        ]
    );
}

#[test]
fn ports_beyond_the_first_bitmap_word_are_flooded() {
    let mut b = Bridge::new(BridgeConfig {
        max_ports: 200,
        ..BridgeConfig::default()
    })
    .expect("bridge");
    for p in [0u16, 63, 64, 130, 199] {
        b.add_port(PortId(p), access(7)).expect("add port");
    }
    let (v, sent) = send(&mut b, 64, &untagged(BCAST, mac(1)), 0);
    assert_eq!(v, Ok(Forwarded::Flooded { copies: 4 }));
    let ports: Vec<u16> = sent.iter().map(|s| s.0).collect();
    assert_eq!(ports, [0, 63, 130, 199]);
    let (v, _) = send(&mut b, 199, &untagged(mac(1), mac(9)), 0);
    assert_eq!(v, Ok(Forwarded::Unicast(PortId(64))));
}

#[test]
fn ageing_turns_unicast_back_into_floods() {
    let mut b = bridge_with(&[(0, access(10)), (1, access(10)), (2, access(10))]);
    assert!(send(&mut b, 0, &untagged(BCAST, mac(1)), 0).0.is_ok());
    let (v, _) = send(&mut b, 1, &untagged(mac(1), mac(2)), 1000);
    assert_eq!(
        v,
        Ok(Forwarded::Unicast(PortId(0))),
        "age == max_age is still known"
    );
    let (v, _) = send(&mut b, 1, &untagged(mac(1), mac(2)), 1001);
    assert_eq!(v, Ok(Forwarded::Flooded { copies: 2 }));
    assert_eq!(
        b.expire(1001, usize::MAX),
        1,
        "mac(1) aged, mac(2) is fresh"
    );
    assert_eq!(b.fdb().len(), 1);
}

#[test]
fn access_to_trunk_pushes_and_trunk_to_access_pops() {
    let mut b = bridge_with(&[
        (0, access(10)),
        (1, trunk(&[10, 20], None)),
        (2, access(20)),
    ]);
    let (v, sent) = send(&mut b, 0, &untagged(BCAST, mac(1)), 0);
    assert_eq!(v, Ok(Forwarded::Flooded { copies: 1 }));
    assert_eq!(sent, [(1, VlanEdit::Push(Tci::new(0, false, 10).0))]);
    // From the trunk, PCP 5 on VLAN 20, to the access port of VLAN 20: the tag goes.
    let (v, sent) = send(&mut b, 1, &tagged(BCAST, mac(2), Tci::new(5, false, 20)), 0);
    assert_eq!(v, Ok(Forwarded::Flooded { copies: 1 }));
    assert_eq!(sent, [(2, VlanEdit::Pop)]);
    // Unicast back from the access port to the trunk: pushed with VLAN 20.
    let (v, sent) = send(&mut b, 2, &untagged(mac(2), mac(3)), 0);
    assert_eq!(v, Ok(Forwarded::Unicast(PortId(1))));
    assert_eq!(sent, [(1, VlanEdit::Push(20))]);
}

#[test]
fn trunk_to_trunk_keeps_the_tag_and_its_priority() {
    let mut b = bridge_with(&[(0, trunk(&[30], None)), (1, trunk(&[30, 40], None))]);
    let f = tagged(BCAST, mac(1), Tci::new(6, true, 30));
    let (_, sent) = send(&mut b, 0, &f, 0);
    assert_eq!(sent, [(1, VlanEdit::Keep)]);
    let out = apply(&f, VlanEdit::Keep);
    let tag = VlanTag::new_checked(&out[14..]).expect("tag");
    assert_eq!((tag.pcp(), tag.tci().dei(), tag.vid()), (6, true, 30));
}

#[test]
fn native_vlan_is_untagged_on_the_trunk() {
    let mut b = bridge_with(&[
        (0, trunk(&[20], Some(10))),
        (1, access(10)),
        (2, trunk(&[10], Some(20))),
        (3, trunk(&[10, 20], None)),
    ]);
    // Untagged on trunk 0 is VLAN 10.
    let (_, sent) = send(&mut b, 0, &untagged(BCAST, mac(1)), 0);
    assert_eq!(
        sent,
        [
            (1, VlanEdit::Keep),
            (2, VlanEdit::Push(10)),
            (3, VlanEdit::Push(10))
        ]
    );
    // Tagged VLAN 10 on trunk 3 reaches trunk 0 untagged (its native VLAN).
    let (_, sent) = send(&mut b, 3, &tagged(BCAST, mac(2), Tci::new(1, false, 10)), 0);
    assert_eq!(
        sent,
        [(0, VlanEdit::Pop), (1, VlanEdit::Pop), (2, VlanEdit::Keep)]
    );
    // A frame tagged with the native VLAN is accepted on its trunk.
    let (v, _) = send(&mut b, 0, &tagged(BCAST, mac(3), Tci::new(0, false, 10)), 0);
    assert_eq!(v, Ok(Forwarded::Flooded { copies: 3 }));
    // VLAN 20: native on trunk 2, tagged on trunks 0 and 3.
    let (_, sent) = send(&mut b, 2, &untagged(BCAST, mac(4)), 0);
    assert_eq!(sent, [(0, VlanEdit::Push(20)), (3, VlanEdit::Push(20))]);
}

#[test]
fn vlan_admission_drops() {
    let mut b = bridge_with(&[
        (0, access(10)),
        (1, trunk(&[10], None)),
        (2, trunk(&[10], Some(20))),
    ]);
    let cases = [
        (
            0,
            tagged(BCAST, mac(1), Tci::new(0, false, 10)),
            DropReason::TaggedOnAccess,
        ),
        (1, untagged(BCAST, mac(1)), DropReason::NoNativeVlan),
        (
            1,
            tagged(BCAST, mac(1), Tci::new(0, false, 11)),
            DropReason::VlanNotAllowed,
        ),
        (
            1,
            tagged(BCAST, mac(1), Tci::new(3, false, 0)),
            DropReason::VlanNotAllowed,
        ),
        (
            1,
            tagged(BCAST, mac(1), Tci::new(0, false, 4095)),
            DropReason::VlanNotAllowed,
        ),
        (
            2,
            tagged(BCAST, mac(1), Tci::new(0, false, 30)),
            DropReason::VlanNotAllowed,
        ),
    ];
    for (port, f, reason) in &cases {
        assert_eq!(
            send(&mut b, *port, f, 0),
            (Err(*reason), vec![]),
            "{reason}"
        );
    }
    assert_eq!(b.counters().drops.get(DropReason::VlanNotAllowed), 4);
    assert_eq!(b.counters().drops.total(), 6);
    assert!(b.fdb().is_empty(), "dropped frames teach nothing");
}

#[test]
fn qinq_is_dropped_on_access_and_trunk_ports() {
    let mut b = bridge_with(&[
        (0, access(10)),
        (1, trunk(&[10, 20], Some(10))),
        (2, access(10)),
    ]);
    let s_tagged = frame(BCAST, mac(1), &[(EtherType::QINQ, Tci(100))], 40);
    let double_c = frame(BCAST, mac(1), &[(T, Tci(10)), (T, Tci(20))], 40);
    let c_then_s = frame(
        BCAST,
        mac(1),
        &[(T, Tci(10)), (EtherType::QINQ, Tci(20))],
        40,
    );
    let s_then_c = frame(
        BCAST,
        mac(1),
        &[(EtherType::QINQ, Tci(10)), (T, Tci(20))],
        40,
    );
    for f in [&s_tagged, &double_c, &c_then_s, &s_then_c] {
        for port in [0, 1] {
            assert_eq!(send(&mut b, port, f, 0), (Err(DropReason::QinQ), vec![]));
        }
    }
    // Even truncated right after the S-TPID.
    assert_eq!(send(&mut b, 1, &s_tagged[..14], 0).0, Err(DropReason::QinQ));
    assert_eq!(b.counters().drops.get(DropReason::QinQ), 9);
}

#[test]
fn malformed_frames() {
    let mut b = bridge_with(&[(0, access(10)), (1, trunk(&[10], None))]);
    for len in 0..14 {
        assert_eq!(
            send(&mut b, 0, &untagged(BCAST, mac(1))[..len], 0).0,
            Err(DropReason::TooShort)
        );
    }
    let f = tagged(BCAST, mac(1), Tci(10));
    for len in 14..18 {
        assert_eq!(
            send(&mut b, 1, &f[..len], 0).0,
            Err(DropReason::MalformedTag)
        );
    }
    // A header-only frame is forwardable: the bridge does not enforce the 60-byte minimum.
    assert_eq!(
        send(
            &mut b,
            0,
            &f[..12].iter().copied().chain([8, 0]).collect::<Vec<_>>(),
            0
        )
        .0,
        Ok(Forwarded::Flooded { copies: 1 })
    );
}

#[test]
fn bad_source_macs_are_dropped_before_learning() {
    let mut b = bridge_with(&[(0, access(10)), (1, access(10))]);
    for src in [
        BCAST,
        EthernetAddress([0x01, 0x00, 0x5e, 1, 2, 3]),
        EthernetAddress::default(),
    ] {
        assert_eq!(
            send(&mut b, 0, &untagged(mac(9), src), 0),
            (Err(DropReason::BadSrcMac), vec![])
        );
    }
    assert!(b.fdb().is_empty());
    assert_eq!(b.counters().drops.get(DropReason::BadSrcMac), 3);
}

#[test]
fn reserved_group_destinations_are_not_forwarded() {
    let mut b = bridge_with(&[(0, access(10)), (1, access(10))]);
    for last in [0x00, 0x01, 0x02, 0x03, 0x0e, 0x0f] {
        let stp = EthernetAddress([0x01, 0x80, 0xc2, 0, 0, last]);
        assert_eq!(
            send(&mut b, 0, &untagged(stp, mac(1)), 0).0,
            Err(DropReason::ReservedDst)
        );
    }
    let not_reserved = EthernetAddress([0x01, 0x80, 0xc2, 0, 0, 0x10]);
    assert!(send(&mut b, 0, &untagged(not_reserved, mac(1)), 0)
        .0
        .is_ok());
}

#[test]
fn hairpin_is_dropped() {
    let mut b = bridge_with(&[(0, access(10)), (1, access(10))]);
    assert!(send(&mut b, 0, &untagged(BCAST, mac(1)), 0).0.is_ok());
    assert_eq!(
        send(&mut b, 0, &untagged(mac(1), mac(2)), 0),
        (Err(DropReason::SamePort), vec![])
    );
    assert_eq!(b.counters().drops.get(DropReason::SamePort), 1);
    // The sender was still learned.
    assert_eq!(b.fdb().lookup(10, mac(2), 0), Some(0));
}

#[test]
fn mac_move_redirects_unicast() {
    let mut b = bridge_with(&[(0, access(10)), (1, access(10)), (2, access(10))]);
    assert!(send(&mut b, 0, &untagged(BCAST, mac(1)), 0).0.is_ok());
    assert!(send(&mut b, 1, &untagged(BCAST, mac(1)), 1).0.is_ok());
    assert_eq!(b.fdb().stats().moves, 1);
    assert_eq!(
        send(&mut b, 2, &untagged(mac(1), mac(3)), 2).1,
        [(1, VlanEdit::Keep)]
    );
}

#[test]
fn removing_a_port_flushes_its_macs() {
    let mut b = bridge_with(&[(0, access(10)), (1, access(10)), (2, access(10))]);
    assert!(send(&mut b, 0, &untagged(BCAST, mac(1)), 0).0.is_ok());
    assert!(send(&mut b, 1, &untagged(BCAST, mac(2)), 0).0.is_ok());
    let counters = b.remove_port(PortId(0)).expect("remove");
    assert_eq!(counters.rx_frames, 1);
    // The removal does not walk the table (it runs on a polling core), but a frame to a
    // MAC of the removed port is flooded, never sent to it.
    let (v, sent) = send(&mut b, 1, &untagged(mac(1), mac(2)), 0);
    assert_eq!(
        (v, sent),
        (
            Ok(Forwarded::Flooded { copies: 1 }),
            vec![(2, VlanEdit::Keep)]
        )
    );
    // The ageing sweep frees the removed port's entries and only those.
    b.expire(0, 1 << 20);
    assert_eq!(b.fdb().lookup(10, mac(1), 0), None);
    assert_eq!(b.fdb().lookup(10, mac(2), 0), Some(1));
    assert_eq!(b.fdb().entries_of(0), Some(0));
    assert_eq!(
        send(&mut b, 0, &untagged(BCAST, mac(1)), 0).0,
        Err(DropReason::UnknownPort)
    );
    // Re-adding starts with fresh counters.
    b.add_port(PortId(0), access(10)).expect("re-add");
    assert_eq!(
        *b.port(PortId(0)).expect("port").counters(),
        PortCounters::default()
    );
}

#[test]
fn link_down_ports_get_nothing_and_forget_their_macs() {
    let mut b = bridge_with(&[(0, access(10)), (1, access(10)), (2, access(10))]);
    assert!(send(&mut b, 0, &untagged(BCAST, mac(1)), 0).0.is_ok());
    b.set_link(PortId(0), false).expect("link down");
    assert!(!b.port(PortId(0)).expect("port").is_up());
    assert_eq!(b.fdb().lookup(10, mac(1), 0), None);
    let (_, sent) = send(&mut b, 1, &untagged(mac(1), mac(2)), 0);
    assert_eq!(sent, [(2, VlanEdit::Keep)]);
    assert_eq!(
        send(&mut b, 0, &untagged(BCAST, mac(1)), 0).0,
        Err(DropReason::PortDown)
    );
    assert_eq!(
        b.port(PortId(0)).expect("port").counters().rx_frames,
        1,
        "down ports count no rx"
    );
    b.set_link(PortId(0), true).expect("link up");
    let (_, sent) = send(&mut b, 1, &untagged(mac(1), mac(2)), 0);
    assert_eq!(sent, [(0, VlanEdit::Keep), (2, VlanEdit::Keep)]);
}

#[test]
fn changing_the_vlan_mode_moves_the_port_and_flushes_it() {
    let mut b = bridge_with(&[(0, access(10)), (1, access(10)), (2, access(20))]);
    assert!(send(&mut b, 0, &untagged(BCAST, mac(1)), 0).0.is_ok());
    b.set_vlan_mode(PortId(0), access(20)).expect("set mode");
    assert_eq!(b.port(PortId(0)).expect("port").mode(), &access(20));
    assert!(b.fdb().is_empty());
    let (_, sent) = send(&mut b, 2, &untagged(BCAST, mac(3)), 0);
    assert_eq!(sent, [(0, VlanEdit::Keep)]);
}

#[test]
fn a_full_fdb_refuses_but_keeps_forwarding() {
    let mut b = Bridge::new(BridgeConfig {
        max_ports: 4,
        fdb_capacity: 16,
        fdb_max_age: 1000,
    })
    .expect("bridge");
    b.add_port(PortId(0), access(1)).expect("add");
    b.add_port(PortId(1), access(1)).expect("add");
    for n in 0..=200u8 {
        let (v, _) = send(
            &mut b,
            0,
            &untagged(BCAST, EthernetAddress([2, 0, 0, 0, 1, n])),
            0,
        );
        assert_eq!(v, Ok(Forwarded::Flooded { copies: 1 }));
    }
    let stats = *b.fdb().stats();
    assert_eq!(b.fdb().len(), 16);
    assert_eq!(stats.learned, 16);
    assert_eq!(stats.refused, 201 - 16);
    // Later, the aged entries make room again.
    assert!(send(&mut b, 1, &untagged(BCAST, mac(77)), 5000).0.is_ok());
    assert_eq!(b.fdb().lookup(1, mac(77), 5000), Some(1));
    assert!(b.fdb().stats().reclaimed >= 1);
}

#[test]
fn counters_follow_the_edits() {
    let mut b = bridge_with(&[(0, access(10)), (1, trunk(&[10], None))]);
    let f = untagged(BCAST, mac(1)); // 60 bytes
    assert!(send(&mut b, 0, &f, 0).0.is_ok());
    let t = tagged(mac(1), mac(2), Tci(10)); // 60 bytes
    assert!(send(&mut b, 1, &t, 0).0.is_ok());
    let p0 = *b.port(PortId(0)).expect("port").counters();
    let p1 = *b.port(PortId(1)).expect("port").counters();
    assert_eq!(
        p0,
        PortCounters {
            rx_frames: 1,
            rx_bytes: 60,
            tx_frames: 1,
            tx_bytes: 56
        }
    );
    assert_eq!(
        p1,
        PortCounters {
            rx_frames: 1,
            rx_bytes: 60,
            tx_frames: 1,
            tx_bytes: 64
        }
    );
    assert_eq!(b.ports().map(|(id, _)| id.0).collect::<Vec<_>>(), [0, 1]);
}

#[test]
fn drop_reasons_have_stable_unique_names() {
    let names: Vec<&str> = DropReason::ALL.iter().map(|r| r.as_str()).collect();
    assert_eq!(
        names,
        [
            "unknown_port",
            "port_down",
            "too_short",
            "malformed_tag",
            "qinq",
            "tagged_on_access",
            "vlan_not_allowed",
            "no_native_vlan",
            "bad_src_mac",
            "reserved_dst",
            "same_port",
            "no_egress",
            "spoofed_mac",
            "spoofed_ip",
            "spoofed_arp",
            "security_group",
            "spoofed_nd",
            "split_horizon",
            "security_group_egress"
        ]
    );
    for (i, r) in DropReason::ALL.iter().enumerate() {
        assert_eq!(r.index(), i);
        assert_eq!(r.to_string(), r.as_str());
    }
    let counters = DropCounters::default();
    assert_eq!(counters.iter().count(), DropReason::COUNT);
}

#[test]
fn control_plane_errors() {
    assert_eq!(
        Bridge::new(BridgeConfig {
            max_ports: 0,
            ..BridgeConfig::default()
        })
        .err(),
        Some(BridgeError::MaxPorts {
            requested: 0,
            max: MAX_PORTS
        })
    );
    assert!(Bridge::new(BridgeConfig {
        max_ports: MAX_PORTS + 1,
        ..BridgeConfig::default()
    })
    .is_err());
    let mut b = bridge_with(&[(0, access(10))]);
    assert_eq!(
        b.add_port(PortId(0), access(10)),
        Err(BridgeError::PortExists(PortId(0)))
    );
    assert_eq!(
        b.add_port(PortId(16), access(10)),
        Err(BridgeError::PortOutOfRange {
            port: PortId(16),
            max_ports: 16
        })
    );
    assert_eq!(
        b.remove_port(PortId(3)),
        Err(BridgeError::NoSuchPort(PortId(3)))
    );
    assert_eq!(
        b.set_link(PortId(3), true),
        Err(BridgeError::NoSuchPort(PortId(3)))
    );
    assert_eq!(
        b.set_vlan_mode(PortId(99), access(1)),
        Err(BridgeError::PortOutOfRange {
            port: PortId(99),
            max_ports: 16
        })
    );
    assert_eq!(Vid::try_from(0), Err(BridgeError::InvalidVid(0)));
    assert_eq!(Vid::try_from(4095), Err(BridgeError::InvalidVid(4095)));
    assert_eq!(Vid::try_from(4094).map(Vid::get), Ok(4094));
    assert_eq!(
        BridgeError::PortOutOfRange {
            port: PortId(16),
            max_ports: 16
        }
        .to_string(),
        "port 16 is out of range: the bridge has max_ports 16"
    );
}

#[test]
fn vlan_sets() {
    let mut s = VlanSet::new();
    assert!(s.is_empty());
    assert!(s.insert(vid(1)) && s.insert(vid(2)) && s.insert(vid(3)) && s.insert(vid(4094)));
    assert!(!s.insert(vid(2)));
    assert!(s.insert(vid(100)));
    assert_eq!(format!("{s:?}"), "{1-3, 100, 4094}");
    assert!(s.remove(vid(2)) && !s.remove(vid(2)));
    assert_eq!(s.len(), 4);
    assert_eq!(
        s.iter().map(Vid::get).collect::<Vec<_>>(),
        [1, 3, 100, 4094]
    );
    assert_eq!(VlanSet::all().len(), 4094);
    assert_eq!(format!("{:?}", VlanSet::all()), "{1-4094}");
    assert_eq!(VlanSet::range(vid(10), vid(19)).len(), 10);
}

// ---- Property tests ----------------------------------------------------------------

/// The ports of the property tests: ids 0..6 configured, id 6 never configured.
fn prop_ports() -> Vec<(u16, VlanMode)> {
    vec![
        (0, access(10)),
        (1, access(10)),
        (2, access(20)),
        (3, trunk(&[10, 20, 30], None)),
        (4, trunk(&[20, 30], Some(10))),
        (5, trunk(&[10], Some(30))),
    ]
}

/// Independent model of ingress classification: the VLAN of `frame` on `mode`, if
/// the frame is admitted there.
fn model_vlan(mode: &VlanMode, frame: &[u8]) -> Option<u16> {
    if frame.len() < 14 {
        return None;
    }
    let tpid = u16::from_be_bytes([frame[12], frame[13]]);
    let tag = match tpid {
        0x88a8 => return None,
        0x8100 => {
            if frame.len() < 18
                || matches!(u16::from_be_bytes([frame[16], frame[17]]), 0x8100 | 0x88a8)
            {
                return None;
            }
            Some(u16::from_be_bytes([frame[14], frame[15]]) & 0x0fff)
        }
        _ => None,
    };
    match (mode, tag) {
        (VlanMode::Access { vid }, None) => Some(vid.get()),
        (VlanMode::Trunk { native, .. }, None) => native.map(Vid::get),
        (VlanMode::Trunk { allowed, native }, Some(v)) => Vid::new(v)
            .filter(|v| allowed.contains(*v) || *native == Some(*v))
            .map(Vid::get),
        (VlanMode::Access { .. }, Some(_)) => None,
    }
}

#[derive(Clone, Debug)]
enum Op {
    Frame {
        port: u16,
        dst: u8,
        src: u8,
        tag: Option<(u8, u16)>,
        qinq: bool,
    },
    Link {
        port: u16,
        up: bool,
    },
}

fn prop_op() -> impl Strategy<Value = Op> {
    let tag = prop_oneof![
        2 => Just(None),
        3 => (0u8..8, prop_oneof![Just(0u16), Just(10), Just(20), Just(30), Just(40)]).prop_map(Some),
    ];
    prop_oneof![
        20 => (0u16..7, 0u8..10, 0u8..9, tag, proptest::bool::weighted(0.05))
            .prop_map(|(port, dst, src, tag, qinq)| Op::Frame { port, dst, src, tag, qinq }),
        1 => (0u16..6, proptest::bool::weighted(0.6)).prop_map(|(port, up)| Op::Link { port, up }),
    ]
}

/// MACs 0..7 are unicast hosts, 8 is broadcast, 9 a multicast group; as a source, 8 is
/// broadcast (invalid).
fn prop_mac(n: u8) -> EthernetAddress {
    match n {
        8 => BCAST,
        9 => EthernetAddress([0x01, 0x00, 0x5e, 0, 0, 9]),
        n => mac(n),
    }
}

proptest! {
    #[test]
    fn forwarding_invariants(ops in proptest::collection::vec(prop_op(), 1..200)) {
        let ports = prop_ports();
        let modes: HashMap<u16, VlanMode> = ports.iter().cloned().collect();
        let mut b = bridge_with(&ports);
        let mut up: HashMap<u16, bool> = ports.iter().map(|(p, _)| (*p, true)).collect();
        // (vid, mac) -> port, as the bridge should have learned it (no ageing here).
        let mut learned: HashMap<(u16, u8), u16> = HashMap::new();
        for op in ops {
            let (port, dst, src, tag, qinq) = match op {
                Op::Link { port, up: state } => {
                    b.set_link(PortId(port), state).expect("link");
                    up.insert(port, state);
                    if !state {
                        learned.retain(|_, p| *p != port);
                    }
                    continue;
                }
                Op::Frame { port, dst, src, tag, qinq } => (port, dst, src, tag, qinq),
            };
            let mut tags: Vec<(EtherType, Tci)> = tag.map(|(pcp, v)| (T, Tci::new(pcp, false, v))).into_iter().collect();
            if qinq {
                tags.insert(0, (EtherType::QINQ, Tci(10)));
            }
            let f = frame(prop_mac(dst), prop_mac(src), &tags, 30);
            let (verdict, sent) = send(&mut b, port, &f, 0);

            // Never back out of the ingress port, never twice to one port.
            prop_assert!(sent.iter().all(|s| s.0 != port));
            prop_assert!(sent.windows(2).all(|w| w[0].0 != w[1].0));
            match verdict {
                Ok(Forwarded::Unicast(p)) => prop_assert_eq!(sent.iter().map(|s| s.0).collect::<Vec<_>>(), vec![p.0]),
                Ok(Forwarded::Flooded { copies }) => prop_assert_eq!(usize::from(copies), sent.len()),
                // No router is configured here.
                Ok(Forwarded::Routed { .. }) => prop_assert!(false, "routed without a router"),
                Err(_) => prop_assert!(sent.is_empty()),
            }

            let admitted = modes.get(&port).filter(|_| up[&port]).and_then(|m| model_vlan(m, &f));
            let valid_src = src < 8;
            let Some(vlan) = admitted.filter(|_| valid_src) else {
                prop_assert!(verdict.is_err(), "{:?}", verdict);
                continue;
            };
            // Every copy, once edited, is admitted by its egress port into the same VLAN.
            for (p, edit) in &sent {
                prop_assert!(up[p], "sent to down port {}", p);
                let on_wire = apply(&f, *edit);
                prop_assert_eq!(model_vlan(&modes[p], &on_wire), Some(vlan), "port {} edit {:?}", p, edit);
            }
            // The sender is learned before the destination is looked up.
            learned.insert((vlan, src), port);
            let known = learned.get(&(vlan, dst)).copied();
            match known {
                // A learned unicast MAC goes to exactly its port (or is a hairpin).
                Some(p) if p == port => prop_assert_eq!(verdict, Err(DropReason::SamePort)),
                Some(p) => prop_assert_eq!(sent.iter().map(|s| s.0).collect::<Vec<_>>(), vec![p]),
                // Everything else reaches every other up member of the VLAN.
                None => {
                    let members: Vec<u16> = ports
                        .iter()
                        .filter(|(p, m)| *p != port && up[p] && model_vlan_member(m, vlan))
                        .map(|(p, _)| *p)
                        .collect();
                    prop_assert_eq!(sent.iter().map(|s| s.0).collect::<Vec<_>>(), members);
                }
            }
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(
        frames in proptest::collection::vec((0u16..20, proptest::collection::vec(any::<u8>(), 0..64)), 1..50)
    ) {
        let mut b = bridge_with(&prop_ports());
        for (port, f) in frames {
            let (verdict, sent) = send(&mut b, port, &f, 0);
            prop_assert!(sent.iter().all(|s| s.0 != port));
            prop_assert_eq!(verdict.is_err(), sent.is_empty());
        }
    }
}

fn model_vlan_member(mode: &VlanMode, vlan: u16) -> bool {
    Vid::new(vlan).is_some_and(|v| mode.is_member(v))
}

/// An IPv4 frame from `src`/`ip` on an access port.
fn ipv4_from(src: EthernetAddress, ip: [u8; 4]) -> Vec<u8> {
    let mut f = frame(BCAST, src, &[], 46);
    f[14] = 0x45;
    f[14 + 12..14 + 16].copy_from_slice(&ip);
    f
}

/// An IPv6 packet from `src`/`ip` without payload (next header 59, "no next header").
fn ipv6_from(src: EthernetAddress, ip: std::net::Ipv6Addr) -> Vec<u8> {
    let mut f = frame(BCAST, src, &[], 46);
    f[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
    f[14] = 0x60;
    f[14 + 6] = 59;
    f[14 + 8..14 + 24].copy_from_slice(&ip.octets());
    f
}

fn arp_from(src: EthernetAddress, sha: EthernetAddress, spa: [u8; 4]) -> Vec<u8> {
    let mut f = frame(BCAST, src, &[], 46);
    f[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    let mut a = ArpPacket::new_unchecked(&mut f[14..]);
    a.set_hardware_type(1);
    a.set_protocol_type(EtherType::IPV4);
    a.set_hardware_len(6);
    a.set_protocol_len(4);
    a.set_operation(crate::wire::ArpOperation::REQUEST);
    a.set_source_hardware_addr(sha.as_bytes());
    a.set_source_protocol_addr(&spa);
    a.set_target_hardware_addr(&[0; 6]);
    a.set_target_protocol_addr(&[10, 0, 0, 9]);
    f
}

/// Port security on `port`: only `mac` and `ip` may send.
fn police(b: &mut Bridge, port: u16, mac: EthernetAddress, ip: &str) {
    b.set_port_security(
        PortId(port),
        Some(PortSecurity {
            mac,
            ips: vec![ip.parse().unwrap()],
            router: false,
        }),
    )
    .unwrap();
}

#[test]
fn port_security_drops_spoofed_sources_before_learning() {
    let mut b = bridge_with(&[(0, access(10)), (1, access(10))]);
    let me = mac(1);
    b.set_port_security(
        PortId(0),
        Some(PortSecurity {
            mac: me,
            ips: vec!["10.0.0.1".parse().unwrap(), "fd00::1".parse().unwrap()],
            router: false,
        }),
    )
    .unwrap();
    assert_eq!(b.port(PortId(0)).unwrap().security().unwrap().mac, me);
    let v6 = |s: &str| s.parse::<std::net::Ipv6Addr>().unwrap();
    // What the port may send: its addresses, its EUI-64 link-local address, a DHCP
    // request from 0.0.0.0, an ARP probe. (What it may send from ::, duplicate address
    // detection and MLD reports, is in `nd::tests`.)
    let mut dhcp = ipv4_from(me, [0, 0, 0, 0]);
    dhcp[14 + 9] = 17;
    dhcp[14 + 22..14 + 24].copy_from_slice(&67u16.to_be_bytes());
    for f in [
        ipv4_from(me, [10, 0, 0, 1]),
        dhcp,
        ipv6_from(me, v6("fd00::1")),
        ipv6_from(me, v6("fe80::ff:fe00:1")),
        arp_from(me, me, [10, 0, 0, 1]),
        arp_from(me, me, [0, 0, 0, 0]),
    ] {
        assert!(send(&mut b, 0, &f, 0).0.is_ok(), "{f:x?}");
    }
    // Not: 0.0.0.0 for anything but DHCP, another link-local address, :: for UDP or
    // for an ICMPv6 message too short to be duplicate address detection.
    let mut udp6 = ipv6_from(me, v6("::"));
    udp6[14 + 6] = 17;
    let mut icmp6 = ipv6_from(me, v6("::"));
    icmp6[14 + 6] = 58;
    for f in [
        ipv4_from(me, [0, 0, 0, 0]),
        ipv6_from(me, v6("fe80::1")),
        udp6,
        icmp6,
    ] {
        assert_eq!(
            send(&mut b, 0, &f, 0).0,
            Err(DropReason::SpoofedIp),
            "{f:x?}"
        );
    }
    // What it may not.
    let other = mac(7);
    let cases = [
        (ipv4_from(other, [10, 0, 0, 1]), DropReason::SpoofedMac),
        (ipv4_from(me, [10, 0, 0, 2]), DropReason::SpoofedIp),
        (ipv6_from(me, v6("fd00::2")), DropReason::SpoofedIp),
        (arp_from(me, other, [10, 0, 0, 1]), DropReason::SpoofedArp),
        (arp_from(me, me, [10, 0, 0, 254]), DropReason::SpoofedArp),
        (
            ipv4_from(me, [10, 0, 0, 1])[..20].to_vec(),
            DropReason::SpoofedIp,
        ),
    ];
    for (f, why) in &cases {
        assert_eq!(send(&mut b, 0, f, 0), (Err(*why), vec![]), "{f:x?}");
    }
    // The spoofed MAC was never learned: traffic to it still floods, and not to port 0's
    // entry.
    assert!(b.fdb().lookup(10, other, 0).is_none());
    assert_eq!(b.counters().drops.get(DropReason::SpoofedIp), 7);
    // The other port is not policed.
    assert!(send(&mut b, 1, &ipv4_from(other, [10, 9, 9, 9]), 0)
        .0
        .is_ok());
    // Clearing security lets anything through again.
    b.set_port_security(PortId(0), None).unwrap();
    assert!(send(&mut b, 0, &ipv4_from(me, [10, 0, 0, 2]), 0).0.is_ok());
}

#[test]
fn port_security_reads_past_a_vlan_tag() {
    let mut b = bridge_with(&[(0, trunk(&[10], None)), (1, access(10))]);
    let me = mac(1);
    police(&mut b, 0, me, "10.0.0.1");
    let mut f = frame(BCAST, me, &[(T, Tci::new(0, false, 10))], 46);
    f[18] = 0x45;
    f[18 + 12..18 + 16].copy_from_slice(&[10, 0, 0, 1]);
    assert!(send(&mut b, 0, &f, 0).0.is_ok());
    f[18 + 15] = 2;
    assert_eq!(send(&mut b, 0, &f, 0).0, Err(DropReason::SpoofedIp));
}

fn tcp_to(dst: EthernetAddress, src: EthernetAddress, sip: [u8; 4], dport: u16) -> Vec<u8> {
    let mut f = ipv4_from(src, sip);
    f[..6].copy_from_slice(dst.as_bytes());
    f[14 + 9] = 6;
    f[14 + 20 + 2..14 + 20 + 4].copy_from_slice(&dport.to_be_bytes());
    f
}

#[test]
fn security_groups_filter_what_a_port_is_sent() {
    let mut b = bridge_with(&[(0, access(10)), (1, access(10)), (2, access(10))]);
    b.set_ingress_filter(
        PortId(1),
        Some(
            IngressFilter {
                default_deny: true,
                rules: vec![
                    FilterRule {
                        proto: RuleProto::Tcp(Some((80, 80))),
                        src: Some(("10.0.0.0".parse().unwrap(), 24)),
                    },
                    FilterRule {
                        proto: RuleProto::Icmp,
                        src: None,
                    },
                ],
            }
            .into(),
        ),
    )
    .unwrap();
    // Learn where mac(1) lives (port 1) from a frame it sends.
    let _ = send(&mut b, 1, &untagged(BCAST, mac(1)), 0);
    // Allowed: TCP 80 from inside the prefix.
    let (v, sent) = send(&mut b, 0, &tcp_to(mac(1), mac(5), [10, 0, 0, 5], 80), 0);
    assert_eq!((v, sent.len()), (Ok(Forwarded::Unicast(PortId(1))), 1));
    // Refused: another port, another source, a non-IP frame.
    for f in [
        tcp_to(mac(1), mac(5), [10, 0, 0, 5], 22),
        tcp_to(mac(1), mac(5), [192, 168, 0, 5], 80),
        frame(mac(1), mac(5), &[], 46), // IPv4 type, version 0: not IP to the filter
    ] {
        assert_eq!(
            send(&mut b, 0, &f, 0),
            (Err(DropReason::SecurityGroup), vec![])
        );
    }
    // ARP always passes; a flood skips only the filtered port.
    let arp = arp_from(mac(5), mac(5), [10, 0, 0, 5]);
    let (v, sent) = send(&mut b, 0, &arp, 0);
    assert_eq!((v, sent.len()), (Ok(Forwarded::Flooded { copies: 2 }), 2));
    let (v, sent) = send(&mut b, 0, &tcp_to(BCAST, mac(5), [10, 0, 0, 5], 22), 0);
    assert_eq!(v, Ok(Forwarded::Flooded { copies: 1 }));
    assert_eq!(sent, vec![(2, VlanEdit::Keep)]);
    assert_eq!(b.counters().drops.get(DropReason::SecurityGroup), 4);
    // Without default-deny the rules change nothing.
    b.set_ingress_filter(
        PortId(1),
        Some(
            IngressFilter {
                default_deny: false,
                rules: vec![],
            }
            .into(),
        ),
    )
    .unwrap();
    assert!(
        send(&mut b, 0, &tcp_to(mac(1), mac(5), [1, 2, 3, 4], 22), 0)
            .0
            .is_ok()
    );
}

#[test]
fn remembered_unicast_never_skips_port_security() {
    let mut b = bridge_with(&[(0, access(10)), (1, access(10))]);
    let (me, peer) = (mac(1), mac(2));
    police(&mut b, 0, me, "10.0.0.1");
    let _ = send(&mut b, 1, &untagged(BCAST, peer), 0);
    let mut good = ipv4_from(me, [10, 0, 0, 1]);
    good[..6].copy_from_slice(peer.as_bytes());
    for _ in 0..3 {
        assert_eq!(
            send(&mut b, 0, &good, 7).0,
            Ok(Forwarded::Unicast(PortId(1)))
        );
    }
    // Same MACs, same burst, another source address: the IP check still runs.
    let mut spoofed = good.clone();
    spoofed[14 + 15] = 2;
    assert_eq!(
        send(&mut b, 0, &spoofed, 7),
        (Err(DropReason::SpoofedIp), vec![])
    );
}

#[test]
fn remembered_unicast_follows_tags_and_configuration_within_a_burst() {
    let mut b = bridge_with(&[
        (0, trunk(&[10, 20], None)),
        (1, access(10)),
        (2, access(20)),
    ]);
    // mac(5) lives on port 1 in VLAN 10 and on port 2 in VLAN 20.
    let _ = send(&mut b, 1, &untagged(BCAST, mac(5)), 0);
    let _ = send(&mut b, 2, &untagged(BCAST, mac(5)), 0);
    let to10 = tagged(mac(5), mac(1), Tci::new(0, false, 10));
    let to20 = tagged(mac(5), mac(1), Tci::new(0, false, 20));
    for _ in 0..2 {
        assert_eq!(
            send(&mut b, 0, &to10, 1),
            (Ok(Forwarded::Unicast(PortId(1))), vec![(1, VlanEdit::Pop)])
        );
    }
    // The same MACs under another tag is another decision.
    assert_eq!(
        send(&mut b, 0, &to20, 1),
        (Ok(Forwarded::Unicast(PortId(2))), vec![(2, VlanEdit::Pop)])
    );
    // A frame from another port with the same bytes is decided afresh (and hairpins).
    assert_eq!(
        send(&mut b, 2, &untagged(mac(5), mac(1)), 1).0,
        Err(DropReason::SamePort)
    );
    // Moving port 1 to VLAN 20 within the same burst: VLAN 10 frames no longer reach it.
    assert_eq!(
        send(&mut b, 0, &to10, 1).0,
        Ok(Forwarded::Unicast(PortId(1)))
    );
    b.set_vlan_mode(PortId(1), access(20)).unwrap();
    assert_eq!(
        send(&mut b, 0, &to10, 1),
        (Err(DropReason::NoEgress), vec![])
    );
    // Taking port 2 down within the same burst: its frames stop too.
    assert_eq!(
        send(&mut b, 0, &to20, 1).0,
        Ok(Forwarded::Unicast(PortId(2)))
    );
    b.set_link(PortId(2), false).unwrap();
    let (_, sent) = send(&mut b, 0, &to20, 1);
    assert!(sent.iter().all(|s| s.0 != 2), "{sent:?}");
    // Every frame was counted, remembered or not.
    assert_eq!(b.port(PortId(0)).unwrap().counters().rx_frames, 7);
}

// ---- The L2 stage over a burst ------------------------------------------------------

/// One burst: the receiving port and its frames, each (dst, src, tag) repeated a few
/// times in a row so that runs of equal keys occur.
/// (destination, source, tag as (PCP, VID), how many times in a row).
type BurstFrame = (u8, u8, Option<(u8, u16)>, usize);

fn prop_burst() -> impl Strategy<Value = (u16, Vec<BurstFrame>)> {
    let tag = prop_oneof![
        3 => Just(None),
        1 => (0u8..8, prop_oneof![Just(10u16), Just(20), Just(30)]).prop_map(Some),
    ];
    (
        0u16..6,
        proptest::collection::vec((0u8..10, 0u8..9, tag, 1usize..8), 1..12),
    )
}

proptest! {
    /// `forward_burst` decides a burst exactly as `forward_head` decides its frames one
    /// by one: the same copies with the same edits, the same counters, the same FDB.
    #[test]
    fn a_burst_is_forwarded_as_its_frames_one_by_one(
        bursts in proptest::collection::vec(prop_burst(), 1..30),
        secured in any::<bool>(),
    ) {
        let ports = prop_ports();
        let mut a = bridge_with(&ports);
        let mut b = bridge_with(&ports);
        if secured {
            // Port security on port 1 turns the run shortcut off there.
            for br in [&mut a, &mut b] {
                br.set_port_security(PortId(1), Some(PortSecurity { mac: mac(1), ips: vec![], router: false }))
                    .expect("security");
            }
        }
        let mut staging_a: Vec<Vec<TxSel>> = (0..16).map(|_| Vec::new()).collect();
        let mut staging_b: Vec<Vec<TxSel>> = (0..16).map(|_| Vec::new()).collect();
        let mut to_router = Vec::new();
        for (now, (port, frames)) in bursts.iter().enumerate() {
            let now = now as u64;
            let mut local = pmd::port::LocalFrames::default();
            'fill: for &(dst, src, tag, n) in frames {
                let f = match tag {
                    None => untagged(prop_mac(dst), prop_mac(src)),
                    Some((pcp, v)) => tagged(prop_mac(dst), prop_mac(src), Tci::new(pcp, false, v)),
                };
                for _ in 0..n {
                    if !local.push(&f) {
                        break 'fill;
                    }
                }
            }
            let batch = local.batch();
            a.forward_burst(PortId(*port), batch, now, &mut staging_a, &mut to_router);
            for i in 0..batch.len() {
                let _ = b.forward_head(PortId(*port), batch.head(i), batch.frame_len(i), now, &mut |p: PortId, e| {
                    staging_b[usize::from(p.0)].push(TxSel { idx: i as u16, edit: e });
                });
            }
            prop_assert_eq!(&staging_a, &staging_b);
            prop_assert!(to_router.is_empty());
            for s in staging_a.iter_mut().chain(staging_b.iter_mut()) {
                s.clear();
            }
            prop_assert_eq!(a.counters(), b.counters());
            for (p, st) in a.ports() {
                prop_assert_eq!(st.counters(), b.port(p).expect("same ports").counters());
            }
            // Each table hashes with its own seed: compare the entries, not their order.
            let sorted = |br: &Bridge| {
                let mut v: Vec<_> = br.fdb().entries(now).map(|e| format!("{e:?}")).collect();
                v.sort();
                v
            };
            prop_assert_eq!(sorted(&a), sorted(&b));
        }
    }
}

#[test]
fn a_port_added_with_a_removed_ports_id_does_not_inherit_its_macs() {
    let mut b = bridge_with(&[(0, access(10)), (1, access(10)), (2, access(10))]);
    assert!(send(&mut b, 0, &untagged(BCAST, mac(1)), 0).0.is_ok());
    b.remove_port(PortId(0)).expect("remove");
    b.add_port_with(PortId(0), access(10), None, None, true)
        .expect("re-add");
    assert_eq!(b.fdb().lookup(10, mac(1), 0), None);
    // So a frame to that MAC is flooded to the new port 0 and port 2, not sent to
    // port 0 alone as if the old station were behind it.
    let (v, _) = send(&mut b, 1, &untagged(mac(1), mac(2)), 0);
    assert_eq!(v, Ok(Forwarded::Flooded { copies: 2 }));
}
