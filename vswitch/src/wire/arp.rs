//! ARP packet view (RFC 826) and the parsed Ethernet/IPv4 form.

use std::net::Ipv4Addr;

use super::{field, need, Error, EtherType, EthernetAddress, Result};

/// An ARP operation code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ArpOperation(pub u16);

impl ArpOperation {
    /// Request, 1.
    pub const REQUEST: ArpOperation = ArpOperation(1);
    /// Reply, 2.
    pub const REPLY: ArpOperation = ArpOperation(2);
}

mod offset {
    pub const HTYPE: usize = 0;
    pub const PTYPE: usize = 2;
    pub const HLEN: usize = 4;
    pub const PLEN: usize = 5;
    pub const OPER: usize = 6;
    pub const SHA: usize = 8;
}

/// Hardware type of Ethernet.
const HTYPE_ETHERNET: u16 = 1;

/// A view of an ARP packet with any hardware and protocol address lengths.
///
/// The address fields are located with the packet's own `hlen`/`plen`; `check_len`
/// makes sure all four fit in the buffer.
#[derive(Debug, Clone)]
pub struct ArpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> ArpPacket<T> {
    /// Length of the fixed part (types, lengths, operation).
    pub const FIXED_LEN: usize = offset::SHA;
    /// Length of an Ethernet/IPv4 ARP packet.
    pub const ETHERNET_IPV4_LEN: usize = offset::SHA + 2 * (6 + 4);

    /// Wraps `buffer` without checking it.
    pub const fn new_unchecked(buffer: T) -> Self {
        ArpPacket { buffer }
    }

    /// Wraps `buffer` after [`check_len`](Self::check_len).
    pub fn new_checked(buffer: T) -> Result<Self> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Checks that the buffer holds the fixed part and the four addresses.
    pub fn check_len(&self) -> Result<()> {
        let buf = self.buffer.as_ref();
        need("arp header", buf, Self::FIXED_LEN)?;
        let addrs = 2 * (usize::from(self.hardware_len()) + usize::from(self.protocol_len()));
        need("arp addresses", buf, Self::FIXED_LEN + addrs)
    }

