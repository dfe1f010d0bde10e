//! Services and stateful security groups, end to end, with real TCP/IP stacks: network
//! namespaces as pods, Python's sockets as clients and servers.
//!
//! - Through the daemon (`/v1/services`, as the Kubernetes controller uses it) and CNI
//!   pods: connections spread over every backend and stay on theirs; a backend removed
//!   under traffic loses its connections at once, new ones never reach it, a UDP flow
//!   moves with its next datagram, and the other backends' connections carry on;
//!   ClientIP affinity keeps a client on one backend;
//!   another tenant with the same VIP and prefixes reaches only its own backends; a
//!   backend reaching its own VIP (hairpin) is answered; a service without backends
//!   refuses with a reset.
//! - Through `vnfhost switch` on two polling cores with tap ports: a stateful group
//!   with default-deny ingress and an egress rule lets the pod's own connections work
//!   and drops (and counts) unsolicited ones, over IPv4 and IPv6; once a session times
//!   out its replies are dropped; a full table refuses new sessions, counted.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use common::cni::{addr, call, cni_in, conf, Netns};
use serde_json::Value;

/// Servers and clients, with the standard library's sockets.
const PY: &str = r#"
import socket, sys, threading, time
mode = sys.argv[1]
def serve(name):
    t = socket.socket(); t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    t.bind(("0.0.0.0", 8080)); t.listen(256)
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("0.0.0.0", 5353))
    def udp():
        while True:
            d, a = u.recvfrom(2048); u.sendto(name.encode(), a)
    threading.Thread(target=udp, daemon=True).start()
    def conn(c):
        try:
            c.sendall((name + "\n").encode())
            f = c.makefile("r")
            for line in f:
                c.sendall((name + ":" + line).encode())
        except OSError:
            pass
    print("ready", flush=True)
    while True:
        c, _ = t.accept()
        threading.Thread(target=conn, args=(c,), daemon=True).start()
def first_line(s):
    f = s.makefile("r"); line = f.readline().strip()
    return line or "EOF"
if mode == "serve":
    serve(sys.argv[2])
elif mode == "conns":
    vip, port, n = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    for _ in range(n):
        s = socket.socket(); s.settimeout(3)
        try:
            s.connect((vip, port)); print(first_line(s), flush=True)
        except ConnectionRefusedError:
            print("REFUSED", flush=True)
        except OSError as e:
            print("ERROR", e, flush=True)
        s.close()
elif mode == "hold":
    vip, port, n = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    socks = []
    for _ in range(n):
        s = socket.socket(); s.settimeout(3); s.connect((vip, port))
        f = s.makefile("r")
        socks.append((s, f)); print(f.readline().strip(), flush=True)
    for cmd in sys.stdin:
        out = []
        for s, f in socks:
            try:
                s.sendall(b"x\n"); line = f.readline().strip()
                out.append(line or "EOF")
            except (ConnectionResetError, BrokenPipeError):
                out.append("RESET")
            except OSError as e:
                out.append("ERROR")
        print(" ".join(out), flush=True)
elif mode == "udp":
    vip, port, sport = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("0.0.0.0", sport))
    u.settimeout(2)
    for cmd in sys.stdin:
        u.sendto(b"q", (vip, port))
        try:
            d, a = u.recvfrom(2048); print(d.decode(), flush=True)
        except socket.timeout:
            print("TIMEOUT", flush=True)
elif mode == "listen":
    # TCP on a port: "accepted" per connection; UDP on the same port: what arrives.
    port = int(sys.argv[2])
    t = socket.socket(); t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    t.bind(("0.0.0.0", port)); t.listen(16)
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("0.0.0.0", port))
    def udp():
        while True:
            d, a = u.recvfrom(2048); print("udp", d.decode(), flush=True)
    threading.Thread(target=udp, daemon=True).start()
    print("ready", flush=True)
    while True:
        c, _ = t.accept(); print("accepted", flush=True); c.close()
elif mode == "listen6":
    port = int(sys.argv[2])
    t = socket.socket(socket.AF_INET6); t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    t.bind(("::", port)); t.listen(16)
    print("ready", flush=True)
    while True:
        c, _ = t.accept(); print("accepted", flush=True); c.close()
elif mode == "connect":
    host, port = sys.argv[2], int(sys.argv[3])
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET); s.settimeout(3)
    try:
        s.connect((host, port)); print("connected", flush=True)
    except OSError as e:
        print("failed", e, flush=True)
