//! `containerd-shim-vnfhost-v2`: a containerd runtime v2 shim that runs a pod's
//! containers in a vnfhost pod VM, for the runtime handler
//! `runtime_type = "io.containerd.vnfhost.v2"`.
//!
//! One shim serves one pod sandbox (containers are grouped by the sandbox id CRI puts in
//! their annotations), and the sandbox is one pod VM (`vnfhost_podvm`):
//!
//! - **starting the sandbox** boots the VM (QEMU microvm: KVM where the CPU has it, TCG
//!   otherwise) with the agent's virtio-serial port and [`podvm::vm::DEFAULT_SLOTS`]
//!   disk slots. Its NIC is the sandbox's CNI attachment, handed over by the daemon as a
//!   vhost-user port with the same MAC and address: the pod IP is the VM's. The sandbox
//!   task's pid is the VM's.
//! - **creating a container** turns its root file system (the mounts containerd hands
//!   over) into a read-only ext4 image, cached per snapshot chain, copies it into a free
//!   slot and has the guest agent make the container: the image under an overlay, its
//!   OCI process (args, env, cwd, user, terminal), hostname, and the small host files CRI
//!   binds (`/etc/hosts`, `/etc/resolv.conf`...). Mounts that cannot be carried into the
//!   VM are refused ([`podvm::spec`]).
//! - **Start, Exec, Kill, ResizePty, CloseIO, Wait, State, Delete, Stats** go to the agent
//!   for the container's or the exec's process; stdout and stderr go to their own FIFOs,
//!   stdin comes from its FIFO, a TTY is a pty in the guest. Exit statuses are the
//!   processes' own (127: not found), published as `TaskExit` events.
//! - **stopping the sandbox** stops the VM: every container still running ends (137).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, SystemTime};

use containerd_shim as shim;
use podvm::vm::{Config as VmConfig, NetPort, PodVm};
use podvm::{Event, Handler};
use shim::protos::events::task::TaskExit;
use shim::protos::protobuf::well_known_types::any::Any;
use shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use shim::protos::protobuf::Message;
use shim::protos::ttrpc::context::Context;
use shim::{
    api, publisher::RemotePublisher, Config, DeleteResponse, ExitSignal, Flags, TtrpcContext,
    TtrpcResult,
};

/// How long a container waits for its sandbox's guest to answer (TCG boots in seconds).
const GUEST_TIMEOUT: Duration = Duration::from_secs(180);

/// Where a process is in its life.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    Created,
    Running,
    Stopped,
}

/// A container's process or an exec.
struct Proc {
    stdin: String,
    stdout: String,
    stderr: String,
    phase: Phase,
    pid: u32,
    exit_status: u32,
    exited_at: Option<SystemTime>,
    /// The agent's process number.
    agent_proc: Option<u32>,
    /// What to run (an exec's, until it starts).
    process: agent::Process,
}

struct Task {
    bundle: String,
    sandbox: bool,
    main: Proc,
    execs: HashMap<String, Proc>,
    /// The disk slot of its image.
    slot: Option<usize>,
}

impl Task {
    /// Its container's process (`exec_id` empty) or one of its execs.
    fn proc(&self, exec_id: &str) -> Result<&Proc, String> {
        if exec_id.is_empty() {
            Ok(&self.main)
        } else {
            self.execs
                .get(exec_id)
                .ok_or_else(|| format!("no exec {exec_id}"))
        }
    }
}

impl State {
    /// Task `id`.
    fn task(&self, id: &str) -> Result<&Task, shim::protos::ttrpc::Error> {
        self.tasks
            .get(id)
            .ok_or_else(|| err(format!("no task {id}")))
    }
}

