//! The virtio-user frontend port: the VM's side of a vhost-user NIC, without a VM.
//!
//! Like DPDK's `net_virtio_user`, this port owns a shared memory region (a memfd, on
//! hugepages when available) holding its rings and packet buffers, connects to any
//! vhost-user backend (our switch, DPDK's `net_vhost`, OVS), hands it the memory table
//! and the ring addresses, and then sends and receives frames by writing descriptors
//! itself. The traffic generator, the benchmarks and the integration tests use it.
//!
//! Layout: one buffer of [`BUF_SIZE`] bytes per descriptor, fixed to it, so a frame is
//! always one descriptor (header and frame contiguous, `ANY_LAYOUT`).

use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{fence, AtomicU16, Ordering};
use std::time::{Duration, Instant};

use vhost::vhost_user::message::{VhostUserHeaderFlag, VhostUserProtocolFeatures};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vmm_sys_util::eventfd::EventFd;

use crate::mem::{MemError, SharedRegion};
use crate::virtio::{self, net_hdr_len};

/// Bytes of packet buffer per descriptor (virtio-net header + up to 2036-byte frame).
pub const BUF_SIZE: usize = 2048;

/// Errors of the virtio-user port.
#[derive(Debug, thiserror::Error)]
pub enum VirtioUserError {
    /// Connecting or accepting failed.
    #[error("virtio-user {path}: {source}")]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The backend refused or broke a protocol step.
    #[error("virtio-user {path}: {step}: {source}")]
    Protocol {
        /// The socket path.
        path: PathBuf,
        /// The protocol step.
        step: &'static str,
        /// The vhost-user error.
        source: vhost::Error,
    },
    /// The backend lacks a feature we need.
    #[error("virtio-user {path}: backend does not offer {what}")]
    Missing {
        /// The socket path.
        path: PathBuf,
        /// The missing feature.
        what: &'static str,
    },
    /// Bad configuration.
    #[error("virtio-user: {0}")]
    Config(String),
    /// Memory set-up.
    #[error(transparent)]
    Mem(#[from] MemError),
    /// An eventfd could not be created.
    #[error("eventfd: {0}")]
    EventFd(std::io::Error),
}

/// Configuration of a virtio-user port.
#[derive(Clone, Debug)]
pub struct VirtioUserConfig {
    /// The vhost-user socket.
    pub path: PathBuf,
    /// Listen on `path` and wait for the backend to connect (the backend is a client).
    pub server: bool,
    /// Queue pairs.
    pub queue_pairs: u16,
    /// Descriptors per ring (power of two).
    pub ring_size: u16,
    /// Negotiate VIRTIO_NET_F_MRG_RXBUF when offered.
    pub mrg_rxbuf: bool,
    /// Negotiate VIRTIO_RING_F_EVENT_IDX when offered.
    pub event_idx: bool,
    /// Ask for packed virtqueues (`VIRTIO_F_RING_PACKED`); fails when the backend does
    /// not offer them.
    pub packed: bool,
    /// Put rings and buffers on hugepages when available.
    pub hugepages: bool,
    /// How long to wait for the backend (connect retries or accept).
    pub timeout: Duration,
}

impl VirtioUserConfig {
    /// Defaults for one queue pair on `path`, as a client.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        VirtioUserConfig {
            path: path.into(),
            server: false,
            queue_pairs: 1,
            ring_size: 256,
            mrg_rxbuf: true,
            event_idx: true,
            packed: false,
            hugepages: false,
            timeout: Duration::from_secs(10),
        }
    }
}

