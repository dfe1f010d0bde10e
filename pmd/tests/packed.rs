//! The device side of packed virtqueues against a driver written here into real shared
//! memory: chains of one and several descriptors, indirect tables, wrap-around, used
//! descriptors as the driver reads them, in-order batching, event suppression, restart
//! positions — and a property-based fuzz of hostile rings.

use std::sync::Arc;

use pmd::mem::{GuestMemory, GuestRegion, SharedRegion};
use pmd::vring::{Chain, ChainError, PackedRing, RingAddrs};
use proptest::prelude::*;

const MEM: u64 = 1 << 16;
const GPA: u64 = 0x4000_0000;
const UVA: u64 = 0x7f00_0000_0000;
const DESC_OFF: u64 = 0;
const DRIVER_EVENT_OFF: u64 = 0x1000;
const DEVICE_EVENT_OFF: u64 = 0x1010;
const TABLE_OFF: u64 = 0x2000;
const DATA_OFF: u64 = 0x4000;

const NEXT: u16 = 1;
const WRITE: u16 = 2;
const INDIRECT: u16 = 4;
const AVAIL: u16 = 1 << 7;
const USED: u16 = 1 << 15;

/// Shared memory with a packed ring in it, and the driver's side of that ring.
struct Driver {
    region: SharedRegion,
    mem: Arc<GuestMemory>,
    size: u16,
    next: u16,
    wrap: bool,
    used_next: u16,
    used_wrap: bool,
}

impl Driver {
    fn new(size: u16) -> Driver {
        let region = SharedRegion::new("packed", MEM, false).expect("memfd");
        let g = GuestRegion::map(region.file(), GPA, MEM, UVA, 0).expect("map");
        let mem = Arc::new(GuestMemory::new(vec![g]).expect("table"));
        Driver {
            region,
            mem,
            size,
            next: 0,
            wrap: true,
            used_next: 0,
            used_wrap: true,
        }
    }

    fn addrs() -> RingAddrs {
        RingAddrs {
            desc: UVA + DESC_OFF,
            avail: UVA + DRIVER_EVENT_OFF,
            used: UVA + DEVICE_EVENT_OFF,
        }
    }

    fn ring(&self, event_idx: bool) -> PackedRing {
        // A fresh ring starts at index 0 with both wrap counters set (bit 15).
        PackedRing::new(
            self.mem.clone(),
            u32::from(self.size),
            Self::addrs(),
            0x8000,
            0x8000,
            event_idx,
        )
        .expect("ring")
    }