#[derive(Default)]
struct State {
    tasks: HashMap<String, Task>,
    vm: Option<Arc<PodVm>>,
    /// Why the VM cannot run containers (it ended).
    vm_dead: Option<String>,
    /// The pod's hostname (from the sandbox's spec).
    hostname: Option<String>,
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

/// Where pod VMs keep their slots and sockets (on disk: images are copied into slots).
fn vm_dir(sandbox: &str) -> PathBuf {
    let base = std::env::var_os("VNFHOST_VM_DIR").unwrap_or_else(|| "/var/lib/vnfhost/vm".into());
    Path::new(&base).join(sandbox)
}

/// The pod's network for the VM: the sandbox's CNI attachment is handed over to it (the
/// same MAC and address, now a vhost-user port; nothing is left in the sandbox's network
/// namespace), so the pod IP that CRI reports is the VM's. `None` when the pod has no
/// vnfhost network (a host-network pod, or another CNI plugin). CNI DEL of the sandbox
/// removes the port, as for any pod.
fn vm_port(sandbox: &str) -> Result<Option<NetPort>, String> {
    let api = ::api::daemon::default_api_socket();
    let Some(a) = ::api::attach::hand_over_to_vm(&api, sandbox)? else {
        return Ok(None);
    };
    Ok(Some(NetPort {
        socket: a
            .socket
            .ok_or("the daemon handed over a port without a socket")?,
        mac: a.mac,
        address: a.address,
        gateway: a.gateway,
        mtu: a.mtu,
    }))
}

/// Opens a FIFO containerd made for a process's output; `None` for an empty path. Opened
/// read-write so that the open never waits for a reader.
fn open_out(path: &str) -> Result<Option<File>, String> {
    if path.is_empty() {
        return Ok(None);
    }
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map(Some)
        .map_err(|e| format!("{path}: {e}"))
}

/// The ext4 image of a container's root file system (`rootfs` mounts from containerd),
/// built once per snapshot chain.
fn rootfs_image(
    bundle: &str,
    rootfs: &[shim::protos::types::mount::Mount],
) -> Result<PathBuf, String> {
    let m = match rootfs {
        [m] => m,
        [] => return Err("no root file system mounts (containerd gave none)".into()),
        _ => return Err("more than one root file system mount is not supported".into()),
    };
    let lower = m
        .options
        .iter()
        .find_map(|o| o.strip_prefix("lowerdir="))
        .map(String::from);
    match (m.type_.as_str(), lower) {
        ("overlay", Some(lower)) => {
            // The image is the lower layers: the upper one is this container's own, empty
            // when it is made.
            let key = podvm::image::key(&["overlay", &lower]);
            let cached = podvm::image::cache_dir().join(format!("{key}.ext4"));
            if cached.exists() {
                return Ok(cached);
            }
            let layers: Vec<&str> = lower.split(':').collect();
            if let [one] = layers[..] {
                return podvm::image::build(Path::new(one), &key);
            }
            // A read-only overlay of the layers, mounted only while the image is built.
            let target = Path::new(bundle).join("vnfhost-image");
            std::fs::create_dir_all(&target).map_err(|e| e.to_string())?;
            mount(
                "overlay",
                &target,
                "overlay",
                libc::MS_RDONLY,
                &format!("lowerdir={lower}"),
            )
            .map_err(|e| format!("mounting the image's layers: {e}"))?;
            let r = podvm::image::build(&target, &key);
            umount(&target);
            r
        }
        ("bind", _) | ("rbind", _) | ("none", _) => {
            let key = podvm::image::key(&["bind", &m.source]);
            podvm::image::build(Path::new(&m.source), &key)
        }
        (t, _) => Err(format!(
            "root file system mount type {t:?} is not supported"
        )),
    }
}

fn mount(
    src: &str,
    target: &Path,
    fstype: &str,
    flags: libc::c_ulong,
    data: &str,
) -> Result<(), String> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let c = |s: &[u8]| CString::new(s).map_err(|e| e.to_string());
    let (s, t, f, d) = (
        c(src.as_bytes())?,
        c(target.as_os_str().as_bytes())?,
        c(fstype.as_bytes())?,
        c(data.as_bytes())?,
    );
    // SAFETY: valid NUL-terminated strings; `data` is an option string.
    let rc = unsafe { libc::mount(s.as_ptr(), t.as_ptr(), f.as_ptr(), flags, d.as_ptr().cast()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error().to_string());
    }
    Ok(())
}

fn umount(target: &Path) {
    use std::os::unix::ffi::OsStrExt;
    if let Ok(t) = std::ffi::CString::new(target.as_os_str().as_bytes()) {
        // SAFETY: a valid path.
        unsafe { libc::umount2(t.as_ptr(), libc::MNT_DETACH) };
    }
}

