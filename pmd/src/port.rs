//! The port abstraction: burst receive and transmit, and per-port counters.
//!
//! A burst is received *inside* a call: [`Port::poll_rx`] takes up to [`BURST`]
//! frames, hands them to a closure as an [`RxBatch`], and returns their buffers to the
//! peer after the closure returns. The frames stay where they were received (in the
//! sending guest's memory when they fit one buffer), so a closure that transmits them
//! on another port with [`Port::tx_burst`] copies each frame exactly once.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::frame::VlanEdit;
use crate::mem::{copy_small, GuestSlice};

/// The most frames in one burst. 64 rather than 32: per-burst costs (the queue's CAS,
/// the used-index exchange, the clock read, the stage loops) spread over twice the
/// frames, about 10 cycles a frame less at 64 B (BENCHMARKS.md).
pub const BURST: usize = 64;

/// The frames of one received burst; valid only inside [`Port::poll_rx`]'s closure.
pub struct RxBatch {
    frames: [(*const u8, u32); BURST],
    heads: [[u8; HEAD_SNAPSHOT]; BURST],
    len: usize,
}

/// Bytes of every received frame copied aside at receive time (all of a short frame):
/// the switch decides on this copy and the ports transmit it, so a guest that rewrites
/// its buffer after the decision cannot change the headers that were decided on.
///
/// Two cache lines: port security reads IPv6 neighbour-discovery messages whole (an
/// advertisement's target address sits at bytes 62..78 of an untagged frame, its
/// link-layer option at 78..86), so they must lie in the copy. Only frames longer than
/// 64 bytes copy more, and their second line is read at transmit time anyway.
pub const HEAD_SNAPSHOT: usize = 128;

// `copy_head` moves at most 128 bytes.
const _: () = assert!(HEAD_SNAPSHOT <= 128);

// SAFETY: the pointers are only dereferenced through `frame`, under `push`'s contract
// (readable until `clear`); ports clear the batch before `poll_rx` returns, so a batch
// that moves to another thread carries no pointer that thread could read.
unsafe impl Send for RxBatch {}

impl Default for RxBatch {
    fn default() -> Self {
        RxBatch {
            frames: [(std::ptr::null(), 0); BURST],
            heads: [[0; HEAD_SNAPSHOT]; BURST],
            len: 0,
        }
    }
}

impl RxBatch {
    /// Number of frames.
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the batch holds no frame.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether another frame fits.
    #[inline]
    pub fn is_full(&self) -> bool {
        self.len == BURST
    }

