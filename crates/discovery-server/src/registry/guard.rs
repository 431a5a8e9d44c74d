//! Self-preservation: the renew-rate guard that stops eviction when renews
//! vanish (a network cut looks exactly like every client dying at once).

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};

/// Expected and actual renew counts of the last eviction tick.
#[derive(Debug)]
pub(crate) struct Guard {
    per_tick: i64,
    threshold: f64,
    enabled: bool,
    /// E: renews expected per tick.
    expected: AtomicI64,
    /// Renews counted since the last tick.
    current: AtomicU64,
    /// R: renews of the previous tick.
    last: AtomicU64,
    protected: AtomicBool,
}

/// A consistent view of the guard, for logs, metrics and `/nodes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct GuardState {
    /// E: renews expected per tick.
    pub expected: i64,
    /// T = floor(E × threshold).
    pub threshold: i64,
    /// R: renews counted in the previous tick.
    pub renews: u64,
    /// Whether eviction of lease-expired instances is suspended.
    pub protected: bool,
}

impl Guard {
    pub(crate) fn new(per_tick: i64, threshold: f64, enabled: bool) -> Self {
        Guard {
            per_tick: per_tick.max(1),
            threshold,
            enabled,
            expected: AtomicI64::new(0),
            current: AtomicU64::new(0),
            last: AtomicU64::new(0),
            protected: AtomicBool::new(false),
        }
    }

    /// A new key appeared: it will renew `per_tick` times per tick.
    pub(crate) fn key_added(&self) {
        self.expected.fetch_add(self.per_tick, Ordering::Relaxed);
    }

    /// A key went (cancel or eviction).
    pub(crate) fn key_removed(&self) {
        let _ = self
            .expected
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |e| {
                Some((e - self.per_tick).max(0))
            });
    }

    /// Re-bases E on the current number of instances.
    pub(crate) fn reset(&self, instances: usize) {
        let n = i64::try_from(instances).unwrap_or(i64::MAX);
        self.expected
            .store(n.saturating_mul(self.per_tick), Ordering::Relaxed);
    }

    pub(crate) fn renewed(&self) {
        self.current.fetch_add(1, Ordering::Relaxed);
    }

    /// Starts a new tick: R becomes the renews counted since the previous
    /// one, and the protection decision is made from it.
    pub(crate) fn roll(&self) -> GuardState {
        let r = self.current.swap(0, Ordering::Relaxed);
        self.last.store(r, Ordering::Relaxed);
        let mut state = self.state();
        state.protected = self.enabled && i64::try_from(r).unwrap_or(i64::MAX) < state.threshold;
        self.protected.store(state.protected, Ordering::Relaxed);
        state
    }

    /// Current counts, with the decision of the last tick.
    pub(crate) fn state(&self) -> GuardState {
        let expected = self.expected.load(Ordering::Relaxed);
        // Truncation is the rule: E = 20 → T = 17.
        let threshold = (expected as f64 * self.threshold).floor() as i64;
        GuardState {
            expected,
            threshold,
            renews: self.last.load(Ordering::Relaxed),
            protected: self.protected.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn is_protected(&self) -> bool {
        self.protected.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard_with(expected_keys: i64, renews: u64) -> Guard {
        let g = Guard::new(2, 0.85, true);
        for _ in 0..expected_keys {
            g.key_added();
        }
        for _ in 0..renews {
            g.renewed();
        }
        g
    }

    #[test]
    fn threshold_truncates() {
        let g = guard_with(10, 0);
        assert_eq!(g.roll().threshold, 17);
    }

    #[test]
    fn protection_is_strictly_below_threshold() {
        // E = 4, R = 1 → T = 3, protected.
        assert!(guard_with(2, 1).roll().protected);
        // E = 2, R = 1 → T = 1, not protected.
        assert!(!guard_with(1, 1).roll().protected);
    }

    #[test]
    fn disabled_guard_never_protects() {
        let g = Guard::new(2, 0.85, false);
        g.key_added();
        assert!(!g.roll().protected);
    }

    #[test]
    fn expected_never_goes_negative() {
        let g = Guard::new(2, 0.85, true);
        g.key_removed();
        assert_eq!(g.state().expected, 0);
        g.reset(3);
        assert_eq!(g.state().expected, 6);
    }
}