/// Driver state of one ring living in our shared region. Split: `avail` and `used`
/// are the avail and used rings, and descriptor `id` is fixed to buffer `id`. Packed:
/// `avail` is the driver event area, `used` the device event area, and slots are
/// filled in ring order (`avail_idx`/`last_used` are then slot positions with their
/// wrap counters) with one buffer each, whose id names it.
struct DriverRing {
    size: u16,
    packed: bool,
    /// Packed: the driver's wrap counter for `avail_idx`, and the one it expects at
    /// `last_used`.
    avail_wrap: bool,
    used_wrap: bool,
    desc: *mut u8,
    avail: *mut u8,
    used: *mut u8,
    bufs: *mut u8,
    bufs_gpa: u64,
    avail_idx: u16,
    last_used: u16,
    /// Split: the device's used index as [`refresh_used`](Self::refresh_used) last
    /// read it: a burst of used elements costs one read of that contended line.
    used_seen: u16,
    free: Vec<u16>,
    kick: EventFd,
    _call: EventFd,
    event_idx: bool,
}

/// Packed descriptor flags: available and used bits.
const PACKED_AVAIL: u16 = 1 << 7;
const PACKED_USED: u16 = 1 << 15;

impl DriverRing {
    /// Reads the device's used index once (split rings), before a run of
    /// [`next_used`](Self::next_used) calls.
    fn refresh_used(&mut self) {
        if !self.packed {
            self.used_seen = self.used_idx();
        }
    }

    /// The next used buffer the device returned, (id, len), moving past it; `None`
    /// when there is none (split: none up to the index [`refresh_used`] read).
    ///
    /// [`refresh_used`]: Self::refresh_used
    #[inline]
    fn next_used(&mut self) -> Option<(u16, u32)> {
        if !self.packed {
            if self.last_used == self.used_seen {
                return None;
            }
            let e = self.used_elem(self.last_used);
            self.last_used = self.last_used.wrapping_add(1);
            return Some(e);
        }
        let slot = usize::from(self.last_used);
        // SAFETY: last_used < size; the descriptor ring holds size 16-byte entries, the
        // flags at offset 14 (2-byte aligned).
        let flags = u16::from_le(unsafe {
            (*self.desc.add(16 * slot + 14).cast::<AtomicU16>()).load(Ordering::Acquire)
        });
        let w = self.used_wrap;
        if (flags & PACKED_AVAIL != 0) != w || (flags & PACKED_USED != 0) != w {
            return None;
        }
        // SAFETY: as above; len at offset 8, id at 12.
        let (len, id) = unsafe {
            (
                u32::from_le(std::ptr::read_volatile(
                    self.desc.add(16 * slot + 8).cast::<u32>(),
                )),
                u16::from_le(std::ptr::read_volatile(
                    self.desc.add(16 * slot + 12).cast::<u16>(),
                )),
            )
        };
        // Every chain we post is one slot, so the next used descriptor is one on.
        self.last_used += 1;
        if self.last_used == self.size {
            self.last_used = 0;
            self.used_wrap = !self.used_wrap;
        }
        Some((id, len))
    }

    /// Makes buffer `id` available with `len` bytes, device-writable when `writable`.
    #[inline]
    fn post(&mut self, id: u16, len: u32, writable: bool) {
        let flags = if writable { virtio::DESC_F_WRITE } else { 0 };
        if !self.packed {
            self.write_desc(id, len, flags);
            self.add_avail(id);
            return;
        }
        let gpa = self.bufs_gpa + u64::from(id) * BUF_SIZE as u64;
        let slot = usize::from(self.avail_idx);
        let bits = if self.avail_wrap {
            PACKED_AVAIL
        } else {
            PACKED_USED
        };
        // SAFETY: avail_idx < size; the descriptor ring holds size 16-byte entries. The
        // flags go last, with release: they hand the descriptor to the device.
        unsafe {
            let d = self.desc.add(16 * slot);
            std::ptr::write_volatile(d.cast::<u64>(), gpa.to_le());
            std::ptr::write_volatile(d.add(8).cast::<u32>(), len.to_le());
            std::ptr::write_volatile(d.add(12).cast::<u16>(), id.to_le());
            (*d.add(14).cast::<AtomicU16>()).store((flags | bits).to_le(), Ordering::Release);
        }
        self.avail_idx += 1;
        if self.avail_idx == self.size {
            self.avail_idx = 0;
            self.avail_wrap = !self.avail_wrap;
        }
    }

