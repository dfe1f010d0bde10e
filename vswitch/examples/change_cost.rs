//! How long the bridge operations a live change runs on a polling core take.
use std::time::Instant;
use vswitch::{Bridge, BridgeConfig, PortId, PortSecurity, Vid, VlanMode};
fn main() {
    let mut b = Bridge::new(BridgeConfig {
        max_ports: 256,
        fdb_capacity: 8192,
        fdb_max_age: u64::MAX,
    })
    .unwrap();
    let mode = VlanMode::Access {
        vid: Vid::new(10).unwrap(),
    };
    for i in 0..4 {
        b.add_port(PortId(i), mode.clone()).unwrap();
    }
    let t = |name: &str, f: &mut dyn FnMut()| {
        let s = Instant::now();
        for _ in 0..100 {
            f();
        }
        println!("{name}: {:?}", s.elapsed() / 100);
    };
    t("add_port+remove_port", &mut || {
        b.add_port(PortId(9), mode.clone()).unwrap();
        b.remove_port(PortId(9)).unwrap();
    });
    t("set_link false/true", &mut || {
        b.set_link(PortId(1), false).unwrap();
        b.set_link(PortId(1), true).unwrap();
    });
    let sec = Some(PortSecurity {
        mac: vswitch::wire::EthernetAddress([2, 0, 0, 0, 0, 1]),
        ips: vec![],
        router: false,
    });
    t("set_port_security x2", &mut || {
        b.set_port_security(PortId(2), sec.clone()).unwrap();
        b.set_port_security(PortId(2), None).unwrap();
    });
}
