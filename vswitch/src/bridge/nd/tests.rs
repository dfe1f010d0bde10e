//! Neighbour-discovery spoofing from a pod, with frames built by etherparse (a parser we
//! did not write, so a second opinion on the wire format).
//!
//! Port 0 is the pod under test (port security, `fd00::1`), port 1 another pod
//! (`fd00::2`), and `fd00::fe` the gateway. A frame that is refused must reach nobody.

use std::net::Ipv6Addr;

use etherparse::icmpv6::{NeighborAdvertisementHeader, RouterAdvertisementHeader};
use etherparse::{
    IcmpEchoHeader, Icmpv6Type, IpFragOffset, IpHeaders, IpNumber, Ipv6Extensions,
    Ipv6FragmentHeader, Ipv6Header, Ipv6RawExtHeader, PacketBuilder,
};
use proptest::prelude::*;

use crate::bridge::{
    Bridge, BridgeConfig, DropReason, Forwarded, IngressFilter, PortId, PortSecurity, Vid, VlanMode,
};
use crate::wire::EthernetAddress;

const ME: EthernetAddress = EthernetAddress([0x02, 0, 0, 0, 0, 1]);
const OTHER: EthernetAddress = EthernetAddress([0x02, 0, 0, 0, 0, 2]);
/// All-nodes (ff02::1): flooded to every port of the VLAN.
const ALL_NODES: EthernetAddress = EthernetAddress([0x33, 0x33, 0, 0, 0, 1]);

fn ip(s: &str) -> Ipv6Addr {
    s.parse().expect("test address")
}

fn my_ip() -> Ipv6Addr {
    ip("fd00::1")
}

fn other_pod() -> Ipv6Addr {
    ip("fd00::2")
}

fn gateway() -> Ipv6Addr {
    ip("fd00::fe")
}

/// ME's EUI-64 link-local address.
fn my_link_local() -> Ipv6Addr {
    ip("fe80::ff:fe00:1")
}

/// Ports 0 and 1 in VLAN 10, port 0 with port security for ME and `fd00::1`, port 1
/// with its own for `fd00::2`.
fn bridge(router: bool) -> Bridge {
    let mut b = Bridge::new(BridgeConfig {
        max_ports: 4,
        fdb_capacity: 64,
        fdb_max_age: 1000,
    })
    .expect("bridge");
    for p in 0..2 {
        b.add_port(
            PortId(p),
            VlanMode::Access {
                vid: Vid::new(10).expect("vid"),
            },
        )
        .expect("port");
    }
    b.set_port_security(
        PortId(0),
        Some(PortSecurity {
            mac: ME,
            ips: vec!["10.0.0.1".parse().expect("v4"), my_ip().into()],
            router,
        }),
    )
    .expect("security");
    b.set_port_security(
        PortId(1),
        Some(PortSecurity {
            mac: OTHER,
            ips: vec![other_pod().into()],
            router: false,
        }),
    )
    .expect("security");
    b
}

/// Forwards `frame` from port 0, deciding on its first `HEAD_SNAPSHOT` bytes as the
/// switch does; returns the verdict and the ports it reached.
fn send(b: &mut Bridge, frame: &[u8]) -> (Result<Forwarded, DropReason>, Vec<u16>) {
    let head = &frame[..frame.len().min(pmd::port::HEAD_SNAPSHOT)];
    let mut reached = Vec::new();
    let v = b.forward_head(PortId(0), head, frame.len(), 0, &mut |p: PortId, _| {
        reached.push(p.0)
    });
    (v, reached)
}

/// Asserts that port 0 may send `frame`, and that it reaches the other pod.
#[track_caller]
fn passes(b: &mut Bridge, frame: &[u8]) {
    let (v, reached) = send(b, frame);
    assert!(v.is_ok(), "{v:?}");
    assert_eq!(reached, [1], "reaches the other pod");
}

/// Asserts that `frame` from port 0 is dropped for `why` and reaches nobody.
#[track_caller]
fn refused(b: &mut Bridge, frame: &[u8], why: DropReason) {
    assert_eq!(send(b, frame), (Err(why), vec![]));
}

