//! `vnfhost-bench`, what `vnfhost bench` runs: `p2p`, the forwarding benchmark against
//! DPDK testpmd and OVS-DPDK, in one run; `vm`, the pod VM monitor against QEMU microvm.
//!
//! A binary of its own so that the node binary `vnfhost` does not link the harness. It
//! runs the `vnfhost` beside it (as the DUT's switch and the VMs' monitor), the one that
//! execs it.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use perf::dut::DutKind;
use perf::p2p::{self, GenKind, P2pConfig};

/// `vnfhost-bench --help`.
const USAGE: &str = "\
usage: vnfhost bench p2p [options]     (or vnfhost-bench p2p [options])
       vnfhost bench vm [options]
       vnfhost bench churn [options]
       vnfhost bench tunnel [options]
       vnfhost bench sessions [options]
       vnfhost bench uplink [--rounds N] [--seconds S] [--out DIR]
       vnfhost bench pod [--rounds N] [--warmup N] [--out DIR]

  p2p    forwarding benchmark: vnfhost against DPDK testpmd and OVS-DPDK, interleaved
  vm     pod VM monitor: vnfhost's kvm backend against QEMU microvm, same payload
  churn  the largest gap in a flow while the switch's spec changes
  tunnel VXLAN encapsulation and decapsulation on one core: vnfhost against OVS-DPDK's
         userspace tunnelling
  sessions  connection tracking on one core: a stateful group and a service VIP,
         established and new sessions, vnfhost against OVS-DPDK's ct() flows
  uplink VXLAN frames onto a veth from one core: vnfhost's AF_PACKET uplink against the
         kernel's vxlan device
  pod    pod start and memory per pod: VM pods (CRI and `vnfhost run`) against runc
         pods in one containerd (perf/pod_bench.py, with the CRI client's venv)

`vnfhost bench p2p --help` (vm, churn, tunnel) lists a benchmark's options.
";

/// `vnfhost-bench tunnel --help`.
const TUNNEL_USAGE: &str = "\
usage: vnfhost bench tunnel [options]

One core of the DUT encapsulates a pod's frames into VXLAN (encap) and decapsulates
the remote VTEP's (decap); vnfhost and OVS-DPDK (tnl_push/tnl_pop) take turns round by
round, each direction its own maximum-receive-rate trial. Our generator plays the pod
and the remote VTEP.

options:
  --frames LIST    inner frame sizes on the wire (default 64,1518)
  --rounds N       counted rounds (default 5)
  --warmup N       rounds run first and not counted (default 1)
  --seconds S      seconds per trial (default 2)
  --dut-core N     the DUT's core (default 0)
  --gen-core N     the generator's core (default 1)
  --no-hugepages   no hugepages for the DUTs and the generator (OVS-DPDK then
                   cannot start)
  --out DIR        where tunnel.md goes (default bench-results)
  -h, --help       this text
";

/// `vnfhost-bench sessions --help`.
const SESSIONS_USAGE: &str = "\
usage: vnfhost bench sessions [options]

Connection tracking on one DUT core, 64-byte IPv4/UDP: a stateful security group
(vnfhost-sg against OVS-DPDK with ct(commit) flows) and a service VIP (vnfhost-vip, DNAT
to one backend, against OVS-DPDK with ct(nat)); each with established conversations
(every one opened and answered once first) and with a new conversation per frame.
DUTs take turns round by round; our generator plays both ends.

options:
  --flows LIST     established conversations per load (default 10,100000)
  --no-new         leave out the new-sessions load
  --rounds N       counted rounds (default 5)
  --warmup N       rounds run first and not counted (default 1)
  --seconds S      seconds per trial (default 1)
  --dut-core N     the DUT's core (default 0)
  --gen-core N     the generator's core (default 1)
  --out DIR        where sessions.md goes (default bench-results)
  -h, --help       this text
";

/// `vnfhost-bench churn --help`.
const CHURN_USAGE: &str = "\
usage: vnfhost bench churn [options]

A flow between two ports at a fixed rate while the switch's spec changes (a third port
added and removed); quiet and churn trials alternate.

options:
  --rate MPPS      offered rate (default 1)
  --changes N      changes per churn trial (default 100)
  --duration S     seconds per trial (default 5)
  --trials N       trials of each kind (default 5)
  --dut-core N     the switch's polling core (default 1)
  --gen-core N     the generator's core (default 0)
  -h, --help       this text
