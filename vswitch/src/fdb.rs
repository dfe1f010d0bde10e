//! The L2 forwarding database: (VLAN id, MAC) → (port, last seen).
//!
//! # Contract
//!
//! * **Fixed size.** All memory is allocated by [`Fdb::new`]; [`Fdb::learn`],
//!   [`Fdb::lookup`] and every other method allocate nothing. The table never grows.
//! * **O(1).** `lookup` and `learn` inspect two buckets of [`BUCKET_SLOTS`] entries
//!   (plus, when both are full, each of their entries' alternate bucket once), whatever
//!   the table size or content.
//! * **Time is the caller's.** Every call that needs the time takes `now` (nanoseconds,
//!   TSC ticks, anything monotonic in one unit); `max_age` is in the same unit. An entry
//!   is *live* while `now - last_seen <= max_age` (a `last_seen` in the future counts as
//!   age 0). Aged entries are absent for `lookup`, `learn` and [`Fdb::entries`]; they
//!   keep their slot until it is reclaimed by `learn`, swept by [`Fdb::expire`] or
//!   flushed, so [`Fdb::len`] counts stored entries, live or not.
//! * **Full table.** A new key goes to the emptier of its two buckets; if both are full
//!   it takes the slot of an aged entry there; failing that, one live entry of those
//!   buckets is moved to its own alternate bucket when that has a free or aged slot
//!   (one cuckoo step). Only when all of this fails is the new key refused; the refusal
//!   is counted in [`FdbStats::refused`] and the table is unchanged.
//! * **Moves.** Learning a live key on another port replaces the port and counts a move.
//! * **Hashing** is keyed with a per-table seed (random in [`Fdb::new`]), so a guest
//!   cannot aim source MACs at one bucket without knowing the seed. It is a fast mixing
//!   function, not a cryptographic PRF.
//!
//! Only the low 12 bits of a VLAN id are used (VLAN ids are 12-bit), which also keeps
//! the packed key clear of the empty-slot marker.
#![forbid(unsafe_code)]

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;

use crate::wire::EthernetAddress;

/// Entries per bucket.
pub const BUCKET_SLOTS: usize = 8;

/// Largest capacity [`Fdb::new`] accepts (16 Mi entries, about 300 MiB).
pub const MAX_CAPACITY: usize = 1 << 24;

/// Smallest capacity: two buckets.
const MIN_CAPACITY: usize = 2 * BUCKET_SLOTS;

/// Marks a free slot; no packed key has its top 4 bits set.
const EMPTY: u64 = u64::MAX;

/// Errors of [`Fdb::new`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FdbError {
    /// The requested capacity is above [`MAX_CAPACITY`].
    #[error("fdb capacity {requested} exceeds the maximum of {max} entries")]
    CapacityTooLarge {
        /// Entries asked for.
        requested: usize,
        /// The limit.
        max: usize,
    },
}

/// What [`Fdb::learn`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Learn {
    /// The key was absent (or aged) and is now stored.
    New,
    /// The key was live on the same port; its timestamp was refreshed.
    Refreshed,
    /// The key was live on another port and now points to the new one.
    Moved {
        /// The port the key was on.
        from: u16,
    },
    /// The key was absent and no slot could be found for it.
    Refused,
}

/// Counters of one table, monotonic since [`Fdb::new`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FdbStats {
    /// Keys stored by `learn` ([`Learn::New`]).
    pub learned: u64,
    /// Live keys that changed port ([`Learn::Moved`]).
    pub moves: u64,
    /// New keys refused because their buckets were full of live entries.
    pub refused: u64,
    /// Aged entries overwritten by `learn` to make room.
    pub reclaimed: u64,
    /// Aged entries removed by `expire`.
    pub expired: u64,
    /// Entries removed by `flush_port`, `remove` or `clear`.
    pub flushed: u64,
}

/// One stored entry, as reported by [`Fdb::entries`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FdbEntry {
    /// VLAN id (12 bits).
    pub vid: u16,
    /// MAC address.
    pub mac: EthernetAddress,
    /// Port the MAC was last seen on.
    pub port: u16,
    /// When it was last seen, in the caller's time unit.
    pub last_seen: u64,
}

impl FdbEntry {
    /// Age at `now` (0 when `last_seen` is in the future).
    pub fn age(&self, now: u64) -> u64 {
        now.saturating_sub(self.last_seen)
    }
}

