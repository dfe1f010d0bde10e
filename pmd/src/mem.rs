//! Shared memory: hugepage-backed regions we create, and guest memory tables a
//! vhost-user frontend hands us.
//!
//! Every address that comes from a guest or a peer is translated here, and only here,
//! into a host pointer, after checking that the whole range `[addr, addr + len)` lies
//! inside one mapped region. A range that does not is refused; nothing past this module
//! trusts a guest address.

use std::fs::File;
use std::marker::PhantomData;
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::Arc;

/// Errors of memory set-up.
#[derive(Debug, thiserror::Error)]
pub enum MemError {
    /// `memfd_create` failed.
    #[error("memfd_create({name}): {source}")]
    Memfd {
        /// The memfd's name.
        name: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// Sizing the memfd failed.
    #[error("ftruncate of {size} bytes: {source}")]
    Truncate {
        /// The size asked for.
        size: u64,
        /// The OS error.
        source: std::io::Error,
    },
    /// `mmap` failed.
    #[error("mmap of {size} bytes at offset {offset}: {source}")]
    Mmap {
        /// Bytes asked for.
        size: u64,
        /// File offset asked for.
        offset: u64,
        /// The OS error.
        source: std::io::Error,
    },
    /// A region the peer described is unusable.
    #[error("bad memory region: {0}")]
    BadRegion(&'static str),
}

/// A shared mapping, unmapped on drop.
#[derive(Debug)]
pub struct Mapping {
    ptr: *mut u8,
    len: usize,
    /// Set for guest memory: the registration that lets the switch survive the file
    /// shrinking under it (see [`crate::fault`]).
    guard: Option<crate::fault::Guard>,
}

// SAFETY: a Mapping is a plain address range; all access through it goes through raw
// pointers whose users document their own synchronisation.
unsafe impl Send for Mapping {}
// SAFETY: as above; the mapping itself is immutable after creation.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps `len` bytes of `fd` at `offset`, shared and read-write.
    pub fn map_fd(fd: i32, len: u64, offset: u64) -> Result<Mapping, MemError> {
        let map_err = |source| MemError::Mmap {
            size: len,
            offset,
            source,
        };
        let ulen = usize::try_from(len).map_err(|_| MemError::BadRegion("size overflows"))?;
        let off =
            libc::off_t::try_from(offset).map_err(|_| MemError::BadRegion("offset overflows"))?;
        if ulen == 0 {
            return Err(MemError::BadRegion("empty region"));
        }
        // SAFETY: mmap with a null hint creates a new mapping and touches no existing
        // memory; the result is checked against MAP_FAILED.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                ulen,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                off,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(map_err(std::io::Error::last_os_error()));
        }
        Ok(Mapping {
            ptr: ptr.cast(),
            len: ulen,
            guard: None,
        })
    }

    /// Maps guest memory like [`map_fd`](Self::map_fd) and registers it with
    /// [`crate::fault`], so that a `SIGBUS` in it (the frontend truncated its file) is
    /// recovered and counted instead of ending the process.
    ///
    /// The length is rounded up to whole pages of the file (huge pages for hugetlbfs):
    /// the kernel maps whole pages anyway, and a hugetlb range can only be unmapped or
    /// replaced whole.
    pub fn map_guest(fd: i32, len: u64, offset: u64) -> Result<Mapping, MemError> {
        let page = crate::fault::page_size_of(fd) as u64;
        let whole = len
            .checked_next_multiple_of(page)
            .ok_or(MemError::BadRegion("size overflows"))?;
        let mut m = Self::map_fd(fd, whole, offset)?;
        m.guard = Some(
            crate::fault::Guard::register(m.ptr, m.len).ok_or(MemError::BadRegion(
                "too many guest memory mappings in this switch",
            ))?,
        );
        Ok(m)
    }

    /// `SIGBUS` faults recovered in this mapping (always 0 unless made by
    /// [`map_guest`](Self::map_guest)).
    pub fn faults(&self) -> u64 {
        self.guard.as_ref().map_or(0, |g| g.faults())
    }

