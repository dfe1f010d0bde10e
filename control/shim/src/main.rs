//! `containerd-shim-vnfhost-v2`: a containerd runtime v2 shim that runs a pod's
//! containers in a vnfhost pod VM, for the runtime handler
//! `runtime_type = "io.containerd.vnfhost.v2"`.
//!
//! One shim serves one pod sandbox (containers are grouped by the sandbox id CRI puts
//! in their annotations):
//!
//! - the **sandbox** task is a placeholder held by the shim: the pod's network namespace
//!   and CNI set-up are made by containerd before it, as for any pod;
//! - a **container** task, when started, boots a pod VM (`vnfhost vm run`, QEMU microvm on
//!   a host without vmx/svm, vnfhost's KVM monitor otherwise) whose in-guest init runs
//!   the container's command line (`vnf.run=`) and powers off with its exit status. The
//!   VM's NIC is a vhost-user port on the switch on the pod's network: the shim asks the
//!   daemon for an attachment `SANDBOX/vmJ` on the network of the pod's CNI attachment.
//! - what the command prints on the VM's console is the container's stdout, so it lands
//!   in the container's CRI log; its exit status is the task's (`TaskExit` event).
//!
//! Limits: one command per container (no `exec`), no image filesystem in the guest (the
//! command runs in the guest image's BusyBox userland), no TTY, no stdin.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, SystemTime};

use containerd_shim as shim;
use shim::protos::events::task::TaskExit;
use shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use shim::protos::ttrpc::context::Context;
use shim::{
    api, publisher::RemotePublisher, Config, DeleteResponse, ExitSignal, Flags, TtrpcContext,
    TtrpcResult,
};

/// Where a task is in its life.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    Created,
    Running,
    Stopped,
}

struct Task {
    bundle: String,
    stdout: String,
    sandbox: bool,
    sandbox_id: String,
    args: Vec<String>,
    phase: Phase,
    pid: u32,
    exit_status: u32,
    exited_at: Option<SystemTime>,
}

#[derive(Default)]
struct State {
    tasks: HashMap<String, Task>,
}

#[derive(Clone)]
struct Service {
    exit: Arc<ExitSignal>,
    namespace: String,
    state: Arc<(Mutex<State>, Condvar)>,
    publisher: Option<Arc<Mutex<RemotePublisher>>>,
}

fn err(msg: impl Into<String>) -> shim::protos::ttrpc::Error {
    shim::protos::ttrpc::Error::Others(msg.into())
}

fn timestamp(t: SystemTime) -> Timestamp {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let mut ts = Timestamp::new();
    ts.seconds = d.as_secs() as i64;
    ts.nanos = d.subsec_nanos() as i32;
    ts
}

/// The `vnfhost` binary: `VNFHOST_BIN`, else next to this shim, else from `PATH`.
fn vnfhost_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("VNFHOST_BIN") {
        return p.into();
    }
    if let Ok(me) = std::env::current_exe() {
        let next = me.with_file_name("vnfhost");
        if next.exists() {
            return next;
        }
    }
    PathBuf::from("vnfhost")
}

/// A call to the node's daemon; `None` when it cannot be reached.
fn daemon(method: &str, path: &str, body: Option<&[u8]>) -> Option<(u16, serde_json::Value)> {
    let api = control::daemon::default_api_socket();
    let (st, b) = control::http::call(&api, method, path, body, Duration::from_secs(30)).ok()?;
    Some((
        st,
        serde_json::from_slice(&b).unwrap_or(serde_json::Value::Null),
    ))
}

/// A vhost-user port for the VM on the network of the sandbox's CNI attachment:
/// `(socket, mac, address, gateway)`.
fn vm_port(sandbox: &str, ifname: &str) -> Option<(String, String, String, Option<String>)> {
    let (_, list) = daemon("GET", "/v1/attachments", None)?;
    let network = list
        .as_array()?
        .iter()
        .find(|a| a["container"] == sandbox && a["request"]["kind"] == "tap")?["request"]
        ["network"]
        .as_str()?
        .to_string();
    let body = serde_json::json!({ "network": network, "kind": "vhost-user" }).to_string();
    let (st, a) = daemon(
        "PUT",
        &format!("/v1/attachments/{sandbox}/{ifname}"),
        Some(body.as_bytes()),
    )?;
    if st != 200 {
        return None;
    }
    Some((
        a["socket"].as_str()?.to_string(),
        a["mac"].as_str()?.to_string(),
        a["address"].as_str()?.to_string(),
        a["gateway"].as_str().map(String::from),
    ))
}

