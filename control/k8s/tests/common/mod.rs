//! What the tests against a real API server share: etcd and kube-apiserver on loopback
//! (built from Debian's source package by `scripts/build-kube-apiserver.sh`) with a
//! self-made CA, a token and RBAC; processes that stop when dropped; waiting.

#![allow(dead_code)] // each test file uses its part

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub fn apiserver_bin() -> PathBuf {
    let cache = std::env::var("VNFHOST_CACHE").unwrap_or_else(|_| "/var/cache/vnfhost".into());
    Path::new(&cache).join("kube/kube-apiserver")
}

/// Brings a daemon's topology down before the daemon stops (`vnfhost down --api
/// SOCKET`; its switch is a process of its own): a failed test leaves nothing running.
pub struct Down(pub PathBuf, pub PathBuf);

impl Drop for Down {
    fn drop(&mut self) {
        let _ = Command::new(&self.0)
            .args(["down", "--api", self.1.to_str().unwrap_or_default()])
            .output();
    }
}

/// A fresh `/tmp/vnfhost-k8s-TAG-PID` directory.
pub fn fresh_dir(tag: &str) -> PathBuf {
    let d = PathBuf::from(format!("/tmp/vnfhost-k8s-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

pub fn unavailable() -> Option<String> {
    if !apiserver_bin().exists() {
        return Some(format!(
            "{} missing (scripts/setup.sh builds it with scripts/build-kube-apiserver.sh)",
            apiserver_bin().display()
        ));
    }
    for b in ["etcd", "kubectl", "openssl"] {
        let found = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
            .any(|d| d.join(b).exists());
        if !found {
            return Some(format!(
                "{b} not found (scripts/setup.sh installs etcd-server)"
            ));
        }
    }
    None
}

pub struct Proc(Option<Child>);

impl Proc {
    pub fn spawn(cmd: &mut Command, log: &Path) -> Proc {
        let f = std::fs::File::create(log).unwrap();
        cmd.stdin(Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(f);
        Proc(Some(cmd.spawn().unwrap_or_else(|e| panic!("{cmd:?}: {e}"))))
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.0.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.0.take() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let t = Instant::now();
            while t.elapsed() < Duration::from_secs(10) {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
}

pub fn ok(o: &Output) -> String {
    let s = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "{s}");
    s
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn wait(what: &str, timeout: Duration, mut f: impl FnMut() -> bool, log: impl Fn() -> String) {
    let t = Instant::now();
    while !f() {
        assert!(
            t.elapsed() < timeout,
            "{what}: not within {timeout:?}\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Certificates: a CA, the API server's serving certificate for 127.0.0.1, and the
/// service-account signing key.
pub fn certs(d: &Path) {
    let sh = |script: &str| {
        ok(&run(Command::new("sh")
            .arg("-c")
            .arg(script)
            .current_dir(d)));
    };
    sh(
        "openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 2 \
        -subj /CN=vnfhost-test-ca 2>/dev/null",
    );
    sh(
        "openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr \
        -subj /CN=kube-apiserver 2>/dev/null",
    );
    std::fs::write(
        d.join("san.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    sh(
        "openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
        -out server.crt -days 2 -extfile san.ext 2>/dev/null",
    );
    sh("openssl genrsa -out sa.key 2048 2>/dev/null && openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null");
}

pub fn daemon_get(api: &Path, path: &str) -> serde_json::Value {
    let (st, body) =
        api::http::call(api, "GET", path, None, Duration::from_secs(10)).expect("daemon");
    assert_eq!(st, 200, "{}", String::from_utf8_lossy(&body));
    serde_json::from_slice(&body).unwrap()
}

/// etcd and kube-apiserver on loopback, and a kubeconfig for them (admin).
pub struct Cluster {
    /// The test's directory (certificates, logs, etcd's data).
    pub dir: PathBuf,
    /// `KUBECONFIG` for kubectl and the controllers.
    pub kubeconfig: PathBuf,
    /// The API server (a test may stop it).
    pub apiserver: Proc,
    etcd: Proc,
}

impl Cluster {
    /// Starts both in `d` and waits until the API server is ready.
    pub fn start(d: &Path) -> Cluster {
        certs(d);
        let token = format!("t{}", std::process::id());
        std::fs::write(
            d.join("tokens.csv"),
            format!("{token},admin,admin-uid,\"system:masters\"\n"),
        )
        .unwrap();

        // etcd and the API server on loopback.
        let (etcd_port, peer_port, api_port) = (free_port(), free_port(), free_port());
        let _etcd = Proc::spawn(
            Command::new("etcd")
                .arg(format!("--data-dir={}", d.join("etcd").display()))
                .arg(format!("--listen-client-urls=http://127.0.0.1:{etcd_port}"))
                .arg(format!(
                    "--advertise-client-urls=http://127.0.0.1:{etcd_port}"
                ))
                .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer_port}"))
                .arg(format!(
                    "--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}"
                ))
                .arg(format!(
                    "--initial-cluster=default=http://127.0.0.1:{peer_port}"
                )),
            &d.join("etcd.log"),
        );
        let apiserver = Proc::spawn(
            Command::new(apiserver_bin())
                .arg(format!("--etcd-servers=http://127.0.0.1:{etcd_port}"))
                .arg(format!("--secure-port={api_port}"))
                .arg("--bind-address=127.0.0.1")
                .arg("--advertise-address=127.0.0.1")
                .arg(format!("--cert-dir={}", d.join("certs").display()))
                .arg(format!(
                    "--tls-cert-file={}",
                    d.join("server.crt").display()
                ))
                .arg(format!(
                    "--tls-private-key-file={}",
                    d.join("server.key").display()
                ))
                .arg(format!("--client-ca-file={}", d.join("ca.crt").display()))
                .arg(format!(
                    "--token-auth-file={}",
                    d.join("tokens.csv").display()
                ))
                .arg("--authorization-mode=RBAC")
                // As kubeadm and every CNI-carrying cluster: node agents are privileged.
                .arg("--allow-privileged=true")
                .arg("--service-account-issuer=https://kubernetes.default.svc")
                .arg(format!(
                    "--service-account-key-file={}",
                    d.join("sa.pub").display()
                ))
                .arg(format!(
                    "--service-account-signing-key-file={}",
                    d.join("sa.key").display()
                ))
                .arg("--service-cluster-ip-range=10.96.0.0/24"),
            &d.join("apiserver.log"),
        );
        let kubeconfig = d.join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: t\n  cluster:\n    server: https://127.0.0.1:{api_port}\n    certificate-authority: {}\nusers:\n- name: admin\n  user:\n    token: {token}\ncontexts:\n- name: t\n  context: {{cluster: t, user: admin}}\ncurrent-context: t\n",
                d.join("ca.crt").display()
            ),
        )
        .unwrap();
        let kubectl = |args: &[&str]| -> Output {
            run(Command::new("kubectl")
                .env("KUBECONFIG", &kubeconfig)
                .args(args))
        };
        let alog = || std::fs::read_to_string(d.join("apiserver.log")).unwrap_or_default();
        wait(
            "the API server ready",
            Duration::from_secs(90),
            || kubectl(&["get", "--raw", "/readyz"]).status.success(),
            alog,
        );
        Cluster {
            dir: d.to_path_buf(),
            kubeconfig,
            apiserver,
            etcd: _etcd,
        }
    }

    /// `kubectl ARGS` against it.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        run(Command::new("kubectl")
            .env("KUBECONFIG", &self.kubeconfig)
            .args(args))
    }

    /// `kubectl ARGS`, which must succeed; its output.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        ok(&self.kubectl(args))
    }

    /// The API server's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("apiserver.log")).unwrap_or_default()
    }
}
