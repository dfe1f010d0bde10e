//! The device side of a split virtqueue, walked by hand.
//!
//! We do not use `virtio-queue` on the fast path: its per-descriptor iterator clones
//! the memory handle and re-checks state on every step, and it cannot hold a burst of
//! chains open while the switch copies them straight into another guest. This module
//! keeps the ring pointers translated once (at `SET_VRING_ADDR`/`SET_MEM_TABLE`), reads
//! `avail.idx` once per burst, and publishes `used.idx` once per burst.
//!
//! Everything read from the ring is hostile: head and next indices are bounded by the
//! table size, a chain may visit at most as many descriptors as its table holds (so a
//! loop ends), indirect tables may not nest, every buffer range must lie inside one
//! guest memory region, and a chain may not mix directions. A bad chain is returned to
//! the guest with length 0 and its [`ChainError`] counted.

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;

use crate::mem::{GuestMemory, GuestSlice};
use crate::virtio::{self, Desc, DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE};

mod packed;
pub use packed::PackedRing;

/// A started virtqueue of either format (`VIRTIO_F_RING_PACKED` decides), with the
/// same operations; a port matches on it once per call, never per byte.
pub enum Ring {
    /// A split ring (descriptor table, avail ring, used ring).
    Split(DeviceRing),
    /// A packed ring (one descriptor ring, two event suppression areas).
    Packed(PackedRing),
}

macro_rules! either {
    ($self:ident, $r:ident => $e:expr) => {
        match $self {
            Ring::Split($r) => $e,
            Ring::Packed($r) => $e,
        }
    };
}

impl Ring {
    /// The queue size.
    pub fn size(&self) -> u16 {
        either!(self, r => r.size())
    }

    /// Where the device resumes reading (`GET_VRING_BASE`).
    pub fn last_avail(&self) -> u16 {
        either!(self, r => r.last_avail())
    }

    /// Where the device writes next.
    pub fn used_idx(&self) -> u16 {
        either!(self, r => r.used_idx())
    }

    /// Chains available (a packed ring says only 0 or 1).
    #[inline]
    pub fn pending(&mut self) -> u16 {
        either!(self, r => r.pending())
    }

    /// See [`DeviceRing::prefetch_heads`].
    #[inline]
    pub fn prefetch_heads(&mut self, n: u16) {
        either!(self, r => r.prefetch_heads(n))
    }

    /// See [`DeviceRing::walk_ahead`].
    #[inline]
    pub fn walk_ahead(&mut self, n: u16, writable: bool, lines: usize) {
        either!(self, r => r.walk_ahead(n, writable, lines))
    }

    /// See [`DeviceRing::pop`].
    #[inline]
    pub fn pop(
        &mut self,
        writable: bool,
        chain: &mut Chain,
    ) -> Option<Result<u16, (u16, ChainError)>> {
        either!(self, r => r.pop(writable, chain))
    }

    /// See [`DeviceRing::unpop`].
    pub fn unpop(&mut self, n: u16) {
        either!(self, r => r.unpop(n))
    }

    /// See [`DeviceRing::push_used`].
    #[inline]
    pub fn push_used(&mut self, head: u16, len: u32) {
        either!(self, r => r.push_used(head, len))
    }

    /// See [`DeviceRing::unpush_used`].
    pub fn unpush_used(&mut self, n: u16) {
        either!(self, r => r.unpush_used(n))
    }

    /// See [`DeviceRing::push_used_read`].
    #[inline]
    pub fn push_used_read(&mut self, heads: &[u16]) {
        either!(self, r => r.push_used_read(heads))
    }

    /// See [`DeviceRing::prefetch_used`].
    #[inline]
    pub fn prefetch_used(&self, n: u16) {
        either!(self, r => r.prefetch_used(n))
    }

    /// See [`DeviceRing::prefetch_used_read`].
    #[inline]
    pub fn prefetch_used_read(&self, n: u16) {
        either!(self, r => r.prefetch_used_read(n))
    }

