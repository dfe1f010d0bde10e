//! virtio-net as a vhost-user frontend: the switch serves the queues, the VMM only sets
//! them up.
//!
//! The VMM answers the guest's feature negotiation and configuration space itself (MAC,
//! link status), then, when the driver sets DRIVER_OK, hands the backend the memory table
//! (the guest RAM memfd), the rings' addresses, the kick eventfds (KVM ioeventfds on
//! `QueueNotify`) and the call eventfd (the device's KVM irqfd). From then on guest and
//! switch talk through shared memory and eventfds; no packet passes through this process.
//!
//! **The backend going away** (switch restarted or killed) does not stop the VM: a monitor
//! thread sees the socket hang up, marks the device as needing reset, reports the link
//! down and raises a configuration interrupt. It then reconnects (client mode) or accepts
//! the next connection (server mode), replays the set-up with each ring resuming at the
//! used index found in guest memory (what QEMU does for vhost-user net), clears the mark
//! and reports the link up. A driver that resets the device meanwhile just starts over.

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pmd::virtio;
use vhost::vhost_user::message::{VhostUserHeaderFlag, VhostUserProtocolFeatures};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use super::virtio_mmio::{read_config_bytes, MmioTransport, QueueConfig, VirtioDevice};
use crate::memory::GuestRam;

/// Largest queue the device accepts.
pub const QUEUE_MAX: u16 = 1024;
/// How long one vhost-user reply may take.
const REPLY_TIMEOUT: Duration = Duration::from_secs(2);
/// Features the device can pass on from the backend.
const BACKEND_FEATURES: u64 = virtio::F_VERSION_1
    | virtio::NET_F_MRG_RXBUF
    | virtio::RING_F_EVENT_IDX
    | virtio::RING_F_INDIRECT_DESC;
/// Features the VMM implements itself (configuration space).
const OWN_FEATURES: u64 = virtio::NET_F_MAC | virtio::NET_F_STATUS;

/// One `--net` of a VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    /// The vhost-user socket.
    pub path: PathBuf,
    /// The VMM listens on `path` (the switch connects as client); otherwise it connects.
    pub server: bool,
    /// The guest's MAC; derived from the socket path when absent.
    pub mac: Option<[u8; 6]>,
    /// Offer the guest packed virtqueues (`VIRTIO_F_RING_PACKED`). Only the QEMU backend
    /// does so far; the `kvm` backend refuses it.
    pub packed: bool,
    /// The network's MTU, told to the guest (`VIRTIO_NET_F_MTU`): on a VXLAN network the
    /// uplink's less the encapsulation.
    pub mtu: Option<u16>,
}

/// Errors while attaching a backend.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// Socket trouble.
    #[error("vhost-user {path}: {what}: {source}")]
    Socket {
        /// The socket.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// Why it failed.
        source: io::Error,
    },
    /// The backend broke the protocol or refused a step.
    #[error("vhost-user {path}: {step}: {detail}")]
    Protocol {
        /// The socket.
        path: PathBuf,
        /// The request.
        step: &'static str,
        /// What the backend did.
        detail: String,
    },
}

/// The default MAC for a socket path: locally administered, stable per path.
pub fn default_mac(path: &std::path::Path) -> [u8; 6] {
    // FNV-1a over the path: no dependency, stable across runs.
    let mut h: u32 = 0x811c_9dc5;
    for b in path.as_os_str().as_encoded_bytes() {
        h = (h ^ u32::from(*b)).wrapping_mul(0x0100_0193);
    }
    let b = h.to_be_bytes();
    [0x52, 0x54, b[0], b[1], b[2], b[3]]
}

struct Conn {
    fe: Frontend,
    protocol: bool,
}

/// The vhost-user virtio-net device.
pub struct VhostNet {
    cfg: NetConfig,
    mac: [u8; 6],
    ram: Arc<GuestRam>,
    kicks: Vec<EventFd>,
    call: EventFd,
    listener: Option<UnixListener>,
    conn: Option<Conn>,
    backend_features: u64,
    running: Option<(u64, Vec<QueueConfig>)>,
    needs_reset: bool,
    link_up: bool,
    /// Times the backend came back.
    pub reconnects: u64,
}

