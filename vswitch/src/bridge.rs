//! An 802.1Q learning bridge: the per-frame forwarding decision and the port table.
//!
//! # Contract
//!
//! [`Bridge::forward`] takes one received frame and the port it came from, and calls
//! `out(port, edit)` once for every port the frame must be sent to, with the
//! [`VlanEdit`] that turns the ingress tagging into the egress tagging. It never touches
//! packet memory besides reading `frame`, allocates nothing, takes no lock and makes no
//! system call. It returns how the frame was forwarded or why it was dropped; every drop
//! is counted under its [`DropReason`].
//!
//! The decision, in order:
//!
//! 1. the ingress port must exist ([`DropReason::UnknownPort`]) and be up
//!    ([`DropReason::PortDown`]); then its rx counters count the frame;
//! 2. the frame must hold an Ethernet header ([`DropReason::TooShort`]) and, if tagged,
//!    the whole tag ([`DropReason::MalformedTag`]); an S-tag (TPID 0x88a8) or a second
//!    tag is [`DropReason::QinQ`] on every port (see below);
//! 3. the source MAC must be unicast and not zero ([`DropReason::BadSrcMac`]); the
//!    destination must not be an IEEE 802.1D reserved group address
//!    `01:80:c2:00:00:0x` (STP, pause, LACP, 802.1X), which bridges do not forward
//!    ([`DropReason::ReservedDst`]);
//! 4. the VLAN is classified by the ingress port's [`VlanMode`]:
//!
//!    | ingress port            | untagged frame                  | tagged, VLAN id `v`                     |
//!    |-------------------------|---------------------------------|-----------------------------------------|
//!    | `Access { vid }`        | `vid`                           | [`DropReason::TaggedOnAccess`]          |
//!    | `Trunk { allowed, native }` | `native`, else [`DropReason::NoNativeVlan`] | `v` if `v` ∈ `allowed` or `v` = `native`, else [`DropReason::VlanNotAllowed`] |
//!
//!    A priority tag (VLAN id 0) or VLAN id 4095 is never a member, so it is dropped as
//!    a tag that is not allowed: forwarding it would need a tag rewrite, which
//!    [`VlanEdit`] cannot express;
//! 5. `(vlan, source MAC)` is learned on the ingress port (a full table refuses and
//!    counts, see [`crate::fdb`]; the frame is still forwarded);
//! 6. a unicast destination that is known and live in that VLAN goes to its port —
//!    unless that is the ingress port ([`DropReason::SamePort`]); if the known port is
//!    not a member of the VLAN (anymore) the frame is flooded;
//! 7. everything else (unknown unicast, multicast, broadcast) is flooded to every port
//!    that is up and a member of the VLAN, except the ingress port (split horizon). A
//!    flood that reaches no port is [`DropReason::NoEgress`].
//!
//! Egress tagging: a port sends VLAN `v` untagged when it is an access port, or a trunk
//! whose native VLAN is `v`; otherwise tagged. The edit is [`VlanEdit::Keep`] when
//! ingress and egress agree, [`VlanEdit::Pop`] from tagged to untagged, and
//! [`VlanEdit::Push`] with TCI `pcp << 13 | v` from untagged to tagged. Since the bridge
//! never translates VLAN ids, a tagged-to-tagged frame keeps its original tag, PCP and
//! DEI included; an untagged ingress frame has no priority to keep and is pushed with
//! PCP 0.
//!
//! # QinQ
//!
//! This is a customer-VLAN (802.1Q) bridge: it switches on one tag. A frame whose outer
//! TPID is 0x88a8, or whose first tag encapsulates another TPID (0x8100 or 0x88a8), is
//! dropped as [`DropReason::QinQ`] on access ports *and on trunks*. Forwarding such a
//! frame on a trunk would let a sender on the native VLAN have its outer tag popped on a
//! native-VLAN egress and its inner tag interpreted by the next switch (the classic
//! double-tagging VLAN hop). A provider-bridge mode (S-VLAN trunks) would need a tag
//! edit that rewrites the outer TPID.
//!
//! # Counters
//!
//! Per port: rx frames/bytes (every frame accepted by an existing, up port, before any
//! other check) and tx frames/bytes (every copy handed to `out`, with the length after
//! its edit; whether the port then manages to send it is the port's business). Per
//! bridge: unicast and flood decisions, and one counter per [`DropReason`].
//!
//! # Cores
//!
//! A `Bridge` has a single owner and no interior synchronisation. Each polling core owns
//! a replica built from the same port configuration. A replica logs what it learns that
//! changes its table ([`Bridge::log_learnt`], [`Bridge::take_learnt`]); the switch hands
//! those keys to the other cores, whose replicas take them in with
//! [`Bridge::learn_shared`] (only for a port that is up and a member of the VLAN there).
#![forbid(unsafe_code)]

use core::fmt;

use pmd::port::{RxBatch, TxSel, BURST};
use pmd::VlanEdit;

use crate::fdb::{Fdb, FdbError};
use std::net::IpAddr;

use crate::wire::{ArpPacket, EtherType, EthernetAddress, EthernetFrame, Tci, VlanTag};

/// The largest `max_ports` a bridge accepts.
pub const MAX_PORTS: u16 = 1024;

/// Number of 12-bit VLAN ids (including the reserved 0 and 4095).
const VLAN_IDS: usize = 4096;

/// A bridge port, a small dense integer below the bridge's `max_ports`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortId(pub u16);

impl fmt::Display for PortId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A usable VLAN id: 1..=4094 (0 marks a priority tag and 4095 is reserved).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Vid(u16);

impl Vid {
    /// The lowest usable VLAN id.
    pub const MIN: Vid = Vid(1);
    /// The highest usable VLAN id.
    pub const MAX: Vid = Vid(4094);

    /// `raw` as a VLAN id, if it is in 1..=4094.
    pub const fn new(raw: u16) -> Option<Vid> {
        if raw >= Self::MIN.0 && raw <= Self::MAX.0 {
            Some(Vid(raw))
        } else {
            None
        }
    }

    /// The numeric id.
    pub const fn get(self) -> u16 {
        self.0
    }
}

impl TryFrom<u16> for Vid {
    type Error = BridgeError;

    fn try_from(raw: u16) -> Result<Vid, BridgeError> {
        Vid::new(raw).ok_or(BridgeError::InvalidVid(raw))
    }
}

impl fmt::Display for Vid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A set of VLAN ids, as a 4096-bit bitmap.
#[derive(Clone, PartialEq, Eq)]
pub struct VlanSet {
    bits: [u64; VLAN_IDS / 64],
}

impl VlanSet {
    /// The empty set.
    pub const fn new() -> VlanSet {
        VlanSet {
            bits: [0; VLAN_IDS / 64],
        }
    }

    /// Every usable VLAN id, 1..=4094.
    pub fn all() -> VlanSet {
        Self::range(Vid::MIN, Vid::MAX)
    }

    /// The ids from `first` to `last` inclusive.
    pub fn range(first: Vid, last: Vid) -> VlanSet {
        let mut set = VlanSet::new();
        for raw in first.0..=last.0 {
            set.insert(Vid(raw));
        }
        set
    }

    /// Adds `vid`; returns whether it was absent.
    pub fn insert(&mut self, vid: Vid) -> bool {
        let (w, bit) = Self::pos(vid.0);
        let absent = self.bits[w] & bit == 0;
        self.bits[w] |= bit;
        absent
    }

    /// Removes `vid`; returns whether it was present.
    pub fn remove(&mut self, vid: Vid) -> bool {
        let (w, bit) = Self::pos(vid.0);
        let present = self.bits[w] & bit != 0;
        self.bits[w] &= !bit;
        present
    }

    /// True when `vid` is in the set.
    pub fn contains(&self, vid: Vid) -> bool {
        let (w, bit) = Self::pos(vid.0);
        self.bits[w] & bit != 0
    }

    /// Number of ids in the set.
    pub fn len(&self) -> usize {
        self.bits.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// True when the set is empty.
    pub fn is_empty(&self) -> bool {
        self.bits.iter().all(|&w| w == 0)
    }

    /// The ids in increasing order.
    pub fn iter(&self) -> impl Iterator<Item = Vid> + '_ {
        (Vid::MIN.0..=Vid::MAX.0)
            .map(Vid)
            .filter(|&v| self.contains(v))
    }

    /// Word index and bit of a 12-bit id (callers pass ids below 4096).
    fn pos(raw: u16) -> (usize, u64) {
        let raw = usize::from(raw) % VLAN_IDS;
        (raw / 64, 1u64 << (raw % 64))
    }
}

impl Default for VlanSet {
    fn default() -> Self {
        VlanSet::new()
    }
}

impl FromIterator<Vid> for VlanSet {
    fn from_iter<I: IntoIterator<Item = Vid>>(iter: I) -> Self {
        let mut set = VlanSet::new();
        for v in iter {
            set.insert(v);
        }
        set
    }
}

