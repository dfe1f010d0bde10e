//! The device side of a packed virtqueue (virtio 1.1, 2.8), walked by hand.
//!
//! One ring of 16-byte descriptors `{addr, len, id, flags}` is shared both ways: the
//! driver makes a descriptor available by setting its AVAIL flag bit to its wrap counter
//! (and USED to the inverse); the device returns a buffer by writing a used descriptor
//! `{id, len}` at its own used position, with both bits set to *its* wrap counter. A
//! chain is consecutive descriptors linked by NEXT, its buffer id in the last; an
//! indirect descriptor stands for a whole table and takes one slot. Event suppression
//! lives in two small structures: the device's (we write "disable": we poll) and the
//! driver's, read after each publish to decide whether to interrupt it.
//!
//! Used descriptors become visible the moment their flags are written, so the ring keeps
//! what the port returns in a shadow list and writes it at [`PackedRing::publish`], once
//! per burst (as DPDK's vhost does): [`unpush_used`](PackedRing::unpush_used) can then
//! withdraw entries, exactly as on a split ring. Everything read is hostile: ids are
//! bounded by the queue size, a chain may not be longer than the ring, indirect tables
//! are bounded and may not nest, and a chain may not mix directions. A chain with bad
//! buffers is returned with length 0 and counted; a ring that cannot be walked at all
//! (a chain without end, an id beyond the queue) is stopped until the frontend resets it.

use std::sync::atomic::{fence, AtomicU16, Ordering};
use std::sync::Arc;

use super::{
    prefetch_buf, read_desc, Chain, ChainError, RingAddrs, RingSetupError, AHEAD, MAX_INDIRECT,
};
use super::{DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE, MAX_CHAIN_DESCS, MAX_SEGS};
use crate::mem::GuestMemory;
use crate::virtio;

/// Packed descriptor flag: available (driver's wrap counter).
const F_AVAIL: u16 = 1 << 7;
/// Packed descriptor flag: used (device's wrap counter).
const F_USED: u16 = 1 << 15;
/// Event suppression flags: interrupts/kicks wanted, not wanted, wanted at a position.
const EVENT_ENABLE: u16 = 0;
const EVENT_DISABLE: u16 = 1;
const EVENT_DESC: u16 = 2;

/// A ring position with its wrap counter, encoded as vhost-user's `VRING_BASE` for packed
/// rings does: bits 0..15 the index, bit 15 the wrap counter.
fn encode(idx: u16, wrap: bool) -> u16 {
    (idx & 0x7fff) | (u16::from(wrap) << 15)
}

/// A started packed ring: the device's view.
pub struct PackedRing {
    size: u16,
    desc: *mut u8,
    /// Driver event suppression (read by us).
    driver_event: *const u8,
    /// Device event suppression (written by us).
    device_event: *mut u8,
    next_avail: u16,
    avail_wrap: bool,
    next_used: u16,
    used_wrap: bool,
    /// Chains taken and not yet returned, in order: (id, descriptors in the ring).
    popped: Vec<(u16, u16)>,
    /// How many of `popped` have been returned into `shadow`.
    popped_used: usize,
    /// Returned and not yet published: (id, len, descriptors in the ring).
    shadow: Vec<(u16, u32, u16)>,
    /// One-descriptor chains walked ahead, for the next `ahead_n` positions: (id,
    /// host address, length), at `ahead[k]` for the k-th next chain.
    ahead: [(u16, *mut u8, u32); AHEAD],
    ahead_first: usize,
    ahead_n: u16,
    ahead_writable: bool,
    /// (used index, wrap) at the last interrupt decision.
    signalled: Option<(u16, bool)>,
    event_idx: bool,
    in_order: bool,
    broken: bool,
    mem: Arc<GuestMemory>,
}

// SAFETY: the pointers point into `mem`, which the ring keeps alive; the ring is used
// by one thread at a time (it lives in a `QueueCell`).
unsafe impl Send for PackedRing {}

