//! A vhost-user frontend written from the vhost-user specification (QEMU's
//! docs/interop/vhost-user.rst) and the virtio 1.x split-ring layout, not from pmd's own
//! types: a second opinion on the protocol. It can behave (negotiate, share memory, set
//! up rings, send and receive frames) and misbehave (any message, any fd, any ring
//! contents, memory truncated or sparse).
//!
//! Shared by several test binaries, each of which uses a part of it.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{fence, Ordering};
use std::time::Duration;

/// Header flags (spec: "Header"): bits 0-1 the version, bit 2 a reply, bit 3 need-reply.
pub const VERSION: u32 = 0x1;
pub const REPLY: u32 = 0x4;
pub const NEED_REPLY: u32 = 0x8;

/// Front-end message types.
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

/// Virtio feature bits (virtio 1.x, virtio-net) and the vhost-user one (bit 30).
pub mod feat {
    pub const NET_MRG_RXBUF: u64 = 1 << 15;
    pub const INDIRECT_DESC: u64 = 1 << 28;
    pub const EVENT_IDX: u64 = 1 << 29;
    pub const PROTOCOL_FEATURES: u64 = 1 << 30;
    pub const VERSION_1: u64 = 1 << 32;
    pub const RING_PACKED: u64 = 1 << 34;
    /// Protocol feature: acks on need-reply requests.
    pub const PROTO_REPLY_ACK: u64 = 1 << 3;
}

/// Split-ring descriptor flags.
pub const DESC_NEXT: u16 = 1;
pub const DESC_WRITE: u16 = 2;
pub const DESC_INDIRECT: u16 = 4;

/// virtio-net header with VERSION_1 (`struct virtio_net_hdr_mrg_rxbuf`): 12 bytes.
pub const NET_HDR: usize = 12;

/// Ring size used by this frontend.
pub const RING: u16 = 256;
/// User (frontend virtual) address of guest physical address 0. Arbitrary: only the
/// translation matters to the backend.
pub const UADDR: u64 = 0x7e00_0000_0000;
/// Ring `r` lives at `ring_gpa(r)`: descriptors, then avail at +4 KiB, used at +8 KiB.
pub const fn ring_gpa(r: usize) -> u64 {
    (r as u64) * 0x4000
}
/// Everything past this offset is buffers and tables (the rings are below it).
pub const RINGS_END: u64 = 0x8000;
/// Buffer `id` of ring `r`: 2 KiB each.
pub const BUF: u64 = 2048;
pub const fn buf_gpa(r: usize, id: u16) -> u64 {
    0x10000 + ((r as u64) * RING as u64 + id as u64) * BUF
}
/// Indirect table `t` (up to 1024 descriptors, 16 KiB each).
pub const fn table_gpa(t: u16) -> u64 {
    0x20_0000 + (t as u64) * 0x4000
}
/// Guest memory needed by the layout above (with 256 indirect tables).
pub const MEM_SIZE: u64 = 0x20_0000 + 256 * 0x4000;

fn cvt(r: libc::c_int, what: &str) -> std::io::Result<libc::c_int> {
    if r < 0 {
        let e = std::io::Error::last_os_error();
        Err(std::io::Error::new(e.kind(), format!("{what}: {e}")))
    } else {
        Ok(r)
    }
}

/// An eventfd with the given initial counter.
pub fn eventfd(init: u64) -> OwnedFd {
    // SAFETY: eventfd(2) takes no pointers; a negative result is checked.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    assert!(fd >= 0, "eventfd: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` was just created and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    if init > 0 {
        // SAFETY: 8 bytes from a live u64 to our eventfd.
        let r = unsafe { libc::write(fd.as_raw_fd(), (&init as *const u64).cast(), 8) };
        assert_eq!(r, 8, "eventfd write");
    }
    fd
}

/// A pipe: (read end, write end).
pub fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0i32; 2];
    // SAFETY: pipe2(2) fills the two-element array.
    let r = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(r, 0, "pipe2");
    // SAFETY: both fds were just created and are owned by nobody else.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

