//! The sessions benchmark: connection tracking on one DUT core, vnfhost against Open
//! vSwitch with DPDK's conntrack (`ct()` flows) doing the same, in the same run.
//!
//! Two pairs of DUTs ([`crate::dut::DutKind`]):
//!
//! - **stateful group**: `vnfhost-sg` (L2, both ports in stateful security groups with
//!   default deny) against `ovs-ct` (`ct(commit)` of new conversations, established
//!   ones pass);
//! - **service VIP**: `vnfhost-vip` (routing, a UDP service with one backend: DNAT and
//!   its reverse) against `ovs-nat` (`ct(nat)`, `nat(dst=…)` on commit, the router's
//!   MAC and TTL rewrite).
//!
//! and three loads, 64-byte frames, IPv4/UDP from the generator (ours, [`crate::gen`]):
//!
//! - **established, N conversations** (10 and 100 000): every conversation is opened
//!   (a warm-up trial) and answered once from the other side ([`Generator::prime`]),
//!   so that both trackers hold it as established; then the trial cycles through them
//!   frame by frame;
//! - **new**: every frame opens a conversation of its own; the rate is new sessions per
//!   second (vnfhost with a table of 4 194 304 sessions, so that it never fills).
//!
//! Each (DUT, load) trial starts its DUT afresh; rounds interleave the DUTs. The
//! resident memory of the forwarding process is read after each trial.

use std::path::PathBuf;
use std::time::Duration;

use crate::dut::{pin_and_select, DutConfig, DutKind, RunningDut, VIP, VIP_BACKEND};
use crate::gen::{GenConfig, Generator, L4Flows};
use crate::p2p::{mpps_cell, stats};

/// What to run.
#[derive(Clone, Debug)]
pub struct SessionsConfig {
    /// The `vnfhost` binary.
    pub vnfhost: PathBuf,
    /// The DUT's forwarding core.
    pub dut_core: usize,
    /// The generator's core.
    pub gen_core: usize,
    /// Established loads: conversations cycled through.
    pub flows: Vec<u32>,
    /// Also measure new sessions per second.
    pub new: bool,
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

/// A load.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Load {
    /// This many established conversations.
    Established(u32),
    /// A new conversation per frame.
    New,
}

impl Load {
    fn name(self) -> String {
        match self {
            Load::Established(n) => format!("established, {n} sessions"),
            Load::New => "new sessions".into(),
        }
    }
}

/// One counted trial.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample {
    /// The DUT.
    pub dut: DutKind,
    /// The load.
    pub load: Load,
    /// Frames per second received.
    pub pps: f64,
    /// Share of offered frames that did not come back.
    pub loss: f64,
    /// Resident memory of the forwarding process after the trial, KiB.
    pub rss_kib: Option<u64>,
}

/// The results.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Counted trials.
    pub samples: Vec<Sample>,
    /// DUTs that could not run, and why.
    pub missing: Vec<(DutKind, String)>,
}

/// The pairs compared: (vnfhost, OVS-DPDK), with the row's name.
pub const PAIRS: [(&str, DutKind, DutKind); 2] = [
    ("stateful group", DutKind::VnfhostSg, DutKind::OvsCt),
    ("service VIP", DutKind::VnfhostVip, DutKind::OvsNat),
];

/// Sessions per core of the vnfhost DUTs in the new-sessions load.
pub const NEW_CAPACITY: u32 = 1 << 22;

impl Report {
    fn of(&self, dut: DutKind, load: Load) -> impl Iterator<Item = &Sample> {
        self.samples
            .iter()
            .filter(move |s| s.dut == dut && s.load == load)
    }