    fn put(&self, off: u64, bytes: &[u8]) {
        assert!(off + bytes.len() as u64 <= MEM);
        // SAFETY: off + len <= MEM, the region's size.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                self.region.as_ptr().add(off as usize),
                bytes.len(),
            )
        };
    }

    fn get(&self, off: u64, n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        // SAFETY: as in `put`.
        unsafe {
            std::ptr::copy_nonoverlapping(self.region.as_ptr().add(off as usize), v.as_mut_ptr(), n)
        };
        v
    }

    fn write_desc(&self, off: u64, addr: u64, len: u32, id: u16, flags: u16) {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&addr.to_le_bytes());
        b[8..12].copy_from_slice(&len.to_le_bytes());
        b[12..14].copy_from_slice(&id.to_le_bytes());
        b[14..].copy_from_slice(&flags.to_le_bytes());
        self.put(off, &b);
    }

    fn avail_bits(&self, wrap: bool) -> u16 {
        if wrap {
            AVAIL
        } else {
            USED
        }
    }

    /// Posts a chain of buffers `(gpa, len)` with buffer id `id`; the head's flags are
    /// written last, as a driver must.
    fn post(&mut self, bufs: &[(u64, u32)], id: u16, extra: u16) {
        let head = self.next;
        let mut head_flags = 0;
        for (k, &(addr, len)) in bufs.iter().enumerate() {
            let mut flags = extra | self.avail_bits(self.wrap);
            if k + 1 < bufs.len() {
                flags |= NEXT;
            }
            if k == 0 {
                head_flags = flags;
                self.write_desc(DESC_OFF + 16 * u64::from(self.next), addr, len, id, 0);
            } else {
                self.write_desc(DESC_OFF + 16 * u64::from(self.next), addr, len, id, flags);
            }
            self.next += 1;
            if self.next == self.size {
                self.next = 0;
                self.wrap = !self.wrap;
            }
        }
        self.write_desc(
            DESC_OFF + 16 * u64::from(head),
            bufs[0].0,
            bufs[0].1,
            id,
            head_flags,
        );
    }

    /// Posts an indirect table of `bufs` in one ring slot.
    fn post_indirect(&mut self, bufs: &[(u64, u32)], id: u16, extra: u16) {
        for (k, &(addr, len)) in bufs.iter().enumerate() {
            self.write_desc(TABLE_OFF + 16 * k as u64, addr, len, 0, extra);
        }
        self.post(&[(GPA + TABLE_OFF, 16 * bufs.len() as u32)], id, INDIRECT);
    }

    /// The next used descriptor, if the device has returned one: (id, len), and the
    /// driver moves past `slots` ring slots (the chain's length).
    fn take_used(&mut self, slots: u16) -> Option<(u16, u32)> {
        let b = self.get(DESC_OFF + 16 * u64::from(self.used_next), 16);
        let flags = u16::from_le_bytes([b[14], b[15]]);
        if (flags & AVAIL != 0) != self.used_wrap || (flags & USED != 0) != self.used_wrap {
            return None;
        }
        let len = u32::from_le_bytes([b[8], b[9], b[10], b[11]]);
        let id = u16::from_le_bytes([b[12], b[13]]);
        self.used_next += slots;
        if self.used_next >= self.size {
            self.used_next -= self.size;
            self.used_wrap = !self.used_wrap;
        }
        Some((id, len))
    }

    fn set_driver_event(&self, off_wrap: u16, flags: u16) {
        let mut b = [0u8; 4];
        b[..2].copy_from_slice(&off_wrap.to_le_bytes());
        b[2..].copy_from_slice(&flags.to_le_bytes());
        self.put(DRIVER_EVENT_OFF, &b);
    }
}

fn host(d: &Driver, gpa: u64) -> usize {
    d.mem.gpa_to_host(gpa, 1).expect("in memory") as usize
}

#[test]
fn chains_are_walked_and_returned_across_wrap_arounds() {
    let mut d = Driver::new(8);
    let mut ring = d.ring(false);
    let mut chain = Chain::default();
    // The device asked not to be kicked: we poll.
    assert_eq!(d.get(DEVICE_EVENT_OFF + 2, 2), 1u16.to_le_bytes());
    assert!(ring.pop(true, &mut chain).is_none());
    // Five rounds of a three-slot chain, a one-slot chain and an indirect one: the ring
    // of 8 wraps several times, in the middle of chains too.
    for round in 0..5u16 {
        let base = GPA + DATA_OFF + 0x1000 * u64::from(round % 4);
        d.post(
            &[(base, 12), (base + 0x100, 100), (base + 0x200, 200)],
            1,
            WRITE,
        );
        d.post(&[(base + 0x300, 1500)], 2, WRITE);
        d.post_indirect(&[(base + 0x400, 12), (base + 0x500, 60)], 3, WRITE);
        let mut got = Vec::new();
        while let Some(r) = ring.pop(true, &mut chain) {
            let id = r.expect("good chain");
            let segs: Vec<(usize, u32)> =
                chain.segs().iter().map(|&(p, l)| (p as usize, l)).collect();
            got.push((id, segs, chain.total()));
            ring.push_used(id, chain.total() as u32);
        }
        assert_eq!(got.len(), 3, "round {round}");
        assert_eq!(got[0].0, 1);
        assert_eq!(
            got[0].1,
            vec![
                (host(&d, base), 12),
                (host(&d, base + 0x100), 100),
                (host(&d, base + 0x200), 200)
            ]
        );
        assert_eq!(got[1], (2, vec![(host(&d, base + 0x300), 1500)], 1500));
        assert_eq!(got[2].0, 3);
        assert_eq!(got[2].2, 72);
        // Nothing is visible to the driver before the publish.
        assert_eq!(d.take_used(3), None);
        ring.publish();
        assert_eq!(d.take_used(3), Some((1, 312)));
        assert_eq!(d.take_used(1), Some((2, 1500)));
        assert_eq!(d.take_used(1), Some((3, 72)));
        assert_eq!(d.take_used(1), None);
    }
    // 25 slots went by: index 1 of the fourth lap (wrap counter flipped three times).
    assert_eq!(ring.last_avail(), 1);
    assert_eq!(ring.used_idx(), 1);
}

