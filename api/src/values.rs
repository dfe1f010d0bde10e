//! Value types of the API. Each has one text form (`FromStr` and `Display` agree), and
//! deserializing checks it, so a spec that holds one is already valid in that respect.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Serde through the type's text form.
macro_rules! serde_via_str {
    ($t:ty, $what:literal) => {
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(|e: String| {
                    serde::de::Error::custom(format!(concat!($what, " {:?}: {}"), s, e))
                })
            }
        }
    };
}

/// An Ethernet MAC address, `aa:bb:cc:dd:ee:ff`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// Whether it is an individual (not group) address that is not all zeros.
    pub fn is_unicast(&self) -> bool {
        self.0[0] & 1 == 0 && self.0 != [0; 6]
    }

    /// A stable locally administered unicast MAC derived from `name` (FNV-1a).
    pub fn derived(name: &str) -> Mac {
        let mut h: u32 = 0x811c_9dc5;
        for b in name.bytes() {
            h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
        }
        let b = h.to_be_bytes();
        Mac([0x02, 0x76, b[0], b[1], b[2], b[3]])
    }
}

impl FromStr for Mac {
    type Err = String;
    fn from_str(s: &str) -> Result<Mac, String> {
        let parts: Vec<&str> = s.split(':').collect();
        if parts.len() != 6 {
            return Err("not six colon-separated bytes".into());
        }
        let mut m = [0u8; 6];
        for (o, p) in m.iter_mut().zip(parts) {
            if p.len() != 2 {
                return Err(format!("bad byte {p:?}"));
            }
            *o = u8::from_str_radix(p, 16).map_err(|_| format!("bad byte {p:?}"))?;
        }
        Ok(Mac(m))
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

serde_via_str!(Mac, "MAC");

/// Parses `aa:bb:cc:dd:ee:ff` into its bytes, with an error that quotes the value.
pub fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    s.parse::<Mac>()
        .map(|m| m.0)
        .map_err(|e| format!("mac={s:?}: {e}"))
}

/// An 802.1Q VLAN id, 1..=4094.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct VlanId(u16);

impl VlanId {
    /// VLAN 1, the untagged network's.
    pub const DEFAULT: VlanId = VlanId(1);

    /// `v` if it is 1..=4094.
    pub fn new(v: u16) -> Option<VlanId> {
        (1..=4094).contains(&v).then_some(VlanId(v))
    }

    /// The number.
    pub fn get(self) -> u16 {
        self.0
    }
}

impl Default for VlanId {
    fn default() -> VlanId {
        VlanId::DEFAULT
    }
}

impl<'de> Deserialize<'de> for VlanId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = u16::deserialize(d)?;
        VlanId::new(v)
            .ok_or_else(|| serde::de::Error::custom(format!("VLAN id {v} is outside 1..=4094")))
    }
}

impl fmt::Display for VlanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// VLAN ids `first..=last` (`"10"` or `"10-20"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct VlanRange {
    /// First id.
    pub first: VlanId,
    /// Last id (not below `first`).
    pub last: VlanId,
}

impl FromStr for VlanRange {
    type Err = String;
    fn from_str(s: &str) -> Result<VlanRange, String> {
        let (a, b) = s.split_once('-').unwrap_or((s, s));
        let id = |x: &str| {
            x.trim()
                .parse::<u16>()
                .ok()
                .and_then(VlanId::new)
                .ok_or_else(|| format!("{x:?} is not a VLAN id in 1..=4094"))
        };
        let (first, last) = (id(a)?, id(b)?);
        if last < first {
            return Err("range is backwards".into());
        }
        Ok(VlanRange { first, last })
    }
}

impl fmt::Display for VlanRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

serde_via_str!(VlanRange, "VLAN range");

/// A port's VLAN membership.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum VlanMode {
    /// Untagged frames, all in one VLAN; tagged frames are dropped.
    Access {
        /// The VLAN.
        vlan: VlanId,
    },
    /// Tagged frames of `allowed` VLANs; untagged ones belong to `native` (dropped
    /// without one).
    Trunk {
        /// Allowed VLANs.
        allowed: Vec<VlanRange>,
        /// The native VLAN, sent untagged.
        #[serde(default)]
        native: Option<VlanId>,
    },
}

impl Default for VlanMode {
    fn default() -> VlanMode {
        VlanMode::Access {
            vlan: VlanId::DEFAULT,
        }
    }
}

/// An IP address with a prefix length, `10.0.0.1/24` or `fd00::1/64`. Host bits may be
/// set (an interface address); [`network`](Self::network) clears them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Prefix {
    /// The address.
    pub addr: IpAddr,
    /// Prefix length: up to 32 for IPv4, 128 for IPv6.
    pub len: u8,
}

