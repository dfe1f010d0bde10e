//! The vhost-user wire protocol, back-end side: framing, file descriptors, replies.
//!
//! A message is a 12-byte header (`request`, `flags`, `size`, little endian) and `size`
//! bytes of body; file descriptors ride along as `SCM_RIGHTS` on the first bytes. This
//! module reads one message at a time from a blocking socket whose receive timeout
//! bounds how long a message may take, checks the framing (version bits, body size,
//! descriptor count) and leaves the meaning of the body to the device.
//!
//! We parse the protocol ourselves rather than with the `vhost` crate's back-end
//! handler: that handler refuses `SET_VRING_ENABLE` before `SET_FEATURES`, which QEMU 7.2
//! sends when it connects, and retries a timed-out receive forever, so a frontend that
//! stalls mid-message would hold the port's control thread.

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::net::UnixStream;

/// Largest body we accept (the largest real one, GET_CONFIG, is 12 + 256 bytes).
pub const MAX_BODY: usize = 4096;
/// Most file descriptors one message may carry (SET_MEM_TABLE's limit).
pub const MAX_FDS: usize = 8;

/// Header flag: protocol version 1.
pub const FLAG_VERSION: u32 = 0x1;
/// Header flag: this is a reply.
pub const FLAG_REPLY: u32 = 0x4;
/// Header flag: the frontend wants an ack (with REPLY_ACK negotiated).
pub const FLAG_NEED_REPLY: u32 = 0x8;

/// Request codes we know.
#[allow(missing_docs)]
pub mod req {
    pub const GET_FEATURES: u32 = 1;
    pub const SET_FEATURES: u32 = 2;
    pub const SET_OWNER: u32 = 3;
    pub const RESET_OWNER: u32 = 4;
    pub const SET_MEM_TABLE: u32 = 5;
    pub const SET_LOG_BASE: u32 = 6;
    pub const SET_LOG_FD: u32 = 7;
    pub const SET_VRING_NUM: u32 = 8;
    pub const SET_VRING_ADDR: u32 = 9;
    pub const SET_VRING_BASE: u32 = 10;
    pub const GET_VRING_BASE: u32 = 11;
    pub const SET_VRING_KICK: u32 = 12;
    pub const SET_VRING_CALL: u32 = 13;
    pub const SET_VRING_ERR: u32 = 14;
    pub const GET_PROTOCOL_FEATURES: u32 = 15;
    pub const SET_PROTOCOL_FEATURES: u32 = 16;
    pub const GET_QUEUE_NUM: u32 = 17;
    pub const SET_VRING_ENABLE: u32 = 18;
    pub const SEND_RARP: u32 = 19;
    pub const NET_SET_MTU: u32 = 20;
    pub const GET_CONFIG: u32 = 24;
    pub const SET_CONFIG: u32 = 25;
    pub const RESET_DEVICE: u32 = 34;
    pub const GET_MAX_MEM_SLOTS: u32 = 36;
    pub const ADD_MEM_REG: u32 = 37;
    pub const REM_MEM_REG: u32 = 38;
}

/// Protocol feature bits.
#[allow(missing_docs)]
pub mod pf {
    pub const MQ: u64 = 1 << 0;
    pub const REPLY_ACK: u64 = 1 << 3;
    pub const CONFIG: u64 = 1 << 9;
    pub const CONFIGURE_MEM_SLOTS: u64 = 1 << 15;
}

/// Why a message could not be read; every one of these ends the connection.
#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    /// The frontend closed the socket.
    #[error("frontend disconnected")]
    Disconnected,
    /// The message stopped arriving (receive timeout) or the socket failed.
    #[error("socket: {0}")]
    Io(std::io::Error),
    /// Bad version bits or a reply flag on a request.
    #[error("bad header flags {0:#x}")]
    BadFlags(u32),
    /// A body larger than any valid message.
    #[error("body of {0} bytes exceeds {MAX_BODY}")]
    Oversized(u32),
    /// More descriptors than a message may carry, or truncated control data.
    #[error("too many file descriptors")]
    TooManyFds,
}

/// One request.
pub struct Msg {
    /// Request code.
    pub request: u32,
    /// Header flags.
    pub flags: u32,
    /// Body bytes.
    pub body: Vec<u8>,
    /// Attached descriptors, in order.
    pub fds: Vec<File>,
}

