//! `vnfhost daemon` with `vnfhost up`/`status`/`down`, as a user runs them: a real
//! daemon process, the switch and QEMU pods as the processes it starts.

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::skip;
use control::daemon::{Phase, Status};

fn vnfhost(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vnfhost"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("vnfhost runs")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A daemon on a private run directory. Dropping it brings everything down.
struct Daemon {
    child: Option<Child>,
    run: PathBuf,
    api: String,
    metrics: Option<String>,
}

impl Daemon {
    fn start(run: &Path, metrics: Option<u16>) -> Daemon {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(run.join("daemon.log"))
            .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_vnfhost"));
        cmd.args(["daemon", "--run-dir", run.to_str().unwrap()]);
        let metrics = metrics.map(|p| format!("127.0.0.1:{p}"));
        if let Some(m) = &metrics {
            cmd.args(["--metrics", m]);
        }
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let child = cmd.spawn().expect("daemon starts");
        let api = run.join("api.sock");
        let t = Instant::now();
        while std::os::unix::net::UnixStream::connect(&api).is_err() {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "no API socket: {}",
                std::fs::read_to_string(run.join("daemon.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Daemon {
            child: Some(child),
            run: run.into(),
            api: api.display().to_string(),
            metrics,
        }
    }

    fn run(&self, args: &[&str]) -> Output {
        let mut a = args.to_vec();
        a.extend(["--api", &self.api]);
        vnfhost(&a)
    }

    fn status(&self) -> Status {
        let o = self.run(&["status", "--json"]);
        assert!(o.status.success(), "{}", text(&o));
        serde_json::from_slice(&o.stdout).expect("status is JSON")
    }

    /// Kills the daemon only (SIGKILL: no chance to clean anything up).
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.run.join("daemon.log")).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = self.run(&["down"]);
        }
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let _ = c.wait();
        }
    }
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s[s.rfind(')').unwrap_or(0)..].starts_with(") Z"))
        .unwrap_or(false)
}

fn write(dir: &Path, name: &str, body: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    p.display().to_string()
}

