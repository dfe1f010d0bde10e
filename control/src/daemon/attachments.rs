//! CNI attachments: ports the daemon makes on the switch for containers (ADD, DEL, GC),
//! handing a sandbox's tap over to its VM, and the checks of what a client may ask for.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Instant;

use api::switch::PortFailure;

use super::{Daemon, GcRequest, PodNetwork};
use crate::attach::{
    self, AttachError, AttachRequest, Attachment, Kind, NetnsId, CODE_SETUP, CODE_UNKNOWN_CONTAINER,
};

/// What became of a tap attachment's network namespace since its ADD.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum NetnsNow {
    /// The path names the namespace it named at ADD (or an attachment from before
    /// identities were recorded, whose path exists).
    Same,
    /// Nothing is at the path any more.
    Gone,
    /// The path names another namespace now (a reused pid, a replaced bind mount).
    Replaced,
}

/// The identity of the namespace at `path`.
pub(super) fn netns_id(path: &str) -> Option<NetnsId> {
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::metadata(path).ok()?;
    Some(NetnsId {
        dev: md.dev(),
        ino: md.ino(),
    })
}

/// Whether `a`'s namespace is still the one of its ADD (`Same` for a non-tap). A tap
/// handed over to its VM is still checked: its namespace is the sandbox's, and goes
/// with it.
pub(super) fn netns_now(a: &Attachment) -> NetnsNow {
    if a.request.kind != Kind::Tap {
        return NetnsNow::Same;
    }
    match (a.request.netns.as_deref().and_then(netns_id), a.netns_id) {
        (None, _) => NetnsNow::Gone,
        (Some(now), Some(then)) if now != then => NetnsNow::Replaced,
        (Some(_), _) => NetnsNow::Same,
    }
}

impl Daemon {
    /// Drops tap attachments whose network namespace is gone (the pod went without a
    /// DEL) or is another one than at ADD (its path now names somebody else's namespace);
    /// returns whether any was dropped. Nothing is done in the namespace: the switch's
    /// tap went with the old namespace, and its port goes from the configuration.
    pub(super) fn prune_attachments(&mut self) -> bool {
        let stale: Vec<(String, NetnsNow)> = self
            .st
            .attachments
            .iter()
            .map(|(k, a)| (k.clone(), netns_now(a)))
            .filter(|(_, now)| *now != NetnsNow::Same)
            .collect();
        for (k, now) in &stale {
            if let Some(a) = self.st.attachments.remove(k) {
                self.remove_socket_dir(&a);
            }
            self.event(match now {
                NetnsNow::Replaced => format!(
                    "attachment {k}: its network namespace path names another namespace than \
                     at ADD (a reused pid or a replaced mount); dropped without touching it"
                ),
                _ => format!("attachment {k}: its network namespace is gone; dropped"),
            });
        }
        if !stale.is_empty() {
            self.persist();
        }
        !stale.is_empty()
    }

    /// After the switch started anew: its taps are new devices in the pods' namespaces,
    /// without MAC, address or route; give them theirs again. (Those handed over to a VM
    /// are vhost-user ports now: nothing to do in their namespaces.)
    pub(super) fn reconfigure_taps(&mut self) {
        self.prune_attachments();
        let taps: Vec<Attachment> = self
            .st
            .attachments
            .values()
            .filter(|a| a.kind() == Kind::Tap)
            .cloned()
            .collect();
        for a in taps {
            if netns_now(&a) != NetnsNow::Same {
                continue; // replaced since the prune: the next reconcile drops it
            }
            let ns = a.request.netns.clone().unwrap_or_default();
            if let Err(e) = attach::configure_tap(&a, &ns) {
                self.event(format!(
                    "attachment {}/{}: {}",
                    a.container, a.ifname, e.error
                ));
            }
        }
    }

