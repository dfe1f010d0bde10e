//! Argument parsing for `vnfhost` and dispatch to the subcommands.

use std::ffi::OsString;
use std::time::Duration;

use vswitch::service::args::{parse_port, parse_route, parse_router_if, parse_security_group};

/// `vnfhost --help`: the commands; each one's options are in its own `--help`.
pub const USAGE: &str = "\
usage: vnfhost <command> [options]

commands:
  switch      run the switch in the foreground
  daemon      run the daemon in the foreground: it owns the desired topology, starts the
              switch and the pods, keeps them running and serves the API
  up FILE     apply a topology.yaml through the daemon (`up --check FILE`: only check it)
  down        stop the pods and the switch and remove what they left
  status      pods, ports with rates, drops by reason, router and polling-core load
  vm run      run a pod VM in the foreground; its serial console is stdout
  vm payload  write a built-in guest payload used by tests and benchmarks
  bench       benchmarks (`bench p2p`, `bench vm`, `bench churn`), run by vnfhost-bench
  help [COMMAND]
              this text, or a command's (as `vnfhost COMMAND --help`)

`vnfhost COMMAND --help` (or -h) lists a command's options.
";

/// `vnfhost switch --help`.
pub const SWITCH_USAGE: &str = "\
usage: vnfhost switch [options]

Runs the switch in the foreground.

options:
  --core LIST            polling cores, e.g. 1 or 0,1 (default: unpinned, one core)
  --port SPEC            repeatable; SPEC is
                         NAME,vhost-user=PATH[,client][,queues=Q][,mac=MAC]
                             [,vlan=VID | ,trunk=V1-V2:V3[,native=VID]]
                             [,ip=ADDR]...  (port security: the port may send
                             only from its MAC and these addresses)
                             [,anti-spoofing=on|off]  (on: only from its MAC;
                             default on with ip=, off without)
                             [,sg=NAME]...  (--security-groups for what it is
                             sent; their union)
                         or NAME,tap=IFNAME[,netns=PATH][,vlan=...]
  --stats                print per-port rates every second
  --control SOCK         also serve a control socket (mode 0600): the
                         daemon PUTs the whole spec to /v1/config and the
                         switch applies what changed, live; GET /v1/config
                         and /v1/stats; the options above give the spec it
                         starts with (none: no ports)
  --idle-max-us N        longest idle sleep of a polling loop (0 = never sleep;
                         default 250)
  --hugepages            put packet buffers on hugepages (falls back with a warning)
  --fdb-size N           FDB entries per core (default 8192, like OVS)
  --fdb-age SECONDS      FDB entry lifetime (default 300)
  --router-if SPEC       repeatable; a router interface between VLANs:
                         vlan=VID,ip=ADDR/LEN[,ip6=ADDR/LEN][,mac=MAC]; it
                         answers ARP, neighbour solicitations and pings for
                         its addresses and routes IPv4 and IPv6 between VLANs
  --route SPEC           repeatable; a static route: PREFIX/LEN,via=ADDR
  --routes FILE          static routes, one `PREFIX/LEN via ADDR` per line
  --security-group SPEC  repeatable; NAME[,deny],RULE... with RULE any, icmp,
                         tcp[:PORTS] or udp[:PORTS], each [@PREFIX/LEN]; a port
                         with sg=NAME is sent only what a rule allows (with
                         deny; ARP and ND always pass). Stateless.
  -h, --help             this text
";

/// `vnfhost vm --help`.
const VM_USAGE: &str = "\
usage: vnfhost vm run [options]
       vnfhost vm payload NAME --out FILE

  run      run a pod VM in the foreground (`vnfhost vm run --help`)
  payload  write a built-in guest payload (`vnfhost vm payload --help`)
";