impl Prefix {
    /// `addr/len` if `len` fits the family.
    pub fn new(addr: IpAddr, len: u8) -> Option<Prefix> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        (len <= max).then_some(Prefix { addr, len })
    }

    fn bits(a: IpAddr) -> (u128, u32) {
        match a {
            IpAddr::V4(v) => (u128::from(u32::from(v)), 32),
            IpAddr::V6(v) => (u128::from(v), 128),
        }
    }

    fn mask(&self) -> u128 {
        let (_, width) = Self::bits(self.addr);
        if self.len == 0 {
            0
        } else {
            (u128::MAX << (width - u32::from(self.len))) & (u128::MAX >> (128 - width))
        }
    }

    /// Parses `ADDR/LEN`; the error quotes `s`.
    pub fn parse(s: &str) -> Result<Prefix, String> {
        s.parse().map_err(|e| format!("{s:?}: {e}"))
    }

    /// Whether the two prefixes share any address.
    pub fn overlaps(&self, o: &Prefix) -> bool {
        let (shorter, longer) = if self.len <= o.len {
            (self, o)
        } else {
            (o, self)
        };
        shorter.contains(longer.addr)
    }

    /// Whether every address of `o` is inside this prefix.
    pub fn contains_prefix(&self, o: &Prefix) -> bool {
        o.len >= self.len && self.contains(o.addr)
    }

    /// Whether `a` (same family) is inside the prefix.
    pub fn contains(&self, a: IpAddr) -> bool {
        let ((n, wn), (x, wx)) = (Self::bits(self.addr), Self::bits(a));
        wn == wx && n & self.mask() == x & self.mask()
    }

    /// The prefix with its host bits cleared.
    pub fn network(&self) -> Prefix {
        let (n, _) = Self::bits(self.addr);
        let m = n & self.mask();
        let addr = match self.addr {
            IpAddr::V4(_) => IpAddr::V4((m as u32).into()),
            IpAddr::V6(_) => IpAddr::V6(m.into()),
        };
        Prefix {
            addr,
            len: self.len,
        }
    }
}

impl FromStr for Prefix {
    type Err = String;
    fn from_str(s: &str) -> Result<Prefix, String> {
        let (a, l) = s.split_once('/').ok_or("not ADDR/LEN")?;
        let addr: IpAddr = a
            .parse()
            .map_err(|_| format!("{a:?} is not an IP address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = l
            .parse::<u8>()
            .ok()
            .filter(|l| *l <= max)
            .ok_or_else(|| format!("prefix length must be 0..={max}"))?;
        Ok(Prefix { addr, len })
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

serde_via_str!(Prefix, "prefix");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_forms_round_trip_and_bad_values_are_refused() {
        let m: Mac = "02:00:00:aa:bb:0c".parse().unwrap();
        assert_eq!(m.to_string(), "02:00:00:aa:bb:0c");
        assert!("02:00:00:aa:bb".parse::<Mac>().is_err());
        assert!("02:00:00:aa:bb:0cc".parse::<Mac>().is_err());
        let p: Prefix = "10.1.2.3/24".parse().unwrap();
        assert_eq!(p.network().to_string(), "10.1.2.0/24");
        assert!(p.contains("10.1.2.200".parse().unwrap()));
        assert!(!p.contains("10.1.3.1".parse().unwrap()));
        assert!(!p.contains("::1".parse().unwrap()));
        let big: Prefix = "10.1.0.0/16".parse().unwrap();
        assert!(big.overlaps(&p) && p.overlaps(&big));
        assert!(!p.overlaps(&"10.1.3.0/24".parse().unwrap()));
        assert!(Prefix::parse("10.0.0.1")
            .unwrap_err()
            .contains("\"10.0.0.1\""));
        assert!("10.0.0.0/33".parse::<Prefix>().is_err());
        assert!("fd00::/129".parse::<Prefix>().is_err());
        assert_eq!("fd00::1/64".parse::<Prefix>().unwrap().len, 64);
        let r: VlanRange = "10-20".parse().unwrap();
        assert_eq!((r.first.get(), r.last.get()), (10, 20));
        assert!("20-10".parse::<VlanRange>().is_err());
        assert!("0".parse::<VlanRange>().is_err());
        assert!(serde_json::from_str::<VlanId>("4095").is_err());
        let e = serde_json::from_str::<Mac>("\"zz\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("MAC \"zz\""), "{e}");
    }
}
