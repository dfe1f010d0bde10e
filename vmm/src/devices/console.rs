//! virtio-console with `VIRTIO_CONSOLE_F_MULTIPORT` and one port, `vnfhost.agent`,
//! whose host side is a Unix socket the VMM listens on (`--agent PATH`): the guest
//! agent's channel, as QEMU's `virtserialport` on a `socket,server=on,wait=off` chardev.
//!
//! Queues: 0 the port's receive queue (host to guest), 1 its transmit queue, 2 the
//! control receive queue (device to driver), 3 the control transmit queue. The control
//! protocol is the one Linux's `virtio_console` driver speaks (virtio 1.1, 5.3.6.2):
//!
//! ```text
//!  driver                              device
//!  DEVICE_READY 1 ───────────────────►
//!                 ◄─────────────────── PORT_ADD 0
//!  PORT_READY 0, 1 ──────────────────►
//!                 ◄─────────────────── PORT_NAME 0 "vnfhost.agent"
//!                 ◄─────────────────── PORT_OPEN 0, 1   (a client is connected)
//!  PORT_OPEN 0, 1 (the agent opened /dev/vportNp0) ─►
//!                 ◄─────────────────── PORT_OPEN 0, 0 / 1 as clients go and come
//! ```
//!
//! **Data.** One client at a time; the next waits in the listen backlog. Bytes from the
//! client go into the port's receive buffers only while the guest has the port open (the
//! driver discards data for a closed port) and only as far as it has posted buffers: the
//! socket is not read otherwise, so a client that writes early (the host's agent client
//! connects before the guest boots) or fast waits in the socket. Bytes the guest
//! transmits go to the client; a client that does not read holds the guest's transmit
//! queue (its writes block in the guest), never the VMM. Without a client, the guest's
//! writes are dropped (its driver also sees the port closed and holds them itself).
//!
//! **Reconnects.** A client that hangs up (or whose socket fails) is dropped, with
//! whatever it had not read; the driver gets `PORT_OPEN 0` and, when the next client is
//! accepted, `PORT_OPEN 1`.
//!
//! Everything runs on the device's [`Worker`] thread: woken by the four queues'
//! ioeventfds and the socket (epoll), it walks the rings ([`virtq`](super::virtq)) and
//! interrupts through the device's irqfd. Sockets are non-blocking; nothing waits on the
//! guest or on the client.

use std::collections::VecDeque;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pmd::ratelimit::RateLimit;
use pmd::virtio::F_VERSION_1;
use vm_memory::{
    Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, ReadVolatile, VolatileMemoryError,
    WriteVolatile,
};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::virtio_mmio::{read_config_bytes, QueueConfig, VirtioDevice};
use super::virtq::{Desc, Queue, QueueError};
use super::Worker;
use crate::memory::GuestRam;

/// The virtio device id.
pub const DEVICE_ID: u32 = 3;
/// Largest queue the device accepts.
pub const QUEUE_MAX: u16 = 256;
/// `VIRTIO_CONSOLE_F_MULTIPORT`.
pub const F_MULTIPORT: u64 = 1 << 1;
/// The port's name.
pub const PORT_NAME: &str = agent::PORT_NAME;

/// Queue indices.
const RX: usize = 0;
const TX: usize = 1;
const CTRL_RX: usize = 2;
const CTRL_TX: usize = 3;
/// Queues of a device with one port.
pub const QUEUES: usize = 4;

/// Control events (`struct virtio_console_control.event`).
pub mod event {
    #![allow(missing_docs)]
    pub const DEVICE_READY: u16 = 0;
    pub const PORT_ADD: u16 = 1;
    pub const PORT_REMOVE: u16 = 2;
    pub const PORT_READY: u16 = 3;
    pub const CONSOLE_PORT: u16 = 4;
    pub const RESIZE: u16 = 5;
    pub const PORT_OPEN: u16 = 6;
    pub const PORT_NAME: u16 = 7;
}

/// The one port's id.
const PORT: u32 = 0;
/// Control messages held for a driver that posts no control buffers.
const CTRL_BACKLOG: usize = 16;
/// Chains one pass over a queue serves before looking at the others.
const BUDGET: usize = 256;

/// What the port did, for tests and the log.
#[derive(Debug, Default)]
pub struct ConsoleStats {
    /// Bytes from the client into the guest.
    pub to_guest: AtomicU64,
    /// Bytes from the guest to the client.
    pub from_guest: AtomicU64,
    /// Bytes the guest sent while no client was connected.
    pub dropped: AtomicU64,
    /// Clients accepted.
    pub connects: AtomicU64,
    /// Chains with buffers outside guest RAM or too short, and control messages the
    /// device does not take.
    pub bad: AtomicU64,
}

/// Socket trouble when the device is made.
#[derive(Debug, thiserror::Error)]
#[error("--agent {path}: {what}: {source}")]
pub struct ConsoleError {
    /// The socket.
    pub path: PathBuf,
    /// What was being done.
    pub what: &'static str,
    /// Why it failed.
    pub source: io::Error,
}

