//! The traffic generator: transmits on one vhost-user port and receives on another from
//! one pinned thread, through pmd's virtio-user port, and counts what comes back.
//!
//! Each frame carries a sequence number and a TSC stamp after the Ethernet header, so
//! loss, reordering and latency are measured, not guessed. The offered load is either
//! as fast as the DUT accepts or a fixed rate (paced by the TSC). Frames are written straight into the
//! descriptor buffers (no intermediate copy).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use pmd::sched::tsc;
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
    /// Frame length without FCS (60..=1514 typical; 64-byte frames on the wire are 60
    /// here); [`IMIX`] for the simple IMIX mix.
    pub frame_len: usize,
    /// Distinct flows: source MACs cycled frame by frame (1 = one flow).
    pub flows: u32,
    /// Descriptors per ring.
    pub ring_size: u16,
    /// Put rings and buffers on hugepages.
    pub hugepages: bool,
    /// Create the sockets and wait for the DUT to connect (OVS `dpdkvhostuserclient`).
    pub server: bool,
    /// Routed traffic: IPv4 from [`L3_SRC_IP`] to [`L3_DST_IP`], sent to [`ROUTER_MAC`]
    /// (sequence number and stamp after the IPv4 header).
    pub l3: bool,
    /// Packed virtqueues instead of split ones.
    pub packed: bool,
    /// The tunnel benchmark: which side of the DUT's VXLAN tunnel the generator
    /// transmits on (`None`: plain frames both ways).
    pub tunnel: Option<Tunnel>,
    /// The sessions benchmark: IPv4/UDP conversations instead of `flows` source MACs
    /// (`None`: the frames above).
    pub l4: Option<L4Flows>,
}

/// IPv4/UDP frames, one conversation per flow: flow `k` comes from address
/// `10.0.0.(1 + k / 50000 % 250)` and port `1024 + k % 50000`, to `dst`. The sequence
/// number and stamp follow the UDP header. To a router ([`ROUTER_MAC`]) when the
/// generator is in L3 mode, else to [`DST`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct L4Flows {
    /// Destination address and UDP port (a service's VIP, or the receiver).
    pub dst: ([u8; 4], u16),
    /// Where replies come from (the backend behind a VIP; else `dst`).
    pub reply_from: ([u8; 4], u16),
    /// Every frame opens a conversation of its own (cycling through 12.5 million)
    /// instead of cycling through `flows`.
    pub new_each: bool,
}

/// Source address and port of conversation `k` (see [`L4Flows`]).
pub fn l4_source(k: u32) -> ([u8; 4], u16) {
    (
        [10, 0, 0, 1 + (k / 50_000 % 250) as u8],
        1024 + (k % 50_000) as u16,
    )
}

/// Writes the Ethernet, IPv4 and UDP headers of an L4-mode frame of `len` bytes.
fn write_l4(b: &mut [u8], len: usize, macs: ([u8; 6], [u8; 6]), ip: &[u8; 20], ports: (u16, u16)) {
    b[..6].copy_from_slice(&macs.0);
    b[6..12].copy_from_slice(&macs.1);
    b[12..14].copy_from_slice(&[0x08, 0x00]);
    b[14..34].copy_from_slice(ip);
    b[34..36].copy_from_slice(&ports.0.to_be_bytes());
    b[36..38].copy_from_slice(&ports.1.to_be_bytes());
    b[38..40].copy_from_slice(&((len - 34) as u16).to_be_bytes());
    b[40..42].copy_from_slice(&[0, 0]);
}

/// The IPv4 header of an L4-mode frame.
fn l4_ip(len: usize, src: [u8; 4], dst: [u8; 4]) -> [u8; 20] {
    let mut f = [0u8; 34];
    write_ipv4(&mut f, len, src, dst);
    let mut h = [0u8; 20];
    h.copy_from_slice(&f[14..34]);
    h
}

/// The generator's side of a VXLAN tunnel benchmark: the receiving port (`rx`) or the
/// transmitting one (`tx`) is the DUT's uplink, and the generator is the remote VTEP
/// behind it ([`TUN_GEN_IP`], VNI [`TUN_VNI`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tunnel {
    /// Plain frames go in; they come back encapsulated (the DUT encapsulates).
    Encap,
    /// Encapsulated frames go in; they come back plain (the DUT decapsulates).
    Decap,
}

