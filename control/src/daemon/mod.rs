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
//!
//! # Modules
//!
//! `procs` the processes (spawn, stop, start time); `state` `state.json` and adopting
//! what it records; `apply` the steps with undo and `down`; `reconcile` the loop;
//! `attachments` CNI attachments; `status` status and metrics; `auth` who may call
//! the API; `routes` the HTTP API, each request parsed into a [`Route`] first. This
//! module keeps the `Daemon`'s state and [`run`].

mod apply;
mod attachments;
mod auth;
mod procs;
mod reconcile;
mod routes;
mod state;
mod status;

use std::collections::{HashMap, VecDeque};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

pub use api::daemon::{
    default_api_socket, ApplyReply, AttachmentKey, CoreStatus, Exit, GcRequest, Phase, PodNetwork,
    PodStatus, PortStatus, Refusal, Status, SwitchStatus, API_VERSION, RUN_DIR,
};
use api::http::{self, Response};
use api::switch::SwitchCounters;

pub use procs::ProcRec;
pub use routes::{NoRoute, Route, Verb};
pub use state::PodRec;
pub use status::metrics;

use auth::{allowed, group_id, peer};
use procs::Procs;
use state::Persisted;

use crate::plan::{GuestImage, Plan};
use crate::topology::Topology;

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

/// The daemon's state, behind one lock: the API threads and the reconcile loop take it.
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
    /// Since when a running switch has not answered for its counters.
    unanswered_since: Option<Instant>,
    events: VecDeque<String>,
    /// Pods an apply in progress removed (their directories go when it succeeds).
    removed_pods: Vec<String>,
}

impl Daemon {
    pub(super) fn event(&mut self, msg: String) {
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
        unanswered_since: None,
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
                                routes::handle(&dd, req)
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
