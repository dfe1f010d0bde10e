//! `vnfhost daemon`: owns the desired state (a [`Topology`]) and makes the host match it.
//!
//! # Processes
//!
//! ```text
//!   vnfhost daemon ──API (RUN/api.sock, HTTP/JSON /v1, 0660)── vnfhost up/down/status, CNI
//!      │ spawns (own session), watches, stops
//!      ├── vnfhost switch --control RUN/switch.sock   (polling cores; configured over its socket)
//!      └── vnfhost vm run … (one per pod; QEMU or vnfhost's KVM monitor), NICs on the switch
//! ```
//!
//! The daemon is not on the data path: the switch and the VMs are processes of their own,
//! in their own sessions, and the switch keeps its configuration. Stopping or restarting
//! the daemon leaves them running; a new daemon reads `RUN/state.json` (written
//! atomically after every change), checks each recorded process by pid *and* start time
//! (so a reused pid is not mistaken for it), adopts what still runs and restarts what
//! does not. `vnfhost down` is what stops everything.
//!
//! # Applying
//!
//! `PUT /v1/topology` checks the topology against the host, plans it ([`crate::plan`])
//! and applies the difference in steps, each with its undo: (re)start the switch if its
//! cores or options changed; stop pods that were removed or changed; set the switch's
//! ports, routers and groups; start new and changed pods and see them survive their
//! first half second. A failing step undoes the steps before it, in reverse, so the host
//! is back to the previous state, and the error says so. Applying the same topology
//! twice changes nothing the second time.
//!
//! # Keeping it applied
//!
//! Every second: a switch that died is started again and given its configuration (the
//! VMs reconnect to their ports); a pod whose VM exited is restarted as its restart
//! policy says, with exponential back-off; counters are sampled for rates.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

pub use api::daemon::{
    default_api_socket, ApplyReply, AttachmentKey, CoreStatus, Exit, GcRequest, Phase, PodNetwork,
    PodStatus, PortStatus, Refusal, Status, SwitchStatus, API_VERSION, RUN_DIR,
};
use api::http::{self, Request, Response};

use crate::attach::{self, AttachError, AttachRequest, Attachment, Kind};
use crate::plan::{self, GuestImage, Plan, PodPlan};
use crate::topology::{Host, Network, RestartPolicy, Topology};
use api::http::json;
use api::switch::{SwitchCounters, SwitchSpec};

/// `PUT /v1/topology` body, with the topology read as its schema.
pub type ApplyRequest = api::daemon::ApplyRequest<Topology>;

/// Options of `vnfhost daemon`.
#[derive(Clone, Debug)]
pub struct DaemonArgs {
    /// Where sockets, logs and the state file go.
    pub run_dir: PathBuf,
    /// Group given access to the API socket (besides root).
    pub group: Option<String>,
    /// Also serve `GET /metrics` over TCP here, for Prometheus.
    pub metrics: Option<std::net::SocketAddr>,
    /// The guest image for pods that name no kernel.
    pub image: GuestImage,
}

// ---------------------------------------------------------------------------------
// Processes

/// A process the daemon started, identified by pid and start time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcRec {
    /// Process id.
    pub pid: i32,
    /// Start time in clock ticks since boot (`/proc/PID/stat` field 22).
    pub start_time: u64,
    /// Its arguments (after the program).
    pub args: Vec<String>,
}

/// Start time of `pid`, if it exists and is not a zombie.
fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: fields follow the last ')'.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let mut f = rest.split(' ');
    let state = f.next()?;
    if state == "Z" || state == "X" {
        return None;
    }
    // `rest` starts at field 3 (state); field 22 is 19 further.
    f.nth(18)?.parse().ok()
}

/// The daemon's own children (for their exit status) and the rest, adopted.
#[derive(Default)]
struct Procs {
    children: HashMap<i32, Child>,
}

impl Procs {
    /// `None` while `rec` runs; how it ended otherwise.
    fn check(&mut self, rec: &ProcRec) -> Option<Exit> {
        if let Some(c) = self.children.get_mut(&rec.pid) {
            return match c.try_wait() {
                Ok(None) => None,
                Ok(Some(st)) => {
                    self.children.remove(&rec.pid);
                    Some(if st.success() {
                        Exit::Success
                    } else {
                        Exit::Failed(st.to_string())
                    })
                }
                Err(e) => Some(Exit::Failed(e.to_string())),
            };
        }
        match start_time(rec.pid) {
            Some(t) if t == rec.start_time => None,
            _ => Some(Exit::Unknown),
        }
    }