    /// Pushes the configuration with the current attachments to the switch; returns the
    /// ports that failed to open (the switch retries them).
    pub(super) fn push_attachments(&mut self) -> Result<Vec<PortFailure>, AttachError> {
        let (Some(t), Some(plan)) = (self.effective(), self.plan.clone()) else {
            return Err(AttachError::new(11, "no topology is applied"));
        };
        if !self.switch_alive() {
            return Err(AttachError::new(11, "the switch is not running"));
        }
        self.prune_attachments();
        let full = self.full_switch(&t, &plan);
        self.put_switch_config(&full)
            .map_err(|e| AttachError::new(CODE_SETUP, format!("switch: {e}")))
    }

    /// CNI ADD: a port on `req.network` for (`container`, `ifname`).
    pub(super) fn attach(
        &mut self,
        container: &str,
        ifname: &str,
        req: AttachRequest,
    ) -> Result<Attachment, AttachError> {
        attach::valid_key(container, ifname)?;
        // A namespace replaced since its ADD is not reused by an idempotent ADD either.
        self.prune_attachments();
        let key = format!("{container}/{ifname}");
        if let Some(a) = self.st.attachments.get(&key) {
            if a.request == req {
                return Ok(a.clone());
            }
            return Err(AttachError::new(
                7,
                format!("{key} is already attached with another configuration"),
            ));
        }
        if req.kind == Kind::Tap && req.netns.as_deref().unwrap_or("").is_empty() {
            return Err(AttachError::new(
                4,
                "a tap attachment needs the netns (CNI_NETNS)",
            ));
        }
        let ns_id = match (req.kind, req.netns.as_deref()) {
            (Kind::Tap, Some(ns)) => Some(check_netns(ns)?),
            _ => None,
        };
        if let Some(ns) = req.netns.as_deref().filter(|n| n.contains([',', '='])) {
            return Err(AttachError::new(
                4,
                format!("netns path {ns:?} contains ',' or '='"),
            ));
        }
        let t = self
            .effective()
            .ok_or_else(|| AttachError::new(11, "no topology is applied"))?;
        let existing: Vec<&Attachment> = self.st.attachments.values().collect();
        // Tenancy and limits before anything is made: a refusal leaves no trace.
        attach::admit(&t, &existing, container, &req)?;
        let mut a = attach::allocate(&t, &existing, container, ifname, &req, &self.run)?;
        a.netns_id = ns_id;
        make_socket_dir(&a);
        self.st.attachments.insert(key.clone(), a.clone());
        let t0 = Instant::now();
        let mut r = self.push_attachments().map(drop);
        let t_switch = t0.elapsed();
        if r.is_ok() {
            if let (Kind::Tap, Some(ns)) = (a.request.kind, a.request.netns.as_deref()) {
                r = attach::configure_tap(&a, ns);
            }
        }
        let t_all = t0.elapsed();
        if let Err(e) = r {
            // Undo: the port goes (the switch closes the tap, which removes it).
            self.st.attachments.remove(&key);
            let _ = self.push_attachments();
            self.remove_socket_dir(&a);
            return Err(e);
        }
        self.persist();
        self.event(format!(
            "attached {key} to {} as {} ({}) in {:.1} ms ({:.1} ms of it the switch)",
            a.request.network,
            a.address,
            a.port,
            t_all.as_secs_f64() * 1e3,
            t_switch.as_secs_f64() * 1e3
        ));
        Ok(a)
    }

