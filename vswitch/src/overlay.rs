//! The overlay between nodes: VXLAN (RFC 7348) over the uplink.
//!
//! A tenant network with a VNI is one bridge domain (VLAN) here and on every other
//! node. Each remote node's tunnel endpoint (VTEP) on each VNI is a port of the bridge,
//! a [`VxlanPort`], an access port on that network's VLAN in the split-horizon group:
//!
//! - **Encapsulation** is the port's transmit: the outer Ethernet, IPv4, UDP and VXLAN
//!   headers are prebuilt for the port (addresses, VNI, the next hop's MAC), and each
//!   frame gets a copy with its lengths, IPv4 checksum and UDP source port (a hash of the
//!   inner flow, for the underlay's ECMP) filled in; the uplink sends the prefix and the
//!   frame in one gather. No allocation, no lock (the uplink's transmit queue is taken
//!   once per burst), one system call per burst.
//! - **Decapsulation** runs on the polling core that reads the uplink: [`Decap::classify`]
//!   checks the outer headers on the frame's private head copy and finds the port of
//!   (VNI, source VTEP); the frame is stripped in place and enters the bridge from that
//!   port. A VNI or a source this node was not told of is dropped and counted: a frame
//!   never reaches a network other than its VNI's.
//! - **Flooding** (broadcast, unknown unicast, multicast) is head-end replication: the
//!   bridge floods to every member of the VLAN, which includes one tunnel port per
//!   remote node; a frame that came from a tunnel is never sent into another (split
//!   horizon), since every node delivers to its own ports.
//! - **Remote MACs** are learnt by the bridge from decapsulated frames, each on the port
//!   of the VTEP it came from.
//! - **Next hop**: the underlay route to each VTEP and its neighbour's MAC come from the
//!   kernel's tables ([`resolve`]); the switch service refreshes them when netlink
//!   announces a change and every 500 ms, and
//!   swaps the MAC in atomically. A tunnel whose next hop is not resolved yet drops
//!   (counted `not_ready`) and asks the kernel to resolve it.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use pmd::port::{
    edited_len, Port, PortDrop, PortStats, QueueCounters, RxBatch, TxSel, BURST, PREFIX_MAX,
};

use crate::bridge::PortId;

/// The IANA port of VXLAN.
pub const VXLAN_PORT: u16 = 4789;
/// Bytes VXLAN adds to a frame over IPv4 (outer Ethernet 14, IPv4 20, UDP 8, VXLAN 8).
pub const OVERHEAD: usize = 50;
/// What a pod's MTU is less than the uplink's: the inner Ethernet header is carried in
/// the outer IP packet too.
pub const MTU_OVERHEAD: u32 = 50;
/// The largest VNI.
pub const VNI_MAX: u32 = (1 << 24) - 1;

const UNRESOLVED: u64 = 0;
const RESOLVED: u64 = 1 << 48;

/// The uplink as the tunnels share it: a host interface through `AF_PACKET`, or a
/// vhost-user port whose peer is the underlay (a router VM, a traffic generator).
pub struct Uplink {
    /// The driver.
    pub port: Arc<dyn Port>,
    /// The uplink's MAC: the outer source.
    pub mac: [u8; 6],
    /// The underlay's MTU.
    pub mtu: u32,
    /// This node's tunnel address.
    pub local: Ipv4Addr,
    /// The UDP port tunnels are sent to and received on.
    pub udp_port: u16,
    /// The next hop's MAC when no kernel table knows it (a vhost-user uplink).
    pub next_hop: Option<[u8; 6]>,
}

impl Uplink {
    /// The MTU of the pods' networks: the uplink's less the encapsulation.
    pub fn pod_mtu(&self) -> u32 {
        self.mtu.saturating_sub(MTU_OVERHEAD)
    }
}

/// The tunnel to one remote VTEP on one VNI; see the module docs.
pub struct VxlanPort {
    name: String,
    uplink: Arc<Uplink>,
    vni: u32,
    remote: Ipv4Addr,
    /// The next hop's MAC in the low 48 bits, [`RESOLVED`] set once known.
    next_hop: AtomicU64,
    ctr: QueueCounters,
}