    /// Starts `exe args` in a session of its own, output to `log` (and `out`).
    fn spawn(
        &mut self,
        exe: &Path,
        args: &[String],
        out: &Path,
        log: &Path,
    ) -> Result<ProcRec, String> {
        let open = |p: &Path| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|e| format!("{}: {e}", p.display()))
        };
        let mut cmd = Command::new(exe);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(open(out)?)
            .stderr(open(log)?);
        // SAFETY: setsid is async-signal-safe and the closure allocates nothing. The
        // child leaves the daemon's session, so signals to the daemon's terminal or
        // process group do not reach it.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .map_err(|e| format!("{} {}: {e}", exe.display(), args.join(" ")))?;
        let pid = child.id() as i32;
        let t = start_time(pid).unwrap_or(0);
        self.children.insert(pid, child);
        Ok(ProcRec {
            pid,
            start_time: t,
            args: args.to_vec(),
        })
    }

    /// SIGTERM, up to `grace` to exit, then SIGKILL. Only a process that is still the
    /// one recorded (pid and start time) is signalled.
    fn stop(&mut self, rec: &ProcRec, grace: Duration) {
        if self.check(rec).is_some() {
            return;
        }
        // SAFETY: kill with a pid just checked to be our process.
        unsafe { libc::kill(rec.pid, libc::SIGTERM) };
        let t0 = Instant::now();
        while t0.elapsed() < grace {
            if self.check(rec).is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if self.check(rec).is_none() {
            // SAFETY: as above.
            unsafe { libc::kill(rec.pid, libc::SIGKILL) };
            for _ in 0..100 {
                if self.check(rec).is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

// ---------------------------------------------------------------------------------
// State

/// A pod as the daemon keeps it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PodRec {
    /// The VM process, while it runs.
    pub proc: Option<ProcRec>,
    /// `vnfhost vm run` arguments of the current plan.
    pub args: Vec<String>,
    /// Restarts so far.
    pub restarts: u32,
    /// How the last VM ended.
    pub last_exit: Option<Exit>,
    /// Phase.
    pub phase: Phase,
}

/// What `RUN/state.json` holds.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Persisted {
    generation: u64,
    source: Option<String>,
    desired: Option<Topology>,
    switch: Option<ProcRec>,
    pods: BTreeMap<String, PodRec>,
    /// CNI attachments by `CONTAINER/IFNAME`.
    #[serde(default)]
    attachments: BTreeMap<String, Attachment>,
    /// Extra networks of Kubernetes pods by `NAMESPACE/NAME` (their
    /// `k8s.v1.cni.cncf.io/networks` annotation, recorded by the controller).
    #[serde(default)]
    pod_networks: BTreeMap<String, Vec<PodNetwork>>,
}

/// One undoable step of an apply.
enum Undo {
    StopSwitch,
    StartSwitch(Vec<String>),
    Config(SwitchSpec),
    StopPod(String),
    StartPod(String, PodRec),
}

struct Daemon {
    run: PathBuf,
    exe: PathBuf,
    image: GuestImage,
    st: Persisted,
    plan: Option<Plan>,
    procs: Procs,
    /// Earliest restart of a pod in back-off.
    not_before: HashMap<String, Instant>,
    /// The last two counter samples, for rates.
    samples: VecDeque<(Instant, SwitchCounters)>,
    events: VecDeque<String>,
    /// Pods an apply in progress removed (their directories go when it succeeds).
    removed_pods: Vec<String>,
}

impl Daemon {
    fn event(&mut self, msg: String) {
        tracing::info!("{msg}");
        let t = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        self.events.push_back(format!("{t} {msg}"));
        while self.events.len() > 50 {
            self.events.pop_front();
        }
    }

    fn state_file(&self) -> PathBuf {
        self.run.join("state.json")
    }

    fn persist(&self) {
        let tmp = self.run.join("state.json.tmp");
        let ok = serde_json::to_vec_pretty(&self.st)
            .map_err(std::io::Error::other)
            .and_then(|b| {
                let mut f = std::fs::File::create(&tmp)?;
                f.write_all(&b)?;
                f.sync_all()
            })
            .and_then(|()| std::fs::rename(&tmp, self.state_file()));
        if let Err(e) = ok {
            tracing::error!("saving {}: {e}", self.state_file().display());
        }
    }

    fn switch_sock(&self) -> PathBuf {
        plan::switch_socket(&self.run)
    }

    fn switch_alive(&mut self) -> bool {
        match self.st.switch.clone() {
            Some(rec) => self.procs.check(&rec).is_none(),
            None => false,
        }
    }

    /// Host resources for checking `t`, counting those the running topology holds as
    /// free (they are handed over, not taken twice).
    fn host(&self) -> Host {
        let mut h = Host::current();
        if let Some(cur) = &self.st.desired {
            h.free_hugepages += cur.hugepages_needed();
        }
        h
    }

    fn start_switch(&mut self, args: &[String]) -> Result<(), String> {
        let log = self.run.join("switch.log");
        let rec = self.procs.spawn(&self.exe, args, &log, &log)?;
        let sock = self.switch_sock();
        let t0 = Instant::now();
        loop {
            if UnixStream::connect(&sock).is_ok() {
                break;
            }
            if let Some(e) = self.procs.check(&rec) {
                return Err(format!(
                    "the switch exited at start ({e}): {}",
                    tail(&log, 5)
                ));
            }
            if t0.elapsed() > Duration::from_secs(10) {
                self.procs.stop(&rec, Duration::from_secs(1));
                return Err(format!(
                    "the switch did not open {} within 10 s: {}",
                    sock.display(),
                    tail(&log, 5)
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.event(format!("switch started, pid {}", rec.pid));
        self.st.switch = Some(rec);
        Ok(())
    }

    fn stop_switch(&mut self) {
        if let Some(rec) = self.st.switch.take() {
            self.procs.stop(&rec, Duration::from_secs(5));
            self.event(format!("switch stopped, pid {}", rec.pid));
        }
        let _ = std::fs::remove_file(self.switch_sock());
    }

    /// The switch configuration for topology `t` planned as `plan`: its ports, routers
    /// and groups, plus a port per CNI attachment.
    fn full_switch(&self, t: &Topology, plan: &Plan) -> SwitchSpec {
        let mut d = plan.switch.clone();
        // An attachment whose record does not make a port (a state file edited by hand)
        // is left out and said so; the rest is applied.
        for a in self.st.attachments.values() {
            let vlan = t
                .networks
                .iter()
                .find(|n| n.name == a.request.network)
                .map(|n| n.vlan.unwrap_or(1))
                .unwrap_or(1);
            match attach::port_spec(a, vlan) {
                Ok(p) => d.ports.push(p),
                Err(e) => tracing::warn!("{e}"),
            }
        }
        d
    }

    fn switch_config(&self) -> Result<SwitchSpec, String> {
        api::http::request(&self.switch_sock(), "GET", "/v1/config", None)
            .map_err(|e| format!("switch control: {e}"))
    }

    fn set_switch_config(&self, d: &SwitchSpec) -> Result<(), String> {
        let body = serde_json::to_vec(d).map_err(|e| e.to_string())?;
        let reply: api::switch::ApplyReply =
            api::http::request(&self.switch_sock(), "PUT", "/v1/config", Some(&body))
                .map_err(|e| format!("switch control: {e}"))?;
        // The rest of the configuration runs; these ports are retried by the switch.
        for f in &reply.failed {
            tracing::warn!("switch port {} failed to open: {}", f.name, f.error);
        }
        Ok(())
    }

    fn start_pod(&mut self, p: &PodPlan) -> Result<ProcRec, String> {
        std::fs::create_dir_all(&p.dir).map_err(|e| format!("{}: {e}", p.dir.display()))?;
        let rec = self.procs.spawn(
            &self.exe,
            &p.args,
            &p.dir.join("console.log"),
            &p.dir.join("vmm.log"),
        )?;
        Ok(rec)
    }

    /// Starts `p` and sees its VM survive half a second (a bad kernel, short huge pages
    /// or a broken option end it sooner).
    fn start_pod_checked(&mut self, p: &PodPlan) -> Result<ProcRec, String> {
        let rec = self.start_pod(p)?;
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_millis(500) {
            if let Some(e) = self.procs.check(&rec) {
                return Err(format!(
                    "pod {}: its VM exited at start ({e}): {}",
                    p.name,
                    tail(&p.dir.join("vmm.log"), 5)
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(rec)
    }

    fn stop_pod(&mut self, name: &str) {
        if let Some(rec) = self.st.pods.get_mut(name).and_then(|r| r.proc.take()) {
            self.procs.stop(&rec, Duration::from_secs(5));
        }
    }

    /// Applies `t`; on failure the previous state is restored and the error says what
    /// failed.
    fn apply(&mut self, t: Topology, source: Option<String>) -> Result<ApplyReply, Refusal> {
        let problems = t.check(self.host());
        if !problems.is_empty() {
            return Err(Refusal {
                error: format!("{} problem(s); nothing was changed", problems.len()),
                problems: problems.iter().map(|p| p.to_string()).collect(),
            });
        }
        let new = plan::plan(&t, &self.run, &self.image).map_err(|e| Refusal {
            error: e,
            problems: vec![],
        })?;
        let orphans: Vec<&str> = self
            .st
            .attachments
            .values()
            .filter(|a| !t.networks.iter().any(|n| n.name == a.request.network))
            .map(|a| a.request.network.as_str())
            .collect();
        if !orphans.is_empty() {
            return Err(Refusal {
                error: format!(
                    "networks {orphans:?} still have pods attached through CNI; delete those \
                     pods first; nothing was changed"
                ),
                problems: vec![],
            });
        }
        // A stale port (its pod's namespace gone) would make the switch refuse it all.
        self.prune_attachments();
        let saved = self.st.clone();
        let mut undo = Vec::new();
        let mut changes = Vec::new();
        let full = self.full_switch(&t, &new);
        match self.apply_steps(&new, &full, &mut undo, &mut changes) {
            Ok(()) => {
                if !changes.is_empty() || self.st.desired.as_ref() != Some(&t) {
                    self.st.generation += 1;
                }
                self.st.desired = Some(t);
                self.st.source = source;
                self.plan = Some(new);
                for name in std::mem::take(&mut self.removed_pods) {
                    let _ = std::fs::remove_dir_all(self.run.join("pods").join(&name));
                }
                self.persist();
                for c in &changes {
                    self.event(format!("up: {c}"));
                }
                Ok(ApplyReply {
                    generation: self.st.generation,
                    changes,
                })
            }
            Err(e) => {
                let undo_errors = self.roll_back(undo, &saved);
                self.event(format!("up failed, rolled back: {e}"));
                let mut error = format!("{e}; rolled back to generation {}", saved.generation);
                if !undo_errors.is_empty() {
                    error.push_str(&format!(
                        " (rollback incomplete: {})",
                        undo_errors.join("; ")
                    ));
                }
                Err(Refusal {
                    error,
                    problems: vec![],
                })
            }
        }
    }

    fn apply_steps(
        &mut self,
        new: &Plan,
        full: &SwitchSpec,
        undo: &mut Vec<Undo>,
        changes: &mut Vec<String>,
    ) -> Result<(), String> {
        // 1. The switch process.
        let mut alive = self.switch_alive();
        let old_args = self.st.switch.as_ref().map(|r| r.args.clone());
        let mut config_now = SwitchSpec::default();
        if alive {
            match self.switch_config() {
                Ok(c) => config_now = c,
                // A switch adopted from another vnfhost version whose configuration is
                // not this spec: it is started again from this binary.
                Err(e) if e.contains("bad reply") => {
                    self.event(format!(
                        "the running switch's configuration is unreadable ({e}); restarting it"
                    ));
                    self.stop_switch();
                    alive = false;
                }
                Err(e) => return Err(e),
            }
        }
        if !alive || old_args.as_deref() != Some(new.switch_args.as_slice()) {
            if alive {
                self.stop_switch();
                // Undone in reverse: the old switch starts again, then gets its config.
                undo.push(Undo::Config(config_now.clone()));
                undo.push(Undo::StartSwitch(old_args.unwrap_or_default()));
                changes.push("switch restarted with new options".into());
            } else {
                changes.push("switch started".into());
            }
            self.start_switch(&new.switch_args)?;
            undo.push(Undo::StopSwitch);
            config_now = SwitchSpec::default();
        }
        // 2. Pods removed or changed: stopped.
        let wanted: HashMap<&str, &PodPlan> =
            new.pods.iter().map(|p| (p.name.as_str(), p)).collect();
        let names: Vec<String> = self.st.pods.keys().cloned().collect();
        let mut stopped_ports = Vec::new();
        let mut removed = Vec::new();
        for name in names {
            let rec = self.st.pods[&name].clone();
            let keep = wanted
                .get(name.as_str())
                .is_some_and(|p| p.args == rec.args);
            if keep {
                continue;
            }
            self.stop_pod(&name);
            self.st.pods.remove(&name);
            undo.push(Undo::StartPod(name.clone(), rec));
            changes.push(if wanted.contains_key(name.as_str()) {
                format!("pod {name} changed: stopped")
            } else {
                // Its directory goes once the whole apply succeeded (undo needs it).
                removed.push(name.clone());
                format!("pod {name} removed")
            });
            stopped_ports.push(format!("{name}.eth"));
        }
        // 3. The switch configuration: first without the ports of stopped pods (their
        // sockets may be reused with other parameters), then the new one.
        if !stopped_ports.is_empty() {
            let mut mid = config_now.clone();
            mid.ports
                .retain(|p| !stopped_ports.iter().any(|s| p.name.starts_with(s.as_str())));
            if mid != config_now {
                self.set_switch_config(&mid)?;
                undo.push(Undo::Config(config_now.clone()));
                config_now = mid;
            }
        }
        let restarted = config_now == SwitchSpec::default();
        if config_now != *full {
            self.set_switch_config(full)?;
            undo.push(Undo::Config(config_now));
            if restarted {
                // A new switch made new taps in the CNI pods' namespaces.
                self.reconfigure_taps();
            }
            changes.push(format!(
                "switch configured: {} ports, {} routers, {} security groups",
                new.switch.ports.len(),
                new.switch.routers.len(),
                new.switch.security_groups.len()
            ));
        }
        self.removed_pods = removed;
        // 4. New and changed pods: started.
        for p in &new.pods {
            if self.st.pods.contains_key(&p.name) {
                continue;
            }
            let rec = self.start_pod_checked(p)?;
            changes.push(format!("pod {} started, pid {}", p.name, rec.pid));
            self.st.pods.insert(
                p.name.clone(),
                PodRec {
                    proc: Some(rec),
                    args: p.args.clone(),
                    restarts: 0,
                    last_exit: None,
                    phase: Phase::Running,
                },
            );
            undo.push(Undo::StopPod(p.name.clone()));
        }
        Ok(())
    }

    /// Undoes `undo` in reverse; returns what could not be undone.
    fn roll_back(&mut self, undo: Vec<Undo>, saved: &Persisted) -> Vec<String> {
        let mut errors = Vec::new();
        for u in undo.into_iter().rev() {
            let r = match u {
                Undo::StopSwitch => {
                    self.stop_switch();
                    Ok(())
                }
                Undo::StartSwitch(args) => self.start_switch(&args),
                Undo::Config(d) => self.set_switch_config(&d),
                Undo::StopPod(name) => {
                    self.stop_pod(&name);
                    self.st.pods.remove(&name);
                    let _ = std::fs::remove_dir_all(self.run.join("pods").join(&name));
                    Ok(())
                }
                Undo::StartPod(name, mut rec) => {
                    let plan = self
                        .plan
                        .as_ref()
                        .and_then(|p| p.pods.iter().find(|p| p.name == name))
                        .cloned();
                    match plan {
                        Some(p) if rec.proc.is_some() => match self.start_pod(&p) {
                            Ok(pr) => {
                                rec.proc = Some(pr);
                                self.st.pods.insert(name, rec);
                                Ok(())
                            }
                            Err(e) => Err(e),
                        },
                        _ => {
                            self.st.pods.insert(name, rec);
                            Ok(())
                        }
                    }
                }
            };
            if let Err(e) = r {
                errors.push(e);
            }
        }
        // Directories of pods that do not run now (a pod that failed to start, one
        // whose port the switch had made) go.
        if let Ok(dirs) = std::fs::read_dir(self.run.join("pods")) {
            for e in dirs.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if !self.st.pods.contains_key(&name) {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        self.removed_pods.clear();
        // The records of what runs are now as before (with new pids where restarted).
        self.st.generation = saved.generation;
        self.st.desired = saved.desired.clone();
        self.st.source = saved.source.clone();
        self.persist();
        errors
    }

    /// Drops tap attachments whose network namespace is gone (the pod went without a
    /// DEL); returns whether any was dropped. Their ports would make every switch
    /// configuration fail.
    fn prune_attachments(&mut self) -> bool {
        let gone: Vec<String> = self
            .st
            .attachments
            .iter()
            .filter(|(_, a)| a.request.kind == Kind::Tap)
            .filter(|(_, a)| {
                !a.request
                    .netns
                    .as_deref()
                    .is_some_and(|n| Path::new(n).exists())
            })
            .map(|(k, _)| k.clone())
            .collect();
        for k in &gone {
            self.st.attachments.remove(k);
            self.event(format!(
                "attachment {k}: its network namespace is gone; dropped"
            ));
        }
        !gone.is_empty()
    }

    /// After the switch started anew: its taps are new devices in the pods' namespaces,
    /// without MAC, address or route; give them theirs again.
    fn reconfigure_taps(&mut self) {
        let taps: Vec<Attachment> = self
            .st
            .attachments
            .values()
            .filter(|a| a.request.kind == Kind::Tap)
            .cloned()
            .collect();
        for a in taps {
            let ns = a.request.netns.clone().unwrap_or_default();
            if let Err(e) = attach::configure_tap(&a, &ns) {
                self.event(format!(
                    "attachment {}/{}: {}",
                    a.container, a.ifname, e.error
                ));
            }
        }
    }

    /// `PUT /v1/networks/NAME`: adds or replaces one network of the desired topology
    /// (creating a topology with the default switch when none is applied) and applies.
    fn put_network(&mut self, name: &str, n: Network) -> Result<ApplyReply, Refusal> {
        if n.name != name {
            return Err(Refusal {
                error: format!("the body names network {:?}, the path {name:?}", n.name),
                problems: vec![],
            });
        }
        let mut t = self.st.desired.clone().unwrap_or_default();
        match t.networks.iter_mut().find(|x| x.name == name) {
            Some(x) if *x == n => {
                return Ok(ApplyReply {
                    generation: self.st.generation,
                    changes: vec![],
                })
            }
            Some(x) => *x = n,
            None => t.networks.push(n),
        }
        let source = self.st.source.clone().or_else(|| Some("API".into()));
        self.apply(t, source)
    }

    /// `DELETE /v1/networks/NAME`: removes it (refused while routers, pods or CNI
    /// attachments use it); removing one that does not exist changes nothing.
    fn delete_network(&mut self, name: &str) -> Result<ApplyReply, Refusal> {
        let Some(mut t) = self.st.desired.clone() else {
            return Ok(ApplyReply {
                generation: self.st.generation,
                changes: vec![],
            });
        };
        let before = t.networks.len();
        t.networks.retain(|x| x.name != name);
        if t.networks.len() == before {
            return Ok(ApplyReply {
                generation: self.st.generation,
                changes: vec![],
            });
        }
        let source = self.st.source.clone();
        self.apply(t, source)
    }

    /// Pushes the configuration with the current attachments to the switch.
    fn push_attachments(&mut self) -> Result<(), AttachError> {
        let (Some(t), Some(plan)) = (self.st.desired.clone(), self.plan.clone()) else {
            return Err(AttachError::new(11, "no topology is applied"));
        };
        if !self.switch_alive() {
            return Err(AttachError::new(11, "the switch is not running"));
        }
        let full = self.full_switch(&t, &plan);
        self.set_switch_config(&full)
            .map_err(|e| AttachError::new(attach::CODE_SETUP, format!("switch: {e}")))
    }

    /// CNI ADD: a port on `req.network` for (`container`, `ifname`).
    fn attach(
        &mut self,
        container: &str,
        ifname: &str,
        req: AttachRequest,
    ) -> Result<Attachment, AttachError> {
        attach::valid_key(container, ifname)?;
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
        if let (Kind::Tap, Some(ns)) = (req.kind, req.netns.as_deref()) {
            check_netns(ns)?;
        }
        if let Some(ns) = req.netns.as_deref().filter(|n| n.contains([',', '='])) {
            return Err(AttachError::new(
                4,
                format!("netns path {ns:?} contains ',' or '='"),
            ));
        }
        let t = self
            .st
            .desired
            .clone()
            .ok_or_else(|| AttachError::new(11, "no topology is applied"))?;
        let existing: Vec<&Attachment> = self.st.attachments.values().collect();
        let a = attach::allocate(&t, &existing, container, ifname, &req, &self.run)?;
        if let Some(sock) = &a.socket {
            if let Some(dir) = Path::new(sock).parent() {
                let _ = std::fs::create_dir_all(dir);
                let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o750));
            }
        }
        self.st.attachments.insert(key.clone(), a.clone());
        let t0 = Instant::now();
        let mut r = self.push_attachments();
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

    fn remove_socket_dir(&self, a: &Attachment) {
        if let Some(dir) = a.socket.as_deref().and_then(|s| Path::new(s).parent()) {
            let _ = std::fs::remove_dir(dir); // only when empty: other interfaces stay
        }
    }

    /// CNI DEL: idempotent; `Ok(false)` when there was nothing to remove.
    fn detach(&mut self, container: &str, ifname: &str) -> Result<bool, AttachError> {
        let key = format!("{container}/{ifname}");
        let Some(a) = self.st.attachments.remove(&key) else {
            return Ok(false);
        };
        if let Err(e) = self.push_attachments() {
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
    fn gc(&mut self, req: GcRequest) -> Result<Vec<String>, AttachError> {
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

    /// `vnfhost down`: stops every pod and the switch and removes what they left.
    fn down(&mut self) -> ApplyReply {
        let mut changes = Vec::new();
        let names: Vec<String> = self.st.pods.keys().cloned().collect();
        for name in names {
            self.stop_pod(&name);
            changes.push(format!("pod {name} removed"));
        }
        self.st.pods.clear();
        if self.st.switch.is_some() {
            self.stop_switch();
            changes.push("switch stopped".into());
        }
        let n = self.st.attachments.len();
        if n > 0 {
            self.st.attachments.clear();
            changes.push(format!("{n} CNI attachments removed"));
        }
        let _ = std::fs::remove_dir_all(self.run.join("pods"));
        let _ = std::fs::remove_dir_all(self.run.join("cni"));
        let _ = std::fs::remove_file(self.run.join("switch.log"));
        if self.st.desired.take().is_some() {
            self.st.generation += 1;
        }
        self.st.source = None;
        self.plan = None;
        self.samples.clear();
        self.persist();
        for c in &changes {
            self.event(format!("down: {c}"));
        }
        ApplyReply {
            generation: self.st.generation,
            changes,
        }
    }

    /// One pass of the reconcile loop.
    fn reconcile(&mut self) {
        let (Some(plan), Some(t)) = (self.plan.clone(), self.st.desired.clone()) else {
            return;
        };
        let mut dirty = self.prune_attachments();
        let full = self.full_switch(&t, &plan);
        if !self.switch_alive() {
            let how = self
                .st
                .switch
                .clone()
                .and_then(|r| self.procs.check(&r))
                .map(|e| e.to_string())
                .unwrap_or_else(|| "gone".into());
            self.event(format!("switch exited ({how}); starting it again"));
            self.st.switch = None;
            let r = self
                .start_switch(&plan.switch_args)
                .and_then(|()| self.set_switch_config(&full));
            match r {
                // Its taps in the CNI pods' namespaces are new devices: configure them.
                Ok(()) => self.reconfigure_taps(),
                Err(e) => self.event(format!("switch restart failed: {e}")),
            }
            dirty = true;
        } else if let Ok(cfg) = self.switch_config() {
            if cfg != full {
                // An adopted switch from another generation, or one restarted by hand.
                if let Err(e) = self.set_switch_config(&full) {
                    self.event(format!("configuring the switch failed: {e}"));
                }
                dirty = true;
            }
        }
        for p in &plan.pods {
            let Some(rec) = self.st.pods.get(&p.name).cloned() else {
                continue;
            };
            match &rec.proc {
                Some(pr) => {
                    if let Some(exit) = self.procs.check(pr) {
                        let failed = !matches!(exit, Exit::Success);
                        let restart = match p.restart {
                            RestartPolicy::Always => true,
                            RestartPolicy::OnFailure => failed,
                            RestartPolicy::Never => false,
                        };
                        let delay = Duration::from_secs(1 << rec.restarts.min(5));
                        self.event(format!(
                            "pod {} exited ({exit}){}",
                            p.name,
                            if restart {
                                format!("; restarting in {} s", delay.as_secs())
                            } else {
                                String::new()
                            }
                        ));
                        self.not_before
                            .insert(p.name.clone(), Instant::now() + delay);
                        if let Some(r) = self.st.pods.get_mut(&p.name) {
                            r.proc = None;
                            r.phase = match (restart, failed) {
                                (true, _) => Phase::BackOff,
                                (false, false) => Phase::Succeeded,
                                (false, true) => Phase::Failed,
                            };
                            r.last_exit = Some(exit);
                        }
                        dirty = true;
                    }
                }
                None if rec.phase == Phase::BackOff => {
                    let due = self
                        .not_before
                        .get(&p.name)
                        .is_none_or(|t| Instant::now() >= *t);
                    if due {
                        match self.start_pod(p) {
                            Ok(pr) => {
                                self.event(format!("pod {} restarted, pid {}", p.name, pr.pid));
                                if let Some(r) = self.st.pods.get_mut(&p.name) {
                                    r.proc = Some(pr);
                                    r.restarts += 1;
                                    r.phase = Phase::Running;
                                }
                            }
                            Err(e) => self.event(format!("pod {} restart failed: {e}", p.name)),
                        }
                        dirty = true;
                    }
                }
                None => {}
            }
        }
        if let Ok(c) =
            api::http::request::<SwitchCounters>(&self.switch_sock(), "GET", "/v1/stats", None)
        {
            self.samples.push_back((Instant::now(), c));
            while self.samples.len() > 2 {
                self.samples.pop_front();
            }
        }
        if dirty {
            self.persist();
        }
    }

    /// Adopts what `state.json` records and still runs.
    fn adopt(&mut self) {
        let Ok(text) = std::fs::read(self.state_file()) else {
            return;
        };
        let st: Persisted = match serde_json::from_slice(&text) {
            Ok(s) => s,
            Err(e) => {
                self.event(format!(
                    "{}: unreadable ({e}); starting empty",
                    self.state_file().display()
                ));
                return;
            }
        };
        self.st = st;
        if let Some(sw) = self.st.switch.clone() {
            if start_time(sw.pid) == Some(sw.start_time) {
                self.event(format!("adopted the running switch, pid {}", sw.pid));
            }
        }
        let names: Vec<String> = self.st.pods.keys().cloned().collect();
        for name in names {
            let Some(rec) = self.st.pods.get_mut(&name) else {
                continue;
            };
            if let Some(pr) = &rec.proc {
                if start_time(pr.pid) == Some(pr.start_time) {
                    let pid = pr.pid;
                    self.event(format!("adopted pod {name}, pid {pid}"));
                }
            }
        }
        if let Some(t) = self.st.desired.clone() {
            match plan::plan(&t, &self.run, &self.image) {
                Ok(p) => self.plan = Some(p),
                Err(e) => self.event(format!("the recorded topology does not plan: {e}")),
            }
        }
        self.reconcile();
    }

    fn status(&mut self) -> Status {
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
            events: self.events.iter().cloned().collect(),
        }
    }
}

/// Last `n` lines of a log, on one line.
fn tail(p: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(p).unwrap_or_default();
    // Informational log lines (`… INFO …`) say less than the errors after them.
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.contains(" INFO "))
        .collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

// ---------------------------------------------------------------------------------
// Status

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
    o
}

// ---------------------------------------------------------------------------------
// API

/// Peer credentials of a Unix connection.
fn peer(s: &UnixStream) -> Option<libc::ucred> {
    use std::os::fd::AsRawFd;
    let mut cred = libc::ucred {
        pid: 0,
        uid: u32::MAX,
        gid: u32::MAX,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: cred and len are valid for writing and len is cred's size.
    let r = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    (r == 0).then_some(cred)
}

/// Whether the peer is root, the daemon's user, or in the socket's group (primary or
/// supplementary). The socket's mode already keeps others out; this holds even if the
/// mode is loosened by hand.
fn allowed(c: &libc::ucred, group: Option<u32>) -> bool {
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if c.uid == 0 || c.uid == me {
        return true;
    }
    let Some(g) = group else { return false };
    if c.gid == g {
        return true;
    }
    std::fs::read_to_string(format!("/proc/{}/status", c.pid))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Groups:").map(String::from))
        })
        .is_some_and(|l| l.split_whitespace().any(|x| x.parse() == Ok(g)))
}

fn group_id(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: getgrnam reads the group database; the result is used before any other
    // call that could overwrite it.
    let g = unsafe { libc::getgrnam(c.as_ptr()) };
    // SAFETY: a non-null result points to a valid group entry.
    (!g.is_null()).then(|| unsafe { (*g).gr_gid })
}

/// A tap attachment's namespace must be a network namespace (an nsfs file, as
/// `/var/run/netns/NAME`, containerd's, or `/proc/PID/ns/net`), and not the daemon's own:
/// an API client may not put interfaces and routes into the host's namespace.
fn check_netns(path: &str) -> Result<(), AttachError> {
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
    Ok(())
}

/// The interface names extra networks get must be valid, distinct, and leave `eth0`
/// (the primary interface) alone.
fn pod_network_names(v: &[PodNetwork]) -> Result<(), String> {
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

fn attach_error(status: u16, e: AttachError) -> Response {
    Response::json(status, serde_json::to_vec(&e).unwrap_or_default())
}

fn refusal(status: u16, r: &Refusal) -> Response {
    Response::json(status, serde_json::to_vec(r).unwrap_or_default())
}

fn handle(d: &Mutex<Daemon>, req: Request) -> Response {
    let mut d = match d.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    };
    let not_allowed = || Response::json(405, http::error_body("method not allowed"));
    match req.path.as_str() {
        "/v1/version" => json(&serde_json::json!({
            "api": API_VERSION,
            "version": env!("CARGO_PKG_VERSION"),
        })),
        "/v1/status" if req.method == "GET" => json(&d.status()),
        "/metrics" if req.method == "GET" => Response::text(200, metrics(&d.status())),
        "/v1/topology" => match req.method.as_str() {
            "GET" => json(&d.st.desired),
            "PUT" => match serde_json::from_slice::<ApplyRequest>(&req.body) {
                Err(e) => refusal(
                    400,
                    &Refusal {
                        error: format!("topology: {e}"),
                        problems: vec![],
                    },
                ),
                Ok(a) => match d.apply(a.topology, a.source) {
                    Ok(r) => json(&r),
                    Err(r) => refusal(422, &r),
                },
            },
            "DELETE" => json(&d.down()),
            _ => not_allowed(),
        },
        "/v1/networks" if req.method == "GET" => json(
            &d.st
                .desired
                .as_ref()
                .map(|t| t.networks.clone())
                .unwrap_or_default(),
        ),
        p if p.starts_with("/v1/networks/") => {
            let name = &p["/v1/networks/".len()..];
            match req.method.as_str() {
                "GET" => match d
                    .st
                    .desired
                    .as_ref()
                    .and_then(|t| t.networks.iter().find(|n| n.name == name))
                {
                    Some(n) => json(n),
                    None => Response::json(404, http::error_body(&format!("no network {name:?}"))),
                },
                "PUT" => match serde_json::from_slice::<Network>(&req.body) {
                    Err(e) => refusal(
                        400,
                        &Refusal {
                            error: format!("network: {e}"),
                            problems: vec![],
                        },
                    ),
                    Ok(n) => match d.put_network(name, n) {
                        Ok(r) => json(&r),
                        Err(r) => refusal(422, &r),
                    },
                },
                "DELETE" => match d.delete_network(name) {
                    Ok(r) => json(&r),
                    Err(r) => refusal(422, &r),
                },
                _ => not_allowed(),
            }
        }
        p if p.starts_with("/v1/pod-networks/") => {
            let key = &p["/v1/pod-networks/".len()..];
            if key.split('/').count() != 2 || key.split('/').any(str::is_empty) {
                return Response::json(
                    404,
                    http::error_body("expected /v1/pod-networks/NAMESPACE/NAME"),
                );
            }
            match req.method.as_str() {
                "GET" => json(&d.st.pod_networks.get(key).cloned().unwrap_or_default()),
                "PUT" => match serde_json::from_slice::<Vec<PodNetwork>>(&req.body) {
                    Err(e) => Response::json(400, http::error_body(&format!("pod networks: {e}"))),
                    Ok(v) if v.len() > 7 => Response::json(
                        422,
                        http::error_body("at most 7 extra networks (8 interfaces) per pod"),
                    ),
                    Ok(v) if pod_network_names(&v).is_err() => {
                        Response::json(422, http::error_body(&pod_network_names(&v).unwrap_err()))
                    }
                    Ok(v) => {
                        if d.st.pod_networks.get(key) != Some(&v) {
                            d.st.pod_networks.insert(key.to_string(), v);
                            d.persist();
                        }
                        json(&serde_json::json!({}))
                    }
                },
                "DELETE" => {
                    if d.st.pod_networks.remove(key).is_some() {
                        d.persist();
                    }
                    json(&serde_json::json!({}))
                }
                _ => not_allowed(),
            }
        }
        "/v1/attachments" if req.method == "GET" => {
            json(&d.st.attachments.values().collect::<Vec<_>>())
        }
        "/v1/attachments/gc" if req.method == "POST" => {
            match serde_json::from_slice::<GcRequest>(&req.body) {
                Err(e) => attach_error(400, AttachError::new(7, format!("gc: {e}"))),
                Ok(g) => match d.gc(g) {
                    Ok(removed) => json(&serde_json::json!({ "removed": removed })),
                    Err(e) => attach_error(422, e),
                },
            }
        }
        p if p.starts_with("/v1/attachments/") => {
            let rest = &p["/v1/attachments/".len()..];
            let Some((cid, ifname)) = rest.split_once('/') else {
                return Response::json(
                    404,
                    http::error_body("expected /v1/attachments/CONTAINER/IFNAME"),
                );
            };
            match req.method.as_str() {
                "GET" => match d.st.attachments.get(&format!("{cid}/{ifname}")) {
                    Some(a) => json(a),
                    None => attach_error(
                        404,
                        AttachError::new(3, format!("no attachment {cid}/{ifname}")),
                    ),
                },
                "PUT" => match serde_json::from_slice::<AttachRequest>(&req.body) {
                    Err(e) => attach_error(400, AttachError::new(7, format!("attachment: {e}"))),
                    Ok(r) => match d.attach(cid, ifname, r) {
                        Ok(a) => json(&a),
                        Err(e) => attach_error(422, e),
                    },
                },
                "DELETE" => match d.detach(cid, ifname) {
                    Ok(removed) => json(&serde_json::json!({ "removed": removed })),
                    Err(e) => attach_error(422, e),
                },
                _ => not_allowed(),
            }
        }
        "/v1/status" | "/metrics" | "/v1/attachments" => not_allowed(),
        _ => Response::json(
            404,
            http::error_body(&format!(
                "no such endpoint {} (API {API_VERSION})",
                req.path
            )),
        ),
    }
}

/// Runs the daemon until SIGINT or SIGTERM (which leave the switch and the pods running).
pub fn run(a: &DaemonArgs) -> Result<(), String> {
    let sigs = crate::switch_cmd::block_signals();
    std::fs::create_dir_all(&a.run_dir).map_err(|e| format!("{}: {e}", a.run_dir.display()))?;
    let _ = std::fs::set_permissions(&a.run_dir, std::fs::Permissions::from_mode(0o755));
    let exe = std::env::current_exe().map_err(|e| format!("own executable: {e}"))?;
    let group = match &a.group {
        Some(g) => Some(group_id(g).ok_or_else(|| format!("--group {g}: no such group"))?),
        None => group_id("vnfhost"),
    };
    let api = a.run_dir.join("api.sock");
    let listener = vswitch::service::control::bind_socket(&api, 0o660)?;
    if let Some(g) = group {
        let c = std::ffi::CString::new(api.as_os_str().as_encoded_bytes())
            .map_err(|e| e.to_string())?;
        // SAFETY: c is a valid path; -1 keeps the owner.
        if unsafe { libc::chown(c.as_ptr(), u32::MAX, g) } != 0 {
            return Err(format!(
                "{}: chown to group {g}: {}",
                api.display(),
                std::io::Error::last_os_error()
            ));
        }
    }
    let d = Arc::new(Mutex::new(Daemon {
        run: a.run_dir.clone(),
        exe,
        image: a.image.clone(),
        st: Persisted::default(),
        plan: None,
        procs: Procs::default(),
        not_before: HashMap::new(),
        samples: VecDeque::new(),
        events: VecDeque::new(),
        removed_pods: Vec::new(),
    }));
    {
        let mut g = d.lock().map_err(|_| "state lock poisoned")?;
        g.adopt();
    }
    let dd = d.clone();
    std::thread::Builder::new()
        .name("api".into())
        .spawn(move || {
            for s in listener.incoming().flatten() {
                let ok = peer(&s).is_some_and(|c| allowed(&c, group));
                let dd = dd.clone();
                let _ = std::thread::Builder::new()
                    .name("api-conn".into())
                    .spawn(move || {
                        http::serve_one(s, Duration::from_secs(30), |req| {
                            if ok {
                                handle(&dd, req)
                            } else {
                                Response::json(403, http::error_body("permission denied"))
                            }
                        })
                    });
            }
        })
        .map_err(|e| e.to_string())?;
    if let Some(addr) = a.metrics {
        let l = std::net::TcpListener::bind(addr).map_err(|e| format!("--metrics {addr}: {e}"))?;
        let dd = d.clone();
        std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || {
                // A thread per scrape (a slow client holds only its own), each bounded by
                // read and write timeouts; at most 16 at once.
                let busy = Arc::new(std::sync::atomic::AtomicUsize::new(0));
                for s in l.incoming().flatten() {
                    use std::sync::atomic::Ordering;
                    if busy.fetch_add(1, Ordering::AcqRel) >= 16 {
                        busy.fetch_sub(1, Ordering::AcqRel);
                        continue; // dropped: the client sees the connection closed
                    }
                    let (dd, busy) = (dd.clone(), busy.clone());
                    let _ = std::thread::Builder::new()
                        .name("metrics-conn".into())
                        .spawn(move || {
                            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                            let _ = s.set_write_timeout(Some(Duration::from_secs(5)));
                            let resp = match http::read_request(&s) {
                                Ok(r) if r.method == "GET" && r.path == "/metrics" => {
                                    let mut g = match dd.lock() {
                                        Ok(g) => g,
                                        Err(p) => p.into_inner(),
                                    };
                                    Response::text(200, metrics(&g.status()))
                                }
                                Ok(_) => Response::text(404, "only GET /metrics here\n"),
                                Err(e) => Response::text(400, format!("bad request: {e}\n")),
                            };
                            let _ = http::write_response(&s, &resp);
                            busy.fetch_sub(1, Ordering::AcqRel);
                        });
                }
            })
            .map_err(|e| e.to_string())?;
    }
    tracing::info!(
        "daemon: API on {} (HTTP/JSON, /{API_VERSION}); state in {}",
        api.display(),
        a.run_dir.display()
    );
    loop {
        if let Some(sig) = crate::switch_cmd::wait_signal(&sigs, Duration::from_secs(1)) {
            tracing::info!(
                "signal {sig}: the daemon stops; the switch and the pods keep running \
                 (`vnfhost down` stops them)"
            );
            break;
        }
        let mut g = match d.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        g.reconcile();
    }
    let _ = std::fs::remove_file(&api);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_identifies_a_live_process() {
        let me = std::process::id() as i32;
        let t = start_time(me).expect("own start time");
        assert_eq!(start_time(me), Some(t));
        assert_eq!(start_time(i32::MAX), None);
        let mut p = Procs::default();
        let rec = ProcRec {
            pid: me,
            start_time: t + 1,
            args: vec![],
        };
        // Same pid, other start time: not ours (a reused pid).
        assert_eq!(p.check(&rec), Some(Exit::Unknown));
    }

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