elif mode == "udp-pair":
    # From a fixed port to host:port: send, then print each datagram received.
    host, port, sport = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("0.0.0.0", sport))
    u.settimeout(0.2)
    for cmd in sys.stdin:
        if cmd.strip() == "send":
            u.sendto(b"hello", (host, port)); print("sent", flush=True)
        else:
            got = []
            end = time.time() + 1.0
            while time.time() < end:
                try:
                    d, a = u.recvfrom(2048); got.append(d.decode())
                except socket.timeout:
                    pass
            print("got " + ",".join(got), flush=True)
elif mode == "udp-send":
    # From sport to host:port, n datagrams.
    host, port, sport, n = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("0.0.0.0", sport))
    for i in range(n):
        u.sendto(("m%d" % i).encode(), (host, port))
    print("sent", flush=True)
"#;

struct Py {
    child: Child,
    out: BufReader<ChildStdout>,
    inp: Option<ChildStdin>,
}

impl Py {
    fn spawn(dir: &Path, ns: &Netns, args: &[&str]) -> Py {
        let script = dir.join("svc.py");
        if !script.exists() {
            std::fs::write(&script, PY).unwrap();
        }
        let mut child = Command::new("ip")
            .args(["netns", "exec", &ns.0, "python3", "-u"])
            .arg(&script)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3");
        let out = BufReader::new(child.stdout.take().unwrap());
        let inp = child.stdin.take();
        Py { child, out, inp }
    }

    fn line(&mut self) -> String {
        let mut s = String::new();
        self.out.read_line(&mut s).unwrap();
        s.trim().to_string()
    }

    fn ask(&mut self, cmd: &str) -> String {
        let i = self.inp.as_mut().unwrap();
        writeln!(i, "{cmd}").unwrap();
        i.flush().unwrap();
        self.line()
    }

    /// Runs to its end; its lines.
    fn lines(mut self) -> Vec<String> {
        drop(self.inp.take());
        let mut v = Vec::new();
        loop {
            let l = self.line();
            if l.is_empty() {
                break;
            }
            v.push(l);
        }
        let _ = self.child.wait();
        v
    }
}

impl Drop for Py {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn unavailable() -> Option<String> {
    if common::find_in_path("python3").is_none() {
        return Some("services test: python3 missing".into());
    }
    if !Path::new("/dev/net/tun").exists() {
        return Some("services test: /dev/net/tun missing".into());
    }
    None
}

fn put_service(api: &str, name: &str, network: &str, backends: &[&str]) -> (u16, Value) {
    put_service_with(api, name, network, backends, serde_json::json!({}))
}

/// [`put_service`] with `extra` fields (affinity).
fn put_service_with(
    api: &str,
    name: &str,
    network: &str,
    backends: &[&str],
    extra: Value,
) -> (u16, Value) {
    let mut body = serde_json::json!({
        "name": name,
        "network": network,
        "vip": "10.96.0.10",
        "ports": [
            {"protocol": "tcp", "port": 80, "target_port": 8080},
            {"protocol": "udp", "port": 53, "target_port": 5353},
        ],
        "backends": backends,
    });
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    call(
        api,
        "PUT",
        &format!("/v1/services/{name}"),
        Some(&body.to_string()),
    )
}

const TOPOLOGY: &str = r#"
switch: { cores: [1] }
networks:
  - { name: a1, tenant: ta, cidrs: [10.1.0.0/24], vlan: 10, gateway: [10.1.0.254] }
  - { name: a2, tenant: ta, cidrs: [10.1.1.0/24], vlan: 11, gateway: [10.1.1.254] }
  - { name: b1, tenant: tb, cidrs: [10.1.0.0/24], vlan: 20, gateway: [10.1.0.254] }
  - { name: b2, tenant: tb, cidrs: [10.2.0.0/24], vlan: 21 }
routers:
  - { name: ra, tenant: ta, networks: [a1, a2] }
  - { name: rb, tenant: tb, networks: [b1] }
"#;

#[test]
fn services_spread_stick_follow_backend_removal_and_stay_in_their_tenant() {
    let _g = common::serial();
    common::skip!(unavailable());
    let dir = common::TestDir::new("services").unwrap();
    let run = dir.path();
    let d = common::cni::daemon(run);
    let api = d.1.clone();
    common::cni::up(run, &api, TOPOLOGY);
    let pid = std::process::id();
    // Pods: a client of tenant a, three backends on another network of tenant a, a
    // client and a backend of tenant b on one network with tenant a's prefix.
    let mut pods = BTreeMap::new();
    for (name, net, ns) in [
        ("ca", "a1", "default"),
        ("s1", "a2", "default"),
        ("s2", "a2", "default"),
        ("s3", "a2", "default"),
        ("cb", "b1", "other"),
        ("sb", "b1", "other"),
    ] {
        let n = Netns::new(format!("vnfsvc-{name}-{pid}"));
        let (ok, v, _) = cni_in("ADD", name, ns, &n.path(), &conf(net, "1.0.0", &api), &api);
        assert!(ok, "CNI ADD {name}: {v}");
        let a = addr(&v);
        pods.insert(name, (n, a));
    }
    let ip = |p: &str| pods[p].1.clone();
    let ns = |p: &str| &pods[p].0;
    let mut servers = Vec::new();
    for s in ["s1", "s2", "s3", "sb"] {
        let mut py = Py::spawn(run, ns(s), &["serve", s]);
        assert_eq!(py.line(), "ready");
        servers.push(py);
    }
    let (st, v) = put_service(&api, "web", "a1", &[&ip("s1"), &ip("s2"), &ip("s3")]);
    assert_eq!(st, 200, "{v}");
    let (st, v) = put_service(&api, "web-b", "b1", &[&ip("sb")]);
    assert_eq!(st, 200, "{v}");
    let (st, v) = call(&api, "GET", "/v1/services", None);
    assert_eq!(st, 200);
    assert_eq!(v.as_array().map(Vec::len), Some(2), "{v}");

    // Spread: 60 connections reach all three backends, each answered by one.
    let got = Py::spawn(run, ns("ca"), &["conns", "10.96.0.10", "80", "60"]).lines();
    let mut count: BTreeMap<String, usize> = BTreeMap::new();
    for g in &got {
        *count.entry(g.clone()).or_default() += 1;
    }
    let names: BTreeSet<&str> = count.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        BTreeSet::from(["s1", "s2", "s3"]),
        "60 connections: {count:?}"
    );
    assert!(
        count.values().all(|n| *n >= 8),
        "spread over all backends: {count:?}"
    );

