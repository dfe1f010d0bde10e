//! Polling threads: one per core, pinned, each running a fixed task, with idle back-off.
//!
//! A polling loop calls its task over and over. While the task finds work it never
//! sleeps and makes no system call. After [`Backoff::spin_polls`] empty polls in a row
//! it sleeps, first 1 µs, doubling up to [`Backoff::max_sleep`], so an idle switch
//! leaves its core to others (on a 2-core machine the peer needs it); the first poll
//! that finds work resets the back-off. `max_sleep = 0` polls forever, DPDK style.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// Work a polling core does; `poll` returns how many frames it handled.
pub trait PollTask: Send {
    /// One round over the task's queues.
    fn poll(&mut self) -> usize;
}

/// Idle back-off of a polling loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// Empty polls before the first sleep.
    pub spin_polls: u32,
    /// The longest sleep; zero disables sleeping.
    pub max_sleep: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            spin_polls: 2048,
            max_sleep: Duration::from_micros(250),
        }
    }
}

/// Load of a polling core, read by the control plane.
#[derive(Default)]
pub struct CoreLoad {
    /// Polls that found work.
    pub busy_polls: AtomicU64,
    /// Polls that found none.
    pub idle_polls: AtomicU64,
    /// Sleeps taken.
    pub sleeps: AtomicU64,
    /// Time-stamp-counter cycles spent in polls that found work.
    pub busy_cycles: AtomicU64,
    /// Frames handled by those polls.
    pub packets: AtomicU64,
    /// Polls finished, stored after every poll (one relaxed store): what a watchdog
    /// reads to tell a core stuck inside one poll from a busy one.
    pub progress: AtomicU64,
}

impl CoreLoad {
    /// Cycles per frame over the polls that found work (what OVS calls processing
    /// cycles per packet); `None` before the first frame.
    pub fn cycles_per_packet(&self) -> Option<f64> {
        let p = self.packets.load(Ordering::Relaxed);
        (p > 0).then(|| self.busy_cycles.load(Ordering::Relaxed) as f64 / p as f64)
    }
}

/// The time-stamp counter (x86-64), or nanoseconds elsewhere.
#[inline]
pub fn tsc() -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        crate::sys::rdtsc()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        use std::sync::OnceLock;
        static START: OnceLock<std::time::Instant> = OnceLock::new();
        START
            .get_or_init(std::time::Instant::now)
            .elapsed()
            .as_nanos() as u64
    }
}

/// CPUs in the kernel's isolated set (`isolcpus=`), from sysfs.
pub fn isolated_cpus() -> Vec<usize> {
    std::fs::read_to_string("/sys/devices/system/cpu/isolated")
        .ok()
        .and_then(|s| parse_cpu_list(s.trim()).ok())
        .unwrap_or_default()
}

/// Parses a Linux CPU list such as `0-3,6`.
pub fn parse_cpu_list(s: &str) -> Result<Vec<usize>, String> {
    let mut out = Vec::new();
    if s.is_empty() {
        return Ok(out);
    }
    for part in s.split(',') {
        let part = part.trim();
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (a, b),
            None => (part, part),
        };
        let a: usize = a
            .parse()
            .map_err(|_| format!("bad CPU number {a:?} in {s:?}"))?;
        let b: usize = b
            .parse()
            .map_err(|_| format!("bad CPU number {b:?} in {s:?}"))?;
        if b < a || b - a > 4096 {
            return Err(format!("bad CPU range {part:?}"));
        }
        out.extend(a..=b);
    }
    Ok(out)
}

/// Number of CPUs online (not only those this thread's affinity allows: a polling
/// thread may be pinned to any of them).
pub fn online_cpus() -> usize {
    crate::sys::online_cpus().unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    })
}

/// Keeps the calling thread, and the threads it starts from now on, off `cpus` (the
/// polling cores), as DPDK keeps its control threads off its lcores: a control thread
/// that the scheduler puts on a polling core stalls that core's forwarding. Returns
/// false (and changes nothing) when no other CPU is left or the call fails.
pub fn keep_off(cpus: &[usize]) -> bool {
    let others: Vec<usize> = (0..online_cpus()).filter(|c| !cpus.contains(c)).collect();
    if others.is_empty() {
        return false;
    }
    crate::sys::set_thread_affinity(&others)
}

