//! Argument parsing for `vnfhost` and dispatch to the subcommands.

use std::ffi::OsString;
use std::time::Duration;

use vswitch::service::args::{parse_port, parse_route, parse_router_if, parse_security_group};

const USAGE: &str = "\
usage: vnfhost <command> [options]

commands:
  switch   run the switch in the foreground
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
  bench p2p  forwarding benchmark: vnfhost against DPDK testpmd and OVS-DPDK, interleaved
             --duts LIST            vnfhost,testpmd-io,testpmd-mac,ovs-normal,ovs-flows
                                    (default: those), and the L3 ones: vnfhost-l3,
                                    vnfhost-l3-100k (100 000 routes), ovs-l3 (OpenFlow
                                    mod_dl_src/dst, dec_ttl)
             --generators LIST      dpdk (testpmd io loopback on net_virtio_user ports,
                                    primed with start tx_first 16),
                                    vnfhost (our virtio-user generator: latency, NDR,
                                    IMIX, L3); every DUT is measured with each
                                    (default dpdk,vnfhost)
             --packed               both generators ask for packed virtqueues
             --frame-sizes LIST     wire sizes 64..=1518, or imix (7x64, 4x570, 1x1518)
                                    (default 64,1518)
             --flows N              flows the generator cycles: source MACs (vnfhost),
                                    IP addresses (dpdk) (default 1)
             --trials N             rounds per DUT and size (default 15)
             --duration S           measured seconds per trial (default 2)
             --warmup S             warm-up seconds per trial (default 1)
             --dut-cores LIST       DUT forwarding cores, e.g. 1 or 2,3 (default 1);
                                    every DUT gets the same set
             --gen-core N           generator core (default 0)
             --out DIR              where results.json and results.md go (default bench-results)
             --no-hugepages         DUTs and generator on normal pages
             --ndr                  also RFC 2544 NDR/PDR binary search and latency
                                    p50/p99/max at 10/50/90 % of NDR
             --trial-seconds S      length of each NDR/PDR and latency trial (default 2)
             --rate PPS             offer a fixed rate in the main trials instead of
                                    as fast as the DUT accepts
             --install              apt-get install the peers that are missing
  bench vm   pod VM monitor: vnfhost's kvm backend against QEMU microvm, same payload
             --trials N             start-up rounds (default 20)
             --create N             VMs per creation-rate run (default 100)
             --cpu N                CPU all VMM threads are pinned to (default 1)
             --out DIR              where vm.md goes (default bench-results)
  vm run   run a pod VM in the foreground; its serial console is stdout
             --hypervisor H         auto (default: kvm with vmx/svm, else qemu), kvm, qemu
             --kernel PATH          ELF (vmlinux, or with a PVH note) or bzImage
             --initrd PATH          initramfs
             --cmdline STR          kernel command line (default: console=ttyS0 reboot=k ...)
             --append STR           words added to the command line, e.g. vnf.ip=10.0.0.1/24
             --mem SIZE             guest RAM, e.g. 256M (default 128M)
             --vcpus N              virtual CPUs (default 1)
             --cpus LIST            host CPUs to pin the vCPUs to, e.g. 1 or 0-1
             --hugepages            guest RAM on 2 MiB huge pages
             --prealloc             allocate all guest RAM before the guest starts
             --pit                  emulate the legacy 8254 timer (kvm; off: Linux uses the
                                    LAPIC timer and kvm-clock)
             --net SPEC             repeatable; SPEC is vhost-user=PATH[,client][,mac=MAC]
                                    [,packed]: the VM listens on PATH (pair with the
                                    switch's `,client` port), or with `client` connects
                                    to it; `packed` offers packed virtqueues (qemu only)
             --console FILE         write the console to FILE (kvm only)
           exits 0 when the guest powers off or resets, 1 when it dies
  vm payload NAME --out FILE
           write a built-in guest payload (hello, idle, echo, poweroff, net, fault) used by tests and benchmarks
  daemon   run the daemon in the foreground: it owns the desired topology, starts the
           switch and the pods as processes of their own, keeps them running and serves
           the API (HTTP/JSON /v1 on RUN/api.sock, mode 0660: root and group vnfhost).
           Stopping it leaves the switch and the pods running; a new daemon adopts them.
             --run-dir DIR          sockets, logs, state (default /run/vnfhost,
                                    or VNFHOST_RUN_DIR)
             --group NAME           group allowed on the API socket (default vnfhost,
                                    if it exists)
             --metrics ADDR:PORT    also serve Prometheus GET /metrics over TCP
  up FILE  apply a topology.yaml (docs/topology.md) through the daemon: only what changed
           is changed; a failure rolls back to the previous state
             --api SOCK             the daemon's socket (default /run/vnfhost/api.sock,
                                    or VNFHOST_API)
  up --check FILE
           check a topology.yaml against its schema and this host (CPUs, huge pages)
           without changing anything; lists every problem with its file, line or
           field path
  down     stop the pods and the switch and remove what they left (--api SOCK)
  status   pods, ports with rates, drops by reason, router and polling-core load
             --watch, -w            refresh every second
             --json                 the API's JSON (one line per refresh with --watch)
             --events               also the daemon's recent events
             --api SOCK
  help     this text