/// A bucket: keys first so that a lookup reads one cache line.
#[derive(Clone)]
#[repr(C, align(64))]
struct Bucket {
    keys: [u64; BUCKET_SLOTS],
    seen: [u64; BUCKET_SLOTS],
    ports: [u16; BUCKET_SLOTS],
}

impl Bucket {
    const EMPTY: Bucket = Bucket {
        keys: [EMPTY; BUCKET_SLOTS],
        seen: [0; BUCKET_SLOTS],
        ports: [0; BUCKET_SLOTS],
    };

    fn find(&self, key: u64) -> Option<usize> {
        self.keys.iter().position(|&k| k == key)
    }

    fn free_count(&self) -> usize {
        self.keys.iter().filter(|&&k| k == EMPTY).count()
    }

    /// A free slot, else the oldest aged slot; the flag says whether it was aged.
    fn free_or_aged(&self, now: u64, max_age: u64) -> Option<(usize, bool)> {
        if let Some(i) = self.find(EMPTY) {
            return Some((i, false));
        }
        self.oldest_aged(now, max_age).map(|i| (i, true))
    }

    fn oldest_aged(&self, now: u64, max_age: u64) -> Option<usize> {
        (0..BUCKET_SLOTS)
            .filter(|&i| self.keys[i] != EMPTY && !is_live(self.seen[i], now, max_age))
            .min_by_key(|&i| self.seen[i])
    }

    fn put(&mut self, i: usize, key: u64, port: u16, now: u64) {
        self.keys[i] = key;
        self.ports[i] = port;
        self.seen[i] = now;
    }
}

fn is_live(seen: u64, now: u64, max_age: u64) -> bool {
    now.saturating_sub(seen) <= max_age
}

fn pack(vid: u16, mac: EthernetAddress) -> u64 {
    (u64::from(vid & 0x0fff) << 48) | mac.to_u64()
}

fn unpack(key: u64) -> (u16, EthernetAddress) {
    ((key >> 48) as u16, EthernetAddress::from_u64(key))
}

/// MurmurHash3's 64-bit finaliser: a bijection with full avalanche.
fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^ (k >> 33)
}

/// A fixed-capacity, bucketised two-choice hash table of MAC addresses; see the module
/// documentation for its contract.
pub struct Fdb {
    buckets: Box<[Bucket]>,
    mask: usize,
    max_age: u64,
    seed: [u64; 2],
    len: usize,
    /// Next slot `expire` looks at.
    cursor: usize,
    stats: FdbStats,
    /// Entries stored (live or aged) per port, for ports below [`COUNTED_PORTS`]: lets
    /// [`flush_port`](Fdb::flush_port) skip its walk of the whole table when the port has
    /// none.
    per_port: Box<[u32]>,
}

/// Ports whose stored entries are counted.
pub const COUNTED_PORTS: usize = 1024;

