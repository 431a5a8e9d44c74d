//! Remembered cancels, bounded.
//!
//! A cancel is remembered for `tombstone_retention`, so that a stale copy
//! still travelling somewhere (a paused node's renew repair, a peer's
//! `fetch/all`, a snapshot) cannot bring the instance back. Network input
//! decides what gets remembered, so the set is capped: past `cap` entries
//! the oldest insertion is forgotten first, and the count of forgotten
//! entries is kept for the metrics.

use std::{
    collections::VecDeque,
    sync::atomic::{AtomicU64, Ordering},
};

use dashmap::DashMap;
use parking_lot::Mutex;

use super::InstanceKey;

#[derive(Debug)]
pub(crate) struct Tombstones {
    /// Key → time of its latest cancel (the originating node's clock).
    map: DashMap<InstanceKey, i64>,
    /// Insertion order, for oldest-first eviction. An entry whose time no
    /// longer matches `map` is stale and skipped.
    order: Mutex<VecDeque<(InstanceKey, i64)>>,
    cap: usize,
    evicted: AtomicU64,
}

impl Tombstones {
    pub(crate) fn new(cap: usize) -> Self {
        Tombstones {
            map: DashMap::new(),
            order: Mutex::new(VecDeque::new()),
            cap: cap.max(1),
            evicted: AtomicU64::new(0),
        }
    }

    pub(crate) fn get(&self, key: &InstanceKey) -> Option<i64> {
        self.map.get(key).map(|t| *t)
    }

    /// A client registered the key again: its cancel no longer matters.
    pub(crate) fn remove(&self, key: &InstanceKey) {
        self.map.remove(key);
    }

    /// Remembers a cancel of `key` at `at`, keeping the later of two times.
    pub(crate) fn insert(&self, key: &InstanceKey, at: i64) {
        let changed = {
            let mut e = self.map.entry(key.clone()).or_insert(i64::MIN);
            if *e < at {
                *e = at;
                true
            } else {
                false
            }
        };
        if !changed {
            return;
        }
        let mut order = self.order.lock();
        order.push_back((key.clone(), at));
        while self.map.len() > self.cap {
            let Some((k, t)) = order.pop_front() else {
                break;
            };
            if self.map.remove_if(&k, |_, v| *v == t).is_some() {
                self.evicted.fetch_add(1, Ordering::Relaxed);
            }
        }
        // Re-cancels of one key leave stale entries behind; compact now and
        // then so that the queue stays within a small multiple of the map.
        if order.len() > 2 * self.cap + 1024 {
            order.retain(|(k, t)| self.map.get(k).is_some_and(|v| *v == *t));
        }
    }

    /// Forgets cancels older than `retention`.
    pub(crate) fn expire(&self, now: i64, retention: i64) {
        self.map.retain(|_, at| now - *at < retention);
        let mut order = self.order.lock();
        order.retain(|(k, t)| self.map.get(k).is_some_and(|v| *v == *t));
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// Entries forgotten because the set was full.
    pub(crate) fn evicted(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }

    /// Every remembered cancel.
    pub(crate) fn snapshot(&self) -> Vec<(InstanceKey, i64)> {
        self.map
            .iter()
            .map(|e| (e.key().clone(), *e.value()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(h: &str) -> InstanceKey {
        InstanceKey::new("dev", "a", "z", h)
    }

    #[test]
    fn the_oldest_is_forgotten_first_and_counted() {
        let t = Tombstones::new(3);
        for (i, h) in ["a", "b", "c", "d"].iter().enumerate() {
            t.insert(&k(h), i as i64);
        }
        assert_eq!(t.len(), 3);
        assert_eq!(t.get(&k("a")), None);
        assert_eq!(t.get(&k("d")), Some(3));
        assert_eq!(t.evicted(), 1);
    }

    #[test]
    fn a_re_cancel_moves_the_key_to_the_back() {
        let t = Tombstones::new(2);
        t.insert(&k("a"), 1);
        t.insert(&k("b"), 2);
        t.insert(&k("a"), 3);
        t.insert(&k("c"), 4);
        assert_eq!(t.get(&k("a")), Some(3), "a was cancelled again after b");
        assert_eq!(t.get(&k("b")), None);
        t.insert(&k("a"), 2);
        assert_eq!(t.get(&k("a")), Some(3), "the later time is kept");
    }

    #[test]
    fn the_queue_stays_bounded_under_re_cancels() {
        let t = Tombstones::new(4);
        for i in 0..10_000 {
            t.insert(&k("same"), i);
        }
        assert_eq!(t.len(), 1);
        assert!(t.order.lock().len() <= 2 * 4 + 1024 + 1);
    }

    #[test]
    fn expiry_drops_old_cancels() {
        let t = Tombstones::new(10);
        t.insert(&k("a"), 0);
        t.insert(&k("b"), 50);
        t.expire(100, 60);
        assert_eq!(t.get(&k("a")), None);
        assert_eq!(t.get(&k("b")), Some(50));
        assert_eq!(t.order.lock().len(), 1);
    }
}