impl VhostNet {
    /// Creates the device and waits for its backend: connects (client) or listens and
    /// accepts the first connection (server). `kicks` are the per-queue ioeventfds (rx,
    /// tx), `call` the device's irqfd.
    pub fn new(
        cfg: NetConfig,
        ram: Arc<GuestRam>,
        kicks: Vec<EventFd>,
        call: EventFd,
        connect_timeout: Duration,
    ) -> Result<VhostNet, NetError> {
        let sock_err = |what, source| NetError::Socket {
            path: cfg.path.clone(),
            what,
            source,
        };
        let listener = if cfg.server {
            let busy = "a server already listens there (the switch?); add `,client` to \
                        connect to it instead";
            Some(super::listen(&cfg.path, 0o660, busy).map_err(|(what, e)| sock_err(what, e))?)
        } else {
            None
        };
        let mac = cfg.mac.unwrap_or_else(|| default_mac(&cfg.path));
        let mut dev = VhostNet {
            mac,
            ram,
            kicks,
            call,
            listener,
            conn: None,
            backend_features: 0,
            running: None,
            needs_reset: false,
            link_up: false,
            reconnects: 0,
            cfg,
        };
        let stream = dev.open(Some(connect_timeout))?;
        let h = handshake(&dev.cfg.path, stream)?;
        dev.attach(h)?;
        Ok(dev)
    }

    /// The guest's MAC.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// Whether a backend is attached.
    pub fn connected(&self) -> bool {
        self.conn.is_some()
    }