impl PackedRing {
    /// Translates and checks the ring addresses against `mem`. For packed rings
    /// `addrs.avail` is the driver event area and `addrs.used` the device event area.
    /// `base` and `used` are positions encoded as `VRING_BASE` has them.
    pub fn new(
        mem: Arc<GuestMemory>,
        size: u32,
        addrs: RingAddrs,
        base: u16,
        used: u16,
        event_idx: bool,
    ) -> Result<PackedRing, RingSetupError> {
        if size == 0 || size > u32::from(virtio::MAX_QUEUE_SIZE) {
            return Err(RingSetupError::BadSize(size));
        }
        let size = size as u16;
        if !addrs.desc.is_multiple_of(16) {
            return Err(RingSetupError::Misaligned("descriptor"));
        }
        if !addrs.avail.is_multiple_of(4) {
            return Err(RingSetupError::Misaligned("driver event"));
        }
        if !addrs.used.is_multiple_of(4) {
            return Err(RingSetupError::Misaligned("device event"));
        }
        let desc = mem
            .uva_to_host(addrs.desc, u64::from(size) * virtio::DESC_SIZE)
            .ok_or(RingSetupError::Unmapped("descriptor"))?;
        let driver_event = mem
            .uva_to_host(addrs.avail, 4)
            .ok_or(RingSetupError::Unmapped("driver event"))?;
        let device_event = mem
            .uva_to_host(addrs.used, 4)
            .ok_or(RingSetupError::Unmapped("device event"))?;
        if !(desc as usize).is_multiple_of(16) {
            return Err(RingSetupError::Misaligned("descriptor (host mapping)"));
        }
        if !(driver_event as usize).is_multiple_of(4) || !(device_event as usize).is_multiple_of(4)
        {
            return Err(RingSetupError::Misaligned("event (host mapping)"));
        }
        let idx = |v: u16| (v & 0x7fff) % size;
        let r = PackedRing {
            size,
            desc,
            driver_event,
            device_event,
            next_avail: idx(base),
            avail_wrap: base & 0x8000 != 0,
            next_used: idx(used),
            used_wrap: used & 0x8000 != 0,
            popped: Vec::with_capacity(usize::from(size)),
            popped_used: 0,
            shadow: Vec::with_capacity(usize::from(size)),
            ahead: [(0, std::ptr::null_mut(), 0); AHEAD],
            ahead_first: 0,
            ahead_n: 0,
            ahead_writable: false,
            signalled: None,
            event_idx,
            in_order: false,
            broken: false,
            mem,
        };
        // We poll: tell the driver not to kick us.
        // SAFETY: the device event area was checked at set-up: 4 bytes, 4-byte aligned,
        // inside live memory.
        unsafe {
            (*r.device_event.add(2).cast::<AtomicU16>())
                .store(EVENT_DISABLE.to_le(), Ordering::Relaxed)
        };
        Ok(r)
    }

    /// Whether `VIRTIO_F_IN_ORDER` was negotiated: then a burst of chains the device
    /// only read is returned with one used descriptor, the id of its last chain, the
    /// used position moved past all of them (2.8.23).
    pub fn set_in_order(&mut self, on: bool) {
        self.in_order = on;
    }

    /// The queue size.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// Where the device resumes reading: index and avail wrap counter, encoded.
    pub fn last_avail(&self) -> u16 {
        encode(self.next_avail, self.avail_wrap)
    }

    /// Where the device writes the next used descriptor, encoded.
    pub fn used_idx(&self) -> u16 {
        encode(self.next_used, self.used_wrap)
    }

    fn flags_ref(&self, pos: u16) -> &AtomicU16 {
        // SAFETY: pos < size; each descriptor is 16 bytes, 16-byte aligned, with its
        // flags at offset 14 (2-byte aligned), inside the checked table.
        unsafe {
            &*self
                .desc
                .add(16 * usize::from(pos) + 14)
                .cast::<AtomicU16>()
        }
    }

    /// Whether the descriptor at `pos` is available in wrap round `wrap`.
    #[inline]
    fn is_avail(&self, pos: u16, wrap: bool) -> bool {
        let f = u16::from_le(self.flags_ref(pos).load(Ordering::Acquire));
        (f & F_AVAIL != 0) == wrap && (f & F_USED != 0) != wrap
    }

    #[inline]
    fn advance(&self, pos: u16, wrap: bool, n: u16) -> (u16, bool) {
        let p = u32::from(pos) + u32::from(n);
        if p >= u32::from(self.size) {
            ((p - u32::from(self.size)) as u16, !wrap)
        } else {
            (p as u16, wrap)
        }
    }

    #[inline]
    fn retreat(&self, pos: u16, wrap: bool, n: u16) -> (u16, bool) {
        if n > pos {
            (pos + self.size - n, !wrap)
        } else {
            (pos - n, wrap)
        }
    }