#[test]
fn a_restarted_ring_resumes_where_the_old_one_stopped() {
    let mut d = Driver::new(4);
    let mut ring = d.ring(false);
    let mut chain = Chain::default();
    for id in 0..6u16 {
        d.post(&[(GPA + DATA_OFF, 64)], id % 4, 0);
        assert_eq!(ring.pop(false, &mut chain), Some(Ok(id % 4)));
        ring.push_used(id % 4, 0);
        ring.publish();
        assert_eq!(d.take_used(1), Some((id % 4, 0)));
    }
    // Six slots of a ring of four: index 2, wrap counter 0.
    assert_eq!(ring.last_avail(), 2);
    let mut again = PackedRing::new(
        d.mem.clone(),
        4,
        Driver::addrs(),
        ring.last_avail(),
        ring.used_idx(),
        false,
    )
    .expect("ring");
    d.post(&[(GPA + DATA_OFF, 64)], 3, 0);
    assert_eq!(again.pop(false, &mut chain), Some(Ok(3)));
    again.push_used(3, 0);
    again.publish();
    assert_eq!(d.take_used(1), Some((3, 0)));
}

#[test]
fn given_back_and_withdrawn_chains_are_taken_again() {
    let mut d = Driver::new(8);
    let mut ring = d.ring(false);
    let mut chain = Chain::default();
    d.post(
        &[(GPA + DATA_OFF, 100), (GPA + DATA_OFF + 0x100, 100)],
        5,
        WRITE,
    );
    d.post(&[(GPA + DATA_OFF + 0x200, 100)], 6, WRITE);
    assert_eq!(ring.pop(true, &mut chain), Some(Ok(5)));
    ring.push_used(5, 150);
    assert_eq!(ring.pop(true, &mut chain), Some(Ok(6)));
    // A frame that did not fit: both chains go back, unused.
    ring.unpop(2);
    ring.unpush_used(1);
    ring.walk_ahead(8, true, 2);
    assert_eq!(ring.pop(true, &mut chain), Some(Ok(5)));
    assert_eq!(chain.total(), 200);
    assert_eq!(ring.pop(true, &mut chain), Some(Ok(6)));
    ring.push_used(5, 200);
    ring.push_used(6, 80);
    ring.publish();
    assert_eq!(d.take_used(2), Some((5, 200)));
    assert_eq!(d.take_used(1), Some((6, 80)));
}

#[test]
fn in_order_returns_a_read_burst_with_one_used_descriptor() {
    let mut d = Driver::new(16);
    let mut ring = d.ring(false);
    ring.set_in_order(true);
    let mut chain = Chain::default();
    for id in 0..5u16 {
        d.post(&[(GPA + DATA_OFF, 60), (GPA + DATA_OFF + 0x100, 60)], id, 0);
    }
    let mut heads = Vec::new();
    while let Some(r) = ring.pop(false, &mut chain) {
        heads.push(r.expect("good"));
    }
    ring.push_used_read(&heads);
    ring.publish();
    // One used descriptor, with the last buffer's id, at the first chain's slot; the
    // used position moved past all ten slots.
    assert_eq!(d.take_used(10), Some((4, 0)));
    assert_eq!(ring.used_idx(), 0x8000 | 10);
}