/// Raw HTTP on the API socket.
fn raw(api: &str, req: &[u8]) -> String {
    let mut s = std::os::unix::net::UnixStream::connect(api).unwrap();
    s.write_all(req).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

const NO_PODS: &str = "switch: { cores: [1] }\nnetworks:\n  - { name: n, tenant: t, cidrs: [10.0.0.0/24], vlan: 10 }\n";

#[test]
fn bad_topologies_change_nothing_and_strangers_are_refused() {
    let dir = common::TestDir::new("dbad").unwrap();
    let d = Daemon::start(dir.path(), None);

    let cases: [(&str, String, &str); 5] = [
        (
            "syntax.yaml",
            "switch: { cores: [1] }\npods:\n  - name: p\n    memroy: 1Gi\n".into(),
            "syntax.yaml:4:5: pods[0].memroy: unknown field `memroy`",
        ),
        (
            "ref.yaml",
            format!(
                "{NO_PODS}pods:\n  - name: p\n    memory: 64Mi\n    interfaces: [{{ network: nope, mac: \"02:00:00:00:00:01\" }}]\n"
            ),
            "ref.yaml: pods[0].interfaces[0].network: unknown network \"nope\"",
        ),
        (
            "overlap.yaml",
            format!("{NO_PODS}  - {{ name: m, tenant: t, cidrs: [10.0.0.128/25], vlan: 11 }}\n"),
            "overlap.yaml: networks[1].cidrs: 10.0.0.128/25 overlaps 10.0.0.0/24",
        ),
        (
            "cpu.yaml",
            "switch: { cores: [64] }\n".into(),
            "cpu.yaml: switch.cores[0]: CPU 64 does not exist",
        ),
        (
            "huge.yaml",
            format!("{NO_PODS}pods:\n  - {{ name: p, memory: 512Gi, hugepages: true }}\n"),
            "free 2 MiB huge pages",
        ),
    ];
    for (name, body, want) in &cases {
        let f = write(dir.path(), name, body);
        let o = d.run(&["up", &f]);
        assert_eq!(o.status.code(), Some(2), "{name}: {}", text(&o));
        assert!(
            text(&o).contains(want),
            "{name}: want {want:?} in {}",
            text(&o)
        );
        let s = d.status();
        assert!(!s.applied && !s.switch.running, "{name} changed something");
        assert!(!dir.join("switch.sock").exists());
    }

    // The API: versioned, typed, hostile input refused with a status, not a crash.
    let v = raw(&d.api, b"GET /v1/version HTTP/1.1\r\n\r\n");
    assert!(
        v.starts_with("HTTP/1.1 200") && v.contains("\"api\":\"v1\""),
        "{v}"
    );
    let r = raw(
        &d.api,
        b"PUT /v1/topology HTTP/1.1\r\nContent-Length: 9\r\n\r\n{\"bad\":1}",
    );
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    let r = raw(
        &d.api,
        b"PUT /v1/topology HTTP/1.1\r\nContent-Length: 99999999999\r\n\r\n",
    );
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    assert!(raw(&d.api, b"GET /v2/status HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404"));
    assert!(raw(&d.api, b"POST /v1/status HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 405"));

    // The socket is for root and the vnfhost group: mode 0660, and nobody is refused.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&d.api).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660);
    let o = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_vnfhost"))
        .args(["status", "--api", &d.api])
        .output()
        .expect("setpriv runs");
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("Permission denied"), "{}", text(&o));

    // A topology with no pods applies, twice without change, and goes down.
    let f = write(dir.path(), "ok.yaml", NO_PODS);
    let o = d.run(&["up", &f]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("switch started"), "{}", text(&o));
    let o = d.run(&["up", &f]);
    assert!(text(&o).contains("up to date"), "{}", text(&o));
    let pid = d.status().switch.pid.unwrap();
    let o = d.run(&["down"]);
    assert!(
        o.status.success() && text(&o).contains("switch stopped"),
        "{}",
        text(&o)
    );
    assert!(!alive(pid), "the switch survived down");
    assert!(!dir.join("switch.sock").exists() && !dir.join("pods").exists());
}

#[test]
fn up_starts_the_daemon_when_none_runs() {
    let dir = common::TestDir::new("dauto").unwrap();
    let api = dir.join("api.sock").display().to_string();
    let f = write(dir.path(), "ok.yaml", NO_PODS);
    let o = vnfhost(&["up", &f, "--api", &api]);
    assert!(o.status.success(), "{}", text(&o));
    let out = text(&o);
    let pid: i32 = out
        .split("started the daemon, pid ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("{out}"));
    assert!(out.contains("switch started"), "{out}");
    let o = vnfhost(&["down", "--api", &api]);
    assert!(o.status.success(), "{}", text(&o));
    // SAFETY: kill(2) on the daemon this test's `up` started.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let t = Instant::now();
    while alive(pid) && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!alive(pid), "the daemon ignored SIGTERM");
}

fn topology(dir: &Path, extra_pod: &str, route: bool) -> String {
    let routes = if route {
        "\n    routes: [{ to: 192.168.0.0/16, via: 10.0.1.1 }]"
    } else {
        ""
    };
    write(
        dir,
        "t.yaml",
        &format!(
            r#"
switch: {{ cores: [1] }}
networks:
  - {{ name: net-a, tenant: demo, cidrs: [10.0.0.0/24], vlan: 10, gateway: [10.0.0.254] }}
  - {{ name: net-b, tenant: demo, cidrs: [10.0.1.0/24], vlan: 20, gateway: [10.0.1.254] }}
routers:
  - name: r1
    tenant: demo
    networks: [net-a, net-b]{routes}
pods:
  - name: pod-a
    hypervisor: qemu
    memory: 192Mi
    cpus: [0]
    interfaces: [{{ network: net-a, mac: "52:54:00:00:00:0a", ips: [10.0.0.1/24] }}]
  - name: pod-b
    hypervisor: qemu
    memory: 192Mi
    cpus: [0]
    command: "ping -i 0.5 10.0.0.1"
    interfaces: [{{ network: net-b, mac: "52:54:00:00:00:0b", ips: [10.0.1.1/24] }}]
{extra_pod}"#
        ),
    )
}