    /// 1 when the next chain is available, else 0 (a packed ring has no index that
    /// counts them; callers use this only to size prefetches and as "anything there").
    #[inline]
    pub fn pending(&mut self) -> u16 {
        u16::from(!self.broken && self.is_avail(self.next_avail, self.avail_wrap))
    }

    /// Asks the cache for the next `n` descriptor slots.
    #[inline]
    pub fn prefetch_heads(&self, n: u16) {
        self.prefetch_slots(self.next_avail, n, false);
    }

    /// Asks for the descriptor lines of the `n` slots from `from` (four a line), for
    /// writing when `write`.
    #[inline]
    fn prefetch_slots(&self, from: u16, n: u16, write: bool) {
        let n = n.min(self.size);
        let mut k = 0;
        while k < n {
            let pos = (u32::from(from) + u32::from(k)) % u32::from(self.size);
            let p = self.desc.wrapping_add(16 * pos as usize);
            if write {
                crate::hint::prefetch_write(p);
            } else {
                crate::hint::prefetch(p);
            }
            k += 4;
        }
    }

    /// Takes the next available chain into `chain`; see
    /// [`DeviceRing::pop`](super::DeviceRing::pop). The id returned is the buffer id.
    #[inline]
    pub fn pop(
        &mut self,
        writable: bool,
        chain: &mut Chain,
    ) -> Option<Result<u16, (u16, ChainError)>> {
        // A ring has no more slots than chains in flight: a driver that makes slots
        // available again before we returned them gets nothing more until the next
        // publish (and `popped` never outgrows what it was given at set-up).
        if self.broken
            || self.popped.len() >= usize::from(self.size)
            || !self.is_avail(self.next_avail, self.avail_wrap)
        {
            return None;
        }
        if self.ahead_n > 0 && self.ahead_writable == writable {
            let (id, p, len) = self.ahead[self.ahead_first];
            self.ahead_first = (self.ahead_first + 1) % AHEAD;
            self.ahead_n -= 1;
            chain.segs[0] = (p, len);
            chain.n = 1;
            chain.total = u64::from(len);
            chain.descs = 1;
            self.take(id, 1);
            return Some(Ok(id));
        }
        self.ahead_n = 0;
        chain.n = 0;
        chain.total = 0;
        chain.descs = 0;
        // Walk the descriptors of the chain in the ring; on a bad buffer go on to its
        // end all the same, so that the chain can be returned whole.
        let mut pos = self.next_avail;
        let mut wrap = self.avail_wrap;
        let mut err = None;
        let mut n: u16 = 0;
        loop {
            if n == self.size {
                // No descriptor without NEXT in a whole ring: nothing can be returned.
                self.broken = true;
                return Some(Err((u16::MAX, ChainError::Loop)));
            }
            let d = read_desc(self.desc, u32::from(pos));
            let (id, flags) = (d.flags, d.next);
            n += 1;
            chain.descs += 1;
            if u32::from(n) > 4 * MAX_CHAIN_DESCS {
                // Far past any chain a driver makes: walking on to its end (up to a
                // whole ring per chain, every poll) is the cost a hostile driver wants
                // us to pay. Stop serving the ring instead.
                self.broken = true;
                return Some(Err((u16::MAX, ChainError::TooManySegs)));
            }
            if u32::from(n) > MAX_CHAIN_DESCS && err.is_none() {
                // Keep walking to the chain's end (its slots must all be skipped), but
                // take no more buffers: the chain is refused.
                err = Some(ChainError::TooManySegs);
            }
            (pos, wrap) = self.advance(pos, wrap, 1);
            if err.is_none() {
                if let Err(e) = self.add_buffer(d.addr, d.len, flags, writable, chain) {
                    err = Some(e);
                }
            }
            if flags & DESC_F_NEXT == 0 || flags & DESC_F_INDIRECT != 0 {
                if id >= self.size {
                    // An id we could never return correctly: the ring is unusable.
                    self.broken = true;
                    return Some(Err((u16::MAX, ChainError::BadHead)));
                }
                if flags & DESC_F_INDIRECT != 0 && flags & DESC_F_NEXT != 0 && err.is_none() {
                    err = Some(ChainError::BadIndirect);
                }
                self.take(id, n);
                return Some(match err {
                    None => Ok(id),
                    Some(e) => Err((id, e)),
                });
            }
        }
    }

    /// Records a taken chain of `n` ring slots and moves past it.
    #[inline]
    fn take(&mut self, id: u16, n: u16) {
        self.popped.push((id, n));
        (self.next_avail, self.avail_wrap) = self.advance(self.next_avail, self.avail_wrap, n);
    }

