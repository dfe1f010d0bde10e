//! `vnfhost bench churn`: what configuration changes cost the traffic that does not
//! change.
//!
//! The switch forwards one flow between two ports at a fixed rate (1 Mpps by default),
//! from our generator on one core through the switch on another. In a **churn** trial,
//! a thread sends the switch `changes` whole specs over its control socket, evenly spread
//! over the trial: each adds or removes a third port on another VLAN (a vhost-user
//! socket nobody connects to), as a CNI ADD or DEL of another tenant's pod does. A
//! **quiet** trial is the same run without the changes. Trials alternate, quiet first.
//!
//! Per trial: the largest gap between two consecutive frames arriving at the receiver,
//! the highest one-way latency (a stall of the switch's core shows as frames waiting in
//! its ring), frames lost, and the generator's own longest pause (the machine has two
//! cores, so the control threads share the generator's: a gap no longer than the
//! generator's pause may be the generator's). The added gap is the churn trials' median
//! largest gap less the quiet trials'.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use api::switch::{Driver, PortSpec, SwitchCounters, SwitchSpec, VhostMode};
use api::values::{VlanId, VlanMode};
use hdrhistogram::Histogram;

use crate::dut::{DutConfig, DutKind, RunningDut};
use crate::gen::{GenConfig, Generator};

/// What to run.
#[derive(Clone, Debug)]
pub struct ChurnConfig {
    /// The `vnfhost` binary.
    pub vnfhost: PathBuf,
    /// The switch's polling core.
    pub dut_core: usize,
    /// The generator's core.
    pub gen_core: usize,
    /// Offered rate, frames per second.
    pub rate: f64,
    /// Changes per churn trial.
    pub changes: u32,
    /// Trial length.
    pub duration: Duration,
    /// Trials of each kind.
    pub trials: u32,
    /// Frame size on the wire less the FCS.
    pub frame_len: usize,
    /// Directory for sockets and logs.
    pub dir: PathBuf,
}

/// One trial's figures.
#[derive(Clone, Copy, Debug, Default)]
pub struct ChurnTrial {
    /// Changes applied during it.
    pub changes: u32,
    /// Largest gap between consecutive arrivals, µs.
    pub max_gap_us: f64,
    /// Highest one-way latency, µs.
    pub max_latency_us: f64,
    /// 99.99th percentile latency, µs.
    pub p9999_latency_us: f64,
    /// Frames offered and not received.
    pub lost: u64,
    /// Frames offered.
    pub offered: u64,
    /// The generator's longest pause, µs.
    pub gen_stall_us: f64,
    /// Slowest change until every core ran it, as the switch reports (µs).
    pub slowest_change_us: u64,
    /// The longest a polling core spent taking in one change, forwarding nothing (µs):
    /// the switch's own accounting, free of the host's noise.
    pub core_pause_us: f64,
    /// Gaps between arrivals longer than 50 µs.
    pub gaps_over_50us: u64,
}

fn spec_with(base: &SwitchSpec, extra: Option<&PortSpec>) -> SwitchSpec {
    let mut s = base.clone();
    if let Some(p) = extra {
        s.ports.push(p.clone());
    }
    s
}

