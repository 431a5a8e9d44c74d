//! Passive health: ejection of endpoints whose calls fail below gRPC or
//! whose connection ends (a reset, a GOAWAY, an unanswered keepalive ping).
//!
//! The k-th consecutive transport failure ejects an endpoint for
//! `min(100 ms × 2^(k−1), 10 s)`. When that time is up the balancer probes
//! the endpoint with a fresh connection that must answer one request; a
//! successful probe re-admits it, a failed one counts as the next failure. Only a successful call resets `k`,
//! so an endpoint that accepts connections but fails calls backs off further
//! every time. A lost connection of an endpoint whose calls were succeeding
//! (k = 1: a server closing idle or old connections) is probed at once.
//!
//! ```
//! use std::time::Duration;
//! use discovery_tonic::health::{Ejection, ejection_backoff};
//! use tokio::time::Instant;
//!
//! assert_eq!(ejection_backoff(1), Duration::from_millis(100));
//! assert_eq!(ejection_backoff(4), Duration::from_millis(800));
//! assert_eq!(ejection_backoff(30), Duration::from_secs(10));
//!
//! let now = Instant::now();
//! let mut e = Ejection::default();
//! assert_eq!(e.fail(now), Duration::from_millis(100));
//! assert!(e.is_ejected());
//! e.readmit();
//! assert!(!e.is_ejected());
//! assert_eq!(e.fail(now), Duration::from_millis(200), "k is kept until a call succeeds");
//! e.succeed();
//! assert_eq!(e.failures(), 0);
//! ```

use std::time::Duration;

use tokio::time::Instant;

/// First ejection.
pub const EJECT_MIN: Duration = Duration::from_millis(100);
/// Longest ejection.
pub const EJECT_MAX: Duration = Duration::from_secs(10);

/// `min(100 ms × 2^(k−1), 10 s)` for the k-th consecutive failure (k ≥ 1):
/// [`naming::backoff::nominal`], without jitter.
pub fn ejection_backoff(k: u32) -> Duration {
    naming::backoff::nominal(EJECT_MIN, k.saturating_sub(1), EJECT_MAX)
}

/// The ejection state of one endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ejection {
    failures: u32,
    until: Option<Instant>,
}

impl Ejection {
    /// Records a transport failure at `now`; returns the ejection's length.
    pub fn fail(&mut self, now: Instant) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let d = ejection_backoff(self.failures);
        self.until = Some(now + d);
        d
    }

    /// Keeps the endpoint ejected but lets its probe run at `now` (a lost
    /// connection of an endpoint that was serving); returns zero.
    pub fn probe_at(&mut self, now: Instant) -> Duration {
        self.until = Some(now);
        Duration::ZERO
    }

    /// Records a successful call: back to healthy, `k` reset.
    pub fn succeed(&mut self) {
        self.failures = 0;
        self.until = None;
    }

    /// A probe succeeded: the endpoint takes calls again; `k` is kept.
    pub fn readmit(&mut self) {
        self.until = None;
    }

    /// Whether the endpoint is out of rotation (until a probe re-admits it).
    pub fn is_ejected(&self) -> bool {
        self.until.is_some()
    }

    /// When the current ejection ends and a probe may run.
    pub fn until(&self) -> Option<Instant> {
        self.until
    }

    /// Consecutive failures so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn ejections_double_up_to_ten_seconds() {
        let mut e = Ejection::default();
        let mut seen = Vec::new();
        for _ in 0..10 {
            let now = Instant::now();
            let d = e.fail(now);
            assert_eq!(e.until(), Some(now + d));
            tokio::time::sleep_until(e.until().unwrap()).await;
            assert_eq!(Instant::now() - now, d);
            seen.push(d.as_millis());
        }
        assert_eq!(
            seen,
            [100, 200, 400, 800, 1600, 3200, 6400, 10_000, 10_000, 10_000]
        );
        e.succeed();
        assert_eq!(e.fail(Instant::now()), Duration::from_millis(100));
    }
}
