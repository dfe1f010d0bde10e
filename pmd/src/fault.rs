//! Surviving guest memory that shrinks under the switch.
//!
//! A vhost-user frontend shares its memory as file descriptors (memfds, hugetlbfs
//! files). If it truncates such a file after the switch mapped it, the next access to a
//! page past the new end raises `SIGBUS` — by default the end of the whole switch and of
//! every tenant on it. Hugetlbfs files (what DPDK hands out) cannot be sealed against
//! shrinking, so refusing unsealed files is not an option.
//!
//! Instead every guest mapping is registered here, in a fixed table the signal handler
//! can read without locks or allocation. A `SIGBUS` inside a registered mapping is
//! recovered: the handler maps anonymous memory over the faulting page (or huge page),
//! counts the fault on the mapping's slot and returns, so the faulting instruction
//! runs again and reads zeros. The port's control thread sees the count (within its
//! 200 ms wait) and resets the port. A `SIGBUS` anywhere else goes to the handler that
//! was installed before ours (Rust's own, which reports a stack overflow or dies), so
//! real bugs still crash.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, Once, OnceLock};

/// How many guest mappings can be registered at once: 32 regions for each of 32
/// frontends. A registration beyond this is refused (the memory table is refused).
pub const SLOTS: usize = 1024;

struct Slot {
    /// Mapping length; 0 while the slot is free. Written last on registration, first
    /// on release.
    len: AtomicUsize,
    start: AtomicUsize,
    /// Page size of the mapping (4 KiB, or the huge page size of a hugetlbfs file).
    page: AtomicUsize,
    /// Faults recovered in this mapping.
    faults: AtomicU64,
}

#[allow(clippy::declare_interior_mutable_const)]
const FREE: Slot = Slot {
    len: AtomicUsize::new(0),
    start: AtomicUsize::new(0),
    page: AtomicUsize::new(4096),
    faults: AtomicU64::new(0),
};

static TABLE: [Slot; SLOTS] = [FREE; SLOTS];
/// Serialises registration (never taken by the signal handler).
static CLAIM: Mutex<()> = Mutex::new(());
static INSTALL: Once = Once::new();
/// The `SIGBUS` action that was in place before ours, called for faults that are not
/// in a guest mapping.
static PREVIOUS: OnceLock<libc::sigaction> = OnceLock::new();

/// A registered guest mapping; released on drop (before the mapping is unmapped).
#[derive(Debug)]
pub struct Guard {
    slot: usize,
}

impl Guard {
    /// Registers `[start, start + len)`, whose pages are `page` bytes, and makes sure
    /// the handler is installed. `None` when every slot is taken.
    pub fn register(start: *mut u8, len: usize, page: usize) -> Option<Guard> {
        INSTALL.call_once(install);
        let _g = CLAIM.lock().unwrap_or_else(|e| e.into_inner());
        let slot = TABLE
            .iter()
            .position(|s| s.len.load(Ordering::Relaxed) == 0)?;
        let s = &TABLE[slot];
        s.start.store(start as usize, Ordering::Relaxed);
        s.page.store(page.max(4096), Ordering::Relaxed);
        s.faults.store(0, Ordering::Relaxed);
        s.len.store(len, Ordering::Release);
        Some(Guard { slot })
    }

    /// Faults recovered in this mapping so far.
    pub fn faults(&self) -> u64 {
        TABLE[self.slot].faults.load(Ordering::Relaxed)
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _g = CLAIM.lock().unwrap_or_else(|e| e.into_inner());
        TABLE[self.slot].len.store(0, Ordering::Release);
    }
}

/// Page size backing `fd`: the huge page size for a hugetlbfs file (memfds created with
/// `MFD_HUGETLB` included), else 4 KiB.
pub fn page_size_of(fd: i32) -> usize {
    const HUGETLBFS_MAGIC: i64 = 0x9584_58f6;
    // SAFETY: fstatfs writes one statfs into the zeroed struct we own.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above; fd is a descriptor the caller holds open.
    if unsafe { libc::fstatfs(fd, &mut st) } == 0 && st.f_type as i64 == HUGETLBFS_MAGIC {
        (st.f_bsize as usize).max(4096)
    } else {
        4096
    }
}