    /// See [`DeviceRing::publish`].
    #[inline]
    pub fn publish(&mut self) -> bool {
        either!(self, r => r.publish())
    }
}

/// The most buffers one chain may have (Linux sends at most MAX_SKB_FRAGS + 2).
pub const MAX_SEGS: usize = 64;
/// The largest indirect table we walk (entries).
pub const MAX_INDIRECT: u32 = 1024;
/// The most descriptors one chain may visit, indirect ones and empty buffers included:
/// a little above [`MAX_SEGS`], so that a chain of empty descriptors (which add no
/// segment) or a long indirect table cannot make one chain cost thousands of reads.
pub const MAX_CHAIN_DESCS: u32 = MAX_SEGS as u32 + 2;
/// The most chains [`DeviceRing::walk_ahead`] holds walked ahead of use.
pub const AHEAD: usize = 64;

/// Why a descriptor chain was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChainError {
    /// The avail ring named a head index beyond the queue size.
    BadHead,
    /// A `next` index beyond its table.
    BadIndex,
    /// The chain visits more descriptors than its table holds (a loop).
    Loop,
    /// A buffer outside guest memory.
    BadAddress,
    /// An indirect table that is empty, misaligned in size, too large, nested or chained.
    BadIndirect,
    /// More than [`MAX_SEGS`] buffers, or more than [`MAX_CHAIN_DESCS`] descriptors.
    TooManySegs,
    /// A device-writable buffer where a readable one was due, or the reverse.
    WrongDirection,
}

impl ChainError {
    /// Every variant, for counters.
    pub const ALL: [ChainError; 7] = [
        ChainError::BadHead,
        ChainError::BadIndex,
        ChainError::Loop,
        ChainError::BadAddress,
        ChainError::BadIndirect,
        ChainError::TooManySegs,
        ChainError::WrongDirection,
    ];

    /// A stable name for counters and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            ChainError::BadHead => "bad_head",
            ChainError::BadIndex => "bad_index",
            ChainError::Loop => "desc_loop",
            ChainError::BadAddress => "bad_address",
            ChainError::BadIndirect => "bad_indirect",
            ChainError::TooManySegs => "too_many_segs",
            ChainError::WrongDirection => "wrong_direction",
        }
    }
}

/// Why ring addresses were refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RingSetupError {
    /// The size is zero, above 32768, or not a power of two.
    #[error("queue size {0} is not a power of two in 1..=32768")]
    BadSize(u32),
    /// A ring part lies outside the shared memory.
    #[error("{0} ring is not inside shared memory")]
    Unmapped(&'static str),
    /// A ring part is misaligned.
    #[error("{0} ring is misaligned")]
    Misaligned(&'static str),
}

/// Frontend-virtual addresses of one ring, as `SET_VRING_ADDR` gives them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RingAddrs {
    /// Descriptor table.
    pub desc: u64,
    /// Avail ring.
    pub avail: u64,
    /// Used ring.
    pub used: u64,
}

/// One descriptor chain, translated to host addresses.
pub struct Chain {
    segs: [(*mut u8, u32); MAX_SEGS],
    n: usize,
    total: u64,
    /// Descriptors read to take this chain (empty and indirect ones included): what
    /// the walk cost, charged against the queue's budget per poll.
    descs: u32,
}

// SAFETY: a chain holds pointers into guest memory that the ring it came from keeps
// mapped; it is only used by the thread that owns that ring's queue at the time.
unsafe impl Send for Chain {}

impl Default for Chain {
    fn default() -> Self {
        Chain {
            segs: [(std::ptr::null_mut(), 0); MAX_SEGS],
            n: 0,
            total: 0,
            descs: 0,
        }
    }
}

impl Chain {
    /// The buffers, as (host pointer, length).
    pub fn segs(&self) -> &[(*mut u8, u32)] {
        &self.segs[..self.n]
    }

