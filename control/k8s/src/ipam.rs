//! Which block of a network's addresses each node hands out: the arithmetic, apart from
//! the API server.
//!
//! - The default network takes the node's `spec.podCIDR`, which must lie inside the
//!   network's first IPv4 prefix and overlap no prefix of another network of the same
//!   tenant ([`check_pod_cidr`]).
//! - A network with a `vni` (it spans nodes) gives each node a block of its first IPv4
//!   prefix, recorded in the Network's `status.blocks` ([`lowest_free_block`]); its size
//!   is `spec.blockSize` or [`default_block_len`].
//!
//! Each node's daemon then allocates addresses inside its block only, so two nodes never
//! hand out the same address.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use api::values::Prefix;

/// The longest block (fewest addresses) a node is given: a /30, four addresses.
pub const MAX_BLOCK_LEN: u8 = 30;

/// The block length when `spec.blockSize` is not given, for a network prefix of length
/// `prefix_len`: /26 (64 addresses), or a quarter of a prefix longer than /24, and never
/// longer than /30 nor shorter than the prefix itself (a /30 or longer network is one
/// block).
pub fn default_block_len(prefix_len: u8) -> u8 {
    26.max(prefix_len.saturating_add(2))
        .min(MAX_BLOCK_LEN)
        .max(prefix_len)
}

/// The block length for a prefix of length `prefix_len` and `spec.blockSize`, or why
/// `spec.blockSize` does not fit.
pub fn block_len(prefix_len: u8, block_size: Option<u8>) -> Result<u8, String> {
    match block_size {
        None => Ok(default_block_len(prefix_len)),
        Some(b) if b < prefix_len => Err(format!(
            "spec.blockSize /{b} is larger than the network's prefix /{prefix_len}"
        )),
        Some(b) if b > MAX_BLOCK_LEN.max(prefix_len) => Err(format!(
            "spec.blockSize /{b} is longer than /{MAX_BLOCK_LEN}"
        )),
        Some(b) => Ok(b),
    }
}

/// The first IPv4 prefix of `cidrs` (host bits cleared), which nodes share out.
pub fn first_ipv4(cidrs: &[String]) -> Option<Prefix> {
    cidrs
        .iter()
        .filter_map(|c| c.parse::<Prefix>().ok())
        .find(|p| p.addr.is_ipv4())
        .map(|p| p.network())
}

/// The lowest block of length `len` inside `prefix` that overlaps none of `taken`.
pub fn lowest_free_block(prefix: Prefix, len: u8, taken: &[Prefix]) -> Option<Prefix> {
    let IpAddr::V4(base) = prefix.network().addr else {
        return None;
    };
    if len < prefix.len || len > 32 {
        return None;
    }
    let count = 1u64 << (len - prefix.len);
    let step = 1u64 << (32 - len);
    (0..count)
        .map(|i| {
            let a = u64::from(u32::from(base)) + i * step;
            Prefix {
                addr: IpAddr::V4(Ipv4Addr::from(a as u32)),
                len,
            }
        })
        .find(|b| !taken.iter().any(|t| t.overlaps(b)))
}

/// Whether `block` (as recorded) is still a good block of length `len` in `prefix`.
pub fn block_fits(block: &str, prefix: Prefix, len: u8) -> bool {
    block
        .parse::<Prefix>()
        .is_ok_and(|b| b.len == len && b.network() == b && prefix.contains_prefix(&b))
}

/// The node's block of a network from `blocks` (`status.blocks`), or a new one: the
/// lowest that no other node's block overlaps. `None` when the prefix is full.
pub fn block_for(
    blocks: &BTreeMap<String, String>,
    node: &str,
    prefix: Prefix,
    len: u8,
) -> Option<Prefix> {
    if let Some(b) = blocks.get(node).filter(|b| block_fits(b, prefix, len)) {
        return b.parse().ok();
    }
    let taken: Vec<Prefix> = blocks
        .iter()
        .filter(|(n, _)| n.as_str() != node)
        .filter_map(|(_, b)| b.parse().ok())
        .collect();
    lowest_free_block(prefix, len, &taken)
}