    /// Frame `i` (Ethernet header first, no virtio-net header), where it was
    /// received: in the sending guest's memory, which the guest may still write. Read
    /// it only by copying ([`GuestSlice`]); decide on [`head`](Self::head).
    ///
    /// # Panics
    /// When `i >= len()`, like slice indexing.
    #[inline]
    pub fn frame(&self, i: usize) -> GuestSlice<'_> {
        let (p, l) = self.frames[..self.len][i];
        // SAFETY: `push` requires the bytes to stay mapped until `clear`, and the batch
        // is cleared before `poll_rx` returns; the slice borrows the batch, so it cannot
        // outlive a `clear`.
        unsafe { GuestSlice::new(p.cast_mut(), l as usize) }
    }

    /// Appends a frame, copying its first [`HEAD_SNAPSHOT`] bytes aside.
    ///
    /// # Safety
    /// `ptr..ptr + len` must stay readable until [`clear`](Self::clear) is called, and
    /// the batch must not be full.
    #[inline]
    pub unsafe fn push(&mut self, ptr: *const u8, len: u32) {
        debug_assert!(self.len < BURST);
        let n = (len as usize).min(HEAD_SNAPSHOT);
        // SAFETY: the caller guarantees len readable bytes at ptr; n <= len and
        // n <= HEAD_SNAPSHOT, the size of the destination.
        unsafe { copy_small(ptr, self.heads[self.len].as_mut_ptr(), n) };
        self.frames[self.len] = (ptr, len);
        self.len += 1;
    }

    /// Appends a frame without copying its head yet, so that a port can walk a whole
    /// burst of descriptors first (prefetching each frame's first lines) and copy the
    /// heads afterwards, when the lines have arrived. [`snapshot_heads`](Self::snapshot_heads)
    /// must run before the batch is read: until then [`head`](Self::head) of this frame
    /// returns stale bytes (never anything out of bounds).
    ///
    /// # Safety
    /// As [`push`](Self::push).
    #[inline]
    pub unsafe fn push_deferred(&mut self, ptr: *const u8, len: u32) {
        debug_assert!(self.len < BURST);
        // The lines the head copy will read (at most three; the middle one only for
        // heads longer than a line).
        let n = (len as usize).min(HEAD_SNAPSHOT);
        crate::hint::prefetch(ptr);
        if n > 64 {
            crate::hint::prefetch(ptr.wrapping_add(64));
        }
        crate::hint::prefetch(ptr.wrapping_add(n.saturating_sub(1)));
        self.frames[self.len] = (ptr, len);
        self.len += 1;
    }

    /// Copies aside the heads of the frames pushed with
    /// [`push_deferred`](Self::push_deferred) (and again those pushed with `push`,
    /// which is harmless).
    #[inline]
    pub fn snapshot_heads(&mut self) {
        for i in 0..self.len {
            let (p, l) = self.frames[i];
            let n = (l as usize).min(HEAD_SNAPSHOT);
            // SAFETY: `push_deferred`'s contract keeps `l` bytes at `p` readable until
            // `clear`; n <= l and n <= HEAD_SNAPSHOT, the size of the destination.
            unsafe { copy_small(p, self.heads[i].as_mut_ptr(), n) };
        }
    }

    /// Length of frame `i`.
    ///
    /// # Panics
    /// When `i >= len()`.
    #[inline]
    pub fn frame_len(&self, i: usize) -> usize {
        self.frames[..self.len][i].1 as usize
    }

    /// The private copy of frame `i`'s first bytes (the whole frame when it is short):
    /// what the switch parses and decides on.
    ///
    /// # Panics
    /// When `i >= len()`.
    #[inline]
    pub fn head(&self, i: usize) -> &[u8] {
        let n = self.frame_len(i).min(HEAD_SNAPSHOT);
        &self.heads[i][..n]
    }

    /// The private head copy of frame `i`, writable: a router rewrites MACs, TTL and
    /// checksum here, and the port transmits what it wrote.
    ///
    /// # Panics
    /// When `i >= len()`.
    #[inline]
    pub fn head_mut(&mut self, i: usize) -> &mut [u8] {
        let n = self.frame_len(i).min(HEAD_SNAPSHOT);
        &mut self.heads[i][..n]
    }

    /// Frame `i` as it is transmitted: the private head copy, then the rest of the
    /// frame where it was received.
    ///
    /// # Panics
    /// When `i >= len()`.
    #[inline]
    pub fn parts(&self, i: usize) -> (&[u8], GuestSlice<'_>) {
        let head = self.head(i);
        let tail = self.frame(i).from(head.len());
        (head, tail)
    }

    /// Drops the first `n` bytes of frame `i` (an outer tunnel header), so the frame is
    /// decided and sent as the inner frame: the head copy moves up by `n` and the bytes
    /// that now follow it are copied in from where the frame was received (none for a
    /// frame that was whole in the head). False, and nothing changed, when the frame is
    /// not longer than `n`.
    ///
    /// # Panics
    /// When `i >= len()`.
    #[inline]
    pub fn strip_front(&mut self, i: usize, n: usize) -> bool {
        let (p, l) = self.frames[..self.len][i];
        if (l as usize) <= n {
            return false;
        }
        let old = (l as usize).min(HEAD_SNAPSHOT);
        let l = l - n as u32;
        // `push`'s contract keeps the original l + n bytes at `p` readable until `clear`;
        // the new range is a suffix of them.
        let p = p.wrapping_add(n);
        let h = (l as usize).min(HEAD_SNAPSHOT);
        let kept = old.saturating_sub(n);
        self.heads[i].copy_within(n.min(old)..old, 0);
        if h > kept {
            // SAFETY: as above, h <= l readable bytes at p, of which bytes kept..h are
            // copied to heads[i][kept..h], inside the HEAD_SNAPSHOT-byte destination.
            unsafe { copy_small(p.add(kept), self.heads[i].as_mut_ptr().add(kept), h - kept) };
        }
        self.frames[i] = (p, l);
        true
    }

    /// Forgets all frames.
    #[inline]
    pub fn clear(&mut self) {
        self.len = 0;
    }
}

/// The longest prefix [`Port::tx_burst_prefixed`] puts before a frame.
pub const PREFIX_MAX: usize = 64;

