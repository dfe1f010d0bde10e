//! The tap port: the switch reaches a kernel network stack. The tap interface is moved
//! into a network namespace this test creates, so nothing touches the host's network.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::switch::SwitchProc;
use common::{serial, skip, TestDir};
use pmd::virtio_user::{VirtioUser, VirtioUserConfig};

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

struct Netns(String);
impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.0]);
    }
}

fn unavailable() -> Option<String> {
    if !std::path::Path::new("/dev/net/tun").exists() {
        return Some("tap test: /dev/net/tun missing".into());
    }
    if common::find_in_path("ip").is_none() {
        return Some("tap test: iproute2 `ip` missing".into());
    }
    None
}

#[test]
fn a_guest_gets_an_arp_reply_from_a_kernel_behind_the_tap_port() {
    let _g = serial();
    skip!(unavailable());
    let dir = TestDir::new("tap").expect("test dir");
    let pid = std::process::id();
    let (tap, ns) = (
        format!("vnft{}", pid % 100_000),
        format!("vnfhost-tap-{pid}"),
    );
    let sock = dir.join("g.sock");
    let args = vec![
        "--port".to_string(),
        format!("g,vhost-user={}", sock.display()),
        "--port".to_string(),
        format!("h,tap={tap}"),
    ];
    let sw = SwitchProc::spawn(&args, &dir.join("switch.log"), std::slice::from_ref(&sock))
        .expect("switch starts");
    ip(&["netns", "add", &ns]).expect("netns");
    let _ns = Netns(ns.clone());
    let t = Instant::now();
    while ip(&["link", "set", &tap, "netns", &ns]).is_err() {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "tap {tap} never appeared:\n{}",
            sw.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    ip(&["-n", &ns, "addr", "add", "10.99.0.1/24", "dev", &tap]).expect("addr");
    ip(&["-n", &ns, "link", "set", &tap, "up"]).expect("up");

    let mut g = VirtioUser::new(&VirtioUserConfig::new(&sock)).expect("virtio-user");
    std::thread::sleep(Duration::from_millis(300));
    let me = [0x02, 0, 0, 0, 0x99, 0x01];
    let mut arp = vec![0xff; 6];
    arp.extend_from_slice(&me);
    arp.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    arp.extend_from_slice(&me);
    arp.extend_from_slice(&[10, 99, 0, 2]);
    arp.extend_from_slice(&[0; 6]);
    arp.extend_from_slice(&[10, 99, 0, 1]);
    arp.resize(60, 0);
    let t = Instant::now();
    let mut reply = None;
    while reply.is_none() && t.elapsed() < Duration::from_secs(10) {
        g.send(0, &[&arp]);
        for f in g.recv_wait(0, 4, Duration::from_millis(300)) {
            // An ARP reply (opcode 2) to us, from 10.99.0.1.
            if f.len() >= 42
                && f[12..14] == [0x08, 0x06]
                && f[20..22] == [0, 2]
                && f[28..32] == [10, 99, 0, 1]
            {
                reply = Some(f);
            }
        }
    }
    let reply = reply.unwrap_or_else(|| {
        panic!(
            "no ARP reply through the tap port; switch log:\n{}",
            sw.log_text()
        )
    });
    assert_eq!(&reply[..6], &me, "reply is addressed to the guest");
    assert!(sw.stop(libc::SIGTERM).expect("stop").success());
}