impl Service {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn publish_exit(&self, id: &str, exec_id: &str, pid: u32, status: u32, at: SystemTime) {
        let Some(p) = &self.publisher else { return };
        let ev = TaskExit {
            container_id: id.to_string(),
            id: if exec_id.is_empty() { id } else { exec_id }.to_string(),
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

    /// Process (`id`, `exec_id`) ended with `status`.
    fn finish(&self, id: &str, exec_id: &str, status: u32) {
        let mut st = self.lock();
        let Some(t) = st.tasks.get_mut(id) else {
            return;
        };
        let p = if exec_id.is_empty() {
            &mut t.main
        } else if let Some(p) = t.execs.get_mut(exec_id) {
            p
        } else {
            return;
        };
        if p.phase == Phase::Stopped {
            return;
        }
        p.phase = Phase::Stopped;
        p.exit_status = status;
        let at = SystemTime::now();
        p.exited_at = Some(at);
        let pid = p.pid;
        drop(st);
        self.state.1.notify_all();
        self.publish_exit(id, exec_id, pid, status, at);
    }

    /// A handler for a process's events: output to its FIFOs, its exit to `finish`.
    fn handler(&self, id: &str, exec_id: &str, p: &Proc) -> Result<Handler, String> {
        let mut out = open_out(&p.stdout)?;
        let mut errf = open_out(&p.stderr)?;
        let (me, id, exec_id) = (self.clone(), id.to_string(), exec_id.to_string());
        Ok(Box::new(move |ev| match ev {
            Event::Stdout(b) => {
                if let Some(f) = out.as_mut() {
                    let _ = f.write_all(b);
                }
            }
            Event::Stderr(b) => {
                // A terminal's output is all on stdout; a process without a stderr FIFO
                // (a terminal) loses nothing here because the guest sends none.
                if let Some(f) = errf.as_mut() {
                    let _ = f.write_all(b);
                }
            }
            Event::StdoutEnd => out = None,
            Event::StderrEnd => errf = None,
            Event::Exit(code) => {
                out = None;
                errf = None;
                me.finish(&id, &exec_id, code as u32);
            }
        }))
    }

    /// Forwards a process's stdin FIFO to the agent until it ends.
    fn pump_stdin(&self, path: &str, agent: Arc<podvm::Agent>, p: u32) {
        if path.is_empty() {
            return;
        }
        let path = path.to_string();
        std::thread::spawn(move || {
            let Ok(mut f) = File::open(&path) else {
                let _ = agent.close_stdin(p);
                return;
            };
            let mut buf = vec![0u8; 32 << 10];
            loop {
                match f.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if agent.stdin(p, &buf[..n]).is_err() {
                            return;
                        }
                    }
                }
            }
            let _ = agent.close_stdin(p);
        });
    }

    /// The VM, once the sandbox started it and while it runs.
    fn vm(&self) -> Result<Arc<PodVm>, String> {
        let st = self.lock();
        if let Some(d) = &st.vm_dead {
            return Err(d.clone());
        }
        st.vm
            .clone()
            .ok_or("the sandbox's VM is not started".to_string())
    }

    /// Boots the sandbox's VM; returns its pid.
    fn boot(&self, sandbox: &str) -> Result<u32, String> {
        let port = vm_port(sandbox)?;
        if port.is_none() {
            eprintln!("vnfhost shim: sandbox {sandbox} has no vnfhost network; its VM has no NIC");
        }
        let cfg = VmConfig {
            dir: vm_dir(sandbox),
            mem_mib: 256,
            cpus: None,
            net: port.clone(),
            slots: podvm::vm::DEFAULT_SLOTS,
            volumes: vec![],
            // Booted from a ttrpc worker thread, which may end before the pod does.
            die_with_owner: false,
            // QEMU gives back the RAM the guest's boot freed (free page reporting).
            hypervisor: podvm::vm::Hypervisor::Qemu,
        };
        let (vm, mut child) = PodVm::boot(&cfg)?;
        let pid = vm.pid;
        self.lock().vm = Some(Arc::new(vm));
        let me = self.clone();
        std::thread::spawn(move || {
            let code = child.wait().ok().and_then(|s| s.code()).unwrap_or(255);
            me.vm_ended(code);
        });
        Ok(pid)
    }

