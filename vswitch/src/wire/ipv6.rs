//! IPv6 fixed header view (RFC 8200).

use std::net::Ipv6Addr;

use super::{field, need, Error, Result};

mod offset {
    pub const VER_TC_FLOW: usize = 0;
    pub const PAYLOAD_LEN: usize = 4;
    pub const NEXT_HEADER: usize = 6;
    pub const HOP_LIMIT: usize = 7;
    pub const SRC: usize = 8;
    pub const DST: usize = 24;
    pub const PAYLOAD: usize = 40;
}

/// A view of an IPv6 packet: the 40-byte fixed header and its payload (extension
/// headers, if any, are part of the payload).
///
/// Jumbograms (payload length 0 with a hop-by-hop jumbo option) are not supported: their
/// payload reads as empty.
#[derive(Debug, Clone)]
pub struct Ipv6Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv6Packet<T> {
    /// Length of the fixed header.
    pub const HEADER_LEN: usize = offset::PAYLOAD;

    /// Wraps `buffer` without checking it.
    pub const fn new_unchecked(buffer: T) -> Self {
        Ipv6Packet { buffer }
    }

    /// Wraps `buffer` after [`check_len`](Self::check_len).
    pub fn new_checked(buffer: T) -> Result<Self> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Checks that the version is 6 and that the buffer holds the fixed header and the
    /// payload length it announces.
    pub fn check_len(&self) -> Result<()> {
        let buf = self.buffer.as_ref();
        need("ipv6 header", buf, Self::HEADER_LEN)?;
        if self.version() != 6 {
            return Err(Error::Malformed {
                field: "ipv6 version",
                value: self.version().into(),
            });
        }
        need(
            "ipv6 packet",
            buf,
            Self::HEADER_LEN + usize::from(self.payload_len()),
        )
    }

