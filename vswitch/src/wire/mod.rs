//! Zero-copy views of the packet headers the switch reads and rewrites.
//!
//! Each view wraps a buffer `T: AsRef<[u8]>` (a guest buffer, a pool buffer, a test
//! vector) without copying it. The contract, shared by every view:
//!
//! * `new_checked(buffer)` validates every length the view depends on (and the version
//!   field where the header has one) and returns [`Error`] otherwise;
//! * after `new_checked` succeeded **no accessor can panic**, whatever the bytes say:
//!   fixed fields lie inside the checked length, and variable-length parts (options,
//!   payloads) are clamped to the buffer;
//! * `new_unchecked` skips the check; its accessors still never panic, but fields outside
//!   the buffer read as zero and writes outside it are ignored;
//! * setters (`set_*`, `*_mut`) exist when `T: AsMut<[u8]>`; they write fields in place
//!   and never resize the buffer.
//!
//! Views describe bytes; they hold no parsed meaning beyond field extraction. Multi-byte
//! fields are in network byte order on the wire and in host order in the API.
#![forbid(unsafe_code)]

mod arp;
mod checksum;
mod ethernet;
mod ipv4;
mod ipv6;
mod vlan;

pub use arp::{ArpOperation, ArpPacket, ArpRepr};
pub use checksum::{checksum, incremental_update, ones_complement_sum};
pub use ethernet::{EtherType, EthernetAddress, EthernetFrame};
pub use ipv4::Ipv4Packet;
pub use ipv6::Ipv6Packet;
pub use vlan::{Tci, VlanTag};

/// Why a buffer cannot be viewed as the requested header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The buffer is shorter than the header (or than a length field inside it says).
    #[error("truncated {what}: {needed} bytes needed, {available} available")]
    Truncated {
        /// Which header or part of one was cut short.
        what: &'static str,
        /// Bytes the header needs.
        needed: usize,
        /// Bytes the buffer holds.
        available: usize,
    },
    /// A field holds a value that makes the header unusable.
    #[error("malformed {field}: {value:#x}")]
    Malformed {
        /// The offending field.
        field: &'static str,
        /// Its value.
        value: u32,
    },
}

/// Result of a `wire` check.
pub type Result<T> = core::result::Result<T, Error>;

/// Returns `Err(Truncated)` unless `buf` holds at least `needed` bytes.
fn need(what: &'static str, buf: &[u8], needed: usize) -> Result<()> {
    if buf.len() < needed {
        Err(Error::Truncated {
            what,
            needed,
            available: buf.len(),
        })
    } else {
        Ok(())
    }
}

/// Panic-free field access shared by the views: out-of-range reads return zero, writes
/// are ignored. After `check_len` every access is in range, so this only matters for
/// `new_unchecked` views.
mod field {
    pub(crate) fn get_u8(buf: &[u8], off: usize) -> u8 {
        buf.get(off).copied().unwrap_or(0)
    }

    pub(crate) fn get_u16(buf: &[u8], off: usize) -> u16 {
        u16::from_be_bytes(get_array(buf, off))
    }

    pub(crate) fn get_u32(buf: &[u8], off: usize) -> u32 {
        u32::from_be_bytes(get_array(buf, off))
    }

    pub(crate) fn get_array<const N: usize>(buf: &[u8], off: usize) -> [u8; N] {
        let mut out = [0u8; N];
        if let Some(src) = off.checked_add(N).and_then(|end| buf.get(off..end)) {
            out.copy_from_slice(src);
        }
        out
    }

    pub(crate) fn set_u8(buf: &mut [u8], off: usize, value: u8) {
        if let Some(b) = buf.get_mut(off) {
            *b = value;
        }
    }

    pub(crate) fn set_u16(buf: &mut [u8], off: usize, value: u16) {
        set_bytes(buf, off, &value.to_be_bytes());
    }

    pub(crate) fn set_u32(buf: &mut [u8], off: usize, value: u32) {
        set_bytes(buf, off, &value.to_be_bytes());
    }

    pub(crate) fn set_bytes(buf: &mut [u8], off: usize, value: &[u8]) {
        if let Some(dst) = off
            .checked_add(value.len())
            .and_then(|end| buf.get_mut(off..end))
        {
            dst.copy_from_slice(value);
        }
    }

    /// `buf[start..end]`, clamped to the buffer (empty when out of range).
    pub(crate) fn range(buf: &[u8], start: usize, end: usize) -> &[u8] {
        let end = end.min(buf.len());
        buf.get(start..end).unwrap_or_default()
    }

    /// Mutable `buf[start..end]`, clamped to the buffer (empty when out of range).
    pub(crate) fn range_mut(buf: &mut [u8], start: usize, end: usize) -> &mut [u8] {
        let end = end.min(buf.len());
        buf.get_mut(start..end).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::field;

    #[test]
    fn field_access_out_of_range_is_zero_and_ignored() {
        let mut buf = [1u8, 2, 3];
        assert_eq!(field::get_u16(&buf, 1), 0x0203);
        assert_eq!(field::get_u16(&buf, 2), 0);
        assert_eq!(field::get_u32(&buf, usize::MAX), 0);
        assert_eq!(field::get_u8(&buf, 3), 0);
        field::set_u16(&mut buf, 2, 0xffff);
        field::set_u32(&mut buf, usize::MAX - 1, 0xffff_ffff);
        assert_eq!(buf, [1, 2, 3]);
        assert_eq!(field::range(&buf, 1, 10), &[2, 3]);
        assert!(field::range(&buf, 5, 10).is_empty());
        assert!(field::range(&buf, 2, 1).is_empty());
        assert!(field::range_mut(&mut buf, 4, 2).is_empty());
    }

    #[test]
    fn error_messages_name_the_value() {
        let e = super::Error::Truncated {
            what: "ethernet header",
            needed: 14,
            available: 3,
        };
        assert_eq!(
            e.to_string(),
            "truncated ethernet header: 14 bytes needed, 3 available"
        );
        let e = super::Error::Malformed {
            field: "ipv4 version",
            value: 6,
        };
        assert_eq!(e.to_string(), "malformed ipv4 version: 0x6");
    }
}
