//! Latency under load for vnfhost: the method, apart from the traffic that feeds it.
//!
//! A latency figure means little without the load it was taken at. Following FD.io
//! CSIT, latency is measured at fixed fractions (10, 50 and 90 %) of the zero-loss rate
//! (NDR) that a throughput search found first, each frame's one-way latency recorded in
//! an HDR histogram (nanoseconds, 3 significant digits), and summarised as percentiles
//! and a CDF with its points denser towards the tail, where switches differ.
//!
//! The traffic comes from whoever drives the switch from outside: `perf`'s generator
//! (pmd's virtio-user port, a TSC stamp in every frame) calls
//! [`at_fractions_of_ndr`] with a closure that runs one fixed-rate trial, which is how
//! `vnfhost bench p2p --ndr` produces its latency table and CDF plot.
//!
//! Not built yet: guest-to-guest round trips through pod VMs, and jitter over long
//! runs.

use hdrhistogram::Histogram;

/// The fractions of NDR at which latency is measured (as FD.io CSIT does).
pub const NDR_FRACTIONS: [f64; 3] = [0.1, 0.5, 0.9];

/// The lowest rate a latency trial offers, frames/s: a DUT whose NDR search found
/// (almost) nothing is still measured at a trickle instead of not at all.
pub const MIN_RATE: f64 = 1000.0;

/// Latency percentiles of one fixed-rate trial, in microseconds.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Latency {
    /// Offered rate as a fraction of NDR.
    pub fraction: f64,
    /// Frames whose latency was recorded; every figure below is 0 when there were none.
    pub samples: u64,
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest.
    pub max: f64,
    /// (fraction of frames, latency in µs) points of the CDF.
    pub cdf: Vec<(f64, f64)>,
}

/// An empty histogram for one-way latencies in nanoseconds: 1 ns to 10 s at three
/// significant digits (about 200 KB, allocated once per trial, never while frames
/// flow).
pub fn histogram() -> Histogram<u64> {
    // The bounds are constants that satisfy hdrhistogram's rules (low >= 1,
    // high >= 2 * low, 0..=5 significant digits), so this cannot fail.
    Histogram::new_with_bounds(1, 10_000_000_000, 3).expect("constant, valid bounds")
}

/// Quantiles of the CDF points: every 2.5 % up to 90 %, then 95, 99, 99.9 and 100 %.
fn cdf_quantiles() -> impl Iterator<Item = f64> {
    (0..=36)
        .map(|k| f64::from(k) / 40.0)
        .chain([0.95, 0.99, 0.999, 1.0])
}

impl Latency {
    /// Summarises histogram `h` (nanoseconds) of a trial offered at `fraction` of NDR.
    pub fn from_histogram(fraction: f64, h: &Histogram<u64>) -> Latency {
        let samples = h.len();
        if samples == 0 {
            return Latency {
                fraction,
                ..Latency::default()
            };
        }
        let us = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        Latency {
            fraction,
            samples,
            p50: us(0.5),
            p99: us(0.99),
            p999: us(0.999),
            max: h.max() as f64 / 1000.0,
            cdf: cdf_quantiles().map(|q| (q, us(q))).collect(),
        }
    }
}

/// Measures latency at each of `fractions` of `ndr` (frames/s, at least [`MIN_RATE`]):
/// `trial(rate, histogram)` runs one fixed-rate trial and records every returned
/// frame's one-way latency in nanoseconds into the histogram it is given.
pub fn at_fractions_of_ndr(
    ndr: f64,
    fractions: &[f64],
    mut trial: impl FnMut(f64, &mut Histogram<u64>),
) -> Vec<Latency> {
    fractions
        .iter()
        .map(|&fraction| {
            let mut h = histogram();
            trial((ndr * fraction).max(MIN_RATE), &mut h);
            Latency::from_histogram(fraction, &h)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_known_distribution() {
        let mut h = histogram();
        // 1..=1000 µs, one frame each.
        for us in 1..=1000u64 {
            h.record(us * 1000).expect("in range");
        }
        let l = Latency::from_histogram(0.5, &h);
        assert_eq!(l.samples, 1000);
        assert!((l.p50 - 500.0).abs() <= 1.0, "p50 {}", l.p50);
        assert!((l.p99 - 990.0).abs() <= 1.0, "p99 {}", l.p99);
        assert!((l.max - 1000.0).abs() <= 1.0, "max {}", l.max);
        // The CDF starts at the smallest value, ends at the largest and never falls.
        assert_eq!(l.cdf.first().map(|p| p.0), Some(0.0));
        assert_eq!(l.cdf.last().map(|p| p.0), Some(1.0));
        assert!(l
            .cdf
            .windows(2)
            .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1));
        assert!((l.cdf.last().map_or(0.0, |p| p.1) - l.max).abs() <= 1.0);
    }

    #[test]
    fn an_empty_trial_says_so_instead_of_reporting_zero_latency() {
        let l = Latency::from_histogram(0.1, &histogram());
        assert_eq!(l.samples, 0);
        assert!(l.cdf.is_empty());
    }

    #[test]
    fn trials_run_at_each_fraction_of_ndr_and_never_below_the_floor() {
        let mut rates = Vec::new();
        let out = at_fractions_of_ndr(2_000_000.0, &NDR_FRACTIONS, |r, h| {
            rates.push(r);
            h.record(1500).expect("in range");
        });
        assert_eq!(rates, vec![200_000.0, 1_000_000.0, 1_800_000.0]);
        assert_eq!(
            out.iter().map(|l| l.fraction).collect::<Vec<_>>(),
            NDR_FRACTIONS
        );
        assert!(out
            .iter()
            .all(|l| l.samples == 1 && (l.p50 - 1.5).abs() < 0.01));
        let mut low = Vec::new();
        at_fractions_of_ndr(0.0, &[0.1], |r, _| low.push(r));
        assert_eq!(low, vec![MIN_RATE]);
    }
}
