//! The VXLAN tunnel benchmark: one core of the DUT encapsulates what a pod sends to
//! another node and decapsulates what comes back, vnfhost against Open vSwitch with
//! DPDK's userspace tunnelling (`tnl_push`/`tnl_pop`), in the same run.
//!
//! The DUT has two vhost-user ports: `p0`, a pod's, and `p1`, the uplink to the
//! underlay. The generator (ours, [`crate::gen`]) plays the pod on `p0` and the remote
//! node's VTEP on `p1`. Each direction is its own trial on the same connections:
//!
//! - **encap**: plain frames into `p0`, counted as they come out of `p1` encapsulated;
//! - **decap**: encapsulated frames into `p1`, counted as they come out of `p0`.
//!
//! The rate is the maximum receive rate (frames offered as fast as the DUT takes them,
//! those that come back counted), per trial, over rounds in which every DUT takes its
//! turn; the first rounds warm up and are not counted. Frame sizes are the inner
//! frames' on the wire (64 B is 60 bytes plus FCS); the uplink carries 50 bytes more.

use std::path::PathBuf;
use std::time::Duration;

use crate::dut::{pin_and_select, DutConfig, DutKind, RunningDut};
use crate::gen::{GenConfig, Generator, Tunnel};
use crate::p2p::{mpps_cell, stats};

/// What to run.
#[derive(Clone, Debug)]
pub struct TunnelConfig {
    /// The `vnfhost` binary.
    pub vnfhost: PathBuf,
    /// The DUT's forwarding core.
    pub dut_core: usize,
    /// The generator's core.
    pub gen_core: usize,
    /// Inner frame sizes on the wire (with FCS).
    pub frame_sizes: Vec<usize>,
    /// Rounds counted.
    pub rounds: u32,
    /// Rounds run first and not counted.
    pub warmup: u32,
    /// Length of one trial.
    pub trial: Duration,
    /// Where the DUTs' directories go.
    pub dir: PathBuf,
    /// Hugepages for the DUTs and the generator.
    pub hugepages: bool,
}

/// One counted trial.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample {
    /// The DUT.
    pub dut: DutKind,
    /// The direction.
    pub dir: Tunnel,
    /// Inner frame size on the wire.
    pub frame: usize,
    /// Frames per second received.
    pub pps: f64,
    /// Share of offered frames that did not come back.
    pub loss: f64,
}

/// The results.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Counted trials.
    pub samples: Vec<Sample>,
    /// DUTs that could not run, and why.
    pub missing: Vec<(DutKind, String)>,
}

/// The DUTs compared.
pub const DUTS: [DutKind; 2] = [DutKind::VnfhostVxlan, DutKind::OvsVxlan];

fn dir_name(d: Tunnel) -> &'static str {
    match d {
        Tunnel::Encap => "encap",
        Tunnel::Decap => "decap",
    }
}

impl Report {
    fn rates(&self, dut: DutKind, dir: Tunnel, frame: usize) -> Vec<f64> {
        self.samples
            .iter()
            .filter(|s| s.dut == dut && s.dir == dir && s.frame == frame)
            .map(|s| s.pps)
            .collect()
    }

    /// The table: per frame size and direction, each DUT's min/median/max in Mpps and
    /// the ratio of the medians.
    pub fn markdown(&self, cfg: &TunnelConfig) -> String {
        let mut o = String::new();
        o.push_str(&format!(
            "VXLAN tunnel p2p: DUT on CPU {}, generator on CPU {}, {} counted rounds after {} \
             warm-up, {:.1} s trials; Mpps as min / median / max. The generator offers \
             frames as fast as each DUT takes them, from one core: where it is the slower \
             of the two, the rate is a lower bound of the DUT's.\n\n",
            cfg.dut_core,
            cfg.gen_core,
            cfg.rounds,
            cfg.warmup,
            cfg.trial.as_secs_f64()
        ));
        o.push_str("| inner frame | direction | vnfhost | OVS-DPDK | vnfhost / OVS (medians) |\n");
        o.push_str("|---|---|---|---|---|\n");
        let cell = |v: &[f64]| mpps_cell(v);
        for &f in &cfg.frame_sizes {
            for d in [Tunnel::Encap, Tunnel::Decap] {
                let v = self.rates(DutKind::VnfhostVxlan, d, f);
                let w = self.rates(DutKind::OvsVxlan, d, f);
                let ratio = if v.is_empty() || w.is_empty() {
                    "—".to_string()
                } else {
                    format!("{:.2}×", stats(&v).1 / stats(&w).1)
                };
                o.push_str(&format!(
                    "| {f} B | {} | {} | {} | {ratio} |\n",
                    dir_name(d),
                    cell(&v),
                    cell(&w)
                ));
            }
        }
        for (d, why) in &self.missing {
            o.push_str(&format!("\n{} not run: {why}\n", d.name()));
        }
        o
    }
}

/// Runs the benchmark; `progress` gets a line per trial.
pub fn run(cfg: &TunnelConfig, progress: &mut dyn FnMut(&str)) -> Result<Report, String> {
    let (duts, missing) = pin_and_select(cfg.gen_core, &DUTS, &cfg.vnfhost, progress);
    let mut report = Report {
        missing,
        ..Report::default()
    };
    for round in 0..cfg.warmup + cfg.rounds {
        let counted = round >= cfg.warmup;
        for &dut in &duts {
            let dcfg = DutConfig {
                kind: dut,
                cores: vec![cfg.dut_core],
                main_core: cfg.gen_core,
                dir: cfg.dir.join(format!("{}-{round}", dut.name())),
                vnfhost: cfg.vnfhost.clone(),
                hugepages: cfg.hugepages,
                control: None,
                sessions: None,
            };
            let d = RunningDut::start(&dcfg)?;
            let mut g = Generator::connect(&GenConfig {
                tx: d.port0.clone(),
                rx: d.port1.clone(),
                frame_len: 60,
                flows: 1,
                ring_size: 1024,
                hugepages: cfg.hugepages,
                server: dut.generator_listens(),
                l3: false,
                packed: false,
                tunnel: Some(Tunnel::Encap),
                l4: None,
            })
            .map_err(|e| format!("{}: generator: {e}\n{}", dut.name(), d.log_tail()))?;
            for &frame in &cfg.frame_sizes {
                g.set_frame_len(frame.saturating_sub(4));
                for dir in [Tunnel::Encap, Tunnel::Decap] {
                    g.set_tunnel(dir);
                    g.teach();
                    let _ = g.run(Duration::from_millis(300));
                    let t = g.run(cfg.trial);
                    progress(&format!(
                        "{} {:>5} {frame} B {}: {:.3} Mpps, loss {:.2} %{}",
                        if counted { "round" } else { "warm-up" },
                        dut.name(),
                        dir_name(dir),
                        t.rx_pps() / 1e6,
                        100.0 * t.loss_ratio(),
                        if t.received == 0 {
                            format!("\n{}", d.log_tail())
                        } else {
                            String::new()
                        }
                    ));
                    if counted {
                        report.samples.push(Sample {
                            dut,
                            dir,
                            frame,
                            pps: t.rx_pps(),
                            loss: t.loss_ratio(),
                        });
                    }
                }
                // Back to the first direction's port order for the next frame size.
                g.set_tunnel(Tunnel::Encap);
            }
            drop(g);
            d.stop();
        }
    }
    Ok(report)
}
