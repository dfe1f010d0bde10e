//! The `qemu` backend: QEMU `-M microvm` with the VM's memory in a shared memfd and one
//! vhost-user virtio-net device per `--net`, the console on stdio.
//!
//! QEMU uses KVM where the CPU has hardware virtualization and TCG otherwise. Its process
//! (all vCPU threads included) is pinned to `--cpus`.

use std::os::unix::process::CommandExt;
use std::process::Command;

use crate::hypervisor::hardware_virtualization;
use crate::vm::{VmConfig, VmError};

/// Name of the QEMU binary looked up in `PATH`.
pub const QEMU_BIN: &str = "qemu-system-x86_64";

fn fmt_mac(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// TCG's options: `VNFHOST_TCG_TB_MIB` sets the translation cache (experiment).
fn tcg_accel() -> String {
    match std::env::var("VNFHOST_TCG_TB_MIB") {
        Ok(v) => format!("tcg,tb-size={v}"),
        Err(_) => "tcg".into(),
    }
}

/// The QEMU command line for `cfg`.
pub fn command(cfg: &VmConfig) -> Result<Command, VmError> {
    let kvm = hardware_virtualization();
    let mib = cfg.mem >> 20;
    if !cfg.mem.is_multiple_of(1 << 20) {
        return Err(VmError::Config(
            "--mem must be a whole number of MiB for QEMU".into(),
        ));
    }
    let mut backend = format!("memory-backend-memfd,id=mem,size={mib}M,share=on");
    if cfg.hugepages {
        backend.push_str(",hugetlb=on,hugetlbsize=2M");
    }
    if cfg.prealloc {
        backend.push_str(",prealloc=on");
    }
    let path_arg = |p: &std::path::Path| -> Result<String, VmError> {
        p.to_str()
            .map(|s| s.replace(',', ",,"))
            .ok_or_else(|| VmError::Config(format!("{} is not UTF-8", p.display())))
    };
    let mut cmd = Command::new(QEMU_BIN);
    cmd.args(["-M", "microvm,memory-backend=mem"])
        .args(["-accel", &if kvm { "kvm".to_string() } else { tcg_accel() }])
        .args(["-cpu", if kvm { "host" } else { "max" }])
        .args(["-m", &format!("{mib}M"), "-smp", &cfg.vcpus.to_string()])
        .args(["-object", &backend]);
    if cfg.nets.iter().any(|n| n.packed) {
        // microvm's virtio-mmio is legacy (virtio 0.9) by default, and packed rings are
        // a virtio 1.x feature.
        cmd.args(["-global", "virtio-mmio.force-legacy=false"]);
    }
    cmd.args([
        "-nodefaults",
        "-no-user-config",
        "-nographic",
        "-serial",
        "stdio",
    ])
    .arg("-no-reboot")
    .args(["-kernel", &path_arg(&cfg.kernel)?]);
    if let Some(i) = &cfg.initrd {
        cmd.args(["-initrd", &path_arg(i)?]);
    }
    if !cfg.cmdline.is_empty() {
        cmd.args(["-append", &cfg.cmdline]);
    }
    for (i, n) in cfg.nets.iter().enumerate() {
        let sock = path_arg(&n.path)?;
        let chardev = if n.server {
            format!("socket,id=c{i},path={sock},server=on")
        } else {
            format!("socket,id=c{i},path={sock},reconnect=1")
        };
        let mac = n
            .mac
            .unwrap_or_else(|| crate::devices::vhost_net::default_mac(&n.path));
        cmd.args(["-chardev", &chardev])
            .args(["-netdev", &format!("vhost-user,id=n{i},chardev=c{i}")])
            .args([
                "-device",
                &format!(
                    "virtio-net-device,netdev=n{i},mac={}{}{}",
                    fmt_mac(mac),
                    if n.packed { ",packed=on" } else { "" },
                    n.mtu.map(|m| format!(",host_mtu={m}")).unwrap_or_default()
                ),
            ]);
    }
    if let Some(agent) = &cfg.agent {
        // A virtio-serial bus with one named port; the guest's agent finds it by name.
        cmd.args(["-device", "virtio-serial-device,max_ports=2"])
            .args([
                "-chardev",
                &format!(
                    "socket,id=agent,path={},server=on,wait=off",
                    path_arg(agent)?
                ),
            ])
            .args([
                "-device",
                &format!("virtserialport,chardev=agent,name={}", ::agent::PORT_NAME),
            ]);
    }
    if cfg.free_page_reporting {
        cmd.args([
            "-device",
            "virtio-balloon-device,free-page-reporting=on,deflate-on-oom=on",
        ]);
    }
    if let Some(q) = &cfg.qmp {
        cmd.args(["-qmp", &format!("unix:{},server=on,wait=off", path_arg(q)?)]);
    }
    for (i, d) in cfg.disks.iter().enumerate() {
        cmd.args([
            "-drive",
            &format!(
                "file={},if=none,id=disk{i},format=raw{}",
                path_arg(&d.path)?,
                if d.read_only { ",readonly=on" } else { "" }
            ),
        ])
        .args([
            "-device",
            &format!("virtio-blk-device,drive=disk{i},serial={}", d.serial),
        ]);
    }
    if !cfg.cpus.is_empty() {
        pin_command(&mut cmd, &cfg.cpus);
    }
    Ok(cmd)
}

/// Makes `cmd`'s process (and every thread it starts) run only on `cpus`.
pub fn pin_command(cmd: &mut Command, cpus: &[usize]) {
    // Built before the fork: the closure below only reads it.
    // SAFETY: a zeroed cpu_set_t is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &c in cpus.iter().filter(|&&c| c < libc::CPU_SETSIZE as usize) {
        // SAFETY: `c` is below CPU_SETSIZE, so the bit is inside `set`.
        unsafe { libc::CPU_SET(c, &mut set) };
    }
    // SAFETY: sched_setaffinity is async-signal-safe; the closure allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Replaces this process with QEMU, so that QEMU keeps the process id, the console and
/// the signals of `vnfhost vm run` (a supervisor that stops the pod stops QEMU). Returns
/// only when QEMU cannot be started. QEMU exits 0 when the guest powers off or resets
/// (`-no-reboot`).
pub fn exec(cfg: &VmConfig) -> VmError {
    if let Err(e) = crate::vm::validate(cfg) {
        return e;
    }
    let mut cmd = match command(cfg) {
        Ok(c) => c,
        Err(e) => return e,
    };
    tracing::debug!("exec {cmd:?}");
    VmError::Os(
        "cannot start qemu-system-x86_64 (apt-get install qemu-system-x86)",
        cmd.exec(),
    )
}

/// Starts QEMU as a child of this process with its console (stdout) on a pipe, for a
/// caller that reads the console: `vnfhost vm run` of a pod with a workload looks for
/// the workload's exit status in it ([`crate::guest::StatusScan`]). The child is killed
/// if this process dies first (`PR_SET_PDEATHSIG`), so a supervisor that kills the pod
/// kills QEMU too.
pub fn spawn_piped(cfg: &VmConfig) -> Result<std::process::Child, VmError> {
    crate::vm::validate(cfg)?;
    let mut cmd = command(cfg)?;
    cmd.stdout(std::process::Stdio::piped());
    // SAFETY: prctl is async-signal-safe and the closure allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    tracing::debug!("spawn {cmd:?}");
    cmd.spawn().map_err(|e| {
        VmError::Os(
            "cannot start qemu-system-x86_64 (apt-get install qemu-system-x86)",
            e,
        )
    })
}