/// Compact ranges, e.g. `{1-9, 20, 30-31}`.
impl fmt::Debug for VlanSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("{")?;
        let mut first = true;
        let mut run: Option<(u16, u16)> = None;
        let mut flush = |f: &mut fmt::Formatter<'_>, (a, b): (u16, u16)| {
            let sep = if first { "" } else { ", " };
            first = false;
            if a == b {
                write!(f, "{sep}{a}")
            } else {
                write!(f, "{sep}{a}-{b}")
            }
        };
        for v in self.iter() {
            run = match run {
                Some((a, b)) if b + 1 == v.0 => Some((a, v.0)),
                Some(r) => {
                    flush(f, r)?;
                    Some((v.0, v.0))
                }
                None => Some((v.0, v.0)),
            };
        }
        if let Some(r) = run {
            flush(f, r)?;
        }
        f.write_str("}")
    }
}

/// How a port maps frames to VLANs.
#[derive(Clone, Debug, PartialEq, Eq)]
#[expect(
    clippy::large_enum_variant,
    reason = "one per port, read in place on the fast path; a box would add a pointer chase"
)]
pub enum VlanMode {
    /// Untagged frames belong to `vid`; tagged frames are dropped; egress is untagged.
    Access {
        /// The port's VLAN.
        vid: Vid,
    },
    /// Tagged frames of `allowed` VLANs (and of `native`) are accepted and sent tagged;
    /// untagged frames belong to `native` (dropped without one), which is sent untagged.
    Trunk {
        /// VLANs carried tagged.
        allowed: VlanSet,
        /// The VLAN of untagged frames, itself always a member.
        native: Option<Vid>,
    },
}

impl VlanMode {
    /// True when the port carries `vid`.
    pub fn is_member(&self, vid: Vid) -> bool {
        match self {
            VlanMode::Access { vid: own } => *own == vid,
            VlanMode::Trunk { allowed, native } => allowed.contains(vid) || *native == Some(vid),
        }
    }

    /// True when the port sends `vid` without a tag.
    pub fn egress_untagged(&self, vid: Vid) -> bool {
        match self {
            VlanMode::Access { vid: own } => *own == vid,
            VlanMode::Trunk { native, .. } => *native == Some(vid),
        }
    }
}

/// Why [`Bridge::forward`] dropped a frame.
///
/// The order of [`DropReason::ALL`] and the [`as_str`](DropReason::as_str) names are
/// stable (they are metric labels); new reasons are only ever appended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// The ingress port is not configured.
    UnknownPort,
    /// The ingress port's link is down.
    PortDown,
    /// Shorter than an Ethernet header (14 bytes).
    TooShort,
    /// A VLAN TPID not followed by a complete tag.
    MalformedTag,
    /// An S-tag (0x88a8) or stacked tags.
    QinQ,
    /// A tagged frame on an access port.
    TaggedOnAccess,
    /// A tag whose VLAN the trunk does not carry (including priority tags, VLAN 0).
    VlanNotAllowed,
    /// An untagged frame on a trunk without a native VLAN.
    NoNativeVlan,
    /// A multicast, broadcast or all-zero source MAC.
    BadSrcMac,
    /// A destination in `01:80:c2:00:00:00`–`0f`, which bridges must not forward.
    ReservedDst,
    /// The destination MAC was learned on the ingress port (hairpin).
    SamePort,
    /// A flood with no member port besides the ingress one.
    NoEgress,
    /// Port security: a source MAC that is not the port's.
    SpoofedMac,
    /// Port security: an IPv4 or IPv6 source address that is not the port's.
    SpoofedIp,
    /// Port security: an ARP packet whose sender MAC or IPv4 address is not the port's
    /// (or that is too short to tell).
    SpoofedArp,
    /// A security group of the egress port allows none of this traffic (counted once
    /// per port that refused a copy).
    SecurityGroup,
    /// Port security: an IPv6 neighbour-discovery message the port may not send (an
    /// advertisement for an address that is not the port's, a link-layer address option
    /// that is not its MAC, a router advertisement or redirect from a port that is not a
    /// router), or one that cannot be checked (fragmented, not whole in the private
    /// copy, behind extension headers the check does not follow).
    SpoofedNd,
    /// Between two ports of the split-horizon group (tunnels to other nodes): each
    /// node delivers to its own ports, so a frame from one tunnel never leaves by
    /// another.
    SplitHorizon,
    /// A security group of the ingress port allows none of what it sends (egress rules).
    SecurityGroupEgress,
}

impl DropReason {
    /// Every reason, in the stable order.
    pub const ALL: [DropReason; 19] = [
        DropReason::UnknownPort,
        DropReason::PortDown,
        DropReason::TooShort,
        DropReason::MalformedTag,
        DropReason::QinQ,
        DropReason::TaggedOnAccess,
        DropReason::VlanNotAllowed,
        DropReason::NoNativeVlan,
        DropReason::BadSrcMac,
        DropReason::ReservedDst,
        DropReason::SamePort,
        DropReason::NoEgress,
        DropReason::SpoofedMac,
        DropReason::SpoofedIp,
        DropReason::SpoofedArp,
        DropReason::SecurityGroup,
        DropReason::SpoofedNd,
        DropReason::SplitHorizon,
        DropReason::SecurityGroupEgress,
    ];

    /// Number of reasons.
    pub const COUNT: usize = Self::ALL.len();

    /// A stable snake_case name, for the CLI and metric labels.
    pub const fn as_str(self) -> &'static str {
        match self {
            DropReason::UnknownPort => "unknown_port",
            DropReason::PortDown => "port_down",
            DropReason::TooShort => "too_short",
            DropReason::MalformedTag => "malformed_tag",
            DropReason::QinQ => "qinq",
            DropReason::TaggedOnAccess => "tagged_on_access",
            DropReason::VlanNotAllowed => "vlan_not_allowed",
            DropReason::NoNativeVlan => "no_native_vlan",
            DropReason::BadSrcMac => "bad_src_mac",
            DropReason::ReservedDst => "reserved_dst",
            DropReason::SamePort => "same_port",
            DropReason::NoEgress => "no_egress",
            DropReason::SpoofedMac => "spoofed_mac",
            DropReason::SpoofedIp => "spoofed_ip",
            DropReason::SpoofedArp => "spoofed_arp",
            DropReason::SecurityGroup => "security_group",
            DropReason::SpoofedNd => "spoofed_nd",
            DropReason::SplitHorizon => "split_horizon",
            DropReason::SecurityGroupEgress => "security_group_egress",
        }
    }

    /// Position in [`DropReason::ALL`].
    pub const fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One counter per [`DropReason`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DropCounters([u64; DropReason::COUNT]);

impl DropCounters {
    /// Frames dropped for `reason`.
    pub fn get(&self, reason: DropReason) -> u64 {
        self.0[reason.index()]
    }

    /// Frames dropped for any reason.
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    /// `(reason, count)` for every reason, in the stable order.
    pub fn iter(&self) -> impl Iterator<Item = (DropReason, u64)> + '_ {
        DropReason::ALL.into_iter().map(|r| (r, self.get(r)))
    }

    fn bump(&mut self, reason: DropReason) {
        self.0[reason.index()] += 1;
    }
}

/// Bridge-wide counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BridgeCounters {
    /// Frames sent to one known port.
    pub unicast: u64,
    /// Frames flooded to at least one port.
    pub floods: u64,
    /// Frames handed to the router.
    pub routed: u64,
    /// Dropped frames by reason.
    pub drops: DropCounters,
}

/// Per-port counters, reset when the port is (re-)added.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortCounters {
    /// Frames received on the port (while up).
    pub rx_frames: u64,
    /// Their bytes.
    pub rx_bytes: u64,
    /// Frames the bridge handed to the port for sending.
    pub tx_frames: u64,
    /// Their bytes after the VLAN edit.
    pub tx_bytes: u64,
}

/// How [`Bridge::forward`] forwarded a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Forwarded {
    /// To the one port its destination was learned on.
    Unicast(PortId),
    /// To every other member port of its VLAN.
    Flooded {
        /// How many ports (at least 1).
        copies: u16,
    },
    /// To the router: unicast to a router interface MAC (nothing was emitted), or a
    /// broadcast ARP on a routed VLAN (flooded as usual too). The caller passes it to
    /// [`crate::router::Router::input`].
    Routed {
        /// The frame's VLAN.
        vid: Vid,
        /// Offset of its L3 header (14, or 18 behind a tag).
        l3: u8,
        /// The frame was flooded on its VLAN as well: the router must read a copy and
        /// never forward it.
        flooded: bool,
    },
}

/// The `out` callback of the forwarding methods for frame `idx` of a burst: appends each
/// copy to `staging[port]` (a port beyond `staging` gets nothing).
pub fn stage_into(staging: &mut [Vec<TxSel>], idx: usize) -> impl FnMut(PortId, VlanEdit) + '_ {
    move |out: PortId, edit| {
        if let Some(s) = staging.get_mut(usize::from(out.0)) {
            s.push(TxSel {
                idx: idx as u16,
                edit,
            });
        }
    }
}

/// A frame of a burst that the L2 stage hands to the router (see
/// [`Bridge::forward_burst`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ToRouter {
    /// Its index in the burst.
    pub idx: u16,
    /// Its VLAN.
    pub vid: Vid,
    /// Offset of its L3 header (14, or 18 behind a tag).
    pub l3: u8,
    /// It was flooded on its VLAN as well: the router must read a copy and never
    /// forward it.
    pub flooded: bool,
}

