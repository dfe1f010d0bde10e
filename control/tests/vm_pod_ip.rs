//! "The pod IP is the VM's": a VM sandbox's CNI attachment (a tap in its namespace, with
//! the pod IP Kubernetes reports) handed over to the VM, against a real daemon and switch:
//! the tap leaves the namespace, the attachment becomes a vhost-user port with the same
//! MAC and address, a QEMU guest on that socket with that address answers another CNI pod
//! of the network, also after the switch restarts (the vhost-user port comes back, not
//! the tap); CHECK and GC leave it, DEL removes it and frees the address.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use api::attach::{hand_over_to_vm, Attachment, Kind};
use common::cni::{addr, attachments, cni_in, conf, Netns};
use common::guests::{ping_until_ok, BOOT_TIMEOUT};
use common::qemu::{guest_image, qemu_unavailable, GuestOpts, QemuGuest, VhostMode};
use common::{serial, skip, TestDir};

const TOPOLOGY: &str = r#"
switch: { cores: [1] }
networks:
  - { name: net-a, tenant: t1, cidrs: [10.0.0.0/24], vlan: 10, gateway: [10.0.0.254] }
"#;

/// A few pings from `from` to `ip`: the first ones may go while ARP resolves.
fn reaches(from: &Netns, ip: &str, tries: usize) -> bool {
    (0..tries).any(|_| from.ping(ip).status.success())
}

/// The sandbox's namespace holds no interface but `lo`, and no address of the network.
fn assert_empty(sb: &Netns, address: &str) {
    let links = String::from_utf8_lossy(&sb.exec(&["ip", "-o", "link"]).stdout).to_string();
    assert!(
        links.lines().all(|l| l.contains(": lo:")),
        "the sandbox's namespace still has interfaces: {links}"
    );
    let addrs = String::from_utf8_lossy(&sb.exec(&["ip", "-4", "-o", "addr"]).stdout).to_string();
    assert!(!addrs.contains(address), "{address} is still in: {addrs}");
}