    /// Total bytes of all buffers.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Buffer `k` (`k < segs().len()`, else empty) as a [`GuestSlice`]: how the data
    /// path reads and writes it.
    ///
    /// Crate-internal: the slice is valid while the ring that filled the chain keeps
    /// its guest memory mapped, which the ports guarantee by reading a chain only
    /// under the queue that owns both (a ring is replaced only under that queue).
    #[inline]
    pub(crate) fn slice(&self, k: usize) -> GuestSlice<'_> {
        match self.segs().get(k) {
            // SAFETY: the walk translated and bounds-checked (p, l) against the ring's
            // guest memory, which stays mapped while the caller holds the queue (see
            // above).
            Some(&(p, l)) => unsafe { GuestSlice::new(p, l as usize) },
            None => GuestSlice::empty(),
        }
    }

    /// Forgets the buffers (when the ring they came from is replaced), so that a stale
    /// chain never yields a [`slice`](Self::slice) into memory that may be gone.
    pub(crate) fn clear(&mut self) {
        self.n = 0;
        self.total = 0;
        self.descs = 0;
    }

    /// Descriptors read to take the chain (at most [`MAX_CHAIN_DESCS`] for a split
    /// ring; for a packed one, every ring slot of a refused chain too).
    pub fn descs(&self) -> u32 {
        self.descs
    }
}

/// A started split ring: the device's view.
pub struct DeviceRing {
    size: u16,
    desc: *const u8,
    avail: *const u8,
    used: *mut u8,
    last_avail: u16,
    avail_cache: u16,
    /// One-buffer chains walked by [`walk_ahead`](Self::walk_ahead) for the avail
    /// positions `last_avail..last_avail + ahead_n`, each at `ahead[position % AHEAD]`:
    /// (head, host address, length).
    ahead: [(u16, *mut u8, u32); AHEAD],
    ahead_n: u16,
    /// The direction the chains in `ahead` were checked for.
    ahead_writable: bool,
    used_idx: u16,
    signalled_used: u16,
    signalled_valid: bool,
    event_idx: bool,
    in_order: bool,
    mem: Arc<GuestMemory>,
}

// SAFETY: the pointers point into `mem`, which the ring keeps alive; the ring is used
// by one thread at a time (it lives in a `QueueCell`).
unsafe impl Send for DeviceRing {}

/// Asks for the first `lines` cache lines of the `len`-byte buffer at `p`, for writing
/// when `writable` (a buffer the device is about to fill).
#[inline]
fn prefetch_buf(p: *mut u8, len: u32, lines: usize, writable: bool) {
    let span = (lines * 64).min(len as usize);
    for off in (0..span).step_by(64) {
        if writable {
            crate::hint::prefetch_write(p.wrapping_add(off));
        } else {
            crate::hint::prefetch(p.wrapping_add(off));
        }
    }
}

#[inline]
fn read_desc(table: *const u8, idx: u32) -> Desc {
    // SAFETY: callers bound idx by the table length they translated.
    let p = unsafe { table.add(idx as usize * 16) };
    if (p as usize).is_multiple_of(8) {
        // The main table is 16-byte aligned (checked at set-up): four typed reads
        // instead of sixteen byte reads.
        // SAFETY: p is 8-byte aligned and 16 readable bytes follow it; every bit
        // pattern is a valid integer.
        unsafe {
            return Desc {
                addr: u64::from_le(std::ptr::read_volatile(p.cast::<u64>())),
                len: u32::from_le(std::ptr::read_volatile(p.add(8).cast::<u32>())),
                flags: u16::from_le(std::ptr::read_volatile(p.add(12).cast::<u16>())),
                next: u16::from_le(std::ptr::read_volatile(p.add(14).cast::<u16>())),
            };
        }
    }
    // An indirect table may sit anywhere: read plain bytes.
    // SAFETY: 16 readable bytes at p (any alignment, any value).
    let b: [u8; 16] = unsafe { std::ptr::read_volatile(p.cast()) };
    Desc {
        addr: u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]),
        len: u32::from_le_bytes([b[8], b[9], b[10], b[11]]),
        flags: u16::from_le_bytes([b[12], b[13]]),
        next: u16::from_le_bytes([b[14], b[15]]),
    }
}