    // ClientIP affinity: every connection of the client goes to one backend; without
    // it they spread again.
    let all = [ip("s1"), ip("s2"), ip("s3")];
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    let (st, v) = put_service_with(
        &api,
        "web",
        "a1",
        &all,
        serde_json::json!({"affinity": "client_ip", "affinity_timeout_s": 60}),
    );
    assert_eq!(st, 200, "{v}");
    let got = Py::spawn(run, ns("ca"), &["conns", "10.96.0.10", "80", "20"]).lines();
    let one: BTreeSet<&String> = got.iter().collect();
    assert_eq!(
        one.len(),
        1,
        "affinity keeps the client on one backend: {got:?}"
    );
    let (st, v) = put_service(&api, "web", "a1", &all);
    assert_eq!(st, 200, "{v}");
    let got = Py::spawn(run, ns("ca"), &["conns", "10.96.0.10", "80", "30"]).lines();
    let spread: BTreeSet<&String> = got.iter().collect();
    assert!(spread.len() > 1, "without affinity they spread: {got:?}");

    // Tenancy: tenant b's client, same VIP and prefix, reaches only tenant b's backend
    // (on its own network: the reply is un-translated on the way back at L2).
    let got = Py::spawn(run, ns("cb"), &["conns", "10.96.0.10", "80", "10"]).lines();
    assert_eq!(got, vec!["sb".to_string(); 10], "tenant b: {got:?}");

    // Hairpin: a backend reaching its own VIP is answered, by itself too.
    let got = Py::spawn(run, ns("s1"), &["conns", "10.96.0.10", "80", "30"]).lines();
    assert!(
        got.iter().all(|g| ["s1", "s2", "s3"].contains(&g.as_str())),
        "hairpin: {got:?}"
    );
    assert!(got.iter().any(|g| g == "s1"), "s1 reached itself: {got:?}");

