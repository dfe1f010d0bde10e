//! `vnfhost run`, `exec`, `logs`, `ps`, `rm`: container images in pod VMs without
//! Kubernetes, as HyperContainer's `hyperctl` did.
//!
//! Each pod is a directory under [`pods_dir`] (`/var/lib/vnfhost/pods/NAME`, or
//! `VNFHOST_PODS`) and a *keeper*: a process (`vnfhost pod keep NAME`) that boots the pod VM
//! ([`podvm`]), makes and starts the container through the guest agent, writes its
//! output to `container.log` (`stdout F text` / `stderr F text` lines, `P` for a line
//! cut short), answers `exec` and `rm` on `ctl.sock`, and ends with the workload: its exit
//! status is the pod's (`state.json`) and the keeper's own, so a supervisor's restart
//! policy follows it. The control socket speaks the agent's frames: an `Exec` frame
//! with the process, then `Stdin`/`CloseStdin`/`Resize`/`Signal` one way and
//! `Stdout`/`Stderr`/`Exit` the other; `Destroy` removes the pod.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent::{Kind, Process};
use podvm::vm::{NetPort, PodVm};
use serde::{Deserialize, Serialize};

/// `vnfhost run --help`.
pub const RUN_USAGE: &str = "\
usage: vnfhost run [-d] [--name N] --image REF [--net NETWORK] [--cpus LIST]
                   [--mem SIZE] [--hypervisor H] [-e K=V]... [-v PATH:MOUNTPATH[:ro]]...
                   [-- CMD...]

Runs a container image in its own pod VM. REF is oci-archive:PATH, docker-archive:PATH
(imported into the local store, /var/lib/vnfhost/images), or the name of an image
imported before; no registry is used. CMD replaces the image's command (its entrypoint
stays). Without -d the container's output is shown and `vnfhost run` exits with its
status; with -d it prints the pod's name and returns.

options:
  -d, --detach        run in the background
  --name N            the pod's name (default: vnf-<random>); [A-Za-z0-9._-]
  --image REF         the image (required)
  --net NETWORK       a network of the applied topology (the daemon gives the VM a
                      vhost-user port and an address); default: no network
  --cpus LIST         host CPUs for the VM
  --mem SIZE          guest RAM (default 256M)
  --hypervisor H      qemu (default: QEMU microvm, which gives back the RAM the
                      guest's boot freed), kvm (vnfhost's own monitor: no balloon),
                      or auto (kvm where the CPU has vmx/svm, else qemu)
  -e, --env K=V       an environment variable (repeatable)
  -v, --volume PATH:MOUNTPATH[:ro]
                      a host file or block device (with a file system) as a disk
                      mounted at MOUNTPATH (repeatable)
  --api PATH          the daemon's API socket (for --net)
";

/// `vnfhost exec --help`.
pub const EXEC_USAGE: &str = "\
usage: vnfhost exec [-i] [-t] NAME -- CMD...

Runs CMD in pod NAME's container (in its namespaces and root, with the image's
environment). -i passes stdin; -t gives it a terminal (the local one goes raw). Exits
with CMD's status (127: not found).
";

/// `vnfhost logs --help`.
pub const LOGS_USAGE: &str = "\
usage: vnfhost logs [-f] NAME

Prints pod NAME's output: its stdout to stdout and its stderr to stderr. -f follows it
until the pod ends.
";

/// `vnfhost ps --help`.
pub const PS_USAGE: &str = "\
usage: vnfhost ps

Lists the pods `vnfhost run` made: name, image, status, address.
";

/// `vnfhost rm --help`.
pub const RM_USAGE: &str = "\
usage: vnfhost rm [-f] NAME...

Removes pods; a running pod only with -f (its VM is stopped first).
";

/// Where the pods live.
pub fn pods_dir() -> PathBuf {
    std::env::var_os("VNFHOST_PODS")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/var/lib/vnfhost/pods".into())
}

/// What the keeper runs (`spec.json`, or the file the daemon names for a topology pod).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RunSpec {
    /// The pod's name.
    pub name: String,
    /// The image: its name, or the reference to resolve when `image_file` is not given.
    pub image: String,
    /// The image's ext4 file, when already built.
    #[serde(default)]
    pub image_file: Option<PathBuf>,
    /// The container's process, when already decided; else the image's, with
    /// `command` and `env`.
    #[serde(default)]
    pub process: Option<Process>,
    /// Arguments in place of the image's command.
    #[serde(default)]
    pub command: Vec<String>,
    /// `KEY=VALUE` added to the image's environment.
    #[serde(default)]
    pub env: Vec<String>,
    /// Guest RAM in MiB.
    pub mem_mib: u64,
    /// Host CPUs.
    pub cpus: Option<String>,
    /// The network port: socket, mac, address, gateway.
    pub net: Option<(String, String, String, Option<String>)>,
    /// The port's network's MTU when it is not 1500 (a VXLAN network's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net_mtu: Option<u32>,
    /// The daemon's API socket the port came from (to give it back).
    pub api: Option<PathBuf>,
    /// Volumes: host path, mount path, read-only.
    pub volumes: Vec<(PathBuf, String, bool)>,
    /// Where the VM's files go (its disk slots: on disk, not tmpfs); default `DIR/vm`.
    #[serde(default)]
    pub vm_dir: Option<PathBuf>,
    /// `auto`, `kvm` or `qemu`; default `qemu`.
    #[serde(default)]
    pub hypervisor: Option<String>,
}

