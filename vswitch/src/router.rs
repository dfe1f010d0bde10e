//! A tenant's IPv4 and IPv6 router between bridge domains (VLANs).
//!
//! A router has one interface per network it joins: a VLAN, a MAC and a gateway address
//! with its prefix. The switch hands it the frames addressed to an interface MAC, and
//! broadcast ARP on a routed VLAN; [`Router::input`] then
//!
//! - answers ARP requests for its gateway addresses, and learns every sender it sees
//!   (ARP, and IPv4 sources on connected prefixes) in a fixed-size neighbour table;
//! - answers ICMP echo requests to its own addresses;
//! - routes IPv4: longest-prefix match over connected prefixes and static routes
//!   ([`Lpm4`]), TTL decrement with an RFC 1624 incremental checksum update, source MAC
//!   := egress interface MAC, destination MAC := the neighbour's; the frame's head is
//!   rewritten in place (the VLAN tag too, when it carries one) and the switch sends it
//!   on the egress VLAN through the bridge;
//! - sends ICMP time exceeded when the TTL runs out, and an ARP request (at most one per
//!   destination per [`ARP_RETRY_NS`]) when the next hop is unknown, dropping the packet
//!   (the sender's retransmission finds the neighbour).
//!
//! IPv6 the same way: neighbour solicitations for its addresses get advertisements
//! (and teach the router the solicitor), hop limit instead of TTL (no header checksum),
//! ICMPv6 time exceeded and echo replies, neighbour solicitations to the solicited-node
//! multicast group for unknown next hops.
//!
//! Like the bridge: no allocation, no lock, no system call per frame. Generated frames
//! are written into a buffer the caller provides. IPv4 options and IPv6 extension
//! headers before ICMPv6 are not handled (counted as drops); nothing is fragmented.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr};

use crate::bridge::Vid;
use crate::wire::{checksum, incremental_update, EthernetAddress};

/// Longest frame the router generates.
pub const GEN_MAX: usize = pmd::port::LOCAL_MAX;
/// Minimum time between two ARP requests for the same address.
pub const ARP_RETRY_NS: u64 = 1_000_000_000;

/// One interface of a router.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouterIf {
    /// The network's VLAN.
    pub vid: Vid,
    /// The interface MAC.
    pub mac: EthernetAddress,
    /// The gateway address.
    pub ip: Ipv4Addr,
    /// Its prefix length (the connected route).
    pub prefix: u8,
    /// The IPv6 gateway address and prefix length, if the network has IPv6.
    pub ip6: Option<(Ipv6Addr, u8)>,
}

impl RouterIf {
    /// The Ethernet multicast address of the solicited-node group of its IPv6 address,
    /// where neighbour solicitations for it arrive.
    pub fn solicited_node_mac(&self) -> Option<EthernetAddress> {
        self.ip6.map(|(a, _)| {
            let o = a.octets();
            EthernetAddress([0x33, 0x33, 0xff, o[13], o[14], o[15]])
        })
    }
}

/// A static route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StaticRoute {
    /// Destination prefix.
    pub dst: Ipv4Addr,
    /// Its length.
    pub len: u8,
    /// Next hop, on a connected prefix.
    pub via: Ipv4Addr,
}

/// An IPv6 static route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StaticRoute6 {
    /// Destination prefix.
    pub dst: Ipv6Addr,
    /// Its length.
    pub len: u8,
    /// Next hop, on a connected prefix.
    pub via: Ipv6Addr,
}

/// Why the router dropped a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RouteDrop {
    /// Not IPv4 or ARP, or a header the router does not handle (options, bad version,
    /// bad checksum, truncated).
    Malformed,
    /// No route.
    NoRoute,
    /// Next hop not resolved yet (an ARP request went out, or was sent recently).
    Unresolved,
    /// TTL expired (an ICMP error went back).
    TtlExpired,
    /// Addressed to the router, and not something it answers.
    ForUs,
}

impl RouteDrop {
    /// Every reason, in a stable order.
    pub const ALL: [RouteDrop; 5] = [
        RouteDrop::Malformed,
        RouteDrop::NoRoute,
        RouteDrop::Unresolved,
        RouteDrop::TtlExpired,
        RouteDrop::ForUs,
    ];

    /// A stable snake_case name.
    pub const fn as_str(self) -> &'static str {
        match self {
            RouteDrop::Malformed => "malformed",
            RouteDrop::NoRoute => "no_route",
            RouteDrop::Unresolved => "unresolved",
            RouteDrop::TtlExpired => "ttl_expired",
            RouteDrop::ForUs => "for_us",
        }
    }

    /// Index in [`RouteDrop::ALL`].
    pub const fn index(self) -> usize {
        self as usize
    }
}

/// What a router did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RouterCounters {
    /// Packets routed.
    pub forwarded: u64,
    /// Frames generated (ARP replies and requests, ICMP).
    pub generated: u64,
    /// Drops by [`RouteDrop`] index.
    pub drops: [u64; 5],
}

/// What to do with a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The head was rewritten; send the frame on VLAN `vid` (tagged frames carry `vid`
    /// in their tag already).
    Forward {
        /// Egress VLAN.
        vid: Vid,
    },
    /// Send the `len` bytes written to the caller's buffer on VLAN `vid` (untagged),
    /// and drop the frame itself.
    Reply {
        /// VLAN.
        vid: Vid,
        /// Frame length.
        len: usize,
    },
    /// Drop it.
    Drop(RouteDrop),
}

/// A multiplicative hash for masked IPv4 keys. The keys are the operator's prefixes, not
/// packet data, so SipHash's flood resistance buys nothing here and it cost 7 % of a
/// routing core in a profile.
#[derive(Clone, Copy, Debug, Default)]
pub struct PrefixHasher(u64);

impl std::hash::Hasher for PrefixHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }
    fn write_u32(&mut self, v: u32) {
        self.0 = (u64::from(v) ^ self.0).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        self.0 ^= self.0 >> 29;
    }
}

/// An address family, as [`Lpm`] sees it: addresses are integer keys, masked to a
/// prefix length.
pub trait PrefixAddr: Copy {
    /// The address as an integer.
    type Key: Copy + Eq + std::hash::Hash + std::fmt::Debug;
    /// Bits in an address.
    const BITS: u8;
    /// The address with all but its first `len` bits cleared (`len <= BITS`).
    fn masked(self, len: u8) -> Self::Key;
}

fn mask(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len.min(32)))
    }
}

fn mask6(len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(len.min(128)))
    }
}

impl PrefixAddr for Ipv4Addr {
    type Key = u32;
    const BITS: u8 = 32;
    fn masked(self, len: u8) -> u32 {
        u32::from(self) & mask(len)
    }
}

impl PrefixAddr for Ipv6Addr {
    type Key = u128;
    const BITS: u8 = 128;
    fn masked(self, len: u8) -> u128 {
        u128::from(self) & mask6(len)
    }
}

type PrefixMap<K, T> = HashMap<K, T, std::hash::BuildHasherDefault<PrefixHasher>>;

/// Longest-prefix match: one hash table per prefix length, probed from the longest
/// length in use down. Lookup cost depends on how many distinct lengths are in use (at
/// most 33 for IPv4, 129 for IPv6), not on how many prefixes there are.
#[derive(Clone, Debug)]
pub struct Lpm<A: PrefixAddr, T> {
    tables: Vec<(u8, PrefixMap<A::Key, T>)>,
}

/// IPv4 longest-prefix match.
pub type Lpm4<T> = Lpm<Ipv4Addr, T>;
/// IPv6 longest-prefix match.
pub type Lpm6<T> = Lpm<Ipv6Addr, T>;

impl<A: PrefixAddr, T: Copy> Default for Lpm<A, T> {
    fn default() -> Self {
        Lpm { tables: Vec::new() }
    }
}

impl<A: PrefixAddr, T: Copy> Lpm<A, T> {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Inserts or replaces `addr/len` (host bits are ignored).
    pub fn insert(&mut self, addr: A, len: u8, value: T) {
        let len = len.min(A::BITS);
        let key = addr.masked(len);
        match self.tables.iter_mut().find(|(l, _)| *l == len) {
            Some((_, t)) => {
                t.insert(key, value);
            }
            None => {
                let mut t = PrefixMap::default();
                t.insert(key, value);
                self.tables.push((len, t));
                self.tables.sort_by_key(|t| std::cmp::Reverse(t.0));
            }
        }
    }

    /// The value of the longest prefix containing `addr`.
    pub fn lookup(&self, addr: A) -> Option<T> {
        self.tables
            .iter()
            .find_map(|(len, t)| t.get(&addr.masked(*len)).copied())
    }