    // Long-lived connections, at least one on each backend; each stays on its own.
    let mut hold = Py::spawn(run, ns("ca"), &["hold", "10.96.0.10", "80", "24"]);
    let first: Vec<String> = (0..24).map(|_| hold.line()).collect();
    let held: BTreeSet<&str> = first.iter().map(String::as_str).collect();
    assert_eq!(held.len(), 3, "24 held connections: {first:?}");
    let again = hold.ask("go");
    let want: Vec<String> = first.iter().map(|n| format!("{n}:x")).collect();
    assert_eq!(
        again,
        want.join(" "),
        "each connection stays on its backend"
    );
    // A UDP flow and its backend.
    let mut udp = Py::spawn(run, ns("ca"), &["udp", "10.96.0.10", "53", "40053"]);
    let u0 = udp.ask("q");
    assert!(["s1", "s2", "s3"].contains(&u0.as_str()), "udp: {u0}");
    assert_eq!(udp.ask("q"), u0, "a UDP flow stays on its backend");

    // Remove the UDP flow's backend (and with it some held TCP connections).
    let gone = u0.clone();
    let left: Vec<String> = ["s1", "s2", "s3"]
        .iter()
        .filter(|s| **s != gone)
        .map(|s| ip(s))
        .collect();
    let before = common::cni::status(&api);
    let (st, v) = put_service(&api, "web", "a1", &[&left[0], &left[1]]);
    assert_eq!(st, 200, "{v}");
    let u1 = udp.ask("q");
    assert!(
        u1 != gone && ["s1", "s2", "s3"].contains(&u1.as_str()),
        "the UDP flow moved with its next datagram: {gone} -> {u1}"
    );
    let after = hold.ask("go");
    for (name, r) in first.iter().zip(after.split(' ')) {
        if *name == gone {
            assert!(
                r == "RESET" || r == "EOF" || !r.starts_with(&format!("{gone}:")),
                "a connection of the removed backend {gone} is gone: {r}"
            );
        } else {
            assert_eq!(
                r,
                format!("{name}:x"),
                "other backends' connections carry on"
            );
        }
    }
    // The daemon samples the switch every second.
    let status = status_until(&api, |s| {
        s["sessions"]["removed"].as_u64() > before["sessions"]["removed"].as_u64()
    });
    let got = Py::spawn(run, ns("ca"), &["conns", "10.96.0.10", "80", "30"]).lines();
    assert!(
        got.iter().all(|g| *g != gone && g != "REFUSED"),
        "new connections never reach {gone}: {got:?}"
    );
    // Status and metrics show the services, their backends and hits.
    let web = status["services"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["name"] == "web:80/tcp"))
        .unwrap_or_else(|| panic!("no web:80/tcp in {}", status["services"]));
    assert_eq!(web["backends"].as_array().map(Vec::len), Some(2), "{web}");
    assert!(web["backends"][0]["hits"].as_u64() > Some(0), "{web}");
    let text = Command::new(env!("CARGO_BIN_EXE_vnfhost"))
        .args(["status", "--api", &api])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("service web:80/tcp 10.96.0.10:80/tcp: 2 backend(s)"),
        "{text}"
    );
    let (st, m) = api::http::call(
        Path::new(&api),
        "GET",
        "/metrics",
        None,
        Duration::from_secs(5),
    )
    .unwrap();
    let m = String::from_utf8_lossy(&m);
    assert_eq!(st, 200);
    for want in [
        "vnfhost_sessions ",
        "vnfhost_session_events_total{event=\"removed\"}",
        "vnfhost_service_backend_hits_total{service=\"web:80/tcp\",vip=\"10.96.0.10:80/tcp\"",
    ] {
        assert!(m.contains(want), "{want} not in the metrics:\n{m}");
    }

    // No backend: a reset at once, not silence.
    let (st, v) = put_service(&api, "web", "a1", &[]);
    assert_eq!(st, 200, "{v}");
    let t = Instant::now();
    let got = Py::spawn(run, ns("ca"), &["conns", "10.96.0.10", "80", "3"]).lines();
    assert_eq!(got, vec!["REFUSED".to_string(); 3], "no backend: {got:?}");
    assert!(t.elapsed() < Duration::from_secs(3), "refused at once");
    status_until(&api, |s| {
        s["services"].as_array().is_some_and(|a| {
            a.iter()
                .any(|v| v["name"] == "web:80/tcp" && v["no_backend"].as_u64() >= Some(3))
        })
    });

    // Bad input is refused with the field named, and nothing changes.
    for (body, want) in [
        (
            serde_json::json!({"name":"x","network":"a1","vip":"10.1.1.7",
                "ports":[{"protocol":"tcp","port":80}]}),
            "vip",
        ),
        (
            serde_json::json!({"name":"x","network":"a1","vip":"10.96.0.11",
                "ports":[{"protocol":"tcp","port":80}],"backends":["10.2.0.5"]}),
            "network b2",
        ),
        (
            serde_json::json!({"name":"x","network":"a1","vip":"10.96.0.11",
                "ports":[{"protocol":"tcp","port":0}]}),
            "ports[0].port",
        ),
    ] {
        let (st, v) = call(&api, "PUT", "/v1/services/x", Some(&body.to_string()));
        assert_eq!(st, 422, "{body}: {v}");
        assert!(v.to_string().contains(want), "{body}: {v}");
    }
    let (st, v) = call(
        &api,
        "PUT",
        "/v1/services/x",
        Some(
            r#"{"name":"x","network":"a1","vip":"10.96.0.11","ports":[{"protocol":"tcp","port":70000}]}"#,
        ),
    );
    assert_eq!(st, 400, "{v}");
    assert!(v.to_string().contains("service.ports[0].port"), "{v}");
    let (_, v) = call(&api, "GET", "/v1/services", None);
    assert_eq!(
        v.as_array().map(Vec::len),
        Some(2),
        "nothing was added: {v}"
    );
    let (st, _) = call(&api, "DELETE", "/v1/services/web", None);
    assert_eq!(st, 200);
    drop(servers);
    for (name, (n, _)) in &pods {
        let _ = cni_in(
            "DEL",
            name,
            "default",
            &n.path(),
            &conf("a1", "1.0.0", &api),
            &api,
        );
    }
}

