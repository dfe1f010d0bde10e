//! Port security for IPv6: the source address, and what a port may say in neighbour
//! discovery (RFC 4861), which every host on the link believes.
//!
//! # Contract
//!
//! [`check`] decides on the bytes it is given, which are the switch's private copy of
//! the frame's head (`pmd::port::HEAD_SNAPSHOT` bytes, all of a short frame): the same
//! bytes the ports transmit, so a guest that rewrites its buffer after the decision
//! cannot change what was checked. Whatever it cannot check within those bytes it
//! drops (fail closed).
//!
//! From a port with port security, an IPv6 packet passes when:
//!
//! 1. its source is one of the port's addresses, or the port's EUI-64 link-local
//!    address, or `::` (else [`DropReason::SpoofedIp`]);
//! 2. its extension headers (hop-by-hop, routing, destination options, AH, fragment)
//!    can be followed to the upper-layer header within the copy; a packet whose chain
//!    leaves the copy, or holds an extension header the walk does not follow (mobility,
//!    HIP, shim6, experimental), might hide a neighbour-discovery message behind it
//!    ([`DropReason::SpoofedNd`]);
//! 3. from `::`, it is a duplicate address detection solicitation, a router solicitation
//!    or an MLD report (v1 131 or v2 143; Linux sends them behind a hop-by-hop header
//!    during DAD), not fragmented; anything else from `::` is [`DropReason::SpoofedIp`];
//! 4. an ICMPv6 neighbour-discovery message (types 133–137) is not fragmented
//!    (RFC 6980), lies whole in the copy, and ([`DropReason::SpoofedNd`] otherwise):
//!    - router advertisements (134) and redirects (137) come only from a port marked as a
//!      router ([`PortSecurity::router`]), and are then not read further;
//!    - a neighbour advertisement's (136) target is one of the port's addresses (as for
//!      the source: its addresses or its EUI-64 link-local address);
//!    - a neighbour solicitation (135) from `::` (DAD) asks for one of the port's
//!      addresses;
//!    - every link-layer address option (source or target, types 1 and 2) carries the
//!      port's MAC, as an ARP sender must, and a message from `::` carries none
//!      (RFC 4861 forbids it there); options must be well formed (no zero length, none
//!      running past the message), since receivers differ in what they make of the rest.
//!
//! A port without addresses (`ips` empty) may use any address, as a source and as a
//! target, exactly as ARP treats it; its MAC and the router rule still hold.
//!
//! Non-first fragments carry no upper-layer header and pass: without their first
//! fragment, which is checked (and dropped when it holds a neighbour-discovery type),
//! they cannot be reassembled into one.

use std::net::{IpAddr, Ipv6Addr};

use super::{DropReason, PortSecurity};

const HOP_BY_HOP: u8 = 0;
const ROUTING: u8 = 43;
const FRAGMENT: u8 = 44;
const AUTH: u8 = 51;
const ICMPV6: u8 = 58;
const DEST_OPTS: u8 = 60;
/// Extension headers (RFC 7045's list) that the walk does not follow: a packet carrying
/// one is refused, since what follows it is unknown.
const UNWALKED: [u8; 5] = [135, 139, 140, 253, 254];

const MLD_REPORT: u8 = 131;
const ROUTER_SOLICIT: u8 = 133;
const ROUTER_ADVERT: u8 = 134;
const NEIGHBOR_SOLICIT: u8 = 135;
const NEIGHBOR_ADVERT: u8 = 136;
const REDIRECT: u8 = 137;
const MLD2_REPORT: u8 = 143;

/// Where the header chain of an IPv6 packet leads, as far as the copy shows it.
enum Upper {
    /// The upper-layer header `proto` starts at offset `at` of the packet; `fragmented`
    /// when a fragment header (of a first fragment) came before it.
    At {
        proto: u8,
        at: usize,
        fragmented: bool,
    },
    /// A fragment other than the first: no upper-layer header in it.
    LaterFragment,
    /// The chain runs past the bytes there are.
    Unknown,
}

/// Follows the extension headers of `pkt` (the IPv6 packet, fixed header first, cut
/// to what the copy holds of it). Each header is at least 8 bytes long, so the walk
/// ends within `pkt.len() / 8` steps.
fn upper(pkt: &[u8]) -> Upper {
    let mut proto = pkt[6];
    let mut at = 40;
    let mut fragmented = false;
    loop {
        let len = match proto {
            HOP_BY_HOP | ROUTING | DEST_OPTS => match pkt.get(at + 1) {
                Some(&l) => (usize::from(l) + 1) * 8,
                None => return Upper::Unknown,
            },
            AUTH => match pkt.get(at + 1) {
                Some(&l) => (usize::from(l) + 2) * 4,
                None => return Upper::Unknown,
            },
            FRAGMENT => {
                let Some(h) = pkt.get(at..at + 8) else {
                    return Upper::Unknown;
                };
                if u16::from_be_bytes([h[2], h[3]]) >> 3 != 0 {
                    return Upper::LaterFragment;
                }
                fragmented = true;
                8
            }
            p if UNWALKED.contains(&p) => return Upper::Unknown,
            _ => {
                return Upper::At {
                    proto,
                    at,
                    fragmented,
                }
            }
        };
        proto = pkt[at];
        at += len;
    }
}