";

/// `vnfhost-bench p2p --help`.
const P2P_USAGE: &str = "\
usage: vnfhost bench p2p [options]

Forwarding benchmark: vnfhost against DPDK testpmd and OVS-DPDK, interleaved.

options:
  --duts LIST          vnfhost,testpmd-io,testpmd-mac,ovs-normal,ovs-flows
                       (default: those), and the L3 ones: vnfhost-l3,
                       vnfhost-l3-100k (100 000 routes), ovs-l3 (OpenFlow
                       mod_dl_src/dst, dec_ttl)
  --generators LIST    dpdk (testpmd io loopback on net_virtio_user ports,
                       primed with start tx_first 16),
                       vnfhost (our virtio-user generator: latency, NDR,
                       IMIX, L3); every DUT is measured with each
                       (default dpdk,vnfhost)
  --packed             both generators ask for packed virtqueues
  --frame-sizes LIST   wire sizes 64..=1518, or imix (7x64, 4x570, 1x1518)
                       (default 64,1518)
  --flows N            flows the generator cycles: source MACs (vnfhost),
                       IP addresses (dpdk) (default 1)
  --trials N           rounds per DUT and size (default 15)
  --duration S         measured seconds per trial (default 2)
  --warmup S           warm-up seconds per trial (default 1)
  --dut-cores LIST     DUT forwarding cores, e.g. 1 or 2,3 (default 1);
                       every DUT gets the same set
  --gen-core N         generator core (default 0)
  --out DIR            where results.json and results.md go (default bench-results)
  --no-hugepages       DUTs and generator on normal pages
  --ndr                also RFC 2544 NDR/PDR binary search and latency
                       p50/p99/max at 10/50/90 % of NDR
  --trial-seconds S    length of each NDR/PDR and latency trial (default 2)
  --rate PPS           offer a fixed rate in the main trials instead of
                       as fast as the DUT accepts
  --install            apt-get install the peers that are missing
  -h, --help           this text
";

/// `vnfhost-bench vm --help`.
const VM_USAGE: &str = "\
usage: vnfhost bench vm [options]

Pod VM monitor: vnfhost's kvm backend against QEMU microvm, same payload.

options:
  --trials N    start-up rounds (default 20)
  --create N    VMs per creation-rate run (default 100)
  --cpu N       CPU all VMM threads are pinned to (default 1)
  --out DIR     where vm.md goes (default bench-results)
  -h, --help    this text
";

fn main() {
    init_logging();
    let mut args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let first = args.first().and_then(|a| a.to_str()).unwrap_or("");
    let r = if matches!(first, "--help" | "-h" | "help") {
        print!("{USAGE}");
        Ok(())
    } else if first == "vm" {
        vm(args.split_off(1))
    } else if first == "churn" {
        churn(args.split_off(1))
    } else if first == "uplink" {
        uplink(args.split_off(1))
    } else if first == "tunnel" {
        tunnel(args.split_off(1))
    } else if first == "sessions" {
        sessions(args.split_off(1))
    } else if first == "pod" {
        pod(args.split_off(1))
    } else {
        parse(args).and_then(|p| match p {
            Some((c, out)) => run(&c, &out),
            None => {
                print!("{P2P_USAGE}");
                Ok(())
            }
        })
    };
    if let Err(e) = r {
        eprintln!("vnfhost-bench: {e}");
        std::process::exit(2);
    }
}

/// Logs of the harness's libraries (pmd's ports) to stderr, filtered by `VNFHOST_LOG`
/// (default `info`), as `vnfhost` logs.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("VNFHOST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}

/// The `vnfhost` binary the DUTs and VMs run: the one beside this executable.
fn vnfhost() -> Result<PathBuf, String> {
    let me = std::env::current_exe().map_err(|e| format!("bench: own binary: {e}"))?;
    Ok(me.with_file_name("vnfhost"))
}