/// Errors of the control-plane methods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BridgeError {
    /// `max_ports` outside 1..=[`MAX_PORTS`].
    #[error("bridge max_ports {requested} is not in 1..={max}")]
    MaxPorts {
        /// The value asked for.
        requested: u16,
        /// The limit.
        max: u16,
    },
    /// A port id at or above `max_ports`.
    #[error("port {port} is out of range: the bridge has max_ports {max_ports}")]
    PortOutOfRange {
        /// The port.
        port: PortId,
        /// The bridge's limit.
        max_ports: u16,
    },
    /// `add_port` of a port that exists.
    #[error("port {0} already exists")]
    PortExists(PortId),
    /// An operation on a port that does not exist.
    #[error("port {0} does not exist")]
    NoSuchPort(PortId),
    /// A VLAN id outside 1..=4094.
    #[error("VLAN id {0} is not in 1..=4094")]
    InvalidVid(u16),
    /// The forwarding database could not be created.
    #[error("forwarding database: {0}")]
    Fdb(#[from] FdbError),
}

/// Sizes of a bridge, fixed at construction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BridgeConfig {
    /// Port ids range over `0..max_ports` (at most [`MAX_PORTS`]).
    pub max_ports: u16,
    /// FDB entries (rounded up to a power of two).
    pub fdb_capacity: usize,
    /// FDB ageing limit, in the unit of the `now` passed to [`Bridge::forward`].
    pub fdb_max_age: u64,
}

impl Default for BridgeConfig {
    /// 256 ports, 8192 MACs, 300 s ageing with `now` in nanoseconds.
    fn default() -> Self {
        BridgeConfig {
            max_ports: 256,
            fdb_capacity: 8192,
            fdb_max_age: 300_000_000_000,
        }
    }
}

/// Port security (what Neutron calls it): the only MAC and IP addresses a port may send
/// from. With it, a frame is dropped when its source MAC is not `mac`
/// ([`DropReason::SpoofedMac`]), an IPv4 or IPv6 packet when its source is not one of
/// `ips` ([`DropReason::SpoofedIp`]), an ARP packet when its sender is not `mac` and
/// one of `ips` ([`DropReason::SpoofedArp`]), and an IPv6 neighbour-discovery message
/// that speaks for an address or MAC that is not the port's, or a router advertisement
/// or redirect from a port that is not a router ([`DropReason::SpoofedNd`]; the rules are
/// in the `nd` module's documentation). Allowed besides: `0.0.0.0` for DHCP requests
/// and ARP probes, `::` for duplicate address detection, router solicitations and MLD
/// reports, and the port's EUI-64 link-local address derived from `mac` (as a source and
/// as a neighbour advertisement's target). Other EtherTypes pass the MAC check only.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortSecurity {
    /// The port's MAC.
    pub mac: EthernetAddress,
    /// The port's addresses; empty: any address (the MAC is still checked).
    pub ips: Vec<IpAddr>,
    /// The port's peer is an IPv6 router: it may send router advertisements and
    /// redirects, which are dropped from every other port.
    pub router: bool,
}

impl PortSecurity {
    /// With no addresses, only the MAC is checked (any address passes).
    fn allows(&self, ip: IpAddr) -> bool {
        self.ips.is_empty() || self.ips.contains(&ip)
    }

    /// The port's EUI-64 IPv6 link-local address (what Linux configures by default).
    fn link_local(&self) -> std::net::Ipv6Addr {
        eui64_link_local(self.mac)
    }

    /// Checks a frame from this port; `l3` is the offset of its L3 header.
    fn check(&self, src: EthernetAddress, frame: &[u8], l3: usize) -> Result<(), DropReason> {
        if src != self.mac {
            return Err(DropReason::SpoofedMac);
        }
        let ethertype = frame
            .get(l3 - 2..l3)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
            .unwrap_or(0);
        let l3 = frame.get(l3..).unwrap_or(&[]);
        let field = |r: std::ops::Range<usize>| l3.get(r);
        match ethertype {
            0x0800 => {
                let a = field(12..16)
                    .and_then(|b| <[u8; 4]>::try_from(b).ok())
                    .ok_or(DropReason::SpoofedIp)?;
                let a = std::net::Ipv4Addr::from(a);
                // 0.0.0.0 only for a DHCP request (UDP to port 67).
                let ihl = usize::from(l3[0] & 0xf) * 4;
                let dhcp = l3.get(9) == Some(&17) && field(ihl + 2..ihl + 4) == Some(&[0, 67][..]);
                let ok = self.allows(IpAddr::V4(a)) || (a.is_unspecified() && dhcp);
                if l3[0] >> 4 != 4 || !ok {
                    return Err(DropReason::SpoofedIp);
                }
            }
            // The source, and neighbour discovery (`nd`).
            0x86dd => nd::check(self, l3)?,
            0x0806 => {
                let arp = ArpPacket::new_checked(l3).map_err(|_| DropReason::SpoofedArp)?;
                if !arp.is_ethernet_ipv4() || arp.source_hardware_addr() != self.mac.as_bytes() {
                    return Err(DropReason::SpoofedArp);
                }
                let spa = <[u8; 4]>::try_from(arp.source_protocol_addr())
                    .map_err(|_| DropReason::SpoofedArp)?;
                // 0.0.0.0: an ARP probe (RFC 5227).
                if spa != [0; 4] && !self.allows(IpAddr::from(spa)) {
                    return Err(DropReason::SpoofedArp);
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// What a security-group rule matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuleProto {
    /// Any IP protocol.
    Any,
    /// TCP, optionally destination ports `first..=last`.
    Tcp(Option<(u16, u16)>),
    /// UDP, optionally destination ports `first..=last`.
    Udp(Option<(u16, u16)>),
    /// ICMP (IPv4) and ICMPv6.
    Icmp,
}

/// One allow rule: protocol (and destination ports), and the remote prefix: the source
/// of an ingress rule, the destination of an egress rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FilterRule {
    /// Protocol and ports.
    pub proto: RuleProto,
    /// Remote prefix; `None` is anywhere.
    pub src: Option<(IpAddr, u8)>,
}

/// One security group's rules in one direction, stateless (the rules alone decide):
/// with `default_deny`, an IP packet must match one of `rules`; ARP and IPv6 neighbour
/// discovery (ICMPv6 133–137 with hop limit 255) always pass; other EtherTypes are
/// dropped. The exemption trusts what port security let in: the sender's port checked
/// its ARP and neighbour discovery before any group is asked, so from a port with port
/// security only its own addresses get through; a port without it is trusted with any.
/// Without `default_deny` everything passes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IngressFilter {
    /// Drop what no rule allows.
    pub default_deny: bool,
    /// Allow rules.
    pub rules: Vec<FilterRule>,
}

/// A port's security groups: each group's ingress (what the port is sent) and egress
/// (what it sends) rules, kept per group: a packet passes a direction when any group
/// lets it pass there (their union, as in Neutron).
///
/// **Stateful** (all of the port's groups are, or none): a packet that a rule lets
/// through where every group denies by default asks the switch to create a session
/// ([`Track::commit`]); the packets of a live session, both ways, pass the port's checks
/// without a rule scan ([`Track::est`]), so replies need no rules. **Stateless**: every
/// packet is held to the rules.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortFilter {
    /// Sessions let replies through.
    pub stateful: bool,
    /// The groups.
    pub groups: Vec<GroupFilter>,
}

/// One security group of a port.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupFilter {
    /// What the port is sent.
    pub ingress: IngressFilter,
    /// What the port sends (rules match the destination).
    pub egress: IngressFilter,
}

impl From<IngressFilter> for PortFilter {
    /// One stateless group with these ingress rules, allowing all egress.
    fn from(f: IngressFilter) -> PortFilter {
        PortFilter {
            stateful: false,
            groups: vec![GroupFilter {
                ingress: f,
                egress: IngressFilter::default(),
            }],
        }
    }
}

/// A frame's session, as the switch's session stage found it, and what the bridge's
/// checks ask of it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Track {
    /// The frame belongs to a live session: stateful ports let it pass unchecked.
    pub est: bool,
    /// A stateful port's rule let it through: the switch creates its session.
    pub commit: bool,
    /// It was sent to at least one port.
    pub sent: bool,
    /// The bridge took it (port security and the ingress port's checks passed): sent,
    /// or handed to the router. Only such a frame may change its session.
    pub passed: bool,
}

/// What the filter looks at, parsed once per frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum L4 {
    /// ARP or neighbour discovery: always allowed.
    Control,
    /// An IP packet: protocol, source, destination, destination port (TCP/UDP, when in
    /// the head).
    Ip(u8, IpAddr, IpAddr, Option<u16>),
    /// Anything else.
    Other,
}

