//! `vnfhost-cni`: the CNI plugin (spec 1.1; also 0.4.0 and 1.0.0, which containerd 1.6
//! sends). A thin client of the daemon's API: ADD asks for an attachment on a network of
//! the applied topology and prints the result, DEL releases it (idempotent, also with an
//! empty `CNI_NETNS`), CHECK verifies it, GC releases what the runtime no longer knows,
//! STATUS reports a daemon or switch that is down, VERSION lists the versions.
//!
//! Network configuration (stdin), besides `cniVersion`, `name` and `type`:
//!
//! ```json
//! { "network": "net-a",                  // the topology network (required)
//!   "namespaces": { "blue": "net-x" },   // pods of these namespaces: these networks
//!   "interface": "tap",                  // or "vhost-user" (default tap)
//!   "api": "/run/vnfhost/api.sock" }     // the daemon's socket (default)
//! ```
//!
//! `CNI_ARGS` may carry `VNFHOST_INTERFACE=vhost-user` to override `interface` per pod;
//! `K8S_POD_NAMESPACE` and `K8S_POD_NAME` are recorded with the attachment.
//!
//! Errors are CNI error objects on stdout with the spec's codes (1 incompatible version,
//! 4 invalid environment, 6 undecodable configuration, 7 invalid configuration, 11 try
//! again later, 50 plugin not available) or vnfhost's (100 address pool exhausted, 101
//! unknown network, 102 interface set-up failed, 103 the network is another tenant's and
//! not open to the pod's namespace, 104 the pod or its namespace has as many ports as
//! the node allows). The daemon decides the last two: the plugin only passes them on, and
//! removes what the ADD made so far.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};

use api::attach::{AttachError, AttachRequest, Attachment, Kind};

/// The versions this plugin speaks.
pub const SUPPORTED: [&str; 3] = ["0.4.0", "1.0.0", "1.1.0"];

/// A CNI error: printed as the spec's error object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniError {
    /// Code.
    pub code: u32,
    /// Message.
    pub msg: String,
}

impl CniError {
    fn new(code: u32, msg: impl Into<String>) -> CniError {
        CniError {
            code,
            msg: msg.into(),
        }
    }

    /// The error object for `version`.
    pub fn to_json(&self, version: &str) -> String {
        json!({ "cniVersion": version, "code": self.code, "msg": self.msg }).to_string()
    }
}

impl From<AttachError> for CniError {
    fn from(e: AttachError) -> CniError {
        CniError::new(e.code, e.error)
    }
}

/// The network configuration the plugin reads.
#[derive(Debug, Deserialize)]
struct NetConf {
    #[serde(rename = "cniVersion")]
    version: String,
    #[serde(default)]
    network: Option<String>,
    /// Kubernetes namespace → network, overriding `network` for pods of that namespace.
    #[serde(default)]
    namespaces: HashMap<String, String>,
    #[serde(default)]
    interface: Option<Kind>,
    #[serde(default)]
    api: Option<PathBuf>,
    #[serde(default, rename = "cni.dev/valid-attachments")]
    valid: Option<Vec<ValidAttachment>>,
}

#[derive(Debug, Deserialize)]
struct ValidAttachment {
    #[serde(rename = "containerID")]
    container: String,
    ifname: String,
}

/// The daemon, as the plugin sees it (a trait so the logic is tested without one).
pub trait Api {
    /// One request; returns the HTTP status and the body.
    fn call(&self, method: &str, path: &str, body: Option<&[u8]>)
        -> Result<(u16, Vec<u8>), String>;
}

/// The daemon behind its Unix socket.
pub struct SocketApi(pub PathBuf);

impl Api for SocketApi {
    fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<(u16, Vec<u8>), String> {
        api::http::call(&self.0, method, path, body, Duration::from_secs(30))
            .map_err(|e| e.to_string())
    }
}

fn env<'a>(e: &'a HashMap<String, String>, k: &str) -> Result<&'a str, CniError> {
    e.get(k)
        .map(String::as_str)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| CniError::new(4, format!("{k} is not set")))
}