/// Where a pod is (`state.json`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PodState {
    /// "starting", "running", "exited".
    pub status: String,
    /// The workload's exit status, once it ended.
    pub exit_code: Option<i32>,
    /// Why it failed, if it did.
    pub error: Option<String>,
    /// The keeper's pid.
    pub keeper: u32,
}

fn valid_name(n: &str) -> Result<(), String> {
    let ok = !n.is_empty()
        && n.len() <= 48
        && n.starts_with(|c: char| c.is_ascii_alphanumeric())
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "pod name {n:?}: 1-48 of [A-Za-z0-9._-], starting with a letter or digit"
        ))
    }
}

fn write_state(dir: &Path, st: &PodState) {
    let tmp = dir.join("state.json.tmp");
    if std::fs::write(&tmp, serde_json::to_vec(st).unwrap_or_default()).is_ok() {
        let _ = std::fs::rename(tmp, dir.join("state.json"));
    }
}

fn read_state(dir: &Path) -> Option<PodState> {
    serde_json::from_slice(&std::fs::read(dir.join("state.json")).ok()?).ok()
}

fn alive(pid: u32) -> bool {
    // SAFETY: kill with signal 0 only checks that the process exists.
    pid != 0 && unsafe { libc::kill(pid as i32, 0) } == 0
}

/// The state as it is: a keeper that died without saying so left a pod that ended.
fn current_state(dir: &Path) -> Option<PodState> {
    let mut st = read_state(dir)?;
    if st.status != "exited" && !alive(st.keeper) {
        st.status = "exited".into();
        st.error.get_or_insert("its keeper process died".into());
    }
    Some(st)
}

#[derive(Debug)]
struct Opts {
    detach: bool,
    name: Option<String>,
    image: Option<String>,
    net: Option<String>,
    cpus: Option<String>,
    mem_mib: u64,
    hypervisor: Option<String>,
    env: Vec<String>,
    volumes: Vec<(PathBuf, String, bool)>,
    api: Option<PathBuf>,
    cmd: Vec<String>,
}

fn strings(args: Vec<OsString>) -> Result<Vec<String>, String> {
    args.into_iter()
        .map(|a| a.into_string().map_err(|a| format!("{a:?} is not UTF-8")))
        .collect()
}

fn parse_run(args: Vec<OsString>) -> Result<Option<Opts>, String> {
    let args = strings(args)?;
    let mut o = Opts {
        detach: false,
        name: None,
        image: None,
        net: None,
        cpus: None,
        mem_mib: 256,
        hypervisor: None,
        env: vec![],
        volumes: vec![],
        api: None,
        cmd: vec![],
    };
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        let mut val = |flag: &str| it.next().ok_or(format!("{flag} needs a value"));
        match a.as_str() {
            "--" => {
                o.cmd = it.by_ref().collect();
                break;
            }
            "-h" | "--help" => return Ok(None),
            "-d" | "--detach" => o.detach = true,
            "--name" => o.name = Some(val("--name")?),
            "--image" => o.image = Some(val("--image")?),
            "--net" => o.net = Some(val("--net")?),
            "--cpus" => o.cpus = Some(val("--cpus")?),
            "--api" => o.api = Some(val("--api")?.into()),
            "--hypervisor" => {
                let h = val("--hypervisor")?;
                h.parse::<podvm::vm::Hypervisor>()?;
                o.hypervisor = Some(h);
            }
            "--mem" => {
                let v = val("--mem")?;
                let b = crate::vm_cmd::parse_size(&v).map_err(|e| format!("--mem: {e}"))?;
                if b < (64 << 20) || b % (1 << 20) != 0 {
                    return Err(format!("--mem {v}: at least 64M, in whole MiB"));
                }
                o.mem_mib = b >> 20;
            }
            "-e" | "--env" => {
                let v = val("--env")?;
                if !v.contains('=') || v.starts_with('=') {
                    return Err(format!("--env {v:?}: expected KEY=VALUE"));
                }
                o.env.push(v);
            }
            "-v" | "--volume" => {
                let v = val("--volume")?;
                let mut parts = v.split(':');
                let (Some(host), Some(path)) = (parts.next(), parts.next()) else {
                    return Err(format!("--volume {v:?}: expected PATH:MOUNTPATH[:ro]"));
                };
                let ro = match parts.next() {
                    None => false,
                    Some("ro") => true,
                    Some(x) => return Err(format!("--volume {v:?}: unknown option {x:?}")),
                };
                if !path.starts_with('/') || path.split('/').any(|s| s == "..") {
                    return Err(format!(
                        "--volume {v:?}: MOUNTPATH must be absolute, without .."
                    ));
                }
                let md =
                    std::fs::metadata(host).map_err(|e| format!("--volume {v:?}: {host}: {e}"))?;
                use std::os::unix::fs::FileTypeExt;
                if !(md.is_file() || md.file_type().is_block_device()) {
                    return Err(format!(
                        "--volume {v:?}: {host} is not a file or block device (host \
                         directories are not carried into a pod VM)"
                    ));
                }
                o.volumes.push((host.into(), path.to_string(), ro));
            }
            s if s.starts_with('-') => return Err(format!("run: unknown option {s:?}")),
            s => return Err(format!("run: unexpected {s:?} (the command goes after --)")),
        }
    }
    Ok(Some(o))
}