/// An ICMPv6 packet from `mac`/`src` to all nodes, hop limit 255, behind `exts`.
fn icmp6(
    mac: EthernetAddress,
    src: Ipv6Addr,
    exts: Ipv6Extensions,
    ty: Icmpv6Type,
    body: &[u8],
) -> Vec<u8> {
    let ip = Ipv6Header {
        hop_limit: 255,
        source: src.octets(),
        destination: ip("ff02::1").octets(),
        ..Default::default()
    };
    let builder = PacketBuilder::ethernet2(mac.0, ALL_NODES.0)
        .ip(IpHeaders::Ipv6(ip, exts))
        .icmpv6(ty);
    let mut v = Vec::with_capacity(builder.size(body.len()));
    builder.write(&mut v, body).expect("frame");
    v
}

/// A UDP datagram from `src` behind `exts`.
fn udp6(src: Ipv6Addr, exts: Ipv6Extensions) -> Vec<u8> {
    let ip = Ipv6Header {
        hop_limit: 64,
        source: src.octets(),
        destination: ip("ff02::1").octets(),
        ..Default::default()
    };
    let builder = PacketBuilder::ethernet2(ME.0, ALL_NODES.0)
        .ip(IpHeaders::Ipv6(ip, exts))
        .udp(546, 547);
    let mut v = Vec::new();
    builder.write(&mut v, &[0; 8]).expect("frame");
    v
}

/// A link-layer address option: 1 source, 2 target.
fn lla(kind: u8, mac: EthernetAddress) -> Vec<u8> {
    let mut o = vec![kind, 1];
    o.extend_from_slice(mac.as_bytes());
    o
}

/// A neighbour advertisement from ME/`src` for `target`, with `options`.
fn na_from(src: Ipv6Addr, target: Ipv6Addr, exts: Ipv6Extensions, options: &[u8]) -> Vec<u8> {
    let ty = Icmpv6Type::NeighborAdvertisement(NeighborAdvertisementHeader {
        router: false,
        solicited: false,
        r#override: true,
    });
    icmp6(ME, src, exts, ty, &[&target.octets()[..], options].concat())
}

/// The usual unsolicited advertisement from the pod's own address: target and target
/// link-layer address option given.
fn na(target: Ipv6Addr, tlla: EthernetAddress) -> Vec<u8> {
    na_from(my_ip(), target, none(), &lla(2, tlla))
}

/// A neighbour solicitation from ME/`src` for `target`.
fn ns_from(src: Ipv6Addr, target: Ipv6Addr, exts: Ipv6Extensions, options: &[u8]) -> Vec<u8> {
    let body = [&target.octets()[..], options].concat();
    icmp6(ME, src, exts, Icmpv6Type::NeighborSolicitation, &body)
}

/// The nonce option Linux puts in its DAD solicitations (RFC 7527).
const NONCE: [u8; 8] = [14, 1, 1, 2, 3, 4, 5, 6];

fn ra() -> Vec<u8> {
    let ty = Icmpv6Type::RouterAdvertisement(RouterAdvertisementHeader {
        cur_hop_limit: 64,
        managed_address_config: false,
        other_config: false,
        router_lifetime: 1800,
    });
    // Reachable time, retransmission timer, then "I am the router": ME's source option.
    let body = [&[0u8; 8][..], &lla(1, ME)].concat();
    icmp6(ME, my_link_local(), none(), ty, &body)
}

fn redirect() -> Vec<u8> {
    // Reserved, target (the "better first hop": the pod), destination (someone's).
    let body = [
        &my_link_local().octets()[..],
        &ip("fd00::99").octets(),
        &lla(2, ME),
    ]
    .concat();
    icmp6(ME, my_link_local(), none(), Icmpv6Type::Redirect, &body)
}

fn none() -> Ipv6Extensions {
    Ipv6Extensions::default()
}

/// A hop-by-hop header with the router alert option (as MLD reports carry).
fn hop_by_hop() -> Ipv6Extensions {
    Ipv6Extensions {
        hop_by_hop_options: Some(
            Ipv6RawExtHeader::new_raw(IpNumber(0), &[5, 2, 0, 0, 1, 0]).expect("hbh"),
        ),
        ..Default::default()
    }
}

/// A fragment header at `offset` (in 8-byte units), more fragments following.
fn fragment(offset: u16) -> Ipv6Extensions {
    Ipv6Extensions {
        fragment: Some(Ipv6FragmentHeader::new(
            IpNumber(0),
            IpFragOffset::try_new(offset).expect("offset"),
            true,
            7,
        )),
        ..Default::default()
    }
}