    fn used_idx(&self) -> u16 {
        // SAFETY: the used ring lives in our region, 4-byte aligned; idx at offset 2.
        unsafe { (*self.used.add(2).cast::<AtomicU16>()).load(Ordering::Acquire) }
    }

    fn used_elem(&self, i: u16) -> (u16, u32) {
        let slot = usize::from(i & (self.size - 1));
        // SAFETY: slot < size; used elements follow the 4-byte ring header.
        unsafe {
            let e = self.used.add(4 + 8 * slot).cast::<u32>();
            (
                std::ptr::read_volatile(e) as u16,
                std::ptr::read_volatile(e.add(1)),
            )
        }
    }

    fn buf(&self, id: u16) -> *mut u8 {
        // SAFETY: id < size (ids come from our own free list or are checked by callers);
        // each descriptor owns BUF_SIZE bytes of the buffer area.
        unsafe { self.bufs.add(usize::from(id) * BUF_SIZE) }
    }

    fn write_desc(&self, id: u16, len: u32, flags: u16) {
        let gpa = self.bufs_gpa + u64::from(id) * BUF_SIZE as u64;
        // SAFETY: id < size; the descriptor table holds size 16-byte entries.
        unsafe {
            let d = self.desc.add(16 * usize::from(id));
            std::ptr::write_volatile(d.cast::<u64>(), gpa.to_le());
            std::ptr::write_volatile(d.add(8).cast::<u32>(), len.to_le());
            std::ptr::write_volatile(d.add(12).cast::<u16>(), flags.to_le());
            std::ptr::write_volatile(d.add(14).cast::<u16>(), 0);
        }
    }

    fn add_avail(&mut self, id: u16) {
        let slot = usize::from(self.avail_idx & (self.size - 1));
        // SAFETY: slot < size; avail entries follow the 4-byte ring header.
        unsafe { std::ptr::write_volatile(self.avail.add(4 + 2 * slot).cast::<u16>(), id.to_le()) };
        self.avail_idx = self.avail_idx.wrapping_add(1);
    }

    /// Publishes new avail entries and kicks the backend if it asked for it.
    fn publish(&mut self, old: u16) {
        if self.packed {
            // The descriptors were handed over one by one; kick unless the device said
            // it polls (event flags DISABLE).
            fence(Ordering::SeqCst);
            // SAFETY: the device event area is 4 bytes of our region; flags at 2.
            let fl =
                u16::from_le(unsafe { std::ptr::read_volatile(self.used.add(2).cast::<u16>()) });
            if fl & 3 != 1 {
                let _ = self.kick.write(1);
            }
            return;
        }
        // SAFETY: avail idx in our region, 2-byte aligned.
        unsafe {
            (*self.avail.add(2).cast::<AtomicU16>()).store(self.avail_idx, Ordering::Release)
        };
        fence(Ordering::SeqCst);
        let kick = if self.event_idx {
            let off = 4 + 8 * usize::from(self.size);
            // SAFETY: avail_event follows the used ring elements, inside our region.
            let ev =
                u16::from_le(unsafe { std::ptr::read_volatile(self.used.add(off).cast::<u16>()) });
            virtio::need_event(ev, self.avail_idx, old)
        } else {
            // SAFETY: used flags at offset 0 of our used ring.
            let fl = u16::from_le(unsafe { std::ptr::read_volatile(self.used.cast::<u16>()) });
            fl & virtio::USED_F_NO_NOTIFY == 0
        };
        if kick {
            let _ = self.kick.write(1);
        }
    }
}

/// A virtio-user port; see the module docs.
pub struct VirtioUser {
    frontend: Frontend,
    _region: SharedRegion,
    rings: Vec<DriverRing>,
    features: u64,
    hdr_len: usize,
    path: PathBuf,
}

