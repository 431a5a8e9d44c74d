//! The registry core: a sans-IO, concurrent map of instances.
//!
//! Every method takes the current time (`now`, ns since the Unix epoch), so
//! lease expiry, eviction and protection are tested without a runtime or a
//! clock. HTTP handlers, the eviction ticker, replication and long polls are
//! thin shells around it.
//!
//! ```
//! use discovery_server::registry::{Registry, RegistryParams, RegisterOptions, InstanceKey, Fetched};
//! use naming::{Instance, Status};
//!
//! let reg = Registry::new(RegistryParams::default());
//! let ins = Instance {
//!     zone: "sh001".into(), env: "dev".into(), appid: "demo.svc".into(),
//!     hostname: "h1".into(), addrs: vec!["grpc://10.0.0.1:9000".into()],
//!     status: Status::Up, ..Default::default()
//! };
//! let now = 1_700_000_000_000_000_000;
//! reg.register(ins, RegisterOptions::default(), now);
//! let Fetched::Found(json) = reg.fetch("dev", "demo.svc", None, 1) else { panic!() };
//! assert!(json.starts_with(br#"{"instances":{"sh001":[{"region":"""#));
//! assert!(reg.renew(&InstanceKey::new("dev", "demo.svc", "sh001", "h1"), None, now + 1).is_found());
//! ```

mod guard;
mod stored;
mod tombstones;
mod types;
mod watch;

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicI64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use compact_str::CompactString;
use dashmap::DashMap;
use naming::{Instance, Scheduler, Status};
use parking_lot::Mutex;
use rand::{Rng, seq::SliceRandom};
use serde::{Serialize, Serializer, ser::SerializeMap};

pub use guard::GuardState;
pub use types::*;
pub(crate) use watch::{Subscription, Watchers};

use guard::Guard;
use stored::Stored;
use tombstones::Tombstones;

/// An app's instances: zone → hostname → instance.
type Zones = BTreeMap<CompactString, Hosts>;
type Hosts = BTreeMap<CompactString, Stored>;

#[derive(Debug, Default)]
struct App {
    zones: Zones,
    /// The change counter; survives the last instance as a tombstone.
    latest: i64,
    /// Set while the app has no instance.
    emptied_at: Option<i64>,
    /// InstancesInfo of UP instances of all zones at the current state,
    /// built once and shared by every poller and fetcher.
    up_cache: Mutex<Option<Bytes>>,
    /// The anti-entropy digest at the current state (renews leave it), and
    /// the app's share of the root digest.
    digest: Mutex<Option<(u64, u64)>>,
}

impl App {
    fn bump(&mut self, now: i64) {
        self.latest = now.max(self.latest + 1);
        *self.digest.get_mut() = None;
        self.touch();
    }

    /// What two nodes compare: each instance's key, dirty timestamp,
    /// status, region, version, addresses and metadata (not its renew
    /// time, which differs between nodes by design). Hashed with FNV-1a
    /// over explicit little-endian bytes, so that every node computes the
    /// same value whatever its build.
    fn digest(&self, key: &AppKey) -> (u64, u64) {
        *self.digest.lock().get_or_insert_with(|| {
            let mut h = digest::Fnv::default();
            for (zone, hosts) in &self.zones {
                for (host, s) in hosts {
                    h.str(zone);
                    h.str(host);
                    digest::stored(&mut h, s);
                }
            }
            let d = h.finish();
            let mut r = digest::Fnv::default();
            r.str(&key.env);
            r.str(&key.appid);
            r.u64(d);
            (d, r.finish())
        })
    }

    /// Invalidates the shared answer after any change, renews included
    /// (answers carry `renew_timestamp`).
    fn touch(&mut self) {
        *self.up_cache.get_mut() = None;
    }

    fn is_live_tombstone(&self, now: i64, retention: i64) -> bool {
        self.emptied_at.is_some_and(|t| now - t < retention)
    }
}