/// The frontend's guest memory: a memfd of `size` bytes (sparse), of which the first
/// `mapped` bytes are mapped here.
pub struct Memory {
    pub fd: OwnedFd,
    pub size: u64,
    base: *mut u8,
    /// Bytes that may be touched (shrinks with `truncate`).
    mapped: usize,
    /// Bytes mapped (for munmap).
    map_len: usize,
}

// SAFETY: the mapping is plain shared memory, accessed with volatile reads and writes;
// it is unmapped only on drop.
unsafe impl Send for Memory {}

impl Memory {
    pub fn new(size: u64, mapped: usize) -> std::io::Result<Memory> {
        // SAFETY: memfd_create with a NUL-terminated name; the result is checked.
        let fd = unsafe { libc::memfd_create(c"hostile-guest".as_ptr(), libc::MFD_CLOEXEC) };
        let fd = cvt(fd, "memfd_create")?;
        // SAFETY: `fd` was just created and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: ftruncate on our memfd; no pointers.
        let r = unsafe { libc::ftruncate(fd.as_raw_fd(), size as libc::off_t) };
        cvt(r, "ftruncate")?;
        let mapped = mapped.min(size as usize);
        // SAFETY: a fresh shared mapping of `mapped` bytes of our memfd; checked below.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                mapped,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Memory {
            fd,
            size,
            base: base.cast(),
            mapped,
            map_len: mapped,
        })
    }

    /// Shrinks the file under everyone who mapped it. After this only the first `len`
    /// bytes may be touched (here or in the backend).
    pub fn truncate(&mut self, len: u64) {
        // SAFETY: ftruncate on our memfd; no pointers.
        let r = unsafe { libc::ftruncate(self.fd.as_raw_fd(), len as libc::off_t) };
        assert_eq!(r, 0, "ftruncate");
        self.mapped = self.mapped.min(len as usize);
        self.size = len;
    }

    fn ptr(&self, gpa: u64, len: usize) -> *mut u8 {
        assert!(
            (gpa as usize)
                .checked_add(len)
                .is_some_and(|e| e <= self.mapped),
            "frontend access {gpa:#x}+{len} outside its mapping"
        );
        // SAFETY: in bounds of the mapping, checked above.
        unsafe { self.base.add(gpa as usize) }
    }

    /// Copies `data` in. Plain copies, not volatile byte loops: the attacker must be
    /// cheap, so that what it costs the others is what it costs the switch, not the
    /// CPU of the test.
    pub fn write(&self, gpa: u64, data: &[u8]) {
        let p = self.ptr(gpa, data.len());
        // SAFETY: `p..p+len` is inside the mapping (checked by `ptr`) and `data` is a
        // separate allocation. The backend may read these bytes concurrently (that is
        // the point of shared memory); no Rust reference to them exists.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), p, data.len()) };
    }

    pub fn read(&self, gpa: u64, len: usize) -> Vec<u8> {
        let p = self.ptr(gpa, len);
        let mut v = vec![0u8; len];
        // SAFETY: as in `write`, the other way round.
        unsafe { std::ptr::copy_nonoverlapping(p, v.as_mut_ptr(), len) };
        v
    }

    pub fn w16(&self, gpa: u64, v: u16) {
        let p = self.ptr(gpa, 2);
        assert!(gpa.is_multiple_of(2));
        // SAFETY: aligned and inside the mapping (checked above); volatile, as the
        // backend reads it concurrently.
        unsafe { p.cast::<u16>().write_volatile(v.to_le()) }
    }

    pub fn r16(&self, gpa: u64) -> u16 {
        let p = self.ptr(gpa, 2);
        assert!(gpa.is_multiple_of(2));
        // SAFETY: as in `w16`.
        u16::from_le(unsafe { p.cast::<u16>().read_volatile() })
    }

    pub fn r32(&self, gpa: u64) -> u32 {
        let p = self.ptr(gpa, 4);
        assert!(gpa.is_multiple_of(4));
        // SAFETY: as in `w16`.
        u32::from_le(unsafe { p.cast::<u32>().read_volatile() })
    }

    /// A split-ring descriptor: `le64 addr, le32 len, le16 flags, le16 next`.
    pub fn desc_at(&self, gpa: u64, addr: u64, len: u32, flags: u16, next: u16) {
        let mut d = [0u8; 16];
        d[..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..].copy_from_slice(&next.to_le_bytes());
        self.write(gpa, &d);
    }
}

