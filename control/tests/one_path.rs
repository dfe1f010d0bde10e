//! One path: the same configuration given to `vnfhost switch` as options and sent by the
//! daemon as the typed spec its plan makes gives the same switch: the same spec back
//! from `GET /v1/config`, the same ports in the same states, the same routers' effect.
//! And the spec is strict: an unknown field or a bad value is refused with the field
//! named, while a path holding `,` and `=` is carried intact.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use api::http::request;
use api::switch::{ApplyReply, Driver, SwitchCounters, SwitchSpec};
use common::switch::SwitchProc;
use control::plan::{plan, GuestImage};

const TOPOLOGY: &str = r#"
switch: { cores: [1] }
networks:
  - { name: net-a, tenant: t, cidrs: [10.0.0.0/24], vlan: 10, gateway: [10.0.0.254] }
  - { name: net-b, tenant: t, cidrs: [10.0.1.0/24], vlan: 20, gateway: [10.0.1.254] }
routers:
  - { name: router, tenant: t, networks: [net-a, net-b] }
security_groups:
  - name: web
    default_deny_ingress: true
    ingress:
      - { protocol: tcp, ports: "80", cidr: 10.0.0.0/8 }
      - { protocol: icmp }
pods:
  - name: p1
    memory: 64M
    interfaces:
      - { network: net-a, mac: "52:54:00:00:00:01", ips: [10.0.0.1/24], security_groups: [web] }
  - name: p2
    memory: 64M
    interfaces:
      - { network: net-b, mac: "52:54:00:00:00:02", ips: [10.0.1.1/24] }
"#;

fn wait_ctl(sock: &Path) {
    let t = Instant::now();
    while std::os::unix::net::UnixStream::connect(sock).is_err() {
        assert!(t.elapsed() < Duration::from_secs(10), "no control socket");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What a user compares: ports with their states, routers and groups in the spec.
fn state(sock: &Path) -> (SwitchSpec, Vec<(String, String)>) {
    let spec: SwitchSpec = request(sock, "GET", "/v1/config", None).unwrap();
    let c: SwitchCounters = request(sock, "GET", "/v1/stats", None).unwrap();
    let ports = c
        .ports
        .iter()
        .map(|p| (p.name.clone(), format!("{:?}", p.state)))
        .collect();
    (spec, ports)
}

#[test]
fn options_and_the_daemons_spec_give_the_same_switch() {
    let dir = common::TestDir::new("onepath").unwrap();
    let run = dir.path();
    let t = control::topology::parse(TOPOLOGY).expect("parses");
    let image = GuestImage {
        kernel: "/unused".into(),
        initrd: "/unused".into(),
    };
    let p = plan(&t, run, &image, &control::topology::Host::current()).expect("plans");
    let sock = run.join("ctl.sock");
    let s1 = |i: usize| {
        run.join(format!("pods/p{i}/eth0.sock"))
            .display()
            .to_string()
    };

    // 1. As options.
    let args: Vec<String> = [
        "--control",
        sock.to_str().unwrap(),
        "--port",
        &format!(
            "p1.eth0,vhost-user={},max-memory=320,mac=52:54:00:00:00:01,vlan=10,ip=10.0.0.1,sg=web",
            s1(1)
        ),
        "--port",
        &format!(
            "p2.eth0,vhost-user={},max-memory=320,mac=52:54:00:00:00:02,vlan=20,ip=10.0.1.1",
            s1(2)
        ),
        "--router-if",
        "vlan=10,ip=10.0.0.254/24",
        "--router-if",
        "vlan=20,ip=10.0.1.254/24",
        "--security-group",
        "web,deny,tcp:80@10.0.0.0/8,icmp",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let sw = SwitchProc::spawn(&args, &run.join("cli.log"), &[]).expect("switch");
    wait_ctl(&sock);
    let from_options = state(&sock);
    drop(sw);

    // 2. As the daemon does it: no options, the plan's spec PUT on the control socket.
    let sw = SwitchProc::spawn(
        &["--control".to_string(), sock.display().to_string()],
        &run.join("daemon.log"),
        &[],
    )
    .expect("switch");
    wait_ctl(&sock);
    let body = serde_json::to_vec(&p.switch).unwrap();
    let r: ApplyReply = request(&sock, "PUT", "/v1/config", Some(&body)).expect("applies");
    assert!(r.failed.is_empty(), "{r:?}");
    let from_daemon = state(&sock);
    assert_eq!(from_options, from_daemon);
    assert_eq!(from_daemon.0, p.switch);

    // 3. Strict: unknown fields and bad values are refused, naming the field; nothing
    // changes.
    for (bad, want) in [
        (r#"{"ports":[],"rooters":[]}"#, "rooters"),
        (
            r#"{"ports":[{"name":"x","driver":{"vhost_user":{"path":"/tmp/x","queue":2}}}]}"#,
            "queue",
        ),
        (
            r#"{"ports":[{"name":"x","driver":{"tap":{"name":"t"}},"vlan":{"access":{"vlan":5000}}}]}"#,
            "ports[0].vlan",
        ),
    ] {
        let e =
            request::<ApplyReply>(&sock, "PUT", "/v1/config", Some(bad.as_bytes())).expect_err(bad);
        assert!(e.contains(want), "{bad}: {e}");
    }
    let mut dup = p.switch.clone();
    dup.ports.push(dup.ports[0].clone());
    let e = request::<ApplyReply>(
        &sock,
        "PUT",
        "/v1/config",
        Some(&serde_json::to_vec(&dup).unwrap()),
    )
    .expect_err("a name used twice");
    assert!(e.contains("ports[2] (p1.eth0).name: used twice"), "{e}");
    assert_eq!(
        state(&sock),
        from_daemon,
        "a refused spec changed the switch"
    );

    // A path with `,` and `=` (which the old option grammar split) is carried intact.
    let odd = run.join("a,b=c.sock");
    let mut spec = p.switch.clone();
    spec.ports[1].driver = Driver::VhostUser {
        path: odd.clone(),
        mode: api::switch::VhostMode::Server,
        queues: 1,
        max_memory_mib: None,
    };
    let r: ApplyReply = request(
        &sock,
        "PUT",
        "/v1/config",
        Some(&serde_json::to_vec(&spec).unwrap()),
    )
    .expect("applies");
    assert!(r.failed.is_empty(), "{r:?}");
    assert!(odd.exists(), "the port listens on the path as given");
    let (back, _) = state(&sock);
    assert_eq!(back, spec);
    drop(sw);
}