/// The socket side: the listener and the connected client, kept across driver resets.
struct Sock {
    listener: UnixListener,
    conn: Option<UnixStream>,
    /// Bumped at each accept, so that the worker re-registers a new connection even if
    /// its descriptor number is the old one's.
    generation: u64,
}

/// The virtio-console device.
pub struct Console {
    path: PathBuf,
    sock: Option<Sock>,
    ram: Arc<GuestRam>,
    kicks: Vec<EventFd>,
    irq: EventFd,
    broken: Arc<AtomicBool>,
    stats: Arc<ConsoleStats>,
    worker: Option<Worker<Option<Sock>>>,
}

impl Console {
    /// Listens on `path` (mode 0600: the agent runs anything in the pod). `kicks` are the
    /// four queues' ioeventfds, `irq` the device's irqfd.
    pub fn new(
        path: PathBuf,
        ram: Arc<GuestRam>,
        kicks: Vec<EventFd>,
        irq: EventFd,
    ) -> Result<Console, ConsoleError> {
        let err = |what, source| ConsoleError {
            path: path.clone(),
            what,
            source,
        };
        if kicks.len() != QUEUES {
            return Err(err(
                "set-up",
                io::Error::other(format!("{} kick eventfds for {QUEUES} queues", kicks.len())),
            ));
        }
        let listener = super::listen(&path, 0o600, "another VM serves its agent there")
            .map_err(|(what, e)| err(what, e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| err("non-blocking", e))?;
        Ok(Console {
            sock: Some(Sock {
                listener,
                conn: None,
                generation: 0,
            }),
            path,
            ram,
            kicks,
            irq,
            broken: Arc::new(AtomicBool::new(false)),
            stats: Arc::default(),
            worker: None,
        })
    }

    /// Counters.
    pub fn stats(&self) -> &Arc<ConsoleStats> {
        &self.stats
    }

    /// The port over the queues the driver configured; takes the socket.
    fn port(&mut self, acked: u64, queues: &[QueueConfig]) -> Result<Port, String> {
        if acked & F_MULTIPORT == 0 {
            return Err("the driver did not accept VIRTIO_CONSOLE_F_MULTIPORT".into());
        }
        if queues.len() != QUEUES {
            return Err(format!("{} queues, expected {QUEUES}", queues.len()));
        }
        let mut qs = Vec::with_capacity(QUEUES);
        for (i, q) in queues.iter().enumerate() {
            qs.push(Queue::new(i, q, QUEUE_MAX, &self.ram)?);
        }
        let sock = self.sock.take().ok_or("the agent's socket is gone")?;
        Ok(Port {
            ram: Arc::clone(&self.ram),
            irq: self
                .irq
                .try_clone()
                .map_err(|e| format!("the irqfd: {e}"))?,
            queues: qs,
            sock,
            ready: false,
            guest_open: false,
            ctrl_out: VecDeque::with_capacity(CTRL_BACKLOG),
            tx_held: None,
            tx_descs: Vec::with_capacity(usize::from(QUEUE_MAX)),
            descs: Vec::with_capacity(usize::from(QUEUE_MAX)),
            stats: Arc::clone(&self.stats),
        })
    }

    fn stop_worker(&mut self) {
        if let Some(w) = self.worker.take() {
            if let Some(Some(sock)) = w.stop() {
                self.sock = Some(sock);
            }
        }
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        self.close();
    }
}

impl VirtioDevice for Console {
    fn device_type(&self) -> u32 {
        DEVICE_ID
    }

    fn features(&self) -> u64 {
        F_VERSION_1 | F_MULTIPORT
    }

    fn num_queues(&self) -> usize {
        QUEUES
    }

    fn queue_max(&self) -> u16 {
        QUEUE_MAX
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // struct virtio_console_config { le16 cols; le16 rows; le32 max_nr_ports;
        // le32 emerg_wr; }
        let mut cfg = [0u8; 12];
        cfg[4..8].copy_from_slice(&1u32.to_le_bytes());
        read_config_bytes(&cfg, offset, data);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}

    fn activate(&mut self, acked: u64, queues: &[QueueConfig]) -> Result<(), String> {
        let mut port = self.port(acked, queues)?;
        let mut kicks = vec![];
        for k in &self.kicks {
            kicks.push(k.try_clone().map_err(|e| format!("a kick eventfd: {e}"))?);
        }
        let broken = Arc::clone(&self.broken);
        let path = self.path.display().to_string();
        let worker = Worker::spawn("virtio-console", move |stop| {
            if let Err(e) = port.run(&kicks, stop) {
                tracing::warn!("virtio-console {path}: {e}; the device needs a reset");
                broken.store(true, Ordering::Relaxed);
                // Keep the client; wait for the driver's reset.
                let mut ev = [EpollEvent::default()];
                if let Ok(ep) = Epoll::new() {
                    let key = EpollEvent::new(EventSet::IN, 0);
                    if ep.ctl(ControlOperation::Add, stop.as_raw_fd(), key).is_ok() {
                        while !matches!(ep.wait(-1, &mut ev), Ok(1..)) {}
                    }
                }
            }
            Some(port.sock)
        });
        match worker {
            Ok(w) => {
                self.worker = Some(w);
                Ok(())
            }
            Err(e) => Err(format!("starting the console thread: {e}")),
        }
    }

