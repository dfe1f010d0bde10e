//! The reconcile loop, every second: a switch that died is started again with its
//! configuration, a pod whose VM exited is restarted as its policy says (with back-off),
//! counters are sampled for rates.

use std::time::{Duration, Instant};

use api::switch::SwitchCounters;

use super::{Daemon, Exit, Phase};
use crate::topology::RestartPolicy;

/// A polling core that made no progress for this long stops every port it polls for
/// good: the daemon restarts the switch (its ports reconnect, its configuration is
/// applied again).
pub(super) const CORE_STUCK_RESTART: Duration = Duration::from_secs(3);
/// A running switch that has not answered for its counters this long is restarted too
/// (its control thread is wedged, or the whole process is stopped).
pub(super) const SWITCH_SILENT_RESTART: Duration = Duration::from_secs(10);
/// How long one counters request may take.
const STATS_TIMEOUT: Duration = Duration::from_secs(2);

/// Why the switch must be restarted, if one of its cores is stuck.
pub(super) fn stuck_core(c: &SwitchCounters) -> Option<String> {
    c.cores.iter().enumerate().find_map(|(i, k)| {
        (u128::from(k.stalled_ms) >= CORE_STUCK_RESTART.as_millis()).then(|| {
            format!(
                "polling core {i}{} has made no progress for {:.1} s",
                k.cpu.map(|c| format!(" (CPU {c})")).unwrap_or_default(),
                k.stalled_ms as f64 / 1000.0
            )
        })
    })
}

impl Daemon {
    /// Stops a switch that no longer forwards; the next pass starts it again.
    fn restart_switch(&mut self, why: &str) {
        self.event(format!("switch is stuck: {why}; restarting it"));
        if let Some(r) = self.st.switch.clone() {
            self.procs.stop(&r, Duration::from_secs(1));
        }
    }

    /// One pass of the reconcile loop.
    pub(super) fn reconcile(&mut self) {
        self.procs.reap();
        let (Some(plan), Some(t)) = (self.plan.clone(), self.effective()) else {
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
        let stats = api::http::request_within::<SwitchCounters>(
            &self.switch_sock(),
            "GET",
            "/v1/stats",
            None,
            STATS_TIMEOUT,
        );
        let now = Instant::now();
        match stats {
            Ok(c) => {
                self.unanswered_since = None;
                let stuck = stuck_core(&c);
                self.samples.push_back((now, c));
                while self.samples.len() > 2 {
                    self.samples.pop_front();
                }
                if let Some(why) = stuck {
                    self.restart_switch(&why);
                    dirty = true;
                }
            }
            Err(e) if self.switch_alive() => {
                let since = *self.unanswered_since.get_or_insert(now);
                if now - since >= SWITCH_SILENT_RESTART {
                    self.unanswered_since = None;
                    self.restart_switch(&format!(
                        "it has not answered for {} s ({e})",
                        SWITCH_SILENT_RESTART.as_secs()
                    ));
                    dirty = true;
                }
            }
            Err(_) => self.unanswered_since = None,
        }
        if dirty {
            self.persist();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use api::switch::CoreCounters;

    #[test]
    fn a_core_stuck_past_the_limit_asks_for_a_restart() {
        let mut c = SwitchCounters {
            cores: vec![CoreCounters::default(), CoreCounters::default()],
            ..SwitchCounters::default()
        };
        assert_eq!(stuck_core(&c), None);
        c.cores[1].stalled_ms = 1500;
        assert_eq!(stuck_core(&c), None, "reported, not yet restarted");
        c.cores[1].stalled_ms = 3200;
        c.cores[1].cpu = Some(1);
        let why = stuck_core(&c).expect("restart");
        assert!(
            why.contains("core 1 (CPU 1)") && why.contains("3.2 s"),
            "{why}"
        );
    }
}
