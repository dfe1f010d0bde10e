//! The switch service in-process: two vhost-user ports, our virtio-user frontends.

use std::sync::Arc;
use std::time::{Duration, Instant};

use pmd::vhost_user::{VhostUserConfig, VhostUserPort};
use pmd::virtio_user::{VirtioUser, VirtioUserConfig};
use vswitch::switch::{Switch, SwitchConfig, SwitchPort};
use vswitch::{Vid, VlanMode};

#[test]
fn two_ports_forward_and_count() {
    let d = std::env::temp_dir().join(format!("vswitch-svc-{}", std::process::id()));
    std::fs::create_dir_all(&d).expect("dir");
    let mut ports = Vec::new();
    let mut paths = Vec::new();
    for n in ["a", "b"] {
        let path = d.join(format!("{n}.sock"));
        let p = VhostUserPort::new(VhostUserConfig::new(n, &path)).expect("port");
        ports.push(SwitchPort {
            port: Arc::new(p),
            vlan: VlanMode::Access { vid: Vid::MIN },
        });
        paths.push(path);
    }
    let sw = Switch::start(&SwitchConfig::default(), ports).expect("switch");
    let mut a = VirtioUser::new(&VirtioUserConfig::new(&paths[0])).expect("a");
    let mut b = VirtioUser::new(&VirtioUserConfig::new(&paths[1])).expect("b");
    let mut f = vec![0u8; 64];
    f[..12].copy_from_slice(&[2, 0, 0, 0, 0, 0xb, 2, 0, 0, 0, 0, 0xa]);
    let t = Instant::now();
    let mut got = Vec::new();
    while got.is_empty() && t.elapsed() < Duration::from_secs(5) {
        a.send(0, &[&f]);
        got = b.recv_wait(0, 1, Duration::from_millis(100));
    }
    let st = sw.stats();
    assert_eq!(got.first(), Some(&f), "stats: {st:?}");
}