impl VxlanPort {
    /// A tunnel to `remote` on `vni` over `uplink`, its next hop not resolved yet.
    pub fn new(name: &str, uplink: Arc<Uplink>, vni: u32, remote: Ipv4Addr) -> VxlanPort {
        VxlanPort {
            name: name.into(),
            uplink,
            vni,
            remote,
            next_hop: AtomicU64::new(UNRESOLVED),
            ctr: QueueCounters::default(),
        }
    }

    /// The remote VTEP.
    pub fn remote(&self) -> Ipv4Addr {
        self.remote
    }

    /// The VNI.
    pub fn vni(&self) -> u32 {
        self.vni
    }

    /// The uplink it sends through.
    pub fn uplink(&self) -> &Arc<Uplink> {
        &self.uplink
    }

    /// Sets (or forgets) the next hop's MAC; the next burst uses it.
    pub fn set_next_hop(&self, mac: Option<[u8; 6]>) {
        let v = mac.map_or(UNRESOLVED, |m| {
            let mut b = [0u8; 8];
            b[2..].copy_from_slice(&m);
            u64::from_be_bytes(b) | RESOLVED
        });
        self.next_hop.store(v, Ordering::Release);
    }

    /// The next hop's MAC, once resolved.
    pub fn next_hop(&self) -> Option<[u8; 6]> {
        let v = self.next_hop.load(Ordering::Acquire);
        (v & RESOLVED != 0).then(|| {
            let b = v.to_be_bytes();
            [b[2], b[3], b[4], b[5], b[6], b[7]]
        })
    }

    /// The outer headers for this tunnel with lengths, checksum and source port zero,
    /// and the one's-complement sum of the IPv4 header so far.
    fn template(&self, dst_mac: [u8; 6]) -> ([u8; OVERHEAD], u32) {
        let mut h = [0u8; OVERHEAD];
        h[0..6].copy_from_slice(&dst_mac);
        h[6..12].copy_from_slice(&self.uplink.mac);
        h[12..14].copy_from_slice(&[0x08, 0x00]);
        // IPv4: version 4, IHL 5; DF (the switch never fragments); TTL 64; UDP.
        h[14] = 0x45;
        h[20] = 0x40;
        h[22] = 64;
        h[23] = 17;
        h[26..30].copy_from_slice(&self.uplink.local.octets());
        h[30..34].copy_from_slice(&self.remote.octets());
        h[36..38].copy_from_slice(&self.uplink.udp_port.to_be_bytes());
        // VXLAN: the I flag, the VNI.
        h[42] = 0x08;
        h[46..49].copy_from_slice(&self.vni.to_be_bytes()[1..]);
        let sum = h[14..34]
            .chunks_exact(2)
            .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
            .sum();
        (h, sum)
    }
}

/// The outer header of one frame: `tpl` with the lengths for an inner frame of
/// `inner` bytes, the checksum completed from `sum`, and source port `sport`.
#[inline(always)]
fn fill(out: &mut [u8; PREFIX_MAX], tpl: &[u8; OVERHEAD], sum: u32, inner: usize, sport: u16) {
    out[..OVERHEAD].copy_from_slice(tpl);
    let ip_len = (inner + OVERHEAD - 14) as u16;
    let udp_len = ip_len - 20;
    out[16..18].copy_from_slice(&ip_len.to_be_bytes());
    let mut s = sum + u32::from(ip_len);
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    out[24..26].copy_from_slice(&(!(s as u16)).to_be_bytes());
    out[34..36].copy_from_slice(&sport.to_be_bytes());
    out[38..40].copy_from_slice(&udp_len.to_be_bytes());
}