impl Drop for Memory {
    fn drop(&mut self) {
        // SAFETY: unmapping our own mapping, which nothing references any more.
        unsafe { libc::munmap(self.base.cast(), self.map_len.max(1)) };
    }
}

/// Frontend state of one split ring in [`Memory`].
#[derive(Default)]
struct RingState {
    avail_idx: u16,
    used_seen: u16,
    free: Vec<u16>,
}

/// One connection to a vhost-user backend.
pub struct Frontend {
    pub sock: UnixStream,
    pub features: u64,
    pub protocol: u64,
    pub mem: Option<Memory>,
    rings: [RingState; 2],
    fds: Vec<OwnedFd>,
}

/// Encodes a message: header `{u32 request, u32 flags, u32 size}` then the body.
pub fn encode(request: u32, flags: u32, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(12 + body.len());
    m.extend_from_slice(&request.to_le_bytes());
    m.extend_from_slice(&flags.to_le_bytes());
    m.extend_from_slice(&(body.len() as u32).to_le_bytes());
    m.extend_from_slice(body);
    m
}

/// Sends `bytes` with `fds` attached as SCM_RIGHTS ancillary data.
pub fn send_raw(sock: &UnixStream, bytes: &[u8], fds: &[RawFd]) -> std::io::Result<()> {
    assert!(fds.len() <= 16);
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut libc::c_void,
        iov_len: bytes.len(),
    };
    // Room for CMSG_SPACE(16 fds), aligned for cmsghdr.
    let mut cbuf = [0u64; 16];
    // SAFETY: msghdr, iovec and the control buffer live on this stack frame for the
    // whole call; the control message is laid out with the CMSG_* macros inside a
    // buffer large enough for 16 fds (asserted above).
    let r = unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        if !fds.is_empty() {
            let len = std::mem::size_of_val(fds) as u32;
            msg.msg_control = cbuf.as_mut_ptr().cast();
            msg.msg_controllen = libc::CMSG_SPACE(len) as usize;
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(len) as usize;
            std::ptr::copy_nonoverlapping(fds.as_ptr(), libc::CMSG_DATA(c).cast(), fds.len());
        }
        libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL)
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if r as usize != bytes.len() {
        // A stream socket may take part of a message; send the rest without fds.
        (&*sock).write_all(&bytes[r as usize..])?;
    }
    Ok(())
}

/// `{u32 index, u32 num}`.
pub fn vring_state(index: u32, num: u32) -> Vec<u8> {
    let mut b = index.to_le_bytes().to_vec();
    b.extend_from_slice(&num.to_le_bytes());
    b
}

/// `{u32 index, u32 flags, u64 desc, u64 used, u64 avail, u64 log}` (user addresses).
pub fn vring_addr(index: u32, desc: u64, used: u64, avail: u64) -> Vec<u8> {
    let mut b = index.to_le_bytes().to_vec();
    b.extend_from_slice(&0u32.to_le_bytes());
    for a in [desc, used, avail, 0] {
        b.extend_from_slice(&a.to_le_bytes());
    }
    b
}

