//! `containerd-shim-vnfhost-v2`: a containerd runtime v2 shim that runs a pod's
//! containers in a vnfhost pod VM, for the runtime handler
//! `runtime_type = "io.containerd.vnfhost.v2"`.
//!
//! One shim serves one pod sandbox (containers are grouped by the sandbox id CRI puts
//! in their annotations), and the sandbox is one pod VM:
//!
//! - **starting the sandbox** boots the VM (`vnfhost vm run`: QEMU microvm on a host
//!   without vmx/svm, vnfhost's KVM monitor otherwise). Its NIC is a vhost-user port on
//!   the switch on the pod's network: the shim asks the daemon for an attachment
//!   `SANDBOX/vm0` on the network of the pod's CNI attachment (containerd made the netns
//!   and ran CNI before, as for any pod). The sandbox task's pid is the VM's.
//! - **starting a container** waits for the guest to be ready, then has the guest's
//!   console shell (vnfhost-init's) run the container's command line in the background;
//!   every line it prints comes back on the console tagged with the container, and goes
//!   to the container's stdout, so it lands in the container's CRI log. The command's
//!   exit status is the task's (`TaskExit` event). Killing the container signals the
//!   command inside the guest; stopping the sandbox stops the VM.
//!
//! Limits: the command runs in the guest image's BusyBox userland, not in the container
//! image's filesystem; no exec, no TTY, no stdin; stdout and stderr are merged.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, Stdio};
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
    args: Vec<String>,
    phase: Phase,
    pid: u32,
    exit_status: u32,
    exited_at: Option<SystemTime>,
    /// The command's pid inside the guest, once it reported it.
    guest_pid: Option<u32>,
    /// Where its output goes.
    out: Option<std::fs::File>,
}

/// The sandbox's VM.
struct Vm {
    pid: u32,
    console: ChildStdin,
    ready: bool,
    /// Why it cannot run containers (it failed to boot, or it ended).
    dead: Option<String>,
}

#[derive(Default)]
struct State {
    tasks: HashMap<String, Task>,
    vm: Option<Vm>,
}