/// An MLDv2 report (143) with one record, as Linux sends from `::` during DAD.
fn mld2_report(src: Ipv6Addr) -> Vec<u8> {
    let ty = Icmpv6Type::Unknown {
        type_u8: 143,
        code_u8: 0,
        bytes5to8: [0, 0, 0, 1],
    };
    let mut record = vec![4, 0, 0, 0];
    record.extend_from_slice(&ip("ff02::1:ff00:1").octets());
    icmp6(ME, src, hop_by_hop(), ty, &record)
}

#[test]
fn an_advertisement_must_be_for_one_of_the_ports_addresses() {
    let mut b = bridge(false);
    // The pod's own addresses: its address and its EUI-64 link-local one, with or
    // without a target option.
    passes(&mut b, &na(my_ip(), ME));
    passes(&mut b, &na(my_link_local(), ME));
    passes(&mut b, &na_from(my_link_local(), my_ip(), none(), &[]));
    // Another pod's address, the gateway's, another link-local address: each would
    // move the neighbours' cache entry for that address to this pod.
    for target in [other_pod(), gateway(), ip("fe80::2")] {
        refused(&mut b, &na(target, ME), DropReason::SpoofedNd);
    }
    // From its link-local source just as from its global one.
    let f = na_from(my_link_local(), gateway(), none(), &lla(2, ME));
    refused(&mut b, &f, DropReason::SpoofedNd);
    assert_eq!(b.counters().drops.get(DropReason::SpoofedNd), 4);
}

#[test]
fn a_link_layer_address_option_must_be_the_ports_mac() {
    let mut b = bridge(false);
    // As ARP's sender MAC: an advertisement for its own address that points the
    // neighbours at another MAC.
    refused(&mut b, &na(my_ip(), OTHER), DropReason::SpoofedNd);
    // A second target option, which some stacks take instead of the first.
    let two = [lla(2, ME), lla(2, OTHER)].concat();
    let f = na_from(my_ip(), my_ip(), none(), &two);
    refused(&mut b, &f, DropReason::SpoofedNd);
    // A solicitation's source option, which the solicited host caches.
    refused(
        &mut b,
        &ns_from(my_ip(), other_pod(), none(), &lla(1, OTHER)),
        DropReason::SpoofedNd,
    );
    passes(&mut b, &ns_from(my_ip(), other_pod(), none(), &lla(1, ME)));
    // A router solicitation's too.
    let rs = |o: &[u8]| icmp6(ME, my_ip(), none(), Icmpv6Type::RouterSolicitation, o);
    passes(&mut b, &rs(&lla(1, ME)));
    refused(&mut b, &rs(&lla(1, OTHER)), DropReason::SpoofedNd);
    // Malformed options: a zero length (receivers drop the message, but not all of
    // them), an option running past the message, a link-layer option of 16 bytes.
    let zero = [lla(2, ME), vec![2, 0, 0, 0, 0, 0, 0, 0]].concat();
    let long = [&lla(2, ME)[..], &[1, 2, 0, 0]].concat();
    let mut wide = lla(2, ME);
    wide[1] = 2;
    wide.extend_from_slice(&[0; 8]);
    for o in [zero, long, wide] {
        refused(
            &mut b,
            &na_from(my_ip(), my_ip(), none(), &o),
            DropReason::SpoofedNd,
        );
    }
}

#[test]
fn router_advertisements_and_redirects_only_from_a_router_port() {
    let mut b = bridge(false);
    refused(&mut b, &ra(), DropReason::SpoofedNd);
    refused(&mut b, &redirect(), DropReason::SpoofedNd);
    // A port marked as a router.
    let mut r = bridge(true);
    passes(&mut r, &ra());
    passes(&mut r, &redirect());
    // Which still may not advertise others' addresses.
    refused(&mut r, &na(gateway(), ME), DropReason::SpoofedNd);
}

