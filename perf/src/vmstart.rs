//! `vnfhost bench vm`: how fast and how small a pod VM monitor is, vnfhost's `kvm` backend
//! against QEMU `-M microvm` in the same run, with the same payload, on the same KVM and
//! the same pinned CPU.
//!
//! - **start → first guest instruction**: from just before `fork` to the first byte on the
//!   VMM's stdout, which is the payload's first instruction (a serial port write, through
//!   the PVH entry both VMMs support). Also start → exit (the payload resets at once).
//! - **resident memory without guest RAM**: `RssAnon + RssFile` of the VMM right after the
//!   first byte, with a payload that then halts; guest RAM (a shared memfd) is `RssShmem`
//!   and reported apart.
//! - **creation rate**: N VMs started and stopped one after the other.
//! - **huge pages**: with `--hugepages --prealloc` all guest RAM is taken from the huge
//!   page pool before the guest runs, and none of it is in the VMM's resident set.
//!
//! QEMU runs with `-accel kvm -cpu host,-arch-capabilities` (the flag some software KVMs
//! need) and `isa-debug-exit`, since microvm has no i8042 to reset through.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::p2p::stats;

/// Options.
#[derive(Debug, Clone)]
pub struct VmBenchConfig {
    /// Rounds of the start-up measurement (each VMM once per round).
    pub trials: usize,
    /// VMs per creation-rate run.
    pub create: usize,
    /// Host CPU all VMM threads are pinned to.
    pub cpu: usize,
    /// The `vnfhost` binary.
    pub vnfhost: PathBuf,
    /// Scratch directory for the payloads.
    pub dir: PathBuf,
}

/// The two monitors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vmm {
    /// `vnfhost vm run --hypervisor kvm`.
    Vnfhost,
    /// `qemu-system-x86_64 -M microvm -accel kvm`.
    Qemu,
}

impl Vmm {
    fn name(self) -> &'static str {
        match self {
            Vmm::Vnfhost => "vnfhost kvm",
            Vmm::Qemu => "QEMU microvm",
        }
    }
}

/// Results of one run.
#[derive(Debug, Default, Clone)]
pub struct VmReport {
    /// ms from exec to the first guest byte, per VMM.
    pub first_byte_ms: [Vec<f64>; 2],
    /// ms from exec to exit.
    pub exit_ms: [Vec<f64>; 2],
    /// KiB RssAnon+RssFile after the first byte.
    pub rss_kib: [Vec<f64>; 2],
    /// KiB RssShmem (guest RAM touched) at the same moment.
    pub shmem_kib: [Vec<f64>; 2],
    /// VMs per second.
    pub create_rate: [Option<f64>; 2],
    /// With huge pages: (pages taken while running, VMM RSS KiB, RssShmem KiB), ours.
    pub hugepages: Option<(u64, f64, f64)>,
    /// Why a part was not measured.
    pub notes: Vec<String>,
}

fn command(cfg: &VmBenchConfig, vmm: Vmm, payload: &Path, extra: &[&str]) -> Command {
    let mut cmd = match vmm {
        Vmm::Vnfhost => {
            let mut c = Command::new(&cfg.vnfhost);
            c.args([
                "vm",
                "run",
                "--hypervisor",
                "kvm",
                "--mem",
                "32M",
                "--kernel",
            ])
            .arg(payload)
            .args(extra)
            .env("VNFHOST_LOG", "warn");
            c
        }
        Vmm::Qemu => {
            let mut c = Command::new("qemu-system-x86_64");
            c.args([
                "-M",
                "microvm",
                "-accel",
                "kvm",
                "-cpu",
                "host,-arch-capabilities",
            ])
            .args(["-m", "32M", "-smp", "1", "-nodefaults", "-no-user-config"])
            .args(["-nographic", "-serial", "stdio", "-no-reboot"])
            .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=4", "-kernel"])
            .arg(payload)
            .args(extra);
            c
        }
    };
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    vmm::qemu::pin_command(&mut cmd, &[cfg.cpu]);
    cmd
}