impl Msg {
    /// Whether the frontend asked for an ack.
    pub fn need_reply(&self) -> bool {
        self.flags & FLAG_NEED_REPLY != 0
    }

    /// Little-endian u32 at `off`, if the body holds it.
    pub fn u32_at(&self, off: usize) -> Option<u32> {
        let b = self.body.get(off..off + 4)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// Little-endian u64 at `off`, if the body holds it.
    pub fn u64_at(&self, off: usize) -> Option<u64> {
        let b = self.body.get(off..off + 8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Some(u64::from_le_bytes(a))
    }
}

/// Receives into `buf` once, collecting descriptors into `fds`.
fn recv_some(sock: &UnixStream, buf: &mut [u8], fds: &mut Vec<File>) -> Result<usize, ProtoError> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // Room for MAX_FDS + 1 descriptors, so that one too many is seen, not truncated.
    let mut cbuf = [0u64; 16];
    // SAFETY: a zeroed msghdr is valid; we point it at live iov and control buffers.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&cbuf);
    let n = loop {
        // SAFETY: recvmsg writes at most iov_len bytes into buf and msg_controllen bytes
        // into cbuf, both live for the call.
        let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n >= 0 {
            break n as usize;
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(ProtoError::Io(e));
        }
    };
    // Take ownership of every descriptor first, so none leaks on an error below.
    let mut too_many = msg.msg_flags & libc::MSG_CTRUNC != 0;
    // SAFETY: CMSG_FIRSTHDR/NXTHDR walk the control buffer the kernel filled, bounded
    // by msg_controllen; SCM_RIGHTS data is an array of ints.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(c).cast::<i32>();
                let count = ((*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize) / 4;
                for i in 0..count {
                    let fd = std::ptr::read_unaligned(data.add(i));
                    fds.push(File::from_raw_fd(fd));
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    if fds.len() > MAX_FDS {
        too_many = true;
    }
    if too_many {
        return Err(ProtoError::TooManyFds);
    }
    Ok(n)
}

/// How long one whole message may take to arrive once its first byte has.
pub const MSG_DEADLINE: std::time::Duration = std::time::Duration::from_secs(2);

fn recv_exact(
    sock: &UnixStream,
    buf: &mut [u8],
    fds: &mut Vec<File>,
    deadline: std::time::Instant,
) -> Result<(), ProtoError> {
    let mut got = 0;
    while got < buf.len() {
        let n = recv_some(sock, &mut buf[got..], fds)?;
        if n == 0 {
            return Err(ProtoError::Disconnected);
        }
        got += n;
        // Each receive is bounded by the socket's timeout; this bounds the sum, so a
        // frontend dribbling a byte at a time cannot hold the control thread.
        if got < buf.len() && std::time::Instant::now() > deadline {
            return Err(ProtoError::Io(std::io::ErrorKind::TimedOut.into()));
        }
    }
    Ok(())
}

/// Reads one request. The socket's receive timeout bounds how long it may take.
pub fn recv_msg(sock: &UnixStream) -> Result<Msg, ProtoError> {
    let mut fds = Vec::new();
    let mut hdr = [0u8; 12];
    let deadline = std::time::Instant::now() + MSG_DEADLINE;
    recv_exact(sock, &mut hdr, &mut fds, deadline)?;
    let request = u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
    let flags = u32::from_le_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]);
    let size = u32::from_le_bytes([hdr[8], hdr[9], hdr[10], hdr[11]]);
    if flags & 0x3 != FLAG_VERSION || flags & FLAG_REPLY != 0 {
        return Err(ProtoError::BadFlags(flags));
    }
    if size as usize > MAX_BODY {
        return Err(ProtoError::Oversized(size));
    }
    let mut body = vec![0u8; size as usize];
    recv_exact(sock, &mut body, &mut fds, deadline)?;
    Ok(Msg {
        request,
        flags,
        body,
        fds,
    })
}

/// Sends a reply to `request` with `body`.
pub fn send_reply(mut sock: &UnixStream, request: u32, body: &[u8]) -> std::io::Result<()> {
    let mut m = Vec::with_capacity(12 + body.len());
    m.extend_from_slice(&request.to_le_bytes());
    m.extend_from_slice(&(FLAG_VERSION | FLAG_REPLY).to_le_bytes());
    m.extend_from_slice(&(body.len() as u32).to_le_bytes());
    m.extend_from_slice(body);
    sock.write_all(&m)
}
