//! Retry delays: exponential from an initial delay, capped, with ±20 %
//! jitter so that many clients failing together do not retry together.
//!
//! [`Backoff`] is the state of one retry loop; [`delay`] is the same rule
//! for a loop that counts its own attempts; [`nominal`] is the rule without
//! jitter.
//!
//! ```
//! use std::time::Duration;
//! use naming::backoff::{Backoff, delay, nominal};
//!
//! let ms = Duration::from_millis;
//! let mut b = Backoff::new(ms(1000), ms(10_000));
//! let first = b.next_delay();
//! assert!(first >= ms(800) && first <= ms(1200));
//! assert_eq!(b.failures(), 1);
//! b.reset();
//! assert_eq!(b.failures(), 0);
//!
//! assert_eq!(nominal(ms(100), 3, ms(10_000)), ms(800));
//! assert!(delay(ms(100), 30, ms(10_000)) <= ms(12_000));
//! ```

use std::time::Duration;

use rand::Rng;

/// Jitter as a fraction of the nominal delay: ±20 %.
pub const JITTER: f64 = 0.2;

/// `base · 2^attempt`, capped at `max` (attempt 0 is `base`); no jitter.
pub fn nominal(base: Duration, attempt: u32, max: Duration) -> Duration {
    base.saturating_mul(1 << attempt.min(31)).min(max)
}

/// [`nominal`] with ±20 % jitter: the delay before retry `attempt`
/// (0-based).
pub fn delay(base: Duration, attempt: u32, max: Duration) -> Duration {
    jitter(nominal(base, attempt, max))
}

/// `d` scaled by a random factor in `[0.8, 1.2]`.
pub fn jitter(d: Duration) -> Duration {
    jitter_with(&mut rand::rng(), d)
}

/// [`jitter`] drawing from `rng` (seed one for reproducible delays).
pub fn jitter_with(rng: &mut impl Rng, d: Duration) -> Duration {
    d.mul_f64(rng.random_range((1.0 - JITTER)..=(1.0 + JITTER)))
}

/// Exponential backoff with jitter; one per retry loop. The delay after
/// the first failure is `initial`, doubling per consecutive failure up to
/// `max`; a success ([`Backoff::reset`]) starts over.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    /// `initial` after the first failure, doubling up to `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max,
            failures: 0,
        }
    }

    /// The nominal (unjittered) delay after `failures` consecutive failures.
    pub fn nominal(&self, failures: u32) -> Duration {
        nominal(self.initial, failures.saturating_sub(1), self.max)
    }

    /// Counts a failure and returns how long to wait before the next try.
    /// (Not `next`: a `Backoff` is not an iterator.)
    pub fn next_delay(&mut self) -> Duration {
        self.next_delay_with(&mut rand::rng())
    }

    /// [`Backoff::next_delay`] drawing the jitter from `rng`.
    pub fn next_delay_with(&mut self, rng: &mut impl Rng) -> Duration {
        self.failures = self.failures.saturating_add(1);
        jitter_with(rng, self.nominal(self.failures))
    }

    /// Consecutive failures so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// A success: the next failure waits `initial` again.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use rand::{SeedableRng, rngs::StdRng};

    use super::*;

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn doubles_from_initial_and_caps() {
        let b = Backoff::new(secs(1.0), secs(10.0));
        let n: Vec<f64> = (1..=7).map(|f| b.nominal(f).as_secs_f64()).collect();
        assert_eq!(n, [1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0]);
        assert_eq!(b.nominal(0), secs(1.0));
        assert_eq!(b.nominal(u32::MAX), secs(10.0), "no overflow");
        assert_eq!(
            nominal(secs(1.0), u32::MAX, Duration::MAX),
            secs(f64::from(1u32 << 31))
        );
    }

    #[test]
    fn jitter_stays_within_twenty_percent() {
        let mut b = Backoff::new(secs(1.0), secs(10.0));
        for n in 1..=50u32 {
            let d = b.next_delay().as_secs_f64();
            let nom = b.nominal(n).as_secs_f64();
            assert!(d >= nom * 0.8 - 1e-9 && d <= nom * 1.2 + 1e-9, "{n}: {d}");
            let d = delay(secs(0.1), n, secs(10.0)).as_secs_f64();
            let nom = nominal(secs(0.1), n, secs(10.0)).as_secs_f64();
            assert!(d >= nom * 0.8 - 1e-9 && d <= nom * 1.2 + 1e-9, "{n}: {d}");
        }
        b.reset();
        assert!(b.next_delay() <= secs(1.2), "reset starts over");
    }

    #[test]
    fn seeded_delays_repeat_and_spread() {
        let run = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut b = Backoff::new(secs(1.0), secs(10.0));
            (0..20)
                .map(|_| b.next_delay_with(&mut rng))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
        // The jitter really spreads: not every factor is the same.
        let mut rng = StdRng::seed_from_u64(1);
        let f: Vec<_> = (0..20).map(|_| jitter_with(&mut rng, secs(1.0))).collect();
        assert!(f.iter().any(|d| *d < secs(0.95)) && f.iter().any(|d| *d > secs(1.05)));
    }
}