    /// Opens the next connection: accept (server) or connect with retries (client).
    /// `timeout` None waits for ever.
    fn open(&self, timeout: Option<Duration>) -> Result<UnixStream, NetError> {
        let path = &self.cfg.path;
        let sock_err = |what, source| NetError::Socket {
            path: path.clone(),
            what,
            source,
        };
        if let Some(l) = &self.listener {
            tracing::info!("waiting for a vhost-user backend on {}", path.display());
            return l
                .accept()
                .map(|(s, _)| s)
                .map_err(|e| sock_err("accept", e));
        }
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            match UnixStream::connect(path) {
                Ok(s) => return Ok(s),
                Err(e) if deadline.is_some_and(|d| Instant::now() >= d) => {
                    return Err(sock_err("connect", e))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    fn proto(&self, step: &'static str, e: impl std::fmt::Display) -> NetError {
        NetError::Protocol {
            path: self.cfg.path.clone(),
            step,
            detail: e.to_string(),
        }
    }

    /// Takes a backend that passed the [`handshake`] and, if the driver had started the
    /// device, restores its rings, each resuming at the used index in guest memory. On
    /// failure the backend is dropped (its socket closed).
    fn attach(&mut self, h: Handshake) -> Result<(), NetError> {
        if let Some((acked, _)) = &self.running {
            let lost = acked & BACKEND_FEATURES & !h.features;
            if lost != 0 {
                return Err(self.proto(
                    "GET_FEATURES",
                    format!("the new backend lacks features the driver uses ({lost:#x})"),
                ));
            }
        } else {
            self.backend_features = h.features;
        }
        if let Some((acked, queues)) = self.running.clone() {
            let mut bases = vec![0u16; queues.len()];
            for (i, q) in queues.iter().enumerate().filter(|(_, q)| q.ready) {
                let at = q.used.checked_add(2).ok_or_else(|| {
                    self.proto("reading the used index", "used ring address overflows")
                })?;
                bases[i] = self
                    .ram
                    .mem()
                    .read_obj(GuestAddress(at))
                    .map_err(|e| self.proto("reading the used index", e))?;
            }
            self.conn = Some(Conn {
                fe: h.fe,
                protocol: h.protocol,
            });
            if let Err(e) = self.program(acked, &queues, &bases) {
                self.conn = None;
                return Err(e);
            }
        } else {
            self.conn = Some(Conn {
                fe: h.fe,
                protocol: h.protocol,
            });
        }
        self.link_up = true;
        self.needs_reset = false;
        Ok(())
    }

    /// Checks what the driver configured before anything is sent to the backend: a guest
    /// mistake is the guest's error, not a reason to drop a healthy backend. Returns the
    /// ready queues with the VMM addresses of their rings.
    fn check_queues(&self, queues: &[QueueConfig]) -> Result<Vec<RingAddrs>, String> {
        let mut out = vec![];
        for (i, q) in queues.iter().enumerate() {
            if !q.ready {
                continue;
            }
            if q.size == 0 || !q.size.is_power_of_two() || q.size > QUEUE_MAX {
                return Err(format!(
                    "queue {i}: size {} is not a power of two in 1..={QUEUE_MAX}",
                    q.size
                ));
            }
            for (addr, align, what) in [
                (q.desc, 16, "descriptor table"),
                (q.avail, 2, "driver ring"),
                (q.used, 4, "device ring"),
            ] {
                if addr % align != 0 {
                    return Err(format!(
                        "queue {i}: the {what} at {addr:#x} is not {align}-byte aligned"
                    ));
                }
            }
            let size = u64::from(q.size);
            let host = |gpa: u64, len: u64, what: &str| {
                self.ram
                    .host_addr(gpa, len)
                    .ok_or_else(|| format!("queue {i}: the {what} at {gpa:#x} is not in guest RAM"))
            };
            out.push(RingAddrs {
                index: i,
                desc: host(q.desc, size * 16, "descriptor table")?,
                avail: host(q.avail, virtio::avail_ring_bytes(q.size), "driver ring")?,
                used: host(q.used, virtio::used_ring_bytes(q.size), "device ring")?,
            });
        }
        if out.is_empty() {
            return Err("no queue is ready".into());
        }
        Ok(out)
    }

    /// Sends features, memory table and rings to the backend.
    fn program(
        &mut self,
        acked: u64,
        queues: &[QueueConfig],
        bases: &[u16],
    ) -> Result<(), NetError> {
        let mut regions = vec![];
        for r in self.ram.ranges() {
            regions.push(VhostUserMemoryRegionInfo {
                guest_phys_addr: r.gpa,
                memory_size: r.len,
                userspace_addr: r.host_addr,
                mmap_offset: r.file_offset,
                mmap_handle: self.ram.file().as_raw_fd(),
            });
        }
        let addrs = self
            .check_queues(queues)
            .map_err(|e| self.proto("SET_VRING_ADDR", e))?;
        let Some(conn) = self.conn.as_mut() else {
            return Err(self.proto("SET_FEATURES", "no backend"));
        };
        let path = &self.cfg.path;
        let p = |step, e: vhost::Error| NetError::Protocol {
            path: path.clone(),
            step,
            detail: e.to_string(),
        };
        let mut features = acked & self.backend_features;
        if conn.protocol {
            features |= virtio::F_PROTOCOL_FEATURES;
        }
        conn.fe
            .set_features(features)
            .map_err(|e| p("SET_FEATURES", e))?;
        conn.fe
            .set_mem_table(&regions)
            .map_err(|e| p("SET_MEM_TABLE", e))?;
        for RingAddrs {
            index: i,
            desc,
            avail,
            used,
        } in addrs
        {
            let q = &queues[i];
            let data = VringConfigData {
                queue_max_size: QUEUE_MAX,
                queue_size: q.size,
                flags: 0,
                desc_table_addr: desc,
                used_ring_addr: used,
                avail_ring_addr: avail,
                log_addr: None,
            };
            conn.fe
                .set_vring_num(i, q.size)
                .map_err(|e| p("SET_VRING_NUM", e))?;
            conn.fe
                .set_vring_base(i, bases[i])
                .map_err(|e| p("SET_VRING_BASE", e))?;
            conn.fe
                .set_vring_addr(i, &data)
                .map_err(|e| p("SET_VRING_ADDR", e))?;
            conn.fe
                .set_vring_kick(i, &self.kicks[i])
                .map_err(|e| p("SET_VRING_KICK", e))?;
            conn.fe
                .set_vring_call(i, &self.call)
                .map_err(|e| p("SET_VRING_CALL", e))?;
            if conn.protocol {
                conn.fe
                    .set_vring_enable(i, true)
                    .map_err(|e| p("SET_VRING_ENABLE", e))?;
            }
        }
        Ok(())
    }

    /// The backend hung up (or broke a request): forget it and report the link down.
    fn detach(&mut self) {
        if self.conn.take().is_some() {
            tracing::warn!(
                "vhost-user backend on {} is gone; the device needs a reset until it returns",
                self.cfg.path.display()
            );
        }
        self.link_up = false;
        // Only a started device is broken without its backend.
        self.needs_reset = self.running.is_some();
    }
}

impl VhostNet {
    /// Closes the backend connection and removes the socket this device listens on (the
    /// VM is ending).
    pub fn close(&mut self) {
        self.conn = None;
        if self.listener.take().is_some() {
            let _ = std::fs::remove_file(&self.cfg.path);
        }
    }
}

impl Drop for VhostNet {
    fn drop(&mut self) {
        self.close();
    }
}

impl VirtioDevice for VhostNet {
    fn device_type(&self) -> u32 {
        1
    }

    fn features(&self) -> u64 {
        let mtu = if self.cfg.mtu.is_some() {
            virtio::NET_F_MTU
        } else {
            0
        };
        (self.backend_features & BACKEND_FEATURES) | OWN_FEATURES | mtu
    }

    fn num_queues(&self) -> usize {
        2
    }

    fn queue_max(&self) -> u16 {
        QUEUE_MAX
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // struct virtio_net_config { mac[6]; le16 status; le16 max_virtqueue_pairs;
        // le16 mtu; }
        let mut cfg = [0u8; 12];
        cfg[..6].copy_from_slice(&self.mac);
        let status = if self.link_up {
            virtio::NET_S_LINK_UP
        } else {
            0
        };
        cfg[6..8].copy_from_slice(&status.to_le_bytes());
        cfg[8..10].copy_from_slice(&1u16.to_le_bytes());
        cfg[10..12].copy_from_slice(&self.cfg.mtu.unwrap_or(1500).to_le_bytes());
        read_config_bytes(&cfg, offset, data);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}

    fn activate(&mut self, acked: u64, queues: &[QueueConfig]) -> Result<(), String> {
        let lost = acked & BACKEND_FEATURES & !self.backend_features;
        if lost != 0 {
            return Err(format!(
                "the driver acked features ({lost:#x}) the current backend does not offer"
            ));
        }
        self.check_queues(queues)?;
        self.running = Some((acked, queues.to_vec()));
        if self.conn.is_none() {
            // Started without a backend: the monitor programs the rings when one comes.
            self.needs_reset = true;
            self.link_up = false;
            return Ok(());
        }
        let bases = vec![0; queues.len()];
        if let Err(e) = self.program(acked, queues, &bases) {
            // The backend failed, not the driver: drop it; the monitor brings the next
            // one up with these rings.
            tracing::warn!("{e}");
            self.detach();
        }
        Ok(())
    }

    fn reset(&mut self) {
        let mut failed = false;
        if let (Some(conn), Some((_, queues))) = (self.conn.as_mut(), self.running.as_ref()) {
            for (i, _) in queues.iter().enumerate().filter(|(_, q)| q.ready) {
                if conn.protocol && conn.fe.set_vring_enable(i, false).is_err() {
                    failed = true;
                    break;
                }
                // GET_VRING_BASE stops the ring in the backend.
                if conn.fe.get_vring_base(i).is_err() {
                    failed = true;
                    break;
                }
            }
        }
        self.running = None;
        if failed {
            // A backend that may still be using the rings must not keep them: closing the
            // socket makes it stop.
            self.detach();
        }
        self.needs_reset = false;
        self.link_up = self.conn.is_some();
    }

    fn notify(&mut self, queue: u16) {
        // Only without ioeventfds: pass the kick on.
        if let Some(k) = self.kicks.get(usize::from(queue)) {
            let _ = k.write(1);
        }
    }

    fn needs_reset(&self) -> bool {
        self.needs_reset
    }

    fn close(&mut self) {
        VhostNet::close(self)
    }
}

/// The VMM addresses of one ready queue's rings.
struct RingAddrs {
    index: usize,
    desc: u64,
    avail: u64,
    used: u64,
}

/// A backend after the protocol handshake, not yet attached to a device.
pub struct Handshake {
    fe: Frontend,
    features: u64,
    protocol: bool,
}

/// Negotiates with a new backend: SET_OWNER, features, protocol features (REPLY_ACK).
/// Needs no device state, so the monitor runs it without holding the device lock.
fn handshake(path: &std::path::Path, stream: UnixStream) -> Result<Handshake, NetError> {
    let p = |step: &'static str, e: &dyn std::fmt::Display| NetError::Protocol {
        path: path.to_path_buf(),
        step,
        detail: e.to_string(),
    };
    stream
        .set_read_timeout(Some(REPLY_TIMEOUT))
        .map_err(|e| p("socket timeout", &e))?;
    let mut fe = Frontend::from_stream(stream, 2);
    fe.set_owner().map_err(|e| p("SET_OWNER", &e))?;
    let features = fe.get_features().map_err(|e| p("GET_FEATURES", &e))?;
    if features & virtio::F_VERSION_1 == 0 {
        return Err(p("GET_FEATURES", &"the backend lacks VIRTIO_F_VERSION_1"));
    }
    let mut protocol = false;
    if features & virtio::F_PROTOCOL_FEATURES != 0 {
        let pf = fe
            .get_protocol_features()
            .map_err(|e| p("GET_PROTOCOL_FEATURES", &e))?;
        let use_pf = pf & VhostUserProtocolFeatures::REPLY_ACK;
        fe.set_protocol_features(use_pf)
            .map_err(|e| p("SET_PROTOCOL_FEATURES", &e))?;
        if use_pf.contains(VhostUserProtocolFeatures::REPLY_ACK) {
            fe.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
        }
        protocol = true;
    }
    Ok(Handshake {
        fe,
        features,
        protocol,
    })
}

/// Watches the backend's socket of `dev`; when it hangs up, marks the device, waits for
/// the next backend and restores the device. Runs until `stop` is set. The device lock
/// is held only to look at the device and to attach a backend that passed the handshake,
/// never while waiting for a backend or sleeping: the guest's interrupt handler needs it.
pub fn monitor(dev: Arc<Mutex<MmioTransport<VhostNet>>>, stop: Arc<AtomicBool>) {
    let lock = || dev.lock().unwrap_or_else(|e| e.into_inner());
    let (path, listener) = {
        let t = lock();
        let d = t.device();
        (
            d.cfg.path.clone(),
            d.listener.as_ref().and_then(|l| l.try_clone().ok()),
        )
    };
    if let Some(l) = &listener {
        // Accept without blocking, so that `stop` is seen.
        let _ = l.set_nonblocking(true);
    }
    let nap = || std::thread::sleep(Duration::from_millis(200));
    while !stop.load(Ordering::Relaxed) {
        let fd = lock().device().conn.as_ref().map(|c| c.fe.as_raw_fd());
        if let Some(fd) = fd {
            let mut pfd = libc::pollfd {
                fd,
                events: libc::POLLRDHUP,
                revents: 0,
            };
            // SAFETY: one valid pollfd on the stack. The fd may be closed (and even
            // reused) by the vCPU thread meanwhile; poll then reports POLLNVAL or watches
            // an unrelated fd for 200 ms, and the check below compares it again under the
            // lock before acting.
            let n = unsafe { libc::poll(&mut pfd, 1, 200) };
            let hung = libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR | libc::POLLNVAL;
            if n <= 0 || pfd.revents & hung == 0 {
                continue;
            }
            let mut t = lock();
            if t.device().conn.as_ref().map(|c| c.fe.as_raw_fd()) == Some(fd) {
                t.device_mut().detach();
                t.config_changed();
            }
            continue;
        }
        // No backend: wait for the next one, outside the lock.
        let stream = match &listener {
            Some(l) => match l.accept() {
                Ok((s, _)) => {
                    let _ = s.set_nonblocking(false);
                    s
                }
                Err(_) => {
                    nap();
                    continue;
                }
            },
            None => match UnixStream::connect(&path) {
                Ok(s) => s,
                Err(_) => {
                    nap();
                    continue;
                }
            },
        };
        let h = match handshake(&path, stream) {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!("{e}");
                nap();
                continue;
            }
        };
        let result = {
            let mut t = lock();
            let r = t.device_mut().attach(h);
            if r.is_ok() {
                t.device_mut().reconnects += 1;
                t.config_changed();
            }
            r
        };
        match result {
            Ok(()) => tracing::info!("vhost-user backend on {} is back", path.display()),
            Err(e) => {
                tracing::warn!("{e}");
                nap();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_macs_are_local_unicast_and_stable() {
        let a = default_mac(std::path::Path::new("/run/vnfhost/a.sock"));
        let b = default_mac(std::path::Path::new("/run/vnfhost/b.sock"));
        assert_ne!(a, b);
        assert_eq!(a, default_mac(std::path::Path::new("/run/vnfhost/a.sock")));
        assert_eq!(a[0] & 0x3, 0x2);
    }
}
