//! IPv4 header view (RFC 791).

use std::net::Ipv4Addr;

use super::checksum::{checksum, incremental_update};
use super::{field, need, Error, Result};

mod offset {
    pub const VER_IHL: usize = 0;
    pub const DSCP_ECN: usize = 1;
    pub const TOTAL_LEN: usize = 2;
    pub const IDENT: usize = 4;
    pub const FLAGS_FRAG: usize = 6;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: usize = 10;
    pub const SRC: usize = 12;
    pub const DST: usize = 16;
    pub const OPTIONS: usize = 20;
}

/// A view of an IPv4 packet: header (with options) and payload.
///
/// The payload ends at the header's total length, so Ethernet padding after the packet
/// is not part of it.
#[derive(Debug, Clone)]
pub struct Ipv4Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv4Packet<T> {
    /// Length of a header without options.
    pub const MIN_HEADER_LEN: usize = offset::OPTIONS;

    /// Wraps `buffer` without checking it.
    pub const fn new_unchecked(buffer: T) -> Self {
        Ipv4Packet { buffer }
    }

    /// Wraps `buffer` after [`check_len`](Self::check_len).
    pub fn new_checked(buffer: T) -> Result<Self> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Checks that the version is 4, that the header length is at least 20 bytes, that
    /// the total length covers the header, and that the buffer holds the total length.
    /// The checksum is not verified (see [`verify_checksum`](Self::verify_checksum)).
    pub fn check_len(&self) -> Result<()> {
        let buf = self.buffer.as_ref();
        need("ipv4 header", buf, Self::MIN_HEADER_LEN)?;
        if self.version() != 4 {
            return Err(Error::Malformed {
                field: "ipv4 version",
                value: self.version().into(),
            });
        }
        let header_len = self.header_len();
        if header_len < Self::MIN_HEADER_LEN {
            return Err(Error::Malformed {
                field: "ipv4 header length",
                value: header_len as u32,
            });
        }
        need("ipv4 header", buf, header_len)?;
        let total_len = usize::from(self.total_len());
        if total_len < header_len {
            return Err(Error::Malformed {
                field: "ipv4 total length",
                value: total_len as u32,
            });
        }
        need("ipv4 packet", buf, total_len)
    }