impl DeviceRing {
    /// Translates and checks the ring addresses against `mem`.
    pub fn new(
        mem: Arc<GuestMemory>,
        size: u32,
        addrs: RingAddrs,
        base: u16,
        used_idx: u16,
        event_idx: bool,
    ) -> Result<DeviceRing, RingSetupError> {
        if size == 0 || size > u32::from(virtio::MAX_QUEUE_SIZE) || !size.is_power_of_two() {
            return Err(RingSetupError::BadSize(size));
        }
        let size = size as u16;
        if !addrs.desc.is_multiple_of(16) {
            return Err(RingSetupError::Misaligned("descriptor"));
        }
        if !addrs.avail.is_multiple_of(2) {
            return Err(RingSetupError::Misaligned("avail"));
        }
        if !addrs.used.is_multiple_of(4) {
            return Err(RingSetupError::Misaligned("used"));
        }
        let desc = mem
            .uva_to_host(addrs.desc, u64::from(size) * virtio::DESC_SIZE)
            .ok_or(RingSetupError::Unmapped("descriptor"))?;
        let avail = mem
            .uva_to_host(addrs.avail, virtio::avail_ring_bytes(size))
            .ok_or(RingSetupError::Unmapped("avail"))?;
        let used = mem
            .uva_to_host(addrs.used, virtio::used_ring_bytes(size))
            .ok_or(RingSetupError::Unmapped("used"))?;
        // The frontend chooses mmap offsets, so the host pointers must be checked too:
        // typed and atomic accesses below need their natural alignment.
        if !(desc as usize).is_multiple_of(16) {
            return Err(RingSetupError::Misaligned("descriptor (host mapping)"));
        }
        if !(avail as usize).is_multiple_of(2) {
            return Err(RingSetupError::Misaligned("avail (host mapping)"));
        }
        if !(used as usize).is_multiple_of(4) {
            return Err(RingSetupError::Misaligned("used (host mapping)"));
        }
        let mut r = DeviceRing {
            size,
            desc,
            avail,
            used,
            last_avail: base,
            avail_cache: base,
            ahead: [(0, std::ptr::null_mut(), 0); AHEAD],
            ahead_n: 0,
            ahead_writable: false,
            used_idx,
            signalled_used: used_idx,
            signalled_valid: false,
            event_idx,
            in_order: false,
            mem,
        };
        // `base` is where the device resumes: after a backend restart the frontend sets
        // it to the used index it has seen, so every chain before it is complete.
        if !event_idx {
            r.suppress_kicks();
        }
        Ok(r)
    }

    /// Whether `VIRTIO_F_IN_ORDER` was negotiated: then a burst of chains the device
    /// only read is returned with one used element, that of the burst's last chain
    /// ([`push_used_read`](Self::push_used_read)), as the spec allows (2.7.9).
    pub fn set_in_order(&mut self, on: bool) {
        self.in_order = on;
    }

    /// The queue size.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// The next avail index the device will read (what `GET_VRING_BASE` returns).
    pub fn last_avail(&self) -> u16 {
        self.last_avail
    }

    /// The next used index the device will write.
    pub fn used_idx(&self) -> u16 {
        self.used_idx
    }

    fn avail_idx_ref(&self) -> &AtomicU16 {
        // SAFETY: avail ring checked at set-up: 2-byte aligned, inside live memory.
        unsafe { &*self.avail.add(2).cast::<AtomicU16>() }
    }

    fn used_idx_ref(&self) -> &AtomicU16 {
        // SAFETY: used ring checked at set-up: 4-byte aligned, inside live memory.
        unsafe { &*self.used.add(2).cast::<AtomicU16>() }
    }

    /// Tells the driver we poll and need no kicks.
    fn suppress_kicks(&mut self) {
        // SAFETY: used ring flags, checked at set-up.
        let flags = unsafe { &*self.used.cast::<AtomicU16>() };
        flags.store(virtio::USED_F_NO_NOTIFY, Ordering::Relaxed);
    }