/// Starts a polling thread named `name` pinned to `core` (when given), running `task`
/// until `stop` is set.
pub fn spawn_poll_thread(
    name: String,
    core: Option<usize>,
    backoff: Backoff,
    mut task: Box<dyn PollTask>,
    stop: Arc<AtomicBool>,
    load: Arc<CoreLoad>,
) -> std::io::Result<JoinHandle<()>> {
    if let Some(c) = core {
        let iso = isolated_cpus();
        if !iso.contains(&c) {
            tracing::warn!(
                "{name}: core {c} is not in the kernel's isolated set ({}); other tasks may \
                 preempt the polling loop (boot with isolcpus= for line rate)",
                if iso.is_empty() {
                    "empty".to_string()
                } else {
                    format!("{iso:?}")
                }
            );
        }
    }
    std::thread::Builder::new()
        .name(name.clone())
        .spawn(move || {
            if let Some(c) = core {
                if !core_affinity::set_for_current(core_affinity::CoreId { id: c }) {
                    tracing::warn!("{name}: could not pin to core {c}; running unpinned");
                }
            }
            let mut idle = 0u32;
            let mut sleep_ns = 1_000u64;
            let max_ns = backoff.max_sleep.as_nanos() as u64;
            let (mut busy_n, mut idle_n, mut cycles, mut packets) = (0u64, 0u64, 0u64, 0u64);
            let publish = |busy_n, idle_n, cycles, packets| {
                load.busy_polls.store(busy_n, Ordering::Relaxed);
                load.idle_polls.store(idle_n, Ordering::Relaxed);
                load.busy_cycles.store(cycles, Ordering::Relaxed);
                load.packets.store(packets, Ordering::Relaxed);
            };
            while !stop.load(Ordering::Relaxed) {
                let t0 = tsc();
                let n = task.poll();
                load.progress.store(busy_n + idle_n + 1, Ordering::Relaxed);
                if n > 0 {
                    cycles += tsc().wrapping_sub(t0);
                    packets += n as u64;
                    busy_n += 1;
                    idle = 0;
                    sleep_ns = 1_000;
                } else {
                    idle_n += 1;
                    idle = idle.saturating_add(1);
                    if max_ns > 0 && idle > backoff.spin_polls {
                        publish(busy_n, idle_n, cycles, packets);
                        load.sleeps.fetch_add(1, Ordering::Relaxed);
                        std::thread::sleep(Duration::from_nanos(sleep_ns));
                        sleep_ns = (sleep_ns * 2).min(max_ns);
                    } else {
                        std::hint::spin_loop();
                    }
                }
                if (busy_n + idle_n).is_multiple_of(1024) {
                    publish(busy_n, idle_n, cycles, packets);
                }
            }
            publish(busy_n, idle_n, cycles, packets);
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0-3,6").expect("valid"), vec![0, 1, 2, 3, 6]);
        assert_eq!(parse_cpu_list("").expect("valid"), Vec::<usize>::new());
        assert!(parse_cpu_list("3-1").is_err());
        assert!(parse_cpu_list("x").is_err());
    }

    struct Count(Arc<AtomicU64>);
    impl PollTask for Count {
        fn poll(&mut self) -> usize {
            self.0.fetch_add(1, Ordering::Relaxed);
            0
        }
    }

    #[test]
    fn idle_loop_backs_off_and_stops() {
        let n = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let load = Arc::new(CoreLoad::default());
        let b = Backoff {
            spin_polls: 10,
            max_sleep: Duration::from_millis(1),
        };
        let h = spawn_poll_thread(
            "t".into(),
            None,
            b,
            Box::new(Count(n.clone())),
            stop.clone(),
            load.clone(),
        )
        .expect("spawn");
        std::thread::sleep(Duration::from_millis(100));
        stop.store(true, Ordering::Relaxed);
        h.join().expect("join");
        // An idle loop that backs off to 1 ms sleeps polls far fewer than a million
        // times in 100 ms, and it did sleep.
        assert!(
            n.load(Ordering::Relaxed) < 100_000,
            "polled {} times",
            n.load(Ordering::Relaxed)
        );
        assert!(load.sleeps.load(Ordering::Relaxed) > 10);
    }
}
