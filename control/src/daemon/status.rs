//! `GET /v1/status` and its Prometheus rendering, `GET /metrics`.

use super::{CoreStatus, Daemon, Phase, PodStatus, PortStatus, Status, SwitchStatus, API_VERSION};

impl Daemon {
    pub(super) fn status(&mut self) -> Status {
        let switch_pid = self.st.switch.as_ref().map(|r| r.pid);
        let running = self.switch_alive();
        let (now, prev) = (self.samples.back(), self.samples.front());
        let dt = match (now, prev) {
            (Some(a), Some(b)) => a.0.duration_since(b.0).as_secs_f64(),
            _ => 0.0,
        };
        let rate = |a: u64, b: u64| {
            if dt > 0.0 {
                a.saturating_sub(b) as f64 / dt
            } else {
                0.0
            }
        };
        let mut ports = Vec::new();
        let mut cores = Vec::new();
        let counters = now.map(|n| n.1.clone()).unwrap_or_default();
        if let Some((_, c)) = now {
            for p in &c.ports {
                let before = prev
                    .and_then(|(_, q)| q.ports.iter().find(|x| x.name == p.name))
                    .cloned()
                    .unwrap_or_default();
                ports.push(PortStatus {
                    name: p.name.clone(),
                    pod: p.name.split('.').next().unwrap_or("").to_string(),
                    up: p.up,
                    rx_pps: rate(p.rx_packets, before.rx_packets),
                    tx_pps: rate(p.tx_packets, before.tx_packets),
                    counters: p.clone(),
                });
            }
            for (i, k) in c.cores.iter().enumerate() {
                let b = prev
                    .and_then(|(_, q)| q.cores.get(i))
                    .cloned()
                    .unwrap_or_default();
                let busy = k.busy_polls.saturating_sub(b.busy_polls);
                let idle = k.idle_polls.saturating_sub(b.idle_polls);
                cores.push(CoreStatus {
                    busy_percent: 100.0 * busy as f64 / (busy + idle).max(1) as f64,
                    pps: rate(k.packets, b.packets),
                    counters: k.clone(),
                });
            }
        }
        let pods = self
            .st
            .pods
            .iter()
            .map(|(name, r)| PodStatus {
                name: name.clone(),
                phase: r.phase,
                pid: r.proc.as_ref().map(|p| p.pid),
                restarts: r.restarts,
                last_exit: r.last_exit.clone(),
                console: self
                    .run
                    .join("pods")
                    .join(name)
                    .join("console.log")
                    .display()
                    .to_string(),
            })
            .collect();
        Status {
            api: API_VERSION.into(),
            generation: self.st.generation,
            source: self.st.source.clone(),
            applied: self.st.desired.is_some(),
            switch: SwitchStatus {
                running,
                pid: switch_pid,
                config_generation: counters.generation,
                last_change_us: counters.last_change_us,
                cores,
            },
            pods,
            ports,
            bridge_drops: counters.bridge_drops,
            floods: counters.floods,
            routed: counters.routed,
            router_generated: counters.router_generated,
            router_drops: counters.router_drops,
            overlay: counters.overlay,
            sessions: counters.sessions,
            services: counters.services,
            events: self.events.iter().cloned().collect(),
        }
    }
}