/// The node's `spec.podCIDR` for the default network, or why it cannot be its pool: not
/// an IPv4 prefix, not inside `cidrs` (the network's first IPv4 prefix), or overlapping
/// a prefix of `others` (the other networks of the same tenant, `(name, cidrs)`).
pub fn check_pod_cidr(
    pod_cidr: &str,
    network: &str,
    cidrs: &[String],
    others: &[(String, Vec<String>)],
) -> Result<Prefix, String> {
    let p = pod_cidr
        .parse::<Prefix>()
        .map_err(|e| format!("spec.podCIDR {pod_cidr:?}: {e}"))?;
    if !p.addr.is_ipv4() {
        return Err(format!(
            "spec.podCIDR {pod_cidr} is not IPv4 (the node hands out IPv4 addresses from it)"
        ));
    }
    let p = p.network();
    let prefix = first_ipv4(cidrs)
        .ok_or_else(|| format!("network {network} has no IPv4 prefix for spec.podCIDR"))?;
    if !prefix.contains_prefix(&p) {
        return Err(format!(
            "spec.podCIDR {p} is not inside network {network}'s prefix {prefix}"
        ));
    }
    for (name, cs) in others {
        for c in cs.iter().filter_map(|c| c.parse::<Prefix>().ok()) {
            if c.overlaps(&p) {
                return Err(format!(
                    "spec.podCIDR {p} overlaps {c} of network {name} of the same tenant"
                ));
            }
        }
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Prefix {
        s.parse().unwrap()
    }

    #[test]
    fn default_block_sizes() {
        assert_eq!(default_block_len(16), 26);
        assert_eq!(default_block_len(24), 26);
        assert_eq!(default_block_len(25), 27);
        assert_eq!(default_block_len(28), 30);
        assert_eq!(default_block_len(29), 30);
        assert_eq!(default_block_len(31), 31);
        assert_eq!(block_len(24, Some(28)), Ok(28));
        assert!(block_len(24, Some(20))
            .unwrap_err()
            .contains("spec.blockSize"));
        assert!(block_len(24, Some(31)).unwrap_err().contains("/30"));
    }

    #[test]
    fn blocks_are_the_lowest_free_and_never_shared() {
        let net = p("10.1.0.0/24");
        assert_eq!(lowest_free_block(net, 26, &[]), Some(p("10.1.0.0/26")));
        let taken = [p("10.1.0.0/26"), p("10.1.0.128/26")];
        assert_eq!(lowest_free_block(net, 26, &taken), Some(p("10.1.0.64/26")));
        // A block of another size (blockSize changed) still counts.
        assert_eq!(
            lowest_free_block(net, 26, &[p("10.1.0.0/25")]),
            Some(p("10.1.0.128/26"))
        );
        let full: Vec<Prefix> = (0..4)
            .map(|i| p(&format!("10.1.0.{}/26", i * 64)))
            .collect();
        assert_eq!(lowest_free_block(net, 26, &full), None);

        let mut blocks = BTreeMap::new();
        blocks.insert("a".to_string(), "10.1.0.0/26".to_string());
        // A node keeps its own block; another gets the next.
        assert_eq!(block_for(&blocks, "a", net, 26), Some(p("10.1.0.0/26")));
        assert_eq!(block_for(&blocks, "b", net, 26), Some(p("10.1.0.64/26")));
        // A block that no longer fits (the prefix changed) is replaced.
        assert_eq!(
            block_for(&blocks, "a", p("10.2.0.0/24"), 26),
            Some(p("10.2.0.0/26"))
        );
        blocks.insert("b".to_string(), "garbage".to_string());
        assert_eq!(block_for(&blocks, "c", net, 26), Some(p("10.1.0.64/26")));
        assert!(!block_fits("10.1.0.1/26", net, 26), "host bits set");
    }

    #[test]
    fn a_pod_cidr_must_be_inside_the_network_and_clear_of_the_tenant() {
        let cidrs = vec!["10.244.0.0/16".to_string(), "fd00::/64".to_string()];
        assert_eq!(
            check_pod_cidr("10.244.1.0/24", "default", &cidrs, &[]),
            Ok(p("10.244.1.0/24"))
        );
        let e = check_pod_cidr("10.250.0.0/24", "default", &cidrs, &[]).unwrap_err();
        assert!(
            e.starts_with("spec.podCIDR 10.250.0.0/24 is not inside network default's prefix"),
            "{e}"
        );
        let others = vec![("db".to_string(), vec!["10.244.1.128/25".to_string()])];
        let e = check_pod_cidr("10.244.1.0/24", "default", &cidrs, &others).unwrap_err();
        assert!(e.contains("overlaps 10.244.1.128/25 of network db"), "{e}");
        assert!(check_pod_cidr("fd00::/80", "default", &cidrs, &[])
            .unwrap_err()
            .contains("not IPv4"));
        assert!(check_pod_cidr("banana", "default", &cidrs, &[])
            .unwrap_err()
            .starts_with("spec.podCIDR \"banana\""));
    }
}
