//! p2p maximum receive rate: generator → DUT port 0 → DUT → port 1 → generator, one DUT
//! core, frames offered as fast as the DUT takes them. DUTs are interleaved round by
//! round so that drift of the machine hits every DUT alike; each trial restarts the
//! DUT, warms up, then measures.

use std::path::PathBuf;
use std::time::Duration;

use crate::dut::{missing, DutConfig, DutKind, RunningDut};
use latency_tests::NDR_FRACTIONS;

use crate::dpdkgen::{DpdkGen, DpdkGenConfig};
use crate::gen::{GenConfig, Generator, Trial};
use crate::ndr::{search, NdrConfig};

/// Which traffic generator drives the DUTs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GenKind {
    /// vnfhost's own generator on pmd's virtio-user port: sequence numbers, latency,
    /// NDR search, IMIX.
    Vnfhost,
    /// DPDK testpmd on two `net_virtio_user` ports, `io` loopback primed with
    /// `start tx_first`: the frontend telco VNFs run, written outside this project.
    Dpdk,
}

impl GenKind {
    /// Name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            GenKind::Vnfhost => "vnfhost",
            GenKind::Dpdk => "dpdk",
        }
    }

    /// Parses a name.
    pub fn parse(s: &str) -> Option<GenKind> {
        [GenKind::Vnfhost, GenKind::Dpdk]
            .into_iter()
            .find(|g| g.name() == s)
    }

    /// Why this generator cannot drive `dut` at `frame`, if it cannot.
    pub fn unsupported(self, dut: DutKind, frame: usize) -> Option<&'static str> {
        match self {
            GenKind::Vnfhost => None,
            GenKind::Dpdk if dut.is_l3() => Some(
                "testpmd's tx_first frames go to the peer port's MAC from fixed 198.18.0.0/15 addresses, not to a router",
            ),
            GenKind::Dpdk if frame == crate::gen::IMIX => {
                Some("testpmd's tx_first frames are of one size")
            }
            GenKind::Dpdk => None,
        }
    }
}

/// Benchmark set-up.
#[derive(Clone, Debug)]
pub struct P2pConfig {
    /// Generators; every DUT is measured with each, in the same rounds.
    pub generators: Vec<GenKind>,
    /// Both generators use packed virtqueues (DPDK: `packed_vq=1`).
    pub packed: bool,
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
    /// The DUT's forwarding cores (every DUT gets the same set).
    pub dut_cores: Vec<usize>,
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
    /// Also search NDR/PDR and measure latency at 10/50/90 % of NDR.
    pub ndr: Option<NdrConfig>,
    /// Flows (distinct source MACs) the generator cycles through.
    pub flows: u32,
    /// Offer this many frames per second instead of as fast as the DUT accepts.
    pub rate: Option<f64>,
}

pub use latency_tests::Latency;

/// NDR/PDR and latency of one sample.
#[derive(Clone, Debug, Default)]
pub struct Throughput {
    /// Highest rate without loss, frames/s.
    pub ndr: f64,
    /// Highest rate with at most 0.5 % loss, frames/s.
    pub pdr: f64,
    /// Latency at 10, 50 and 90 % of NDR.
    pub latency: Vec<Latency>,
}

/// One measured trial.
#[derive(Clone, Debug)]
pub struct Sample {
    /// Generator.
    pub gen: GenKind,
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
    /// NDR, PDR and latency, when asked for.
    pub throughput: Option<Throughput>,
}

/// All samples, plus DUTs that could not run.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// TSC frequency of this machine, Hz.
    pub tsc_hz: f64,
    /// How many forwarding cores each DUT had.
    pub dut_cores: usize,
    /// Measured trials.
    pub samples: Vec<Sample>,
    /// DUTs that could not run, with the reason.
    pub missing: Vec<(DutKind, String)>,
    /// Generator, DUT and frame combinations left out, with the reason.
    pub skipped: Vec<String>,
}

