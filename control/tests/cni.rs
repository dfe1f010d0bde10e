//! `vnfhost-cni` as a container runtime calls it, against a real daemon and switch, with
//! real network namespaces as the pods: ADD gives each a kernel interface on the switch;
//! pods of one network and of two routed networks reach each other, a pod of another
//! tenant does not; CHECK, DEL (twice, the second time without a netns), GC and STATUS.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const TOPOLOGY: &str = r#"
switch: { cores: [1] }
networks:
  - { name: net-a, tenant: t1, cidrs: [10.0.0.0/24], vlan: 10, gateway: [10.0.0.254] }
  - { name: net-b, tenant: t1, cidrs: [10.0.1.0/24], vlan: 20, gateway: [10.0.1.254] }
  - { name: net-x, tenant: t2, cidrs: [10.0.0.0/24], vlan: 30, gateway: [10.0.0.254] }
routers:
  - { name: r1, tenant: t1, networks: [net-a, net-b] }
"#;

use common::cni::{addr, cni, conf, vswitch_mac, Netns};

#[test]
fn cni_pods_reach_each_other_through_the_switch_and_not_across_tenants() {
    let dir = common::TestDir::new("cni").unwrap();
    let run = dir.path();
    let daemon = common::cni::daemon(run);
    let api = daemon.1.clone();

    // Before a topology: STATUS says not available, ADD says try again later.
    let (ok, v, _) = cni("STATUS", "", "", &conf("net-a", "1.1.0", &api), &api);
    assert!(!ok && v["code"] == 50, "{v}");
    let tag = std::process::id();
    let ns: Vec<Netns> = (1..=5)
        .map(|i| Netns::new(format!("vnfh{tag}-{i}")))
        .collect();
    let (ok, v, _) = cni(
        "ADD",
        "c1",
        &ns[0].path(),
        &conf("net-a", "1.0.0", &api),
        &api,
    );
    assert!(!ok && v["code"] == 11, "{v}");

    std::fs::write(run.join("t.yaml"), TOPOLOGY).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_vnfhost"))
        .args(["up", run.join("t.yaml").to_str().unwrap(), "--api", &api])
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    let (ok, v, _) = cni("STATUS", "", "", &conf("net-a", "1.1.0", &api), &api);
    assert!(ok, "{v}");

    // Pods 1, 2 on net-a, 3 on net-b (tenant t1); 4, 5 on net-x (tenant t2, same prefix).
    let nets = ["net-a", "net-a", "net-b", "net-x", "net-x"];
    let mut addrs = Vec::new();
    let mut macs = Vec::new();
    let mut times = Vec::new();
    for (i, (n, net)) in ns.iter().zip(nets).enumerate() {
        let version = ["0.4.0", "1.0.0", "1.1.0"][i % 3];
        let (ok, v, took) = cni(
            "ADD",
            &format!("c{i}"),
            &n.path(),
            &conf(net, version, &api),
            &api,
        );
        assert!(
            ok,
            "ADD {net}: {v}\n{}",
            std::fs::read_to_string(run.join("daemon.log")).unwrap()
        );
        assert_eq!(v["cniVersion"], version);
        assert_eq!(v["interfaces"][0]["sandbox"], n.path());
        times.push(took);
        addrs.push(addr(&v));
        macs.push(v["interfaces"][0]["mac"].as_str().unwrap().to_string());
        let link = n.exec(&["ip", "-br", "addr", "show", "eth0"]);
        assert!(
            String::from_utf8_lossy(&link.stdout)
                .contains(&v["ips"][0]["address"].as_str().unwrap().to_string()),
            "{link:?}"
        );
    }
    times.sort();
    println!(
        "CNI ADD (tap, netns set-up included): median {:?}, max {:?}",
        times[2], times[4]
    );
    assert_eq!(addrs[0], "10.0.0.1");
    assert_eq!(addrs[3], "10.0.0.1", "tenants have their own address pools");

    // Same network; across the router (TTL 63); the other tenant's pair among itself.
    let ping_ok = |from: &Netns, to: &str| {
        // The first ping may go while ARP and the router resolve; give it three tries.
        (0..3).any(|_| from.ping(to).status.success())
    };
    assert!(ping_ok(&ns[0], &addrs[1]), "net-a to net-a");
    let o = ns[0].ping(&addrs[2]);
    let o = if o.status.success() {
        o
    } else {
        ns[0].ping(&addrs[2])
    };
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("ttl=63"),
        "net-a to net-b across the router: {o:?}"
    );
    assert!(ping_ok(&ns[3], &addrs[4]), "net-x to net-x");
    // Tenant t2 cannot reach t1: not t1's net-b pod (t2 has no router), not t1's router
    // at 10.0.0.254 (the gateway address of both tenants' 10.0.0.0/24), and 10.0.0.2 is
    // t2's own pod, not t1's.
    assert!(
        !ns[3].ping(&addrs[2]).status.success(),
        "t2 reached t1's net-b"
    );
    assert!(
        !ns[3].ping("10.0.0.254").status.success(),
        "t1's router answered t2"
    );
    let neigh = String::from_utf8_lossy(&ns[3].exec(&["ip", "neigh", "show", "10.0.0.2"]).stdout)
        .to_string();
    assert!(
        neigh.contains(&macs[4]) && !neigh.contains(&macs[1]),
        "{neigh}"
    );

    // The switch dies: the daemon starts it again, and the pods' new taps get their
    // MACs, addresses and routes again, so the pods reach each other as before.
    let status = || -> Value {
        let o = Command::new(env!("CARGO_BIN_EXE_vnfhost"))
            .args(["status", "--json", "--api", &api])
            .output()
            .unwrap();
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let old = status()["switch"]["pid"].as_i64().unwrap();
    // SAFETY: kill(2) on the switch this test's daemon started.
    unsafe { libc::kill(old as i32, libc::SIGKILL) };
    let t = Instant::now();
    while status()["switch"]["pid"].as_i64() == Some(old)
        || !status()["switch"]["running"].as_bool().unwrap_or(false)
    {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "the switch was not restarted"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        ping_ok(&ns[0], &addrs[1]),
        "net-a to net-a after a switch restart"
    );
    assert!(
        ping_ok(&ns[0], &addrs[2]),
        "across the router after a switch restart"
    );

    // A vhost-user attachment for a userspace (DPDK, virtio-user) pod on net-a: the
    // result names the socket; a virtio-user frontend on it asks for pod c0's MAC by ARP,
    // from the attachment's MAC and address (port security), and c0's kernel answers.
    let vconf = conf("net-a", "1.1.0", &api);
    let mut vcmd = Command::new(common::cni_binary());
    vcmd.env_clear()
        .env("CNI_COMMAND", "ADD")
        .env("CNI_CONTAINERID", "dpdkpod")
        .env("CNI_NETNS", ns[1].path())
        .env("CNI_IFNAME", "net1")
        .env("CNI_ARGS", "VNFHOST_INTERFACE=vhost-user")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    let mut c = vcmd.spawn().unwrap();
    c.stdin.take().unwrap().write_all(vconf.as_bytes()).unwrap();
    let o = c.wait_with_output().unwrap();
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(o.status.success(), "{v}");
    let sock = v["interfaces"][0]["socketPath"]
        .as_str()
        .expect("socketPath")
        .to_string();
    assert!(
        sock.len() < 108 && sock.starts_with(run.to_str().unwrap()),
        "{sock}"
    );
    use std::os::unix::fs::PermissionsExt;
    let dmode = std::fs::metadata(Path::new(&sock).parent().unwrap())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(dmode & 0o777, 0o750);
    let vmac = vswitch_mac(v["interfaces"][0]["mac"].as_str().unwrap());
    let vip: std::net::Ipv4Addr = addr(&v).parse().unwrap();
    let mut vu = pmd::virtio_user::VirtioUser::new(&pmd::virtio_user::VirtioUserConfig::new(
        Path::new(&sock),
    ))
    .expect("virtio-user connects to the attachment's socket");
    let c0: std::net::Ipv4Addr = addrs[0].parse().unwrap();
    let mut req = vec![0u8; 60];
    req[..6].copy_from_slice(&[0xff; 6]);
    req[6..12].copy_from_slice(&vmac);
    req[12..14].copy_from_slice(&[0x08, 0x06]);
    req[14..22].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    req[22..28].copy_from_slice(&vmac);
    req[28..32].copy_from_slice(&vip.octets());
    req[38..42].copy_from_slice(&c0.octets());
    let t = Instant::now();
    let mut reply = None;
    while reply.is_none() && t.elapsed() < Duration::from_secs(5) {
        vu.send(0, std::slice::from_ref(&req));
        for f in vu.recv_wait(0, 8, Duration::from_millis(200)) {
            if f.len() >= 42 && f[12..14] == [0x08, 0x06] && f[21] == 2 && f[28..32] == c0.octets()
            {
                reply = Some(f);
            }
        }
    }
    let reply = reply.expect("pod c0 answered the vhost-user pod's ARP");
    assert_eq!(&reply[..6], &vmac);
    drop(vu);
    let mut dcmd = Command::new(common::cni_binary());
    dcmd.env_clear()
        .env("CNI_COMMAND", "DEL")
        .env("CNI_CONTAINERID", "dpdkpod")
        .env("CNI_IFNAME", "net1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    let mut c = dcmd.spawn().unwrap();
    c.stdin.take().unwrap().write_all(vconf.as_bytes()).unwrap();
    assert!(c.wait_with_output().unwrap().status.success());
    assert!(!Path::new(&sock).exists(), "the socket outlived DEL");

    // CHECK, DEL, DEL again without a netns (as runtimes do), CHECK fails after.
    let c1 = conf("net-a", "1.0.0", &api);
    assert!(cni("CHECK", "c1", &ns[1].path(), &c1, &api).0);
    let (ok, v, _) = cni("DEL", "c1", &ns[1].path(), &c1, &api);
    assert!(ok, "{v}");
    assert!(
        !ns[1].exec(&["ip", "link", "show", "eth0"]).status.success(),
        "eth0 outlived DEL"
    );
    assert!(cni("DEL", "c1", "", &c1, &api).0, "second DEL");
    let (ok, v, _) = cni("CHECK", "c1", &ns[1].path(), &c1, &api);
    assert!(!ok && v["code"] == 3, "{v}");
    assert!(!ping_ok(&ns[0], &addrs[1]), "a deleted pod still answers");

    // GC: only c0 is still valid on net-a; c2 (net-b) and c3, c4 (net-x) are not asked
    // about when GC names a network.
    let gc = format!(
        r#"{{"cniVersion":"1.1.0","name":"vnfhost","type":"vnfhost-cni","network":"net-b","api":"{api}","cni.dev/valid-attachments":[]}}"#
    );
    assert!(cni("GC", "", "", &gc, &api).0);
    assert!(
        !ns[2].exec(&["ip", "link", "show", "eth0"]).status.success(),
        "GC left c2"
    );
    assert!(
        ns[3].exec(&["ip", "link", "show", "eth0"]).status.success(),
        "GC took net-x's c3"
    );

    // down removes the rest: every interface goes with the switch.
    drop(daemon);
    for n in [&ns[0], &ns[3], &ns[4]] {
        assert!(!n.exec(&["ip", "link", "show", "eth0"]).status.success());
    }
}
