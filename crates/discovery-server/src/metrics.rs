//! Prometheus metrics, served at `GET /metrics` in the OpenMetrics text
//! format. Counters and histograms are updated as requests happen; gauges
//! that mirror state (instances, protection, peers) are read at scrape time.

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry as PromRegistry,
};

use crate::{membership::Members, registry::Registry};

/// Labels of a served request.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct RequestLabels {
    pub(crate) route: String,
    /// The envelope code, or the HTTP status for non-JSON answers.
    pub(crate) code: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct RouteLabels {
    pub(crate) route: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct PeerLabels {
    peer: String,
}

type HistogramFamily = Family<RouteLabels, Histogram, fn() -> Histogram>;

/// Routes with their own label value; anything else is `unmatched`.
const ROUTES: &[&str] = &[
    "/discovery/register",
    "/discovery/renew",
    "/discovery/cancel",
    "/discovery/set",
    "/discovery/fetch/all",
    "/discovery/fetch",
    "/discovery/fetchs",
    "/discovery/poll",
    "/discovery/polls",
    "/discovery/nodes",
    "/discovery/replicate",
    "/discovery/digest",
    "/discovery/apps",
    "/",
    "/status",
    "/metrics",
    "/healthz",
    "/readyz",
    "unmatched",
];

/// Answer codes with their own label value; anything else is `other`.
const CODES: &[&str] = &[
    "0", "-304", "-400", "-401", "-404", "-409", "-500", "200", "404", "405", "503", "other",
];

/// The label index of a route (a matched path).
pub(crate) fn route_index(route: &str) -> usize {
    ROUTES
        .iter()
        .position(|r| *r == route)
        .unwrap_or(ROUTES.len() - 1)
}

/// Per-request handles, resolved once per (route, code): the hot path
/// neither allocates label strings nor hashes them.
#[derive(Debug)]
struct Handles {
    counters: Vec<std::sync::OnceLock<Counter>>,
    latency: Vec<std::sync::OnceLock<Histogram>>,
}

fn latency_histogram() -> Histogram {
    // 0.5 ms … ~16 s; long polls land in the top buckets by design.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// Every metric of a node.
#[derive(Debug)]
pub struct Metrics {
    registry: PromRegistry,
    handles: Handles,
    pub(crate) requests: Family<RequestLabels, Counter>,
    pub(crate) latency: HistogramFamily,
    pub(crate) wakeups: Counter,
    pub(crate) wakeup_latency: Histogram,
    pub(crate) evictions: Counter,
    instances: Gauge,
    apps: Gauge,
    parked: Gauge,
    protected: Gauge,
    renews: Gauge,
    expected: Gauge,
    threshold: Gauge,
    peer_up: Family<PeerLabels, Gauge>,
    queue: Family<PeerLabels, Gauge>,
    sent: Family<PeerLabels, Counter>,
    dropped: Family<PeerLabels, Counter>,
    failures: Family<PeerLabels, Counter>,
    rejected: Family<PeerLabels, Counter>,
    entropy_rounds: Counter,
    entropy_repairs: Counter,
    entropy_bytes: Counter,
    last_success: Family<PeerLabels, Gauge>,
    tombstones: Gauge,
    tombstones_evicted: Counter,
    emptied_apps: Gauge,
    peer_records_refused: Counter,
    signatures_refused: Family<ReasonLabels, Counter>,
    admin_writes: Family<RouteLabels, Counter>,
    peer_nonces: Gauge,
    clock_lead: Gauge,
    pub(crate) conns: ConnMetrics,
}

/// Client connections: how many are open, and why some were cut.
#[derive(Debug, Default)]
pub(crate) struct ConnMetrics {
    pub(crate) open: Gauge,
    pub(crate) refused: Counter,
    pub(crate) refused_per_ip: Counter,
    pub(crate) timed_out: Counter,
    pub(crate) write_timed_out: Counter,
    pub(crate) tls_failed: Counter,
}

impl ConnMetrics {
    fn register(r: &mut PromRegistry) -> Self {
        let m = ConnMetrics::default();
        r.register("connections", "Open client connections", m.open.clone());
        r.register(
            "connections_refused",
            "Connections closed at once because limits.max_connections were open",
            m.refused.clone(),
        );
        r.register(
            "connections_timed_out",
            "Connections closed because a TLS handshake or a request head was not received within the read deadline",
            m.timed_out.clone(),
        );
        r.register(
            "connections_refused_per_ip",
            "Connections closed at once because limits.max_connections_per_ip were open from their address",
            m.refused_per_ip.clone(),
        );
        r.register(
            "connections_write_timed_out",
            "Connections closed because an answer made no progress within the write deadline",
            m.write_timed_out.clone(),
        );
        r.register(
            "connections_tls_failed",
            "Connections closed because their TLS handshake failed (plain HTTP, an unknown or missing client certificate)",
            m.tls_failed.clone(),
        );
        m
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut r = PromRegistry::with_prefix("discovery");
        let requests = Family::<RequestLabels, Counter>::default();
        r.register(
            "http_requests",
            "HTTP requests by route and answer code",
            requests.clone(),
        );
        let latency: HistogramFamily = Family::new_with_constructor(latency_histogram);
        r.register(
            "http_request_duration_seconds",
            "Time to answer, by route (long polls include their hold)",
            latency.clone(),
        );
        let wakeups = Counter::default();
        r.register(
            "poll_wakeups",
            "Held long polls answered because an app changed",
            wakeups.clone(),
        );
        let wakeup_latency = Histogram::new(exponential_buckets(0.0001, 2.0, 16));
        r.register(
            "poll_wakeup_seconds",
            "From an app's change to a held poll's answer",
            wakeup_latency.clone(),
        );
        let evictions = Counter::default();
        r.register(
            "evictions",
            "Instances evicted after their lease expired",
            evictions.clone(),
        );
        let gauge = |r: &mut PromRegistry, name: &str, help: &str| {
            let g = Gauge::default();
            r.register(name, help, g.clone());
            g
        };
        let instances = gauge(&mut r, "instances", "Registered instances");
        let apps = gauge(&mut r, "apps", "Apps with at least one instance");
        let parked = gauge(&mut r, "parked_polls", "Long polls currently held");
        let protected = gauge(
            &mut r,
            "protected",
            "1 while protect mode suspends lease expiry",
        );
        let renews = gauge(
            &mut r,
            "renews_last_tick",
            "Renews counted in the previous eviction tick (R)",
        );
        let expected = gauge(
            &mut r,
            "renews_expected",
            "Renews expected per eviction tick (E)",
        );
        let threshold = gauge(
            &mut r,
            "renews_threshold",
            "Protect mode when R falls below this (T)",
        );
        let tombstones = gauge(
            &mut r,
            "tombstones",
            "Remembered cancels (bounded by limits.max_tombstones)",
        );
        let tombstones_evicted = Counter::default();
        r.register(
            "tombstones_evicted",
            "Remembered cancels forgotten because limits.max_tombstones was reached",
            tombstones_evicted.clone(),
        );
        let emptied_apps = gauge(
            &mut r,
            "emptied_apps",
            "Apps without instances whose counter is kept for pollers (bounded by limits.max_tombstones)",
        );
        let peer_records_refused = Counter::default();
        r.register(
            "peer_records_refused",
            "infra.discovery records refused: not a configured peer and not signed",
            peer_records_refused.clone(),
        );
        let signatures_refused = Family::<ReasonLabels, Counter>::default();
        r.register(
            "peer_signatures_refused",
            "Requests refused for their peer signature, by reason",
            signatures_refused.clone(),
        );
        let admin_writes = Family::<RouteLabels, Counter>::default();
        r.register(
            "admin_writes",
            "Writes to other processes' instances (set, and cancels from another address), by route",
            admin_writes.clone(),
        );
        let peer_nonces = gauge(
            &mut r,
            "peer_nonces",
            "Peer signature nonces remembered for the replay check (bounded by limits.max_peer_nonces)",
        );
        let clock_lead = gauge(
            &mut r,
            "clock_lead_milliseconds",
            "How far the node's hybrid clock reads ahead of its wall clock, following peers",
        );
        let peer_up = Family::<PeerLabels, Gauge>::default();
        r.register(
            "peer_up",
            "1 when the replication target answers, 0 when Lost",
            peer_up.clone(),
        );
        let queue = Family::<PeerLabels, Gauge>::default();
        r.register(
            "replication_queue_depth",
            "Writes waiting for a target",
            queue.clone(),
        );
        let sent = Family::<PeerLabels, Counter>::default();
        r.register(
            "replication_sent",
            "Writes delivered to a target",
            sent.clone(),
        );
        let dropped = Family::<PeerLabels, Counter>::default();
        r.register(
            "replication_dropped",
            "Writes dropped because a target's queue was full or the target was dead",
            dropped.clone(),
        );
        let failures = Family::<PeerLabels, Counter>::default();
        r.register(
            "replication_failures",
            "Failed attempts towards a target (retries included)",
            failures.clone(),
        );
        let rejected = Family::<PeerLabels, Counter>::default();
        r.register(
            "replication_rejected",
            "Replicated writes a target refused (-400); anti-entropy repairs them",
            rejected.clone(),
        );
        let entropy_rounds = Counter::default();
        r.register(
            "anti_entropy_rounds",
            "Registry comparisons with same-zone peers of ours",
            entropy_rounds.clone(),
        );
        let entropy_repairs = Counter::default();
        r.register(
            "anti_entropy_repairs",
            "Instances and cancels applied from peers by anti-entropy",
            entropy_repairs.clone(),
        );
        let entropy_bytes = Counter::default();
        r.register(
            "anti_entropy_received_bytes",
            "Answer bytes received by anti-entropy",
            entropy_bytes.clone(),
        );
        let last_success = Family::<PeerLabels, Gauge>::default();
        r.register(
            "peer_last_success_timestamp_seconds",
            "Unix time of the last successful exchange with a target",
            last_success.clone(),
        );
        let conns = ConnMetrics::register(&mut r);
        Metrics {
            registry: r,
            handles: Handles {
                counters: (0..ROUTES.len() * CODES.len())
                    .map(|_| std::sync::OnceLock::new())
                    .collect(),
                latency: (0..ROUTES.len())
                    .map(|_| std::sync::OnceLock::new())
                    .collect(),
            },
            requests,
            latency,
            wakeups,
            wakeup_latency,
            evictions,
            instances,
            apps,
            parked,
            protected,
            renews,
            expected,
            threshold,
            peer_up,
            queue,
            sent,
            dropped,
            failures,
            rejected,
            entropy_rounds,
            entropy_repairs,
            entropy_bytes,
            last_success,
            tombstones,
            tombstones_evicted,
            emptied_apps,
            peer_records_refused,
            signatures_refused,
            admin_writes,
            peer_nonces,
            clock_lead,
            conns,
        }
    }

    /// Records one answered request on route `route` (see [`route_index`]).
    pub(crate) fn request(&self, route: usize, code: &str, seconds: f64) {
        let route = route.min(ROUTES.len() - 1);
        let c = CODES
            .iter()
            .position(|k| *k == code)
            .unwrap_or(CODES.len() - 1);
        self.handles.counters[route * CODES.len() + c]
            .get_or_init(|| {
                self.requests
                    .get_or_create(&RequestLabels {
                        route: ROUTES[route].to_string(),
                        code: CODES[c].to_string(),
                    })
                    .clone()
            })
            .inc();
        self.handles.latency[route]
            .get_or_init(|| {
                self.latency
                    .get_or_create(&RouteLabels {
                        route: ROUTES[route].to_string(),
                    })
                    .clone()
            })
            .observe(seconds);
    }

    /// Counts a request refused for its peer signature.
    pub(crate) fn signature_refused(&self, reason: &'static str) {
        self.signatures_refused
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// Counts an `infra.discovery` record refused by the peer rule.
    pub(crate) fn peer_record_refused(&self) {
        self.peer_records_refused.inc();
    }

    /// Counts an operator's write to another process's instances.
    pub(crate) fn admin_write(&self, route: &str) {
        self.admin_writes
            .get_or_create(&RouteLabels {
                route: route.to_string(),
            })
            .inc();
    }

    /// Requests answered on a route since start, all codes.
    pub(crate) fn requests_on(&self, route: &str) -> u64 {
        let r = route_index(route);
        (0..CODES.len())
            .filter_map(|c| self.handles.counters[r * CODES.len() + c].get())
            .map(Counter::get)
            .sum()
    }

    /// The text exposition, after reading the state gauges.
    pub(crate) fn render(
        &self,
        registry: &Registry,
        members: &dyn Members,
        clock: &crate::clock::Clock,
        nonces: usize,
    ) -> String {
        let to_i64 = |v: usize| i64::try_from(v).unwrap_or(i64::MAX);
        self.instances.set(to_i64(registry.len()));
        self.apps.set(to_i64(registry.apps()));
        self.parked.set(to_i64(registry.parked_polls()));
        let g = registry.guard_state();
        self.protected.set(i64::from(g.protected));
        self.renews.set(i64::try_from(g.renews).unwrap_or(i64::MAX));
        self.expected.set(g.expected);
        self.threshold.set(g.threshold);
        self.tombstones.set(to_i64(registry.tombstones()));
        self.tombstones_evicted.inner().store(
            registry.tombstones_evicted(),
            std::sync::atomic::Ordering::Relaxed,
        );
        self.emptied_apps.set(to_i64(registry.emptied_apps()));
        self.peer_nonces.set(to_i64(nonces));
        self.clock_lead
            .set(i64::try_from(clock.lead().as_millis()).unwrap_or(i64::MAX));
        // Peers come and go: only the current ones are exported.
        self.peer_up.clear();
        self.queue.clear();
        self.sent.clear();
        self.dropped.clear();
        self.failures.clear();
        self.rejected.clear();
        let e = members.anti_entropy();
        let mirror_total =
            |c: &Counter, v: u64| c.inner().store(v, std::sync::atomic::Ordering::Relaxed);
        mirror_total(&self.entropy_rounds, e.rounds);
        mirror_total(&self.entropy_repairs, e.repairs);
        mirror_total(&self.entropy_bytes, e.bytes);
        self.last_success.clear();
        for p in members.peers() {
            let l = PeerLabels { peer: p.name };
            self.peer_up.get_or_create(&l).set(i64::from(p.status == 0));
            self.queue.get_or_create(&l).set(to_i64(p.queued));
            // Delivery counts live in the peer; mirror their absolute values.
            let mirror = |c: &Counter, v: u64| {
                c.inner().store(v, std::sync::atomic::Ordering::Relaxed);
            };
            mirror(&self.sent.get_or_create(&l), p.sent);
            mirror(&self.dropped.get_or_create(&l), p.dropped);
            mirror(&self.failures.get_or_create(&l), p.failures);
            mirror(&self.rejected.get_or_create(&l), p.rejected);
            self.last_success
                .get_or_create(&l)
                .set(p.last_success / 1_000_000_000);
        }
        let mut out = String::with_capacity(8 * 1024);
        encode(&mut out, &self.registry).expect("writing to a String");
        out
    }
}