fn install() {
    // SAFETY: sigaction with a null new action only reads the current one into `old`,
    // a zeroed struct we own.
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::sigaction(libc::SIGBUS, std::ptr::null(), &mut old) } != 0 {
        tracing::warn!("cannot read the SIGBUS action; a frontend that shrinks its memory will crash the switch");
        return;
    }
    let _ = PREVIOUS.set(old);
    // SAFETY: a zeroed sigaction with our handler, SA_SIGINFO (three-argument form) and
    // SA_ONSTACK (Rust gives threads an alternate signal stack), and an empty mask.
    let ok = unsafe {
        let mut act: libc::sigaction = std::mem::zeroed();
        let handler: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
            on_sigbus;
        act.sa_sigaction = handler as usize;
        act.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
        libc::sigemptyset(&mut act.sa_mask);
        libc::sigaction(libc::SIGBUS, &act, std::ptr::null_mut()) == 0
    };
    if !ok {
        tracing::warn!("cannot install the SIGBUS handler; a frontend that shrinks its memory will crash the switch");
    }
}

/// The handler: only atomics, `mmap` and `sigaction`, no lock, no allocation.
extern "C" fn on_sigbus(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for a SA_SIGINFO handler; si_addr is
    // the faulting address for SIGBUS.
    let addr = unsafe { (*info).si_addr() } as usize;
    for s in TABLE.iter() {
        let len = s.len.load(Ordering::Acquire);
        if len == 0 {
            continue;
        }
        let start = s.start.load(Ordering::Relaxed);
        if addr < start || addr - start >= len {
            continue;
        }
        let page = s.page.load(Ordering::Relaxed);
        let at = (addr & !(page - 1)).max(start);
        let n = page.min(start + len - at);
        // SAFETY: [at, at + n) lies inside a live guest mapping of this process (the
        // slot is released before the mapping is unmapped, and nothing reads guest
        // memory after its port let go of it). Replacing those pages with anonymous
        // zeroed ones changes only what the switch reads from a frontend that broke
        // its memory; MAP_FIXED over an existing range is atomic.
        let r = unsafe {
            libc::mmap(
                at as *mut libc::c_void,
                n,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        if r != libc::MAP_FAILED {
            s.faults.fetch_add(1, Ordering::Relaxed);
            return;
        }
        break;
    }
    chain(sig, info, ctx);
}

/// Hands a fault that is not ours to the previous action, or to the default one.
fn chain(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    if let Some(prev) = PREVIOUS.get() {
        let h = prev.sa_sigaction;
        if h != libc::SIG_DFL && h != libc::SIG_IGN {
            if prev.sa_flags & libc::SA_SIGINFO != 0 {
                // SAFETY: the previous action was installed as a three-argument
                // handler (SA_SIGINFO), so `h` is such a function; we pass it the
                // arguments the kernel gave us.
                let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                    unsafe { std::mem::transmute(h) };
                f(sig, info, ctx);
            } else {
                // SAFETY: without SA_SIGINFO the previous handler takes one argument.
                let f: extern "C" fn(libc::c_int) = unsafe { std::mem::transmute(h) };
                f(sig);
            }
            return;
        }
    }
    // Default action: restore it and return; the fault repeats and ends the process
    // with SIGBUS, as it would have without us.
    // SAFETY: a zeroed sigaction is SIG_DFL with an empty mask.
    unsafe {
        let mut dfl: libc::sigaction = std::mem::zeroed();
        dfl.sa_sigaction = libc::SIG_DFL;
        libc::sigaction(libc::SIGBUS, &dfl, std::ptr::null_mut());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem::Mapping;

    #[test]
    fn a_truncated_mapping_reads_zeros_and_counts_the_fault() {
        let name = std::ffi::CString::new("fault-test").expect("name");
        // SAFETY: a fresh memfd; checked below.
        let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: fd is ours.
        assert_eq!(unsafe { libc::ftruncate(fd, 4 * 4096) }, 0);
        let m = Mapping::map_fd(fd, 4 * 4096, 0).expect("map");
        let g = Guard::register(m.as_ptr(), m.len(), page_size_of(fd)).expect("slot");
        // SAFETY: inside the 16 KiB mapping.
        unsafe { m.as_ptr().add(3 * 4096).write_volatile(7) };
        // SAFETY: fd is ours; shrinking it is what a hostile frontend does.
        assert_eq!(unsafe { libc::ftruncate(fd, 4096) }, 0);
        // SAFETY: inside the mapping; the page is past the file's end now (SIGBUS),
        // which the handler recovers.
        let v = unsafe { m.as_ptr().add(3 * 4096).read_volatile() };
        assert_eq!(v, 0, "the lost page reads as zeros");
        assert_eq!(g.faults(), 1);
        // SAFETY: the first page is still the file's.
        unsafe { m.as_ptr().write_volatile(1) };
        assert_eq!(g.faults(), 1);
        drop(g);
        // SAFETY: fd is ours.
        unsafe { libc::close(fd) };
    }
}
