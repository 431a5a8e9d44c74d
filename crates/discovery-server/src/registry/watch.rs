//! Per-app change notification for long polls.
//!
//! Every held poll subscribes to the apps it watches *before* it classifies
//! them, so a change that lands between the two is never missed. Waiters are
//! per request: two polls from one hostname share nothing, and a poll whose
//! client went away drops its subscription with its future.

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use dashmap::DashMap;
use tokio::sync::watch;

use super::AppKey;

/// The change channels of every app somebody is waiting on.
#[derive(Debug, Default)]
pub(crate) struct Watchers {
    channels: DashMap<AppKey, watch::Sender<Option<tokio::time::Instant>>>,
    parked: AtomicUsize,
}

impl Watchers {
    /// Subscribes to changes of one app.
    pub(crate) fn subscribe(self: &Arc<Self>, key: AppKey) -> Subscription {
        let rx = self
            .channels
            .entry(key.clone())
            .or_insert_with(|| watch::channel(None).0)
            .subscribe();
        Subscription {
            rx: Some(rx),
            key,
            owner: Arc::clone(self),
        }
    }

    /// Wakes every subscriber of `key`. Never blocks: a watch channel only
    /// stores the new version and wakes the tasks.
    pub(crate) fn notify(&self, key: &AppKey) {
        if let Some(tx) = self.channels.get(key) {
            let now = tokio::time::Instant::now();
            tx.send_modify(|v| *v = Some(now));
        }
    }

    /// Number of requests currently holding a long poll.
    pub(crate) fn parked(&self) -> usize {
        self.parked.load(Ordering::Relaxed)
    }

    /// Marks one request as parked until the returned guard drops.
    pub(crate) fn park(self: &Arc<Self>) -> ParkGuard {
        self.parked.fetch_add(1, Ordering::Relaxed);
        ParkGuard(Arc::clone(self))
    }
}

/// Counts a parked request; see [`Watchers::park`].
#[derive(Debug)]
pub(crate) struct ParkGuard(Arc<Watchers>);

impl Drop for ParkGuard {
    fn drop(&mut self) {
        self.0.parked.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One request's interest in one app. Dropping it removes the app's channel
/// once nobody else listens, so idle apps cost nothing.
#[derive(Debug)]
pub(crate) struct Subscription {
    rx: Option<watch::Receiver<Option<tokio::time::Instant>>>,
    key: AppKey,
    owner: Arc<Watchers>,
}

impl Subscription {
    /// When the app last changed, if it did since anyone subscribed.
    pub(crate) fn last_change(&self) -> Option<tokio::time::Instant> {
        self.rx.as_ref().and_then(|rx| *rx.borrow())
    }

    /// Resolves at the next change after the subscription (or the last
    /// `changed`) was made.
    pub(crate) async fn changed(&mut self) {
        if let Some(rx) = self.rx.as_mut() {
            if rx.changed().await.is_err() {
                // The sender lives as long as a receiver exists, so this
                // cannot happen; never spin if it somehow does.
                std::future::pending::<()>().await;
            }
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        // Drop the receiver first so the count below excludes it; the removal
        // runs under the shard lock, so a concurrent subscribe either sees
        // the channel removed or keeps it alive.
        self.rx = None;
        self.owner
            .channels
            .remove_if(&self.key, |_, tx| tx.receiver_count() == 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(a: &str) -> AppKey {
        AppKey::new("dev", a)
    }

    #[tokio::test]
    async fn change_after_subscribe_is_seen_and_idle_channels_go() {
        let w = Arc::new(Watchers::default());
        let mut s = w.subscribe(key("a"));
        w.notify(&key("a"));
        tokio::time::timeout(std::time::Duration::from_secs(1), s.changed())
            .await
            .unwrap();
        drop(s);
        assert!(w.channels.is_empty());
    }

    #[tokio::test]
    async fn both_subscribers_wake() {
        let w = Arc::new(Watchers::default());
        let mut a = w.subscribe(key("x"));
        let mut b = w.subscribe(key("x"));
        w.notify(&key("x"));
        a.changed().await;
        b.changed().await;
        drop(a);
        assert_eq!(w.channels.len(), 1, "b still listens");
    }
}