/// Longest frame a [`LocalFrames`] holds.
pub const LOCAL_MAX: usize = 128;

/// Frames the switch makes itself (ARP replies, ICMP errors), in an [`RxBatch`] so that
/// ports transmit them with the same `tx_burst` as received frames. It owns the bytes
/// the batch points to.
pub struct LocalFrames {
    bufs: Box<[[u8; LOCAL_MAX]]>,
    batch: RxBatch,
}

impl Default for LocalFrames {
    fn default() -> Self {
        LocalFrames {
            bufs: vec![[0u8; LOCAL_MAX]; BURST].into_boxed_slice(),
            batch: RxBatch::default(),
        }
    }
}

impl LocalFrames {
    /// Copies `frame` in; false when it is longer than [`LOCAL_MAX`] or the batch is full.
    pub fn push(&mut self, frame: &[u8]) -> bool {
        let i = self.batch.len();
        if frame.len() > LOCAL_MAX || i >= BURST {
            return false;
        }
        // All pointers come from one raw base pointer, so writing buffer `i` does not
        // invalidate the pointers the batch holds to the buffers before it.
        let base = self.bufs.as_mut_ptr().cast::<u8>();
        // SAFETY: `i < BURST == self.bufs.len()`, so buffer `i` is LOCAL_MAX bytes inside
        // the boxed slice, which never moves or shrinks while `self` lives; `frame` does
        // not overlap it (it is a shared borrow from elsewhere) and fits (checked above).
        // The batch is only reachable through `&self`, and `clear` empties it before any
        // buffer is written again; `i < BURST`, so the batch has room.
        unsafe {
            let p = base.add(i * LOCAL_MAX);
            std::ptr::copy_nonoverlapping(frame.as_ptr(), p, frame.len());
            self.batch.push(p, frame.len() as u32);
        }
        true
    }

    /// The frames, for `tx_burst`.
    pub fn batch(&self) -> &RxBatch {
        &self.batch
    }

    /// Forgets all frames.
    pub fn clear(&mut self) {
        self.batch.clear();
    }
}

/// One frame of an [`RxBatch`] selected for transmission, with its VLAN edit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TxSel {
    /// Index into the batch.
    pub idx: u16,
    /// Edit applied while copying.
    pub edit: VlanEdit,
}

/// Why a port dropped a frame or refused a buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub enum PortDrop {
    /// The peer had no free receive buffer (its ring was full).
    NoRxBuffer = 0,
    /// The frame did not fit the peer's buffers.
    FrameTooBig,
    /// A received frame was larger than we accept.
    RxTooBig,
    /// A received frame was shorter than a virtio-net header plus Ethernet header.
    RxRunt,
    /// A descriptor chain with a bad head index.
    BadHead,
    /// A descriptor `next` index beyond its table.
    BadIndex,
    /// A descriptor chain that loops.
    DescLoop,
    /// A buffer outside guest memory.
    BadAddress,
    /// A malformed indirect table.
    BadIndirect,
    /// Too many buffers in one chain.
    TooManySegs,
    /// A buffer of the wrong direction.
    WrongDirection,
    /// The port was not ready (no peer, or queue not started).
    NotReady,
}

impl PortDrop {
    /// Number of reasons.
    pub const COUNT: usize = 12;
    /// Every reason, in counter order.
    pub const ALL: [PortDrop; Self::COUNT] = [
        PortDrop::NoRxBuffer,
        PortDrop::FrameTooBig,
        PortDrop::RxTooBig,
        PortDrop::RxRunt,
        PortDrop::BadHead,
        PortDrop::BadIndex,
        PortDrop::DescLoop,
        PortDrop::BadAddress,
        PortDrop::BadIndirect,
        PortDrop::TooManySegs,
        PortDrop::WrongDirection,
        PortDrop::NotReady,
    ];

    /// A stable name for counters and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            PortDrop::NoRxBuffer => "no_rx_buffer",
            PortDrop::FrameTooBig => "frame_too_big",
            PortDrop::RxTooBig => "rx_too_big",
            PortDrop::RxRunt => "rx_runt",
            PortDrop::BadHead => "bad_head",
            PortDrop::BadIndex => "bad_index",
            PortDrop::DescLoop => "desc_loop",
            PortDrop::BadAddress => "bad_address",
            PortDrop::BadIndirect => "bad_indirect",
            PortDrop::TooManySegs => "too_many_segs",
            PortDrop::WrongDirection => "wrong_direction",
            PortDrop::NotReady => "not_ready",
        }
    }
}