    /// Hands `container`'s tap attachment `ifname` over to its VM
    /// ([`api::attach::HandOverRequest`]): the switch port becomes vhost-user (same name,
    /// MAC, address, port security), the tap leaves the namespace, and `state.json` says
    /// so. Idempotent. Nothing changes unless a topology is applied and the switch runs;
    /// a failure after that puts the tap attachment back (the record, the switch port,
    /// and the tap's configuration if the switch made it anew) before returning.
    pub(super) fn hand_over(
        &mut self,
        container: &str,
        ifname: &str,
    ) -> Result<Attachment, AttachError> {
        attach::valid_key(container, ifname)?;
        // A namespace gone or replaced since ADD drops the attachment first: the pod it
        // belonged to is gone, and a replaced one is not touched.
        self.prune_attachments();
        let key = format!("{container}/{ifname}");
        let old = self.st.attachments.get(&key).cloned().ok_or_else(|| {
            AttachError::new(CODE_UNKNOWN_CONTAINER, format!("no attachment {key}"))
        })?;
        let new = attach::for_vm(&old, &self.run)?;
        if new == old {
            return Ok(old); // handed over before
        }
        if self.st.desired.is_none() || self.plan.is_none() {
            return Err(AttachError::new(11, "no topology is applied"));
        }
        if !self.switch_alive() {
            return Err(AttachError::new(11, "the switch is not running"));
        }
        let ns = old.request.netns.clone().unwrap_or_default();
        make_socket_dir(&new);
        self.st.attachments.insert(key.clone(), new.clone());
        let t0 = Instant::now();
        // One configuration: the switch closes the tap (which removes it from the
        // namespace) and opens the socket in its place, under the same port name.
        let r = self
            .push_attachments()
            .and_then(|failed| port_opened(&failed, &new.port))
            .and_then(|()| attach::remove_tap(&old, &ns));
        if let Err(e) = r {
            self.st.attachments.insert(key.clone(), old.clone());
            let back = self
                .push_attachments()
                .and_then(|failed| port_opened(&failed, &old.port))
                .and_then(|()| attach::restore_tap(&old, &ns));
            self.remove_socket_dir(&new);
            self.persist(); // in case a prune on the way saved the record in between
            let error = match back {
                Ok(()) => format!("{}; {key} is the tap it was", e.error),
                Err(b) => format!("{}; putting the tap back failed too: {}", e.error, b.error),
            };
            self.event(format!("handing {key} over to its VM failed: {error}"));
            return Err(AttachError::new(e.code, error));
        }
        self.persist();
        self.event(format!(
            "handed {key} over to its VM: {} is vhost-user {} with {} and {} (tap removed) \
             in {:.1} ms",
            new.port,
            new.socket.as_deref().unwrap_or(""),
            new.mac,
            new.address,
            t0.elapsed().as_secs_f64() * 1e3
        ));
        Ok(new)
    }

    pub(super) fn remove_socket_dir(&self, a: &Attachment) {
        if let Some(dir) = a.socket.as_deref().and_then(|s| Path::new(s).parent()) {
            let _ = std::fs::remove_dir(dir); // only when empty: other interfaces stay
        }
    }

    /// CNI DEL: idempotent; `Ok(false)` when there was nothing to remove.
    pub(super) fn detach(&mut self, container: &str, ifname: &str) -> Result<bool, AttachError> {
        let key = format!("{container}/{ifname}");
        let Some(a) = self.st.attachments.remove(&key) else {
            return Ok(false);
        };
        if let Err(e) = self.push_attachments().map(drop) {
            if self.switch_alive() {
                self.st.attachments.insert(key, a);
                return Err(e);
            }
            // No switch: its ports are gone with it; the record goes too.
        }
        self.remove_socket_dir(&a);
        self.persist();
        self.event(format!("detached {key} ({})", a.port));
        Ok(true)
    }

    /// CNI GC: removes attachments not in `valid` (of `network`, if given).
    pub(super) fn gc(&mut self, req: GcRequest) -> Result<Vec<String>, AttachError> {
        let stale: Vec<(String, String)> = self
            .st
            .attachments
            .values()
            .filter(|a| req.network.as_ref().is_none_or(|n| *n == a.request.network))
            .filter(|a| req.networks.is_empty() || req.networks.contains(&a.request.network))
            // The runtime lists (container, primary interface); every interface of a
            // listed container stays (extra networks, the VM runtime's port).
            .filter(|a| !req.valid.iter().any(|v| v.container == a.container))
            .map(|a| (a.container.clone(), a.ifname.clone()))
            .collect();
        let mut removed = Vec::new();
        for (c, i) in stale {
            if self.detach(&c, &i)? {
                removed.push(format!("{c}/{i}"));
            }
        }
        Ok(removed)
    }
}