impl std::fmt::Debug for Fdb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fdb")
            .field("capacity", &self.capacity())
            .field("len", &self.len)
            .field("max_age", &self.max_age)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Fdb {
    /// A table for at least `capacity` entries (rounded up to a power of two, at least
    /// 16) whose entries age out after `max_age`, with a random hash seed.
    pub fn new(capacity: usize, max_age: u64) -> Result<Fdb, FdbError> {
        let seed = RandomState::new().hash_one(0x766e_6668_6f73_7421_u64);
        Self::with_seed(capacity, max_age, seed)
    }

    /// As [`Fdb::new`] with a chosen hash seed (reproducible layouts for tests).
    pub fn with_seed(capacity: usize, max_age: u64, seed: u64) -> Result<Fdb, FdbError> {
        if capacity > MAX_CAPACITY {
            return Err(FdbError::CapacityTooLarge {
                requested: capacity,
                max: MAX_CAPACITY,
            });
        }
        let slots = capacity.max(MIN_CAPACITY).next_power_of_two();
        let nbuckets = slots / BUCKET_SLOTS;
        Ok(Fdb {
            buckets: vec![Bucket::EMPTY; nbuckets].into_boxed_slice(),
            mask: nbuckets - 1,
            max_age,
            seed: [fmix64(seed), fmix64(!seed)],
            len: 0,
            cursor: 0,
            stats: FdbStats::default(),
            per_port: vec![0; COUNTED_PORTS].into_boxed_slice(),
        })
    }

    fn count(&mut self, port: u16, up: bool) {
        if let Some(n) = self.per_port.get_mut(usize::from(port)) {
            *n = if up {
                n.saturating_add(1)
            } else {
                n.saturating_sub(1)
            };
        }
    }

    /// Entries stored (live or aged) on `port`; `None` for a port above the counted
    /// range.
    pub fn entries_of(&self, port: u16) -> Option<u32> {
        self.per_port.get(usize::from(port)).copied()
    }

    /// Number of entries the table can hold.
    pub fn capacity(&self) -> usize {
        self.buckets.len() * BUCKET_SLOTS
    }

    /// Stored entries, including aged ones not reclaimed yet.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Entries live at `now` (walks the whole table).
    pub fn live_len(&self, now: u64) -> usize {
        self.entries(now).count()
    }

    /// The ageing limit.
    pub fn max_age(&self) -> u64 {
        self.max_age
    }

    /// Changes the ageing limit; applies to stored entries at once.
    pub fn set_max_age(&mut self, max_age: u64) {
        self.max_age = max_age;
    }

    /// The table's counters.
    pub fn stats(&self) -> &FdbStats {
        &self.stats
    }

    fn buckets_of(&self, key: u64) -> (usize, usize) {
        let h = fmix64(fmix64(key ^ self.seed[0]) ^ self.seed[1]);
        let b1 = h as usize & self.mask;
        let mut b2 = (h >> 32) as usize & self.mask;
        if b2 == b1 {
            // There are at least two buckets, so this is another one.
            b2 = b1 ^ 1;
        }
        (b1, b2)
    }

    fn alternate(&self, key: u64, bucket: usize) -> usize {
        let (b1, b2) = self.buckets_of(key);
        if bucket == b1 {
            b2
        } else {
            b1
        }
    }

    fn find(&self, key: u64) -> Option<(usize, usize)> {
        let (b1, b2) = self.buckets_of(key);
        [b1, b2]
            .into_iter()
            .find_map(|b| self.buckets[b].find(key).map(|i| (b, i)))
    }

    /// The port of `(vid, mac)` if it is live at `now`.
    pub fn lookup(&self, vid: u16, mac: EthernetAddress, now: u64) -> Option<u16> {
        let (b, i) = self.find(pack(vid, mac))?;
        let bucket = &self.buckets[b];
        is_live(bucket.seen[i], now, self.max_age).then_some(bucket.ports[i])
    }

    /// Records that `(vid, mac)` was seen on `port` at `now`.
    pub fn learn(&mut self, vid: u16, mac: EthernetAddress, port: u16, now: u64) -> Learn {
        let key = pack(vid, mac);
        let max_age = self.max_age;
        if let Some((b, i)) = self.find(key) {
            let bucket = &mut self.buckets[b];
            let was_live = is_live(bucket.seen[i], now, max_age);
            let from = bucket.ports[i];
            bucket.ports[i] = port;
            bucket.seen[i] = now;
            if from != port {
                self.count(from, false);
                self.count(port, true);
            }
            return if !was_live {
                self.stats.learned += 1;
                Learn::New
            } else if from != port {
                self.stats.moves += 1;
                Learn::Moved { from }
            } else {
                Learn::Refreshed
            };
        }
        match self.make_room(key, now) {
            Some((b, i)) => {
                self.buckets[b].put(i, key, port, now);
                self.count(port, true);
                self.stats.learned += 1;
                Learn::New
            }
            None => {
                self.stats.refused += 1;
                Learn::Refused
            }
        }
    }

    /// Finds a slot for the absent `key`, in the order the module documentation gives,
    /// and accounts for the slot's previous content.
    fn make_room(&mut self, key: u64, now: u64) -> Option<(usize, usize)> {
        let max_age = self.max_age;
        let (b1, b2) = self.buckets_of(key);
        let (free1, free2) = (self.buckets[b1].free_count(), self.buckets[b2].free_count());
        if free1 + free2 > 0 {
            let b = if free1 >= free2 { b1 } else { b2 };
            let i = self.buckets[b].find(EMPTY)?;
            self.len += 1;
            return Some((b, i));
        }
        for b in [b1, b2] {
            if let Some(i) = self.buckets[b].oldest_aged(now, max_age) {
                self.stats.reclaimed += 1;
                let old = self.buckets[b].ports[i];
                self.count(old, false);
                return Some((b, i));
            }
        }
        // Both buckets are full of live entries: move one of them to its other bucket.
        for b in [b1, b2] {
            for i in 0..BUCKET_SLOTS {
                let moved = self.buckets[b].keys[i];
                let alt = self.alternate(moved, b);
                if let Some((j, aged)) = self.buckets[alt].free_or_aged(now, max_age) {
                    if aged {
                        let old = self.buckets[alt].ports[j];
                        self.count(old, false);
                    }
                    // The entry moved keeps its port (and its count); the slot it
                    // leaves is taken by the caller's new entry, counted there.
                    let (port, seen) = (self.buckets[b].ports[i], self.buckets[b].seen[i]);
                    self.buckets[alt].put(j, moved, port, seen);
                    if aged {
                        self.stats.reclaimed += 1;
                    } else {
                        self.len += 1;
                    }
                    return Some((b, i));
                }
            }
        }
        None
    }

    /// Removes `(vid, mac)`; returns whether it was stored (live or aged).
    pub fn remove(&mut self, vid: u16, mac: EthernetAddress) -> bool {
        match self.find(pack(vid, mac)) {
            Some((b, i)) => {
                self.buckets[b].keys[i] = EMPTY;
                let port = self.buckets[b].ports[i];
                self.count(port, false);
                self.len -= 1;
                self.stats.flushed += 1;
                true
            }
            None => false,
        }
    }

    /// Removes every entry of `port`; returns how many. Walks the whole table, unless
    /// the port has no entry stored.
    pub fn flush_port(&mut self, port: u16) -> usize {
        if self.entries_of(port) == Some(0) {
            return 0;
        }
        self.remove_where(|_, p, _| p == port)
    }

    /// Removes every entry.
    pub fn clear(&mut self) -> usize {
        self.remove_where(|_, _, _| true)
    }

    fn remove_where(&mut self, mut pred: impl FnMut(u64, u16, u64) -> bool) -> usize {
        let mut removed = 0;
        for bucket in self.buckets.iter_mut() {
            for i in 0..BUCKET_SLOTS {
                if bucket.keys[i] != EMPTY && pred(bucket.keys[i], bucket.ports[i], bucket.seen[i])
                {
                    bucket.keys[i] = EMPTY;
                    if let Some(n) = self.per_port.get_mut(usize::from(bucket.ports[i])) {
                        *n = n.saturating_sub(1);
                    }
                    removed += 1;
                }
            }
        }
        self.len -= removed;
        self.stats.flushed += removed as u64;
        removed
    }

    /// Frees the slots of entries aged at `now` among the next `budget` slots (wrapping
    /// around the table; `budget >= capacity()` sweeps it all). Returns how many were
    /// freed. Lets a polling loop spread the sweep over many iterations.
    pub fn expire(&mut self, now: u64, budget: usize) -> usize {
        self.expire_or(now, budget, |_| false)
    }

    /// As [`expire`](Self::expire), also freeing the entries of ports for which `gone`
    /// is true (ports removed without a flush).
    pub fn expire_or(&mut self, now: u64, budget: usize, gone: impl Fn(u16) -> bool) -> usize {
        let capacity = self.capacity();
        let mut freed = 0;
        for _ in 0..budget.min(capacity) {
            let (b, i) = (self.cursor / BUCKET_SLOTS, self.cursor % BUCKET_SLOTS);
            self.cursor = (self.cursor + 1) % capacity;
            let bucket = &mut self.buckets[b];
            if bucket.keys[i] != EMPTY
                && (!is_live(bucket.seen[i], now, self.max_age) || gone(bucket.ports[i]))
            {
                bucket.keys[i] = EMPTY;
                if let Some(n) = self.per_port.get_mut(usize::from(bucket.ports[i])) {
                    *n = n.saturating_sub(1);
                }
                freed += 1;
            }
        }
        self.len -= freed;
        self.stats.expired += freed as u64;
        freed
    }

    /// The entries live at `now`, in table order.
    pub fn entries(&self, now: u64) -> impl Iterator<Item = FdbEntry> + '_ {
        let max_age = self.max_age;
        self.buckets.iter().flat_map(move |bucket| {
            (0..BUCKET_SLOTS).filter_map(move |i| {
                let key = bucket.keys[i];
                if key == EMPTY || !is_live(bucket.seen[i], now, max_age) {
                    return None;
                }
                let (vid, mac) = unpack(key);
                Some(FdbEntry {
                    vid,
                    mac,
                    port: bucket.ports[i],
                    last_seen: bucket.seen[i],
                })
            })
        })
    }

    /// Test support: true when a `learn` of `(vid, mac)` at `now` must be refused —
    /// the key is not stored, both buckets hold only live entries and none of those
    /// could move to a free or aged slot of its alternate bucket.
    #[cfg(test)]
    pub(crate) fn refusal_is_justified(&self, vid: u16, mac: EthernetAddress, now: u64) -> bool {
        let key = pack(vid, mac);
        let (b1, b2) = self.buckets_of(key);
        self.find(key).is_none()
            && [b1, b2].into_iter().all(|b| {
                let bucket = &self.buckets[b];
                (0..BUCKET_SLOTS).all(|i| {
                    bucket.keys[i] != EMPTY
                        && is_live(bucket.seen[i], now, self.max_age)
                        && self.buckets[self.alternate(bucket.keys[i], b)]
                            .free_or_aged(now, self.max_age)
                            .is_none()
                })
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{HashMap, HashSet};

    fn mac(n: u64) -> EthernetAddress {
        EthernetAddress::from_u64(0x0200_0000_0000 | n)
    }

    #[test]
    fn learn_then_lookup() {
        let mut fdb = Fdb::with_seed(64, 100, 1).expect("fdb");
        assert_eq!(fdb.lookup(1, mac(1), 0), None);
        assert_eq!(fdb.learn(1, mac(1), 3, 0), Learn::New);
        assert_eq!(fdb.lookup(1, mac(1), 0), Some(3));
        assert_eq!(fdb.learn(1, mac(1), 3, 5), Learn::Refreshed);
        assert_eq!(fdb.len(), 1);
        assert_eq!(fdb.stats().learned, 1);
    }

    #[test]
    fn vlans_are_separate_tables() {
        let mut fdb = Fdb::with_seed(64, 100, 1).expect("fdb");
        fdb.learn(10, mac(1), 1, 0);
        fdb.learn(20, mac(1), 2, 0);
        assert_eq!(fdb.lookup(10, mac(1), 0), Some(1));
        assert_eq!(fdb.lookup(20, mac(1), 0), Some(2));
        assert_eq!(fdb.lookup(30, mac(1), 0), None);
        // Only 12 bits of the VLAN id count.
        assert_eq!(fdb.lookup(10 | 0xf000, mac(1), 0), Some(1));
    }

    #[test]
    fn move_updates_port_and_counts() {
        let mut fdb = Fdb::with_seed(64, 100, 1).expect("fdb");
        fdb.learn(1, mac(7), 1, 0);
        assert_eq!(fdb.learn(1, mac(7), 2, 1), Learn::Moved { from: 1 });
        assert_eq!(fdb.lookup(1, mac(7), 1), Some(2));
        assert_eq!(fdb.stats().moves, 1);
        assert_eq!(fdb.len(), 1);
    }

    #[test]
    fn ageing() {
        let mut fdb = Fdb::with_seed(64, 100, 1).expect("fdb");
        fdb.learn(1, mac(1), 1, 1000);
        assert_eq!(
            fdb.lookup(1, mac(1), 1100),
            Some(1),
            "age == max_age is live"
        );
        assert_eq!(fdb.lookup(1, mac(1), 1101), None);
        assert_eq!(fdb.live_len(1101), 0);
        assert_eq!(fdb.len(), 1, "aged entries keep their slot until reclaimed");
        // A timestamp from the past (another clock) does not age anything.
        assert_eq!(fdb.lookup(1, mac(1), 10), Some(1));
        // Re-learning an aged key on another port is a new entry, not a move.
        assert_eq!(fdb.learn(1, mac(1), 2, 2000), Learn::New);
        assert_eq!(fdb.stats().moves, 0);
        assert_eq!(fdb.len(), 1);
        fdb.set_max_age(2000);
        assert_eq!(fdb.max_age(), 2000);
        assert_eq!(fdb.lookup(1, mac(1), 4000), Some(2));
    }

    #[test]
    fn expire_sweeps_in_steps() {
        let mut fdb = Fdb::with_seed(64, 10, 1).expect("fdb");
        for n in 0..20 {
            fdb.learn(1, mac(n), 1, 0);
        }
        fdb.learn(1, mac(100), 1, 50);
        let mut freed = 0;
        for _ in 0..8 {
            freed += fdb.expire(50, 8);
        }
        assert_eq!(freed, 20);
        assert_eq!(fdb.len(), 1);
        assert_eq!(fdb.expire(50, usize::MAX), 0);
        assert_eq!(fdb.stats().expired, 20);
        assert_eq!(fdb.lookup(1, mac(100), 50), Some(1));
    }

    #[test]
    fn flush_port_and_remove() {
        let mut fdb = Fdb::with_seed(64, 100, 1).expect("fdb");
        for n in 0..30 {
            fdb.learn(1, mac(n), (n % 3) as u16, 0);
        }
        assert_eq!(fdb.flush_port(1), 10);
        assert_eq!(fdb.len(), 20);
        assert!(fdb.entries(0).all(|e| e.port != 1));
        assert!(fdb.remove(1, mac(0)));
        assert!(!fdb.remove(1, mac(0)));
        assert_eq!(fdb.clear(), 19);
        assert!(fdb.is_empty());
        assert_eq!(fdb.stats().flushed, 30);
    }

    #[test]
    fn entries_report_what_was_learned() {
        let mut fdb = Fdb::with_seed(64, 100, 1).expect("fdb");
        fdb.learn(5, mac(1), 1, 10);
        fdb.learn(6, mac(2), 2, 20);
        let mut e: Vec<_> = fdb.entries(20).collect();
        e.sort_by_key(|e| e.vid);
        assert_eq!(
            e,
            [
                FdbEntry {
                    vid: 5,
                    mac: mac(1),
                    port: 1,
                    last_seen: 10
                },
                FdbEntry {
                    vid: 6,
                    mac: mac(2),
                    port: 2,
                    last_seen: 20
                }
            ]
        );
        assert_eq!(e[0].age(25), 15);
    }

    #[test]
    fn capacity_is_rounded_and_bounded() {
        assert_eq!(Fdb::with_seed(0, 1, 0).expect("fdb").capacity(), 16);
        assert_eq!(Fdb::with_seed(100, 1, 0).expect("fdb").capacity(), 128);
        assert_eq!(
            Fdb::new(MAX_CAPACITY + 1, 1).err(),
            Some(FdbError::CapacityTooLarge {
                requested: MAX_CAPACITY + 1,
                max: MAX_CAPACITY
            })
        );
    }

    #[test]
    fn full_table_refuses_then_reclaims_aged_entries() {
        let mut fdb = Fdb::with_seed(1024, 100, 42).expect("fdb");
        let mut stored = 0u64;
        let mut n = 0u64;
        // Fill with live entries until the first refusal.
        let first_refusal = loop {
            match fdb.learn(1, mac(n), 1, 0) {
                Learn::New => stored += 1,
                Learn::Refused => break n,
                other => panic!("unexpected {other:?}"),
            }
            n += 1;
        };
        assert!(fdb.refusal_is_justified(1, mac(first_refusal), 0));
        assert!(
            stored as usize * 100 >= fdb.capacity() * 90,
            "only {stored} of {} slots used at the first refusal",
            fdb.capacity()
        );
        // Keep offering new MACs: the table never exceeds its capacity, refusals are
        // counted and nothing already stored is lost.
        for m in n..n + 2000 {
            fdb.learn(1, mac(m), 1, 0);
        }
        assert!(fdb.len() <= fdb.capacity());
        assert!(fdb.stats().refused > 0);
        assert_eq!(fdb.stats().learned, fdb.len() as u64);
        assert_eq!(fdb.live_len(0), fdb.len());
        // Once everything has aged, new MACs take the aged slots.
        let later = 1000;
        for m in 0..500 {
            assert_eq!(fdb.learn(2, mac(m), 2, later), Learn::New);
        }
        assert!(fdb.stats().reclaimed >= 500);
        assert!(fdb.len() <= fdb.capacity());
        assert_eq!(fdb.live_len(later), 500);
    }

    #[derive(Clone, Debug)]
    enum Op {
        Learn { vid: u16, mac: u64, port: u16 },
        Advance(u64),
        FlushPort(u16),
        Remove { vid: u16, mac: u64 },
        Expire(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            8 => (0u16..3, 0u64..16, 0u16..4).prop_map(|(vid, mac, port)| Op::Learn { vid, mac, port }),
            2 => (0u64..60).prop_map(Op::Advance),
            1 => (0u16..4).prop_map(Op::FlushPort),
            1 => (0u16..3, 0u64..16).prop_map(|(vid, mac)| Op::Remove { vid, mac }),
            1 => (0usize..40).prop_map(Op::Expire),
        ]
    }

    type Model = HashMap<(u16, u64), (u16, u64)>;

    fn model_live(model: &Model, key: (u16, u64), now: u64, max_age: u64) -> Option<u16> {
        model
            .get(&key)
            .filter(|(_, seen)| is_live(*seen, now, max_age))
            .map(|(port, _)| *port)
    }

    proptest! {
        /// The table behaves like a HashMap with the same ageing rule, except that it
        /// may refuse a new key, and then only when its buckets are genuinely full.
        #[test]
        fn behaves_like_a_hashmap(seed in any::<u64>(), ops in proptest::collection::vec(op(), 1..300)) {
            const MAX_AGE: u64 = 100;
            // 48 possible keys in 16 slots: the table is often full.
            let mut fdb = Fdb::with_seed(16, MAX_AGE, seed).expect("fdb");
            let mut model: Model = HashMap::new();
            let mut now = 0u64;
            for op in ops {
                match op {
                    Op::Learn { vid, mac: m, port } => {
                        let before = model_live(&model, (vid, m), now, MAX_AGE);
                        let justified = fdb.refusal_is_justified(vid, mac(m), now);
                        let got = fdb.learn(vid, mac(m), port, now);
                        let want = match before {
                            Some(p) if p == port => Learn::Refreshed,
                            Some(p) => Learn::Moved { from: p },
                            None if got == Learn::Refused => {
                                prop_assert!(justified, "refused with room left");
                                Learn::Refused
                            }
                            None => Learn::New,
                        };
                        prop_assert_eq!(got, want);
                        if got != Learn::Refused {
                            model.insert((vid, m), (port, now));
                        }
                    }
                    Op::Advance(dt) => now += dt,
                    Op::FlushPort(p) => {
                        fdb.flush_port(p);
                        model.retain(|_, (port, _)| *port != p);
                    }
                    Op::Remove { vid, mac: m } => {
                        fdb.remove(vid, mac(m));
                        model.remove(&(vid, m));
                    }
                    Op::Expire(budget) => {
                        fdb.expire(now, budget);
                    }
                }
                for vid in 0..3 {
                    for m in 0..16 {
                        prop_assert_eq!(
                            fdb.lookup(vid, mac(m), now),
                            model_live(&model, (vid, m), now, MAX_AGE)
                        );
                    }
                }
                let live: HashSet<_> = fdb
                    .entries(now)
                    .map(|e| (e.vid, e.mac.to_u64() & 0xffff, e.port))
                    .collect();
                let want: HashSet<_> = model
                    .iter()
                    .filter(|(_, (_, seen))| is_live(*seen, now, MAX_AGE))
                    .map(|(&(vid, m), &(port, _))| (vid, m, port))
                    .collect();
                prop_assert_eq!(live, want);
                prop_assert!(fdb.len() <= fdb.capacity());
                prop_assert!(fdb.len() >= fdb.live_len(now));
            }
            fdb.expire(now, usize::MAX);
            prop_assert_eq!(fdb.len(), fdb.live_len(now));
        }
    }

    #[test]
    fn per_port_counts_follow_every_change() {
        // A small table under random learning, moves, removals, ageing and flushes:
        // the per-port counts always equal what a walk of the table finds.
        let mut f = Fdb::with_seed(64, 10, 7).unwrap();
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut rnd = |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        for step in 0..20_000u64 {
            let now = step / 8;
            let mac = EthernetAddress([2, 0, 0, 0, 0, rnd(200) as u8]);
            let port = rnd(6) as u16;
            match rnd(20) {
                0 => {
                    f.flush_port(port);
                }
                1 => {
                    f.remove(1, mac);
                }
                2 => {
                    f.expire(now, 8);
                }
                3 => {
                    f.expire_or(now, 8, |p| p == port);
                }
                _ => {
                    f.learn(1, mac, port, now);
                }
            }
            let mut want = [0u32; 6];
            for b in f.buckets.iter() {
                for i in 0..BUCKET_SLOTS {
                    if b.keys[i] != EMPTY {
                        want[usize::from(b.ports[i])] += 1;
                    }
                }
            }
            for (p, w) in want.iter().enumerate() {
                assert_eq!(f.entries_of(p as u16), Some(*w), "port {p} at step {step}");
            }
        }
    }
}