    /// Returns the wrapped buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    fn buf(&self) -> &[u8] {
        self.buffer.as_ref()
    }

    /// Hardware type (1 for Ethernet).
    pub fn hardware_type(&self) -> u16 {
        field::get_u16(self.buf(), offset::HTYPE)
    }

    /// Protocol type (0x0800 for IPv4).
    pub fn protocol_type(&self) -> EtherType {
        EtherType(field::get_u16(self.buf(), offset::PTYPE))
    }

    /// Hardware address length.
    pub fn hardware_len(&self) -> u8 {
        field::get_u8(self.buf(), offset::HLEN)
    }

    /// Protocol address length.
    pub fn protocol_len(&self) -> u8 {
        field::get_u8(self.buf(), offset::PLEN)
    }

    /// Operation.
    pub fn operation(&self) -> ArpOperation {
        ArpOperation(field::get_u16(self.buf(), offset::OPER))
    }

    fn hlen(&self) -> usize {
        usize::from(self.hardware_len())
    }

    fn plen(&self) -> usize {
        usize::from(self.protocol_len())
    }

    /// Sender hardware address (`hardware_len` bytes).
    pub fn source_hardware_addr(&self) -> &[u8] {
        let start = offset::SHA;
        field::range(self.buf(), start, start + self.hlen())
    }

    /// Sender protocol address (`protocol_len` bytes).
    pub fn source_protocol_addr(&self) -> &[u8] {
        let start = offset::SHA + self.hlen();
        field::range(self.buf(), start, start + self.plen())
    }

    /// Target hardware address (`hardware_len` bytes).
    pub fn target_hardware_addr(&self) -> &[u8] {
        let start = offset::SHA + self.hlen() + self.plen();
        field::range(self.buf(), start, start + self.hlen())
    }

    /// Target protocol address (`protocol_len` bytes).
    pub fn target_protocol_addr(&self) -> &[u8] {
        let start = offset::SHA + 2 * self.hlen() + self.plen();
        field::range(self.buf(), start, start + self.plen())
    }

    /// True for Ethernet hardware addresses and IPv4 protocol addresses.
    pub fn is_ethernet_ipv4(&self) -> bool {
        self.hardware_type() == HTYPE_ETHERNET
            && self.protocol_type() == EtherType::IPV4
            && self.hardware_len() == 6
            && self.protocol_len() == 4
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> ArpPacket<T> {
    fn buf_mut(&mut self) -> &mut [u8] {
        self.buffer.as_mut()
    }

    /// Sets the hardware type.
    pub fn set_hardware_type(&mut self, v: u16) {
        field::set_u16(self.buf_mut(), offset::HTYPE, v);
    }

    /// Sets the protocol type.
    pub fn set_protocol_type(&mut self, v: EtherType) {
        field::set_u16(self.buf_mut(), offset::PTYPE, v.0);
    }

    /// Sets the hardware address length (moves where the address fields are read).
    pub fn set_hardware_len(&mut self, v: u8) {
        field::set_u8(self.buf_mut(), offset::HLEN, v);
    }

    /// Sets the protocol address length (moves where the address fields are read).
    pub fn set_protocol_len(&mut self, v: u8) {
        field::set_u8(self.buf_mut(), offset::PLEN, v);
    }

    /// Sets the operation.
    pub fn set_operation(&mut self, v: ArpOperation) {
        field::set_u16(self.buf_mut(), offset::OPER, v.0);
    }

    /// Writes the sender hardware address (ignored unless `addr` fits the field).
    pub fn set_source_hardware_addr(&mut self, addr: &[u8]) {
        if addr.len() == self.hlen() {
            field::set_bytes(self.buf_mut(), offset::SHA, addr);
        }
    }

    /// Writes the sender protocol address (ignored unless `addr` fits the field).
    pub fn set_source_protocol_addr(&mut self, addr: &[u8]) {
        if addr.len() == self.plen() {
            let at = offset::SHA + self.hlen();
            field::set_bytes(self.buf_mut(), at, addr);
        }
    }

    /// Writes the target hardware address (ignored unless `addr` fits the field).
    pub fn set_target_hardware_addr(&mut self, addr: &[u8]) {
        if addr.len() == self.hlen() {
            let at = offset::SHA + self.hlen() + self.plen();
            field::set_bytes(self.buf_mut(), at, addr);
        }
    }

    /// Writes the target protocol address (ignored unless `addr` fits the field).
    pub fn set_target_protocol_addr(&mut self, addr: &[u8]) {
        if addr.len() == self.plen() {
            let at = offset::SHA + 2 * self.hlen() + self.plen();
            field::set_bytes(self.buf_mut(), at, addr);
        }
    }
}

/// The meaning of an Ethernet/IPv4 ARP packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArpRepr {
    /// Request or reply (other codes are carried as they are).
    pub operation: ArpOperation,
    /// Sender MAC.
    pub source_mac: EthernetAddress,
    /// Sender IPv4 address.
    pub source_ip: Ipv4Addr,
    /// Target MAC (zero in a request).
    pub target_mac: EthernetAddress,
    /// Target IPv4 address.
    pub target_ip: Ipv4Addr,
}

impl ArpRepr {
    /// Parses a checked packet; fails with `Malformed` unless it is Ethernet/IPv4.
    pub fn parse<T: AsRef<[u8]>>(packet: &ArpPacket<T>) -> Result<ArpRepr> {
        if packet.hardware_type() != HTYPE_ETHERNET {
            return Err(Error::Malformed {
                field: "arp hardware type",
                value: packet.hardware_type().into(),
            });
        }
        if !packet.is_ethernet_ipv4() {
            return Err(Error::Malformed {
                field: "arp protocol type",
                value: packet.protocol_type().0.into(),
            });
        }
        let buf = packet.buf();
        let at = offset::SHA;
        Ok(ArpRepr {
            operation: packet.operation(),
            source_mac: EthernetAddress(field::get_array(buf, at)),
            source_ip: Ipv4Addr::from(field::get_array::<4>(buf, at + 6)),
            target_mac: EthernetAddress(field::get_array(buf, at + 10)),
            target_ip: Ipv4Addr::from(field::get_array::<4>(buf, at + 16)),
        })
    }

