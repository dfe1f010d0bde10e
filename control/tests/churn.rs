//! Live changes as a tenant notices them, with a real daemon, switch, `vnfhost-cni` and
//! network namespaces as pods:
//!
//! - **churn:** tenant A's pods ping each other across A's router at 100 pps while a
//!   pod of tenant B is attached and detached 100 times; A loses nothing and its router
//!   never has to resolve its neighbours again;
//! - **a port that cannot open:** after the switch dies, a vhost-user attachment's
//!   socket path is taken by another listener; the restarted switch forwards for every
//!   other pod at once, reports the broken port with its reason, the next CNI ADD
//!   succeeds, and the port opens once the path is free again;
//! - **a stuck switch:** a switch that stops (SIGSTOP) is restarted by the daemon and
//!   the pods forward again.

mod common;

use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::cni::{addr, cni, conf, daemon, status, up, Netns};
use serde_json::Value;

const TOPOLOGY: &str = r#"
switch: { cores: [1] }
networks:
  - { name: net-a, tenant: ta, cidrs: [10.0.0.0/24], vlan: 10, gateway: [10.0.0.254] }
  - { name: net-b, tenant: ta, cidrs: [10.0.1.0/24], vlan: 20, gateway: [10.0.1.254] }
  - { name: net-x, tenant: tb, cidrs: [10.9.0.0/24], vlan: 30, gateway: [10.9.0.254] }
routers:
  - { name: ra, tenant: ta, networks: [net-a, net-b] }
"#;

fn unresolved(s: &Value) -> u64 {
    s["router_drops"]["unresolved"].as_u64().unwrap_or(0)
}

fn ping_ok(from: &Netns, to: &str) -> bool {
    (0..3).any(|_| from.ping(to).status.success())
}

#[test]
fn a_tenant_loses_nothing_while_another_tenants_pods_come_and_go() {
    let _g = common::serial();
    let dir = common::TestDir::new("churn").unwrap();
    let run = dir.path();
    let d = daemon(run);
    let api = d.1.clone();
    up(run, &api, TOPOLOGY);
    let tag = std::process::id();
    let (na, nb, nx) = (
        Netns::new(format!("vnfc{tag}-a")),
        Netns::new(format!("vnfc{tag}-b")),
        Netns::new(format!("vnfc{tag}-x")),
    );
    let (ok, va, _) = cni("ADD", "a", &na.path(), &conf("net-a", "1.0.0", &api), &api);
    assert!(ok, "{va}");
    let (ok, vb, _) = cni("ADD", "b", &nb.path(), &conf("net-b", "1.0.0", &api), &api);
    assert!(ok, "{vb}");
    let to_b = addr(&vb);
    assert!(ping_ok(&na, &to_b), "A's pods across A's router");
    // Counters reach the status within two seconds: a polling core publishes them every
    // 4096 polls (under a second when idle), the daemon samples them every second.
    let publish = Duration::from_millis(2500);
    std::thread::sleep(publish);
    let before = status(&api);

    // 100 pps across the router, in the background.
    let ping = Command::new("ip")
        .args([
            "netns", "exec", &na.0, "busybox", "ping", "-q", "-i", "0.01",
        ])
        .args(["-w", "600", &to_b])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let x = conf("net-x", "1.0.0", &api);
    let t = Instant::now();
    for k in 0..100 {
        let id = format!("x{k}");
        let (ok, v, _) = cni("ADD", &id, &nx.path(), &x, &api);
        assert!(ok, "ADD {k}: {v}");
        let (ok, v, _) = cni("DEL", &id, &nx.path(), &x, &api);
        assert!(ok, "DEL {k}: {v}");
    }
    let churn = t.elapsed();
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: kill(2) on the ping this test started; SIGINT makes it print its summary.
    unsafe { libc::kill(ping.id() as i32, libc::SIGINT) };
    let o = ping.wait_with_output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    let nums: Vec<u64> = out
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .unwrap_or_else(|| panic!("no ping summary: {out}"))
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    let (sent, got) = (nums[0], nums[1]);
    std::thread::sleep(publish);
    let after = status(&api);
    println!(
        "churn: 100 attach/detach of tenant B in {churn:?}; tenant A across its router: \
         {sent} sent, {got} received; switch generation {} → {}",
        before["switch"]["config_generation"], after["switch"]["config_generation"]
    );
    assert!(
        sent as f64 >= churn.as_secs_f64() * 50.0,
        "ping did not run at ~100 pps: {out}"
    );
    // The reply to the very last request may still be in flight when SIGINT lands.
    assert!(got + 1 >= sent, "tenant A lost packets: {out}");
    assert_eq!(
        unresolved(&after),
        unresolved(&before),
        "A's router had to resolve its neighbours again"
    );
    // Every ADD and DEL changed the running switch (at least one change per pair; how
    // many per call is the switch's business).
    let generation = |s: &Value| s["switch"]["config_generation"].as_u64().unwrap_or(0);
    assert!(
        generation(&after) >= generation(&before) + 100,
        "{before} → {after}"
    );
}

