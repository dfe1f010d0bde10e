//! `vnfhost-cni` as a runtime calls it, a daemon child process, and network namespaces
//! as pods.

use std::io::Write;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A network namespace made for the test (removed on drop).
pub struct Netns(pub String);

impl Netns {
    /// Makes `name` afresh.
    pub fn new(name: String) -> Netns {
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        let o = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .unwrap();
        assert!(o.status.success(), "ip netns add: {o:?}");
        Netns(name)
    }

    /// Its path.
    pub fn path(&self) -> String {
        format!("/var/run/netns/{}", self.0)
    }

    /// Runs `args` in it.
    pub fn exec(&self, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.0])
            .args(args)
            .output()
            .unwrap()
    }

    /// One ping of `ip`.
    pub fn ping(&self, ip: &str) -> Output {
        self.exec(&["busybox", "ping", "-c", "1", "-W", "2", ip])
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

/// Runs `vnfhost-cni` with `CNI_COMMAND=cmd` for pod `default/container`: (success,
/// stdout as JSON, time taken).
pub fn cni(
    cmd: &str,
    container: &str,
    netns: &str,
    conf: &str,
    api: &str,
) -> (bool, Value, Duration) {
    cni_in(cmd, container, "default", netns, conf, api)
}

/// [`cni`] for pod `namespace/container` (the container id is the pod's name).
pub fn cni_in(
    cmd: &str,
    container: &str,
    namespace: &str,
    netns: &str,
    conf: &str,
    api: &str,
) -> (bool, Value, Duration) {
    let t = Instant::now();
    let mut c = Command::new(super::cni_binary())
        .env_clear()
        .env("CNI_COMMAND", cmd)
        .env("CNI_CONTAINERID", container)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/usr/lib/cni")
        .env(
            "CNI_ARGS",
            format!("IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={container}"),
        )
        .env("VNFHOST_API", api)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(conf.as_bytes()).unwrap();
    let o = c.wait_with_output().unwrap();
    let took = t.elapsed();
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let v = if out.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{cmd}: not JSON ({e}): {out}"))
    };
    (o.status.success(), v, took)
}

/// One call to the daemon's API: status and JSON body (`null` when it is not JSON).
pub fn call(api: &str, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
    let (st, b) = api::http::call(
        std::path::Path::new(api),
        method,
        path,
        body.map(str::as_bytes),
        Duration::from_secs(10),
    )
    .unwrap();
    (st, serde_json::from_slice(&b).unwrap_or(Value::Null))
}

/// The daemon's CNI attachments (`GET /v1/attachments`).
pub fn attachments(api: impl AsRef<std::path::Path>) -> Vec<Value> {
    let (st, body) = api::http::call(
        api.as_ref(),
        "GET",
        "/v1/attachments",
        None,
        Duration::from_secs(5),
    )
    .unwrap();
    assert_eq!(st, 200);
    serde_json::from_slice(&body).unwrap()
}

/// A network configuration for `network`.
pub fn conf(network: &str, version: &str, api: &str) -> String {
    format!(
        r#"{{"cniVersion":"{version}","name":"vnfhost","type":"vnfhost-cni","network":"{network}","api":"{api}"}}"#
    )
}

/// A `vnfhost daemon` child and its API socket (brought down and stopped on drop).
pub struct Daemon(pub Child, pub String);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = Command::new(env!("CARGO_BIN_EXE_vnfhost"))
            .args(["down", "--api", &self.1])
            .output();
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

/// Bytes of a MAC.
pub fn vswitch_mac(s: &str) -> [u8; 6] {
    let mut m = [0u8; 6];
    for (b, p) in m.iter_mut().zip(s.split(':')) {
        *b = u8::from_str_radix(p, 16).unwrap();
    }
    m
}

/// The first address of a CNI result.
pub fn addr(v: &Value) -> String {
    v["ips"][0]["address"]
        .as_str()
        .unwrap_or_else(|| panic!("no address in {v}"))
        .split('/')
        .next()
        .unwrap()
        .to_string()
}

/// Starts `vnfhost daemon` on `run` and waits for its API socket.
pub fn daemon(run: &std::path::Path) -> Daemon {
    daemon_in(None, run)
}

/// [`daemon`] inside network namespace `netns` when given (`ip netns exec` execs it:
/// the child is the daemon).
pub fn daemon_in(netns: Option<&str>, run: &std::path::Path) -> Daemon {
    let log = std::fs::File::create(run.join("daemon.log")).unwrap();
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, env!("CARGO_BIN_EXE_vnfhost")]);
            c
        }
        None => Command::new(env!("CARGO_BIN_EXE_vnfhost")),
    };
    let child = cmd
        .args(["daemon", "--run-dir", run.to_str().unwrap()])
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let api = run.join("api.sock").display().to_string();
    let d = Daemon(child, api.clone());
    let t = Instant::now();
    while !std::path::Path::new(&api).exists() {
        assert!(t.elapsed() < Duration::from_secs(10), "no API socket");
        std::thread::sleep(Duration::from_millis(20));
    }
    d
}

/// `vnfhost status --json`.
pub fn status(api: &str) -> Value {
    let o = Command::new(env!("CARGO_BIN_EXE_vnfhost"))
        .args(["status", "--json", "--api", api])
        .output()
        .unwrap();
    serde_json::from_slice(&o.stdout).unwrap_or(Value::Null)
}

/// `vnfhost up FILE` with `topology` written to `run/t.yaml`.
pub fn up(run: &std::path::Path, api: &str, topology: &str) {
    std::fs::write(run.join("t.yaml"), topology).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_vnfhost"))
        .args(["up", run.join("t.yaml").to_str().unwrap(), "--api", api])
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
}
