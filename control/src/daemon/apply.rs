//! Applying a topology: the steps that make the host match it, each with its undo, and
//! the rollback when one fails; `down`; the switch's process and configuration.

use std::collections::HashMap;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use api::switch::{PortFailure, SwitchSpec};

use super::procs::ProcRec;
use super::state::{Persisted, PodRec};
use super::{ApplyReply, Daemon, Phase, Refusal};
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

    /// Applies `t`; on failure the previous state is restored and the error says what
    /// failed.
    pub(super) fn apply(
        &mut self,
        t: Topology,
        source: Option<String>,
    ) -> Result<ApplyReply, Refusal> {
        let problems = t.check(self.host());
        if !problems.is_empty() {
            return Err(Refusal {
                error: format!("{} problem(s); nothing was changed", problems.len()),
                problems: problems.iter().map(|p| p.to_string()).collect(),
            });
        }
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

    /// `PUT /v1/networks/NAME`: adds or replaces one network of the desired topology
    /// (creating a topology with the default switch when none is applied) and applies.
    pub(super) fn put_network(&mut self, name: &str, n: Network) -> Result<ApplyReply, Refusal> {
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
    pub(super) fn delete_network(&mut self, name: &str) -> Result<ApplyReply, Refusal> {
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
