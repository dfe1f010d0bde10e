//! Safe wrappers over the system calls and CPU instructions the drivers use, so that
//! the driver modules themselves hold no `unsafe` for them.

use std::os::fd::{AsRawFd, BorrowedFd};

use crate::port::Piece;

/// Adds 1 to an eventfd's counter (a guest notification). A failure — only `EAGAIN`,
/// the counter near its maximum, on a non-blocking eventfd — means the guest is
/// signalled anyway; it is ignored.
#[inline]
pub fn eventfd_signal(fd: BorrowedFd<'_>) {
    let one = 1u64.to_ne_bytes();
    // SAFETY: writes 8 bytes from a live buffer to a descriptor the caller holds open.
    unsafe {
        libc::write(fd.as_raw_fd(), one.as_ptr().cast(), 8);
    }
}

/// Sets `O_NONBLOCK` on `fd`.
pub fn set_nonblocking(fd: BorrowedFd<'_>) -> std::io::Result<()> {
    // SAFETY: F_GETFL/F_SETFL on a descriptor the caller holds open; no memory passed.
    let ok = unsafe {
        let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        flags >= 0 && libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) == 0
    };
    if ok {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Waits up to `ms` for `fd` to become readable; true when it is (or has hung up).
/// False at once when `wake` becomes readable or hangs up.
pub fn poll_readable(fd: BorrowedFd<'_>, wake: BorrowedFd<'_>, ms: i32) -> bool {
    let mut p = [
        libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: wake.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    // SAFETY: two valid pollfds on the stack, their count given.
    let r = unsafe { libc::poll(p.as_mut_ptr(), 2, ms) };
    r > 0 && p[1].revents == 0 && p[0].revents != 0
}

/// `read(2)` into `buf`; the byte count, or the OS error.
#[inline]
pub fn read(fd: BorrowedFd<'_>, buf: &mut [u8]) -> std::io::Result<usize> {
    // SAFETY: reads at most buf.len() bytes into a buffer we own.
    let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// `writev(2)` of up to four frame pieces (guest bytes are read by the kernel, which
/// copes with a guest changing them meanwhile).
#[inline]
pub fn writev(fd: BorrowedFd<'_>, pieces: &[Piece<'_>]) -> std::io::Result<usize> {
    let mut iov = [libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    }; 4];
    let n = pieces.len().min(4);
    for (v, p) in iov.iter_mut().zip(&pieces[..n]) {
        let (base, len) = p.raw();
        *v = libc::iovec {
            iov_base: base as *mut _,
            iov_len: len,
        };
    }
    // SAFETY: iov[..n] describe live, readable ranges (our own bytes, or guest bytes a
    // GuestSlice vouches for), which the kernel only reads.
    let r = unsafe { libc::writev(fd.as_raw_fd(), iov.as_ptr(), n as i32) };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

/// Moves the calling thread into the network namespace `ns`.
pub fn setns_net(ns: BorrowedFd<'_>) -> std::io::Result<()> {
    // SAFETY: setns changes only this thread's namespace; no memory is passed.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// `struct ifreq` as TUNSETIFF reads it: name, flags, padding to 40 bytes.
#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: libc::c_short,
    _pad: [u8; 22],
}

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;

/// Attaches the tun device `fd` to the tap interface `ifname` (created if absent),
/// without packet information.
pub fn tun_set_tap(fd: BorrowedFd<'_>, ifname: &str) -> std::io::Result<()> {
    if ifname.is_empty() || ifname.len() > 15 {
        return Err(std::io::ErrorKind::InvalidInput.into());
    }
    let mut req = IfReq {
        name: [0; 16],
        flags: (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short,
        _pad: [0; 22],
    };
    req.name[..ifname.len()].copy_from_slice(ifname.as_bytes());
    // SAFETY: TUNSETIFF reads and writes a struct ifreq, which IfReq lays out (40
    // bytes); fd is a tun device the caller opened.
    if unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF, &mut req) } < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Number of CPUs online per `sysconf`, if it knows.
pub fn online_cpus() -> Option<usize> {
    // SAFETY: sysconf has no memory effects.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    (n > 0).then_some(n as usize)
}

/// Restricts the calling thread to `cpus` (those below `CPU_SETSIZE`).
pub fn set_thread_affinity(cpus: &[usize]) -> bool {
    // SAFETY: cpu_set_t is plain data, zeroed is its empty set; CPU_SET writes within it
    // for every CPU below CPU_SETSIZE (others are skipped); sched_setaffinity reads
    // `size_of::<cpu_set_t>()` bytes of it and changes only this thread's mask.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &c in cpus.iter().filter(|c| **c < libc::CPU_SETSIZE as usize) {
            libc::CPU_SET(c, &mut set);
        }
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

/// The time-stamp counter.
#[cfg(target_arch = "x86_64")]
#[inline]
pub fn rdtsc() -> u64 {
    // SAFETY: rdtsc reads the time-stamp counter; no memory effects.
    unsafe { core::arch::x86_64::_rdtsc() }
}