fn throughput_json(t: &Throughput) -> String {
    let lat: Vec<String> = t
        .latency
        .iter()
        .map(|l| {
            format!(
                "{{\"fraction\":{},\"samples\":{},\"p50_us\":{:.2},\"p99_us\":{:.2},\"p999_us\":{:.2},\"max_us\":{:.2}}}",
                l.fraction, l.samples, l.p50, l.p99, l.p999, l.max
            )
        })
        .collect();
    format!(
        "{{\"ndr_pps\":{:.0},\"pdr_pps\":{:.0},\"latency\":[{}]}}",
        t.ndr,
        t.pdr,
        lat.join(",")
    )
}

/// A 20-character progress bar for `k` of `n` steps.
pub fn bar(k: usize, n: usize) -> String {
    let full = (k * 20).checked_div(n).unwrap_or(20).min(20);
    format!("{}{}", "#".repeat(full), ".".repeat(20 - full))
}

/// How a frame size is printed: bytes on the wire, or IMIX.
pub fn label(frame: usize) -> String {
    if frame == crate::gen::IMIX {
        "IMIX".into()
    } else {
        frame.to_string()
    }
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

/// `v` (frames per second) as `min / **median** / max` in Mpps, or "not run".
pub fn mpps_cell(v: &[f64]) -> String {
    if v.is_empty() {
        return "not run".to_string();
    }
    let (a, m, b) = stats(v);
    format!("{:.3} / **{:.3}** / {:.3}", a / 1e6, m / 1e6, b / 1e6)
}

/// A trial counts as DUT-bound when the DUT's forwarding core was busy at least this
/// share of the time: then the DUT, not the generator or the machine, set the rate.
pub const DUT_BOUND_BUSY: f64 = 0.9;

impl Sample {
    /// The share of its forwarding cores the DUT spent forwarding: its own cycles per
    /// frame (counted over busy polls) times the rate, over the cycles `cores` cores
    /// have at `tsc_hz`.
    pub fn dut_busy(&self, tsc_hz: f64, cores: usize) -> Option<f64> {
        let c = self.cycles?;
        let hz = tsc_hz * cores.max(1) as f64;
        (hz > 0.0).then(|| c * self.trial.rx_pps() / hz)
    }
}

impl Report {
    fn of(&self, gen: GenKind, dut: DutKind, frame: usize) -> impl Iterator<Item = &Sample> {
        self.samples
            .iter()
            .filter(move |s| s.gen == gen && s.dut == dut && s.frame == frame)
    }

    fn rates(&self, gen: GenKind, dut: DutKind, frame: usize) -> Vec<f64> {
        self.of(gen, dut, frame)
            .map(|s| s.trial.rx_pps() / 1e6)
            .collect()
    }

    /// Median receive rate in Mpps.
    pub fn median(&self, gen: GenKind, dut: DutKind, frame: usize) -> f64 {
        stats(&self.rates(gen, dut, frame)).1
    }

    /// The results as a markdown table per generator (Mpps min/median/max, cycles per
    /// frame over all trials and over DUT-bound ones, how many trials were DUT-bound,
    /// loss, ratio of medians to vnfhost).
    pub fn markdown(&self, cfg: &P2pConfig) -> String {
        let mut o = String::new();
        o.push_str(&format!(
            "DUT-bound: the DUT's {} core(s) were busy ≥ {:.0} % of the trial (its cycles/frame × rate ÷ {:.0} MHz TSC per core).\n\n",
            self.dut_cores,
            DUT_BOUND_BUSY * 100.0,
            self.tsc_hz / 1e6
        ));
        o.push_str("| generator | frame | DUT | Mpps min | Mpps median | Mpps max | cycles/frame median | cycles/frame, DUT-bound trials | trials DUT-bound / other | lost % | reordered | vnfhost ÷ DUT (medians) |\n");
        o.push_str("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
        for &g in &cfg.generators {
            for &f in &cfg.frame_sizes {
                for &d in &cfg.duts {
                    let r = self.rates(g, d, f);
                    if r.is_empty() {
                        continue;
                    }
                    let (mn, med, mx) = stats(&r);
                    let (sent, recv, reord) = self.of(g, d, f).fold((0u64, 0u64, 0u64), |a, s| {
                        (
                            a.0 + s.trial.offered(),
                            a.1 + s.trial.received,
                            a.2 + s.trial.reordered,
                        )
                    });
                    let lost = if sent > 0 {
                        100.0 * (sent.saturating_sub(recv)) as f64 / sent as f64
                    } else {
                        0.0
                    };
                    let med_of = |v: Vec<f64>| {
                        if v.is_empty() {
                            "?".to_string()
                        } else {
                            format!("{:.0}", stats(&v).1)
                        }
                    };
                    let cyc = med_of(self.of(g, d, f).filter_map(|s| s.cycles).collect());
                    let bound = |s: &&Sample| {
                        s.dut_busy(self.tsc_hz, self.dut_cores)
                            .is_some_and(|b| b >= DUT_BOUND_BUSY)
                    };
                    let cyc_bound = med_of(
                        self.of(g, d, f)
                            .filter(bound)
                            .filter_map(|s| s.cycles)
                            .collect(),
                    );
                    let nb = self.of(g, d, f).filter(bound).count();
                    let v = self.median(g, d.reference(), f);
                    let ratio = if d != d.reference() && med > 0.0 && v > 0.0 {
                        format!("{:.2}", v / med)
                    } else {
                        "—".into()
                    };
                    let reord = if g == GenKind::Dpdk {
                        "—".to_string()
                    } else {
                        reord.to_string()
                    };
                    o.push_str(&format!(
                        "| {} | {} | {} | {mn:.2} | {med:.2} | {mx:.2} | {cyc} | {cyc_bound} | {nb} / {} | {lost:.2} | {reord} | {ratio} |\n",
                        g.name(),
                        label(f),
                        d.name(),
                        r.len() - nb
                    ));
                }
            }
        }
        if self.samples.iter().any(|s| s.throughput.is_some()) {
            o.push_str("\n| frame | DUT | NDR Mpps | PDR Mpps | NDR ÷ max rate | p50 µs @10 % NDR | p99 µs @10 % | p50 µs @50 % | p50 µs @90 % | max µs @90 % |\n");
            o.push_str("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
            for &f in &cfg.frame_sizes {
                for &d in &cfg.duts {
                    let th: Vec<(&Throughput, f64)> = self
                        .samples
                        .iter()
                        .filter(|s| s.dut == d && s.frame == f)
                        .filter_map(|s| s.throughput.as_ref().map(|t| (t, s.trial.rx_pps())))
                        .collect();
                    if th.is_empty() {
                        continue;
                    }
                    let med = |g: &dyn Fn(&(&Throughput, f64)) -> Option<f64>| {
                        let v: Vec<f64> = th.iter().filter_map(g).collect();
                        stats(&v).1
                    };
                    let lat =
                        |i: usize, q: fn(&Latency) -> f64| med(&|t| t.0.latency.get(i).map(q));
                    o.push_str(&format!(
                        "| {} | {} | {:.2} | {:.2} | {:.2} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |\n",
                        label(f),
                        d.name(),
                        med(&|t| Some(t.0.ndr / 1e6)),
                        med(&|t| Some(t.0.pdr / 1e6)),
                        med(&|t| Some(t.0.ndr / t.1.max(1.0))),
                        lat(0, |l| l.p50),
                        lat(0, |l| l.p99),
                        lat(1, |l| l.p50),
                        lat(2, |l| l.p50),
                        lat(2, |l| l.max),
                    ));
                }
            }
        }
        for (d, why) in &self.missing {
            o.push_str(&format!("\nDUT {} missing: {why}\n", d.name()));
        }
        for why in &self.skipped {
            o.push_str(&format!("\nnot measured: {why}\n"));
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
                    "{{\"generator\":\"{}\",\"dut\":\"{}\",\"frame\":\"{}\",\"round\":{},\"sent\":{},\"refused\":{},\"received\":{},\"reordered\":{},\"seconds\":{:.4},\"rx_pps\":{:.0},\"cycles_per_packet\":{},\"throughput\":{}}}",
                    s.gen.name(),
                    s.dut.name(),
                    label(s.frame),
                    s.round,
                    s.trial.sent,
                    s.trial.refused,
                    s.trial.received,
                    s.trial.reordered,
                    s.trial.seconds,
                    s.trial.rx_pps(),
                    s.cycles.map(|c| format!("{c:.1}")).unwrap_or_else(|| "null".into()),
                    s.throughput.as_ref().map(throughput_json).unwrap_or_else(|| "null".into())
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

/// NDR and PDR by binary search below `max_rate`, then latency at 10/50/90 % of NDR.
fn measure_throughput(
    g: &mut Generator,
    max_rate: f64,
    n: &NdrConfig,
    progress: &mut dyn FnMut(&str),
) -> Throughput {
    let mut log = |r: f64, t: &Trial| {
        progress(&format!(
            "      trial at {:.3} Mpps: loss {:.4} %",
            r / 1e6,
            100.0 * t.loss_ratio()
        ))
    };
    let ndr = search(g, max_rate, 0.0, n, &mut log);
    let pdr = search(g, max_rate, n.pdr_loss, n, &mut log);
    let latency = latency_tests::at_fractions_of_ndr(ndr, &NDR_FRACTIONS, |rate, h| {
        g.run_at(n.trial, Some(rate), Some(h));
    });
    progress(&format!(
        "      NDR {:.3} Mpps, PDR {:.3} Mpps",
        ndr / 1e6,
        pdr / 1e6
    ));
    Throughput { ndr, pdr, latency }
}

/// Runs the benchmark; `progress` gets a line per trial.
pub fn run(cfg: &P2pConfig, progress: &mut dyn FnMut(&str)) -> Result<Report, String> {
    if !core_affinity::set_for_current(core_affinity::CoreId { id: cfg.gen_core }) {
        progress(&format!(
            "warning: could not pin the generator to core {}",
            cfg.gen_core
        ));
    }
    let mut report = Report {
        tsc_hz: crate::gen::tsc_hz(),
        dut_cores: cfg.dut_cores.len(),
        ..Report::default()
    };
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
    let mut gens = cfg.generators.clone();
    if gens.contains(&GenKind::Dpdk) && !crate::dut::in_path("dpdk-testpmd") {
        report.skipped.push(
            "dpdk generator: dpdk-testpmd not installed (apt-get install dpdk-dev librte-net-virtio23)"
                .into(),
        );
        gens.retain(|g| *g != GenKind::Dpdk);
    }
    let mut runs = Vec::new();
    for &frame in &cfg.frame_sizes {
        for &g in &gens {
            for &dut in &duts {
                match g.unsupported(dut, frame) {
                    Some(why) => report.skipped.push(format!(
                        "{} generator, {}, {} B: {why}",
                        g.name(),
                        dut.name(),
                        label(frame)
                    )),
                    None => runs.push((frame, g, dut)),
                }
            }
        }
    }
    let total = runs.len() * cfg.trials as usize;
    let mut k = 0;
    // Rounds outermost within a frame size: every (generator, DUT) pair draws one trial
    // per round, so the machine's drift hits each alike.
    for &frame in &cfg.frame_sizes {
        for round in 0..cfg.trials {
            for &(_, gen, dut) in runs.iter().filter(|r| r.0 == frame) {
                k += 1;
                let dir = cfg
                    .dir
                    .join(format!("{}-{}-{frame}-{round}", gen.name(), dut.name()));
                let dcfg = DutConfig {
                    kind: dut,
                    cores: cfg.dut_cores.clone(),
                    main_core: cfg.gen_core,
                    dir: dir.clone(),
                    vnfhost: cfg.vnfhost.clone(),
                    hugepages: cfg.hugepages,
                    control: None,
                    sessions: None,
                };
                let d = RunningDut::start(&dcfg)?;
                let (trial, throughput) = match gen {
                    GenKind::Vnfhost => {
                        let gcfg = GenConfig {
                            tx: d.port0.clone(),
                            rx: d.port1.clone(),
                            frame_len: if frame == crate::gen::IMIX {
                                frame
                            } else {
                                frame.saturating_sub(4)
                            },
                            flows: cfg.flows,
                            ring_size: cfg.ring_size,
                            hugepages: cfg.hugepages,
                            server: dut.generator_listens(),
                            l3: dut.is_l3(),
                            packed: cfg.packed,
                            tunnel: None,
                            l4: None,
                        };
                        let mut g = Generator::connect(&gcfg)
                            .map_err(|e| format!("{}: {e}\n{}", dut.name(), d.log_tail()))?;
                        std::thread::sleep(Duration::from_millis(500));
                        g.teach();
                        let warm = g.run(cfg.warmup);
                        let trial = g.run_at(cfg.duration, cfg.rate, None);
                        // NDR is searched below the DUT's maximum rate, which the warm-up
                        // measured when the main trial ran at a fixed --rate.
                        let upper = if cfg.rate.is_some() {
                            warm.rx_pps()
                        } else {
                            trial.rx_pps()
                        };
                        let throughput = cfg
                            .ndr
                            .map(|n| measure_throughput(&mut g, upper, &n, progress));
                        (trial, throughput)
                    }
                    GenKind::Dpdk => {
                        let huge = if cfg.hugepages {
                            crate::dut::mount_hugetlbfs(&dir.join("gen"))
                        } else {
                            None
                        };
                        let gcfg = DpdkGenConfig {
                            sockets: [d.port0.clone(), d.port1.clone()],
                            frame_len: frame.saturating_sub(4),
                            flows: cfg.flows,
                            bursts: 16,
                            server: dut.generator_listens(),
                            core: cfg.gen_core,
                            ring_size: cfg.ring_size,
                            packed: cfg.packed,
                            huge_dir: huge.clone(),
                            dir: dir.join("gen"),
                        };
                        let res = DpdkGen::start(&gcfg).and_then(|mut g| {
                            // The DUT learns both MACs in the warm-up.
                            g.run(cfg.warmup, cfg.duration)
                        });
                        if let Some(m) = &huge {
                            let _ = std::process::Command::new("umount").arg(m).status();
                        }
                        let trial =
                            res.map_err(|e| format!("{}: {e}\n{}", dut.name(), d.log_tail()))?;
                        (trial, None)
                    }
                };
                let cycles = d.stop_with_cycles();
                let sample = Sample {
                    gen,
                    dut,
                    frame,
                    round,
                    trial,
                    cycles,
                    throughput,
                };
                progress(&format!(
                    "[{}] {k:>3}/{total} {:<7} gen, {:<12} {:>5} B round {round}: {:.3} Mpps, {} cycles/frame, core {} busy (sent {}, received {})",
                    bar(k, total),
                    gen.name(),
                    dut.name(),
                    label(frame),
                    trial.rx_pps() / 1e6,
                    cycles.map(|c| format!("{c:.0}")).unwrap_or_else(|| "?".into()),
                    sample
                        .dut_busy(report.tsc_hz, report.dut_cores)
                        .map(|b| format!("{:.0} %", b * 100.0))
                        .unwrap_or_else(|| "?".into()),
                    trial.sent,
                    trial.received,
                ));
                report.samples.push(sample);
            }
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_bar_fills() {
        assert_eq!(bar(0, 4), "....................");
        assert_eq!(bar(2, 4), "##########..........");
        assert_eq!(bar(4, 4), "####################");
    }

    #[test]
    fn stats_of_odd_and_even_samples() {
        assert_eq!(stats(&[3.0, 1.0, 2.0]), (1.0, 2.0, 3.0));
        assert_eq!(stats(&[4.0, 1.0, 2.0, 3.0]), (1.0, 2.5, 4.0));
        assert_eq!(stats(&[]), (0.0, 0.0, 0.0));
    }
}
