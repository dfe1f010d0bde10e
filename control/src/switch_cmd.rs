//! `vnfhost switch`: the switch in the foreground until SIGINT or SIGTERM.

use std::sync::Arc;
use std::time::{Duration, Instant};

use std::sync::atomic::AtomicBool;
use std::sync::Mutex;

use pmd::port::{PortDrop, PortStats};
use pmd::sched::Backoff;
use vswitch::service::managed::Managed;
use vswitch::switch::{Switch, SwitchConfig};

use std::ffi::OsString;

use vswitch::service::args::{
    parse_port, parse_route, parse_router_if, parse_security_group, parse_service, parse_uplink,
};

use crate::args::{number, unexpected, value, Parsed};

/// Blocks SIGINT and SIGTERM in this thread (and the threads it starts later), so they
/// can be taken synchronously with `sigtimedwait`.
pub fn block_signals() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset/sigaddset initialise it, and
    // pthread_sigmask only changes this thread's mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

/// Waits up to `t` for a blocked signal of `set`; returns it.
pub fn wait_signal(set: &libc::sigset_t, t: Duration) -> Option<i32> {
    let ts = libc::timespec {
        tv_sec: t.as_secs() as libc::time_t,
        tv_nsec: t.subsec_nanos() as libc::c_long,
    };
    // SAFETY: set and ts are valid for the call; no siginfo is asked for.
    let r = unsafe { libc::sigtimedwait(set, std::ptr::null_mut(), &ts) };
    (r > 0).then_some(r)
}

fn print_rates(sw: &Switch, prev: &mut Vec<PortStats>, dt: f64) {
    let st = sw.stats();
    let mut line = String::new();
    for (i, (name, s)) in st.ports.iter().enumerate() {
        let p = prev.get(i).copied().unwrap_or_default();
        let rate = |a: u64, b: u64| (a.saturating_sub(b)) as f64 / dt;
        line.push_str(&format!(
            "{name}: rx {:.0} pps tx {:.0} pps drop {} | ",
            rate(s.rx_packets, p.rx_packets),
            rate(s.tx_packets, p.tx_packets),
            s.total_drops()
        ));
    }
    let bridge = nonzero(&st.drops);
    line.push_str(&format!("floods {} bridge drops [{bridge}]", st.floods));
    println!("{line}");
    *prev = st.ports.into_iter().map(|(_, s)| s).collect();
}

/// `reason=count` for every non-zero counter, space-separated.
pub fn nonzero(counts: &[(&str, u64)]) -> String {
    let v: Vec<String> = counts
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(r, n)| format!("{r}={n}"))
        .collect();
    v.join(" ")
}

fn print_totals(sw: &Switch, a_router: bool) {
    let st = sw.stats();
    for (name, s) in &st.ports {
        let drops: Vec<(&str, u64)> = PortDrop::ALL
            .iter()
            .map(|d| (d.as_str(), s.drops[*d as usize]))
            .collect();
        let drops = nonzero(&drops);
        println!(
            "port {name}: rx {} frames {} bytes, tx {} frames {} bytes, drops [{drops}]",
            s.rx_packets, s.rx_bytes, s.tx_packets, s.tx_bytes,
        );
    }
    let bridge = nonzero(&st.drops);
    println!("bridge: floods {}, drops [{bridge}]", st.floods);
    if a_router {
        println!(
            "router: routed {}, generated {}, drops [{}]",
            st.routed,
            st.router_generated,
            nonzero(&st.route_drops)
        );
    }
    for (i, c) in st.cores.iter().enumerate() {
        let cpp = c
            .cycles_per_packet
            .map(|x| format!("{x:.0}"))
            .unwrap_or_else(|| "-".into());
        let busy = 100.0 * c.busy_polls as f64 / (c.busy_polls + c.idle_polls).max(1) as f64;
        println!(
            "core {i}: {} packets, {cpp} cycles/packet on busy polls, {busy:.1}% of polls busy",
            c.packets
        );
    }
}

/// Runs the switch until SIGINT or SIGTERM. With options, the spec they describe is
/// applied as the daemon's would be; with `--control SOCK`, the daemon sends it.
pub fn run(a: &SwitchArgs) -> Result<(), String> {
    let sigs = block_signals();
    let cfg = config(a);
    let mut m = Managed::new(&cfg, a.hugepages).map_err(|e| e.to_string())?;
    // The polling threads are pinned; everything started from here on (control socket,
    // retries, the ports' vhost-user protocol threads) stays off their cores.
    if !a.cores.is_empty() && !pmd::sched::keep_off(&a.cores) {
        tracing::warn!(
            "control threads may run on the polling cores {:?} (no other CPU)",
            a.cores
        );
    }
    // The options' spec, through the same path the daemon's takes.
    let reply = m.apply(a.spec.clone())?;
    if !reply.failed.is_empty() {
        let why: Vec<String> = reply.failed.iter().map(|f| f.error.clone()).collect();
        return Err(why.join("; "));
    }
    if let Some(sock) = &a.control {
        return run_managed(a, m, sock, &sigs);
    }
    let names: Vec<&str> = a.spec.ports.iter().map(|p| p.name.as_str()).collect();
    tracing::info!(
        "switch running: ports [{}] on cores {}; SIGINT or SIGTERM stops it",
        names.join(", "),
        cores_text(a)
    );
    let mut prev = Vec::new();
    let mut last = Instant::now();
    let mut ticks = 0u32;
    loop {
        if let Some(sig) = wait_signal(&sigs, Duration::from_millis(500)) {
            tracing::info!("signal {sig}: stopping");
            break;
        }
        // As the daemon's switch does: the uplink and ports that fail are opened again,
        // tunnels' next hops follow the kernel's tables.
        m.retry();
        ticks += 1;
        if a.stats && ticks.is_multiple_of(2) {
            let now = Instant::now();
            print_rates(
                m.switch(),
                &mut prev,
                now.duration_since(last).as_secs_f64(),
            );
            last = now;
        }
    }
    // Stop the polling cores first (their last counters are published as they stop),
    // then print, then close the ports (connections and server sockets).
    let routers = !m.switch().routers().is_empty();
    m.shutdown();
    print_totals(m.switch(), routers);
    Ok(())
}