/// The process an image runs, with `cmd` (if given) in place of its command.
pub fn image_process(
    cfg: &podvm::image::RunConfig,
    cmd: &[String],
    env: &[String],
) -> Result<Process, String> {
    let mut args: Vec<String> = cfg.entrypoint.clone().unwrap_or_default();
    if cmd.is_empty() {
        args.extend(cfg.cmd.clone().unwrap_or_default());
    } else {
        args.extend(cmd.iter().cloned());
    }
    if args.is_empty() {
        return Err("the image has no command and none was given (after --)".into());
    }
    let mut all_env = cfg.env.clone().unwrap_or_default();
    for kv in env {
        let k = kv.split('=').next().unwrap_or_default();
        all_env.retain(|e| e.split('=').next() != Some(k));
        all_env.push(kv.clone());
    }
    if !all_env.iter().any(|e| e.starts_with("PATH=")) {
        all_env.push("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    }
    let (mut uid, mut gid) = (0, 0);
    if let Some(u) = cfg.user.as_deref().filter(|u| !u.is_empty()) {
        let (a, b) = u.split_once(':').unwrap_or((u, ""));
        uid = a
            .parse()
            .map_err(|_| format!("image user {u:?}: only numeric uid[:gid] is supported"))?;
        gid = if b.is_empty() {
            uid
        } else {
            b.parse()
                .map_err(|_| format!("image user {u:?}: only numeric uid[:gid] is supported"))?
        };
    }
    Ok(Process {
        args,
        env: all_env,
        cwd: cfg
            .working_dir
            .clone()
            .filter(|w| !w.is_empty())
            .unwrap_or("/".into()),
        uid,
        gid,
        ..Default::default()
    })
}

/// `vnfhost run`.
pub fn run(args: Vec<OsString>) -> Result<i32, String> {
    let Some(o) = parse_run(args)? else {
        print!("{RUN_USAGE}");
        return Ok(0);
    };
    let image_ref = o.image.clone().ok_or("run: --image REF is required")?;
    let name = o.name.clone().unwrap_or_else(|| {
        let mut b = [0u8; 4];
        let _ = File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b));
        format!(
            "vnf-{}",
            b.iter().map(|x| format!("{x:02x}")).collect::<String>()
        )
    });
    valid_name(&name)?;
    let dir = pods_dir().join(&name);
    if dir.exists() {
        return Err(format!("a pod named {name:?} exists (vnfhost rm {name})"));
    }
    let image = podvm::image::resolve(&image_ref)?;
    let image_file = podvm::image::build(&image.rootfs, &image.key)?;
    let process = image_process(&image.config, &o.cmd, &o.env)?;
    // Closed to others: its control socket runs commands as root in the pod.
    podvm::vm::private_dir(&dir)?;
    let api = o
        .api
        .clone()
        .unwrap_or_else(api::daemon::default_api_socket);
    let made = (|| -> Result<RunSpec, String> {
        let (net, net_mtu) = match &o.net {
            None => (None, None),
            Some(network) => {
                let (port, mtu) = attach(&api, &name, network)?;
                (Some(port), mtu)
            }
        };
        Ok(RunSpec {
            name: name.clone(),
            image: image.name.clone(),
            image_file: Some(image_file),
            process: Some(process),
            command: vec![],
            env: vec![],
            mem_mib: o.mem_mib,
            cpus: o.cpus.clone(),
            net,
            net_mtu,
            api: o.net.as_ref().map(|_| api.clone()),
            volumes: o.volumes.clone(),
            vm_dir: None,
            hypervisor: o.hypervisor.clone(),
        })
    })();
    let spec = match made {
        Ok(s) => s,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
    };
    std::fs::write(
        dir.join("spec.json"),
        serde_json::to_vec_pretty(&spec).unwrap_or_default(),
    )
    .map_err(|e| e.to_string())?;
    // The keeper: its own session, so it outlives this command.
    let log = File::create(dir.join("keeper.log")).map_err(|e| e.to_string())?;
    let child =
        crate::args::spawn_detached(&["pod".as_ref(), "keep".as_ref(), dir.as_os_str()], log)
            .map_err(|e| format!("starting the pod's keeper: {e}"))?;
    write_state(
        &dir,
        &PodState {
            status: "starting".into(),
            exit_code: None,
            error: None,
            keeper: child.id(),
        },
    );
    // Reaped by init once this command exits; not waited for here.
    std::mem::forget(child);
    if o.detach {
        // Started means the container runs (or failed to): wait for that much.
        loop {
            match current_state(&dir) {
                Some(st) if st.status == "starting" => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                Some(st) if st.error.is_some() => {
                    return Err(format!("pod {name}: {}", st.error.unwrap_or_default()))
                }
                _ => break,
            }
        }
        println!("{name}");
        return Ok(0);
    }
    follow_logs(&dir, true)?;
    let st = current_state(&dir).ok_or("the pod's state is gone")?;
    if let Some(e) = st.error {
        eprintln!("vnfhost: pod {name}: {e}");
    }
    Ok(st.exit_code.unwrap_or(1))
}

/// A port for pod `name` on `network` from the daemon.
/// A vhost-user port on `network` from the daemon: (socket, mac, address, gateway), and
/// the network's MTU when it is not 1500.
type Attached = ((String, String, String, Option<String>), Option<u32>);