#[test]
fn the_driver_is_interrupted_only_as_it_asked() {
    let mut d = Driver::new(8);
    let mut chain = Chain::default();
    let mut roundtrip = |d: &mut Driver, ring: &mut PackedRing, id: u16| {
        d.post(&[(GPA + DATA_OFF, 64)], id, 0);
        assert_eq!(ring.pop(false, &mut chain), Some(Ok(id)));
        ring.push_used(id, 0);
        let signal = ring.publish();
        assert!(d.take_used(1).is_some());
        signal
    };
    let mut ring = d.ring(false);
    d.set_driver_event(0, 1); // disable
    assert!(!roundtrip(&mut d, &mut ring, 0));
    d.set_driver_event(0, 0); // enable
    assert!(roundtrip(&mut d, &mut ring, 1));
    // With EVENT_IDX: interrupt once the used position passes slot 4 of this lap.
    let mut ring = PackedRing::new(
        d.mem.clone(),
        8,
        Driver::addrs(),
        ring.last_avail(),
        ring.used_idx(),
        true,
    )
    .expect("ring");
    d.set_driver_event(0x8000 | 4, 2);
    let signals: Vec<bool> = (2..7).map(|id| roundtrip(&mut d, &mut ring, id)).collect();
    // The first publish after a restart always signals (nothing is known of the
    // driver); then only the one that uses slot 4.
    assert_eq!(signals, [true, false, true, false, false]);
}

#[test]
fn a_ring_without_end_or_with_bad_ids_stops_instead_of_looping() {
    let d = Driver::new(4);
    // Every slot available and chained to the next: no end within the ring.
    for k in 0..4u64 {
        d.write_desc(DESC_OFF + 16 * k, GPA + DATA_OFF, 10, 0, AVAIL | NEXT);
    }
    let mut ring = d.ring(false);
    let mut chain = Chain::default();
    assert!(matches!(
        ring.pop(false, &mut chain),
        Some(Err((_, ChainError::Loop)))
    ));
    assert!(ring.pop(false, &mut chain).is_none());
    // An id the device could never return.
    let d = Driver::new(4);
    d.write_desc(DESC_OFF, GPA + DATA_OFF, 10, 9, AVAIL);
    let mut ring = d.ring(false);
    assert!(matches!(
        ring.pop(false, &mut chain),
        Some(Err((_, ChainError::BadHead)))
    ));
    assert!(ring.pop(false, &mut chain).is_none());
}

#[test]
fn slots_made_available_again_before_they_were_returned_are_not_taken() {
    let mut d = Driver::new(4);
    let mut ring = d.ring(false);
    let mut chain = Chain::default();
    for id in 0..4u16 {
        d.post(&[(GPA + DATA_OFF, 64)], id, 0);
    }
    for id in 0..4u16 {
        assert_eq!(ring.pop(false, &mut chain), Some(Ok(id)));
    }
    // The driver marks all four slots available for the next lap although the device
    // has not returned them: nothing more is taken until the device publishes.
    for id in 0..4u16 {
        d.post(&[(GPA + DATA_OFF, 64)], id, 0);
    }
    assert_eq!(ring.pop(false, &mut chain), None);
    // The four it did take are returned, in order, as the driver reads them.
    for id in 0..4u16 {
        ring.push_used(id, 0);
    }
    ring.publish();
    for id in 0..4u16 {
        assert_eq!(d.take_used(1), Some((id, 0)));
    }
}

#[derive(Clone, Debug)]
struct RawDesc {
    addr: u64,
    len: u32,
    id: u16,
    flags: u16,
}

fn raw_desc(size: u16) -> impl Strategy<Value = RawDesc> {
    (
        prop_oneof![
            (0..MEM - DATA_OFF).prop_map(|o| GPA + DATA_OFF + o),
            Just(GPA + TABLE_OFF),
            Just(GPA + MEM - 1),
            any::<u64>(),
        ],
        prop_oneof![0u32..64, 0u32..4096, any::<u32>()],
        prop_oneof![0u16..size, any::<u16>()],
        prop_oneof![
            4 => (0u16..8).prop_map(|f| f | AVAIL),
            1 => any::<u16>(),
        ],
    )
        .prop_map(|(addr, len, id, flags)| RawDesc {
            addr,
            len,
            id,
            flags,
        })
}