/// Parses `vnfhost bench p2p [options]`; `None` for `--help`.
pub fn parse(args: Vec<OsString>) -> Result<Option<(P2pConfig, PathBuf)>, String> {
    use lexopt::Arg::*;
    let mut p = lexopt::Parser::from_args(args);
    match p.next().map_err(|e| e.to_string())? {
        Some(Value(v)) if v == "p2p" => {}
        Some(other) => {
            return Err(format!(
                "bench: {}: expected `vnfhost bench p2p` or `vnfhost bench vm`\n{USAGE}",
                other.unexpected()
            ))
        }
        None => {
            return Err(format!(
                "bench: expected `vnfhost bench p2p` or `vnfhost bench vm`\n{USAGE}"
            ))
        }
    }
    let exe = vnfhost()?;
    let mut cfg = P2pConfig {
        generators: vec![GenKind::Dpdk, GenKind::Vnfhost],
        packed: false,
        duts: DutKind::L2.to_vec(),
        frame_sizes: vec![64, 1518],
        trials: 15,
        duration: Duration::from_secs(2),
        warmup: Duration::from_secs(1),
        dut_cores: vec![1],
        gen_core: 0,
        dir: std::env::temp_dir().join(format!("vnfhost-bench-{}", std::process::id())),
        vnfhost: exe,
        hugepages: true,
        ring_size: 1024,
        ndr: None,
        flows: 1,
        rate: None,
    };
    let mut install = false;
    let mut out = PathBuf::from("bench-results");
    let num = |s: String, f: &str| {
        s.parse::<u64>()
            .map_err(|_| format!("{f}: {s:?} is not a number"))
    };
    while let Some(arg) = p.next().map_err(|e| e.to_string())? {
        let key = match arg {
            Long(k) => k.to_string(),
            Short('h') => return Ok(None),
            other => return Err(format!("bench p2p: {} (see --help)", other.unexpected())),
        };
        let mut val = |f: &str| -> Result<String, String> {
            p.value()
                .map_err(|e| format!("{f}: {e}"))?
                .into_string()
                .map_err(|_| format!("{f}: not UTF-8"))
        };
        match key.as_str() {
            "duts" => {
                cfg.duts = val("--duts")?
                    .split(',')
                    .map(|d| {
                        DutKind::parse(d).ok_or(format!(
                            "--duts: unknown DUT {d:?} (vnfhost, testpmd-io, testpmd-mac, ovs-normal, ovs-flows)"
                        ))
                    })
                    .collect::<Result<_, _>>()?
            }
            "generators" => {
                cfg.generators = val("--generators")?
                    .split(',')
                    .map(|g| {
                        GenKind::parse(g)
                            .ok_or(format!("--generators: unknown generator {g:?} (dpdk, vnfhost)"))
                    })
                    .collect::<Result<_, _>>()?
            }
            "packed" => cfg.packed = true,
            "frame-sizes" => {
                cfg.frame_sizes = val("--frame-sizes")?
                    .split(',')
                    .map(|s| match s.parse::<usize>() {
                        Ok(n) if (64..=1518).contains(&n) => Ok(n),
                        _ if s.eq_ignore_ascii_case("imix") => Ok(perf::gen::IMIX),
                        _ => Err(format!("--frame-sizes: {s:?} is neither 64..=1518 nor imix")),
                    })
                    .collect::<Result<_, _>>()?
            }
            "trials" => cfg.trials = num(val("--trials")?, "--trials")?.clamp(1, 100) as u32,
            "duration" => {
                cfg.duration = Duration::from_secs(num(val("--duration")?, "--duration")?.max(1))
            }
            "warmup" => cfg.warmup = Duration::from_secs(num(val("--warmup")?, "--warmup")?),
            "dut-core" | "dut-cores" => {
                let v = val("--dut-cores")?;
                cfg.dut_cores = pmd::sched::parse_cpu_list(&v)
                    .map_err(|e| format!("--dut-cores: {e}"))?
            }
            "gen-core" => cfg.gen_core = num(val("--gen-core")?, "--gen-core")? as usize,
            "out" => out = PathBuf::from(val("--out")?),
            "no-hugepages" => cfg.hugepages = false,
            "ndr" => cfg.ndr = Some(cfg.ndr.unwrap_or_default()),
            "trial-seconds" => {
                let t = Duration::from_secs(num(val("--trial-seconds")?, "--trial-seconds")?.max(1));
                cfg.ndr = Some(perf::ndr::NdrConfig { trial: t, ..cfg.ndr.unwrap_or_default() });
            }
            "rate" => {
                let r = num(val("--rate")?, "--rate")?;
                if r == 0 {
                    return Err("--rate: must be above 0 frames/s".into());
                }
                cfg.rate = Some(r as f64);
            }
            "install" => install = true,
            "help" => return Ok(None),
            "flows" => cfg.flows = num(val("--flows")?, "--flows")?.clamp(1, 1 << 20) as u32,
            other => return Err(format!("bench p2p: unknown option --{other} (see --help)")),
        }
    }
    let online = pmd::sched::online_cpus();
    for &c in cfg.dut_cores.iter().chain([&cfg.gen_core]) {
        if c >= online {
            return Err(format!(
                "bench: CPU {c} does not exist (this machine has {online})"
            ));
        }
    }
    if cfg.dut_cores.is_empty() || cfg.dut_cores.len() > 64 {
        return Err("bench: --dut-cores takes 1 to 64 CPUs".into());
    }
    if cfg.dut_cores.contains(&cfg.gen_core) {
        return Err("bench: --gen-core must not be one of --dut-cores".into());
    }
    if install {
        install_peers(&cfg)?;
    }
    Ok(Some((cfg, out)))
}