fn attach(api: &Path, name: &str, network: &str) -> Result<Attached, String> {
    let body = serde_json::json!({
        "network": network, "kind": "vhost-user", "pod": format!("vnfhost-run/{name}")
    })
    .to_string();
    let (st, b) = api::http::call(
        api,
        "PUT",
        &format!("/v1/attachments/{name}/eth0"),
        Some(body.as_bytes()),
        Duration::from_secs(30),
    )
    .map_err(|e| format!("--net {network}: the daemon at {}: {e}", api.display()))?;
    let v: serde_json::Value = serde_json::from_slice(&b).unwrap_or_default();
    if st != 200 {
        return Err(format!(
            "--net {network}: {}",
            v["error"].as_str().unwrap_or("refused")
        ));
    }
    let f = |k: &str| {
        v[k].as_str()
            .map(String::from)
            .ok_or(format!("the daemon's reply has no {k}"))
    };
    Ok((
        (
            f("socket")?,
            f("mac")?,
            f("address")?,
            v["gateway"].as_str().map(String::from),
        ),
        v["mtu"].as_u64().and_then(|m| u32::try_from(m).ok()),
    ))
}

fn detach(api: &Path, name: &str) {
    let _ = api::http::call(
        api,
        "DELETE",
        &format!("/v1/attachments/{name}/eth0"),
        None,
        Duration::from_secs(10),
    );
}

/// Writes a container's output as `stream F text` lines.
struct LogWriter {
    file: File,
    partial: [Vec<u8>; 2],
}

impl LogWriter {
    fn write(&mut self, stream: usize, data: &[u8]) {
        let tag = ["stdout", "stderr"][stream];
        self.partial[stream].extend_from_slice(data);
        while let Some(i) = self.partial[stream].iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.partial[stream].drain(..=i).collect();
            let _ = write!(self.file, "{tag} F ");
            let _ = self.file.write_all(&line);
        }
        if self.partial[stream].len() >= 16 << 10 {
            let line = std::mem::take(&mut self.partial[stream]);
            let _ = write!(self.file, "{tag} P ");
            let _ = self.file.write_all(&line);
            let _ = self.file.write_all(b"\n");
        }
    }

    fn end(&mut self, stream: usize) {
        if !self.partial[stream].is_empty() {
            let line = std::mem::take(&mut self.partial[stream]);
            let _ = write!(self.file, "{} P ", ["stdout", "stderr"][stream]);
            let _ = self.file.write_all(&line);
            let _ = self.file.write_all(b"\n");
        }
    }
}

/// A signal set moved into the thread that waits for it.
struct SigSet(libc::sigset_t);

enum Ev {
    Exit(i32),
    VmEnded(i32),
    Remove,
}

