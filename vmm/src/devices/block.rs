//! virtio-blk served by the VMM: one file or block device behind one queue.
//!
//! The disk is opened when the VM is built (read-only for `--disk ...,ro`); its size then,
//! in whole 512-byte sectors, is the capacity the guest sees. A file that shrinks later
//! (the pod VM's slots are truncated and refilled while the guest runs) reads as zeros
//! past its end, as a sparse file's holes do; writes past the capacity fail.
//!
//! Requests (`IN`, `OUT`, `FLUSH`, `GET_ID`) are served by a [`Worker`] thread woken by
//! the queue's ioeventfd: `preadv`/`pwritev` straight between the file and the guest's
//! buffers, `fdatasync` for a flush, the serial (20 bytes, NUL-padded) for `GET_ID`. The
//! chain is read as virtio 1 allows, without assuming its framing: the 16-byte header
//! and, for `OUT`, the data are the device-readable bytes; the data of `IN` and the status
//! byte (the last one) are the device-writable bytes.
//!
//! A request whose buffers are not in guest RAM, that reaches past the capacity, or that
//! writes to a read-only disk fails with `IOERR`; a chain without a writable byte for the
//! status is returned with length 0 and counted. A broken ring ([`QueueError`]) stops the
//! queue until the driver resets the device. Nothing a guest sends can make the VMM
//! panic or touch memory outside guest RAM.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pmd::ratelimit::RateLimit;
use pmd::virtio::F_VERSION_1;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::virtio_mmio::{read_config_bytes, QueueConfig, VirtioDevice};
use super::virtq::{Desc, Queue, QueueError};
use super::Worker;
use crate::memory::GuestRam;
use crate::vm::DiskConfig;

/// The virtio device id.
pub const DEVICE_ID: u32 = 2;
/// Largest queue the device accepts.
pub const QUEUE_MAX: u16 = 256;
/// Data buffers per request the driver may use (`seg_max`): with the header and the
/// status, a request fits a queue of 128 without indirect descriptors.
pub const SEG_MAX: u32 = 126;
/// Bytes of the serial number `GET_ID` returns.
pub const ID_BYTES: usize = 20;
const SECTOR: u64 = 512;

/// `VIRTIO_BLK_F_SEG_MAX`.
pub const F_SEG_MAX: u64 = 1 << 2;
/// `VIRTIO_BLK_F_RO`.
pub const F_RO: u64 = 1 << 5;
/// `VIRTIO_BLK_F_FLUSH`.
pub const F_FLUSH: u64 = 1 << 9;

/// Request types.
pub mod req {
    #![allow(missing_docs)]
    pub const IN: u32 = 0;
    pub const OUT: u32 = 1;
    pub const FLUSH: u32 = 4;
    pub const GET_ID: u32 = 8;
}

/// Status values.
pub mod status {
    #![allow(missing_docs)]
    pub const OK: u8 = 0;
    pub const IOERR: u8 = 1;
    pub const UNSUPP: u8 = 2;
}

/// Request headers are 16 bytes: type, reserved, sector.
const HEADER: u64 = 16;
/// Buffers one `preadv`/`pwritev` takes.
const IOV_BATCH: usize = 64;
/// Requests served before the thread looks at its stop eventfd again.
const BUDGET: usize = 256;

/// What a disk did, for tests and the log.
#[derive(Debug, Default)]
pub struct BlockStats {
    /// Requests completed (any status).
    pub requests: AtomicU64,
    /// Requests answered `IOERR` or `UNSUPP`.
    pub errors: AtomicU64,
    /// Chains without room for a status, returned with length 0.
    pub bad_chains: AtomicU64,
}

/// A virtio-blk device.
pub struct Block {
    cfg: DiskConfig,
    file: File,
    capacity: u64,
    ram: Arc<GuestRam>,
    kick: EventFd,
    irq: EventFd,
    broken: Arc<AtomicBool>,
    stats: Arc<BlockStats>,
    worker: Option<Worker<()>>,
}

