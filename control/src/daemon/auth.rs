//! Who may use the API: the peer credentials of a connection on the API socket.

use std::os::unix::net::UnixStream;

/// Peer credentials of a Unix connection.
pub(super) fn peer(s: &UnixStream) -> Option<libc::ucred> {
    use std::os::fd::AsRawFd;
    let mut cred = libc::ucred {
        pid: 0,
        uid: u32::MAX,
        gid: u32::MAX,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: cred and len are valid for writing and len is cred's size.
    let r = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    (r == 0).then_some(cred)
}

/// Whether the peer is root, the daemon's user, or in the socket's group (primary or
/// supplementary). The socket's mode already keeps others out; this holds even if the
/// mode is loosened by hand.
pub(super) fn allowed(c: &libc::ucred, group: Option<u32>) -> bool {
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if c.uid == 0 || c.uid == me {
        return true;
    }
    let Some(g) = group else { return false };
    if c.gid == g {
        return true;
    }
    std::fs::read_to_string(format!("/proc/{}/status", c.pid))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Groups:").map(String::from))
        })
        .is_some_and(|l| l.split_whitespace().any(|x| x.parse() == Ok(g)))
}

pub(super) fn group_id(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: getgrnam reads the group database; the result is used before any other
    // call that could overwrite it.
    let g = unsafe { libc::getgrnam(c.as_ptr()) };
    // SAFETY: a non-null result points to a valid group entry.
    (!g.is_null()).then(|| unsafe { (*g).gr_gid })
}
