//! p2p maximum receive rate: generator → DUT port 0 → DUT → port 1 → generator, one DUT
//! core, frames offered as fast as the DUT takes them. DUTs are interleaved round by
//! round so that drift of the machine hits every DUT alike; each trial restarts the
//! DUT, warms up, then measures.

use std::path::PathBuf;
use std::time::Duration;

use crate::dut::{missing, DutConfig, DutKind, RunningDut};
use crate::gen::{GenConfig, Generator, Trial};

/// Benchmark set-up.
#[derive(Clone, Debug)]
pub struct P2pConfig {
    /// DUTs, in the order they run within a round.
    pub duts: Vec<DutKind>,
    /// Frame sizes on the wire (with FCS), e.g. 64 and 1518.
    pub frame_sizes: Vec<usize>,
    /// Rounds (trials per DUT and size).
    pub trials: u32,
    /// Measured time per trial.
    pub duration: Duration,
    /// Warm-up before each trial.
    pub warmup: Duration,
    /// The DUT's forwarding core.
    pub dut_core: usize,
    /// The generator's core (also testpmd's idle main thread).
    pub gen_core: usize,
    /// Work directory.
    pub dir: PathBuf,
    /// The `vnfhost` binary.
    pub vnfhost: PathBuf,
    /// Hugepages for the DUTs and the generator.
    pub hugepages: bool,
    /// Descriptors per ring on the generator's side.
    pub ring_size: u16,
}

/// One measured trial.
#[derive(Clone, Debug)]
pub struct Sample {
    /// DUT.
    pub dut: DutKind,
    /// Frame size on the wire.
    pub frame: usize,
    /// Round.
    pub round: u32,
    /// What the generator saw.
    pub trial: Trial,
    /// Cycles per packet the DUT reported for its forwarding core.
    pub cycles: Option<f64>,
}

/// All samples, plus DUTs that could not run.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Measured trials.
    pub samples: Vec<Sample>,
    /// DUTs that could not run, with the reason.
    pub missing: Vec<(DutKind, String)>,
}

/// min, median, max of `v` (empty → zeros).
pub fn stats(v: &[f64]) -> (f64, f64, f64) {
    if v.is_empty() {
        return (0.0, 0.0, 0.0);
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    let med = if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    };
    (s[0], med, s[n - 1])
}

impl Report {
    fn rates(&self, dut: DutKind, frame: usize) -> Vec<f64> {
        self.samples
            .iter()
            .filter(|s| s.dut == dut && s.frame == frame)
            .map(|s| s.trial.rx_pps() / 1e6)
            .collect()
    }

    /// Median receive rate in Mpps.
    pub fn median(&self, dut: DutKind, frame: usize) -> f64 {
        stats(&self.rates(dut, frame)).1
    }

    /// The results as a markdown table (Mpps min/median/max, loss, ratio to vnfhost).
    pub fn markdown(&self, cfg: &P2pConfig) -> String {
        let mut o = String::new();
        o.push_str("| frame | DUT | Mpps min | Mpps median | Mpps max | cycles/pkt median | lost % | reordered | vnfhost ÷ DUT (medians) |\n");
        o.push_str("|---:|---|---:|---:|---:|---:|---:|---:|---:|\n");
        for &f in &cfg.frame_sizes {
            for &d in &cfg.duts {
                let r = self.rates(d, f);
                if r.is_empty() {
                    continue;
                }
                let (mn, med, mx) = stats(&r);
                let (sent, recv, reord) = self
                    .samples
                    .iter()
                    .filter(|s| s.dut == d && s.frame == f)
                    .fold((0u64, 0u64, 0u64), |a, s| {
                        (
                            a.0 + s.trial.sent,
                            a.1 + s.trial.received,
                            a.2 + s.trial.reordered,
                        )
                    });
                let lost = if sent > 0 {
                    100.0 * (sent.saturating_sub(recv)) as f64 / sent as f64
                } else {
                    0.0
                };
                let cyc: Vec<f64> = self
                    .samples
                    .iter()
                    .filter(|s| s.dut == d && s.frame == f)
                    .filter_map(|s| s.cycles)
                    .collect();
                let cyc = if cyc.is_empty() {
                    "?".to_string()
                } else {
                    format!("{:.0}", stats(&cyc).1)
                };
                let v = self.median(DutKind::Vnfhost, f);
                let ratio = if d != DutKind::Vnfhost && med > 0.0 && v > 0.0 {
                    format!("{:.2}", v / med)
                } else {
                    "—".into()
                };
                o.push_str(&format!(
                    "| {f} | {} | {mn:.2} | {med:.2} | {mx:.2} | {cyc} | {lost:.2} | {reord} | {ratio} |\n",
                    d.name()
                ));
            }
        }
        for (d, why) in &self.missing {
            o.push_str(&format!("\nDUT {} missing: {why}\n", d.name()));
        }
        o
    }

