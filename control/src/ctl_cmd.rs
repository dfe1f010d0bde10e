//! `vnfhost daemon`, `up`, `down` and `status`: the daemon and its command-line client.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use api::http;

use crate::args::{unexpected, value, Parsed};
use crate::daemon::{self, ApplyReply, ApplyRequest, DaemonArgs, Refusal, Status};

/// `vnfhost daemon --help`.
pub const DAEMON_USAGE: &str = "\
usage: vnfhost daemon [options]

Runs the daemon in the foreground: it owns the desired topology, starts the switch and
the pods as processes of their own, keeps them running and serves the API (HTTP/JSON /v1
on RUN/api.sock, mode 0660: root and group vnfhost). Stopping it leaves the switch and
the pods running; a new daemon adopts them.

options:
  --run-dir DIR       sockets, logs, state (default /run/vnfhost, or VNFHOST_RUN_DIR)
  --group NAME        group allowed on the API socket (default vnfhost, if it exists)
  --metrics ADDR:PORT also serve Prometheus GET /metrics over TCP
  -h, --help          this text
";

/// `vnfhost up --help`.
pub const UP_USAGE: &str = "\
usage: vnfhost up [--api SOCK] FILE
       vnfhost up --check FILE

Applies a topology.yaml (docs/topology.md) through the daemon: only what changed is
changed; a failure rolls back to the previous state. Starts the daemon when none runs.

options:
  --api SOCK    the daemon's socket (default /run/vnfhost/api.sock, or VNFHOST_API)
  --check       check FILE against its schema and this host (CPUs, huge pages) without
                changing anything; lists every problem with its file, line or field path
  -h, --help    this text
";

/// `vnfhost down --help`.
pub const DOWN_USAGE: &str = "\
usage: vnfhost down [--api SOCK]

Stops the pods and the switch and removes what they left.

options:
  --api SOCK    the daemon's socket (default /run/vnfhost/api.sock, or VNFHOST_API)
  -h, --help    this text
";

/// `vnfhost status --help`.
pub const STATUS_USAGE: &str = "\
usage: vnfhost status [options]

Pods, ports with rates, drops by reason, router and polling-core load.

options:
  -w, --watch   refresh every second
  --json        the API's JSON (one line per refresh with --watch)
  --events      also the daemon's recent events
  --api SOCK    the daemon's socket (default /run/vnfhost/api.sock, or VNFHOST_API)
  -h, --help    this text
";

