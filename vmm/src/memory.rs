//! Guest RAM: one memfd, mapped shared, so that a vhost-user backend can map it too.
//!
//! With `hugepages` the memfd is `MFD_HUGETLB` (2 MiB pages); the VMM checks first that
//! the kernel has enough free huge pages and refuses with a clear error otherwise, because
//! a hugetlb mapping that runs out of pages kills the process with SIGBUS at the first
//! touch. With `prealloc` every page is allocated before the guest starts (`fallocate`),
//! so the guest never faults on the host and huge pages are committed up front; shared
//! memfd pages are charged to the file, not to the VMM's resident set until touched.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::Arc;

use vm_memory::mmap::{GuestRegionMmap, MmapRegion};
use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap};

use crate::layout;

/// Huge page size used for guest RAM.
pub const HUGE_PAGE: u64 = 2 << 20;

/// Errors while creating guest RAM.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The size is unusable.
    #[error("guest memory of {0} bytes: {1}")]
    Size(u64, &'static str),
    /// Not enough free huge pages.
    #[error(
        "guest memory of {need} MiB needs {pages} free 2 MiB huge pages, the kernel has {free} \
         (reserve more: echo N > /proc/sys/vm/nr_hugepages)"
    )]
    HugePages {
        /// MiB asked for.
        need: u64,
        /// Pages needed.
        pages: u64,
        /// Pages free.
        free: u64,
    },
    /// A system call failed.
    #[error("{0}: {1}")]
    Os(&'static str, io::Error),
}

/// One guest RAM range: where it is in the guest, in the memfd and in our address space.
#[derive(Debug, Clone, Copy)]
pub struct RamRange {
    /// Guest-physical start.
    pub gpa: u64,
    /// Length in bytes.
    pub len: u64,
    /// Offset in the memfd.
    pub file_offset: u64,
    /// Where it is mapped in the VMM.
    pub host_addr: u64,
}

/// Guest RAM.
pub struct GuestRam {
    file: Arc<File>,
    ranges: Vec<RamRange>,
    mem: GuestMemoryMmap,
    size: u64,
    hugepages: bool,
}

/// Free 2 MiB huge pages, from sysfs.
pub fn free_huge_pages() -> u64 {
    std::fs::read_to_string("/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// Checks that `size` bytes of guest RAM can be made, huge pages included, before anything
/// is created.
pub fn check(size: u64, hugepages: bool) -> Result<(), MemoryError> {
    if size < layout::MIN_MEM {
        return Err(MemoryError::Size(size, "smaller than the 16 MiB minimum"));
    }
    if size > (1 << 40) {
        return Err(MemoryError::Size(size, "larger than 1 TiB"));
    }
    if hugepages {
        if !size.is_multiple_of(HUGE_PAGE) {
            return Err(MemoryError::Size(
                size,
                "not a multiple of 2 MiB, needed with huge pages",
            ));
        }
        let pages = size / HUGE_PAGE;
        let free = free_huge_pages();
        if free < pages {
            return Err(MemoryError::HugePages {
                need: size >> 20,
                pages,
                free,
            });
        }
    } else if !size.is_multiple_of(4096) {
        return Err(MemoryError::Size(size, "not a multiple of 4 KiB"));
    }
    Ok(())
}

impl GuestRam {
    /// Creates `size` bytes of guest RAM laid out by [`layout::ram_ranges`].
    pub fn new(size: u64, hugepages: bool, prealloc: bool) -> Result<GuestRam, MemoryError> {
        check(size, hugepages)?;
        let mut flags = libc::MFD_CLOEXEC;
        if hugepages {
            flags |= libc::MFD_HUGETLB | libc::MFD_HUGE_2MB;
        }
        // SAFETY: the name is a NUL-terminated literal; the flags are valid.
        let fd = unsafe { libc::memfd_create(c"vnfhost-guest-ram".as_ptr(), flags) };
        if fd < 0 {
            return Err(MemoryError::Os("memfd_create", io::Error::last_os_error()));
        }
        // SAFETY: `fd` was just created and is owned by nobody else.
        let file = Arc::new(unsafe { File::from_raw_fd(fd) });
        file.set_len(size)
            .map_err(|e| MemoryError::Os("ftruncate guest memory", e))?;
        if prealloc {
            // SAFETY: plain syscall on our fd.
            let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, size as libc::off_t) };
            if rc != 0 {
                return Err(MemoryError::Os(
                    "preallocating guest memory",
                    io::Error::last_os_error(),
                ));
            }
        }
        let mut ranges = Vec::new();
        let mut regions = Vec::new();
        let mut off = 0;
        for (gpa, len) in layout::ram_ranges(size) {
            let region = MmapRegion::<()>::build(
                Some(FileOffset::from_arc(Arc::clone(&file), off)),
                len as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_NORESERVE,
            )
            .map_err(|e| MemoryError::Os("mmap guest memory", io::Error::other(e.to_string())))?;
            let host_addr = region.as_ptr() as u64;
            let region = GuestRegionMmap::new(region, GuestAddress(gpa)).ok_or(
                MemoryError::Size(size, "region does not fit the address space"),
            )?;
            regions.push(region);
            ranges.push(RamRange {
                gpa,
                len,
                file_offset: off,
                host_addr,
            });
            off += len;
        }
        let mem = GuestMemoryMmap::from_regions(regions)
            .map_err(|e| MemoryError::Os("guest memory map", io::Error::other(e.to_string())))?;
        Ok(GuestRam {
            file,
            ranges,
            mem,
            size,
            hugepages,
        })
    }

    /// The memory, for loaders and `vm-memory` accessors.
    pub fn mem(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// The RAM ranges.
    pub fn ranges(&self) -> &[RamRange] {
        &self.ranges
    }

    /// The memfd backing all ranges.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Total bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Whether the memory is on huge pages.
    pub fn hugepages(&self) -> bool {
        self.hugepages
    }

    /// End (exclusive) of RAM below the MMIO hole.
    pub fn low_end(&self) -> u64 {
        self.ranges[0].gpa + self.ranges[0].len
    }

    /// Translates `[gpa, gpa + len)` to a VMM address, if it is all in one RAM range.
    pub fn host_addr(&self, gpa: u64, len: u64) -> Option<u64> {
        self.ranges.iter().find_map(|r| {
            let end = gpa.checked_add(len)?;
            (gpa >= r.gpa && end <= r.gpa + r.len).then(|| r.host_addr + (gpa - r.gpa))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    #[test]
    fn ram_is_shared_through_the_memfd() {
        let ram = GuestRam::new(32 << 20, false, false).unwrap();
        ram.mem()
            .write_obj(0xdead_beef_u32, GuestAddress(0x1000))
            .unwrap();
        let mut buf = [0u8; 4];
        std::os::unix::fs::FileExt::read_exact_at(ram.file(), &mut buf, 0x1000).unwrap();
        assert_eq!(u32::from_le_bytes(buf), 0xdead_beef);
        assert!(ram.host_addr(0x1000, 4).is_some());
        assert!(ram.host_addr((32 << 20) - 2, 4).is_none());
        assert!(ram.host_addr(u64::MAX - 1, 4).is_none());
    }

    #[test]
    fn refuses_bad_sizes() {
        assert!(GuestRam::new(1 << 20, false, false).is_err());
        assert!(GuestRam::new((32 << 20) + 1, false, false).is_err());
        let e = GuestRam::new(1 << 38, true, false)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("huge pages"), "{e}");
    }
}
