//! DPDK's own virtio-user as the traffic generator: `dpdk-testpmd` on two
//! `net_virtio_user` ports, its forwarding lcore pinned to the generator core.
//!
//! Telco VNFs are DPDK applications, so the frontend that feeds a vnfhost port is usually
//! DPDK's virtio PMD; a DUT judged only by our own generator could be judged by a
//! frontend that no user runs. This generator was written outside the project: its
//! descriptor layout (virtio-net header pushed into the mbuf headroom, one descriptor per
//! frame), refill pattern, notification flags and negotiated features (`in_order`,
//! `mrg_rxbuf`, `packed_vq`) are DPDK's.
//!
//! The method is DPDK's own vhost/virtio loopback test: testpmd forwards in `io` mode
//! and `start tx_first N` puts N bursts of UDP frames on each port first (`txonly`'s
//! frames: from the port's own MAC to the other port's, set with `--eth-peer`). From
//! then on every frame the DUT delivers to one port is sent back out of the other, so a
//! fixed population of frames circulates and the rate is set by the slower of the DUT
//! and the generator. `io` touches no header, which keeps the generator cheap, and each
//! frame keeps its MACs on every pass, so a learning bridge learns each MAC on one port
//! and never floods after the first frames. (testpmd's `flowgen` is no use here: it
//! sends the same fixed source and destination MACs on both ports, which makes a
//! learning bridge flood and move that MAC on every burst.)
//!
//! The receive rate is the sum over both ports, as testpmd measures it
//! (`show port stats`, timed by its own TSC). testpmd is driven over its interactive
//! command line on a pipe: `start tx_first N`, a warm-up, `show port stats all` (the
//! base), the measured interval, `show port stats all` again.

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use crate::gen::Trial;

/// MAC of generator port `i` (locally administered).
pub fn port_mac(i: usize) -> String {
    format!("02:00:00:00:d0:{:02x}", i + 1)
}

/// How to start the DPDK generator.
#[derive(Clone, Debug)]
pub struct DpdkGenConfig {
    /// Sockets of DUT port 0 and port 1.
    pub sockets: [PathBuf; 2],
    /// Frame length without FCS (60..=1514).
    pub frame_len: usize,
    /// More than one flow: `--txonly-multi-flow` (the source IP address varies).
    pub flows: u32,
    /// Bursts of 32 frames put on each port at the start (the circulating
    /// population); at most half the ring size in frames.
    pub bursts: u16,
    /// The generator listens (`server=1`): the DUT connects to sockets we create.
    pub server: bool,
    /// The CPU of both of testpmd's lcores (main and forwarding).
    pub core: usize,
    /// Descriptors per ring.
    pub ring_size: u16,
    /// Packed virtqueues (`packed_vq=1`) instead of split ones.
    pub packed: bool,
    /// A private hugetlbfs mount; `None` runs with `--no-huge`.
    pub huge_dir: Option<PathBuf>,
    /// A fresh directory for the log.
    pub dir: PathBuf,
}

/// A running testpmd generator; killed on drop.
pub struct DpdkGen {
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    log: PathBuf,
    prefix: String,
    ring_size: u16,
    bursts: u16,
}

/// Counters of one port in one `show port stats` block.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PortCounts {
    /// `RX-packets`.
    pub rx: u64,
    /// `TX-packets`.
    pub tx: u64,
    /// `Rx-pps` since the previous show, as testpmd timed it.
    pub rx_pps: f64,
}

/// The port blocks of every `show port stats` in `log`, in order: one vector of
/// (port, counts) per port block.
pub fn parse_port_stats(log: &str) -> Vec<(usize, PortCounts)> {
    let mut out = Vec::new();
    let mut cur: Option<(usize, PortCounts)> = None;
    let field = |line: &str, key: &str| -> Option<String> {
        let i = line.find(key)?;
        line[i + key.len()..]
            .split_whitespace()
            .next()
            .map(str::to_string)
    };
    for line in log.lines() {
        if let Some(i) = line.find("NIC statistics for port") {
            if let Some(c) = cur.take() {
                out.push(c);
            }
            let port = line[i + 23..]
                .split_whitespace()
                .next()
                .and_then(|p| p.parse().ok());
            cur = port.map(|p| (p, PortCounts::default()));
            continue;
        }
        let Some((_, c)) = cur.as_mut() else {
            continue;
        };
        if let Some(v) = field(line, "RX-packets:").and_then(|v| v.parse().ok()) {
            c.rx = v;
        }
        if let Some(v) = field(line, "TX-packets:").and_then(|v| v.parse().ok()) {
            c.tx = v;
        }
        if let Some(v) = field(line, "Rx-pps:").and_then(|v| v.parse().ok()) {
            c.rx_pps = v;
        }
        let t = line.trim();
        if t.len() > 10 && t.bytes().all(|b| b == b'#') {
            // The closing rule of the block.
            if let Some(c) = cur.take() {
                out.push(c);
            }
        }
    }
    if let Some(c) = cur.take() {
        out.push(c);
    }
    out
}