    /// Returns the wrapped buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    fn buf(&self) -> &[u8] {
        self.buffer.as_ref()
    }

    /// IP version (6 after `check_len`).
    pub fn version(&self) -> u8 {
        field::get_u8(self.buf(), offset::VER_TC_FLOW) >> 4
    }

    /// Traffic class (DSCP and ECN).
    pub fn traffic_class(&self) -> u8 {
        ((field::get_u32(self.buf(), offset::VER_TC_FLOW) >> 20) & 0xff) as u8
    }

    /// Flow label (20 bits).
    pub fn flow_label(&self) -> u32 {
        field::get_u32(self.buf(), offset::VER_TC_FLOW) & 0x000f_ffff
    }

    /// Payload length in bytes (everything after the fixed header).
    pub fn payload_len(&self) -> u16 {
        field::get_u16(self.buf(), offset::PAYLOAD_LEN)
    }

    /// Next header (protocol of the payload or first extension header).
    pub fn next_header(&self) -> u8 {
        field::get_u8(self.buf(), offset::NEXT_HEADER)
    }

    /// Hop limit.
    pub fn hop_limit(&self) -> u8 {
        field::get_u8(self.buf(), offset::HOP_LIMIT)
    }

    /// Source address.
    pub fn src_addr(&self) -> Ipv6Addr {
        Ipv6Addr::from(field::get_array::<16>(self.buf(), offset::SRC))
    }

    /// Destination address.
    pub fn dst_addr(&self) -> Ipv6Addr {
        Ipv6Addr::from(field::get_array::<16>(self.buf(), offset::DST))
    }

    /// The payload: `payload_len` bytes after the fixed header (link padding excluded).
    pub fn payload(&self) -> &[u8] {
        let end = offset::PAYLOAD + usize::from(self.payload_len());
        field::range(self.buf(), offset::PAYLOAD, end)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv6Packet<T> {
    fn buf_mut(&mut self) -> &mut [u8] {
        self.buffer.as_mut()
    }

    /// Sets version, traffic class and flow label (20 bits) at once.
    pub fn set_version_tc_flow(&mut self, version: u8, traffic_class: u8, flow_label: u32) {
        let v = (u32::from(version & 0x0f) << 28)
            | (u32::from(traffic_class) << 20)
            | (flow_label & 0x000f_ffff);
        field::set_u32(self.buf_mut(), offset::VER_TC_FLOW, v);
    }

    /// Sets the payload length.
    pub fn set_payload_len(&mut self, len: u16) {
        field::set_u16(self.buf_mut(), offset::PAYLOAD_LEN, len);
    }

    /// Sets the next header.
    pub fn set_next_header(&mut self, next_header: u8) {
        field::set_u8(self.buf_mut(), offset::NEXT_HEADER, next_header);
    }

    /// Sets the hop limit.
    pub fn set_hop_limit(&mut self, hop_limit: u8) {
        field::set_u8(self.buf_mut(), offset::HOP_LIMIT, hop_limit);
    }

    /// Sets the source address.
    pub fn set_src_addr(&mut self, addr: Ipv6Addr) {
        field::set_bytes(self.buf_mut(), offset::SRC, &addr.octets());
    }

    /// Sets the destination address.
    pub fn set_dst_addr(&mut self, addr: Ipv6Addr) {
        field::set_bytes(self.buf_mut(), offset::DST, &addr.octets());
    }

    /// Mutable payload.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let end = offset::PAYLOAD + usize::from(self.payload_len());
        field::range_mut(self.buf_mut(), offset::PAYLOAD, end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(payload_len: u16, buffer_len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; buffer_len];
        let mut p = Ipv6Packet::new_unchecked(&mut buf[..]);
        p.set_version_tc_flow(6, 0xb8, 0xabcde);
        p.set_payload_len(payload_len);
        p.set_next_header(58);
        p.set_hop_limit(255);
        p.set_src_addr("fe80::1".parse().expect("literal"));
        p.set_dst_addr("ff02::1".parse().expect("literal"));
        buf
    }

    #[test]
    fn round_trip() {
        let mut buf = sample(8, 50);
        {
            let mut p = Ipv6Packet::new_checked(&mut buf[..]).expect("valid packet");
            p.payload_mut().copy_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        }
        let p = Ipv6Packet::new_checked(&buf[..]).expect("valid packet");
        assert_eq!(p.version(), 6);
        assert_eq!(p.traffic_class(), 0xb8);
        assert_eq!(p.flow_label(), 0xabcde);
        assert_eq!(p.payload_len(), 8);
        assert_eq!(p.next_header(), 58);
        assert_eq!(p.hop_limit(), 255);
        assert_eq!(
            p.src_addr(),
            "fe80::1".parse::<Ipv6Addr>().expect("literal")
        );
        assert_eq!(
            p.dst_addr(),
            "ff02::1".parse::<Ipv6Addr>().expect("literal")
        );
        assert_eq!(p.payload(), &[1, 2, 3, 4, 5, 6, 7, 8], "padding excluded");
    }

    #[test]
    fn truncated_and_malformed() {
        let buf = sample(8, 48);
        for len in 0..40 {
            assert!(matches!(
                Ipv6Packet::new_checked(&buf[..len]),
                Err(Error::Truncated { needed: 40, .. })
            ));
        }
        assert_eq!(
            Ipv6Packet::new_checked(&buf[..47]).err(),
            Some(Error::Truncated {
                what: "ipv6 packet",
                needed: 48,
                available: 47
            })
        );
        let mut bad = buf.clone();
        bad[0] = 0x45;
        assert_eq!(
            Ipv6Packet::new_checked(&bad[..]).err(),
            Some(Error::Malformed {
                field: "ipv6 version",
                value: 4
            })
        );
        let p = Ipv6Packet::new_unchecked(&buf[..44]);
        assert_eq!(p.payload(), &[0, 0, 0, 0]);
        assert_eq!(
            Ipv6Packet::new_unchecked(&buf[..10]).dst_addr(),
            Ipv6Addr::UNSPECIFIED
        );
    }
}