    /// Chains the driver has made available and the device has not taken yet.
    #[inline]
    pub fn pending(&mut self) -> u16 {
        if self.avail_cache == self.last_avail {
            self.avail_cache = self.avail_idx_ref().load(Ordering::Acquire);
        }
        let n = self.avail_cache.wrapping_sub(self.last_avail);
        if n > self.size {
            // The driver moved avail.idx further than the ring holds: ignore the bogus
            // index until it makes sense again (counted by the caller as empty).
            self.avail_cache = self.last_avail;
            return 0;
        }
        n
    }

    /// Asks the cache for the head descriptors of the next `n` available chains (at most
    /// as many as are pending), so that the walks of a burst do not wait for them one
    /// by one. Reads the avail entries (one or two cache lines per burst) and nothing
    /// else; a head out of range is left for [`pop`](Self::pop) to refuse.
    #[inline]
    pub fn prefetch_heads(&mut self, n: u16) {
        let n = n.min(self.pending());
        for k in 0..n {
            let slot = self.last_avail.wrapping_add(k) & (self.size - 1);
            // SAFETY: slot < size; the avail ring holds `size` u16 entries after 4 bytes.
            let head = u16::from_le(unsafe {
                std::ptr::read_volatile(self.avail.add(4 + 2 * slot as usize).cast::<u16>())
            });
            if head < self.size {
                crate::hint::prefetch(self.desc.wrapping_add(16 * usize::from(head)));
            }
        }
    }

    /// Takes the next available chain into `chain`. `None` when the ring is empty;
    /// `Some(Err((head, e)))` for a bad chain, which the caller returns with length 0
    /// (when `head` is below the queue size) and counts.
    #[inline]
    pub fn pop(
        &mut self,
        writable: bool,
        chain: &mut Chain,
    ) -> Option<Result<u16, (u16, ChainError)>> {
        if self.pending() == 0 {
            return None;
        }
        if self.ahead_n > 0 && self.ahead_writable == writable {
            let (head, p, len) = self.ahead[usize::from(self.last_avail) % AHEAD];
            chain.segs[0] = (p, len);
            chain.n = 1;
            chain.total = u64::from(len);
            chain.descs = 1;
            self.last_avail = self.last_avail.wrapping_add(1);
            self.ahead_n -= 1;
            return Some(Ok(head));
        }
        let slot = self.last_avail & (self.size - 1);
        // SAFETY: slot < size; the avail ring holds `size` u16 entries after 4 bytes.
        let head =
            unsafe { std::ptr::read_volatile(self.avail.add(4 + 2 * slot as usize).cast::<u16>()) };
        let head = u16::from_le(head);
        self.last_avail = self.last_avail.wrapping_add(1);
        Some(
            self.walk(head, writable, chain)
                .map(|()| head)
                .map_err(|e| (head, e)),
        )
    }

    fn walk(&self, head: u16, writable: bool, chain: &mut Chain) -> Result<(), ChainError> {
        chain.n = 0;
        chain.total = 0;
        chain.descs = 0;
        if head >= self.size {
            return Err(ChainError::BadHead);
        }
        let mut table = self.desc;
        let mut table_len = u32::from(self.size);
        let mut idx = u32::from(head);
        let mut seen = 0u32;
        let mut indirect = false;
        loop {
            if idx >= table_len {
                return Err(ChainError::BadIndex);
            }
            seen += 1;
            if seen > table_len {
                return Err(ChainError::Loop);
            }
            chain.descs += 1;
            if chain.descs > MAX_CHAIN_DESCS {
                return Err(ChainError::TooManySegs);
            }
            let d = read_desc(table, idx);
            if d.flags & DESC_F_INDIRECT != 0 {
                if indirect || d.flags & DESC_F_NEXT != 0 || d.len == 0 || !d.len.is_multiple_of(16)
                {
                    return Err(ChainError::BadIndirect);
                }
                let n = d.len / 16;
                if n > MAX_INDIRECT {
                    return Err(ChainError::BadIndirect);
                }
                table = self
                    .mem
                    .gpa_to_host(d.addr, u64::from(d.len))
                    .ok_or(ChainError::BadAddress)?;
                table_len = n;
                idx = 0;
                seen = 0;
                indirect = true;
                continue;
            }
            if (d.flags & DESC_F_WRITE != 0) != writable {
                return Err(ChainError::WrongDirection);
            }
            if d.len > 0 {
                let p = self
                    .mem
                    .gpa_to_host(d.addr, u64::from(d.len))
                    .ok_or(ChainError::BadAddress)?;
                if chain.n == MAX_SEGS {
                    return Err(ChainError::TooManySegs);
                }
                chain.segs[chain.n] = (p, d.len);
                chain.n += 1;
                chain.total += u64::from(d.len);
            }
            if d.flags & DESC_F_NEXT == 0 {
                return Ok(());
            }
            idx = u32::from(d.next);
        }
    }