    fn reset(&mut self) {
        self.stop_worker();
        self.broken.store(false, Ordering::Relaxed);
    }

    fn notify(&mut self, queue: u16) {
        if let Some(k) = self.kicks.get(usize::from(queue)) {
            let _ = k.write(1);
        }
    }

    fn needs_reset(&self) -> bool {
        self.broken.load(Ordering::Relaxed)
    }

    fn close(&mut self) {
        self.stop_worker();
        if self.sock.take().is_some() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

static BAD_LOG: std::sync::LazyLock<RateLimit> =
    std::sync::LazyLock::new(|| RateLimit::new(Duration::from_secs(5)));

fn bad(stats: &ConsoleStats, what: std::fmt::Arguments<'_>) {
    stats.bad.fetch_add(1, Ordering::Relaxed);
    if let Some(n) = BAD_LOG.check() {
        tracing::warn!("virtio-console: {what} ({n} more not logged)");
    }
}

/// A read or write on a non-blocking socket that cannot go on now.
fn would_block(e: &VolatileMemoryError) -> bool {
    matches!(e, VolatileMemoryError::IOError(e)
        if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted))
}

/// The running port: the queues, the socket and the control state; owned by the worker.
struct Port {
    ram: Arc<GuestRam>,
    irq: EventFd,
    queues: Vec<Queue>,
    sock: Sock,
    /// The driver sent PORT_READY for the port.
    ready: bool,
    /// The guest has the port open.
    guest_open: bool,
    /// Control messages for the driver, waiting for its buffers.
    ctrl_out: VecDeque<Vec<u8>>,
    /// A transmit chain the client has not taken whole: its head and the bytes sent. Its
    /// descriptors are `tx_descs`.
    tx_held: Option<(u16, u64)>,
    tx_descs: Vec<Desc>,
    descs: Vec<Desc>,
    stats: Arc<ConsoleStats>,
}

impl Port {
    /// Serves the port until `stop`; an error is a broken ring.
    fn run(&mut self, kicks: &[EventFd], stop: &EventFd) -> Result<(), QueueError> {
        const STOP: u64 = 100;
        const LISTEN: u64 = 101;
        const CONN: u64 = 102;
        let fail = |_| QueueError::Memory(0);
        let ep = Epoll::new().map_err(fail)?;
        let add = |fd, key, ev| ep.ctl(ControlOperation::Add, fd, EpollEvent::new(ev, key));
        add(stop.as_raw_fd(), STOP, EventSet::IN).map_err(fail)?;
        for (i, k) in kicks.iter().enumerate() {
            add(k.as_raw_fd(), i as u64, EventSet::IN).map_err(fail)?;
        }
        let mut listening = false;
        // The connection registered: its generation and events.
        let mut registered: Option<(u64, EventSet)> = None;
        let mut events = [EpollEvent::default(); 8];
        loop {
            let want_listen = self.sock.conn.is_none();
            if want_listen != listening {
                let op = if want_listen {
                    ControlOperation::Add
                } else {
                    ControlOperation::Delete
                };
                let fd = self.sock.listener.as_raw_fd();
                let _ = ep.ctl(op, fd, EpollEvent::new(EventSet::IN, LISTEN));
                listening = want_listen;
            }
            let want = self.sock.conn.as_ref().map(|c| {
                let mut ev = EventSet::READ_HANG_UP;
                if self.can_receive() {
                    ev |= EventSet::IN;
                }
                if self.tx_held.is_some() {
                    ev |= EventSet::OUT;
                }
                (self.sock.generation, c.as_raw_fd(), ev)
            });
            match (registered, want) {
                (_, None) => registered = None,
                (Some((g, old)), Some((gen, fd, ev))) if g == gen => {
                    if old != ev {
                        let _ = ep.ctl(ControlOperation::Modify, fd, EpollEvent::new(ev, CONN));
                        registered = Some((gen, ev));
                    }
                }
                (_, Some((gen, fd, ev))) => {
                    // A closed descriptor left the epoll set by itself; a new one that got
                    // its number is added afresh.
                    let _ = ep.ctl(ControlOperation::Delete, fd, EpollEvent::default());
                    let _ = ep.ctl(ControlOperation::Add, fd, EpollEvent::new(ev, CONN));
                    registered = Some((gen, ev));
                }
            }
            let n = match ep.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => 0,
            };
            for e in &events[..n] {
                match e.data() {
                    STOP => return Ok(()),
                    CONN => {
                        let gone = EventSet::HANG_UP | EventSet::READ_HANG_UP | EventSet::ERROR;
                        if e.event_set().intersects(gone) {
                            self.disconnect();
                        }
                    }
                    k if (k as usize) < kicks.len() => {
                        let _ = kicks[k as usize].read();
                    }
                    _ => {}
                }
            }
            self.service()?;
        }
    }