proptest! {
    /// Whatever the driver writes, the walk ends, never panics, returns only buffers
    /// inside guest memory, and a ring that walks ahead takes the same chains as one
    /// that does not.
    #[test]
    fn any_packed_ring_is_walked_safely(
        size in prop_oneof![Just(8u16), Just(5u16), Just(16u16)],
        seed in proptest::collection::vec(raw_desc(16), 16),
        table in proptest::collection::vec(raw_desc(16), 0..40),
        writable in any::<bool>(),
        aheads in proptest::collection::vec(0u16..20, 1..16),
    ) {
        let d = Driver::new(size);
        for (k, r) in seed.iter().take(usize::from(size)).enumerate() {
            d.write_desc(DESC_OFF + 16 * k as u64, r.addr, r.len, r.id, r.flags);
        }
        for (k, r) in table.iter().enumerate() {
            d.write_desc(TABLE_OFF + 16 * k as u64, r.addr, r.len, r.id, r.flags);
        }
        let lo = host(&d, GPA);
        let mut ring = d.ring(false);
        let mut plain = d.ring(false);
        let (mut chain, mut plain_chain) = (Chain::default(), Chain::default());
        let mut taken = 0;
        for k in 0..4 * usize::from(size) {
            ring.walk_ahead(aheads[k % aheads.len()], writable, 2);
            let r = ring.pop(writable, &mut chain);
            let p = plain.pop(writable, &mut plain_chain);
            prop_assert_eq!(r, p);
            let Some(r) = r else { break };
            taken += 1;
            match r {
                Ok(id) => {
                    prop_assert!(id < size);
                    prop_assert_eq!(chain.segs(), plain_chain.segs());
                    let mut total = 0u64;
                    for &(p, l) in chain.segs() {
                        let p = p as usize;
                        prop_assert!(p >= lo && p + l as usize <= lo + MEM as usize, "buffer outside memory");
                        total += u64::from(l);
                    }
                    prop_assert_eq!(total, chain.total());
                    ring.push_used(id, 0);
                }
                Err((id, _)) if id < size => ring.push_used(id, 0),
                Err(_) => {}
            }
            ring.publish();
        }
        prop_assert!(taken <= 4 * usize::from(size));
    }
}

#[test]
fn overlong_chains_are_refused_and_skipped_whole() {
    let mut chain = Chain::default();
    // An indirect table of 99 empty buffers and one real one: more descriptors than a
    // chain may have, refused before its table is read.
    let mut d = Driver::new(8);
    let mut bufs = vec![(GPA + DATA_OFF, 0u32); 99];
    bufs.push((GPA + DATA_OFF, 100));
    d.post_indirect(&bufs, 3, WRITE);
    d.post(&[(GPA + DATA_OFF + 0x1000, 1500)], 4, WRITE);
    let mut ring = d.ring(false);
    assert!(matches!(
        ring.pop(true, &mut chain),
        Some(Err((3, ChainError::TooManySegs)))
    ));
    assert!(matches!(ring.pop(true, &mut chain), Some(Ok(4))));
    // A ring chain of 100 empty slots and one real one: refused, and all its slots
    // are skipped, so the next chain is found where it is.
    let mut d = Driver::new(128);
    let mut bufs = vec![(GPA + DATA_OFF, 0u32); 100];
    bufs.push((GPA + DATA_OFF, 100));
    d.post(&bufs, 5, WRITE);
    d.post(&[(GPA + DATA_OFF + 0x1000, 1500)], 6, WRITE);
    let mut ring = d.ring(false);
    assert!(matches!(
        ring.pop(true, &mut chain),
        Some(Err((5, ChainError::TooManySegs)))
    ));
    assert!(matches!(ring.pop(true, &mut chain), Some(Ok(6))));
}
