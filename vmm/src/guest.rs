//! What a Linux guest needs from the host: the default kernel command line.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::hypervisor::Backend;

/// The kernel command line used when `--cmdline` is not given.
///
/// `reboot=k` makes `reboot` use the i8042 reset (which ends the VM), `panic=-1` turns a
/// panic into a reset, `8250.nr_uarts=1` and `i8042.noaux` skip probing absent hardware.
/// Under QEMU's TCG the guest's TSC runs at the host's rate, and `tsc_early_khz` saves a
/// calibration that sometimes hangs on a loaded machine.
pub fn default_cmdline(backend: Backend) -> String {
    let mut c = String::from(
        "console=ttyS0 reboot=k panic=-1 quiet i8042.noaux 8250.nr_uarts=1 \
         random.trust_cpu=on tsc=reliable no_timer_check",
    );
    if backend == Backend::Qemu {
        if let Some(khz) = host_tsc_khz() {
            c.push_str(&format!(" tsc_early_khz={khz}"));
        }
    }
    c
}

/// The host's TSC frequency in kHz. `VNFHOST_TSC_KHZ` overrides; otherwise measured with
/// `rdtsc` against the monotonic clock (120 ms), falling back to `/proc/cpuinfo`.
pub fn host_tsc_khz() -> Option<u64> {
    static KHZ: OnceLock<Option<u64>> = OnceLock::new();
    *KHZ.get_or_init(|| {
        if let Some(v) = std::env::var("VNFHOST_TSC_KHZ")
            .ok()
            .and_then(|v| v.parse().ok())
        {
            return Some(v);
        }
        measure_tsc_khz().or_else(cpuinfo_mhz_khz)
    })
}

fn measure_tsc_khz() -> Option<u64> {
    let mut samples = Vec::new();
    for _ in 0..3 {
        let (t0, c0) = (Instant::now(), pmd::sched::tsc());
        std::thread::sleep(Duration::from_millis(40));
        let (t1, c1) = (Instant::now(), pmd::sched::tsc());
        let ns = t1.duration_since(t0).as_nanos() as u64;
        if ns == 0 || c1 <= c0 {
            return None;
        }
        samples.push(((c1 - c0) as u128 * 1_000_000 / ns as u128) as u64);
    }
    samples.sort_unstable();
    Some(samples[1]).filter(|&khz| khz > 100_000)
}

fn cpuinfo_mhz_khz() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("cpu MHz"))?;
    let mhz: f64 = line.split(':').nth(1)?.trim().parse().ok()?;
    Some((mhz * 1000.0) as u64)
}