/// Installs the Debian packages of the selected peers that are missing (`--install`).
fn install_peers(cfg: &P2pConfig) -> Result<(), String> {
    let mut pkgs: Vec<&str> = Vec::new();
    for d in &cfg.duts {
        if perf::dut::missing(*d, &cfg.vnfhost).is_none() {
            continue;
        }
        match d {
            DutKind::TestpmdIo | DutKind::TestpmdMac => {
                pkgs.extend(["dpdk-dev", "librte-net-vhost23", "librte-mempool-ring23"])
            }
            DutKind::OvsNormal
            | DutKind::OvsFlows
            | DutKind::OvsL3
            | DutKind::OvsVxlan
            | DutKind::OvsCt
            | DutKind::OvsNat => pkgs.push("openvswitch-switch-dpdk"),
            DutKind::Vnfhost
            | DutKind::VnfhostL3
            | DutKind::VnfhostL3Big
            | DutKind::VnfhostVxlan
            | DutKind::VnfhostSg
            | DutKind::VnfhostVip => {}
        }
    }
    pkgs.sort_unstable();
    pkgs.dedup();
    if pkgs.is_empty() {
        return Ok(());
    }
    eprintln!("bench: installing {}", pkgs.join(" "));
    let ok = std::process::Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&pkgs)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .map_err(|e| format!("apt-get: {e}"))?
        .success();
    if ok {
        Ok(())
    } else {
        Err(format!("apt-get install {} failed", pkgs.join(" ")))
    }
}

/// Runs the benchmark and writes `results.json` and `results.md` into `out`.
pub fn run(cfg: &P2pConfig, out: &PathBuf) -> Result<(), String> {
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    eprintln!(
        "bench p2p: DUT on core {}, generator on core {}; {} trial(s) of {:?} (+{:?} warm-up) per DUT and size",
        perf::dut::cpu_list(&cfg.dut_cores), cfg.gen_core, cfg.trials, cfg.duration, cfg.warmup
    );
    let report = p2p::run(cfg, &mut |l| eprintln!("{l}"))?;
    if std::env::var_os("VNFHOST_BENCH_KEEP").is_none() {
        let _ = std::fs::remove_dir_all(&cfg.dir);
    }
    let md = report.markdown(cfg);
    std::fs::write(out.join("results.json"), report.json()).map_err(|e| e.to_string())?;
    std::fs::write(out.join("results.md"), &md).map_err(|e| e.to_string())?;
    for &g in &cfg.generators {
        std::fs::write(
            out.join(format!("rates-{}.svg", g.name())),
            perf::plot::rates_svg(&report, cfg, g),
        )
        .map_err(|e| e.to_string())?;
    }
    if let Some(svg) = perf::plot::latency_svg(&report, cfg) {
        std::fs::write(out.join("latency-cdf.svg"), svg).map_err(|e| e.to_string())?;
    }
    println!("{md}");
    eprintln!(
        "bench p2p: wrote {}/results.{{json,md}}, rates-GENERATOR.svg and (with --ndr) latency-cdf.svg",
        out.display()
    );
    Ok(())
}