    /// Start of the mapping.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr
    }

    /// Length of the mapping in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the mapping is empty (never true for a live mapping).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // Unregister first: the range may be reused by another mapping once unmapped.
        drop(self.guard.take());
        // SAFETY: ptr/len are exactly what mmap returned; nobody uses the range after
        // the owner (and every Arc clone of it) is gone.
        unsafe {
            libc::munmap(self.ptr.cast(), self.len);
        }
    }
}

/// A memfd we created and mapped, on hugepages when the kernel has them reserved.
#[derive(Debug)]
pub struct SharedRegion {
    file: File,
    map: Mapping,
    hugepages: bool,
}

const HUGE_2M: u64 = 2 << 20;

impl SharedRegion {
    /// Creates a region of at least `size` bytes. With `hugepages`, it tries
    /// `MFD_HUGETLB` first and, when no hugepages are free, falls back to normal pages
    /// with a warning. The memory is zeroed.
    pub fn new(name: &str, size: u64, hugepages: bool) -> Result<SharedRegion, MemError> {
        if hugepages {
            let hsize = size.div_ceil(HUGE_2M) * HUGE_2M;
            match Self::create(name, hsize, libc::MFD_HUGETLB) {
                Ok(r) => {
                    return Ok(SharedRegion {
                        hugepages: true,
                        ..r
                    })
                }
                Err(e) => tracing::warn!(
                    "no hugepages for {name} ({hsize} bytes): {e}; falling back to normal \
                     pages (reserve some with: echo 1024 > /proc/sys/vm/nr_hugepages)"
                ),
            }
        }
        Self::create(name, size, 0)
    }

    fn create(name: &str, size: u64, flags: libc::c_uint) -> Result<SharedRegion, MemError> {
        let cname =
            std::ffi::CString::new(name).map_err(|_| MemError::BadRegion("name has NUL"))?;
        // SAFETY: cname is a valid NUL-terminated string; the fd is checked below.
        let fd = unsafe { libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC | flags) };
        if fd < 0 {
            return Err(MemError::Memfd {
                name: name.into(),
                source: std::io::Error::last_os_error(),
            });
        }
        // SAFETY: fd is a fresh descriptor that nothing else owns.
        let file = unsafe { File::from_raw_fd(fd) };
        file.set_len(size)
            .map_err(|source| MemError::Truncate { size, source })?;
        let map = Mapping::map_fd(file.as_raw_fd(), size, 0)?;
        if flags & libc::MFD_HUGETLB != 0 {
            // Touch every page now: a hugetlb mapping that cannot be backed faults with
            // SIGBUS later, so find out here while an error can still be returned.
            // SAFETY: the range is our fresh mapping of `size` bytes.
            let r =
                unsafe { libc::madvise(map.as_ptr().cast(), map.len(), libc::MADV_POPULATE_WRITE) };
            if r != 0 {
                return Err(MemError::Mmap {
                    size,
                    offset: 0,
                    source: std::io::Error::last_os_error(),
                });
            }
        }
        Ok(SharedRegion {
            file,
            map,
            hugepages: false,
        })
    }

    /// The memfd, to pass to a peer.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Start of the mapping.
    pub fn as_ptr(&self) -> *mut u8 {
        self.map.as_ptr()
    }

    /// Size in bytes.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the region is empty (never for a created region).
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Whether the region sits on hugepages.
    pub fn on_hugepages(&self) -> bool {
        self.hugepages
    }
}

/// One region of a guest memory table.
#[derive(Clone, Debug)]
pub struct GuestRegion {
    /// Guest physical address of the first byte.
    pub gpa: u64,
    /// Size in bytes.
    pub size: u64,
    /// The frontend's virtual address of the first byte (vring addresses use these).
    pub uaddr: u64,
    host: *mut u8,
    _map: Option<Arc<Mapping>>,
}

// SAFETY: the raw pointer points into `_map`, which the region keeps alive.
unsafe impl Send for GuestRegion {}
// SAFETY: as above.
unsafe impl Sync for GuestRegion {}

