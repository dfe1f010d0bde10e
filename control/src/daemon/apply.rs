//! Applying a topology: the steps that make the host match it, each with its undo, and
//! the rollback when one fails; `down`; the switch's process and configuration.

use std::collections::HashMap;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use api::switch::{PortFailure, SwitchSpec};

use super::procs::ProcRec;
use super::state::{Persisted, PodRec};
use super::{ApplyReply, Daemon, Overlay, Phase, Refusal};
use crate::attach;
use crate::plan::{self, Plan, PodPlan};

/// `switch.log` is rotated to `switch.log.1` at this size.
const SWITCH_LOG_MAX: u64 = 16 << 20;
use crate::topology::{Host, Network, Topology};

/// One undoable step of an apply.
enum Undo {
    StopSwitch,
    StartSwitch(Vec<String>),
    Config(SwitchSpec),
    StopPod(String),
    StartPod(String, PodRec),
}

impl Daemon {
    pub(super) fn switch_sock(&self) -> PathBuf {
        plan::switch_socket(&self.run)
    }

    pub(super) fn switch_alive(&mut self) -> bool {
        match self.st.switch.clone() {
            Some(rec) => self.procs.check(&rec).is_none(),
            None => false,
        }
    }

    /// Host resources for checking `t`, counting those the running topology holds as
    /// free (they are handed over, not taken twice).
    pub(super) fn host(&self) -> Host {
        let mut h = Host::current();
        if let Some(cur) = &self.st.desired {
            h.free_hugepages += cur.hugepages_needed();
        }
        h
    }