    /// Number of prefixes.
    pub fn len(&self) -> usize {
        self.tables.iter().map(|(_, t)| t.len()).sum()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct Neighbour6 {
    ip: u128,
    ifidx: u16,
    mac: EthernetAddress,
    asked: u64,
    known: bool,
    used: bool,
}

/// Where an IPv6 route leads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Hop6 {
    ifidx: u16,
    via: Option<Ipv6Addr>,
}

#[derive(Clone, Copy, Debug, Default)]
struct Neighbour {
    ip: u32,
    ifidx: u16,
    mac: EthernetAddress,
    /// When we last asked for it (ns), for the unresolved case.
    asked: u64,
    known: bool,
    used: bool,
}

/// Where a route leads: an interface, and the next hop (None: the destination itself).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Hop {
    ifidx: u16,
    via: Option<Ipv4Addr>,
}

/// Neighbour-table slots (a power of two).
pub const NEIGHBOURS: usize = 1024;
/// Most ARP requests and neighbour solicitations an interface sends in a burst.
pub const SOLICIT_BURST: u64 = 32;
/// Their sustained rate per interface, per second.
pub const SOLICIT_PER_SEC: u64 = 100;

/// A router; see the module docs.
#[derive(Clone, Debug)]
pub struct Router {
    ifs: Vec<RouterIf>,
    /// The static routes it was built with (for [`same_config`](Self::same_config)).
    routes: (Vec<StaticRoute>, Vec<StaticRoute6>),
    lpm: Lpm4<Hop>,
    neigh: Box<[Neighbour]>,
    lpm6: Lpm6<Hop6>,
    neigh6: Box<[Neighbour6]>,
    /// Per interface: (tokens, last refill in ns) for solicitations.
    budget: Vec<(u64, u64)>,
    counters: RouterCounters,
    /// Neighbours this replica resolved, for the switch to tell the other cores'
    /// replicas; `None` when nobody listens. Bounded like [`Bridge`]'s learn log.
    ///
    /// [`Bridge`]: crate::bridge::Bridge
    learnt: Option<Vec<NeighbourNote>>,
}

/// A neighbour one replica resolved: `ip` is at `mac` on the interface on VLAN `vid`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NeighbourNote {
    /// The interface's VLAN.
    pub vid: Vid,
    /// The neighbour's address.
    pub ip: std::net::IpAddr,
    /// Its MAC.
    pub mac: EthernetAddress,
}

/// Most neighbours logged between two [`Router::take_learnt`] calls.
pub const NEIGHBOUR_LOG: usize = 64;

/// Errors in a router's configuration.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RouterError {
    /// Two interfaces on one VLAN.
    #[error("two router interfaces on VLAN {0}")]
    DuplicateVlan(u16),
    /// A prefix longer than 32.
    #[error("prefix length {0} is longer than 32")]
    BadPrefix(u8),
    /// A next hop on no connected prefix.
    #[error("next hop {0} is on none of the router's networks")]
    NextHopOffLink(std::net::IpAddr),
}

const ETH: usize = 14;

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

fn ip_at(b: &[u8], at: usize) -> Ipv4Addr {
    Ipv4Addr::new(b[at], b[at + 1], b[at + 2], b[at + 3])
}

impl Router {
    /// A router with `ifs` and static `routes` (IPv4 only; see
    /// [`with_routes6`](Self::with_routes6)).
    pub fn new(ifs: Vec<RouterIf>, routes: &[StaticRoute]) -> Result<Router, RouterError> {
        Self::with_routes6(ifs, routes, &[])
    }

    /// A router with `ifs` and static IPv4 and IPv6 routes.
    pub fn with_routes6(
        ifs: Vec<RouterIf>,
        routes: &[StaticRoute],
        routes6: &[StaticRoute6],
    ) -> Result<Router, RouterError> {
        let mut lpm6 = Lpm6::new();
        for (i, a) in ifs.iter().enumerate() {
            if let Some((ip, len)) = a.ip6 {
                if len > 128 {
                    return Err(RouterError::BadPrefix(len));
                }
                lpm6.insert(
                    ip,
                    len,
                    Hop6 {
                        ifidx: i as u16,
                        via: None,
                    },
                );
            }
        }
        for r in routes6 {
            if r.len > 128 {
                return Err(RouterError::BadPrefix(r.len));
            }
            let hop = lpm6
                .lookup(r.via)
                .filter(|h| h.via.is_none())
                .ok_or(RouterError::NextHopOffLink(r.via.into()))?;
            lpm6.insert(
                r.dst,
                r.len,
                Hop6 {
                    ifidx: hop.ifidx,
                    via: Some(r.via),
                },
            );
        }
        let mut lpm = Lpm4::new();
        for (i, a) in ifs.iter().enumerate() {
            if a.prefix > 32 {
                return Err(RouterError::BadPrefix(a.prefix));
            }
            if ifs[..i].iter().any(|b| b.vid == a.vid) {
                return Err(RouterError::DuplicateVlan(a.vid.get()));
            }
            lpm.insert(
                a.ip,
                a.prefix,
                Hop {
                    ifidx: i as u16,
                    via: None,
                },
            );
        }
        for r in routes {
            if r.len > 32 {
                return Err(RouterError::BadPrefix(r.len));
            }
            let hop = lpm
                .lookup(r.via)
                .filter(|h| h.via.is_none())
                .ok_or(RouterError::NextHopOffLink(r.via.into()))?;
            lpm.insert(
                r.dst,
                r.len,
                Hop {
                    ifidx: hop.ifidx,
                    via: Some(r.via),
                },
            );
        }
        let n_ifs = ifs.len();
        Ok(Router {
            ifs,
            routes: (routes.to_vec(), routes6.to_vec()),
            lpm,
            neigh: vec![Neighbour::default(); NEIGHBOURS].into_boxed_slice(),
            lpm6,
            neigh6: vec![Neighbour6::default(); NEIGHBOURS].into_boxed_slice(),
            budget: vec![(SOLICIT_BURST, 0); n_ifs],
            counters: RouterCounters::default(),
            learnt: None,
        })
    }

    /// Its counters.
    pub fn counters(&self) -> &RouterCounters {
        &self.counters
    }

    /// Its interfaces.
    pub fn interfaces(&self) -> &[RouterIf] {
        &self.ifs
    }

    /// The interface on `vid`, if any.
    pub fn interface_on(&self, vid: Vid) -> Option<&RouterIf> {
        self.ifs.iter().find(|i| i.vid == vid)
    }

    /// Whether the frame (dst MAC on VLAN `vid`) is for the router: unicast to an
    /// interface MAC, a broadcast ARP on a routed VLAN, or a frame to the solicited-node
    /// group of an interface's IPv6 address.
    pub fn wants(&self, vid: Vid, dst: EthernetAddress, ethertype: u16) -> bool {
        self.ifs.iter().any(|i| {
            i.vid == vid
                && (dst == i.mac
                    || (dst.is_broadcast() && ethertype == 0x0806)
                    || Some(dst) == i.solicited_node_mac())
        })
    }

    fn slot(&self, ip: u32) -> usize {
        (ip.wrapping_mul(0x9e37_79b9) >> 22) as usize & (NEIGHBOURS - 1)
    }

    /// The neighbour `ip` on interface `ifidx`, if resolved.
    pub fn neighbour(&self, ifidx: u16, ip: Ipv4Addr) -> Option<EthernetAddress> {
        let n = &self.neigh[self.slot(u32::from(ip))];
        (n.used && n.known && n.ip == u32::from(ip) && n.ifidx == ifidx).then_some(n.mac)
    }

    fn learn(&mut self, ifidx: u16, ip: Ipv4Addr, mac: EthernetAddress) {
        if self.is_own4(ip) || !unicast4(ip) {
            return;
        }
        let ip = u32::from(ip);
        if !mac.is_unicast() {
            return;
        }
        let s = self.slot(ip);
        let n = &self.neigh[s];
        if n.used && n.known && n.ip == ip && n.ifidx == ifidx && n.mac == mac {
            return; // already known: leave the cache line clean
        }
        // Direct-mapped: a newer neighbour replaces an older one in its slot.
        self.neigh[s] = Neighbour {
            ip,
            ifidx,
            mac,
            asked: 0,
            known: true,
            used: true,
        };
        self.note(ifidx, Ipv4Addr::from(ip).into(), mac);
    }

    fn note(&mut self, ifidx: u16, ip: std::net::IpAddr, mac: EthernetAddress) {
        let Some(vid) = self.ifs.get(usize::from(ifidx)).map(|i| i.vid) else {
            return;
        };
        if let Some(log) = self.learnt.as_mut().filter(|l| l.len() < NEIGHBOUR_LOG) {
            log.push(NeighbourNote { vid, ip, mac });
        }
    }