fn l4_of(frame: &[u8], l3: usize) -> L4 {
    let Some(t) = frame.get(l3.wrapping_sub(2)..l3) else {
        return L4::Other;
    };
    let p = frame.get(l3..).unwrap_or(&[]);
    let port_at = |at: usize| p.get(at..at + 2).map(|b| u16::from_be_bytes([b[0], b[1]]));
    match [t[0], t[1]] {
        [0x08, 0x06] => L4::Control,
        [0x08, 0x00] if p.len() >= 20 && p[0] >> 4 == 4 => {
            let ihl = usize::from(p[0] & 0xf) * 4;
            let proto = p[9];
            let src = IpAddr::from([p[12], p[13], p[14], p[15]]);
            let dst = IpAddr::from([p[16], p[17], p[18], p[19]]);
            let dport = matches!(proto, 6 | 17).then(|| port_at(ihl + 2)).flatten();
            L4::Ip(proto, src, dst, dport)
        }
        [0x86, 0xdd] if p.len() >= 40 && p[0] >> 4 == 6 => {
            let next = p[6];
            // Neighbour discovery is valid only with hop limit 255 (RFC 4861): a message
            // that crossed a router is not exempt. A sender with port security could
            // send only its own (`nd`).
            if next == 58 && p[7] == 255 && p.get(40).is_some_and(|t| (133..=137).contains(t)) {
                return L4::Control;
            }
            let mut a = [0u8; 16];
            a.copy_from_slice(&p[8..24]);
            let mut d = [0u8; 16];
            d.copy_from_slice(&p[24..40]);
            let dport = matches!(next, 6 | 17).then(|| port_at(42)).flatten();
            L4::Ip(next, IpAddr::from(a), IpAddr::from(d), dport)
        }
        _ => L4::Other,
    }
}

fn prefix_contains(net: IpAddr, len: u8, a: IpAddr) -> bool {
    use crate::router::PrefixAddr;
    match (net, a) {
        (IpAddr::V4(n), IpAddr::V4(a)) => n.masked(len) == a.masked(len),
        (IpAddr::V6(n), IpAddr::V6(a)) => n.masked(len) == a.masked(len),
        _ => false,
    }
}

impl IngressFilter {
    /// Whether a rule matches `l4` (`egress`: rules name the destination).
    fn matches(&self, l4: L4, egress: bool) -> bool {
        let L4::Ip(proto, src, dst, dport) = l4 else {
            return l4 == L4::Control;
        };
        let remote = if egress { dst } else { src };
        let in_range = |r: Option<(u16, u16)>| match r {
            None => true,
            Some((a, b)) => dport.is_some_and(|p| (a..=b).contains(&p)),
        };
        self.rules.iter().any(|r| {
            let proto_ok = match r.proto {
                RuleProto::Any => true,
                RuleProto::Tcp(ports) => proto == 6 && in_range(ports),
                RuleProto::Udp(ports) => proto == 17 && in_range(ports),
                RuleProto::Icmp => proto == 1 || proto == 58,
            };
            proto_ok && r.src.is_none_or(|(n, l)| prefix_contains(n, l, remote))
        })
    }
}

/// A check's outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Check {
    /// Dropped.
    Deny,
    /// Passed; `true`: by a stateful rule, so the conversation needs a session.
    Pass(bool),
}

impl PortFilter {
    /// Whether it can drop anything (a direction where every group denies by default).
    pub fn filters(&self) -> bool {
        self.guards(false) || self.guards(true)
    }

    /// Whether every group denies by default in that direction (otherwise the union of
    /// the groups lets everything pass).
    fn guards(&self, egress: bool) -> bool {
        !self.groups.is_empty()
            && self.groups.iter().all(|g| {
                if egress {
                    g.egress.default_deny
                } else {
                    g.ingress.default_deny
                }
            })
    }

    /// The check of one direction for a frame `l4` whose session is `est`.
    #[inline]
    fn check(&self, l4: L4, egress: bool, est: bool) -> Check {
        if !self.guards(egress) || l4 == L4::Control {
            return Check::Pass(false);
        }
        if est && self.stateful {
            return Check::Pass(false);
        }
        let hit = self.groups.iter().any(|g| {
            let f = if egress { &g.egress } else { &g.ingress };
            f.matches(l4, egress)
        });
        if hit {
            Check::Pass(self.stateful)
        } else {
            Check::Deny
        }
    }
}

/// A configured port: its VLAN mode, port security, link state and counters.
#[derive(Clone, Debug)]
pub struct PortState {
    mode: VlanMode,
    security: Option<PortSecurity>,
    filter: Option<PortFilter>,
    up: bool,
    counters: PortCounters,
}

impl PortState {
    /// Its VLAN mode.
    pub fn mode(&self) -> &VlanMode {
        &self.mode
    }

    /// Its port security, if any.
    pub fn security(&self) -> Option<&PortSecurity> {
        self.security.as_ref()
    }

    /// Its security groups, if any.
    pub fn filter(&self) -> Option<&PortFilter> {
        self.filter.as_ref()
    }

    /// True when its link is up.
    pub fn is_up(&self) -> bool {
        self.up
    }

    /// Its counters.
    pub fn counters(&self) -> &PortCounters {
        &self.counters
    }
}

/// What the frame says about itself, before any port context.
struct Ingress {
    dst: EthernetAddress,
    src: EthernetAddress,
    tag: Option<Tci>,
}

fn parse(frame: &[u8]) -> Result<Ingress, DropReason> {
    let eth = EthernetFrame::new_checked(frame).map_err(|_| DropReason::TooShort)?;
    let tag = match eth.ethertype() {
        EtherType::QINQ => return Err(DropReason::QinQ),
        EtherType::VLAN => {
            let tag = VlanTag::new_checked(eth.payload()).map_err(|_| DropReason::MalformedTag)?;
            if tag.ethertype().is_vlan_tpid() {
                return Err(DropReason::QinQ);
            }
            Some(tag.tci())
        }
        _ => None,
    };
    Ok(Ingress {
        dst: eth.dst_addr(),
        src: eth.src_addr(),
        tag,
    })
}

/// `01:80:c2:00:00:00` – `01:80:c2:00:00:0f`.
fn is_reserved_group(mac: EthernetAddress) -> bool {
    mac.to_u64() & !0xf == 0x0180_c200_0000
}

fn classify(mode: &VlanMode, tag: Option<Tci>) -> Result<Vid, DropReason> {
    match (mode, tag) {
        (VlanMode::Access { vid }, None) => Ok(*vid),
        (VlanMode::Access { .. }, Some(_)) => Err(DropReason::TaggedOnAccess),
        (VlanMode::Trunk { native, .. }, None) => native.ok_or(DropReason::NoNativeVlan),
        (mode @ VlanMode::Trunk { .. }, Some(tci)) => Vid::new(tci.vid())
            .filter(|&v| mode.is_member(v))
            .ok_or(DropReason::VlanNotAllowed),
    }
}

fn set_bit(word: &mut u64, bit: u64, on: bool) {
    if on {
        *word |= bit;
    } else {
        *word &= !bit;
    }
}

fn edit_for(ingress_tagged: bool, egress_untagged: bool, vid: Vid) -> VlanEdit {
    match (ingress_tagged, egress_untagged) {
        (true, true) => VlanEdit::Pop,
        (false, false) => VlanEdit::Push(Tci::new(0, false, vid.get()).0),
        _ => VlanEdit::Keep,
    }
}

/// A zeroed table whose pages are already mapped. Zeroed allocations are mapped lazily,
/// so the first write to each page would fault, on the polling core, in the middle of a
/// live change (about 100 µs for the membership bitmaps).
fn prefaulted(words: usize) -> Box<[u64]> {
    let mut v = vec![0u64; words].into_boxed_slice();
    for w in v.iter_mut().step_by(512) {
        // Not a store of a known zero into zeroed memory, which could be left out.
        *w = std::hint::black_box(0);
    }
    v
}

/// An L2 learning bridge; see the module documentation for its contract.
pub struct Bridge {
    ports: Box<[Option<PortState>]>,
    /// Per port: the VLAN mode its membership bits were last written for (`None`: no
    /// bit set), so that a change rewrites only the rows it touches.
    footprint: Box<[Option<VlanMode>]>,
    /// `u64` words per VLAN row of the bitmaps below.
    words: usize,
    /// Row `vid`, bit `p`: port `p` exists, is up and is a member of `vid`.
    members: Box<[u64]>,
    /// Row `vid`, bit `p`: port `p` sends `vid` untagged.
    untagged: Box<[u64]>,
    /// Bit `p`: port `p` is in the split-horizon group (a tunnel to another node).
    horizon: Box<[u64]>,
    fdb: Fdb,
    counters: BridgeCounters,
    memo: Memo,
    /// (VLAN, MAC) of each router interface.
    router_macs: Vec<(u16, EthernetAddress)>,
    /// (VLAN, multicast MAC) the router listens to (IPv6 solicited-node groups).
    router_groups: Vec<(u16, EthernetAddress)>,
    /// Ports with a default-deny security group.
    filtered_ports: u16,
    /// The frame being forwarded, as filters see it (only when some port filters).
    cur: L4,
    /// The frame's session and what the checks ask of it (see [`Track`]).
    track: Track,
    /// What this replica learnt that changed its table (new or moved keys), for the
    /// switch to tell the other cores' replicas; `None` when nobody listens. Bounded:
    /// once full, further keys are not logged (the other cores then learn them from
    /// frames, as before).
    learnt: Option<Vec<Learnt>>,
}