impl DpdkGen {
    /// Starts testpmd and waits until both ports are up (at most 30 s).
    pub fn start(cfg: &DpdkGenConfig) -> Result<DpdkGen, String> {
        std::fs::create_dir_all(&cfg.dir).map_err(|e| format!("{}: {e}", cfg.dir.display()))?;
        let log = cfg.dir.join("dpdk-generator.log");
        let out = File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let prefix = format!("vnfgen{}", std::process::id());
        // testpmd prints statistics with stdio, fully buffered on a file: line-buffer it
        // so that each `show` can be read as soon as it is printed.
        let mut c = Command::new("stdbuf");
        c.args(["-oL", "dpdk-testpmd"]);
        // Two lcores on one CPU: the main one sleeps on the command line.
        c.arg("--lcores")
            .arg(format!("0@{core},1@{core}", core = cfg.core))
            .args(["--main-lcore", "0", "--no-pci", "--file-prefix", &prefix]);
        crate::dut::dpdk_memory_args(&mut c, cfg.huge_dir.as_deref());
        for (i, sock) in cfg.sockets.iter().enumerate() {
            let mut vdev = format!(
                "net_virtio_user{i},path={},queues=1,queue_size={},mac={}",
                sock.display(),
                cfg.ring_size,
                port_mac(i)
            );
            if cfg.server {
                vdev.push_str(",server=1");
            }
            if cfg.packed {
                vdev.push_str(",packed_vq=1");
            }
            c.arg("--vdev").arg(vdev);
        }
        c.args(["--", "-i", "--nb-cores=1", "--forward-mode=io"]);
        c.arg(format!("--txpkts={}", cfg.frame_len));
        if cfg.flows > 1 {
            c.arg("--txonly-multi-flow");
        }
        c.arg(format!("--rxd={}", cfg.ring_size));
        c.arg(format!("--txd={}", cfg.ring_size));
        c.args(["--total-num-mbufs=16384", "--burst=32"]);
        c.arg(format!("--eth-peer=0,{}", port_mac(1)));
        c.arg(format!("--eth-peer=1,{}", port_mac(0)));
        c.stdin(Stdio::piped()).stdout(out).stderr(err);
        let mut child = c
            .spawn()
            .map_err(|e| format!("start dpdk-testpmd (generator): {e}"))?;
        let stdin = child.stdin.take();
        let mut g = DpdkGen {
            child: Some(child),
            stdin,
            log,
            prefix,
            ring_size: cfg.ring_size,
            bursts: cfg.bursts,
        };
        // Ready when testpmd prints its prompt; the virtio-user ports have then
        // negotiated with the DUT (server mode waits for the DUT to connect first).
        let t = Instant::now();
        loop {
            let s = std::fs::read_to_string(&g.log).unwrap_or_default();
            if s.contains("testpmd>") {
                break;
            }
            if let Some(Ok(Some(st))) = g.child.as_mut().map(|c| c.try_wait()) {
                return Err(format!(
                    "dpdk generator exited ({st}) at start:\n{}",
                    g.log_tail()
                ));
            }
            if t.elapsed() > Duration::from_secs(30) {
                return Err(format!(
                    "dpdk generator not ready in 30 s:\n{}",
                    g.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(g)
    }

    fn send(&mut self, cmd: &str) -> Result<(), String> {
        let s = self.stdin.as_mut().ok_or("dpdk generator: stdin closed")?;
        s.write_all(cmd.as_bytes())
            .and_then(|()| s.write_all(b"\n"))
            .and_then(|()| s.flush())
            .map_err(|e| format!("dpdk generator: {cmd}: {e}\n{}", self.log_tail()))
    }

    /// Waits until the log holds `n` port-statistics blocks (at most 5 s).
    fn wait_blocks(&self, n: usize) -> Result<Vec<(usize, PortCounts)>, String> {
        let t = Instant::now();
        loop {
            let s = std::fs::read_to_string(&self.log).unwrap_or_default();
            let b = parse_port_stats(&s);
            if b.len() >= n {
                return Ok(b);
            }
            if t.elapsed() > Duration::from_secs(5) {
                return Err(format!(
                    "dpdk generator: no port statistics:\n{}",
                    self.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Starts forwarding, warms up, and measures one interval: frames sent and received
    /// summed over both ports, and the receive rate testpmd timed.
    pub fn run(&mut self, warmup: Duration, duration: Duration) -> Result<Trial, String> {
        let max = (self.ring_size / 2 / 32).max(1);
        self.send(&format!("start tx_first {}", self.bursts.clamp(1, max)))?;
        std::thread::sleep(warmup);
        let before = std::fs::read_to_string(&self.log)
            .map(|s| parse_port_stats(&s).len())
            .unwrap_or(0);
        self.send("show port stats all")?;
        let base = self.wait_blocks(before + 2)?;
        let t0 = Instant::now();
        std::thread::sleep(duration);
        self.send("show port stats all")?;
        let end = self.wait_blocks(before + 4)?;
        let wall = t0.elapsed().as_secs_f64();
        self.send("stop")?;
        let (b, e) = (&base[before..before + 2], &end[before + 2..before + 4]);
        let mut t = Trial::default();
        let mut pps = 0.0;
        for ((_, b), (_, e)) in b.iter().zip(e) {
            t.sent += e.tx.saturating_sub(b.tx);
            t.received += e.rx.saturating_sub(b.rx);
            pps += e.rx_pps;
        }
        // testpmd's own timing of the interval, when it reported a rate.
        t.seconds = if pps > 0.0 {
            t.received as f64 / pps
        } else {
            wall
        };
        Ok(t)
    }

    /// The last lines of testpmd's log.
    pub fn log_tail(&self) -> String {
        let s = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for DpdkGen {
    fn drop(&mut self) {
        let _ = self.send("quit");
        self.stdin = None;
        if let Some(mut c) = self.child.take() {
            let t = Instant::now();
            while matches!(c.try_wait(), Ok(None)) && t.elapsed() < Duration::from_secs(5) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(format!("/var/run/dpdk/{}", self.prefix));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHOW: &str = "testpmd> show port stats all

  ######################## NIC statistics for port 0  ########################
  RX-packets: 1000       RX-missed: 0          RX-bytes:  60000
  RX-errors: 0
  RX-nombuf:  0
  TX-packets: 2000       TX-errors: 0          TX-bytes:  120000

  Throughput (since last show)
  Rx-pps:          500          Rx-bps:       240000
  Tx-pps:         1000          Tx-bps:       480000
  ############################################################################

  ######################## NIC statistics for port 1  ########################
  RX-packets: 3000       RX-missed: 0          RX-bytes:  180000
  RX-errors: 0
  RX-nombuf:  0
  TX-packets: 4000       TX-errors: 0          TX-bytes:  240000

  Throughput (since last show)
  Rx-pps:         1500          Rx-bps:       720000
  Tx-pps:         2000          Tx-bps:       960000
  ############################################################################
testpmd> ";

    #[test]
    fn port_stats_blocks_are_parsed_in_order() {
        let b = parse_port_stats(SHOW);
        assert_eq!(b.len(), 2);
        assert_eq!(
            b[0],
            (
                0,
                PortCounts {
                    rx: 1000,
                    tx: 2000,
                    rx_pps: 500.0
                }
            )
        );
        assert_eq!(b[1].0, 1);
        assert_eq!(b[1].1.rx, 3000);
        assert_eq!(b[1].1.rx_pps, 1500.0);
        let twice = format!("{SHOW}{SHOW}");
        assert_eq!(parse_port_stats(&twice).len(), 4);
        assert!(parse_port_stats("testpmd> start\n").is_empty());
    }
}