#[test]
fn from_the_unspecified_address_only_dad_router_solicitations_and_mld_reports() {
    let mut b = bridge(false);
    let any = Ipv6Addr::UNSPECIFIED;
    // Duplicate address detection for its own addresses, with Linux's nonce option.
    passes(&mut b, &ns_from(any, my_ip(), none(), &NONCE));
    passes(&mut b, &ns_from(any, my_link_local(), none(), &[]));
    passes(&mut b, &mld2_report(any));
    passes(
        &mut b,
        &icmp6(ME, any, none(), Icmpv6Type::RouterSolicitation, &[]),
    );
    // DAD for another pod's address (which answers, and gives it up), or with a source
    // link-layer option (RFC 4861 forbids one from ::).
    refused(
        &mut b,
        &ns_from(any, other_pod(), none(), &NONCE),
        DropReason::SpoofedNd,
    );
    refused(
        &mut b,
        &ns_from(any, my_ip(), none(), &lla(1, ME)),
        DropReason::SpoofedNd,
    );
    // Anything else from ::, whether or not behind a hop-by-hop header.
    for f in [
        udp6(any, hop_by_hop()),
        udp6(any, none()),
        na_from(any, my_ip(), hop_by_hop(), &lla(2, ME)),
        na_from(any, my_ip(), none(), &[]),
        icmp6(
            ME,
            any,
            none(),
            Icmpv6Type::EchoRequest(IcmpEchoHeader { id: 1, seq: 1 }),
            &[],
        ),
        // Fragmented, or a later fragment.
        ns_from(any, my_ip(), fragment(0), &NONCE),
        udp6(any, fragment(3)),
    ] {
        refused(&mut b, &f, DropReason::SpoofedIp);
    }
}

#[test]
fn neighbour_discovery_behind_extension_headers_is_checked_or_dropped() {
    let mut b = bridge(false);
    // Behind a hop-by-hop or destination-options header the message is checked.
    let dest_opts = Ipv6Extensions {
        destination_options: Some(
            Ipv6RawExtHeader::new_raw(IpNumber(0), &[1, 4, 0, 0, 0, 0]).expect("dest opts"),
        ),
        ..Default::default()
    };
    for exts in [hop_by_hop(), dest_opts] {
        passes(
            &mut b,
            &na_from(my_ip(), my_ip(), exts.clone(), &lla(2, ME)),
        );
        refused(
            &mut b,
            &na_from(my_ip(), other_pod(), exts, &lla(2, ME)),
            DropReason::SpoofedNd,
        );
    }
    // A hop-by-hop header so long that the message lies beyond the private copy.
    // (One PadN option of 100 bytes: a 104-byte header.)
    let mut pad = vec![1, 100];
    pad.resize(102, 0);
    let long = Ipv6Extensions {
        hop_by_hop_options: Some(Ipv6RawExtHeader::new_raw(IpNumber(0), &pad).expect("hbh")),
        ..Default::default()
    };
    refused(
        &mut b,
        &na_from(my_ip(), my_ip(), long.clone(), &lla(2, ME)),
        DropReason::SpoofedNd,
    );
    // What follows it is still known when it is not ICMPv6.
    passes(&mut b, &udp6(my_ip(), long));
    // An extension header the check does not follow (mobility, 135), before an
    // advertisement for the gateway.
    let mut f = na(gateway(), ME);
    f[14 + 6] = 135;
    let mut mobility = vec![58, 0, 0, 0, 0, 0, 0, 0];
    mobility.extend_from_slice(&f[54..]);
    f.truncate(54);
    f.extend_from_slice(&mobility);
    let plen = (f.len() - 54) as u16;
    f[18..20].copy_from_slice(&plen.to_be_bytes());
    refused(&mut b, &f, DropReason::SpoofedNd);
    // An advertisement too long for the copy (its options run past it).
    let mut padding = lla(2, ME);
    padding.extend_from_slice(&[14, 8]);
    padding.resize(8 + 64, 0);
    let f = na_from(my_ip(), my_ip(), none(), &padding);
    assert!(f.len() > pmd::port::HEAD_SNAPSHOT);
    refused(&mut b, &f, DropReason::SpoofedNd);
}

#[test]
fn neighbour_discovery_behind_a_vlan_tag_is_checked_too() {
    // Port 0 a trunk carrying VLAN 10 tagged, port 1 in VLAN 10.
    let mut b = bridge(false);
    b.set_vlan_mode(
        PortId(0),
        VlanMode::Trunk {
            allowed: [Vid::new(10).expect("vid")].into_iter().collect(),
            native: None,
        },
    )
    .expect("trunk");
    let tagged = |target: Ipv6Addr| {
        let ty = Icmpv6Type::NeighborAdvertisement(NeighborAdvertisementHeader {
            router: false,
            solicited: false,
            r#override: true,
        });
        let builder = PacketBuilder::ethernet2(ME.0, ALL_NODES.0)
            .single_vlan(etherparse::VlanId::try_new(10).expect("vid"))
            .ipv6(my_ip().octets(), ip("ff02::1").octets(), 255)
            .icmpv6(ty);
        let body = [&target.octets()[..], &lla(2, ME)].concat();
        let mut v = Vec::new();
        builder.write(&mut v, &body).expect("frame");
        v
    };
    passes(&mut b, &tagged(my_ip()));
    refused(&mut b, &tagged(gateway()), DropReason::SpoofedNd);
}