    /// Whether `other` has the same interfaces and routes (its state aside).
    pub fn same_config(&self, other: &Router) -> bool {
        self.ifs == other.ifs && self.routes == other.routes
    }

    /// Starts (or stops) logging resolved neighbours for [`take_learnt`](Self::take_learnt).
    pub fn log_learnt(&mut self, on: bool) {
        self.learnt = on.then(|| Vec::with_capacity(NEIGHBOUR_LOG));
    }

    /// Hands the neighbours resolved since the last call to `f`, and empties the log.
    pub fn take_learnt(&mut self, mut f: impl FnMut(NeighbourNote)) {
        if let Some(log) = self.learnt.as_mut() {
            for n in log.drain(..) {
                f(n);
            }
        }
    }

    /// Takes in a neighbour another replica resolved (not logged again). Ignored when
    /// no interface is on its VLAN here, or the address is not on that interface's link.
    pub fn learn_shared(&mut self, n: NeighbourNote) {
        let Some(ifidx) = self.ifs.iter().position(|i| i.vid == n.vid) else {
            return;
        };
        let log = self.learnt.take();
        match n.ip {
            std::net::IpAddr::V4(a) => {
                let i = &self.ifs[ifidx];
                if crate::router::PrefixAddr::masked(a, i.prefix)
                    == crate::router::PrefixAddr::masked(i.ip, i.prefix)
                {
                    self.learn(ifidx as u16, a, n.mac);
                }
            }
            std::net::IpAddr::V6(a) => {
                if self.on_link6(ifidx as u16, a) {
                    self.learn6(ifidx as u16, a, n.mac);
                }
            }
        }
        self.learnt = log;
    }

    /// Takes over `old`'s resolved neighbours on the VLANs both routers have an
    /// interface on (a router whose routes or interfaces changed keeps what it knew).
    pub fn adopt_neighbours(&mut self, old: &Router) {
        let log = self.learnt.take();
        for n in old.neigh.iter().filter(|n| n.used && n.known) {
            if let Some(vid) = old.ifs.get(usize::from(n.ifidx)).map(|i| i.vid) {
                self.learn_shared(NeighbourNote {
                    vid,
                    ip: Ipv4Addr::from(n.ip).into(),
                    mac: n.mac,
                });
            }
        }
        for n in old.neigh6.iter().filter(|n| n.used && n.known) {
            if let Some(vid) = old.ifs.get(usize::from(n.ifidx)).map(|i| i.vid) {
                self.learn_shared(NeighbourNote {
                    vid,
                    ip: Ipv6Addr::from(n.ip).into(),
                    mac: n.mac,
                });
            }
        }
        self.learnt = log;
    }

    /// Handles one frame that [`wants`](Self::wants) said is for the router. `frame` is
    /// the frame's head (at least the Ethernet, VLAN and IPv4 headers), `l3` the offset
    /// of its L3 header (14, or 18 behind a tag), `vid` its VLAN, `now` a clock in ns.
    /// Generated frames go to `out` (at least [`GEN_MAX`] bytes).
    pub fn input(
        &mut self,
        vid: Vid,
        frame: &mut [u8],
        l3: usize,
        now: u64,
        out: &mut [u8],
    ) -> Verdict {
        let v = self.decide(vid, frame, l3, now, out);
        match v {
            Verdict::Forward { .. } => self.counters.forwarded += 1,
            Verdict::Reply { .. } => self.counters.generated += 1,
            Verdict::Drop(r) => self.counters.drops[r.index()] += 1,
        }
        v
    }

    fn decide(
        &mut self,
        vid: Vid,
        frame: &mut [u8],
        l3: usize,
        now: u64,
        out: &mut [u8],
    ) -> Verdict {
        let Some(ifidx) = self.ifs.iter().position(|i| i.vid == vid) else {
            return Verdict::Drop(RouteDrop::Malformed);
        };
        let ifidx = ifidx as u16;
        if (l3 != ETH && l3 != ETH + 4) || frame.len() < l3 {
            return Verdict::Drop(RouteDrop::Malformed);
        }
        match be16(frame, l3 - 2) {
            0x0806 => self.arp(ifidx, frame, l3, out),
            0x0800 => self.ipv4(ifidx, frame, l3, now, out),
            0x86dd => self.ipv6(ifidx, frame, l3, now, out),
            _ => Verdict::Drop(RouteDrop::Malformed),
        }
    }

    /// Whether the frame was sent to the interface's own MAC: only those are routed
    /// (broadcast ARP and solicited-node multicast reach the router too, flooded, and
    /// must never be forwarded to another VLAN).
    fn to_interface(&self, ifidx: u16, f: &[u8]) -> bool {
        f.get(0..6) == Some(self.ifs[usize::from(ifidx)].mac.as_bytes().as_slice())
    }

    /// Whether `ip` is one of the router's own addresses (never learned as a neighbour).
    fn is_own4(&self, ip: Ipv4Addr) -> bool {
        self.ifs.iter().any(|i| i.ip == ip)
    }

    fn is_own6(&self, ip: Ipv6Addr) -> bool {
        self.ifs.iter().any(|i| i.ip6.is_some_and(|(a, _)| a == ip))
    }

    /// Spends a token of interface `ifidx`'s budget for ARP requests and neighbour
    /// solicitations ([`SOLICIT_BURST`], refilled at [`SOLICIT_PER_SEC`]): a guest sweeping
    /// a prefix cannot make the router flood another VLAN at its packet rate.
    fn solicit_token(&mut self, ifidx: u16, now: u64) -> bool {
        let b = &mut self.budget[usize::from(ifidx)];
        let refill = now.saturating_sub(b.1) * SOLICIT_PER_SEC / 1_000_000_000;
        if refill > 0 {
            b.0 = (b.0 + refill).min(SOLICIT_BURST);
            b.1 = now;
        }
        if b.0 == 0 {
            return false;
        }
        b.0 -= 1;
        true
    }

    fn arp(&mut self, ifidx: u16, f: &[u8], l3: usize, out: &mut [u8]) -> Verdict {
        let a = &f[l3..];
        if a.len() < 28 || be16(a, 0) != 1 || be16(a, 2) != 0x0800 || a[4] != 6 || a[5] != 4 {
            return Verdict::Drop(RouteDrop::Malformed);
        }
        let op = be16(a, 6);
        let sha = EthernetAddress([a[8], a[9], a[10], a[11], a[12], a[13]]);
        let spa = ip_at(a, 14);
        let tpa = ip_at(a, 24);
        let me = &self.ifs[usize::from(ifidx)];
        let (my_ip, my_mac, vid) = (me.ip, me.mac, me.vid);
        // Learn senders on our connected prefix.
        if u32::from(spa) & mask(me.prefix) == u32::from(my_ip) & mask(me.prefix) {
            self.learn(ifidx, spa, sha);
        }
        if op == 1 && tpa == my_ip {
            let len = write_arp(out, 2, my_mac, my_ip, sha, spa, sha);
            return Verdict::Reply { vid, len };
        }
        Verdict::Drop(RouteDrop::ForUs)
    }