impl Block {
    /// Opens the disk (read-only for `cfg.read_only`). `kick` is the queue's ioeventfd,
    /// `irq` the device's irqfd.
    pub fn new(
        cfg: DiskConfig,
        ram: Arc<GuestRam>,
        kick: EventFd,
        irq: EventFd,
    ) -> io::Result<Block> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(!cfg.read_only)
            .open(&cfg.path)?;
        // The end of a regular file, or a block device's size.
        let size = file.seek(SeekFrom::End(0))?;
        Ok(Block {
            capacity: size - size % SECTOR,
            cfg,
            file,
            ram,
            kick,
            irq,
            broken: Arc::new(AtomicBool::new(false)),
            stats: Arc::default(),
            worker: None,
        })
    }

    /// Capacity in bytes (whole sectors).
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Counters.
    pub fn stats(&self) -> &Arc<BlockStats> {
        &self.stats
    }

    fn serial(&self) -> [u8; ID_BYTES] {
        let mut id = [0u8; ID_BYTES];
        let s = self.cfg.serial.as_bytes();
        let n = s.len().min(ID_BYTES);
        id[..n].copy_from_slice(&s[..n]);
        id
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        DEVICE_ID
    }

    fn features(&self) -> u64 {
        F_VERSION_1 | F_SEG_MAX | F_FLUSH | if self.cfg.read_only { F_RO } else { 0 }
    }

    fn num_queues(&self) -> usize {
        1
    }

    fn queue_max(&self) -> u16 {
        QUEUE_MAX
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // struct virtio_blk_config { le64 capacity; le32 size_max; le32 seg_max; ... }
        let mut cfg = [0u8; 36];
        cfg[..8].copy_from_slice(&(self.capacity / SECTOR).to_le_bytes());
        cfg[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
        read_config_bytes(&cfg, offset, data);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}

    fn activate(&mut self, _acked: u64, queues: &[QueueConfig]) -> Result<(), String> {
        let q = queues.first().ok_or("no queue")?;
        let queue = Queue::new(0, q, QUEUE_MAX, &self.ram)?;
        let io = |e: io::Error| format!("starting the disk thread: {e}");
        let mut server = Server {
            queue,
            file: self.file.try_clone().map_err(io)?,
            capacity: self.capacity,
            read_only: self.cfg.read_only,
            serial: self.serial(),
            ram: Arc::clone(&self.ram),
            irq: self.irq.try_clone().map_err(io)?,
            stats: Arc::clone(&self.stats),
            descs: Vec::with_capacity(usize::from(QUEUE_MAX)),
            pieces: Vec::with_capacity(usize::from(QUEUE_MAX)),
        };
        let kick = self.kick.try_clone().map_err(io)?;
        let broken = Arc::clone(&self.broken);
        let path = self.cfg.path.display().to_string();
        self.worker = Some(
            Worker::spawn("virtio-blk", move |stop| {
                if let Err(e) = server.run(&kick, stop) {
                    tracing::warn!("virtio-blk {path}: {e}; the device needs a reset");
                    broken.store(true, Ordering::Relaxed);
                    wait(stop);
                }
            })
            .map_err(io)?,
        );
        Ok(())
    }

    fn reset(&mut self) {
        if let Some(w) = self.worker.take() {
            w.stop();
        }
        self.broken.store(false, Ordering::Relaxed);
    }

    fn notify(&mut self, _queue: u16) {
        let _ = self.kick.write(1);
    }

    fn needs_reset(&self) -> bool {
        self.broken.load(Ordering::Relaxed)
    }

    fn close(&mut self) {
        if let Some(w) = self.worker.take() {
            w.stop();
        }
    }
}

