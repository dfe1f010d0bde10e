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
//! recovered: the handler maps anonymous memory (`MAP_NORESERVE`, nothing allocated
//! until touched) over the *whole* mapping — once, so a frontend cannot multiply the
//! process's memory areas towards `vm.max_map_count` by faulting page after page —,
//! counts the fault on the mapping's slot and returns; the faulting instruction runs
//! again and reads zeros. The port's control thread sees the count (within its 200 ms
//! wait) and drops the frontend. A `SIGBUS` anywhere else, or one sent with `kill`,
//! goes to the handler that was installed before ours (Rust's own, which reports a
//! stack overflow or dies), so real bugs still crash.
//!
//! Slots are reused as ports come and go; each carries a sequence number (even when
//! stable, odd while it changes) that the handler reads before and after the slot's
//! fields, so it never pairs one mapping's start with another's length.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, Once, OnceLock};

/// How many guest mappings can be registered at once: for each of the switch's 256
/// ports, a full table of 32 regions plus the one `ADD_MEM_REG` adds before the old
/// table goes. A registration beyond this is refused (the memory table is refused).
pub const SLOTS: usize = 256 * 33;

struct Slot {
    /// Even while the slot is stable, odd while it is being filled or freed.
    seq: AtomicU64,
    /// Mapping length (whole pages); 0 while the slot is free.
    len: AtomicUsize,
    start: AtomicUsize,
    /// Faults recovered in this mapping.
    faults: AtomicU64,
}

#[allow(clippy::declare_interior_mutable_const)]
const FREE: Slot = Slot {
    seq: AtomicU64::new(0),
    len: AtomicUsize::new(0),
    start: AtomicUsize::new(0),
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
    /// Registers `[start, start + len)` (whole pages of the mapping) and makes sure the
    /// handler is installed. `None` when every slot is taken.
    pub fn register(start: *mut u8, len: usize) -> Option<Guard> {
        INSTALL.call_once(install);
        let _g = CLAIM.lock().unwrap_or_else(|e| e.into_inner());
        let slot = TABLE
            .iter()
            .position(|s| s.len.load(Ordering::Relaxed) == 0)?;
        let s = &TABLE[slot];
        s.seq.fetch_add(1, Ordering::AcqRel);
        s.start.store(start as usize, Ordering::Relaxed);
        s.faults.store(0, Ordering::Relaxed);
        s.len.store(len, Ordering::Relaxed);
        s.seq.fetch_add(1, Ordering::Release);
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
        let s = &TABLE[self.slot];
        s.seq.fetch_add(1, Ordering::AcqRel);
        s.len.store(0, Ordering::Relaxed);
        s.seq.fetch_add(1, Ordering::Release);
    }
}

/// The system's base page size.
pub fn base_page() -> usize {
    // SAFETY: sysconf has no memory effects.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if n > 0 {
        n as usize
    } else {
        4096
    }
}