impl Service {
    fn publish_exit(&self, id: &str, pid: u32, status: u32, at: SystemTime) {
        let Some(p) = &self.publisher else { return };
        let ev = TaskExit {
            container_id: id.to_string(),
            id: id.to_string(),
            pid,
            exit_status: status,
            exited_at: Some(timestamp(at)).into(),
            ..Default::default()
        };
        if let Ok(p) = p.lock() {
            if let Err(e) = p.publish(
                Context::default(),
                "/tasks/exit",
                &self.namespace,
                Box::new(ev),
            ) {
                eprintln!("vnfhost shim: publishing the exit of {id}: {e}");
            }
        }
    }

    fn finish(&self, id: &str, status: u32) {
        let (lock, cv) = &*self.state;
        let mut st = lock.lock().unwrap_or_else(|p| p.into_inner());
        let Some(t) = st.tasks.get_mut(id) else {
            return;
        };
        if t.phase == Phase::Stopped {
            return;
        }
        t.phase = Phase::Stopped;
        t.exit_status = status;
        let at = SystemTime::now();
        t.exited_at = Some(at);
        let pid = t.pid;
        drop(st);
        cv.notify_all();
        self.publish_exit(id, pid, status, at);
    }

    /// Boots the VM that runs container `id`'s command; returns its pid.
    fn boot(&self, id: &str) -> Result<u32, String> {
        let (args, stdout, sandbox) = {
            let st = self.state.0.lock().unwrap_or_else(|p| p.into_inner());
            let t = st.tasks.get(id).ok_or("no such task")?;
            (t.args.clone(), t.stdout.clone(), t.sandbox_id.clone())
        };
        let command = args
            .iter()
            .map(|a| {
                if a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:@,".contains(c))
                {
                    a.clone()
                } else {
                    format!("'{}'", a.replace('\'', "'\\''"))
                }
            })
            .collect::<Vec<_>>()
            .join(" ");
        if command.contains('"') || command.contains('\n') {
            return Err("the command may not contain double quotes or newlines".into());
        }
        let image = control::plan::GuestImage::from_env();
        let mut append = Vec::new();
        let mut cmd = Command::new(vnfhost_bin());
        cmd.args(["vm", "run", "--hypervisor", "auto", "--mem", "192M"])
            .arg("--kernel")
            .arg(&image.kernel)
            .arg("--initrd")
            .arg(&image.initrd);
        let ifname = format!("vm{}", id.get(..6).unwrap_or(id));
        if let Some((sock, mac, addr, gw)) = vm_port(&sandbox, &ifname) {
            cmd.arg("--net")
                .arg(format!("vhost-user={sock},client,mac={mac}"));
            append.push(format!("vnf.ip={addr}"));
            if let Some(gw) = gw {
                append.push(format!("vnf.gw={gw}"));
            }
        }
        append.push(format!("\"vnf.run={command}\""));
        cmd.arg("--append").arg(append.join(" "));
        let mut child: Child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("{}: {e}", vnfhost_bin().display()))?;
        let pid = child.id();
        let console = child.stdout.take().ok_or("no console pipe")?;
        let me = self.clone();
        let id = id.to_string();
        std::thread::spawn(move || {
            // The console until the guest is ready is the kernel's and init's; after it,
            // the workload's, until init reports its exit status.
            let mut out = std::fs::OpenOptions::new().write(true).open(&stdout).ok();
            let mut ready = false;
            let mut status = None;
            for line in BufReader::new(console).lines().map_while(Result::ok) {
                let line = line.trim_end_matches('\r');
                if let Some(s) = line.split("VNFHOST-WORKLOAD-EXIT status=").nth(1) {
                    status = s.trim().parse::<u32>().ok();
                    ready = false;
                } else if line.contains("VNFHOST-GUEST-READY") {
                    ready = true;
                } else if ready {
                    if let Some(o) = out.as_mut() {
                        let _ = writeln!(o, "{line}");
                    }
                }
            }
            let vm = child.wait().map(|s| s.code().unwrap_or(255)).unwrap_or(255);
            let code = status.unwrap_or(if vm == 0 { 0 } else { 255 });
            let _ = daemon(
                "DELETE",
                &format!("/v1/attachments/{sandbox}/{ifname}"),
                None,
            );
            me.finish(&id, code);
        });
        Ok(pid)
    }
}