/// Blocks until `stop` is readable (a stopped queue waits for the driver's reset).
fn wait(stop: &EventFd) {
    let mut pfd = [EpollEvent::default()];
    if let Ok(ep) = Epoll::new() {
        if ep
            .ctl(
                ControlOperation::Add,
                stop.as_raw_fd(),
                EpollEvent::new(EventSet::IN, 0),
            )
            .is_ok()
        {
            while !matches!(ep.wait(-1, &mut pfd), Ok(1..)) {}
            return;
        }
    }
    // No epoll: poll the eventfd slowly.
    while stop.read().is_err() {
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One contiguous piece of a request's data in guest RAM.
#[derive(Debug, Clone, Copy)]
struct Piece {
    gpa: u64,
    host: u64,
    len: usize,
}

/// The request queue and what serving it needs; owned by the worker thread.
struct Server {
    queue: Queue,
    file: File,
    capacity: u64,
    read_only: bool,
    serial: [u8; ID_BYTES],
    ram: Arc<GuestRam>,
    irq: EventFd,
    stats: Arc<BlockStats>,
    descs: Vec<Desc>,
    pieces: Vec<Piece>,
}

static BAD_REQUEST_LOG: std::sync::LazyLock<RateLimit> =
    std::sync::LazyLock::new(|| RateLimit::new(Duration::from_secs(5)));

impl Server {
    /// Serves the queue until `stop`; an error is a broken ring.
    fn run(&mut self, kick: &EventFd, stop: &EventFd) -> Result<(), QueueError> {
        const STOP: u64 = 0;
        const KICK: u64 = 1;
        let ep = Epoll::new().map_err(|_| QueueError::Memory(0))?;
        for (fd, key) in [(stop.as_raw_fd(), STOP), (kick.as_raw_fd(), KICK)] {
            ep.ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, key),
            )
            .map_err(|_| QueueError::Memory(0))?;
        }
        let mut events = [EpollEvent::default(); 2];
        let mut more = true;
        loop {
            let n = match ep.wait(if more { 0 } else { -1 }, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => 0,
            };
            if events[..n].iter().any(|e| e.data() == STOP) {
                return Ok(());
            }
            let _ = kick.read();
            more = self.process(BUDGET)?;
        }
    }

    /// Serves up to `budget` requests; `true` when more may be waiting.
    fn process(&mut self, budget: usize) -> Result<bool, QueueError> {
        let ram = Arc::clone(&self.ram);
        let mem = ram.mem();
        let mut served = 0;
        while served < budget {
            let Some(head) = self.queue.pop(mem, &mut self.descs)? else {
                break;
            };
            let len = self.serve();
            self.queue.push_used(mem, head, len)?;
            served += 1;
        }
        if served > 0 && self.queue.wants_interrupt(mem) {
            let _ = self.irq.write(1);
        }
        Ok(served == budget)
    }

    /// Serves the chain in `self.descs`; returns the bytes written into it.
    fn serve(&mut self) -> u32 {
        let ram = Arc::clone(&self.ram);
        let mem = ram.mem();
        // The status is the last device-writable byte.
        let status_at = self
            .descs
            .iter()
            .rev()
            .find(|d| d.write && d.len > 0)
            .and_then(|d| d.addr.checked_add(u64::from(d.len) - 1));
        let Some(status_at) = status_at else {
            self.stats.bad_chains.fetch_add(1, Ordering::Relaxed);
            if let Some(n) = BAD_REQUEST_LOG.check() {
                tracing::warn!("virtio-blk: a request without a status byte ({n} more not logged)");
            }
            return 0;
        };
        let (st, written) = self.execute();
        if mem.write_obj(st, GuestAddress(status_at)).is_err() {
            self.stats.bad_chains.fetch_add(1, Ordering::Relaxed);
            return 0;
        }
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        if st != status::OK {
            self.stats.errors.fetch_add(1, Ordering::Relaxed);
        }
        // `written` is at most the writable bytes minus the status: no overflow.
        written.saturating_add(1)
    }

    /// Runs the request; its status and the data bytes it wrote into the chain.
    fn execute(&mut self) -> (u8, u32) {
        let stream = |write: bool| -> u64 {
            self.descs
                .iter()
                .filter(|d| d.write == write)
                .map(|d| u64::from(d.len))
                .sum()
        };
        let (readable, writable) = (stream(false), stream(true));
        let mut header = [0u8; HEADER as usize];
        if readable < HEADER || !self.read_stream(&mut header) {
            return (status::IOERR, 0);
        }
        let kind = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let mut sector = [0u8; 8];
        sector.copy_from_slice(&header[8..16]);
        let sector = u64::from_le_bytes(sector);
        // Without the status byte.
        let data_in = writable - 1;
        let capacity = self.capacity;
        let in_range = |len: u64| {
            sector
                .checked_mul(SECTOR)
                .and_then(|off| off.checked_add(len))
                .is_some_and(|end| end <= capacity)
        };
        match kind {
            req::IN => {
                if !in_range(data_in) || !self.gather(true, 0, data_in) {
                    return (status::IOERR, 0);
                }
                match self.transfer(sector * SECTOR, true) {
                    // At most the chain's writable bytes, which fit the used element.
                    Ok(()) => (status::OK, u32::try_from(data_in).unwrap_or(u32::MAX)),
                    Err(_) => (status::IOERR, 0),
                }
            }
            req::OUT => {
                let len = readable - HEADER;
                if self.read_only || !in_range(len) || !self.gather(false, HEADER, len) {
                    return (status::IOERR, 0);
                }
                match self.transfer(sector * SECTOR, false) {
                    Ok(()) => (status::OK, 0),
                    Err(_) => (status::IOERR, 0),
                }
            }
            req::FLUSH => {
                if self.read_only || self.file.sync_data().is_ok() {
                    (status::OK, 0)
                } else {
                    (status::IOERR, 0)
                }
            }
            req::GET_ID => {
                let n = data_in.min(ID_BYTES as u64);
                if !self.gather(true, 0, n) {
                    return (status::IOERR, 0);
                }
                let mem = self.ram.mem();
                let mut off = 0;
                for p in &self.pieces {
                    if mem
                        .write_slice(&self.serial[off..off + p.len], GuestAddress(p.gpa))
                        .is_err()
                    {
                        return (status::IOERR, 0);
                    }
                    off += p.len;
                }
                (status::OK, n as u32)
            }
            _ => (status::UNSUPP, 0),
        }
    }

    /// Copies the start of the device-readable bytes into `buf`.
    fn read_stream(&mut self, buf: &mut [u8]) -> bool {
        if !self.gather(false, 0, buf.len() as u64) {
            return false;
        }
        let mem = self.ram.mem();
        let mut off = 0;
        for p in &self.pieces {
            if mem
                .read_slice(&mut buf[off..off + p.len], GuestAddress(p.gpa))
                .is_err()
            {
                return false;
            }
            off += p.len;
        }
        true
    }

    /// Puts into `self.pieces` the `len` bytes after the first `skip` of the chain's
    /// device-writable (`write`) or device-readable bytes, each piece translated to a VMM
    /// address. False when a piece is not in guest RAM.
    fn gather(&mut self, write: bool, mut skip: u64, mut len: u64) -> bool {
        self.pieces.clear();
        for d in self.descs.iter().filter(|d| d.write == write) {
            if len == 0 {
                break;
            }
            let dlen = u64::from(d.len);
            if skip >= dlen {
                skip -= dlen;
                continue;
            }
            let take = (dlen - skip).min(len);
            let Some(gpa) = d.addr.checked_add(skip) else {
                return false;
            };
            let Some(host) = self.ram.host_addr(gpa, take) else {
                return false;
            };
            self.pieces.push(Piece {
                gpa,
                host,
                // `take` is at most a descriptor's u32 length.
                len: take as usize,
            });
            skip = 0;
            len -= take;
        }
        len == 0
    }

    /// Reads (`to_guest`) the file at `off` into `self.pieces`, or writes them there. A
    /// read past the end of the file fills the rest with zeros.
    fn transfer(&self, off: u64, to_guest: bool) -> io::Result<()> {
        const EMPTY: libc::iovec = libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        };
        let fd = self.file.as_raw_fd();
        let mut iov = [EMPTY; IOV_BATCH];
        let mut pos = off;
        for (c, chunk) in self.pieces.chunks(IOV_BATCH).enumerate() {
            for (v, p) in iov.iter_mut().zip(chunk) {
                *v = libc::iovec {
                    iov_base: p.host as *mut libc::c_void,
                    iov_len: p.len,
                };
            }
            let total: usize = chunk.iter().map(|p| p.len).sum();
            let (mut first, mut done) = (0, 0);
            while done < total {
                let at = libc::off_t::try_from(pos + done as u64)
                    .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
                let cnt = (chunk.len() - first) as libc::c_int;
                let bufs = iov[first..chunk.len()].as_ptr();
                // SAFETY: each iovec of `bufs[..cnt]` covers a range that
                // `GuestRam::host_addr` found inside one mapped RAM range; `self.ram` keeps
                // that mapping alive for the call. The kernel reads or writes only within
                // those ranges; the guest may change them meanwhile, which is its own
                // business (no Rust reference covers guest memory).
                let n = unsafe {
                    if to_guest {
                        libc::preadv(fd, bufs, cnt, at)
                    } else {
                        libc::pwritev(fd, bufs, cnt, at)
                    }
                };
                if n < 0 {
                    let e = io::Error::last_os_error();
                    if e.kind() == io::ErrorKind::Interrupted {
                        continue;
                    }
                    return Err(e);
                }
                if n == 0 {
                    if !to_guest {
                        return Err(io::ErrorKind::WriteZero.into());
                    }
                    // End of file: the rest reads as zeros.
                    let skip = (c * IOV_BATCH) as u64;
                    return self.zero_from(skip, done);
                }
                let mut n = n as usize;
                done += n;
                while n > 0 && first < chunk.len() {
                    let v = &mut iov[first];
                    if n >= v.iov_len {
                        n -= v.iov_len;
                        first += 1;
                    } else {
                        v.iov_base = v.iov_base.cast::<u8>().wrapping_add(n).cast();
                        v.iov_len -= n;
                        n = 0;
                    }
                }
            }
            pos += total as u64;
        }
        Ok(())
    }

    /// Zeroes the pieces from piece `first` on, after the first `done` bytes of those.
    fn zero_from(&self, first: u64, mut done: usize) -> io::Result<()> {
        const ZEROS: [u8; 4096] = [0; 4096];
        let mem = self.ram.mem();
        for p in self.pieces.iter().skip(first as usize) {
            if done >= p.len {
                done -= p.len;
                continue;
            }
            let mut at = done;
            done = 0;
            while at < p.len {
                let n = (p.len - at).min(ZEROS.len());
                mem.write_slice(&ZEROS[..n], GuestAddress(p.gpa + at as u64))
                    .map_err(|e| io::Error::other(e.to_string()))?;
                at += n;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio_mmio::{reg, MmioTransport};
    use crate::devices::virtq::testing::Driver;
    use std::io::Write;
    use std::path::PathBuf;

    struct Disk {
        path: PathBuf,
    }

    impl Disk {
        fn new(tag: &str, content: &[u8], len: u64) -> Disk {
            let path =
                std::env::temp_dir().join(format!("vnfhost-blk-{tag}-{}.img", std::process::id()));
            let mut f = File::create(&path).unwrap();
            f.write_all(content).unwrap();
            f.set_len(len).unwrap();
            Disk { path }
        }
        fn cfg(&self, read_only: bool) -> DiskConfig {
            DiskConfig {
                path: self.path.clone(),
                serial: "vnfslot0".into(),
                read_only,
            }
        }
    }

    impl Drop for Disk {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.path);
        }
    }

    fn ram() -> Arc<GuestRam> {
        Arc::new(GuestRam::new(32 << 20, false, false).unwrap())
    }

    fn server(ram: &Arc<GuestRam>, disk: &Disk, ro: bool, q: &QueueConfig) -> Server {
        let dev = Block::new(
            disk.cfg(ro),
            Arc::clone(ram),
            EventFd::new(0).unwrap(),
            EventFd::new(0).unwrap(),
        )
        .unwrap();
        Server {
            queue: Queue::new(0, q, QUEUE_MAX, ram).unwrap(),
            file: dev.file.try_clone().unwrap(),
            capacity: dev.capacity,
            read_only: ro,
            serial: dev.serial(),
            ram: Arc::clone(ram),
            irq: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            stats: Arc::default(),
            descs: vec![],
            pieces: vec![],
        }
    }

    fn header(kind: u32, sector: u64) -> Vec<u8> {
        let mut h = kind.to_le_bytes().to_vec();
        h.extend(0u32.to_le_bytes());
        h.extend(sector.to_le_bytes());
        h
    }

    fn read_guest(ram: &GuestRam, at: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        ram.mem().read_slice(&mut v, GuestAddress(at)).unwrap();
        v
    }

    #[test]
    fn config_and_features_describe_the_disk() {
        let disk = Disk::new("cfg", b"", 1 << 20);
        let ram = ram();
        let ro = Block::new(
            disk.cfg(true),
            Arc::clone(&ram),
            EventFd::new(0).unwrap(),
            EventFd::new(0).unwrap(),
        )
        .unwrap();
        assert_ne!(ro.features() & F_RO, 0);
        assert_ne!(ro.features() & F_FLUSH, 0);
        assert_ne!(ro.features() & F_VERSION_1, 0);
        let mut t = MmioTransport::new(ro, EventFd::new(0).unwrap());
        let mut b = [0u8; 4];
        t.read(reg::DEVICE_ID, &mut b);
        assert_eq!(u32::from_le_bytes(b), DEVICE_ID);
        let mut cap = [0u8; 8];
        t.read(reg::CONFIG, &mut cap);
        assert_eq!(u64::from_le_bytes(cap), (1 << 20) / 512);
        t.read(reg::CONFIG + 12, &mut b);
        assert_eq!(u32::from_le_bytes(b), SEG_MAX);
        let rw = Block::new(
            disk.cfg(false),
            ram,
            EventFd::new(0).unwrap(),
            EventFd::new(0).unwrap(),
        )
        .unwrap();
        assert_eq!(rw.features() & F_RO, 0);
    }

    #[test]
    fn reads_writes_flushes_and_ids() {
        let mut content = vec![0u8; 4096];
        content[512..1024].fill(0xab);
        let disk = Disk::new("rw", &content, 1 << 20);
        let ram = ram();
        let mem = ram.mem();
        let mut d = Driver::new(0x10_0000, 16);
        let mut s = server(&ram, &disk, false, &d.cfg);

        // IN, sector 1, data split over two buffers, status in its own.
        let h = d.buf(mem, &header(req::IN, 1), 16);
        let (a, b) = (d.buf(mem, &[], 200), d.buf(mem, &[], 312));
        let st = d.buf(mem, &[0xff], 1);
        let head = d.post(
            mem,
            &[
                (h, 16, false),
                (a, 200, true),
                (b, 312, true),
                (st, 1, true),
            ],
        );
        assert!(!s.process(BUDGET).unwrap());
        assert_eq!(d.used(mem), Some((head, 513)));
        assert_eq!(read_guest(&ram, st, 1), [status::OK]);
        assert_eq!(read_guest(&ram, a, 200), vec![0xab; 200]);
        assert_eq!(read_guest(&ram, b, 312), vec![0xab; 312]);
        assert_eq!(s.irq.read().unwrap(), 1);

        // OUT, sector 4, header and data in one buffer (virtio 1 allows any framing).
        let mut out = header(req::OUT, 4);
        out.extend(vec![0x5a; 1024]);
        let o = d.buf(mem, &out, 16 + 1024);
        let st = d.buf(mem, &[0xff], 1);
        let head = d.post(mem, &[(o, 16 + 1024, false), (st, 1, true)]);
        s.process(BUDGET).unwrap();
        assert_eq!(d.used(mem), Some((head, 1)));
        assert_eq!(read_guest(&ram, st, 1), [status::OK]);
        let on_disk = std::fs::read(&disk.path).unwrap();
        assert_eq!(&on_disk[2048..3072], &[0x5a; 1024][..]);

        // FLUSH; GET_ID into a 20-byte buffer.
        let f = d.buf(mem, &header(req::FLUSH, 0), 16);
        let st = d.buf(mem, &[0xff], 1);
        d.post(mem, &[(f, 16, false), (st, 1, true)]);
        let g = d.buf(mem, &header(req::GET_ID, 0), 16);
        let id = d.buf(mem, &[], 20);
        let st2 = d.buf(mem, &[0xff], 1);
        let head = d.post(mem, &[(g, 16, false), (id, 20, true), (st2, 1, true)]);
        s.process(BUDGET).unwrap();
        assert_eq!(read_guest(&ram, st, 1), [status::OK]);
        d.used(mem);
        assert_eq!(d.used(mem), Some((head, 21)));
        assert_eq!(read_guest(&ram, st2, 1), [status::OK]);
        let mut want = b"vnfslot0".to_vec();
        want.resize(20, 0);
        assert_eq!(read_guest(&ram, id, 20), want);

        // An unknown request type.
        let u = d.buf(mem, &header(99, 0), 16);
        let st = d.buf(mem, &[0xff], 1);
        d.post(mem, &[(u, 16, false), (st, 1, true)]);
        s.process(BUDGET).unwrap();
        assert_eq!(read_guest(&ram, st, 1), [status::UNSUPP]);
        assert_eq!(s.stats.requests.load(Ordering::Relaxed), 5);
    }

    #[test]
    fn a_file_shorter_than_the_capacity_reads_as_zeros_past_its_end() {
        let disk = Disk::new("short", &[7u8; 1024], 1 << 20);
        let ram = ram();
        let mem = ram.mem();
        let mut d = Driver::new(0x10_0000, 16);
        let mut s = server(&ram, &disk, true, &d.cfg);
        // The slot is truncated while the guest runs; the capacity stays.
        File::options()
            .write(true)
            .open(&disk.path)
            .unwrap()
            .set_len(600)
            .unwrap();
        let h = d.buf(mem, &header(req::IN, 1), 16);
        let a = d.buf(mem, &[0xee; 1024], 1024);
        let st = d.buf(mem, &[0xff], 1);
        d.post(mem, &[(h, 16, false), (a, 1024, true), (st, 1, true)]);
        s.process(BUDGET).unwrap();
        assert_eq!(read_guest(&ram, st, 1), [status::OK]);
        let got = read_guest(&ram, a, 1024);
        assert_eq!(&got[..88], &[7u8; 88][..]);
        assert!(got[88..].iter().all(|&b| b == 0));
    }

    #[test]
    fn bad_requests_fail_alone() {
        let disk = Disk::new("bad", b"", 1 << 20);
        let ram = ram();
        let mem = ram.mem();
        let mut d = Driver::new(0x10_0000, 32);
        let mut s = server(&ram, &disk, true, &d.cfg);
        let ioerr = |d: &mut Driver, s: &mut Server, bufs: &[(u64, u32, bool)], st: u64| {
            let head = d.post(mem, bufs);
            s.process(BUDGET).unwrap();
            assert_eq!(d.used(mem).map(|u| u.0), Some(head));
            assert_eq!(read_guest(&ram, st, 1), [status::IOERR], "{bufs:x?}");
        };
        // Past the capacity; a sector number that overflows.
        for sector in [2047, u64::MAX / 256] {
            let h = d.buf(mem, &header(req::IN, sector), 16);
            let a = d.buf(mem, &[], 1024);
            let st = d.buf(mem, &[0xff], 1);
            ioerr(
                &mut d,
                &mut s,
                &[(h, 16, false), (a, 1024, true), (st, 1, true)],
                st,
            );
        }
        // A data buffer outside guest RAM, and one that wraps around.
        let h = d.buf(mem, &header(req::IN, 0), 16);
        let st = d.buf(mem, &[0xff], 1);
        ioerr(
            &mut d,
            &mut s,
            &[(h, 16, false), (64 << 20, 512, true), (st, 1, true)],
            st,
        );
        let h = d.buf(mem, &header(req::IN, 0), 16);
        let st = d.buf(mem, &[0xff], 1);
        ioerr(
            &mut d,
            &mut s,
            &[(h, 16, false), (u64::MAX - 10, 512, true), (st, 1, true)],
            st,
        );
        // A write to a read-only disk; a header that is too short.
        let mut out = header(req::OUT, 0);
        out.extend([1u8; 512]);
        let o = d.buf(mem, &out, 528);
        let st = d.buf(mem, &[0xff], 1);
        ioerr(&mut d, &mut s, &[(o, 528, false), (st, 1, true)], st);
        let h = d.buf(mem, &header(req::IN, 0), 8);
        let st = d.buf(mem, &[0xff], 1);
        ioerr(&mut d, &mut s, &[(h, 8, false), (st, 1, true)], st);
        // No writable byte for the status, or a status outside RAM: length 0, counted.
        let h = d.buf(mem, &header(req::FLUSH, 0), 16);
        let head = d.post(mem, &[(h, 16, false)]);
        s.process(BUDGET).unwrap();
        assert_eq!(d.used(mem), Some((head, 0)));
        let head = d.post(mem, &[(h, 16, false), (u64::MAX, 1, true)]);
        s.process(BUDGET).unwrap();
        assert_eq!(d.used(mem), Some((head, 0)));
        assert_eq!(s.stats.bad_chains.load(Ordering::Relaxed), 2);
        assert!(std::fs::read(&disk.path).unwrap().iter().all(|&b| b == 0));
    }

    #[test]
    fn a_kick_wakes_the_thread_and_a_broken_ring_needs_reset() {
        let disk = Disk::new("thread", &[3u8; 512], 4096);
        let ram = ram();
        let mem = ram.mem();
        let kick = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let irq = EventFd::new(0).unwrap();
        let mut dev = Block::new(
            disk.cfg(true),
            Arc::clone(&ram),
            kick.try_clone().unwrap(),
            irq.try_clone().unwrap(),
        )
        .unwrap();
        let mut d = Driver::new(0x10_0000, 16);
        dev.activate(F_VERSION_1, &[d.cfg]).unwrap();
        let h = d.buf(mem, &header(req::IN, 0), 16);
        let a = d.buf(mem, &[], 512);
        let st = d.buf(mem, &[0xff], 1);
        let head = d.post(mem, &[(h, 16, false), (a, 512, true), (st, 1, true)]);
        kick.write(1).unwrap();
        // Blocks until the thread interrupts.
        assert_eq!(irq.read().unwrap(), 1);
        assert_eq!(d.used(mem), Some((head, 513)));
        assert_eq!(read_guest(&ram, a, 512), vec![3u8; 512]);

        // A chain that loops stops the queue; the device says it needs a reset.
        d.write_desc(mem, 0, h, 16, pmd::virtio::DESC_F_NEXT, 0);
        d.make_available(mem, 0);
        kick.write(1).unwrap();
        let t = std::time::Instant::now();
        while !dev.needs_reset() {
            assert!(t.elapsed() < Duration::from_secs(10), "never marked");
            std::thread::sleep(Duration::from_millis(5));
        }
        dev.reset();
        assert!(!dev.needs_reset());
        assert!(dev.worker.is_none());
    }
}