/// What a command line asks for: run with these options, or show the command's help.
#[derive(Debug)]
pub enum Parsed<T> {
    /// Run with these options.
    Run(T),
    /// `--help` or `-h`: print this text on stdout and exit 0.
    Help(&'static str),
}

/// The error for an argument a command does not take, naming it and where the options
/// are listed.
pub(crate) fn unexpected(cmd: &str, arg: lexopt::Arg) -> String {
    format!(
        "{cmd}: {} (`vnfhost {cmd} --help` lists the options)",
        arg.unexpected()
    )
}

/// Options of `vnfhost switch`.
#[derive(Clone, Debug)]
pub struct SwitchArgs {
    /// Polling cores (empty: one unpinned core).
    pub cores: Vec<usize>,
    /// Ports, routers and security groups: the spec the options describe.
    pub spec: api::switch::SwitchSpec,
    /// Print rates every second.
    pub stats: bool,
    /// Longest idle sleep.
    pub idle_max: Duration,
    /// Packet buffers on hugepages.
    pub hugepages: bool,
    /// FDB size per core.
    pub fdb_size: usize,
    /// FDB lifetime.
    pub fdb_age: Duration,
    /// `--control SOCK`: configured through this socket (by the daemon), not by options.
    pub control: Option<std::path::PathBuf>,
}

/// The value of option `flag`, as UTF-8.
pub(crate) fn value(p: &mut lexopt::Parser, flag: &str) -> Result<String, String> {
    p.value()
        .map_err(|e| format!("{flag}: {e}"))?
        .into_string()
        .map_err(|v| format!("{flag}: {v:?} is not UTF-8"))
}

fn number<T: std::str::FromStr>(s: &str, flag: &str) -> Result<T, String> {
    s.parse()
        .map_err(|_| format!("{flag}: {s:?} is not a number"))
}

/// Parses the options after `vnfhost switch`.
pub fn parse_switch(args: Vec<OsString>) -> Result<Parsed<SwitchArgs>, String> {
    use lexopt::Arg::*;
    let mut a = SwitchArgs {
        cores: Vec::new(),
        spec: api::switch::SwitchSpec::default(),
        stats: false,
        idle_max: Duration::from_micros(250),
        hugepages: false,
        fdb_size: 8192,
        fdb_age: Duration::from_secs(300),
        control: None,
    };
    let mut router_ifs = Vec::new();
    let mut routes = Vec::new();
    let mut p = lexopt::Parser::from_args(args);
    while let Some(arg) = p.next().map_err(|e| e.to_string())? {
        match arg {
            Long("core") | Long("cores") => {
                let v = value(&mut p, "--core")?;
                let cpus = pmd::sched::parse_cpu_list(&v).map_err(|e| format!("--core: {e}"))?;
                let online = pmd::sched::online_cpus();
                if let Some(bad) = cpus.iter().find(|c| **c >= online) {
                    return Err(format!(
                        "--core: CPU {bad} does not exist (this machine has {online})"
                    ));
                }
                a.cores.extend(cpus);
            }
            Long("port") => {
                let spec = parse_port(&value(&mut p, "--port")?)?;
                if a.spec.ports.iter().any(|q| q.name == spec.name) {
                    return Err(format!("--port {}: name used twice", spec.name));
                }
                a.spec.ports.push(spec);
            }
            Long("stats") => a.stats = true,
            Long("security-group") => {
                let g = parse_security_group(&value(&mut p, "--security-group")?)?;
                if a.spec.security_groups.iter().any(|h| h.name == g.name) {
                    return Err(format!("--security-group {}: defined twice", g.name));
                }
                a.spec.security_groups.push(g);
            }
            Long("router-if") => router_ifs.push(parse_router_if(&value(&mut p, "--router-if")?)?),
            Long("route") => routes.push(parse_route(&value(&mut p, "--route")?)?),
            Long("routes") => {
                let f = value(&mut p, "--routes")?;
                let text = std::fs::read_to_string(&f).map_err(|e| format!("--routes {f}: {e}"))?;
                for (n, line) in text.lines().enumerate() {
                    let line = line.trim();
                    if line.is_empty() || line.starts_with('#') {
                        continue;
                    }
                    let spec = line.replacen(" via ", ",via=", 1);
                    routes.push(
                        parse_route(&spec).map_err(|e| format!("--routes {f}:{}: {e}", n + 1))?,
                    );
                }
            }
            Long("hugepages") => a.hugepages = true,
            Long("control") => a.control = Some(value(&mut p, "--control")?.into()),
            Long("idle-max-us") => {
                a.idle_max = Duration::from_micros(number(
                    &value(&mut p, "--idle-max-us")?,
                    "--idle-max-us",
                )?)
            }
            Long("fdb-size") => a.fdb_size = number(&value(&mut p, "--fdb-size")?, "--fdb-size")?,
            Long("fdb-age") => {
                a.fdb_age = Duration::from_secs(number(&value(&mut p, "--fdb-age")?, "--fdb-age")?)
            }
            Long("help") | Short('h') => return Ok(Parsed::Help(SWITCH_USAGE)),
            other => return Err(unexpected("switch", other)),
        }
    }
    if a.control.is_none() && a.spec.ports.is_empty() {
        return Err("switch: give at least one --port".into());
    }
    a.cores.sort_unstable();
    a.cores.dedup();
    if !routes.is_empty() && router_ifs.is_empty() {
        return Err("switch: --route needs --router-if".into());
    }
    if !router_ifs.is_empty() {
        a.spec.routers.push(api::switch::RouterSpec {
            name: "router".into(),
            interfaces: router_ifs,
            routes,
        });
    }
    // Checked now, so that a bad option is refused before anything opens.
    vswitch::service::spec::check(&a.spec).map_err(|e| format!("switch: {e}"))?;
    Ok(Parsed::Run(a))
}

/// Runs `vnfhost` with `args` (without the program name); returns the exit code.
pub fn main(args: Vec<OsString>) -> i32 {
    init_logging();
    let mut it = args.into_iter();
    let cmd = it
        .next()
        .and_then(|c| c.into_string().ok())
        .unwrap_or_default();
    let rest: Vec<OsString> = it.collect();
    let ok = |r: Result<(), String>| r.map(|()| 0);
    let r = match cmd.as_str() {
        "switch" => parse_switch(rest).and_then(|p| help_or(p, |a| ok(crate::switch_cmd::run(&a)))),
        "help" | "--help" | "-h" => {
            if rest.is_empty() {
                print!("{USAGE}");
                Ok(0)
            } else {
                // `vnfhost help vm run` is `vnfhost vm run --help`.
                let mut a = rest;
                a.push("--help".into());
                return main(a);
            }
        }
        "bench" => ok(bench(rest)),
        "vm" => vm(rest),
        "up" => ok(crate::ctl_cmd::up(rest)),
        "down" => ok(crate::ctl_cmd::down(rest)),
        "status" => ok(crate::ctl_cmd::status(rest)),
        "daemon" => crate::ctl_cmd::parse_daemon(rest)
            .and_then(|p| help_or(p, |a| ok(crate::daemon::run(&a)))),
        "" => Err(format!("no command given\n{USAGE}")),
        other => Err(format!("unknown command {other:?}\n{USAGE}")),
    };
    match r {
        Ok(code) => code,
        Err(e) => {
            eprintln!("vnfhost: {e}");
            2
        }
    }
}

/// Prints the help `p` asks for (exit code 0), or runs the command with its options.
fn help_or<T>(p: Parsed<T>, run: impl FnOnce(T) -> Result<i32, String>) -> Result<i32, String> {
    match p {
        Parsed::Run(a) => run(a),
        Parsed::Help(text) => {
            print!("{text}");
            Ok(0)
        }
    }
}

/// `vnfhost vm run|payload …`.
fn vm(rest: Vec<OsString>) -> Result<i32, String> {
    let sub = rest
        .first()
        .and_then(|s| s.to_str())
        .unwrap_or("")
        .to_string();
    let args = rest.into_iter().skip(1).collect();
    match sub.as_str() {
        "run" => crate::vm_cmd::parse_run(args).and_then(|p| help_or(p, crate::vm_cmd::run)),
        "payload" => crate::vm_cmd::payload(args),
        "help" | "--help" | "-h" => {
            print!("{VM_USAGE}");
            Ok(0)
        }
        "" => Err(format!("vm: expected `vm run` or `vm payload`\n{VM_USAGE}")),
        other => Err(format!("vm: unknown subcommand {other:?}\n{VM_USAGE}")),
    }
}

/// `vnfhost bench --help` when the harness is not built (it has the real help).
const BENCH_USAGE: &str = "\
usage: vnfhost bench p2p [options]
       vnfhost bench vm [options]
       vnfhost bench churn [options]

