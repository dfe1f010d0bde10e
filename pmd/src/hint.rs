//! Cache hints for the fast path.
//!
//! A polling core spends most of a small frame's cycles waiting for cache lines that the
//! other side of a ring (the guest, on another core) wrote last: avail entries,
//! descriptors, frame headers. Asking for those lines a burst ahead lets the misses
//! overlap instead of queueing one after the other, as DPDK's vhost library does with
//! `rte_prefetch0`.

/// Starts loading the cache line holding `p` into every cache level.
///
/// A hint only: it never faults, whatever `p` is, and does nothing on targets without
/// a prefetch instruction.
#[inline(always)]
pub fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        // SAFETY: PREFETCHT0 is part of SSE, which every x86_64 CPU has; it reads no
        // memory architecturally and cannot fault, whatever the address.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(p.cast::<i8>()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Starts fetching the cache line holding `p` for writing (`PREFETCHW`): the line is
/// taken exclusive ahead of the stores, so that they do not queue in the store buffer
/// behind a read-for-ownership from the core that read the line last.
///
/// A hint only, like [`prefetch`]. Processors without `PREFETCHW` execute its encoding
/// (`0F 0D /1`) as a no-op.
#[inline(always)]
pub fn prefetch_write<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: PREFETCHW reads and writes nothing architecturally and cannot fault,
    // whatever the address; it touches no register but its address operand.
    unsafe {
        std::arch::asm!("prefetchw [{0}]", in(reg) p, options(nostack, preserves_flags, readonly));
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}