impl GuestRegion {
    /// Maps a region the frontend described: `size` bytes starting `mmap_offset` bytes
    /// into `fd`.
    pub fn map(
        fd: &File,
        gpa: u64,
        size: u64,
        uaddr: u64,
        mmap_offset: u64,
    ) -> Result<GuestRegion, MemError> {
        if size == 0 {
            return Err(MemError::BadRegion("zero-sized region"));
        }
        if gpa.checked_add(size).is_none() || uaddr.checked_add(size).is_none() {
            return Err(MemError::BadRegion("region wraps the address space"));
        }
        let total = mmap_offset
            .checked_add(size)
            .ok_or(MemError::BadRegion("offset + size overflows"))?;
        // A mapping past the end of the file would fault (SIGBUS) on first touch:
        // refuse it here. A frontend that shrinks the file later faults the switch;
        // `crate::fault` recovers that and the port is reset.
        let file_len = fd
            .metadata()
            .map_err(|e| MemError::Mmap {
                size,
                offset: mmap_offset,
                source: e,
            })?
            .len();
        if total > file_len {
            return Err(MemError::BadRegion(
                "region extends past the end of its file",
            ));
        }
        let map = Mapping::map_guest(fd.as_raw_fd(), total, 0)?;
        let off =
            usize::try_from(mmap_offset).map_err(|_| MemError::BadRegion("offset overflows"))?;
        // SAFETY: off < total = mapping length, so the result stays inside the mapping.
        let host = unsafe { map.as_ptr().add(off) };
        Ok(GuestRegion {
            gpa,
            size,
            uaddr,
            host,
            _map: Some(Arc::new(map)),
        })
    }

    /// `SIGBUS` faults recovered in this region's mapping: non-zero means the frontend
    /// shrank the file under us and the region is no longer its memory.
    pub fn faults(&self) -> u64 {
        self._map.as_ref().map_or(0, |m| m.faults())
    }
}

/// A guest memory table: the regions a frontend shared with us.
#[derive(Clone, Debug, Default)]
pub struct GuestMemory {
    regions: Vec<GuestRegion>,
}

impl GuestMemory {
    /// Maximum number of regions we accept (`GET_MAX_MEM_SLOTS`).
    pub const MAX_REGIONS: usize = 32;

    /// A table of these regions; they must not overlap in guest-physical space.
    pub fn new(regions: Vec<GuestRegion>) -> Result<GuestMemory, MemError> {
        if regions.len() > Self::MAX_REGIONS {
            return Err(MemError::BadRegion("too many memory regions"));
        }
        for (i, a) in regions.iter().enumerate() {
            for b in &regions[i + 1..] {
                if a.gpa < b.gpa + b.size && b.gpa < a.gpa + a.size {
                    return Err(MemError::BadRegion("regions overlap"));
                }
            }
        }
        Ok(GuestMemory { regions })
    }

    /// The regions.
    pub fn regions(&self) -> &[GuestRegion] {
        &self.regions
    }

    /// Bytes of guest memory the table describes.
    pub fn size(&self) -> u64 {
        self.regions.iter().map(|r| r.size).sum()
    }

    /// `SIGBUS` faults recovered in any region (see [`GuestRegion::faults`]).
    pub fn faults(&self) -> u64 {
        self.regions.iter().map(|r| r.faults()).sum()
    }

    /// Host address of guest-physical range `[gpa, gpa + len)`, if it lies inside one
    /// region.
    #[inline]
    pub fn gpa_to_host(&self, gpa: u64, len: u64) -> Option<*mut u8> {
        for r in &self.regions {
            let off = gpa.wrapping_sub(r.gpa);
            if gpa >= r.gpa && off <= r.size && len <= r.size - off {
                // SAFETY: off + len <= size, so the pointer stays in the mapping.
                return Some(unsafe { r.host.add(off as usize) });
            }
        }
        None
    }