  p2p    forwarding benchmark: vnfhost against DPDK testpmd and OVS-DPDK, interleaved
  vm     pod VM monitor: vnfhost's kvm backend against QEMU microvm, same payload
  churn  the largest gap in a flow while the switch's spec changes

The benchmarks are vnfhost-bench (package perf), a binary beside vnfhost that is not
built here: `cargo build --release -p perf`. Then `vnfhost bench p2p --help` (vm,
churn) lists a benchmark's options.
";

/// `vnfhost bench ARGS…`: runs `vnfhost-bench ARGS…` in this process's place. The
/// benchmark harness is a binary of its own (package `perf`) beside this one, so that the
/// node binary does not link it; it has the benchmarks' help too.
fn bench(args: Vec<OsString>) -> Result<(), String> {
    use std::os::unix::process::CommandExt;
    let me = std::env::current_exe().map_err(|e| format!("bench: own executable: {e}"))?;
    let bench = me.with_file_name("vnfhost-bench");
    if !bench.is_file() {
        if args.iter().any(|a| a == "--help" || a == "-h") {
            print!("{BENCH_USAGE}");
            return Ok(());
        }
        return Err(format!(
            "bench: {} not found: the benchmark harness is its own binary, built beside \
             vnfhost by `cargo build --release` (or `cargo build --release -p perf`)",
            bench.display()
        ));
    }
    let e = std::process::Command::new(&bench).args(args).exec();
    Err(format!("bench: {}: {e}", bench.display()))
}

/// `vnfhost up --check FILE`.
pub(crate) fn check_topology(path: &std::path::Path) -> Result<(), String> {
    let t = crate::topology::load(path, crate::topology::Host::current())?;
    println!(
        "{}: ok: {} network(s), {} router(s), {} security group(s), {} pod(s); switch on cores {:?}",
        path.display(),
        t.networks.len(),
        t.routers.len(),
        t.security_groups.len(),
        t.pods.len(),
        t.switch.cores
    );
    Ok(())
}

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

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<OsString> {
        s.split_whitespace().map(OsString::from).collect()
    }