    /// The samples as JSON.
    pub fn json(&self) -> String {
        let rows: Vec<String> = self
            .samples
            .iter()
            .map(|s| {
                format!(
                    "{{\"dut\":\"{}\",\"frame\":{},\"round\":{},\"sent\":{},\"received\":{},\"reordered\":{},\"seconds\":{:.4},\"rx_pps\":{:.0},\"cycles_per_packet\":{}}}",
                    s.dut.name(),
                    s.frame,
                    s.round,
                    s.trial.sent,
                    s.trial.received,
                    s.trial.reordered,
                    s.trial.seconds,
                    s.trial.rx_pps(),
                    s.cycles.map(|c| format!("{c:.1}")).unwrap_or_else(|| "null".into())
                )
            })
            .collect();
        let missing: Vec<String> = self
            .missing
            .iter()
            .map(|(d, w)| format!("{{\"dut\":\"{}\",\"why\":{:?}}}", d.name(), w))
            .collect();
        format!(
            "{{\"samples\":[{}],\"missing\":[{}]}}\n",
            rows.join(","),
            missing.join(",")
        )
    }
}

/// Runs the benchmark; `progress` gets a line per trial.
pub fn run(cfg: &P2pConfig, progress: &mut dyn FnMut(&str)) -> Result<Report, String> {
    if !core_affinity::set_for_current(core_affinity::CoreId { id: cfg.gen_core }) {
        progress(&format!(
            "warning: could not pin the generator to core {}",
            cfg.gen_core
        ));
    }
    let mut report = Report::default();
    let duts: Vec<DutKind> = cfg
        .duts
        .iter()
        .copied()
        .filter(|d| match missing(*d, &cfg.vnfhost) {
            Some(why) => {
                report.missing.push((*d, why));
                false
            }
            None => true,
        })
        .collect();
    let total = cfg.frame_sizes.len() * cfg.trials as usize * duts.len();
    let mut k = 0;
    for &frame in &cfg.frame_sizes {
        for round in 0..cfg.trials {
            for &dut in &duts {
                k += 1;
                let dir = cfg.dir.join(format!("{}-{frame}-{round}", dut.name()));
                let dcfg = DutConfig {
                    kind: dut,
                    core: cfg.dut_core,
                    main_core: cfg.gen_core,
                    dir,
                    vnfhost: cfg.vnfhost.clone(),
                    hugepages: cfg.hugepages,
                };
                let d = RunningDut::start(&dcfg)?;
                let gcfg = GenConfig {
                    tx: d.port0.clone(),
                    rx: d.port1.clone(),
                    frame_len: frame.saturating_sub(4),
                    ring_size: cfg.ring_size,
                    hugepages: cfg.hugepages,
                    server: dut.generator_listens(),
                };
                let mut g = Generator::connect(&gcfg)
                    .map_err(|e| format!("{}: {e}\n{}", dut.name(), d.log_tail()))?;
                std::thread::sleep(Duration::from_millis(500));
                g.teach();
                g.run(cfg.warmup);
                let trial = g.run(cfg.duration);
                drop(g);
                let cycles = d.stop_with_cycles();
                progress(&format!(
                    "[{k:>3}/{total}] {:<12} {frame:>5} B round {round}: {:.3} Mpps, {} cycles/packet (sent {}, received {}, reordered {})",
                    dut.name(),
                    trial.rx_pps() / 1e6,
                    cycles.map(|c| format!("{c:.0}")).unwrap_or_else(|| "?".into()),
                    trial.sent,
                    trial.received,
                    trial.reordered
                ));
                report.samples.push(Sample {
                    dut,
                    frame,
                    round,
                    trial,
                    cycles,
                });
            }
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_of_odd_and_even_samples() {
        assert_eq!(stats(&[3.0, 1.0, 2.0]), (1.0, 2.0, 3.0));
        assert_eq!(stats(&[4.0, 1.0, 2.0, 3.0]), (1.0, 2.5, 4.0));
        assert_eq!(stats(&[]), (0.0, 0.0, 0.0));
    }
}