/// The registry core.
#[derive(Debug)]
pub struct Registry {
    params: RegistryParams,
    apps: DashMap<AppKey, App>,
    schedulers: DashMap<AppKey, Scheduler>,
    /// Recently cancelled keys and when, so that a stale copy still queued
    /// somewhere (a partitioned or paused node's renew repair, a peer's
    /// snapshot) cannot bring a cancelled instance back.
    cancelled: Tombstones,
    /// Apps emptied of instances, oldest first, so that their counters
    /// (kept for pollers) can be forgotten past `max_tombstones`.
    emptied: Mutex<std::collections::VecDeque<(AppKey, i64)>>,
    watchers: Arc<Watchers>,
    guard: Guard,
    size: AtomicI64,
    last_reset: AtomicI64,
}

impl Registry {
    /// An empty registry.
    pub fn new(params: RegistryParams) -> Self {
        let cap = params.max_tombstones;
        let guard = Guard::new(
            params.renews_per_tick(),
            params.renew_threshold,
            params.self_preservation,
        );
        Registry {
            params,
            apps: DashMap::new(),
            schedulers: DashMap::new(),
            cancelled: Tombstones::new(cap),
            emptied: Mutex::new(std::collections::VecDeque::new()),
            watchers: Arc::new(Watchers::default()),
            guard,
            size: AtomicI64::new(0),
            last_reset: AtomicI64::new(0),
        }
    }

    /// The settings.
    pub fn params(&self) -> &RegistryParams {
        &self.params
    }

    /// Number of instances.
    pub fn len(&self) -> usize {
        usize::try_from(self.size.load(Ordering::Relaxed)).unwrap_or(0)
    }

    /// Whether the registry holds no instance.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of apps with at least one instance.
    pub fn apps(&self) -> usize {
        self.apps.iter().filter(|a| !a.zones.is_empty()).count()
    }

    /// The guard's current view.
    pub fn guard_state(&self) -> GuardState {
        self.guard.state()
    }

    pub(crate) fn watchers(&self) -> &Arc<Watchers> {
        &self.watchers
    }

    /// Requests currently holding a long poll.
    pub fn parked_polls(&self) -> usize {
        self.watchers.parked()
    }

    fn changed(&self, key: &AppKey) {
        self.watchers.notify(key);
    }

    /// Registers a copy by the register rule (docs/protocol.md#register-rule): a new key takes
    /// the copy; an existing key is replaced unless its `dirty_timestamp` is
    /// newer, keeping its `up_timestamp`. The counter is bumped and pollers
    /// are woken in every case.
    pub fn register(&self, mut ins: Instance, opts: RegisterOptions, now: i64) -> Registered {
        ins.reg_timestamp = now;
        ins.up_timestamp = now;
        ins.renew_timestamp = now;
        ins.dirty_timestamp = now;
        ins.latest_timestamp = now;
        if opts.dirty_timestamp > 0 {
            ins.dirty_timestamp = opts.dirty_timestamp;
        }
        if opts.reg_timestamp > 0 {
            ins.reg_timestamp = opts.reg_timestamp;
        }
        if opts.peer {
            if let Some(refused) = self.cancelled_since(&ins) {
                return refused;
            }
        } else {
            self.cancelled.remove(&InstanceKey::of(&ins));
        }
        self.store(ins, now)
    }

    /// Merges a copy received from a peer's `fetch/all` or adopted from a
    /// `-409` answer: the peer's timestamps are kept, then the register rule
    /// applies (and a copy older than a cancel of the key is refused).
    pub fn merge(&self, ins: Instance, now: i64) -> Registered {
        if let Some(refused) = self.cancelled_since(&ins) {
            return refused;
        }
        self.store(ins, now)
    }

    /// `Some` (not applied) when `ins` predates a cancel of its key.
    fn cancelled_since(&self, ins: &Instance) -> Option<Registered> {
        let at = self.cancelled.get(&InstanceKey::of(ins))?;
        (ins.dirty_timestamp <= at).then(|| Registered {
            instance: ins.clone(),
            is_new: false,
            applied: false,
        })
    }