    /// Host address of the frontend-virtual range `[uva, uva + len)`, if it lies
    /// inside one region.
    pub fn uva_to_host(&self, uva: u64, len: u64) -> Option<*mut u8> {
        for r in &self.regions {
            let off = uva.wrapping_sub(r.uaddr);
            if uva >= r.uaddr && off <= r.size && len <= r.size - off {
                // SAFETY: off + len <= size, so the pointer stays in the mapping.
                return Some(unsafe { r.host.add(off as usize) });
            }
        }
        None
    }
}

/// A bounded view of bytes that another party — a guest, a peer process — may write at
/// any moment: the only way the data path reads or writes guest memory.
///
/// It never hands out a Rust reference (`&[u8]`) to those bytes: a reference promises
/// the compiler that they do not change, which a guest can break at will. Every access
/// is a bounds-checked copy between the guest's bytes and memory of our own, done with
/// raw-pointer loads and stores; a byte the guest changes meanwhile is read as either
/// value, and nothing that was read is ever read again and assumed equal. This is the
/// role vm-memory's `VolatileSlice` plays; the copies here are unrolled for the short
/// lengths the fast path copies most (see `copy_small`).
///
/// The copies are plain raw-pointer copies, not volatile accesses (32-byte moves and
/// `memcpy`, as vm-memory's bulk copies are). Strictly, Rust's memory model leaves a
/// read undefined when another process writes the same bytes meanwhile; what this type
/// guarantees is the part the compiler can act on: no reference that promises the
/// bytes are stable, and every decision taken on a private copy.
#[derive(Clone, Copy)]
pub struct GuestSlice<'a> {
    ptr: *mut u8,
    len: usize,
    _life: PhantomData<&'a ()>,
}

impl std::fmt::Debug for GuestSlice<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GuestSlice({:p}, {} bytes)", self.ptr, self.len)
    }
}

impl<'a> GuestSlice<'a> {
    /// The slice of `len` bytes at `ptr`.
    ///
    /// # Safety
    /// `ptr..ptr + len` must stay mapped, readable and writable for `'a` (it may be
    /// written by others meanwhile: that is what this type is for).
    #[inline]
    pub unsafe fn new(ptr: *mut u8, len: usize) -> GuestSlice<'a> {
        GuestSlice {
            ptr,
            len,
            _life: PhantomData,
        }
    }

    /// An empty slice.
    #[inline]
    pub fn empty() -> GuestSlice<'a> {
        GuestSlice {
            ptr: std::ptr::NonNull::dangling().as_ptr(),
            len: 0,
            _life: PhantomData,
        }
    }

    /// Length in bytes.
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds no byte.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The `len` bytes from `off`, if they lie inside.
    #[inline]
    pub fn get(&self, off: usize, len: usize) -> Option<GuestSlice<'a>> {
        if off <= self.len && len <= self.len - off {
            // SAFETY: off + len <= self.len: inside the range `new` vouched for.
            Some(unsafe { GuestSlice::new(self.ptr.add(off), len) })
        } else {
            None
        }
    }

    /// The bytes from `off` on (empty when `off` is past the end).
    #[inline]
    pub fn from(&self, off: usize) -> GuestSlice<'a> {
        self.get(off, self.len.saturating_sub(off))
            .unwrap_or_else(GuestSlice::empty)
    }

    /// Copies the first `min(len, dst.len())` bytes into `dst`; returns how many.
    #[inline]
    pub fn read_into(&self, dst: &mut [u8]) -> usize {
        let n = self.len.min(dst.len());
        // SAFETY: n bytes are inside both ranges; `dst` is our own memory, which the
        // guest cannot reach, so they do not overlap.
        unsafe { copy_bytes(self.ptr, dst.as_mut_ptr(), n) };
        n
    }

    /// Copies `src` in at offset `off`; returns the bytes written (fewer when the
    /// slice ends first).
    #[inline]
    pub fn write_at(&self, off: usize, src: &[u8]) -> usize {
        let Some(n) = self.len.checked_sub(off).map(|room| room.min(src.len())) else {
            return 0;
        };
        // SAFETY: off + n <= len; `src` is ours and cannot overlap guest memory
        // (a caller with a reference into guest memory would already be wrong).
        unsafe { copy_bytes(src.as_ptr(), self.ptr.add(off), n) };
        n
    }

    /// Copies the first `min(len, dst.len() - off)` bytes into `dst` at `off` (guest to
    /// guest: a frame from one VM's buffer into another's); returns how many.
    #[inline]
    pub fn copy_to(&self, dst: &GuestSlice<'_>, off: usize) -> usize {
        let Some(n) = dst.len.checked_sub(off).map(|room| room.min(self.len)) else {
            return 0;
        };
        // SAFETY: both ranges are inside their slices. Two different guests' buffers do
        // not overlap; if one guest made them overlap (the same buffer posted twice),
        // `copy` tolerates it where `copy_nonoverlapping` would not.
        unsafe { std::ptr::copy(self.ptr, dst.ptr.add(off), n) };
        n
    }

    /// The bytes, copied out.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = vec![0u8; self.len];
        self.read_into(&mut v);
        v
    }

    /// Start address, for system calls that read the bytes (`writev`).
    #[inline]
    pub fn as_ptr(&self) -> *const u8 {
        self.ptr
    }
}

