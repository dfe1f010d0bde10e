//! The pod VM: boot, disk slots, the agent.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent::client::Agent;

/// Which hypervisor runs a pod VM (`auto`, `kvm`, `qemu`; parsed with `str::parse`).
/// The same choice as `vnfhost vm run --hypervisor`, kept here so that this crate (and
/// the shim that links it) does not link the VMM: the VM is a `vnfhost vm run` process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hypervisor {
    /// `kvm` where the CPU has hardware virtualization, `qemu` otherwise.
    Auto,
    /// vnfhost's own KVM monitor.
    Kvm,
    /// QEMU microvm.
    Qemu,
}

impl std::str::FromStr for Hypervisor {
    type Err = String;
    fn from_str(s: &str) -> Result<Hypervisor, String> {
        match s {
            "auto" => Ok(Hypervisor::Auto),
            "kvm" => Ok(Hypervisor::Kvm),
            "qemu" => Ok(Hypervisor::Qemu),
            _ => Err(format!("--hypervisor {s:?}: expected auto, kvm or qemu")),
        }
    }
}

/// The backend that runs a pod VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// vnfhost's own KVM monitor.
    Kvm,
    /// QEMU microvm.
    Qemu,
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Backend::Kvm => "kvm",
            Backend::Qemu => "qemu",
        })
    }
}

impl Hypervisor {
    /// The backend: `auto` is `kvm` where the first CPU's flags in `/proc/cpuinfo` have
    /// `vmx` or `svm` (as `vnfhost vm run` decides), `qemu` otherwise.
    pub fn backend(self) -> Backend {
        match self {
            Hypervisor::Kvm => Backend::Kvm,
            Hypervisor::Qemu => Backend::Qemu,
            Hypervisor::Auto => {
                let flags = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
                let hw = flags
                    .lines()
                    .find(|l| l.starts_with("flags"))
                    .is_some_and(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
                if hw {
                    Backend::Kvm
                } else {
                    Backend::Qemu
                }
            }
        }
    }
}

/// Disk slots per VM: the containers a pod can have at once.
pub const DEFAULT_SLOTS: usize = 4;
/// The size a slot shows the guest; sparse, so it costs only what is copied in.
pub const SLOT_SIZE: u64 = 64 << 30;

/// The pod's network port (a vhost-user socket on the switch, the VM its client).
#[derive(Clone, Debug)]
pub struct NetPort {
    /// The vhost-user socket.
    pub socket: String,
    /// The guest's MAC.
    pub mac: String,
    /// Address with prefix length.
    pub address: String,
    /// The default gateway.
    pub gateway: Option<String>,
    /// The network's MTU when it is not 1500 (a VXLAN network's: the uplink's less 50),
    /// told to the guest's NIC (`VIRTIO_NET_F_MTU`).
    pub mtu: Option<u32>,
}

/// What a pod VM is made of.
#[derive(Clone, Debug)]
pub struct Config {
    /// Its directory: the agent's socket, the slots, the console log.
    pub dir: PathBuf,
    /// Guest RAM in MiB.
    pub mem_mib: u64,
    /// Host CPUs for its vCPU (a `--cpus` list), if pinned.
    pub cpus: Option<String>,
    /// Its network.
    pub net: Option<NetPort>,
    /// Disk slots.
    pub slots: usize,
    /// Volumes: (host file or block device, read-only), attached after the slots with
    /// serials `vnfvol0`, `vnfvol1`...
    pub volumes: Vec<(PathBuf, bool)>,
    /// The VM is killed when the thread that boots it ends (`PR_SET_PDEATHSIG`): for an
    /// owner whose main thread boots it and lives as long as the pod (`vnfhost run`'s
    /// keeper), so that a killed owner leaves no VM behind.
    pub die_with_owner: bool,
    /// The hypervisor. `auto` is resolved here (`kvm` where the CPU has vmx/svm), because
    /// the two differ in what the pod gets: with `qemu` the guest gives back the RAM its
    /// boot freed (free page reporting, and a balloon [`PodVm::reclaim_boot_memory`]
    /// drives over QMP); the `kvm` backend has neither, and starts faster and smaller.
    pub hypervisor: Hypervisor,
}

/// The `vnfhost` binary: `VNFHOST_BIN`, else next to this program, else from `PATH`.
pub fn vnfhost_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("VNFHOST_BIN") {
        return p.into();
    }
    if let Ok(me) = std::env::current_exe() {
        let next = me.with_file_name("vnfhost");
        if next.exists() && next != me {
            return next;
        }
        if me.file_name().is_some_and(|n| n == "vnfhost") {
            return me;
        }
    }
    PathBuf::from("vnfhost")
}

/// What the guest keeps while its balloon is inflated, at least.
pub const RECLAIM_FLOOR_MIB: u64 = 48;

