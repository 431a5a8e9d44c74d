//! The pool: the updater that follows the resolver, runs the pipeline
//! (filter → zone → subset), keeps existing endpoints and dials new
//! ones, and skips addresses a channel cannot dial.

use super::*;

/// The endpoint set as the updater keeps it: every resolved endpoint,
/// connected or not, in resolver order.
pub(super) struct Pool {
    pub(super) backends: Vec<Arc<Backend>>,
    pub(super) phase: Phase,
    pub(super) undialable: Undialable,
}

/// The `host:port` of an instance's last `grpc://` or `grpcs://` address
/// that a channel can dial, and whether it is `grpcs://` (TLS). Registries
/// keep addresses opaque (`unix://`, no port, a comma-joined list), so
/// anything else is skipped.
pub(super) fn dialable(ins: &naming::Instance) -> Option<(&str, bool)> {
    ins.addrs.iter().rev().find_map(|a| {
        // kratos v2 endpoints carry `?isSecure=false`: the rest is ignored.
        let a = naming::addr::Addr::parse(a).ok()?;
        let host_ok = !a.host().contains(',') && a.userinfo().is_none();
        let tls = a.has_scheme("grpcs");
        ((a.has_scheme("grpc") || tls) && host_ok && a.port().is_some_and(|p| p != 0))
            .then_some((a.authority(), tls))
    })
}

/// Addresses already reported as undialable, so that each is logged once
/// and not on every resolve.
#[derive(Default)]
pub(super) struct Undialable {
    pub(super) seen: std::collections::HashSet<String>,
}

/// Distinct addresses remembered; past it the memory starts over (and an
/// address may be reported again) rather than growing with a hostile
/// registry's contents.
const UNDIALABLE_REMEMBERED: usize = 1024;

impl Undialable {
    pub(super) fn report(&mut self, shared: &Shared, ins: &naming::Instance) {
        for a in &ins.addrs {
            if self.seen.contains(a) {
                continue;
            }
            if self.seen.len() >= UNDIALABLE_REMEMBERED {
                self.seen.clear();
            }
            self.seen.insert(a.clone());
            tracing::warn!(
                appid = shared.appid,
                hostname = ins.hostname,
                addr = a,
                "skipping an instance address the gRPC client cannot dial (needs grpc:// or grpcs://host:port)"
            );
        }
    }
}