    /// Adds one ring descriptor's buffer (or, for an indirect one, its table's) to the
    /// chain.
    #[inline]
    fn add_buffer(
        &self,
        addr: u64,
        len: u32,
        flags: u16,
        writable: bool,
        chain: &mut Chain,
    ) -> Result<(), ChainError> {
        if flags & DESC_F_INDIRECT == 0 {
            return add_seg(&self.mem, addr, len, flags, writable, chain);
        }
        if len == 0 || !len.is_multiple_of(16) || len / 16 > MAX_INDIRECT {
            return Err(ChainError::BadIndirect);
        }
        let table = self
            .mem
            .gpa_to_host(addr, u64::from(len))
            .ok_or(ChainError::BadAddress)?;
        // Every entry of an indirect table belongs to the chain, in order; a table longer
        // than a chain may be is refused before it is read.
        if len / 16 > MAX_CHAIN_DESCS {
            return Err(ChainError::TooManySegs);
        }
        for k in 0..len / 16 {
            chain.descs += 1;
            let d = read_desc(table, k);
            let flags = d.next;
            if flags & DESC_F_INDIRECT != 0 {
                return Err(ChainError::BadIndirect);
            }
            add_seg(&self.mem, d.addr, d.len, flags, writable, chain)?;
        }
        Ok(())
    }

    /// Gives back the last `n` chains taken by [`pop`](Self::pop) without using them.
    pub fn unpop(&mut self, n: u16) {
        for _ in 0..n {
            let Some((_, k)) = self.popped.pop() else {
                break;
            };
            (self.next_avail, self.avail_wrap) = self.retreat(self.next_avail, self.avail_wrap, k);
        }
        self.ahead_n = 0;
    }

    /// Returns the oldest taken chain as used, `len` bytes written; it becomes visible
    /// at [`publish`](Self::publish).
    #[inline]
    pub fn push_used(&mut self, id: u16, len: u32) {
        let n = self.popped.get(self.popped_used).map_or(1, |&(_, n)| n);
        self.popped_used += 1;
        self.shadow.push((id, len, n));
    }

    /// Withdraws the last `n` unpublished used entries.
    pub fn unpush_used(&mut self, n: u16) {
        let n = usize::from(n).min(self.shadow.len());
        self.shadow.truncate(self.shadow.len() - n);
        self.popped_used = self.popped_used.saturating_sub(n);
    }

    /// Returns chains the device only read, each with length 0; with
    /// `VIRTIO_F_IN_ORDER` as one used descriptor for all of them.
    #[inline]
    pub fn push_used_read(&mut self, heads: &[u16]) {
        let Some(&last) = heads.last() else {
            return;
        };
        if !self.in_order {
            for &h in heads {
                self.push_used(h, 0);
            }
            return;
        }
        let end = (self.popped_used + heads.len()).min(self.popped.len());
        let slots = self.popped[self.popped_used..end]
            .iter()
            .fold(0u32, |a, &(_, n)| a + u32::from(n));
        self.popped_used = end;
        // A burst never holds more chains than the ring has slots.
        let slots = slots.min(u32::from(self.size)) as u16;
        self.shadow.push((last, 0, slots));
    }

    /// Takes for writing the descriptor lines the next `n` used entries go to.
    #[inline]
    pub fn prefetch_used(&self, n: u16) {
        self.prefetch_slots(self.next_used, n, true);
    }

    /// As [`prefetch_used`](Self::prefetch_used).
    #[inline]
    pub fn prefetch_used_read(&self, n: u16) {
        self.prefetch_used(n);
    }

    /// Walks up to `n` of the next one-descriptor chains ahead of use; see
    /// [`DeviceRing::walk_ahead`](super::DeviceRing::walk_ahead).
    #[inline]
    pub fn walk_ahead(&mut self, n: u16, writable: bool, lines: usize) {
        if self.broken {
            return;
        }
        if self.ahead_writable != writable {
            self.ahead_n = 0;
            self.ahead_writable = writable;
        }
        let want = n.min(AHEAD as u16).min(self.size);
        let dir = if writable { DESC_F_WRITE } else { 0 };
        let (mut pos, mut wrap) = self.advance(
            self.next_avail,
            self.avail_wrap,
            self.ahead_n.min(self.size),
        );
        while self.ahead_n < want {
            if !self.is_avail(pos, wrap) {
                break;
            }
            let d = read_desc(self.desc, u32::from(pos));
            let (id, flags) = (d.flags, d.next);
            if flags & (DESC_F_NEXT | DESC_F_INDIRECT | DESC_F_WRITE) != dir
                || d.len == 0
                || id >= self.size
            {
                break;
            }
            let Some(p) = self.mem.gpa_to_host(d.addr, u64::from(d.len)) else {
                break;
            };
            prefetch_buf(p, d.len, lines, writable);
            let slot = (self.ahead_first + usize::from(self.ahead_n)) % AHEAD;
            self.ahead[slot] = (id, p, d.len);
            self.ahead_n += 1;
            (pos, wrap) = self.advance(pos, wrap, 1);
        }
    }

