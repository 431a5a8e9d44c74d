//! Latency recording (HDR histograms in microseconds) and the summary every
//! scenario reports: operations per second, p50, p99 and max.
//!
//! ```
//! use std::time::Duration;
//! use loadgen::stats::Recorder;
//!
//! let mut r = Recorder::new();
//! r.record(Duration::from_micros(120));
//! r.record(Duration::from_micros(80));
//! let s = r.summary(Duration::from_secs(1));
//! assert_eq!(s.ops, 2);
//! assert_eq!(s.ops_per_s, 2.0);
//! ```

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Highest latency the histograms track: a minute, in microseconds. Longer
/// samples are clamped to it.
const MAX_US: u64 = 60_000_000;

/// Collects latencies (and errors) of one worker or one scenario.
#[derive(Debug, Clone)]
pub struct Recorder {
    hist: Histogram<u64>,
    errors: u64,
    bytes: u64,
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

impl Recorder {
    /// An empty recorder with three significant digits.
    pub fn new() -> Self {
        Recorder {
            hist: Histogram::new_with_bounds(1, MAX_US, 3).expect("valid histogram bounds"),
            errors: 0,
            bytes: 0,
        }
    }

    /// Records one successful operation's latency.
    pub fn record(&mut self, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(MAX_US);
        self.hist.saturating_record(us.clamp(1, MAX_US));
    }

    /// Adds the size of one answer's body.
    pub fn bytes(&mut self, n: usize) {
        self.bytes += n as u64;
    }

    /// Counts one failed operation (wrong status, wrong code, I/O error).
    pub fn error(&mut self) {
        self.errors += 1;
    }

    /// Adds another recorder's samples and errors to this one.
    pub fn merge(&mut self, other: &Recorder) {
        self.hist
            .add(&other.hist)
            .expect("histograms share their bounds");
        self.errors += other.errors;
        self.bytes += other.bytes;
    }

    /// Number of successful operations recorded.
    pub fn len(&self) -> u64 {
        self.hist.len()
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.hist.is_empty()
    }

    /// The summary over `elapsed` wall time.
    pub fn summary(&self, elapsed: Duration) -> Summary {
        let ops = self.hist.len();
        let secs = elapsed.as_secs_f64();
        let q = |q: f64| {
            if ops == 0 {
                0.0
            } else {
                self.hist.value_at_quantile(q) as f64 / 1000.0
            }
        };
        Summary {
            ops,
            errors: self.errors,
            secs,
            ops_per_s: if secs > 0.0 { ops as f64 / secs } else { 0.0 },
            p50_ms: q(0.5),
            p99_ms: q(0.99),
            max_ms: if ops == 0 {
                0.0
            } else {
                self.hist.max() as f64 / 1000.0
            },
            mean_body_bytes: self.bytes.checked_div(ops).unwrap_or(0),
        }
    }
}

/// What one scenario measured.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Summary {
    /// Successful operations.
    pub ops: u64,
    /// Failed operations.
    pub errors: u64,
    /// Wall time the operations took, in seconds.
    pub secs: f64,
    /// Successful operations per second.
    pub ops_per_s: f64,
    /// Median latency, milliseconds.
    pub p50_ms: f64,
    /// 99th percentile latency, milliseconds.
    pub p99_ms: f64,
    /// Largest latency, milliseconds.
    pub max_ms: f64,
    /// Mean size of an answer's body, when the driver counted it.
    pub mean_body_bytes: u64,
}

/// `value / reference`, or `None` when the reference is not positive.
pub fn ratio(value: f64, reference: f64) -> Option<f64> {
    (reference > 0.0).then(|| value / reference)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_of_uniform_latencies() {
        let mut r = Recorder::new();
        for ms in 1..=100u64 {
            r.record(Duration::from_millis(ms));
        }
        let s = r.summary(Duration::from_secs(2));
        assert_eq!(s.ops, 100);
        assert_eq!(s.errors, 0);
        assert!((s.ops_per_s - 50.0).abs() < 1e-9);
        // Three significant digits: within 0.1 % of the exact value.
        assert!((s.p50_ms - 50.0).abs() < 0.1, "{s:?}");
        assert!((s.p99_ms - 99.0).abs() < 0.1, "{s:?}");
        assert!((s.max_ms - 100.0).abs() < 0.1, "{s:?}");
    }

    #[test]
    fn merge_adds_samples_and_errors() {
        let mut a = Recorder::new();
        a.record(Duration::from_micros(10));
        a.error();
        let mut b = Recorder::new();
        b.record(Duration::from_micros(30));
        b.error();
        a.merge(&b);
        let s = a.summary(Duration::from_secs(1));
        assert_eq!((s.ops, s.errors), (2, 2));
        assert!((s.max_ms - 0.030).abs() < 1e-6);
    }

    #[test]
    fn empty_and_out_of_range() {
        let s = Recorder::new().summary(Duration::ZERO);
        assert_eq!((s.ops, s.ops_per_s, s.p99_ms, s.max_ms), (0, 0.0, 0.0, 0.0));
        let mut r = Recorder::new();
        r.record(Duration::from_secs(3600));
        r.record(Duration::ZERO);
        assert_eq!(r.len(), 2);
        assert!((r.summary(Duration::from_secs(1)).max_ms - 60_000.0).abs() < 60.0);
    }

    #[test]
    fn ratios() {
        assert_eq!(ratio(1.0, 4.0), Some(0.25));
        assert_eq!(ratio(1.0, 0.0), None);
    }
}