    /// The table: per pair and load, each DUT's min/median/max Mpps, the ratio of the
    /// medians, and the median resident memory.
    pub fn markdown(&self, cfg: &SessionsConfig) -> String {
        let mut o = String::new();
        o.push_str(&format!(
            "Sessions: DUT on CPU {}, generator on CPU {}, 64-byte IPv4/UDP frames, {} \
             counted rounds after {} warm-up, {:.1} s trials; Mpps as min / median / max \
             (for new sessions: million sessions created per second); RSS is the \
             forwarding process's resident memory after the trial (median). The \
             generator offers frames as fast as each DUT takes them, from one core: \
             where it is the slower of the two, the rate is a lower bound of the DUT's.\n\n",
            cfg.dut_core,
            cfg.gen_core,
            cfg.rounds,
            cfg.warmup,
            cfg.trial.as_secs_f64()
        ));
        o.push_str("| what | load | vnfhost | OVS-DPDK | vnfhost / OVS (medians) | vnfhost RSS MiB | OVS RSS MiB |\n");
        o.push_str("|---|---|---|---|---|---:|---:|\n");
        let cell = |v: &[f64]| mpps_cell(v);
        let mut loads: Vec<Load> = cfg.flows.iter().map(|&n| Load::Established(n)).collect();
        if cfg.new {
            loads.push(Load::New);
        }
        for (what, v, w) in PAIRS {
            for &load in &loads {
                let a: Vec<f64> = self.of(v, load).map(|s| s.pps).collect();
                let b: Vec<f64> = self.of(w, load).map(|s| s.pps).collect();
                let ratio = if a.is_empty() || b.is_empty() {
                    "—".to_string()
                } else {
                    format!("{:.2}×", stats(&a).1 / stats(&b).1)
                };
                let rss = |d: DutKind| {
                    let r: Vec<f64> = self
                        .of(d, load)
                        .filter_map(|s| s.rss_kib)
                        .map(|k| k as f64 / 1024.0)
                        .collect();
                    if r.is_empty() {
                        "?".to_string()
                    } else {
                        format!("{:.0}", stats(&r).1)
                    }
                };
                o.push_str(&format!(
                    "| {what} | {} | {} | {} | {ratio} | {} | {} |\n",
                    load.name(),
                    cell(&a),
                    cell(&b),
                    rss(v),
                    rss(w)
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
pub fn run(cfg: &SessionsConfig, progress: &mut dyn FnMut(&str)) -> Result<Report, String> {
    let (duts, missing) = pin_and_select(
        cfg.gen_core,
        &PAIRS.iter().flat_map(|p| [p.1, p.2]).collect::<Vec<_>>(),
        &cfg.vnfhost,
        progress,
    );
    let mut report = Report {
        missing,
        ..Report::default()
    };
    let mut loads: Vec<Load> = cfg.flows.iter().map(|&n| Load::Established(n)).collect();
    if cfg.new {
        loads.push(Load::New);
    }
    for round in 0..cfg.warmup + cfg.rounds {
        let counted = round >= cfg.warmup;
        for (li, &load) in loads.iter().enumerate() {
            for &dut in &duts {
                let vip = matches!(dut, DutKind::VnfhostVip | DutKind::OvsNat);
                let dcfg = DutConfig {
                    kind: dut,
                    cores: vec![cfg.dut_core],
                    main_core: cfg.gen_core,
                    dir: cfg.dir.join(format!("{}-{round}-{li}", dut.name())),
                    vnfhost: cfg.vnfhost.clone(),
                    hugepages: cfg.hugepages,
                    control: None,
                    sessions: (load == Load::New).then_some(NEW_CAPACITY),
                };
                let d = RunningDut::start(&dcfg)?;
                let (dst, reply_from) = if vip {
                    (VIP, VIP_BACKEND)
                } else {
                    (([10, 0, 0, 200], 5201), ([10, 0, 0, 200], 5201))
                };
                let flows = match load {
                    Load::Established(n) => n,
                    Load::New => 1,
                };
                let mut g = Generator::connect(&GenConfig {
                    tx: d.port0.clone(),
                    rx: d.port1.clone(),
                    frame_len: 60,
                    flows,
                    ring_size: 1024,
                    hugepages: cfg.hugepages,
                    server: dut.generator_listens(),
                    l3: vip,
                    packed: false,
                    tunnel: None,
                    l4: Some(L4Flows {
                        dst,
                        reply_from,
                        new_each: load == Load::New,
                    }),
                })
                .map_err(|e| format!("{}: generator: {e}\n{}", dut.name(), d.log_tail()))?;
                g.teach();
                // Open every conversation, answer each once, and settle.
                let warm = if load == Load::New { 50 } else { 300 };
                let _ = g.run(Duration::from_millis(warm));
                if load != Load::New {
                    g.prime();
                    let _ = g.run(Duration::from_millis(200));
                }
                let t = g.run(cfg.trial);
                let rss = d.rss_kib();
                progress(&format!(
                    "{} {:>11} {}: {:.3} Mpps, loss {:.2} %, RSS {} MiB{}",
                    if counted { "round" } else { "warm-up" },
                    dut.name(),
                    load.name(),
                    t.rx_pps() / 1e6,
                    100.0 * t.loss_ratio(),
                    rss.map_or("?".into(), |k| (k / 1024).to_string()),
                    if t.received == 0 {
                        format!("\n{}", d.log_tail())
                    } else {
                        String::new()
                    }
                ));
                if counted {
                    report.samples.push(Sample {
                        dut,
                        load,
                        pps: t.rx_pps(),
                        loss: t.loss_ratio(),
                        rss_kib: rss,
                    });
                }
                drop(g);
                d.stop();
            }
        }
    }
    Ok(report)
}