    /// Returns the wrapped buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    fn buf(&self) -> &[u8] {
        self.buffer.as_ref()
    }

    /// IP version (4 after `check_len`).
    pub fn version(&self) -> u8 {
        field::get_u8(self.buf(), offset::VER_IHL) >> 4
    }

    /// Header length in bytes (IHL × 4), 20..=60 after `check_len`.
    pub fn header_len(&self) -> usize {
        usize::from(field::get_u8(self.buf(), offset::VER_IHL) & 0x0f) * 4
    }

    /// Differentiated services code point.
    pub fn dscp(&self) -> u8 {
        field::get_u8(self.buf(), offset::DSCP_ECN) >> 2
    }

    /// Explicit congestion notification bits.
    pub fn ecn(&self) -> u8 {
        field::get_u8(self.buf(), offset::DSCP_ECN) & 0x03
    }

    /// Total length of header and payload in bytes.
    pub fn total_len(&self) -> u16 {
        field::get_u16(self.buf(), offset::TOTAL_LEN)
    }

    /// Identification.
    pub fn ident(&self) -> u16 {
        field::get_u16(self.buf(), offset::IDENT)
    }

    /// The "don't fragment" flag.
    pub fn dont_frag(&self) -> bool {
        field::get_u16(self.buf(), offset::FLAGS_FRAG) & 0x4000 != 0
    }

    /// The "more fragments" flag.
    pub fn more_frags(&self) -> bool {
        field::get_u16(self.buf(), offset::FLAGS_FRAG) & 0x2000 != 0
    }

    /// Fragment offset in bytes.
    pub fn frag_offset(&self) -> u16 {
        (field::get_u16(self.buf(), offset::FLAGS_FRAG) & 0x1fff) << 3
    }

    /// Time to live.
    pub fn ttl(&self) -> u8 {
        field::get_u8(self.buf(), offset::TTL)
    }

    /// Protocol number of the payload (6 TCP, 17 UDP, 1 ICMP, …).
    pub fn protocol(&self) -> u8 {
        field::get_u8(self.buf(), offset::PROTOCOL)
    }

    /// Header checksum field.
    pub fn checksum(&self) -> u16 {
        field::get_u16(self.buf(), offset::CHECKSUM)
    }

    /// Source address.
    pub fn src_addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(field::get_array::<4>(self.buf(), offset::SRC))
    }

    /// Destination address.
    pub fn dst_addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(field::get_array::<4>(self.buf(), offset::DST))
    }

    /// The header, options included.
    pub fn header(&self) -> &[u8] {
        field::range(self.buf(), 0, self.header_len())
    }

    /// The options (empty when the header is 20 bytes).
    pub fn options(&self) -> &[u8] {
        field::range(self.buf(), offset::OPTIONS, self.header_len())
    }

    /// The payload: from the end of the header to the total length.
    pub fn payload(&self) -> &[u8] {
        field::range(self.buf(), self.header_len(), usize::from(self.total_len()))
    }

    /// True when the header checksum is correct.
    pub fn verify_checksum(&self) -> bool {
        checksum(self.header()) == 0
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv4Packet<T> {
    fn buf_mut(&mut self) -> &mut [u8] {
        self.buffer.as_mut()
    }

    /// Sets the version (high nibble of the first byte).
    pub fn set_version(&mut self, version: u8) {
        let b = field::get_u8(self.buf(), offset::VER_IHL);
        field::set_u8(self.buf_mut(), offset::VER_IHL, (b & 0x0f) | (version << 4));
    }

    /// Sets the header length in bytes (stored as IHL = `len / 4`, truncated to 4 bits).
    pub fn set_header_len(&mut self, len: usize) {
        let b = field::get_u8(self.buf(), offset::VER_IHL);
        let ihl = ((len / 4) & 0x0f) as u8;
        field::set_u8(self.buf_mut(), offset::VER_IHL, (b & 0xf0) | ihl);
    }

    /// Sets DSCP (6 bits) and ECN (2 bits).
    pub fn set_dscp_ecn(&mut self, dscp: u8, ecn: u8) {
        field::set_u8(self.buf_mut(), offset::DSCP_ECN, (dscp << 2) | (ecn & 0x03));
    }

    /// Sets the total length.
    pub fn set_total_len(&mut self, len: u16) {
        field::set_u16(self.buf_mut(), offset::TOTAL_LEN, len);
    }

    /// Sets the identification.
    pub fn set_ident(&mut self, ident: u16) {
        field::set_u16(self.buf_mut(), offset::IDENT, ident);
    }

    /// Sets the flags and the fragment offset (in bytes, a multiple of 8).
    pub fn set_frag(&mut self, dont_frag: bool, more_frags: bool, offset_bytes: u16) {
        let v = (u16::from(dont_frag) << 14) | (u16::from(more_frags) << 13) | (offset_bytes >> 3);
        field::set_u16(self.buf_mut(), offset::FLAGS_FRAG, v);
    }

    /// Sets the time to live (the checksum is not updated).
    pub fn set_ttl(&mut self, ttl: u8) {
        field::set_u8(self.buf_mut(), offset::TTL, ttl);
    }

    /// Sets the protocol number.
    pub fn set_protocol(&mut self, protocol: u8) {
        field::set_u8(self.buf_mut(), offset::PROTOCOL, protocol);
    }

    /// Sets the checksum field.
    pub fn set_checksum(&mut self, checksum: u16) {
        field::set_u16(self.buf_mut(), offset::CHECKSUM, checksum);
    }

    /// Sets the source address.
    pub fn set_src_addr(&mut self, addr: Ipv4Addr) {
        field::set_bytes(self.buf_mut(), offset::SRC, &addr.octets());
    }

    /// Sets the destination address.
    pub fn set_dst_addr(&mut self, addr: Ipv4Addr) {
        field::set_bytes(self.buf_mut(), offset::DST, &addr.octets());
    }

    /// Recomputes the header checksum over the whole header.
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let sum = checksum(self.header());
        self.set_checksum(sum);
    }

    /// Decrements the TTL and updates the checksum incrementally (RFC 1624). Returns the
    /// new TTL, or `None` (and changes nothing) when the TTL is already 0.
    pub fn decrement_ttl(&mut self) -> Option<u8> {
        let ttl = self.ttl().checked_sub(1)?;
        let old_word = field::get_u16(self.buf(), offset::TTL);
        let new_word = (u16::from(ttl) << 8) | u16::from(self.protocol());
        self.set_ttl(ttl);
        let hc = incremental_update(self.checksum(), old_word, new_word);
        self.set_checksum(hc);
        Some(ttl)
    }

    /// Mutable payload (header end to total length).
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let (start, end) = (self.header_len(), usize::from(self.total_len()));
        field::range_mut(self.buf_mut(), start, end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A well-known example header (UDP, 192.168.0.1 -> 192.168.0.199, checksum 0xb861)
    /// followed by a 95-byte payload and 3 bytes of link padding.
    fn example() -> Vec<u8> {
        let mut v = vec![
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        v.extend((0..95).map(|i| i as u8));
        v.extend([0xee; 3]);
        v
    }

    #[test]
    fn accessors() {
        let buf = example();
        let p = Ipv4Packet::new_checked(&buf[..]).expect("valid packet");
        assert_eq!(p.version(), 4);
        assert_eq!(p.header_len(), 20);
        assert_eq!((p.dscp(), p.ecn()), (0, 0));
        assert_eq!(p.total_len(), 0x73);
        assert!(p.dont_frag() && !p.more_frags());
        assert_eq!(p.frag_offset(), 0);
        assert_eq!(p.ttl(), 64);
        assert_eq!(p.protocol(), 17);
        assert_eq!(p.checksum(), 0xb861);
        assert_eq!(p.src_addr(), Ipv4Addr::new(192, 168, 0, 1));
        assert_eq!(p.dst_addr(), Ipv4Addr::new(192, 168, 0, 199));
        assert!(p.options().is_empty());
        assert_eq!(p.payload().len(), 95, "padding is not payload");
        assert!(p.verify_checksum());
    }

    #[test]
    fn fill_checksum_computes_the_known_value() {
        let mut buf = example();
        let mut p = Ipv4Packet::new_checked(&mut buf[..]).expect("valid packet");
        p.set_checksum(0);
        assert!(!p.verify_checksum());
        p.fill_checksum();
        assert_eq!(p.checksum(), 0xb861);
    }

    #[test]
    fn build_with_options() {
        let mut buf = [0u8; 28];
        let mut p = Ipv4Packet::new_unchecked(&mut buf[..]);
        p.set_version(4);
        p.set_header_len(24);
        p.set_dscp_ecn(46, 1);
        p.set_total_len(28);
        p.set_ident(0x1234);
        p.set_frag(false, true, 1480);
        p.set_ttl(1);
        p.set_protocol(1);
        p.set_src_addr(Ipv4Addr::new(10, 0, 0, 1));
        p.set_dst_addr(Ipv4Addr::new(10, 0, 0, 2));
        p.payload_mut().copy_from_slice(&[9, 9, 9, 9]);
        p.fill_checksum();
        let p = Ipv4Packet::new_checked(&buf[..]).expect("valid packet");
        assert_eq!(p.header_len(), 24);
        assert_eq!(p.options(), &[0, 0, 0, 0]);
        assert_eq!((p.dscp(), p.ecn()), (46, 1));
        assert_eq!(p.ident(), 0x1234);
        assert!(!p.dont_frag() && p.more_frags());
        assert_eq!(p.frag_offset(), 1480);
        assert_eq!(p.payload(), &[9, 9, 9, 9]);
        assert!(p.verify_checksum());
    }

    #[test]
    fn decrement_ttl_keeps_checksum_valid() {
        let mut buf = example();
        let mut p = Ipv4Packet::new_checked(&mut buf[..]).expect("valid packet");
        for expected in (0..64).rev() {
            assert_eq!(p.decrement_ttl(), Some(expected));
            assert!(p.verify_checksum());
        }
        assert_eq!(p.decrement_ttl(), None);
        assert_eq!(p.ttl(), 0);
        assert!(p.verify_checksum());
    }

    #[test]
    fn truncated_and_malformed() {
        let buf = example();
        for len in 0..20 {
            assert!(matches!(
                Ipv4Packet::new_checked(&buf[..len]),
                Err(Error::Truncated { needed: 20, .. })
            ));
        }
        // Buffer shorter than the total length.
        assert_eq!(
            Ipv4Packet::new_checked(&buf[..0x72]).err(),
            Some(Error::Truncated {
                what: "ipv4 packet",
                needed: 0x73,
                available: 0x72
            })
        );
        let mut bad = example();
        bad[0] = 0x65;
        assert_eq!(
            Ipv4Packet::new_checked(&bad[..]).err(),
            Some(Error::Malformed {
                field: "ipv4 version",
                value: 6
            })
        );
        bad[0] = 0x44;
        assert!(matches!(
            Ipv4Packet::new_checked(&bad[..]),
            Err(Error::Malformed {
                field: "ipv4 header length",
                value: 16
            })
        ));
        // IHL says 60 bytes but only 40 are there.
        bad[0] = 0x4f;
        assert!(matches!(
            Ipv4Packet::new_checked(&bad[..40]),
            Err(Error::Truncated {
                what: "ipv4 header",
                needed: 60,
                ..
            })
        ));
        let mut bad = example();
        bad[2] = 0;
        bad[3] = 19;
        assert!(matches!(
            Ipv4Packet::new_checked(&bad[..]),
            Err(Error::Malformed {
                field: "ipv4 total length",
                ..
            })
        ));
    }

    #[test]
    fn unchecked_views_never_panic() {
        let buf = [0x4fu8, 0, 0xff, 0xff];
        let p = Ipv4Packet::new_unchecked(&buf[..]);
        assert_eq!(p.header_len(), 60);
        assert!(p.options().is_empty());
        assert!(p.payload().is_empty());
        assert_eq!(p.dst_addr(), Ipv4Addr::UNSPECIFIED);
    }

    proptest! {
        #[test]
        fn incremental_update_equals_recomputation(
            words in proptest::collection::vec(any::<u16>(), 8),
            index in 0usize..9,
            new in any::<u16>(),
        ) {
            // A 20-byte header with version 4 / IHL 5 and arbitrary other fields.
            let mut hdr = [0u8; 20];
            hdr[0] = 0x45;
            for (i, w) in words.iter().enumerate() {
                // Fill the words after the first, skipping the checksum (index 5).
                let at = if i < 4 { 2 + 2 * i } else { 2 + 2 * (i + 1) };
                hdr[at..at + 2].copy_from_slice(&w.to_be_bytes());
            }
            hdr[1] = (words[0] >> 8) as u8;
            let sum = checksum(&hdr);
            hdr[10..12].copy_from_slice(&sum.to_be_bytes());
            prop_assert_eq!(checksum(&hdr), 0);
            // Change one word other than the checksum itself.
            let word = if index >= 5 { index + 1 } else { index };
            let at = 2 * word;
            let old = u16::from_be_bytes([hdr[at], hdr[at + 1]]);
            let new = if word == 0 { 0x4500 | (new & 0xff) } else { new };
            hdr[at..at + 2].copy_from_slice(&new.to_be_bytes());
            let incremental = incremental_update(sum, old, new);
            hdr[10..12].copy_from_slice(&[0, 0]);
            prop_assert_eq!(incremental, checksum(&hdr));
        }
    }
}
