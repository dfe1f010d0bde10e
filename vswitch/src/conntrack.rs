//! Sessions: the connection table that stateful security groups and services share.
//!
//! # Keys
//!
//! A session is one conversation in one *zone* (a tenant: the VLANs of one router, or a
//! VLAN without a router on its own). It is found by the canonical form of a packet's
//! 5-tuple ([`Key`]: the lower (address, port) endpoint first), so the two directions of
//! an untranslated conversation meet at one index entry. A translated one (a service's
//! DNAT, a hairpin's SNAT) has a second entry for the tuple its replies carry. The
//! session remembers the first packet's tuple (`orig`) and the one replies show
//! (`reply`); a packet matches one of them exactly, which gives its direction.
//!
//! ICMP echo uses the identifier as both ports, so a request and its reply meet. Other
//! ICMP messages (errors) are not related to the session they quote: a stateful group
//! that wants them (path MTU discovery) needs a rule.
//!
//! # States and timeouts
//!
//! | protocol | state | default |
//! |---|---|---|
//! | TCP | *opening*: one direction seen | 30 s |
//! | TCP | *established*: both directions seen, no FIN or RST | 3600 s |
//! | TCP | *closing*: FIN from both sides, or a RST | 10 s |
//! | UDP | any | 30 s |
//! | ICMP, others | any | 30 s |
//!
//! VPP's cnat uses 30 s for idle and 1 h for established TCP; so do we, with a short
//! closing state so that a port reused after a close (a new SYN) starts afresh: a SYN
//! that opens a conversation whose session is closing replaces it. A session expires
//! when it has seen no packet for its state's timeout: it is then never matched
//! (lookups check), and [`Sessions::expire`] reclaims a bounded number of slots per
//! call.
//!
//! # Capacity and overflow
//!
//! Sized once ([`Sessions::new`]): the sessions in one array, the index an
//! open-addressing table of four entries per session (load at most one half), probed
//! linearly and deleted by backward shift, so lookups never walk tombstones. Nothing is
//! allocated per packet. A new session that finds the table full first reclaims expired
//! sessions (a bounded scan); if none is free it is **refused** and counted in
//! [`SessionStats::table_full`]: a service's new connection is dropped (it cannot be
//! translated without a session); a packet a stateful rule allowed still goes, but its
//! replies find no session and are dropped. A live session is never evicted for a new
//! one, so a flood of new connections cannot break established ones.
//!
//! # Cores
//!
//! A table belongs to one polling core and has no synchronisation, no lock and no shared
//! cache line: OVS's global conntrack lock is what this avoids. The switch gives every
//! core its own table and copies each new session to the others' tables through their
//! inboxes (bounded lock-free queues, see [`crate::switch`]), so the two directions of a
//! conversation meet whichever cores their ports are polled by; a copy whose state
//! changes (its first reply, a FIN, a RST) is sent again, and the others merge what it
//! has seen ([`Sessions::adopt`]). Each copy ages on its own core's traffic. The copy
//! travels as fast as a poll (microseconds); a reply that beats it (or a copy lost to a
//! full inbox) finds no session on its core and is held to the rules, as a new
//! conversation would be.
#![forbid(unsafe_code)]

/// ICMP echo request and reply (IPv4), ICMPv6 echo request and reply.
const ECHO: [(u8, u8); 4] = [(1, 8), (1, 0), (58, 128), (58, 129)];

/// Zones at or above this one hold services' client affinity, not conversations.
pub const AFFINITY_ZONE: u16 = 0x8000;

/// A packet's 5-tuple. IPv4 addresses are held as IPv4-mapped IPv6 (`::ffff:a.b.c.d`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Tuple {
    /// IP protocol.
    pub proto: u8,
    /// Source address.
    pub src: u128,
    /// Destination address.
    pub dst: u128,
    /// Source port (TCP, UDP; the echo identifier for ICMP echo; 0 otherwise).
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
}

/// An IPv4 address as a [`Tuple`] holds it.
pub const fn v4(a: u32) -> u128 {
    0xffff_0000_0000 | a as u128
}

/// The IPv4 address in `a`, if it is IPv4-mapped.
pub const fn as_v4(a: u128) -> Option<u32> {
    if a >> 32 == 0xffff {
        Some(a as u32)
    } else {
        None
    }
}

impl Tuple {
    /// The same conversation seen the other way.
    pub fn reversed(&self) -> Tuple {
        Tuple {
            proto: self.proto,
            src: self.dst,
            dst: self.src,
            sport: self.dport,
            dport: self.sport,
        }
    }
}

/// A session's index key: zone, protocol and the two endpoints, lower first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Key {
    zone: u16,
    proto: u8,
    a: (u128, u16),
    b: (u128, u16),
}

