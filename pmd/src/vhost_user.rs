//! The vhost-user backend port: the switch side of a VM's (or DPDK app's) virtio-net NIC.
//!
//! ```text
//!  control thread (one per port)               polling cores
//!  ─────────────────────────────               ─────────────
//!  accept/connect ─ vhost-user messages        poll_rx(q): guest TX ring 2q+1
//!  (vhost crate parses, `Device` applies)      tx_burst(q): guest RX ring 2q
//!        │ builds a vring::Ring, installs it          ▲
//!        └──── under the queue's QueueCell ───────────┘  (one CAS per burst)
//! ```
//!
//! Message framing lives in [`crate::vhost_proto`] (see there why it is ours and not the
//! `vhost` crate's); the rings are walked by [`crate::vring`], because a burst must stay
//! open while the switch copies frames straight into another guest.
//!
//! Server mode creates the socket (mode 0660) and serves one frontend at a time; client
//! mode connects to a socket the VMM owns and reconnects whenever the connection drops,
//! so either side can restart. A malformed message (bad framing, wrong size, unknown
//! request, wrong descriptor count, a message that stalls for 2 s) disconnects the
//! frontend and resets the port to wait for the next one; a well-formed request we
//! cannot honour (an unmappable region, a ring outside shared memory) is refused — with
//! a failure ack when REPLY_ACK asks for one — and counted. Other ports are not affected.
//!
//! Guest memory is read and written only through [`GuestSlice`]s. The module's five
//! `unsafe` blocks turn a ring's checked buffer into one where the borrow checker
//! cannot follow: two in transmit, where a frame's first guest buffer is kept as an
//! address while the chain is reused for the next buffers, and three in receive, where
//! a guest buffer (or a gather buffer) becomes an entry of the batch, valid until the
//! batch is cleared before the queue is let go.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::mem::{GuestMemory, GuestRegion, GuestSlice};
use crate::pool::{BufPool, MAX_FRAME};
use crate::port::{
    edited_len, edited_pieces, Piece, Port, PortDrop, PortStats, QueueCounters, RxBatch, TxSel,
    BURST, PREFIX_MAX,
};
use crate::ratelimit::RateLimit;
use crate::sync::QueueCell;
use crate::vhost_proto as proto;
use crate::virtio::{self, net_hdr_len};
use crate::vring::Ring;
use crate::vring::{Chain, ChainError, DeviceRing, PackedRing, RingAddrs};

/// Who creates the socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// We listen (create the socket); the frontend connects.
    Server,
    /// The frontend listens; we connect, and reconnect after it restarts.
    Client,
}

/// Configuration of a vhost-user backend port.
#[derive(Clone, Debug)]
pub struct VhostUserConfig {
    /// Port name (for logs and counters).
    pub name: String,
    /// The Unix socket.
    pub path: PathBuf,
    /// Server or client.
    pub mode: Mode,
    /// Queue pairs offered (`GET_QUEUE_NUM`, VIRTIO_NET_F_MQ when > 1).
    pub queue_pairs: u16,
    /// MAC address reported in the device config space.
    pub mac: [u8; 6],
    /// Put the port's gather buffers on hugepages.
    pub hugepages: bool,
    /// The most guest memory (bytes, all regions together) a frontend may share with
    /// this port. Every page of it that the switch touches and the frontend never did
    /// is allocated on the switch's account, so a larger table is refused.
    pub max_memory: u64,
}

/// Default of [`VhostUserConfig::max_memory`]: 16 GiB, more than a network function's
/// pod VM usually has; raise it per port for larger guests.
pub const DEFAULT_MAX_MEMORY: u64 = 16 << 30;

impl VhostUserConfig {
    /// A server-mode port with one queue pair, a locally administered MAC and normal
    /// pages; adjust the fields for anything else.
    pub fn new(name: &str, path: impl Into<PathBuf>) -> Self {
        VhostUserConfig {
            name: name.into(),
            path: path.into(),
            mode: Mode::Server,
            queue_pairs: 1,
            mac: [0x02, 0x76, 0, 0, 0, 1],
            hugepages: false,
            max_memory: DEFAULT_MAX_MEMORY,
        }
    }
}