/// Parses `vnfhost daemon` options.
pub fn parse_daemon(args: Vec<OsString>) -> Result<Parsed<DaemonArgs>, String> {
    use lexopt::Arg::*;
    let mut a = DaemonArgs {
        run_dir: std::env::var_os("VNFHOST_RUN_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| daemon::RUN_DIR.into()),
        group: None,
        metrics: None,
        image: crate::plan::GuestImage::from_env(),
    };
    let mut p = lexopt::Parser::from_args(args);
    while let Some(arg) = p.next().map_err(|e| e.to_string())? {
        match arg {
            Long("run-dir") => a.run_dir = value(&mut p, "--run-dir")?.into(),
            Long("group") => a.group = Some(value(&mut p, "--group")?),
            Long("metrics") => {
                let v = value(&mut p, "--metrics")?;
                a.metrics = Some(
                    v.parse()
                        .map_err(|_| format!("--metrics {v:?}: expected ADDR:PORT"))?,
                );
            }
            Long("help") | Short('h') => return Ok(Parsed::Help(DAEMON_USAGE)),
            other => return Err(unexpected("daemon", other)),
        }
    }
    // Socket paths under it go into port specs (comma-separated) and must stay under
    // the 108 bytes of a Unix socket address: RUN/pods/<24>/eth7.sock.
    let rd = a.run_dir.to_string_lossy();
    if rd.contains([',', '=']) || rd.len() > 64 {
        return Err(format!(
            "--run-dir {rd}: at most 64 bytes, without ',' or '=' (socket paths go under it)"
        ));
    }
    if !a.run_dir.is_absolute() {
        return Err(format!(
            "--run-dir {}: give an absolute path",
            a.run_dir.display()
        ));
    }
    Ok(Parsed::Run(a))
}

/// Common client options: `--api SOCK`.
struct Client {
    api: PathBuf,
}

impl Client {
    fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<(u16, Vec<u8>), String> {
        // Applying may start VMs and the switch: allow it time.
        http::call(&self.api, method, path, body, Duration::from_secs(300))
            .map_err(|e| e.to_string())
    }
}

fn error_text(body: &[u8]) -> String {
    serde_json::from_slice::<Refusal>(body)
        .map(|r| {
            let mut s = r.error;
            for p in r.problems {
                s.push_str(&format!("\n  {p}"));
            }
            s
        })
        .unwrap_or_else(|_| String::from_utf8_lossy(body).into_owned())
}

/// `vnfhost up FILE` and `vnfhost up --check FILE`.
pub fn up(args: Vec<OsString>) -> Result<(), String> {
    use lexopt::Arg::*;
    let mut api = daemon::default_api_socket();
    let mut file = None;
    let mut check = false;
    let mut p = lexopt::Parser::from_args(args);
    while let Some(arg) = p.next().map_err(|e| e.to_string())? {
        match arg {
            Long("api") => api = value(&mut p, "--api")?.into(),
            Long("check") => check = true,
            Long("help") | Short('h') => {
                print!("{UP_USAGE}");
                return Ok(());
            }
            Value(v) if file.is_none() => file = Some(PathBuf::from(v)),
            Value(_) if check => return Err("up --check: give exactly one topology file".into()),
            other => return Err(unexpected("up", other)),
        }
    }
    if check {
        let file = file.ok_or("up --check: give exactly one topology file")?;
        return check_topology(&file);
    }
    let file = file.ok_or("up: give a topology file")?;
    let file = std::fs::canonicalize(&file).unwrap_or(file);
    let text = std::fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
    let topology = crate::topology::parse(&text).map_err(|e| format!("{}:{e}", file.display()))?;
    let body = serde_json::to_vec(&ApplyRequest {
        source: Some(file.display().to_string()),
        topology,
    })
    .map_err(|e| e.to_string())?;
    if std::os::unix::net::UnixStream::connect(&api).is_err() {
        start_daemon(&api)?;
    }
    let (status, reply) = Client { api }.call("PUT", "/v1/topology", Some(&body))?;
    if status != 200 {
        let r: Result<Refusal, _> = serde_json::from_slice(&reply);
        return Err(match r {
            Ok(r) if !r.problems.is_empty() => {
                let list: Vec<String> = r
                    .problems
                    .iter()
                    .map(|p| format!("{}: {p}", file.display()))
                    .collect();
                format!("{}\n{}", list.join("\n"), r.error)
            }
            _ => format!("up {}: {}", file.display(), error_text(&reply)),
        });
    }
    let r: ApplyReply = serde_json::from_slice(&reply).map_err(|e| format!("bad reply: {e}"))?;
    if r.changes.is_empty() {
        println!(
            "{}: up to date (generation {})",
            file.display(),
            r.generation
        );
    } else {
        for c in &r.changes {
            println!("{c}");
        }
        println!("{}: applied (generation {})", file.display(), r.generation);
    }
    Ok(())
}

/// Starts `vnfhost daemon` for the API socket `api` (its run directory is the socket's
/// directory), in a session of its own, logging to `RUN/daemon.log`; waits for its API.
fn start_daemon(api: &Path) -> Result<(), String> {
    let run = api
        .parent()
        .filter(|_| api.file_name() == Some("api.sock".as_ref()))
        .ok_or_else(|| {
            format!(
                "no daemon on {} (and it is not RUN/api.sock, so one cannot be started \
                 for it): start it with `vnfhost daemon --run-dir DIR`",
                api.display()
            )
        })?;
    std::fs::create_dir_all(run).map_err(|e| format!("{}: {e}", run.display()))?;
    let log_path = run.join("daemon.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| format!("{}: {e}", log_path.display()))?;
    let mut child = crate::args::spawn_detached(
        &["daemon".as_ref(), "--run-dir".as_ref(), run.as_os_str()],
        log,
    )
    .map_err(|e| format!("starting the daemon: {e}"))?;
    let t = std::time::Instant::now();
    while std::os::unix::net::UnixStream::connect(api).is_err() {
        if let Ok(Some(st)) = child.try_wait() {
            return Err(format!(
                "the daemon exited at start ({st}); see {}",
                log_path.display()
            ));
        }
        if t.elapsed() > Duration::from_secs(10) {
            return Err(format!(
                "the daemon did not open {} within 10 s; see {}",
                api.display(),
                log_path.display()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    println!(
        "started the daemon, pid {} (log {})",
        child.id(),
        log_path.display()
    );
    Ok(())
}

/// `vnfhost down`.
pub fn down(args: Vec<OsString>) -> Result<(), String> {
    use lexopt::Arg::*;
    let mut api = daemon::default_api_socket();
    let mut p = lexopt::Parser::from_args(args);
    while let Some(arg) = p.next().map_err(|e| e.to_string())? {
        match arg {
            Long("api") => api = value(&mut p, "--api")?.into(),
            Long("help") | Short('h') => {
                print!("{DOWN_USAGE}");
                return Ok(());
            }
            other => return Err(unexpected("down", other)),
        }
    }
    let (status, reply) = Client { api }.call("DELETE", "/v1/topology", None)?;
    if status != 200 {
        return Err(format!("down: {}", error_text(&reply)));
    }
    let r: ApplyReply = serde_json::from_slice(&reply).map_err(|e| format!("bad reply: {e}"))?;
    for c in &r.changes {
        println!("{c}");
    }
    println!("down (generation {})", r.generation);
    Ok(())
}

fn fetch_status(api: &Path) -> Result<Status, String> {
    let (status, reply) = Client { api: api.into() }.call("GET", "/v1/status", None)?;
    if status != 200 {
        return Err(format!("status: {}", error_text(&reply)));
    }
    serde_json::from_slice(&reply).map_err(|e| format!("status: bad reply: {e}"))
}

fn join_counts(m: &std::collections::BTreeMap<String, u64>) -> String {
    let v: Vec<String> = m.iter().map(|(k, n)| format!("{k}={n}")).collect();
    v.join(" ")
}

/// The human form of a status.
pub fn render(s: &Status) -> String {
    let mut o = String::new();
    match (&s.source, s.applied) {
        (_, false) => {
            let _ = writeln!(o, "topology: none applied (vnfhost up FILE)");
        }
        (Some(src), true) => {
            let _ = writeln!(o, "topology: {src}, generation {}", s.generation);
        }
        (None, true) => {
            let _ = writeln!(o, "topology: generation {}", s.generation);
        }
    }
    let sw = &s.switch;
    let _ = write!(
        o,
        "switch: {}",
        if sw.running { "running" } else { "not running" }
    );
    if let Some(pid) = sw.pid.filter(|_| sw.running) {
        let _ = write!(
            o,
            ", pid {pid}, {} configurations applied (the last reached every core in {} µs)",
            sw.config_generation, sw.last_change_us
        );
    }
    o.push('\n');
    for (i, c) in sw.cores.iter().enumerate() {
        let cpu = c
            .counters
            .cpu
            .map(|c| format!("CPU {c}"))
            .unwrap_or_else(|| "unpinned".into());
        // Cycles per packet say something under load only: at a few packets per
        // second each busy poll pays for waking up.
        let cpp = c
            .counters
            .cycles_per_packet
            .filter(|_| c.pps >= 10_000.0)
            .map(|x| format!(", {x:.0} cycles/packet"))
            .unwrap_or_default();
        let stuck = if c.counters.stalled_ms >= 1000 {
            format!(
                ", STUCK: no progress for {:.1} s",
                c.counters.stalled_ms as f64 / 1000.0
            )
        } else {
            String::new()
        };
        let _ = writeln!(
            o,
            "  core {i} ({cpu}): {:.1}% of polls busy, {:.0} pps{cpp}{stuck}",
            c.busy_percent, c.pps
        );
    }
    let _ = writeln!(o, "pods:");
    let _ = writeln!(
        o,
        "  {:<16} {:<10} {:>8} {:>8}  last exit",
        "NAME", "PHASE", "PID", "RESTARTS"
    );
    for p in &s.pods {
        let phase = serde_json::to_value(p.phase)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default();
        let _ = writeln!(
            o,
            "  {:<16} {:<10} {:>8} {:>8}  {}",
            p.name,
            phase,
            p.pid.map(|x| x.to_string()).unwrap_or_else(|| "-".into()),
            p.restarts,
            p.last_exit
                .as_ref()
                .map(|e| e.to_string())
                .unwrap_or_else(|| "-".into())
        );
    }
    let _ = writeln!(o, "ports:");
    let _ = writeln!(
        o,
        "  {:<20} {:<5} {:>9} {:>9} {:>10} {:>10}  drops",
        "NAME", "LINK", "RX PPS", "TX PPS", "RX PKTS", "TX PKTS"
    );
    for p in &s.ports {
        if let Some(e) = &p.counters.error {
            let _ = writeln!(o, "  {:<20} {:<5} {e}", p.name, "FAIL");
            continue;
        }
        // A frontend that broke the protocol (refused, dropped) is worth a look.
        let proto = if p.counters.protocol_errors > 0 {
            format!(
                "  protocol errors {} in {} connections",
                p.counters.protocol_errors, p.counters.connections
            )
        } else {
            String::new()
        };
        let _ = writeln!(
            o,
            "  {:<20} {:<5} {:>9.0} {:>9.0} {:>10} {:>10}  {}{proto}",
            p.name,
            if p.up { "up" } else { "down" },
            p.rx_pps,
            p.tx_pps,
            p.counters.rx_packets,
            p.counters.tx_packets,
            join_counts(&p.counters.drops)
        );
    }
    let _ = writeln!(
        o,
        "router: routed {}, generated {}, drops [{}]",
        s.routed,
        s.router_generated,
        join_counts(&s.router_drops)
    );
    let _ = writeln!(
        o,
        "bridge: floods {}, drops [{}]",
        s.floods,
        join_counts(&s.bridge_drops)
    );
    let ss = &s.sessions;
    if ss.capacity > 0 || !s.services.is_empty() {
        let _ = writeln!(
            o,
            "sessions: {} live of {}, created {}, expired {}, removed {}, table full {}",
            ss.live, ss.capacity, ss.created, ss.expired, ss.removed, ss.table_full
        );
    }
    for v in &s.services {
        let _ = writeln!(
            o,
            "service {} {}: {} backend(s){}",
            v.name,
            v.vip,
            v.backends.len(),
            if v.no_backend > 0 {
                format!(", {} refused for want of one", v.no_backend)
            } else {
                String::new()
            }
        );
        for b in &v.backends {
            let _ = writeln!(o, "  backend {:<21} hits {}", b.backend, b.hits);
        }
    }
    if let Some(v) = &s.overlay {
        let _ = writeln!(
            o,
            "uplink: {} {} (MTU {}, pods {}){}: rx {}, tx {}, decapsulated {}, drops [{}{}{}]",
            v.interface,
            v.address,
            v.mtu,
            v.pod_mtu,
            v.error
                .as_deref()
                .map(|e| format!(" NOT OPEN: {e}"))
                .unwrap_or_default(),
            v.rx_packets,
            v.tx_packets,
            v.decapsulated,
            join_counts(&v.drops),
            if v.drops.is_empty() || v.decap_drops.is_empty() {
                ""
            } else {
                ", "
            },
            join_counts(&v.decap_drops)
        );
        for t in &v.tunnels {
            let _ = writeln!(
                o,
                "  tunnel {:<22} VNI {:<8} to {:<15} {}",
                t.port,
                t.vni,
                t.remote,
                match (&t.next_hop_mac, &t.error) {
                    (Some(m), _) => format!(
                        "via {} ({m})",
                        t.via.as_deref().unwrap_or(t.remote.as_str())
                    ),
                    (None, Some(e)) => format!("DOWN: {e}"),
                    (None, None) => "not resolved yet".into(),
                }
            );
        }
    }
    o
}

/// `vnfhost status [--watch] [--json]`.
pub fn status(args: Vec<OsString>) -> Result<(), String> {
    use lexopt::Arg::*;
    let mut api = daemon::default_api_socket();
    let (mut watch, mut json, mut events) = (false, false, false);
    let mut p = lexopt::Parser::from_args(args);
    while let Some(arg) = p.next().map_err(|e| e.to_string())? {
        match arg {
            Long("api") => api = value(&mut p, "--api")?.into(),
            Long("watch") | Short('w') => watch = true,
            Long("json") => json = true,
            Long("events") => events = true,
            Long("help") | Short('h') => {
                print!("{STATUS_USAGE}");
                return Ok(());
            }
            other => return Err(unexpected("status", other)),
        }
    }
    loop {
        let s = fetch_status(&api)?;
        if json {
            println!(
                "{}",
                if watch {
                    serde_json::to_string(&s)
                } else {
                    serde_json::to_string_pretty(&s)
                }
                .map_err(|e| e.to_string())?
            );
        } else {
            if watch {
                // Clear the screen and home the cursor, as watch(1) does.
                print!("\x1b[2J\x1b[H");
            }
            print!("{}", render(&s));
            if events {
                println!("events:");
                for e in &s.events {
                    println!("  {e}");
                }
            }
        }
        if !watch {
            return Ok(());
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// `vnfhost up --check FILE`.
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
