//! Delay between failing polls (spec §4.1): 1 s, doubling per consecutive
//! failure, ±20 % jitter, capped at 10 s, reset by any decoded answer.
//!
//! ```
//! use std::time::Duration;
//! use discovery_client::backoff::Backoff;
//!
//! let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(10));
//! let first = b.next_delay();
//! assert!(first >= Duration::from_millis(800) && first <= Duration::from_millis(1200));
//! b.reset();
//! assert_eq!(b.failures(), 0);
//! ```

use std::time::Duration;

/// Jitter as a fraction of the nominal delay.
const JITTER: f64 = 0.2;

/// Exponential backoff with jitter; one per retry loop.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    /// `base` after the first failure, doubling up to `max`.
    pub fn new(base: Duration, max: Duration) -> Self {
        Backoff {
            base,
            max,
            failures: 0,
        }
    }

    /// The nominal (unjittered) delay after `failures` consecutive failures.
    pub fn nominal(&self, failures: u32) -> Duration {
        let shift = failures.saturating_sub(1).min(31);
        self.base.saturating_mul(1 << shift).min(self.max)
    }

    /// Counts a failure and returns how long to wait before the next try.
    pub fn next_delay(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let factor = rand::random_range((1.0 - JITTER)..=(1.0 + JITTER));
        self.nominal(self.failures).mul_f64(factor)
    }

    /// Consecutive failures so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// A success: the next failure waits `base` again.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn doubles_from_one_second_and_caps_at_ten() {
        let b = Backoff::new(secs(1.0), secs(10.0));
        let nominal: Vec<f64> = (1..=7).map(|n| b.nominal(n).as_secs_f64()).collect();
        assert_eq!(nominal, [1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0]);
        assert_eq!(b.nominal(u32::MAX), secs(10.0), "no overflow");
    }

    #[test]
    fn jitter_stays_within_twenty_percent() {
        let mut b = Backoff::new(secs(1.0), secs(10.0));
        for n in 1..=50u32 {
            let d = b.next_delay().as_secs_f64();
            let nominal = b.nominal(n).as_secs_f64();
            assert!(
                d >= nominal * 0.8 - 1e-9 && d <= nominal * 1.2 + 1e-9,
                "{n}: {d}"
            );
        }
        b.reset();
        let d = b.next_delay();
        assert!(d <= secs(1.2), "reset starts over: {d:?}");
    }

    /// The delays, slept on tokio's paused clock, add up as the spec says:
    /// 1 + 2 + 4 + 8 + 10 s nominal, ±20 %.
    #[tokio::test(start_paused = true)]
    async fn sleeping_the_schedule_on_a_paused_clock() {
        let mut b = Backoff::new(secs(1.0), secs(10.0));
        let start = tokio::time::Instant::now();
        for _ in 0..5 {
            tokio::time::sleep(b.next_delay()).await;
        }
        let total = start.elapsed().as_secs_f64();
        assert!((25.0 * 0.8..=25.0 * 1.2).contains(&total), "{total}");
    }
}