    /// Whether bytes from the client can go to the guest now.
    fn can_receive(&self) -> bool {
        self.ready
            && self.guest_open
            && self.queues[RX].pending(self.ram.mem()).is_ok_and(|n| n > 0)
    }

    /// One pass over everything: the driver's control messages, the client's connection,
    /// both directions of data, control messages for the driver; then an interrupt if a
    /// queue the driver wants interrupts for got used buffers.
    fn service(&mut self) -> Result<(), QueueError> {
        let ram = Arc::clone(&self.ram);
        let mem = ram.mem();
        let mut used = [false; QUEUES];
        used[CTRL_TX] = self.control_from_driver(mem)?;
        if self.sock.conn.is_none() {
            self.accept();
        }
        used[RX] = self.receive(mem)?;
        used[TX] = self.transmit(mem)?;
        used[CTRL_RX] = self.control_to_driver(mem)?;
        let wanted = used
            .iter()
            .zip(&self.queues)
            .any(|(&u, q)| u && q.wants_interrupt(mem));
        if wanted {
            let _ = self.irq.write(1);
        }
        Ok(())
    }

    fn accept(&mut self) {
        let Ok((s, _)) = self.sock.listener.accept() else {
            return;
        };
        if s.set_nonblocking(true).is_err() {
            return;
        }
        self.sock.conn = Some(s);
        self.sock.generation += 1;
        self.stats.connects.fetch_add(1, Ordering::Relaxed);
        tracing::debug!("the agent's client connected");
        if self.ready {
            self.queue_control(event::PORT_OPEN, 1, b"");
        }
    }

    /// The client is gone: what it had not read is lost; the guest sees the port closed.
    fn disconnect(&mut self) {
        if self.sock.conn.take().is_some() {
            tracing::debug!("the agent's client hung up");
            if self.ready {
                self.queue_control(event::PORT_OPEN, 0, b"");
            }
        }
    }

    /// Queues a control message for the driver about the port. Open and close messages
    /// that the driver has not taken yet collapse into the last one, and at most
    /// [`CTRL_BACKLOG`] messages wait, so a client that reconnects in a loop or a
    /// driver that posts no buffers costs bounded memory.
    fn queue_control(&mut self, ev: u16, value: u16, extra: &[u8]) {
        let mut msg = Vec::with_capacity(8 + extra.len());
        msg.extend_from_slice(&PORT.to_le_bytes());
        msg.extend_from_slice(&ev.to_le_bytes());
        msg.extend_from_slice(&value.to_le_bytes());
        msg.extend_from_slice(extra);
        if ev == event::PORT_OPEN {
            if let Some(last) = self.ctrl_out.back_mut() {
                if last[4..6] == event::PORT_OPEN.to_le_bytes() {
                    *last = msg;
                    return;
                }
            }
        }
        if self.ctrl_out.len() >= CTRL_BACKLOG {
            bad(
                &self.stats,
                format_args!("the driver takes no control messages; one dropped"),
            );
            return;
        }
        self.ctrl_out.push_back(msg);
    }

    /// Takes the driver's control messages.
    fn control_from_driver(&mut self, mem: &GuestMemoryMmap) -> Result<bool, QueueError> {
        let mut any = false;
        for _ in 0..BUDGET {
            let Some(head) = self.queues[CTRL_TX].pop(mem, &mut self.descs)? else {
                break;
            };
            let mut msg = [0u8; 8];
            if gather(mem, &self.descs, &mut msg) == msg.len() {
                let id = u32::from_le_bytes([msg[0], msg[1], msg[2], msg[3]]);
                let ev = u16::from_le_bytes([msg[4], msg[5]]);
                let value = u16::from_le_bytes([msg[6], msg[7]]);
                self.control(id, ev, value);
            } else {
                bad(
                    &self.stats,
                    format_args!("a control message shorter than 8 bytes or outside RAM"),
                );
            }
            self.queues[CTRL_TX].push_used(mem, head, 0)?;
            any = true;
        }
        Ok(any)
    }

    fn control(&mut self, id: u32, ev: u16, value: u16) {
        match ev {
            event::DEVICE_READY if value == 1 => {
                self.queue_control(event::PORT_ADD, 1, b"");
            }
            event::DEVICE_READY => {
                tracing::warn!("the guest's virtio-console driver failed to start")
            }
            event::PORT_READY if id == PORT && value == 1 => {
                self.ready = true;
                self.queue_control(event::PORT_NAME, 1, PORT_NAME.as_bytes());
                if self.sock.conn.is_some() {
                    self.queue_control(event::PORT_OPEN, 1, b"");
                }
            }
            event::PORT_READY if id == PORT => {
                tracing::warn!("the guest's virtio-console driver could not add the agent's port")
            }
            event::PORT_OPEN if id == PORT => self.guest_open = value == 1,
            _ => bad(
                &self.stats,
                format_args!("control event {ev} for port {id} (value {value}) ignored"),
            ),
        }
    }