    fn ipv4(&mut self, ifidx: u16, f: &mut [u8], l3: usize, now: u64, out: &mut [u8]) -> Verdict {
        if f.len() < l3 + 20 || f[l3] != 0x45 || checksum(&f[l3..l3 + 20]) != 0 {
            return Verdict::Drop(RouteDrop::Malformed);
        }
        let src = ip_at(f, l3 + 12);
        let dst = ip_at(f, l3 + 16);
        let src_mac = EthernetAddress([f[6], f[7], f[8], f[9], f[10], f[11]]);
        {
            let me = &self.ifs[usize::from(ifidx)];
            if u32::from(src) & mask(me.prefix) == u32::from(me.ip) & mask(me.prefix) {
                self.learn(ifidx, src, src_mac);
            }
        }
        if !self.to_interface(ifidx, f) {
            return Verdict::Drop(RouteDrop::ForUs); // flooded broadcast/multicast: not routed
        }
        // To one of our addresses: answer pings, drop the rest.
        if let Some(i) = self.ifs.iter().position(|i| i.ip == dst) {
            if f[l3 + 9] == 1 && f.len() >= l3 + 28 && f[l3 + 20] == 8 {
                let ingress = &self.ifs[usize::from(ifidx)];
                let len = write_echo_reply(out, ingress.mac, src_mac, self.ifs[i].ip, src, f, l3);
                return match len {
                    Some(len) => Verdict::Reply {
                        vid: ingress.vid,
                        len,
                    },
                    None => Verdict::Drop(RouteDrop::ForUs),
                };
            }
            return Verdict::Drop(RouteDrop::ForUs);
        }
        // Martians (RFC 1812 5.3.7): never forwarded.
        if !unicast4(src) || !unicast4(dst) || dst.is_link_local() || src.is_link_local() {
            return Verdict::Drop(RouteDrop::Malformed);
        }
        let ttl = f[l3 + 8];
        if ttl <= 1 {
            let me = &self.ifs[usize::from(ifidx)];
            let len = write_time_exceeded(out, me.mac, src_mac, me.ip, src, f, l3);
            return match len {
                Some(len) => Verdict::Reply { vid: me.vid, len },
                None => Verdict::Drop(RouteDrop::TtlExpired),
            };
        }
        let Some(hop) = self.lpm.lookup(dst) else {
            return Verdict::Drop(RouteDrop::NoRoute);
        };
        let next = hop.via.unwrap_or(dst);
        let egress = self.ifs[usize::from(hop.ifidx)].clone();
        let Some(dmac) = self.neighbour(hop.ifidx, next) else {
            // Ask, at most once per ARP_RETRY_NS per address.
            let s = self.slot(u32::from(next));
            let n = self.neigh[s];
            let mine = n.used && n.ip == u32::from(next) && n.ifidx == hop.ifidx;
            // A resolved neighbour of another address keeps its slot; the reply to this
            // request will take it (learning replaces), not the request itself.
            let may_mark = mine || !(n.used && n.known);
            let due = !mine || now.saturating_sub(n.asked) >= ARP_RETRY_NS;
            if due && self.solicit_token(hop.ifidx, now) {
                if may_mark {
                    self.neigh[s] = Neighbour {
                        ip: u32::from(next),
                        ifidx: hop.ifidx,
                        mac: EthernetAddress::default(),
                        asked: now.max(1),
                        known: false,
                        used: true,
                    };
                }
                let len = write_arp(
                    out,
                    1,
                    egress.mac,
                    egress.ip,
                    EthernetAddress::default(),
                    next,
                    EthernetAddress::BROADCAST,
                );
                return Verdict::Reply {
                    vid: egress.vid,
                    len,
                };
            }
            return Verdict::Drop(RouteDrop::Unresolved);
        };
        // Rewrite: TTL, checksum, MACs, and the tag's VLAN if there is one.
        let old = be16(f, l3 + 8);
        f[l3 + 8] = ttl - 1;
        let new = be16(f, l3 + 8);
        let hc = be16(f, l3 + 10);
        put16(f, l3 + 10, incremental_update(hc, old, new));
        f[0..6].copy_from_slice(dmac.as_bytes());
        f[6..12].copy_from_slice(egress.mac.as_bytes());
        if l3 == ETH + 4 {
            let tci = be16(f, 14);
            put16(f, 14, (tci & 0xf000) | egress.vid.get());
        }
        Verdict::Forward { vid: egress.vid }
    }
}

impl Router {
    fn slot6(&self, ip: u128) -> usize {
        let h = (ip as u64) ^ ((ip >> 64) as u64);
        (h.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 54) as usize & (NEIGHBOURS - 1)
    }

    /// The IPv6 neighbour `ip` on interface `ifidx`, if resolved.
    pub fn neighbour6(&self, ifidx: u16, ip: Ipv6Addr) -> Option<EthernetAddress> {
        let n = &self.neigh6[self.slot6(u128::from(ip))];
        (n.used && n.known && n.ip == u128::from(ip) && n.ifidx == ifidx).then_some(n.mac)
    }

    fn learn6(&mut self, ifidx: u16, ip: Ipv6Addr, mac: EthernetAddress) {
        if self.is_own6(ip) || ip.is_unspecified() || ip.is_multicast() {
            return;
        }
        let ip = u128::from(ip);
        if !mac.is_unicast() {
            return;
        }
        let s = self.slot6(ip);
        let n = &self.neigh6[s];
        if n.used && n.known && n.ip == ip && n.ifidx == ifidx && n.mac == mac {
            return;
        }
        self.neigh6[s] = Neighbour6 {
            ip,
            ifidx,
            mac,
            asked: 0,
            known: true,
            used: true,
        };
        self.note(ifidx, Ipv6Addr::from(ip).into(), mac);
    }

    fn on_link6(&self, ifidx: u16, a: Ipv6Addr) -> bool {
        let link_local = a.segments()[0] & 0xffc0 == 0xfe80;
        link_local
            || self.ifs[usize::from(ifidx)]
                .ip6
                .is_some_and(|(me, len)| (u128::from(a) ^ u128::from(me)) & mask6(len) == 0)
    }

    fn ipv6(&mut self, ifidx: u16, f: &mut [u8], l3: usize, now: u64, out: &mut [u8]) -> Verdict {
        if f.len() < l3 + 40 || f[l3] >> 4 != 6 {
            return Verdict::Drop(RouteDrop::Malformed);
        }
        let me = self.ifs[usize::from(ifidx)].clone();
        let Some((my_ip, _)) = me.ip6 else {
            return Verdict::Drop(RouteDrop::NoRoute);
        };
        let src = ip6_at(f, l3 + 8);
        let dst = ip6_at(f, l3 + 24);
        let src_mac = EthernetAddress([f[6], f[7], f[8], f[9], f[10], f[11]]);
        let next = f[l3 + 6];
        if !src.is_unspecified() && self.on_link6(ifidx, src) {
            self.learn6(ifidx, src, src_mac);
        }
        // Addressed to any of the router's addresses (not only this interface's).
        let own = self
            .ifs
            .iter()
            .find_map(|i| i.ip6.map(|(a, _)| a).filter(|a| *a == dst));
        let my_ip = own.unwrap_or(my_ip);
        let solicited = {
            let o = my_ip.octets();
            Ipv6Addr::new(
                0xff02,
                0,
                0,
                0,
                0,
                1,
                0xff00 | u16::from(o[13]),
                u16::from_be_bytes([o[14], o[15]]),
            )
        };
        if own.is_some() || dst == solicited {
            if next != 58 || f.len() < l3 + 48 {
                return Verdict::Drop(RouteDrop::ForUs);
            }
            // RFC 4861 7.1.1: a message whose ICMPv6 checksum is wrong (or that the
            // router cannot check, not having all of it) is ignored.
            if !icmp6_checksum_ok(f, l3) {
                return Verdict::Drop(RouteDrop::Malformed);
            }
            let icmp_type = f[l3 + 40];
            match icmp_type {
                // Neighbour solicitation for our address.
                135 if f.len() >= l3 + 64 && ip6_at(f, l3 + 48) == my_ip => {
                    let to = if src.is_unspecified() {
                        Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1)
                    } else {
                        src
                    };
                    let dmac = if src.is_unspecified() {
                        EthernetAddress([0x33, 0x33, 0, 0, 0, 1])
                    } else {
                        src_mac
                    };
                    // Router | Solicited (unless answering DAD) | Override; target; our MAC.
                    let flags: u8 = if src.is_unspecified() { 0xa0 } else { 0xe0 };
                    let mut body = [0u8; 28];
                    body[0] = flags;
                    body[4..20].copy_from_slice(&my_ip.octets());
                    body[20] = 2;
                    body[21] = 1;
                    body[22..28].copy_from_slice(me.mac.as_bytes());
                    let len = write_icmp6(out, me.mac, dmac, my_ip, to, 255, [136, 0], &body);
                    return match len {
                        Some(len) => Verdict::Reply { vid: me.vid, len },
                        None => Verdict::Drop(RouteDrop::ForUs),
                    };
                }
                // Neighbour advertisement: learn the target, but only a node speaking for
                // itself (target = source address, which port security checks) and only
                // at the MAC it sends from. An advertisement for someone else's address is
                // how neighbour caches get poisoned.
                136 if f.len() >= l3 + 64 => {
                    let target = ip6_at(f, l3 + 48);
                    if target == src && self.on_link6(ifidx, target) {
                        self.learn6(ifidx, target, src_mac);
                    }
                    return Verdict::Drop(RouteDrop::ForUs);
                }
                // Echo request.
                128 if own.is_some() => {
                    let total = 40 + usize::from(be16(f, l3 + 4));
                    let Some(body) = f.get(l3 + 44..l3 + total) else {
                        return Verdict::Drop(RouteDrop::ForUs);
                    };
                    let len = write_icmp6(out, me.mac, src_mac, my_ip, src, 64, [129, 0], body);
                    return match len {
                        Some(len) => Verdict::Reply { vid: me.vid, len },
                        None => Verdict::Drop(RouteDrop::ForUs),
                    };
                }
                _ => return Verdict::Drop(RouteDrop::ForUs),
            }
        }
        if dst.is_multicast() || !self.to_interface(ifidx, f) {
            return Verdict::Drop(RouteDrop::ForUs); // flooded or multicast: not routed
        }
        // Never forwarded: unspecified, loopback, multicast or link-local sources, and
        // link-local destinations (their scope is the link).
        let link_local = |a: Ipv6Addr| a.segments()[0] & 0xffc0 == 0xfe80;
        if src.is_unspecified()
            || src.is_loopback()
            || src.is_multicast()
            || link_local(src)
            || link_local(dst)
            || dst.is_loopback()
            || dst.is_unspecified()
        {
            return Verdict::Drop(RouteDrop::Malformed);
        }
        let hops = f[l3 + 7];
        if hops <= 1 {
            // Time exceeded, quoting as much of the packet as the head holds.
            let quote_end = f.len().min(l3 + 48);
            let mut body = [0u8; 52];
            let q = &f[l3..quote_end];
            body[4..4 + q.len()].copy_from_slice(q);
            let len = write_icmp6(
                out,
                me.mac,
                src_mac,
                my_ip,
                src,
                64,
                [3, 0],
                &body[..4 + q.len()],
            );
            return match len {
                Some(len) => Verdict::Reply { vid: me.vid, len },
                None => Verdict::Drop(RouteDrop::TtlExpired),
            };
        }
        let Some(hop) = self.lpm6.lookup(dst) else {
            return Verdict::Drop(RouteDrop::NoRoute);
        };
        let nh = hop.via.unwrap_or(dst);
        let egress = self.ifs[usize::from(hop.ifidx)].clone();
        let Some(dmac) = self.neighbour6(hop.ifidx, nh) else {
            let s = self.slot6(u128::from(nh));
            let n = self.neigh6[s];
            let mine = n.used && n.ip == u128::from(nh) && n.ifidx == hop.ifidx;
            let may_mark = mine || !(n.used && n.known);
            let due = !mine || now.saturating_sub(n.asked) >= ARP_RETRY_NS;
            if due && self.solicit_token(hop.ifidx, now) {
                if may_mark {
                    self.neigh6[s] = Neighbour6 {
                        ip: u128::from(nh),
                        ifidx: hop.ifidx,
                        mac: EthernetAddress::default(),
                        asked: now.max(1),
                        known: false,
                        used: true,
                    };
                }
                let Some((eg_ip, _)) = egress.ip6 else {
                    return Verdict::Drop(RouteDrop::NoRoute);
                };
                let o = nh.octets();
                let group = Ipv6Addr::new(
                    0xff02,
                    0,
                    0,
                    0,
                    0,
                    1,
                    0xff00 | u16::from(o[13]),
                    u16::from_be_bytes([o[14], o[15]]),
                );
                let gmac = EthernetAddress([0x33, 0x33, 0xff, o[13], o[14], o[15]]);
                let mut body = [0u8; 28];
                body[4..20].copy_from_slice(&o);
                body[20] = 1;
                body[21] = 1;
                body[22..28].copy_from_slice(egress.mac.as_bytes());
                let len = write_icmp6(out, egress.mac, gmac, eg_ip, group, 255, [135, 0], &body);
                return match len {
                    Some(len) => Verdict::Reply {
                        vid: egress.vid,
                        len,
                    },
                    None => Verdict::Drop(RouteDrop::Unresolved),
                };
            }
            return Verdict::Drop(RouteDrop::Unresolved);
        };
        f[l3 + 7] = hops - 1;
        f[0..6].copy_from_slice(dmac.as_bytes());
        f[6..12].copy_from_slice(egress.mac.as_bytes());
        if l3 == ETH + 4 {
            let tci = be16(f, 14);
            put16(f, 14, (tci & 0xf000) | egress.vid.get());
        }
        Verdict::Forward { vid: egress.vid }
    }
}