    /// Writes this ARP packet into the first 28 bytes of `packet`.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut ArpPacket<T>) {
        packet.set_hardware_type(HTYPE_ETHERNET);
        packet.set_protocol_type(EtherType::IPV4);
        packet.set_hardware_len(6);
        packet.set_protocol_len(4);
        packet.set_operation(self.operation);
        packet.set_source_hardware_addr(&self.source_mac.0);
        packet.set_source_protocol_addr(&self.source_ip.octets());
        packet.set_target_hardware_addr(&self.target_mac.0);
        packet.set_target_protocol_addr(&self.target_ip.octets());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REQUEST: [u8; 28] = [
        0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, 0x01, // fixed part
        0x02, 0, 0, 0, 0, 0x01, 10, 0, 0, 1, // sender
        0, 0, 0, 0, 0, 0, 10, 0, 0, 2, // target
    ];

    fn repr() -> ArpRepr {
        ArpRepr {
            operation: ArpOperation::REQUEST,
            source_mac: EthernetAddress([2, 0, 0, 0, 0, 1]),
            source_ip: Ipv4Addr::new(10, 0, 0, 1),
            target_mac: EthernetAddress::default(),
            target_ip: Ipv4Addr::new(10, 0, 0, 2),
        }
    }

    #[test]
    fn parse_request() {
        let p = ArpPacket::new_checked(&REQUEST[..]).expect("valid packet");
        assert!(p.is_ethernet_ipv4());
        assert_eq!(p.operation(), ArpOperation::REQUEST);
        assert_eq!(p.source_hardware_addr(), &[2, 0, 0, 0, 0, 1]);
        assert_eq!(p.source_protocol_addr(), &[10, 0, 0, 1]);
        assert_eq!(p.target_hardware_addr(), &[0; 6]);
        assert_eq!(p.target_protocol_addr(), &[10, 0, 0, 2]);
        assert_eq!(ArpRepr::parse(&p), Ok(repr()));
    }

    #[test]
    fn emit_round_trip() {
        let mut buf = [0xffu8; 28];
        let mut p = ArpPacket::new_unchecked(&mut buf[..]);
        repr().emit(&mut p);
        assert_eq!(buf, REQUEST);
    }

    #[test]
    fn other_address_lengths_are_located_by_hlen_plen() {
        // Hardware length 2, protocol length 1: 8 + 2*(2+1) = 14 bytes.
        let buf = [0, 6, 0x08, 0, 2, 1, 0, 2, 0xa, 0xb, 0xc, 0xd, 0xe, 0xf];
        let p = ArpPacket::new_checked(&buf[..]).expect("valid packet");
        assert!(!p.is_ethernet_ipv4());
        assert_eq!(p.source_hardware_addr(), &[0xa, 0xb]);
        assert_eq!(p.source_protocol_addr(), &[0xc]);
        assert_eq!(p.target_hardware_addr(), &[0xd, 0xe]);
        assert_eq!(p.target_protocol_addr(), &[0xf]);
        assert_eq!(
            ArpRepr::parse(&p),
            Err(Error::Malformed {
                field: "arp hardware type",
                value: 6
            })
        );
    }

    #[test]
    fn truncated() {
        for len in 0..8 {
            assert!(matches!(
                ArpPacket::new_checked(&REQUEST[..len]),
                Err(Error::Truncated { needed: 8, .. })
            ));
        }
        for len in 8..28 {
            assert_eq!(
                ArpPacket::new_checked(&REQUEST[..len]).err(),
                Some(Error::Truncated {
                    what: "arp addresses",
                    needed: 28,
                    available: len
                })
            );
        }
        // hlen = plen = 255 announces 1028 bytes.
        let mut big = REQUEST;
        big[4] = 255;
        big[5] = 255;
        assert!(ArpPacket::new_checked(&big[..]).is_err());
        let p = ArpPacket::new_unchecked(&big[..]);
        assert_eq!(p.target_protocol_addr(), &[] as &[u8]);
    }

    #[test]
    fn non_ipv4_protocol_is_malformed() {
        let mut buf = REQUEST;
        buf[2] = 0x86;
        buf[3] = 0xdd;
        let p = ArpPacket::new_checked(&buf[..]).expect("valid packet");
        assert_eq!(
            ArpRepr::parse(&p),
            Err(Error::Malformed {
                field: "arp protocol type",
                value: 0x86dd
            })
        );
    }
}
