//! What the balancer does, for people and for Prometheus: `/metrics` in the
//! OpenMetrics text format and `/debug/balancer` as JSON, both read from
//! [`Balanced::pool`] at request time.

use discovery_tonic::{Balanced, PoolState};
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct BackendLabels {
    backend: String,
    balancer: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct BalancerLabels {
    balancer: String,
}

type Counters = Family<BackendLabels, Counter>;
type Gauges = Family<BackendLabels, Gauge>;
type FloatGauges = Family<BackendLabels, Gauge<f64, std::sync::atomic::AtomicU64>>;

/// The pool as Prometheus text.
pub(crate) fn render(pool: &PoolState) -> String {
    let mut registry = Registry::with_prefix("demo_balancer");
    let picks = Counters::default();
    let ejections = Counters::default();
    let hedges = Counters::default();
    let in_flight = Gauges::default();
    let ejected = Gauges::default();
    let weight = Gauges::default();
    let latency = FloatGauges::default();
    let success = FloatGauges::default();
    let score = FloatGauges::default();
    let cpu = Gauges::default();
    for b in &pool.backends {
        let l = BackendLabels {
            backend: b.addr.clone(),
            balancer: pool.balancer.clone(),
        };
        picks.get_or_create(&l).inc_by(b.picks);
        ejections.get_or_create(&l).inc_by(b.ejections);
        hedges.get_or_create(&l).inc_by(b.hedges);
        in_flight.get_or_create(&l).set(b.in_flight);
        ejected.get_or_create(&l).set(i64::from(b.ejected));
        weight.get_or_create(&l).set(b.effective_weight);
        latency.get_or_create(&l).set(b.latency_ewma_ms / 1e3);
        success
            .get_or_create(&l)
            .set(b.success_permille as f64 / 1e3);
        score.get_or_create(&l).set(b.score);
        cpu.get_or_create(&l).set(b.cpu as i64);
    }
    registry.register("picks", "Calls picked per backend", picks);
    registry.register("ejections", "Times a backend was ejected", ejections);
    registry.register(
        "hedges",
        "Hedged calls a backend received as the second endpoint",
        hedges,
    );
    registry.register("in_flight", "Calls in flight per backend", in_flight);
    registry.register("ejected", "1 while a backend is ejected", ejected);
    registry.register(
        "effective_weight",
        "The weight wrr uses now (dynamic or registered)",
        weight,
    );
    registry.register(
        "latency_ewma_seconds",
        "p2c's moving average of the call latency",
        latency,
    );
    registry.register(
        "success_ratio",
        "p2c's moving average of the success rate",
        success,
    );
    registry.register(
        "score",
        "p2c: success x weight / load; wrr: the dynamic score",
        score,
    );
    registry.register("cpu_usage", "The backend's last cpu_usage trailer", cpu);
    let labels = BalancerLabels {
        balancer: pool.balancer.clone(),
    };
    let hedged = Family::<BalancerLabels, Counter>::default();
    hedged.get_or_create(&labels).inc_by(pool.hedged_calls);
    registry.register(
        "hedged_calls",
        "Idempotent calls also sent to a second backend",
        hedged,
    );
    let retried = Family::<BalancerLabels, Counter>::default();
    retried.get_or_create(&labels).inc_by(pool.retried_calls);
    registry.register(
        "retried_calls",
        "Calls sent again on another backend: idempotent ones after a transport failure, any after a refusal",
        retried,
    );
    let mut text = String::new();
    // Writing to a String cannot fail.
    let _ = encode(&mut text, &registry);
    text
}

/// The pool as JSON.
pub(crate) fn debug(channel: &Balanced) -> serde_json::Value {
    serde_json::to_value(channel.pool()).unwrap_or_default()
}
