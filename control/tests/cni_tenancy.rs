//! Extra networks across tenants, through `vnfhost-cni` and the pods' networks annotation
//! (recorded in the daemon as the controller records it), against a real daemon and
//! switch with network namespaces as pods: a pod of tenant A that names tenant B's
//! network is refused with a CNI error and leaves nothing behind, in its namespace or on
//! tenant B's network; a namespace that B's Network object opens gets in; the per-pod
//! and per-namespace port limits refuse the port past them.

mod common;

use common::cni::{call, cni_in, conf, Netns};
use serde_json::Value;

const TOPOLOGY: &str = r#"
switch: { cores: [1] }
networks:
  - { name: a1, tenant: ta, cidrs: [10.1.0.0/24], vlan: 10, gateway: [10.1.0.254] }
  - { name: a2, tenant: ta, cidrs: [10.1.1.0/24], vlan: 11 }
  - { name: b1, tenant: tb, cidrs: [10.2.0.0/24], vlan: 20 }
  - { name: b2, tenant: tb, cidrs: [10.2.1.0/24], vlan: 21, allowed_namespaces: [guests] }
limits: { ports_per_pod: 3, ports_per_namespace: 4 }
"#;

/// `vnfhost-cni` for pod `namespace/container`, to the daemon its configuration names.
fn cni(cmd: &str, container: &str, namespace: &str, netns: &str, conf: &str) -> (bool, Value) {
    let api: Value = serde_json::from_str(conf).expect("conf is JSON");
    let api = api["api"].as_str().expect("conf names the API");
    let (ok, v, _) = cni_in(cmd, container, namespace, netns, conf, api);
    (ok, v)
}

/// What the pod's annotation asks for, recorded as the controller does.
fn annotate(api: &str, pod: &str, networks: &str) {
    let (st, v) = call(
        api,
        "PUT",
        &format!("/v1/pod-networks/{pod}"),
        Some(networks),
    );
    assert_eq!(st, 200, "{v}");
}

/// The attachments of `container`, or of network `net`.
fn attachments(api: &str, f: impl Fn(&Value) -> bool) -> Vec<Value> {
    common::cni::attachments(api)
        .into_iter()
        .filter(|a| f(a))
        .collect()
}

/// The interfaces in a namespace besides `lo`.
fn links(ns: &Netns) -> Vec<String> {
    let o = ns.exec(&["ip", "-o", "link"]);
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| l.split(':').nth(1).map(|n| n.trim().to_string()))
        .filter(|n| n != "lo")
        .collect()
}