/// Errors creating a port.
#[derive(Debug, thiserror::Error)]
pub enum VhostUserError {
    /// The socket could not be created.
    #[error("vhost-user socket {path}: {source}")]
    Socket {
        /// The socket path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A path exists and is not a socket.
    #[error("vhost-user socket {0}: path exists and is not a socket; refusing to remove it")]
    NotASocket(PathBuf),
    /// A bad queue count.
    #[error("port {name}: queues={queues} is outside 1..=64")]
    BadQueues {
        /// The port.
        name: String,
        /// The count asked for.
        queues: u16,
    },
    /// Buffer memory.
    #[error(transparent)]
    Mem(#[from] crate::mem::MemError),
    /// The control thread could not start.
    #[error("port {name}: spawning control thread: {source}")]
    Thread {
        /// The port.
        name: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Features we offer to the frontend.
///
/// `VIRTIO_F_RING_PACKED`: either ring format ([`crate::vring::Ring`]); split stays
/// what a frontend gets unless it asks for packed.
///
/// `VIRTIO_F_IN_ORDER`: both directions use chains strictly in the order the driver made
/// them available (receive walks and returns them in avail order, bad chains included;
/// transmit fills them in avail order and gives back the tail it cannot use), so we may
/// promise it. DPDK's virtio PMD then recycles its descriptors by position, a
/// markedly cheaper path than its free-list one.
///
/// `VIRTIO_NET_F_MTU`: the MTU itself is the frontend's to tell its guest (QEMU's
/// `host_mtu`, on a VXLAN network the uplink's less 50); QEMU passes the feature on only
/// when the backend offers it, and the switch needs nothing else for it.
const OFFERED_FEATURES: u64 = virtio::F_VERSION_1
    | virtio::NET_F_MTU
    | virtio::F_IN_ORDER
    | virtio::F_RING_PACKED
    | virtio::NET_F_MRG_RXBUF
    | virtio::RING_F_EVENT_IDX
    | virtio::RING_F_INDIRECT_DESC
    | virtio::NET_F_MAC
    | virtio::NET_F_STATUS
    | virtio::F_ANY_LAYOUT
    | virtio::F_PROTOCOL_FEATURES;

/// Descriptors one receive poll of a queue may read. A burst of frames that each fit
/// one or two descriptors (what Linux and DPDK post) reads 64 to 128; a guest that makes
/// every chain as costly as allowed (`MAX_CHAIN_DESCS` reads each, mostly empty) gets
/// about 16 chains a poll instead of 128, so its queue costs the core no more than a
/// busy honest one.
pub const WALK_BUDGET: u32 = 1024;

/// Protocol features we offer: multiqueue, acks, and memory hot-plug by slot.
const OFFERED_PROTOCOL: u64 = proto::pf::MQ | proto::pf::REPLY_ACK | proto::pf::CONFIGURE_MEM_SLOTS;

/// A started (or stopped) virtqueue as the data path sees it.
struct Vq {
    ring: Option<Ring>,
    call: Option<File>,
    hdr_len: usize,
    mrg_rxbuf: bool,
    chain: Chain,
}

impl Vq {
    fn new() -> Vq {
        Vq {
            ring: None,
            call: None,
            hdr_len: 12,
            mrg_rxbuf: false,
            chain: Chain::default(),
        }
    }

    /// Notifies the guest: an eventfd checked when it was given, and non-blocking, so
    /// this never blocks the polling core.
    #[inline]
    fn signal(&self) {
        if let Some(f) = &self.call {
            crate::sys::eventfd_signal(f.as_fd());
        }
    }
}

/// Receive side (the guest's transmit ring): the ring plus gather buffers for frames
/// that arrive in more than one buffer, and the heads of the burst being processed.
struct RxQ {
    vq: Vq,
    heads: [u16; BURST * 2],
    gather: BufPool,
    /// Polls this queue sits out: after a poll that refused chains, 2^`strikes` of
    /// them (`strikes` up to [`MAX_STRIKES`], one more per such poll, back to 0 after a
    /// clean one). An honest driver never posts a bad chain; one that posts nothing
    /// else is then polled about once every 1024 polls, so it costs the core's other
    /// queues next to nothing.
    sit_out: u32,
    strikes: u32,
}

/// Most strikes a receive queue collects: it is then polled once every 2^10 polls.
const MAX_STRIKES: u32 = 10;

struct Shared {
    name: String,
    queue_pairs: u16,
    rx: Box<[QueueCell<RxQ>]>,
    tx: Box<[QueueCell<Vq>]>,
    rx_ctr: Box<[QueueCounters]>,
    tx_ctr: Box<[QueueCounters]>,
    up: AtomicBool,
    proto_errors: AtomicU64,
    connections: AtomicU64,
    max_memory: u64,
    /// For errors a frontend can trigger.
    log: RateLimit,
    /// For connects, and for disconnects: a frontend in a reconnect loop gets a line of
    /// each a second (with the count of the ones left out), not two per connection.
    connect_log: RateLimit,
    disconnect_log: RateLimit,
}

/// A vhost-user backend port; see the module docs.
pub struct VhostUserPort {
    shared: Arc<Shared>,
    path: PathBuf,
    mode: Mode,
    stop: Arc<AtomicBool>,
    /// Dropped to wake the control thread.
    wake: Option<UnixStream>,
    ctl: Option<JoinHandle<()>>,
}

impl VhostUserPort {
    /// Transmit with an optional prefix before each frame (`prefix[k][..plen]` for
    /// `sel[k]`; `plen` 0: none).
    fn tx(
        &self,
        q: u16,
        src: &RxBatch,
        sel: &[TxSel],
        prefix: &[[u8; PREFIX_MAX]],
        plen: usize,
    ) -> usize {
        let qi = usize::from(q % self.shared.queue_pairs);
        let ctr = &self.shared.tx_ctr[qi];
        let mut g = self.shared.tx[qi].lock();
        let Vq {
            ring,
            hdr_len,
            mrg_rxbuf,
            chain,
            ..
        } = &mut *g;
        let Some(ring) = ring.as_mut() else {
            ctr.drop_n(PortDrop::NotReady, sel.len() as u64);
            return 0;
        };
        let (hdr_len, mrg) = (*hdr_len, *mrg_rxbuf);
        let mut sent = 0usize;
        let mut bytes = 0u64;
        let mut pushed = 0u16;
        // Descriptors first, then the buffers they point to, taken for writing: the
        // copies below then find their lines owned instead of each waiting in the store
        // buffer for the guest's core to give its line up.
        let want = sel.len().min(usize::from(u16::MAX)) as u16;
        ring.walk_ahead(want, true, 2);
        let ready = want.min(ring.pending());
        ring.prefetch_used(ready);
        let mut hdr = [0u8; 12];
        virtio::write_net_hdr(&mut hdr, 1);
        let hdr = &hdr[..hdr_len];
        // In three passes over runs of frames that each fit the first buffer of their
        // chain (what Linux and DPDK post): take the chains, copy the frames, write the
        // used elements. The guest-memory stores then go out back to back and never
        // hold up the descriptor walks behind them in the store buffer.
        let mut taken = [(0u16, std::ptr::null_mut::<u8>(), 0u32); BURST];
        let mut i = 0;
        while i < sel.len() {
            let mut n = 0;
            while n < BURST && i + n < sel.len() {
                let s = sel[i + n];
                let flen = plen + edited_len(src.frame_len(usize::from(s.idx)), s.edit);
                match ring.pop(true, chain) {
                    None => break,
                    Some(Ok(head)) => match chain.segs().first() {
                        Some(&(p, l)) if l as usize >= hdr_len + flen => {
                            taken[n] = (head, p, l);
                            n += 1;
                        }
                        _ => {
                            ring.unpop(1);
                            break;
                        }
                    },
                    Some(Err(_)) => {
                        ring.unpop(1);
                        break;
                    }
                }
            }
            let mut lens = [0u32; BURST];
            for (k, (&(_, p, l), len)) in taken[..n].iter().zip(lens.iter_mut()).enumerate() {
                let s = sel[i + k];
                #[allow(unsafe_code)] // see the module docs
                // SAFETY: (p, l) is the first buffer of a chain of the ring we hold,
                // translated and checked by the walk in pass one (kept as an address
                // because the chain was reused for the next frames).
                let dst = unsafe { GuestSlice::new(p, l as usize) };
                // The switch decided on the head copy; transmit that copy, then the rest.
                let (head, tail) = src.parts(usize::from(s.idx));
                let mut tag = [0u8; 4];
                let (fp, fnp) = edited_pieces(head, tail, s.edit, &mut tag);
                let mut off = dst.write_at(0, hdr);
                if plen > 0 {
                    off += dst.write_at(off, &prefix[i + k][..plen]);
                }
                for piece in &fp[..fnp] {
                    off += piece.copy_to(0, &dst, off);
                }
                *len = off as u32;
                bytes += (off - hdr_len) as u64;
            }
            for (&(head, _, _), &len) in taken[..n].iter().zip(lens.iter()) {
                ring.push_used(head, len);
            }
            pushed += n as u16;
            sent += n;
            i += n;
            if i < sel.len() {
                // This frame needs the general walk (a chain of several buffers, merged
                // buffers, a bad chain) or finds no buffer at all.
                let s = sel[i];
                let (head, tail) = src.parts(usize::from(s.idx));
                let mut tag = [0u8; 4];
                let (fp, fnp) = edited_pieces(head, tail, s.edit, &mut tag);
                let pre: &[u8] = match prefix.get(i) {
                    Some(p) if plen > 0 => &p[..plen],
                    _ => &[],
                };
                let pieces = [Piece::Own(hdr), Piece::Own(pre), fp[0], fp[1], fp[2], fp[3]];
                let flen = plen + edited_len(head.len() + tail.len(), s.edit);
                let (p, ok) = self.tx_general(ring, chain, &pieces[..2 + fnp], mrg, ctr);
                pushed += p;
                if ok {
                    sent += 1;
                    bytes += flen as u64;
                }
                i += 1;
            }
        }
        let signal = pushed > 0 && ring.publish();
        // Walk the next burst's chains now and ask for their buffers: the lines then
        // move over while the core polls and forwards, instead of while it copies.
        ring.walk_ahead(BURST as u16, true, 2);
        if signal {
            g.signal();
        }
        ctr.add(sent as u64, bytes);
        sent
    }

    /// Creates the port and starts its control thread. In server mode the socket exists
    /// when this returns.
    pub fn new(cfg: VhostUserConfig) -> Result<VhostUserPort, VhostUserError> {
        if cfg.queue_pairs == 0 || cfg.queue_pairs > 64 {
            return Err(VhostUserError::BadQueues {
                name: cfg.name,
                queues: cfg.queue_pairs,
            });
        }
        let qp = usize::from(cfg.queue_pairs);
        let mut rx = Vec::with_capacity(qp);
        for q in 0..qp {
            let gather = BufPool::new(
                &format!("vnfhost-{}-rx{q}", cfg.name),
                MAX_FRAME,
                BURST as u32,
                cfg.hugepages,
            )?;
            rx.push(QueueCell::new(RxQ {
                vq: Vq::new(),
                heads: [0; BURST * 2],
                gather,
                sit_out: 0,
                strikes: 0,
            }));
        }
        let shared = Arc::new(Shared {
            name: cfg.name.clone(),
            queue_pairs: cfg.queue_pairs,
            rx: rx.into_boxed_slice(),
            tx: (0..qp).map(|_| QueueCell::new(Vq::new())).collect(),
            rx_ctr: (0..qp).map(|_| QueueCounters::default()).collect(),
            tx_ctr: (0..qp).map(|_| QueueCounters::default()).collect(),
            up: AtomicBool::new(false),
            proto_errors: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            max_memory: cfg.max_memory,
            log: RateLimit::new(Duration::from_secs(1)),
            connect_log: RateLimit::new(Duration::from_secs(1)),
            disconnect_log: RateLimit::new(Duration::from_secs(1)),
        });
        let listener = match cfg.mode {
            Mode::Server => Some(bind_socket(&cfg.path)?),
            Mode::Client => None,
        };
        let stop = Arc::new(AtomicBool::new(false));
        // Dropping `wake` hangs up `woken`, which ends the control thread's waits at once
        // (a removed port is closed in microseconds, not at the next poll timeout).
        let (wake, woken) = UnixStream::pair().map_err(|source| VhostUserError::Socket {
            path: cfg.path.clone(),
            source,
        })?;
        let ctl = {
            let (shared, stop, tcfg) = (shared.clone(), stop.clone(), cfg.clone());
            std::thread::Builder::new()
                .name(format!("vu-{}", cfg.name))
                .spawn(move || control_loop(shared, tcfg, listener, stop, woken))
                .map_err(|source| VhostUserError::Thread {
                    name: cfg.name.clone(),
                    source,
                })?
        };
        Ok(VhostUserPort {
            shared,
            path: cfg.path,
            mode: cfg.mode,
            stop,
            wake: Some(wake),
            ctl: Some(ctl),
        })
    }

    /// Frontends that connected so far.
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::Relaxed)
    }

    /// Connections dropped because of a protocol error.
    pub fn protocol_errors(&self) -> u64 {
        self.shared.proto_errors.load(Ordering::Relaxed)
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for VhostUserPort {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        drop(self.wake.take());
        if let Some(h) = self.ctl.take() {
            let _ = h.join();
        }
        if self.mode == Mode::Server {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn bind_socket(path: &Path) -> Result<UnixListener, VhostUserError> {
    use std::os::unix::fs::FileTypeExt;
    let err = |source| VhostUserError::Socket {
        path: path.to_owned(),
        source,
    };
    if let Ok(md) = std::fs::symlink_metadata(path) {
        if !md.file_type().is_socket() {
            return Err(VhostUserError::NotASocket(path.to_owned()));
        }
        // A stale socket from an earlier run: nobody can be listening on it if a
        // connect fails.
        if UnixStream::connect(path).is_ok() {
            return Err(err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                "another process serves this socket",
            )));
        }
        std::fs::remove_file(path).map_err(err)?;
    }
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
    }
    let l = UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(err)?;
    l.set_nonblocking(true).map_err(err)?;
    Ok(l)
}

/// Waits up to `ms` for `fd` to become readable; true when it is (or has hung up).
/// False at once when `wake` hangs up (the port is being dropped).
fn wait_readable(fd: BorrowedFd<'_>, wake: BorrowedFd<'_>, ms: i32) -> bool {
    crate::sys::poll_readable(fd, wake, ms)
}

fn control_loop(
    shared: Arc<Shared>,
    cfg: VhostUserConfig,
    listener: Option<UnixListener>,
    stop: Arc<AtomicBool>,
    woken: UnixStream,
) {
    let wake = woken.as_fd();
    let mut device = Device::new(shared.clone(), cfg.mac);
    while !stop.load(Ordering::Relaxed) {
        let stream = match &listener {
            Some(l) => {
                if !wait_readable(l.as_fd(), wake, 200) {
                    continue;
                }
                match l.accept() {
                    Ok((s, _)) => s,
                    Err(_) => continue,
                }
            }
            None => match UnixStream::connect(&cfg.path) {
                Ok(s) => s,
                Err(_) => {
                    // Wait 200 ms, or less when woken.
                    let _ = wait_readable(wake, wake, 200);
                    continue;
                }
            },
        };
        // A message must arrive whole within the receive timeout: a frontend that
        // stalls mid-message is disconnected, never waited for.
        if stream.set_nonblocking(false).is_err()
            || stream.set_read_timeout(Some(MSG_TIMEOUT)).is_err()
            || stream.set_write_timeout(Some(MSG_TIMEOUT)).is_err()
        {
            continue;
        }
        shared.connections.fetch_add(1, Ordering::Relaxed);
        if let Some(supp) = shared.connect_log.check() {
            tracing::info!(
                "port {}: vhost-user frontend connected on {} ({supp} more connects not \
                 logged)",
                shared.name,
                cfg.path.display()
            );
        }
        serve(&shared, &mut device, &stream, &stop, wake);
        device.reset();
    }
    device.reset();
}

/// How long one message may take to arrive or to be answered.
const MSG_TIMEOUT: Duration = Duration::from_secs(2);

/// Answers requests on one connection until it ends or `stop` is set.
fn serve(
    shared: &Shared,
    device: &mut Device,
    stream: &UnixStream,
    stop: &AtomicBool,
    wake: BorrowedFd<'_>,
) {
    let fail = |what: &str| {
        shared.proto_errors.fetch_add(1, Ordering::Relaxed);
        if let Some(supp) = shared.log.check() {
            tracing::warn!(
                "port {}: {what} ({supp} similar messages suppressed)",
                shared.name
            );
        }
    };
    while !stop.load(Ordering::Relaxed) {
        let readable = wait_readable(stream.as_fd(), wake, 200);
        // A frontend that shrank its memory file under the switch: the data path read
        // zeros where the lost pages were (see `fault`); this port is done.
        let faults = device.mem.as_ref().map_or(0, |m| m.faults());
        if faults > 0 {
            fail(&format!(
                "dropping vhost-user connection: the frontend shrank its shared memory \
                 under the switch ({faults} page faults recovered); port reset"
            ));
            return;
        }
        if !readable {
            continue;
        }
        let mut msg = match proto::recv_msg(stream) {
            Ok(m) => m,
            Err(proto::ProtoError::Disconnected) => {
                if let Some(supp) = shared.disconnect_log.check() {
                    tracing::info!(
                        "port {}: vhost-user frontend disconnected ({supp} more disconnects \
                         not logged)",
                        shared.name
                    );
                }
                return;
            }
            Err(e) => {
                fail(&format!("dropping vhost-user connection: {e}"));
                return;
            }
        };
        let ack = device.protocol & proto::pf::REPLY_ACK != 0 && msg.need_reply();
        let sent = match device.handle(&mut msg) {
            Ok(Some(body)) => proto::send_reply(stream, msg.request, &body),
            Ok(None) if ack => proto::send_reply(stream, msg.request, &0u64.to_le_bytes()),
            Ok(None) => Ok(()),
            Err(Fail::Refuse(why)) => {
                fail(&format!("request {} refused: {why}", msg.request));
                if ack {
                    proto::send_reply(stream, msg.request, &1u64.to_le_bytes())
                } else {
                    Ok(())
                }
            }
            Err(Fail::Fatal(why)) => {
                fail(&format!(
                    "dropping vhost-user connection after bad request {}: {why}",
                    msg.request
                ));
                return;
            }
        };
        if let Err(e) = sent {
            fail(&format!(
                "dropping vhost-user connection: reply failed: {e}"
            ));
            return;
        }
    }
}

/// How a request failed.
enum Fail {
    /// Well-formed but not acceptable: refused (acked with failure when asked), the
    /// connection stays.
    Refuse(String),
    /// Malformed: the connection is dropped.
    Fatal(String),
}

fn fatal<T>(why: impl Into<String>) -> Result<T, Fail> {
    Err(Fail::Fatal(why.into()))
}

fn refuse<T>(why: impl Into<String>) -> Result<T, Fail> {
    Err(Fail::Refuse(why.into()))
}

/// Set-up state of one vring, owned by the control thread.
#[derive(Default)]
struct VringSetup {
    size: u32,
    addrs: Option<RingAddrs>,
    /// Next avail index the device reads.
    base: u16,
    /// Next used index the device writes (behind `base` by the chains it could not
    /// return, such as those with an out-of-range head).
    used: u16,
    started: bool,
    enabled: bool,
    running: bool,
    call: Option<File>,
}

/// The control-thread side of the device: applies vhost-user messages.
struct Device {
    shared: Arc<Shared>,
    mac: [u8; 6],
    features: u64,
    protocol: u64,
    mem: Option<Arc<GuestMemory>>,
    vrings: Vec<VringSetup>,
}

impl Device {
    fn new(shared: Arc<Shared>, mac: [u8; 6]) -> Device {
        let n = usize::from(shared.queue_pairs) * 2;
        Device {
            shared,
            mac,
            features: 0,
            protocol: 0,
            mem: None,
            vrings: (0..n).map(|_| VringSetup::default()).collect(),
        }
    }

    fn offered(&self) -> u64 {
        let mut f = OFFERED_FEATURES;
        if self.shared.queue_pairs > 1 {
            f |= virtio::NET_F_MQ;
        }
        f
    }

    /// Stops every ring and forgets the frontend (after a disconnect).
    fn reset(&mut self) {
        for i in 0..self.vrings.len() {
            // Stop the ring first (install() carries its position into the set-up
            // state), then forget that state: a new frontend starts from scratch.
            self.vrings[i].started = false;
            self.install(i);
            self.vrings[i] = VringSetup::default();
        }
        self.mem = None;
        self.features = 0;
        self.protocol = 0;
        self.shared.up.store(false, Ordering::Relaxed);
        // The next frontend starts with a clean record.
        for q in self.shared.rx.iter() {
            let mut g = q.lock();
            g.sit_out = 0;
            g.strikes = 0;
        }
    }

    /// Builds (or removes) the data-path ring of vring `i` from its set-up state and
    /// swaps it in under the queue's cell.
    fn install(&mut self, i: usize) {
        let features = self.features;
        let shared = self.shared.clone();
        let q = i / 2;
        let (mut gtx, mut grx);
        let vq: &mut Vq = if i.is_multiple_of(2) {
            gtx = shared.tx[q].lock();
            &mut gtx
        } else {
            grx = shared.rx[q].lock();
            &mut grx.vq
        };
        // Under the same guard: carry a running ring's position over, so that no
        // message (SET_VRING_CALL, SET_VRING_ENABLE, a memory table change...) ever
        // rewinds the ring or loses what the polling core did meanwhile.
        let v = &mut self.vrings[i];
        if let Some(old) = vq.ring.take() {
            v.base = old.last_avail();
            v.used = old.used_idx();
        }
        let mut ring = None;
        if v.started && v.enabled {
            if let (Some(mem), Some(addrs)) = (&self.mem, v.addrs) {
                let event_idx = features & virtio::RING_F_EVENT_IDX != 0;
                let built = if features & virtio::F_RING_PACKED != 0 {
                    PackedRing::new(mem.clone(), v.size, addrs, v.base, v.used, event_idx)
                        .map(Ring::Packed)
                } else {
                    DeviceRing::new(mem.clone(), v.size, addrs, v.base, v.used, event_idx).map(
                        |mut r| {
                            r.set_in_order(features & virtio::F_IN_ORDER != 0);
                            Ring::Split(r)
                        },
                    )
                };
                match built {
                    Ok(r) => ring = Some(r),
                    Err(e) => {
                        shared.proto_errors.fetch_add(1, Ordering::Relaxed);
                        if let Some(s) = shared.log.check() {
                            tracing::warn!(
                                "port {}: vring {i} not started: {e} ({s} suppressed)",
                                shared.name
                            );
                        }
                    }
                }
            }
        }
        v.running = ring.is_some();
        vq.ring = ring;
        vq.chain.clear();
        vq.call = v.call.as_ref().and_then(|f| f.try_clone().ok());
        vq.hdr_len = net_hdr_len(features);
        vq.mrg_rxbuf = features & virtio::NET_F_MRG_RXBUF != 0;
        let any = self.vrings.iter().any(|v| v.running);
        shared.up.store(any, Ordering::Relaxed);
    }

    /// Stops vring `i` and returns where the device stopped reading.
    fn stop_ring(&mut self, i: usize) -> u16 {
        self.vrings[i].started = false;
        self.install(i);
        self.vrings[i].base
    }

    fn reinstall_all(&mut self) {
        for i in 0..self.vrings.len() {
            self.install(i);
        }
    }
}

/// Body length each fixed-size request must have.
fn expect_len(m: &proto::Msg, len: usize) -> Result<(), Fail> {
    if m.body.len() == len {
        Ok(())
    } else {
        fatal(format!("body of {} bytes, {len} expected", m.body.len()))
    }
}

/// Checks a SET_VRING_CALL file descriptor: it must be an eventfd (a pipe or socket that
/// nobody drains would block the polling core's notification write for good), and it is
/// made non-blocking, so that a counter loaded near its maximum makes the write fail
/// with EAGAIN — the guest is notified all the same — instead of blocking the core.
fn call_fd(f: File) -> Result<File, Fail> {
    let what = std::fs::read_link(format!("/proc/self/fd/{}", f.as_raw_fd()))
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    if what != "anon_inode:[eventfd]" {
        return fatal(format!(
            "SET_VRING_CALL: the call fd is {what:?}, not an eventfd"
        ));
    }
    if crate::sys::set_nonblocking(f.as_fd()).is_err() {
        return fatal("SET_VRING_CALL: the call fd cannot be made non-blocking");
    }
    Ok(f)
}

fn expect_fds(m: &proto::Msg, n: usize) -> Result<(), Fail> {
    if m.fds.len() == n {
        Ok(())
    } else {
        fatal(format!("{} file descriptors, {n} expected", m.fds.len()))
    }
}

/// A memory region as the protocol lays it out: gpa, size, user address, mmap offset.
fn region_at(m: &proto::Msg, off: usize, fd: &File) -> Result<GuestRegion, Fail> {
    let (Some(gpa), Some(size), Some(uaddr), Some(offset)) = (
        m.u64_at(off),
        m.u64_at(off + 8),
        m.u64_at(off + 16),
        m.u64_at(off + 24),
    ) else {
        return fatal("truncated memory region");
    };
    GuestRegion::map(fd, gpa, size, uaddr, offset)
        .or_else(|e| refuse(format!("memory region at guest address {gpa:#x}: {e}")))
}

impl Device {
    fn vring_index(&self, index: u32) -> Result<usize, Fail> {
        let i = index as usize;
        if i < self.vrings.len() {
            Ok(i)
        } else {
            refuse(format!(
                "vring {index} does not exist (port has {})",
                self.vrings.len()
            ))
        }
    }

    /// `{u32 index, u32 num}` bodies.
    fn vring_state(&self, m: &proto::Msg) -> Result<(usize, u32), Fail> {
        expect_len(m, 8)?;
        let (Some(index), Some(num)) = (m.u32_at(0), m.u32_at(4)) else {
            return fatal("truncated vring state");
        };
        Ok((self.vring_index(index)?, num))
    }

    /// `u64` bodies of SET_VRING_KICK/CALL/ERR: index in bits 0..8, bit 8 = no fd.
    fn vring_fd(&self, m: &mut proto::Msg) -> Result<(usize, Option<File>), Fail> {
        expect_len(m, 8)?;
        let v = m.u64_at(0).unwrap_or(0);
        let nofd = v & 0x100 != 0;
        expect_fds(m, if nofd { 0 } else { 1 })?;
        if v & !0x1ff != 0 {
            return fatal(format!("bad vring fd word {v:#x}"));
        }
        let i = self.vring_index((v & 0xff) as u32)?;
        Ok((i, m.fds.pop()))
    }

    fn set_mem(&mut self, regions: Vec<GuestRegion>) -> Result<(), Fail> {
        let total: u64 = regions.iter().map(|r| r.size).fold(0, u64::saturating_add);
        if total > self.shared.max_memory {
            return fatal(format!(
                "the frontend shares {} MiB of memory; this port takes at most {} MiB",
                total >> 20,
                self.shared.max_memory >> 20
            ));
        }
        let mem = GuestMemory::new(regions).or_else(|e| refuse(e.to_string()))?;
        self.mem = Some(Arc::new(mem));
        self.reinstall_all();
        Ok(())
    }

    /// Applies one request; `Ok(Some(body))` is a reply to send.
    fn handle(&mut self, m: &mut proto::Msg) -> Result<Option<Vec<u8>>, Fail> {
        use proto::req::*;
        let u64_reply = |v: u64| Ok(Some(v.to_le_bytes().to_vec()));
        match m.request {
            GET_FEATURES => {
                expect_len(m, 0)?;
                u64_reply(self.offered())
            }
            SET_FEATURES => {
                expect_len(m, 8)?;
                let f = m.u64_at(0).unwrap_or(0);
                if f & !self.offered() != 0 {
                    return refuse(format!("features {f:#x} were not offered"));
                }
                self.features = f;
                if f & virtio::F_PROTOCOL_FEATURES == 0 {
                    // Without protocol features rings are enabled as soon as they start.
                    for v in &mut self.vrings {
                        v.enabled = true;
                    }
                }
                for i in 0..self.vrings.len() {
                    self.install(i);
                }
                Ok(None)
            }
            SET_OWNER => {
                expect_len(m, 0)?;
                Ok(None)
            }
            RESET_OWNER | RESET_DEVICE => {
                expect_len(m, 0)?;
                self.reset();
                Ok(None)
            }
            GET_PROTOCOL_FEATURES => {
                expect_len(m, 0)?;
                u64_reply(OFFERED_PROTOCOL)
            }
            SET_PROTOCOL_FEATURES => {
                expect_len(m, 8)?;
                let f = m.u64_at(0).unwrap_or(0);
                if f & !OFFERED_PROTOCOL != 0 {
                    return refuse(format!("protocol features {f:#x} were not offered"));
                }
                self.protocol = f;
                Ok(None)
            }
            GET_QUEUE_NUM => {
                expect_len(m, 0)?;
                u64_reply(u64::from(self.shared.queue_pairs))
            }
            GET_MAX_MEM_SLOTS => {
                expect_len(m, 0)?;
                u64_reply(GuestMemory::MAX_REGIONS as u64)
            }
            SET_MEM_TABLE => {
                let n = m.u32_at(0).unwrap_or(0) as usize;
                if n == 0 || n > proto::MAX_FDS {
                    return fatal(format!(
                        "{n} memory regions (1 to {} allowed)",
                        proto::MAX_FDS
                    ));
                }
                expect_len(m, 8 + 32 * n)?;
                expect_fds(m, n)?;
                let regions = (0..n)
                    .map(|i| region_at(m, 8 + 32 * i, &m.fds[i]))
                    .collect::<Result<Vec<_>, _>>()?;
                self.set_mem(regions)?;
                Ok(None)
            }
            ADD_MEM_REG => {
                expect_len(m, 40)?;
                expect_fds(m, 1)?;
                let r = region_at(m, 8, &m.fds[0])?;
                let mut regions = self
                    .mem
                    .as_ref()
                    .map(|x| x.regions().to_vec())
                    .unwrap_or_default();
                regions.push(r);
                self.set_mem(regions)?;
                Ok(None)
            }
            REM_MEM_REG => {
                expect_len(m, 40)?;
                let (Some(gpa), Some(size)) = (m.u64_at(8), m.u64_at(16)) else {
                    return fatal("truncated memory region");
                };
                let Some(cur) = &self.mem else {
                    return refuse("no memory table");
                };
                let regions: Vec<GuestRegion> = cur
                    .regions()
                    .iter()
                    .filter(|r| !(r.gpa == gpa && r.size == size))
                    .cloned()
                    .collect();
                if regions.len() == cur.regions().len() {
                    return refuse(format!("no region at {gpa:#x} of {size} bytes"));
                }
                self.set_mem(regions)?;
                Ok(None)
            }
            SET_VRING_NUM => {
                let (i, num) = self.vring_state(m)?;
                // Split rings need a power of two; packed ones any size up to 32768.
                let packed = self.features & virtio::F_RING_PACKED != 0;
                if num == 0
                    || num > u32::from(virtio::MAX_QUEUE_SIZE)
                    || !(packed || num.is_power_of_two())
                {
                    return refuse(if packed {
                        format!("queue size {num} is outside 1..=32768")
                    } else {
                        format!("queue size {num} is not a power of two in 1..=32768")
                    });
                }
                self.vrings[i].size = num;
                Ok(None)
            }
            SET_VRING_ADDR => {
                expect_len(m, 40)?;
                let i = self.vring_index(m.u32_at(0).unwrap_or(u32::MAX))?;
                let flags = m.u32_at(4).unwrap_or(0);
                if flags & 1 != 0 {
                    return refuse("dirty logging (live migration) is not supported");
                }
                let (Some(desc), Some(used), Some(avail)) =
                    (m.u64_at(8), m.u64_at(16), m.u64_at(24))
                else {
                    return fatal("truncated vring address");
                };
                self.vrings[i].addrs = Some(RingAddrs { desc, avail, used });
                if self.vrings[i].started {
                    self.install(i);
                }
                Ok(None)
            }
            SET_VRING_BASE => {
                let (i, num) = self.vring_state(m)?;
                // Split rings: the avail index. Packed rings: bits 0..15 the avail
                // position and wrap counter; QEMU also sends the used one in bits 16..31,
                // DPDK only the first (the two are equal on a stopped ring).
                let packed = self.features & virtio::F_RING_PACKED != 0;
                let (base, used) = match (packed, u16::try_from(num)) {
                    (false, Ok(b)) => (b, b),
                    (false, Err(_)) => return refuse(format!("vring base {num} above 65535")),
                    (true, _) => {
                        let avail = num as u16;
                        let used = (num >> 16) as u16;
                        (avail, if used == 0 { avail } else { used })
                    }
                };
                // Only valid on a stopped ring; a running one is stopped first so the
                // new base is not overwritten by its position.
                let was = self.vrings[i].started;
                self.vrings[i].started = false;
                self.install(i);
                self.vrings[i].started = was;
                self.vrings[i].base = base;
                self.vrings[i].used = used;
                self.install(i);
                Ok(None)
            }
            GET_VRING_BASE => {
                let (i, _) = self.vring_state(m).map_err(|e| match e {
                    Fail::Refuse(w) | Fail::Fatal(w) => Fail::Fatal(w),
                })?;
                let base = self.stop_ring(i);
                let any = self.vrings.iter().any(|v| v.running);
                self.shared.up.store(any, Ordering::Relaxed);
                let mut num = u32::from(base);
                if self.features & virtio::F_RING_PACKED != 0 {
                    // The used position too, as QEMU reads it (bits 16..31).
                    num |= u32::from(self.vrings[i].used) << 16;
                }
                let mut body = (i as u32).to_le_bytes().to_vec();
                body.extend_from_slice(&num.to_le_bytes());
                Ok(Some(body))
            }
            SET_VRING_KICK => {
                // We poll: the kick eventfd is never waited on, so it is not kept.
                let (i, _fd) = self.vring_fd(m)?;
                self.vrings[i].started = true;
                if self.features & virtio::F_PROTOCOL_FEATURES == 0 {
                    self.vrings[i].enabled = true;
                }
                self.install(i);
                Ok(None)
            }
            SET_VRING_CALL => {
                let (i, fd) = self.vring_fd(m)?;
                let fd = fd.map(call_fd).transpose()?;
                self.vrings[i].call = fd;
                self.install(i);
                Ok(None)
            }
            SET_VRING_ERR => {
                self.vring_fd(m)?;
                Ok(None)
            }
            SET_VRING_ENABLE => {
                // QEMU 7.2 sends this before SET_FEATURES when it connects; accept it
                // as DPDK does.
                let (i, on) = self.vring_state(m)?;
                if on > 1 {
                    return refuse(format!("enable value {on}"));
                }
                self.vrings[i].enabled = on == 1;
                self.install(i);
                Ok(None)
            }
            GET_CONFIG => {
                let (Some(off), Some(size)) = (m.u32_at(0), m.u32_at(4)) else {
                    return fatal("truncated config request");
                };
                expect_len(m, 12 + size as usize)?;
                let cfg = self.config();
                let (o, n) = (off as usize, size as usize);
                let Some(bytes) = o.checked_add(n).and_then(|end| cfg.get(o..end)) else {
                    return fatal(format!("config range {o}+{n} outside {} bytes", cfg.len()));
                };
                let mut body = m.body[..12].to_vec();
                body.extend_from_slice(bytes);
                Ok(Some(body))
            }
            SEND_RARP => {
                // Sent after a migration to announce the guest's MAC; we learn it from
                // the guest's own traffic instead.
                expect_len(m, 8)?;
                Ok(None)
            }
            SET_LOG_BASE | SET_LOG_FD | NET_SET_MTU | SET_CONFIG => {
                refuse("not supported (feature not offered)")
            }
            other => fatal(format!("unknown request {other}")),
        }
    }

    /// `struct virtio_net_config { mac[6], status, max_virtqueue_pairs, mtu }`.
    fn config(&self) -> [u8; 12] {
        let mut cfg = [0u8; 12];
        cfg[..6].copy_from_slice(&self.mac);
        cfg[6..8].copy_from_slice(&virtio::NET_S_LINK_UP.to_le_bytes());
        cfg[8..10].copy_from_slice(&self.shared.queue_pairs.to_le_bytes());
        cfg[10..12].copy_from_slice(&1500u16.to_le_bytes());
        cfg
    }
}

/// Copies the bytes of a chain after the first `skip` bytes into `out`.
fn gather(chain: &Chain, skip: usize, out: &mut [u8]) -> usize {
    let mut skip = skip;
    let mut n = 0;
    for k in 0..chain.segs().len() {
        let seg = chain.slice(k);
        if skip >= seg.len() {
            skip -= seg.len();
            continue;
        }
        n += seg.from(skip).read_into(&mut out[n..]);
        skip = 0;
        if n == out.len() {
            break;
        }
    }
    n
}

impl VhostUserPort {
    /// Logs a chain the guest got wrong, rate-limited (the guest is not trusted, and a
    /// log line per bad chain would let it flood the journal).
    fn warn_bad_chain(&self, ring: &str, head: u16, e: ChainError) {
        if let Some(sup) = self.shared.log.check() {
            tracing::warn!(
                "port {}: bad {ring} chain {head}: {} ({sup} suppressed)",
                self.shared.name,
                e.as_str()
            );
        }
    }

    /// Transmits one frame (`pieces`: virtio-net header, then the frame as edited)
    /// into as many receive chains as it needs, walking each. Returns the used
    /// elements written and whether the frame was sent; a frame that finds no buffer,
    /// or too small ones, is counted as dropped and gives its chains back.
    fn tx_general(
        &self,
        ring: &mut Ring,
        chain: &mut Chain,
        pieces: &[Piece<'_>],
        mrg: bool,
        ctr: &QueueCounters,
    ) -> (u16, bool) {
        let np = pieces.len();
        let hdr_len = pieces.first().map_or(0, |h| h.len());
        let mut pi = 0usize;
        let mut poff = 0usize;
        let mut nbufs: u16 = 0;
        let mut first: Option<(*mut u8, u32)> = None;
        let mut fheads = [0u16; 64];
        while pi < np {
            let head = match ring.pop(true, chain) {
                None => {
                    // Out of guest buffers: give back what this frame took.
                    ring.unpop(nbufs);
                    ring.unpush_used(nbufs);
                    ctr.drop_n(PortDrop::NoRxBuffer, 1);
                    return (0, false);
                }
                Some(Ok(h)) => h,
                Some(Err((h, e))) => {
                    // Return the bad chain, and the ones this frame already filled, with
                    // length 0: the guest drops them as errors.
                    ring.unpush_used(nbufs);
                    for &fh in &fheads[..usize::from(nbufs)] {
                        ring.push_used(fh, 0);
                    }
                    let mut pushed = nbufs;
                    if h < ring.size() {
                        ring.push_used(h, 0);
                        pushed += 1;
                    }
                    ctr.drop_n(e.into(), 1);
                    self.warn_bad_chain("receive", h, e);
                    return (pushed, false);
                }
            };
            if first.is_none() {
                match chain.segs().first().copied() {
                    Some((p, l)) if l as usize >= hdr_len => first = Some((p, l)),
                    _ => {
                        ring.unpop(1 + nbufs);
                        ring.unpush_used(nbufs);
                        ctr.drop_n(PortDrop::FrameTooBig, 1);
                        return (0, false);
                    }
                }
            }
            let mut written = 0u32;
            for k in 0..chain.segs().len() {
                let seg = chain.slice(k);
                let mut soff = 0usize;
                while soff < seg.len() && pi < np {
                    let piece = pieces[pi];
                    let n = piece.copy_to(poff, &seg, soff);
                    soff += n;
                    poff += n;
                    written += n as u32;
                    if poff == piece.len() {
                        pi += 1;
                        poff = 0;
                    }
                }
                if pi == np {
                    break;
                }
            }
            ring.push_used(head, written);
            fheads[usize::from(nbufs)] = head;
            nbufs += 1;
            if pi < np && (!mrg || nbufs == 64) {
                ring.unpop(nbufs);
                ring.unpush_used(nbufs);
                ctr.drop_n(PortDrop::FrameTooBig, 1);
                return (0, false);
            }
        }
        if nbufs > 1 {
            if let Some((p, l)) = first {
                #[allow(unsafe_code)] // see the module docs
                // SAFETY: (p, l) is the first buffer of this frame, a checked guest
                // buffer of the ring we still hold (taken from its chain above, kept as
                // an address because the chain was reused for the next buffers).
                let first = unsafe { GuestSlice::new(p, l as usize) };
                // num_buffers sits at bytes 10..12 of the header, only with MRG_RXBUF.
                first.write_at(10, &nbufs.to_le_bytes());
            }
        }
        (nbufs, true)
    }
}

impl Port for VhostUserPort {
    fn name(&self) -> &str {
        &self.shared.name
    }

    fn queue_pairs(&self) -> u16 {
        self.shared.queue_pairs
    }

    fn is_up(&self) -> bool {
        self.shared.up.load(Ordering::Relaxed)
    }

    fn poll_rx(&self, q: u16, batch: &mut RxBatch, f: &mut dyn FnMut(&mut RxBatch)) -> usize {
        let Some(cell) = self.shared.rx.get(usize::from(q)) else {
            return 0;
        };
        let Some(mut g) = cell.try_lock() else {
            return 0;
        };
        let RxQ {
            vq,
            heads,
            gather: pool,
            sit_out,
            strikes,
        } = &mut *g;
        if *sit_out > 0 {
            *sit_out -= 1;
            return 0;
        }
        let Some(ring) = vq.ring.as_mut() else {
            return 0;
        };
        let ctr = &self.shared.rx_ctr[usize::from(q)];
        let hdr = vq.hdr_len;
        let mut nheads = 0usize;
        let mut bytes = 0u64;
        batch.clear();
        ring.prefetch_heads(BURST as u16);
        let ready = ring.pending().min(BURST as u16);
        ring.prefetch_used_read(ready);
        // At most 2 × BURST chains and WALK_BUDGET descriptor reads per call, so bad
        // or costly chains cannot keep the core here: the rest waits for the next poll,
        // after every other queue of the core had its turn.
        let mut pops = 0;
        let mut walked = 0u32;
        let mut refused = false;
        while !batch.is_full() && pops < heads.len() && walked < WALK_BUDGET {
            pops += 1;
            let popped = ring.pop(false, &mut vq.chain);
            walked += vq.chain.descs();
            let head = match popped {
                None => break,
                Some(Ok(h)) => h,
                Some(Err((h, e))) => {
                    if h < ring.size() {
                        heads[nheads] = h;
                        nheads += 1;
                    }
                    ctr.drop_n(e.into(), 1);
                    self.warn_bad_chain("transmit", h, e);
                    refused = true;
                    continue;
                }
            };
            heads[nheads] = head;
            nheads += 1;
            let total = vq.chain.total();
            if total < (hdr + 14) as u64 {
                ctr.drop_n(PortDrop::RxRunt, 1);
                continue;
            }
            let len = total - hdr as u64;
            if len > MAX_FRAME as u64 {
                ctr.drop_n(PortDrop::RxTooBig, 1);
                continue;
            }
            let segs = vq.chain.segs();
            let (p0, l0) = segs[0];
            if u64::from(l0) >= total {
                #[allow(unsafe_code)] // see the module docs
                // SAFETY: p0..p0+l0 is a checked guest buffer that stays mapped while we
                // hold the queue (the batch is cleared before we give the queue back).
                unsafe {
                    batch.push_deferred(p0.add(hdr), len as u32)
                };
            } else if l0 as usize == hdr && segs.len() == 2 {
                let (p1, l1) = segs[1];
                #[allow(unsafe_code)] // see the module docs
                // SAFETY: as above, for the second buffer of the chain.
                unsafe {
                    batch.push_deferred(p1, l1)
                };
            } else {
                let slot = batch.len() as u32;
                let buf = pool.buf(slot);
                let n = gather(&vq.chain, hdr, &mut buf[..len as usize]);
                #[allow(unsafe_code)] // see the module docs
                // SAFETY: the gather buffer `slot` is ours and is not reused before the
                // batch is cleared (each batch index owns gather buffer of its index).
                unsafe {
                    batch.push_deferred(pool.buf_ptr(slot), n as u32)
                };
            }
            bytes += len;
        }
        if refused {
            *strikes = (*strikes + 1).min(MAX_STRIKES);
            *sit_out = 1 << *strikes;
        } else {
            *strikes = 0;
        }
        let n = batch.len();
        if n > 0 {
            // The frames' first lines were requested during the walk; copy the heads now.
            batch.snapshot_heads();
            f(batch);
        }
        batch.clear();
        ring.push_used_read(&heads[..nheads]);
        if nheads > 0 && ring.publish() {
            vq.signal();
        }
        ctr.add(n as u64, bytes);
        n
    }

    fn tx_burst(&self, q: u16, src: &RxBatch, sel: &[TxSel]) -> usize {
        self.tx(q, src, sel, &[], 0)
    }

    fn tx_burst_prefixed(
        &self,
        q: u16,
        src: &RxBatch,
        sel: &[TxSel],
        prefix: &[[u8; PREFIX_MAX]],
        prefix_len: usize,
    ) -> usize {
        let n = sel.len().min(prefix.len());
        self.tx(q, src, &sel[..n], prefix, prefix_len.min(PREFIX_MAX))
    }

    fn stats(&self) -> PortStats {
        let mut s = PortStats {
            connections: self.connections(),
            protocol_errors: self.protocol_errors(),
            ..PortStats::default()
        };
        for c in self.shared.rx_ctr.iter() {
            let (p, b, d) = c.read();
            s.rx_packets += p;
            s.rx_bytes += b;
            for (a, x) in s.drops.iter_mut().zip(d) {
                *a += x;
            }
        }
        for c in self.shared.tx_ctr.iter() {
            let (p, b, d) = c.read();
            s.tx_packets += p;
            s.tx_bytes += b;
            for (a, x) in s.drops.iter_mut().zip(d) {
                *a += x;
            }
        }
        s
    }
}
