//! `vnfhost vm`: run a pod VM in the foreground, or write a built-in guest payload.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use vmm::guest::{StatusScan, WorkloadStatus};
use vmm::hypervisor::{self, Backend, Choice};
use vmm::{NetConfig, VmConfig, VmError, VmExit};

use api::values::parse_mac;

use crate::args::{unexpected, Parsed};

/// `vnfhost vm run --help`.
pub const RUN_USAGE: &str = "\
usage: vnfhost vm run --kernel PATH [options]

Runs a pod VM in the foreground; its serial console is stdout.

options:
  --hypervisor H    auto (default: kvm with vmx/svm, else qemu), kvm, qemu
  --kernel PATH     ELF (vmlinux, or with a PVH note) or bzImage
  --initrd PATH     initramfs
  --cmdline STR     kernel command line (default: console=ttyS0 reboot=k ...)
  --append STR      words added to the command line, e.g. vnf.ip=10.0.0.1/24
  --mem SIZE        guest RAM, e.g. 256M (default 128M)
  --vcpus N         virtual CPUs (default 1)
  --cpus LIST       host CPUs to pin the vCPUs to, e.g. 1 or 0-1
  --hugepages       guest RAM on 2 MiB huge pages
  --prealloc        allocate all guest RAM before the guest starts
  --pit             emulate the legacy 8254 timer (kvm; off: Linux uses the
                    LAPIC timer and kvm-clock)
  --net SPEC        repeatable; SPEC is vhost-user=PATH[,client][,mac=MAC][,mtu=N]
                    [,packed]: the VM listens on PATH (pair with the
                    switch's `,client` port), or with `client` connects
                    to it; `packed` offers packed virtqueues (qemu only)
  --console FILE    write the console to FILE (kvm only)
  --agent PATH      serve the guest agent's virtio-serial port (vnfhost.agent)
                    on the Unix socket PATH
  --free-page-reporting
                    a virtio-balloon with free page reporting: RAM the guest
                    frees goes back to the host (qemu only; auto picks qemu)
  --qmp PATH        QEMU's monitor (QMP) on the Unix socket PATH (qemu only;
                    auto picks qemu)
  --disk SPEC       repeatable; SPEC is PATH[,ro][,serial=S]: a virtio-blk
                    disk (a file or block device); S defaults to diskN
  -h, --help        this text

Exits 0 when the guest powers off or resets, 1 when it dies. A guest whose init runs a
workload (`--append \"vnf.run=CMD\"`, the pod's `command:`) exits with the workload's
status, which init prints on the console (`VNFHOST-WORKLOAD-EXIT status=N`; 127: not
found), and 1 when it ends without printing it (a kernel panic). SIGINT or SIGTERM stop
the VM: 0.
";

/// `vnfhost vm payload --help`.
pub const PAYLOAD_USAGE: &str = "\
usage: vnfhost vm payload NAME --out FILE

Writes a built-in guest payload (hello, idle, echo, poweroff, net, fault), used by tests
and benchmarks.

options:
  --out FILE    where it goes (required)
  -h, --help    this text
";

/// Options of `vnfhost vm run`.
#[derive(Debug, Clone)]
pub struct RunArgs {
    /// Which hypervisor.
    pub hypervisor: Choice,
    /// The VM.
    pub vm: VmConfig,
    /// Whether `--cmdline` was given.
    pub cmdline_given: bool,
    /// Words added to the command line (`--append`).
    pub append: Vec<String>,
    /// Write the console here instead of stdout.
    pub console: Option<PathBuf>,
}

/// Parses `256M`, `1G`, `512MiB`, `1048576` (bytes).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, unit) = t
        .find(|c: char| !c.is_ascii_digit())
        .map(|i| t.split_at(i))
        .unwrap_or((t, ""));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (like 256M or 1G)"))?;
    let mul: u64 = match unit.to_ascii_lowercase().as_str() {
        "" => 1,
        "k" | "kib" | "kb" => 1 << 10,
        "m" | "mib" | "mb" => 1 << 20,
        "g" | "gib" | "gb" => 1 << 30,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use K, M or G)")),
    };
    n.checked_mul(mul)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// Parses `vhost-user=PATH[,client|,server][,mac=MAC][,mtu=N][,packed]`.