";

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
pub fn parse_switch(args: Vec<OsString>) -> Result<SwitchArgs, String> {
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
            other => return Err(format!("switch: {}", other.unexpected())),
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
    Ok(a)
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
    let r = match cmd.as_str() {
        "switch" => parse_switch(rest).and_then(|a| crate::switch_cmd::run(&a)),
        "help" | "--help" | "-h" => {
            print!("{USAGE}");
            Ok(())
        }
        "bench" => bench(rest),
        "vm" => {
            let sub = rest
                .first()
                .and_then(|s| s.to_str())
                .unwrap_or("")
                .to_string();
            let args = rest.into_iter().skip(1).collect();
            let r = match sub.as_str() {
                "run" => crate::vm_cmd::parse_run(args).and_then(crate::vm_cmd::run),
                "payload" => crate::vm_cmd::payload(args),
                _ => Err(format!("vm: expected `vm run` or `vm payload`\n{USAGE}")),
            };
            match r {
                Ok(code) => return code,
                Err(e) => Err(e),
            }
        }
        "up" if rest.first().is_some_and(|a| a == "--check") => {
            match rest.get(1).filter(|_| rest.len() == 2) {
                Some(f) => check_topology(std::path::Path::new(f)),
                None => Err("up --check: give exactly one topology file".into()),
            }
        }
        "up" => crate::ctl_cmd::up(rest),
        "down" => crate::ctl_cmd::down(rest),
        "status" => crate::ctl_cmd::status(rest),
        "daemon" => crate::ctl_cmd::parse_daemon(rest).and_then(|a| crate::daemon::run(&a)),
        "" => Err(format!("no command given\n{USAGE}")),
        other => Err(format!("unknown command {other:?}\n{USAGE}")),
    };
    match r {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("vnfhost: {e}");
            2
        }
    }
}

/// `vnfhost bench ARGS…`: runs `vnfhost-bench ARGS…` in this process's place. The
/// benchmark harness is a binary of its own (package `perf`) beside this one, so that the
/// node binary does not link it.
fn bench(args: Vec<OsString>) -> Result<(), String> {
    use std::os::unix::process::CommandExt;
    let me = std::env::current_exe().map_err(|e| format!("bench: own executable: {e}"))?;
    let bench = me.with_file_name("vnfhost-bench");
    if !bench.is_file() {
        return Err(format!(
            "bench: {} not found: the benchmark harness is its own binary, built beside \
             vnfhost by `cargo build --release` (or `cargo build --release -p perf`)",
            bench.display()
        ));
    }
    let e = std::process::Command::new(&bench).args(args).exec();
    Err(format!("bench: {}: {e}", bench.display()))
}

fn check_topology(path: &std::path::Path) -> Result<(), String> {
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
        let a = parse_switch(args(
            "--core 0 --port p0,vhost-user=/a --port p1,vhost-user=/b,client --stats",
        ))
        .expect("valid");
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
}