/// `vnfhost pod keep DIR`: the keeper (started by `vnfhost run`, or by the daemon for a
/// topology pod with `image:`). Returns the workload's exit status.
pub fn keep(args: Vec<OsString>) -> Result<i32, String> {
    let arg = PathBuf::from(args.into_iter().next().ok_or("pod keep: DIR is required")?);
    // A directory with spec.json (`vnfhost run`), or a spec file in the pod's directory
    // (the daemon's, named by its content so that a change restarts the pod).
    let (dir, file) = if arg.is_dir() {
        (arg.clone(), arg.join("spec.json"))
    } else {
        let dir = arg.parent().map(Path::to_path_buf).unwrap_or_default();
        (dir, arg.clone())
    };
    let spec: RunSpec = serde_json::from_slice(
        &std::fs::read(&file).map_err(|e| format!("{}: {e}", file.display()))?,
    )
    .map_err(|e| format!("{}: {e}", file.display()))?;
    let (tx, rx) = mpsc::channel::<Ev>();
    // SIGTERM or SIGINT to the keeper (the daemon stopping the pod, `rm -f`, Ctrl-C)
    // removes the pod like `rm`: the VM stopped first, nothing left running.
    {
        let t = tx.clone();
        // SAFETY: a signal set built with sigemptyset/sigaddset; blocking them in this
        // thread before any other starts makes every thread inherit the mask, and the
        // waiting thread takes them with sigwait. Children get an empty mask (std
        // resets it before exec).
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGTERM);
            libc::sigaddset(&mut set, libc::SIGINT);
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            let set = SigSet(set);
            std::thread::spawn(move || {
                let set = set;
                let mut sig = 0;
                libc::sigwait(&set.0, &mut sig);
                let _ = t.send(Ev::Remove);
            });
        }
    }
    let me = std::process::id();
    let fail = |e: String| {
        write_state(
            &dir,
            &PodState {
                status: "exited".into(),
                exit_code: Some(128),
                error: Some(e.clone()),
                keeper: me,
            },
        );
        if let Some(api) = &spec.api {
            detach(api, &spec.name);
        }
        e
    };
    let net = spec
        .net
        .clone()
        .map(|(socket, mac, address, gateway)| NetPort {
            socket,
            mac,
            address,
            gateway,
            mtu: spec.net_mtu,
        });
    // A topology pod's image is resolved (imported, built) here, at its start.
    let (image_file, process) = match (&spec.image_file, &spec.process) {
        (Some(f), Some(p)) => (f.clone(), p.clone()),
        _ => {
            let img = podvm::image::resolve(&spec.image).map_err(&fail)?;
            let f = podvm::image::build(&img.rootfs, &img.key).map_err(&fail)?;
            let p = image_process(&img.config, &spec.command, &spec.env).map_err(&fail)?;
            (f, p)
        }
    };
    let cfg = podvm::vm::Config {
        dir: spec.vm_dir.clone().unwrap_or_else(|| dir.join("vm")),
        mem_mib: spec.mem_mib,
        cpus: spec.cpus.clone(),
        net: net.clone(),
        slots: 1,
        volumes: spec
            .volumes
            .iter()
            .map(|(p, _, ro)| (p.clone(), *ro))
            .collect(),
        die_with_owner: true,
        hypervisor: match &spec.hypervisor {
            Some(h) => h.parse().map_err(&fail)?,
            None => podvm::vm::Hypervisor::Qemu,
        },
    };
    let (vm, mut child) = PodVm::boot(&cfg).map_err(&fail)?;
    let vm = Arc::new(vm);
    let t = tx.clone();
    std::thread::spawn(move || {
        let code = child.wait().ok().and_then(|s| s.code()).unwrap_or(255);
        let _ = t.send(Ev::VmEnded(code));
    });
    let stop_vm = |vm: &PodVm| {
        // SAFETY: kill(2) on the VM process this keeper started.
        unsafe { libc::kill(vm.pid as i32, libc::SIGTERM) };
    };
    let started = (|| -> Result<(Arc<podvm::Agent>, u32), String> {
        let agent = vm.agent(Duration::from_secs(180))?;
        let slot = vm.load(&image_file)?;
        let ip = net
            .as_ref()
            .map(|n| n.address.split('/').next().unwrap_or_default().to_string());
        let mut files = vec![agent::File {
            path: "/etc/hosts".into(),
            content: format!(
                "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n{}",
                ip.map(|ip| format!("{ip}\t{}\n", spec.name))
                    .unwrap_or_default()
            )
            .into_bytes(),
            mode: 0o644,
        }];
        if let Ok(r) = std::fs::read("/etc/resolv.conf") {
            files.push(agent::File {
                path: "/etc/resolv.conf".into(),
                content: r,
                mode: 0o644,
            });
        }
        let log = Arc::new(Mutex::new(LogWriter {
            file: OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join("container.log"))
                .map_err(|e| e.to_string())?,
            partial: [vec![], vec![]],
        }));
        let t = tx.clone();
        let handler: podvm::Handler = Box::new(move |ev| {
            let mut l = log.lock().unwrap_or_else(|p| p.into_inner());
            match ev {
                podvm::Event::Stdout(b) => l.write(0, b),
                podvm::Event::Stderr(b) => l.write(1, b),
                podvm::Event::StdoutEnd => l.end(0),
                podvm::Event::StderrEnd => l.end(1),
                podvm::Event::Exit(c) => {
                    l.end(0);
                    l.end(1);
                    let _ = t.send(Ev::Exit(c));
                }
            }
        });
        let create = agent::Create {
            id: spec.name.clone(),
            disk: agent::slot_serial(slot),
            process: process.clone(),
            hostname: Some(spec.name.clone()),
            files,
            volumes: spec
                .volumes
                .iter()
                .enumerate()
                .map(|(i, (_, path, ro))| agent::Volume {
                    disk: podvm::vm::volume_serial(i),
                    path: path.clone(),
                    read_only: *ro,
                })
                .collect(),
        };
        let p = agent.create(&create, handler)?;
        agent.start(p)?;
        vm.reclaim_boot_memory();
        Ok((agent, p))
    })();
    let (agent, p) = match started {
        Ok(x) => x,
        Err(e) => {
            stop_vm(&vm);
            return Err(fail(e));
        }
    };
    write_state(
        &dir,
        &PodState {
            status: "running".into(),
            exit_code: None,
            error: None,
            keeper: me,
        },
    );
    let sock = dir.join("ctl.sock");
    let _ = std::fs::remove_file(&sock);
    let listener =
        UnixListener::bind(&sock).map_err(|e| fail(format!("{}: {e}", sock.display())))?;
    {
        let (agent, tx, base) = (agent.clone(), tx.clone(), process.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (agent, tx, base) = (agent.clone(), tx.clone(), base.clone());
                std::thread::spawn(move || serve(conn, &agent, p, &base, &tx));
            }
        });
    }
    let (code, error, vm_running) = match rx.recv() {
        Ok(Ev::Exit(c)) => (c, None, true),
        Ok(Ev::VmEnded(c)) => (
            137,
            Some(format!("the pod VM ended (status {c}) before its workload")),
            false,
        ),
        Ok(Ev::Remove) | Err(_) => (137, None, true),
    };
    if vm_running {
        stop_vm(&vm);
        // Its end, or a SIGKILL after 3 s: no VM outlives its keeper.
        let t = std::time::Instant::now();
        loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(Ev::VmEnded(_)) => break,
                _ if t.elapsed() > Duration::from_secs(3) => {
                    // SAFETY: kill(2) on the VM this keeper started; not yet reaped.
                    unsafe { libc::kill(vm.pid as i32, libc::SIGKILL) };
                    let _ = rx.recv_timeout(Duration::from_secs(2));
                    break;
                }
                _ => {}
            }
        }
    }
    let _ = std::fs::remove_file(&sock);
    write_state(
        &dir,
        &PodState {
            status: "exited".into(),
            exit_code: Some(code),
            error,
            keeper: me,
        },
    );
    if let Some(api) = &spec.api {
        detach(api, &spec.name);
    }
    vm.remove_files();
    Ok(code)
}