/// Copies `n` bytes from `src` to `dst` (not overlapping): the unrolled moves of
/// `copy_small` up to 128 bytes, `memcpy` above.
///
/// # Safety
/// `src..src + n` readable, `dst..dst + n` writable, not overlapping.
#[inline(always)]
pub(crate) unsafe fn copy_bytes(src: *const u8, dst: *mut u8, n: usize) {
    // SAFETY: the caller's contract, passed on.
    unsafe {
        if n <= 128 {
            copy_small(src, dst, n);
        } else {
            std::ptr::copy_nonoverlapping(src, dst, n);
        }
    }
}

/// Copies `n <= 128` bytes without a call into libc: two overlapping 32-, 16- or 8-byte
/// moves (four 32-byte moves above 64 bytes), which is what `memcpy` would do after a
/// call and a dispatch on the size. Each arm loads all it moves before it stores, so a
/// source that changes meanwhile still yields one copy of each move.
///
/// # Safety
/// `src..src + n` readable, `dst..dst + n` writable, not overlapping, `n <= 128`.
#[inline(always)]
pub(crate) unsafe fn copy_small(src: *const u8, dst: *mut u8, n: usize) {
    debug_assert!(n <= 128);
    // SAFETY: every read and write below stays within the first `n` bytes of `src`
    // and `dst` (the second move of each pair starts at `n - 32`, `n - 16` or `n - 8`,
    // the last two of the four at `n - 64` and `n - 32`, which the arm's guard keeps
    // non-negative), which the caller guarantees; unaligned reads and writes of byte
    // arrays are valid at any address.
    unsafe {
        if n > 64 {
            let a = src.cast::<[u8; 32]>().read_unaligned();
            let b = src.add(32).cast::<[u8; 32]>().read_unaligned();
            let c = src.add(n - 64).cast::<[u8; 32]>().read_unaligned();
            let d = src.add(n - 32).cast::<[u8; 32]>().read_unaligned();
            dst.cast::<[u8; 32]>().write_unaligned(a);
            dst.add(32).cast::<[u8; 32]>().write_unaligned(b);
            dst.add(n - 64).cast::<[u8; 32]>().write_unaligned(c);
            dst.add(n - 32).cast::<[u8; 32]>().write_unaligned(d);
        } else if n >= 32 {
            let a = src.cast::<[u8; 32]>().read_unaligned();
            let b = src.add(n - 32).cast::<[u8; 32]>().read_unaligned();
            dst.cast::<[u8; 32]>().write_unaligned(a);
            dst.add(n - 32).cast::<[u8; 32]>().write_unaligned(b);
        } else if n >= 16 {
            let a = src.cast::<[u8; 16]>().read_unaligned();
            let b = src.add(n - 16).cast::<[u8; 16]>().read_unaligned();
            dst.cast::<[u8; 16]>().write_unaligned(a);
            dst.add(n - 16).cast::<[u8; 16]>().write_unaligned(b);
        } else if n >= 8 {
            let a = src.cast::<[u8; 8]>().read_unaligned();
            let b = src.add(n - 8).cast::<[u8; 8]>().read_unaligned();
            dst.cast::<[u8; 8]>().write_unaligned(a);
            dst.add(n - 8).cast::<[u8; 8]>().write_unaligned(b);
        } else {
            std::ptr::copy_nonoverlapping(src, dst, n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_slices_copy_within_bounds_only() {
        let r = SharedRegion::new("gs", 4096, false).expect("memfd");
        // SAFETY: the region is 4096 bytes and outlives the slice.
        let g = unsafe { GuestSlice::new(r.as_ptr(), 100) };
        assert_eq!(g.write_at(90, &[7u8; 20]), 10, "stops at the end");
        assert_eq!(g.write_at(101, &[1]), 0);
        let mut out = [0u8; 200];
        assert_eq!(g.read_into(&mut out), 100);
        assert_eq!(&out[90..100], &[7u8; 10]);
        assert!(g.get(50, 51).is_none());
        assert_eq!(g.from(95).len(), 5);
        assert!(g.from(500).is_empty());
        // SAFETY: as above, bytes 200..300 of the region.
        let h = unsafe { GuestSlice::new(r.as_ptr().add(200), 100) };
        assert_eq!(g.from(90).copy_to(&h, 95), 5);
        assert_eq!(h.to_vec()[95..], [7u8; 5]);
    }

    #[test]
    fn small_copies_copy_exactly_n_bytes_for_every_length() {
        let src: Vec<u8> = (1..=144).collect();
        for n in 0..=128 {
            let mut dst = [0u8; 144];
            // SAFETY: both buffers hold 144 >= n bytes and do not overlap.
            unsafe { copy_small(src.as_ptr(), dst.as_mut_ptr(), n) };
            assert_eq!(&dst[..n], &src[..n], "n = {n}");
            assert!(
                dst[n..].iter().all(|&b| b == 0),
                "n = {n}: wrote past the end"
            );
        }
    }

    fn table() -> (SharedRegion, GuestMemory) {
        let r = SharedRegion::new("t", 1 << 20, false).expect("memfd");
        let g = GuestRegion::map(r.file(), 0x1000_0000, 1 << 20, 0x7000_0000, 0).expect("map");
        (r, GuestMemory::new(vec![g]).expect("table"))
    }

    #[test]
    fn translation_checks_whole_range() {
        let (_r, m) = table();
        assert!(m.gpa_to_host(0x1000_0000, 1 << 20).is_some());
        assert!(m.gpa_to_host(0x1000_0000 + (1 << 20) - 1, 2).is_none());
        assert!(m.gpa_to_host(0x0fff_ffff, 1).is_none());
        assert!(m.gpa_to_host(u64::MAX, 2).is_none());
        assert!(m.uva_to_host(0x7000_0010, 16).is_some());
        assert!(m.uva_to_host(0x1000_0000, 16).is_none());
    }

    #[test]
    fn both_views_alias_the_same_bytes() {
        let (r, m) = table();
        let p = m.gpa_to_host(0x1000_0040, 1).expect("in range");
        // SAFETY: both pointers are in live mappings of the same memfd page.
        unsafe {
            *p = 0xab;
            assert_eq!(*r.as_ptr().add(0x40), 0xab);
        }
    }

    #[test]
    fn overlapping_regions_are_refused() {
        let r = SharedRegion::new("t", 1 << 16, false).expect("memfd");
        let a = GuestRegion::map(r.file(), 0, 1 << 16, 0, 0).expect("map");
        let b = GuestRegion::map(r.file(), 0x8000, 1 << 16, 0x10000, 0).expect("map");
        assert!(GuestMemory::new(vec![a, b]).is_err());
    }
}