pub fn parse_net(s: &str) -> Result<NetConfig, String> {
    let mut path = None;
    let mut server = true;
    let mut mac = None;
    let mut packed = false;
    let mut mtu = None;
    for part in s.split(',') {
        match part.split_once('=') {
            Some(("vhost-user", p)) if !p.is_empty() => path = Some(PathBuf::from(p)),
            Some(("mac", m)) => mac = Some(parse_mac(m)?),
            Some(("mtu", m)) => match m.parse::<u16>() {
                Ok(m) if m >= 68 => mtu = Some(m),
                _ => return Err(format!("--net {s:?}: mtu={m} is not in 68..=65535")),
            },
            None if part == "client" => server = false,
            None if part == "server" => server = true,
            None if part == "packed" => packed = true,
            _ => {
                return Err(format!(
                "--net {s:?}: unknown part {part:?} (expected vhost-user=PATH[,client][,mac=MAC][,mtu=N][,packed])"
            ))
            }
        }
    }
    let path = path.ok_or_else(|| format!("--net {s:?}: vhost-user=PATH is missing"))?;
    if path.as_os_str().len() >= 108 {
        return Err(format!(
            "--net: socket path {} is {} bytes; Unix socket paths must be under 108",
            path.display(),
            path.as_os_str().len()
        ));
    }
    Ok(NetConfig {
        path,
        server,
        mac,
        packed,
        mtu,
    })
}

/// Parses one `--disk PATH[,ro][,serial=S]`; `n` disks came before it.
pub fn parse_disk(s: &str, n: usize) -> Result<vmm::DiskConfig, String> {
    let mut parts = s.split(',');
    let path = parts.next().filter(|p| !p.is_empty());
    let path = path.ok_or_else(|| format!("--disk {s:?}: PATH is missing"))?;
    let mut d = vmm::DiskConfig {
        path: path.into(),
        serial: format!("disk{n}"),
        read_only: false,
    };
    for part in parts {
        match part.split_once('=') {
            None if part == "ro" => d.read_only = true,
            Some(("serial", v)) => d.serial = v.to_string(),
            _ => {
                return Err(format!(
                    "--disk {s:?}: unknown part {part:?} (expected PATH[,ro][,serial=S])"
                ))
            }
        }
    }
    Ok(d)
}

fn value(p: &mut lexopt::Parser, flag: &str) -> Result<String, String> {
    p.value()
        .map_err(|e| format!("{flag}: {e}"))?
        .into_string()
        .map_err(|v| format!("{flag}: {v:?} is not UTF-8"))
}

/// Parses the options after `vnfhost vm run`.
pub fn parse_run(args: Vec<OsString>) -> Result<Parsed<RunArgs>, String> {
    use lexopt::Arg::*;
    let mut a = RunArgs {
        hypervisor: Choice::Auto,
        vm: VmConfig {
            kernel: PathBuf::new(),
            initrd: None,
            cmdline: String::new(),
            mem: 128 << 20,
            vcpus: 1,
            cpus: vec![],
            hugepages: false,
            prealloc: false,
            nets: vec![],
            pit: false,
            console_input: true,
            agent: None,
            disks: vec![],
            free_page_reporting: false,
            qmp: None,
        },
        cmdline_given: false,
        append: vec![],
        console: None,
    };
    let mut p = lexopt::Parser::from_args(args);
    while let Some(arg) = p.next().map_err(|e| e.to_string())? {
        match arg {
            Long("hypervisor") => a.hypervisor = value(&mut p, "--hypervisor")?.parse()?,
            Long("kernel") => a.vm.kernel = value(&mut p, "--kernel")?.into(),
            Long("initrd") => a.vm.initrd = Some(value(&mut p, "--initrd")?.into()),
            Long("cmdline") => {
                a.vm.cmdline = value(&mut p, "--cmdline")?;
                a.cmdline_given = true;
            }
            Long("append") => a.append.push(value(&mut p, "--append")?),
            Long("mem") => {
                a.vm.mem =
                    parse_size(&value(&mut p, "--mem")?).map_err(|e| format!("--mem: {e}"))?
            }
            Long("vcpus") => {
                let v = value(&mut p, "--vcpus")?;
                a.vm.vcpus = v
                    .parse()
                    .map_err(|_| format!("--vcpus: {v:?} is not a number in 1..=64"))?;
            }
            Long("cpus") => {
                let v = value(&mut p, "--cpus")?;
                a.vm.cpus = pmd::sched::parse_cpu_list(&v).map_err(|e| format!("--cpus: {e}"))?;
            }
            Long("hugepages") => a.vm.hugepages = true,
            Long("prealloc") => a.vm.prealloc = true,
            Long("pit") => a.vm.pit = true,
            Long("net") => a.vm.nets.push(parse_net(&value(&mut p, "--net")?)?),
            Long("console") => a.console = Some(value(&mut p, "--console")?.into()),
            Long("agent") => a.vm.agent = Some(value(&mut p, "--agent")?.into()),
            Long("free-page-reporting") => a.vm.free_page_reporting = true,
            Long("qmp") => a.vm.qmp = Some(value(&mut p, "--qmp")?.into()),
            Long("disk") => {
                let n = a.vm.disks.len();
                a.vm.disks.push(parse_disk(&value(&mut p, "--disk")?, n)?)
            }
            Long("help") | Short('h') => return Ok(Parsed::Help(RUN_USAGE)),
            other => return Err(unexpected("vm run", other)),
        }
    }
    if a.vm.kernel.as_os_str().is_empty() {
        return Err("vm run: --kernel PATH is required".into());
    }
    Ok(Parsed::Run(a))
}