/// One control connection: an exec, or a removal.
fn serve(
    mut conn: UnixStream,
    agent: &Arc<podvm::Agent>,
    container: u32,
    base: &Process,
    tx: &mpsc::Sender<Ev>,
) {
    let Ok(first) = agent::read_frame(&mut conn) else {
        return;
    };
    match first.kind {
        Kind::Destroy => {
            let _ = tx.send(Ev::Remove);
            let _ = agent::write_frame(&mut conn, Kind::Ok, 0, &[]);
        }
        Kind::Exec => {
            let process: Process = match serde_json::from_slice::<Process>(&first.payload) {
                Ok(p) => Process {
                    env: base.env.clone(),
                    cwd: base.cwd.clone(),
                    uid: base.uid,
                    gid: base.gid,
                    additional_gids: base.additional_gids.clone(),
                    ..p
                },
                Err(e) => {
                    let _ = agent::write_frame(&mut conn, Kind::Error, 0, e.to_string().as_bytes());
                    return;
                }
            };
            let Ok(out) = conn.try_clone() else { return };
            let out = Mutex::new(out);
            let handler: podvm::Handler = Box::new(move |ev| {
                let mut o = out.lock().unwrap_or_else(|p| p.into_inner());
                let _ = match ev {
                    podvm::Event::Stdout(b) => agent::write_frame(&mut *o, Kind::Stdout, 0, b),
                    podvm::Event::Stderr(b) => agent::write_frame(&mut *o, Kind::Stderr, 0, b),
                    podvm::Event::StdoutEnd => agent::write_frame(&mut *o, Kind::Stdout, 0, &[]),
                    podvm::Event::StderrEnd => agent::write_frame(&mut *o, Kind::Stderr, 0, &[]),
                    podvm::Event::Exit(c) => {
                        agent::write_frame(&mut *o, Kind::Exit, 0, &c.to_le_bytes())
                    }
                };
            });
            let p = match agent.exec(container, &process, handler) {
                Ok(p) => p,
                Err(e) => {
                    let _ = agent::write_frame(&mut conn, Kind::Error, 0, e.as_bytes());
                    return;
                }
            };
            while let Ok(f) = agent::read_frame(&mut conn) {
                let _ = match f.kind {
                    Kind::Stdin => agent.stdin(p, &f.payload),
                    Kind::CloseStdin => agent.close_stdin(p),
                    Kind::Resize if f.payload.len() == 4 => agent.resize(
                        p,
                        u16::from_le_bytes([f.payload[0], f.payload[1]]),
                        u16::from_le_bytes([f.payload[2], f.payload[3]]),
                    ),
                    Kind::Signal if f.payload.len() == 4 => agent.signal(
                        p,
                        u32::from_le_bytes([
                            f.payload[0],
                            f.payload[1],
                            f.payload[2],
                            f.payload[3],
                        ]),
                    ),
                    _ => Ok(()),
                };
            }
            // The client went away: its process loses its stdin, and is forgotten once
            // it ends.
            let _ = agent.close_stdin(p);
        }
        _ => {
            let _ = agent::write_frame(&mut conn, Kind::Error, 0, b"expected Exec or Destroy");
        }
    }
}

/// A pod's directory: one `vnfhost run` made, or a topology pod with `image:` that the
/// daemon runs (under its run directory, `VNFHOST_RUN_DIR` or /run/vnfhost).
fn pod_dir(name: &str) -> Result<PathBuf, String> {
    valid_name(name)?;
    let d = pods_dir().join(name);
    if d.join("spec.json").exists() {
        return Ok(d);
    }
    let run = std::env::var_os("VNFHOST_RUN_DIR").unwrap_or_else(|| api::daemon::RUN_DIR.into());
    let t = Path::new(&run).join("pods").join(name);
    if t.join("state.json").exists() {
        return Ok(t);
    }
    Err(format!("no pod named {name:?} (vnfhost ps lists them)"))
}

/// The local terminal's size (rows, columns).
fn term_size() -> Option<(u16, u16)> {
    // SAFETY: TIOCGWINSZ fills a zeroed winsize.
    unsafe {
        let mut ws: libc::winsize = std::mem::zeroed();
        (libc::ioctl(0, libc::TIOCGWINSZ, &mut ws) == 0 && ws.ws_row > 0)
            .then_some((ws.ws_row, ws.ws_col))
    }
}

/// Puts the local terminal in raw mode until dropped.
struct RawTerm(Option<libc::termios>);

impl RawTerm {
    fn new() -> RawTerm {
        // SAFETY: tcgetattr/cfmakeraw/tcsetattr on fd 0 with a zeroed struct.
        unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &mut t) != 0 {
                return RawTerm(None);
            }
            let old = t;
            libc::cfmakeraw(&mut t);
            libc::tcsetattr(0, libc::TCSANOW, &t);
            RawTerm(Some(old))
        }
    }
}

impl Drop for RawTerm {
    fn drop(&mut self) {
        if let Some(t) = self.0 {
            // SAFETY: restoring the settings read in `new`.
            unsafe { libc::tcsetattr(0, libc::TCSANOW, &t) };
        }
    }
}