    /// Writes the used entries returned since the last publish into the ring (the first
    /// one's flags last, so the driver sees the burst at once) and says whether the
    /// driver asked to be interrupted for them.
    #[inline]
    pub fn publish(&mut self) -> bool {
        if self.shadow.is_empty() {
            return false;
        }
        let (first_pos, first_wrap) = (self.next_used, self.used_wrap);
        let mut first_flags = 0u16;
        let (mut pos, mut wrap) = (first_pos, first_wrap);
        for (k, &(id, len, n)) in self.shadow.iter().enumerate() {
            let flags =
                if wrap { F_AVAIL | F_USED } else { 0 } | if len > 0 { DESC_F_WRITE } else { 0 };
            let p = self.desc.wrapping_add(16 * usize::from(pos));
            // SAFETY: pos < size, inside the checked descriptor table; id at offset 12
            // and len at 8 are naturally aligned (the table is 16-byte aligned).
            unsafe {
                std::ptr::write_volatile(p.add(8).cast::<u32>(), len.to_le());
                std::ptr::write_volatile(p.add(12).cast::<u16>(), id.to_le());
            }
            if k == 0 {
                first_flags = flags;
            } else {
                self.flags_ref(pos).store(flags.to_le(), Ordering::Release);
            }
            (pos, wrap) = self.advance(pos, wrap, n);
        }
        self.flags_ref(first_pos)
            .store(first_flags.to_le(), Ordering::Release);
        (self.next_used, self.used_wrap) = (pos, wrap);
        self.shadow.clear();
        self.popped.drain(..self.popped_used.min(self.popped.len()));
        self.popped_used = 0;
        // The flag stores must be visible before we read the driver's event area, or we
        // could miss a driver that just asked for an interrupt (the virtio barrier).
        fence(Ordering::SeqCst);
        // SAFETY: the driver event area was checked at set-up (4 bytes, aligned).
        let (off_wrap, flags) = unsafe {
            (
                u16::from_le(std::ptr::read_volatile(self.driver_event.cast::<u16>())),
                u16::from_le(std::ptr::read_volatile(
                    self.driver_event.add(2).cast::<u16>(),
                )),
            )
        };
        let prev = self.signalled.replace((self.next_used, self.used_wrap));
        match flags & 3 {
            EVENT_ENABLE => true,
            EVENT_DESC if self.event_idx => {
                let Some(prev) = prev else {
                    return true;
                };
                // As virtio's vring_need_event, on positions unrolled over the wrap.
                let size = i32::from(self.size);
                let new = i32::from(self.next_used);
                let mut old = i32::from(prev.0);
                if new <= old {
                    old -= size;
                }
                let mut off = i32::from(off_wrap & 0x7fff);
                if (off_wrap & 0x8000 != 0) != self.used_wrap {
                    off -= size;
                }
                (new - off - 1).rem_euclid(1 << 16) < (new - old).rem_euclid(1 << 16)
            }
            EVENT_DESC => true,
            _ => false,
        }
    }
}

/// Adds one plain buffer to `chain`, checking direction, address and count.
#[inline(always)]
fn add_seg(
    mem: &GuestMemory,
    addr: u64,
    len: u32,
    flags: u16,
    writable: bool,
    chain: &mut Chain,
) -> Result<(), ChainError> {
    if (flags & DESC_F_WRITE != 0) != writable {
        return Err(ChainError::WrongDirection);
    }
    if len == 0 {
        return Ok(());
    }
    let p = mem
        .gpa_to_host(addr, u64::from(len))
        .ok_or(ChainError::BadAddress)?;
    if chain.n == MAX_SEGS {
        return Err(ChainError::TooManySegs);
    }
    chain.segs[chain.n] = (p, len);
    chain.n += 1;
    chain.total += u64::from(len);
    Ok(())
}