    #[test]
    fn switch_options() {
        let Parsed::Run(a) = parse_switch(args(
            "--core 0 --port p0,vhost-user=/a --port p1,vhost-user=/b,client --stats",
        ))
        .expect("valid") else {
            panic!("not help")
        };
        assert_eq!(a.cores, vec![0]);
        assert_eq!(a.spec.ports.len(), 2);
        assert!(a.stats);
    }

    #[test]
    fn switch_errors() {
        assert!(parse_switch(args("--core 0"))
            .expect_err("no port")
            .contains("at least one --port"));
        assert!(parse_switch(args("--core 999 --port p,vhost-user=/a"))
            .expect_err("cpu")
            .contains("does not exist"));
        assert!(
            parse_switch(args("--port p,vhost-user=/a --port p,vhost-user=/b"))
                .expect_err("dup")
                .contains("used twice")
        );
        assert!(parse_switch(args("--port p,vhost-user=/a --bogus"))
            .expect_err("flag")
            .contains("--bogus"));
    }

    #[test]
    fn switch_help() {
        assert!(matches!(
            parse_switch(args("--port p,vhost-user=/a -h")),
            Ok(Parsed::Help(SWITCH_USAGE))
        ));
        assert!(matches!(parse_switch(args("--help")), Ok(Parsed::Help(_))));
    }
}