/// Runs the VM; returns the exit code. A guest that runs a workload (`vnf.run=` on its
/// command line) ends with the workload's exit status, which its init prints on the
/// console ([`vmm::guest::WORKLOAD_EXIT`]); one that ends without saying it (a kernel
/// panic, a reset) is a failure, 1. Otherwise: 0 when the guest powered off or reset, 1
/// when it died. Stopped by SIGINT or SIGTERM: 0.
pub fn run(mut a: RunArgs) -> Result<i32, String> {
    let (backend, why) = match a.hypervisor {
        Choice::Auto if a.vm.free_page_reporting || a.vm.qmp.is_some() => (
            Backend::Qemu,
            "auto: free page reporting and QMP are the qemu backend's only".to_string(),
        ),
        c => hypervisor::resolve(c),
    };
    if !a.cmdline_given {
        a.vm.cmdline = vmm::guest::default_cmdline(backend);
    }
    for w in &a.append {
        if !a.vm.cmdline.is_empty() {
            a.vm.cmdline.push(' ');
        }
        a.vm.cmdline.push_str(w);
    }
    tracing::info!("hypervisor: {backend} ({why})");
    vmm::vm::validate(&a.vm).map_err(|e| e.to_string())?;
    let workload = vmm::guest::runs_workload(&a.vm.cmdline);
    let status = WorkloadStatus::new();
    let result = match backend {
        Backend::Qemu => {
            if a.console.is_some() {
                return Err("--console is only supported by the kvm hypervisor".into());
            }
            if !workload {
                // Nothing to read on the console: QEMU takes this process's place.
                return Err(vmm::qemu::exec(&a.vm).to_string());
            }
            match run_qemu(&a.vm, &status)? {
                QemuEnd::Exit(r) => r,
                QemuEnd::Code(code) if status.get().is_none() => return Ok(code),
                QemuEnd::Code(_) => Ok(VmExit::PowerOff),
            }
        }
        Backend::Kvm => {
            let console: Box<dyn std::io::Write + Send> = match &a.console {
                Some(p) => Box::new(
                    std::fs::File::create(p)
                        .map_err(|e| format!("--console {}: {e}", p.display()))?,
                ),
                None => Box::new(std::io::stdout()),
            };
            let console = Box::new(StatusScan::new(console, status.clone()));
            vmm::Vm::new(&a.vm, console).and_then(|mut vm| {
                let r = vm.run();
                // The process ends now: leave the VM to the kernel's exit path instead of
                // tearing it down here first.
                std::mem::forget(vm);
                r
            })
        }
    };
    if workload {
        if let Some(s) = status.get() {
            tracing::info!("the workload exited with status {s}; the VM ended");
            return Ok(i32::from(s));
        }
    }
    match result {
        Ok(VmExit::Signal) => {
            tracing::info!("stopped by a signal");
            Ok(0)
        }
        Ok(_) if workload => {
            eprintln!(
                "vnfhost: the guest ended without its workload's exit status (a kernel \
                 panic, or its init failed: see the console)"
            );
            Ok(1)
        }
        Ok(VmExit::PowerOff) => {
            tracing::info!("the guest powered off");
            Ok(0)
        }
        Ok(VmExit::Reset) => {
            tracing::info!("the guest reset; the VM ends (reboot is a restart by the caller)");
            Ok(0)
        }
        Err(e @ (VmError::TripleFault { .. } | VmError::Guest { .. })) => {
            eprintln!("vnfhost: {e}");
            Ok(1)
        }
        Err(e) => Err(e.to_string()),
    }
}

/// How QEMU run as a child ended.
enum QemuEnd {
    /// As a VM ends: the guest powered off or reset (QEMU exited 0), or a signal to this
    /// process stopped it.
    Exit(Result<VmExit, VmError>),
    /// QEMU failed (its exit code), or was killed by a signal from elsewhere (128 + N).
    Code(i32),
}