    /// Gives the driver the control messages it has buffers for.
    fn control_to_driver(&mut self, mem: &GuestMemoryMmap) -> Result<bool, QueueError> {
        let mut any = false;
        while let Some(msg) = self.ctrl_out.front() {
            let Some(head) = self.queues[CTRL_RX].pop(mem, &mut self.descs)? else {
                break;
            };
            let n = scatter(mem, &self.descs, msg);
            if n < msg.len() {
                bad(
                    &self.stats,
                    format_args!("a control buffer too short or outside RAM"),
                );
            }
            self.queues[CTRL_RX].push_used(mem, head, n as u32)?;
            self.ctrl_out.pop_front();
            any = true;
        }
        Ok(any)
    }

    /// Client to guest, as far as the guest has the port open and buffers posted.
    fn receive(&mut self, mem: &GuestMemoryMmap) -> Result<bool, QueueError> {
        if !(self.ready && self.guest_open) {
            return Ok(false);
        }
        let mut any = false;
        for _ in 0..BUDGET {
            let Some(conn) = self.sock.conn.as_mut() else {
                break;
            };
            let Some(head) = self.queues[RX].pop(mem, &mut self.descs)? else {
                break;
            };
            let (mut filled, mut drained, mut hung_up, mut broken) = (0usize, false, false, false);
            for d in self.descs.iter().filter(|d| d.write && d.len > 0) {
                let Ok(mut slice) = mem.get_slice(GuestAddress(d.addr), d.len as usize) else {
                    broken = true;
                    break;
                };
                match conn.read_volatile(&mut slice) {
                    Ok(0) => {
                        hung_up = true;
                        break;
                    }
                    Ok(n) => {
                        filled += n;
                        if n < slice.len() {
                            drained = true;
                            break;
                        }
                    }
                    Err(e) if would_block(&e) => {
                        drained = true;
                        break;
                    }
                    Err(_) => {
                        hung_up = true;
                        break;
                    }
                }
            }
            if filled == 0 && !broken {
                // Nothing for this buffer yet: the driver keeps it posted.
                self.queues[RX].undo_pop();
            } else {
                if broken {
                    bad(&self.stats, format_args!("a receive buffer outside RAM"));
                }
                // At most the chain's lengths, which are u32 each and bounded in number
                // by the queue; the used element says u32.
                self.queues[RX].push_used(mem, head, filled as u32)?;
                self.stats
                    .to_guest
                    .fetch_add(filled as u64, Ordering::Relaxed);
                any = true;
            }
            if hung_up {
                self.disconnect();
                break;
            }
            if drained || (filled == 0 && !broken) {
                break;
            }
        }
        Ok(any)
    }

    /// Guest to client; without a client, the guest's bytes are dropped.
    fn transmit(&mut self, mem: &GuestMemoryMmap) -> Result<bool, QueueError> {
        let mut any = false;
        for _ in 0..BUDGET {
            let (head, mut sent) = match self.tx_held.take() {
                Some(h) => h,
                None => match self.queues[TX].pop(mem, &mut self.tx_descs)? {
                    Some(head) => (head, 0),
                    None => break,
                },
            };
            let total: u64 = self
                .tx_descs
                .iter()
                .filter(|d| !d.write)
                .map(|d| u64::from(d.len))
                .sum();
            let (mut blocked, mut hung_up) = (false, false);
            if let Some(conn) = self.sock.conn.as_mut() {
                let mut skip = sent;
                for d in self.tx_descs.iter().filter(|d| !d.write) {
                    let len = u64::from(d.len);
                    if skip >= len {
                        skip -= len;
                        continue;
                    }
                    let slice = d
                        .addr
                        .checked_add(skip)
                        .and_then(|a| mem.get_slice(GuestAddress(a), (len - skip) as usize).ok());
                    let Some(slice) = slice else {
                        bad(&self.stats, format_args!("a transmit buffer outside RAM"));
                        break;
                    };
                    skip = 0;
                    match conn.write_volatile(&slice) {
                        Ok(n) => {
                            sent += n as u64;
                            self.stats.from_guest.fetch_add(n as u64, Ordering::Relaxed);
                            if n < slice.len() {
                                blocked = true;
                                break;
                            }
                        }
                        Err(e) if would_block(&e) => {
                            blocked = true;
                            break;
                        }
                        Err(_) => {
                            hung_up = true;
                            break;
                        }
                    }
                }
            } else {
                self.stats
                    .dropped
                    .fetch_add(total - sent, Ordering::Relaxed);
            }
            if hung_up {
                self.stats
                    .dropped
                    .fetch_add(total - sent, Ordering::Relaxed);
                self.disconnect();
            } else if blocked {
                // The client reads slowly: the chain waits for its socket.
                self.tx_held = Some((head, sent));
                break;
            }
            self.queues[TX].push_used(mem, head, 0)?;
            any = true;
        }
        Ok(any)
    }
}

/// Copies the device-readable bytes of a chain into `buf`; returns how many (fewer when
/// the chain is shorter or a buffer is outside guest RAM).
fn gather(mem: &GuestMemoryMmap, descs: &[Desc], buf: &mut [u8]) -> usize {
    let mut off = 0;
    for d in descs.iter().filter(|d| !d.write) {
        let n = (d.len as usize).min(buf.len() - off);
        if n == 0 {
            continue;
        }
        if mem
            .read_slice(&mut buf[off..off + n], GuestAddress(d.addr))
            .is_err()
        {
            break;
        }
        off += n;
    }
    off
}

/// Copies `msg` into the device-writable buffers of a chain; returns how many bytes fit.
fn scatter(mem: &GuestMemoryMmap, descs: &[Desc], msg: &[u8]) -> usize {
    let mut off = 0;
    for d in descs.iter().filter(|d| d.write) {
        let n = (d.len as usize).min(msg.len() - off);
        if n == 0 {
            continue;
        }
        if mem
            .write_slice(&msg[off..off + n], GuestAddress(d.addr))
            .is_err()
        {
            break;
        }
        off += n;
    }
    off
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio_mmio::{reg, MmioSlot, MmioTransport};
    use crate::devices::virtq::testing::Driver;
    use std::io::{Read, Write};

    fn ram() -> Arc<GuestRam> {
        Arc::new(GuestRam::new(32 << 20, false, false).unwrap())
    }

    fn sock_path(tag: &str) -> PathBuf {
        std::env::temp_dir().join(format!("vnfhost-con-{tag}-{}.sock", std::process::id()))
    }

    fn kicks() -> Vec<EventFd> {
        (0..QUEUES)
            .map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap())
            .collect()
    }