/// A key one replica learnt: (VLAN, MAC) now on `port`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Learnt {
    /// VLAN.
    pub vid: u16,
    /// MAC.
    pub mac: EthernetAddress,
    /// Port.
    pub port: PortId,
}

/// Most keys logged between two [`Bridge::take_learnt`] calls (a few bursts' worth).
pub const LEARNT_LOG: usize = 256;

/// The last FDB answers, reused while nothing can have changed them.
///
/// A burst is mostly one flow: the same source learned on the same port and the same
/// destination looked up, again and again, at the same `now` (the switch reads the
/// clock once per burst). Learning a key that is already live on that port at that
/// `now` changes nothing, and a lookup gives the same answer until the table changes;
/// so both are remembered here and skipped. Any learn that changed the table, and
/// every control-plane change, forgets the memo.
#[derive(Clone, Copy, Debug, Default)]
struct Memo {
    /// (vid, source, port, now) of the last learn that left the table as it was.
    learned: Option<(u16, EthernetAddress, u16, u64)>,
    /// (vid, destination, now) and the port the FDB answered.
    looked_up: Option<(u16, EthernetAddress, u64, Option<u16>)>,
    /// The last unicast decision, for the frames of the burst that repeat it.
    flow: Option<Flow>,
    /// The last decision to hand a frame to the router, on the same terms as `flow`:
    /// (in port, now, key, VLAN, L3 offset).
    routed: Option<(u16, u64, FlowKey, Vid, u8)>,
}

/// The bytes a forwarding decision reads (see [`Flow::key`]).
type FlowKey = (u64, u64, Option<u32>);

/// One remembered unicast decision: a frame from `in_port` at `now` whose first 14
/// bytes (18 when it carries a tag) equal `key` is forwarded exactly like the frame
/// that filled the entry, since everything the decision read is in those bytes or in
/// bridge state that has not changed (any change forgets the memo). Kept only for
/// ports without port security and while no port has a security group, whose checks
/// read further into the frame.
#[derive(Clone, Copy, Debug)]
struct Flow {
    in_port: u16,
    now: u64,
    /// Bytes 0..8 and 6..14 (destination, source, EtherType), and 14..18 when tagged.
    key: (u64, u64, Option<u32>),
    vid: u16,
    src: EthernetAddress,
    out: PortId,
    edit: VlanEdit,
}

/// [`Flow::key`] of a frame, or `None` when it is too short to have one.
#[inline(always)]
fn flow_key(frame: &[u8]) -> Option<(u64, u64, Option<u32>)> {
    let a = u64::from_ne_bytes(frame.get(0..8)?.try_into().ok()?);
    let b = u64::from_ne_bytes(frame.get(6..14)?.try_into().ok()?);
    let tagged = matches!(frame.get(12..14), Some([0x81, 0x00] | [0x88, 0xa8]));
    let c = if tagged {
        Some(u32::from_ne_bytes(frame.get(14..18)?.try_into().ok()?))
    } else {
        None
    };
    Some((a, b, c))
}

impl Bridge {
    fn learn_memo(&mut self, vid: u16, src: EthernetAddress, port: u16, now: u64) {
        if self.memo.learned == Some((vid, src, port, now)) {
            return;
        }
        // A refusal is counted by the FDB; the frame is forwarded all the same.
        match self.fdb.learn(vid, src, port, now) {
            crate::fdb::Learn::Refreshed => self.memo.learned = Some((vid, src, port, now)),
            crate::fdb::Learn::Refused => self.memo = Memo::default(),
            crate::fdb::Learn::New | crate::fdb::Learn::Moved { .. } => {
                self.memo = Memo::default();
                if let Some(log) = self.learnt.as_mut().filter(|l| l.len() < LEARNT_LOG) {
                    log.push(Learnt {
                        vid,
                        mac: src,
                        port: PortId(port),
                    });
                }
            }
        }
    }

    fn lookup_memo(&mut self, vid: u16, dst: EthernetAddress, now: u64) -> Option<u16> {
        if let Some((v, d, n, hit)) = self.memo.looked_up {
            if (v, d, n) == (vid, dst, now) {
                return hit;
            }
        }
        let hit = self.fdb.lookup(vid, dst, now);
        self.memo.looked_up = Some((vid, dst, now, hit));
        hit
    }
}

impl fmt::Debug for Bridge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bridge")
            .field("max_ports", &self.ports.len())
            .field("ports", &self.ports().count())
            .field("fdb", &self.fdb)
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

impl Bridge {
    /// A bridge without ports. Allocates everything it will ever use: the port table,
    /// the VLAN membership bitmaps (2 × 4096 × ⌈max_ports/64⌉ words) and the FDB.
    pub fn new(config: BridgeConfig) -> Result<Bridge, BridgeError> {
        if config.max_ports == 0 || config.max_ports > MAX_PORTS {
            return Err(BridgeError::MaxPorts {
                requested: config.max_ports,
                max: MAX_PORTS,
            });
        }
        let max_ports = usize::from(config.max_ports);
        let words = max_ports.div_ceil(64);
        Ok(Bridge {
            ports: vec![None; max_ports].into_boxed_slice(),
            footprint: vec![None; max_ports].into_boxed_slice(),
            words,
            members: prefaulted(VLAN_IDS * words),
            untagged: prefaulted(VLAN_IDS * words),
            horizon: vec![0; words].into_boxed_slice(),
            fdb: Fdb::new(config.fdb_capacity, config.fdb_max_age)?,
            counters: BridgeCounters::default(),
            memo: Memo::default(),
            router_macs: Vec::new(),
            router_groups: Vec::new(),
            filtered_ports: 0,
            cur: L4::Other,
            track: Track::default(),
            learnt: None,
        })
    }

    /// Starts (or stops) logging what this replica learns, for
    /// [`take_learnt`](Self::take_learnt). Allocates the log once.
    pub fn log_learnt(&mut self, on: bool) {
        self.learnt = on.then(|| Vec::with_capacity(LEARNT_LOG));
    }

    /// Hands the keys learnt since the last call to `f`, and empties the log.
    pub fn take_learnt(&mut self, mut f: impl FnMut(Learnt)) {
        if let Some(log) = self.learnt.as_mut() {
            for l in log.drain(..) {
                f(l);
            }
        }
    }

    /// Learns a key another replica learnt: as if a frame from `mac` had come in on
    /// `port` in `vid`, but only if `port` is up and a member of `vid` here (a port
    /// removed or changed meanwhile is not pointed at). Not logged again.
    pub fn learn_shared(&mut self, l: Learnt, now: u64) -> bool {
        let member = self.is_member_up(l.port, l.vid);
        if member && l.mac.is_unicast() {
            self.memo = Memo::default();
            !matches!(
                self.fdb.learn(l.vid, l.mac, l.port.0, now),
                crate::fdb::Learn::Refused
            )
        } else {
            false
        }
    }

    /// Port ids range over `0..max_ports()`.
    pub fn max_ports(&self) -> u16 {
        // `new` bounds the length by MAX_PORTS.
        self.ports.len() as u16
    }

    fn slot(&self, port: PortId) -> Result<usize, BridgeError> {
        let i = usize::from(port.0);
        if i < self.ports.len() {
            Ok(i)
        } else {
            Err(BridgeError::PortOutOfRange {
                port,
                max_ports: self.max_ports(),
            })
        }
    }

    fn port_mut(&mut self, port: PortId) -> Result<&mut PortState, BridgeError> {
        let i = self.slot(port)?;
        self.ports[i].as_mut().ok_or(BridgeError::NoSuchPort(port))
    }

    /// Adds a port with its link up.
    pub fn add_port(&mut self, port: PortId, mode: VlanMode) -> Result<(), BridgeError> {
        let i = self.slot(port)?;
        if self.ports[i].is_some() {
            return Err(BridgeError::PortExists(port));
        }
        // Entries a removed port with this id left are not this port's.
        self.fdb.flush_port(port.0);
        self.ports[i] = Some(PortState {
            mode,
            security: None,
            filter: None,
            up: true,
            counters: PortCounters::default(),
        });
        self.refresh_membership(port);
        Ok(())
    }

    /// Adds a port whole, as a live change does: VLAN mode, port security, security
    /// group and link state at once. Touches only the port's own VLAN rows and flushes
    /// nothing (a port id is free only once [`remove_port`](Self::remove_port) flushed
    /// its entries).
    pub fn add_port_with(
        &mut self,
        port: PortId,
        mode: VlanMode,
        security: Option<PortSecurity>,
        filter: Option<PortFilter>,
        up: bool,
    ) -> Result<(), BridgeError> {
        let i = self.slot(port)?;
        if self.ports[i].is_some() {
            return Err(BridgeError::PortExists(port));
        }
        let deny = filter.as_ref().is_some_and(PortFilter::filters);
        // Entries a removed port with this id left are not this port's (no walk of the
        // table when there are none, the usual case).
        self.fdb.flush_port(port.0);
        self.ports[i] = Some(PortState {
            mode,
            security,
            filter,
            up,
            counters: PortCounters::default(),
        });
        self.filtered_ports += u16::from(deny);
        self.refresh_membership(port);
        Ok(())
    }