/// Makes the directory of `a`'s vhost-user socket (0750), if it has one.
fn make_socket_dir(a: &Attachment) {
    if let Some(dir) = a.socket.as_deref().and_then(|s| Path::new(s).parent()) {
        let _ = std::fs::create_dir_all(dir);
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o750));
    }
}

/// `Err` when switch port `port` is among those that failed to open.
fn port_opened(failed: &[PortFailure], port: &str) -> Result<(), AttachError> {
    match failed.iter().find(|f| f.name == port) {
        Some(f) => Err(AttachError::new(
            CODE_SETUP,
            format!("switch port {port}: {}", f.error),
        )),
        None => Ok(()),
    }
}

/// A tap attachment's namespace must be a network namespace (an nsfs file, as
/// `/var/run/netns/NAME`, containerd's, or `/proc/PID/ns/net`), and not the daemon's own:
/// an API client may not put interfaces and routes into the host's namespace.
/// Returns the namespace's identity, recorded with the attachment.
fn check_netns(path: &str) -> Result<NetnsId, AttachError> {
    use std::os::unix::fs::MetadataExt;
    const NSFS_MAGIC: i64 = 0x6e73_6673;
    let bad = |why: String| AttachError::new(4, format!("netns {path:?}: {why}"));
    let md = std::fs::metadata(path).map_err(|e| bad(e.to_string()))?;
    let c = std::ffi::CString::new(path).map_err(|e| bad(e.to_string()))?;
    // SAFETY: a zeroed statfs is a valid out-buffer; c is a NUL-terminated path.
    let mut sfs: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above; statfs writes only into sfs.
    if unsafe { libc::statfs(c.as_ptr(), &mut sfs) } != 0 {
        return Err(bad(std::io::Error::last_os_error().to_string()));
    }
    if sfs.f_type as i64 != NSFS_MAGIC {
        return Err(bad("not a namespace file".into()));
    }
    if let Ok(own) = std::fs::metadata("/proc/self/ns/net") {
        if own.dev() == md.dev() && own.ino() == md.ino() {
            return Err(bad("is the host's own network namespace".into()));
        }
    }
    Ok(NetnsId {
        dev: md.dev(),
        ino: md.ino(),
    })
}

