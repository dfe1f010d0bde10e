//! A switch with two vhost-user access ports (VLAN 1) and our virtio-user frontends
//! attached to them, in-process.

use std::sync::Arc;

use pmd::vhost_user::{VhostUserConfig, VhostUserPort};
use pmd::virtio_user::{VirtioUser, VirtioUserConfig};
use vswitch::switch::{Switch, SwitchConfig, SwitchPort};
use vswitch::{Vid, VlanMode};

/// Starts the switch on ports `a` and `b` (sockets in a fresh directory named after
/// `tag`) and connects a frontend to each.
pub fn two_port_switch(tag: &str) -> (Switch, VirtioUser, VirtioUser) {
    let d = std::env::temp_dir().join(format!("vswitch-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).expect("dir");
    let paths: Vec<_> = ["a", "b"]
        .iter()
        .map(|n| d.join(format!("{n}.sock")))
        .collect();
    let ports = ["a", "b"]
        .iter()
        .zip(&paths)
        .map(|(n, path)| SwitchPort {
            port: Arc::new(VhostUserPort::new(VhostUserConfig::new(n, path)).expect("port")),
            vlan: VlanMode::Access { vid: Vid::MIN },
            security: None,
            filter: None,
            horizon: false,
        })
        .collect();
    let sw = Switch::start(&SwitchConfig::default(), ports).expect("switch");
    let a = VirtioUser::new(&VirtioUserConfig::new(&paths[0])).expect("a");
    let b = VirtioUser::new(&VirtioUserConfig::new(&paths[1])).expect("b");
    (sw, a, b)
}