// SAFETY: the raw pointers in the rings point into `_region`, which the port owns; the
// port is used by one thread at a time (`&mut self` for all data-path calls).
unsafe impl Send for VirtioUser {}

fn align(x: u64, a: u64) -> u64 {
    x.div_ceil(a) * a
}

impl VirtioUser {
    /// Connects (or, with `server`, accepts) and brings up all queues.
    pub fn new(cfg: &VirtioUserConfig) -> Result<VirtioUser, VirtioUserError> {
        let size = cfg.ring_size;
        if size == 0 || !size.is_power_of_two() || size > 4096 {
            return Err(VirtioUserError::Config(format!(
                "ring size {size} is not a power of two in 1..=4096"
            )));
        }
        if cfg.queue_pairs == 0 || cfg.queue_pairs > 64 {
            return Err(VirtioUserError::Config(format!(
                "queues={} outside 1..=64",
                cfg.queue_pairs
            )));
        }
        let path = cfg.path.clone();
        let stream = Self::open(cfg)?;
        let nrings = usize::from(cfg.queue_pairs) * 2;
        let frontend = Frontend::from_stream(stream, nrings as u64);
        let proto = |step, source| VirtioUserError::Protocol {
            path: path.clone(),
            step,
            source,
        };

        // Shared region: per ring, desc + avail + used, then the buffers.
        let ring_bytes = align(u64::from(size) * 16, 64)
            + align(virtio::avail_ring_bytes(size), 64)
            + align(virtio::used_ring_bytes(size), 4096);
        let per_ring = ring_bytes + u64::from(size) * BUF_SIZE as u64;
        let total = align(per_ring * nrings as u64, 2 << 20);
        let region = SharedRegion::new("vnfhost-virtio-user", total, cfg.hugepages)?;
        const GPA_BASE: u64 = 0x1_0000_0000;

        frontend.set_owner().map_err(|e| proto("SET_OWNER", e))?;
        let offered = frontend
            .get_features()
            .map_err(|e| proto("GET_FEATURES", e))?;
        if offered & virtio::F_VERSION_1 == 0 {
            return Err(VirtioUserError::Missing {
                path,
                what: "VIRTIO_F_VERSION_1",
            });
        }
        let mut want = virtio::F_VERSION_1 | virtio::F_PROTOCOL_FEATURES;
        if cfg.mrg_rxbuf {
            want |= virtio::NET_F_MRG_RXBUF;
        }
        if cfg.event_idx {
            want |= virtio::RING_F_EVENT_IDX;
        }
        if cfg.queue_pairs > 1 {
            want |= virtio::NET_F_MQ;
        }
        if cfg.packed {
            want |= virtio::F_RING_PACKED;
        }
        let features = offered & want;
        if cfg.packed && features & virtio::F_RING_PACKED == 0 {
            return Err(VirtioUserError::Missing {
                path,
                what: "VIRTIO_F_RING_PACKED",
            });
        }
        let packed = cfg.packed;
        if cfg.queue_pairs > 1 && features & virtio::NET_F_MQ == 0 {
            return Err(VirtioUserError::Missing {
                path,
                what: "VIRTIO_NET_F_MQ",
            });
        }
        let mut frontend = frontend;
        if features & virtio::F_PROTOCOL_FEATURES != 0 {
            let pf = frontend
                .get_protocol_features()
                .map_err(|e| proto("GET_PROTOCOL_FEATURES", e))?;
            let use_pf =
                pf & (VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::REPLY_ACK);
            if cfg.queue_pairs > 1 && !pf.contains(VhostUserProtocolFeatures::MQ) {
                return Err(VirtioUserError::Missing {
                    path,
                    what: "protocol feature MQ",
                });
            }
            frontend
                .set_protocol_features(use_pf)
                .map_err(|e| proto("SET_PROTOCOL_FEATURES", e))?;
            if use_pf.contains(VhostUserProtocolFeatures::REPLY_ACK) {
                // Every request is acknowledged: set-up is synchronous, and a refusal
                // (an unmappable region, a bad ring) is an error here, not a silent
                // dead queue later.
                frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
            }
            // GET_QUEUE_NUM is not asked: the `vhost` crate would take its answer (queue
            // pairs, as QEMU and DPDK mean it) as a bound on ring indices. A backend
            // with too few queues refuses SET_VRING_NUM on the first extra ring instead.
        }
        frontend
            .set_features(features)
            .map_err(|e| proto("SET_FEATURES", e))?;
        let info = VhostUserMemoryRegionInfo {
            guest_phys_addr: GPA_BASE,
            memory_size: region.len() as u64,
            userspace_addr: region.as_ptr() as u64,
            mmap_offset: 0,
            mmap_handle: region.file().as_raw_fd(),
        };
        frontend
            .set_mem_table(&[info])
            .map_err(|e| proto("SET_MEM_TABLE", e))?;

        let mut rings = Vec::with_capacity(nrings);
        let event_idx = features & virtio::RING_F_EVENT_IDX != 0;
        for i in 0..nrings {
            let base = per_ring * i as u64;
            let desc_off = base;
            let avail_off = desc_off + align(u64::from(size) * 16, 64);
            let used_off = avail_off + align(virtio::avail_ring_bytes(size), 64);
            let bufs_off = base + ring_bytes;
            // SAFETY: all offsets are below `total`, the region's length.
            let at = |o: u64| unsafe { region.as_ptr().add(o as usize) };
            let kick = EventFd::new(libc::EFD_NONBLOCK).map_err(VirtioUserError::EventFd)?;
            let call = EventFd::new(libc::EFD_NONBLOCK).map_err(VirtioUserError::EventFd)?;
            let mut r = DriverRing {
                size,
                packed,
                avail_wrap: true,
                used_wrap: true,
                desc: at(desc_off),
                avail: at(avail_off),
                used: at(used_off),
                bufs: at(bufs_off),
                bufs_gpa: GPA_BASE + bufs_off,
                avail_idx: 0,
                last_used: 0,
                used_seen: 0,
                free: (0..size).rev().collect(),
                kick,
                _call: call,
                event_idx,
            };
            if i % 2 == 0 {
                // Receive ring: every buffer posted, device-writable.
                for id in 0..size {
                    r.post(id, BUF_SIZE as u32, true);
                }
                r.free.clear();
                if !packed {
                    // SAFETY: avail idx in our region.
                    unsafe {
                        (*r.avail.add(2).cast::<AtomicU16>()).store(r.avail_idx, Ordering::Release)
                    };
                }
            }
            // We poll the used rings: ask for no interrupts (split: the avail flags;
            // packed: the driver event area's flags, DISABLE).
            // SAFETY: offset 0 of our avail ring, or offset 2 of the driver event area.
            unsafe {
                if packed {
                    std::ptr::write_volatile(r.avail.add(2).cast::<u16>(), 1u16.to_le())
                } else {
                    std::ptr::write_volatile(r.avail.cast::<u16>(), virtio::AVAIL_F_NO_INTERRUPT)
                }
            };
            let cfgd = VringConfigData {
                queue_max_size: size,
                queue_size: size,
                flags: 0,
                desc_table_addr: r.desc as u64,
                used_ring_addr: r.used as u64,
                avail_ring_addr: r.avail as u64,
                log_addr: None,
            };
            frontend
                .set_vring_num(i, size)
                .map_err(|e| proto("SET_VRING_NUM", e))?;
            // Packed: index 0 with the avail wrap counter set (bit 15).
            frontend
                .set_vring_base(i, if packed { 0x8000 } else { 0 })
                .map_err(|e| proto("SET_VRING_BASE", e))?;
            frontend
                .set_vring_addr(i, &cfgd)
                .map_err(|e| proto("SET_VRING_ADDR", e))?;
            frontend
                .set_vring_call(i, &r._call)
                .map_err(|e| proto("SET_VRING_CALL", e))?;
            frontend
                .set_vring_kick(i, &r.kick)
                .map_err(|e| proto("SET_VRING_KICK", e))?;
            rings.push(r);
        }
        if features & virtio::F_PROTOCOL_FEATURES != 0 {
            for i in 0..nrings {
                frontend
                    .set_vring_enable(i, true)
                    .map_err(|e| proto("SET_VRING_ENABLE", e))?;
            }
        }
        Ok(VirtioUser {
            frontend,
            _region: region,
            rings,
            hdr_len: net_hdr_len(features),
            features,
            path,
        })
    }

