//! The reconcile loop, every second: a switch that died is started again with its
//! configuration, a pod whose VM exited is restarted as its policy says (with back-off),
//! counters are sampled for rates.

use std::time::{Duration, Instant};

use api::switch::SwitchCounters;

use super::{Daemon, Exit, Phase};
use crate::topology::RestartPolicy;

impl Daemon {
    /// One pass of the reconcile loop.
    pub(super) fn reconcile(&mut self) {
        self.procs.reap();
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
}
