//! The Internet checksum (RFC 1071) and its incremental update (RFC 1624).

/// The 16-bit one's complement sum of `data` (big-endian words, an odd trailing byte
/// padded with zero), folded to 16 bits and not complemented.
pub fn ones_complement_sum(data: &[u8]) -> u16 {
    let mut chunks = data.chunks_exact(2);
    let mut sum: u64 = 0;
    for w in &mut chunks {
        if let [a, b] = *w {
            sum += u64::from(u16::from_be_bytes([a, b]));
        }
    }
    if let [last] = *chunks.remainder() {
        sum += u64::from(u16::from_be_bytes([last, 0]));
    }
    fold(sum)
}

/// The Internet checksum of `data`: the complement of [`ones_complement_sum`]. A header
/// whose checksum field is correct has `checksum(header) == 0`.
pub fn checksum(data: &[u8]) -> u16 {
    !ones_complement_sum(data)
}

/// Updates checksum `hc` after one 16-bit word of the covered data changed from `old` to
/// `new`, per RFC 1624 equation 3: `HC' = ~(~HC + ~m + m')`.
///
/// The result equals a full recomputation for any header whose one's complement sum is
/// not zero (true of every IPv4 header, whose version field is non-zero).
pub fn incremental_update(hc: u16, old: u16, new: u16) -> u16 {
    let sum = u64::from(!hc) + u64::from(!old) + u64::from(new);
    !fold(sum)
}

fn fold(mut sum: u64) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    // The loop leaves `sum <= 0xffff`.
    sum as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc1071_example() {
        // RFC 1071 section 3: words 0001 f203 f4f5 f6f7 sum to ddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(ones_complement_sum(&data), 0xddf2);
        assert_eq!(checksum(&data), !0xddf2);
    }

    #[test]
    fn odd_length_pads_with_zero() {
        assert_eq!(ones_complement_sum(&[0x12, 0x34, 0x56]), 0x1234 + 0x5600);
        assert_eq!(ones_complement_sum(&[]), 0);
    }

    #[test]
    fn carries_fold() {
        assert_eq!(ones_complement_sum(&[0xff, 0xff, 0x00, 0x02]), 0x0002);
        let big = [0xffu8; 4096];
        assert_eq!(ones_complement_sum(&big), 0xffff);
    }

    #[test]
    fn incremental_matches_rfc1624_example() {
        // RFC 1624 section 4: HC = 0xdd2f, m = 0x5555 -> m' = 0x3285 gives HC' = 0x0000.
        assert_eq!(incremental_update(0xdd2f, 0x5555, 0x3285), 0x0000);
    }
}