/// A unicast IPv4 address that may appear on a routed packet: not 0.0.0.0/8, loopback,
/// multicast, class E or the limited broadcast.
fn unicast4(a: Ipv4Addr) -> bool {
    let o = a.octets();
    !(o[0] == 0 || o[0] == 127 || o[0] >= 224)
}

/// One's complement sum of the IPv6 pseudo-header and `msg`, folded.
fn icmp6_sum(src: &[u8], dst: &[u8], msg: &[u8]) -> u16 {
    let mut sum: u64 = 0;
    for c in src.chunks(2).chain(dst.chunks(2)) {
        sum += u64::from(u16::from_be_bytes([c[0], c[1]]));
    }
    sum += msg.len() as u64 + 58;
    for c in msg.chunks(2) {
        sum += u64::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// Whether the ICMPv6 message of the IPv6 packet at `f[l3..]` is complete in `f` and its
/// checksum is right.
fn icmp6_checksum_ok(f: &[u8], l3: usize) -> bool {
    let plen = usize::from(be16(f, l3 + 4));
    match f.get(l3 + 40..l3 + 40 + plen) {
        Some(msg) => icmp6_sum(&f[l3 + 8..l3 + 24], &f[l3 + 24..l3 + 40], msg) == 0xffff,
        None => false,
    }
}

fn ip6_at(b: &[u8], at: usize) -> Ipv6Addr {
    let mut o = [0u8; 16];
    o.copy_from_slice(&b[at..at + 16]);
    Ipv6Addr::from(o)
}

/// Writes an IPv6 header and an ICMPv6 message (`kind`, `body`), with the checksum over
/// the pseudo-header. Returns the frame length.
#[allow(clippy::too_many_arguments)]
fn write_icmp6(
    out: &mut [u8],
    smac: EthernetAddress,
    dmac: EthernetAddress,
    sip: Ipv6Addr,
    dip: Ipv6Addr,
    hop_limit: u8,
    kind: [u8; 2],
    body: &[u8],
) -> Option<usize> {
    let plen = 4 + body.len();
    let len = ETH + 40 + plen;
    if len > out.len() {
        return None;
    }
    out[..len.max(60)].fill(0);
    out[0..6].copy_from_slice(dmac.as_bytes());
    out[6..12].copy_from_slice(smac.as_bytes());
    put16(out, 12, 0x86dd);
    let ip = &mut out[ETH..ETH + 40];
    ip[0] = 0x60;
    put16(ip, 4, plen as u16);
    ip[6] = 58;
    ip[7] = hop_limit;
    ip[8..24].copy_from_slice(&sip.octets());
    ip[24..40].copy_from_slice(&dip.octets());
    let icmp = &mut out[ETH + 40..len];
    icmp[0] = kind[0];
    icmp[1] = kind[1];
    icmp[4..].copy_from_slice(body);
    let sum = icmp6_sum(&sip.octets(), &dip.octets(), icmp);
    put16(icmp, 2, !sum);
    Some(len.max(60))
}

/// Writes an ARP packet (padded to 60 bytes); returns its length.
fn write_arp(
    out: &mut [u8],
    op: u16,
    sha: EthernetAddress,
    spa: Ipv4Addr,
    tha: EthernetAddress,
    tpa: Ipv4Addr,
    eth_dst: EthernetAddress,
) -> usize {
    out[..60].fill(0);
    out[0..6].copy_from_slice(eth_dst.as_bytes());
    out[6..12].copy_from_slice(sha.as_bytes());
    put16(out, 12, 0x0806);
    let a = &mut out[ETH..];
    a[0..8].copy_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, op as u8]);
    a[8..14].copy_from_slice(sha.as_bytes());
    a[14..18].copy_from_slice(&spa.octets());
    a[18..24].copy_from_slice(tha.as_bytes());
    a[24..28].copy_from_slice(&tpa.octets());
    60
}

/// Writes an IPv4 header + ICMP message `kind/code` whose body is `body`.
pub(crate) fn write_icmp(
    out: &mut [u8],
    smac: EthernetAddress,
    dmac: EthernetAddress,
    sip: Ipv4Addr,
    dip: Ipv4Addr,
    head: [u8; 8],
    body: &[u8],
) -> Option<usize> {
    let ip_len = 20 + 8 + body.len();
    let len = ETH + ip_len;
    if len > out.len() {
        return None;
    }
    out[..len.max(60)].fill(0);
    out[0..6].copy_from_slice(dmac.as_bytes());
    out[6..12].copy_from_slice(smac.as_bytes());
    put16(out, 12, 0x0800);
    let ip = &mut out[ETH..ETH + 20];
    ip[0] = 0x45;
    put16(ip, 2, ip_len as u16);
    ip[8] = 64;
    ip[9] = 1;
    ip[12..16].copy_from_slice(&sip.octets());
    ip[16..20].copy_from_slice(&dip.octets());
    let c = checksum(ip);
    put16(ip, 10, c);
    let icmp = &mut out[ETH + 20..len];
    icmp[..8].copy_from_slice(&head);
    icmp[8..].copy_from_slice(body);
    let c = checksum(icmp);
    put16(icmp, 2, c);
    Some(len.max(60))
}

