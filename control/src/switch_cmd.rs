//! `vnfhost switch`: the switch in the foreground until SIGINT or SIGTERM.

use std::sync::Arc;
use std::time::{Duration, Instant};

use std::sync::atomic::AtomicBool;
use std::sync::Mutex;

use pmd::port::{PortDrop, PortStats};
use pmd::sched::Backoff;
use vswitch::service::managed::Managed;
use vswitch::switch::{Switch, SwitchConfig};

use crate::cli::SwitchArgs;

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
    loop {
        if let Some(sig) = wait_signal(&sigs, Duration::from_secs(1)) {
            tracing::info!("signal {sig}: stopping");
            break;
        }
        if a.stats {
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
    }
}