/// `K=V;K=V` of `CNI_ARGS`.
fn cni_args(e: &HashMap<String, String>) -> Result<HashMap<String, String>, CniError> {
    let mut out = HashMap::new();
    for part in e
        .get("CNI_ARGS")
        .map(String::as_str)
        .unwrap_or("")
        .split(';')
    {
        if part.is_empty() {
            continue;
        }
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| CniError::new(4, format!("CNI_ARGS: {part:?} is not KEY=VALUE")))?;
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

/// The network of a pod: its namespace's, else the configuration's.
fn network_for(conf: &NetConf, args: &HashMap<String, String>) -> Option<String> {
    args.get("K8S_POD_NAMESPACE")
        .and_then(|ns| conf.namespaces.get(ns))
        .or(conf.network.as_ref())
        .cloned()
}

fn daemon_error(status: u16, body: &[u8]) -> CniError {
    match serde_json::from_slice::<AttachError>(body) {
        Ok(e) => e.into(),
        Err(_) => CniError::new(
            11,
            format!(
                "daemon answered {status}: {}",
                String::from_utf8_lossy(body).trim()
            ),
        ),
    }
}

fn unreachable(e: String) -> CniError {
    CniError::new(11, format!("vnfhost daemon: {e}"))
}

/// The ADD result for `attached` (the primary interface first) in `version`'s format.
fn result(attached: &[Attachment], version: &str, netns: Option<&str>) -> Value {
    let mut interfaces = Vec::new();
    let mut ips = Vec::new();
    let mut routes = Vec::new();
    for (k, a) in attached.iter().enumerate() {
        let mut iface = json!({ "name": a.ifname, "mac": a.mac });
        match (&a.socket, netns) {
            (Some(s), _) => iface["socketPath"] = json!(s),
            (None, Some(ns)) => iface["sandbox"] = json!(ns),
            (None, None) => {}
        }
        // CNI 1.1 reports an interface's MTU; earlier versions have no field for it.
        if let (Some(m), "1.1.0") = (a.mtu, version) {
            iface["mtu"] = json!(m);
        }
        interfaces.push(iface);
        let mut ip = json!({ "address": a.address, "interface": k });
        if let Some(gw) = &a.gateway {
            ip["gateway"] = json!(gw);
            if a.request.default_route {
                routes.push(json!({ "dst": "0.0.0.0/0", "gw": gw }));
            }
        }
        if version == "0.4.0" {
            ip["version"] = json!("4");
        }
        ips.push(ip);
    }
    json!({
        "cniVersion": version,
        "interfaces": interfaces,
        "ips": ips,
        "routes": routes,
        "dns": {},
    })
}

/// Removes every attachment of container `c` (best effort: used to undo a failed ADD).
fn detach_all(api: &dyn Api, c: &str) -> Result<(), String> {
    let (st, body) = api.call("GET", "/v1/attachments", None)?;
    if st != 200 {
        return Err(format!("listing attachments: {st}"));
    }
    let all: Vec<Attachment> = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
    for a in all.iter().filter(|a| a.container == c) {
        api.call("DELETE", &format!("/v1/attachments/{c}/{}", a.ifname), None)?;
    }
    Ok(())
}

/// The extra networks the pod asked for (recorded by the controller from its
/// `k8s.v1.cni.cncf.io/networks` annotation); none when it is not a Kubernetes pod.
fn extra_networks(
    api: &dyn Api,
    args: &HashMap<String, String>,
) -> Result<Vec<api::daemon::PodNetwork>, CniError> {
    let (Some(ns), Some(name)) = (args.get("K8S_POD_NAMESPACE"), args.get("K8S_POD_NAME")) else {
        return Ok(Vec::new());
    };
    let (st, body) = api
        .call("GET", &format!("/v1/pod-networks/{ns}/{name}"), None)
        .map_err(unreachable)?;
    if st != 200 {
        return Err(daemon_error(st, &body));
    }
    serde_json::from_slice(&body).map_err(|e| CniError::new(11, format!("daemon reply: {e}")))
}

/// Runs one CNI command; returns what goes to stdout on success.
pub fn run(
    e: &HashMap<String, String>,
    stdin: &[u8],
    api: &dyn Fn(&Option<PathBuf>) -> Box<dyn Api>,
) -> Result<String, (String, CniError)> {
    let cmd = e.get("CNI_COMMAND").cloned().unwrap_or_default();
    let latest = SUPPORTED[SUPPORTED.len() - 1].to_string();
    if cmd == "VERSION" {
        return Ok(json!({ "cniVersion": latest, "supportedVersions": SUPPORTED }).to_string());
    }
    let conf: NetConf = serde_json::from_slice(stdin).map_err(|err| {
        (
            latest.clone(),
            CniError::new(6, format!("network configuration: {err}")),
        )
    })?;
    let v = conf.version.clone();
    let fail = |err: CniError| (v.clone(), err);
    if !SUPPORTED.contains(&v.as_str()) {
        return Err(fail(CniError::new(
            1,
            format!("cniVersion {v} is not supported; this plugin speaks {SUPPORTED:?}"),
        )));
    }
    let api = api(&conf.api);
    let key = |e: &HashMap<String, String>| -> Result<(String, String), CniError> {
        let c = env(e, "CNI_CONTAINERID")?.to_string();
        let i = env(e, "CNI_IFNAME")?.to_string();
        api::attach::valid_key(&c, &i)?;
        Ok((c, i))
    };
    match cmd.as_str() {
        "ADD" => {
            let (c, i) = key(e).map_err(fail)?;
            let netns = env(e, "CNI_NETNS").map_err(fail)?.to_string();
            let args = cni_args(e).map_err(fail)?;
            let network = network_for(&conf, &args)
                .ok_or_else(|| fail(CniError::new(7, "\"network\" is missing")))?;
            let kind = match args.get("VNFHOST_INTERFACE").map(String::as_str) {
                Some("tap") => Kind::Tap,
                Some("vhost-user") => Kind::VhostUser,
                Some(other) => {
                    return Err(fail(CniError::new(
                        4,
                        format!("VNFHOST_INTERFACE={other}: expected tap or vhost-user"),
                    )))
                }
                None => conf.interface.unwrap_or_default(),
            };
            let pod = match (args.get("K8S_POD_NAMESPACE"), args.get("K8S_POD_NAME")) {
                (Some(ns), Some(n)) => Some(format!("{ns}/{n}")),
                _ => None,
            };
            let extras = extra_networks(api.as_ref(), &args).map_err(fail)?;
            let mut wanted = vec![(i.clone(), network, true)];
            for (k, x) in extras.iter().enumerate() {
                let ifname = x
                    .interface
                    .clone()
                    .unwrap_or_else(|| format!("net{}", k + 1));
                // Extra interfaces get no default route: the primary one has it.
                wanted.push((ifname, x.network.clone(), false));
            }
            let mut attached = Vec::new();
            for (ifname, network, default_route) in wanted {
                let req = AttachRequest {
                    network,
                    netns: Some(netns.clone()),
                    kind,
                    pod: pod.clone(),
                    default_route,
                };
                let r = serde_json::to_vec(&req)
                    .map_err(|x| CniError::new(7, x.to_string()))
                    .and_then(|body| {
                        api.call("PUT", &format!("/v1/attachments/{c}/{ifname}"), Some(&body))
                            .map_err(unreachable)
                    })
                    .and_then(|(st, reply)| {
                        if st != 200 {
                            return Err(daemon_error(st, &reply));
                        }
                        serde_json::from_slice::<Attachment>(&reply)
                            .map_err(|x| CniError::new(11, format!("daemon reply: {x}")))
                    });
                match r {
                    Ok(a) => attached.push(a),
                    Err(err) => {
                        // Nothing half-made stays: the interfaces made so far go.
                        let _ = detach_all(api.as_ref(), &c);
                        return Err(fail(CniError::new(
                            err.code,
                            format!("{ifname}: {}", err.msg),
                        )));
                    }
                }
            }
            Ok(result(&attached, &v, Some(&netns)).to_string())
        }
        "DEL" => {
            let (c, i) = key(e).map_err(fail)?;
            let (st, reply) = api
                .call("DELETE", &format!("/v1/attachments/{c}/{i}"), None)
                .map_err(|x| fail(unreachable(x)))?;
            if st != 200 {
                return Err(fail(daemon_error(st, &reply)));
            }
            // The extra interfaces of the pod (annotation networks) go with it.
            detach_all(api.as_ref(), &c).map_err(|x| fail(unreachable(x)))?;
            Ok(String::new())
        }
        "CHECK" => {
            let (c, i) = key(e).map_err(fail)?;
            let (st, reply) = api
                .call("GET", &format!("/v1/attachments/{c}/{i}"), None)
                .map_err(|x| fail(unreachable(x)))?;
            if st != 200 {
                return Err(fail(daemon_error(st, &reply)));
            }
            let a: Attachment = serde_json::from_slice(&reply)
                .map_err(|x| fail(CniError::new(11, format!("daemon reply: {x}"))))?;
            let args = cni_args(e).map_err(fail)?;
            let want = network_for(&conf, &args);
            if want.as_ref().is_some_and(|n| *n != a.request.network) {
                return Err(fail(CniError::new(
                    7,
                    format!("{c}/{i} is on network {}, not {want:?}", a.request.network),
                )));
            }
            Ok(String::new())
        }
        "STATUS" | "GC" if v != "1.1.0" => Err(fail(CniError::new(
            1,
            format!("{cmd} needs cniVersion 1.1.0, the configuration says {v}"),
        ))),
        "STATUS" => {
            let (st, reply) = api
                .call("GET", "/v1/status", None)
                .map_err(|x| fail(CniError::new(50, format!("vnfhost daemon: {x}"))))?;
            let s: api::daemon::Status = serde_json::from_slice(&reply)
                .ok()
                .filter(|_| st == 200)
                .ok_or_else(|| fail(CniError::new(50, "vnfhost daemon: bad status reply")))?;
            if !s.applied || !s.switch.running {
                return Err(fail(CniError::new(
                    50,
                    "the vnfhost switch is not running (no topology applied, or it is down)",
                )));
            }
            Ok(String::new())
        }
        "GC" => {
            let valid: Vec<Value> = conf
                .valid
                .unwrap_or_default()
                .iter()
                .map(|a| json!({ "container": a.container, "ifname": a.ifname }))
                .collect();
            // The networks this configuration can put pods on, and only those.
            let mut networks: Vec<String> = conf.namespaces.values().cloned().collect();
            networks.extend(conf.network.clone());
            let body = json!({ "networks": networks, "valid": valid }).to_string();
            let (st, reply) = api
                .call("POST", "/v1/attachments/gc", Some(body.as_bytes()))
                .map_err(|x| fail(unreachable(x)))?;
            if st != 200 {
                return Err(fail(daemon_error(st, &reply)));
            }
            Ok(String::new())
        }
        "" => Err(fail(CniError::new(4, "CNI_COMMAND is not set"))),
        other => Err(fail(CniError::new(
            4,
            format!("CNI_COMMAND={other} is not a command"),
        ))),
    }
}

/// `vnfhost-cni`'s main: exit 0 with the result, or 1 with an error object.
pub fn main() -> i32 {
    use std::io::{Read, Write};
    let e: HashMap<String, String> = std::env::vars().collect();
    let mut stdin = Vec::new();
    if e.get("CNI_COMMAND").map(String::as_str) != Some("VERSION") {
        let _ = std::io::stdin().take(1 << 20).read_to_end(&mut stdin);
    }
    let api = |p: &Option<PathBuf>| -> Box<dyn Api> {
        Box::new(SocketApi(
            p.clone().unwrap_or_else(api::daemon::default_api_socket),
        ))
    };
    let mut out = std::io::stdout();
    match run(&e, &stdin, &api) {
        Ok(s) => {
            if !s.is_empty() {
                let _ = writeln!(out, "{s}");
            }
            0
        }
        Err((v, err)) => {
            let _ = writeln!(out, "{}", err.to_json(&v));
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    /// An API that records calls and answers from a script.
    struct Fake {
        calls: RefCell<Vec<String>>,
        reply: (u16, Vec<u8>),
    }

    impl Api for &'static Fake {
        fn call(&self, m: &str, p: &str, _b: Option<&[u8]>) -> Result<(u16, Vec<u8>), String> {
            self.calls.borrow_mut().push(format!("{m} {p}"));
            if p.starts_with("/v1/pod-networks/") {
                // One extra network from the pod's annotation.
                return Ok((200, br#"[{"network":"net-b"}]"#.to_vec()));
            }
            if p == "/v1/attachments" {
                return Ok((200, b"[]".to_vec()));
            }
            Ok(self.reply.clone())
        }
    }

    fn envs(kv: &[(&str, &str)]) -> HashMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn down(_: &Option<PathBuf>) -> Box<dyn Api> {
        struct Down;
        impl Api for Down {
            fn call(&self, _: &str, _: &str, _: Option<&[u8]>) -> Result<(u16, Vec<u8>), String> {
                Err("connection refused".into())
            }
        }
        Box::new(Down)
    }

    const CONF: &[u8] =
        br#"{"cniVersion":"1.0.0","name":"n","type":"vnfhost-cni","network":"net-a"}"#;

    #[test]
    fn version_lists_what_is_spoken() {
        let out = run(&envs(&[("CNI_COMMAND", "VERSION")]), b"", &down).unwrap();
        assert!(out.contains("\"supportedVersions\":[\"0.4.0\",\"1.0.0\",\"1.1.0\"]"));
    }

    #[test]
    fn bad_input_gets_the_spec_codes() {
        let add = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", "/var/run/netns/x"),
        ];
        let code =
            |e: &[(&str, &str)], stdin: &[u8]| run(&envs(e), stdin, &down).unwrap_err().1.code;
        assert_eq!(code(&add, b"{not json"), 6);
        assert_eq!(code(&add, br#"{"cniVersion":"9.9.9","network":"n"}"#), 1);
        assert_eq!(code(&add, br#"{"cniVersion":"1.0.0"}"#), 7);
        assert_eq!(code(&add[..3], CONF), 4, "no netns");
        let mut bad_if = add;
        bad_if[2] = ("CNI_IFNAME", "../../etc");
        assert_eq!(code(&bad_if, CONF), 4);
        let mut bad_args = add.to_vec();
        bad_args.push(("CNI_ARGS", "garbage"));
        assert_eq!(code(&bad_args, CONF), 4);
        assert_eq!(code(&[("CNI_COMMAND", "FROB")], CONF), 4);
        // The daemon is down: try again later; STATUS says the plugin is not available.
        assert_eq!(code(&add, CONF), 11);
        let status = br#"{"cniVersion":"1.1.0","network":"net-a"}"#;
        assert_eq!(code(&[("CNI_COMMAND", "STATUS")], status), 50);
        assert_eq!(
            code(&[("CNI_COMMAND", "STATUS")], CONF),
            1,
            "STATUS needs 1.1.0"
        );
        let (v, e) = run(&envs(&add), b"{", &down).unwrap_err();
        let obj: Value = serde_json::from_str(&e.to_json(&v)).unwrap();
        assert_eq!(obj["code"], 6);
        assert!(obj["msg"]
            .as_str()
            .unwrap()
            .contains("network configuration"));
    }

    #[test]
    fn add_result_and_daemon_errors() {
        let a = Attachment {
            container: "abc".into(),
            ifname: "eth0".into(),
            request: AttachRequest {
                network: "net-a".into(),
                netns: Some("/ns".into()),
                kind: Kind::Tap,
                pod: None,
                default_route: true,
            },
            port: "cni-1".into(),
            mac: "02:76:6e:00:00:01".into(),
            address: "10.0.0.2/24".into(),
            gateway: Some("10.0.0.254".into()),
            mtu: None,
            tap: Some("vh1".into()),
            socket: None,
            netns_id: None,
            vm: false,
        };
        let fake: &'static Fake = Box::leak(Box::new(Fake {
            calls: RefCell::new(vec![]),
            reply: (200, serde_json::to_vec(&a).unwrap()),
        }));
        let api = move |_: &Option<PathBuf>| -> Box<dyn Api> { Box::new(fake) };
        let add = envs(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", "/ns"),
            (
                "CNI_ARGS",
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=d;K8S_POD_NAME=p",
            ),
        ]);
        let v4 = br#"{"cniVersion":"0.4.0","network":"net-a"}"#;
        let out: Value = serde_json::from_str(&run(&add, v4, &api).unwrap()).unwrap();
        assert_eq!(out["ips"][0]["version"], "4");
        assert_eq!(out["ips"][0]["address"], "10.0.0.2/24");
        assert_eq!(out["interfaces"][0]["sandbox"], "/ns");
        assert_eq!(out["routes"][0]["gw"], "10.0.0.254");
        assert_eq!(
            *fake.calls.borrow(),
            [
                "GET /v1/pod-networks/d/p",
                "PUT /v1/attachments/abc/eth0",
                "PUT /v1/attachments/abc/net1"
            ]
        );
        assert_eq!(out["interfaces"].as_array().unwrap().len(), 2);
        assert_eq!(out["ips"][1]["interface"], 1);

        let err = AttachError::new(100, "no free address");
        let full: &'static Fake = Box::leak(Box::new(Fake {
            calls: RefCell::new(vec![]),
            reply: (422, serde_json::to_vec(&err).unwrap()),
        }));
        let api = move |_: &Option<PathBuf>| -> Box<dyn Api> { Box::new(full) };
        assert_eq!(run(&add, CONF, &api).unwrap_err().1.code, 100);
    }
}