    /// The VM is gone: every process still running ends with it.
    fn vm_ended(&self, code: i32) {
        let ids: Vec<(String, String, bool)> = {
            let mut st = self.lock();
            st.vm_dead = Some(format!("the pod VM exited with status {code}"));
            let mut ids = vec![];
            for (id, t) in &st.tasks {
                if t.main.phase != Phase::Stopped {
                    ids.push((id.clone(), String::new(), t.sandbox));
                }
                for (e, p) in &t.execs {
                    if p.phase != Phase::Stopped {
                        ids.push((id.clone(), e.clone(), false));
                    }
                }
            }
            ids
        };
        self.state.1.notify_all();
        for (id, exec, sandbox) in ids {
            let status = if sandbox && code == 0 { 0 } else { 137 };
            self.finish(&id, &exec, status);
        }
    }

    /// Makes container `id` in the guest; returns its task's pid (the VM's).
    fn create_container(
        &self,
        id: &str,
        req: &api::CreateTaskRequest,
        spec: &serde_json::Value,
    ) -> Result<u32, String> {
        let mut process = podvm::spec::process(&spec["process"])?;
        process.terminal = req.terminal;
        process.stdin = !req.stdin.is_empty();
        if process.terminal && !process.stdin && req.stdout.is_empty() {
            return Err("a terminal needs at least stdin or stdout".into());
        }
        let files = podvm::spec::mounted_files(&spec["mounts"])?;
        let image = rootfs_image(&req.bundle, &req.rootfs)?;
        let vm = self.vm()?;
        let agent = vm.agent(GUEST_TIMEOUT)?;
        let slot = vm.load(&image)?;
        let proc = Proc {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            phase: Phase::Created,
            pid: vm.pid,
            exit_status: 0,
            exited_at: None,
            agent_proc: None,
            process: process.clone(),
        };
        let create = agent::Create {
            id: id.to_string(),
            disk: agent::slot_serial(slot),
            process,
            // CRI puts the hostname in the sandbox's spec only; a container shares it
            // (and gets it in /etc/hostname).
            hostname: spec["hostname"]
                .as_str()
                .filter(|h| !h.is_empty())
                .map(String::from)
                .or_else(|| self.lock().hostname.clone())
                .or_else(|| {
                    files
                        .iter()
                        .find(|f| f.path == "/etc/hostname")
                        .map(|f| String::from_utf8_lossy(&f.content).trim().to_string())
                }),
            files,
            volumes: vec![],
        };
        let made = self
            .handler(id, "", &proc)
            .and_then(|h| agent.create(&create, h));
        match made {
            Ok(p) => {
                let mut st = self.lock();
                st.tasks.insert(
                    id.to_string(),
                    Task {
                        bundle: req.bundle.clone(),
                        sandbox: false,
                        main: Proc {
                            agent_proc: Some(p),
                            ..proc
                        },
                        execs: HashMap::new(),
                        slot: Some(slot),
                    },
                );
                Ok(vm.pid)
            }
            Err(e) => {
                vm.free(slot);
                Err(e)
            }
        }
    }

    /// (agent, container's agent process) of a running container.
    fn container_agent(&self, id: &str) -> Result<(Arc<podvm::Agent>, u32), String> {
        let p = {
            let st = self.lock();
            let t = st.tasks.get(id).ok_or(format!("no task {id}"))?;
            t.main
                .agent_proc
                .ok_or(format!("{id} has no process in the guest"))?
        };
        Ok((self.vm()?.agent(GUEST_TIMEOUT)?, p))
    }

