//! The traffic generator: transmits on one vhost-user port and receives on another from
//! one pinned thread, through pmd's virtio-user port, and counts what comes back.
//!
//! Each frame carries a sequence number after the Ethernet header, so loss and
//! reordering are measured, not guessed. Frames are written straight into the
//! descriptor buffers (no intermediate copy).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use pmd::virtio_user::{VirtioUser, VirtioUserConfig, VirtioUserError};

/// Ethernet addresses the generator uses: it sends from `SRC` to `DST`, and teaches a
/// learning switch where `DST` is by sending one frame from the receiving port first.
pub const SRC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x01];
/// See [`SRC`].
pub const DST: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x02];

/// Generator set-up.
#[derive(Clone, Debug)]
pub struct GenConfig {
    /// Socket of the DUT port we transmit into.
    pub tx: PathBuf,
    /// Socket of the DUT port we receive from.
    pub rx: PathBuf,
    /// Frame length without FCS (60..=1514 typical; 64-byte frames on the wire are 60 here).
    pub frame_len: usize,
    /// Descriptors per ring.
    pub ring_size: u16,
    /// Put rings and buffers on hugepages.
    pub hugepages: bool,
    /// Create the sockets and wait for the DUT to connect (OVS `dpdkvhostuserclient`).
    pub server: bool,
}

/// Result of one trial.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Trial {
    /// Frames the DUT accepted from us.
    pub sent: u64,
    /// Frames that came back.
    pub received: u64,
    /// Frames that came back with a lower sequence number than one seen before.
    pub reordered: u64,
    /// Trial length.
    pub seconds: f64,
}

impl Trial {
    /// Received frames per second.
    pub fn rx_pps(&self) -> f64 {
        self.received as f64 / self.seconds
    }
}

/// A connected generator.
pub struct Generator {
    tx: VirtioUser,
    rx: VirtioUser,
    frame_len: usize,
    seq: u32,
}

impl Generator {
    /// Connects both ports (retrying for up to 10 s while the DUT starts).
    pub fn connect(cfg: &GenConfig) -> Result<Generator, VirtioUserError> {
        let mk = |path: &PathBuf| {
            let mut c = VirtioUserConfig::new(path);
            c.ring_size = cfg.ring_size;
            c.hugepages = cfg.hugepages;
            c.server = cfg.server;
            c.timeout = Duration::from_secs(30);
            VirtioUser::new(&c)
        };
        let tx = mk(&cfg.tx)?;
        let rx = mk(&cfg.rx)?;
        Ok(Generator {
            tx,
            rx,
            frame_len: cfg.frame_len.clamp(60, 2030),
            seq: 0,
        })
    }

    /// Sends a few frames from the receiving side so a learning switch knows `DST`.
    pub fn teach(&mut self) {
        let mut f = vec![0u8; 60];
        f[..6].copy_from_slice(&SRC);
        f[6..12].copy_from_slice(&DST);
        f[12..14].copy_from_slice(&[0x88, 0xb5]);
        for _ in 0..3 {
            self.rx.send(0, &[&f]);
            std::thread::sleep(Duration::from_millis(20));
        }
        // Drain whatever the DUT sent back to us meanwhile.
        self.tx.recv(0, 4096, |_| {});
        self.rx.recv(0, 4096, |_| {});
    }

    /// Offers frames as fast as the DUT accepts them for `d`, counting what returns.
    pub fn run(&mut self, d: Duration) -> Trial {
        let len = self.frame_len;
        let mut t = Trial::default();
        let mut last_seq: Option<u32> = None;
        let start = Instant::now();
        let mut iter = 0u32;
        loop {
            let seq0 = self.seq;
            let n = self.tx.send_fill(0, 32, |i, b| {
                b[..6].copy_from_slice(&DST);
                b[6..12].copy_from_slice(&SRC);
                b[12..14].copy_from_slice(&[0x88, 0xb5]);
                b[14..18].copy_from_slice(&seq0.wrapping_add(i as u32).to_be_bytes());
                len
            });
            self.seq = self.seq.wrapping_add(n as u32);
            t.sent += n as u64;
            let (mut got, mut reord) = (0u64, 0u64);
            self.rx.recv(0, 64, |f| {
                if f.len() >= 18 {
                    let s = u32::from_be_bytes([f[14], f[15], f[16], f[17]]);
                    if let Some(l) = last_seq {
                        if s.wrapping_sub(l) > u32::MAX / 2 {
                            reord += 1;
                        }
                    }
                    last_seq = Some(s);
                }
                got += 1;
            });
            t.received += got;
            t.reordered += reord;
            iter = iter.wrapping_add(1);
            if iter.is_multiple_of(256) && start.elapsed() >= d {
                break;
            }
        }
        // Collect what is still in flight for a moment, so it is not counted lost.
        let tail = Instant::now();
        while tail.elapsed() < Duration::from_millis(20) {
            t.received += self.rx.recv(0, 64, |_| {}) as u64;
        }
        t.seconds = start.elapsed().as_secs_f64() - tail.elapsed().as_secs_f64();
        t
    }
}