    /// Gives back the last `n` chains taken by [`pop`](Self::pop) without using them.
    pub fn unpop(&mut self, n: u16) {
        self.last_avail = self.last_avail.wrapping_sub(n);
        // Rare (a frame that did not fit, a ring out of buffers): walk afresh.
        self.ahead_n = 0;
    }

    /// Walks up to `n` (at most [`AHEAD`]) of the next available chains before they are
    /// used, so that [`pop`](Self::pop) later takes them without reading the ring again,
    /// and asks for the first `lines` cache lines of each buffer — for writing when
    /// `writable` (a receive ring, whose buffers the device is about to fill). Chains
    /// walked by an earlier call are not walked again, so a port can walk the next
    /// burst's chains at the end of a burst and top them up at the start of the next.
    ///
    /// Only one-buffer chains in the given direction are walked ahead (what DPDK and
    /// Linux post); the walk stops at the first other chain, which `pop` then walks and
    /// checks in full. Nothing is taken: the chains stay available (`last_avail` and
    /// what `GET_VRING_BASE` reports do not move) until `pop` takes them.
    #[inline]
    pub fn walk_ahead(&mut self, n: u16, writable: bool, lines: usize) {
        let want = n.min(self.pending()).min(AHEAD as u16);
        let mut done = self.ahead_n;
        if self.ahead_writable != writable {
            done = 0;
            self.ahead_writable = writable;
        }
        let dir = if writable { DESC_F_WRITE } else { 0 };
        // First ask for all the head descriptors, so that the walk below does not wait
        // for them one by one.
        for k in done..want {
            let slot = self.last_avail.wrapping_add(k) & (self.size - 1);
            // SAFETY: slot < size; the avail ring holds `size` u16 entries after 4 bytes.
            let head = u16::from_le(unsafe {
                std::ptr::read_volatile(self.avail.add(4 + 2 * slot as usize).cast::<u16>())
            });
            if head < self.size {
                crate::hint::prefetch(self.desc.wrapping_add(16 * usize::from(head)));
            }
        }
        while done < want {
            let pos = self.last_avail.wrapping_add(done);
            let slot = pos & (self.size - 1);
            // SAFETY: slot < size; the avail ring holds `size` u16 entries after 4 bytes.
            let head = u16::from_le(unsafe {
                std::ptr::read_volatile(self.avail.add(4 + 2 * slot as usize).cast::<u16>())
            });
            if head >= self.size {
                break;
            }
            let d = read_desc(self.desc, u32::from(head));
            if d.flags & (DESC_F_NEXT | DESC_F_INDIRECT | DESC_F_WRITE) != dir || d.len == 0 {
                break;
            }
            let Some(p) = self.mem.gpa_to_host(d.addr, u64::from(d.len)) else {
                break;
            };
            prefetch_buf(p, d.len, lines, writable);
            self.ahead[usize::from(pos) % AHEAD] = (head, p, d.len);
            done += 1;
        }
        self.ahead_n = done;
    }