/// `{u32 nregions, u32 padding, regions[] {u64 gpa, u64 size, u64 uaddr, u64 offset}}`.
pub fn mem_table(regions: &[(u64, u64, u64, u64)]) -> Vec<u8> {
    let mut b = (regions.len() as u32).to_le_bytes().to_vec();
    b.extend_from_slice(&0u32.to_le_bytes());
    for &(gpa, size, uaddr, off) in regions {
        for v in [gpa, size, uaddr, off] {
            b.extend_from_slice(&v.to_le_bytes());
        }
    }
    b
}

impl Frontend {
    /// Connects, retrying for up to 5 s while the socket does not exist yet.
    pub fn connect(path: &Path) -> std::io::Result<Frontend> {
        let t = std::time::Instant::now();
        let sock = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if t.elapsed() > Duration::from_secs(5) => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        };
        sock.set_read_timeout(Some(Duration::from_secs(3)))?;
        sock.set_write_timeout(Some(Duration::from_secs(3)))?;
        Ok(Frontend {
            sock,
            features: 0,
            protocol: 0,
            mem: None,
            rings: Default::default(),
            fds: Vec::new(),
        })
    }

    /// Sends one request.
    pub fn send(
        &self,
        request: u32,
        flags: u32,
        body: &[u8],
        fds: &[RawFd],
    ) -> std::io::Result<()> {
        send_raw(&self.sock, &encode(request, flags, body), fds)
    }

    /// Reads one reply to `request`; its body.
    pub fn reply(&self, request: u32) -> std::io::Result<Vec<u8>> {
        let mut h = [0u8; 12];
        (&self.sock).read_exact(&mut h)?;
        let word = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
        let (r, flags, size) = (word(0), word(4), word(8));
        let bad = |what: String| Err(std::io::Error::new(std::io::ErrorKind::InvalidData, what));
        if r != request || flags & REPLY == 0 || flags & 3 != VERSION {
            return bad(format!(
                "reply {r} flags {flags:#x}, expected a reply to {request}"
            ));
        }
        if size > 4096 {
            return bad(format!("reply body of {size} bytes"));
        }
        let mut body = vec![0u8; size as usize];
        (&self.sock).read_exact(&mut body)?;
        Ok(body)
    }

    /// A GET_* request answered with a u64.
    pub fn get_u64(&self, request: u32) -> std::io::Result<u64> {
        self.send(request, VERSION, &[], &[])?;
        let b = self.reply(request)?;
        let v: [u8; 8] = b
            .as_slice()
            .try_into()
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "u64 reply size"))?;
        Ok(u64::from_le_bytes(v))
    }

    /// A request that gets an ack when REPLY_ACK was negotiated: `Ok(0)` success,
    /// `Ok(nonzero)` refused; `Ok(0)` too when there is no ack to wait for.
    pub fn request(&self, request: u32, body: &[u8], fds: &[RawFd]) -> std::io::Result<u64> {
        if self.protocol & feat::PROTO_REPLY_ACK != 0 {
            self.send(request, VERSION | NEED_REPLY, body, fds)?;
            let b = self.reply(request)?;
            let v: [u8; 8] = b
                .as_slice()
                .try_into()
                .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "ack size"))?;
            Ok(u64::from_le_bytes(v))
        } else {
            self.send(request, VERSION, body, fds)?;
            Ok(0)
        }
    }

    /// Features and protocol features: VERSION_1, INDIRECT_DESC and REPLY_ACK when
    /// offered (no EVENT_IDX, no mergeable buffers, split rings), then SET_OWNER.
    pub fn negotiate(&mut self) -> std::io::Result<()> {
        let offered = self.get_u64(req::GET_FEATURES)?;
        let want = feat::VERSION_1 | feat::INDIRECT_DESC | feat::PROTOCOL_FEATURES;
        let f = offered & want;
        self.send(req::SET_FEATURES, VERSION, &f.to_le_bytes(), &[])?;
        self.features = f;
        if f & feat::PROTOCOL_FEATURES != 0 {
            let p = self.get_u64(req::GET_PROTOCOL_FEATURES)? & feat::PROTO_REPLY_ACK;
            self.send(req::SET_PROTOCOL_FEATURES, VERSION, &p.to_le_bytes(), &[])?;
            self.protocol = p;
        }
        self.send(req::SET_OWNER, VERSION, &[], &[])
    }

    /// Shares `mem` as one region at guest address 0: the ack (0 accepted), and keeps
    /// the memory.
    pub fn share(&mut self, mem: Memory) -> std::io::Result<u64> {
        let t = mem_table(&[(0, mem.size, UADDR, 0)]);
        let r = self.request(req::SET_MEM_TABLE, &t, &[mem.fd.as_raw_fd()]);
        self.mem = Some(mem);
        r
    }

    pub fn mem(&self) -> &Memory {
        self.mem.as_ref().expect("no memory shared")
    }

    /// Sets up ring `r` (0 the receive ring, 1 the transmit ring) at its place in the
    /// layout, with `call` as its call fd (our own eventfd if `None`), and enables it.
    pub fn ring(&mut self, r: usize, call: Option<RawFd>) -> std::io::Result<()> {
        let base = ring_gpa(r);
        let m = self.mem();
        // Zero the ring: a reconnecting frontend starts from scratch.
        m.write(base, &vec![0u8; 0x3000]);
        let i = r as u32;
        self.send(
            req::SET_VRING_NUM,
            VERSION,
            &vring_state(i, u32::from(RING)),
            &[],
        )?;
        self.send(req::SET_VRING_BASE, VERSION, &vring_state(i, 0), &[])?;
        let a = vring_addr(
            i,
            UADDR + base,
            UADDR + base + 0x2000,
            UADDR + base + 0x1000,
        );
        self.send(req::SET_VRING_ADDR, VERSION, &a, &[])?;
        let kick = eventfd(0);
        self.send(
            req::SET_VRING_KICK,
            VERSION,
            &(r as u64).to_le_bytes(),
            &[kick.as_raw_fd()],
        )?;
        self.fds.push(kick);
        let call = match call {
            Some(c) => c,
            None => {
                let c = eventfd(0);
                let raw = c.as_raw_fd();
                self.fds.push(c);
                raw
            }
        };
        self.send(
            req::SET_VRING_CALL,
            VERSION,
            &(r as u64).to_le_bytes(),
            &[call],
        )?;
        if self.features & feat::PROTOCOL_FEATURES != 0 {
            self.send(req::SET_VRING_ENABLE, VERSION, &vring_state(i, 1), &[])?;
        }
        self.rings[r] = RingState {
            avail_idx: 0,
            used_seen: 0,
            free: (0..RING).rev().collect(),
        };
        Ok(())
    }

    /// The whole honest set-up on `path` with fresh memory: the frontend is ready to
    /// send and (after [`post_rx`](Self::post_rx)) to receive.
    pub fn honest(path: &Path) -> std::io::Result<Frontend> {
        let mut f = Frontend::connect(path)?;
        f.negotiate()?;
        let mem = Memory::new(MEM_SIZE, MEM_SIZE as usize)?;
        let ack = f.share(mem)?;
        if ack != 0 {
            return Err(std::io::Error::other(format!(
                "memory table refused: {ack}"
            )));
        }
        f.ring(0, None)?;
        f.ring(1, None)?;
        // Make sure the backend has applied everything before the caller goes on.
        f.get_u64(req::GET_FEATURES)?;
        Ok(f)
    }

    /// Descriptor `id` of ring `r`.
    pub fn set_desc(&self, r: usize, id: u16, addr: u64, len: u32, flags: u16, next: u16) {
        self.mem()
            .desc_at(ring_gpa(r) + u64::from(id) * 16, addr, len, flags, next);
    }

    /// Entry `i` of indirect table `t`.
    pub fn set_indirect(&self, t: u16, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        self.mem()
            .desc_at(table_gpa(t) + u64::from(i) * 16, addr, len, flags, next);
    }

    /// Makes the chain at `head` available on ring `r` (published by `publish`).
    pub fn push_avail(&mut self, r: usize, head: u16) {
        let s = &mut self.rings[r];
        let slot = s.avail_idx % RING;
        s.avail_idx = s.avail_idx.wrapping_add(1);
        // avail: le16 flags, le16 idx, le16 ring[N].
        self.mem
            .as_ref()
            .expect("memory")
            .w16(ring_gpa(r) + 0x1000 + 4 + 2 * u64::from(slot), head);
    }

    /// Publishes the avail index after the entries (release order).
    pub fn publish(&self, r: usize) {
        fence(Ordering::Release);
        self.mem()
            .w16(ring_gpa(r) + 0x1000 + 2, self.rings[r].avail_idx);
        fence(Ordering::SeqCst);
    }

    /// New used entries of ring `r`: `(id, len)`.
    pub fn take_used(&mut self, r: usize) -> Vec<(u16, u32)> {
        let base = ring_gpa(r) + 0x2000;
        let m = self.mem.as_ref().expect("memory");
        let idx = m.r16(base + 2);
        fence(Ordering::Acquire);
        let s = &mut self.rings[r];
        let mut out = Vec::new();
        while s.used_seen != idx && out.len() < usize::from(RING) {
            let e = base + 4 + 8 * u64::from(s.used_seen % RING);
            out.push((m.r32(e) as u16, m.r32(e + 4)));
            s.used_seen = s.used_seen.wrapping_add(1);
        }
        out
    }

    /// Chains made available on ring `r` and not yet returned.
    pub fn in_flight(&self, r: usize) -> u16 {
        let s = &self.rings[r];
        s.avail_idx.wrapping_sub(s.used_seen)
    }

    /// Posts every free receive buffer (2 KiB, device-writable).
    pub fn post_rx(&mut self) {
        while let Some(id) = self.rings[0].free.pop() {
            self.set_desc(0, id, buf_gpa(0, id), BUF as u32, DESC_WRITE, 0);
            self.push_avail(0, id);
        }
        self.publish(0);
    }

    /// Receives: calls `f` with each frame (without the net header), re-posts.
    pub fn recv(&mut self, mut f: impl FnMut(&[u8])) -> usize {
        let used = self.take_used(0);
        for &(id, len) in &used {
            if id < RING {
                let len = (len as usize).min(BUF as usize);
                if len > NET_HDR {
                    let b = self.mem().read(buf_gpa(0, id), len);
                    f(&b[NET_HDR..]);
                }
                self.rings[0].free.push(id);
            }
        }
        if !used.is_empty() {
            self.post_rx();
        }
        used.len()
    }

    /// Sends frames from the transmit ring, one buffer each; returns how many it took.
    pub fn send_frames(&mut self, frames: &[&[u8]]) -> usize {
        for (id, _) in self.take_used(1) {
            if id < RING {
                self.rings[1].free.push(id);
            }
        }
        let mut n = 0;
        for f in frames {
            let Some(id) = self.rings[1].free.pop() else {
                break;
            };
            let mut b = vec![0u8; NET_HDR];
            b.extend_from_slice(f);
            self.mem().write(buf_gpa(1, id), &b);
            self.set_desc(1, id, buf_gpa(1, id), b.len() as u32, 0, 0);
            self.push_avail(1, id);
            n += 1;
        }
        if n > 0 {
            self.publish(1);
        }
        n
    }
}

/// An Ethernet frame of `len` bytes from `src` to `dst` (locally administered MACs
/// 02:00:00:00:00:xx), ethertype 0x88b5, `seq` after the header.
pub fn frame(dst: u8, src: u8, seq: u32, len: usize) -> Vec<u8> {
    let mut f = vec![0u8; len.max(60)];
    f[..12].copy_from_slice(&[2, 0, 0, 0, 0, dst, 2, 0, 0, 0, 0, src]);
    f[12..14].copy_from_slice(&[0x88, 0xb5]);
    f[14..18].copy_from_slice(&seq.to_be_bytes());
    f
}