/// The DUT's uplink MAC in the tunnel benchmark.
pub const TUN_DUT_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x99, 0x01];
/// The generator's (the remote VTEP's) MAC.
pub const TUN_GEN_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x99, 0x02];
/// The DUT's tunnel address.
pub const TUN_DUT_IP: [u8; 4] = [192, 168, 99, 1];
/// The generator's tunnel address.
pub const TUN_GEN_IP: [u8; 4] = [192, 168, 99, 2];
/// The VNI of the benchmark's network.
pub const TUN_VNI: u32 = 100;
/// Bytes VXLAN adds over IPv4.
pub const TUN_OVERHEAD: usize = 50;

/// Writes VXLAN's outer headers (from the generator's VTEP to the DUT's) for an inner
/// frame of `inner` bytes at `b[..50]`.
fn write_outer(b: &mut [u8], inner: usize, sport: u16) {
    let mut h = [0u8; TUN_OVERHEAD];
    h[..6].copy_from_slice(&TUN_DUT_MAC);
    h[6..12].copy_from_slice(&TUN_GEN_MAC);
    h[12..14].copy_from_slice(&[0x08, 0x00]);
    let mut ip = [0u8; 34];
    write_ipv4(&mut ip, inner + TUN_OVERHEAD, TUN_GEN_IP, TUN_DUT_IP);
    h[14..34].copy_from_slice(&ip[14..34]);
    h[34..36].copy_from_slice(&sport.to_be_bytes());
    h[36..38].copy_from_slice(&4789u16.to_be_bytes());
    h[38..40].copy_from_slice(&((inner + 16) as u16).to_be_bytes());
    h[42] = 0x08;
    h[46..49].copy_from_slice(&TUN_VNI.to_be_bytes()[1..]);
    b[..TUN_OVERHEAD].copy_from_slice(&h);
}

/// The router's MAC in L3 mode (vnfhost's default router MAC).
pub const ROUTER_MAC: [u8; 6] = [0x02, 0x76, 0x6e, 0x68, 0x72, 0x01];
/// L3 mode: the sender's address (behind the router's 10.0.0.254/24).
pub const L3_SRC_IP: [u8; 4] = [10, 0, 0, 1];
/// L3 mode: the receiver's address (behind the router's 10.0.1.254/24).
pub const L3_DST_IP: [u8; 4] = [10, 0, 1, 1];

/// Writes the IPv4 header of an L3-mode frame of `len` bytes (without FCS) at `b[14..34]`.
fn write_ipv4(b: &mut [u8], len: usize, src: [u8; 4], dst: [u8; 4]) {
    // Built and summed in a local array, then copied once: summing it back out of the
    // guest buffer would read bytes still waiting in the store buffer for a line the
    // DUT's core holds (a store-forwarding stall of hundreds of cycles per frame).
    let mut h = [0u8; 20];
    h[0] = 0x45;
    h[2..4].copy_from_slice(&((len - 14) as u16).to_be_bytes());
    h[8] = 64;
    h[9] = 17;
    h[12..16].copy_from_slice(&src);
    h[16..20].copy_from_slice(&dst);
    let mut sum: u32 = h
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    h[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    b[14..34].copy_from_slice(&h);
}

/// `frame_len` value that selects simple IMIX: 7 × 64, 4 × 570, 1 × 1518 bytes on the
/// wire, interleaved.
pub const IMIX: usize = 0;

/// Frame lengths (without FCS) of one IMIX cycle of 12 frames.
const IMIX_CYCLE: [usize; 12] = [60, 566, 60, 60, 566, 60, 1514, 60, 566, 60, 566, 60];

/// Result of one trial.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Trial {
    /// Frames the DUT accepted from us.
    pub sent: u64,
    /// At a fixed rate: frames that were due but found the DUT's ring full. They count
    /// as lost, as frames a wire could not deliver would.
    pub refused: u64,
    /// Frames that came back.
    pub received: u64,
    /// Frames that came back with a lower sequence number than one seen before.
    pub reordered: u64,
    /// Trial length.
    pub seconds: f64,
    /// The longest time between two consecutive frames arriving, in ns (as the
    /// receiving loop sees them: frames that arrive in one burst are 0 apart).
    pub max_gap_ns: u64,
    /// The generator's own longest pause between two turns of its loop, in ns (it was
    /// preempted): a gap this long at the receiver may be the generator's.
    pub gen_stall_ns: u64,
    /// Gaps between consecutive arrivals longer than 50 µs.
    pub gaps_over_50us: u64,
}