/// Runs QEMU as a child, its console copied to stdout through a [`StatusScan`] into
/// `status`; SIGINT and SIGTERM to this process are passed on to it.
fn run_qemu(cfg: &VmConfig, status: &WorkloadStatus) -> Result<QemuEnd, String> {
    use std::io::{Read, Write};
    let sigs = crate::switch_cmd::block_signals();
    let mut child = vmm::qemu::spawn_piped(cfg).map_err(|e| e.to_string())?;
    let mut out = child.stdout.take().ok_or("qemu: no console pipe")?;
    let mut console = StatusScan::new(std::io::stdout(), status.clone());
    let relay = std::thread::Builder::new()
        .name("console".into())
        .spawn(move || {
            let mut buf = [0u8; 4096];
            // Until QEMU closes its end, when it exits. The pipe is drained even if
            // stdout fails, so that QEMU never blocks on its console.
            while let Ok(n @ 1..) = out.read(&mut buf) {
                let _ = console.write_all(&buf[..n]);
                let _ = console.flush();
            }
        })
        .map_err(|e| e.to_string())?;
    let mut stopped = false;
    let st = loop {
        if let Some(sig) = crate::switch_cmd::wait_signal(&sigs, Duration::from_millis(50)) {
            // SAFETY: kill(2) on our own child, which has not been waited for.
            unsafe { libc::kill(child.id() as i32, sig) };
            stopped = true;
        }
        if let Some(st) = child.try_wait().map_err(|e| format!("qemu: {e}"))? {
            break st;
        }
    };
    let _ = relay.join();
    use std::os::unix::process::ExitStatusExt;
    Ok(match (st.code(), st.signal()) {
        _ if stopped => QemuEnd::Exit(Ok(VmExit::Signal)),
        (Some(0), _) => QemuEnd::Exit(Ok(VmExit::PowerOff)),
        (Some(c), _) => QemuEnd::Code(c),
        (None, Some(s)) => QemuEnd::Code(128 + s),
        (None, None) => QemuEnd::Code(1),
    })
}

/// `vnfhost vm payload NAME --out FILE`.
pub fn payload(args: Vec<OsString>) -> Result<i32, String> {
    use lexopt::Arg::*;
    let mut name = None;
    let mut out = None;
    let mut p = lexopt::Parser::from_args(args);
    while let Some(arg) = p.next().map_err(|e| e.to_string())? {
        match arg {
            Long("out") => out = Some(PathBuf::from(value(&mut p, "--out")?)),
            Long("help") | Short('h') => {
                print!("{PAYLOAD_USAGE}");
                return Ok(0);
            }
            Value(v) if name.is_none() => name = v.into_string().ok(),
            other => return Err(unexpected("vm payload", other)),
        }
    }
    let name =
        name.ok_or("vm payload: give a payload name (hello, idle, echo, poweroff, net, fault)")?;
    let bytes = vmm::payload::by_name(&name).ok_or_else(|| {
        format!(
            "vm payload: unknown payload {name:?} ({})",
            vmm::payload::NAMES.join(", ")
        )
    })?;
    let out = out.ok_or("vm payload: --out FILE is required")?;
    std::fs::write(&out, bytes).map_err(|e| format!("{}: {e}", out.display()))?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<OsString> {
        s.split_whitespace().map(OsString::from).collect()
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("256M"), Ok(256 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("12X").is_err());
        assert!(parse_size("M").is_err());
        assert!(parse_size("99999999999999G").is_err());
    }

    #[test]
    fn nets() {
        let n = parse_net("vhost-user=/run/a.sock,client,mac=52:54:00:00:00:01").unwrap();
        assert!(!n.server);
        assert_eq!(n.mac, Some([0x52, 0x54, 0, 0, 0, 1]));
        assert!(parse_net("vhost-user=/a").unwrap().server);
        assert!(parse_net("tap=x").is_err());
        assert!(parse_net("client").is_err());
        assert!(parse_net(&format!("vhost-user=/{}", "x".repeat(120))).is_err());
    }

    #[test]
    fn run_options() {
        let Parsed::Run(a) = parse_run(args(
            "--hypervisor kvm --kernel /k --mem 64M --vcpus 2 --cpus 1 --net vhost-user=/s",
        ))
        .unwrap() else {
            panic!("not help")
        };
        assert_eq!(a.hypervisor, Choice::Kvm);
        assert_eq!(a.vm.mem, 64 << 20);
        assert_eq!(a.vm.vcpus, 2);
        assert_eq!(a.vm.nets.len(), 1);
        assert!(parse_run(args("--mem 64M"))
            .unwrap_err()
            .contains("--kernel"));
        assert!(parse_run(args("--kernel /k --hypervisor xen")).is_err());
        assert!(parse_run(args("--kernel /k --vcpus lots")).is_err());
        // Help without the required --kernel.
        assert!(matches!(parse_run(args("-h")), Ok(Parsed::Help(RUN_USAGE))));
    }
}