    fn store(&self, mut ins: Instance, now: i64) -> Registered {
        let key = AppKey::new(&ins.env, &ins.appid);
        let out = {
            // Most writes are to apps that exist: look up before paying for
            // an owned key.
            let mut app = match self.apps.get_mut(&key) {
                Some(app) => app,
                None => self.apps.entry(key.clone()).or_default(),
            };
            let app = &mut *app;
            let zone = app
                .zones
                .entry(CompactString::from(ins.zone.as_str()))
                .or_default();
            let out = match zone.get_mut(ins.hostname.as_str()) {
                Some(old) if ins.dirty_timestamp < old.dirty_timestamp => Registered {
                    instance: old.instance(&key, &ins.zone, &ins.hostname),
                    is_new: false,
                    applied: false,
                },
                Some(old) => {
                    ins.up_timestamp = old.up_timestamp;
                    *old = Stored::of(&ins);
                    Registered {
                        instance: ins,
                        is_new: false,
                        applied: true,
                    }
                }
                None => {
                    zone.insert(ins.hostname.as_str().into(), Stored::of(&ins));
                    Registered {
                        instance: ins,
                        is_new: true,
                        applied: true,
                    }
                }
            };
            app.emptied_at = None;
            app.bump(now);
            out
        };
        if out.is_new {
            self.size.fetch_add(1, Ordering::Relaxed);
            self.guard.key_added();
        }
        self.changed(&key);
        out
    }

    /// Renews a lease. A peer passes its copy's `dirty_timestamp` so that the
    /// answer tells which side must repair the other (docs/protocol.md#renew). Renews do
    /// not bump the counter and wake nobody.
    pub fn renew(&self, key: &InstanceKey, peer_dirty: Option<i64>, now: i64) -> Renewed {
        let Some(mut entry) = self.apps.get_mut(&key.app()) else {
            return Renewed::NotFound;
        };
        let (app_key, app) = entry.pair_mut();
        let Some(ins) = app
            .zones
            .get_mut(key.zone.as_str())
            .and_then(|z| z.get_mut(key.hostname.as_str()))
        else {
            return Renewed::NotFound;
        };
        ins.renew_timestamp = now;
        let ins = ins.instance(app_key, &key.zone, &key.hostname);
        app.touch();
        self.guard.renewed();
        match peer_dirty {
            Some(d) if d > ins.dirty_timestamp => Renewed::PeerNewer(ins),
            Some(d) if d < ins.dirty_timestamp => Renewed::PeerOlder(ins),
            _ => Renewed::Ok(ins),
        }
    }

    /// Removes an instance; `None` when it does not exist.
    pub fn cancel(&self, key: &InstanceKey, now: i64) -> Option<Instance> {
        self.cancel_at(key, now, now, false)
    }

    /// Removes an instance cancelled at `cancelled_at` (the originating
    /// node's time, for a replicated cancel) and remembers the cancel for
    /// `tombstone_retention`: always for a peer's cancel (`from_peer`: the
    /// instance may still be on its way here), otherwise only when the
    /// instance existed, so that cancels of random keys cost nothing.
    pub fn cancel_at(
        &self,
        key: &InstanceKey,
        now: i64,
        cancelled_at: i64,
        from_peer: bool,
    ) -> Option<Instance> {
        // Remembered before the removal, so that no stale copy slips in
        // between.
        let remember = from_peer || self.contains(key);
        if remember {
            self.cancelled.insert(key, cancelled_at);
        }
        self.remove(key, now)
    }

    /// Removes an instance whose lease expired here. Not remembered as a
    /// cancel: a peer that still renews it holds proof that it lives, and
    /// its repair register must be taken.
    fn evict(&self, key: &InstanceKey, now: i64) -> Option<Instance> {
        self.remove(key, now)
    }

    fn remove(&self, key: &InstanceKey, now: i64) -> Option<Instance> {
        let app_key = key.app();
        let (removed, emptied) = {
            let mut app = self.apps.get_mut(&app_key)?;
            let app = &mut *app;
            let zone = app.zones.get_mut(key.zone.as_str())?;
            let removed =
                zone.remove(key.hostname.as_str())?
                    .instance(&app_key, &key.zone, &key.hostname);
            if zone.is_empty() {
                app.zones.remove(key.zone.as_str());
            }
            let emptied = app.zones.is_empty();
            if emptied {
                app.emptied_at = Some(now);
            }
            app.bump(now);
            (removed, emptied)
        };
        if emptied {
            self.remember_emptied(app_key.clone(), now);
        }
        self.size.fetch_sub(1, Ordering::Relaxed);
        self.guard.key_removed();
        self.changed(&app_key);
        Some(removed)
    }