    fn open(cfg: &VirtioUserConfig) -> Result<UnixStream, VirtioUserError> {
        let err = |source| VirtioUserError::Connect {
            path: cfg.path.clone(),
            source,
        };
        let deadline = Instant::now() + cfg.timeout;
        if cfg.server {
            let _ = std::fs::remove_file(&cfg.path);
            let l = UnixListener::bind(&cfg.path).map_err(err)?;
            l.set_nonblocking(true).map_err(err)?;
            loop {
                match l.accept() {
                    Ok((s, _)) => {
                        s.set_nonblocking(false).map_err(err)?;
                        return Ok(s);
                    }
                    Err(e)
                        if e.kind() == std::io::ErrorKind::WouldBlock
                            && Instant::now() < deadline =>
                    {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Err(e) => return Err(err(e)),
                }
            }
        }
        loop {
            match UnixStream::connect(&cfg.path) {
                Ok(s) => return Ok(s),
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(e) => return Err(err(e)),
            }
        }
    }

    /// The negotiated virtio features.
    pub fn features(&self) -> u64 {
        self.features
    }

    /// Queue pairs.
    pub fn queue_pairs(&self) -> u16 {
        (self.rings.len() / 2) as u16
    }

    /// The socket path.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Whether the backend still holds the connection (a closed socket reads as EOF).
    pub fn connected(&self) -> bool {
        let mut b = [0u8; 1];
        // SAFETY: a non-blocking peek of one byte into a stack buffer.
        let r = unsafe {
            libc::recv(
                self.frontend.as_raw_fd(),
                b.as_mut_ptr().cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        !(r == 0 || (r < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EAGAIN)))
    }

    fn reclaim_tx(&mut self, q: u16) {
        let r = &mut self.rings[usize::from(q) * 2 + 1];
        r.refresh_used();
        while let Some((id, _)) = r.next_used() {
            if id < r.size && r.free.len() < usize::from(r.size) {
                r.free.push(id);
            }
        }
    }

    /// Sends frames on queue pair `q`; returns how many the ring took (the rest did not
    /// fit: the backend is not draining fast enough). Frames longer than a buffer are
    /// refused.
    pub fn send<F: AsRef<[u8]>>(&mut self, q: u16, frames: &[F]) -> usize {
        // Frames up to the first that does not fit a buffer.
        let room = BUF_SIZE - self.hdr_len;
        let n = frames
            .iter()
            .take_while(|f| f.as_ref().len() <= room)
            .count();
        self.send_fill(q, n, |i, buf| {
            let f = frames[i].as_ref();
            buf[..f.len()].copy_from_slice(f);
            f.len()
        })
    }

    /// Sends up to `count` frames on queue pair `q`, letting `fill` write frame `i`
    /// straight into its descriptor's buffer (at most `BUF_SIZE - header` bytes) and
    /// return its length. Saves the generator a copy per frame. Returns how many the
    /// ring took.
    pub fn send_fill(
        &mut self,
        q: u16,
        count: usize,
        mut fill: impl FnMut(usize, &mut [u8]) -> usize,
    ) -> usize {
        if usize::from(q) * 2 + 1 >= self.rings.len() {
            return 0;
        }
        self.reclaim_tx(q);
        let hdr_len = self.hdr_len;
        let r = &mut self.rings[usize::from(q) * 2 + 1];
        let old = r.avail_idx;
        let mut n = 0;
        while n < count {
            let Some(id) = r.free.pop() else { break };
            // SAFETY: the buffer of `id` holds BUF_SIZE bytes and is ours until the
            // descriptor is made available below.
            let buf = unsafe { std::slice::from_raw_parts_mut(r.buf(id), BUF_SIZE) };
            buf[..hdr_len].fill(0);
            let len = fill(n, &mut buf[hdr_len..]).min(BUF_SIZE - hdr_len);
            r.post(id, (hdr_len + len) as u32, false);
            n += 1;
        }
        if n > 0 {
            r.publish(old);
        }
        n
    }

    /// Receives up to `max` frames from queue pair `q`, calling `f` with each (without
    /// its virtio-net header); returns how many.
    pub fn recv(&mut self, q: u16, max: usize, mut f: impl FnMut(&[u8])) -> usize {
        if usize::from(q) * 2 >= self.rings.len() {
            return 0;
        }
        let hdr_len = self.hdr_len;
        let r = &mut self.rings[usize::from(q) * 2];
        r.refresh_used();
        let old = r.avail_idx;
        let (mut n, mut posted) = (0, 0);
        // In batches: take the used entries first and ask for each frame's first line,
        // then hand the frames over, so their cache misses overlap instead of each
        // waiting in turn.
        const BATCH: usize = 32;
        let mut got = [(0u16, 0usize); BATCH];
        while n < max {
            let mut k = 0;
            while k < BATCH && n + k < max {
                let Some((id, len)) = r.next_used() else {
                    break;
                };
                if id >= r.size {
                    continue;
                }
                let len = (len as usize).min(BUF_SIZE);
                crate::hint::prefetch(r.buf(id).wrapping_add(hdr_len));
                got[k] = (id, len);
                k += 1;
            }
            if k == 0 {
                break;
            }
            for &(id, len) in &got[..k] {
                if len > hdr_len {
                    // SAFETY: the buffer of `id` holds BUF_SIZE bytes; len <= BUF_SIZE.
                    let frame = unsafe {
                        std::slice::from_raw_parts(r.buf(id).add(hdr_len), len - hdr_len)
                    };
                    f(frame);
                    n += 1;
                }
                r.post(id, BUF_SIZE as u32, true);
                posted += 1;
            }
        }
        if posted > 0 {
            r.publish(old);
        }
        n
    }

    /// Receives until `want` frames arrived on queue pair `q` or `timeout` passed.
    pub fn recv_wait(&mut self, q: u16, want: usize, timeout: Duration) -> Vec<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        while out.len() < want && Instant::now() < deadline {
            if self.recv(q, want - out.len(), |f| out.push(f.to_vec())) == 0 {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        out
    }
}

/// Raw access to one of our rings, for tests that play a hostile or buggy driver:
/// arbitrary descriptors and avail entries, written into the real shared memory.
pub struct RawRing<'a> {
    ring: &'a mut DriverRing,
    old: u16,
}

impl RawRing<'_> {
    /// Ring size.
    pub fn size(&self) -> u16 {
        self.ring.size
    }

    /// Guest-physical address of the packet buffer of descriptor `id`.
    pub fn buf_gpa(&self, id: u16) -> u64 {
        self.ring.bufs_gpa + u64::from(id % self.ring.size) * BUF_SIZE as u64
    }

    /// Copies `data` (at most [`BUF_SIZE`] bytes) into the buffer of descriptor `id`.
    pub fn write_buf(&mut self, id: u16, data: &[u8]) {
        let n = data.len().min(BUF_SIZE);
        let b = self.ring.buf(id % self.ring.size);
        // SAFETY: the buffer of a valid id holds BUF_SIZE bytes; n <= BUF_SIZE.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), b, n) };
    }

    /// Writes descriptor `id` (below the ring size) verbatim.
    pub fn set_desc(&mut self, id: u16, d: virtio::Desc) {
        let id = id % self.ring.size;
        // SAFETY: id < size; the descriptor table holds size 16-byte entries.
        unsafe {
            let p = self.ring.desc.add(16 * usize::from(id));
            std::ptr::write_volatile(p.cast::<u64>(), d.addr.to_le());
            std::ptr::write_volatile(p.add(8).cast::<u32>(), d.len.to_le());
            std::ptr::write_volatile(p.add(12).cast::<u16>(), d.flags.to_le());
            std::ptr::write_volatile(p.add(14).cast::<u16>(), d.next.to_le());
        }
    }

    /// Writes `d` into the buffer of descriptor `id` as an indirect table entry `i`.
    pub fn set_indirect(&mut self, id: u16, i: u16, d: virtio::Desc) {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&d.addr.to_le_bytes());
        b[8..12].copy_from_slice(&d.len.to_le_bytes());
        b[12..14].copy_from_slice(&d.flags.to_le_bytes());
        b[14..16].copy_from_slice(&d.next.to_le_bytes());
        let off = usize::from(i) * 16;
        if off + 16 <= BUF_SIZE {
            let p = self.ring.buf(id % self.ring.size);
            // SAFETY: off + 16 <= BUF_SIZE, inside the buffer of a valid id.
            unsafe { std::ptr::copy_nonoverlapping(b.as_ptr(), p.add(off), 16) };
        }
    }