/// `vnfhost exec`.
pub fn exec(args: Vec<OsString>) -> Result<i32, String> {
    let args = strings(args)?;
    let (mut interactive, mut tty) = (false, false);
    let mut it = args.into_iter();
    let mut name = None;
    for a in it.by_ref() {
        match a.as_str() {
            "-h" | "--help" => {
                print!("{EXEC_USAGE}");
                return Ok(0);
            }
            "-i" | "--interactive" => interactive = true,
            "-t" | "--tty" => tty = true,
            "-it" | "-ti" => (interactive, tty) = (true, true),
            "--" => break,
            s if s.starts_with('-') => return Err(format!("exec: unknown option {s:?}")),
            s if name.is_none() => name = Some(s.to_string()),
            s => {
                return Err(format!(
                    "exec: unexpected {s:?} (the command goes after --)"
                ))
            }
        }
    }
    let cmd: Vec<String> = it.collect();
    let name = name.ok_or("exec: NAME is required")?;
    if cmd.is_empty() {
        return Err("exec: the command is missing (vnfhost exec NAME -- CMD...)".into());
    }
    if tty && !interactive {
        // Like docker: a terminal without input has nothing to type into it.
        return Err("exec: -t needs -i (a terminal without stdin)".into());
    }
    let dir = pod_dir(&name)?;
    let mut conn = UnixStream::connect(dir.join("ctl.sock"))
        .map_err(|e| format!("pod {name} is not running ({e})"))?;
    // Environment, working directory and user are the container's (the keeper's).
    let process = Process {
        args: cmd,
        terminal: tty,
        stdin: interactive,
        size: if tty { term_size() } else { None },
        ..Default::default()
    };
    agent::write_frame(
        &mut conn,
        Kind::Exec,
        0,
        &serde_json::to_vec(&process).map_err(|e| e.to_string())?,
    )
    .map_err(|e| e.to_string())?;
    let _raw = tty.then(RawTerm::new);
    if interactive {
        let mut w = conn.try_clone().map_err(|e| e.to_string())?;
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            let mut stdin = std::io::stdin();
            loop {
                match stdin.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if agent::write_frame(&mut w, Kind::Stdin, 0, &buf[..n]).is_err() {
                            return;
                        }
                    }
                }
            }
            let _ = agent::write_frame(&mut w, Kind::CloseStdin, 0, &[]);
        });
    }
    if tty {
        let mut w = conn.try_clone().map_err(|e| e.to_string())?;
        std::thread::spawn(move || {
            let mut last = term_size();
            loop {
                std::thread::sleep(Duration::from_millis(250));
                let now = term_size();
                if now != last {
                    if let Some((r, c)) = now {
                        let mut b = r.to_le_bytes().to_vec();
                        b.extend_from_slice(&c.to_le_bytes());
                        if agent::write_frame(&mut w, Kind::Resize, 0, &b).is_err() {
                            return;
                        }
                    }
                    last = now;
                }
            }
        });
    }
    let (mut out, mut err) = (std::io::stdout(), std::io::stderr());
    loop {
        let f = agent::read_frame(&mut conn).map_err(|e| format!("pod {name}: {e}"))?;
        match f.kind {
            Kind::Stdout => {
                let _ = out.write_all(&f.payload);
                let _ = out.flush();
            }
            Kind::Stderr => {
                let _ = err.write_all(&f.payload);
            }
            Kind::Exit => {
                let code = <[u8; 4]>::try_from(&f.payload[..])
                    .map(i32::from_le_bytes)
                    .unwrap_or(255);
                return Ok(code);
            }
            Kind::Error => return Err(String::from_utf8_lossy(&f.payload).into_owned()),
            _ => {}
        }
    }
}