/// ICMP time exceeded (type 11, code 0) quoting the IP header and 8 bytes of `f`.
fn write_time_exceeded(
    out: &mut [u8],
    smac: EthernetAddress,
    dmac: EthernetAddress,
    sip: Ipv4Addr,
    dip: Ipv4Addr,
    f: &[u8],
    l3: usize,
) -> Option<usize> {
    let quote = f.get(l3..l3 + 28)?;
    write_icmp(out, smac, dmac, sip, dip, [11, 0, 0, 0, 0, 0, 0, 0], quote)
}

/// An echo reply for the echo request in `f` (its identifier, sequence and as much of
/// its data as the head holds and [`GEN_MAX`] allows).
fn write_echo_reply(
    out: &mut [u8],
    smac: EthernetAddress,
    dmac: EthernetAddress,
    sip: Ipv4Addr,
    dip: Ipv4Addr,
    f: &[u8],
    l3: usize,
) -> Option<usize> {
    let total = usize::from(be16(f, l3 + 2));
    let icmp = f.get(l3 + 20..(l3 + total).min(f.len()))?;
    if icmp.len() < 8 || total < 28 || l3 + total > f.len() {
        // The whole request must be in the head for the reply to echo it.
        return None;
    }
    let mut head = [0u8; 8];
    head[4..8].copy_from_slice(&icmp[4..8]);
    write_icmp(out, smac, dmac, sip, dip, head, &icmp[8..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vid(v: u16) -> Vid {
        Vid::new(v).unwrap()
    }

    const RMAC: EthernetAddress = EthernetAddress([0x02, 0xaa, 0, 0, 0, 1]);
    const A: EthernetAddress = EthernetAddress([0x02, 0, 0, 0, 0, 0xa]);
    const B: EthernetAddress = EthernetAddress([0x02, 0, 0, 0, 0, 0xb]);

    fn router() -> Router {
        Router::new(
            vec![
                RouterIf {
                    vid: vid(10),
                    mac: RMAC,
                    ip: Ipv4Addr::new(10, 0, 0, 254),
                    prefix: 24,
                    ip6: None,
                },
                RouterIf {
                    vid: vid(20),
                    mac: RMAC,
                    ip: Ipv4Addr::new(10, 0, 1, 254),
                    prefix: 24,
                    ip6: None,
                },
            ],
            &[StaticRoute {
                dst: Ipv4Addr::new(192, 168, 0, 0),
                len: 16,
                via: Ipv4Addr::new(10, 0, 1, 1),
            }],
        )
        .unwrap()
    }

    fn ipv4(
        dmac: EthernetAddress,
        smac: EthernetAddress,
        src: [u8; 4],
        dst: [u8; 4],
        ttl: u8,
    ) -> Vec<u8> {
        let mut f = vec![0u8; 60];
        f[0..6].copy_from_slice(dmac.as_bytes());
        f[6..12].copy_from_slice(smac.as_bytes());
        put16(&mut f, 12, 0x0800);
        f[14] = 0x45;
        put16(&mut f, 16, 28);
        f[22] = ttl;
        f[23] = 17;
        f[26..30].copy_from_slice(&src);
        f[30..34].copy_from_slice(&dst);
        let c = checksum(&f[14..34]);
        put16(&mut f, 24, c);
        f
    }

    fn arp_req(sha: EthernetAddress, spa: [u8; 4], tpa: [u8; 4]) -> Vec<u8> {
        let mut f = vec![0u8; 60];
        write_arp(
            &mut f,
            1,
            sha,
            spa.into(),
            EthernetAddress::default(),
            tpa.into(),
            EthernetAddress::BROADCAST,
        );
        f
    }

    #[test]
    fn answers_arp_for_its_gateway_and_learns_the_sender() {
        let mut r = router();
        let mut f = arp_req(A, [10, 0, 0, 1], [10, 0, 0, 254]);
        let mut out = [0u8; GEN_MAX];
        assert_eq!(
            r.input(vid(10), &mut f, 14, 0, &mut out),
            Verdict::Reply {
                vid: vid(10),
                len: 60
            }
        );
        assert_eq!(&out[0..6], A.as_bytes());
        assert_eq!(be16(&out, 20), 2, "a reply");
        assert_eq!(&out[22..28], RMAC.as_bytes());
        assert_eq!(&out[28..32], &[10, 0, 0, 254]);
        assert_eq!(r.neighbour(0, Ipv4Addr::new(10, 0, 0, 1)), Some(A));
        // Not for us: learned, not answered.
        let mut f = arp_req(B, [10, 0, 0, 2], [10, 0, 0, 7]);
        assert_eq!(
            r.input(vid(10), &mut f, 14, 0, &mut out),
            Verdict::Drop(RouteDrop::ForUs)
        );
    }

    #[test]
    fn routes_with_ttl_checksum_and_macs_after_resolving() {
        let mut r = router();
        let mut out = [0u8; GEN_MAX];
        let pkt = ipv4(RMAC, A, [10, 0, 0, 1], [10, 0, 1, 1], 64);
        // First: the next hop is unknown, an ARP request goes out on VLAN 20.
        let mut f = pkt.clone();
        assert_eq!(
            r.input(vid(10), &mut f, 14, 5, &mut out),
            Verdict::Reply {
                vid: vid(20),
                len: 60
            }
        );
        assert_eq!(&out[0..6], &[0xff; 6]);
        assert_eq!(&out[38..42], &[10, 0, 1, 1], "asks for 10.0.1.1");
        assert_eq!(&out[28..32], &[10, 0, 1, 254], "from the VLAN 20 gateway");
        // Asked recently: dropped without asking again.
        let mut f = pkt.clone();
        assert_eq!(
            r.input(vid(10), &mut f, 14, 6, &mut out),
            Verdict::Drop(RouteDrop::Unresolved)
        );
        // B answers (any ARP from B teaches the router).
        let mut reply = arp_req(B, [10, 0, 1, 1], [10, 0, 1, 254]);
        r.input(vid(20), &mut reply, 14, 7, &mut out);
        let mut f = pkt.clone();
        assert_eq!(
            r.input(vid(10), &mut f, 14, 8, &mut out),
            Verdict::Forward { vid: vid(20) }
        );
        assert_eq!(&f[0..6], B.as_bytes());
        assert_eq!(&f[6..12], RMAC.as_bytes());
        assert_eq!(f[22], 63);
        assert_eq!(checksum(&f[14..34]), 0, "checksum still valid");
        assert_eq!(&f[34..], &pkt[34..], "payload untouched");
        // Via the static route: next hop 10.0.1.1 (B).
        let mut f = ipv4(RMAC, A, [10, 0, 0, 1], [192, 168, 7, 7], 9);
        assert_eq!(
            r.input(vid(10), &mut f, 14, 9, &mut out),
            Verdict::Forward { vid: vid(20) }
        );
        assert_eq!(&f[0..6], B.as_bytes());
        // No route.
        let mut f = ipv4(RMAC, A, [10, 0, 0, 1], [8, 8, 8, 8], 9);
        assert_eq!(
            r.input(vid(10), &mut f, 14, 9, &mut out),
            Verdict::Drop(RouteDrop::NoRoute)
        );
    }

    #[test]
    fn ttl_one_gets_time_exceeded_back() {
        let mut r = router();
        let mut out = [0u8; GEN_MAX];
        let mut f = ipv4(RMAC, A, [10, 0, 0, 1], [10, 0, 1, 1], 1);
        let orig = f.clone();
        let v = r.input(vid(10), &mut f, 14, 0, &mut out);
        let Verdict::Reply { vid: v10, len } = v else {
            panic!("{v:?}")
        };
        assert_eq!((v10, len), (vid(10), 70));
        assert_eq!(&out[0..6], A.as_bytes());
        assert_eq!(&out[26..30], &[10, 0, 0, 254], "from the ingress gateway");
        assert_eq!(&out[30..34], &[10, 0, 0, 1]);
        assert_eq!((out[34], out[35]), (11, 0), "time exceeded");
        assert_eq!(checksum(&out[14..34]), 0);
        assert_eq!(checksum(&out[34..70]), 0);
        assert_eq!(&out[42..70], &orig[14..42], "quotes header + 8 bytes");
    }

    #[test]
    fn answers_pings_to_its_addresses() {
        let mut r = router();
        let mut out = [0u8; GEN_MAX];
        let mut f = ipv4(RMAC, A, [10, 0, 0, 1], [10, 0, 1, 254], 64);
        f[23] = 1; // ICMP
        put16(&mut f, 16, 28 + 8);
        f.resize(14 + 36, 0);
        f[34] = 8; // echo request
        f[38..42].copy_from_slice(&[0x12, 0x34, 0, 7]);
        f[42..50].copy_from_slice(b"pingdata");
        put16(&mut f, 24, 0);
        let c = checksum(&f[14..34]);
        put16(&mut f, 24, c);
        let v = r.input(vid(10), &mut f, 14, 0, &mut out);
        assert_eq!(
            v,
            Verdict::Reply {
                vid: vid(10),
                len: 60
            }
        );
        assert_eq!(out[34], 0, "echo reply");
        assert_eq!(&out[38..42], &[0x12, 0x34, 0, 7]);
        assert_eq!(&out[42..50], b"pingdata");
        assert_eq!(&out[26..30], &[10, 0, 1, 254]);
        assert_eq!(checksum(&out[34..50]), 0);
    }

    #[test]
    fn hostile_frames_are_dropped_not_panicked_on() {
        let mut r = router();
        let mut out = [0u8; GEN_MAX];
        let good = ipv4(RMAC, A, [10, 0, 0, 1], [10, 0, 1, 1], 64);
        for cut in 0..good.len() {
            let mut f = good[..cut].to_vec();
            let _ = r.input(vid(10), &mut f, 14, 0, &mut out);
        }
        let mut f = good.clone();
        f[24] ^= 1; // bad checksum
        assert_eq!(
            r.input(vid(10), &mut f, 14, 0, &mut out),
            Verdict::Drop(RouteDrop::Malformed)
        );
        let mut f = good.clone();
        f[14] = 0x46; // options
        assert_eq!(
            r.input(vid(10), &mut f, 14, 0, &mut out),
            Verdict::Drop(RouteDrop::Malformed)
        );
        let mut f = good.clone();
        assert_eq!(
            r.input(vid(99), &mut f, 14, 0, &mut out),
            Verdict::Drop(RouteDrop::Malformed)
        );
        let mut f = arp_req(A, [10, 0, 0, 1], [10, 0, 0, 254]);
        f[19] = 9; // hlen
        assert_eq!(
            r.input(vid(10), &mut f, 14, 0, &mut out),
            Verdict::Drop(RouteDrop::Malformed)
        );
        // Echo request longer than the head: no reply, no panic.
        let mut f = good.clone();
        f[23] = 1;
        f[34] = 8;
        put16(&mut f, 16, 1400);
        put16(&mut f, 24, 0);
        let c = checksum(&f[14..34]);
        put16(&mut f, 24, c);
        let mut f2 = f.clone();
        f2[30..34].copy_from_slice(&[10, 0, 0, 254]);
        put16(&mut f2, 24, 0);
        let c = checksum(&f2[14..34]);
        put16(&mut f2, 24, c);
        assert_eq!(
            r.input(vid(10), &mut f2, 14, 0, &mut out),
            Verdict::Drop(RouteDrop::ForUs)
        );
    }

    #[test]
    fn config_errors() {
        let i = |v, ip: [u8; 4]| RouterIf {
            vid: vid(v),
            mac: RMAC,
            ip: ip.into(),
            prefix: 24,
            ip6: None,
        };
        assert_eq!(
            Router::new(vec![i(10, [10, 0, 0, 1]), i(10, [10, 0, 1, 1])], &[]).unwrap_err(),
            RouterError::DuplicateVlan(10)
        );
        let off = StaticRoute {
            dst: [1, 0, 0, 0].into(),
            len: 8,
            via: [172, 16, 0, 1].into(),
        };
        assert!(matches!(
            Router::new(vec![i(10, [10, 0, 0, 1])], &[off]),
            Err(RouterError::NextHopOffLink(_))
        ));
    }

    fn router6() -> Router {
        let i = |v: u16, ip: [u8; 4], ip6: &str| RouterIf {
            vid: vid(v),
            mac: RMAC,
            ip: ip.into(),
            prefix: 24,
            ip6: Some((ip6.parse().unwrap(), 64)),
        };
        Router::new(
            vec![
                i(10, [10, 0, 0, 254], "fd00:a::fe"),
                i(20, [10, 0, 1, 254], "fd00:b::fe"),
            ],
            &[],
        )
        .unwrap()
    }

    fn v6(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    /// An IPv6 frame with `payload` (next header `next`).
    fn ipv6(
        dmac: EthernetAddress,
        smac: EthernetAddress,
        src: &str,
        dst: &str,
        next: u8,
        hops: u8,
        payload: &[u8],
    ) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 40 + payload.len()];
        f[0..6].copy_from_slice(dmac.as_bytes());
        f[6..12].copy_from_slice(smac.as_bytes());
        put16(&mut f, 12, 0x86dd);
        f[14] = 0x60;
        put16(&mut f, 18, payload.len() as u16);
        f[20] = next;
        f[21] = hops;
        f[22..38].copy_from_slice(&v6(src).octets());
        f[38..54].copy_from_slice(&v6(dst).octets());
        f[54..].copy_from_slice(payload);
        if next == 58 && payload.len() >= 4 {
            f[56..58].fill(0);
            let c = !icmp6_sum(&f[22..38], &f[38..54], &f[54..]);
            put16(&mut f, 56, c);
        }
        f
    }

    /// Whether the ICMPv6 checksum of a frame written by the router is right.
    fn icmp6_ok(f: &[u8]) -> bool {
        let plen = usize::from(be16(f, 18));
        let mut sum: u64 = 0;
        for c in f[22..54].chunks(2) {
            sum += u64::from(be16(c, 0));
        }
        sum += plen as u64 + 58;
        for c in f[54..54 + plen].chunks(2) {
            sum += u64::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        sum == 0xffff
    }

    #[test]
    fn answers_neighbour_solicitations_for_its_address() {
        let mut r = router6();
        let mut out = [0u8; GEN_MAX];
        let mut ns = vec![135, 0, 0, 0, 0, 0, 0, 0];
        ns.extend(v6("fd00:a::fe").octets());
        ns.extend([1, 1]);
        ns.extend(A.as_bytes());
        let snm = EthernetAddress([0x33, 0x33, 0xff, 0, 0, 0xfe]);
        assert!(r.wants(vid(10), snm, 0x86dd));
        let mut f = ipv6(snm, A, "fd00:a::1", "ff02::1:ff00:fe", 58, 255, &ns);
        let v = r.input(vid(10), &mut f, 14, 0, &mut out);
        let Verdict::Reply { vid: v10, len } = v else {
            panic!("{v:?}")
        };
        assert_eq!(v10, vid(10));
        assert_eq!(len, 14 + 40 + 32);
        assert_eq!(&out[0..6], A.as_bytes());
        assert_eq!(out[54], 136, "neighbour advertisement");
        assert_eq!(out[58], 0xe0, "router, solicited, override");
        assert_eq!(&out[62..78], &v6("fd00:a::fe").octets());
        assert_eq!(&out[80..86], RMAC.as_bytes(), "target link-layer address");
        assert!(icmp6_ok(&out), "checksum");
        assert_eq!(r.neighbour6(0, v6("fd00:a::1")), Some(A));
    }

    #[test]
    fn routes_ipv6_with_hop_limit_after_solicitation() {
        let mut r = router6();
        let mut out = [0u8; GEN_MAX];
        let pkt = ipv6(RMAC, A, "fd00:a::1", "fd00:b::1", 17, 64, &[7u8; 10]);
        let mut f = pkt.clone();
        let v = r.input(vid(10), &mut f, 14, 1, &mut out);
        assert!(
            matches!(v, Verdict::Reply { vid: v20, .. } if v20 == vid(20)),
            "{v:?}"
        );
        assert_eq!(
            &out[0..6],
            &[0x33, 0x33, 0xff, 0, 0, 1],
            "to B's solicited-node group"
        );
        assert_eq!(out[54], 135);
        assert_eq!(&out[62..78], &v6("fd00:b::1").octets());
        assert!(icmp6_ok(&out));
        // B advertises itself.
        let mut na = vec![136, 0, 0, 0, 0x60, 0, 0, 0];
        na.extend(v6("fd00:b::1").octets());
        na.extend([2, 1]);
        na.extend(B.as_bytes());
        let mut f = ipv6(RMAC, B, "fd00:b::1", "fd00:b::fe", 58, 255, &na);
        r.input(vid(20), &mut f, 14, 2, &mut out);
        assert_eq!(r.neighbour6(1, v6("fd00:b::1")), Some(B));
        let mut f = pkt.clone();
        assert_eq!(
            r.input(vid(10), &mut f, 14, 3, &mut out),
            Verdict::Forward { vid: vid(20) }
        );
        assert_eq!(&f[0..6], B.as_bytes());
        assert_eq!(&f[6..12], RMAC.as_bytes());
        assert_eq!(f[21], 63, "hop limit");
        assert_eq!(
            &f[22..],
            &{
                let mut p = pkt.clone();
                p[21] = 63;
                p
            }[22..]
        );
        // Hop limit 1: time exceeded back to A.
        let mut f = ipv6(RMAC, A, "fd00:a::1", "fd00:b::1", 17, 1, &[7u8; 10]);
        let v = r.input(vid(10), &mut f, 14, 4, &mut out);
        assert!(matches!(v, Verdict::Reply { .. }), "{v:?}");
        assert_eq!(out[54], 3, "time exceeded");
        assert_eq!(&out[38..54], &v6("fd00:a::1").octets());
        assert!(icmp6_ok(&out));
    }

    #[test]
    fn answers_ipv6_pings_and_drops_garbage() {
        let mut r = router6();
        let mut out = [0u8; GEN_MAX];
        let echo = [128, 0, 0, 0, 0x12, 0x34, 0, 1, b'h', b'i'];
        let mut f = ipv6(RMAC, A, "fd00:a::1", "fd00:a::fe", 58, 64, &echo);
        assert!(matches!(
            r.input(vid(10), &mut f, 14, 0, &mut out),
            Verdict::Reply { .. }
        ));
        assert_eq!(out[54], 129);
        assert_eq!(&out[58..64], &[0x12, 0x34, 0, 1, b'h', b'i']);
        assert!(icmp6_ok(&out));
        let good = ipv6(RMAC, A, "fd00:a::1", "fd00:b::1", 17, 64, &[0; 8]);
        for cut in 0..good.len() {
            let mut f = good[..cut].to_vec();
            let _ = r.input(vid(10), &mut f, 14, 0, &mut out);
        }
        let mut f = ipv6(RMAC, A, "fd00:a::1", "2001:db8::1", 17, 64, &[0; 8]);
        assert_eq!(
            r.input(vid(10), &mut f, 14, 0, &mut out),
            Verdict::Drop(RouteDrop::NoRoute)
        );
    }

    #[test]
    fn only_frames_to_the_interface_mac_are_routed() {
        let mut r = router6();
        let mut out = [0u8; GEN_MAX];
        // Learn B on both families first.
        let mut arp = arp_req(B, [10, 0, 1, 1], [10, 0, 1, 254]);
        r.input(vid(20), &mut arp, 14, 0, &mut out);
        // The same packet sent to a multicast or another MAC (flooded on its VLAN): never
        // forwarded to VLAN 20.
        for dmac in [
            EthernetAddress([0x33, 0x33, 0xff, 0, 0, 0xfe]),
            EthernetAddress::BROADCAST,
            A,
        ] {
            let mut f = ipv4(dmac, A, [10, 0, 0, 1], [10, 0, 1, 1], 64);
            let orig = f.clone();
            assert_eq!(
                r.input(vid(10), &mut f, 14, 1, &mut out),
                Verdict::Drop(RouteDrop::ForUs)
            );
            assert_eq!(f, orig, "the head was not touched");
        }
    }

    #[test]
    fn neighbour_messages_with_a_bad_checksum_are_ignored() {
        let mut r = router6();
        let mut out = [0u8; GEN_MAX];
        let mut ns = vec![135, 0, 0, 0, 0, 0, 0, 0];
        ns.extend(v6("fd00:a::fe").octets());
        ns.extend([1, 1]);
        ns.extend(A.as_bytes());
        let snm = EthernetAddress([0x33, 0x33, 0xff, 0, 0, 0xfe]);
        let mut f = ipv6(snm, A, "fd00:a::1", "ff02::1:ff00:fe", 58, 255, &ns);
        f[57] ^= 1;
        assert_eq!(
            r.input(vid(10), &mut f, 14, 0, &mut out),
            Verdict::Drop(RouteDrop::Malformed)
        );
        // Cut short: cannot be checked, ignored too.
        let mut f = ipv6(snm, A, "fd00:a::1", "ff02::1:ff00:fe", 58, 255, &ns);
        f.truncate(70);
        assert_eq!(
            r.input(vid(10), &mut f, 14, 0, &mut out),
            Verdict::Drop(RouteDrop::Malformed)
        );
    }

    #[test]
    fn advertisements_for_someone_else_are_not_learned() {
        let mut r = router6();
        let mut out = [0u8; GEN_MAX];
        // B advertises A's... no: B (fd00:b::2) claims fd00:b::1.
        let mut na = vec![136, 0, 0, 0, 0x60, 0, 0, 0];
        na.extend(v6("fd00:b::1").octets());
        let mut f = ipv6(RMAC, B, "fd00:b::2", "fd00:b::fe", 58, 255, &na);
        r.input(vid(20), &mut f, 14, 0, &mut out);
        assert_eq!(r.neighbour6(1, v6("fd00:b::1")), None);
        // Nor is the router's own address, however asked.
        let mut na = vec![136, 0, 0, 0, 0x60, 0, 0, 0];
        na.extend(v6("fd00:b::fe").octets());
        let mut f = ipv6(RMAC, B, "fd00:b::fe", "fd00:b::fe", 58, 255, &na);
        r.input(vid(20), &mut f, 14, 0, &mut out);
        assert_eq!(r.neighbour6(1, v6("fd00:b::fe")), None);
        let mut f = arp_req(B, [10, 0, 1, 254], [10, 0, 1, 254]);
        r.input(vid(20), &mut f, 14, 0, &mut out);
        assert_eq!(r.neighbour(1, Ipv4Addr::new(10, 0, 1, 254)), None);
    }

    #[test]
    fn martians_are_not_routed() {
        let mut r = router6();
        let mut out = [0u8; GEN_MAX];
        for (src, dst) in [
            ([0, 0, 0, 0], [10, 0, 1, 1]),
            ([10, 0, 0, 1], [255, 255, 255, 255]),
            ([10, 0, 0, 1], [127, 0, 0, 1]),
            ([10, 0, 0, 1], [224, 0, 0, 5]),
            ([10, 0, 0, 1], [169, 254, 1, 1]),
        ] {
            let mut f = ipv4(RMAC, A, src, dst, 64);
            assert_eq!(
                r.input(vid(10), &mut f, 14, 0, &mut out),
                Verdict::Drop(RouteDrop::Malformed),
                "{src:?} -> {dst:?}"
            );
        }
        for (src, dst) in [
            ("fe80::1", "fd00:b::1"),
            ("fd00:a::1", "fe80::2"),
            ("::", "fd00:b::1"),
        ] {
            let mut f = ipv6(RMAC, A, src, dst, 17, 64, &[0; 8]);
            assert_eq!(
                r.input(vid(10), &mut f, 14, 0, &mut out),
                Verdict::Drop(RouteDrop::Malformed),
                "{src} -> {dst}"
            );
        }
    }

    #[test]
    fn a_prefix_sweep_gets_a_bounded_number_of_solicitations() {
        let mut r = router();
        let mut out = [0u8; GEN_MAX];
        let mut asked = 0;
        for host in 1..=200u8 {
            let mut f = ipv4(RMAC, A, [10, 0, 0, 1], [10, 0, 1, host], 64);
            if matches!(
                r.input(vid(10), &mut f, 14, 1000, &mut out),
                Verdict::Reply { .. }
            ) {
                asked += 1;
            }
        }
        assert_eq!(asked, SOLICIT_BURST as usize);
        // A second later the budget has refilled a little.
        let mut f = ipv4(RMAC, A, [10, 0, 0, 1], [10, 0, 1, 250], 64);
        assert!(matches!(
            r.input(vid(10), &mut f, 14, 1_000_001_000, &mut out),
            Verdict::Reply { .. }
        ));
    }

    #[test]
    fn answers_pings_to_the_other_interfaces_v6_address() {
        let mut r = router6();
        let mut out = [0u8; GEN_MAX];
        let echo = [128, 0, 0, 0, 0, 1, 0, 1];
        let mut f = ipv6(RMAC, A, "fd00:a::1", "fd00:b::fe", 58, 64, &echo);
        assert!(
            matches!(r.input(vid(10), &mut f, 14, 0, &mut out), Verdict::Reply { vid: v, .. } if v == vid(10))
        );
        assert_eq!(out[54], 129);
        assert_eq!(
            &out[22..38],
            &v6("fd00:b::fe").octets(),
            "answered from the address asked"
        );
    }

    #[test]
    fn lpm_picks_the_longest_prefix() {
        let mut t = Lpm4::new();
        t.insert([10, 0, 0, 0].into(), 8, 1);
        t.insert([10, 1, 0, 0].into(), 16, 2);
        t.insert([10, 1, 2, 0].into(), 24, 3);
        t.insert([0, 0, 0, 0].into(), 0, 9);
        assert_eq!(t.lookup([10, 1, 2, 3].into()), Some(3));
        assert_eq!(t.lookup([10, 1, 3, 3].into()), Some(2));
        assert_eq!(t.lookup([10, 2, 0, 1].into()), Some(1));
        assert_eq!(t.lookup([11, 0, 0, 1].into()), Some(9));
        assert_eq!(t.len(), 4);
    }
}