/// The interface names extra networks get must be valid, distinct, and leave `eth0`
/// (the primary interface) alone.
pub(super) fn pod_network_names(v: &[PodNetwork]) -> Result<(), String> {
    let mut seen = std::collections::HashSet::new();
    for (k, n) in v.iter().enumerate() {
        let name = n
            .interface
            .clone()
            .unwrap_or_else(|| format!("net{}", k + 1));
        attach::valid_key("pod", &name).map_err(|e| e.error)?;
        if name == "eth0" || !seen.insert(name.clone()) {
            return Err(format!("interface {name:?} is eth0 or used twice"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    //! The hand-over against a fake switch (a control socket that records the specs it is
    //! sent and, like the switch, holds a real tap in a scratch network namespace while
    //! its port is a tap), so the rollback paths can be made to fail on purpose.

    use std::collections::{HashMap, VecDeque};
    use std::path::PathBuf;
    use std::process::Command;
    use std::sync::{mpsc, Arc, Mutex};
    use std::time::Duration;

    use api::switch::{ApplyReply, Driver, SwitchSpec, VhostMode};
    use pmd::tap::TapPort;

    use super::*;
    use crate::attach::CODE_NOT_A_TAP;
    use crate::daemon::procs::{start_time, ProcRec, Procs};
    use crate::daemon::state::Persisted;
    use crate::plan::GuestImage;

    const TOPOLOGY: &str = r#"
networks:
  - { name: n, tenant: t, cidrs: [10.0.0.0/24], vlan: 10, gateway: [10.0.0.254] }
"#;

    /// A network namespace of its own, held by a thread until the guard drops.
    struct ScratchNetns {
        path: String,
        _stop: mpsc::Sender<()>,
    }

    fn scratch_netns() -> Result<ScratchNetns, String> {
        let (tx, rx) = mpsc::channel();
        let (stop, stopped) = mpsc::channel::<()>();
        std::thread::spawn(move || {
            // SAFETY: unshare changes this thread's network namespace only; the thread
            // does nothing else until it ends.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                let _ = tx.send(Err(std::io::Error::last_os_error().to_string()));
                return;
            }
            // SAFETY: gettid has no preconditions.
            let tid = unsafe { libc::gettid() };
            let path = format!("/proc/{}/task/{tid}/ns/net", std::process::id());
            let _ = tx.send(Ok(path));
            let _ = stopped.recv();
        });
        let path = rx.recv().map_err(|e| e.to_string())??;
        Ok(ScratchNetns { path, _stop: stop })
    }

    /// What the fake switch does with the next configuration.
    #[derive(Clone, Copy, Debug, PartialEq)]
    enum Answer {
        /// As the switch: a tap port opens its tap, a port that is no tap closes it.
        Apply,
        /// As `Apply`, but the tap stays (as a device nobody closed would).
        KeepTap,
        /// 422: the spec is refused whole, nothing changes.
        Refuse,
        /// As `Apply`, and every vhost-user port is reported as failed to open.
        FailVhostUser,
    }

    #[derive(Default)]
    struct FakeSwitch {
        answers: VecDeque<Answer>,
        specs: Vec<SwitchSpec>,
        tap: Option<TapPort>,
        taps_opened: usize,
    }

    fn put_config(sw: &Mutex<FakeSwitch>, body: &[u8]) -> api::http::Response {
        let mut sw = sw.lock().unwrap_or_else(|p| p.into_inner());
        let spec: SwitchSpec = match serde_json::from_slice(body) {
            Ok(s) => s,
            Err(e) => return api::http::Response::json(400, api::http::error_body(&e.to_string())),
        };
        sw.specs.push(spec.clone());
        let answer = sw.answers.pop_front().unwrap_or(Answer::Apply);
        if answer == Answer::Refuse {
            return api::http::Response::json(422, api::http::error_body("refused by the test"));
        }
        let tap = spec.ports.iter().find_map(|p| match &p.driver {
            Driver::Tap { name, netns } => Some((p.name.clone(), name.clone(), netns.clone())),
            Driver::VhostUser { .. } | Driver::Vxlan { .. } => None,
        });
        match tap {
            Some((port, name, netns)) if sw.tap.is_none() => {
                match TapPort::new_in(&port, &name, netns.as_deref(), false) {
                    Ok(t) => {
                        sw.tap = Some(t);
                        sw.taps_opened += 1;
                    }
                    Err(e) => {
                        return api::http::Response::json(
                            500,
                            api::http::error_body(&e.to_string()),
                        )
                    }
                }
            }
            Some(_) => {}
            None if answer == Answer::KeepTap => {}
            None => sw.tap = None,
        }
        let failed = spec
            .ports
            .iter()
            .filter(|p| matches!(p.driver, Driver::VhostUser { .. }))
            .filter(|_| answer == Answer::FailVhostUser)
            .map(|p| PortFailure {
                name: p.name.clone(),
                error: "cannot listen (test)".into(),
            })
            .collect();
        api::http::json(&ApplyReply {
            generation: sw.specs.len() as u64,
            failed,
        })
    }

    fn fake_switch(sock: PathBuf) -> Arc<Mutex<FakeSwitch>> {
        let sw = Arc::new(Mutex::new(FakeSwitch::default()));
        let l = std::os::unix::net::UnixListener::bind(sock).expect("fake switch socket");
        let s2 = sw.clone();
        std::thread::spawn(move || {
            for c in l.incoming().flatten() {
                api::http::serve_one(c, Duration::from_secs(5), |r| {
                    if r.method == "PUT" && r.path == "/v1/config" {
                        put_config(&s2, &r.body)
                    } else {
                        api::http::Response::json(404, api::http::error_body("fake"))
                    }
                });
            }
        });
        sw
    }

    /// A daemon on a fresh run directory with `TOPOLOGY` applied, its switch the fake (the
    /// test process stands in as the switch's process), and a tap attachment `sb/eth0`
    /// made by CNI ADD in a scratch namespace.
    struct Fixture {
        d: Daemon,
        sw: Arc<Mutex<FakeSwitch>>,
        tap: Attachment,
        ns: ScratchNetns,
        dir: PathBuf,
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn fixture(tag: &str) -> Result<Fixture, String> {
        if !Path::new("/dev/net/tun").exists() {
            return Err("no /dev/net/tun".into());
        }
        let ns = scratch_netns().map_err(|e| format!("unshare(CLONE_NEWNET): {e}"))?;
        let dir = std::env::temp_dir().join(format!("vnfh-ho-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let sw = fake_switch(crate::plan::switch_socket(&dir));
        let t = crate::topology::parse(TOPOLOGY)?;
        let image = GuestImage {
            kernel: "/k".into(),
            initrd: "/i".into(),
        };
        let plan = crate::plan::plan(&t, &dir, &image, &crate::topology::Host::current())?;
        let me = std::process::id() as i32;
        let mut d = Daemon {
            run: dir.clone(),
            exe: "/bin/false".into(),
            image,
            st: Persisted {
                desired: Some(t),
                switch: Some(ProcRec {
                    pid: me,
                    start_time: start_time(me).ok_or("own start time")?,
                    args: vec![],
                }),
                ..Persisted::default()
            },
            plan: Some(plan),
            procs: Procs::default(),
            not_before: HashMap::new(),
            samples: VecDeque::new(),
            unanswered_since: None,
            events: VecDeque::new(),
            removed_pods: Vec::new(),
        };
        let req = AttachRequest {
            network: "n".into(),
            netns: Some(ns.path.clone()),
            kind: Kind::Tap,
            pod: Some("default/sb".into()),
            default_route: true,
        };
        let tap = d
            .attach("sb", "eth0", req)
            .map_err(|e| format!("ADD: {}", e.error))?;
        Ok(Fixture {
            d,
            sw,
            tap,
            ns,
            dir,
        })
    }

    /// `ip ARGS` in the namespace at `ns`.
    fn ip_in(ns: &str, args: &[&str]) -> (bool, String) {
        let o = Command::new("nsenter")
            .arg(format!("--net={ns}"))
            .arg("ip")
            .args(args)
            .output()
            .expect("nsenter");
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
        )
    }

    macro_rules! fixture_or_skip {
        ($tag:expr) => {
            match fixture($tag) {
                Ok(f) => f,
                Err(e) => {
                    println!("SKIPPED: {e}");
                    return;
                }
            }
        };
    }

    #[test]
    fn a_handed_over_tap_is_a_vhost_user_port_with_its_mac_and_address_and_stays_one() {
        let mut f = fixture_or_skip!("ok");
        let a = f.tap.clone();
        let (up, addrs) = ip_in(&f.ns.path, &["-4", "-o", "addr", "show", "eth0"]);
        assert!(
            up && addrs.contains(&a.address),
            "ADD made the tap: {addrs}"
        );
        // The switch does not close the tap this time: the daemon removes what is left.
        f.sw.lock().unwrap().answers.push_back(Answer::KeepTap);
        let v = f.d.hand_over("sb", "eth0").expect("hand-over");
        assert!(v.vm && v.kind() == Kind::VhostUser && v.tap.is_none());
        let sock = v.socket.clone().expect("a socket");
        assert!(
            sock.starts_with(f.dir.join("cni").to_str().unwrap()),
            "{sock}"
        );
        let dir_mode = std::fs::metadata(Path::new(&sock).parent().unwrap())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(dir_mode & 0o777, 0o750);
        // Everything else is the CNI ADD's.
        let same = |x: &Attachment| {
            (
                x.container.clone(),
                x.ifname.clone(),
                x.request.clone(),
                x.port.clone(),
                x.mac.clone(),
                x.address.clone(),
                x.gateway.clone(),
                x.netns_id,
            )
        };
        assert_eq!(same(&v), same(&a));
        assert_eq!(a.gateway.as_deref(), Some("10.0.0.254"));
        // Nothing holds the pod IP in the sandbox's namespace any more.
        let (there, _) = ip_in(&f.ns.path, &["link", "show", "eth0"]);
        assert!(!there, "the tap is still in the namespace");
        let (_, addrs) = ip_in(&f.ns.path, &["-4", "-o", "addr"]);
        assert!(!addrs.contains("10.0.0."), "{addrs}");
        // The switch got the same port as vhost-user server, with the same security.
        let spec = f.sw.lock().unwrap().specs.last().cloned().unwrap();
        let p = spec.ports.iter().find(|p| p.name == a.port).unwrap();
        assert_eq!(
            p.driver,
            Driver::VhostUser {
                path: sock.clone().into(),
                mode: VhostMode::Server,
                queues: 1,
                max_memory_mib: None,
            }
        );
        assert_eq!(p.mac, Some(a.mac.parse().unwrap()));
        assert_eq!(
            p.allowed_addresses,
            vec!["10.0.0.1".parse::<std::net::IpAddr>().unwrap()]
        );
        assert!(p.anti_spoofing);
        assert_eq!(
            p.vlan,
            api::VlanMode::Access {
                vlan: api::VlanId::new(10).unwrap()
            }
        );

        // Twice: the same, and the switch is not asked again.
        let pushes = f.sw.lock().unwrap().specs.len();
        assert_eq!(f.d.hand_over("sb", "eth0").unwrap(), v);
        assert_eq!(f.sw.lock().unwrap().specs.len(), pushes);

        // state.json has it: a daemon reading it makes the vhost-user port, not the tap,
        // and does not configure a tap in the namespace after a switch restart.
        let saved: Persisted =
            serde_json::from_slice(&std::fs::read(f.d.state_file()).unwrap()).unwrap();
        assert_eq!(saved.attachments.get("sb/eth0"), Some(&v));
        f.d.st = saved;
        let (t, plan) = (f.d.st.desired.clone().unwrap(), f.d.plan.clone().unwrap());
        let full = f.d.full_switch(&t, &plan);
        let p = full.ports.iter().find(|p| p.name == a.port).unwrap();
        assert!(matches!(p.driver, Driver::VhostUser { .. }), "{p:?}");
        f.d.reconfigure_taps();
        assert!(!ip_in(&f.ns.path, &["link", "show", "eth0"]).0);

        // CNI DEL: the port goes, and the address is free for the next pod.
        assert_eq!(f.d.detach("sb", "eth0"), Ok(true));
        let spec = f.sw.lock().unwrap().specs.last().cloned().unwrap();
        assert!(spec.ports.iter().all(|p| p.name != a.port));
        assert!(!Path::new(&sock).parent().unwrap().exists());
        let t = f.d.st.desired.clone().unwrap();
        let next = attach::allocate(
            &t,
            &f.d.st.attachments.values().collect::<Vec<_>>(),
            "next",
            "eth0",
            &a.request,
            &f.dir,
        )
        .unwrap();
        assert_eq!(next.address, a.address);
        assert_eq!(f.d.detach("sb", "eth0"), Ok(false), "a second DEL");
    }

    #[test]
    fn a_failed_hand_over_leaves_the_tap_attachment_as_it_was() {
        let mut f = fixture_or_skip!("fail");
        let a = f.tap.clone();
        let state_before = std::fs::read(f.d.state_file()).unwrap();
        let sock_dir = PathBuf::from(attach::for_vm(&a, &f.dir).unwrap().socket.unwrap())
            .parent()
            .unwrap()
            .to_path_buf();
        let tap_is_configured = |ns: &str| {
            let (ok, addrs) = ip_in(ns, &["-o", "addr", "show", "eth0"]);
            let (_, link) = ip_in(ns, &["-o", "link", "show", "eth0"]);
            ok && addrs.contains(&a.address) && link.contains(&a.mac) && link.contains(",UP")
        };
        assert!(tap_is_configured(&f.ns.path));

        // 1. The switch refuses the configuration: nothing changed anywhere.
        f.sw.lock().unwrap().answers.push_back(Answer::Refuse);
        let e = f.d.hand_over("sb", "eth0").unwrap_err();
        assert_eq!(e.code, CODE_SETUP, "{e:?}");
        assert!(e.error.contains("refused by the test"), "{e:?}");
        assert!(e.error.contains("sb/eth0 is the tap it was"), "{e:?}");
        assert_eq!(f.d.st.attachments.get("sb/eth0"), Some(&a));
        assert_eq!(std::fs::read(f.d.state_file()).unwrap(), state_before);
        assert!(!sock_dir.exists());
        assert_eq!(
            f.sw.lock().unwrap().taps_opened,
            1,
            "the tap was never closed"
        );
        assert!(tap_is_configured(&f.ns.path));

        // 2. The switch closes the tap but cannot open the socket: the tap is made and
        // configured again, with its MAC, address and route.
        f.sw.lock()
            .unwrap()
            .answers
            .push_back(Answer::FailVhostUser);
        let e = f.d.hand_over("sb", "eth0").unwrap_err();
        assert_eq!(e.code, CODE_SETUP, "{e:?}");
        assert!(
            e.error
                .contains(&format!("switch port {}: cannot listen", a.port)),
            "{e:?}"
        );
        assert!(e.error.contains("is the tap it was"), "{e:?}");
        assert_eq!(f.d.st.attachments.get("sb/eth0"), Some(&a));
        assert_eq!(std::fs::read(f.d.state_file()).unwrap(), state_before);
        assert!(!sock_dir.exists());
        let spec = f.sw.lock().unwrap().specs.last().cloned().unwrap();
        let p = spec.ports.iter().find(|p| p.name == a.port).unwrap();
        assert!(matches!(p.driver, Driver::Tap { .. }), "{p:?}");
        assert_eq!(
            f.sw.lock().unwrap().taps_opened,
            2,
            "the tap was made again"
        );
        assert!(tap_is_configured(&f.ns.path));
        let (_, routes) = ip_in(&f.ns.path, &["route", "show", "default"]);
        assert!(routes.contains("via 10.0.0.254 dev eth0"), "{routes}");

        // 3. No switch: refused before anything is sent.
        let pushes = f.sw.lock().unwrap().specs.len();
        let sw = f.d.st.switch.take();
        let e = f.d.hand_over("sb", "eth0").unwrap_err();
        assert_eq!(e.code, 11, "{e:?}");
        assert_eq!(f.sw.lock().unwrap().specs.len(), pushes);
        f.d.st.switch = sw;

        // Unknown attachments and vhost-user ones are refused with their own codes.
        assert_eq!(
            f.d.hand_over("nope", "eth0").unwrap_err().code,
            CODE_UNKNOWN_CONTAINER
        );
        let mut vu = a.clone();
        vu.request.kind = Kind::VhostUser;
        vu.tap = None;
        vu.socket = Some("/x.sock".into());
        f.d.st.attachments.insert("sb/eth0".into(), vu);
        assert_eq!(
            f.d.hand_over("sb", "eth0").unwrap_err().code,
            CODE_NOT_A_TAP
        );
        f.d.st.attachments.insert("sb/eth0".into(), a);
        // It still hands over once the switch takes it.
        assert!(f.d.hand_over("sb", "eth0").unwrap().vm);
    }
}