impl shim::Shim for Service {
    type T = Service;

    fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        Service {
            exit: Arc::new(ExitSignal::default()),
            namespace: args.namespace.clone(),
            state: Arc::default(),
            publisher: None,
        }
    }

    fn start_shim(&mut self, opts: shim::StartOpts) -> Result<String, shim::Error> {
        // Containers join their sandbox's shim: CRI names the sandbox in the bundle.
        let spec = std::fs::read_to_string("config.json").unwrap_or_default();
        let grouping = serde_json::from_str::<serde_json::Value>(&spec)
            .ok()
            .and_then(|v| {
                v["annotations"]["io.kubernetes.cri.sandbox-id"]
                    .as_str()
                    .map(String::from)
            })
            .unwrap_or_else(|| opts.id.clone());
        let (_pid, address) = shim::spawn(opts, &grouping, Vec::new())?;
        Ok(address)
    }

    fn delete_shim(&mut self) -> Result<DeleteResponse, shim::Error> {
        let mut r = DeleteResponse::new();
        r.set_exited_at(timestamp(SystemTime::now()));
        r.set_exit_status(137);
        Ok(r)
    }

    fn wait(&mut self) {
        self.exit.wait();
    }

    fn create_task_service(&self, publisher: RemotePublisher) -> Self::T {
        let mut s = self.clone();
        s.publisher = Some(Arc::new(Mutex::new(publisher)));
        s
    }
}