impl Pool {
    pub(super) fn apply(&mut self, shared: &Arc<Shared>, res: &Resolution, stages: &Stages) {
        let info = match res {
            Resolution::Pending => return,
            Resolution::NotFound { env, .. } => {
                if !self.backends.is_empty() {
                    tracing::warn!(
                        appid = shared.appid,
                        env,
                        kept = self.backends.len(),
                        "resolver says not found; keeping the last endpoints"
                    );
                }
                self.phase = Phase::NotFound { env: env.clone() };
                return;
            }
            Resolution::Found(info) => info,
        };
        // Before the pipeline, whose scheme filter drops instances without
        // a `grpc://` address silently.
        for ins in info.iter() {
            if dialable(ins).is_none() {
                self.undialable.report(shared, ins);
            }
        }
        let processed;
        let info = match &stages.options {
            Some(options) => {
                let zone = stages.client_zone.as_deref().unwrap_or_default();
                processed = pipeline::apply(info, options, zone, &stages.client_id);
                &processed
            }
            None => &**info,
        };
        // The other zones are dialled too, so that failing over to them when
        // every preferred endpoint is down costs no dial.
        let zone = stages.client_zone.as_deref();
        let preferred = pipeline::select(info, zone).into_iter().map(|i| (i, false));
        let fallback = pipeline::fallback(info, zone)
            .into_iter()
            .map(|i| (i, true));
        let mut wanted: Vec<(String, u32, Option<String>, String, bool, bool)> = Vec::new();
        for (ins, fallback) in preferred.chain(fallback) {
            if ins.status != naming::Status::Up {
                continue;
            }
            let Some((addr, tls)) = dialable(ins) else {
                continue;
            };
            if wanted.iter().any(|(a, ..)| a == addr) {
                continue; // duplicate addresses are merged, preferred first
            }
            wanted.push((
                addr.to_string(),
                ins.weight(),
                ins.color().map(str::to_string),
                ins.hostname.clone(),
                tls,
                fallback,
            ));
        }
        if wanted.is_empty() && !self.backends.is_empty() {
            // A non-empty set is never replaced by an empty snapshot.
            tracing::warn!(
                appid = shared.appid,
                kept = self.backends.len(),
                "resolver returned no instances; keeping the last endpoints"
            );
            self.phase = Phase::Found;
            return;
        }
        self.phase = Phase::Found;
        let mut old: HashMap<String, Arc<Backend>> = self
            .backends
            .drain(..)
            .map(|b| (b.endpoint.addr().to_string(), b))
            .collect();
        for (addr, weight, color, hostname, tls, fallback) in wanted {
            // An address that turned from grpc:// to grpcs:// (or back)
            // needs a new connection.
            let backend = match old.remove(&addr).filter(|b| b.tls.is_some() == tls) {
                Some(b)
                    if b.endpoint.weight() == weight.max(1)
                        && b.endpoint.color() == color.as_deref()
                        && b.hostname == hostname
                        && b.fallback == fallback =>
                {
                    b
                }
                Some(b) => {
                    let next = Arc::new(b.updated(weight, color, hostname, fallback));
                    if next.channel.lock().is_none() {
                        tokio::spawn(connect_loop(Arc::downgrade(&next), Arc::downgrade(shared)));
                    }
                    if next.ejected.load(Ordering::Relaxed) {
                        next.health.lock().probing = true;
                        tokio::spawn(probe(Arc::downgrade(&next)));
                    }
                    next
                }
                None => {
                    let tls = match (tls, &shared.tls) {
                        (false, _) => None,
                        (true, Some(c)) => Some(Arc::clone(c)),
                        (true, None) => {
                            if self.undialable.seen.insert(format!("grpcs://{addr}")) {
                                tracing::warn!(
                                    appid = shared.appid,
                                    addr,
                                    "skipping a grpcs:// endpoint: the client has no CA (ClientConfig::ca)"
                                );
                            }
                            continue;
                        }
                    };
                    let Some(b) = Backend::new(
                        &addr,
                        weight,
                        color,
                        hostname,
                        fallback,
                        &shared.config,
                        tls,
                        shared.lost.clone(),
                    ) else {
                        continue;
                    };
                    let b = Arc::new(b);
                    tokio::spawn(connect_loop(Arc::downgrade(&b), Arc::downgrade(shared)));
                    b
                }
            };
            self.backends.push(backend);
        }
        if !old.is_empty() {
            tracing::info!(
                appid = shared.appid,
                removed = ?old.keys().collect::<Vec<_>>(),
                "endpoints removed"
            );
        }
    }

    pub(super) fn publish(&self, shared: &Shared) {
        let ready: Vec<Arc<Backend>> = self
            .backends
            .iter()
            .filter(|b| b.channel.lock().is_some())
            .cloned()
            .collect();
        let first_connects = self
            .backends
            .iter()
            .filter(|b| !b.first_attempt_done.load(Ordering::Acquire))
            .count();
        shared.state.send_replace(Arc::new(Snapshot {
            ready,
            all: self.backends.clone(),
            phase: self.phase.clone(),
            known: self.backends.len(),
            first_connects,
        }));
    }
}

pub(super) async fn run_updater(
    shared: Arc<Shared>,
    resolver: Box<dyn Resolver>,
    stages: Stages,
    mut stop: oneshot::Receiver<()>,
    mut lost: mpsc::UnboundedReceiver<Lost>,
) {
    let mut rx = resolver.watch();
    let mut pool = Pool {
        backends: Vec::new(),
        phase: Phase::Pending,
        undialable: Undialable::default(),
    };
    let mut watching = true;
    let mut changed = true;
    loop {
        if changed {
            let res = rx.borrow_and_update().clone();
            pool.apply(&shared, &res, &stages);
        }
        pool.publish(&shared);
        tokio::select! {
            _ = &mut stop => break,
            r = rx.changed(), if watching => {
                changed = r.is_ok();
                // A closed watch keeps the last endpoints.
                watching = r.is_ok();
            }
            () = shared.republish.notified() => changed = false,
            Some(l) = lost.recv() => {
                if let Some(b) = pool.backends.iter().find(|b| *b.endpoint.addr() == *l.addr) {
                    b.connection_lost(l.generation);
                }
                changed = false;
            }
        }
    }
    resolver.close();
    // Release the endpoints: calls in flight keep their own channel clones.
    shared.state.send_replace(Arc::new(Snapshot::default()));
}