    /// Removes a port; returns its last counters. Its FDB entries are not walked for
    /// here (that walk of the whole table would stall a live change): lookups that find
    /// them see a port that is no member of any VLAN and flood, [`expire`](Self::expire)
    /// frees them as it sweeps, and a port added later with the same id flushes what is
    /// left.
    pub fn remove_port(&mut self, port: PortId) -> Result<PortCounters, BridgeError> {
        let i = self.slot(port)?;
        let removed = self.ports[i].take().ok_or(BridgeError::NoSuchPort(port))?;
        set_bit(&mut self.horizon[i / 64], 1u64 << (i % 64), false);
        if removed.filter.as_ref().is_some_and(PortFilter::filters) {
            self.filtered_ports = self.filtered_ports.saturating_sub(1);
        }
        self.refresh_membership(port);
        self.memo = Memo::default();
        Ok(removed.counters)
    }

    /// Sets a port's link state. A port that is down receives nothing (frames from it
    /// are dropped as [`DropReason::PortDown`], floods skip it) and going down flushes
    /// its FDB entries.
    pub fn set_link(&mut self, port: PortId, up: bool) -> Result<(), BridgeError> {
        self.port_mut(port)?.up = up;
        self.refresh_membership(port);
        if !up {
            self.memo = Memo::default();
            self.fdb.flush_port(port.0);
        }
        Ok(())
    }

    /// Sets or clears a port's [`PortSecurity`]; flushes its FDB entries (what it learned
    /// before may be what it may no longer send from).
    pub fn set_port_security(
        &mut self,
        port: PortId,
        security: Option<PortSecurity>,
    ) -> Result<(), BridgeError> {
        self.port_mut(port)?.security = security;
        self.memo = Memo::default();
        self.fdb.flush_port(port.0);
        Ok(())
    }

    /// The router interfaces, as (VLAN, MAC): frames to those MACs on those VLANs, and
    /// broadcast ARP there, come back as [`Forwarded::Routed`].
    pub fn set_router_macs(&mut self, macs: Vec<(Vid, EthernetAddress)>) {
        self.router_macs = macs.into_iter().map(|(v, m)| (v.get(), m)).collect();
        self.memo = Memo::default();
    }

    /// Multicast groups (VLAN, MAC) the router listens to: frames to them are flooded as
    /// usual and also come back as [`Forwarded::Routed`] (IPv6 neighbour solicitations).
    pub fn set_router_groups(&mut self, groups: Vec<(Vid, EthernetAddress)>) {
        self.router_groups = groups.into_iter().map(|(v, m)| (v.get(), m)).collect();
        self.memo = Memo::default();
    }

    /// Sends a frame the router rewrote, or generated, on VLAN `vid`: to the port its
    /// destination was learned on, or to every member port of `vid`. `frame` carries a
    /// tag with `vid` or none. Nothing is learned.
    pub fn forward_routed(
        &mut self,
        vid: Vid,
        frame: &[u8],
        len: usize,
        now: u64,
        out: &mut impl FnMut(PortId, VlanEdit),
    ) -> Result<Forwarded, DropReason> {
        self.forward_routed_tracked(vid, frame, len, now, &mut Track::default(), out)
    }

    /// [`forward_routed`](Self::forward_routed) of a frame whose session state is
    /// `track` (its `commit` and `sent` are updated).
    pub fn forward_routed_tracked(
        &mut self,
        vid: Vid,
        frame: &[u8],
        len: usize,
        now: u64,
        track: &mut Track,
        out: &mut impl FnMut(PortId, VlanEdit),
    ) -> Result<Forwarded, DropReason> {
        self.track = *track;
        let r = self.routed_inner(vid, frame, len, now, out);
        track.commit = self.track.commit;
        track.sent |= r.is_ok();
        self.track = Track::default();
        r
    }

    fn routed_inner(
        &mut self,
        vid: Vid,
        frame: &[u8],
        len: usize,
        now: u64,
        out: &mut impl FnMut(PortId, VlanEdit),
    ) -> Result<Forwarded, DropReason> {
        let ingress = parse(frame)?;
        let tagged = ingress.tag.is_some();
        let row = self.row(vid);
        let len = len.max(frame.len());
        if self.filtered_ports > 0 {
            self.cur = l4_of(frame, if tagged { 18 } else { 14 });
        }
        if ingress.dst.is_unicast() {
            if let Some(p) = self.lookup_memo(vid.get(), ingress.dst, now) {
                let (w, bit) = (usize::from(p) / 64, 1u64 << (p % 64));
                if self.members.get(row + w).is_some_and(|m| m & bit != 0) {
                    let untagged = self.untagged.get(row + w).is_some_and(|u| u & bit != 0);
                    if !self.emit(PortId(p), edit_for(tagged, untagged, vid), len, out) {
                        return Err(DropReason::SecurityGroup);
                    }
                    self.counters.unicast += 1;
                    return Ok(Forwarded::Unicast(PortId(p)));
                }
            }
        }
        let (mut copies, mut refused) = (0u16, 0u16);
        for w in 0..self.words {
            let mut members = self.members[row + w];
            let untagged = self.untagged[row + w];
            while members != 0 {
                let b = members.trailing_zeros();
                members &= members - 1;
                let edit = edit_for(tagged, untagged & (1u64 << b) != 0, vid);
                if self.emit(PortId((w * 64) as u16 + b as u16), edit, len, out) {
                    copies += 1;
                } else {
                    refused += 1;
                }
            }
        }
        if copies == 0 && refused > 0 {
            return Err(DropReason::SecurityGroup);
        }
        if copies == 0 {
            self.counters.drops.bump(DropReason::NoEgress);
            return Err(DropReason::NoEgress);
        }
        self.counters.floods += 1;
        Ok(Forwarded::Flooded { copies })
    }

    /// Sets or clears the security groups of a port.
    pub fn set_ingress_filter(
        &mut self,
        port: PortId,
        filter: Option<PortFilter>,
    ) -> Result<(), BridgeError> {
        self.port_mut(port)?.filter = filter;
        self.memo = Memo::default();
        self.filtered_ports = self
            .ports
            .iter()
            .flatten()
            .filter(|p| p.filter.as_ref().is_some_and(PortFilter::filters))
            .count() as u16;
        Ok(())
    }

    /// Changes a port's VLAN mode and flushes its FDB entries.
    pub fn set_vlan_mode(&mut self, port: PortId, mode: VlanMode) -> Result<(), BridgeError> {
        self.port_mut(port)?.mode = mode;
        self.refresh_membership(port);
        self.memo = Memo::default();
        self.fdb.flush_port(port.0);
        Ok(())
    }

    /// The port `port`, if configured.
    pub fn port(&self, port: PortId) -> Option<&PortState> {
        self.ports.get(usize::from(port.0)).and_then(Option::as_ref)
    }