impl shim::Task for Service {
    fn create(
        &self,
        _ctx: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> TtrpcResult<api::CreateTaskResponse> {
        let spec: serde_json::Value = std::fs::read(Path::new(&req.bundle).join("config.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| err(format!("{}: no readable config.json", req.bundle)))?;
        let ann = &spec["annotations"];
        let sandbox = ann["io.kubernetes.cri.container-type"] == "sandbox";
        let args: Vec<String> = spec["process"]["args"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        if req.terminal {
            return Err(err("vnfhost pod VMs have no TTY for containers"));
        }
        let pid = std::process::id();
        let t = Task {
            bundle: req.bundle.clone(),
            stdout: req.stdout.clone(),
            sandbox,
            sandbox_id: ann["io.kubernetes.cri.sandbox-id"]
                .as_str()
                .unwrap_or(&req.id)
                .to_string(),
            args,
            phase: Phase::Created,
            pid,
            exit_status: 0,
            exited_at: None,
        };
        let mut st = self.state.0.lock().unwrap_or_else(|p| p.into_inner());
        st.tasks.insert(req.id.clone(), t);
        Ok(api::CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    fn start(
        &self,
        _ctx: &TtrpcContext,
        req: api::StartRequest,
    ) -> TtrpcResult<api::StartResponse> {
        let sandbox = {
            let st = self.state.0.lock().unwrap_or_else(|p| p.into_inner());
            st.tasks
                .get(&req.id)
                .map(|t| t.sandbox)
                .ok_or_else(|| err(format!("no task {}", req.id)))?
        };
        let pid = if sandbox {
            std::process::id()
        } else {
            self.boot(&req.id).map_err(err)?
        };
        let mut st = self.state.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = st.tasks.get_mut(&req.id) {
            if t.phase == Phase::Created {
                t.phase = Phase::Running;
            }
            t.pid = pid;
        }
        Ok(api::StartResponse {
            pid,
            ..Default::default()
        })
    }

    fn state(
        &self,
        _ctx: &TtrpcContext,
        req: api::StateRequest,
    ) -> TtrpcResult<api::StateResponse> {
        let st = self.state.0.lock().unwrap_or_else(|p| p.into_inner());
        let t = st
            .tasks
            .get(&req.id)
            .ok_or_else(|| err(format!("no task {}", req.id)))?;
        let status = match t.phase {
            Phase::Created => api::Status::CREATED,
            Phase::Running => api::Status::RUNNING,
            Phase::Stopped => api::Status::STOPPED,
        };
        Ok(api::StateResponse {
            id: req.id.clone(),
            bundle: t.bundle.clone(),
            pid: t.pid,
            status: status.into(),
            stdout: t.stdout.clone(),
            exit_status: t.exit_status,
            exited_at: t.exited_at.map(timestamp).into(),
            ..Default::default()
        })
    }

    fn wait(&self, _ctx: &TtrpcContext, req: api::WaitRequest) -> TtrpcResult<api::WaitResponse> {
        let (lock, cv) = &*self.state;
        let mut st = lock.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            match st.tasks.get(&req.id) {
                None => return Err(err(format!("no task {}", req.id))),
                Some(t) if t.phase == Phase::Stopped => {
                    return Ok(api::WaitResponse {
                        exit_status: t.exit_status,
                        exited_at: t.exited_at.map(timestamp).into(),
                        ..Default::default()
                    })
                }
                Some(_) => st = cv.wait(st).unwrap_or_else(|p| p.into_inner()),
            }
        }
    }

    fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<api::Empty> {
        let (sandbox, pid, phase) = {
            let st = self.state.0.lock().unwrap_or_else(|p| p.into_inner());
            let t = st
                .tasks
                .get(&req.id)
                .ok_or_else(|| err(format!("no task {}", req.id)))?;
            (t.sandbox, t.pid, t.phase)
        };
        match (sandbox, phase) {
            (_, Phase::Stopped) => {}
            (true, _) | (false, Phase::Created) => self.finish(&req.id, 128 + req.signal),
            (false, Phase::Running) => {
                // SAFETY: kill(2) on the VM process this shim started; the reader thread
                // reaps it and reports the exit.
                unsafe { libc::kill(pid as i32, req.signal as i32) };
            }
        }
        Ok(api::Empty::default())
    }

    fn delete(
        &self,
        _ctx: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> TtrpcResult<api::DeleteResponse> {
        let mut st = self.state.0.lock().unwrap_or_else(|p| p.into_inner());
        let t = st
            .tasks
            .remove(&req.id)
            .ok_or_else(|| err(format!("no task {}", req.id)))?;
        Ok(api::DeleteResponse {
            pid: t.pid,
            exit_status: t.exit_status,
            exited_at: t.exited_at.map(timestamp).into(),
            ..Default::default()
        })
    }

    fn pids(&self, _ctx: &TtrpcContext, req: api::PidsRequest) -> TtrpcResult<api::PidsResponse> {
        let st = self.state.0.lock().unwrap_or_else(|p| p.into_inner());
        let t = st
            .tasks
            .get(&req.id)
            .ok_or_else(|| err(format!("no task {}", req.id)))?;
        let mut info = shim::protos::types::task::ProcessInfo::new();
        info.pid = t.pid;
        Ok(api::PidsResponse {
            processes: vec![info],
            ..Default::default()
        })
    }

    fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: api::ConnectRequest,
    ) -> TtrpcResult<api::ConnectResponse> {
        let st = self.state.0.lock().unwrap_or_else(|p| p.into_inner());
        Ok(api::ConnectResponse {
            shim_pid: std::process::id(),
            task_pid: st.tasks.get(&req.id).map(|t| t.pid).unwrap_or(0),
            version: "vnfhost".into(),
            ..Default::default()
        })
    }

    fn shutdown(&self, _ctx: &TtrpcContext, _req: api::ShutdownRequest) -> TtrpcResult<api::Empty> {
        let st = self.state.0.lock().unwrap_or_else(|p| p.into_inner());
        if st.tasks.is_empty() {
            self.exit.signal();
        }
        Ok(api::Empty::default())
    }
}

fn main() {
    // The shim waits for its VMs itself (their exit status is the containers'), so the
    // library must not reap children behind its back.
    let config = Config {
        no_reaper: true,
        ..Default::default()
    };
    shim::run::<Service>("io.containerd.vnfhost.v2", Some(config));
}
