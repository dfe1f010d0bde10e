//! A kernel tap interface as a port, so the switch can reach the host's network stack
//! (debugging, host access). One queue pair; each frame costs a `read`/`writev` system
//! call, which is the nature of a tap and why it is not a fast-path port.
//!
//! Its system calls go through [`crate::sys`]; its one `unsafe` block makes a received
//! pool buffer an entry of the batch, valid until the batch is cleared before the pool
//! is let go.

use std::fs::{File, OpenOptions};
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;

use crate::pool::{BufPool, MAX_FRAME};
use crate::port::{
    edited_len, edited_pieces, Port, PortDrop, PortStats, QueueCounters, RxBatch, TxSel, BURST,
};
use crate::sync::QueueCell;

/// Errors creating a tap port.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// Opening `/dev/net/tun` or creating the interface failed.
    #[error("tap {name}: {what}: {source}")]
    Os {
        /// Interface name.
        name: String,
        /// The step that failed.
        what: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// The interface name is empty or longer than 15 bytes.
    #[error("tap name {0:?} must be 1 to 15 bytes")]
    BadName(String),
    /// Buffer memory.
    #[error(transparent)]
    Mem(#[from] crate::mem::MemError),
}

/// A tap interface port.
pub struct TapPort {
    name: String,
    file: File,
    rx: QueueCell<BufPool>,
    tx_lock: QueueCell<()>,
    rx_ctr: QueueCounters,
    tx_ctr: QueueCounters,
}

impl TapPort {
    /// Creates (or attaches to) tap interface `ifname`; the port is named `name`.
    /// The interface is left down; bring it up with `ip link set IFNAME up`.
    pub fn new(name: &str, ifname: &str, hugepages: bool) -> Result<TapPort, TapError> {
        TapPort::new_in(name, ifname, None, hugepages)
    }

    /// As [`new`](Self::new), with the interface created in the network namespace at
    /// `netns` (a pod's): a tap belongs to the namespace it is opened in, so the device is
    /// opened on a short-lived thread that has entered it, and never has to move (moving
    /// a device between namespaces waits for an RCU grace period: tens of ms).
    pub fn new_in(
        name: &str,
        ifname: &str,
        netns: Option<&std::path::Path>,
        hugepages: bool,
    ) -> Result<TapPort, TapError> {
        if ifname.is_empty() || ifname.len() > 15 || ifname.contains('\0') {
            return Err(TapError::BadName(ifname.into()));
        }
        let file = match netns {
            None => open_tap(ifname)?,
            Some(ns) => {
                let os = |what, source| TapError::Os {
                    name: ifname.into(),
                    what,
                    source,
                };
                let ns = File::open(ns).map_err(|e| os("open netns", e))?;
                let ifname = ifname.to_string();
                std::thread::spawn(move || {
                    // setns changes only this thread's namespace, and the thread ends
                    // right after opening the device.
                    crate::sys::setns_net(ns.as_fd()).map_err(|source| TapError::Os {
                        name: ifname.clone(),
                        what: "setns",
                        source,
                    })?;
                    open_tap(&ifname)
                })
                .join()
                .map_err(|_| os("thread", std::io::Error::other("panicked")))??
            }
        };
        let pool = BufPool::new(
            &format!("vnfhost-{name}-tap"),
            MAX_FRAME,
            BURST as u32,
            hugepages,
        )?;
        Ok(TapPort {
            name: name.into(),
            file,
            rx: QueueCell::new(pool),
            tx_lock: QueueCell::new(()),
            rx_ctr: QueueCounters::default(),
            tx_ctr: QueueCounters::default(),
        })
    }
}

/// Opens `/dev/net/tun` and creates (or attaches to) tap `ifname` in the calling
/// thread's network namespace.
fn open_tap(ifname: &str) -> Result<File, TapError> {
    {
        let os = |what, source| TapError::Os {
            name: ifname.into(),
            what,
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(|e| os("open /dev/net/tun", e))?;
        crate::sys::tun_set_tap(file.as_fd(), ifname).map_err(|e| os("TUNSETIFF", e))?;
        Ok(file)
    }
}

impl Port for TapPort {
    fn name(&self) -> &str {
        &self.name
    }

    fn queue_pairs(&self) -> u16 {
        1
    }

    fn is_up(&self) -> bool {
        true
    }

    fn poll_rx(&self, q: u16, batch: &mut RxBatch, f: &mut dyn FnMut(&mut RxBatch)) -> usize {
        if q != 0 {
            return 0;
        }
        let Some(mut pool) = self.rx.try_lock() else {
            return 0;
        };
        batch.clear();
        let mut bytes = 0u64;
        while !batch.is_full() {
            let slot = batch.len() as u32;
            let buf = pool.buf(slot);
            let n = match crate::sys::read(self.file.as_fd(), buf) {
                Ok(n) if n > 0 => n,
                _ => break,
            };
            if n < 14 {
                self.rx_ctr.drop_n(PortDrop::RxRunt, 1);
                continue;
            }
            bytes += n as u64;
            #[allow(unsafe_code)] // see the module docs
            // SAFETY: the pool buffer stays ours until the batch is cleared below.
            unsafe {
                batch.push(pool.buf_ptr(slot), n as u32)
            };
        }
        let n = batch.len();
        if n > 0 {
            f(batch);
        }
        batch.clear();
        self.rx_ctr.add(n as u64, bytes);
        n
    }

    fn tx_burst(&self, _q: u16, src: &RxBatch, sel: &[TxSel]) -> usize {
        let _g = self.tx_lock.lock();
        let mut sent = 0usize;
        let mut bytes = 0u64;
        for s in sel {
            let (head, tail) = src.parts(usize::from(s.idx));
            let flen = head.len() + tail.len();
            let mut tag = [0u8; 4];
            let (pieces, n) = edited_pieces(head, tail, s.edit, &mut tag);
            let r = crate::sys::writev(self.file.as_fd(), &pieces[..n]);
            if r.is_err() {
                self.tx_ctr.drop_n(PortDrop::NoRxBuffer, 1);
            } else {
                sent += 1;
                bytes += edited_len(flen, s.edit) as u64;
            }
        }
        self.tx_ctr.add(sent as u64, bytes);
        sent
    }

    fn stats(&self) -> PortStats {
        crate::port::stats_of(&self.rx_ctr, &self.tx_ctr)
    }
}