#[test]
fn extra_networks_stay_within_the_tenant_unless_opened_and_ports_are_bounded() {
    let _g = common::serial();
    let dir = common::TestDir::new("tenancy").unwrap();
    let run = dir.path();
    let d = common::cni::daemon(run);
    let api = d.1.clone();
    common::cni::up(run, &api, TOPOLOGY);
    let tag = std::process::id();
    let ns = |i: u32| Netns::new(format!("vnft{tag}-{i}"));
    let on = |net: &'static str| move |a: &Value| a["request"]["network"] == net;
    let of = |c: &'static str| move |a: &Value| a["container"] == c;

    // Tenant B's pod on b1.
    let nb = ns(0);
    let (ok, v) = cni("ADD", "pb", "bns", &nb.path(), &conf("b1", "1.1.0", &api));
    assert!(ok, "{v}");

    // A pod of tenant A (primary network a1) whose annotation names B's b1: refused with
    // a CNI error object, and nothing of it stays: no attachment, no interface, and b1
    // still has B's pod alone.
    let na = ns(1);
    annotate(&api, "apps/pa", r#"[{"network":"b1"}]"#);
    let (ok, v) = cni("ADD", "pa", "apps", &na.path(), &conf("a1", "1.1.0", &api));
    assert!(!ok, "{v}");
    assert_eq!(v["cniVersion"], "1.1.0", "{v}");
    assert_eq!(v["code"], api::attach::CODE_FORBIDDEN_NETWORK, "{v}");
    let msg = v["msg"].as_str().unwrap_or_default();
    assert!(msg.contains("\"b1\"") && msg.contains("\"tb\""), "{msg}");
    assert!(attachments(&api, of("pa")).is_empty());
    assert_eq!(links(&na), Vec::<String>::new(), "pa kept interfaces");
    let b1 = attachments(&api, on("b1"));
    assert_eq!(b1.len(), 1, "{b1:?}");
    assert_eq!(b1[0]["container"], "pb");
    // The same pod, with no annotation, joins its own tenant's network.
    annotate(&api, "apps/pa", r#"[{"network":"a2"}]"#);
    let (ok, v) = cni("ADD", "pa", "apps", &na.path(), &conf("a1", "1.1.0", &api));
    assert!(ok, "{v}");
    assert_eq!(v["interfaces"].as_array().unwrap().len(), 2);

    // b2 lists namespace "guests": a pod there with a tenant-A primary network gets in.
    let ng = ns(2);
    annotate(&api, "guests/pg", r#"[{"network":"b2","interface":"tb0"}]"#);
    let (ok, v) = cni(
        "ADD",
        "pg",
        "guests",
        &ng.path(),
        &conf("a1", "1.1.0", &api),
    );
    assert!(ok, "{v}");
    assert!(v["ips"][1]["address"]
        .as_str()
        .unwrap()
        .starts_with("10.2.1."));
    assert!(links(&ng).iter().any(|l| l == "tb0"), "{:?}", links(&ng));
    // …but not B's other network.
    let nh = ns(3);
    annotate(&api, "guests/ph", r#"[{"network":"b1"}]"#);
    let (ok, v) = cni(
        "ADD",
        "ph",
        "guests",
        &nh.path(),
        &conf("a1", "1.1.0", &api),
    );
    assert!(
        !ok && v["code"] == api::attach::CODE_FORBIDDEN_NETWORK,
        "{v}"
    );
    assert!(attachments(&api, of("ph")).is_empty());

    // Per pod (3): a fourth port is refused, and the pod keeps none.
    let nc = ns(4);
    annotate(
        &api,
        "crowd/pc",
        r#"[{"network":"a2"},{"network":"a2"},{"network":"a2"}]"#,
    );
    let (ok, v) = cni("ADD", "pc", "crowd", &nc.path(), &conf("a1", "1.1.0", &api));
    assert!(!ok && v["code"] == api::attach::CODE_PORT_LIMIT, "{v}");
    assert!(
        v["msg"]
            .as_str()
            .unwrap_or_default()
            .contains("limits.ports_per_pod is 3"),
        "{v}"
    );
    assert!(attachments(&api, of("pc")).is_empty());
    assert_eq!(links(&nc), Vec::<String>::new());

    // Per namespace (4): "guests" has pg's 2; ph gets 2 more; the next port is refused.
    annotate(&api, "guests/ph", r#"[{"network":"a2"}]"#);
    let (ok, v) = cni(
        "ADD",
        "ph",
        "guests",
        &nh.path(),
        &conf("a1", "1.1.0", &api),
    );
    assert!(ok, "{v}");
    let ni = ns(5);
    let (ok, v) = cni(
        "ADD",
        "pi",
        "guests",
        &ni.path(),
        &conf("a1", "1.1.0", &api),
    );
    assert!(!ok && v["code"] == api::attach::CODE_PORT_LIMIT, "{v}");
    assert!(
        v["msg"]
            .as_str()
            .unwrap_or_default()
            .contains("limits.ports_per_namespace is 4"),
        "{v}"
    );
    assert!(attachments(&api, of("pi")).is_empty());
    assert_eq!(links(&ni), Vec::<String>::new());
    // Another namespace is not affected by that one's limit.
    annotate(&api, "other/pj", "[]");
    let nj = ns(6);
    let (ok, v) = cni("ADD", "pj", "other", &nj.path(), &conf("b1", "1.1.0", &api));
    assert!(ok, "{v}");
}