impl Key {
    /// The canonical key of `t` in `zone`.
    pub fn of(zone: u16, t: &Tuple) -> Key {
        let (s, d) = ((t.src, t.sport), (t.dst, t.dport));
        let (a, b) = if s <= d { (s, d) } else { (d, s) };
        Key {
            zone,
            proto: t.proto,
            a,
            b,
        }
    }

    /// A hash of the key (the same on every run and node): the words folded with a
    /// multiply each, then one finaliser.
    #[inline(always)]
    fn hash(&self) -> u64 {
        const K: [u64; 5] = [
            0x9e37_79b9_7f4a_7c15,
            0xc2b2_ae3d_27d4_eb4f,
            0x1656_67b1_9e37_79f9,
            0x85eb_ca77_c2b2_ae63,
            0x27d4_eb2f_1656_67c5,
        ];
        let w = [
            self.a.0 as u64 ^ (self.a.0 >> 64) as u64,
            self.b.0 as u64 ^ (self.b.0 >> 64) as u64,
            u64::from(self.a.1) << 16 | u64::from(self.b.1),
            u64::from(self.zone) << 8 | u64::from(self.proto),
        ];
        let h = w[0].wrapping_mul(K[0])
            ^ w[1].wrapping_mul(K[1]).rotate_left(23)
            ^ w[2].wrapping_mul(K[2]).rotate_left(41)
            ^ w[3].wrapping_mul(K[3]);
        mix(h ^ K[4])
    }
}

/// A 64-bit finaliser (splitmix64's): cheap, and every input bit reaches every output
/// bit.
#[inline(always)]
pub fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Which way a packet goes in its session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    /// As the packet that created it.
    Orig,
    /// The other way.
    Reply,
}

/// The reply direction has been seen.
const SEEN_REPLY: u8 = 1;
/// A FIN in the original direction.
const FIN_ORIG: u8 = 2;
/// A FIN in the reply direction.
const FIN_REPLY: u8 = 4;
/// A RST either way.
const RST: u8 = 8;

/// TCP flag bits as they are in the header.
pub mod tcp {
    /// FIN.
    pub const FIN: u8 = 0x01;
    /// SYN.
    pub const SYN: u8 = 0x02;
    /// RST.
    pub const RST: u8 = 0x04;
    /// ACK.
    pub const ACK: u8 = 0x10;
}

/// One session.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Session {
    /// Its zone.
    pub zone: u16,
    /// The first packet's tuple, before any translation.
    pub orig: Tuple,
    /// The tuple replies carry (after translation): `orig.reversed()` unless translated.
    pub reply: Tuple,
    /// When it last saw a packet (the caller's clock, ns).
    pub last: u64,
    /// State bits.
    state: u8,
    /// Created for a service (its backend is `reply.src`).
    pub service: bool,
    /// A fixed lifetime in seconds instead of the state's (affinity entries); 0: none.
    pub ttl_s: u32,
}

impl Session {
    /// A session of `orig`, replies as `reply`.
    pub fn new(zone: u16, orig: Tuple, reply: Tuple, now: u64) -> Session {
        Session {
            zone,
            orig,
            reply,
            last: now,
            state: 0,
            service: false,
            ttl_s: 0,
        }
    }

    /// Whether the session translates addresses or ports.
    pub fn translates(&self) -> bool {
        self.reply != self.orig.reversed()
    }

    /// The tuple a packet of direction `dir` is rewritten to.
    pub fn rewrite_to(&self, dir: Dir) -> Tuple {
        match dir {
            Dir::Orig => self.reply.reversed(),
            Dir::Reply => self.orig.reversed(),
        }
    }

    /// Whether a TCP session is closing (a FIN each way, or a RST).
    fn closing(&self) -> bool {
        self.state & RST != 0 || self.state & (FIN_ORIG | FIN_REPLY) == FIN_ORIG | FIN_REPLY
    }

    /// Its state's name (`opening`, `established`, `closing`, `active`).
    pub fn state_name(&self) -> &'static str {
        if self.orig.proto != 6 {
            "active"
        } else if self.closing() {
            "closing"
        } else if self.state & SEEN_REPLY != 0 {
            "established"
        } else {
            "opening"
        }
    }
}

/// Timeouts by state, in ns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP, both directions seen.
    pub tcp_established: u64,
    /// TCP, one direction seen.
    pub tcp_opening: u64,
    /// TCP, FIN both ways or a RST.
    pub tcp_closing: u64,
    /// UDP.
    pub udp: u64,
    /// Everything else.
    pub other: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        const S: u64 = 1_000_000_000;
        Timeouts {
            tcp_established: 3600 * S,
            tcp_opening: 30 * S,
            tcp_closing: 10 * S,
            udp: 30 * S,
            other: 30 * S,
        }
    }
}