/// The UDP source port for an inner frame: a hash of its addresses (and ports, for
/// IPv4 without options), in 49152..=65535, so that one flow keeps one underlay path
/// and different flows spread over several (RFC 7348, section 5).
#[inline(always)]
pub fn source_port(head: &[u8]) -> u16 {
    let word = |at: usize| -> u64 {
        head.get(at..at + 8)
            .map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
    };
    let mut h = word(0) ^ word(4).rotate_left(17);
    if head.get(12..14) == Some(&[0x08, 0x00]) {
        h ^= word(26).rotate_left(31) ^ word(30).rotate_left(47);
    }
    h = h.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    0xc000 | ((h >> 50) as u16 & 0x3fff)
}

impl Port for VxlanPort {
    fn name(&self) -> &str {
        &self.name
    }

    /// None: its frames arrive through the uplink, which the switch polls.
    fn queue_pairs(&self) -> u16 {
        0
    }

    fn is_up(&self) -> bool {
        true
    }

    fn poll_rx(&self, _q: u16, _batch: &mut RxBatch, _f: &mut dyn FnMut(&mut RxBatch)) -> usize {
        0
    }

    fn tx_burst(&self, q: u16, src: &RxBatch, sel: &[TxSel]) -> usize {
        let n = sel.len().min(BURST);
        let Some(mac) = self.next_hop() else {
            self.ctr.drop_n(PortDrop::NotReady, n as u64);
            return 0;
        };
        let (tpl, sum) = self.template(mac);
        let mut pre = [[0u8; PREFIX_MAX]; BURST];
        let mut bytes = 0u64;
        for (k, s) in sel[..n].iter().enumerate() {
            let i = usize::from(s.idx);
            let inner = edited_len(src.frame_len(i), s.edit);
            fill(&mut pre[k], &tpl, sum, inner, source_port(src.head(i)));
            bytes += (inner + OVERHEAD) as u64;
        }
        let sent = self
            .uplink
            .port
            .tx_burst_prefixed(q, src, &sel[..n], &pre[..n], OVERHEAD);
        if sent < n {
            // The uplink counted each refused frame by its reason; here they are this
            // tunnel's drops, and its bytes those of the frames that went (in
            // proportion: which ones is the uplink's to know).
            self.ctr.drop_n(PortDrop::NoRxBuffer, (n - sent) as u64);
            bytes = bytes * sent as u64 / n as u64;
        }
        self.ctr.add(sent as u64, bytes);
        sent
    }

    fn stats(&self) -> PortStats {
        let (tp, tb, td) = self.ctr.read();
        PortStats {
            tx_packets: tp,
            tx_bytes: tb,
            drops: td,
            ..Default::default()
        }
    }
}

/// Why a frame from the uplink was not decapsulated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub enum DecapDrop {
    /// Not a whole VXLAN packet to this node (too short, IPv4 options that run past the
    /// frame, another protocol or port, the I flag clear).
    NotVxlan = 0,
    /// A VNI this node has no network for.
    UnknownVni,
    /// A source that is no VTEP of that VNI this node was told of.
    UnknownVtep,
}

impl DecapDrop {
    /// Number of reasons.
    pub const COUNT: usize = 3;
    /// Every reason, in counter order.
    pub const ALL: [DecapDrop; Self::COUNT] = [
        DecapDrop::NotVxlan,
        DecapDrop::UnknownVni,
        DecapDrop::UnknownVtep,
    ];

    /// A stable name for counters.
    pub fn as_str(self) -> &'static str {
        match self {
            DecapDrop::NotVxlan => "not_vxlan",
            DecapDrop::UnknownVni => "unknown_vni",
            DecapDrop::UnknownVtep => "unknown_vtep",
        }
    }
}

/// What the polling core that reads the uplink needs to decapsulate.
pub struct Decap {
    /// The uplink.
    pub uplink: Arc<Uplink>,
    /// (VNI, remote VTEP as a number, tunnel port), sorted.
    tunnels: Vec<(u32, u32, PortId)>,
}