/// Starts `cmd`; returns the child and the time to its first stdout byte.
fn first_byte(mut cmd: Command) -> Result<(Child, Duration), String> {
    let t = Instant::now();
    let mut child = cmd.spawn().map_err(|e| format!("{cmd:?}: {e}"))?;
    let mut out = child.stdout.take().ok_or("no stdout pipe")?;
    let mut b = [0u8; 1];
    match out.read(&mut b) {
        Ok(1) => {}
        _ => {
            let _ = child.kill();
            let st = child.wait().map_err(|e| e.to_string())?;
            return Err(format!("{cmd:?} printed nothing (exit {st})"));
        }
    }
    let d = t.elapsed();
    // Drain the rest so the VMM never blocks on a full pipe.
    std::thread::spawn(move || {
        let mut sink = Vec::new();
        let _ = out.read_to_end(&mut sink);
    });
    Ok((child, d))
}

fn status_kib(pid: u32, field: &str) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn stop(mut child: Child) {
    // SAFETY: kill(2) on a child we started and have not reaped.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(5) {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Runs the benchmark.
pub fn run(cfg: &VmBenchConfig, progress: &mut dyn FnMut(&str)) -> Result<VmReport, String> {
    std::fs::create_dir_all(&cfg.dir).map_err(|e| format!("{}: {e}", cfg.dir.display()))?;
    let hello = cfg.dir.join("hello.elf");
    let idle = cfg.dir.join("idle.elf");
    std::fs::write(&hello, vmm::payload::HELLO).map_err(|e| e.to_string())?;
    std::fs::write(&idle, vmm::payload::IDLE).map_err(|e| e.to_string())?;
    let mut r = VmReport::default();
    let mut vmms = vec![Vmm::Vnfhost];
    if Command::new("qemu-system-x86_64")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
    {
        vmms.push(Vmm::Qemu);
    } else {
        r.notes
            .push("QEMU is missing (apt-get install qemu-system-x86): not measured".into());
    }
    // Warm the page cache and KVM once per VMM.
    for &v in &vmms {
        let (mut c, _) = first_byte(command(cfg, v, &hello, &[]))?;
        let _ = c.wait();
    }
    for t in 0..cfg.trials {
        progress(&format!("start-up round {}/{}", t + 1, cfg.trials));
        for &v in &vmms {
            let t0 = Instant::now();
            let (mut c, d) = first_byte(command(cfg, v, &hello, &[]))?;
            c.wait().map_err(|e| e.to_string())?;
            r.first_byte_ms[v as usize].push(d.as_secs_f64() * 1e3);
            r.exit_ms[v as usize].push(t0.elapsed().as_secs_f64() * 1e3);
        }
    }
    for round in 0..3 {
        progress(&format!("memory round {}/3", round + 1));
        for &v in &vmms {
            let (c, _) = first_byte(command(cfg, v, &idle, &[]))?;
            let pid = c.id();
            let anon = status_kib(pid, "RssAnon:").unwrap_or(0.0);
            let file = status_kib(pid, "RssFile:").unwrap_or(0.0);
            let shmem = status_kib(pid, "RssShmem:").unwrap_or(0.0);
            stop(c);
            r.rss_kib[v as usize].push(anon + file);
            r.shmem_kib[v as usize].push(shmem);
        }
    }
    for &v in &vmms {
        progress(&format!("creating {} VMs with {}", cfg.create, v.name()));
        let t0 = Instant::now();
        for _ in 0..cfg.create {
            let mut c = command(cfg, v, &hello, &[]);
            c.stdout(Stdio::null());
            let st = c.status().map_err(|e| e.to_string())?;
            let ok = match v {
                Vmm::Vnfhost => st.success(),
                Vmm::Qemu => st.code() == Some(1), // isa-debug-exit with 0
            };
            if !ok {
                return Err(format!("{} exited with {st}", v.name()));
            }
        }
        r.create_rate[v as usize] = Some(cfg.create as f64 / t0.elapsed().as_secs_f64());
    }
    // Huge pages: 32 MiB of guest RAM, preallocated.
    let before = vmm::memory::free_huge_pages();
    if before >= 16 {
        progress("huge pages");
        let (c, _) = first_byte(command(
            cfg,
            Vmm::Vnfhost,
            &idle,
            &["--hugepages", "--prealloc"],
        ))?;
        let pid = c.id();
        let during = vmm::memory::free_huge_pages();
        let rss =
            status_kib(pid, "RssAnon:").unwrap_or(0.0) + status_kib(pid, "RssFile:").unwrap_or(0.0);
        let shmem = status_kib(pid, "RssShmem:").unwrap_or(0.0);
        stop(c);
        r.hugepages = Some((before.saturating_sub(during), rss, shmem));
    } else {
        r.notes.push(format!(
            "huge pages: only {before} free 2 MiB pages (16 needed): not measured"
        ));
    }
    Ok(r)
}

impl VmReport {
    /// The markdown table.
    pub fn markdown(&self, cfg: &VmBenchConfig) -> String {
        let mut s = format!(
            "VMM start-up, {} rounds, all VMM threads pinned to CPU {}, payload `hello`/`idle` \
             (PVH entry, first instruction a serial write), 32 MiB guest RAM.\n\n\
             | metric | vnfhost kvm min / median / max | QEMU microvm min / median / max | vnfhost / QEMU (medians) |\n\
             |---|---:|---:|---:|\n",
            cfg.trials, cfg.cpu
        );
        let row = |name: &str, v: &[Vec<f64>; 2], unit: &str, scale: f64| -> String {
            let f = |x: &Vec<f64>| {
                if x.is_empty() {
                    return ("—".to_string(), None);
                }
                let (a, m, b) = stats(x);
                (
                    format!(
                        "{:.2} / {:.2} / {:.2} {unit}",
                        a * scale,
                        m * scale,
                        b * scale
                    ),
                    Some(m),
                )
            };
            let (ours, om) = f(&v[0]);
            let (theirs, tm) = f(&v[1]);
            let ratio = match (om, tm) {
                (Some(o), Some(t)) if t > 0.0 => format!("{:.3}×", o / t),
                _ => "—".into(),
            };
            format!("| {name} | {ours} | {theirs} | {ratio} |\n")
        };
        s += &row(
            "exec → first guest instruction",
            &self.first_byte_ms,
            "ms",
            1.0,
        );
        s += &row("exec → VMM exit", &self.exit_ms, "ms", 1.0);
        s += &row(
            "VMM RSS without guest RAM",
            &self.rss_kib,
            "MiB",
            1.0 / 1024.0,
        );
        s += &row(
            "guest RAM resident (RssShmem)",
            &self.shmem_kib,
            "MiB",
            1.0 / 1024.0,
        );
        let rate = |x: Option<f64>| x.map(|v| format!("{v:.0} VMs/s")).unwrap_or("—".into());
        let ratio = match self.create_rate {
            [Some(a), Some(b)] if b > 0.0 => format!("{:.2}×", a / b),
            _ => "—".into(),
        };
        s += &format!(
            "| creation rate ({} VMs, one after the other) | {} | {} | {ratio} |\n",
            cfg.create,
            rate(self.create_rate[0]),
            rate(self.create_rate[1])
        );
        if let Some((pages, rss, shmem)) = self.hugepages {
            s += &format!(
                "\nWith `--hugepages --prealloc` (32 MiB): {pages} huge pages taken before the \
                 first guest instruction; VMM RSS {:.2} MiB, RssShmem {:.2} MiB (guest RAM \
                 is not in the VMM's resident set).\n",
                rss / 1024.0,
                shmem / 1024.0
            );
        }
        for n in &self.notes {
            s += &format!("\nNote: {n}\n");
        }
        s
    }
}