    /// Keeps at most `max_tombstones` emptied apps, forgetting the oldest.
    fn remember_emptied(&self, key: AppKey, at: i64) {
        let mut q = self.emptied.lock();
        q.push_back((key, at));
        let cap = self.params.max_tombstones.max(1);
        while q.len() > cap {
            let Some((k, t)) = q.pop_front() else { break };
            self.apps.remove_if(&k, |_, app| {
                app.zones.is_empty() && app.emptied_at == Some(t)
            });
        }
    }

    /// Remembered cancels.
    pub fn tombstones(&self) -> usize {
        self.cancelled.len()
    }

    /// Cancels forgotten because `max_tombstones` was reached.
    pub fn tombstones_evicted(&self) -> u64 {
        self.cancelled.evicted()
    }

    /// Every remembered cancel and its time.
    pub fn tombstone_list(&self) -> Vec<(InstanceKey, i64)> {
        self.cancelled.snapshot()
    }

    /// Apps without instances whose counter is still kept for pollers.
    pub fn emptied_apps(&self) -> usize {
        self.emptied.lock().len()
    }

    /// Changes status and metadata of existing instances, all or nothing
    /// (docs/protocol.md#set-and-cancel-rules).
    pub fn set(&self, req: &SetRequest, now: i64) -> Result<(), SetError> {
        if !req.status.is_empty() && req.status.len() != req.hostnames.len() {
            return Err(SetError::LengthMismatch("status"));
        }
        if !req.metadata.is_empty() && req.metadata.len() != req.hostnames.len() {
            return Err(SetError::LengthMismatch("metadata"));
        }
        let ts = if req.set_timestamp == 0 {
            now
        } else {
            req.set_timestamp
        };
        let key = AppKey::new(&req.env, &req.appid);
        {
            let missing = || SetError::NotFound(req.hostnames.first().cloned().unwrap_or_default());
            let mut app = self.apps.get_mut(&key).ok_or_else(missing)?;
            let app = &mut *app;
            let zone = app.zones.get_mut(req.zone.as_str()).ok_or_else(missing)?;
            if let Some(h) = req
                .hostnames
                .iter()
                .find(|h| !zone.contains_key(h.as_str()))
            {
                return Err(SetError::NotFound(h.clone()));
            }
            for (i, host) in req.hostnames.iter().enumerate() {
                let Some(ins) = zone.get_mut(host.as_str()) else {
                    continue;
                };
                if let Some(status) = req.status.get(i) {
                    ins.status = *status;
                    if *status == Status::Up {
                        ins.up_timestamp = ts;
                    }
                }
                match req.metadata.get(i) {
                    Some(MetadataPatch::Clear) => ins.metadata = Box::default(),
                    Some(MetadataPatch::Merge(patch)) => {
                        let mut metadata = ins.metadata_map();
                        for (k, v) in patch {
                            match v {
                                Some(v) => metadata.insert(k.clone(), v.clone()),
                                None => metadata.remove(k),
                            };
                        }
                        ins.set_metadata(&metadata);
                    }
                    None => {}
                }
                ins.latest_timestamp = ts;
                ins.dirty_timestamp = ts;
            }
            app.bump(now);
        }
        self.changed(&key);
        Ok(())
    }

    /// Installs, replaces or (with `None`) removes an app's scheduler; a
    /// change bumps the app's counter so that pollers see it.
    pub fn set_scheduler(&self, key: &AppKey, scheduler: Option<Scheduler>, now: i64) {
        let changed = match scheduler {
            Some(s) => self.schedulers.insert(key.clone(), s.clone()).as_ref() != Some(&s),
            None => self.schedulers.remove(key).is_some(),
        };
        if !changed {
            return;
        }
        if let Some(mut app) = self.apps.get_mut(key) {
            app.bump(now);
        } else {
            return;
        }
        self.changed(key);
    }