/// The daemon's status once `ok` holds of it (it samples the switch every second).
fn status_until(api: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let t = Instant::now();
    loop {
        let s = common::cni::status(api);
        if ok(&s) {
            return s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "status never showed it: sessions {} services {}",
            s["sessions"],
            s["services"]
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_stateful_group_lets_replies_in_and_drops_the_unsolicited_until_its_session_times_out() {
    let _g = common::serial();
    common::skip!(unavailable());
    let dir = common::TestDir::new("stateful").unwrap();
    let pid = std::process::id();
    let (pa, pb) = (
        Netns::new(format!("vnfsg-a-{pid}")),
        Netns::new(format!("vnfsg-b-{pid}")),
    );
    let (ta, tb) = (
        format!("vsa{}", pid % 100_000),
        format!("vsb{}", pid % 100_000),
    );
    let sock = dir.join("switch.sock");
    // Two polling cores: a's port is polled by one and b's by the other, so each
    // conversation's directions meet through the copies the cores send each other.
    let args: Vec<String> = [
        "--core",
        "0,1",
        "--control",
        sock.to_str().unwrap(),
        "--port",
        &format!("a,tap={ta},netns={},sg=pod", pa.path()),
        "--port",
        &format!("b,tap={tb},netns={}", pb.path()),
        // Default-deny ingress; egress only TCP and UDP, any destination.
        "--security-group",
        "pod,deny,deny-egress,out:tcp,out:udp",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let sw = common::switch::SwitchProc::spawn(
        &args,
        &dir.join("switch.log"),
        std::slice::from_ref(&sock),
    )
    .expect("switch");
    for (n, t, a) in [(&pa, &ta, "10.3.0.1/24"), (&pb, &tb, "10.3.0.2/24")] {
        let t0 = Instant::now();
        while !n.exec(&["ip", "link", "show", t]).status.success() {
            assert!(t0.elapsed() < Duration::from_secs(5), "{}", sw.log_text());
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(n.exec(&["ip", "addr", "add", a, "dev", t]).status.success());
        assert!(n.exec(&["ip", "link", "set", t, "up"]).status.success());
        assert!(n.exec(&["ip", "link", "set", "lo", "up"]).status.success());
    }
    // Short UDP sessions, for the timeout below.
    common::switch::edit_config(&sock, |s| s["sessions"]["udp_s"] = 2.into());
    let run = dir.path();

    // a's own connection to b works: the SYN-ACK comes back through a's session.
    let mut lb = Py::spawn(run, &pb, &["listen", "7000"]);
    assert_eq!(lb.line(), "ready");
    let got = Py::spawn(run, &pa, &["connect", "10.3.0.2", "7000"]).lines();
    assert_eq!(got, ["connected"], "a connects out");
    assert_eq!(lb.line(), "accepted");

    // b's unsolicited connection to a is dropped, and counted.
    let drops = |s: &Value| s["bridge_drops"]["security_group"].as_u64().unwrap_or(0);
    let before = drops(&common::switch::stats(&sock));
    let mut la = Py::spawn(run, &pa, &["listen", "7001"]);
    assert_eq!(la.line(), "ready");
    let got = Py::spawn(run, &pb, &["connect", "10.3.0.1", "7001"]).lines();
    assert!(got[0].starts_with("failed"), "b must not get in: {got:?}");
    assert!(
        drops(&common::switch::stats(&sock)) > before,
        "{}",
        common::switch::stats(&sock)
    );
    // The same over IPv6: a's connection out works (neighbour discovery passes the
    // groups), b's to a does not.
    for (n, t, a) in [(&pa, &ta, "fd00:3::1/64"), (&pb, &tb, "fd00:3::2/64")] {
        let o = n.exec(&["ip", "-6", "addr", "add", a, "dev", t, "nodad"]);
        assert!(o.status.success(), "{o:?}");
    }
    let mut lb6 = Py::spawn(run, &pb, &["listen6", "7100"]);
    assert_eq!(lb6.line(), "ready");
    let got = Py::spawn(run, &pa, &["connect", "fd00:3::2", "7100"]).lines();
    assert_eq!(got, ["connected"], "a connects out over IPv6");
    let before = drops(&common::switch::stats(&sock));
    let mut la6 = Py::spawn(run, &pa, &["listen6", "7101"]);
    assert_eq!(la6.line(), "ready");
    let got = Py::spawn(run, &pb, &["connect", "fd00:3::1", "7101"]).lines();
    assert!(
        got[0].starts_with("failed"),
        "b must not get in over IPv6: {got:?}"
    );
    assert!(
        drops(&common::switch::stats(&sock)) > before,
        "{}",
        common::switch::stats(&sock)
    );
    drop((lb6, la6));
    // a's egress rules allow TCP and UDP only: its ping is dropped on the way out.
    let o = pa.ping("10.3.0.2");
    assert!(!o.status.success(), "ICMP out is not allowed");
    assert!(
        common::switch::stats(&sock)["bridge_drops"]["security_group_egress"].as_u64() > Some(0),
        "{}",
        common::switch::stats(&sock)
    );

    // UDP: a sends to b; b's replies come in while the session lives, not after.
    let mut ua = Py::spawn(run, &pa, &["udp-pair", "10.3.0.2", "9000", "9001"]);
    assert_eq!(ua.ask("send"), "sent");
    let reply = |n: u32| {
        Py::spawn(
            run,
            &pb,
            &["udp-send", "10.3.0.1", "9001", "9000", &n.to_string()],
        )
        .lines()
    };
    assert_eq!(reply(2), ["sent"]);
    assert_eq!(ua.ask("recv"), "got m0,m1", "replies within the session");
    std::thread::sleep(Duration::from_millis(3500));
    assert_eq!(reply(2), ["sent"]);
    assert_eq!(ua.ask("recv"), "got", "replies after the session timed out");
    let st = common::switch::stats(&sock);
    assert!(
        st["sessions"]["expired"].as_u64() > Some(0),
        "{}",
        st["sessions"]
    );

    // A full table (16 sessions): a connection past it gets no session, so its reply
    // is dropped; the refusal is counted and nothing else breaks.
    common::switch::edit_config(&sock, |s| s["sessions"]["capacity"] = 16.into());
    let mut lb2 = Py::spawn(run, &pb, &["listen", "7002"]);
    assert_eq!(lb2.line(), "ready");
    let mut ok = 0;
    for _ in 0..24 {
        let got = Py::spawn(run, &pa, &["connect", "10.3.0.2", "7002"]).lines();
        if got != ["connected"] {
            break;
        }
        ok += 1;
    }
    let st = common::switch::stats(&sock);
    assert!(
        (16..24).contains(&ok) && st["sessions"]["table_full"].as_u64() > Some(0),
        "{ok} connected; {}",
        st["sessions"]
    );
    // Both cores' tables are full: a's own sessions, and their copies on b's core.
    assert_eq!(
        st["sessions"]["live"].as_u64(),
        st["sessions"]["capacity"].as_u64(),
        "{}",
        st["sessions"]
    );
    assert_eq!(st["sessions"]["capacity"].as_u64(), Some(32));
    assert!(sw.stop(libc::SIGTERM).expect("stop").success());
    drop((la, lb, lb2));
}