#[test]
fn fragmented_neighbour_discovery_is_dropped() {
    let mut b = bridge(false);
    // RFC 6980: never fragmented, even when what it says is true.
    refused(
        &mut b,
        &na_from(my_ip(), my_ip(), fragment(0), &lla(2, ME)),
        DropReason::SpoofedNd,
    );
    refused(
        &mut b,
        &na_from(my_ip(), gateway(), fragment(0), &lla(2, ME)),
        DropReason::SpoofedNd,
    );
    // Other fragmented ICMPv6 (a big ping) and later fragments pass.
    let echo = Icmpv6Type::EchoRequest(IcmpEchoHeader { id: 1, seq: 1 });
    passes(&mut b, &icmp6(ME, my_ip(), fragment(0), echo, &[0; 16]));
    passes(&mut b, &udp6(my_ip(), fragment(3)));
}

#[test]
fn a_port_without_addresses_may_advertise_any_but_only_with_its_mac() {
    let mut b = bridge(false);
    b.set_port_security(
        PortId(0),
        Some(PortSecurity {
            mac: ME,
            ips: vec![],
            router: false,
        }),
    )
    .expect("security");
    // As for ARP and the source address: no addresses, any address.
    passes(&mut b, &na(gateway(), ME));
    refused(&mut b, &na(gateway(), OTHER), DropReason::SpoofedNd);
    refused(&mut b, &ra(), DropReason::SpoofedNd);
}

#[test]
fn security_groups_exempt_only_the_neighbour_discovery_port_security_let_in() {
    let mut b = bridge(false);
    b.set_ingress_filter(
        PortId(1),
        Some(
            IngressFilter {
                default_deny: true,
                rules: vec![],
            }
            .into(),
        ),
    )
    .expect("filter");
    // The other pod takes nothing but ARP and neighbour discovery: the pod's own
    // advertisement reaches it, a spoofed one is refused before any group is asked.
    passes(&mut b, &na(my_ip(), ME));
    refused(&mut b, &na(other_pod(), ME), DropReason::SpoofedNd);
    refused(&mut b, &ra(), DropReason::SpoofedNd);
    assert_eq!(b.counters().drops.get(DropReason::SecurityGroup), 0);
    // Neighbour discovery that crossed a router (hop limit below 255) is invalid, and
    // not exempt.
    let mut f = na(my_ip(), ME);
    f[14 + 7] = 64;
    assert_eq!(send(&mut b, &f), (Err(DropReason::SecurityGroup), vec![]));
}

proptest! {
    /// Whatever follows an IPv6 header from a secured port, the check never panics,
    /// and a refused frame reaches nobody.
    #[test]
    fn arbitrary_ipv6_never_panics(
        next in prop_oneof![Just(0u8), Just(43), Just(44), Just(51), Just(58), Just(60), any::<u8>()],
        plen in any::<u16>(),
        src in prop_oneof![Just([0u8; 16]), Just(my_ip().octets()), any::<[u8; 16]>()],
        rest in proptest::collection::vec(any::<u8>(), 0..120),
        router in any::<bool>(),
    ) {
        let mut b = bridge(router);
        let mut f = vec![0u8; 54];
        f[..6].copy_from_slice(ALL_NODES.as_bytes());
        f[6..12].copy_from_slice(ME.as_bytes());
        f[12..14].copy_from_slice(&[0x86, 0xdd]);
        f[14] = 0x60;
        f[18..20].copy_from_slice(&plen.to_be_bytes());
        f[20] = next;
        f[21] = 255;
        f[22..38].copy_from_slice(&src);
        f.extend_from_slice(&rest);
        let (v, reached) = send(&mut b, &f);
        prop_assert_eq!(v.is_err(), reached.is_empty());
    }
}
