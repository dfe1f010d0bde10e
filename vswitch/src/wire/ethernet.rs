//! Ethernet II header view and MAC addresses.

use core::fmt;

use super::{field, need, Result};

/// A 48-bit IEEE 802 MAC address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct EthernetAddress(pub [u8; 6]);

impl EthernetAddress {
    /// `ff:ff:ff:ff:ff:ff`.
    pub const BROADCAST: EthernetAddress = EthernetAddress([0xff; 6]);

    /// The address as a byte array.
    pub const fn as_bytes(&self) -> &[u8; 6] {
        &self.0
    }

    /// True for `ff:ff:ff:ff:ff:ff`.
    pub const fn is_broadcast(&self) -> bool {
        u64_of(self.0) == 0xffff_ffff_ffff
    }

    /// True when the group bit (least significant bit of the first octet) is set; this
    /// includes the broadcast address.
    pub const fn is_multicast(&self) -> bool {
        self.0[0] & 0x01 != 0
    }

    /// True when the group bit is clear.
    pub const fn is_unicast(&self) -> bool {
        !self.is_multicast()
    }

    /// True for `00:00:00:00:00:00`.
    pub const fn is_zero(&self) -> bool {
        u64_of(self.0) == 0
    }

    /// True when the locally-administered bit is set.
    pub const fn is_local(&self) -> bool {
        self.0[0] & 0x02 != 0
    }

    /// The address in the low 48 bits of a `u64` (first octet most significant).
    pub const fn to_u64(&self) -> u64 {
        u64_of(self.0)
    }

    /// The address held in the low 48 bits of `v` (the high 16 bits are ignored).
    pub const fn from_u64(v: u64) -> EthernetAddress {
        let b = v.to_be_bytes();
        EthernetAddress([b[2], b[3], b[4], b[5], b[6], b[7]])
    }
}

const fn u64_of(a: [u8; 6]) -> u64 {
    u64::from_be_bytes([0, 0, a[0], a[1], a[2], a[3], a[4], a[5]])
}

impl fmt::Display for EthernetAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl From<[u8; 6]> for EthernetAddress {
    fn from(b: [u8; 6]) -> Self {
        EthernetAddress(b)
    }
}

/// An EtherType (or 802.1Q TPID) value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EtherType(pub u16);

impl EtherType {
    /// IPv4, 0x0800.
    pub const IPV4: EtherType = EtherType(0x0800);
    /// ARP, 0x0806.
    pub const ARP: EtherType = EtherType(0x0806);
    /// 802.1Q customer VLAN tag (C-tag) TPID, 0x8100.
    pub const VLAN: EtherType = EtherType(0x8100);
    /// IPv6, 0x86dd.
    pub const IPV6: EtherType = EtherType(0x86dd);
    /// 802.1ad service VLAN tag (S-tag, "QinQ") TPID, 0x88a8.
    pub const QINQ: EtherType = EtherType(0x88a8);

    /// True for the TPIDs that introduce a VLAN tag: 0x8100 and 0x88a8.
    pub const fn is_vlan_tpid(self) -> bool {
        self.0 == Self::VLAN.0 || self.0 == Self::QINQ.0
    }
}

impl fmt::Display for EtherType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#06x}", self.0)
    }
}

mod offset {
    pub const DST: usize = 0;
    pub const SRC: usize = 6;
    pub const ETHERTYPE: usize = 12;
    pub const PAYLOAD: usize = 14;
}

/// A view of an Ethernet II frame: destination, source, EtherType, payload.
///
/// The EtherType is the first one after the source address; when it is a VLAN TPID the
/// payload starts with the tag (see [`super::VlanTag`]).
#[derive(Debug, Clone)]
pub struct EthernetFrame<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> EthernetFrame<T> {
    /// Length of the Ethernet II header.
    pub const HEADER_LEN: usize = offset::PAYLOAD;

    /// Wraps `buffer` without checking it (accessors then read zeros past its end).
    pub const fn new_unchecked(buffer: T) -> Self {
        EthernetFrame { buffer }
    }

    /// Wraps `buffer` after [`check_len`](Self::check_len).
    pub fn new_checked(buffer: T) -> Result<Self> {
        let frame = Self::new_unchecked(buffer);
        frame.check_len()?;
        Ok(frame)
    }

    /// Checks that the buffer holds the 14-byte header.
    pub fn check_len(&self) -> Result<()> {
        need("ethernet header", self.buffer.as_ref(), Self::HEADER_LEN)
    }

    /// Returns the wrapped buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Destination MAC address.
    pub fn dst_addr(&self) -> EthernetAddress {
        EthernetAddress(field::get_array(self.buffer.as_ref(), offset::DST))
    }

    /// Source MAC address.
    pub fn src_addr(&self) -> EthernetAddress {
        EthernetAddress(field::get_array(self.buffer.as_ref(), offset::SRC))
    }

    /// EtherType (or outer TPID of a tagged frame).
    pub fn ethertype(&self) -> EtherType {
        EtherType(field::get_u16(self.buffer.as_ref(), offset::ETHERTYPE))
    }