impl Trial {
    /// Received frames per second.
    pub fn rx_pps(&self) -> f64 {
        self.received as f64 / self.seconds
    }

    /// Frames offered: sent plus refused.
    pub fn offered(&self) -> u64 {
        self.sent + self.refused
    }

    /// Fraction of offered frames that did not come back.
    pub fn loss_ratio(&self) -> f64 {
        let o = self.offered();
        if o == 0 {
            return 0.0;
        }
        o.saturating_sub(self.received) as f64 / o as f64
    }
}

/// A connected generator.
pub struct Generator {
    tx: VirtioUser,
    rx: VirtioUser,
    frame_len: usize,
    flows: u32,
    seq: u32,
    tsc_hz: f64,
    l3: bool,
    tunnel: Option<Tunnel>,
    l4: Option<L4Flows>,
}

/// Measures the time-stamp counter's rate against the monotonic clock (50 ms).
pub fn tsc_hz() -> f64 {
    let (i0, c0) = (Instant::now(), tsc());
    std::thread::sleep(Duration::from_millis(50));
    let (c1, el) = (tsc(), i0.elapsed());
    (c1.wrapping_sub(c0)) as f64 / el.as_secs_f64()
}

impl Generator {
    /// Connects both ports (retrying for up to 10 s while the DUT starts).
    pub fn connect(cfg: &GenConfig) -> Result<Generator, VirtioUserError> {
        let mk = |path: &PathBuf| {
            let mut c = VirtioUserConfig::new(path);
            c.ring_size = cfg.ring_size;
            c.hugepages = cfg.hugepages;
            c.server = cfg.server;
            c.packed = cfg.packed;
            c.timeout = Duration::from_secs(30);
            VirtioUser::new(&c)
        };
        let tx = mk(&cfg.tx)?;
        let rx = mk(&cfg.rx)?;
        Ok(Generator {
            tx,
            rx,
            frame_len: if cfg.frame_len == IMIX {
                IMIX
            } else {
                cfg.frame_len.clamp(60, 2030)
            },
            flows: cfg.flows.max(1),
            seq: 0,
            tsc_hz: tsc_hz(),
            l3: cfg.l3,
            tunnel: cfg.tunnel,
            l4: cfg.l4,
        })
    }

    /// Switches the direction of a tunnel benchmark on the same connections: the ports
    /// trade places (the uplink becomes the transmitting one, or the receiving one).
    pub fn set_tunnel(&mut self, t: Tunnel) {
        if self.tunnel.is_some_and(|c| c != t) {
            std::mem::swap(&mut self.tx, &mut self.rx);
        }
        self.tunnel = Some(t);
    }

    /// Sets the frame length (without FCS) of the next trials.
    pub fn set_frame_len(&mut self, len: usize) {
        self.frame_len = len.clamp(60, 2030);
    }

    /// Sends a few frames from the receiving side so a learning switch knows `DST` (and,
    /// in L3 mode, a router learns that [`L3_DST_IP`] is at `DST`).
    pub fn teach(&mut self) {
        // Behind the tunnel, DST is learnt from a frame that came through it.
        let o = if self.tunnel == Some(Tunnel::Encap) {
            TUN_OVERHEAD
        } else {
            0
        };
        let mut f = vec![0u8; 60 + o];
        if o > 0 {
            write_outer(&mut f, 60, 49152);
        }
        f[o..o + 6].copy_from_slice(&SRC);
        f[o + 6..o + 12].copy_from_slice(&DST);
        f[o + 12..o + 14].copy_from_slice(&[0x88, 0xb5]);
        if self.l3 {
            f[..6].copy_from_slice(&ROUTER_MAC);
            f[12..14].copy_from_slice(&[0x08, 0x00]);
            write_ipv4(&mut f, 60, L3_DST_IP, [10, 0, 1, 254]);
        }
        for _ in 0..3 {
            self.rx.send(0, &[&f]);
            std::thread::sleep(Duration::from_millis(20));
        }
        // Drain whatever the DUT sent back to us meanwhile.
        self.tx.recv(0, 4096, |_| {});
        self.rx.recv(0, 4096, |_| {});
    }