    /// The four queues of a driver, 256 KiB apart.
    fn drivers() -> Vec<Driver> {
        (0..QUEUES as u64)
            .map(|i| Driver::new(0x10_0000 + i * 0x4_0000, 64))
            .collect()
    }

    fn ctrl(id: u32, ev: u16, value: u16) -> Vec<u8> {
        let mut m = id.to_le_bytes().to_vec();
        m.extend(ev.to_le_bytes());
        m.extend(value.to_le_bytes());
        m
    }

    /// Sends a control message from the driver.
    fn send_ctrl(d: &mut [Driver], mem: &GuestMemoryMmap, msg: &[u8]) {
        let b = d[CTRL_TX].buf(mem, msg, msg.len() as u32);
        d[CTRL_TX].post(mem, &[(b, msg.len() as u32, false)]);
    }

    /// Posts `n` device-writable buffers of 4 KiB on queue `q`; returns their addresses.
    fn post_bufs(d: &mut [Driver], mem: &GuestMemoryMmap, q: usize, n: usize) -> Vec<u64> {
        (0..n)
            .map(|_| {
                let b = d[q].buf(mem, &[], 4096);
                d[q].post(mem, &[(b, 4096, true)]);
                b
            })
            .collect()
    }

    /// Control messages the device returned, in order.
    fn ctrl_msgs(d: &mut [Driver], mem: &GuestMemoryMmap, bufs: &mut Vec<u64>) -> Vec<Vec<u8>> {
        let mut out = vec![];
        while let Some((_, len)) = d[CTRL_RX].used(mem) {
            let at = bufs.remove(0);
            let mut m = vec![0u8; len as usize];
            mem.read_slice(&mut m, GuestAddress(at)).unwrap();
            out.push(m);
        }
        out
    }

    fn rx_data(d: &mut [Driver], mem: &GuestMemoryMmap, bufs: &mut Vec<u64>) -> Vec<u8> {
        let mut out = vec![];
        while let Some((_, len)) = d[RX].used(mem) {
            let at = bufs.remove(0);
            let mut m = vec![0u8; len as usize];
            mem.read_slice(&mut m, GuestAddress(at)).unwrap();
            out.extend(m);
        }
        out
    }

    fn name_msg() -> Vec<u8> {
        let mut m = ctrl(PORT, event::PORT_NAME, 1);
        m.extend(PORT_NAME.as_bytes());
        m
    }

    #[test]
    fn config_and_features_describe_one_multiport_port() {
        let path = sock_path("cfg");
        let dev = Console::new(path.clone(), ram(), kicks(), EventFd::new(0).unwrap()).unwrap();
        assert_eq!(dev.features(), F_VERSION_1 | F_MULTIPORT);
        let mut t = MmioTransport::new(dev, EventFd::new(0).unwrap());
        let mut b = [0u8; 4];
        t.read(reg::DEVICE_ID, &mut b);
        assert_eq!(u32::from_le_bytes(b), DEVICE_ID);
        t.read(reg::CONFIG + 4, &mut b);
        assert_eq!(u32::from_le_bytes(b), 1, "max_nr_ports");
        // The socket is the owner's only; it goes when the VM ends.
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // A second VM on the same socket is refused.
        let e = Console::new(path.clone(), ram(), kicks(), EventFd::new(0).unwrap())
            .err()
            .unwrap();
        assert!(e.to_string().contains("another VM"), "{e}");
        t.close();
        assert!(!path.exists());
    }

