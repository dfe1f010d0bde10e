//! IEEE 802.1Q / 802.1ad VLAN tag view.
//!
//! In a tagged frame the Ethernet EtherType field holds a TPID (0x8100 for a customer
//! tag, 0x88a8 for a service tag) and the Ethernet payload starts with the rest of the
//! tag: the 16-bit TCI, then the encapsulated EtherType. [`VlanTag`] views that payload.
//! A frame whose outer TPID is 0x88a8, or whose encapsulated EtherType is itself a TPID,
//! carries stacked tags ("QinQ").

use core::fmt;

use super::{field, need, EtherType, Result};

/// A tag control information word: PCP (3 bits), DEI (1 bit), VLAN id (12 bits).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Tci(pub u16);

impl Tci {
    /// Builds a TCI; `pcp` is truncated to 3 bits and `vid` to 12 bits.
    pub const fn new(pcp: u8, dei: bool, vid: u16) -> Tci {
        Tci(((pcp as u16 & 0x7) << 13) | ((dei as u16) << 12) | (vid & 0x0fff))
    }

    /// Priority code point (802.1p), 0..=7.
    pub const fn pcp(self) -> u8 {
        (self.0 >> 13) as u8
    }

    /// Drop eligible indicator.
    pub const fn dei(self) -> bool {
        self.0 & 0x1000 != 0
    }

    /// VLAN identifier, 0..=4095 (0 means "priority tag, no VLAN"; 4095 is reserved).
    pub const fn vid(self) -> u16 {
        self.0 & 0x0fff
    }

    /// The same TCI with another VLAN id (PCP and DEI kept).
    pub const fn with_vid(self, vid: u16) -> Tci {
        Tci((self.0 & 0xf000) | (vid & 0x0fff))
    }
}

impl fmt::Display for Tci {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "vid {} pcp {}", self.vid(), self.pcp())?;
        if self.dei() {
            f.write_str(" dei")?;
        }
        Ok(())
    }
}

mod offset {
    pub const TCI: usize = 0;
    pub const ETHERTYPE: usize = 2;
    pub const PAYLOAD: usize = 4;
}

/// A view of a VLAN tag body (TCI and encapsulated EtherType) and what follows it.
#[derive(Debug, Clone)]
pub struct VlanTag<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> VlanTag<T> {
    /// Length of the tag body after the TPID: TCI and encapsulated EtherType.
    pub const HEADER_LEN: usize = offset::PAYLOAD;

    /// Wraps `buffer` without checking it.
    pub const fn new_unchecked(buffer: T) -> Self {
        VlanTag { buffer }
    }

    /// Wraps `buffer` after [`check_len`](Self::check_len).
    pub fn new_checked(buffer: T) -> Result<Self> {
        let tag = Self::new_unchecked(buffer);
        tag.check_len()?;
        Ok(tag)
    }

    /// Checks that the buffer holds the 4-byte tag body.
    pub fn check_len(&self) -> Result<()> {
        need("vlan tag", self.buffer.as_ref(), Self::HEADER_LEN)
    }

    /// Returns the wrapped buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Tag control information.
    pub fn tci(&self) -> Tci {
        Tci(field::get_u16(self.buffer.as_ref(), offset::TCI))
    }

    /// VLAN identifier (low 12 bits of the TCI).
    pub fn vid(&self) -> u16 {
        self.tci().vid()
    }

    /// Priority code point.
    pub fn pcp(&self) -> u8 {
        self.tci().pcp()
    }

    /// The encapsulated EtherType; a VLAN TPID here means another tag follows.
    pub fn ethertype(&self) -> EtherType {
        EtherType(field::get_u16(self.buffer.as_ref(), offset::ETHERTYPE))
    }

    /// Everything after the tag body.
    pub fn payload(&self) -> &[u8] {
        let buf = self.buffer.as_ref();
        field::range(buf, offset::PAYLOAD, buf.len())
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> VlanTag<T> {
    /// Sets the tag control information.
    pub fn set_tci(&mut self, tci: Tci) {
        field::set_u16(self.buffer.as_mut(), offset::TCI, tci.0);
    }

    /// Sets the encapsulated EtherType.
    pub fn set_ethertype(&mut self, ethertype: EtherType) {
        field::set_u16(self.buffer.as_mut(), offset::ETHERTYPE, ethertype.0);
    }

    /// Mutable payload (everything after the tag body).
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let buf = self.buffer.as_mut();
        let len = buf.len();
        field::range_mut(buf, offset::PAYLOAD, len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Error, EthernetFrame};

    #[test]
    fn tci_fields() {
        let t = Tci::new(5, true, 100);
        assert_eq!(t.0, (5 << 13) | 0x1000 | 100);
        assert_eq!((t.pcp(), t.dei(), t.vid()), (5, true, 100));
        assert_eq!(t.with_vid(4095).vid(), 4095);
        assert_eq!(t.with_vid(7).pcp(), 5);
        assert_eq!(Tci::new(0xff, false, 0xffff), Tci(0xefff));
        assert_eq!(t.to_string(), "vid 100 pcp 5 dei");
    }

    #[test]
    fn tagged_frame() {
        let frame = [
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 2, 0, 0, 0, 0, 1, // addresses
            0x81, 0x00, // TPID
            0x60, 0x0a, // pcp 3, vid 10
            0x08, 0x06, // ARP
            0xde, 0xad,
        ];
        let eth = EthernetFrame::new_checked(&frame[..]).expect("valid frame");
        assert_eq!(eth.ethertype(), EtherType::VLAN);
        let tag = VlanTag::new_checked(eth.payload()).expect("valid tag");
        assert_eq!(tag.vid(), 10);
        assert_eq!(tag.pcp(), 3);
        assert_eq!(tag.ethertype(), EtherType::ARP);
        assert_eq!(tag.payload(), &[0xde, 0xad]);
    }

    #[test]
    fn qinq_is_visible_as_stacked_tpids() {
        let frame = [
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 2, 0, 0, 0, 0, 1, // addresses
            0x88, 0xa8, 0x00, 0x64, // S-tag vid 100
            0x81, 0x00, 0x00, 0x0a, // C-tag vid 10
            0x08, 0x00,
        ];
        let eth = EthernetFrame::new_checked(&frame[..]).expect("valid frame");
        assert_eq!(eth.ethertype(), EtherType::QINQ);
        let outer = VlanTag::new_checked(eth.payload()).expect("valid tag");
        assert_eq!(outer.vid(), 100);
        assert!(outer.ethertype().is_vlan_tpid());
        let inner = VlanTag::new_checked(outer.payload()).expect("valid tag");
        assert_eq!(inner.vid(), 10);
        assert_eq!(inner.ethertype(), EtherType::IPV4);
    }

    #[test]
    fn setters() {
        let mut buf = [0u8; 6];
        let mut tag = VlanTag::new_checked(&mut buf[..]).expect("valid tag");
        tag.set_tci(Tci::new(7, false, 4094));
        tag.set_ethertype(EtherType::IPV6);
        tag.payload_mut().copy_from_slice(&[1, 2]);
        assert_eq!(buf, [0xef, 0xfe, 0x86, 0xdd, 1, 2]);
    }

    #[test]
    fn truncated() {
        for len in 0..4 {
            let buf = [0x81u8; 4];
            assert!(matches!(
                VlanTag::new_checked(&buf[..len]),
                Err(Error::Truncated { needed: 4, .. })
            ));
        }
        let tag = VlanTag::new_unchecked(&[0x12u8][..]);
        assert_eq!(tag.tci(), Tci(0));
        assert!(tag.payload().is_empty());
    }
}