    /// Apps that have a scheduler.
    pub fn scheduled_apps(&self) -> Vec<AppKey> {
        self.schedulers.iter().map(|e| e.key().clone()).collect()
    }

    /// An app's instances in `zone` (all when `None`) whose status matches
    /// the bitmask, as InstancesInfo JSON.
    pub fn fetch(&self, env: &str, appid: &str, zone: Option<&str>, mask: u32) -> Fetched {
        let key = AppKey::new(env, appid);
        let Some(app) = self.apps.get(&key) else {
            return Fetched::Unknown;
        };
        if app.zones.is_empty() {
            return Fetched::Unknown;
        }
        if let Some(z) = zone {
            if !app.zones.contains_key(z) {
                return Fetched::ZoneAbsent {
                    latest_timestamp: app.latest,
                };
            }
        }
        Fetched::Found(self.info_json(&key, &app, zone, mask))
    }

    fn info_json(&self, key: &AppKey, app: &App, zone: Option<&str>, mask: u32) -> Bytes {
        let cacheable = zone.is_none() && mask == Status::Up.as_u32();
        if cacheable {
            if let Some(b) = app.up_cache.lock().as_ref() {
                return b.clone();
            }
        }
        let scheduler = self.schedulers.get(key);
        let view = InfoView {
            key,
            app,
            zone,
            mask,
            scheduler: scheduler.as_deref(),
        };
        let bytes = Bytes::from(serde_json::to_vec(&view).expect("serializing to memory"));
        if cacheable {
            *app.up_cache.lock() = Some(bytes.clone());
        }
        bytes
    }

    /// Classifies one polled app for a caller at `since` (docs/protocol.md#long-poll).
    pub fn poll_state(&self, key: &AppKey, zone: Option<&str>, since: i64, now: i64) -> PollState {
        let Some(app) = self.apps.get(key) else {
            return PollState::Missing;
        };
        let retention = nanos(self.params.tombstone_retention);
        let in_scope = match zone {
            None => !app.zones.is_empty(),
            Some(z) => app.zones.contains_key(z),
        };
        let tombstone = app.zones.is_empty() && app.is_live_tombstone(now, retention);
        if !in_scope && !tombstone {
            return PollState::Missing;
        }
        if app.latest <= since {
            return PollState::Current;
        }
        let up = Status::Up.as_u32();
        let json = self.info_json(key, &app, zone, up);
        let has_up = app
            .zones
            .iter()
            .filter(|(z, _)| zone.is_none_or(|want| want == z.as_str()))
            .flat_map(|(_, hosts)| hosts.values())
            .any(|i| i.status == Status::Up);
        if has_up {
            PollState::Newer(json)
        } else {
            PollState::NewerEmpty(json)
        }
    }

    /// Every instance, for `fetch/all`: appid → instances sorted by
    /// (env, zone, hostname).
    pub fn all(&self) -> BTreeMap<String, Vec<Instance>> {
        let mut out: BTreeMap<String, Vec<Instance>> = BTreeMap::new();
        for app in &self.apps {
            if app.zones.is_empty() {
                continue;
            }
            out.entry(app.key().appid.clone())
                .or_default()
                .extend(instances_of(app.key(), &app.zones));
        }
        for list in out.values_mut() {
            list.sort_by(|a, b| {
                (&a.env, &a.zone, &a.hostname).cmp(&(&b.env, &b.zone, &b.hostname))
            });
        }
        out
    }

    /// Every non-empty app with its anti-entropy digest (see
    /// [`crate::cluster`]'s anti-entropy), and a root digest over them
    /// all: two registries that hold the same instances have the same root.
    pub fn digests(&self) -> (u64, Vec<(AppKey, u64)>) {
        let mut apps = Vec::with_capacity(self.apps.len());
        let root = self.fold_digests(|key, d| apps.push((key.clone(), d)));
        (root, apps)
    }

    /// The root digest alone: what an idle comparison needs, without a
    /// copy of every app key.
    pub fn root_digest(&self) -> u64 {
        self.fold_digests(|_, _| {})
    }