    #[test]
    fn the_port_comes_up_carries_data_both_ways_and_survives_a_reconnect() {
        let path = sock_path("port");
        let ram = ram();
        let mem = ram.mem();
        let mut dev = Console::new(
            path.clone(),
            Arc::clone(&ram),
            kicks(),
            EventFd::new(0).unwrap(),
        )
        .unwrap();
        // The host's client connects and writes before the guest is up.
        let mut client = UnixStream::connect(&path).unwrap();
        client.write_all(b"hello").unwrap();

        let mut d = drivers();
        let qs: Vec<QueueConfig> = d.iter().map(|d| d.cfg).collect();
        assert!(dev.port(0, &qs).is_err(), "MULTIPORT is required");
        let mut port = dev.port(F_VERSION_1 | F_MULTIPORT, &qs).unwrap();
        let mut cbufs = post_bufs(&mut d, mem, CTRL_RX, 8);
        let mut rbufs = post_bufs(&mut d, mem, RX, 4);

        send_ctrl(&mut d, mem, &ctrl(u32::MAX, event::DEVICE_READY, 1));
        port.service().unwrap();
        assert_eq!(d[CTRL_TX].used(mem).map(|u| u.1), Some(0));
        assert_eq!(
            ctrl_msgs(&mut d, mem, &mut cbufs),
            vec![ctrl(PORT, event::PORT_ADD, 1)]
        );
        // Nothing goes to the port before the driver made it ready and the guest opened it.
        assert!(rx_data(&mut d, mem, &mut rbufs).is_empty());

        send_ctrl(&mut d, mem, &ctrl(PORT, event::PORT_READY, 1));
        port.service().unwrap();
        assert_eq!(
            ctrl_msgs(&mut d, mem, &mut cbufs),
            vec![name_msg(), ctrl(PORT, event::PORT_OPEN, 1)]
        );
        assert!(rx_data(&mut d, mem, &mut rbufs).is_empty());

        send_ctrl(&mut d, mem, &ctrl(PORT, event::PORT_OPEN, 1));
        port.service().unwrap();
        assert_eq!(rx_data(&mut d, mem, &mut rbufs), b"hello");

        // Guest to client, over two buffers.
        let a = d[TX].buf(mem, b"wor", 3);
        let b = d[TX].buf(mem, b"ld", 2);
        d[TX].post(mem, &[(a, 3, false), (b, 2, false)]);
        port.service().unwrap();
        assert_eq!(d[TX].used(mem).map(|u| u.1), Some(0));
        let mut got = [0u8; 5];
        client.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"world");

        // The client goes: the guest sees the port closed; its writes are dropped.
        drop(client);
        port.service().unwrap();
        assert_eq!(
            ctrl_msgs(&mut d, mem, &mut cbufs),
            vec![ctrl(PORT, event::PORT_OPEN, 0)]
        );
        let a = d[TX].buf(mem, b"lost", 4);
        d[TX].post(mem, &[(a, 4, false)]);
        port.service().unwrap();
        assert!(d[TX].used(mem).is_some());
        assert_eq!(port.stats.dropped.load(Ordering::Relaxed), 4);

