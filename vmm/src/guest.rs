//! What a Linux guest needs from the host: the default kernel command line, and the
//! workload's exit status read from the console.

use std::io::Write;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, OnceLock};
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

/// What `vnfhost-init` prints on the console when the workload (`vnf.run=`) has ended,
/// followed by its exit status (0 to 255; 128 + N for signal N) and a newline, just
/// before it powers the VM off.
pub const WORKLOAD_EXIT: &str = "VNFHOST-WORKLOAD-EXIT status=";

/// Whether the kernel command line asks the guest's init to run a workload
/// (`vnf.run=`): such a VM ends with the workload's exit status.
pub fn runs_workload(cmdline: &str) -> bool {
    cmdline.contains("vnf.run=")
}

/// The workload's exit status once the console said it; shared by a [`StatusScan`] and
/// whoever waits for the VM.
#[derive(Clone, Debug, Default)]
pub struct WorkloadStatus(Arc<AtomicI32>);

impl WorkloadStatus {
    /// No status seen yet.
    pub fn new() -> WorkloadStatus {
        WorkloadStatus(Arc::new(AtomicI32::new(-1)))
    }

    /// The status of the last [`WORKLOAD_EXIT`] line, if one was seen.
    pub fn get(&self) -> Option<u8> {
        u8::try_from(self.0.load(Ordering::Acquire)).ok()
    }

    fn set(&self, s: u8) {
        self.0.store(i32::from(s), Ordering::Release);
    }
}

/// The status in one console line, if it is a [`WORKLOAD_EXIT`] line.
pub fn parse_workload_exit(line: &[u8]) -> Option<u8> {
    let line = std::str::from_utf8(line).ok()?;
    let rest = &line[line.find(WORKLOAD_EXIT)? + WORKLOAD_EXIT.len()..];
    let digits = rest.trim_end_matches(['\r', '\n', ' ']);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// A console writer that passes everything to `inner` unchanged and records, in a
/// [`WorkloadStatus`], the status of each [`WORKLOAD_EXIT`] line that goes through.
pub struct StatusScan<W: Write> {
    inner: W,
    line: Vec<u8>,
    /// The current line is longer than [`MAX_LINE`]: not a marker line.
    long: bool,
    status: WorkloadStatus,
}

/// Longest console line looked at: a marker line is short, and a longer line is not one.
const MAX_LINE: usize = 256;

impl<W: Write> StatusScan<W> {
    /// Writes to `inner`, recording into `status`.
    pub fn new(inner: W, status: WorkloadStatus) -> StatusScan<W> {
        StatusScan {
            inner,
            line: Vec::with_capacity(MAX_LINE),
            long: false,
            status,
        }
    }

    fn scan(&mut self, buf: &[u8]) {
        for &b in buf {
            if b == b'\n' {
                if let Some(s) = parse_workload_exit(&self.line).filter(|_| !self.long) {
                    self.status.set(s);
                }
                self.line.clear();
                self.long = false;
            } else if self.line.len() < MAX_LINE {
                self.line.push(b);
            } else {
                self.long = true;
            }
        }
    }
}

impl<W: Write> Write for StatusScan<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.scan(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_marker_line_gives_the_status() {
        let st = WorkloadStatus::new();
        let mut out = Vec::new();
        let mut w = StatusScan::new(&mut out, st.clone());
        w.write_all(b"booting\r\nVNFHOST-GUEST-READY\r\n").unwrap();
        assert_eq!(st.get(), None);
        // Split across writes, as a serial port sends it.
        w.write_all(b"VNFHOST-WORKLOAD-EX").unwrap();
        w.write_all(b"IT status=3\r").unwrap();
        assert_eq!(st.get(), None, "not before the line ends");
        w.write_all(b"\n[ 1.0] reboot: Power down\r\n").unwrap();
        assert_eq!(st.get(), Some(3));
        w.write_all(b"VNFHOST-WORKLOAD-EXIT status=0\n").unwrap();
        assert_eq!(st.get(), Some(0));
        drop(w);
        assert!(out.starts_with(b"booting\r\n"), "passed on unchanged");
    }

    #[test]
    fn not_a_status() {
        for l in [
            &b"VNFHOST-WORKLOAD-EXIT status="[..],
            b"VNFHOST-WORKLOAD-EXIT status=-1",
            b"VNFHOST-WORKLOAD-EXIT status=256",
            b"VNFHOST-WORKLOAD-EXIT status=3x",
            b"echo VNFHOST-WORKLOAD-EXIT",
        ] {
            assert_eq!(
                parse_workload_exit(l),
                None,
                "{}",
                String::from_utf8_lossy(l)
            );
        }
        assert_eq!(
            parse_workload_exit(b"VNFHOST-WORKLOAD-EXIT status=127\r"),
            Some(127)
        );
        let st = WorkloadStatus::new();
        let mut w = StatusScan::new(std::io::sink(), st.clone());
        let long = format!("{}VNFHOST-WORKLOAD-EXIT status=1\n", "x".repeat(MAX_LINE));
        w.write_all(long.as_bytes()).unwrap();
        assert_eq!(st.get(), None, "a cut line is not read");
    }

    #[test]
    fn workload_on_the_command_line() {
        assert!(runs_workload("console=ttyS0 \"vnf.run=exit 3\""));
        assert!(!runs_workload("console=ttyS0 vnf.ip=10.0.0.1/24"));
    }
}