impl Decap {
    /// Decapsulation over `uplink` for `tunnels`: (VNI, remote VTEP, the port).
    pub fn new(
        uplink: Arc<Uplink>,
        tunnels: impl IntoIterator<Item = (u32, Ipv4Addr, PortId)>,
    ) -> Decap {
        let mut t: Vec<(u32, u32, PortId)> = tunnels
            .into_iter()
            .map(|(v, a, p)| (v, u32::from(a), p))
            .collect();
        t.sort_unstable_by_key(|&(v, a, _)| (v, a));
        Decap { uplink, tunnels: t }
    }

    /// The tunnel port a received frame belongs to and the length of its outer headers,
    /// from the frame's head copy (`len` is the whole frame's).
    #[inline]
    pub fn classify(&self, head: &[u8], len: usize) -> Result<(PortId, usize), DecapDrop> {
        if head.len() < OVERHEAD || head[12..14] != [0x08, 0x00] || head[14] >> 4 != 4 {
            return Err(DecapDrop::NotVxlan);
        }
        let ihl = usize::from(head[14] & 0x0f) * 4;
        let udp = 14 + ihl;
        let outer = udp + 16;
        if ihl < 20
            || head.len() < outer
            || len < outer + 14
            || head[23] != 17
            || head[30..34] != self.uplink.local.octets()
            || head[udp + 2..udp + 4] != self.uplink.udp_port.to_be_bytes()
            || head[udp + 8] & 0x08 == 0
        {
            return Err(DecapDrop::NotVxlan);
        }
        let vni = u32::from_be_bytes([0, head[udp + 12], head[udp + 13], head[udp + 14]]);
        let src = u32::from_be_bytes([head[26], head[27], head[28], head[29]]);
        let first = self.tunnels.partition_point(|&(v, _, _)| v < vni);
        let mut known_vni = false;
        for &(v, a, p) in &self.tunnels[first..] {
            if v != vni {
                break;
            }
            known_vni = true;
            if a == src {
                return Ok((p, outer));
            }
        }
        Err(if known_vni {
            DecapDrop::UnknownVtep
        } else {
            DecapDrop::UnknownVni
        })
    }
}

/// How the underlay reaches a remote VTEP, from the kernel's tables.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NextHop {
    /// Through `gateway` (or on-link when it is the VTEP itself), whose MAC is known.
    Resolved {
        /// The next hop's address.
        via: Ipv4Addr,
        /// Its MAC.
        mac: [u8; 6],
    },
    /// The neighbour's MAC is not known yet: the kernel was asked to resolve it.
    Pending {
        /// The next hop's address.
        via: Ipv4Addr,
    },
    /// No route, or one through another interface than the uplink.
    Unreachable(String),
}

/// The next hop to `remote` through `ifname`: the longest matching IPv4 route of the
/// main table (`/proc/net/route`) and that gateway's entry in the neighbour table
/// (`/proc/net/arp`), both of the calling thread's network namespace. When the MAC is not
/// known, one empty UDP datagram to the VTEP's discard port makes the kernel resolve it.
pub fn resolve(remote: Ipv4Addr, ifname: &str) -> NextHop {
    let routes = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
    let Some((dev, gw)) = best_route(&routes, remote) else {
        return NextHop::Unreachable(format!("no route to {remote}"));
    };
    if dev != ifname {
        return NextHop::Unreachable(format!(
            "the route to {remote} leaves through {dev}, not the uplink {ifname}"
        ));
    }
    let via = if gw == Ipv4Addr::UNSPECIFIED {
        remote
    } else {
        gw
    };
    let arp = std::fs::read_to_string("/proc/net/arp").unwrap_or_default();
    if let Some(mac) = neighbour(&arp, via, ifname) {
        return NextHop::Resolved { via, mac };
    }
    if let Ok(s) = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)) {
        let _ = s.send_to(&[], (remote, 9));
    }
    NextHop::Pending { via }
}