/// The tag of a container's lines on the console.
fn tag(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// `a` quoted for the guest's shell.
fn quote(a: &str) -> String {
    format!("'{}'", a.replace('\'', "'\\''"))
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
    let api = ::api::daemon::default_api_socket();
    let (st, b) = ::api::http::call(&api, method, path, body, Duration::from_secs(30)).ok()?;
    Some((
        st,
        serde_json::from_slice(&b).unwrap_or(serde_json::Value::Null),
    ))
}

/// The VM's port.
type VmPort = (String, String, String, Option<String>);

/// A vhost-user port for the VM on the network of the sandbox's CNI attachment:
/// `(socket, mac, address, gateway)`; `None` when the pod has no vnfhost network (a
/// host-network pod, or another CNI plugin); an error when the daemon cannot make it.
fn vm_port(sandbox: &str, ifname: &str) -> Result<Option<VmPort>, String> {
    let (st, list) =
        daemon("GET", "/v1/attachments", None).ok_or("the vnfhost daemon cannot be reached")?;
    if st != 200 {
        return Err(format!("the vnfhost daemon answered {st}"));
    }
    let Some(network) = list.as_array().and_then(|l| {
        l.iter()
            .find(|a| a["container"] == sandbox && a["request"]["kind"] == "tap")
            .and_then(|a| a["request"]["network"].as_str())
            .map(String::from)
    }) else {
        return Ok(None);
    };
    let body = serde_json::json!({ "network": network, "kind": "vhost-user" }).to_string();
    let (st, a) = daemon(
        "PUT",
        &format!("/v1/attachments/{sandbox}/{ifname}"),
        Some(body.as_bytes()),
    )
    .ok_or("the vnfhost daemon cannot be reached")?;
    if st != 200 {
        return Err(format!("a port for the pod VM: {}", a["error"]));
    }
    let field = |k: &str| {
        a[k].as_str()
            .map(String::from)
            .ok_or(format!("reply without {k}"))
    };
    Ok(Some((
        field("socket")?,
        field("mac")?,
        field("address")?,
        a["gateway"].as_str().map(String::from),
    )))
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

    /// Boots the sandbox's VM; returns its pid.
    fn boot(&self, sandbox: &str) -> Result<u32, String> {
        let image = ::api::daemon::GuestImage::from_env();
        let mut append = Vec::new();
        let mut cmd = Command::new(vnfhost_bin());
        cmd.args(["vm", "run", "--hypervisor", "auto", "--mem", "192M"])
            .arg("--kernel")
            .arg(&image.kernel)
            .arg("--initrd")
            .arg(&image.initrd);
        let port = vm_port(sandbox, "vm0")?;
        if port.is_none() {
            eprintln!("vnfhost shim: sandbox {sandbox} has no vnfhost network; its VM has no NIC");
        }
        if let Some((sock, mac, addr, gw)) = &port {
            cmd.arg("--net")
                .arg(format!("vhost-user={sock},client,mac={mac}"));
            append.push(format!("vnf.ip={addr}"));
            if let Some(gw) = gw {
                append.push(format!("vnf.gw={gw}"));
            }
        }
        if !append.is_empty() {
            cmd.arg("--append").arg(append.join(" "));
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("{}: {e}", vnfhost_bin().display()))?;
        let pid = child.id();
        let console_out = child.stdout.take().ok_or("no console pipe")?;
        let console_in = child.stdin.take().ok_or("no console pipe")?;
        {
            let mut st = self.state.0.lock().unwrap_or_else(|p| p.into_inner());
            st.vm = Some(Vm {
                pid,
                console: console_in,
                ready: false,
                dead: None,
            });
        }
        let me = self.clone();
        let sandbox = sandbox.to_string();
        std::thread::spawn(move || {
            for line in BufReader::new(console_out).lines().map_while(Result::ok) {
                me.console_line(line.trim_end_matches('\r'));
            }
            let code = child.wait().ok().and_then(|s| s.code()).unwrap_or(255);
            // Marked ended before anything slow: its pid is reaped and may be reused.
            me.vm_ended(code);
            if port.is_some() {
                let _ = daemon("DELETE", &format!("/v1/attachments/{sandbox}/vm0"), None);
            }
        });
        Ok(pid)
    }

    /// One line from the VM's console.
    fn console_line(&self, line: &str) {
        let (lock, cv) = &*self.state;
        if line.contains("VNFHOST-GUEST-READY") || line.contains("VNFHOST-GUEST-FAILED") {
            let mut st = lock.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(vm) = st.vm.as_mut() {
                if line.contains("READY") {
                    vm.ready = true;
                } else {
                    vm.dead = Some(line.to_string());
                }
            }
            drop(st);
            cv.notify_all();
            return;
        }
        // `VNFHOST-OUT TAG payload`: a container's output, pid or exit status.
        let Some(rest) = line.split("VNFHOST-OUT ").nth(1) else {
            return;
        };
        let (t, payload) = rest.split_once(' ').unwrap_or((rest, ""));
        let mut st = lock.lock().unwrap_or_else(|p| p.into_inner());
        let Some((id, task)) = st.tasks.iter_mut().find(|(id, _)| tag(id) == t) else {
            return;
        };
        let id = id.clone();
        if let Some(p) = payload.strip_prefix("VNFHOST-PID ") {
            task.guest_pid = p.trim().parse().ok();
        } else if let Some(code) = payload.strip_prefix("VNFHOST-CEXIT ") {
            let code = code.trim().parse().unwrap_or(255);
            drop(st);
            self.finish(&id, code);
        } else if let Some(out) = task.out.as_mut() {
            let _ = writeln!(out, "{payload}");
        }
    }

    /// The VM is gone: every task still running ends with it.
    fn vm_ended(&self, code: i32) {
        let ids: Vec<(String, bool)> = {
            let mut st = self.state.0.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(vm) = st.vm.as_mut() {
                vm.dead = Some(format!("the pod VM exited with status {code}"));
            }
            st.tasks
                .iter()
                .filter(|(_, t)| t.phase != Phase::Stopped)
                .map(|(id, t)| (id.clone(), t.sandbox))
                .collect()
        };
        self.state.1.notify_all();
        for (id, sandbox) in ids {
            let status = if sandbox && code == 0 { 0 } else { 137 };
            self.finish(&id, status);
        }
    }

    /// Runs container `id`'s command in the guest; returns the VM's pid.
    fn run_in_guest(&self, id: &str) -> Result<u32, String> {
        let (lock, cv) = &*self.state;
        let mut st = lock.lock().unwrap_or_else(|p| p.into_inner());
        let deadline = std::time::Instant::now() + Duration::from_secs(180);
        loop {
            match st.vm.as_ref() {
                None => return Err("the sandbox's VM is not started".into()),
                Some(vm) if vm.dead.is_some() => {
                    return Err(vm.dead.clone().unwrap_or_default());
                }
                Some(vm) if vm.ready => break,
                Some(_) => {
                    let left = deadline.saturating_duration_since(std::time::Instant::now());
                    if left.is_zero() {
                        return Err("the pod VM did not become ready within 180 s".into());
                    }
                    st = cv
                        .wait_timeout(st, left)
                        .map(|r| r.0)
                        .unwrap_or_else(|p| p.into_inner().0);
                }
            }
        }
        let task = st.tasks.get_mut(id).ok_or("no such task")?;
        if task.args.is_empty() || task.args.iter().any(|a| a.contains(['\n', '\r', '\0'])) {
            return Err("the command is empty or has a line break in an argument".into());
        }
        task.out = std::fs::OpenOptions::new()
            .write(true)
            .open(&task.stdout)
            .ok();
        let args: Vec<String> = task.args.iter().map(|a| quote(a)).collect();
        // The command reports its pid (for kill), runs, and reports its status; every
        // line is tagged with the container on its way to the console. The tag's marker
        // is split in the command line ("VNFHOST-""OUT") so that an echo of the line
        // itself can never pass for output.
        let line = format!(
            "( sh -c 'echo VNFHOST-PID $$; exec \"$@\"' sh {} ; echo \"VNFHOST-CEXIT $?\" ) </dev/null 2>&1 | sed \"s/^/VNFHOST-\"\"OUT {} /\" &\n",
            args.join(" "),
            tag(id)
        );
        let vm = st.vm.as_mut().ok_or("no VM")?;
        vm.console
            .write_all(line.as_bytes())
            .and_then(|()| vm.console.flush())
            .map_err(|e| format!("the pod VM's console: {e}"))?;
        Ok(vm.pid)
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
            args,
            phase: Phase::Created,
            pid,
            exit_status: 0,
            exited_at: None,
            guest_pid: None,
            out: None,
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
            self.boot(&req.id).map_err(err)?
        } else {
            self.run_in_guest(&req.id).map_err(err)?
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
        let mut st = self.state.0.lock().unwrap_or_else(|p| p.into_inner());
        let t = st
            .tasks
            .get(&req.id)
            .ok_or_else(|| err(format!("no task {}", req.id)))?;
        let (sandbox, phase, guest_pid) = (t.sandbox, t.phase, t.guest_pid);
        match (sandbox, phase, guest_pid) {
            (_, Phase::Stopped, _) => {}
            (true, Phase::Running, _) => {
                if let Some(vm) = st.vm.as_ref().filter(|vm| vm.dead.is_none()) {
                    // SAFETY: kill(2) on the VM process this shim started; its reader
                    // thread reaps it and reports the exits.
                    unsafe { libc::kill(vm.pid as i32, libc::SIGTERM) };
                }
            }
            (false, Phase::Running, Some(p)) => {
                if let Some(vm) = st.vm.as_mut() {
                    let _ = writeln!(vm.console, "kill -{} {p}", req.signal);
                    let _ = vm.console.flush();
                }
            }
            _ => {
                drop(st);
                self.finish(&req.id, 128 + req.signal);
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
        if t.sandbox {
            if let Some(vm) = st.vm.as_ref().filter(|vm| vm.dead.is_none()) {
                // SAFETY: kill(2) on the VM this shim started and has not seen end
                // (`dead` is set as soon as it is reaped).
                unsafe { libc::kill(vm.pid as i32, libc::SIGKILL) };
            }
        }
        drop(st);
        // A Wait on the deleted task must not hang.
        self.state.1.notify_all();
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
            if let Some(vm) = st.vm.as_ref().filter(|vm| vm.dead.is_none()) {
                // SAFETY: kill(2) on the VM process this shim started.
                unsafe { libc::kill(vm.pid as i32, libc::SIGTERM) };
            }
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
