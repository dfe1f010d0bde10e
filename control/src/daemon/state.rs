//! What the daemon keeps in `RUN/state.json` (written atomically after every change),
//! and adopting what it records when a daemon starts.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::procs::{start_time, ProcRec};
use super::{Daemon, Exit, Overlay, Phase, PodNetwork};
use crate::attach::Attachment;
use crate::plan;
use crate::topology::Topology;

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
pub(super) struct Persisted {
    pub(super) generation: u64,
    pub(super) source: Option<String>,
    pub(super) desired: Option<Topology>,
    pub(super) switch: Option<ProcRec>,
    pub(super) pods: BTreeMap<String, PodRec>,
    /// CNI attachments by `CONTAINER/IFNAME`.
    #[serde(default)]
    pub(super) attachments: BTreeMap<String, Attachment>,
    /// Extra networks of Kubernetes pods by `NAMESPACE/NAME` (their
    /// `k8s.v1.cni.cncf.io/networks` annotation, recorded by the controller).
    #[serde(default)]
    pub(super) pod_networks: BTreeMap<String, Vec<PodNetwork>>,
    /// What the node agent learnt of the cluster (`PUT /v1/overlay`), merged into
    /// `desired` whenever it is checked or planned ([`Daemon::effective`]).
    #[serde(default)]
    pub(super) overlay: Overlay,
}

/// Mode of `state.json`.
pub(super) const STATE_MODE: u32 = 0o600;

/// Tightens a `state.json` an older daemon left readable by all.
pub(super) fn tighten(run: &Path) {
    let f = run.join("state.json");
    if let Ok(md) = std::fs::metadata(&f) {
        if md.permissions().mode() & 0o777 != STATE_MODE {
            if let Err(e) =
                std::fs::set_permissions(&f, std::fs::Permissions::from_mode(STATE_MODE))
            {
                tracing::error!("{}: making it 0600: {e}", f.display());
            }
        }
    }
}

impl Daemon {
    pub(super) fn state_file(&self) -> PathBuf {
        self.run.join("state.json")
    }

    pub(super) fn persist(&self) {
        let tmp = self.run.join("state.json.tmp");
        let ok = serde_json::to_vec_pretty(&self.st)
            .map_err(std::io::Error::other)
            .and_then(|b| {
                // Created 0600 (it names every pod, namespace and socket): a leftover
                // temporary file goes first, as its mode would stay.
                let _ = std::fs::remove_file(&tmp);
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(STATE_MODE)
                    .open(&tmp)?;
                f.write_all(&b)?;
                f.sync_all()
            })
            .and_then(|()| std::fs::rename(&tmp, self.state_file()));
        if let Err(e) = ok {
            tracing::error!("saving {}: {e}", self.state_file().display());
        }
    }

    /// Adopts what `state.json` records and still runs.
    pub(super) fn adopt(&mut self) {
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
        if let Some(t) = self.effective() {
            match plan::plan(&t, &self.run, &self.image, &self.host()) {
                Ok(p) => self.plan = Some(p),
                Err(e) => self.event(format!("the recorded topology does not plan: {e}")),
            }
        }
        self.reconcile();
    }
}