    pub(super) fn start_switch(&mut self, args: &[String]) -> Result<(), String> {
        let log = self.run.join("switch.log");
        // Output through `vnfhost console-log` too: what a guest can make the switch
        // log is rate-limited, and the file is rotated, so it takes bounded RAM.
        let out = self.bounded_log(&log, SWITCH_LOG_MAX)?;
        let err = out
            .try_clone()
            .map_err(|e| format!("{}: {e}", log.display()))?;
        let rec = self.procs.spawn(&self.exe, args, out.into(), err.into())?;
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

    pub(super) fn stop_switch(&mut self) {
        if let Some(rec) = self.st.switch.take() {
            self.procs.stop(&rec, Duration::from_secs(5));
            self.event(format!("switch stopped, pid {}", rec.pid));
        }
        let _ = std::fs::remove_file(self.switch_sock());
    }

    /// The switch configuration for topology `t` planned as `plan`: its ports, routers
    /// and groups, plus a port per CNI attachment.
    pub(super) fn full_switch(&self, t: &Topology, plan: &Plan) -> SwitchSpec {
        let mut d = plan.switch.clone();
        // An attachment whose record does not make a port (a state file edited by hand)
        // is left out and said so; the rest is applied.
        for a in self.st.attachments.values() {
            // A tap whose namespace path names another namespace than at ADD is never
            // sent to the switch (which would open it there); the prune drops it.
            if super::attachments::netns_now(a) == super::attachments::NetnsNow::Replaced {
                tracing::warn!(
                    "attachment {}/{}: network namespace replaced; left out",
                    a.container,
                    a.ifname
                );
                continue;
            }
            let vlan = t
                .networks
                .iter()
                .find(|n| n.name == a.request.network)
                .and_then(|n| t.vlan_of(&n.name))
                .unwrap_or(1);
            match attach::port_spec(a, vlan) {
                Ok(p) => d.ports.push(p),
                Err(e) => tracing::warn!("{e}"),
            }
        }
        d
    }

    pub(super) fn switch_config(&self) -> Result<SwitchSpec, String> {
        // A short timeout: the reconcile loop asks every second, and a switch that does
        // not answer within it is counted as silent (and restarted if it stays so).
        api::http::request_within(
            &self.switch_sock(),
            "GET",
            "/v1/config",
            None,
            std::time::Duration::from_secs(2),
        )
        .map_err(|e| format!("switch control: {e}"))
    }

    pub(super) fn set_switch_config(&self, d: &SwitchSpec) -> Result<(), String> {
        self.put_switch_config(d).map(drop)
    }

    /// Sends `d` to the switch; returns the ports that failed to open (the rest of the
    /// configuration runs; the switch retries these).
    pub(super) fn put_switch_config(&self, d: &SwitchSpec) -> Result<Vec<PortFailure>, String> {
        let body = serde_json::to_vec(d).map_err(|e| e.to_string())?;
        let reply: api::switch::ApplyReply =
            api::http::request(&self.switch_sock(), "PUT", "/v1/config", Some(&body))
                .map_err(|e| format!("switch control: {e}"))?;
        for f in &reply.failed {
            tracing::warn!("switch port {} failed to open: {}", f.name, f.error);
        }
        Ok(reply.failed)
    }

    pub(super) fn start_pod(&mut self, p: &PodPlan) -> Result<ProcRec, String> {
        std::fs::create_dir_all(&p.dir).map_err(|e| format!("{}: {e}", p.dir.display()))?;
        if let Some((file, json)) = &p.run_spec {
            // The keeper's typed spec, named by its content (a change is a new file).
            std::fs::write(file, json).map_err(|e| format!("{}: {e}", file.display()))?;
        }
        // The console goes through a pipe to `vnfhost console-log`, which rotates it at
        // the topology's limit: a chatty guest takes bounded RAM in the run directory.
        let max = p.console_log_max;
        let (rd, wr) = pipe().map_err(|e| format!("pod {}: console pipe: {e}", p.name))?;
        let vmm_log = p.dir.join("vmm.log");
        let pump = vec![
            "console-log".to_string(),
            "--max".into(),
            format!("{}Ki", max.div_ceil(1024)),
            p.dir.join("console.log").display().to_string(),
        ];
        self.procs
            .spawn_helper(&self.exe, &pump, rd.into(), &vmm_log)?;
        // The VMM's own log is bounded the same way.
        let err = self.bounded_log(&vmm_log, max)?;
        // Both ends close here: the pumps hold the reading ones, the VM the writing ones.
        self.procs.spawn(&self.exe, &p.args, wr.into(), err.into())
    }

    /// The writing end of a pipe into `vnfhost console-log --max MAX FILE`: a log that
    /// is rotated to `FILE.1` at `max` bytes, so it takes at most twice that.
    fn bounded_log(&mut self, file: &Path, max: u64) -> Result<std::os::fd::OwnedFd, String> {
        let (rd, wr) = pipe().map_err(|e| format!("{}: pipe: {e}", file.display()))?;
        let pump = vec![
            "console-log".to_string(),
            "--max".into(),
            format!("{}Ki", max.div_ceil(1024)),
            file.display().to_string(),
        ];
        self.procs.spawn_helper(&self.exe, &pump, rd.into(), file)?;
        Ok(wr)
    }

    /// Starts `p` and sees its VM survive half a second (a bad kernel, short huge pages
    /// or a broken option end it sooner).
    pub(super) fn start_pod_checked(&mut self, p: &PodPlan) -> Result<ProcRec, String> {
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

    pub(super) fn stop_pod(&mut self, name: &str) {
        if let Some(rec) = self.st.pods.get_mut(name).and_then(|r| r.proc.take()) {
            self.procs.stop(&rec, Duration::from_secs(5));
        }
        // An image pod's disk slots, which a keeper stopped while it was starting could
        // not remove itself (its VM died with it).
        let _ = std::fs::remove_dir_all(Path::new(crate::plan::VM_STATE_DIR).join(name));
    }

    /// The topology the daemon plans and runs: the desired one with the node agent's
    /// overlay merged in. This and [`Daemon::apply_with`] are where the two meet, both
    /// through [`Topology::with_overlay`].
    pub(super) fn effective(&self) -> Option<Topology> {
        let t = self.st.desired.as_ref()?;
        Some(t.with_overlay(&self.st.overlay).topology)
    }

    /// Applies `t` with the overlay as it is; on failure the previous state is restored
    /// and the error says what failed.
    pub(super) fn apply(
        &mut self,
        t: Topology,
        source: Option<String>,
    ) -> Result<ApplyReply, Refusal> {
        let overlay = self.st.overlay.clone();
        self.apply_with(t, overlay, source)
    }

    /// Applies `desired` with `overlay` merged in (checked and planned as one topology);
    /// both are kept only when it succeeds, and on failure the previous state is
    /// restored and the error says what failed.
    pub(super) fn apply_with(
        &mut self,
        desired: Topology,
        overlay: Overlay,
        source: Option<String>,
    ) -> Result<ApplyReply, Refusal> {
        let merged = desired.with_overlay(&overlay);
        let problems = merged.check(self.host());
        if !problems.is_empty() {
            return Err(Refusal {
                error: format!("{} problem(s); nothing was changed", problems.len()),
                problems: problems.iter().map(|p| p.to_string()).collect(),
            });
        }
        let t = merged.topology;
        let new = plan::plan(&t, &self.run, &self.image, &self.host()).map_err(|e| Refusal {
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
                if !changes.is_empty()
                    || self.st.desired.as_ref() != Some(&desired)
                    || self.st.overlay != overlay
                {
                    self.st.generation += 1;
                }
                self.st.desired = Some(desired);
                self.st.overlay = overlay;
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

    /// `PUT /v1/networks/NAME`: adds or replaces one network of the desired topology
    /// (creating a topology with the default switch when none is applied) and applies.
    pub(super) fn put_network(&mut self, name: &str, n: Network) -> Result<ApplyReply, Refusal> {
        let given = n.name.clone();
        self.put_named("network", name, &given, n, |t| &mut t.networks, |x| &x.name)
    }

    /// `DELETE /v1/networks/NAME`: removes it (refused while routers, pods or CNI
    /// attachments use it); removing one that does not exist changes nothing.
    pub(super) fn delete_network(&mut self, name: &str) -> Result<ApplyReply, Refusal> {
        self.delete_named(name, |t| &mut t.networks, |x| &x.name)
    }

    /// `PUT /v1/services/NAME`: adds or replaces one service of the desired topology
    /// (checked with the rest of it; a refusal changes nothing).
    pub(super) fn put_service(
        &mut self,
        name: &str,
        n: api::daemon::Service,
    ) -> Result<ApplyReply, Refusal> {
        let given = n.name.clone();
        self.put_named("service", name, &given, n, |t| &mut t.services, |x| &x.name)
    }

    /// `DELETE /v1/services/NAME`: removes it (its sessions go at once); removing one
    /// that does not exist changes nothing.
    pub(super) fn delete_service(&mut self, name: &str) -> Result<ApplyReply, Refusal> {
        self.delete_named(name, |t| &mut t.services, |x| &x.name)
    }

    /// Adds or replaces the item `name` of one list of the desired topology (`what`:
    /// its kind, for messages; `given`: the name the body carries) and applies.
    fn put_named<T: PartialEq>(
        &mut self,
        what: &str,
        name: &str,
        given: &str,
        item: T,
        list: fn(&mut Topology) -> &mut Vec<T>,
        name_of: fn(&T) -> &str,
    ) -> Result<ApplyReply, Refusal> {
        if given != name {
            return Err(Refusal {
                error: format!("the body names {what} {given:?}, the path {name:?}"),
                problems: vec![],
            });
        }
        let mut t = self.st.desired.clone().unwrap_or_default();
        let items = list(&mut t);
        match items.iter_mut().find(|x| name_of(x) == name) {
            Some(x) if *x == item => {
                return Ok(ApplyReply {
                    generation: self.st.generation,
                    changes: vec![],
                })
            }
            Some(x) => *x = item,
            None => items.push(item),
        }
        let source = self.st.source.clone().or_else(|| Some("API".into()));
        self.apply(t, source)
    }

    /// Removes the item `name` of one list of the desired topology and applies;
    /// removing one that does not exist changes nothing.
    fn delete_named<T>(
        &mut self,
        name: &str,
        list: fn(&mut Topology) -> &mut Vec<T>,
        name_of: fn(&T) -> &str,
    ) -> Result<ApplyReply, Refusal> {
        let unchanged = ApplyReply {
            generation: self.st.generation,
            changes: vec![],
        };
        let Some(mut t) = self.st.desired.clone() else {
            return Ok(unchanged);
        };
        let items = list(&mut t);
        let before = items.len();
        items.retain(|x| name_of(x) != name);
        if items.len() == before {
            return Ok(unchanged);
        }
        let source = self.st.source.clone();
        self.apply(t, source)
    }

    /// `PUT /v1/overlay`: replaces what the node agent learnt of the cluster and applies
    /// the desired topology with it. A refused overlay changes nothing; without a
    /// topology it is checked against an empty one and kept for the next.
    pub(super) fn put_overlay(&mut self, o: Overlay) -> Result<ApplyReply, Refusal> {
        if o == self.st.overlay {
            return Ok(ApplyReply {
                generation: self.st.generation,
                changes: vec![],
            });
        }
        let Some(t) = self.st.desired.clone() else {
            let problems = Topology::default().with_overlay(&o).check(self.host());
            if !problems.is_empty() {
                return Err(Refusal {
                    error: format!("{} problem(s); nothing was changed", problems.len()),
                    problems: problems.iter().map(|p| p.to_string()).collect(),
                });
            }
            self.st.overlay = o;
            self.persist();
            return Ok(ApplyReply {
                generation: self.st.generation,
                changes: vec!["overlay recorded (no topology is applied)".into()],
            });
        };
        let source = self.st.source.clone();
        let r = self.apply_with(t, o, source)?;
        self.event(format!(
            "overlay: uplink {}, {} VTEP(s) from the node agent",
            self.st
                .overlay
                .uplink
                .as_ref()
                .map(|u| u.interface.as_str())
                .unwrap_or("none"),
            self.st.overlay.vteps.len()
        ));
        Ok(r)
    }

    /// `vnfhost down`: stops every pod and the switch and removes what they left.
    pub(super) fn down(&mut self) -> ApplyReply {
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
}

/// Last `n` lines of a log, on one line.
/// A pipe, both ends close-on-exec (each child gets its end as stdin or stdout).
fn pipe() -> std::io::Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
    use std::os::fd::FromRawFd;
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: fds has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded: both are open descriptors that nothing else owns.
    Ok(unsafe {
        (
            std::os::fd::OwnedFd::from_raw_fd(fds[0]),
            std::os::fd::OwnedFd::from_raw_fd(fds[1]),
        )
    })
}

fn tail(p: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(p).unwrap_or_default();
    // Informational log lines (`… INFO …`) say less than the errors after them.
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.contains(" INFO "))
        .collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, VecDeque};
    use std::sync::{Arc, Mutex};

    use api::daemon::{OverlayUplink, OverlayVtep};
    use api::switch::{Driver, SwitchSpec};

    use super::*;
    use crate::daemon::procs::{start_time, ProcRec, Procs};
    use crate::daemon::state::Persisted;
    use crate::plan::GuestImage;

    /// A switch control socket that keeps the last configuration it was given.
    fn fake_switch(sock: PathBuf) -> Arc<Mutex<SwitchSpec>> {
        let cfg = Arc::new(Mutex::new(SwitchSpec::default()));
        let l = std::os::unix::net::UnixListener::bind(sock).expect("fake switch socket");
        let c = cfg.clone();
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                api::http::serve_one(s, Duration::from_secs(5), |r| {
                    let mut cfg = c.lock().unwrap_or_else(|p| p.into_inner());
                    match (r.method.as_str(), r.path.as_str()) {
                        ("GET", "/v1/config") => api::http::json(&*cfg),
                        ("PUT", "/v1/config") => match serde_json::from_slice(&r.body) {
                            Ok(spec) => {
                                *cfg = spec;
                                api::http::json(&api::switch::ApplyReply {
                                    generation: 1,
                                    failed: vec![],
                                })
                            }
                            Err(e) => api::http::Response::json(
                                400,
                                api::http::error_body(&e.to_string()),
                            ),
                        },
                        _ => api::http::Response::json(404, api::http::error_body("fake")),
                    }
                });
            }
        });
        cfg
    }