    /// Everything after the 14-byte header.
    pub fn payload(&self) -> &[u8] {
        let buf = self.buffer.as_ref();
        field::range(buf, offset::PAYLOAD, buf.len())
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> EthernetFrame<T> {
    /// Sets the destination MAC address.
    pub fn set_dst_addr(&mut self, addr: EthernetAddress) {
        field::set_bytes(self.buffer.as_mut(), offset::DST, &addr.0);
    }

    /// Sets the source MAC address.
    pub fn set_src_addr(&mut self, addr: EthernetAddress) {
        field::set_bytes(self.buffer.as_mut(), offset::SRC, &addr.0);
    }

    /// Sets the EtherType.
    pub fn set_ethertype(&mut self, ethertype: EtherType) {
        field::set_u16(self.buffer.as_mut(), offset::ETHERTYPE, ethertype.0);
    }

    /// Mutable payload (everything after the header).
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let buf = self.buffer.as_mut();
        let len = buf.len();
        field::range_mut(buf, offset::PAYLOAD, len)
    }
}

impl<T: AsRef<[u8]>> AsRef<[u8]> for EthernetFrame<T> {
    fn as_ref(&self) -> &[u8] {
        self.buffer.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Error;

    const FRAME: [u8; 18] = [
        0x02, 0x00, 0x00, 0x00, 0x00, 0x01, // dst
        0x02, 0x00, 0x00, 0x00, 0x00, 0x02, // src
        0x08, 0x00, // IPv4
        0xaa, 0xbb, 0xcc, 0xdd,
    ];

    #[test]
    fn accessors() {
        let f = EthernetFrame::new_checked(&FRAME[..]).expect("valid frame");
        assert_eq!(f.dst_addr(), EthernetAddress([2, 0, 0, 0, 0, 1]));
        assert_eq!(f.src_addr(), EthernetAddress([2, 0, 0, 0, 0, 2]));
        assert_eq!(f.ethertype(), EtherType::IPV4);
        assert_eq!(f.payload(), &[0xaa, 0xbb, 0xcc, 0xdd]);
    }

    #[test]
    fn setters_round_trip() {
        let mut buf = [0u8; 16];
        let mut f = EthernetFrame::new_checked(&mut buf[..]).expect("valid frame");
        f.set_dst_addr(EthernetAddress::BROADCAST);
        f.set_src_addr(EthernetAddress([2, 1, 2, 3, 4, 5]));
        f.set_ethertype(EtherType::ARP);
        f.payload_mut().copy_from_slice(&[7, 8]);
        assert_eq!(f.dst_addr(), EthernetAddress::BROADCAST);
        assert_eq!(f.src_addr(), EthernetAddress([2, 1, 2, 3, 4, 5]));
        assert_eq!(f.ethertype(), EtherType::ARP);
        assert_eq!(f.payload(), &[7, 8]);
        assert_eq!(&buf[12..], &[0x08, 0x06, 7, 8]);
    }

    #[test]
    fn header_only_frame_has_empty_payload() {
        let f = EthernetFrame::new_checked(&FRAME[..14]).expect("valid frame");
        assert!(f.payload().is_empty());
    }

    #[test]
    fn truncated() {
        for len in 0..14 {
            assert_eq!(
                EthernetFrame::new_checked(&FRAME[..len]).err(),
                Some(Error::Truncated {
                    what: "ethernet header",
                    needed: 14,
                    available: len
                })
            );
        }
        // Unchecked views of short buffers read zeros instead of panicking.
        let f = EthernetFrame::new_unchecked(&FRAME[..8]);
        assert_eq!(f.src_addr(), EthernetAddress::default());
        assert_eq!(f.ethertype(), EtherType(0));
        assert!(f.payload().is_empty());
    }

    #[test]
    fn address_classes() {
        let b = EthernetAddress::BROADCAST;
        assert!(b.is_broadcast() && b.is_multicast() && !b.is_unicast());
        let m = EthernetAddress([0x01, 0x00, 0x5e, 0, 0, 1]);
        assert!(!m.is_broadcast() && m.is_multicast() && !m.is_unicast());
        let u = EthernetAddress([0x02, 0, 0, 0, 0, 1]);
        assert!(!u.is_broadcast() && !u.is_multicast() && u.is_unicast() && u.is_local());
        assert!(EthernetAddress::default().is_zero());
        assert_eq!(EthernetAddress::from_u64(u.to_u64()), u);
        assert_eq!(
            EthernetAddress::from_u64(u64::MAX),
            EthernetAddress::BROADCAST
        );
    }

    #[test]
    fn display() {
        assert_eq!(
            EthernetAddress([0x02, 0xab, 0, 0x10, 0xff, 1]).to_string(),
            "02:ab:00:10:ff:01"
        );
        assert_eq!(EtherType::VLAN.to_string(), "0x8100");
        assert!(EtherType::VLAN.is_vlan_tpid() && EtherType::QINQ.is_vlan_tpid());
        assert!(!EtherType::IPV4.is_vlan_tpid());
    }
}