/// The Prometheus text exposition of `s`.
pub fn metrics(s: &Status) -> String {
    let mut o = String::new();
    let mut family = |name: &str, kind: &str, help: &str, samples: Vec<(String, String)>| {
        o.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
        for (labels, v) in samples {
            if labels.is_empty() {
                o.push_str(&format!("{name} {v}\n"));
            } else {
                o.push_str(&format!("{name}{{{labels}}} {v}\n"));
            }
        }
    };
    let esc = |v: &str| {
        v.replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n")
    };
    let port = |p: &PortStatus| format!("port=\"{}\",pod=\"{}\"", esc(&p.name), esc(&p.pod));
    let per_port = |f: &dyn Fn(&PortStatus) -> u64| -> Vec<(String, String)> {
        s.ports
            .iter()
            .map(|p| (port(p), f(p).to_string()))
            .collect()
    };
    family(
        "vnfhost_switch_up",
        "gauge",
        "1 while the switch process runs.",
        vec![(String::new(), u8::from(s.switch.running).to_string())],
    );
    family(
        "vnfhost_port_up",
        "gauge",
        "1 while the port's peer is connected and its driver ready.",
        per_port(&|p| u64::from(p.up)),
    );
    family(
        "vnfhost_port_rx_packets_total",
        "counter",
        "Frames received from the port's peer.",
        per_port(&|p| p.counters.rx_packets),
    );
    family(
        "vnfhost_port_rx_bytes_total",
        "counter",
        "Bytes received from the port's peer.",
        per_port(&|p| p.counters.rx_bytes),
    );
    family(
        "vnfhost_port_tx_packets_total",
        "counter",
        "Frames sent to the port's peer.",
        per_port(&|p| p.counters.tx_packets),
    );
    family(
        "vnfhost_port_tx_bytes_total",
        "counter",
        "Bytes sent to the port's peer.",
        per_port(&|p| p.counters.tx_bytes),
    );
    family(
        "vnfhost_port_drops_total",
        "counter",
        "Frames a port dropped, by reason.",
        s.ports
            .iter()
            .flat_map(|p| {
                p.counters.drops.iter().map(move |(r, n)| {
                    (format!("{},reason=\"{}\"", port(p), esc(r)), n.to_string())
                })
            })
            .collect(),
    );
    family(
        "vnfhost_port_protocol_errors_total",
        "counter",
        "Peers a vhost-user port dropped, or requests it refused, for breaking the protocol.",
        per_port(&|p| p.counters.protocol_errors),
    );
    family(
        "vnfhost_port_connections_total",
        "counter",
        "Peers that connected to a vhost-user port.",
        per_port(&|p| p.counters.connections),
    );
    family(
        "vnfhost_bridge_drops_total",
        "counter",
        "Frames the bridge dropped, by reason.",
        s.bridge_drops
            .iter()
            .map(|(r, n)| (format!("reason=\"{}\"", esc(r)), n.to_string()))
            .collect(),
    );
    family(
        "vnfhost_bridge_floods_total",
        "counter",
        "Frames flooded.",
        vec![(String::new(), s.floods.to_string())],
    );
    family(
        "vnfhost_router_forwarded_total",
        "counter",
        "Packets routed.",
        vec![(String::new(), s.routed.to_string())],
    );
    family(
        "vnfhost_router_generated_total",
        "counter",
        "Frames the routers generated (ARP, ND, ICMP).",
        vec![(String::new(), s.router_generated.to_string())],
    );
    family(
        "vnfhost_router_drops_total",
        "counter",
        "Packets the routers dropped, by reason.",
        s.router_drops
            .iter()
            .map(|(r, n)| (format!("reason=\"{}\"", esc(r)), n.to_string()))
            .collect(),
    );
    let core = |i: usize, c: &CoreStatus| {
        format!(
            "core=\"{i}\",cpu=\"{}\"",
            c.counters.cpu.map(|c| c.to_string()).unwrap_or_default()
        )
    };
    family(
        "vnfhost_core_busy_ratio",
        "gauge",
        "Share of a polling core's polls that found work, over the last second.",
        s.switch
            .cores
            .iter()
            .enumerate()
            .map(|(i, c)| (core(i, c), format!("{:.4}", c.busy_percent / 100.0)))
            .collect(),
    );
    family(
        "vnfhost_core_stalled_seconds",
        "gauge",
        "How long a polling core has made no progress (0 while it polls).",
        s.switch
            .cores
            .iter()
            .enumerate()
            .map(|(i, c)| {
                (
                    core(i, c),
                    format!("{:.3}", c.counters.stalled_ms as f64 / 1000.0),
                )
            })
            .collect(),
    );
    family(
        "vnfhost_core_packets_total",
        "counter",
        "Frames a polling core handled.",
        s.switch
            .cores
            .iter()
            .enumerate()
            .map(|(i, c)| (core(i, c), c.counters.packets.to_string()))
            .collect(),
    );
    family(
        "vnfhost_pod_running",
        "gauge",
        "1 while the pod's VM runs.",
        s.pods
            .iter()
            .map(|p| {
                (
                    format!("pod=\"{}\"", esc(&p.name)),
                    u8::from(p.phase == Phase::Running).to_string(),
                )
            })
            .collect(),
    );
    family(
        "vnfhost_pod_restarts_total",
        "counter",
        "Times the daemon restarted the pod's VM.",
        s.pods
            .iter()
            .map(|p| (format!("pod=\"{}\"", esc(&p.name)), p.restarts.to_string()))
            .collect(),
    );
    let ss = &s.sessions;
    family(
        "vnfhost_sessions",
        "gauge",
        "Live sessions (connection tracking for stateful groups and services), all cores.",
        vec![(String::new(), ss.live.to_string())],
    );
    family(
        "vnfhost_sessions_capacity",
        "gauge",
        "Session-table capacity, all cores (0 until something needs sessions).",
        vec![(String::new(), ss.capacity.to_string())],
    );
    family(
        "vnfhost_session_events_total",
        "counter",
        "Sessions created, expired, removed (their backend left) and refused (table full).",
        [
            ("created", ss.created),
            ("expired", ss.expired),
            ("removed", ss.removed),
            ("table_full", ss.table_full),
        ]
        .iter()
        .map(|(e, n)| (format!("event=\"{e}\""), n.to_string()))
        .collect(),
    );
    family(
        "vnfhost_service_backend_hits_total",
        "counter",
        "New connections each service backend was given.",
        s.services
            .iter()
            .flat_map(|v| {
                v.backends.iter().map(move |b| {
                    (
                        format!(
                            "service=\"{}\",vip=\"{}\",backend=\"{}\"",
                            esc(&v.name),
                            esc(&v.vip),
                            esc(&b.backend)
                        ),
                        b.hits.to_string(),
                    )
                })
            })
            .collect(),
    );
    family(
        "vnfhost_service_no_backend_total",
        "counter",
        "New connections to a service refused (TCP reset, ICMP unreachable) for want of a \
         ready backend.",
        s.services
            .iter()
            .map(|v| {
                (
                    format!("service=\"{}\"", esc(&v.name)),
                    v.no_backend.to_string(),
                )
            })
            .collect(),
    );
    if let Some(v) = &s.overlay {
        let up = format!("interface=\"{}\"", esc(&v.interface));
        family(
            "vnfhost_uplink_packets_total",
            "counter",
            "Frames the uplink received (tunnelled to this node) and sent.",
            vec![
                (format!("{up},direction=\"rx\""), v.rx_packets.to_string()),
                (format!("{up},direction=\"tx\""), v.tx_packets.to_string()),
            ],
        );
        family(
            "vnfhost_uplink_drops_total",
            "counter",
            "Frames the uplink dropped (frame_too_big: larger than the underlay's MTU), and \
             frames not decapsulated (not_vxlan, unknown_vni, unknown_vtep), by reason.",
            v.drops
                .iter()
                .chain(v.decap_drops.iter())
                .map(|(r, n)| (format!("{up},reason=\"{}\"", esc(r)), n.to_string()))
                .collect(),
        );
        family(
            "vnfhost_vxlan_decapsulated_total",
            "counter",
            "Frames from other nodes decapsulated into a network.",
            vec![(up.clone(), v.decapsulated.to_string())],
        );
        family(
            "vnfhost_vxlan_tunnel_up",
            "gauge",
            "1 while a tunnel's underlay next hop is resolved.",
            v.tunnels
                .iter()
                .map(|t| {
                    (
                        format!(
                            "port=\"{}\",vni=\"{}\",remote=\"{}\"",
                            esc(&t.port),
                            t.vni,
                            esc(&t.remote)
                        ),
                        u8::from(t.next_hop_mac.is_some()).to_string(),
                    )
                })
                .collect(),
        );
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn metrics_are_prometheus_text() {
        let s = Status {
            api: "v1".into(),
            generation: 1,
            source: None,
            applied: true,
            switch: SwitchStatus {
                running: true,
                pid: Some(1),
                config_generation: 1,
                last_change_us: 5,
                cores: vec![],
            },
            pods: vec![],
            ports: vec![PortStatus {
                name: "a.eth0".into(),
                pod: "a".into(),
                up: true,
                rx_pps: 0.0,
                tx_pps: 0.0,
                counters: api::switch::PortCounters {
                    name: "a.eth0".into(),
                    rx_packets: 7,
                    drops: [("ring_full".to_string(), 2)].into(),
                    ..Default::default()
                },
            }],
            bridge_drops: [("spoofed_ip".to_string(), 3)].into(),
            floods: 0,
            routed: 0,
            router_generated: 0,
            router_drops: BTreeMap::new(),
            overlay: None,
            sessions: Default::default(),
            services: Vec::new(),
            events: vec![],
        };
        let m = metrics(&s);
        assert!(m.contains("vnfhost_port_rx_packets_total{port=\"a.eth0\",pod=\"a\"} 7\n"));
        assert!(m.contains(
            "vnfhost_port_drops_total{port=\"a.eth0\",pod=\"a\",reason=\"ring_full\"} 2\n"
        ));
        assert!(m.contains("vnfhost_bridge_drops_total{reason=\"spoofed_ip\"} 3\n"));
        for line in m.lines() {
            assert!(
                line.starts_with('#') || line.split(' ').count() == 2,
                "{line}"
            );
        }
    }
}