#[test]
fn the_pod_ip_moves_from_the_sandboxs_tap_to_the_vm() {
    let _g = serial();
    let dir = TestDir::new("podip").unwrap();
    let run = dir.path();
    let daemon = common::cni::daemon(run);
    let api = daemon.1.clone();
    common::cni::up(run, &api, TOPOLOGY);
    let tag = std::process::id();
    let sb = Netns::new(format!("vnfhpip{tag}-sb"));
    let peer = Netns::new(format!("vnfhpip{tag}-p"));
    let conf = conf("net-a", "1.1.0", &api);
    let log = || std::fs::read_to_string(run.join("daemon.log")).unwrap_or_default();

    // CNI ADD for the VM's sandbox (a tap with the pod IP) and for an ordinary pod.
    let (ok, added, _) = cni_in("ADD", "vmpod", "default", &sb.path(), &conf, &api);
    assert!(ok, "ADD: {added}\n{}", log());
    let (ok, v, _) = cni_in("ADD", "peer", "default", &peer.path(), &conf, &api);
    assert!(ok, "ADD: {v}\n{}", log());
    let (pod_ip, peer_ip) = (addr(&added), addr(&v));
    let address = added["ips"][0]["address"].as_str().unwrap().to_string();
    assert!(sb.exec(&["ip", "link", "show", "eth0"]).status.success());

    // The hand-over, as the VM runtime does it.
    let apip = Path::new(&api);
    let a: Attachment = hand_over_to_vm(apip, "vmpod")
        .unwrap_or_else(|e| panic!("hand-over: {e}\n{}", log()))
        .expect("the sandbox has a tap attachment");
    assert!(
        a.vm && a.kind() == Kind::VhostUser && a.tap.is_none(),
        "{a:?}"
    );
    assert_eq!(a.mac, added["interfaces"][0]["mac"].as_str().unwrap());
    assert_eq!(a.address, address);
    assert_eq!(a.gateway.as_deref(), Some("10.0.0.254"));
    let sock = a.socket.clone().expect("a vhost-user socket");
    assert!(
        sock.starts_with(run.to_str().unwrap()) && Path::new(&sock).exists(),
        "the switch listens on {sock}"
    );
    assert_empty(&sb, &address);
    let listed = attachments(&api);
    let rec = listed.iter().find(|x| x["container"] == "vmpod").unwrap();
    assert_eq!(rec["vm"], true, "{rec}");
    assert_eq!(rec["socket"], sock.as_str(), "{rec}");
    // Twice is once; a sandbox without a vnfhost attachment has nothing to hand over;
    // an unknown attachment is a 404 with a message.
    assert_eq!(hand_over_to_vm(apip, "vmpod"), Ok(Some(a.clone())));
    assert_eq!(hand_over_to_vm(apip, "hostnetpod"), Ok(None));
    let (st, body) = api::http::call(
        apip,
        "POST",
        "/v1/attachments/nosuch/eth0/vm",
        Some(b"{}"),
        Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!(st, 404, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("no attachment nosuch/eth0"));
    // CHECK and GC (with the sandbox listed) leave it.
    let (ok, v, _) = cni_in("CHECK", "vmpod", "default", &sb.path(), &conf, &api);
    assert!(ok, "CHECK: {v}");
    let gc = format!(
        r#"{{"cniVersion":"1.1.0","name":"vnfhost","type":"vnfhost-cni","network":"net-a","api":"{api}","cni.dev/valid-attachments":[{{"containerID":"vmpod","ifname":"eth0"}},{{"containerID":"peer","ifname":"eth0"}}]}}"#
    );
    let (ok, v, _) = cni_in("GC", "", "default", "", &gc, &api);
    assert!(ok, "GC: {v}");
    assert_eq!(attachments(&api).len(), 2);

    guest_on_the_pod_ip(&dir, &api, &a, &sb, &peer, &pod_ip, &peer_ip);

    // CNI DEL (twice, the second time without a netns): the port and its socket go,
    // and the next pod gets the address.
    let (ok, v, _) = cni_in("DEL", "vmpod", "default", &sb.path(), &conf, &api);
    assert!(ok, "DEL: {v}\n{}", log());
    let (ok, v, _) = cni_in("DEL", "vmpod", "default", "", &conf, &api);
    assert!(ok, "second DEL: {v}");
    assert!(!Path::new(&sock).exists(), "the socket outlived DEL");
    assert!(attachments(&api).iter().all(|x| x["container"] != "vmpod"));
    let next = Netns::new(format!("vnfhpip{tag}-n"));
    let (ok, v, _) = cni_in("ADD", "next", "default", &next.path(), &conf, &api);
    assert!(ok, "ADD: {v}");
    assert_eq!(addr(&v), pod_ip, "the address is free again");
    // The peer's ARP entry still names the VM's MAC: a new pod's peers learn anew.
    peer.exec(&["ip", "neigh", "flush", "dev", "eth0"]);
    assert!(reaches(&peer, &pod_ip, 3), "the next pod has the address");
    drop(daemon);
}

/// A QEMU guest on the attachment's socket, with its MAC and address, answers the peer
/// pod; after the switch is killed, the daemon's new switch makes the vhost-user port
/// again (not the tap) and the guest answers again.
fn guest_on_the_pod_ip(
    dir: &TestDir,
    api: &str,
    a: &Attachment,
    sb: &Netns,
    peer: &Netns,
    pod_ip: &str,
    peer_ip: &str,
) {
    skip!(qemu_unavailable());
    let image = guest_image().expect("guest image");
    let mut opts = GuestOpts::new("vmpod", a.socket.clone().unwrap(), dir.join("vm.log"))
        .mac(&a.mac)
        .ip(&a.address)
        .mode(VhostMode::Client);
    opts.gw = a.gateway.clone();
    opts.image = Some(image);
    let mut g = QemuGuest::spawn(&opts).expect("the guest starts");
    let took = g.wait_ready(BOOT_TIMEOUT).expect("the guest is ready");
    println!("TIMING: guest ready {:.1}s", took.as_secs_f64());
    assert!(
        reaches(peer, pod_ip, 10),
        "the peer pod does not reach the VM at the pod IP {pod_ip}"
    );
    ping_until_ok(&mut g, peer_ip, Duration::from_secs(30)).expect("the VM reaches the peer");

    // The switch dies; the daemon starts another and gives it the vhost-user port.
    let status = || common::cni::status(api);
    let old = status()["switch"]["pid"].as_i64().expect("switch pid");
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
    let back = ping_until_ok(&mut g, peer_ip, Duration::from_secs(60))
        .expect("the VM reaches the peer after a switch restart");
    println!(
        "TIMING: VM traffic back {:.1}s after the switch restart was seen",
        back.as_secs_f64()
    );
    assert!(reaches(peer, pod_ip, 5), "the peer reaches the VM again");
    assert_empty(sb, &a.address);
    g.shutdown().expect("the guest stops");
}