    /// Writes a used element; it becomes visible at [`publish`](Self::publish).
    #[inline]
    pub fn push_used(&mut self, head: u16, len: u32) {
        let slot = (self.used_idx & (self.size - 1)) as usize;
        // SAFETY: slot < size; the used ring holds `size` 8-byte elements after 4 bytes,
        // 4-byte aligned.
        unsafe {
            let e = self.used.add(4 + 8 * slot).cast::<u32>();
            std::ptr::write_volatile(e, u32::from(head).to_le());
            std::ptr::write_volatile(e.add(1), len.to_le());
        }
        self.used_idx = self.used_idx.wrapping_add(1);
    }

    /// Returns chains the device only read (a transmit ring's), in the order it took
    /// them, each with length 0. With `VIRTIO_F_IN_ORDER` one used element stands for
    /// the whole batch: the id of its last chain, the used index moved past all of them.
    #[inline]
    pub fn push_used_read(&mut self, heads: &[u16]) {
        let Some(&last) = heads.last() else {
            return;
        };
        if self.in_order {
            self.used_idx = self.used_idx.wrapping_add(heads.len() as u16 - 1);
            self.push_used(last, 0);
        } else {
            for &h in heads {
                self.push_used(h, 0);
            }
        }
    }

    /// Takes for writing the used-ring lines that [`push_used_read`](Self::push_used_read)
    /// will write for a batch of `n` chains.
    #[inline]
    pub fn prefetch_used_read(&self, n: u16) {
        if self.in_order {
            if n > 0 {
                let last = usize::from(self.used_idx.wrapping_add(n - 1) & (self.size - 1));
                crate::hint::prefetch_write(self.used.wrapping_add(4 + 8 * last));
            }
        } else {
            self.prefetch_used(n);
        }
    }

    /// Takes the cache lines of the next `n` used elements for writing (the driver
    /// read them last), so that [`push_used`](Self::push_used) stores do not stall.
    #[inline]
    pub fn prefetch_used(&self, n: u16) {
        let n = n.min(self.size);
        let mut k = 0u16;
        while k < n {
            let slot = usize::from(self.used_idx.wrapping_add(k) & (self.size - 1));
            crate::hint::prefetch_write(self.used.wrapping_add(4 + 8 * slot));
            // Eight elements per line (the first line also holds flags and idx).
            k += 8;
        }
        if n > 0 {
            let last = usize::from(self.used_idx.wrapping_add(n - 1) & (self.size - 1));
            crate::hint::prefetch_write(self.used.wrapping_add(4 + 8 * last));
        }
    }

    /// Withdraws the last `n` unpublished used elements.
    pub fn unpush_used(&mut self, n: u16) {
        self.used_idx = self.used_idx.wrapping_sub(n);
    }

    /// Makes all used elements written so far visible to the driver (one release
    /// store), and says whether the driver asked to be interrupted for them.
    #[inline]
    pub fn publish(&mut self) -> bool {
        let new = self.used_idx;
        // The store must be visible before we read used_event (or the avail flags), or
        // we could miss a driver that just re-enabled interrupts (the virtio memory
        // barrier). A sequentially consistent exchange is that store and that barrier in
        // one locked instruction, cheaper than a store followed by `mfence`.
        self.used_idx_ref().swap(new, Ordering::SeqCst);
        if self.event_idx {
            let old = self.signalled_used;
            let valid = self.signalled_valid;
            self.signalled_used = new;
            self.signalled_valid = true;
            if new == old && valid {
                return false;
            }
            let off = 4 + 2 * self.size as usize;
            // SAFETY: used_event sits right after the avail ring entries, inside the
            // checked avail range.
            let event =
                u16::from_le(unsafe { std::ptr::read_volatile(self.avail.add(off).cast::<u16>()) });
            !valid || virtio::need_event(event, new, old)
        } else {
            // SAFETY: avail flags, checked at set-up.
            let flags = u16::from_le(unsafe { std::ptr::read_volatile(self.avail.cast::<u16>()) });
            flags & virtio::AVAIL_F_NO_INTERRUPT == 0
        }
    }
}
