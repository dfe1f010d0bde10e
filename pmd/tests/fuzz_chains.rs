//! A property-based fuzz harness over descriptor-chain walking: random descriptor
//! tables, indirect tables and avail entries written into real shared memory. Whatever
//! the driver writes, the walk ends, never panics, and every buffer it returns lies
//! inside guest memory. `PROPTEST_CASES` bounds the run (CI sets it).

use std::sync::Arc;

use pmd::mem::{GuestMemory, GuestRegion, SharedRegion};
use pmd::vring::{Chain, DeviceRing, RingAddrs};
use proptest::prelude::*;

const MEM: u64 = 1 << 16;
const GPA: u64 = 0x4000_0000;
const UVA: u64 = 0x7f00_0000_0000;
const QSIZE: u16 = 16;
const DESC_OFF: u64 = 0;
const AVAIL_OFF: u64 = 0x1000;
const USED_OFF: u64 = 0x2000;
const DATA_OFF: u64 = 0x4000;

#[derive(Clone, Debug)]
struct RawDesc {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

fn addr() -> impl Strategy<Value = u64> {
    prop_oneof![
        (0..MEM - DATA_OFF).prop_map(|o| GPA + DATA_OFF + o),
        Just(GPA + MEM - 1),
        Just(GPA - 1),
        any::<u64>(),
        Just(GPA + DESC_OFF),
    ]
}

fn desc() -> impl Strategy<Value = RawDesc> {
    (
        addr(),
        prop_oneof![0u32..64, 0u32..4096, any::<u32>()],
        0u16..8,
        prop_oneof![0u16..QSIZE, any::<u16>()],
    )
        .prop_map(|(addr, len, flags, next)| RawDesc {
            addr,
            len,
            flags,
            next,
        })
}

fn put(base: *mut u8, off: u64, bytes: &[u8]) {
    assert!(off + bytes.len() as u64 <= MEM);
    // SAFETY: off + len <= MEM, the region's size.
    unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), base.add(off as usize), bytes.len()) };
}

fn enc(d: &RawDesc) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&d.addr.to_le_bytes());
    b[8..12].copy_from_slice(&d.len.to_le_bytes());
    b[12..14].copy_from_slice(&d.flags.to_le_bytes());
    b[14..].copy_from_slice(&d.next.to_le_bytes());
    b
}

proptest! {
    #[test]
    fn any_ring_content_is_walked_safely(
        table in proptest::collection::vec(desc(), QSIZE as usize),
        indirect in proptest::collection::vec(desc(), 0..40),
        heads in proptest::collection::vec(prop_oneof![0u16..QSIZE, any::<u16>()], 0..QSIZE as usize),
        writable in any::<bool>(),
        aheads in proptest::collection::vec(0u16..80, 1..64),
        ahead_writable in any::<bool>(),
    ) {
        let region = SharedRegion::new("fuzz", MEM, false).expect("memfd");
        let base = region.as_ptr();
        for (i, d) in table.iter().enumerate() {
            put(base, DESC_OFF + 16 * i as u64, &enc(d));
        }
        // An indirect table at DATA_OFF that descriptors may point at.
        for (i, d) in indirect.iter().enumerate() {
            put(base, DATA_OFF + 16 * i as u64, &enc(d));
        }
        for (i, h) in heads.iter().enumerate() {
            put(base, AVAIL_OFF + 4 + 2 * i as u64, &h.to_le_bytes());
        }
        put(base, AVAIL_OFF + 2, &(heads.len() as u16).to_le_bytes());
        let g = GuestRegion::map(region.file(), GPA, MEM, UVA, 0).expect("map");
        let mem = Arc::new(GuestMemory::new(vec![g]).expect("table"));
        let addrs = RingAddrs { desc: UVA + DESC_OFF, avail: UVA + AVAIL_OFF, used: UVA + USED_OFF };
        let mut ring = DeviceRing::new(mem.clone(), u32::from(QSIZE), addrs, 0, 0, true).expect("ring");
        let host = mem.gpa_to_host(GPA, MEM).expect("whole region") as usize;
        let mut chain = Chain::default();
        let mut popped = 0;
        // The fast path's hints read the same hostile entries first: they must neither
        // fault nor change what the walk then finds.
        ring.prefetch_heads(QSIZE * 2);
        ring.prefetch_used(QSIZE * 2);
        // A second ring over the same memory walks every chain plainly; the first walks
        // chains ahead (sometimes for the wrong direction) before it takes them. Both
        // must take the same chains with the same verdicts.
        let mut plain = DeviceRing::new(mem.clone(), u32::from(QSIZE), addrs, 0, 0, true).expect("ring");
        let mut plain_chain = Chain::default();
        let mut k = 0usize;
        loop {
            let n = aheads[k % aheads.len()];
            k += 1;
            ring.walk_ahead(n, if k.is_multiple_of(5) { ahead_writable } else { writable }, 2);
            if k.is_multiple_of(7) && popped > 0 {
                // A frame that did not fit gives its chain back.
                ring.unpop(1);
                plain.unpop(1);
                popped -= 1;
            }
            let Some(r) = ring.pop(writable, &mut chain) else {
                prop_assert!(plain.pop(writable, &mut plain_chain).is_none());
                break;
            };
            let p = plain.pop(writable, &mut plain_chain).expect("plain ring has the chain too");
            prop_assert_eq!(r, p);
            if r.is_ok() {
                prop_assert_eq!(chain.segs(), plain_chain.segs());
            }
            popped += 1;
            match r {
                Ok(head) => {
                    prop_assert!(head < QSIZE);
                    let mut total = 0u64;
                    for &(p, l) in chain.segs() {
                        let p = p as usize;
                        prop_assert!(p >= host && p + l as usize <= host + MEM as usize, "buffer outside memory");
                        total += u64::from(l);
                    }
                    prop_assert_eq!(total, chain.total());
                    ring.push_used(head, 0);
                }
                Err((head, _)) => {
                    if head < QSIZE {
                        ring.push_used(head, 0);
                    }
                }
            }
            prop_assert!(popped <= heads.len());
        }
        prop_assert_eq!(popped, heads.len());
        ring.publish();
    }
}