/// Checks an IPv6 packet (`l3`: its bytes in the private copy, from the fixed header
/// on) from a port with port security `sec`; see the module documentation.
pub(super) fn check(sec: &PortSecurity, l3: &[u8]) -> Result<(), DropReason> {
    let Some(fixed) = l3.get(..40) else {
        return Err(DropReason::SpoofedIp);
    };
    if fixed[0] >> 4 != 6 {
        return Err(DropReason::SpoofedIp);
    }
    let mut a = [0u8; 16];
    a.copy_from_slice(&fixed[8..24]);
    let src = Ipv6Addr::from(a);
    let unspecified = src.is_unspecified();
    if !unspecified && !sec.owns_v6(src) {
        return Err(DropReason::SpoofedIp);
    }
    // The packet as far as the copy holds it; `whole` when that is all of it.
    let declared = 40 + usize::from(u16::from_be_bytes([fixed[4], fixed[5]]));
    let whole = declared <= l3.len();
    let pkt = &l3[..declared.min(l3.len())];
    // What cannot be told apart from a neighbour-discovery message is refused as one;
    // from `::` as a bad source, whatever it is.
    let refuse = if unspecified {
        DropReason::SpoofedIp
    } else {
        DropReason::SpoofedNd
    };
    let (at, fragmented) = match upper(pkt) {
        Upper::At {
            proto: ICMPV6,
            at,
            fragmented,
        } => (at, fragmented),
        Upper::At { .. } | Upper::LaterFragment if unspecified => {
            return Err(DropReason::SpoofedIp)
        }
        Upper::At { .. } | Upper::LaterFragment => return Ok(()),
        Upper::Unknown => return Err(refuse),
    };
    let Some(&ty) = pkt.get(at) else {
        return Err(refuse);
    };
    let nd = (ROUTER_SOLICIT..=REDIRECT).contains(&ty);
    if unspecified {
        let may = matches!(
            ty,
            ROUTER_SOLICIT | NEIGHBOR_SOLICIT | MLD_REPORT | MLD2_REPORT
        );
        if !may || fragmented {
            return Err(DropReason::SpoofedIp);
        }
    }
    if !nd {
        return Ok(());
    }
    if fragmented {
        return Err(DropReason::SpoofedNd);
    }
    if matches!(ty, ROUTER_ADVERT | REDIRECT) {
        return if sec.router {
            Ok(())
        } else {
            Err(DropReason::SpoofedNd)
        };
    }
    if !whole {
        return Err(DropReason::SpoofedNd);
    }
    check_nd(sec, ty, &pkt[at..], unspecified)
}

/// Checks a router solicitation, neighbour solicitation or advertisement, `msg` being
/// the whole ICMPv6 message.
fn check_nd(sec: &PortSecurity, ty: u8, msg: &[u8], unspecified: bool) -> Result<(), DropReason> {
    let target = || -> Option<Ipv6Addr> {
        let t: [u8; 16] = msg.get(8..24)?.try_into().ok()?;
        Some(Ipv6Addr::from(t))
    };
    let options = match ty {
        ROUTER_SOLICIT => 8,
        NEIGHBOR_SOLICIT | NEIGHBOR_ADVERT => {
            let t = target().ok_or(DropReason::SpoofedNd)?;
            // An advertisement always speaks for its target; a solicitation from `::`
            // claims its target (DAD), one from an address only asks about it.
            let claims = ty == NEIGHBOR_ADVERT || unspecified;
            if claims && !sec.owns_v6(t) {
                return Err(DropReason::SpoofedNd);
            }
            24
        }
        _ => return Err(DropReason::SpoofedNd),
    };
    let mut rest = msg.get(options..).ok_or(DropReason::SpoofedNd)?;
    while !rest.is_empty() {
        let (kind, len) = match rest {
            [k, l, ..] => (*k, usize::from(*l) * 8),
            _ => return Err(DropReason::SpoofedNd),
        };
        let opt = rest
            .get(..len)
            .filter(|_| len > 0)
            .ok_or(DropReason::SpoofedNd)?;
        // Source (1) and target (2) link-layer address: 8 bytes on Ethernet.
        if matches!(kind, 1 | 2) && (unspecified || opt.get(2..) != Some(sec.mac.as_bytes())) {
            return Err(DropReason::SpoofedNd);
        }
        rest = &rest[len..];
    }
    Ok(())
}

impl PortSecurity {
    /// Whether the port may use `a` as its own IPv6 address: one of its addresses (any
    /// when it has none) or its EUI-64 link-local address.
    fn owns_v6(&self, a: Ipv6Addr) -> bool {
        self.allows(IpAddr::V6(a)) || a == self.link_local()
    }
}

#[cfg(test)]
mod tests;