/// The longest match for `to` in `/proc/net/route` text: (device, gateway).
fn best_route(text: &str, to: Ipv4Addr) -> Option<(String, Ipv4Addr)> {
    let to = u32::from(to);
    let mut best: Option<(u32, String, Ipv4Addr)> = None;
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 8 {
            continue;
        }
        // The file prints each address as the hex of its four bytes read as a
        // little-endian number.
        let ip = |s: &str| {
            u32::from_str_radix(s, 16)
                .ok()
                .map(|v| u32::from_be_bytes(v.to_le_bytes()))
        };
        let (Some(dst), Some(gw), Some(mask)) = (ip(f[1]), ip(f[2]), ip(f[7])) else {
            continue;
        };
        if to & mask != dst
            || best
                .as_ref()
                .is_some_and(|(m, _, _)| m.count_ones() > mask.count_ones())
        {
            continue;
        }
        best = Some((mask, f[0].to_string(), Ipv4Addr::from(gw)));
    }
    best.map(|(_, d, g)| (d, g))
}

/// The complete neighbour entry of `ip` on `dev` in `/proc/net/arp` text.
fn neighbour(text: &str, ip: Ipv4Addr, dev: &str) -> Option<[u8; 6]> {
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 6 || f[5] != dev || f[0].parse::<Ipv4Addr>().ok() != Some(ip) {
            continue;
        }
        // Flags: 0x2 is a complete entry.
        let flags = u32::from_str_radix(f[2].trim_start_matches("0x"), 16).unwrap_or(0);
        if flags & 0x2 == 0 {
            continue;
        }
        let mut mac = [0u8; 6];
        let parts: Vec<&str> = f[3].split(':').collect();
        if parts.len() != 6 {
            continue;
        }
        for (m, p) in mac.iter_mut().zip(parts) {
            *m = u8::from_str_radix(p, 16).ok()?;
        }
        if mac != [0; 6] {
            return Some(mac);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_pick_the_longest_match_and_read_the_kernels_byte_order() {
        // 10.0.0.0/8 via 192.168.1.1 on eth0; 10.1.0.0/16 on-link on eth1; default via
        // 192.168.1.254 on eth0 (as /proc/net/route prints them).
        let t =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                 eth0\t0000000A\t0101A8C0\t0003\t0\t0\t0\t000000FF\t0\t0\t0\n\
                 eth1\t0000010A\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n\
                 eth0\t00000000\tFE01A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n";
        assert_eq!(
            best_route(t, "10.1.2.3".parse().unwrap()),
            Some(("eth1".into(), Ipv4Addr::UNSPECIFIED))
        );
        assert_eq!(
            best_route(t, "10.2.0.1".parse().unwrap()),
            Some(("eth0".into(), "192.168.1.1".parse().unwrap()))
        );
        assert_eq!(
            best_route(t, "8.8.8.8".parse().unwrap()),
            Some(("eth0".into(), "192.168.1.254".parse().unwrap()))
        );
        assert_eq!(best_route("Iface\n", "8.8.8.8".parse().unwrap()), None);
    }

    #[test]
    fn neighbours_are_read_only_when_complete() {
        let t = "IP address       HW type     Flags       HW address            Mask     Device\n\
                 192.168.1.1      0x1         0x2         52:54:00:12:34:56     *        eth0\n\
                 192.168.1.2      0x1         0x0         00:00:00:00:00:00     *        eth0\n";
        assert_eq!(
            neighbour(t, "192.168.1.1".parse().unwrap(), "eth0"),
            Some([0x52, 0x54, 0, 0x12, 0x34, 0x56])
        );
        assert_eq!(neighbour(t, "192.168.1.1".parse().unwrap(), "eth1"), None);
        assert_eq!(neighbour(t, "192.168.1.2".parse().unwrap(), "eth0"), None);
    }

    #[test]
    fn source_ports_are_dynamic_and_follow_the_flow() {
        let mut a = [0u8; 64];
        a[12] = 8;
        a[26..34].copy_from_slice(&[10, 0, 0, 1, 10, 0, 0, 2]);
        let mut b = a;
        b[34] = 1;
        for h in [&a, &b] {
            assert!(source_port(h) >= 49152);
        }
        assert_eq!(source_port(&a), source_port(&a.clone()));
        assert_ne!(source_port(&a), source_port(&b));
        assert!(source_port(&[]) >= 49152);
    }
}