    /// Puts `head` (any value, even an invalid one) in the next avail slot.
    pub fn push_avail(&mut self, head: u16) {
        self.ring.add_avail(head);
    }

    /// Moves the avail index by `n` without writing entries (a bogus index).
    pub fn bump_avail_idx(&mut self, n: u16) {
        self.ring.avail_idx = self.ring.avail_idx.wrapping_add(n);
    }
}

impl VirtioUser {
    /// Lets `f` write raw descriptors into ring `ring` (2q: receive, 2q+1: transmit),
    /// then publishes the avail index. For tests of hostile drivers; the port's own
    /// bookkeeping is not updated, so use a fresh port for normal traffic afterwards
    /// or only the other ring.
    ///
    /// Split rings only: on a packed port nothing is written.
    pub fn raw_ring(&mut self, ring: usize, f: impl FnOnce(&mut RawRing<'_>)) {
        let Some(r) = self.rings.get_mut(ring).filter(|r| !r.packed) else {
            return;
        };
        let old = r.avail_idx;
        let mut raw = RawRing { ring: r, old };
        f(&mut raw);
        let old = raw.old;
        r.publish(old);
    }

    /// Disables and re-enables every ring and hands the backend the call eventfds
    /// again, as QEMU does when a guest changes its queue count or masks interrupts.
    /// The backend must keep each ring's position.
    pub fn reenable_rings(&mut self) -> Result<(), VirtioUserError> {
        let proto = |step, source| VirtioUserError::Protocol {
            path: self.path.clone(),
            step,
            source,
        };
        for i in 0..self.rings.len() {
            self.frontend
                .set_vring_enable(i, false)
                .map_err(|e| proto("SET_VRING_ENABLE", e))?;
            self.frontend
                .set_vring_call(i, &self.rings[i]._call)
                .map_err(|e| proto("SET_VRING_CALL", e))?;
            self.frontend
                .set_vring_enable(i, true)
                .map_err(|e| proto("SET_VRING_ENABLE", e))?;
        }
        Ok(())
    }

    /// Used elements the backend returned on ring `ring` so far: (id, len) pairs after
    /// the last call. For hostile-driver tests.
    pub fn raw_used(&mut self, ring: usize) -> Vec<(u16, u32)> {
        let Some(r) = self.rings.get_mut(ring) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        r.refresh_used();
        while let Some(e) = r.next_used() {
            out.push(e);
        }
        out
    }
}