    fn fold_digests(&self, mut each: impl FnMut(&AppKey, u64)) -> u64 {
        let mut root = 0u64;
        for app in &self.apps {
            if app.zones.is_empty() {
                continue;
            }
            let (d, share) = app.digest(app.key());
            // Order-free: the map's iteration order is not the peer's.
            root = root.wrapping_add(share);
            each(app.key(), d);
        }
        root
    }

    /// Remembered cancels of the given apps, in one pass over them all.
    pub fn cancels_of(&self, apps: &std::collections::HashSet<AppKey>) -> Vec<(InstanceKey, i64)> {
        self.cancelled
            .snapshot()
            .into_iter()
            .filter(|(k, _)| apps.contains(&k.app()))
            .collect()
    }

    /// Applies a cancel a peer remembers: removes our copy when it is not
    /// newer than the cancel (a register after the cancel wins). Returns
    /// whether an instance was removed.
    pub fn apply_cancel(&self, key: &InstanceKey, at: i64, now: i64) -> bool {
        match self.get(key) {
            Some(ours) if ours.dirty_timestamp <= at => {
                self.cancel_at(key, now, at, true).is_some()
            }
            _ => false,
        }
    }

    /// An app's change counter, tombstones included.
    pub fn latest(&self, key: &AppKey) -> Option<i64> {
        self.apps.get(key).map(|a| a.latest)
    }

    /// Every instance of an app, all zones and statuses.
    pub fn instances(&self, key: &AppKey) -> Vec<Instance> {
        self.apps
            .get(key)
            .map_or_else(Vec::new, |a| instances_of(key, &a.zones).collect())
    }

    /// Whether the instance is here, without copying it.
    fn contains(&self, key: &InstanceKey) -> bool {
        self.apps.get(&key.app()).is_some_and(|app| {
            app.zones
                .get(key.zone.as_str())
                .is_some_and(|z| z.contains_key(key.hostname.as_str()))
        })
    }

    /// One copy, if present.
    pub fn get(&self, key: &InstanceKey) -> Option<Instance> {
        let app = key.app();
        self.apps
            .get(&app)?
            .zones
            .get(key.zone.as_str())?
            .get(key.hostname.as_str())
            .map(|s| s.instance(&app, &key.zone, &key.hostname))
    }

    /// One eviction tick (docs/protocol.md#eviction-tick): rolls the guard, evicts lease-expired
    /// instances (all of them past `evict_ceiling`, the others only when not
    /// protected), at most `max_evict_fraction` of the registry, chosen at
    /// random; drops expired tombstones; re-bases the guard when due.
    pub fn tick<R: Rng + ?Sized>(&self, now: i64, rng: &mut R) -> TickReport {
        let guard = self.guard.roll();
        let lease = nanos(self.params.lease);
        let ceiling = nanos(self.params.evict_ceiling);
        let mut size = 0usize;
        let mut candidates = Vec::new();
        for app in &self.apps {
            for (zone, hosts) in &app.zones {
                for (hostname, ins) in hosts {
                    size += 1;
                    let age = now - ins.renew_timestamp;
                    if age > ceiling || (!guard.protected && age > lease) {
                        let k = app.key();
                        candidates.push(InstanceKey::new(
                            &k.env,
                            &k.appid,
                            zone.as_str(),
                            hostname.as_str(),
                        ));
                    }
                }
            }
        }
        let keep = (size as f64 * (1.0 - self.params.max_evict_fraction)).floor() as usize;
        let cap = size - keep.min(size);
        let found = candidates.len();
        candidates.shuffle(rng);
        candidates.truncate(cap);
        let evicted = candidates
            .iter()
            .filter_map(|k| {
                // A renew may have landed since the scan; re-check under the lock.
                let ins = self.get(k)?;
                let age = now - ins.renew_timestamp;
                (age > ceiling || (!guard.protected && age > lease)).then(|| self.evict(k, now))?
            })
            .collect();

        let retention = nanos(self.params.tombstone_retention);
        self.apps
            .retain(|_, app| !app.zones.is_empty() || app.is_live_tombstone(now, retention));
        self.cancelled.expire(now, retention);
        self.emptied.lock().retain(|(k, t)| {
            self.apps
                .get(k)
                .is_some_and(|app| app.zones.is_empty() && app.emptied_at == Some(*t))
        });

        let reset_every = nanos(self.params.expected_reset_interval);
        let last = self.last_reset.load(Ordering::Relaxed);
        if last == 0 {
            self.last_reset.store(now, Ordering::Relaxed);
        } else if now - last >= reset_every {
            self.last_reset.store(now, Ordering::Relaxed);
            self.guard.reset(self.len());
        }
        TickReport {
            guard,
            candidates: found,
            evicted,
        }
    }

