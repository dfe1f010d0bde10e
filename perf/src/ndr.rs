//! RFC 2544 throughput by binary search, the FD.io CSIT way: NDR (no loss at all) and
//! PDR (loss ≤ 0.5 %), each the highest fixed rate whose trial meets its criterion,
//! found by halving the interval between a passing and a failing rate until it is
//! narrower than `precision` of the upper bound.

use std::time::Duration;

use crate::gen::{Generator, Trial};

/// Search settings.
#[derive(Clone, Copy, Debug)]
pub struct NdrConfig {
    /// Length of each search trial.
    pub trial: Duration,
    /// Stop when (hi − lo) / hi is below this.
    pub precision: f64,
    /// Loss ratio PDR allows.
    pub pdr_loss: f64,
    /// Most trials per search.
    pub max_trials: u32,
}

impl Default for NdrConfig {
    fn default() -> Self {
        NdrConfig {
            trial: Duration::from_secs(2),
            precision: 0.02,
            pdr_loss: 0.005,
            max_trials: 10,
        }
    }
}

/// Highest rate (frames/s) at or below `upper` whose trial loses at most `max_loss`;
/// 0 when even the lowest tried rate fails.
pub fn search(
    g: &mut Generator,
    upper: f64,
    max_loss: f64,
    cfg: &NdrConfig,
    log: &mut dyn FnMut(f64, &Trial),
) -> f64 {
    let (mut lo, mut hi) = (0.0f64, upper);
    // Try the upper bound first: a DUT that forwards everything at its own maximum
    // receive rate needs no search.
    let mut rate = upper;
    for _ in 0..cfg.max_trials {
        let t = g.run_at(cfg.trial, Some(rate), None);
        log(rate, &t);
        if t.loss_ratio() <= max_loss {
            lo = rate;
        } else {
            hi = rate;
        }
        if lo >= upper || (hi - lo) / hi < cfg.precision {
            break;
        }
        rate = (lo + hi) / 2.0;
    }
    lo
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_csit() {
        let c = NdrConfig::default();
        assert_eq!(c.pdr_loss, 0.005);
        assert!(c.precision > 0.0 && c.precision < 0.1);
    }
}
