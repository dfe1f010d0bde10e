//! Services: a virtual IP and port of one zone (tenant), balanced per connection over
//! backends with Maglev.
//!
//! # Choosing a backend
//!
//! A new connection's 5-tuple is hashed with [`SEED`] and looked up in the service's
//! Maglev table (Eisenbud et al., NSDI 2016): a table of prime size `M` filled by the
//! backends in turn, each along its own permutation of the slots (offset and skip from
//! hashes of its address and port). `M` is 65537 (131071 beyond 512 backends): at
//! least 128 slots per backend, each backend holding `⌊M/n⌋` or `⌈M/n⌉` of them, and
//! the same size before and after a backend comes or goes, so that only the flows of
//! that backend move (a little over `1/n` of the others do too, Maglev's disruption). The
//! backends are sorted before the table is filled and the hashes are fixed functions of
//! the seed, so every node builds the same table from the same backend set and sends a
//! flow to the same backend, whichever node it enters.
//!
//! # Affinity
//!
//! With ClientIP affinity a client's choice is kept in its zone's session table as an
//! affinity entry (zone | [`crate::conntrack::AFFINITY_ZONE`]) that lives for the
//! affinity timeout after its last new connection; the backend's removal removes it.
#![forbid(unsafe_code)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::conntrack::{mix, Tuple};

/// The Maglev hash seed: the same on every node, so that all nodes choose alike.
pub const SEED: u64 = 0x766e_6668_6f73_7431;

/// The most backends a service takes.
pub const MAX_BACKENDS: usize = 1024;

/// One service: (zone, protocol, VIP, port) → backends.
#[derive(Debug)]
pub struct Service {
    /// Its name.
    pub name: String,
    /// The zone (tenant) whose packets reach it.
    pub zone: u16,
    /// The VIP.
    pub vip: u32,
    /// IP protocol (6 or 17).
    pub proto: u8,
    /// The port on the VIP.
    pub port: u16,
    /// The backends (address, port), sorted.
    pub backends: Vec<(u32, u16)>,
    /// The Maglev table: indices into `backends`.
    table: Box<[u16]>,
    /// ClientIP affinity timeout in seconds; 0: none.
    pub affinity_s: u32,
    /// New sessions per backend (all cores).
    pub hits: Vec<AtomicU64>,
    /// Connections refused for want of a backend.
    pub no_backend: AtomicU64,
}

/// `n` is prime.
#[cfg(test)]
fn is_prime(n: usize) -> bool {
    n >= 2
        && (2..)
            .take_while(|d| d * d <= n)
            .all(|d| !n.is_multiple_of(d))
}

/// The Maglev table size for `n` backends: 65537 up to 512 backends, 131071 up to
/// [`MAX_BACKENDS`] (both prime, at least 128 slots per backend). The size does not
/// follow every change of `n`: a table of another size would move almost every flow,
/// where one of the same size moves only the flows of the backend that left.
pub fn table_size(n: usize) -> usize {
    if 128 * n <= 65_537 {
        65_537
    } else {
        131_071
    }
}

/// The Maglev table of `backends` (sorted), `M = table_size(len)` entries.
pub fn maglev(backends: &[(u32, u16)]) -> Box<[u16]> {
    let n = backends.len();
    if n == 0 {
        return Box::new([]);
    }
    let m = table_size(n);
    let perm: Vec<(usize, usize)> = backends
        .iter()
        .map(|&(a, p)| {
            let k = u64::from(a) << 16 | u64::from(p);
            let offset = mix(k ^ SEED) as usize % m;
            let skip = mix(k ^ SEED.rotate_left(32)) as usize % (m - 1) + 1;
            (offset, skip)
        })
        .collect();
    let mut next = vec![0usize; n];
    let mut table = vec![u16::MAX; m];
    let mut filled = 0;
    'fill: loop {
        for i in 0..n {
            let (offset, skip) = perm[i];
            let mut c = (offset + next[i] * skip) % m;
            while table[c] != u16::MAX {
                next[i] += 1;
                c = (offset + next[i] * skip) % m;
            }
            table[c] = i as u16;
            next[i] += 1;
            filled += 1;
            if filled == m {
                break 'fill;
            }
        }
    }
    table.into_boxed_slice()
}

/// The hash of a flow that picks its slot: the same on every node.
pub fn flow_hash(t: &Tuple) -> u64 {
    let mut h = mix(SEED ^ u64::from(t.proto));
    for w in [
        t.src as u64,
        t.dst as u64,
        u64::from(t.sport) << 16 | u64::from(t.dport),
    ] {
        h = mix(h ^ w);
    }
    h
}