/// Gives the host back the guest RAM that booting touched and the guest then freed (the
/// compressed and the unpacked kernel, the initramfs): about 60 MB of a 256 MiB pod. Free
/// page reporting returns only pages freed after its driver started, so the balloon is
/// inflated towards [`RECLAIM_FLOOR_MIB`] (the guest gives it free pages; QEMU punches
/// them out of the memfd) and deflated again at once: the guest keeps all its RAM, and
/// the host holds only what the guest uses. `deflate-on-oom` keeps the guest's processes
/// safe while it is inflated.
pub fn reclaim(qmp: &Path, mem_mib: u64) -> Result<(), String> {
    use std::io::{BufRead, BufReader, Write};
    let s = std::os::unix::net::UnixStream::connect(qmp)
        .map_err(|e| format!("{}: {e}", qmp.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let mut w = s.try_clone().map_err(|e| e.to_string())?;
    let mut r = BufReader::new(s);
    let mut line = String::new();
    // Each command's answer is the next line with "return" or "error" (events skipped).
    let mut call = |cmd: serde_json::Value| -> Result<serde_json::Value, String> {
        writeln!(w, "{cmd}").map_err(|e| e.to_string())?;
        loop {
            line.clear();
            if r.read_line(&mut line).map_err(|e| e.to_string())? == 0 {
                return Err("QMP closed".into());
            }
            let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            if let Some(e) = v.get("error") {
                return Err(format!("QMP: {e}"));
            }
            if let Some(ret) = v.get("return") {
                return Ok(ret.clone());
            }
        }
    };
    // The greeting, then capabilities.
    call(serde_json::json!({"execute": "qmp_capabilities"}))?;
    let full = mem_mib << 20;
    let floor = RECLAIM_FLOOR_MIB.min(mem_mib) << 20;
    call(serde_json::json!({"execute": "balloon", "arguments": {"value": floor}}))?;
    // Until the balloon stops growing (the guest has no more free pages to give), 3 s
    // at most.
    let t = std::time::Instant::now();
    let mut last = u64::MAX;
    while t.elapsed() < Duration::from_secs(3) {
        std::thread::sleep(Duration::from_millis(200));
        let now = call(serde_json::json!({"execute": "query-balloon"}))?["actual"]
            .as_u64()
            .unwrap_or(full);
        if now <= floor || now == last {
            break;
        }
        last = now;
    }
    call(serde_json::json!({"execute": "balloon", "arguments": {"value": full}}))?;
    Ok(())
}

/// Makes `dir` (and its parents) and closes it to everyone but its owner: the agent's
/// socket in it runs commands as root inside the pod, QMP drives the VM.
pub fn private_dir(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)))
        .map_err(|e| format!("{}: {e}", dir.display()))
}

/// The serial of volume `i`.
pub fn volume_serial(i: usize) -> String {
    format!("vnfvol{i}")
}

/// A booted pod VM.
pub struct PodVm {
    /// The VM process (`vnfhost vm run`, or QEMU which it becomes).
    pub pid: u32,
    /// The backend that runs it.
    pub backend: Backend,
    /// QEMU's QMP socket (qemu backend).
    qmp: Option<PathBuf>,
    mem_mib: u64,
    reclaimed: std::sync::atomic::AtomicBool,
    dir: PathBuf,
    slots: Mutex<Vec<bool>>,
    agent: Mutex<Option<Arc<Agent>>>,
}