/// Page size backing `fd`: the huge page size for a hugetlbfs file (memfds created with
/// `MFD_HUGETLB` included), else the base page size.
pub fn page_size_of(fd: i32) -> usize {
    const HUGETLBFS_MAGIC: i64 = 0x9584_58f6;
    // SAFETY: fstatfs writes one statfs into the zeroed struct we own.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above; fd is a descriptor the caller holds open.
    if unsafe { libc::fstatfs(fd, &mut st) } == 0 && st.f_type as i64 == HUGETLBFS_MAGIC {
        (st.f_bsize as usize).max(base_page())
    } else {
        base_page()
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
    // SAFETY: the kernel passes a valid siginfo for a SA_SIGINFO handler.
    let (code, addr) = unsafe { ((*info).si_code, (*info).si_addr() as usize) };
    // Only a fault (si_code > 0: BUS_ADRERR and kin) is ours; a SIGBUS sent with kill
    // or sigqueue (si_code <= 0) is not, whatever address it names.
    if code > 0 {
        for s in TABLE.iter() {
            let seq = s.seq.load(Ordering::Acquire);
            if seq % 2 == 1 {
                continue;
            }
            let len = s.len.load(Ordering::Relaxed);
            let start = s.start.load(Ordering::Relaxed);
            if len == 0 || addr < start || addr - start >= len {
                continue;
            }
            std::sync::atomic::fence(Ordering::Acquire);
            if s.seq.load(Ordering::Relaxed) != seq {
                // Refilled meanwhile: these fields may be two mappings' halves.
                continue;
            }
            // SAFETY: [start, start + len) is a live guest mapping of this process, in
            // whole pages (the slot is released before the mapping is unmapped, and the
            // sequence check proves the fields belong together). Replacing it with
            // anonymous zeroed memory changes only what the switch reads from a
            // frontend that broke its memory; MAP_FIXED over an existing range is
            // atomic, and replacing the whole range keeps the number of memory areas
            // fixed however many pages the frontend makes fault.
            let r = unsafe {
                libc::mmap(
                    start as *mut libc::c_void,
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED | libc::MAP_NORESERVE,
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
    }
    chain(sig, info, ctx);
}

/// Hands a fault that is not ours to the previous action, or to the default one.
fn chain(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    let mut handled = false;
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
            handled = true;
        }
    }
    // SAFETY: sigaction only reads or writes the structs we own; raise is
    // async-signal-safe. A zeroed sigaction is SIG_DFL with an empty mask.
    unsafe {
        if !handled {
            let mut dfl: libc::sigaction = std::mem::zeroed();
            dfl.sa_sigaction = libc::SIG_DFL;
            libc::sigaction(libc::SIGBUS, &dfl, std::ptr::null_mut());
        }
        // A fault repeats when we return, and now meets the default action. A signal
        // someone sent does not repeat: send it again, so that the default action
        // (which the previous handler may have restored, as Rust's does) ends the
        // process, as it would have without us. It is blocked until we return.
        let mut cur: libc::sigaction = std::mem::zeroed();
        libc::sigaction(libc::SIGBUS, std::ptr::null(), &mut cur);
        if (*info).si_code <= 0 && cur.sa_sigaction == libc::SIG_DFL {
            libc::raise(sig);
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::mem::Mapping;

    fn memfd(flags: libc::c_uint, size: i64) -> Option<i32> {
        let name = std::ffi::CString::new("fault-test").expect("name");
        // SAFETY: a fresh memfd; checked below.
        let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | flags) };
        // SAFETY: fd is ours.
        (fd >= 0 && unsafe { libc::ftruncate(fd, size) } == 0).then_some(fd)
    }

    #[test]
    fn a_truncated_mapping_reads_zeros_and_counts_the_fault_once() {
        let fd = memfd(0, 4 * 4096).expect("memfd");
        let m = Mapping::map_guest(fd, 4 * 4096, 0).expect("map");
        // SAFETY: inside the 16 KiB mapping.
        unsafe { m.as_ptr().add(3 * 4096).write_volatile(7) };
        // SAFETY: fd is ours; shrinking it is what a hostile frontend does.
        assert_eq!(unsafe { libc::ftruncate(fd, 4096) }, 0);
        // SAFETY: inside the mapping; the page is past the file's end now (SIGBUS),
        // which the handler recovers.
        let v = unsafe { m.as_ptr().add(3 * 4096).read_volatile() };
        assert_eq!(v, 0, "the lost page reads as zeros");
        assert_eq!(m.faults(), 1);
        // The whole mapping was replaced at once: no other page faults again.
        // SAFETY: inside the mapping.
        unsafe { m.as_ptr().add(2 * 4096).write_volatile(1) };
        assert_eq!(m.faults(), 1);
        drop(m);
        // SAFETY: fd is ours.
        unsafe { libc::close(fd) };
    }

    #[test]
    fn a_truncated_hugetlb_mapping_of_an_odd_length_is_recovered() {
        const HUGE: usize = 2 << 20;
        let Some(fd) = memfd(libc::MFD_HUGETLB, 2 * HUGE as i64) else {
            println!("SKIPPED: no free 2 MiB hugepages for an MFD_HUGETLB memfd");
            return;
        };
        // A region that ends mid-huge-page, as a frontend may describe one: mapped and
        // registered as whole huge pages.
        let m = Mapping::map_guest(fd, (HUGE + 4096) as u64, 0).expect("map");
        // SAFETY: inside the mapping (two huge pages once rounded).
        unsafe { m.as_ptr().add(HUGE + 100).write_volatile(7) };
        // SAFETY: fd is ours.
        assert_eq!(unsafe { libc::ftruncate(fd, HUGE as i64) }, 0);
        // SAFETY: inside the mapping; past the file's end now.
        let v = unsafe { m.as_ptr().add(HUGE + 100).read_volatile() };
        assert_eq!((v, m.faults()), (0, 1));
        drop(m);
        // SAFETY: fd is ours.
        unsafe { libc::close(fd) };
    }

    #[test]
    fn a_sigbus_sent_with_kill_is_not_taken_for_a_fault() {
        // Registers a mapping first, so the handler is installed; a SIGBUS from kill
        // (si_code SI_USER) must reach the previous action. Run in a child: the default
        // action ends it with SIGBUS.
        let fd = memfd(0, 4096).expect("memfd");
        let _m = Mapping::map_guest(fd, 4096, 0).expect("map");
        // SAFETY: fork in a test; the child only calls async-signal-safe functions
        // (raise, _exit), the handler having been installed before the fork.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: in the child: raise(SIGBUS) then _exit if it returned.
            unsafe {
                libc::raise(libc::SIGBUS);
                libc::_exit(0);
            }
        }
        let mut status = 0;
        // SAFETY: waits for the child just forked.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(
            libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGBUS,
            "a sent SIGBUS was swallowed (status {status:#x})"
        );
        // SAFETY: fd is ours.
        unsafe { libc::close(fd) };
    }
}