impl Timeouts {
    fn of(&self, s: &Session) -> u64 {
        if s.ttl_s != 0 {
            return u64::from(s.ttl_s) * 1_000_000_000;
        }
        match s.orig.proto {
            6 if s.closing() => self.tcp_closing,
            6 if s.state & SEEN_REPLY != 0 => self.tcp_established,
            6 => self.tcp_opening,
            17 => self.udp,
            _ => self.other,
        }
    }
}

/// What a table counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionStats {
    /// Live sessions.
    pub live: u64,
    /// Sessions created (copies from other cores included).
    pub created: u64,
    /// Sessions that timed out.
    pub expired: u64,
    /// Sessions removed by the control plane (a backend gone).
    pub removed: u64,
    /// New sessions refused for want of room.
    pub table_full: u64,
}

/// Index entries hold `hash << 32 | slot + 1`; 0 is empty.
const EMPTY: u64 = 0;

/// Most slots [`Sessions::insert`] scans for expired sessions when the table is full.
const RECLAIM_SCAN: usize = 64;

/// A session table of fixed capacity; see the module documentation.
pub struct Sessions {
    slots: Box<[Session]>,
    used: Box<[bool]>,
    free: Vec<u32>,
    index: Box<[u64]>,
    mask: usize,
    timeouts: Timeouts,
    cursor: usize,
    stats: SessionStats,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions")
            .field("capacity", &self.slots.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// The most sessions one table holds.
pub const MAX_CAPACITY: usize = 1 << 22;

impl Sessions {
    /// A table of `capacity` sessions (clamped to 16..=[`MAX_CAPACITY`]).
    pub fn new(capacity: usize, timeouts: Timeouts) -> Sessions {
        let capacity = capacity.clamp(16, MAX_CAPACITY);
        let index_len = (capacity * 4).next_power_of_two();
        Sessions {
            slots: vec![Session::default(); capacity].into_boxed_slice(),
            used: vec![false; capacity].into_boxed_slice(),
            free: (0..capacity as u32).rev().collect(),
            index: vec![EMPTY; index_len].into_boxed_slice(),
            mask: index_len - 1,
            timeouts,
            cursor: 0,
            stats: SessionStats::default(),
        }
    }

    /// How many sessions it holds at most.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Live sessions.
    #[inline]
    pub fn live(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// The hash [`lookup_hashed`](Self::lookup_hashed) takes.
    #[inline]
    pub fn hash(&self, zone: u16, t: &Tuple) -> u32 {
        Key::of(zone, t).hash() as u32
    }

    /// Its counters.
    pub fn stats(&self) -> SessionStats {
        SessionStats {
            live: (self.slots.len() - self.free.len()) as u64,
            ..self.stats
        }
    }

    /// Its timeouts.
    pub fn timeouts(&self) -> Timeouts {
        self.timeouts
    }

    /// Sets the timeouts (for the sessions it holds too).
    pub fn set_timeouts(&mut self, t: Timeouts) {
        self.timeouts = t;
    }

    /// Session `slot`.
    pub fn get(&self, slot: u32) -> Option<&Session> {
        let i = slot as usize;
        self.used.get(i).filter(|u| **u).and(self.slots.get(i))
    }

    fn expired(&self, s: &Session, now: u64) -> bool {
        now.saturating_sub(s.last) > self.timeouts.of(s)
    }

    /// Reads the memory a [`lookup`](Self::lookup) of `t` will read first (its home
    /// index entry and the session it names), without deciding anything: done for a
    /// whole burst before the lookups, the cache misses of many frames overlap instead
    /// of following one another.
    /// Returns the hash to give [`lookup_hashed`](Self::lookup_hashed), and a value
    /// read from the table (to be kept from being optimised away).
    #[inline]
    pub fn warm(&self, zone: u16, t: &Tuple) -> (u32, u64) {
        let h = Key::of(zone, t).hash() as u32;
        let e = self.index[h as usize & self.mask];
        let slot = (e as u32).wrapping_sub(1) as usize;
        (h, self.slots.get(slot).map_or(0, |s| s.last) ^ e)
    }

    /// The live session `t` belongs to in `zone`, and the packet's direction in it. An
    /// expired session found on the way is removed.
    #[inline]
    pub fn lookup(&mut self, zone: u16, t: &Tuple, now: u64) -> Option<(u32, Dir)> {
        let h = Key::of(zone, t).hash() as u32;
        self.lookup_hashed(zone, t, h, now)
    }

    /// [`lookup`](Self::lookup) with the hash [`warm`](Self::warm) gave.
    #[inline]
    pub fn lookup_hashed(&mut self, zone: u16, t: &Tuple, h: u32, now: u64) -> Option<(u32, Dir)> {
        let mut i = h as usize & self.mask;
        loop {
            let e = self.index[i];
            if e == EMPTY {
                return None;
            }
            if (e >> 32) as u32 == h {
                let slot = (e as u32).wrapping_sub(1);
                let s = &self.slots[slot as usize];
                let dir = if s.zone != zone {
                    None
                } else if s.orig == *t {
                    Some(Dir::Orig)
                } else if s.reply == *t {
                    Some(Dir::Reply)
                } else {
                    None
                };
                if let Some(dir) = dir {
                    if self.expired(s, now) {
                        self.remove(slot);
                        self.stats.expired += 1;
                        return None;
                    }
                    return Some((slot, dir));
                }
            }
            i = (i + 1) & self.mask;
        }
    }

    /// Whether a packet going `dir` with TCP `flags` opens session `slot`'s
    /// conversation afresh: a SYN in the original direction after the session closed.
    /// Read-only: the caller replaces the session once the packet was checked.
    #[inline]
    pub fn reopens(&self, slot: u32, dir: Dir, flags: u8) -> bool {
        self.slots.get(slot as usize).is_some_and(|s| {
            s.orig.proto == 6
                && dir == Dir::Orig
                && flags & (tcp::SYN | tcp::ACK) == tcp::SYN
                && s.closing()
        })
    }

    /// Notes a packet of session `slot` going `dir` with TCP `flags` (0 for other
    /// protocols) at `now`. Returns false when the packet ends the session instead: a
    /// SYN opening the conversation again after it closed (the caller then treats the
    /// packet as new).
    #[inline]
    pub fn touch(&mut self, slot: u32, dir: Dir, flags: u8, now: u64) -> bool {
        let Some(s) = self.slots.get_mut(slot as usize) else {
            return false;
        };
        if s.orig.proto == 6 {
            if flags & (tcp::SYN | tcp::ACK) == tcp::SYN && dir == Dir::Orig && s.closing() {
                self.remove(slot);
                return false;
            }
            if flags & tcp::FIN != 0 {
                s.state |= if dir == Dir::Orig {
                    FIN_ORIG
                } else {
                    FIN_REPLY
                };
            }
            if flags & tcp::RST != 0 {
                s.state |= RST;
            }
        }
        if dir == Dir::Reply {
            s.state |= SEEN_REPLY;
        }
        s.last = now;
        true
    }

    /// The state bits of session `slot` (0 for a free slot): they change when a packet
    /// shows the session something new (its reply direction, a FIN, a RST).
    #[inline]
    pub fn state(&self, slot: u32) -> u8 {
        self.slots.get(slot as usize).map_or(0, |s| s.state)
    }

    /// Takes in another core's copy of a session: a session with its tuples here learns
    /// what the copy has seen (its state bits) and counts as used now; otherwise the copy
    /// is added. False when it could not be (the table full, or a tuple another
    /// session's).
    pub fn adopt(&mut self, s: Session, now: u64) -> bool {
        if let Some((slot, _)) = self.lookup(s.zone, &s.orig, now) {
            if let Some(mine) = self.slots.get_mut(slot as usize) {
                mine.state |= s.state;
                mine.last = mine.last.max(now);
            }
            return true;
        }
        let mut s = s;
        s.last = now;
        self.insert(s, now).is_some()
    }

    /// Adds `s`: its `orig` tuple, and its `reply` tuple when that is another key. Returns
    /// its slot, or `None` when the table is full (counted) or a live session already
    /// holds one of its tuples.
    pub fn insert(&mut self, s: Session, now: u64) -> Option<u32> {
        // Untranslated, both tuples are one key; translated, a live session whose
        // tuple is the reply's would answer for it.
        if self.lookup(s.zone, &s.orig, now).is_some()
            || (s.translates() && self.lookup(s.zone, &s.reply, now).is_some())
        {
            return None;
        }
        if self.free.is_empty() {
            self.expire(now, RECLAIM_SCAN);
        }
        let Some(slot) = self.free.pop() else {
            self.stats.table_full += 1;
            return None;
        };
        self.slots[slot as usize] = s;
        self.used[slot as usize] = true;
        let k1 = Key::of(s.zone, &s.orig);
        let k2 = Key::of(s.zone, &s.reply);
        self.put(k1, slot);
        if k2 != k1 {
            self.put(k2, slot);
        }
        self.stats.created += 1;
        Some(slot)
    }

    fn put(&mut self, key: Key, slot: u32) {
        let h = key.hash() as u32;
        let mut i = h as usize & self.mask;
        // The index has four entries per session and each session takes at most two:
        // there is always an empty one.
        while self.index[i] != EMPTY {
            i = (i + 1) & self.mask;
        }
        self.index[i] = u64::from(h) << 32 | u64::from(slot + 1);
    }

    fn unput(&mut self, key: Key, slot: u32) {
        let h = key.hash() as u32;
        let want = u64::from(h) << 32 | u64::from(slot + 1);
        let mut i = h as usize & self.mask;
        loop {
            match self.index[i] {
                EMPTY => return,
                e if e == want => break,
                _ => i = (i + 1) & self.mask,
            }
        }
        // Backward-shift deletion: move later entries of the probe run up into the hole
        // when their home is not between the hole and them.
        let mut hole = i;
        let mut j = i;
        loop {
            j = (j + 1) & self.mask;
            let e = self.index[j];
            if e == EMPTY {
                break;
            }
            let home = (e >> 32) as usize & self.mask;
            let dist_j = j.wrapping_sub(home) & self.mask;
            let dist_hole = j.wrapping_sub(hole) & self.mask;
            if dist_j >= dist_hole {
                self.index[hole] = e;
                hole = j;
            }
        }
        self.index[hole] = EMPTY;
    }

    /// Removes session `slot`.
    pub fn remove(&mut self, slot: u32) {
        let i = slot as usize;
        if !self.used.get(i).copied().unwrap_or(false) {
            return;
        }
        let s = self.slots[i];
        let k1 = Key::of(s.zone, &s.orig);
        let k2 = Key::of(s.zone, &s.reply);
        self.unput(k1, slot);
        if k2 != k1 {
            self.unput(k2, slot);
        }
        self.used[i] = false;
        self.free.push(slot);
    }

    /// Reclaims the expired sessions among the next `budget` slots; returns how many.
    pub fn expire(&mut self, now: u64, budget: usize) -> usize {
        let n = self.slots.len();
        let mut gone = 0;
        for _ in 0..budget.min(n) {
            let i = self.cursor;
            self.cursor = (self.cursor + 1) % n;
            if self.used[i] && self.expired(&self.slots[i], now) {
                self.remove(i as u32);
                gone += 1;
            }
        }
        self.stats.expired += gone as u64;
        gone
    }

    /// Removes every session `gone` says so of; returns how many (counted as removed).
    pub fn remove_where(&mut self, mut gone: impl FnMut(&Session) -> bool) -> usize {
        let mut n = 0;
        for i in 0..self.slots.len() {
            if self.used[i] && gone(&self.slots[i]) {
                self.remove(i as u32);
                n += 1;
            }
        }
        self.stats.removed += n as u64;
        n
    }

    /// Every live session (for tests and status).
    pub fn iter(&self) -> impl Iterator<Item = (u32, &Session)> + '_ {
        self.slots
            .iter()
            .enumerate()
            .filter(|(i, _)| self.used[*i])
            .map(|(i, s)| (i as u32, s))
    }
}

/// What the session stage reads from a frame.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flow {
    /// Its 5-tuple.
    pub tuple: Tuple,
    /// TCP flags (0 for other protocols).
    pub flags: u8,
    /// Offset of the L3 header in the frame.
    pub l3: u8,
    /// Offset of the L4 header (0: none in the head, or a later fragment).
    pub l4: u8,
}

/// The flow of an IPv4 or IPv6 packet at `l3` in `head`, or `None` when it is neither.
/// A later IPv4 fragment, an IPv6 packet with extension headers, or an L4 header that is
/// not in `head` give a flow without ports (`l4 == 0`).
#[inline]
pub fn flow_of(head: &[u8], l3: usize) -> Option<Flow> {
    let et = head.get(l3.checked_sub(2)?..l3)?;
    let p = head.get(l3..)?;
    let (proto, src, dst, l4) = match et {
        [0x08, 0x00] if p.len() >= 20 && p[0] >> 4 == 4 => {
            let ihl = usize::from(p[0] & 0xf) * 4;
            let frag_off = u16::from_be_bytes([p[6], p[7]]) & 0x1fff;
            let s = u32::from_be_bytes([p[12], p[13], p[14], p[15]]);
            let d = u32::from_be_bytes([p[16], p[17], p[18], p[19]]);
            let l4 = if ihl >= 20 && frag_off == 0 {
                l3 + ihl
            } else {
                0
            };
            (p[9], v4(s), v4(d), l4)
        }
        [0x86, 0xdd] if p.len() >= 40 && p[0] >> 4 == 6 => {
            let mut s = [0u8; 16];
            let mut d = [0u8; 16];
            s.copy_from_slice(&p[8..24]);
            d.copy_from_slice(&p[24..40]);
            (
                p[6],
                u128::from_be_bytes(s),
                u128::from_be_bytes(d),
                l3 + 40,
            )
        }
        _ => return None,
    };
    let mut f = Flow {
        tuple: Tuple {
            proto,
            src,
            dst,
            sport: 0,
            dport: 0,
        },
        flags: 0,
        l3: l3 as u8,
        l4: 0,
    };
    if l4 == 0 || l4 > usize::from(u8::MAX) {
        return Some(f);
    }
    let q = &head[l4.min(head.len())..];
    let be = |at: usize| q.get(at..at + 2).map(|b| u16::from_be_bytes([b[0], b[1]]));
    match proto {
        6 | 17 => {
            let (Some(sp), Some(dp)) = (be(0), be(2)) else {
                return Some(f);
            };
            f.tuple.sport = sp;
            f.tuple.dport = dp;
            if proto == 6 {
                f.flags = q.get(13).copied().unwrap_or(0);
            }
        }
        1 | 58 => {
            let ty = q.first().copied().unwrap_or(0xff);
            if ECHO.contains(&(proto, ty)) {
                let id = be(4).unwrap_or(0);
                f.tuple.sport = id;
                f.tuple.dport = id;
            }
        }
        _ => {}
    }
    f.l4 = l4 as u8;
    Some(f)
}

/// Rewrites the IPv4 packet of `f` in `head` to carry `to`'s addresses and ports,
/// updating the IPv4 and TCP/UDP checksums incrementally (RFC 1624: the one's-complement
/// difference of the changed words is summed once and added to each checksum). False
/// when it cannot: not IPv4, or the L4 header (with its checksum) is not in `head`.
#[inline]
pub fn rewrite4(head: &mut [u8], f: &Flow, to: &Tuple) -> bool {
    let (Some(s0), Some(d0), Some(s1), Some(d1)) = (
        as_v4(f.tuple.src),
        as_v4(f.tuple.dst),
        as_v4(to.src),
        as_v4(to.dst),
    ) else {
        return false;
    };
    let l3 = usize::from(f.l3);
    let l4 = usize::from(f.l4);
    let proto = f.tuple.proto;
    let ports = matches!(proto, 6 | 17) && (f.tuple.sport, f.tuple.dport) != (to.sport, to.dport);
    let csum_at = match proto {
        6 => Some(l4 + 16),
        17 => Some(l4 + 6),
        _ => None,
    };
    if l4 == 0 || head.len() < l3 + 20 || csum_at.is_some_and(|c| head.len() < c + 2) {
        return false;
    }
    // Σ (~old + new) over the changed 16-bit words, in 64 bits (folded once below).
    let words = |a: u32| u64::from(a >> 16) + u64::from(a & 0xffff);
    let not_words = |a: u32| words(!a);
    let addr_delta = not_words(s0) + not_words(d0) + words(s1) + words(d1);
    let port_delta = if ports {
        u64::from(!f.tuple.sport)
            + u64::from(!f.tuple.dport)
            + u64::from(to.sport)
            + u64::from(to.dport)
    } else {
        0
    };
    let apply = |sum: u16, delta: u64| -> u16 { !fold64(u64::from(!sum) + delta) };
    let be = |h: &[u8], at: usize| u16::from_be_bytes([h[at], h[at + 1]]);
    let hc = apply(be(head, l3 + 10), addr_delta);
    head[l3 + 10..l3 + 12].copy_from_slice(&hc.to_be_bytes());
    head[l3 + 12..l3 + 16].copy_from_slice(&s1.to_be_bytes());
    head[l3 + 16..l3 + 20].copy_from_slice(&d1.to_be_bytes());
    if ports {
        head[l4..l4 + 2].copy_from_slice(&to.sport.to_be_bytes());
        head[l4 + 2..l4 + 4].copy_from_slice(&to.dport.to_be_bytes());
    }
    // TCP and UDP checksums cover the pseudo-header's addresses and the ports. A UDP
    // checksum of 0 means none, and stays so; a computed 0 is sent as 0xffff.
    if let Some(c) = csum_at {
        let sum = be(head, c);
        if !(proto == 17 && sum == 0) {
            let mut sum = apply(sum, addr_delta + port_delta);
            if proto == 17 && sum == 0 {
                sum = 0xffff;
            }
            head[c..c + 2].copy_from_slice(&sum.to_be_bytes());
        }
    }
    true
}

/// Folds a 64-bit one's-complement sum to 16 bits.
#[inline(always)]
fn fold64(mut s: u64) -> u16 {
    s = (s & 0xffff_ffff) + (s >> 32);
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s as u16
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::checksum;

    const S: u64 = 1_000_000_000;

    fn t(src: u32, sport: u16, dst: u32, dport: u16) -> Tuple {
        Tuple {
            proto: 6,
            src: v4(src),
            dst: v4(dst),
            sport,
            dport,
        }
    }

    #[test]
    fn both_directions_meet_and_zones_are_apart() {
        let mut s = Sessions::new(64, Timeouts::default());
        let a = t(1, 1000, 2, 80);
        let slot = s.insert(Session::new(1, a, a.reversed(), 0), 0).unwrap();
        assert_eq!(s.lookup(1, &a, 1), Some((slot, Dir::Orig)));
        assert_eq!(s.lookup(1, &a.reversed(), 1), Some((slot, Dir::Reply)));
        assert_eq!(s.lookup(2, &a, 1), None, "another zone");
        assert_eq!(s.lookup(1, &t(1, 1001, 2, 80), 1), None);
        // A second insert of the same conversation is refused (it exists).
        assert_eq!(s.insert(Session::new(1, a.reversed(), a, 0), 0), None);
        assert_eq!(s.stats().live, 1);
    }

    #[test]
    fn a_translated_session_is_found_by_its_reply_tuple() {
        let mut s = Sessions::new(64, Timeouts::default());
        let client = t(10, 40000, 100, 80); // to the VIP
        let reply = t(20, 8080, 10, 40000); // the backend answers
        let slot = s.insert(Session::new(1, client, reply, 0), 0).unwrap();
        assert_eq!(s.lookup(1, &reply, 1), Some((slot, Dir::Reply)));
        let sess = *s.get(slot).unwrap();
        assert!(sess.translates());
        assert_eq!(sess.rewrite_to(Dir::Orig), t(10, 40000, 20, 8080));
        assert_eq!(sess.rewrite_to(Dir::Reply), t(100, 80, 10, 40000));
        s.remove(slot);
        assert_eq!(s.lookup(1, &reply, 1), None);
        assert_eq!(s.lookup(1, &client, 1), None);
    }

    #[test]
    fn tcp_states_set_the_timeout() {
        let to = Timeouts::default();
        let mut s = Sessions::new(64, to);
        let a = t(1, 1000, 2, 80);
        let slot = s.insert(Session::new(1, a, a.reversed(), 0), 0).unwrap();
        assert_eq!(s.get(slot).unwrap().state_name(), "opening");
        assert_eq!(
            s.lookup(1, &a, 31 * S),
            None,
            "an opening session lives 30 s"
        );
        let slot = s.insert(Session::new(1, a, a.reversed(), 0), 0).unwrap();
        assert!(s.touch(slot, Dir::Reply, tcp::SYN | tcp::ACK, S));
        assert_eq!(s.get(slot).unwrap().state_name(), "established");
        assert!(s.lookup(1, &a, 3000 * S).is_some());
        assert!(s.touch(slot, Dir::Orig, tcp::FIN | tcp::ACK, 3000 * S));
        assert!(s.touch(slot, Dir::Reply, tcp::FIN | tcp::ACK, 3000 * S));
        assert_eq!(s.get(slot).unwrap().state_name(), "closing");
        // A new SYN on a closed conversation starts a new session.
        assert!(!s.touch(slot, Dir::Orig, tcp::SYN, 3001 * S));
        assert_eq!(s.lookup(1, &a, 3001 * S), None);
    }

    #[test]
    fn a_full_table_refuses_and_counts_and_reclaims_expired_sessions() {
        let mut s = Sessions::new(16, Timeouts::default());
        for i in 0..16 {
            let a = t(1, 1000 + i, 2, 80);
            assert!(s.insert(Session::new(1, a, a.reversed(), 0), 0).is_some());
        }
        let x = t(1, 5, 2, 80);
        assert_eq!(s.insert(Session::new(1, x, x.reversed(), 0), S), None);
        assert_eq!(s.stats().table_full, 1);
        // Every live session is still there.
        for i in 0..16 {
            assert!(s.lookup(1, &t(1, 1000 + i, 2, 80), S).is_some());
        }
        // Once they expire, a new session takes a reclaimed slot.
        assert!(s
            .insert(Session::new(1, x, x.reversed(), 0), 40 * S)
            .is_some());
        assert!(s.stats().expired >= 1);
    }

    #[test]
    fn the_index_stays_consistent_under_churn() {
        // Many inserts and removals against a model.
        let mut s = Sessions::new(1024, Timeouts::default());
        let mut model = std::collections::HashMap::new();
        let mut x: u64 = 7;
        for step in 0..20_000u32 {
            x = mix(x);
            let port = (x % 3000) as u16 + 1;
            let a = t(1, port, 2, 80);
            let nat = x & 1 == 0;
            let reply = if nat {
                t(3, 8080, 1, port)
            } else {
                a.reversed()
            };
            match s.lookup(1, &a, 0) {
                Some((slot, _)) => {
                    assert!(model.contains_key(&port), "step {step}");
                    s.remove(slot);
                    model.remove(&port);
                }
                None => {
                    assert!(!model.contains_key(&port), "step {step}");
                    if s.insert(Session::new(1, a, reply, 0), 0).is_some() {
                        model.insert(port, reply);
                    }
                }
            }
        }
        for (port, reply) in &model {
            assert!(s.lookup(1, &t(1, *port, 2, 80), 0).is_some());
            assert!(s.lookup(1, reply, 0).is_some());
        }
        assert_eq!(s.stats().live as usize, model.len());
    }

    fn frame(proto: u8, udp_csum: bool) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 20 + 20];
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        let ip = &mut f[14..34];
        ip[0] = 0x45;
        let total = if proto == 6 { 40u16 } else { 28 };
        ip[2..4].copy_from_slice(&total.to_be_bytes());
        ip[8] = 64;
        ip[9] = proto;
        ip[12..16].copy_from_slice(&[10, 0, 0, 1]);
        ip[16..20].copy_from_slice(&[10, 96, 0, 10]);
        let c = checksum(&f[14..34]);
        f[24..26].copy_from_slice(&c.to_be_bytes());
        f[34..36].copy_from_slice(&40000u16.to_be_bytes());
        f[36..38].copy_from_slice(&80u16.to_be_bytes());
        if proto == 6 {
            f[46] = 0x50;
            f[47] = tcp::SYN;
        } else {
            f[38..40].copy_from_slice(&8u16.to_be_bytes());
            f.truncate(42);
        }
        if proto == 6 || udp_csum {
            l4_fix(&mut f);
        }
        f
    }

    /// The full TCP/UDP checksum of an IPv4 frame.
    fn l4_sum(f: &[u8]) -> u16 {
        let l4 = &f[34..];
        let mut ph = Vec::new();
        ph.extend_from_slice(&f[26..34]);
        ph.extend_from_slice(&[0, f[23]]);
        ph.extend_from_slice(&(l4.len() as u16).to_be_bytes());
        ph.extend_from_slice(l4);
        checksum(&ph)
    }

    fn l4_fix(f: &mut [u8]) {
        let at = if f[23] == 6 { 50 } else { 40 };
        f[at..at + 2].copy_from_slice(&[0, 0]);
        let c = l4_sum(f);
        f[at..at + 2].copy_from_slice(&c.to_be_bytes());
    }

    #[test]
    fn rewrites_keep_every_checksum_valid() {
        for (proto, udp_csum) in [(6, true), (17, true), (17, false)] {
            let mut f = frame(proto, udp_csum);
            let flow = flow_of(&f, 14).unwrap();
            assert_eq!(flow.tuple.sport, 40000);
            let to = Tuple {
                proto,
                src: v4(0x0a00_0001),
                dst: v4(0x0a01_0005),
                sport: 40000,
                dport: 8080,
            };
            assert!(rewrite4(&mut f, &flow, &to));
            assert_eq!(checksum(&f[14..34]), 0, "IPv4 header checksum");
            assert_eq!(flow_of(&f, 14).unwrap().tuple, to);
            let at = if proto == 6 { 50 } else { 40 };
            if proto == 17 && !udp_csum {
                assert_eq!(&f[at..at + 2], &[0, 0], "no UDP checksum stays none");
            } else {
                assert_eq!(l4_sum(&f), 0, "L4 checksum of proto {proto}");
            }
            // etherparse agrees.
            let p = etherparse::SlicedPacket::from_ethernet(&f).unwrap();
            assert!(p.net.is_some());
        }
        // A head too short for the checksum is refused, and nothing is written.
        let mut f = frame(6, true);
        let flow = flow_of(&f, 14).unwrap();
        let short = &mut f[..40];
        assert!(!rewrite4(short, &flow, &flow.tuple.reversed()));
    }

    #[test]
    fn flows_of_odd_packets_never_panic() {
        let mut x = 1u64;
        for len in 0..80 {
            for _ in 0..50 {
                let mut f = vec![0u8; len];
                for b in f.iter_mut() {
                    x = mix(x);
                    *b = x as u8;
                }
                if len > 14 {
                    f[12] = 0x08;
                    f[13] = 0;
                    f[14] = 0x40 | (f[14] & 0xf);
                }
                if let Some(fl) = flow_of(&f, 14) {
                    let to = fl.tuple.reversed();
                    let _ = rewrite4(&mut f, &fl, &to);
                }
            }
        }
    }
}