impl PodVm {
    /// Makes the slots and starts the VM; returns at once, with the child to wait for.
    /// The guest is ready when [`PodVm::agent`] answers.
    pub fn boot(cfg: &Config) -> Result<(PodVm, Child), String> {
        private_dir(&cfg.dir)?;
        let image = api::daemon::GuestImage::from_env();
        let sock = cfg.dir.join("agent.sock");
        let _ = std::fs::remove_file(&sock);
        let backend = cfg.hypervisor.backend();
        let mut cmd = Command::new(vnfhost_bin());
        cmd.args(["vm", "run", "--hypervisor"])
            .arg(backend.to_string())
            .arg("--mem")
            .arg(format!("{}M", cfg.mem_mib))
            .arg("--kernel")
            .arg(&image.kernel)
            .arg("--initrd")
            .arg(&image.initrd)
            .arg("--agent")
            .arg(&sock);
        let qmp = (backend == Backend::Qemu).then(|| cfg.dir.join("qmp.sock"));
        if let Some(q) = &qmp {
            // What the guest frees after boot goes back to the host.
            cmd.arg("--free-page-reporting").arg("--qmp").arg(q);
        }
        if let Some(c) = &cfg.cpus {
            cmd.arg("--cpus").arg(c);
        }
        for i in 0..cfg.slots {
            let slot = cfg.dir.join(format!("slot{i}.img"));
            let f = OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .open(&slot)
                .and_then(|f| f.set_len(SLOT_SIZE))
                .map_err(|e| format!("{}: {e}", slot.display()));
            f?;
            cmd.arg("--disk").arg(format!(
                "{},ro,serial={}",
                slot.display(),
                agent::slot_serial(i)
            ));
        }
        for (i, (path, ro)) in cfg.volumes.iter().enumerate() {
            let p = path.to_str().ok_or("a volume path is not UTF-8")?;
            if p.contains(',') {
                return Err(format!(
                    "volume {p:?}: a comma in the path is not supported"
                ));
            }
            cmd.arg("--disk").arg(format!(
                "{p}{},serial={}",
                if *ro { ",ro" } else { "" },
                volume_serial(i)
            ));
        }
        let mut append = vec!["vnf.agent=1".to_string()];
        if let Some(n) = &cfg.net {
            cmd.arg("--net").arg(format!(
                "vhost-user={},client,mac={}{}",
                n.socket,
                n.mac,
                n.mtu.map(|m| format!(",mtu={m}")).unwrap_or_default()
            ));
            append.push(format!("vnf.ip={}", n.address));
            if let Some(gw) = &n.gateway {
                append.push(format!("vnf.gw={gw}"));
            }
        }
        cmd.arg("--append").arg(append.join(" "));
        let console = OpenOptions::new()
            .create(true)
            .append(true)
            .open(cfg.dir.join("console.log"))
            .map_err(|e| format!("the console log: {e}"))?;
        let err = console.try_clone().map_err(|e| e.to_string())?;
        if cfg.die_with_owner {
            use std::os::unix::process::CommandExt;
            // SAFETY: prctl is async-signal-safe and the closure allocates nothing.
            unsafe {
                cmd.pre_exec(|| {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(console)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("{}: {e}", vnfhost_bin().display()))?;
        Ok((
            PodVm {
                pid: child.id(),
                backend,
                qmp,
                mem_mib: cfg.mem_mib,
                reclaimed: Default::default(),
                dir: cfg.dir.clone(),
                slots: Mutex::new(vec![false; cfg.slots]),
                agent: Mutex::new(None),
            },
            child,
        ))
    }

    /// The VM's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The agent, connected on first use (waiting up to `timeout` for the guest).
    pub fn agent(&self, timeout: Duration) -> Result<Arc<Agent>, String> {
        let mut a = self.agent.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(a) = a.as_ref().filter(|a| a.gone().is_none()) {
            return Ok(a.clone());
        }
        let new = Arc::new(Agent::connect(&self.dir.join("agent.sock"), timeout)?);
        *a = Some(new.clone());
        Ok(new)
    }

    /// Gives back, in the background and once, the RAM the guest's boot touched and
    /// freed ([`reclaim`]). Called by the owner once the first container runs: inflating
    /// the balloon costs the guest CPU time that would otherwise delay the container.
    /// Nothing to do without QEMU's QMP socket (the `kvm` backend has no balloon).
    pub fn reclaim_boot_memory(&self) {
        let Some(qmp) = self.qmp.clone() else {
            return;
        };
        if self
            .reclaimed
            .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            return;
        }
        let mem = self.mem_mib;
        std::thread::spawn(move || {
            if let Err(e) = reclaim(&qmp, mem) {
                eprintln!("vnfhost: giving back the pod VM's boot memory: {e}");
            }
        });
    }

    /// Copies `image` into a free slot; returns the slot. The guest reads it only once the
    /// agent mounts it (after dropping what it cached of the slot).
    pub fn load(&self, image: &Path) -> Result<usize, String> {
        let len = std::fs::metadata(image)
            .map_err(|e| format!("{}: {e}", image.display()))?
            .len();
        if len > SLOT_SIZE {
            return Err(format!(
                "the image is {len} bytes; a slot holds {SLOT_SIZE}"
            ));
        }
        let i = {
            let mut s = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            let i = s.iter().position(|used| !used).ok_or(format!(
                "the pod VM has {} disk slots and all hold a container",
                s.len()
            ))?;
            s[i] = true;
            i
        };
        let r = (|| -> std::io::Result<()> {
            let slot = self.dir.join(format!("slot{i}.img"));
            let mut dst = OpenOptions::new().write(true).open(&slot)?;
            dst.set_len(0)?;
            let mut src = std::fs::File::open(image)?;
            std::io::copy(&mut src, &mut dst)?;
            dst.set_len(SLOT_SIZE)
        })();
        if let Err(e) = r {
            self.free(i);
            return Err(format!("copying the image into slot {i}: {e}"));
        }
        Ok(i)
    }

    /// Gives a slot back (its container is destroyed).
    pub fn free(&self, i: usize) {
        let mut s = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(u) = s.get_mut(i) {
            *u = false;
        }
        let slot = self.dir.join(format!("slot{i}.img"));
        // What the container's image took on disk goes back now.
        if let Ok(f) = OpenOptions::new().write(true).open(slot) {
            let _ = f.set_len(0).and_then(|()| f.set_len(SLOT_SIZE));
        }
    }

    /// Removes the VM's files (after it ended).
    pub fn remove_files(&self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