impl From<crate::vring::ChainError> for PortDrop {
    fn from(e: crate::vring::ChainError) -> Self {
        use crate::vring::ChainError as C;
        match e {
            C::BadHead => PortDrop::BadHead,
            C::BadIndex => PortDrop::BadIndex,
            C::Loop => PortDrop::DescLoop,
            C::BadAddress => PortDrop::BadAddress,
            C::BadIndirect => PortDrop::BadIndirect,
            C::TooManySegs => PortDrop::TooManySegs,
            C::WrongDirection => PortDrop::WrongDirection,
        }
    }
}

/// A snapshot of a port's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortStats {
    /// Frames received from the peer.
    pub rx_packets: u64,
    /// Bytes received (Ethernet frames, no virtio header).
    pub rx_bytes: u64,
    /// Frames delivered to the peer.
    pub tx_packets: u64,
    /// Bytes delivered.
    pub tx_bytes: u64,
    /// Drops by [`PortDrop`] reason.
    pub drops: [u64; PortDrop::COUNT],
    /// Peers that connected (vhost-user; 0 for ports without a protocol).
    pub connections: u64,
    /// Peers dropped or requests refused for breaking the protocol (a bad message, a
    /// memory table over the cap, memory shrunk under the switch, a call fd that is not
    /// an eventfd, ...).
    pub protocol_errors: u64,
}

impl PortStats {
    /// Sum of all drops.
    pub fn total_drops(&self) -> u64 {
        self.drops.iter().sum()
    }

    /// Adds another snapshot into this one.
    pub fn add(&mut self, o: &PortStats) {
        self.rx_packets += o.rx_packets;
        self.rx_bytes += o.rx_bytes;
        self.tx_packets += o.tx_packets;
        self.tx_bytes += o.tx_bytes;
        for (a, b) in self.drops.iter_mut().zip(o.drops.iter()) {
            *a += b;
        }
        self.connections += o.connections;
        self.protocol_errors += o.protocol_errors;
    }
}

/// The snapshot of a port with one receive and one transmit counter set (tap, uplink).
pub fn stats_of(rx: &QueueCounters, tx: &QueueCounters) -> PortStats {
    let (rp, rb, rd) = rx.read();
    let (tp, tb, td) = tx.read();
    let mut s = PortStats {
        rx_packets: rp,
        rx_bytes: rb,
        tx_packets: tp,
        tx_bytes: tb,
        ..Default::default()
    };
    for i in 0..PortDrop::COUNT {
        s.drops[i] = rd[i] + td[i];
    }
    s
}

/// Counters of one queue, written by the one thread that owns the queue at the time
/// (plain load + store, no locked instruction) and read by anyone.
#[repr(align(64))]
#[derive(Default)]
pub struct QueueCounters {
    packets: AtomicU64,
    bytes: AtomicU64,
    drops: [AtomicU64; PortDrop::COUNT],
}

impl QueueCounters {
    #[inline]
    fn bump(c: &AtomicU64, n: u64) {
        if n != 0 {
            c.store(c.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
        }
    }

    /// Adds `packets` frames of `bytes` bytes. Only the queue's owner calls this.
    #[inline]
    pub fn add(&self, packets: u64, bytes: u64) {
        Self::bump(&self.packets, packets);
        Self::bump(&self.bytes, bytes);
    }

    /// Counts `n` drops for `why`. Only the queue's owner calls this.
    #[inline]
    pub fn drop_n(&self, why: PortDrop, n: u64) {
        Self::bump(&self.drops[why as usize], n);
    }

    /// Reads (packets, bytes, drops).
    pub fn read(&self) -> (u64, u64, [u64; PortDrop::COUNT]) {
        let mut d = [0; PortDrop::COUNT];
        for (o, c) in d.iter_mut().zip(self.drops.iter()) {
            *o = c.load(Ordering::Relaxed);
        }
        (
            self.packets.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
            d,
        )
    }
}

/// A port that polling cores receive from and transmit to.
pub trait Port: Send + Sync {
    /// The port's name.
    fn name(&self) -> &str;

    /// Number of queue pairs the port offers.
    fn queue_pairs(&self) -> u16;

    /// Whether a peer is attached and at least one queue runs.
    fn is_up(&self) -> bool;