    /// Whether the last tick found the registry protected.
    pub fn is_protected(&self) -> bool {
        self.guard.is_protected()
    }
}

/// Every instance of an app, whole, in (zone, hostname) order.
fn instances_of<'a>(key: &'a AppKey, zones: &'a Zones) -> impl Iterator<Item = Instance> + 'a {
    zones.iter().flat_map(move |(zone, hosts)| {
        hosts
            .iter()
            .map(move |(hostname, ins)| ins.instance(key, zone, hostname))
    })
}

pub(crate) fn nanos(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

/// Serializes InstancesInfo straight from the stored maps.
struct InfoView<'a> {
    key: &'a AppKey,
    app: &'a App,
    zone: Option<&'a str>,
    mask: u32,
    scheduler: Option<&'a Scheduler>,
}

impl Serialize for InfoView<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        struct Zones<'a>(&'a InfoView<'a>);
        struct ZoneHosts<'a>(&'a AppKey, &'a str, &'a Hosts, u32);
        impl Serialize for Zones<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let v = self.0;
                let mut m = s.serialize_map(None)?;
                for (z, hosts) in &v.app.zones {
                    if v.zone.is_none_or(|want| want == z) {
                        m.serialize_entry(z.as_str(), &ZoneHosts(v.key, z, hosts, v.mask))?;
                    }
                }
                m.end()
            }
        }
        impl Serialize for ZoneHosts<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let Self(key, zone, hosts, mask) = *self;
                s.collect_seq(
                    hosts
                        .iter()
                        .filter(|(_, i)| i.status.matches(mask))
                        .map(|(h, i)| i.view(key, zone, h)),
                )
            }
        }
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("instances", &Zones(self))?;
        if let Some(sch) = self.scheduler {
            m.serialize_entry("scheduler", sch)?;
        }
        m.serialize_entry("latest_timestamp", &self.app.latest)?;
        m.end()
    }
}

#[cfg(test)]
mod tests;

/// A hash of an instance's content (what anti-entropy compares), to
/// settle two copies with the same dirty timestamp the same way everywhere.
pub fn content_hash(ins: &Instance) -> u64 {
    let mut h = digest::Fnv::default();
    digest::stored(&mut h, &Stored::of(ins));
    h.finish()
}

mod digest {
    use super::Stored;

    /// An instance's compared content: not its renew time, which differs
    /// between nodes by design.
    pub(super) fn stored(h: &mut Fnv, s: &Stored) {
        h.u64(s.dirty_timestamp as u64);
        h.u64(u64::from(s.status.as_u32()));
        h.str(&s.region);
        h.str(&s.version);
        h.u64(s.addrs.len() as u64);
        for a in &s.addrs {
            h.str(a);
        }
        h.u64(s.metadata.len() as u64);
        for (k, v) in s.metadata.iter() {
            h.str(k);
            h.str(v);
        }
    }

    /// 64-bit FNV-1a: tiny, and the same on every node and platform.
    pub(super) struct Fnv(u64);

    impl Default for Fnv {
        fn default() -> Self {
            Fnv(0xcbf2_9ce4_8422_2325)
        }
    }

    impl Fnv {
        fn bytes(&mut self, b: &[u8]) {
            for byte in b {
                self.0 ^= u64::from(*byte);
                self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
            }
        }

        /// A length-prefixed string, so that ("ab","c") ≠ ("a","bc").
        pub(super) fn str(&mut self, s: &str) {
            self.u64(s.len() as u64);
            self.bytes(s.as_bytes());
        }

        pub(super) fn u64(&mut self, v: u64) {
            self.bytes(&v.to_le_bytes());
        }

        pub(super) fn finish(&self) -> u64 {
            self.0
        }
    }
}