/// Prints `dir`'s container log; with `follow`, until the pod ends.
fn follow_logs(dir: &Path, follow: bool) -> Result<(), String> {
    let path = dir.join("container.log");
    let running = || current_state(dir).is_some_and(|s| s.status != "exited");
    let mut f = loop {
        match File::open(&path) {
            Ok(f) => break f,
            Err(_) if follow && running() => std::thread::sleep(Duration::from_millis(50)),
            Err(_) => return Ok(()),
        }
    };
    let (mut out, mut err) = (std::io::stdout(), std::io::stderr());
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = f.read(&mut buf).map_err(|e| e.to_string())?;
        pending.extend_from_slice(&buf[..n]);
        while let Some(i) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=i).collect();
            print_log_line(&line, &mut out, &mut err);
        }
        if n == 0 {
            // Checked before the last read, so nothing written before the end is missed.
            if !follow || !running() {
                let n = f.read_to_end(&mut pending).map_err(|e| e.to_string())?;
                if n == 0 {
                    return Ok(());
                }
                continue;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn print_log_line(line: &[u8], out: &mut impl Write, err: &mut impl Write) {
    let (tag, rest) = if let Some(r) = line.strip_prefix(b"stdout ") {
        (0, r)
    } else if let Some(r) = line.strip_prefix(b"stderr ") {
        (1, r)
    } else {
        return;
    };
    let (full, text) = match rest {
        [b'F', b' ', t @ ..] => (true, t),
        [b'P', b' ', t @ ..] => (false, t),
        _ => return,
    };
    let text = if full {
        text
    } else {
        text.strip_suffix(b"\n").unwrap_or(text)
    };
    let w: &mut dyn Write = if tag == 0 { out } else { err };
    let _ = w.write_all(text);
    let _ = w.flush();
}

/// `vnfhost logs`.
pub fn logs(args: Vec<OsString>) -> Result<i32, String> {
    let args = strings(args)?;
    let mut follow = false;
    let mut name = None;
    for a in args {
        match a.as_str() {
            "-h" | "--help" => {
                print!("{LOGS_USAGE}");
                return Ok(0);
            }
            "-f" | "--follow" => follow = true,
            s if s.starts_with('-') => return Err(format!("logs: unknown option {s:?}")),
            s => name = Some(s.to_string()),
        }
    }
    let dir = pod_dir(&name.ok_or("logs: NAME is required")?)?;
    follow_logs(&dir, follow)?;
    Ok(0)
}

/// `vnfhost ps`.
pub fn ps(args: Vec<OsString>) -> Result<i32, String> {
    if !args.is_empty() {
        print!("{PS_USAGE}");
        return Ok(if args.iter().any(|a| a == "-h" || a == "--help") {
            0
        } else {
            2
        });
    }
    println!("{:<20} {:<32} {:<16} ADDRESS", "NAME", "IMAGE", "STATUS");
    let mut names: Vec<PathBuf> = std::fs::read_dir(pods_dir())
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("spec.json").exists())
        .collect();
    names.sort();
    for d in names {
        let Ok(spec) = serde_json::from_slice::<RunSpec>(
            &std::fs::read(d.join("spec.json")).unwrap_or_default(),
        ) else {
            continue;
        };
        let status = match current_state(&d) {
            Some(s) if s.status == "exited" => match (s.exit_code, s.error) {
                (_, Some(e)) => format!("failed: {e}"),
                (Some(c), None) => format!("exited {c}"),
                _ => "exited".into(),
            },
            Some(s) => s.status,
            None => "unknown".into(),
        };
        let addr = spec.net.map(|n| n.2).unwrap_or_else(|| "-".into());
        println!("{:<20} {:<32} {:<16} {addr}", spec.name, spec.image, status);
    }
    Ok(0)
}

/// `vnfhost rm`.
pub fn rm(args: Vec<OsString>) -> Result<i32, String> {
    let args = strings(args)?;
    let mut force = false;
    let mut names = vec![];
    for a in args {
        match a.as_str() {
            "-h" | "--help" => {
                print!("{RM_USAGE}");
                return Ok(0);
            }
            "-f" | "--force" => force = true,
            s if s.starts_with('-') => return Err(format!("rm: unknown option {s:?}")),
            s => names.push(s.to_string()),
        }
    }
    if names.is_empty() {
        return Err("rm: NAME is required".into());
    }
    for name in names {
        let dir = pod_dir(&name)?;
        let st = current_state(&dir);
        if st.as_ref().is_some_and(|s| s.status != "exited") {
            if !force {
                return Err(format!(
                    "pod {name} is running (vnfhost rm -f {name} stops it)"
                ));
            }
            if let Ok(mut c) = UnixStream::connect(dir.join("ctl.sock")) {
                let _ = agent::write_frame(&mut c, Kind::Destroy, 0, &[]);
                let _ = agent::read_frame(&mut c);
            }
            let keeper = st.map(|s| s.keeper).unwrap_or(0);
            let t = std::time::Instant::now();
            while alive(keeper) && t.elapsed() < Duration::from_secs(10) {
                std::thread::sleep(Duration::from_millis(50));
            }
            if alive(keeper) {
                // SAFETY: kill(2) on the keeper this pod's state names; it did not stop.
                unsafe { libc::kill(keeper as i32, libc::SIGKILL) };
            }
        }
        let spec: Option<RunSpec> = std::fs::read(dir.join("spec.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        if let Some(RunSpec { api: Some(api), .. }) = &spec {
            detach(api, &name);
        }
        std::fs::remove_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        println!("{name}");
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn run_options() {
        let o = parse_run(os(&[
            "-d", "--name", "a", "--image", "x", "-e", "K=V", "--", "sh", "-c", "echo $K",
        ]))
        .unwrap()
        .unwrap();
        assert!(o.detach);
        assert_eq!(o.cmd, ["sh", "-c", "echo $K"]);
        assert_eq!(o.hypervisor, None);
        let o = parse_run(os(&["--image", "x", "--hypervisor", "kvm"]))
            .unwrap()
            .unwrap();
        assert_eq!(o.hypervisor.as_deref(), Some("kvm"));
        assert!(parse_run(os(&["--image", "x", "--hypervisor", "xen"])).is_err());
        assert!(parse_run(os(&["--image", "x", "-e", "novalue"])).is_err());
        assert!(parse_run(os(&["--image", "x", "stray"]))
            .unwrap_err()
            .contains("after --"));
        let e = parse_run(os(&["--image", "x", "-v", "/nonexistent:/data"])).unwrap_err();
        assert!(e.contains("/nonexistent"), "{e}");
        let e = parse_run(os(&["--image", "x", "-v", "/tmp:/data"])).unwrap_err();
        assert!(e.contains("not carried"), "{e}");
        assert!(valid_name("../x").is_err());
    }

    #[test]
    fn the_image_decides_what_runs_unless_told() {
        let cfg = podvm::image::RunConfig {
            entrypoint: Some(vec!["/entry".into()]),
            cmd: Some(vec!["default".into()]),
            env: Some(vec!["PATH=/bin".into(), "A=1".into()]),
            working_dir: Some("/w".into()),
            user: Some("1000:100".into()),
        };
        let p = image_process(&cfg, &[], &["A=2".into()]).unwrap();
        assert_eq!(p.args, ["/entry", "default"]);
        assert_eq!(p.env, ["PATH=/bin", "A=2"]);
        assert_eq!((p.uid, p.gid, p.cwd.as_str()), (1000, 100, "/w"));
        let p = image_process(&cfg, &["x".into()], &[]).unwrap();
        assert_eq!(p.args, ["/entry", "x"]);
        assert!(image_process(&Default::default(), &[], &[]).is_err());
    }

    #[test]
    fn log_lines_go_to_their_stream() {
        let (mut o, mut e) = (Vec::new(), Vec::new());
        print_log_line(b"stdout F hi\n", &mut o, &mut e);
        print_log_line(b"stderr P part\n", &mut o, &mut e);
        print_log_line(b"garbage\n", &mut o, &mut e);
        assert_eq!(o, b"hi\n");
        assert_eq!(e, b"part");
    }
}