    /// Receives up to [`BURST`] frames from queue `q` into `batch`, calls `f` with them
    /// if any, then returns the buffers to the peer. Returns the number of frames.
    fn poll_rx(&self, q: u16, batch: &mut RxBatch, f: &mut dyn FnMut(&mut RxBatch)) -> usize;

    /// Copies the selected frames of `src` to the peer on queue `q`, applying each
    /// frame's VLAN edit. Returns how many were delivered; the rest are dropped and
    /// counted by the port.
    fn tx_burst(&self, q: u16, src: &RxBatch, sel: &[TxSel]) -> usize;

    /// As [`tx_burst`](Self::tx_burst), each frame `sel[k]` behind the first
    /// `prefix_len` bytes of `prefix[k]` (a tunnel's outer headers), written in the same
    /// copy. Only ports that can be an uplink implement it; the others deliver nothing.
    fn tx_burst_prefixed(
        &self,
        q: u16,
        src: &RxBatch,
        sel: &[TxSel],
        prefix: &[[u8; PREFIX_MAX]],
        prefix_len: usize,
    ) -> usize {
        let _ = (q, src, sel, prefix, prefix_len);
        0
    }

    /// The port's counters.
    fn stats(&self) -> PortStats;
}

/// Length of a frame of `len` bytes after `edit`: a push needs the 12 MAC bytes, a pop
/// a whole tag; an edit that does not fit leaves the frame unchanged.
#[inline]
pub fn edited_len(len: usize, edit: VlanEdit) -> usize {
    match edit {
        VlanEdit::Push(_) if len >= 12 => len + 4,
        VlanEdit::Pop if len >= 16 => len - 4,
        _ => len,
    }
}

/// One piece of a frame being transmitted: bytes of our own (the private head copy, a
/// pushed VLAN tag) or the rest of the frame in the sender's memory.
#[derive(Clone, Copy, Debug)]
pub enum Piece<'a> {
    /// Our own bytes.
    Own(&'a [u8]),
    /// Bytes in a guest's memory, read by copying only.
    Guest(GuestSlice<'a>),
}

impl Piece<'_> {
    /// Length in bytes.
    #[inline]
    pub fn len(&self) -> usize {
        match self {
            Piece::Own(b) => b.len(),
            Piece::Guest(g) => g.len(),
        }
    }

    /// Whether it holds no byte.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Start address and length, for `writev`.
    #[inline]
    pub fn raw(&self) -> (*const u8, usize) {
        match self {
            Piece::Own(b) => (b.as_ptr(), b.len()),
            Piece::Guest(g) => (g.as_ptr(), g.len()),
        }
    }

    /// Copies bytes `from..` of the piece into `dst` at `off`, as many as fit; returns
    /// how many.
    #[inline]
    pub fn copy_to(&self, from: usize, dst: &GuestSlice<'_>, off: usize) -> usize {
        match self {
            Piece::Own(b) => dst.write_at(off, b.get(from..).unwrap_or(&[])),
            Piece::Guest(g) => g.from(from).copy_to(dst, off),
        }
    }

    /// Appends the piece to `out` (tests and slow paths).
    pub fn extend_vec(&self, out: &mut Vec<u8>) {
        match self {
            Piece::Own(b) => out.extend_from_slice(b),
            Piece::Guest(g) => out.extend(g.to_vec()),
        }
    }
}

/// The frame `head ++ tail` with `edit` applied, as one vector: what a port puts on the
/// wire, for tests and slow paths (the fast path copies the pieces straight).
pub fn edited_frame(head: &[u8], tail: GuestSlice<'_>, edit: VlanEdit) -> Vec<u8> {
    let mut tag = [0; 4];
    let (pieces, n) = edited_pieces(head, tail, edit, &mut tag);
    let mut out = Vec::new();
    for p in &pieces[..n] {
        p.extend_vec(&mut out);
    }
    out
}

/// Splits the frame `head ++ tail`, with `edit` applied, into at most four consecutive
/// pieces (`pieces[..n]`). `head` holds at least the first 16 bytes whenever the frame
/// has them (see [`RxBatch::parts`]), so edits touch only `head`; a pushed tag is
/// written into `tag`, which the pieces borrow.
#[inline]
pub fn edited_pieces<'a>(
    head: &'a [u8],
    tail: GuestSlice<'a>,
    edit: VlanEdit,
    tag: &'a mut [u8; 4],
) -> ([Piece<'a>; 4], usize) {
    let none = Piece::Own(&[]);
    match edit {
        VlanEdit::Push(tci) if head.len() >= 12 => {
            let t = tci.to_be_bytes();
            *tag = [0x81, 0x00, t[0], t[1]];
            (
                [
                    Piece::Own(&head[..12]),
                    Piece::Own(&tag[..]),
                    Piece::Own(&head[12..]),
                    Piece::Guest(tail),
                ],
                4,
            )
        }
        VlanEdit::Pop if head.len() >= 16 => (
            [
                Piece::Own(&head[..12]),
                Piece::Own(&head[16..]),
                Piece::Guest(tail),
                none,
            ],
            3,
        ),
        _ => ([Piece::Own(head), Piece::Guest(tail), none, none], 2),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edit(frame: &[u8], e: VlanEdit) -> Vec<u8> {
        let cut = frame.len().min(HEAD_SNAPSHOT);
        let mut copy = frame.to_vec();
        // SAFETY: `copy` outlives the slice and nothing else writes it.
        let tail = unsafe { GuestSlice::new(copy.as_mut_ptr().add(cut), frame.len() - cut) };
        edited_frame(&frame[..cut], tail, e)
    }

    #[test]
    fn deferred_heads_match_eager_ones() {
        let frames: Vec<Vec<u8>> = [14usize, 60, 64, 65, 100, 128, 129, 1514]
            .iter()
            .map(|&l| (0..l).map(|x| (x * 7) as u8).collect())
            .collect();
        let (mut eager, mut late) = (RxBatch::default(), RxBatch::default());
        for f in &frames {
            // SAFETY: `frames` outlives both batches' use below.
            unsafe {
                eager.push(f.as_ptr(), f.len() as u32);
                late.push_deferred(f.as_ptr(), f.len() as u32);
            }
        }
        late.snapshot_heads();
        for i in 0..frames.len() {
            assert_eq!(late.head(i), eager.head(i));
            let (lh, lt) = late.parts(i);
            let (eh, et) = eager.parts(i);
            assert_eq!((lh, lt.to_vec()), (eh, et.to_vec()));
        }
    }

    #[test]
    fn stripping_an_outer_header_leaves_the_inner_frame_and_its_head() {
        for (len, n) in [
            (60 + 50, 50),
            (1514 + 50, 50),
            (200, 70),
            (129, 1),
            (178, 50),
        ] {
            let f: Vec<u8> = (0..len).map(|x| (x * 13 + 1) as u8).collect();
            let mut b = RxBatch::default();
            // SAFETY: `f` outlives the batch's use below.
            unsafe { b.push(f.as_ptr(), len as u32) };
            assert!(b.strip_front(0, n));
            let inner = &f[n..];
            assert_eq!(b.frame_len(0), inner.len());
            assert_eq!(b.head(0), &inner[..inner.len().min(HEAD_SNAPSHOT)]);
            let (h, t) = b.parts(0);
            assert_eq!([h, &t.to_vec()[..]].concat(), inner);
        }
        let f = [0u8; 50];
        let mut b = RxBatch::default();
        // SAFETY: as above.
        unsafe { b.push(f.as_ptr(), 50) };
        assert!(!b.strip_front(0, 50), "nothing would be left");
        assert_eq!(b.frame_len(0), 50);
    }

    #[test]
    fn vlan_push_and_pop_round_trip() {
        let f: Vec<u8> = (0..60).collect();
        let tagged = edit(&f, VlanEdit::Push(0x2064));
        assert_eq!(tagged.len(), 64);
        assert_eq!(&tagged[12..16], &[0x81, 0x00, 0x20, 0x64]);
        assert_eq!(&tagged[16..], &f[12..]);
        assert_eq!(edit(&tagged, VlanEdit::Pop), f);
        assert_eq!(edit(&f, VlanEdit::Keep), f);
        assert_eq!(edited_len(f.len(), VlanEdit::Push(1)), 64);
        assert_eq!(edited_len(10, VlanEdit::Push(1)), 10);
        let long: Vec<u8> = (0..200u32).map(|x| x as u8).collect();
        assert_eq!(edit(&edit(&long, VlanEdit::Push(7)), VlanEdit::Pop), long);
        assert_eq!(edit(&f[..10], VlanEdit::Push(1)), &f[..10]);
    }
}