/// `vnfhost bench pod`: runs `perf/pod_bench.py` with the CRI client's venv (containerd
/// is driven over CRI from Python, as the tests drive it).
pub fn pod(args: Vec<OsString>) -> Result<(), String> {
    let cache = std::env::var_os("VNFHOST_CACHE").unwrap_or_else(|| "/var/cache/vnfhost".into());
    let python = PathBuf::from(cache).join("venv/bin/python");
    if !python.exists() {
        return Err(format!(
            "{} missing (scripts/setup.sh makes the CRI client's venv)",
            python.display()
        ));
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/pod_bench.py");
    let st = std::process::Command::new(&python)
        .arg(script)
        .args(args)
        .status()
        .map_err(|e| format!("{}: {e}", python.display()))?;
    if st.success() {
        Ok(())
    } else {
        Err(format!("pod_bench.py: {st}"))
    }
}

/// `vnfhost bench vm [--trials N] [--create N] [--cpu N] [--out DIR]`.
pub fn vm(args: Vec<OsString>) -> Result<(), String> {
    use lexopt::Arg::*;
    let exe = vnfhost()?;
    let mut cfg = perf::vmstart::VmBenchConfig {
        trials: 20,
        create: 100,
        cpu: 1.min(pmd::sched::online_cpus().saturating_sub(1)),
        vnfhost: exe,
        dir: std::env::temp_dir().join(format!("vnfhost-bench-vm-{}", std::process::id())),
    };
    let mut out = PathBuf::from("bench-results");
    let mut p = lexopt::Parser::from_args(args);
    let num = |p: &mut lexopt::Parser, f: &str| -> Result<usize, String> {
        let v = p
            .value()
            .map_err(|e| format!("{f}: {e}"))?
            .into_string()
            .map_err(|v| format!("{f}: {v:?}"))?;
        v.parse().map_err(|_| format!("{f}: {v:?} is not a number"))
    };
    while let Some(arg) = p.next().map_err(|e| e.to_string())? {
        match arg {
            Long("trials") => cfg.trials = num(&mut p, "--trials")?.max(1),
            Long("create") => cfg.create = num(&mut p, "--create")?.max(1),
            Long("cpu") => cfg.cpu = num(&mut p, "--cpu")?,
            Long("out") => out = p.value().map_err(|e| format!("--out: {e}"))?.into(),
            Long("help") | Short('h') => {
                print!("{VM_USAGE}");
                return Ok(());
            }
            other => return Err(format!("bench vm: {} (see --help)", other.unexpected())),
        }
    }
    if !cfg.vnfhost.is_file() {
        return Err(format!(
            "bench vm: {} not found (it is built with vnfhost-bench: cargo build --release)",
            cfg.vnfhost.display()
        ));
    }
    if cfg.cpu >= pmd::sched::online_cpus() {
        return Err(format!("--cpu {}: no such CPU", cfg.cpu));
    }
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    let report = perf::vmstart::run(&cfg, &mut |l| eprintln!("bench vm: {l}"));
    if std::env::var_os("VNFHOST_BENCH_KEEP").is_none() {
        let _ = std::fs::remove_dir_all(&cfg.dir);
    }
    let md = report?.markdown(&cfg);
    std::fs::write(out.join("vm.md"), &md).map_err(|e| e.to_string())?;
    println!("{md}");
    eprintln!("bench vm: wrote {}/vm.md", out.display());
    Ok(())
}

/// `vnfhost bench churn [--rate MPPS] [--changes N] [--duration S] [--trials N]
/// [--dut-core N] [--gen-core N]`: the largest gap in a flow while other ports change.
/// The `--key [value]` options of a benchmark, each handed to `f` (flags, the keys in
/// `flags`, with an empty value). `Ok(false)` after printing `usage` for `--help`.
fn each_option(
    args: Vec<OsString>,
    bench: &str,
    usage: &str,
    flags: &[&str],
    mut f: impl FnMut(&str, &str) -> Result<(), String>,
) -> Result<bool, String> {
    use lexopt::Arg::*;
    let mut p = lexopt::Parser::from_args(args);
    while let Some(arg) = p.next().map_err(|e| e.to_string())? {
        let key = match arg {
            Long(k) => k.to_string(),
            Short('h') => "help".into(),
            other => {
                return Err(format!(
                    "bench {bench}: {} (see --help)",
                    other.unexpected()
                ))
            }
        };
        if key == "help" {
            print!("{usage}");
            return Ok(false);
        }
        if flags.contains(&key.as_str()) {
            f(&key, "")?;
            continue;
        }
        let v = p
            .value()
            .map_err(|e| format!("--{key}: {e}"))?
            .into_string()
            .map_err(|_| format!("--{key}: not UTF-8"))?;
        f(&key, &v)?;
    }
    Ok(true)
}

/// `v`, the value of `--key`, as a number in `0..=max`.
fn number_in(key: &str, v: &str, max: f64) -> Result<f64, String> {
    v.parse::<f64>()
        .ok()
        .filter(|x| x.is_finite() && *x >= 0.0 && *x <= max)
        .ok_or(format!("--{key}: {v:?} is not a number in 0..={max}"))
}

fn uplink(args: Vec<OsString>) -> Result<(), String> {
    let mut cfg = perf::uplink::UplinkConfig {
        vnfhost: vnfhost()?,
        rounds: 5,
        trial: Duration::from_secs(2),
    };
    let mut out = PathBuf::from("bench-results");
    let usage = "usage: vnfhost bench uplink [--rounds N] [--seconds S] [--out DIR]\n";
    let go = each_option(args, "uplink", usage, &[], |key, v| {
        match key {
            "rounds" => cfg.rounds = number_in(key, v, 100.0)?.max(1.0) as u32,
            "seconds" => cfg.trial = Duration::from_secs_f64(number_in(key, v, 600.0)?.max(0.5)),
            "out" => out = PathBuf::from(v),
            _ => return Err(format!("bench uplink: unknown option --{key} (see --help)")),
        }
        Ok(())
    })?;
    if !go {
        return Ok(());
    }
    let md = perf::uplink::run(&cfg, &mut |l| eprintln!("{l}"))?;
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    let f = out.join("uplink.md");
    std::fs::write(&f, &md).map_err(|e| format!("{}: {e}", f.display()))?;
    print!("{md}");
    Ok(())
}

/// The options the tunnel and sessions benchmarks share: rounds, trial length, cores,
/// where the report goes.
struct Rounds {
    rounds: u32,
    warmup: u32,
    trial: Duration,
    dut_core: usize,
    gen_core: usize,
    out: PathBuf,
}

impl Rounds {
    fn new(trial: Duration) -> Rounds {
        Rounds {
            rounds: 5,
            warmup: 1,
            trial,
            dut_core: 0,
            gen_core: 1,
            out: PathBuf::from("bench-results"),
        }
    }

    /// Takes `--key v` if it is one of these; false if not.
    fn take(&mut self, key: &str, v: &str) -> Result<bool, String> {
        match key {
            "rounds" => self.rounds = number_in(key, v, 100.0)?.max(1.0) as u32,
            "warmup" => self.warmup = number_in(key, v, 100.0)? as u32,
            "seconds" => self.trial = Duration::from_secs_f64(number_in(key, v, 600.0)?.max(0.5)),
            "dut-core" => self.dut_core = number_in(key, v, 1023.0)? as usize,
            "gen-core" => self.gen_core = number_in(key, v, 1023.0)? as usize,
            "out" => self.out = PathBuf::from(v),
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Writes `md` to `OUT/name`, and prints it.
    fn report(&self, name: &str, md: &str) -> Result<(), String> {
        let out = &self.out;
        std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
        let f = out.join(name);
        std::fs::write(&f, md).map_err(|e| format!("{}: {e}", f.display()))?;
        print!("{md}");
        eprintln!("bench: wrote {}", f.display());
        Ok(())
    }
}

/// A comma-separated list of numbers in `range`, for `--what`.
fn list_in<T: std::str::FromStr + PartialOrd + std::fmt::Debug>(
    what: &str,
    v: &str,
    range: std::ops::RangeInclusive<T>,
) -> Result<Vec<T>, String> {
    v.split(',')
        .map(|f| match f.trim().parse::<T>() {
            Ok(n) if range.contains(&n) => Ok(n),
            _ => Err(format!(
                "--{what}: {f:?} is not in {:?}..={:?}",
                range.start(),
                range.end()
            )),
        })
        .collect()
}

fn tunnel(args: Vec<OsString>) -> Result<(), String> {
    let mut r = Rounds::new(Duration::from_secs(2));
    let mut frame_sizes = vec![64, 1518];
    // OVS-DPDK's EAL refuses to start without them (--no-huge with --in-memory).
    let mut hugepages = true;
    let go = each_option(args, "tunnel", TUNNEL_USAGE, &["no-hugepages"], |key, v| {
        if r.take(key, v)? {
            return Ok(());
        }
        match key {
            "no-hugepages" => hugepages = false,
            "frames" => frame_sizes = list_in("frames", v, 64..=1518)?,
            _ => return Err(format!("bench tunnel: unknown option --{key} (see --help)")),
        }
        Ok(())
    })?;
    if !go {
        return Ok(());
    }
    let cfg = perf::tunnel::TunnelConfig {
        vnfhost: vnfhost()?,
        dut_core: r.dut_core,
        gen_core: r.gen_core,
        frame_sizes,
        rounds: r.rounds,
        warmup: r.warmup,
        trial: r.trial,
        dir: std::env::temp_dir().join(format!("vnfhost-tunnel-{}", std::process::id())),
        hugepages,
    };
    let rep = perf::tunnel::run(&cfg, &mut |l| eprintln!("{l}"))?;
    r.report("tunnel.md", &rep.markdown(&cfg))?;
    let _ = std::fs::remove_dir_all(&cfg.dir);
    Ok(())
}

fn sessions(args: Vec<OsString>) -> Result<(), String> {
    let mut r = Rounds::new(Duration::from_secs(1));
    let (mut flows, mut new) = (vec![10, 100_000], true);
    let go = each_option(args, "sessions", SESSIONS_USAGE, &["no-new"], |key, v| {
        if r.take(key, v)? {
            return Ok(());
        }
        match key {
            "no-new" => new = false,
            "flows" => flows = list_in("flows", v, 1..=1_000_000)?,
            _ => {
                return Err(format!(
                    "bench sessions: unknown option --{key} (see --help)"
                ))
            }
        }
        Ok(())
    })?;
    if !go {
        return Ok(());
    }
    let cfg = perf::sessions::SessionsConfig {
        vnfhost: vnfhost()?,
        dut_core: r.dut_core,
        gen_core: r.gen_core,
        flows,
        new,
        rounds: r.rounds,
        warmup: r.warmup,
        trial: r.trial,
        dir: std::env::temp_dir().join(format!("vnfhost-sessions-{}", std::process::id())),
        hugepages: true,
    };
    let rep = perf::sessions::run(&cfg, &mut |l| eprintln!("{l}"))?;
    r.report("sessions.md", &rep.markdown(&cfg))?;
    let _ = std::fs::remove_dir_all(&cfg.dir);
    Ok(())
}

fn churn(args: Vec<OsString>) -> Result<(), String> {
    use lexopt::Arg::*;
    let mut cfg = perf::churn::ChurnConfig {
        vnfhost: vnfhost()?,
        dut_core: 1,
        gen_core: 0,
        rate: 1e6,
        changes: 100,
        duration: Duration::from_secs(5),
        trials: 5,
        frame_len: 60,
        dir: std::env::temp_dir().join(format!("vnfhost-churn-{}", std::process::id())),
    };
    let mut p = lexopt::Parser::from_args(args);
    while let Some(arg) = p.next().map_err(|e| e.to_string())? {
        let key = match arg {
            Long(k) => k.to_string(),
            Short('h') => "help".into(),
            other => return Err(format!("bench churn: {} (see --help)", other.unexpected())),
        };
        let mut val = |f: &str| -> Result<f64, String> {
            let v = p
                .value()
                .map_err(|e| format!("{f}: {e}"))?
                .into_string()
                .map_err(|_| format!("{f}: not UTF-8"))?;
            v.parse::<f64>()
                .ok()
                .filter(|x| x.is_finite() && *x >= 0.0)
                .ok_or(format!("{f}: {v:?} is not a number"))
        };
        match key.as_str() {
            "rate" => cfg.rate = val("--rate")?.clamp(0.001, 100.0) * 1e6,
            "changes" => cfg.changes = val("--changes")?.min(100_000.0) as u32,
            "duration" => {
                cfg.duration = Duration::from_secs_f64(val("--duration")?.clamp(1.0, 600.0))
            }
            "trials" => cfg.trials = val("--trials")?.clamp(1.0, 100.0) as u32,
            "dut-core" => cfg.dut_core = val("--dut-core")? as usize,
            "gen-core" => cfg.gen_core = val("--gen-core")? as usize,
            "help" => {
                print!("{CHURN_USAGE}");
                return Ok(());
            }
            _ => return Err(format!("bench churn: unknown option --{key} (see --help)")),
        }
    }
    perf::churn::run(&cfg)
}