    /// The agent process of (`id`, `exec_id`).
    fn agent_proc(&self, id: &str, exec_id: &str) -> Result<(Arc<podvm::Agent>, u32), String> {
        let p = {
            let st = self.lock();
            let t = st.tasks.get(id).ok_or(format!("no task {id}"))?;
            let pr = t.proc(exec_id)?;
            pr.agent_proc
                .ok_or(format!("{id}/{exec_id} has not started"))?
        };
        Ok((self.vm()?.agent(GUEST_TIMEOUT)?, p))
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

fn new_proc(stdout: &str, pid: u32) -> Proc {
    Proc {
        stdin: String::new(),
        stdout: stdout.to_string(),
        stderr: String::new(),
        phase: Phase::Created,
        pid,
        exit_status: 0,
        exited_at: None,
        agent_proc: None,
        process: agent::Process::default(),
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
        let sandbox = spec["annotations"]["io.kubernetes.cri.container-type"] == "sandbox";
        if !sandbox {
            let pid = self
                .create_container(&req.id, &req, &spec)
                .map_err(|e| err(format!("vnfhost pod VM: {e}")))?;
            return Ok(api::CreateTaskResponse {
                pid,
                ..Default::default()
            });
        }
        let pid = std::process::id();
        self.lock().hostname = spec["hostname"]
            .as_str()
            .filter(|h| !h.is_empty())
            .map(String::from);
        let t = Task {
            bundle: req.bundle.clone(),
            sandbox: true,
            main: new_proc(&req.stdout, pid),
            execs: HashMap::new(),
            slot: None,
        };
        self.lock().tasks.insert(req.id.clone(), t);
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
        let (sandbox, exec) = {
            let st = self.lock();
            let t = st.task(&req.id)?;
            let exec = if req.exec_id.is_empty() {
                None
            } else {
                let e = t
                    .execs
                    .get(&req.exec_id)
                    .ok_or_else(|| err(format!("no exec {}", req.exec_id)))?;
                Some((e.process.clone(), e.stdin.clone()))
            };
            (t.sandbox, exec)
        };
        let pid = if let Some((process, stdin)) = exec {
            let (agent, container) = self.container_agent(&req.id).map_err(err)?;
            let h = {
                let st = self.lock();
                let e = st.task(&req.id)?.proc(&req.exec_id).map_err(err)?;
                self.handler(&req.id, &req.exec_id, e).map_err(err)?
            };
            let p = agent.exec(container, &process, h).map_err(err)?;
            self.pump_stdin(&stdin, agent, p);
            let pid = self.vm().map(|vm| vm.pid).unwrap_or(0);
            let mut st = self.lock();
            if let Some(e) = st
                .tasks
                .get_mut(&req.id)
                .and_then(|t| t.execs.get_mut(&req.exec_id))
            {
                e.agent_proc = Some(p);
                e.pid = pid;
                if e.phase == Phase::Created {
                    e.phase = Phase::Running;
                }
            }
            pid
        } else if sandbox {
            self.boot(&req.id).map_err(err)?
        } else {
            let (agent, p) = self.container_agent(&req.id).map_err(err)?;
            let stdin = self
                .lock()
                .tasks
                .get(&req.id)
                .map(|t| t.main.stdin.clone())
                .ok_or_else(|| err(format!("no task {}", req.id)))?;
            agent.start(p).map_err(err)?;
            if let Ok(vm) = self.vm() {
                vm.reclaim_boot_memory();
            }
            self.pump_stdin(&stdin, agent, p);
            self.vm().map(|vm| vm.pid).unwrap_or(0)
        };
        if req.exec_id.is_empty() {
            let mut st = self.lock();
            if let Some(t) = st.tasks.get_mut(&req.id) {
                if t.main.phase == Phase::Created {
                    t.main.phase = Phase::Running;
                }
                t.main.pid = pid;
            }
        }
        Ok(api::StartResponse {
            pid,
            ..Default::default()
        })
    }

    fn exec(&self, _ctx: &TtrpcContext, req: api::ExecProcessRequest) -> TtrpcResult<api::Empty> {
        let spec: serde_json::Value = serde_json::from_slice(&req.spec.value)
            .map_err(|e| err(format!("the exec's process spec: {e}")))?;
        let mut process = podvm::spec::process(&spec).map_err(err)?;
        process.terminal = req.terminal;
        process.stdin = !req.stdin.is_empty();
        let mut st = self.lock();
        let t = st
            .tasks
            .get_mut(&req.id)
            .ok_or_else(|| err(format!("no task {}", req.id)))?;
        if t.sandbox {
            return Err(err("exec in a pod sandbox is not supported"));
        }
        if t.execs.contains_key(&req.exec_id) {
            return Err(err(format!("exec {} exists", req.exec_id)));
        }
        let mut p = new_proc(&req.stdout, t.main.pid);
        p.stdin = req.stdin.clone();
        p.stderr = req.stderr.clone();
        p.process = process;
        t.execs.insert(req.exec_id.clone(), p);
        Ok(api::Empty::default())
    }

    fn resize_pty(
        &self,
        _ctx: &TtrpcContext,
        req: api::ResizePtyRequest,
    ) -> TtrpcResult<api::Empty> {
        let (agent, p) = self.agent_proc(&req.id, &req.exec_id).map_err(err)?;
        let clamp = |v: u32| u16::try_from(v).unwrap_or(u16::MAX);
        agent
            .resize(p, clamp(req.height), clamp(req.width))
            .map_err(err)?;
        Ok(api::Empty::default())
    }

    fn close_io(&self, _ctx: &TtrpcContext, req: api::CloseIORequest) -> TtrpcResult<api::Empty> {
        if req.stdin {
            let (agent, p) = self.agent_proc(&req.id, &req.exec_id).map_err(err)?;
            agent.close_stdin(p).map_err(err)?;
        }
        Ok(api::Empty::default())
    }

    fn state(
        &self,
        _ctx: &TtrpcContext,
        req: api::StateRequest,
    ) -> TtrpcResult<api::StateResponse> {
        let st = self.lock();
        let t = st.task(&req.id)?;
        let p = t.proc(&req.exec_id).map_err(err)?;
        let status = match p.phase {
            Phase::Created => api::Status::CREATED,
            Phase::Running => api::Status::RUNNING,
            Phase::Stopped => api::Status::STOPPED,
        };
        Ok(api::StateResponse {
            id: req.id.clone(),
            exec_id: req.exec_id.clone(),
            bundle: t.bundle.clone(),
            pid: p.pid,
            status: status.into(),
            stdin: p.stdin.clone(),
            stdout: p.stdout.clone(),
            stderr: p.stderr.clone(),
            terminal: p.process.terminal,
            exit_status: p.exit_status,
            exited_at: p.exited_at.map(timestamp).into(),
            ..Default::default()
        })
    }

    fn wait(&self, _ctx: &TtrpcContext, req: api::WaitRequest) -> TtrpcResult<api::WaitResponse> {
        let (lock, cv) = &*self.state;
        let mut st = lock.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            let p = st
                .tasks
                .get(&req.id)
                .and_then(|t| t.proc(&req.exec_id).ok());
            match p {
                None => return Err(err(format!("no task {} {}", req.id, req.exec_id))),
                Some(p) if p.phase == Phase::Stopped => {
                    return Ok(api::WaitResponse {
                        exit_status: p.exit_status,
                        exited_at: p.exited_at.map(timestamp).into(),
                        ..Default::default()
                    })
                }
                Some(_) => st = cv.wait(st).unwrap_or_else(|p| p.into_inner()),
            }
        }
    }

    fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<api::Empty> {
        let (sandbox, phase, agent_proc) = {
            let st = self.lock();
            let t = st.task(&req.id)?;
            let p = t.proc(&req.exec_id).map_err(err)?;
            (t.sandbox, p.phase, p.agent_proc)
        };
        match (sandbox, phase) {
            (_, Phase::Stopped) => {}
            (true, _) => {
                let st = self.lock();
                if let (Some(vm), None) = (st.vm.as_ref(), st.vm_dead.as_ref()) {
                    // SAFETY: kill(2) on the VM process this shim started and has not
                    // seen end (`vm_dead` is set as soon as it is reaped).
                    unsafe { libc::kill(vm.pid as i32, libc::SIGTERM) };
                }
                drop(st);
                if phase == Phase::Created {
                    self.finish(&req.id, "", 128 + req.signal);
                }
            }
            (false, Phase::Running) => {
                let p = agent_proc.ok_or_else(|| err("not started in the guest"))?;
                let vm = self.vm().map_err(err)?;
                let agent = vm.agent(GUEST_TIMEOUT).map_err(err)?;
                if let Err(e) = agent.signal(p, req.signal) {
                    // It ended meanwhile: its exit is on its way.
                    eprintln!("vnfhost shim: signal {} to {}: {e}", req.signal, req.id);
                }
            }
            (false, Phase::Created) => self.finish(&req.id, &req.exec_id, 128 + req.signal),
        }
        Ok(api::Empty::default())
    }

    fn delete(
        &self,
        _ctx: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> TtrpcResult<api::DeleteResponse> {
        let mut st = self.lock();
        if !req.exec_id.is_empty() {
            let t = st
                .tasks
                .get_mut(&req.id)
                .ok_or_else(|| err(format!("no task {}", req.id)))?;
            let p = t
                .execs
                .remove(&req.exec_id)
                .ok_or_else(|| err(format!("no exec {}", req.exec_id)))?;
            let vm = st.vm.clone();
            drop(st);
            if let (Some(vm), Some(ap)) = (vm, p.agent_proc) {
                if let Ok(a) = vm.agent(Duration::from_secs(1)) {
                    a.forget(ap);
                }
            }
            self.state.1.notify_all();
            return Ok(api::DeleteResponse {
                pid: p.pid,
                exit_status: p.exit_status,
                exited_at: p.exited_at.map(timestamp).into(),
                ..Default::default()
            });
        }
        let t = st
            .tasks
            .remove(&req.id)
            .ok_or_else(|| err(format!("no task {}", req.id)))?;
        let (vm, dead) = (st.vm.clone(), st.vm_dead.is_some());
        drop(st);
        if let Some(vm) = vm {
            if t.sandbox {
                if !dead {
                    // SAFETY: kill(2) on the VM this shim started and has not seen end.
                    unsafe { libc::kill(vm.pid as i32, libc::SIGKILL) };
                }
                vm.remove_files();
            } else {
                if let (false, Some(p)) = (dead, t.main.agent_proc) {
                    if let Ok(a) = vm.agent(Duration::from_secs(5)) {
                        if let Err(e) = a.destroy(p) {
                            eprintln!("vnfhost shim: removing {} in the guest: {e}", req.id);
                        }
                    }
                }
                if let Some(s) = t.slot {
                    vm.free(s);
                }
            }
        }
        // A Wait on the deleted task must not hang.
        self.state.1.notify_all();
        Ok(api::DeleteResponse {
            pid: t.main.pid,
            exit_status: t.main.exit_status,
            exited_at: t.main.exited_at.map(timestamp).into(),
            ..Default::default()
        })
    }

    fn pids(&self, _ctx: &TtrpcContext, req: api::PidsRequest) -> TtrpcResult<api::PidsResponse> {
        let st = self.lock();
        let t = st.task(&req.id)?;
        let mut info = shim::protos::types::task::ProcessInfo::new();
        info.pid = t.main.pid;
        Ok(api::PidsResponse {
            processes: vec![info],
            ..Default::default()
        })
    }

    fn stats(
        &self,
        _ctx: &TtrpcContext,
        req: api::StatsRequest,
    ) -> TtrpcResult<api::StatsResponse> {
        use shim::protos::cgroups::metrics::{
            CPUStat, CPUUsage, MemoryEntry, MemoryStat, Metrics, PidsStat,
        };
        let (agent, p) = self.container_agent(&req.id).map_err(err)?;
        let s = agent.stats(p).map_err(err)?;
        let m = Metrics {
            cpu: Some(CPUStat {
                usage: Some(CPUUsage {
                    total: s.cpu_ns,
                    ..Default::default()
                })
                .into(),
                ..Default::default()
            })
            .into(),
            memory: Some(MemoryStat {
                rss: s.rss_bytes,
                usage: Some(MemoryEntry {
                    usage: s.rss_bytes + s.rw_bytes,
                    ..Default::default()
                })
                .into(),
                ..Default::default()
            })
            .into(),
            pids: Some(PidsStat {
                current: s.pids,
                ..Default::default()
            })
            .into(),
            ..Default::default()
        };
        let value = m.write_to_bytes().map_err(|e| err(e.to_string()))?;
        Ok(api::StatsResponse {
            stats: Some(Any {
                type_url: "io.containerd.cgroups.v1.Metrics".into(),
                value,
                ..Default::default()
            })
            .into(),
            ..Default::default()
        })
    }

    fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: api::ConnectRequest,
    ) -> TtrpcResult<api::ConnectResponse> {
        let st = self.lock();
        Ok(api::ConnectResponse {
            shim_pid: std::process::id(),
            task_pid: st.tasks.get(&req.id).map(|t| t.main.pid).unwrap_or(0),
            version: "vnfhost".into(),
            ..Default::default()
        })
    }

    fn shutdown(&self, _ctx: &TtrpcContext, _req: api::ShutdownRequest) -> TtrpcResult<api::Empty> {
        let st = self.lock();
        if st.tasks.is_empty() {
            if let (Some(vm), None) = (st.vm.as_ref(), st.vm_dead.as_ref()) {
                // SAFETY: kill(2) on the VM process this shim started.
                unsafe { libc::kill(vm.pid as i32, libc::SIGTERM) };
            }
            self.exit.signal();
        }
        Ok(api::Empty::default())
    }
}

fn main() {
    // The shim waits for its VMs itself (their exit status is the sandbox's), so the
    // library must not reap children behind its back.
    let config = Config {
        no_reaper: true,
        ..Default::default()
    };
    shim::run::<Service>("io.containerd.vnfhost.v2", Some(config));
}