    struct Dir(PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A daemon on a fresh run directory whose switch is the fake (this test process
    /// stands in as its process, with the arguments `t` plans), nothing applied yet.
    fn daemon(tag: &str, t: &Topology) -> (Daemon, Arc<Mutex<SwitchSpec>>, Dir) {
        let dir = std::env::temp_dir().join(format!("vnfh-ov-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let sw = fake_switch(plan::switch_socket(&dir));
        let image = GuestImage {
            kernel: "/k".into(),
            initrd: "/i".into(),
        };
        let args = plan::plan(t, &dir, &image, &crate::topology::Host::current())
            .unwrap()
            .switch_args;
        let me = std::process::id() as i32;
        let d = Daemon {
            run: dir.clone(),
            exe: "/bin/false".into(),
            image,
            st: Persisted {
                switch: Some(ProcRec {
                    pid: me,
                    start_time: start_time(me).unwrap(),
                    args,
                }),
                ..Persisted::default()
            },
            plan: None,
            procs: Procs::default(),
            not_before: HashMap::new(),
            samples: VecDeque::new(),
            unanswered_since: None,
            events: VecDeque::new(),
            removed_pods: Vec::new(),
        };
        (d, sw, Dir(dir))
    }

    fn vtep(name: &str, address: &str) -> OverlayVtep {
        OverlayVtep {
            name: name.into(),
            address: address.into(),
        }
    }

    fn tunnels(sw: &Mutex<SwitchSpec>) -> Vec<String> {
        let cfg = sw.lock().unwrap();
        cfg.ports
            .iter()
            .filter(|p| matches!(p.driver, Driver::Vxlan { .. }))
            .map(|p| p.name.clone())
            .collect()
    }

    /// The loopback interface is the uplink here: every host has it, with 127.0.0.1.
    fn lo(address: Option<&str>) -> Option<OverlayUplink> {
        Some(OverlayUplink {
            interface: "lo".into(),
            address: address.map(str::to_string),
        })
    }

    #[test]
    fn an_overlay_is_merged_into_what_runs_and_a_bad_one_changes_nothing() {
        let t = crate::topology::parse(
            "networks:\n  - {name: n, tenant: t, cidrs: [10.1.0.0/24], vni: 100}\n\
             vteps:\n  - {name: static-b, address: 10.9.0.2}\n",
        )
        .unwrap();
        let (mut d, sw, _dir) = daemon("merge", &t);
        if crate::topology::interface_facts("lo").is_none_or(|(_, a)| a.is_empty()) {
            println!("SKIPPED: lo has no IPv4 address here");
            return;
        }

        // No topology yet: the overlay is checked against an empty one and kept.
        let bad = Overlay {
            uplink: Some(OverlayUplink {
                interface: "nope0".into(),
                address: None,
            }),
            vteps: vec![],
        };
        let r = d.put_overlay(bad).unwrap_err();
        assert!(
            r.problems
                .iter()
                .any(|p| p.starts_with("overlay.uplink.interface: no interface \"nope0\"")),
            "{r:?}"
        );
        assert_eq!(d.st.overlay, Overlay::default());
        let o = Overlay {
            uplink: lo(None),
            vteps: vec![vtep("node-c", "10.9.0.3")],
        };
        d.put_overlay(o.clone()).unwrap();
        assert_eq!(d.st.overlay, o);

        // A VXLAN network without an uplink of its own applies with the overlay's, with a
        // tunnel to the static VTEP and to the learnt one.
        d.apply(t.clone(), None).unwrap();
        assert_eq!(
            d.st.desired.as_ref(),
            Some(&t),
            "the desired topology is kept apart"
        );
        assert_eq!(
            tunnels(&sw),
            ["vx.100.10.9.0.2", "vx.100.10.9.0.3"],
            "{:?}",
            sw.lock().unwrap()
        );
        let uplink = sw.lock().unwrap().uplink.clone().unwrap();
        assert_eq!(uplink.interface, "lo");
        let generation = d.st.generation;

        // Refused, with the overlay's fields named; nothing changes.
        for (o, field) in [
            (
                Overlay {
                    uplink: lo(None),
                    vteps: vec![vtep("node-c", "10.9.0.3"), vtep("self", "127.0.0.1")],
                },
                "overlay.vteps[1].address: 127.0.0.1 is this node's own tunnel address",
            ),
            (
                Overlay {
                    uplink: lo(Some("10.200.0.1")),
                    vteps: vec![],
                },
                "overlay.uplink.address: 10.200.0.1 is not an address of lo",
            ),
            (
                Overlay {
                    uplink: lo(None),
                    vteps: vec![vtep("x", "10.9.0.7"), vtep("x", "10.9.0.8")],
                },
                "overlay.vteps[1].name",
            ),
            (
                Overlay {
                    uplink: None,
                    vteps: vec![vtep("y", "banana")],
                },
                "overlay.vteps[0].address: \"banana\" is not an IPv4 address",
            ),
        ] {
            let r = d.put_overlay(o).unwrap_err();
            assert!(
                r.problems.iter().any(|p| p.starts_with(field)),
                "{field}: {r:?}"
            );
            assert!(r.error.contains("nothing was changed"), "{r:?}");
            assert_eq!(d.st.generation, generation);
            assert_eq!(tunnels(&sw), ["vx.100.10.9.0.2", "vx.100.10.9.0.3"]);
        }

        // A learnt VTEP that a static one already names is left out (the static one
        // wins); one that leaves takes its tunnel with it.
        d.put_overlay(Overlay {
            uplink: lo(None),
            vteps: vec![vtep("static-b", "10.9.0.99"), vtep("node-d", "10.9.0.2")],
        })
        .unwrap();
        assert_eq!(tunnels(&sw), ["vx.100.10.9.0.2"]);
        assert!(d.st.generation > generation);
        let on_disk: serde_json::Value =
            serde_json::from_slice(&std::fs::read(d.state_file()).unwrap()).unwrap();
        assert_eq!(on_disk["overlay"]["vteps"][1]["name"], "node-d");

        // Without the overlay's uplink the VXLAN network has none: refused, kept running.
        let r = d.put_overlay(Overlay::default()).unwrap_err();
        assert!(
            r.problems
                .iter()
                .any(|p| p.contains("networks[0].vni") && p.contains("switch.uplink")),
            "{r:?}"
        );
        assert_eq!(tunnels(&sw), ["vx.100.10.9.0.2"]);
    }
}
