//! Rate limiting for log lines a guest or peer can trigger.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Lets one event through per interval and counts the ones it suppressed.
pub struct RateLimit {
    start: Instant,
    interval_ns: u64,
    next_ns: AtomicU64,
    suppressed: AtomicU64,
}

impl RateLimit {
    /// At most one event per `interval`.
    pub fn new(interval: Duration) -> RateLimit {
        RateLimit {
            start: Instant::now(),
            interval_ns: interval.as_nanos() as u64,
            next_ns: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(n)` when the caller may log now (`n` events were suppressed since the last
    /// one), `None` when it must stay quiet.
    pub fn check(&self) -> Option<u64> {
        let now = self.start.elapsed().as_nanos() as u64;
        let next = self.next_ns.load(Ordering::Relaxed);
        if now >= next
            && self
                .next_ns
                .compare_exchange(
                    next,
                    now + self.interval_ns,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lets_one_through_per_interval() {
        let r = RateLimit::new(Duration::from_secs(3600));
        assert_eq!(r.check(), Some(0));
        assert_eq!(r.check(), None);
        assert_eq!(r.check(), None);
    }
}
