//! The node's clock: wall-clock nanoseconds that advance with tokio's
//! clock (so tests can pause both), made hybrid-logical so that timestamp
//! comparisons between nodes stay right when their clocks disagree.
//!
//! Every write carries a timestamp from the node that accepted it: the
//! `dirty_timestamp` of a register or set, the time of a cancel. Peers
//! compare them (the register rule keeps the newer copy; a cancel tombstone
//! refuses copies older than the cancel). With plain wall clocks a node
//! whose clock lags would stamp a re-register *after* a cancel with an
//! *earlier* time, and its peers would refuse it.
//!
//! So the clock never reads earlier than a timestamp this node has already
//! seen from a peer: [`Clock::observe`] raises a floor, and [`Clock::now`]
//! is `max(wall time, floor)`. A write that causally follows another (the
//! cancel reached this node before the re-register did) therefore always
//! carries a larger timestamp, whatever the clocks say. Timestamps further
//! ahead than [`Clock::max_skew`] are not observed: one peer with a clock
//! far in the future must not drag every node's clock along.
//!
//! ```
//! use discovery_server::clock::Clock;
//! use std::time::Duration;
//!
//! let clock = Clock::new();
//! let peer_ahead = clock.now() + 2_000_000_000; // a peer 2 s ahead
//! assert!(clock.observe(peer_ahead));
//! assert!(clock.now() > peer_ahead, "a later write sorts after what we saw");
//! let far = clock.now() + Duration::from_secs(3600).as_nanos() as i64;
//! assert!(!clock.observe(far), "an hour ahead is not followed");
//! ```

use std::{
    sync::{
        Arc,
        atomic::{AtomicI64, AtomicU64, Ordering},
    },
    time::Duration,
};

/// How far ahead of our wall time a peer's timestamp may be and still be
/// followed.
pub const DEFAULT_MAX_SKEW: Duration = Duration::from_secs(5);

#[derive(Debug)]
struct Inner {
    wall0: i64,
    mono0: tokio::time::Instant,
    /// Added to the wall clock: simulates a skewed host in tests.
    offset: i64,
    max_skew: i64,
    /// One past the largest timestamp observed from a peer.
    floor: AtomicI64,
    /// Timestamps too far ahead to follow.
    refused: AtomicU64,
}

/// A hybrid logical clock in Unix nanoseconds; cheap to clone and shared by
/// everything of one node.
#[derive(Debug, Clone)]
pub struct Clock {
    inner: Arc<Inner>,
}

impl Clock {
    /// A clock anchored at the current wall time.
    pub fn new() -> Self {
        Self::with_offset(0, DEFAULT_MAX_SKEW)
    }

    /// A clock that reads `offset_nanos` away from the host's wall time
    /// (fault-injection tests: a host whose clock is off), following peers'
    /// timestamps at most `max_skew` ahead.
    pub fn with_offset(offset_nanos: i64, max_skew: Duration) -> Self {
        let wall0 = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
        Clock {
            inner: Arc::new(Inner {
                wall0,
                mono0: tokio::time::Instant::now(),
                offset: offset_nanos,
                max_skew: i64::try_from(max_skew.as_nanos()).unwrap_or(i64::MAX),
                floor: AtomicI64::new(0),
                refused: AtomicU64::new(0),
            }),
        }
    }

    /// This host's wall time (plus the test offset), ignoring peers.
    pub fn physical(&self) -> i64 {
        let i = &self.inner;
        let elapsed = i64::try_from(i.mono0.elapsed().as_nanos()).unwrap_or(i64::MAX);
        i.wall0.saturating_add(elapsed).saturating_add(i.offset)
    }

    /// The host's wall clock now (plus the test offset), in Unix
    /// milliseconds, read afresh so that it follows NTP corrections: what
    /// peer signatures are stamped and checked with.
    pub fn wall_ms(&self) -> i64 {
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        wall.saturating_add(self.inner.offset / 1_000_000)
    }

    /// Whether a peer's timestamp lies further in the future than any
    /// honest node's could: beyond `max_skew` plus a minute of margin for
    /// clocks that lead and nodes that follow them. Such a value would pin
    /// an instance forever (every later write sorts before it).
    pub fn is_implausible(&self, ts: i64) -> bool {
        ts.saturating_sub(self.physical()) > self.inner.max_skew.saturating_add(60_000_000_000)
    }

    /// Nanoseconds since the Unix epoch, never earlier than a timestamp
    /// already observed from a peer.
    pub fn now(&self) -> i64 {
        self.physical()
            .max(self.inner.floor.load(Ordering::Relaxed))
    }

    /// Takes note of a timestamp a peer stamped, so that our next writes
    /// sort after it. Returns `false` (and follows nothing) for a
    /// timestamp more than [`Clock::max_skew`] ahead of our wall time.
    pub fn observe(&self, ts: i64) -> bool {
        if ts <= 0 {
            return true;
        }
        if ts.saturating_sub(self.physical()) > self.inner.max_skew {
            self.inner.refused.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        self.inner
            .floor
            .fetch_max(ts.saturating_add(1), Ordering::Relaxed);
        true
    }

    /// How far ahead a peer's timestamp is followed.
    pub fn max_skew(&self) -> Duration {
        Duration::from_nanos(u64::try_from(self.inner.max_skew).unwrap_or(0))
    }

    /// How far this clock reads ahead of the host's wall time because of
    /// peers' timestamps (0 when our own clock leads).
    pub fn lead(&self) -> Duration {
        let ahead = self.now() - self.physical();
        Duration::from_nanos(u64::try_from(ahead).unwrap_or(0))
    }

    /// Peer timestamps that were too far ahead to follow.
    pub fn refused(&self) -> u64 {
        self.inner.refused.load(Ordering::Relaxed)
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn follows_a_peer_ahead_and_falls_back_to_wall_time() {
        let c = Clock::new();
        let t0 = c.now();
        assert!(c.observe(t0 + 2_000_000_000));
        assert_eq!(c.now(), t0 + 2_000_000_001);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(c.now(), t0 + 2_000_000_001, "the floor still leads");
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(c.now(), c.physical(), "wall time caught up");
        assert_eq!(c.lead(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn an_offset_clock_reads_off_by_the_offset() {
        let base = Clock::new();
        let lag = Clock::with_offset(-2_000_000_000, DEFAULT_MAX_SKEW);
        let d = base.now() - lag.now();
        assert!((1_999_000_000..=2_001_000_000).contains(&d), "{d}");
        // The lagging clock follows a cancel stamped by the leading one.
        let cancel = base.now();
        assert!(lag.observe(cancel));
        assert!(lag.now() > cancel);
    }

    #[test]
    fn refuses_far_future_and_ignores_zero() {
        let c = Clock::new();
        assert!(c.observe(0));
        assert!(!c.observe(c.now() + 6_000_000_000));
        assert_eq!(c.refused(), 1);
        assert!(c.lead() < Duration::from_millis(100));
    }
}
