//! Packet buffers, preallocated at start-up on hugepages.
//!
//! A [`BufPool`] is one shared region cut into equal buffers, taken and given back
//! through a free stack. A pool belongs to one queue (and so to one polling core at a
//! time): there is no lock and no allocation after [`BufPool::new`].

use crate::mem::{MemError, SharedRegion};

/// The largest frame the switch accepts (jumbo 9000 MTU plus headers, rounded).
pub const MAX_FRAME: usize = 9728;

/// Fixed-size packet buffers in one hugepage-backed region.
pub struct BufPool {
    region: SharedRegion,
    buf_size: usize,
    free: Vec<u32>,
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
            free: (0..count).rev().collect(),
        })
    }

    /// Size of each buffer.
    pub fn buf_size(&self) -> usize {
        self.buf_size
    }

    /// Buffers currently free.
    pub fn available(&self) -> usize {
        self.free.len()
    }

    /// Whether the pool lives on hugepages.
    pub fn on_hugepages(&self) -> bool {
        self.region.on_hugepages()
    }

    /// Takes a free buffer's index.
    #[inline]
    pub fn alloc(&mut self) -> Option<u32> {
        self.free.pop()
    }

    /// Gives buffer `idx` back. Giving back a buffer twice is a bug and is ignored in
    /// release builds only if the stack is already full.
    #[inline]
    pub fn free(&mut self, idx: u32) {
        debug_assert!(!self.free.contains(&idx));
        if self.free.len() < self.free.capacity() {
            self.free.push(idx);
        }
    }

    /// The bytes of buffer `idx`.
    ///
    /// # Panics
    /// When `idx` is not a buffer of this pool.
    #[inline]
    pub fn buf(&mut self, idx: u32) -> &mut [u8] {
        let n = self.region.len() / self.buf_size;
        assert!((idx as usize) < n, "buffer index {idx} out of pool of {n}");
        // SAFETY: idx < n, so the buffer lies inside the region, and `&mut self` makes
        // this the only reference into the pool's memory.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.region.as_ptr().add(idx as usize * self.buf_size),
                self.buf_size,
            )
        }
    }

    /// Raw pointer to buffer `idx` (for frames handed out in an `RxBatch`).
    #[inline]
    pub fn buf_ptr(&self, idx: u32) -> *mut u8 {
        let n = self.region.len() / self.buf_size;
        assert!((idx as usize) < n, "buffer index {idx} out of pool of {n}");
        // SAFETY: idx < n, inside the region.
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
    fn alloc_free_cycle_never_allocates_twice() {
        let mut p = BufPool::new("t", 2048, 4, false).expect("pool");
        let a: Vec<u32> = (0..4).map(|_| p.alloc().expect("free buf")).collect();
        assert!(p.alloc().is_none());
        let mut s = a.clone();
        s.sort();
        s.dedup();
        assert_eq!(s.len(), 4);
        p.buf(a[0])[0] = 7;
        p.free(a[0]);
        assert_eq!(p.available(), 1);
    }
}
