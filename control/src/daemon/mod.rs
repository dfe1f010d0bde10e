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
//! `attachments` CNI attachments (and handing a sandbox's over to its VM); `status`
//! status and metrics; `auth` who may call the API; `routes` the HTTP API, each request
//! parsed into a [`Route`] first. This module keeps the `Daemon`'s state and [`run`].

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
    default_api_socket, ApplyReply, AttachmentKey, CoreStatus, Exit, GcRequest, Overlay, Phase,
    PodNetwork, PodStatus, PortStatus, Refusal, Status, SwitchStatus, API_VERSION, RUN_DIR,
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

/// Connections the API serves at once; more are refused at once (503), not queued on a
/// thread each.
pub const API_MAX_CONNECTIONS: usize = 64;
/// Time a client has to send its whole request (head and body), however it spreads it.
pub const API_REQUEST_DEADLINE: Duration = Duration::from_secs(10);

/// Makes the run directory, or tightens an existing one: mode 0750 with the API group as
/// its group (so the group reaches `api.sock`), 0700 without one. It holds the state file,
/// logs and consoles of every pod, and sockets no one else is meant to reach.
fn make_run_dir(dir: &std::path::Path, group: Option<u32>) -> Result<(), String> {
    use std::os::unix::fs::DirBuilderExt;
    let mode = if group.is_some() { 0o750 } else { 0o700 };
    let err = |e: std::io::Error| format!("{}: {e}", dir.display());
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent).map_err(err)?;
    }
    match std::fs::DirBuilder::new().mode(mode).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(err(e)),
    }
    if let Some(g) = group {
        let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
            .map_err(|e| e.to_string())?;
        // SAFETY: c is a valid NUL-terminated path; -1 keeps the owner.
        if unsafe { libc::chown(c.as_ptr(), u32::MAX, g) } != 0 {
            return Err(err(std::io::Error::last_os_error()));
        }
    }
    // An existing directory (an older daemon made it 0755) is fixed here; the umask may
    // also have taken bits from a new one, which is harmless.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)).map_err(err)
}

/// Runs the daemon until SIGINT or SIGTERM (which leave the switch and the pods running).
pub fn run(a: &DaemonArgs) -> Result<(), String> {
    let sigs = crate::switch_cmd::block_signals();
    let exe = std::env::current_exe().map_err(|e| format!("own executable: {e}"))?;
    let group = match &a.group {
        Some(g) => Some(group_id(g).ok_or_else(|| format!("--group {g}: no such group"))?),
        None => group_id("vnfhost"),
    };
    make_run_dir(&a.run_dir, group)?;
    state::tighten(&a.run_dir);
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
            // A thread per connection, at most API_MAX_CONNECTIONS at once, each done
            // within API_REQUEST_DEADLINE: idle or slow clients hold a slot for that long
            // at most, and one over the limit is refused without a thread.
            let limit = http::ConnLimit::new(API_MAX_CONNECTIONS);
            let mut refused = 0u64;
            for s in listener.incoming().flatten() {
                // Strangers (the socket's mode keeps them out unless loosened by hand)
                // are turned away before they take a slot.
                if !peer(&s).is_some_and(|c| allowed(&c, group)) {
                    http::refuse(s, 403, "permission denied");
                    continue;
                }
                let Some(slot) = limit.try_take() else {
                    refused += 1;
                    if refused.is_power_of_two() {
                        tracing::warn!(
                            "API: {API_MAX_CONNECTIONS} connections busy; refused {refused} \
                             so far"
                        );
                    }
                    http::refuse_busy(s);
                    continue;
                };
                let dd = dd.clone();
                let _ = std::thread::Builder::new()
                    .name("api-conn".into())
                    .spawn(move || {
                        let _slot = slot;
                        http::serve_one(s, API_REQUEST_DEADLINE, |req| routes::handle(&dd, req))
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
                // a deadline for its request and a write timeout; at most 16 at once.
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
                            let _ = s.set_write_timeout(Some(Duration::from_secs(5)));
                            let resp = match http::read_request_within(&s, Duration::from_secs(5)) {
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