        // The next client: the port opens again and data flows.
        let mut client = UnixStream::connect(&path).unwrap();
        client.write_all(b"again").unwrap();
        port.service().unwrap();
        assert_eq!(
            ctrl_msgs(&mut d, mem, &mut cbufs),
            vec![ctrl(PORT, event::PORT_OPEN, 1)]
        );
        // (The bytes may need a second pass once the accept has happened.)
        port.service().unwrap();
        assert_eq!(rx_data(&mut d, mem, &mut rbufs), b"again");
        let a = d[TX].buf(mem, b"back", 4);
        d[TX].post(mem, &[(a, 4, false)]);
        port.service().unwrap();
        let mut got = [0u8; 4];
        client.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"back");
        assert_eq!(port.stats.connects.load(Ordering::Relaxed), 2);
        dev.sock = Some(port.sock);
    }

    #[test]
    fn the_guest_sets_the_pace_and_bad_buffers_are_counted() {
        let path = sock_path("pace");
        let ram = ram();
        let mem = ram.mem();
        let mut dev = Console::new(
            path.clone(),
            Arc::clone(&ram),
            kicks(),
            EventFd::new(0).unwrap(),
        )
        .unwrap();
        let mut client = UnixStream::connect(&path).unwrap();
        let mut d = drivers();
        let qs: Vec<QueueConfig> = d.iter().map(|d| d.cfg).collect();
        let mut port = dev.port(F_VERSION_1 | F_MULTIPORT, &qs).unwrap();
        let mut cbufs = post_bufs(&mut d, mem, CTRL_RX, 8);
        for m in [
            ctrl(u32::MAX, event::DEVICE_READY, 1),
            ctrl(PORT, event::PORT_READY, 1),
            ctrl(PORT, event::PORT_OPEN, 1),
        ] {
            send_ctrl(&mut d, mem, &m);
        }
        port.service().unwrap();
        assert_eq!(ctrl_msgs(&mut d, mem, &mut cbufs).len(), 3);

        // 10 KiB from the client, one 4 KiB buffer posted: 4 KiB go, the rest waits in
        // the socket until the guest posts more.
        let data: Vec<u8> = (0..10240u32).map(|i| i as u8).collect();
        client.write_all(&data).unwrap();
        let mut rbufs = post_bufs(&mut d, mem, RX, 1);
        port.service().unwrap();
        let mut got = rx_data(&mut d, mem, &mut rbufs);
        assert_eq!(got.len(), 4096);
        port.service().unwrap();
        assert!(rx_data(&mut d, mem, &mut rbufs).is_empty());
        rbufs.extend(post_bufs(&mut d, mem, RX, 3));
        port.service().unwrap();
        got.extend(rx_data(&mut d, mem, &mut rbufs));
        assert_eq!(got, data);

        // A short control message, a control event the device does not know, and a
        // transmit buffer outside guest RAM: answered, counted, nothing else happens.
        send_ctrl(&mut d, mem, &[1, 2, 3]);
        send_ctrl(&mut d, mem, &ctrl(7, event::RESIZE, 1));
        d[TX].post(mem, &[(64 << 20, 16, false)]);
        port.service().unwrap();
        assert!(d[TX].used(mem).is_some());
        assert_eq!(port.stats.bad.load(Ordering::Relaxed), 3);

        // A driver that posts no control buffers: open and close messages collapse.
        drop(client);
        port.service().unwrap();
        for _ in 0..50 {
            let c = UnixStream::connect(&path).unwrap();
            port.service().unwrap();
            drop(c);
            port.service().unwrap();
        }
        assert!(port.ctrl_out.len() <= 1, "{}", port.ctrl_out.len());
        dev.sock = Some(port.sock);
    }

    #[test]
    fn the_device_thread_follows_kicks_and_the_socket() {
        let path = sock_path("thread");
        let ram = ram();
        let mem = ram.mem();
        let ks = kicks();
        let irq = EventFd::new(0).unwrap();
        let mut dev = Console::new(
            path.clone(),
            Arc::clone(&ram),
            ks.iter().map(|k| k.try_clone().unwrap()).collect(),
            irq.try_clone().unwrap(),
        )
        .unwrap();
        let mut d = drivers();
        let qs: Vec<QueueConfig> = d.iter().map(|d| d.cfg).collect();
        dev.activate(F_VERSION_1 | F_MULTIPORT, &qs).unwrap();
        let mut cbufs = post_bufs(&mut d, mem, CTRL_RX, 8);
        let mut rbufs = post_bufs(&mut d, mem, RX, 4);
        ks[CTRL_RX].write(1).unwrap();
        ks[RX].write(1).unwrap();
        let mut msgs = vec![];
        for m in [
            ctrl(u32::MAX, event::DEVICE_READY, 1),
            ctrl(PORT, event::PORT_READY, 1),
            ctrl(PORT, event::PORT_OPEN, 1),
        ] {
            send_ctrl(&mut d, mem, &m);
            ks[CTRL_TX].write(1).unwrap();
            irq.read().unwrap();
            msgs.extend(ctrl_msgs(&mut d, mem, &mut cbufs));
        }
        assert_eq!(msgs, vec![ctrl(PORT, event::PORT_ADD, 1), name_msg()]);
        // A client connects: the port opens, its bytes reach the guest, the guest's
        // reach it.
        let mut client = UnixStream::connect(&path).unwrap();
        irq.read().unwrap();
        assert_eq!(
            ctrl_msgs(&mut d, mem, &mut cbufs),
            vec![ctrl(PORT, event::PORT_OPEN, 1)]
        );
        client.write_all(b"ping").unwrap();
        let t = std::time::Instant::now();
        let mut got = vec![];
        while got.len() < 4 {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "no data in the guest"
            );
            irq.read().unwrap();
            got.extend(rx_data(&mut d, mem, &mut rbufs));
        }
        assert_eq!(got, b"ping");
        let a = d[TX].buf(mem, b"pong", 4);
        d[TX].post(mem, &[(a, 4, false)]);
        ks[TX].write(1).unwrap();
        let mut back = [0u8; 4];
        client.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"pong");
        // The driver resets the device: the thread stops, the client stays connected.
        dev.reset();
        assert!(dev.sock.as_ref().is_some_and(|s| s.conn.is_some()));
        dev.close();
        assert!(!path.exists());
    }
}