/// Runs one trial on a fresh switch.
fn trial(cfg: &ChurnConfig, changes: u32, k: u32) -> Result<ChurnTrial, String> {
    let dir = cfg.dir.join(format!("t{k}"));
    let ctl = dir.join("ctl.sock");
    let dut = RunningDut::start(&DutConfig {
        kind: DutKind::Vnfhost,
        cores: vec![cfg.dut_core],
        main_core: cfg.gen_core,
        dir: dir.clone(),
        vnfhost: cfg.vnfhost.clone(),
        hugepages: false,
        control: Some(ctl.clone()),
        sessions: None,
    })?;
    let t = Instant::now();
    while !ctl.exists() {
        if t.elapsed() > Duration::from_secs(10) {
            return Err(format!("no control socket:\n{}", dut.log_tail()));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let base: SwitchSpec = api::http::request(&ctl, "GET", "/v1/config", None)?;
    let extra = PortSpec {
        name: "other".into(),
        driver: Driver::VhostUser {
            path: dir.join("other.sock"),
            mode: VhostMode::Server,
            queues: 1,
            max_memory_mib: None,
        },
        mac: None,
        vlan: VlanMode::Access {
            vlan: VlanId::new(99).unwrap_or_default(),
        },
        allowed_addresses: Vec::new(),
        anti_spoofing: true,
        router: false,
        security_groups: Vec::new(),
    };
    let mut gen = Generator::connect(&GenConfig {
        tx: dut.port0.clone(),
        rx: dut.port1.clone(),
        frame_len: cfg.frame_len,
        flows: 1,
        ring_size: 1024,
        hugepages: false,
        server: false,
        l3: false,
        packed: false,
        tunnel: None,
        l4: None,
    })
    .map_err(|e| format!("generator: {e}"))?;
    gen.teach();
    // Warm up: the flow is learnt and running before the measurement starts.
    let _ = gen.run_at(Duration::from_millis(500), Some(cfg.rate), None);

    let stop = Arc::new(AtomicBool::new(false));
    let changer = {
        let (ctl, stop) = (ctl.clone(), stop.clone());
        let gap = cfg.duration / (changes + 1).max(1);
        std::thread::spawn(move || -> Result<(u32, u64), String> {
            let (mut done, mut slowest) = (0u32, 0u64);
            for i in 0..changes {
                std::thread::sleep(gap);
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let s = spec_with(&base, (i % 2 == 0).then_some(&extra));
                let body = serde_json::to_vec(&s).map_err(|e| e.to_string())?;
                let _: api::switch::ApplyReply =
                    api::http::request(&ctl, "PUT", "/v1/config", Some(&body))?;
                let c: SwitchCounters = api::http::request(&ctl, "GET", "/v1/stats", None)?;
                slowest = slowest.max(c.last_change_us);
                done += 1;
            }
            Ok((done, slowest))
        })
    };
    let mut hist = Histogram::<u64>::new_with_bounds(1, 10_000_000_000, 3)
        .map_err(|e| format!("histogram: {e}"))?;
    let tr = gen.run_at(cfg.duration, Some(cfg.rate), Some(&mut hist));
    stop.store(true, Ordering::Relaxed);
    let core_pause_ns = api::http::request::<SwitchCounters>(&ctl, "GET", "/v1/stats", None)
        .map(|c| {
            c.cores
                .iter()
                .map(|k| k.longest_change_ns)
                .max()
                .unwrap_or(0)
        })
        .unwrap_or(0);
    let (done, slowest) = changer
        .join()
        .map_err(|_| "the change thread panicked".to_string())??;
    drop(gen);
    dut.stop();
    let _ = std::fs::remove_dir_all(&dir);
    Ok(ChurnTrial {
        changes: done,
        max_gap_us: tr.max_gap_ns as f64 / 1e3,
        max_latency_us: hist.max() as f64 / 1e3,
        p9999_latency_us: hist.value_at_quantile(0.9999) as f64 / 1e3,
        lost: tr.offered().saturating_sub(tr.received),
        offered: tr.offered(),
        gen_stall_us: tr.gen_stall_ns as f64 / 1e3,
        slowest_change_us: slowest,
        core_pause_us: core_pause_ns as f64 / 1e3,
        gaps_over_50us: tr.gaps_over_50us,
    })
}

/// min / median / max of `v`.
fn mmm(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return (0.0, 0.0, 0.0);
    }
    (v[0], v[v.len() / 2], v[v.len() - 1])
}

/// Runs the benchmark and prints its report.
pub fn run(cfg: &ChurnConfig) -> Result<(), String> {
    if !core_affinity::set_for_current(core_affinity::CoreId { id: cfg.gen_core }) {
        eprintln!(
            "warning: could not pin the generator to core {}",
            cfg.gen_core
        );
    }
    std::fs::create_dir_all(&cfg.dir).map_err(|e| format!("{}: {e}", cfg.dir.display()))?;
    let (mut quiet, mut churn) = (Vec::new(), Vec::new());
    for k in 0..cfg.trials {
        for (changes, out) in [(0, &mut quiet), (cfg.changes, &mut churn)] {
            let t = trial(cfg, changes, k * 2 + u32::from(changes > 0))?;
            println!(
                "trial {k} {:<5}: {:>3} changes, core paused by a change up to {:>6.1} µs, \
                 largest gap {:>8.1} µs ({} gaps > 50 µs), max latency {:>8.1} µs \
                 (p99.99 {:>6.1}), lost {}/{}, generator paused up to {:.1} µs, slowest change {} µs",
                if changes > 0 { "churn" } else { "quiet" },
                t.changes,
                t.core_pause_us,
                t.max_gap_us,
                t.gaps_over_50us,
                t.max_latency_us,
                t.p9999_latency_us,
                t.lost,
                t.offered,
                t.gen_stall_us,
                t.slowest_change_us
            );
            out.push(t);
        }
    }
    let line = |name: &str, v: &[ChurnTrial]| {
        let (a, b, c) = mmm(v.iter().map(|t| t.max_gap_us).collect());
        let (d, e, f) = mmm(v.iter().map(|t| t.max_latency_us).collect());
        let (g, h, i) = mmm(v.iter().map(|t| t.gaps_over_50us as f64).collect());
        let (j, k, l) = mmm(v.iter().map(|t| t.core_pause_us).collect());
        let lost: u64 = v.iter().map(|t| t.lost).sum();
        let offered: u64 = v.iter().map(|t| t.offered).sum();
        println!(
            "{name:<6} core paused by a change µs min/median/max {j:.1}/{k:.1}/{l:.1}; \
             largest gap µs {a:.1}/{b:.1}/{c:.1}; gaps > 50 µs {g:.0}/{h:.0}/{i:.0}; \
             max latency µs {d:.1}/{e:.1}/{f:.1}; lost {lost} of {offered}"
        );
        b
    };
    println!(
        "== churn: {} Mpps, {} B frames, {} changes per {:?} trial, {} trials each, switch on core {}, generator on core {}",
        cfg.rate / 1e6,
        cfg.frame_len + 4,
        cfg.changes,
        cfg.duration,
        cfg.trials,
        cfg.dut_core,
        cfg.gen_core
    );
    let q = line("quiet", &quiet);
    let c = line("churn", &churn);
    let slowest = churn.iter().map(|t| t.slowest_change_us).max().unwrap_or(0);
    println!(
        "added gap (median of largest gaps, churn − quiet): {:.1} µs; slowest change reached every core in {slowest} µs",
        c - q
    );
    Ok(())
}