    /// Configured ports in increasing id order.
    pub fn ports(&self) -> impl Iterator<Item = (PortId, &PortState)> + '_ {
        self.ports
            .iter()
            .enumerate()
            .filter_map(|(i, p)| Some((PortId(i as u16), p.as_ref()?)))
    }

    /// The bridge-wide counters.
    pub fn counters(&self) -> &BridgeCounters {
        &self.counters
    }

    /// The forwarding database (entries, statistics).
    pub fn fdb(&self) -> &Fdb {
        &self.fdb
    }

    /// Frees aged FDB slots, and those of removed ports, among the next `budget` ones;
    /// see [`Fdb::expire`].
    pub fn expire(&mut self, now: u64, budget: usize) -> usize {
        self.memo = Memo::default();
        let ports = &self.ports;
        self.fdb.expire_or(now, budget, |p| {
            ports.get(usize::from(p)).is_none_or(Option::is_none)
        })
    }

    /// Rewrites bit `port` of the VLAN rows it was or now is a member of, from the
    /// port's current state. Only those rows: a live change on a polling core must not
    /// walk all 4096 rows of both bitmaps (a cold walk costs about 80 µs).
    fn refresh_membership(&mut self, port: PortId) {
        // Remembered decisions read membership and egress tagging.
        self.memo = Memo::default();
        let p = usize::from(port.0);
        let (w, bit) = (p / 64, 1u64 << (p % 64));
        let state = self.ports.get(p).and_then(Option::as_ref);
        let now = state.filter(|s| s.up).map(|s| s.mode.clone());
        let before = self.footprint.get_mut(p).and_then(Option::take);
        let vids = |m: &Option<VlanMode>| -> Vec<Vid> {
            match m {
                None => Vec::new(),
                Some(VlanMode::Access { vid }) => vec![*vid],
                Some(VlanMode::Trunk { allowed, native }) => {
                    allowed.iter().chain(native.iter().copied()).collect()
                }
            }
        };
        for vid in vids(&before).into_iter().chain(vids(&now)) {
            let (member, untagged) = match &now {
                Some(m) if m.is_member(vid) => (true, m.egress_untagged(vid)),
                _ => (false, false),
            };
            let at = usize::from(vid.get()) * self.words + w;
            set_bit(&mut self.members[at], bit, member);
            set_bit(&mut self.untagged[at], bit, untagged);
        }
        if let Some(f) = self.footprint.get_mut(p) {
            *f = now;
        }
    }

    fn row(&self, vid: Vid) -> usize {
        usize::from(vid.get()) * self.words
    }

    /// Whether `port` exists, is up and is a member of VLAN `vid`.
    fn is_member_up(&self, port: PortId, vid: u16) -> bool {
        let p = usize::from(port.0);
        let Some(vid) = Vid::new(vid) else {
            return false;
        };
        p < self.ports.len()
            && self
                .members
                .get(self.row(vid) + p / 64)
                .is_some_and(|w| w & (1u64 << (p % 64)) != 0)
    }

    /// Forwards one frame received on `in_port` at time `now`: calls `out` for every
    /// egress port with the edit to apply while copying, and returns the decision. See
    /// the module documentation for the rules.
    pub fn forward(
        &mut self,
        in_port: PortId,
        frame: &[u8],
        now: u64,
        out: &mut impl FnMut(PortId, VlanEdit),
    ) -> Result<Forwarded, DropReason> {
        self.forward_head(in_port, frame, frame.len(), now, out)
    }

    /// [`forward`](Self::forward) for a frame of `len` bytes of which the caller holds
    /// the first bytes in `head` (at least the headers; all of them for short frames).
    ///
    /// This is how the switch forwards frames that still sit in a guest's memory: it
    /// decides on a private copy of the headers, and the port writes that same copy
    /// when it transmits, so a guest that rewrites its buffer after the decision (for
    /// instance a VLAN tag) cannot change what was decided.
    // Always inlined into the polling loop: returned out of line, the verdict went
    // through the stack with a partially overlapping reload, a store-forwarding stall
    // that waited for every earlier store (guest ring writes included) to drain.
    #[inline(always)]
    pub fn forward_head(
        &mut self,
        in_port: PortId,
        head: &[u8],
        len: usize,
        now: u64,
        out: &mut impl FnMut(PortId, VlanEdit),
    ) -> Result<Forwarded, DropReason> {
        let verdict = self.decide(in_port, head, len.max(head.len()), now, out);
        match verdict {
            Ok(Forwarded::Unicast(_)) => self.counters.unicast += 1,
            Ok(Forwarded::Flooded { .. }) => self.counters.floods += 1,
            Ok(Forwarded::Routed { .. }) => self.counters.routed += 1,
            // Security-group refusals were counted per refused copy.
            Err(DropReason::SecurityGroup) => {}
            Err(reason) => self.counters.drops.bump(reason),
        }
        verdict
    }

    /// The L2 stage over a whole received burst: every frame of `batch` from
    /// `in_port` is decided as [`forward_head`](Self::forward_head) would decide it,
    /// its copies appended to `staging[out_port]`, and the frames for the router (with
    /// their VLAN and L3 offset) appended to `to_router`, for the stages that follow.
    ///
    /// First the keys of all frames (the bytes a unicast decision reads) are taken;
    /// then a frame is decided in full only where its key differs from the frame before
    /// or the bridge cannot reuse decisions (port security, security groups, a
    /// destination it had to flood). The frames of a run of equal keys go where the
    /// first went, with their counters added once for the run: the same outcome, and
    /// the same FDB refresh, as deciding each, at the cost of a key comparison.
    pub fn forward_burst(
        &mut self,
        in_port: PortId,
        batch: &RxBatch,
        now: u64,
        staging: &mut [Vec<TxSel>],
        to_router: &mut Vec<ToRouter>,
    ) {
        self.forward_range(in_port, batch, 0..batch.len(), now, staging, to_router)
    }

    /// [`forward_burst`](Self::forward_burst) over the frames `range` of `batch` only
    /// (the run of a decapsulated burst that came through one tunnel).
    pub fn forward_range(
        &mut self,
        in_port: PortId,
        batch: &RxBatch,
        range: std::ops::Range<usize>,
        now: u64,
        staging: &mut [Vec<TxSel>],
        to_router: &mut Vec<ToRouter>,
    ) {
        self.forward_range_tracked(in_port, batch, range, now, staging, to_router, &mut [])
    }

    /// [`forward_range`](Self::forward_range) with each frame's session state
    /// `tracks[i]` (read for `est`; `commit` and `sent` written). Frames beyond
    /// `tracks` have no session.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_range_tracked(
        &mut self,
        in_port: PortId,
        batch: &RxBatch,
        range: std::ops::Range<usize>,
        now: u64,
        staging: &mut [Vec<TxSel>],
        to_router: &mut Vec<ToRouter>,
        tracks: &mut [Track],
    ) {
        let n = range.end.min(batch.len());
        let mut keys = [None; BURST];
        for (i, k) in keys.iter_mut().enumerate().take(n).skip(range.start) {
            *k = flow_key(batch.head(i));
        }
        let mut i = range.start;
        while i < n {
            // A frame for the router like the one before it: what the decision would
            // do, without deciding again (see `Memo::routed`).
            if let Some((vid, l3)) = self.repeat_routed(in_port, keys[i], batch.frame_len(i), now) {
                if let Some(t) = tracks.get_mut(i) {
                    *t = Track {
                        passed: true,
                        ..Track::default()
                    };
                }
                to_router.push(ToRouter {
                    idx: i as u16,
                    vid,
                    l3,
                    flooded: false,
                });
                i += 1;
                continue;
            }
            self.track = tracks.get(i).copied().unwrap_or_default();
            let verdict = self.forward_head(
                in_port,
                batch.head(i),
                batch.frame_len(i),
                now,
                &mut stage_into(staging, i),
            );
            if let Some(t) = tracks.get_mut(i) {
                t.commit = self.track.commit;
                t.sent = matches!(
                    verdict,
                    Ok(Forwarded::Unicast(_) | Forwarded::Flooded { .. })
                );
                t.passed = verdict.is_ok();
            }
            self.track = Track::default();
            match verdict {
                Ok(Forwarded::Unicast(out)) => {
                    // The memo holds this decision only when every later frame with
                    // the same key must take it too (see `Flow`).
                    let reusable = self.memo.flow.is_some_and(|f| {
                        f.in_port == in_port.0 && f.now == now && Some(f.key) == keys[i]
                    });
                    if reusable {
                        let j = self.repeat_run(in_port, out, batch, &keys[..n], i, staging);
                        for t in tracks.iter_mut().take(j).skip(i + 1) {
                            t.sent = true;
                            t.passed = true;
                        }
                        i = j;
                        continue;
                    }
                }
                Ok(Forwarded::Routed { vid, l3, flooded }) => to_router.push(ToRouter {
                    idx: i as u16,
                    vid,
                    l3,
                    flooded,
                }),
                _ => {}
            }
            i += 1;
        }
    }

    /// The router's VLAN and L3 offset for a frame of `len` bytes from `in_port` whose
    /// key is the one [`Memo::routed`] holds, counted as the decision would count it; or
    /// `None` when the memo does not apply.
    #[inline(always)]
    fn repeat_routed(
        &mut self,
        in_port: PortId,
        key: Option<FlowKey>,
        len: usize,
        now: u64,
    ) -> Option<(Vid, u8)> {
        let (p, t, k, vid, l3) = self.memo.routed?;
        if p != in_port.0 || t != now || Some(k) != key {
            return None;
        }
        let port = self.ports.get_mut(usize::from(p))?.as_mut()?;
        if !port.up {
            return None;
        }
        port.counters.rx_frames += 1;
        port.counters.rx_bytes += len as u64;
        self.counters.routed += 1;
        Some((vid, l3))
    }

    /// Sends the frames after `first` whose key equals its key where `first` went (to
    /// `out`), counting them once; returns the index of the first frame not sent.
    fn repeat_run(
        &mut self,
        in_port: PortId,
        out: PortId,
        batch: &RxBatch,
        keys: &[Option<(u64, u64, Option<u32>)>],
        first: usize,
        staging: &mut [Vec<TxSel>],
    ) -> usize {
        let Some(edit) = self.memo.flow.map(|f| f.edit) else {
            return first + 1;
        };
        let Some(s) = staging.get_mut(usize::from(out.0)) else {
            return first + 1;
        };
        let mut j = first + 1;
        let (mut bytes, mut bytes_out) = (0u64, 0u64);
        while j < keys.len() && keys[j] == keys[first] {
            s.push(TxSel {
                idx: j as u16,
                edit,
            });
            let len = batch.frame_len(j);
            bytes += len as u64;
            bytes_out += edit.edited_len(len) as u64;
            j += 1;
        }
        let frames = (j - first - 1) as u64;
        if frames > 0 {
            if let Some(Some(p)) = self.ports.get_mut(usize::from(in_port.0)) {
                p.counters.rx_frames += frames;
                p.counters.rx_bytes += bytes;
            }
            if let Some(Some(p)) = self.ports.get_mut(usize::from(out.0)) {
                p.counters.tx_frames += frames;
                p.counters.tx_bytes += bytes_out;
            }
            self.counters.unicast += frames;
        }
        j
    }

    #[inline(always)]
    fn decide(
        &mut self,
        in_port: PortId,
        frame: &[u8],
        len: usize,
        now: u64,
        out: &mut impl FnMut(PortId, VlanEdit),
    ) -> Result<Forwarded, DropReason> {
        let port = self
            .ports
            .get_mut(usize::from(in_port.0))
            .and_then(Option::as_mut)
            .ok_or(DropReason::UnknownPort)?;
        if !port.up {
            return Err(DropReason::PortDown);
        }
        port.counters.rx_frames += 1;
        port.counters.rx_bytes += len as u64;
        let key = flow_key(frame);
        if let Some(f) = self.memo.flow {
            if f.in_port == in_port.0 && f.now == now && key == Some(f.key) {
                // Learning stays exact: a learn that changes the table forgets the flow,
                // and the frame then takes the full path below.
                self.learn_memo(f.vid, f.src, in_port.0, now);
                if self.memo.flow.is_some() {
                    if !self.emit(f.out, f.edit, len, out) {
                        return Err(DropReason::SecurityGroup);
                    }
                    return Ok(Forwarded::Unicast(f.out));
                }
            }
        }
        let Some(port) = self
            .ports
            .get(usize::from(in_port.0))
            .and_then(Option::as_ref)
        else {
            return Err(DropReason::UnknownPort);
        };

        let ingress = parse(frame)?;
        if ingress.src.is_multicast() || ingress.src.is_zero() {
            return Err(DropReason::BadSrcMac);
        }
        if is_reserved_group(ingress.dst) {
            return Err(DropReason::ReservedDst);
        }
        let vid = classify(&port.mode, ingress.tag)?;
        let tagged = ingress.tag.is_some();
        let secured = port.security.is_some();
        if let Some(sec) = &port.security {
            // Before learning: a spoofed source must not move anyone's FDB entry.
            sec.check(ingress.src, frame, if tagged { 18 } else { 14 })?;
        }
        self.learn_memo(vid.get(), ingress.src, in_port.0, now);

        let row = self.row(vid);
        let l3: u8 = if tagged { 18 } else { 14 };
        if self.filtered_ports > 0 {
            self.cur = l4_of(frame, usize::from(l3));
            if let Some(Some(p)) = self.ports.get(usize::from(in_port.0)) {
                match p
                    .filter
                    .as_ref()
                    .map(|f| f.check(self.cur, true, self.track.est))
                {
                    Some(Check::Deny) => return Err(DropReason::SecurityGroupEgress),
                    Some(Check::Pass(c)) => self.track.commit |= c,
                    None => {}
                }
            }
        }
        let routed_vlan =
            !self.router_macs.is_empty() && self.router_macs.iter().any(|(v, _)| *v == vid.get());
        if ingress.dst.is_unicast() {
            if routed_vlan
                && self
                    .router_macs
                    .iter()
                    .any(|&(v, m)| v == vid.get() && m == ingress.dst)
            {
                if let Some(key) = key.filter(|_| !secured && self.filtered_ports == 0) {
                    self.memo.routed = Some((in_port.0, now, key, vid, l3));
                }
                return Ok(Forwarded::Routed {
                    vid,
                    l3,
                    flooded: false,
                });
            }
            if let Some(p) = self.lookup_memo(vid.get(), ingress.dst, now) {
                if p == in_port.0 {
                    return Err(DropReason::SamePort);
                }
                let (w, bit) = (usize::from(p) / 64, 1u64 << (p % 64));
                if self.horizon[w] & bit != 0 && self.in_horizon(in_port) {
                    return Err(DropReason::SplitHorizon);
                }
                if self.members.get(row + w).is_some_and(|m| m & bit != 0) {
                    let untagged = self.untagged.get(row + w).is_some_and(|u| u & bit != 0);
                    let edit = edit_for(tagged, untagged, vid);
                    if !self.emit(PortId(p), edit, len, out) {
                        return Err(DropReason::SecurityGroup);
                    }
                    if let Some(key) = key.filter(|_| !secured && self.filtered_ports == 0) {
                        self.memo.flow = Some(Flow {
                            in_port: in_port.0,
                            now,
                            key,
                            vid: vid.get(),
                            src: ingress.src,
                            out: PortId(p),
                            edit,
                        });
                    }
                    return Ok(Forwarded::Unicast(PortId(p)));
                }
            }
        }

        let (mut copies, mut refused) = (0u16, 0u16);
        let in_word = usize::from(in_port.0) / 64;
        let in_bit = 1u64 << (in_port.0 % 64);
        let from_tunnel = self.in_horizon(in_port);
        for w in 0..self.words {
            let mut members = self.members[row + w];
            if w == in_word {
                members &= !in_bit;
            }
            if from_tunnel {
                members &= !self.horizon[w];
            }
            let untagged = self.untagged[row + w];
            while members != 0 {
                let b = members.trailing_zeros();
                members &= members - 1;
                let edit = edit_for(tagged, untagged & (1u64 << b) != 0, vid);
                // w * 64 + b < max_ports <= MAX_PORTS, which fits in u16.
                let p = PortId((w * 64) as u16 + b as u16);
                if self.emit(p, edit, len, out) {
                    copies += 1;
                } else {
                    refused += 1;
                }
            }
        }
        let arp = frame
            .get(usize::from(l3) - 2..usize::from(l3))
            .is_some_and(|t| t == [0x08, 0x06]);
        let routed = Forwarded::Routed {
            vid,
            l3,
            flooded: true,
        };
        if routed_vlan && arp && ingress.dst.is_broadcast() {
            // Flooded to the hosts, and the router answers if it is asked.
            return Ok(routed);
        }
        // ICMPv6 to a solicited-node group of the router: neighbour solicitations.
        let l3u = usize::from(l3);
        let icmp6 =
            frame.get(l3u - 2..l3u) == Some(&[0x86, 0xdd][..]) && frame.get(l3u + 6) == Some(&58);
        if routed_vlan
            && icmp6
            && self
                .router_groups
                .iter()
                .any(|&(v, m)| v == vid.get() && m == ingress.dst)
        {
            return Ok(routed);
        }
        if copies == 0 && refused > 0 {
            Err(DropReason::SecurityGroup)
        } else if copies == 0 {
            Err(DropReason::NoEgress)
        } else {
            Ok(Forwarded::Flooded { copies })
        }
    }

    /// The VLAN of `port`'s untagged frames when it is an access port.
    #[inline]
    pub fn access_vid(&self, port: PortId) -> Option<Vid> {
        match self.ports.get(usize::from(port.0))?.as_ref()?.mode {
            VlanMode::Access { vid } => Some(vid),
            VlanMode::Trunk { .. } => None,
        }
    }

    /// The VLAN a frame from `port` is classified into, without forwarding or counting
    /// anything (`None` where the bridge would drop it for its tagging).
    pub fn vid_of(&self, port: PortId, frame: &[u8]) -> Option<Vid> {
        let p = self.ports.get(usize::from(port.0))?.as_ref()?;
        let ingress = parse(frame).ok()?;
        classify(&p.mode, ingress.tag).ok()
    }

    /// Whether `port` is in the split-horizon group.
    #[inline(always)]
    fn in_horizon(&self, port: PortId) -> bool {
        let p = usize::from(port.0);
        self.horizon
            .get(p / 64)
            .is_some_and(|w| w & (1u64 << (p % 64)) != 0)
    }

    /// Puts `port` in the split-horizon group (tunnels to other nodes: a frame that
    /// came from one is never sent to another, flooded or not), or takes it out.
    pub fn set_horizon(&mut self, port: PortId, on: bool) -> Result<(), BridgeError> {
        let i = self.slot(port)?;
        set_bit(&mut self.horizon[i / 64], 1u64 << (i % 64), on);
        self.memo = Memo::default();
        Ok(())
    }

    /// Sends one copy, unless the port's security group refuses it (counted); returns
    /// whether it was sent.
    #[inline(always)]
    fn emit(
        &mut self,
        port: PortId,
        edit: VlanEdit,
        len: usize,
        out: &mut impl FnMut(PortId, VlanEdit),
    ) -> bool {
        if let Some(Some(p)) = self.ports.get_mut(usize::from(port.0)) {
            if self.filtered_ports > 0 {
                match p
                    .filter
                    .as_ref()
                    .map(|f| f.check(self.cur, false, self.track.est))
                {
                    Some(Check::Deny) => {
                        self.counters.drops.bump(DropReason::SecurityGroup);
                        return false;
                    }
                    Some(Check::Pass(c)) => self.track.commit |= c,
                    None => {}
                }
            }
            p.counters.tx_frames += 1;
            p.counters.tx_bytes += edit.edited_len(len) as u64;
        }
        out(port, edit);
        true
    }
}

mod nd;

/// The EUI-64 IPv6 link-local address of `mac` (`fe80::` with the MAC's universal/local
/// bit flipped and `ff:fe` in the middle): what Linux gives an interface by default.
pub fn eui64_link_local(mac: EthernetAddress) -> std::net::Ipv6Addr {
    let m = mac.as_bytes();
    std::net::Ipv6Addr::from([
        0xfe,
        0x80,
        0,
        0,
        0,
        0,
        0,
        0,
        m[0] ^ 2,
        m[1],
        m[2],
        0xff,
        0xfe,
        m[3],
        m[4],
        m[5],
    ])
}

#[cfg(test)]
mod tests;
