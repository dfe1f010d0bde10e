//! Packet buffers, preallocated at start-up on hugepages.
//!
//! A [`BufPool`] is one shared region cut into `count` equal buffers, owned by one queue
//! (and so by one polling core at a time). Buffer `i` serves frame `i` of a burst: a
//! receive burst never holds more frames than the pool has buffers, and the burst is
//! over before the next one reuses them, so no free list is needed and nothing is
//! allocated after [`BufPool::new`].

use crate::mem::{MemError, SharedRegion};

/// The largest frame the switch accepts (jumbo 9000 MTU plus headers, rounded).
pub const MAX_FRAME: usize = 9728;

/// Fixed-size packet buffers in one hugepage-backed region.
pub struct BufPool {
    region: SharedRegion,
    buf_size: usize,
    count: u32,
}

impl BufPool {
    /// `count` buffers of `buf_size` bytes (rounded up to 64), on hugepages when
    /// `hugepages` and some are reserved (else normal pages, with a warning).
    pub fn new(
        name: &str,
        buf_size: usize,
        count: u32,
        hugepages: bool,
    ) -> Result<BufPool, MemError> {
        let buf_size = buf_size.div_ceil(64) * 64;
        let region = SharedRegion::new(name, (buf_size as u64) * u64::from(count), hugepages)?;
        Ok(BufPool {
            region,
            buf_size,
            count,
        })
    }

    /// Size of each buffer.
    pub fn buf_size(&self) -> usize {
        self.buf_size
    }

    /// Number of buffers.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// Whether the pool lives on hugepages.
    pub fn on_hugepages(&self) -> bool {
        self.region.on_hugepages()
    }

    /// The bytes of buffer `idx`.
    ///
    /// # Panics
    /// When `idx` is not a buffer of this pool.
    #[inline]
    pub fn buf(&mut self, idx: u32) -> &mut [u8] {
        let p = self.buf_ptr(idx);
        // SAFETY: buf_ptr checked idx, so buf_size bytes at p lie inside the region, and
        // `&mut self` makes this the only reference into the pool's memory.
        unsafe { std::slice::from_raw_parts_mut(p, self.buf_size) }
    }

    /// Raw pointer to buffer `idx` (for frames handed out in an `RxBatch`).
    ///
    /// # Panics
    /// When `idx` is not a buffer of this pool.
    #[inline]
    pub fn buf_ptr(&self, idx: u32) -> *mut u8 {
        assert!(
            idx < self.count,
            "buffer index {idx} out of pool of {}",
            self.count
        );
        // SAFETY: idx < count, so the buffer lies inside the region of count × buf_size.
        unsafe { self.region.as_ptr().add(idx as usize * self.buf_size) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn free_hugepages() -> u64 {
        std::fs::read_to_string("/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }

    #[test]
    fn buffers_sit_on_hugepages_when_some_are_free() {
        if free_hugepages() < 4 {
            println!("SKIPPED: buffers_sit_on_hugepages_when_some_are_free: fewer than 4 free 2 MiB hugepages (run scripts/setup.sh)");
            return;
        }
        let p = BufPool::new("t-huge", MAX_FRAME, 32, true).expect("pool");
        assert!(p.on_hugepages());
        let q = BufPool::new("t-small", 2048, 4, false).expect("pool");
        assert!(!q.on_hugepages());
    }

    #[test]
    fn buffers_are_disjoint_and_bounded() {
        let mut p = BufPool::new("t", 2000, 4, false).expect("pool");
        assert_eq!(p.buf_size(), 2048);
        for i in 0..4 {
            p.buf(i).fill(i as u8);
        }
        for i in 0..4 {
            assert!(
                p.buf(i).iter().all(|&b| b == i as u8),
                "buffer {i} overlaps another"
            );
        }
    }
}