impl Service {
    /// A service; `backends` are sorted and deduplicated here. `hits` carries over the
    /// counts of backends a previous version had (by backend).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: String,
        zone: u16,
        vip: u32,
        proto: u8,
        port: u16,
        mut backends: Vec<(u32, u16)>,
        affinity_s: u32,
        previous: Option<&Service>,
    ) -> Service {
        backends.sort_unstable();
        backends.dedup();
        backends.truncate(MAX_BACKENDS);
        let table = maglev(&backends);
        let hits = backends
            .iter()
            .map(|b| {
                let old = previous
                    .and_then(|p| {
                        let i = p.backends.iter().position(|x| x == b)?;
                        Some(p.hits[i].load(Ordering::Relaxed))
                    })
                    .unwrap_or(0);
                AtomicU64::new(old)
            })
            .collect();
        let no_backend = previous.map_or(0, |p| p.no_backend.load(Ordering::Relaxed));
        Service {
            name,
            zone,
            vip,
            proto,
            port,
            backends,
            table,
            affinity_s,
            hits,
            no_backend: AtomicU64::new(no_backend),
        }
    }

    /// The backend for a new connection `t`, by Maglev; `None` without backends.
    #[inline]
    pub fn pick(&self, t: &Tuple) -> Option<(u32, u16)> {
        if self.table.is_empty() {
            return None;
        }
        let slot = (flow_hash(t) % self.table.len() as u64) as usize;
        let i = usize::from(self.table[slot]);
        self.backends.get(i).copied()
    }

    /// Counts a new session on `backend`.
    pub fn hit(&self, backend: (u32, u16)) {
        if let Ok(i) = self.backends.binary_search(&backend) {
            self.hits[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Whether `backend` is one of its backends.
    pub fn has(&self, backend: (u32, u16)) -> bool {
        self.backends.binary_search(&backend).is_ok()
    }

    /// How many table slots each backend holds (for tests and status).
    pub fn slots(&self) -> Vec<usize> {
        let mut n = vec![0; self.backends.len()];
        for &i in self.table.iter() {
            n[usize::from(i)] += 1;
        }
        n
    }
}

/// The services a switch runs, found by (zone, VIP, port, protocol): a sorted table
/// searched by halves, so a routed frame that is no service's costs a few compares
/// and no hashing.
#[derive(Debug, Default, Clone)]
pub struct Services {
    list: Vec<Arc<Service>>,
    by_key: Vec<((u16, u32, u16, u8), usize)>,
}

impl Services {
    /// The set of `list`.
    pub fn new(list: Vec<Arc<Service>>) -> Services {
        let mut by_key: Vec<_> = list
            .iter()
            .enumerate()
            .map(|(i, s)| ((s.zone, s.vip, s.port, s.proto), i))
            .collect();
        by_key.sort_unstable();
        Services { list, by_key }
    }

    /// No services.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// All of them.
    pub fn list(&self) -> &[Arc<Service>] {
        &self.list
    }

    /// The service of `zone` at `vip:port` over `proto`.
    #[inline]
    pub fn find(&self, zone: u16, vip: u32, port: u16, proto: u8) -> Option<&Arc<Service>> {
        if self.list.is_empty() {
            return None;
        }
        let k = self
            .by_key
            .binary_search_by(|e| e.0.cmp(&(zone, vip, port, proto)))
            .ok()?;
        self.list.get(self.by_key[k].1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conntrack::v4;

    fn backends(n: u32) -> Vec<(u32, u16)> {
        (0..n).map(|i| (0x0a01_0000 + i, 8080)).collect()
    }

    #[test]
    fn the_table_is_prime_and_shared_evenly() {
        for n in [1u32, 2, 3, 10, 100, 600] {
            let m = table_size(n as usize);
            assert!(is_prime(m) && m >= 100 * n as usize, "{n}: {m}");
            let s = Service::new("s".into(), 1, 1, 6, 80, backends(n), 0, None);
            let slots = s.slots();
            let (lo, hi) = (*slots.iter().min().unwrap(), *slots.iter().max().unwrap());
            assert!(lo > 0, "{n}: every backend has slots");
            // Maglev's balance: within a few percent (the paper's bound is M/N+1 apart
            // at worst for the last filled; in practice far less).
            assert!(hi - lo <= 1 + m / n as usize / 10, "{n}: {lo}..{hi}");
        }
    }

    #[test]
    fn order_does_not_matter_and_removal_moves_few_flows() {
        let mut b = backends(10);
        let s1 = Service::new("s".into(), 1, 1, 6, 80, b.clone(), 0, None);
        b.reverse();
        let s2 = Service::new("s".into(), 1, 1, 6, 80, b.clone(), 0, None);
        b.retain(|x| x.0 != 0x0a01_0003);
        let s3 = Service::new("s".into(), 1, 1, 6, 80, b, 0, None);
        let (mut moved, mut total) = (0, 0);
        for port in 1000..11000u16 {
            let t = Tuple {
                proto: 6,
                src: v4(0x0a00_0001),
                dst: v4(1),
                sport: port,
                dport: 80,
            };
            let a = s1.pick(&t).unwrap();
            assert_eq!(Some(a), s2.pick(&t), "the same backends in another order");
            let c = s3.pick(&t).unwrap();
            assert_ne!(c.0, 0x0a01_0003, "never the removed backend");
            if a.0 != 0x0a01_0003 {
                total += 1;
                moved += usize::from(a != c);
            }
        }
        // Maglev's disruption: well under a tenth of the flows of other backends move.
        assert!(moved * 10 < total, "{moved} of {total} moved");
    }

    #[test]
    fn services_are_found_by_zone() {
        let a = Arc::new(Service::new("a".into(), 1, 7, 6, 80, backends(2), 0, None));
        let b = Arc::new(Service::new("b".into(), 2, 7, 6, 80, backends(3), 0, None));
        let s = Services::new(vec![a, b]);
        assert_eq!(s.find(1, 7, 80, 6).unwrap().name, "a");
        assert_eq!(s.find(2, 7, 80, 6).unwrap().name, "b");
        assert!(s.find(3, 7, 80, 6).is_none());
        assert!(s.find(1, 7, 80, 17).is_none());
        assert!(s.find(2, 7, 81, 6).is_none());
    }
}