#[test]
fn a_port_that_cannot_open_is_reported_and_the_rest_forwards() {
    let _g = common::serial();
    let dir = common::TestDir::new("badport").unwrap();
    let run = dir.path();
    let d = daemon(run);
    let api = d.1.clone();
    up(run, &api, TOPOLOGY);
    let tag = std::process::id();
    let (n1, n2, n3) = (
        Netns::new(format!("vnfp{tag}-1")),
        Netns::new(format!("vnfp{tag}-2")),
        Netns::new(format!("vnfp{tag}-3")),
    );
    let c = conf("net-a", "1.1.0", &api);
    let (ok, v1, _) = cni("ADD", "p1", &n1.path(), &c, &api);
    assert!(ok, "{v1}");
    let (ok, v2, _) = cni("ADD", "p2", &n2.path(), &c, &api);
    assert!(ok, "{v2}");
    // A vhost-user attachment, as for a DPDK pod.
    let mut add = Command::new(common::cni_binary());
    add.env_clear()
        .env("CNI_COMMAND", "ADD")
        .env("CNI_CONTAINERID", "dpdk")
        .env("CNI_NETNS", n1.path())
        .env("CNI_IFNAME", "net1")
        .env("CNI_ARGS", "VNFHOST_INTERFACE=vhost-user")
        .env("VNFHOST_API", &api)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    let mut ch = add.spawn().unwrap();
    use std::io::Write;
    ch.stdin.take().unwrap().write_all(c.as_bytes()).unwrap();
    let o = ch.wait_with_output().unwrap();
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(o.status.success(), "{v}");
    let sock = v["interfaces"][0]["socketPath"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(ping_ok(&n1, &addr(&v2)));

    // The switch dies; before the daemon restarts it, another process takes the socket.
    let old = status(&api)["switch"]["pid"].as_i64().unwrap();
    // SAFETY: kill(2) on the switch this test's daemon started.
    unsafe { libc::kill(old as i32, libc::SIGKILL) };
    let _ = std::fs::remove_file(&sock);
    let squatter = UnixListener::bind(&sock).expect("bind the attachment's socket path");
    let t = Instant::now();
    // The attachment's port: the one whose error names its socket.
    let failed_port = |s: &Value| -> Option<String> {
        s["ports"]
            .as_array()?
            .iter()
            .find(|p| {
                p["counters"]["state"] == "failed"
                    && p["counters"]["error"]
                        .as_str()
                        .is_some_and(|e| e.contains(&sock) && e.contains("serves"))
            })
            .and_then(|p| p["name"].as_str().map(String::from))
    };
    let name = loop {
        let s = status(&api);
        let restarted = s["switch"]["running"].as_bool() == Some(true)
            && s["switch"]["pid"].as_i64() != Some(old);
        if let Some(n) = failed_port(&s).filter(|_| restarted) {
            break n;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "the broken port was not reported: {s}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    // Every other port forwards again within seconds.
    let t = Instant::now();
    while !ping_ok(&n1, &addr(&v2)) {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "p1 to p2 after restart"
        );
    }
    let text = Command::new(env!("CARGO_BIN_EXE_vnfhost"))
        .args(["status", "--api", &api])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&text.stdout).contains("FAIL"),
        "{text:?}"
    );
    // The next ADD succeeds.
    let (ok, v3, _) = cni("ADD", "p3", &n3.path(), &c, &api);
    assert!(ok, "{v3}");
    assert!(ping_ok(&n3, &addr(&v1)));
    // Once the path is free, the switch opens the port on its own.
    drop(squatter);
    let _ = std::fs::remove_file(&sock);
    let t = Instant::now();
    let state = |s: &Value| -> Value {
        s["ports"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["name"] == name.as_str()))
            .map(|p| p["counters"]["state"].clone())
            .unwrap_or(Value::Null)
    };
    while state(&status(&api)) != "down" {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "the port was not retried: {}",
            status(&api)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(Path::new(&sock).exists());
}

/// A switch that stops forwarding is restarted by the daemon. The switch process is
/// stopped (SIGSTOP), the strongest form of "stuck": no core polls and its control
/// socket does not answer. (A single stuck polling core is reported by the switch
/// itself and restarts it the same way; vswitch's `live` tests cover that report.)
#[test]
fn a_switch_that_stops_answering_is_restarted_and_pods_forward_again() {
    let _g = common::serial();
    let dir = common::TestDir::new("stuck").unwrap();
    let run = dir.path();
    let d = daemon(run);
    let api = d.1.clone();
    up(run, &api, TOPOLOGY);
    let tag = std::process::id();
    let (n1, n2) = (
        Netns::new(format!("vnfs{tag}-1")),
        Netns::new(format!("vnfs{tag}-2")),
    );
    let a = conf("net-a", "1.0.0", &api);
    let (ok, v1, _) = cni("ADD", "s1", &n1.path(), &a, &api);
    assert!(ok, "{v1}");
    let (ok, v2, _) = cni("ADD", "s2", &n2.path(), &a, &api);
    assert!(ok, "{v2}");
    let to2 = addr(&v2);
    assert!(ping_ok(&n1, &to2), "pods of one network before the stop");
    let pid = status(&api)["switch"]["pid"].as_i64().expect("switch pid") as i32;
    // SAFETY: kill(2) on the switch the daemon this test started runs.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    let t = Instant::now();
    loop {
        let s = status(&api);
        let now = s["switch"]["pid"].as_i64().unwrap_or(0) as i32;
        if now != 0 && now != pid && s["switch"]["running"] == true {
            let events = s["events"].to_string();
            assert!(events.contains("switch is stuck"), "{events}");
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(40),
            "the stopped switch was not restarted: {s}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    println!("stopped switch replaced in {:?}", t.elapsed());
    let t = Instant::now();
    while !n1.ping(&to2).status.success() {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "pods do not forward after the restart"
        );
    }
    // The old process is gone (or a zombie awaiting its reaper), not left stopped.
    assert!(
        !alive_not_zombie(pid),
        "the stopped switch {pid} still exists"
    );
}

fn alive_not_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
}