/// Lines of `pod`'s console that are ping replies across the router.
fn replies(run: &Path, pod: &str) -> usize {
    std::fs::read_to_string(run.join("pods").join(pod).join("console.log"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("bytes from 10.0.0.1") && l.contains("ttl=63"))
        .count()
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool, log: impl Fn() -> String) {
    let t = Instant::now();
    while !f() {
        assert!(
            t.elapsed() < timeout,
            "{what}: not within {timeout:?}\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn pids(s: &Status) -> Vec<(String, Option<i32>)> {
    s.pods.iter().map(|p| (p.name.clone(), p.pid)).collect()
}

#[test]
fn up_status_restart_rollback_and_down_with_qemu_pods() {
    skip!(common::qemu::qemu_unavailable());
    let (kernel, initrd) = match common::qemu::guest_image() {
        Ok(x) => x,
        Err(e) => panic!("guest image: {e}"),
    };
    let _serial = common::serial();
    let dir = common::TestDir::new("dup").unwrap();
    let run = dir.path().to_path_buf();
    std::env::set_var("VNFHOST_GUEST_KERNEL", &kernel);
    std::env::set_var("VNFHOST_GUEST_INITRD", &initrd);
    let port = 20000 + (std::process::id() % 20000) as u16;
    let mut d = Daemon::start(&run, Some(port));
    let consoles = |run: PathBuf| {
        move || {
            let mut s = String::new();
            for p in ["pod-a", "pod-b", "pod-c"] {
                let c = std::fs::read_to_string(run.join("pods").join(p).join("console.log"))
                    .unwrap_or_default();
                let tail: Vec<&str> = c.lines().rev().take(15).collect();
                s.push_str(&format!("--- {p}\n{}\n", tail.join("\n")));
            }
            s + &std::fs::read_to_string(run.join("daemon.log")).unwrap_or_default()
        }
    };

    // 1. Up: the switch, the router and two pods; pod-b pings pod-a across the router.
    let t1 = topology(&run, "", false);
    let o = d.run(&["up", &t1]);
    assert!(o.status.success(), "{}", text(&o));
    wait_for(
        "pod-b's pings answered across the router",
        Duration::from_secs(120),
        || replies(&run, "pod-b") >= 3,
        consoles(run.clone()),
    );
    let s1 = d.status();
    assert!(s1.switch.running && s1.routed > 0, "{s1:?}");
    assert!(s1.pods.iter().all(|p| p.phase == Phase::Running), "{s1:?}");
    assert!(
        s1.ports.iter().all(|p| p.up && p.counters.rx_packets > 0),
        "{s1:?}"
    );
    assert!(
        s1.bridge_drops.keys().all(|k| !k.starts_with("spoofed")),
        "port security dropped a legitimate frame: {:?}",
        s1.bridge_drops
    );
    let human = text(&d.run(&["status"]));
    assert!(
        human.contains("pod-b.eth0") && human.contains("routed"),
        "{human}"
    );
    // Rates: pings every 0.5 s are about 2 frames/s each way.
    wait_for(
        "per-port rates",
        Duration::from_secs(10),
        || d.status().ports.iter().all(|p| p.rx_pps > 0.5),
        || format!("{:?}", d.status()),
    );
    // Prometheus over TCP.
    let mut m = std::net::TcpStream::connect(d.metrics.as_deref().unwrap()).unwrap();
    m.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").unwrap();
    let mut body = String::new();
    let _ = m.read_to_string(&mut body);
    assert!(
        body.contains("# TYPE vnfhost_port_rx_packets_total counter"),
        "{body}"
    );
    assert!(body.contains("vnfhost_router_forwarded_total "), "{body}");
    assert!(
        body.contains("vnfhost_pod_running{pod=\"pod-a\"} 1"),
        "{body}"
    );

    // 2. The same file again changes nothing.
    let o = d.run(&["up", &t1]);
    assert!(text(&o).contains("up to date"), "{}", text(&o));
    assert_eq!(pids(&d.status()), pids(&s1));

    // 3. The daemon dies; forwarding goes on; a new daemon adopts switch and pods.
    d.kill();
    let before = replies(&run, "pod-b");
    wait_for(
        "pings while no daemon runs",
        Duration::from_secs(20),
        || replies(&run, "pod-b") >= before + 4,
        consoles(run.clone()),
    );
    let mut d = Daemon::start(&run, None);
    let s3 = d.status();
    assert_eq!(pids(&s3), pids(&s1), "pods were not adopted");
    assert_eq!(s3.switch.pid, s1.switch.pid, "the switch was not adopted");
    assert!(d.log().contains("adopted pod pod-a"), "{}", d.log());

    // 4. A change that fails halfway (pod-c's kernel is not a kernel) rolls back: no
    // pod-c, the route not installed, pod-a and pod-b untouched.
    let junk = write(&run, "junk-kernel", "not a kernel");
    let bad = format!(
        "  - name: pod-c\n    hypervisor: qemu\n    memory: 128Mi\n    cpus: [0]\n    kernel: {junk}\n    interfaces: [{{ network: net-a, mac: \"52:54:00:00:00:0c\", ips: [10.0.0.3/24] }}]\n"
    );
    let t2 = topology(&run, &bad, true);
    let o = d.run(&["up", &t2]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("pod pod-c") && text(&o).contains("rolled back to generation 1"),
        "{}",
        text(&o)
    );
    let s4 = d.status();
    assert_eq!(pids(&s4), pids(&s1), "{s4:?}");
    assert!(!run.join("pods/pod-c").exists());
    let cfg: api::switch::SwitchSpec =
        api::http::request(&run.join("switch.sock"), "GET", "/v1/config", None).unwrap();
    assert!(
        cfg.routers[0].routes.is_empty() && cfg.ports.len() == 2,
        "{cfg:?}"
    );

    // 5. The same change with a good pod-c adds only pod-c and the route.
    let good = bad.replace(&format!("    kernel: {junk}\n"), "");
    let t3 = topology(&run, &good, true);
    let o = d.run(&["up", &t3]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        !text(&o).contains("pod-a") && !text(&o).contains("pod-b"),
        "{}",
        text(&o)
    );
    let s5 = d.status();
    assert_eq!(
        &pids(&s5)[..2],
        &pids(&s1)[..],
        "pod-a or pod-b was restarted"
    );
    let c_pid = s5.pods[2].pid.unwrap();

    // 6. A pod whose VM dies is restarted (restart: always).
    // SAFETY: kill(2) on the pod's VM, a process this test's daemon started.
    unsafe { libc::kill(c_pid, libc::SIGKILL) };
    wait_for(
        "pod-c restarted",
        Duration::from_secs(20),
        || {
            let s = d.status();
            s.pods[2].restarts == 1 && s.pods[2].pid.is_some_and(|p| p != c_pid)
        },
        || d.log(),
    );

    // 7. The switch dies: the daemon starts it again with its configuration and the
    // pods reconnect; pod-b's pings are answered again.
    let sw_pid = s5.switch.pid.unwrap();
    // SAFETY: kill(2) on the switch, a process this test's daemon started.
    unsafe { libc::kill(sw_pid, libc::SIGKILL) };
    wait_for(
        "a new switch",
        Duration::from_secs(20),
        || {
            d.status()
                .switch
                .pid
                .is_some_and(|p| p != sw_pid && alive(p))
        },
        || d.log(),
    );
    let before = replies(&run, "pod-b");
    wait_for(
        "pings answered after the switch restart",
        Duration::from_secs(60),
        || replies(&run, "pod-b") >= before + 3,
        consoles(run.clone()),
    );

    // 8. Down: every process gone, nothing left behind.
    let s8 = d.status();
    let all: Vec<i32> = s8
        .pods
        .iter()
        .filter_map(|p| p.pid)
        .chain(s8.switch.pid)
        .collect();
    let o = d.run(&["down"]);
    assert!(o.status.success(), "{}", text(&o));
    for pid in all {
        assert!(!alive(pid), "pid {pid} survived down");
    }
    assert!(!run.join("pods").exists() && !run.join("switch.sock").exists());
    let s = d.status();
    assert!(!s.applied && s.pods.is_empty() && !s.switch.running);
    d.kill();
}

/// `restart: on-failure` acts on the workload's exit status, which the pod's VM exits
/// with: a workload that exits 3 is reported with status 3 and restarted; one that exits
/// 0 succeeds and stays down; one whose program does not exist fails with 127.
#[test]
fn on_failure_restarts_a_pod_whose_workload_failed() {
    skip!(common::qemu::qemu_unavailable());
    let (kernel, initrd) = match common::qemu::guest_image() {
        Ok(x) => x,
        Err(e) => panic!("guest image: {e}"),
    };
    let _serial = common::serial();
    let dir = common::TestDir::new("donfail").unwrap();
    let run = dir.path().to_path_buf();
    std::env::set_var("VNFHOST_GUEST_KERNEL", &kernel);
    std::env::set_var("VNFHOST_GUEST_INITRD", &initrd);
    let d = Daemon::start(&run, None);
    let pod = |name: &str, command: &str| {
        format!(
            "  - name: {name}\n    hypervisor: qemu\n    memory: 128Mi\n    cpus: [0]\n    \
             command: \"{command}\"\n    restart: on-failure\n"
        )
    };
    let t = write(
        &run,
        "t.yaml",
        &format!(
            "switch: {{ cores: [1] }}\nnetworks:\n  - {{ name: n, tenant: t, cidrs: [10.0.0.0/24] }}\npods:\n{}{}{}",
            pod("fails", "echo failing; exit 3"),
            pod("works", "echo working; exit 0"),
            pod("missing", "no-such-program"),
        ),
    );
    let o = d.run(&["up", &t]);
    assert!(o.status.success(), "{}", text(&o));
    let log = || {
        let mut s = d.log();
        for p in ["fails", "works", "missing"] {
            let c = std::fs::read_to_string(run.join("pods").join(p).join("console.log"))
                .unwrap_or_default();
            let tail: Vec<&str> = c.lines().rev().take(10).collect();
            s.push_str(&format!("\n--- {p}\n{}", tail.join("\n")));
        }
        s
    };
    let by_name = |s: &Status, n: &str| s.pods.iter().find(|p| p.name == n).cloned().unwrap();
    wait_for(
        "fails restarted after exiting 3, works succeeded, missing restarted after 127",
        Duration::from_secs(300),
        || {
            let s = d.status();
            let (f, w, m) = (
                by_name(&s, "fails"),
                by_name(&s, "works"),
                by_name(&s, "missing"),
            );
            f.restarts >= 1 && w.phase == Phase::Succeeded && m.restarts >= 1
        },
        log,
    );
    let s = d.status();
    let (f, w, m) = (
        by_name(&s, "fails"),
        by_name(&s, "works"),
        by_name(&s, "missing"),
    );
    use control::daemon::Exit;
    assert_eq!(
        f.last_exit,
        Some(Exit::Failed("exit status: 3".into())),
        "{s:?}"
    );
    assert_eq!(
        m.last_exit,
        Some(Exit::Failed("exit status: 127".into())),
        "{s:?}"
    );
    assert_eq!(w.last_exit, Some(Exit::Success), "{s:?}");
    assert_eq!((w.restarts, w.pid), (0, None), "{s:?}");
    assert!(
        d.log()
            .contains("pod fails exited (exit status 3); restarting"),
        "{}",
        d.log()
    );
}

/// A topology pod with `image:` runs that image in a pod VM (the keeper); its workload's
/// exit status is the pod's, so `restart: on-failure` restarts one that exits 3 and leaves
/// one that exits 0; a running one takes `vnfhost exec` by name.
#[test]
fn image_pods_follow_their_workloads_exit_status() {
    skip!(common::qemu::qemu_unavailable());
    let (kernel, initrd) = match common::qemu::guest_image() {
        Ok(x) => x,
        Err(e) => panic!("guest image: {e}"),
    };
    let _serial = common::serial();
    let dir = common::TestDir::new("dimage").unwrap();
    let run = dir.path().to_path_buf();
    std::env::set_var("VNFHOST_GUEST_KERNEL", &kernel);
    std::env::set_var("VNFHOST_GUEST_INITRD", &initrd);
    std::env::set_var("VNFHOST_IMAGES", run.join("images"));
    std::env::set_var("VNFHOST_CACHE", run.join("cache"));
    let archive = run.join("bb.tar");
    let o = Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/cri/cri_tool.py"
        ))
        .args(["image", archive.to_str().unwrap(), "test/bb:1"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    let d = Daemon::start(&run, None);
    let pod = |name: &str, cmd: &str, restart: &str| {
        format!(
            "  - name: {name}\n    memory: 128Mi\n    cpus: [0]\n    image: oci-archive:{}\n    \
             command: {cmd}\n    env: [WHO={name}]\n    restart: {restart}\n",
            archive.display()
        )
    };
    let t = write(
        &run,
        "t.yaml",
        &format!(
            "switch: {{ cores: [1] }}\nnetworks:\n  - {{ name: n, tenant: t, cidrs: [10.0.0.0/24] }}\npods:\n{}{}{}",
            pod("fails", "[sh, -c, 'cat /etc/image-marker; exit 3']", "on-failure"),
            pod("works", "[sh, -c, 'echo $WHO']", "on-failure"),
            pod("stays", "[sleep, '600']", "always"),
        ),
    );
    let o = d.run(&["up", &t]);
    assert!(o.status.success(), "{}", text(&o));
    let by_name = |s: &Status, n: &str| s.pods.iter().find(|p| p.name == n).cloned().unwrap();
    wait_for(
        "fails restarted after exiting 3, works succeeded",
        Duration::from_secs(300),
        || {
            let s = d.status();
            by_name(&s, "fails").restarts >= 1 && by_name(&s, "works").phase == Phase::Succeeded
        },
        || d.log(),
    );
    let s = d.status();
    use control::daemon::Exit;
    assert_eq!(
        by_name(&s, "fails").last_exit,
        Some(Exit::Failed("exit status: 3".into())),
        "{s:?}"
    );
    assert_eq!(by_name(&s, "works").last_exit, Some(Exit::Success), "{s:?}");
    let out = |p: &str| {
        std::fs::read_to_string(run.join("pods").join(p).join("container.log")).unwrap_or_default()
    };
    assert!(
        out("fails").contains("stdout F vnfhost test image"),
        "{}",
        out("fails")
    );
    assert!(out("works").contains("stdout F works"), "{}", out("works"));
    // exec by name into the running one, through the daemon's run directory.
    let mut ok = false;
    for _ in 0..100 {
        let o = Command::new(env!("CARGO_BIN_EXE_vnfhost"))
            .args(["exec", "stays", "--", "sh", "-c", "echo $WHO; exit 6"])
            .env("VNFHOST_RUN_DIR", &run)
            .output()
            .unwrap();
        if o.status.code() == Some(6) {
            assert_eq!(String::from_utf8_lossy(&o.stdout), "stays\n");
            ok = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(ok, "exec into the image pod never worked: {}", d.log());
    let o = d.run(&["down"]);
    assert!(o.status.success(), "{}", text(&o));
}
