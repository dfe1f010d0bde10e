//! The daemon's API against hostile or careless clients, through its real socket: a
//! client sending a byte a second is cut off by the whole-request deadline; idle
//! connections past the cap get no thread, and a normal request gets through once the
//! deadline has dropped them; the run directory and `state.json` are private from their
//! creation and fixed when an older daemon left them open; a tap attachment whose
//! namespace path comes to name another namespace is dropped without anything being made
//! in the new one.

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use common::cni::{cni, conf, Netns};

/// The daemon's API deadline for a whole request (`API_REQUEST_DEADLINE`).
const DEADLINE: Duration = control::daemon::API_REQUEST_DEADLINE;

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// Threads of `pid` called `name`.
fn threads(pid: u32, name: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.flatten()
                .filter(|t| {
                    std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == name)
                })
                .count()
        })
        .unwrap_or(0)
}

/// Waits until the daemon answers on `api`.
fn wait_serving(api: &str) {
    let t = Instant::now();
    while api::http::call(
        Path::new(api),
        "GET",
        "/v1/version",
        None,
        Duration::from_secs(2),
    )
    .is_err()
    {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the daemon does not answer"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_slow_client_is_cut_off_by_the_request_deadline() {
    let dir = common::TestDir::new("loris").unwrap();
    let d = common::cni::daemon(dir.path());
    wait_serving(&d.1);
    let s = UnixStream::connect(&d.1).unwrap();
    let w = s.try_clone().unwrap();
    // One byte a second: every read of the server gets a byte long before any per-read
    // timeout; the request as a whole would take a minute.
    let req = b"PUT /v1/topology HTTP/1.1\r\nContent-Length: 40\r\nX-Pad: aaaaaaaaaaaaaa\r\n";
    let writer = std::thread::spawn(move || {
        for b in req {
            if (&w).write_all(&[*b]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    });
    s.set_read_timeout(Some(DEADLINE * 3)).unwrap();
    let t0 = Instant::now();
    let mut reply = String::new();
    let _ = (&s).read_to_string(&mut reply);
    let took = t0.elapsed();
    println!("slow client cut off after {took:?}: {reply:?}");
    assert!(
        reply.starts_with("HTTP/1.1 400") && reply.contains("deadline"),
        "{reply:?}"
    );
    assert!(
        took < DEADLINE + Duration::from_secs(5),
        "held for {took:?} (deadline {DEADLINE:?})"
    );
    drop(s);
    writer.join().unwrap();
}

#[test]
fn idle_connections_past_the_cap_get_no_thread_and_normal_requests_get_through() {
    let dir = common::TestDir::new("conncap").unwrap();
    let d = common::cni::daemon(dir.path());
    let pid = d.0.id();
    let cap = control::daemon::API_MAX_CONNECTIONS;
    wait_serving(&d.1);
    let base = threads(pid, "api-conn");
    let t0 = Instant::now();
    let idle: Vec<UnixStream> = (0..cap + 16)
        .map(|_| UnixStream::connect(&d.1).unwrap())
        .collect();
    // The ones past the cap are answered 503 and closed at once, without a thread.
    std::thread::sleep(Duration::from_millis(500));
    let mut refused = 0;
    for s in &idle {
        s.set_nonblocking(true).unwrap();
        let mut b = [0u8; 64];
        match (&*s).read(&mut b) {
            Ok(n) if n == 0 || b[..n].starts_with(b"HTTP/1.1 503") => refused += 1,
            _ => {}
        }
    }
    let busy = threads(pid, "api-conn");
    println!(
        "{} idle connections: {busy} connection threads, {refused} refused",
        idle.len()
    );
    assert!(
        busy.saturating_sub(base) <= cap,
        "{busy} connection threads for a cap of {cap}"
    );
    assert_eq!(refused, 16, "the connections past the cap were not refused");
    // A normal client (retrying, as the CLI's user would) gets through once the deadline
    // has dropped the idle ones.
    let api = Path::new(&d.1);
    let ok = loop {
        match api::http::call(api, "GET", "/v1/version", None, Duration::from_secs(2)) {
            Ok((200, _)) => break true,
            _ if t0.elapsed() > DEADLINE + Duration::from_secs(10) => break false,
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
    };
    println!("a normal request got through after {:?}", t0.elapsed());
    assert!(ok, "no normal request got through in {:?}", t0.elapsed());
    drop(idle);
}

#[test]
fn the_run_directory_and_the_state_file_are_private() {
    let dir = common::TestDir::new("modes").unwrap();
    // As an older daemon left them: 0755 and a world-readable state file.
    let run = dir.join("run");
    std::fs::create_dir(&run).unwrap();
    std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(run.join("state.json"), "{}").unwrap();
    std::fs::set_permissions(
        run.join("state.json"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let d = common::cni::daemon(&run);
    assert_eq!(mode(&run) & 0o007, 0, "run directory {:o}", mode(&run));
    assert!(matches!(mode(&run), 0o700 | 0o750), "{:o}", mode(&run));
    assert_eq!(mode(&run.join("state.json")), 0o600);
    common::cni::up(
        &run,
        &d.1,
        "switch: { cores: [1] }\nnetworks:\n  - { name: n, tenant: t, cidrs: [10.0.0.0/24], vlan: 10 }\n",
    );
    // Written anew (a rename of a fresh file): created 0600, not loosened.
    assert_eq!(mode(&run.join("state.json")), 0o600);
    // With the modes loosened by hand, a stranger reaches the socket and is still
    // refused (before taking one of the connection slots).
    std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&d.1, std::fs::Permissions::from_mode(0o666)).unwrap();
    let o = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_vnfhost"))
        .args(["status", "--api", &d.1])
        .output()
        .expect("setpriv runs");
    let text = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && text.contains("permission denied"),
        "{o:?}"
    );
    drop(d);
    // A new run directory is created private.
    let fresh = dir.join("fresh");
    let log = std::fs::File::create(dir.join("fresh.log")).unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_vnfhost"))
        .args(["daemon", "--run-dir", fresh.to_str().unwrap()])
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let d = common::cni::Daemon(child, fresh.join("api.sock").display().to_string());
    wait_serving(&d.1);
    assert!(matches!(mode(&fresh), 0o700 | 0o750), "{:o}", mode(&fresh));
    drop(d);
}

#[test]
fn a_namespace_path_that_names_another_namespace_later_is_not_touched() {
    let _g = common::serial();
    let dir = common::TestDir::new("nsid").unwrap();
    let run = dir.path();
    let d = common::cni::daemon(run);
    let api = d.1.clone();
    common::cni::up(
        run,
        &api,
        "switch: { cores: [1] }\nnetworks:\n  - { name: net-a, tenant: t1, cidrs: [10.0.0.0/24], vlan: 10, gateway: [10.0.0.254] }\n",
    );
    let name = format!("vnfid{}", std::process::id());
    let ns = Netns::new(name.clone());
    let c = conf("net-a", "1.0.0", &api);
    let (ok, v, _) = cni("ADD", "c1", &ns.path(), &c, &api);
    assert!(ok, "{v}");
    assert!(ns.exec(&["ip", "link", "show", "eth0"]).status.success());
    // The pod goes without a DEL, and the same path now names a new namespace (a
    // replaced bind mount; a reused pid does the same to /proc/PID/ns/net).
    let ns2 = Netns::new(name.clone());
    assert_eq!(ns2.path(), ns.path());
    std::mem::forget(ns); // ns2 removes the path
                          // The later operations: the switch restarts (its taps are opened again and configured
                          // by the daemon), and the daemon reconciles.
    let status = || common::cni::status(&api);
    let old = status()["switch"]["pid"].as_i64().unwrap();
    // SAFETY: kill(2) on the switch this test's daemon started.
    unsafe { libc::kill(old as i32, libc::SIGKILL) };
    let t = Instant::now();
    while status()["switch"]["pid"].as_i64() == Some(old)
        || !status()["switch"]["running"].as_bool().unwrap_or(false)
    {
        assert!(t.elapsed() < Duration::from_secs(20), "no switch restart");
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(2)); // two more reconciles
    let links = ns2.exec(&["ip", "-o", "link"]);
    let links = String::from_utf8_lossy(&links.stdout);
    assert!(
        !links.contains("eth0"),
        "an interface was made in the new namespace: {links}"
    );
    assert!(
        common::cni::attachments(&api).is_empty(),
        "{:?}",
        common::cni::attachments(&api)
    );
    let log = std::fs::read_to_string(run.join("daemon.log")).unwrap_or_default();
    assert!(log.contains("names another namespace"), "{log}");
    // DEL is still clean (idempotent), and touches nothing in the new namespace.
    let (ok, v, _) = cni("DEL", "c1", &ns2.path(), &c, &api);
    assert!(ok, "{v}");
    drop(ns2);
}