    /// L4 mode: sends one reply per conversation (`flows` of them) from the receiving
    /// side, as the other end of each would, so that a connection tracker sees every
    /// conversation established both ways. Run after the conversations were opened (a
    /// warm-up trial); what comes back on the transmitting side is drained.
    pub fn prime(&mut self) {
        let Some(l4) = self.l4 else { return };
        let dst_mac = if self.l3 { ROUTER_MAC } else { SRC };
        let flows = self.flows;
        let mut k = 0u32;
        let mut cached: Option<([u8; 4], [u8; 20])> = None;
        while k < flows {
            let n = self.rx.send_fill(0, 32.min((flows - k) as usize), |i, b| {
                let (ip, port) = l4_source(k + i as u32);
                let h = match cached {
                    Some((a, h)) if a == ip => h,
                    _ => {
                        let h = l4_ip(60, l4.reply_from.0, ip);
                        cached = Some((ip, h));
                        h
                    }
                };
                write_l4(b, 60, (dst_mac, DST), &h, (l4.reply_from.1, port));
                60
            });
            k += n as u32;
            self.tx.recv(0, 4096, |_| {});
            if n == 0 {
                std::thread::sleep(Duration::from_micros(50));
            }
        }
        std::thread::sleep(Duration::from_millis(50));
        self.tx.recv(0, 4096, |_| {});
        self.rx.recv(0, 4096, |_| {});
    }

    /// Offers frames as fast as the DUT accepts them for `d`, counting what returns.
    pub fn run(&mut self, d: Duration) -> Trial {
        self.run_at(d, None, None)
    }