fn cores_text(a: &SwitchArgs) -> String {
    if a.cores.is_empty() {
        "unpinned".to_string()
    } else {
        format!("{:?}", a.cores)
    }
}

/// `vnfhost switch --control SOCK`: the daemon's switch.
fn run_managed(
    a: &SwitchArgs,
    m: Managed,
    sock: &std::path::Path,
    sigs: &libc::sigset_t,
) -> Result<(), String> {
    let m = Arc::new(Mutex::new(m));
    let stop = Arc::new(AtomicBool::new(false));
    vswitch::service::control::serve(sock, m.clone(), stop.clone())?;
    tracing::info!(
        "switch running on cores {}, configured through {}; SIGINT or SIGTERM stops it",
        cores_text(a),
        sock.display()
    );
    let sig = loop {
        if let Some(sig) = wait_signal(sigs, Duration::from_secs(3600)) {
            break sig;
        }
    };
    tracing::info!("signal {sig}: stopping");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut m = match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    };
    m.shutdown();
    let _ = std::fs::remove_file(sock);
    Ok(())
}

fn config(a: &SwitchArgs) -> SwitchConfig {
    SwitchConfig {
        cores: if a.cores.is_empty() {
            vec![None]
        } else {
            a.cores.iter().map(|c| Some(*c)).collect()
        },
        backoff: Backoff {
            max_sleep: a.idle_max,
            ..Backoff::default()
        },
        fdb_capacity: a.fdb_size,
        fdb_max_age: a.fdb_age,
        routers: Vec::new(),
        sessions: a.spec.sessions.capacity as usize,
        timeouts: Default::default(),
    }
}

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
  --uplink SPEC          the underlay VXLAN tunnels go through: IFNAME,address=ADDR
                         [,udp-port=P] (a host interface, shared with the kernel
                         through AF_PACKET), or NAME,vhost-user=PATH,address=ADDR,
                         mac=MAC,next-hop-mac=MAC[,mtu=N]; tunnels are ports
                         NAME,vxlan=REMOTE,vni=N[,vlan=VID]
  --router-if SPEC       repeatable; a router interface between VLANs:
                         vlan=VID,ip=ADDR/LEN[,ip6=ADDR/LEN][,mac=MAC]; it
                         answers ARP, neighbour solicitations and pings for
                         its addresses and routes IPv4 and IPv6 between VLANs
  --route SPEC           repeatable; a static route: PREFIX/LEN,via=ADDR
  --routes FILE          static routes, one `PREFIX/LEN via ADDR` per line
  --security-group SPEC  repeatable; NAME[,deny][,deny-egress][,stateless],RULE...
                         with RULE any, icmp, tcp[:PORTS] or udp[:PORTS], each
                         [@PREFIX/LEN] (the source); out:RULE is an egress rule
                         (its prefix the destination). A port with sg=NAME is
                         sent (deny) and sends (deny-egress) only what a rule
                         allows; ARP and ND always pass. Stateful unless
                         stateless: replies to what a rule allowed pass.
  --service SPEC         repeatable; a load-balanced VIP of the router:
                         NAME,vip=ADDR,port=P[,udp],backend=ADDR:PORT...
                         [,affinity=SECONDS]
  --sessions N           session-table capacity per polling core (default
                         131072)
  -h, --help             this text
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
            Long("uplink") => {
                if a.spec.uplink.is_some() {
                    return Err("--uplink: given twice".into());
                }
                a.spec.uplink = Some(parse_uplink(&value(&mut p, "--uplink")?)?);
            }
            Long("security-group") => {
                let g = parse_security_group(&value(&mut p, "--security-group")?)?;
                if a.spec.security_groups.iter().any(|h| h.name == g.name) {
                    return Err(format!("--security-group {}: defined twice", g.name));
                }
                a.spec.security_groups.push(g);
            }
            Long("router-if") => router_ifs.push(parse_router_if(&value(&mut p, "--router-if")?)?),
            Long("service") => a
                .spec
                .services
                .push(parse_service(&value(&mut p, "--service")?, "router")?),
            Long("sessions") => {
                a.spec.sessions.capacity = number(&value(&mut p, "--sessions")?, "--sessions")?
            }
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