    /// Offers frames for `d`, at `rate` frames per second when given (else as fast as
    /// the DUT accepts), counting what returns; with `latency`, records each returned
    /// frame's one-way latency in nanoseconds (from a TSC stamp in its payload).
    pub fn run_at(
        &mut self,
        d: Duration,
        rate: Option<f64>,
        mut latency: Option<&mut Histogram<u64>>,
    ) -> Trial {
        let fixed = self.frame_len;
        let flows = self.flows;
        let hz = self.tsc_hz;
        let l3 = self.l3;
        // Where the sequence number and stamp sit: after the Ethernet or IPv4 header
        // (the UDP header in L4 mode), of the inner frame when it comes back
        // encapsulated.
        let l4 = self.l4;
        let at = if l4.is_some() {
            42
        } else if l3 {
            34
        } else {
            14
        };
        let l4_macs = (if l3 { ROUTER_MAC } else { DST }, SRC);
        // The IPv4 header of the last source address (it changes every 50 000
        // conversations): summed once, not per frame.
        let mut l4_cached: Option<([u8; 4], usize, [u8; 20])> = None;
        // Outer headers on what is sent, and on what comes back.
        let tx_o = if self.tunnel == Some(Tunnel::Decap) {
            TUN_OVERHEAD
        } else {
            0
        };
        let rx_at = at
            + if self.tunnel == Some(Tunnel::Encap) {
                TUN_OVERHEAD
            } else {
                0
            };
        // The outer headers of a fixed frame length, built once: per frame only the
        // source port changes (no checksum covers it: UDP's is 0).
        let mut outer = [0u8; TUN_OVERHEAD];
        write_outer(&mut outer, fixed.max(60), 49152);
        let mut t = Trial::default();
        let mut last_seq: Option<u32> = None;
        let start = Instant::now();
        let t0 = tsc();
        let mut iter = 0u32;
        let mut last_due = 0u64;
        let mut last_rx: Option<u64> = None;
        let mut record = |f: &[u8], t: &mut Trial, now: u64| {
            if let Some(l) = last_rx {
                let gap = (now.saturating_sub(l) as f64 * 1e9 / hz) as u64;
                t.max_gap_ns = t.max_gap_ns.max(gap);
                t.gaps_over_50us += u64::from(gap > 50_000);
            }
            last_rx = Some(now);
            let at = rx_at;
            if f.len() >= at + 12 {
                let s = u32::from_be_bytes([f[at], f[at + 1], f[at + 2], f[at + 3]]);
                if let Some(l) = last_seq {
                    if s.wrapping_sub(l) > u32::MAX / 2 {
                        t.reordered += 1;
                    }
                }
                last_seq = Some(s);
                if let Some(h) = latency.as_deref_mut() {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(&f[at + 4..at + 12]);
                    let cycles = now.saturating_sub(u64::from_le_bytes(b));
                    let _ = h.record((cycles as f64 * 1e9 / hz) as u64);
                }
            }
            t.received += 1;
        };
        let mut prev_turn = t0;
        loop {
            let now = tsc();
            t.gen_stall_ns = t
                .gen_stall_ns
                .max((now.saturating_sub(prev_turn) as f64 * 1e9 / hz) as u64);
            prev_turn = now;
            let mut want = 32usize;
            if let Some(r) = rate {
                let due = ((now.saturating_sub(t0)) as f64 / hz * r) as u64;
                last_due = due;
                want = due.saturating_sub(t.offered()).min(32) as usize;
            }
            if want > 0 {
                let seq0 = self.seq;
                let n = self.tx.send_fill(0, want, |i, b| {
                    let seq = seq0.wrapping_add(i as u32);
                    let len = if fixed == IMIX {
                        IMIX_CYCLE[seq as usize % IMIX_CYCLE.len()]
                    } else {
                        fixed
                    };
                    if tx_o > 0 {
                        // One outer source port per inner flow.
                        let sport = 49152 | (seq % flows) as u16 & 0x3fff;
                        if fixed == IMIX {
                            write_outer(b, len, sport);
                        } else {
                            b[..TUN_OVERHEAD].copy_from_slice(&outer);
                            b[34..36].copy_from_slice(&sport.to_be_bytes());
                        }
                    }
                    let b = &mut b[tx_o..];
                    if let Some(m) = l4 {
                        let k = if m.new_each { seq } else { seq % flows };
                        let (ip, port) = l4_source(k);
                        let h = match l4_cached {
                            Some((a, l, h)) if a == ip && l == len => h,
                            _ => {
                                let h = l4_ip(len, ip, m.dst.0);
                                l4_cached = Some((ip, len, h));
                                h
                            }
                        };
                        write_l4(b, len, l4_macs, &h, (port, m.dst.1));
                        b[at..at + 4].copy_from_slice(&seq.to_be_bytes());
                        b[at + 4..at + 12].copy_from_slice(&tsc().to_le_bytes());
                        return len;
                    }
                    b[..6].copy_from_slice(&DST);
                    // Flows differ in the low 3 bytes of the source MAC, in a locally
                    // administered range (02:01:...) that never meets DST.
                    if flows > 1 {
                        let f = (seq % flows).to_be_bytes();
                        b[6..12].copy_from_slice(&[0x02, 0x01, 0x00, f[1], f[2], f[3]]);
                    } else {
                        b[6..12].copy_from_slice(&SRC);
                    }
                    if l3 {
                        b[..6].copy_from_slice(&ROUTER_MAC);
                        b[12..14].copy_from_slice(&[0x08, 0x00]);
                        write_ipv4(b, len, L3_SRC_IP, L3_DST_IP);
                    } else {
                        b[12..14].copy_from_slice(&[0x88, 0xb5]);
                    }
                    b[at..at + 4].copy_from_slice(&seq.to_be_bytes());
                    b[at + 4..at + 12].copy_from_slice(&tsc().to_le_bytes());
                    len + tx_o
                });
                self.seq = self.seq.wrapping_add(n as u32);
                t.sent += n as u64;
                if rate.is_some() {
                    t.refused += (want - n) as u64;
                }
            }
            let now = tsc();
            self.rx.recv(0, 64, |f| record(f, &mut t, now));
            iter = iter.wrapping_add(1);
            if iter.is_multiple_of(256) && start.elapsed() >= d {
                break;
            }
        }
        // Frames that fell due but were never offered (the generator itself fell
        // behind) count as refused: the rate was not delivered.
        t.refused += last_due.saturating_sub(t.offered());
        // Collect what is still in flight for a moment, so it is not counted lost.
        let tail = Instant::now();
        while tail.elapsed() < Duration::from_millis(50) {
            let now = tsc();
            self.rx.recv(0, 64, |f| record(f, &mut t, now));
        }
        t.seconds = start.elapsed().as_secs_f64() - tail.elapsed().as_secs_f64();
        t
    }
}
